"""Tests of lib_lora_train/dataset/captions.py: vocabulary mapping, plane, template and PHI check."""

import math

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from lib_lora_train.config import IngestConfig
from lib_lora_train.dataset import captions
from lib_lora_train.dataset.captions import (
    CaptionAttributes,
    build_caption,
    caption_attributes,
    caption_for,
)
from lib_lora_train.dicom.identifiers import KIND_NAME, harvest_identifiers
from lib_lora_train.dicom.window import WINDOW_PRESETS
from lib_lora_train.errors import CaptionPHIError, ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:The value length")

NO_TRIGGER = IngestConfig()
LUNG_CT = CaptionAttributes("CT", "lung", "axial")

PLANE_CASES = (
    ("axial", (1, 0, 0, 0, 1, 0), "axial"),
    ("axial, gantry tilt 8.7 deg", (1, 0, 0, 0, 0.98796, -0.15152), "axial"),
    ("coronal", (1, 0, 0, 0, 0, -1), "coronal"),
    ("sagittal", (0, 1, 0, 0, 0, -1), "sagittal"),
    ("oblique 45 deg", (1, 0, 0, 0, math.sqrt(0.5), math.sqrt(0.5)), "oblique"),
    ("double oblique", (0.8, 0.6, 0, 0, 0.6, -0.8), "oblique"),
    ("degenerate", (0, 0, 0, 0, 0, 0), None),
    ("wrong length", (1, 0, 0, 0, 1), None),
    ("not finite", (1, 0, 0, 0, float("nan"), 0), None),
)


@pytest.mark.parametrize("label, cosines, plane", PLANE_CASES, ids=[c[0] for c in PLANE_CASES])
def test_plane_from_orientation(label, cosines, plane):
    assert captions.plane_from_orientation(cosines) == plane


def _enhanced(cosines, group="SharedFunctionalGroupsSequence"):
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(cosines)
    item = Dataset()
    item.PlaneOrientationSequence = Sequence([orientation])
    ds = Dataset()
    setattr(ds, group, Sequence([item]))
    return ds


@pytest.mark.parametrize("group", ["SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"])
def test_plane_from_enhanced_functional_groups(group):
    assert captions.plane_of(_enhanced((0, 1, 0, 0, 0, -1), group)) == "sagittal"


def test_plane_of_real_enhanced_ct(corpus_file):
    ds = pydicom.dcmread(corpus_file("eCT_Supplemental.dcm"))
    assert "ImageOrientationPatient" not in ds
    assert captions.plane_of(ds) == "axial"


def test_no_orientation_gives_no_plane():
    assert captions.plane_of(Dataset()) is None


BODY_PART_CASES = (
    ("CHEST", "chest"),
    ("THORAX", "chest"),
    ("LUNG", "lung"),
    ("HEAD", "head"),
    ("BRAIN", "brain"),
    ("SKULL", "head"),
    ("ABDOMEN", "abdomen"),
    ("Abdomen_Pelvis", "abdomen and pelvis"),
    ("PELVIS", "pelvis"),
    ("C-SPINE", "cervical spine"),
    ("CSPINE", "cervical spine"),
    ("L SPINE", "lumbar spine"),
    ("TSPINE", "thoracic spine"),
    ("knee", "knee"),
    ("HAND", "hand"),
    ("SMITH JOHN", None),
    ("LEFT KNEE PAIN 2021", None),
    ("", None),
)


@pytest.mark.parametrize("value, phrase", BODY_PART_CASES)
def test_body_part_mapping(value, phrase):
    assert captions.body_part_phrase(value) == phrase


MODALITY_CASES = (
    ("CT", "CT"), ("MR", "MRI"), ("CR", "X-ray"), ("DX", "X-ray"), ("MG", "mammography"),
    ("NM", "nuclear medicine"), ("PT", "PET"), ("US", "ultrasound"), ("XA", "angiography"),
    ("OT", None), ("SMITH", None),
)


@pytest.mark.parametrize("code, phrase", MODALITY_CASES)
def test_modality_mapping(code, phrase):
    ds = Dataset()
    ds.Modality = code
    assert caption_attributes(ds).modality == phrase


def test_caption_attributes_of_a_dataset():
    ds = Dataset()
    ds.Modality = "MR"
    ds.BodyPartExamined = "BRAIN"
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    assert caption_attributes(ds) == CaptionAttributes("MRI", "brain", "sagittal")


def test_unknown_body_part_is_never_passed_through():
    ds = Dataset()
    ds.Modality = "CT"
    ds.BodyPartExamined = "DOE JANE FOLLOWUP"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    attrs = caption_attributes(ds)
    assert attrs.body_part is None
    caption = build_caption(attrs, NO_TRIGGER, "lung")
    assert "doe" not in caption.casefold()
    assert caption == "CT scan, axial slice, lung window, medical_art style"  # "of {body_part}" dropped


def test_empty_dataset_gives_no_attributes():
    assert caption_attributes(Dataset()) == CaptionAttributes(None, None, None)


BUILD_CASES = (
    # (label, attrs, config kwargs, window, expected caption)
    ("lung CT", LUNG_CT, {}, "lung", "CT scan of lung, axial slice, lung window, medical_art style"),
    ("trigger word prefix", LUNG_CT, {"trigger_word": "ohwx"}, "lung",
     "ohwx, CT scan of lung, axial slice, lung window, medical_art style"),
    ("preset with underscore", CaptionAttributes("CT", "abdomen", "coronal"), {}, "soft_tissue",
     "CT scan of abdomen, coronal slice, soft tissue window, medical_art style"),
    ("window from file is dropped", LUNG_CT, {}, "file", "CT scan of lung, axial slice, medical_art style"),
    ("auto window is dropped", LUNG_CT, {}, "auto", "CT scan of lung, axial slice, medical_art style"),
    ("no window", LUNG_CT, {}, None, "CT scan of lung, axial slice, medical_art style"),
    ("unknown body part drops its phrase", CaptionAttributes("CT", None, "axial"), {}, "bone",
     "CT scan, axial slice, bone window, medical_art style"),
    ("no modality drops the clause", CaptionAttributes(None, "chest", "axial"), {}, "bone",
     "axial slice, bone window, medical_art style"),
    ("X-ray without plane", CaptionAttributes("X-ray", "hand", None), {}, None, "X-ray scan of hand, medical_art style"),
    ("empty style", LUNG_CT, {"style_phrase": ""}, "lung", "CT scan of lung, axial slice, lung window"),
    ("blank style", LUNG_CT, {"style_phrase": "   "}, "lung", "CT scan of lung, axial slice, lung window"),
    ("custom wording", CaptionAttributes("MRI", "knee", "sagittal"),
     {"caption_template": "a {plane} {modality} image of the {body_part}, {style}"}, None,
     "a sagittal MRI image of the knee, medical_art style"),
    ("literal clause kept", LUNG_CT, {"caption_template": "{modality} of {body_part}, high quality, {window} window"},
     "lung", "CT of lung, high quality, lung window"),
    ("whitespace normalised", LUNG_CT, {"caption_template": "  {modality}   scan ,   {plane}  slice  "}, None,
     "CT scan, axial slice"),
    ("nothing known", CaptionAttributes(), {"style_phrase": ""}, None, ""),
)


@pytest.mark.parametrize("label, attrs, kwargs, window, expected", BUILD_CASES, ids=[c[0] for c in BUILD_CASES])
def test_build_caption(label, attrs, kwargs, window, expected):
    assert build_caption(attrs, IngestConfig(**kwargs), window) == expected


@pytest.mark.parametrize("preset", sorted(WINDOW_PRESETS))
def test_every_preset_has_a_window_phrase(preset):
    caption = build_caption(LUNG_CT, NO_TRIGGER, preset)
    assert f", {preset.replace('_', ' ')} window," in caption


def test_unknown_window_name_is_a_config_error():
    with pytest.raises(ConfigError, match="is not known; use one of"):
        build_caption(LUNG_CT, NO_TRIGGER, "sinus")


@pytest.mark.parametrize("field", ["trigger_word", "style_phrase"])
def test_user_text_with_a_header_name_is_rejected(corpus_file, field):
    ds = pydicom.dcmread(corpus_file("humans/ctbrain1.dcm"))
    index = harvest_identifiers(ds)
    family = str(ds.PatientName).split("^")[0]
    config = IngestConfig(**{field: f"{family.lower()} style"})
    with pytest.raises(CaptionPHIError) as info:
        caption_for(ds, index, config, "brain")
    assert info.value.kind == KIND_NAME
    assert family.casefold() not in str(info.value).casefold()


@pytest.mark.parametrize(
    "field, value, kind",
    [("style_phrase", "scanned 12.03.2021", "a date"), ("trigger_word", "ohwx A1234567", "an ID-like code")],
)
def test_user_text_with_generic_phi_is_rejected_without_index(field, value, kind):
    with pytest.raises(CaptionPHIError) as info:
        build_caption(LUNG_CT, IngestConfig(**{field: value}), "lung")
    assert info.value.kind == kind


REAL_FILE_CAPTIONS = (
    ("humans/ctbrain1.dcm", "brain", "CT scan of head, axial slice, brain window, medical_art style"),
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", None, "MRI scan of abdomen, axial slice, medical_art style"),
    ("RG1_UNCR.dcm", None, "X-ray scan of chest, medical_art style"),
    # the patient is named "Perfusion^MCA Stroke": vocabulary phrases are not screened against names
    ("eCT_Supplemental.dcm", "brain", "CT scan, axial slice, brain window, medical_art style"),
)


@pytest.mark.parametrize("name, window, expected", REAL_FILE_CAPTIONS)
def test_caption_for_real_files(corpus_file, name, window, expected):
    # Only Modality, BodyPartExamined and the orientation are read, so the original header
    # stands in for its de-identified copy here.
    ds = pydicom.dcmread(corpus_file(name))
    assert caption_for(ds, harvest_identifiers(ds), IngestConfig(), window) == expected


def test_vocabulary_is_not_screened_but_user_text_is(corpus_file):
    # explicit_VR-UN.dcm: PatientName PANCREAS_0001 and Body Part Examined PANCREAS
    ds = pydicom.dcmread(corpus_file("explicit_VR-UN.dcm"))
    index = harvest_identifiers(ds)
    assert caption_for(ds, index, IngestConfig(), "abdomen").startswith("CT scan of pancreas")
    with pytest.raises(CaptionPHIError):
        caption_for(ds, index, IngestConfig(trigger_word="pancreas_0001"), "abdomen")
    with pytest.raises(CaptionPHIError):
        caption_for(ds, index, IngestConfig(caption_template="{modality} of PANCREAS_0001, {style}"), "abdomen")
