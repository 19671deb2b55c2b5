"""LoRATrainer and the 'train' command end to end: files, keys, metadata, loss log, round trip."""

import csv
import json
import pathlib

import pytest
import torch
from safetensors import safe_open

from lib_lora_train.cli import main
from lib_lora_train.config import TrainConfig
from lib_lora_train.dicom.phantom import PhantomPatient, planted_values
from lib_lora_train.errors import LoraTrainError
from lib_lora_train.hosts.base import fingerprint_modules
from lib_lora_train.home import resolve_home
from lib_lora_train.lora.apply import applied_adapter
from lib_lora_train.trainer.api import WEIGHTS_FILE, LoRATrainer
from tests.leakcheck import find_needles

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return resolve_home(tmp_path_factory.mktemp("home")).ensure()


def _config(dataset, tmp_path, **overrides):
    values = dict(train_data_dir=str(dataset), resolution=64, lora_rank=4, lora_alpha=8.0, batch_size=2,
                  max_steps=3, output_dir=str(tmp_path / "chest_ct_v1"), device="cpu", mixed_precision="no",
                  purpose="segmentation research", expires="2027-11-26")
    values.update(overrides)
    return TrainConfig(**values)


def test_seed_interface_trains_and_exports_kohya(dataset, home, tmp_path):
    trainer = LoRATrainer(_config(dataset, tmp_path), home)
    assert len(trainer.prepare_data()) == 4
    host = trainer.build_model()
    before = fingerprint_modules(host.modules_to_fingerprint())
    result = trainer.train()
    exported = trainer.export_lora_weights()
    folder = tmp_path / "chest_ct_v1"
    assert exported.name == "chest_ct_v1" and exported.path == folder / "chest_ct_v1.safetensors"
    assert (folder / WEIGHTS_FILE).read_bytes() == exported.path.read_bytes()
    with safe_open(str(exported.path), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
        alphas = {handle.get_tensor(k).item() for k in keys if k.endswith(".alpha")}
        dtypes = {handle.get_tensor(k).dtype for k in keys if k.endswith(".weight")}
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}
    assert all(m.startswith("lora_unet_") for m in modules)
    expected = {f"lora_unet_{n.replace('.', '_')}" for n, _ in host.unet.named_modules() if n.endswith(TARGETS)}
    assert modules == expected
    assert all({f"{m}.lora_down.weight", f"{m}.lora_up.weight", f"{m}.alpha"} <= keys for m in modules)
    assert alphas == {8.0} and dtypes == {torch.float16}
    assert metadata["ss_output_name"] == "chest_ct_v1" and metadata["ss_network_dim"] == "4"
    assert metadata["ss_network_alpha"] == "8.0" and metadata["ss_base_model_version"] == "sd_v1"
    assert metadata["ss_max_train_steps"] == "3" and metadata["ss_num_train_images"] == "4"
    assert metadata["medical_lora.purpose"] == "segmentation research"
    assert metadata["medical_lora.expires"] == "2027-11-26"
    assert "ss_tag_frequency" not in metadata and "ss_dataset_dirs" not in metadata
    assert not any(str(dataset) in value for value in metadata.values())
    rows = list(csv.DictReader((folder / "losses.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert (folder / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((folder / "training_summary.json").read_text())
    assert summary["sha256"] == exported.sha256 and summary["steps"] == result.steps == 3
    assert fingerprint_modules(host.modules_to_fingerprint()) == before


def test_exported_file_reproduces_the_trained_unet(dataset, home, tmp_path):
    trainer = LoRATrainer(_config(dataset, tmp_path, save_dtype="fp32", max_steps=4, learning_rate=1e-2), home)
    result = trainer.train()
    exported = trainer.export_lora_weights()
    host = trainer.host
    from lib_lora_train.lora.inject import LoraSpec, inject_lora

    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t, c = torch.tensor([400]), host.encode_prompts(["CT scan of chest"])
    with torch.no_grad():
        base = host.predict(x, t, c)
    injected = inject_lora(host.unet, LoraSpec(4, 8.0, 0.0, TARGETS), "trained")
    try:
        injected.load_state_dict(result.unet_lora)
        with torch.no_grad():
            trained = host.predict(x, t, c)
    finally:
        injected.remove()
    with applied_adapter(host, exported.path, 1.0), torch.no_grad():
        from_file = host.predict(x, t, c)
    with applied_adapter(host, exported.path, 0.0), torch.no_grad():
        switched_off = host.predict(x, t, c)
    assert not torch.allclose(trained, base)
    assert torch.allclose(from_file, trained, atol=1e-6)
    assert torch.equal(switched_off, base)


def test_the_file_loads_in_diffusers(dataset, home, tmp_path):
    trainer = LoRATrainer(_config(dataset, tmp_path, save_dtype="fp32", max_steps=2), home)
    trainer.train()
    exported = trainer.export_lora_weights()
    from diffusers import StableDiffusionPipeline

    state, network_alphas = StableDiffusionPipeline.lora_state_dict(str(exported.path))
    assert state and all(key.startswith("unet.") for key in state)


def test_nothing_to_export_after_cancel(dataset, home, tmp_path):
    import threading

    cancel = threading.Event()
    cancel.set()
    trainer = LoRATrainer(_config(dataset, tmp_path), home)
    assert trainer.train(cancel_event=cancel).stopped == "cancelled"
    with pytest.raises(LoraTrainError, match="nothing to export"):
        trainer.export_lora_weights()
    assert not (tmp_path / "chest_ct_v1" / "chest_ct_v1.safetensors").exists()


def test_purpose_with_personal_data_is_refused(dataset, home, tmp_path):
    trainer = LoRATrainer(_config(dataset, tmp_path, purpose="follow-up of patient born 12.03.1961"), home)
    trainer.train()
    with pytest.raises(LoraTrainError, match="a date"):
        trainer.export_lora_weights()


def test_train_command_with_yaml_and_overrides(dataset, tmp_path, capsys):
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(
        "model_config:\n  base_model: embedded\n  lora_rank: 4\n  lora_alpha: 4\n"
        f"train_config:\n  train_data_dir: {dataset}\n  output_dir: {tmp_path / 'out' / 'cli_lora'}\n"
        "  batch_size: 2\n  epochs: 1\n  learning_rate: 1e-4\n  resolution: 64\n"
        "  purpose: segmentation research\n  owner: Radiology research lead\n  department: Radiology\n"
        "  legal_basis: GDPR Art. 6(1)(e) and 9(2)(j)\n  dpia_reference: DPIA-2026-014\n"
    )
    status = main(["--home", str(tmp_path / "home"), "train", "--config", str(config_file), "--set", "max_steps=2",
                   "--json", "--no-progress"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["name"] == "cli_lora" and summary["steps"] == 2 and summary["prompt"] == "<lora:cli_lora:0.7>"
    assert (tmp_path / "out" / "cli_lora" / "cli_lora.safetensors").is_file()
    with safe_open(str(tmp_path / "out" / "cli_lora" / "cli_lora.safetensors"), "pt") as handle:
        assert handle.metadata()["medical_lora.registry_id"] == summary["registry_id"]
    from lib_lora_train.registry import Registry

    with Registry(resolve_home(tmp_path / "home")) as registry:
        record = registry.get("cli_lora")
        assert record.id == summary["registry_id"] and record.purpose == "segmentation research"
        assert record.num_images == 4 and record.status == "active"
        actions = [entry["action"] for entry in _audit_entries(tmp_path / "home")]
        assert actions == ["train_start", "train_finish", "export", "register"]
        assert registry.audit.verify_chain() is None
    planted = [v for i in range(2) for v in planted_values(PhantomPatient(i))]
    assert find_needles((captured.out + captured.err).encode(), planted) == []


def test_train_command_config_errors_exit_2(tmp_path, capsys):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("lora_rnk: 4\n")
    assert main(["train", "--config", str(config_file)]) == 2
    assert "did you mean 'lora_rank'" in capsys.readouterr().err


def _audit_entries(home_root):
    return [json.loads(line) for line in (home_root / "audit.jsonl").read_text().splitlines()]


def test_train_command_refuses_to_start_without_the_registry_record(dataset, tmp_path, capsys):
    status = main(["--home", str(tmp_path / "home"), "train", "--config", str(CONFIGS / "my_lora_config.yaml"),
                   "--set", f"train_data_dir={dataset}", "--set", "purpose=research", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and "owner, department, legal_basis, dpia_reference" in err
    assert not (tmp_path / "home" / "models").exists()  # failed before loading or training anything
