"""Fixtures for the tab's handlers: a data home, the embedded model, a context, phantom DICOMs."""

import shutil

import pytest

from lib_lora_train.api import ApiAuth, ApiState
from lib_lora_train.config import IngestConfig
from lib_lora_train.dicom.phantom import PhantomPatient, write_phantom_series
from lib_lora_train.home import resolve_home
from lib_lora_train.jobs import JobManager
from lib_lora_train.ui.context import UiContext

RECORD = {"name": "chest_ct", "purpose": "segmentation research", "department": "Radiology",
          "owner": "Radiology research lead", "legal_basis": "GDPR Art. 6(1)(e), 9(2)(j)",
          "dpia_reference": "DPIA-2026-014", "expires": "2027-06-30"}
FAST_OPTIONS = {"max_steps": "2", "resolution": "64", "lora_rank": 4}


@pytest.fixture(scope="session")
def embedded_host(tmp_path_factory):
    from lib_lora_train.hosts.diffusers_host import DiffusersHost

    return DiffusersHost.embedded(tmp_path_factory.mktemp("models"))


@pytest.fixture
def home(tmp_path):
    return resolve_home(tmp_path / "home").ensure()


def make_context(home, host, **kwargs):
    """A standalone-like context on an already loaded host."""
    from lib_lora_train.trainer.api import LoRATrainer
    from lib_lora_train.ui.generate import StandaloneGenerator

    import threading

    lock = threading.RLock()
    state = ApiState(home=home, jobs=JobManager(), make_trainer=lambda config: LoRATrainer(config, home, host=host),
                     auth=ApiAuth(), lock=lock, ingest_config=IngestConfig(ocr="off", resolution=64))
    kwargs.setdefault("generate", StandaloneGenerator(home, lambda: host, lock, steps=2))
    return UiContext(state=state, **kwargs)


@pytest.fixture
def context(home, embedded_host):
    return make_context(home, embedded_host)


@pytest.fixture
def gradio_uploads(tmp_path):
    """Phantom DICOMs as Gradio leaves them: one temp folder each, named after the patient."""
    source = write_phantom_series(tmp_path / "phantoms", n_patients=2, slices_per_patient=2, size=64)
    uploads = []
    for number, path in enumerate(source):
        patient = PhantomPatient(number // 2)
        folder = tmp_path / "gradio-tmp" / f"{number:040x}"
        folder.mkdir(parents=True)
        uploads.append(pathlib_copy(path, folder / f"{patient.family}^{patient.given}_{number}.dcm"))
    return uploads


def pathlib_copy(source, target):
    shutil.copy(source, target)
    return target
