"""Shared fixtures: the public DICOM corpora, found by path (never downloaded)."""

import importlib.util
import os
import pathlib

import pytest


def _package_dir(module, *parts):
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return pathlib.Path(spec.origin).parent.joinpath(*parts)


def corpus_dirs():
    """Folders of the public test corpora that are installed (pydicom, pydicom-data, deid-data)."""
    candidates = [
        _package_dir("pydicom", "data", "test_files"),
        _package_dir("data_store", "data"),
        _package_dir("deid_data", "data"),
    ]
    return [d for d in candidates if d is not None and d.is_dir()]


def find_corpus_file(name):
    """Path of a public test file by its base name (or a relative path such as 'humans/ctbrain1.dcm').

    pydicom's ``get_testdata_file`` tries a download for names it does not ship, so files
    are found by path only.
    """
    for folder in corpus_dirs():
        direct = folder / name
        if direct.is_file():
            return direct
        for path in folder.rglob(os.path.basename(name)):
            if path.is_file() and str(path).endswith(name):
                return path
    return None


@pytest.fixture
def corpus_file():
    """Return a function name -> path that skips the test when the file is not installed."""

    def _get(name):
        path = find_corpus_file(name)
        if path is None:
            pytest.skip(f"test corpus file {name} is not installed (pip install pydicom-data deid-data)")
        return path

    return _get


# Public files with realistic PHI in their headers (DICOM_NOTES.md section 3.2).
PHI_FILES = (
    "CT_small.dcm",
    "humans/ctbrain1.dcm",
    "ultrasounds/GREYSCALE_IMAGE.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "RG1_UNCR.dcm",
    "eCT_Supplemental.dcm",
)
