"""``prepare`` end to end on real and generated DICOMs, good and bad, with planted PHI."""

import hashlib
import io
import json
import logging
import shutil
import zipfile

import numpy as np
import pydicom
import pytest
from PIL import Image

from lib_lora_train.config import IngestConfig
from lib_lora_train.dataset import pipeline
from lib_lora_train.dataset.images import png_chunk_types
from lib_lora_train.dataset.prepare import prepare_dataset
from lib_lora_train.demo import find_planted_values
from lib_lora_train.dicom.identifiers import harvest_identifiers
from lib_lora_train.dicom.phantom import PhantomPatient, make_ct_slice, planted_values, write_phantom_series
from lib_lora_train.dicom.pseudonym import Pseudonymizer
from lib_lora_train.errors import InputError
from tests.leakcheck import find_needles, harvest_needles, technical_terms

KEY = bytes(range(32))
FAST = dict(ocr="off", resolution=64)


@pytest.fixture
def pseudonymizer():
    return Pseudonymizer(KEY)


def _tree(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _all_output_bytes(folder):
    return b"\n".join(_tree(folder).values())


def _bad_inputs(tmp_path, corpus_file):
    """A batch folder mixing good phantoms with one of each kind of bad input."""
    batch = tmp_path / "upload"
    write_phantom_series(batch / "series", n_patients=2, slices_per_patient=3, size=64)
    (batch / "notes.txt").write_text("Patient QUILLFEATHER called on 2024-01-20")
    other = io.BytesIO()
    make_ct_slice(PhantomPatient(3), 0, size=64).save_as(other, enforce_file_format=True)
    (batch / "truncated.dcm").write_bytes(other.getvalue()[: len(other.getvalue()) // 2])
    annotated = make_ct_slice(PhantomPatient(4), 0, size=64)
    annotated.BurnedInAnnotation = "YES"
    annotated.save_as(batch / "annotated.dcm", enforce_file_format=True)
    shutil.copy(batch / "series" / "phantom_p01_s002.dcm", batch / "copy_of_p01_s002.dcm")
    shutil.copy(corpus_file("test-SR.dcm"), batch / "report.dcm")
    shutil.copy(corpus_file("MR_small.dcm"), batch / "mr.dcm")
    shutil.copy(corpus_file("ultrasounds/GREYSCALE_IMAGE.dcm"), batch / "us.dcm")
    buffer = io.BytesIO()
    make_ct_slice(PhantomPatient(2), 0, size=64).save_as(buffer, enforce_file_format=True)
    with zipfile.ZipFile(batch / "upload.zip", "w") as archive:
        archive.writestr("../../escape.dcm", buffer.getvalue())
        archive.writestr("p2/slice0", buffer.getvalue())
    return batch


def test_mixed_batch_every_bad_input_gets_its_reason_and_the_rest_goes_through(tmp_path, corpus_file, pseudonymizer, caplog):
    batch = _bad_inputs(tmp_path, corpus_file)
    originals = _tree(batch)
    caplog.set_level(logging.DEBUG)
    result = prepare_dataset([batch], tmp_path / "out", IngestConfig(**FAST), pseudonymizer)
    codes = sorted(o.code for o in result.outcomes if o.status == "rejected")
    assert codes == sorted(["not_dicom", "truncated", "duplicate", "no_pixel_data", "mixed_modality",
                            "mixed_modality", "burned_in_text", "zip_unsafe"])
    assert len(result.images) == 7 and result.ok  # 2x3 phantoms + the zip's good member
    assert result.report["counts"]["patients"] == 3
    for item in result.report["rejected"]:
        assert item["reason"].startswith(item["input"] + ": ")
    assert _tree(batch) == originals  # the uploaded originals are never modified
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "upload"]  # nothing written elsewhere
    planted = [v for i in range(5) for v in planted_values(PhantomPatient(i))]
    everything = _all_output_bytes(tmp_path / "out") + caplog.text.encode()
    assert find_needles(everything, planted) == []
    assert b"upload" not in _all_output_bytes(tmp_path / "out") and "notes.txt" not in caplog.text


def test_layout_metadata_and_pngs(tmp_path, pseudonymizer):
    paths = write_phantom_series(tmp_path / "in", n_patients=2, slices_per_patient=2, size=96)
    config = IngestConfig(ocr="off", resolution=128, window="lung", trigger_word="mdlart")
    result = prepare_dataset([tmp_path / "in"], tmp_path / "ds", config, pseudonymizer)
    out = result.output_dir
    assert sorted(p.name for p in out.iterdir()) == ["dicom", "images", "manifest.json", "metadata.csv",
                                                      "phi_screen.json", "report.json"]
    rows = (out / "metadata.csv").read_text().splitlines()
    assert rows[0] == "file_name,text" and len(rows) == 5
    assert rows[1].endswith(',"mdlart, CT scan of chest, axial slice, lung window, medical_art style"')
    for image in result.images:
        data = (out / image.file_name).read_bytes()
        assert png_chunk_types(data) == ["IHDR", "IDAT", "IEND"]
        assert Image.open(io.BytesIO(data)).size == (128, 128)
        assert hashlib.sha256(data).hexdigest() == image.sha256
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["patients"] == sorted(pseudonymizer.patient(PhantomPatient(i).patient_id) for i in range(2))
    assert len(manifest["images"]) == 4 and len(list((out / "dicom").iterdir())) == 4
    assert all("sha256" not in entry for entry in manifest["files"])
    assert set(p.name for p in paths).isdisjoint(p.name for p in out.rglob("*"))
    assert find_planted_values(out, [v for i in range(2) for v in planted_values(PhantomPatient(i))]) == []


PUBLIC_IMAGES = ["CT_small.dcm", "693_UNCR.dcm", "693_J2KI.dcm", "eCT_Supplemental.dcm", "RG1_UNCR.dcm",
                 "MR-SIEMENS-DICOM-WithOverlays.dcm", "MR_small_jpeg_ls_lossless.dcm", "bad_sequence.dcm",
                 "J2K_pixelrep_mismatch.dcm", "explicit_VR-UN.dcm", "emri_small_jpeg_2k_lossless.dcm", "animals/cat.dcm"]


@pytest.mark.parametrize("name", PUBLIC_IMAGES)
def test_public_files_convert_and_nothing_identifying_survives(name, tmp_path, corpus_file, pseudonymizer, caplog):
    path = corpus_file(name)
    original = pydicom.dcmread(path)
    needles = harvest_needles(original) | set(harvest_identifiers(original).all_raw_strings())
    needles = {n for n in needles if len(n) >= 5 and n.casefold() not in technical_terms(original)}
    caplog.clear()  # the test's own reading may log; only prepare's log lines count
    caplog.set_level(logging.DEBUG)
    result = prepare_dataset([path], tmp_path / "ds", IngestConfig(**FAST), pseudonymizer)
    assert result.ok, result.report["rejected"]
    everything = _all_output_bytes(tmp_path / "ds") + caplog.text.encode()
    assert find_needles(everything, needles) == []
    kept = pydicom.dcmread(tmp_path / "ds" / result.outcomes[0].dicom_file)
    assert kept.PatientIdentityRemoved == "YES"
    assert not any(e.tag.is_private for e in kept.iterall())


REJECTED_PUBLIC = {"ultrasounds/RGB_IMAGE.dcm": "burned_in_text", "US1_UNCR.dcm": "burned_in_text",
                   "OBXXXX1A.dcm": "burned_in_text", "ultrasound-multiframe.dcm": "burned_in_text",
                   "waveform_ecg.dcm": "no_pixel_data", "rtplan.dcm": "no_pixel_data", "liver.dcm": "not_an_image",
                   "MR_truncated.dcm": "truncated", "no_meta.dcm": "not_dicom", "humans/ctbrain1.dcm": "burned_in_text"}


@pytest.mark.parametrize("name, code", sorted(REJECTED_PUBLIC.items()))
def test_public_files_rejected_cleanly_without_leaking(name, code, tmp_path, corpus_file, pseudonymizer, caplog):
    path = corpus_file(name)
    original = pydicom.dcmread(path, force=True)
    needles = {n for n in harvest_needles(original) if len(n) >= 5}
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    result = prepare_dataset([path], tmp_path / "ds", IngestConfig(**FAST), pseudonymizer)
    assert not result.ok and [o.code for o in result.outcomes] == [code]
    out = tmp_path / "ds"
    assert sorted(p.name for p in out.iterdir()) == ["dicom", "images", "manifest.json", "metadata.csv",
                                                      "phi_screen.json", "report.json"]
    assert list((out / "images").iterdir()) == [] == list((out / "dicom").iterdir())
    assert (out / "metadata.csv").read_text() == "file_name,text\n"
    assert find_needles(_all_output_bytes(tmp_path / "ds") + caplog.text.encode(), needles) == []


def test_existing_dataset_needs_overwrite(tmp_path, pseudonymizer):
    write_phantom_series(tmp_path / "in", n_patients=1, slices_per_patient=2, size=64)
    prepare_dataset([tmp_path / "in"], tmp_path / "ds", IngestConfig(**FAST), pseudonymizer)
    with pytest.raises(InputError, match="already holds a dataset") as caught:
        prepare_dataset([tmp_path / "in"], tmp_path / "ds", IngestConfig(**FAST), pseudonymizer)
    assert caught.value.code == "output_exists"
    again = prepare_dataset([tmp_path / "in"], tmp_path / "ds", IngestConfig(**FAST), pseudonymizer, overwrite=True)
    assert len(list((tmp_path / "ds" / "images").iterdir())) == len(again.images) == 2


def test_crash_midway_leaves_no_half_written_dataset(tmp_path, pseudonymizer, monkeypatch):
    write_phantom_series(tmp_path / "in", n_patients=1, slices_per_patient=4, size=64)
    real_write = pipeline.FilePipeline._write_image
    calls = []

    def crash_on_third(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("power cut")
        return real_write(self, *args)

    monkeypatch.setattr(pipeline.FilePipeline, "_write_image", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset([tmp_path / "in"], tmp_path / "ds", IngestConfig(**FAST), pseudonymizer)
    assert list((tmp_path / "ds").iterdir()) == []


def test_dicom2png_mode_writes_images_and_report_only(tmp_path, pseudonymizer):
    write_phantom_series(tmp_path / "in", n_patients=1, slices_per_patient=2, size=64)
    result = prepare_dataset([tmp_path / "in"], tmp_path / "png", IngestConfig(**FAST), pseudonymizer, captions=False)
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["images", "manifest.json", "report.json"]
    assert all(image.caption == "" for image in result.images)


def test_all_frames_of_a_multiframe_file(tmp_path, corpus_file, pseudonymizer):
    path = corpus_file("emri_small.dcm")
    frames = int(pydicom.dcmread(path).NumberOfFrames)
    every = prepare_dataset([path], tmp_path / "all", IngestConfig(frames="all", **FAST), pseudonymizer)
    middle = prepare_dataset([path], tmp_path / "mid", IngestConfig(**FAST), pseudonymizer)
    assert len(every.images) == frames and len(middle.images) == 1
    assert len({image.file_name for image in every.images}) == frames


def test_trigger_word_with_a_header_name_is_refused(tmp_path, pseudonymizer):
    write_phantom_series(tmp_path / "in", n_patients=1, slices_per_patient=1, size=64)
    config = IngestConfig(trigger_word=PhantomPatient(0).family.lower(), **FAST)
    result = prepare_dataset([tmp_path / "in"], tmp_path / "ds", config, pseudonymizer)
    assert [o.code for o in result.outcomes] == ["caption_phi"]
    assert PhantomPatient(0).family.lower() not in json.dumps(result.report).lower()


def test_blank_regions_reach_the_kept_dicom(tmp_path, pseudonymizer):
    write_phantom_series(tmp_path / "in", n_patients=1, slices_per_patient=1, size=64)
    config = IngestConfig(blank_regions=[(0, 0, 32, 16)], ocr="off", resolution=64, window="lung")
    result = prepare_dataset([tmp_path / "in"], tmp_path / "ds", config, pseudonymizer)
    kept = pydicom.dcmread(tmp_path / "ds" / result.outcomes[0].dicom_file)
    assert np.all(kept.pixel_array[:16, :32] == 0) and np.any(kept.pixel_array[16:, :] != 0)
    assert kept.BurnedInAnnotation == "NO"
    assert "113101" in [item.CodeValue for item in kept.DeidentificationMethodCodeSequence]


def test_dates_shifted_on_request(tmp_path, pseudonymizer):
    write_phantom_series(tmp_path / "in", n_patients=1, slices_per_patient=1, size=64)
    config = IngestConfig(date_policy="shift", **FAST)
    result = prepare_dataset([tmp_path / "in"], tmp_path / "ds", config, pseudonymizer)
    kept = pydicom.dcmread(tmp_path / "ds" / result.outcomes[0].dicom_file)
    assert kept.StudyDate and kept.StudyDate != PhantomPatient(0).study_date
    assert kept.LongitudinalTemporalInformationModified == "MODIFIED"


def test_pydicom_value_warnings_never_reach_logs(tmp_path, pseudonymizer, caplog, recwarn):
    ds = make_ct_slice(PhantomPatient(0), 0, size=64)
    ds.StudyInstanceUID = "QUILLFEATHER-not-a-uid"  # pydicom's validation would quote it
    ds.AccessionNumber = "MARROWDALE-ACCESSION-TOO-LONG-FOR-SH"
    ds.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
    caplog.clear()
    recwarn.clear()
    caplog.set_level(logging.DEBUG)
    result = prepare_dataset([tmp_path / "bad.dcm"], tmp_path / "ds", IngestConfig(**FAST), pseudonymizer)
    assert result.ok
    said = caplog.text + " ".join(str(w.message) for w in recwarn.list)
    assert "QUILLFEATHER" not in said and "MARROWDALE" not in said


def test_caption_edits_are_screened_after_the_originals_are_gone(tmp_path, pseudonymizer):
    from lib_lora_train.dataset.phi_hashes import screen_caption_edit
    from lib_lora_train.errors import CaptionPHIError

    write_phantom_series(tmp_path / "in", n_patients=2, slices_per_patient=1, size=64)
    prepare_dataset([tmp_path / "in"], tmp_path / "ds", IngestConfig(**FAST), pseudonymizer)
    shutil.rmtree(tmp_path / "in")
    key = pseudonymizer.site_key
    screen_caption_edit(tmp_path / "ds", "CT scan of chest, axial slice, lung window, medical_art style", key)
    for planted, kind in ((PhantomPatient(1).family, "name"), (PhantomPatient(0).patient_id, "identifier")):
        with pytest.raises(CaptionPHIError, match=kind):
            screen_caption_edit(tmp_path / "ds", f"CT scan of chest {planted.lower()}", key)
    planted = [v for i in range(2) for v in planted_values(PhantomPatient(i))]
    assert find_needles((tmp_path / "ds" / "phi_screen.json").read_bytes(), planted) == []
    with pytest.raises(ValueError):
        screen_caption_edit(tmp_path / "ds", "CT scan", b"another site key of 32 bytes....")
