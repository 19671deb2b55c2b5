"""Reading bytes into datasets: one clear error per kind of bad file."""

import pytest

from lib_lora_train.dicom.phantom import PhantomPatient, make_ct_slice
from lib_lora_train.dicom.read import check_is_image, read_dataset
from lib_lora_train.errors import DicomError, UnsupportedImageError


@pytest.mark.parametrize(
    "name, code",
    [
        ("rtplan.dcm", "no_pixel_data"),
        ("test-SR.dcm", "no_pixel_data"),
        ("waveform_ecg.dcm", "no_pixel_data"),
        ("liver.dcm", "not_an_image"),
        ("no_meta.dcm", "not_dicom"),
    ],
)
def test_public_non_images_are_refused(name, code, corpus_file):
    data = corpus_file(name).read_bytes()
    with pytest.raises(DicomError) as caught:
        check_is_image(read_dataset(data, "input 4"), "input 4")
    assert caught.value.code == code
    assert str(caught.value).startswith("input 4: ")


def test_not_dicom_and_truncated(corpus_file):
    with pytest.raises(DicomError, match="not a DICOM file") as caught:
        read_dataset(b"%PDF-1.4 SMITH JOHN" * 20, "input 1")
    assert caught.value.code == "not_dicom" and "SMITH" not in str(caught.value)
    data = corpus_file("CT_small.dcm").read_bytes()
    with pytest.raises(DicomError) as caught:
        check_is_image(read_dataset(data[:5000], "input 2"), "input 2")
    assert caught.value.code == "truncated"


def test_phantom_is_an_image(tmp_path):
    path = tmp_path / "x.dcm"
    make_ct_slice(PhantomPatient(0), 0, size=32).save_as(path, enforce_file_format=True)
    ds = read_dataset(path.read_bytes(), "input 1")
    check_is_image(ds, "input 1")
    assert ds.Modality == "CT"


def test_missing_sop_class_is_not_an_image():
    ds = make_ct_slice(PhantomPatient(0), 0, size=32)
    del ds.SOPClassUID
    with pytest.raises(UnsupportedImageError, match="SOP Class UID"):
        check_is_image(ds, "input 1")
