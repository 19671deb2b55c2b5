"""Tests for lib_lora_train/registry/adapters.py and records.py: register, get, list, mark_used, concurrency."""

import datetime
import json
import multiprocessing
import pathlib
import subprocess
import sys
import traceback

import pytest

from lib_lora_train.errors import ConfigError
from lib_lora_train.home import DataHome
from lib_lora_train.registry import AdapterNameInUseError, AdapterNotFoundError, Registry
from lib_lora_train.registry.records import new_adapter_id
from tests.registry.conftest import FACTS, register, write_adapter, write_dataset


def test_register_records_every_fact_and_the_lineage(home, registry, pseudonymizer):
    manifest = write_dataset(home.datasets_dir / "ds-a", "ds-a", [0, 1, 2], pseudonymizer)
    exported = write_adapter(home.adapters_dir / "chest", "chest", copies=("pytorch_lora_weights.safetensors",))
    record = register(registry, exported, manifest, home.datasets_dir / "ds-a", config_dict={"lora_rank": 4})
    assert record.name == "chest" and record.status == "active" and record.id.startswith("lora-")
    assert record.file_path == str(exported.path.resolve()) and record.sha256 == exported.sha256
    assert record.size_bytes == exported.size_bytes and record.copies == (str(exported.copies[0].resolve()),)
    assert record.patients == tuple(manifest["patients"]) and record.studies == tuple(manifest["studies"])
    assert record.num_images == 3 and record.dataset_id == "ds-a"
    assert record.deid_profile == "PS3.15 E.1-1" and record.deid_version == "2026c-1"
    assert record.config == {"lora_rank": 4} and len(record.config_digest) == 64
    for key in ("purpose", "owner", "department", "legal_basis", "dpia_reference", "data_source", "base_fingerprint"):
        assert getattr(record, key) == FACTS[key]
    created = datetime.datetime.fromisoformat(record.created_at)
    assert record.expires_at == (created.date() + datetime.timedelta(days=365)).isoformat()
    assert record.created_by == "alice" and record.last_used_at is None
    entry = json.loads(home.audit_log_path.read_text().splitlines()[-1])
    assert entry["action"] == "register" and entry["target"] == record.id
    assert entry["details"]["patients"] == 3 and entry["details"]["config_digest"] == record.config_digest
    assert manifest["patients"][0] not in json.dumps(entry)


def test_expiry_is_configurable(home, pseudonymizer):
    manifest = write_dataset(home.datasets_dir / "ds-a", "ds-a", [0], pseudonymizer)
    with Registry(home, retention_days=30) as registry:
        short = register(registry, write_adapter(home.adapters_dir, "short"), manifest, None)
        fixed = register(registry, write_adapter(home.adapters_dir, "fixed", seed=1), manifest, None,
                         expires="2999-01-31")
    assert short.expires_at == (datetime.date.fromisoformat(short.created_at[:10]) + datetime.timedelta(30)).isoformat()
    assert fixed.expires_at == "2999-01-31"


def test_a_name_used_by_an_active_adapter_is_refused_until_it_is_deleted(home, registry, pseudonymizer):
    manifest = write_dataset(home.datasets_dir / "ds-a", "ds-a", [0], pseudonymizer)
    first = register(registry, write_adapter(home.adapters_dir / "one", "chest"), manifest, None)
    lines = home.audit_log_path.read_text().count("\n")
    again = write_adapter(home.adapters_dir / "two", "chest", seed=3)
    with pytest.raises(AdapterNameInUseError, match="already named 'chest'"):
        register(registry, again, manifest, None)
    assert home.audit_log_path.read_text().count("\n") == lines and len(registry.list()) == 1
    registry.delete("chest", actor="alice", reason="superseded")
    second = register(registry, again, manifest, None)
    assert registry.get("chest").id == second.id != first.id
    assert registry.get(first.id).status == "deleted"


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(patients=["MRN07345001"]), r"1 value\(s\) that are not keyed pseudonyms"),
    (lambda m: m.update(studies=["1.2.840.99"]), "not keyed pseudonyms"),
    (lambda m: m.pop("images"), "lacks images"),
    (lambda m: m.update(images=[]), "the dataset is empty"),
], ids=["raw-patient-id", "raw-study-uid", "no-images", "empty"])
def test_manifests_without_pseudonymous_lineage_are_refused(home, registry, pseudonymizer, change, message):
    manifest = write_dataset(home.datasets_dir / "ds-a", "ds-a", [0], pseudonymizer)
    change(manifest)
    with pytest.raises(ConfigError, match=message) as caught:
        register(registry, write_adapter(home.adapters_dir, "chest"), manifest, None)
    assert "MRN07345001" not in str(caught.value) and "1.2.840.99" not in str(caught.value)
    assert registry.list() == [] and not home.audit_log_path.exists()


def test_bad_inputs_are_refused_before_anything_is_written(home, registry, pseudonymizer):
    manifest = write_dataset(home.datasets_dir / "ds-a", "ds-a", [0], pseudonymizer)
    exported = write_adapter(home.adapters_dir, "chest")
    with pytest.raises(ConfigError, match="purpose is required"):
        register(registry, exported, manifest, None, purpose=" ")
    with pytest.raises(ConfigError, match="not the folder of dataset ds-a"):
        register(registry, exported, manifest, home.datasets_dir)
    with pytest.raises(ConfigError, match="must be after today"):
        register(registry, exported, manifest, None, expires="2001-01-01")
    exported.path.write_bytes(exported.path.read_bytes()[:-1] + b"x")
    with pytest.raises(ConfigError, match="does not match the exported SHA-256"):
        register(registry, exported, manifest, None)
    assert registry.list() == [] and not home.audit_log_path.exists()


def test_a_reserved_id_and_any_valid_alias_are_accepted(home, registry, pseudonymizer):
    manifest = write_dataset(home.datasets_dir / "ds-a", "ds-a", [0], pseudonymizer)
    reserved = new_adapter_id()
    record = register(registry, write_adapter(home.adapters_dir, "chest"), manifest, None, adapter_id=reserved)
    assert record.id == reserved and registry.get(reserved) == record
    odd = register(registry, write_adapter(home.adapters_dir, "_ct.v2-b", seed=1), manifest, None)
    assert registry.delete(odd.name, actor="alice", reason="test")["name"] == "_ct.v2-b"


def test_get_list_and_mark_used(home, registry, adapter):
    assert registry.get("chest") == registry.get(adapter.id) == adapter
    with pytest.raises(AdapterNotFoundError, match="no adapter has the name or id 'nope'"):
        registry.get("nope")
    when = datetime.datetime(2030, 5, 1, 12, tzinfo=datetime.timezone.utc)
    assert registry.mark_used("chest", when) is True
    assert registry.get("chest").last_used_at == "2030-05-01T12:00:00+00:00"
    assert registry.mark_used("nope") is False
    assert [r.id for r in registry.list("active")] == [adapter.id] and registry.list("deleted") == []
    with pytest.raises(ValueError, match="status='gone'"):
        registry.list("gone")
    data = adapter.to_dict()
    assert "patients" not in data and data["n_patients"] == 2
    assert adapter.to_dict(lineage=True)["patients"] == list(adapter.patients)


def test_the_registry_imports_without_torch_safetensors_or_pydicom():
    code = ("import sys, lib_lora_train.registry, lib_lora_train.registry.commands; "
            "print(sorted(m for m in ('torch', 'safetensors', 'pydicom', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=pathlib.Path(__file__).parents[2])
    assert result.stdout.strip() == "[]"


PER_PROCESS = 12


def _register_and_delete(home_root, prefix, manifest, barrier, errors):
    """Child process: its own Registry on the shared file; register, then delete every other one."""
    try:
        home = DataHome(pathlib.Path(home_root))
        with Registry(home, timeout=30) as registry:
            barrier.wait(timeout=60)
            for i in range(PER_PROCESS):
                exported = write_adapter(home.adapters_dir / f"{prefix}{i}", f"{prefix}{i}", seed=i)
                register(registry, exported, manifest, None, actor=prefix)
                if i % 2:
                    registry.delete(f"{prefix}{i}", actor=prefix, reason="concurrency test")
    except BaseException:
        errors.put(traceback.format_exc())
        raise


def test_two_processes_register_and_delete_at_once(home, pseudonymizer):
    """Both also race to create the schema: the home has no registry file yet."""
    manifest = write_dataset(home.datasets_dir / "ds-a", "ds-a", [0], pseudonymizer)
    ctx = multiprocessing.get_context("spawn")
    barrier, errors = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_register_and_delete, args=(str(home.root), prefix, manifest, barrier, errors))
               for prefix in ("webui", "cli")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert errors.empty(), errors.get()
    assert [w.exitcode for w in workers] == [0, 0]
    with Registry(home) as registry:
        records = registry.list()
        assert len(records) == 2 * PER_PROCESS
        assert sum(r.status == "deleted" for r in records) == PER_PROCESS
        assert all(pathlib.Path(r.file_path).exists() == (r.status == "active") for r in records)
        report = registry.audit.check_chain()
    assert report.ok and report.lines == 2 * (PER_PROCESS + PER_PROCESS // 2)
