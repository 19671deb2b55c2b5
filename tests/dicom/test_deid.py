"""De-identification: the PS3.15 table, the allow-list, keyed UIDs, dates, provenance."""

import copy
import io

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from lib_lora_train.dicom import profile
from lib_lora_train.dicom.deid import DUMMY_BY_VR, deidentify, mark_pixels_clean
from lib_lora_train.dicom.phantom import PhantomPatient, make_ct_slice, planted_values
from lib_lora_train.dicom.pseudonym import Pseudonymizer
from tests.leakcheck import find_needles, harvest_needles

KEY = bytes(range(32))

PUBLIC_FILES = [
    "CT_small.dcm", "693_UNCR.dcm", "693_J2KI.dcm", "bad_sequence.dcm", "J2K_pixelrep_mismatch.dcm",
    "explicit_VR-UN.dcm", "eCT_Supplemental.dcm", "humans/ctbrain1.dcm", "humans/ctbrain2.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm", "RG1_UNCR.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "emri_small_jpeg_2k_lossless.dcm", "ultrasounds/GREYSCALE_IMAGE.dcm", "ultrasounds/RGB_IMAGE.dcm",
    "animals/cat.dcm", "rtplan.dcm", "waveform_ecg.dcm", "test-SR.dcm", "liver.dcm", "JPEG2000.dcm",
    "examples_overlay.dcm", "OBXXXX1A.dcm",
]


def _saved_bytes(ds):
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def pseudonymizer():
    return Pseudonymizer(KEY)


def test_phantom_planted_values_never_survive(pseudonymizer):
    for index in range(3):
        original = make_ct_slice(PhantomPatient(index), 1)
        planted = planted_values(PhantomPatient(index))
        assert len(planted) >= 30
        assert find_needles(_saved_bytes(original), planted)  # the planting really happened
        output = _saved_bytes(deidentify(original, pseudonymizer).dataset)
        assert find_needles(output, planted) == []


@pytest.mark.parametrize("name", PUBLIC_FILES)
def test_public_file_identifiers_never_survive(name, corpus_file, pseudonymizer):
    original = pydicom.dcmread(corpus_file(name))
    needles = harvest_needles(original)
    assert needles, "the harvest found nothing: the leak test would prove nothing"
    result = deidentify(original, pseudonymizer)
    assert find_needles(_saved_bytes(result.dataset), needles) == []
    for key in ("shift", "remove"):
        shifted = deidentify(original, pseudonymizer, date_policy=key).dataset
        leaked = find_needles(_saved_bytes(shifted), needles)
        assert leaked == [], f"date_policy={key}"


def test_input_dataset_is_not_modified(corpus_file, pseudonymizer):
    original = pydicom.dcmread(corpus_file("CT_small.dcm"))
    before = copy.deepcopy(original)
    deidentify(original, pseudonymizer)
    assert original == before


def _dataset_with_every_table_attribute():
    """One element per exact tag of Table E.1-1 whose VR is simple, each with a real value."""
    samples = {"PN": "DOE^JANE", "LO": "LEAKVALUE", "SH": "LEAKVAL", "LT": "LEAK TEXT", "ST": "LEAK TEXT",
               "UT": "LEAK TEXT", "CS": "LEAKCS", "DA": "19610203", "TM": "101112", "DT": "19610203101112",
               "UI": "1.2.3.4.5.6", "AS": "061Y", "IS": "7", "DS": "7.5", "US": 7, "SS": 7, "UL": 7, "FD": 7.5,
               "FL": 7.5, "AE": "LEAKAE", "SQ": None}
    ds, expected = Dataset(), {}
    for tag, action in profile.load_profile_table().exact.items():
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr not in samples or tag >> 16 in (0x0000, 0x0002):  # command set / file meta: never in a dataset
            continue
        value = pydicom.sequence.Sequence([Dataset()]) if vr == "SQ" else samples[vr]
        if vr == "SQ":
            value[0].PatientName = "DOE^NESTED"
        ds.add_new(tag, vr, value)
        expected[tag] = profile.COMPOUND_ACTIONS.get(action, action)
    return ds, expected


def test_every_profile_attribute_gets_its_action(pseudonymizer):
    original, expected = _dataset_with_every_table_attribute()
    assert len(expected) > 500
    output = deidentify(original, pseudonymizer).dataset
    for tag, action in expected.items():
        if tag in (0x00100020,):  # PatientID: Z/D, replaced by the keyed pseudonym (a D value)
            assert output[tag].value.startswith("P")
            continue
        if action in ("X", "C"):
            assert tag not in output, f"{tag:08X} should be removed"
        elif action == "Z":
            assert tag in output and (output[tag].value in (None, "", b"") or output[tag].VR == "SQ" and len(output[tag].value) == 0), f"{tag:08X}"
        elif action == "D":
            element = output[tag]
            if element.VR == "SQ":
                assert len(element.value) == 1 and len(element.value[0]) == 0
            elif element.VR == "UI":
                assert element.value.startswith("2.25.")
            else:
                assert element.value == DUMMY_BY_VR[element.VR], f"{tag:08X}"
        elif action == "U":
            assert output[tag].value != "1.2.3.4.5.6" and output[tag].value.startswith("2.25."), f"{tag:08X}"
    assert find_needles(_saved_bytes(output), ["DOE^JANE", "LEAKVALUE", "19610203", "1.2.3.4.5.6", "DOE^NESTED"]) == []


def test_uids_are_keyed_consistent_and_valid(pseudonymizer):
    first = deidentify(make_ct_slice(PhantomPatient(0), 0), pseudonymizer).dataset
    second = deidentify(make_ct_slice(PhantomPatient(0), 1), pseudonymizer).dataset
    other_site = deidentify(make_ct_slice(PhantomPatient(0), 0), Pseudonymizer(b"x" * 32)).dataset
    assert first.StudyInstanceUID == second.StudyInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.StudyInstanceUID != other_site.StudyInstanceUID
    for uid in (first.StudyInstanceUID, first.SOPInstanceUID, first.FrameOfReferenceUID):
        assert uid.is_valid and len(uid) <= 64 and uid.startswith("2.25.")
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID


def test_patient_is_only_its_keyed_pseudonym(pseudonymizer):
    patient = PhantomPatient(1)
    result = deidentify(make_ct_slice(patient, 0), pseudonymizer)
    assert result.patient == pseudonymizer.patient(patient.patient_id)
    assert result.dataset.PatientID == result.patient
    assert result.dataset.PatientName in (None, "")
    assert not result.patient_id_missing


def test_provenance_is_recorded_truthfully(pseudonymizer):
    output = deidentify(make_ct_slice(PhantomPatient(0), 0), pseudonymizer).dataset
    assert output.PatientIdentityRemoved == "YES"
    assert [item.CodeValue for item in output.DeidentificationMethodCodeSequence] == ["113100"]
    assert output.LongitudinalTemporalInformationModified == "REMOVED"
    assert "BurnedInAnnotation" not in output  # no pixel pass yet: claim nothing
    mark_pixels_clean(output)
    assert output.BurnedInAnnotation == "NO"
    assert [item.CodeValue for item in output.DeidentificationMethodCodeSequence] == ["113100", "113101"]


def test_date_shift_is_consistent_per_patient(pseudonymizer):
    a0 = deidentify(make_ct_slice(PhantomPatient(0), 0), pseudonymizer, date_policy="shift").dataset
    a1 = deidentify(make_ct_slice(PhantomPatient(0), 3), pseudonymizer, date_policy="shift").dataset
    b0 = deidentify(make_ct_slice(PhantomPatient(9), 0), pseudonymizer, date_policy="shift").dataset
    original_date = PhantomPatient(0).study_date
    assert a0.StudyDate == a1.StudyDate and a0.StudyDate != original_date and len(a0.StudyDate) == 8
    assert a0.AcquisitionDateTime[8:] == "093512"  # time kept, date shifted
    # PhantomPatient(9) has the same study date as patient 0, but another shift
    assert PhantomPatient(9).study_date == original_date and b0.StudyDate != a0.StudyDate
    assert a0.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "113107" in [item.CodeValue for item in a0.DeidentificationMethodCodeSequence]
    assert "PatientBirthDate" not in a0 or not a0.PatientBirthDate


def test_private_overlays_and_unlisted_attributes_are_removed(corpus_file, pseudonymizer):
    original = pydicom.dcmread(corpus_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    assert any(elem.tag.group == 0x6000 for elem in original) and any(elem.tag.is_private for elem in original)
    output = deidentify(original, pseudonymizer).dataset
    tags = [elem.tag for elem in output.iterall()]
    assert not any(tag.is_private for tag in tags)
    assert not any(0x5000 <= tag.group <= 0x60FF for tag in tags)
    assert "Manufacturer" not in output and "InstitutionName" not in output
    assert output.Rows == original.Rows and output.PixelData == original.PixelData


def test_enhanced_functional_groups_keep_only_pixel_relevant_items(corpus_file, pseudonymizer):
    original = pydicom.dcmread(corpus_file("eCT_Supplemental.dcm"))
    output = deidentify(original, pseudonymizer).dataset
    shared = output.SharedFunctionalGroupsSequence[0]
    assert "PixelValueTransformationSequence" in shared
    frame = output.PerFrameFunctionalGroupsSequence[0]
    assert "FrameContentSequence" not in frame
    assert set(frame.dir()) <= profile.ALLOWED_SEQUENCES


def test_body_part_kept_only_when_a_defined_term(pseudonymizer):
    ds = make_ct_slice(PhantomPatient(0), 0)
    assert deidentify(ds, pseudonymizer).dataset.BodyPartExamined == "CHEST"
    ds.BodyPartExamined = "QUILLFEATHER"
    assert "BodyPartExamined" not in deidentify(ds, pseudonymizer).dataset


def test_missing_patient_id_falls_back_to_study(pseudonymizer):
    ds = make_ct_slice(PhantomPatient(0), 0)
    del ds.PatientID
    result = deidentify(ds, pseudonymizer)
    assert result.patient_id_missing
    assert result.patient == pseudonymizer.patient("study:" + ds.StudyInstanceUID)


def test_saved_output_reads_back_as_valid_part10(pseudonymizer):
    output = deidentify(make_ct_slice(PhantomPatient(0), 0), pseudonymizer).dataset
    again = pydicom.dcmread(io.BytesIO(_saved_bytes(output)))
    assert again.preamble == b"\x00" * 128
    assert again.SOPInstanceUID == output.SOPInstanceUID
    assert again.pixel_array.shape == (256, 256)
