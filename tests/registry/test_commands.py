"""Tests for lib_lora_train/registry/commands.py: help, tables, --json, exit statuses, the CLI actor."""

import argparse
import getpass
import io
import json

import pytest

from lib_lora_train.dicom.pseudonym import Pseudonymizer, load_or_create_site_key
from lib_lora_train.registry import commands
from lib_lora_train.registry.errors import AdapterNotFoundError, RegistryError
from tests.registry.conftest import register, write_adapter, write_dataset

SUBCOMMANDS = [["registry", "list"], ["registry", "show"], ["registry", "delete"], ["registry", "forget-patient"],
               ["registry", "expire"], ["registry", "verify"], ["audit", "verify"]]


def _parser():
    parser = argparse.ArgumentParser(prog="lora")
    commands.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(home, capsys, *argv):
    status = commands.run(_parser().parse_args(argv), home)
    return status, capsys.readouterr().out


@pytest.mark.parametrize("argv", SUBCOMMANDS, ids=[" ".join(a) for a in SUBCOMMANDS])
def test_every_command_has_help_and_json(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        _parser().parse_args([*argv, "--help"])
    text = capsys.readouterr().out
    assert caught.value.code == 0 and "--json" in text and len(text) > 150


def test_list_and_show_print_tables_and_json(home, registry, adapter, capsys):
    status, out = _run(home, capsys, "registry", "list")
    header, row = out.splitlines()
    assert status == 0 and header.split() == ["ID", "NAME", "STATUS", "IMAGES", "PATIENTS", "CREATED", "EXPIRES",
                                              "LAST", "USED", "OWNER"]
    assert row.index("chest") == header.index("NAME") and row.index(adapter.expires_at) == header.index("EXPIRES")
    status, out = _run(home, capsys, "registry", "list", "--json")
    assert [r["id"] for r in json.loads(out)] == [adapter.id]
    status, out = _run(home, capsys, "registry", "list", "--status", "deleted")
    assert out.strip() == "no deleted adapters"
    status, out = _run(home, capsys, "registry", "show", "chest")
    assert "dpia_reference" in out and "DPIA-RAD-7" in out and adapter.patients[0] not in out
    status, out = _run(home, capsys, "registry", "show", adapter.id, "--json", "--lineage")
    assert json.loads(out)["patients"] == list(adapter.patients)
    with pytest.raises(AdapterNotFoundError):
        _run(home, capsys, "registry", "show", "nope")


def test_delete_prints_the_receipt_and_records_the_os_user(home, registry, adapter, capsys):
    status, out = _run(home, capsys, "registry", "delete", "chest", "--reason", "retired", "--keep-training-data")
    assert status == 0 and f"adapter chest ({adapter.id}) deleted" in out and "not removed" in out
    assert "ROLE" in out and "adapter" in out
    entry = json.loads(home.audit_log_path.read_text().splitlines()[-1])
    assert entry["actor"] == f"cli:{getpass.getuser()}" and entry["access_control"] is True
    status, out = _run(home, capsys, "registry", "delete", "chest", "--reason", "retired", "--json")
    assert json.loads(out)["audit_hash"] == entry["hash"]
    status, out = _run(home, capsys, "registry", "show", adapter.id)
    assert "deleted" in out and f"audit entry {entry['hash']}" in out


def test_forget_patient_reads_the_id_from_stdin_and_never_prints_it(home, registry, capsys, monkeypatch):
    pseudonymizer = Pseudonymizer(load_or_create_site_key(home.site_key_path))
    manifest = write_dataset(home.datasets_dir / "ds-a", "ds-a", [0, 1], pseudonymizer)
    register(registry, write_adapter(home.adapters_dir / "chest", "chest"), manifest, home.datasets_dir / "ds-a")
    monkeypatch.setattr("sys.stdin", io.StringIO("TESTPATIENT1\n"))
    status, out = _run(home, capsys, "registry", "forget-patient", "--patient-id", "-", "--reason", "Art. 17 request")
    assert status == 0 and "1 adapter(s), 1 dataset(s)" in out and pseudonymizer.patient("TESTPATIENT1") in out
    assert "TESTPATIENT1" not in out and "TESTPATIENT1" not in home.audit_log_path.read_text()
    status, out = _run(home, capsys, "registry", "forget-patient", "--patient-id", "TESTPATIENT1", "--reason", "again",
                       "--json")
    assert json.loads(out)["counts"]["adapters"] == 0


def test_forget_patient_without_a_site_key_refuses(home, registry, capsys):
    with pytest.raises(RegistryError, match="no site key"):
        _run(home, capsys, "registry", "forget-patient", "--patient-id", "X1", "--reason", "Art. 17 request")
    assert not home.site_key_path.exists()


def test_expire_dry_run(home, registry, adapter, capsys):
    status, out = _run(home, capsys, "registry", "expire", "--as-of", "2999-01-01", "--dry-run")
    assert status == 0 and "would erase 1 adapter(s)" in out and "expired" in out
    assert registry.get("chest").status == "active"
    status, out = _run(home, capsys, "registry", "expire", "--json")
    assert json.loads(out)["adapters"] == []


def test_verify_exit_status_follows_open_problems(home, registry, adapter, capsys):
    assert _run(home, capsys, "registry", "verify") == (0, "registry and disk agree: no problems\n")
    write_adapter(home.adapters_dir, "stray")
    status, out = _run(home, capsys, "registry", "verify", "--repair")
    assert status == 1 and "orphan_file" in out and "never deleted automatically" in out
    status, out = _run(home, capsys, "registry", "verify", "--json")
    assert status == 1 and json.loads(out)[0]["kind"] == "orphan_file"


def test_audit_verify_reports_the_first_bad_line(home, registry, adapter, capsys):
    status, out = _run(home, capsys, "audit", "verify")
    assert status == 0 and out.startswith("audit log intact: 1 line")
    lines = home.audit_log_path.read_text().splitlines(keepends=True)
    home.audit_log_path.write_text(lines[0].replace('"images":2', '"images":3'))
    status, out = _run(home, capsys, "audit", "verify")
    assert status == 1 and "NOT intact: line 1" in out
    status, out = _run(home, capsys, "audit", "verify", "--json")
    assert json.loads(out) == {"ok": False, "lines": 1, "first_bad_line": 1, "reason": json.loads(out)["reason"]}


def test_format_table_aligns_columns():
    text = commands.format_table(("a", "long header"), [("x", 1), ("longer value", None)])
    lines = text.splitlines()
    assert lines[0].index("LONG HEADER") == lines[1].index("1") == lines[2].index("-")
