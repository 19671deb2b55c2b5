"""Tests of lib_lora_train/dicom/identifiers.py on synthetic headers and public PHI-rich files.

Failure messages name element keywords and kinds only, never header values.
"""

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from lib_lora_train.dicom import identifiers as ids
from tests.conftest import PHI_FILES

pytestmark = pytest.mark.filterwarnings("ignore:The value length")

_CLASS_KEYWORD_SUFFIXES = ("ClassUID", "TransferSyntaxUID")


def _forms(index, kind=None):
    return {v.normalized for v in index.values if kind is None or v.kind == kind}


def _dataset(**elements):
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


NORMALIZE_CASES = (
    ("Müller^Jörg", "muller jorg"),
    ("Weißenkirchen", "weissenkirchen"),
    ("  A--B_c ", "a b c"),
    ("ÅNGSTRÖM, Émile", "angstrom emile"),
)


@pytest.mark.parametrize("text, expected", NORMALIZE_CASES)
def test_normalize_text(text, expected):
    assert ids.normalize_text(text) == expected


@pytest.mark.parametrize(
    "text, expected", [("11-05-25-142825", "110525142825"), ("W1500 L-600", "w1500 l600"), ("A.b/c", "abc")]
)
def test_compact_text(text, expected):
    assert ids.compact_text(text) == expected


HARVEST_CASES = (
    # (keyword, value, kind, forms that must be indexed, forms that must not be)
    ("PatientName", "Doe^John^Q", ids.KIND_NAME, {"doe", "john", "doe john q", "john doe"}, {"q"}),
    ("PatientName", "van der Berg^Anna", ids.KIND_NAME, {"van der berg", "berg", "anna"}, set()),
    ("PatientName", "ANONYMOUS", ids.KIND_NAME, set(), {"anonymous"}),
    ("PatientID", "AB-12-345", ids.KIND_ID, {"ab 12 345", "ab12345"}, set()),
    ("PatientID", "00012345", ids.KIND_ID, {"00012345", "12345"}, set()),
    ("AccessionNumber", "ACC778899", ids.KIND_ID, {"acc778899"}, set()),
    ("IssuerOfPatientID", "CCHS", ids.KIND_ID, {"cchs"}, set()),
    ("FillerOrderNumberImagingServiceRequest", "FO-4711", ids.KIND_ID, {"fo 4711", "fo4711"}, set()),
    ("SeriesNumber", "12345", None, set(), {"12345"}),
    ("InstanceNumber", "4711", None, set(), {"4711"}),
    ("StationName", "CT01_OC0", ids.KIND_DEVICE, {"ct01 oc0", "ct01oc0"}, set()),
    ("DeviceSerialNumber", "92.00.003", ids.KIND_DEVICE, {"92 00 003", "9200003"}, set()),
    ("StationName", "1,0", ids.KIND_DEVICE, set(), {"1 0", "10"}),
    ("InstitutionName", "Springfield General Hospital", ids.KIND_INSTITUTION,
     {"springfield general hospital", "springfield"}, {"general", "hospital"}),
    ("InstitutionName", "Bartels Busack Pet Hospital", ids.KIND_INSTITUTION, {"bartels", "busack"}, {"pet"}),
    ("InstitutionalDepartmentName", "Radiology", ids.KIND_INSTITUTION, {"radiology"}, set()),
    ("PatientAddress", "Nr. 309^^3610^^Weißenkirchen", ids.KIND_ADDRESS, {"weissenkirchen", "3610"}, {"309"}),
    ("StudyDescription", "THORAX", ids.KIND_FREE_TEXT, set(), {"thorax"}),
    ("StudyDescription", "US KIDNEY", ids.KIND_FREE_TEXT, set(), {"us kidney", "kidney"}),
    ("AdditionalPatientHistory", "Seizure, new, acute, hx of trauma", ids.KIND_FREE_TEXT,
     {"seizure new acute hx of trauma"}, {"acute", "seizure", "new"}),
    ("SOPInstanceUID", "1.2.3.4.5.6789", ids.KIND_UID, {"1 2 3 4 5 6789", "123456789"}, set()),
    ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2", None, set(), {"1 2 840 10008 5 1 4 1 1 2"}),
    ("StudyDate", "20210312", ids.KIND_DATE,
     {"20210312", "2021 03 12", "12 03 2021", "03 12 2021", "12 03 21", "12 march 2021", "march 12 2021",
      "mar 12 2021", "12th march 2021", "march 12th", "12 marz 2021", "3 12 2021", "12 3 2021", "march 2021"},
     set()),
    ("AcquisitionDateTime", "20230101011721.621000", ids.KIND_DATE, {"january 1 2023", "01 01 2023"}, set()),
    ("PatientBirthDate", "11111111", ids.KIND_DATE, {"11111111"}, set()),
)


@pytest.mark.parametrize("keyword, value, kind, present, absent", HARVEST_CASES)
def test_harvest_table(keyword, value, kind, present, absent):
    index = ids.harvest_identifiers(_dataset(**{keyword: value}))
    assert present <= _forms(index, kind)
    assert not absent & _forms(index)


def test_nested_sequences_are_walked():
    inner = _dataset(PatientName="Nested^Person", PatientID="NEST12345")
    middle = _dataset(ReferencedStudySequence=Sequence([inner]), AccessionNumber="ACC-99881")
    ds = _dataset(RequestAttributesSequence=Sequence([middle]))
    index = ids.harvest_identifiers(ds)
    assert {"nested", "person", "nest12345", "acc99881"} <= _forms(index)
    assert {"Nested^Person", "NEST12345", "ACC-99881"} <= set(index.all_raw_strings())


def test_private_and_un_elements_are_harvested():
    ds = Dataset()
    ds.add_new(0x00330010, "LO", "SOME VENDOR")
    ds.add_new(0x00331001, "LO", "20190517")
    ds.add_new(0x00331002, "PN", "Private^Pat")
    ds.add_new(0x00331003, "LO", "M1212121")
    ds.add_new(0x00331004, "LT", "Reason: fall at home, hip pain")
    ds.add_new(0x00331005, "UN", b"DOE^JANE ")
    ds.add_new(0x00331006, "UN", b"\x12\x00\x80\x01")
    ds.add_new(0x00331007, "UI", "1.3.6.1.4.1.9999.1.2")
    index = ids.harvest_identifiers(ds)
    kinds = {v.normalized: v.kind for v in index.values}
    assert kinds["17 may 2019"] == ids.KIND_DATE
    assert kinds["private"] == ids.KIND_NAME
    assert kinds["m1212121"] == ids.KIND_ID
    assert kinds["reason fall at home hip pain"] == ids.KIND_FREE_TEXT
    assert kinds["doe"] == ids.KIND_NAME
    assert kinds["1 3 6 1 4 1 9999 1 2"] == ids.KIND_UID
    raws = set(index.all_raw_strings())
    assert {"20190517", "Private^Pat", "M1212121", "DOE^JANE"} <= raws
    assert "SOME VENDOR" not in raws  # private creators name the vendor, not a person


def test_file_meta_is_harvested():
    ds = _dataset(PatientName="Meta^Test")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.99.1"
    ds.file_meta.SourceApplicationEntityTitle = "SITEPACS1"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    index = ids.harvest_identifiers(ds)
    assert {"1 2 826 0 1 3680043 99 1", "sitepacs1"} <= _forms(index)
    assert "1.2.840.10008.1.2.1" not in index.all_raw_strings()


def test_merged_and_repr_hide_values():
    first = ids.harvest_identifiers(_dataset(PatientName="Alpha^Anne", PatientID="ID-0001"))
    second = ids.harvest_identifiers(_dataset(PatientName="Alpha^Anne", StationName="ST9000"))
    merged = first.merged(second)
    assert _forms(first) | _forms(second) == _forms(merged)
    assert len(merged.values) == len({v.normalized for v in merged.values})
    assert "Alpha" not in repr(merged) and "anne" not in repr(merged.values)
    assert set(merged.all_raw_strings()) == {"Alpha^Anne", "ID-0001", "ST9000"}


def test_generic_and_short_values_are_not_raw_needles():
    ds = _dataset(PatientName="Anonymized", PatientID="1", InstitutionName="Our Department", StationName="CT")
    assert ids.harvest_identifiers(ds).all_raw_strings() == []


@pytest.mark.parametrize("name", PHI_FILES)
def test_real_file_header_values_are_harvested(corpus_file, name):
    ds = pydicom.dcmread(corpus_file(name))
    index = ids.harvest_identifiers(ds)
    forms, raws = _forms(index), set(index.all_raw_strings())
    missing = []
    name_parts = [w for c in str(ds.PatientName).split("^") for w in c.split()]
    for part in name_parts:
        if len(part) >= 3 and part.casefold() not in ids.GENERIC_VALUES and part.casefold() not in forms:
            missing.append("PatientName component")
    for keyword in ("PatientName", "PatientID", "InstitutionName", "StudyDate"):
        if str(ds.get(keyword, "") or "") not in raws:
            missing.append(keyword)
    if ids.normalize_text(ds.PatientID) not in _forms(index, ids.KIND_ID):
        missing.append("PatientID as identifier")
    if ds.StudyDate not in _forms(index, ids.KIND_DATE):
        missing.append("StudyDate as date")
    assert missing == []


def _nested_and_private_needles(dataset, depth=0):
    """Walk the file ourselves: (keyword, value) of every nested or private text value worth a needle."""
    needles = []
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                needles += _nested_and_private_needles(item, depth + 1)
            continue
        if element.tag.is_private_creator or not (depth or element.tag.is_private):
            continue
        identifying_public = element.VR in ("PN", "DA", "DT") or (
            element.VR == "UI" and not element.keyword.endswith(_CLASS_KEYWORD_SUFFIXES)
        )
        if not (identifying_public or (element.tag.is_private and element.VR in ids.TEXT_VRS)):
            continue
        values = element.value if isinstance(element.value, (list, pydicom.multival.MultiValue)) else [element.value]
        for value in values:
            text = str(value).strip()
            if len(text) >= 3 and not text.startswith("1.2.840.10008.") and text.casefold() not in ids.GENERIC_VALUES:
                needles.append((element.keyword or str(element.tag), text))
    return needles


@pytest.mark.parametrize("name", PHI_FILES)
def test_every_nested_and_private_value_is_a_raw_needle(corpus_file, name):
    ds = pydicom.dcmread(corpus_file(name))
    raws = set(ids.harvest_identifiers(ds).all_raw_strings())
    needles = _nested_and_private_needles(ds)
    assert [keyword for keyword, text in needles if text not in raws] == []


KNOWN_NESTED = (
    # (file, path of (sequence keyword, item) ... element keyword, kind)
    ("CT_small.dcm", ("OtherPatientIDsSequence", 1, "PatientID"), ids.KIND_ID),
    ("humans/ctbrain1.dcm", ("RequestAttributesSequence", 0, "AccessionNumber"), ids.KIND_ID),
    ("humans/ctbrain1.dcm", ("RequestAttributesSequence", 0, "ScheduledProcedureStepID"), ids.KIND_ID),
    ("ultrasounds/GREYSCALE_IMAGE.dcm", ("ReferencedPatientSequence", 0, "ReferencedSOPInstanceUID"), ids.KIND_UID),
    ("eCT_Supplemental.dcm", ("ReferencedRawDataSequence", 0, "StudyInstanceUID"), ids.KIND_UID),
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", ("RequestAttributesSequence", 0, "RequestedProcedureID"), ids.KIND_ID),
)


@pytest.mark.parametrize("name, path, kind", KNOWN_NESTED)
def test_known_nested_values(corpus_file, name, path, kind):
    ds = pydicom.dcmread(corpus_file(name))
    sequence, item, keyword = path
    value = str(ds[sequence][item][keyword].value)
    index = ids.harvest_identifiers(ds)
    assert value in index.all_raw_strings()
    assert ids.normalize_text(value) in _forms(index, kind)


@pytest.mark.parametrize(
    "name, tag, kind",
    [
        ("humans/ctbrain1.dcm", 0x00311020, ids.KIND_ID),  # AGFA "Global Patient ID" (private LO)
        ("humans/ctbrain1.dcm", 0x00291020, ids.KIND_DATE),  # Siemens CSA series date-time (private LO)
        ("humans/ctbrain1.dcm", 0x00331013, ids.KIND_NAME),  # MITRA patient name (private PN)
    ],
)
def test_known_private_values(corpus_file, name, tag, kind):
    ds = pydicom.dcmread(corpus_file(name))
    value = str(ds[tag].value)
    index = ids.harvest_identifiers(ds)
    assert value in index.all_raw_strings()
    assert ids.normalize_text(value) in _forms(index, kind)
