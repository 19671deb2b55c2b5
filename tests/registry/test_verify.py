"""Tests for lib_lora_train/registry/verify.py: orphans, missing files, hash mismatch, repair."""

import json
import pathlib

import pytest

from lib_lora_train.registry import erasure
from tests.registry.conftest import register, write_adapter, write_dataset


def _kinds(problems):
    return sorted((p.kind, p.repaired) for p in problems)


def test_a_consistent_registry_has_no_problems_and_the_check_is_audited(home, registry, adapter):
    assert registry.verify() == []
    entry = json.loads(home.audit_log_path.read_text().splitlines()[-1])
    assert (entry["action"], entry["outcome"], entry["details"]["problems"]) == ("verify", "ok", 0)


def test_orphan_files_are_listed_and_never_deleted(home, registry, adapter):
    stray = write_adapter(home.adapters_dir, "unregistered")
    beside = pathlib.Path(adapter.file_path).parent / "old_run.safetensors"
    beside.write_bytes(b"weights")
    problems = registry.verify(repair=True, actor="alice")
    assert _kinds(problems) == [("orphan_file", False), ("orphan_file", False)]
    assert {p.target for p in problems} == {"adapters/unregistered.safetensors", "adapters/chest/old_run.safetensors"}
    assert all("never deleted automatically" in p.detail for p in problems)
    assert stray.path.exists() and beside.exists() and registry.get("chest").status == "active"


def test_a_missing_file_is_repaired_by_marking_the_row_deleted(home, registry, adapter):
    pathlib.Path(adapter.file_path).unlink()
    problems = registry.verify()
    assert _kinds(problems) == [("missing_file", False)] and problems[0].target == adapter.id
    assert registry.get("chest").status == "active"
    problems = registry.verify(repair=True, actor="alice")
    assert _kinds(problems) == [("missing_file", True)] and "training data kept" in problems[0].detail
    record = registry.get(adapter.id)
    assert record.status == "deleted" and record.deleted_reason == "file missing (repair)"
    assert not pathlib.Path(adapter.copies[0]).exists()  # the copy and sidecars go with it
    assert (home.datasets_dir / "ds-a" / "manifest.json").exists()
    assert registry.stored_receipt(adapter.id)["reason_code"] == "repair"
    assert registry.verify() == []


@pytest.mark.parametrize("damage, kind", [
    (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "hash_mismatch"),
    (lambda data: data + b"\0", "size_mismatch"),
], ids=["same-size", "longer"])
def test_a_changed_file_is_reported_and_left_alone(home, registry, adapter, damage, kind):
    path = pathlib.Path(adapter.file_path)
    path.write_bytes(damage(path.read_bytes()))
    changed = path.read_bytes()
    problems = registry.verify(repair=True, actor="alice")
    assert _kinds(problems) == [(kind, False)]
    assert path.read_bytes() == changed and registry.get("chest").status == "active"
    entry = json.loads(home.audit_log_path.read_text().splitlines()[-1])
    assert entry["outcome"] == "problems" and entry["details"]["problem_kinds"] == [kind]


def test_an_interrupted_erasure_is_reported_and_finished_by_repair(home, registry, adapter, monkeypatch):
    def crash(plan):
        raise KeyboardInterrupt

    monkeypatch.setattr(erasure, "prune_folders", crash)
    with pytest.raises(KeyboardInterrupt):
        registry.delete("chest", actor="alice", reason="test")
    monkeypatch.undo()
    assert _kinds(registry.verify()) == [("interrupted_erasure", False)]
    assert _kinds(registry.verify(repair=True, actor="alice")) == [("interrupted_erasure", True)]
    record = registry.get(adapter.id)
    assert record.status == "deleted" and record.deleted_reason == "test"
    assert not (home.datasets_dir / "ds-a").exists()  # the stored plan wins over the repair's settings


def test_copies_of_live_adapters_are_not_orphans(home, registry, pseudonymizer):
    manifest = write_dataset(home.datasets_dir / "ds-a", "ds-a", [0], pseudonymizer)
    exported = write_adapter(home.adapters_dir, "chest", copies=("chest-copy.safetensors",))
    register(registry, exported, manifest, None)
    assert registry.verify() == []
