"""Fixtures of the trainer tests: a small prepared phantom dataset (2 patients x 2 slices, 64 px)."""

import pytest

from lib_lora_train.config import IngestConfig
from lib_lora_train.dataset.prepare import prepare_dataset
from lib_lora_train.dicom.phantom import write_phantom_series
from lib_lora_train.dicom.pseudonym import Pseudonymizer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_phantom_series(root / "in", n_patients=2, slices_per_patient=2, size=64)
    prepare_dataset([root / "in"], root / "ds", IngestConfig(ocr="off", resolution=64, window="lung"),
                    Pseudonymizer(b"k" * 32))
    return root / "ds"
