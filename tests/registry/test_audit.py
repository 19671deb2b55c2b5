"""Tests for lib_lora_train/registry/audit.py: hash chain, head, tamper detection, allow-listed details."""

import json
import logging

import pytest

from lib_lora_train.registry import audit as audit_module
from lib_lora_train.registry.audit import GENESIS_HASH, AuditLog, canonical_json, entry_hash
from lib_lora_train.registry.errors import AuditTamperedError

LINES = 5


@pytest.fixture
def log(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(LINES):
        log.append("register", actor="alice", target=f"lora-{i}", details={"adapter_id": f"lora-{i}", "images": i})
    return log


def _lines(log):
    return log.path.read_bytes().splitlines(keepends=True)


def _forged(prev_hash, target="lora-forged"):
    entry = {"v": 1, "time": "2025-01-01T00:00:00.000+00:00", "actor": "mallory", "access_control": True,
             "action": "delete", "target": target, "outcome": "ok", "details": {}, "prev_hash": prev_hash}
    entry["hash"] = entry_hash(entry)
    return canonical_json(entry) + b"\n"


def test_entries_form_a_chain_over_canonical_json(log):
    entries = [json.loads(line) for line in _lines(log)]
    assert entries[0]["prev_hash"] == GENESIS_HASH
    for previous, entry in zip(entries, entries[1:]):
        assert entry["prev_hash"] == previous["hash"]
    for line, entry in zip(_lines(log), entries):
        assert line == canonical_json(entry) + b"\n"
        assert entry["hash"] == entry_hash(entry)
    assert entries[0]["access_control"] is True and entries[0]["time"].endswith("+00:00")
    assert log.verify_chain() is None
    head = json.loads(log.head_path.read_text())
    assert head["lines"] == LINES and head["hash"] == entries[-1]["hash"] and "pending" not in head


def _edit_value(log):
    lines = _lines(log)
    lines[2] = lines[2].replace(b'"images":2', b'"images":7')
    log.path.write_bytes(b"".join(lines))


def _delete_line(log):
    lines = _lines(log)
    del lines[2]
    log.path.write_bytes(b"".join(lines))


def _reorder(log):
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    log.path.write_bytes(b"".join(lines))


def _truncate_last_line(log):
    log.path.write_bytes(b"".join(_lines(log)[:-1]))


def _cut_last_line(log):
    log.path.write_bytes(log.path.read_bytes()[:-40])


def _append_garbage_line(log):
    with open(log.path, "ab") as handle:
        handle.write(_forged("f" * 64))


def _append_well_forged_line(log):
    last = json.loads(_lines(log)[-1])["hash"]
    with open(log.path, "ab") as handle:
        handle.write(_forged(last))


def _insert_line(log):
    lines = _lines(log)
    lines.insert(3, _forged("e" * 64))
    log.path.write_bytes(b"".join(lines))


def _insert_chained_line(log):
    lines = _lines(log)
    lines.insert(3, _forged(json.loads(lines[2])["hash"]))  # valid itself: the next line no longer chains
    log.path.write_bytes(b"".join(lines))


def _rewrite_tail_consistently(log):
    lines = _lines(log)
    lines[-1] = _forged(json.loads(lines[-2])["hash"])
    log.path.write_bytes(b"".join(lines))


@pytest.mark.parametrize("tamper, bad_line", [
    (_edit_value, 3), (_delete_line, 3), (_reorder, 2), (_truncate_last_line, LINES), (_cut_last_line, LINES),
    (_append_garbage_line, LINES + 1), (_append_well_forged_line, LINES + 1), (_insert_line, 4),
    (_insert_chained_line, 5), (_rewrite_tail_consistently, LINES),
], ids=["edit-value", "delete-line", "reorder", "truncate-last-line", "cut-last-line", "append-garbage",
        "append-forged-chained", "insert-line", "insert-chained-line", "rewrite-last-line"])
def test_tampering_is_found_at_the_first_bad_line(log, tamper, bad_line):
    tamper(log)
    report = log.check_chain()
    assert report.first_bad_line == bad_line, report
    assert report.reason
    with pytest.raises(AuditTamperedError, match=f"line {bad_line}") as caught:
        log.ensure_intact()
    assert caught.value.line == bad_line


def test_a_later_append_does_not_hide_tampering(log):
    _truncate_last_line(log)
    log.append("verify", actor="alice", target="registry")
    assert log.verify_chain() == LINES


def test_a_missing_head_is_reported(log):
    log.head_path.unlink()
    assert log.verify_chain() == LINES


def test_a_crash_between_line_and_head_is_finished_by_the_next_append(log, monkeypatch):
    real_write = audit_module.write_json_atomic
    calls = []

    def crash_on_commit(path, payload):
        calls.append(payload)
        if len(calls) == 2:
            raise OSError("power loss")
        real_write(path, payload)

    monkeypatch.setattr(audit_module, "write_json_atomic", crash_on_commit)
    with pytest.raises(OSError):
        log.append("use", actor="alice", target="lora-1")
    monkeypatch.setattr(audit_module, "write_json_atomic", real_write)
    report = log.check_chain()
    assert report.ok and report.lines == LINES + 1 and "interrupted" in report.reason
    log.append("use", actor="alice", target="lora-2")
    assert log.check_chain() == audit_module.ChainReport(LINES + 2, None, "")


def test_a_torn_line_from_a_crash_is_removed_by_the_next_append(log):
    head = json.loads(log.head_path.read_text())
    log.head_path.write_text(json.dumps(dict(head, pending="ab" * 32)))
    with open(log.path, "ab") as handle:
        handle.write(b'{"access_control":true,"act')
    assert log.check_chain().ok
    log.append("use", actor="alice", target="lora-1")
    report = log.check_chain()
    assert report.ok and report.lines == LINES + 1


def test_a_crash_during_the_first_append_leaves_a_usable_log(tmp_path, monkeypatch):
    log = AuditLog(tmp_path / "audit.jsonl")
    real_write = audit_module.write_json_atomic

    def crash_after_announcing(path, payload):
        real_write(path, payload)
        raise OSError("power loss")

    monkeypatch.setattr(audit_module, "write_json_atomic", crash_after_announcing)
    with pytest.raises(OSError):
        log.append("use", actor="alice", target="lora-1")  # crashes after announcing, before writing
    monkeypatch.undo()
    assert log.path.read_bytes() == b"" and log.check_chain().ok
    log.append("use", actor="alice", target="lora-1")
    assert log.check_chain() == audit_module.ChainReport(1, None, "")


def test_anonymous_actor_is_flagged_and_warned(tmp_path, caplog):
    log = AuditLog(tmp_path / "audit.jsonl")
    with caplog.at_level(logging.WARNING):
        entry = log.append("auth_failed", actor=None, target=None, outcome="refused")
    assert entry["actor"] == "anonymous" and entry["access_control"] is False
    assert "access control is off" in caplog.text


@pytest.mark.parametrize("kwargs, message", [
    (dict(action="train"), "unknown audit action"),
    (dict(outcome="maybe"), "unknown audit outcome"),
    (dict(target="/home/someone/scans"), "audit target must be an id"),
    (dict(details={"patient_name": "x"}), "not allow-listed"),
    (dict(details={"name": "Jane Doe"}), "must be one id value"),
    (dict(details={"sha256": "not-a-hash"}), "must be one hash value"),
    (dict(details={"images": -1}), "must be one count value"),
    (dict(details={"images": True}), "must be one count value"),
    (dict(details={"adapter_ids": ["ok", "not ok"]}), "must be a list of id values"),
    (dict(actor="bad\nname"), "user name"),
])
def test_only_allow_listed_values_are_accepted(tmp_path, kwargs, message):
    log = AuditLog(tmp_path / "audit.jsonl")
    values = dict(action="register", actor="alice", target="lora-1", outcome="ok", details={})
    values.update(kwargs)
    action = values.pop("action")
    with pytest.raises(ValueError, match=message):
        log.append(action, **values)
    assert not log.path.exists() or log.path.read_bytes() == b""


def test_an_empty_or_missing_log_is_intact(tmp_path):
    assert AuditLog(tmp_path / "audit.jsonl").check_chain().ok
