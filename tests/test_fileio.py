"""Atomic writes leave the old file or the whole new one, and no temporary files."""

import pytest

from lib_lora_train.fileio import atomic_path, write_json_atomic, write_text_atomic


def test_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_failure_keeps_old_content(tmp_path):
    target = tmp_path / "a.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
