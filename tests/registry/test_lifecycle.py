"""Erasure end to end (lib_lora_train/registry/adapters.py, erasure.py, lifecycle.py): delete with
receipts and hooks, crash at every step, forget a patient over real prepared datasets, expire."""

import datetime
import json
import pathlib
import sqlite3

import pytest

from lib_lora_train.errors import CaptionPHIError
from lib_lora_train.registry import ErasureError, Registry, erasure
from lib_lora_train.registry.audit import AuditLog
from tests.registry.conftest import register, write_adapter, write_dataset


def _row_status(home, adapter_id):
    conn = sqlite3.connect(home.registry_path)
    try:
        return conn.execute("SELECT status FROM adapters WHERE id = ?", (adapter_id,)).fetchone()[0]
    finally:
        conn.close()


def _files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_delete_removes_adapter_sidecars_outputs_and_dataset_with_a_receipt(home, registry, adapter):
    folder = pathlib.Path(adapter.file_path).parent
    receipt = registry.delete("chest", actor="alice", reason="no longer needed")
    assert not folder.exists() and not (home.datasets_dir / "ds-a").exists()
    assert home.adapters_dir.is_dir() and home.datasets_dir.is_dir()
    roles = {pathlib.Path(f["path"]).name: f["role"] for f in receipt["files"]}
    assert roles == {"chest.safetensors": "adapter", "pytorch_lora_weights.safetensors": "copy",
                     "chest.preview.png": "sidecar", "losses.csv": "training_output",
                     "loss_curve.png": "training_output", "training_summary.json": "training_output",
                     "lora.safetensors": "checkpoint"}
    main = next(f for f in receipt["files"] if f["role"] == "adapter")
    assert main["sha256"] == adapter.sha256 and main["size_bytes"] == adapter.size_bytes and main["removed_at"]
    dataset = receipt["dataset"]
    assert dataset["removed"] and dataset["dataset_id"] == "ds-a" and dataset["file_count"] == 7
    assert dataset["files"][-1]["role"] == "dataset_manifest"
    assert receipt["adapter_id"] == receipt["row_id"] == adapter.id and receipt["status"] == "deleted"
    entry = json.loads(home.audit_log_path.read_text().splitlines()[-1])
    assert entry["hash"] == receipt["audit_hash"] and entry["action"] == "delete"
    assert entry["details"]["receipt_sha256"] == erasure.receipt_digest(receipt)
    record = registry.get(adapter.id)
    assert (record.status, record.deleted_by, record.deleted_reason) == ("deleted", "alice", "no longer needed")
    lines = home.audit_log_path.read_text()
    assert registry.delete(adapter.id, actor="bob", reason="again") == receipt
    assert home.audit_log_path.read_text() == lines
    assert registry.audit.verify_chain() is None


def test_training_data_is_kept_on_request_or_while_another_adapter_uses_it(home, registry, pseudonymizer):
    manifest = write_dataset(home.datasets_dir / "ds-a", "ds-a", [0], pseudonymizer)
    first, second, third = (register(registry, write_adapter(home.adapters_dir / name, name, seed), manifest,
                                     home.datasets_dir / "ds-a") for seed, name in enumerate(("one", "two", "three")))
    kept = registry.delete("one", actor="alice", reason="test", delete_training_data=False)
    assert not kept["dataset"]["removed"] and "not requested" in kept["dataset"]["note"]
    shared = registry.delete("two", actor="alice", reason="test")
    note = shared["dataset"]["note"]
    assert not shared["dataset"]["removed"] and third.id in note and first.id not in note
    assert (home.datasets_dir / "ds-a" / "manifest.json").exists()
    last = registry.delete("three", actor="alice", reason="test")
    assert last["dataset"]["removed"] and not (home.datasets_dir / "ds-a").exists()
    assert second.id != third.id


def test_a_copy_whose_content_changed_and_a_foreign_output_folder_are_kept(home, registry, pseudonymizer):
    manifest = write_dataset(home.datasets_dir / "ds-a", "ds-a", [0], pseudonymizer)
    exported = write_adapter(home.adapters_dir / "shared", "chest", copies=("pytorch_lora_weights.safetensors",))
    record = register(registry, exported, manifest, None)
    exported.copies[0].write_bytes(b"another run's weights")
    (exported.path.parent / "training_summary.json").write_text(json.dumps({"name": "other", "sha256": "0" * 64}))
    (exported.path.parent / "losses.csv").write_text("step,loss\n")
    receipt = registry.delete(record.id, actor="alice", reason="test")
    assert [k["role"] for k in receipt["kept"]] == ["copy"] and "differs" in receipt["kept"][0]["note"]
    assert _files_under(exported.path.parent) == ["losses.csv", "pytorch_lora_weights.safetensors",
                                                  "training_summary.json"]
    assert receipt["dataset"]["action"] == "none"


def test_hooks_run_before_the_row_changes_and_a_failing_hook_leaves_it_active(home, registry, adapter):
    seen = []

    def drop_from_webui_lists(record):
        seen.append((record.id, _row_status(home, record.id), pathlib.Path(record.file_path).exists()))

    def broken(record):
        raise RuntimeError("WebUI not ready")

    with pytest.raises(ErasureError, match=r"the hook .*broken failed \(RuntimeError\); the row is still active"):
        registry.delete("chest", actor="alice", reason="test", hooks=(drop_from_webui_lists, broken))
    assert registry.get("chest").status == "active" and pathlib.Path(adapter.file_path).exists()
    failed = json.loads(home.audit_log_path.read_text().splitlines()[-1])
    assert failed["outcome"] == "failed" and failed["details"]["error_code"] == "hook_failed"
    registry.delete("chest", actor="alice", reason="test", hooks=(drop_from_webui_lists,))
    assert seen == [(adapter.id, "active", True)] * 2
    assert registry.get(adapter.id).status == "deleted"


def test_a_reason_with_personal_data_is_refused_before_anything_changes(home, registry, adapter):
    with pytest.raises(CaptionPHIError, match="a date"):
        registry.delete("chest", actor="alice", reason="patient asked on 12.03.2024")
    assert registry.get("chest").status == "active" and pathlib.Path(adapter.file_path).exists()


class _Crash(Exception):
    pass


def _crash_after(real, calls_before_crash=1):
    calls = []

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == calls_before_crash:
            raise _Crash("injected crash")
        return result

    return wrapper


CRASH_POINTS = [
    (erasure, "plan_adapter_erasure", 1), (Registry, "_mark_deleting", 1), (erasure, "unlink_file", 2),
    (erasure, "remove_files", 1), (erasure, "prune_folders", 1), (erasure, "confirm_erased", 1),
    (erasure, "build_receipt", 1), (AuditLog, "append", 1), (Registry, "_mark_deleted", 1),
]


@pytest.mark.parametrize("owner, step, calls", CRASH_POINTS, ids=[step for _, step, _ in CRASH_POINTS])
def test_a_crash_after_any_step_is_finished_by_deleting_again(home, registry, adapter, monkeypatch, owner, step, calls):
    files = [pathlib.Path(adapter.file_path), *(pathlib.Path(c) for c in adapter.copies),
             home.datasets_dir / "ds-a" / "manifest.json"]

    def check_invariant():
        if _row_status(home, adapter.id) in ("deleted", "expired"):
            assert not any(f.exists() for f in files), "the row says deleted while a file remains"

    for observed_owner, observed_step, _ in CRASH_POINTS:
        real = getattr(observed_owner, observed_step)

        def observed(*args, _real=real, **kwargs):
            check_invariant()
            result = _real(*args, **kwargs)
            check_invariant()
            return result

        monkeypatch.setattr(observed_owner, observed_step, observed)
    monkeypatch.setattr(owner, step, _crash_after(getattr(owner, step), calls))
    with pytest.raises(_Crash):
        registry.delete("chest", actor="alice", reason="test")
    check_invariant()
    expected = {"plan_adapter_erasure": "active", "_mark_deleted": "deleted"}.get(step, "deleting")
    assert _row_status(home, adapter.id) == expected
    monkeypatch.undo()
    receipt = registry.delete(adapter.id, actor="alice", reason="test")
    check_invariant()
    assert _row_status(home, adapter.id) == "deleted" and not any(f.exists() for f in files)
    assert not pathlib.Path(adapter.file_path).parent.exists() and not (home.datasets_dir / "ds-a").exists()
    main = next(f for f in receipt["files"] if f["role"] == "adapter")
    assert main["sha256"] == adapter.sha256
    assert receipt["dataset"]["removed"] and receipt["dataset"]["file_count"] == 7
    assert registry.audit.verify_chain() is None


def test_a_file_that_cannot_be_removed_keeps_the_row_deleting(home, registry, adapter, monkeypatch):
    def refuse(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(erasure, "unlink_file", refuse)
    with pytest.raises(ErasureError, match=r"removed: adapter file chest.safetensors \(Permission denied\)"):
        registry.delete("chest", actor="alice", reason="test")
    assert registry.get("chest").status == "deleting"
    monkeypatch.undo()
    assert registry.delete("chest", actor="alice", reason="test")["status"] == "deleted"


def _real_kohya_export(folder, name):
    """A kohya adapter written by the product's own writer, as ExportResult (numpy-written without torch)."""
    try:
        import torch
    except ImportError:
        return write_adapter(folder, name)
    from lib_lora_train.export.kohya import peft_to_kohya
    from lib_lora_train.export.metadata import build_metadata
    from lib_lora_train.export.package import ExportResult
    from lib_lora_train.export.writer import save_lora_file

    generator = torch.Generator().manual_seed(0)
    path_a = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    state = {f"{path_a}.lora_A.weight": torch.randn(4, 16, generator=generator),
             f"{path_a}.lora_B.weight": torch.randn(24, 4, generator=generator)}
    metadata = build_metadata(name=name, purpose="teaching", registry_id="lora-test", base_model_version="sd_v1",
                              network_dim=4, network_alpha=4.0)
    folder.mkdir(parents=True)
    path = folder / f"{name}.safetensors"
    digest, size = save_lora_file(path, peft_to_kohya(state, "lora_unet", 4.0), metadata)
    return ExportResult(name, path, (), digest, size, metadata)


def _prepare(files, folder, pseudonymizer):
    from lib_lora_train.config import IngestConfig
    from lib_lora_train.dataset.prepare import prepare_dataset

    return prepare_dataset(files, folder, IngestConfig(ocr="off", resolution=64), pseudonymizer, dataset_id=folder.name)


def test_forget_patient_end_to_end_on_prepared_phantom_datasets(tmp_path, home, registry):
    from safetensors import safe_open

    from lib_lora_train.dicom.phantom import PhantomPatient, write_phantom_series
    from lib_lora_train.dicom.pseudonym import Pseudonymizer, load_or_create_site_key

    pseudonymizer = Pseudonymizer(load_or_create_site_key(home.site_key_path))
    dicoms = write_phantom_series(tmp_path / "upload", n_patients=3, slices_per_patient=2, size=64)
    by_patient = {i: [p for p in dicoms if f"_p{i:02d}_" in p.name] for i in range(3)}
    set_a = _prepare(by_patient[0] + by_patient[1], home.datasets_dir / "ds-a", pseudonymizer)
    set_b = _prepare(by_patient[2], home.datasets_dir / "ds-b", pseudonymizer)
    _prepare(by_patient[1], home.datasets_dir / "ds-c", pseudonymizer)  # prepared, never trained on
    adapter_a = register(registry, _real_kohya_export(home.adapters_dir / "lung_a", "lung_a"), set_a.manifest,
                         set_a.output_dir)
    adapter_b = register(registry, write_adapter(home.adapters_dir / "lung_b", "lung_b"), set_b.manifest,
                         set_b.output_dir)
    raw_id = PhantomPatient(1).patient_id
    pseudonym = pseudonymizer.patient(raw_id)
    assert pseudonym in adapter_a.patients and pseudonym not in adapter_b.patients

    receipt = registry.forget_patient(raw_id, pseudonymizer, actor="dpo", reason="Art. 17 request")

    assert receipt["patient"] == pseudonym and receipt["kind"] == "patient_erasure"
    assert [r["adapter_id"] for r in receipt["adapters"]] == [adapter_a.id]
    assert sorted(d["dataset_id"] for d in receipt["datasets"]) == ["ds-a", "ds-c"]
    assert receipt["counts"]["adapters"] == 1 and receipt["counts"]["datasets"] == 2
    assert registry.get(adapter_a.id).status == "deleted" and registry.get(adapter_b.id).status == "active"
    assert not (home.datasets_dir / "ds-a").exists() and not (home.datasets_dir / "ds-c").exists()
    assert not pathlib.Path(adapter_a.file_path).exists() and (home.datasets_dir / "ds-b" / "manifest.json").exists()
    with safe_open(adapter_b.file_path, "np") as handle:
        assert len(list(handle.keys())) == 3
    entry = json.loads(home.audit_log_path.read_text().splitlines()[-1])
    assert entry["action"] == "forget_patient" and entry["target"] == pseudonym
    assert entry["hash"] == receipt["audit_hash"]
    needle = raw_id.encode()
    assert needle not in json.dumps(receipt).encode()
    leaks = [p for p in home.root.rglob("*") if p.is_file() and needle in p.read_bytes()]
    assert leaks == []
    again = registry.forget_patient(raw_id, pseudonymizer, actor="dpo", reason="Art. 17 request")
    assert again["counts"] == {"adapters": 0, "datasets": 0, "files_removed": 0, "bytes_removed": 0}
    assert registry.audit.verify_chain() is None


def _three_adapters(home, registry, pseudonymizer, as_of):
    """Past its expiry, unused for 400 days, and used 10 days before ``as_of``."""
    manifest = write_dataset(home.datasets_dir / "ds-a", "ds-a", [0], pseudonymizer)
    expires = (datetime.date.today() + datetime.timedelta(days=30)).isoformat()
    old = register(registry, write_adapter(home.adapters_dir / "old", "old"), manifest, home.datasets_dir / "ds-a",
                   expires=expires)
    other = write_dataset(home.datasets_dir / "ds-b", "ds-b", [1], pseudonymizer)
    idle = register(registry, write_adapter(home.adapters_dir / "idle", "idle", 1), other, None, expires="2999-01-01")
    busy = register(registry, write_adapter(home.adapters_dir / "busy", "busy", 2), other, None, expires="2999-01-01")
    utc = datetime.timezone.utc
    registry.mark_used("idle", datetime.datetime.combine(as_of - datetime.timedelta(days=400), datetime.time(), utc))
    registry.mark_used("busy", datetime.datetime.combine(as_of - datetime.timedelta(days=10), datetime.time(), utc))
    return old, idle, busy


def test_expire_dry_run_lists_and_a_real_run_erases(home, registry, pseudonymizer):
    as_of = datetime.date.today() + datetime.timedelta(days=200)
    old, idle, busy = _three_adapters(home, registry, pseudonymizer, as_of)
    report = registry.expire(as_of=as_of, unused_days=365, dry_run=True, actor="scheduler")
    assert [(a["name"], a["reason_code"]) for a in report["adapters"]] == [("old", "expired"), ("idle", "unused")]
    assert all(r.status == "active" for r in registry.list()) and "receipt" not in report["adapters"][0]
    entry = json.loads(home.audit_log_path.read_text().splitlines()[-1])
    assert entry["outcome"] == "dry_run" and entry["details"]["adapter_ids"] == [old.id, idle.id]
    assert registry.expire(as_of=old.expires_at, unused_days=5000, dry_run=True, actor="scheduler")["adapters"] == []
    report = registry.expire(as_of=as_of.isoformat(), unused_days=365, actor="scheduler")
    assert [registry.get(r.id).status for r in (old, idle, busy)] == ["expired", "expired", "active"]
    assert not pathlib.Path(old.file_path).exists() and pathlib.Path(busy.file_path).exists()
    assert report["adapters"][0]["receipt"]["dataset"]["removed"] and not (home.datasets_dir / "ds-a").exists()
    assert registry.get(old.id).deleted_reason == f"expired: the retention period ended on {old.expires_at}"
    actions = [json.loads(line)["action"] for line in home.audit_log_path.read_text().splitlines()[-2:]]
    assert actions == ["expire", "expire"]
    with pytest.raises(ValueError, match="as_of='July'"):
        registry.expire(as_of="July", actor="scheduler")


def test_expire_finishes_an_interrupted_erasure(home, registry, adapter, monkeypatch):
    monkeypatch.setattr(erasure, "confirm_erased", _crash_after(erasure.confirm_erased))
    with pytest.raises(_Crash):
        registry.delete("chest", actor="alice", reason="test")
    monkeypatch.undo()
    report = registry.expire(actor="scheduler")
    assert [a["reason_code"] for a in report["adapters"]] == ["interrupted"]
    record = registry.get(adapter.id)
    assert record.status == "deleted" and record.deleted_reason == "test"


def test_forget_patient_finishes_an_interrupted_delete_and_removes_its_kept_dataset(home, registry, adapter,
                                                                                    pseudonymizer, monkeypatch):
    monkeypatch.setattr(erasure, "remove_files", _crash_after(erasure.remove_files))
    with pytest.raises(_Crash):
        registry.delete("chest", actor="alice", reason="test", delete_training_data=False)
    monkeypatch.undo()
    assert registry.get("chest").status == "deleting" and (home.datasets_dir / "ds-a").exists()
    receipt = registry.forget_patient("TESTPATIENT0", pseudonymizer, actor="dpo", reason="Art. 17 request")
    assert [r["adapter_id"] for r in receipt["adapters"]] == [adapter.id]
    assert receipt["adapters"][0]["dataset"]["removed"] and not (home.datasets_dir / "ds-a").exists()
    assert receipt["datasets"] == [{"dataset_id": "ds-a", "path": str(home.datasets_dir / "ds-a"),
                                    "removed_by": adapter.id, "file_count": 7,
                                    "bytes": receipt["adapters"][0]["dataset"]["bytes"]}]
    assert registry.get(adapter.id).status == "deleted"


def test_erase_dataset_after_registration_keeps_the_lineage_for_forget_patient(home, registry, pseudonymizer):
    folder = home.datasets_dir / "ds-keep-off"
    manifest = write_dataset(folder, "ds-keep-off", [0, 1], pseudonymizer)
    record = register(registry, write_adapter(home.adapters_dir / "chest", "chest"), manifest, folder)
    receipt = registry.erase_dataset(folder, actor="alice")
    assert not folder.exists() and receipt["dataset"]["removed"] and receipt["counts"]["files_removed"] >= 5
    entry = [json.loads(line) for line in home.audit_log_path.read_text().splitlines()][-1]
    assert entry["action"] == "delete" and entry["details"]["reason_code"] == "dataset_not_kept"
    forgotten = registry.forget_patient("TESTPATIENT1", pseudonymizer, actor="dpo", reason="Art. 17 request")
    assert [a["adapter_id"] for a in forgotten["adapters"]] == [record.id]
