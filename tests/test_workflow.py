"""User actions write their audit entries; the log stays free of personal data and intact."""

import json
import threading

import pytest

from lib_lora_train.config import IngestConfig, TrainConfig
from lib_lora_train.dicom.phantom import PhantomPatient, planted_values, write_phantom_series
from lib_lora_train.dicom.pseudonym import Pseudonymizer
from lib_lora_train.errors import ConfigError
from lib_lora_train.home import resolve_home
from lib_lora_train.registry import Registry
from lib_lora_train.trainer.api import LoRATrainer
from lib_lora_train.workflow import ingest, train_and_register
from tests.leakcheck import find_needles

RECORD = dict(purpose="segmentation research", owner="Radiology research lead", department="Radiology",
              legal_basis="GDPR Art. 6(1)(e) and 9(2)(j)", dpia_reference="DPIA-2026-014")


@pytest.fixture
def home(tmp_path):
    return resolve_home(tmp_path / "home").ensure()


def _entries(home):
    return [json.loads(line) for line in home.audit_log_path.read_text().splitlines()]


def _dataset(home, tmp_path):
    write_phantom_series(tmp_path / "in", n_patients=2, slices_per_patient=2, size=64)
    return ingest(home, [tmp_path / "in"], tmp_path / "ds", IngestConfig(ocr="off", resolution=64),
                  Pseudonymizer(b"k" * 32), actor="cli:tester")


def _trainer(home, dataset_dir, tmp_path, **overrides):
    values = dict(train_data_dir=str(dataset_dir), resolution=64, lora_rank=2, lora_alpha=2.0, batch_size=2,
                  max_steps=2, output_dir=str(tmp_path / "out" / "wf_lora"), device="cpu", **RECORD)
    values.update(overrides)
    return LoRATrainer(TrainConfig(**values), home)


def test_ingest_is_audited_with_counts_only(home, tmp_path):
    result = _dataset(home, tmp_path)
    (entry,) = _entries(home)
    assert entry["action"] == "ingest" and entry["actor"] == "cli:tester" and entry["target"] == result.dataset_id
    assert entry["details"]["images"] == 4 and entry["details"]["patients"] == 2
    planted = [v for i in range(2) for v in planted_values(PhantomPatient(i))]
    assert find_needles(home.audit_log_path.read_bytes(), planted) == []


def test_cancelled_training_is_audited_and_not_registered(home, tmp_path):
    result = _dataset(home, tmp_path)
    cancel = threading.Event()
    cancel.set()
    run, exported, record = train_and_register(_trainer(home, result.output_dir, tmp_path), actor="alice",
                                               cancel_event=cancel)
    assert run.stopped == "cancelled" and exported is None and record is None
    assert [e["action"] for e in _entries(home)] == ["ingest", "train_start", "train_cancel"]
    with Registry(home) as registry:
        assert registry.list() == []


def test_failed_training_is_audited_with_an_error_code(home, tmp_path, monkeypatch):
    result = _dataset(home, tmp_path)
    trainer = _trainer(home, result.output_dir, tmp_path)
    host = trainer.build_model()
    monkeypatch.setattr(host, "predict", lambda *args: (_ for _ in ()).throw(MemoryError("simulated")))
    with pytest.raises(MemoryError):
        train_and_register(trainer, actor="alice")
    last = _entries(home)[-1]
    assert last["action"] == "train_fail" and last["outcome"] == "failed"
    assert last["details"]["error_code"] == "memory_error"


def test_missing_registry_fields_fail_before_anything_runs(home, tmp_path):
    trainer = _trainer(home, tmp_path, tmp_path, purpose=None, dpia_reference=None)
    with pytest.raises(ConfigError, match="purpose, dpia_reference"):
        train_and_register(trainer, actor="alice")
    assert not home.audit_log_path.exists()


def test_registered_adapter_erases_with_its_dataset(home, tmp_path):
    result = _dataset(home, tmp_path)
    published = []
    _, exported, record = train_and_register(_trainer(home, result.output_dir, tmp_path), actor="alice",
                                             after_register=lambda e, r: published.append((e.name, r.id)))
    assert published == [(exported.name, record.id)]
    with Registry(home) as registry:
        receipt = registry.delete(record.name, actor="dpo", reason="study finished")
        assert registry.get(record.id).status == "deleted"
        assert registry.audit.verify_chain() is None
    assert not exported.path.exists() and not (tmp_path / "ds").exists()
    assert receipt["audit_hash"] and any(f["role"] == "adapter" for f in receipt["files"])


def test_registry_keeps_the_config_without_paths(home, tmp_path):
    result = _dataset(home, tmp_path)
    _, _, record = train_and_register(_trainer(home, result.output_dir, tmp_path), actor="alice")
    with Registry(home) as registry:
        stored = registry.get(record.id).to_dict()
    config = stored["config"]
    assert config["lora_rank"] == 2 and config["base_model"] == "embedded"
    assert not {"train_data_dir", "output_dir", "metadata_path", "sample_prompt"} & set(config)
    assert str(tmp_path) not in json.dumps(config)


def test_sample_prompt_with_personal_data_is_refused(home, tmp_path):
    from lib_lora_train.errors import CaptionPHIError

    trainer = _trainer(home, tmp_path, tmp_path, sample_prompt="CT of patient born 12.03.1961")
    with pytest.raises(CaptionPHIError, match="a date"):
        train_and_register(trainer, actor="alice")
