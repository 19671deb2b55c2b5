"""Fixtures of the registry tests: a data home, real small kohya safetensors files, dataset folders."""

import hashlib
import json
import pathlib
import shutil

import numpy as np
import pytest

from lib_lora_train.dicom.pseudonym import Pseudonymizer
from lib_lora_train.export.result import ExportResult
from lib_lora_train.home import DataHome
from lib_lora_train.registry import Registry

KEY = bytes(range(32))
KOHYA_MODULE = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
FACTS = dict(
    base_fingerprint="a" * 64, purpose="teaching: chest CT style", owner="Dr Example (radiology)",
    department="Radiology", legal_basis="GDPR Art. 6(1)(e), 9(2)(j)", dpia_reference="DPIA-RAD-7",
    data_source="CT chest, radiology PACS export",
)


def write_adapter(folder, name, seed=0, copies=()):
    """A real kohya LoRA file (safetensors, string metadata) plus byte-identical copies."""
    from safetensors.numpy import save_file

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {
        f"{KOHYA_MODULE}.lora_down.weight": rng.standard_normal((4, 32)).astype(np.float16),
        f"{KOHYA_MODULE}.lora_up.weight": rng.standard_normal((32, 4)).astype(np.float16),
        f"{KOHYA_MODULE}.alpha": np.array(4.0, dtype=np.float32),
    }
    metadata = {"ss_output_name": name, "ss_network_dim": "4", "ss_network_alpha": "4.0"}
    path = folder / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    copy_paths = []
    for copy_name in copies:
        shutil.copyfile(path, folder / copy_name)
        copy_paths.append(folder / copy_name)
    data = path.read_bytes()
    return ExportResult(name, path, tuple(copy_paths), hashlib.sha256(data).hexdigest(), len(data), metadata)


def write_training_outputs(exported):
    """The files the trainer leaves next to an export (its own output folder)."""
    folder = exported.path.parent
    (folder / "losses.csv").write_text("step,loss\n1,0.5\n")
    (folder / "loss_curve.png").write_bytes(b"\x89PNG curve")
    (folder / "training_summary.json").write_text(json.dumps({"name": exported.name, "sha256": exported.sha256}))
    (folder / "checkpoints" / "step-00000002").mkdir(parents=True)
    (folder / "checkpoints" / "step-00000002" / "lora.safetensors").write_bytes(b"checkpoint")


def write_dataset(folder, dataset_id, patient_indices, pseudonymizer):
    """A small dataset folder laid out like ``prepare`` writes it; returns its manifest."""
    folder = pathlib.Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "dicom").mkdir(exist_ok=True)
    patients = [pseudonymizer.patient(f"TESTPATIENT{i}") for i in patient_indices]
    images = []
    for i, patient in enumerate(patients):
        name = f"images/{dataset_id}-{i}.png"
        (folder / name).write_bytes(b"\x89PNG image " + patient.encode())
        (folder / "dicom" / f"{dataset_id}-{i}.dcm").write_bytes(b"DICM")
        images.append({"file_name": name, "patient": patient, "study": pseudonymizer.study(f"1.2.3.{i}"),
                       "sha256": hashlib.sha256(name.encode()).hexdigest()})
    manifest = {
        "dataset_id": dataset_id, "patients": sorted(patients), "studies": sorted({i["study"] for i in images}),
        "images": images, "deidentification": {"profile": "PS3.15 E.1-1", "allow_list_version": "2026c-1"},
    }
    (folder / "metadata.csv").write_text("file_name,text\n" + "".join(f"{i['file_name']},chest ct\n" for i in images))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "report.json").write_text(json.dumps({"dataset_id": dataset_id}))
    return manifest


def register(registry, exported, manifest, dataset_path, actor="alice", **overrides):
    """Register with the usual Art. 30 facts; keyword arguments override them."""
    values = dict(FACTS, config_dict={"lora_rank": 4, "seed": 1}, expires=None)
    values.update(overrides)
    return registry.register(exported, dataset_manifest=manifest, dataset_path=dataset_path, actor=actor, **values)


@pytest.fixture
def pseudonymizer():
    return Pseudonymizer(KEY)


@pytest.fixture
def home(tmp_path):
    return DataHome(tmp_path / "home").ensure()


@pytest.fixture
def registry(home):
    with Registry(home) as opened:
        yield opened


@pytest.fixture
def adapter(home, registry, pseudonymizer):
    """One registered adapter trained on its own dataset, with training outputs and a sidecar."""
    manifest = write_dataset(home.datasets_dir / "ds-a", "ds-a", [0, 1], pseudonymizer)
    exported = write_adapter(home.adapters_dir / "chest", "chest", copies=("pytorch_lora_weights.safetensors",))
    write_training_outputs(exported)
    exported.path.with_suffix(".preview.png").write_bytes(b"\x89PNG preview")
    return register(registry, exported, manifest, home.datasets_dir / "ds-a")
