"""Tests of lib_lora_train/dicom/burned_in.py: header gate, blanking and the OCR plugin."""

import dataclasses
import io
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut
from pydicom.uid import (
    CTImageStorage,
    EncapsulatedPDFStorage,
    ImplicitVRLittleEndian,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    VideoPhotographicImageStorage,
)

from lib_lora_train.config import IngestConfig
from lib_lora_train.dicom import burned_in
from lib_lora_train.dicom.burned_in import OcrOutcome, TextDetector, TextHit, blank, burned_in_risk, gate, ocr_gate
from lib_lora_train.errors import BurnedInTextError

# Words burned into the pixels of the public test files (and the synthetic image); no message
# or log line may repeat them.
BURNED_IN_WORDS = ("CLEVELAND", "ZZZ", "BAPTIST", "WESTWAY", "DOWNTIME", "PHILIPS", "DOE")

# file -> phrase expected in the header reason
REJECTED_BY_HEADER = [
    ("ultrasounds/GREYSCALE_IMAGE.dcm", "burned-in annotation"),
    ("ultrasounds/RGB_IMAGE.dcm", "ultrasound"),
    ("US1_UNCR.dcm", "ultrasound"),
    ("OBXXXX1A.dcm", "ultrasound"),
    ("gdcm-US-ALOKA-16.dcm", "ultrasound"),
    ("ultrasound-multiframe.dcm", "burned-in annotation"),
    ("OT-PAL-8-face.dcm", "secondary capture"),
]
CLEAN_FILES = ["CT_small.dcm", "693_UNCR.dcm", "MR_small.dcm", "RG1_UNCR.dcm", "eCT_Supplemental.dcm", "emri_small.dcm"]
TEXT_FILES = [name for name, _ in REJECTED_BY_HEADER[:5]]

# header attributes -> expected phrase (None: no risk); all start from a plain CT image.
HEADER_CASES = [
    ({}, None),
    ({"BurnedInAnnotation": "YES"}, "burned-in annotation"),
    ({"BurnedInAnnotation": "NO"}, None),
    ({"RecognizableVisualFeatures": "YES"}, "recognizable visual features (e.g. a face)"),
    ({"Modality": "IVUS"}, "intravascular ultrasound"),
    ({"Modality": "US", "BurnedInAnnotation": "NO"}, "ultrasound"),
    ({"SOPClassUID": UltrasoundImageStorage}, "ultrasound"),
    ({"SOPClassUID": MultiFrameTrueColorSecondaryCaptureImageStorage}, "secondary capture"),
    ({"SOPClassUID": VideoPhotographicImageStorage}, "video"),
    ({"SOPClassUID": EncapsulatedPDFStorage}, "encapsulated document"),
    ({"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}, "screen capture"),
    ({"ImageType": ["DERIVED", "SECONDARY", "OTHER"]}, None),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, None),
    ({"ConversionType": "WSD", "Modality": "OT"}, "Conversion Type"),
    ({"ConversionType": "DV"}, None),  # a CT object re-exported with a Conversion Type is still a scan
]

needs_ocr = pytest.mark.skipif(
    not burned_in.is_ocr_available(), reason="rapidocr-onnxruntime is not installed (pip install rapidocr-onnxruntime)"
)


def read(path):
    """Read a corpus file; OT-PAL-8-face.dcm has no file meta and needs a transfer syntax."""
    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def read_zipped(path):
    with zipfile.ZipFile(path) as archive:
        member = next(name for name in archive.namelist() if name.lower().endswith(".dcm"))
        return pydicom.dcmread(io.BytesIO(archive.read(member)))


def render(ds, frame=None):
    """Min-max scale one frame (or all frames) to uint8; palettes become RGB."""
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1 and frame is not None:
        arr = arr[frame]
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    arr = arr.astype(np.float64)
    low, high = arr.min(), arr.max()
    return np.round((arr - low) / max(high - low, 1) * 255).astype(np.uint8)


def header_values(ds):
    """Text values of the header (names, IDs, institution...) that a message must not repeat."""
    values = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long values in the public files
        for elem in ds.iterall():
            if elem.VR in ("PN", "LO", "SH", "DA", "DT") and elem.value and not isinstance(elem.value, bytes):
                items = elem.value if elem.VM > 1 else [elem.value]
                values.update(str(item) for item in items if len(str(item)) >= 4)
    return values


def assert_no_phi(text, ds=None):
    """Fail, without printing the text, when it repeats a burned-in word or a header value."""
    needles = [word.lower() for word in BURNED_IN_WORDS]
    needles += [value.lower() for value in header_values(ds)] if ds is not None else []
    leaks = sum(needle in text.lower() for needle in needles)
    assert leaks == 0, f"{leaks} burned-in word(s) or header value(s) leaked into a message or log"


def synthetic_image(with_text=True, size=(512, 512), origin=(0, 40)):
    """A smooth gradient with a burned-in name drawn in PIL's default font, scaled 4x."""
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    image = (40 + 120 * (xx + yy) / (height + width)).astype(np.uint8)
    if with_text:
        label = Image.new("L", (128, 16), 0)
        ImageDraw.Draw(label).text((2, 2), "ZZZDOE JOHN 1950", fill=255)
        text = np.asarray(label.resize((512, 64), Image.NEAREST))
        x, y = origin
        image[y : y + 64, x : x + 512] = np.maximum(image[y : y + 64, x : x + 512], text)
    return image


def make_dataset(**attrs):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture(scope="module")
def detector():
    return TextDetector()


# --- header gate -------------------------------------------------------------------------------


@pytest.mark.parametrize("attrs, expected", HEADER_CASES)
def test_burned_in_risk_rules(attrs, expected):
    reason = burned_in_risk(make_dataset(**attrs))
    if expected is None:
        assert reason is None
    else:
        assert expected in reason


@pytest.mark.parametrize("name, expected", REJECTED_BY_HEADER)
def test_gate_rejects_risky_real_files(corpus_file, name, expected):
    ds = read(corpus_file(name))
    assert expected in burned_in_risk(ds)
    with pytest.raises(BurnedInTextError, match="rejected to protect privacy.*configure blank_regions") as info:
        gate(ds, IngestConfig())
    assert info.value.code == "burned_in_text"
    assert_no_phi(str(info.value), ds)


def test_ultrasound_multiframe_is_marked_burned_in(corpus_file):
    ds = read(corpus_file("ultrasound-multiframe.dcm"))
    assert ds.BurnedInAnnotation == "YES"
    assert "(0028,0301)" in burned_in_risk(ds)


@pytest.mark.parametrize("name", CLEAN_FILES)
def test_gate_accepts_clean_real_files(corpus_file, name):
    ds = read(corpus_file(name))
    assert burned_in_risk(ds) is None
    assert gate(ds, IngestConfig()) is None


def test_gate_accepts_risky_file_with_blank_regions(corpus_file):
    ds = read(corpus_file("US1_UNCR.dcm"))
    assert "ultrasound" in gate(ds, IngestConfig(blank_regions=((0, 0, 640, 60),)))


def test_gate_accepts_risky_file_when_rejection_is_off(corpus_file):
    ds = read(corpus_file("US1_UNCR.dcm"))
    assert "ultrasound" in gate(ds, IngestConfig(reject_burned_in=False))


# --- blanking ----------------------------------------------------------------------------------


def test_blank_zeroes_exactly_the_half_open_rectangle():
    pixels = (np.arange(6 * 8, dtype=np.uint8) + 1).reshape(6, 8)
    out = blank(pixels, [(1, 2, 4, 5)])
    expected = pixels.copy()
    expected[2:5, 1:4] = 0
    np.testing.assert_array_equal(out, expected)
    assert pixels.min() == 1, "the input must not be modified"


@pytest.mark.parametrize(
    "region, rows, cols",
    [((6, 4, 100, 100), slice(4, 6), slice(6, 8)), ((20, 20, 30, 30), slice(0, 0), slice(0, 0))],
)
def test_blank_clips_to_the_image(region, rows, cols):
    pixels = np.full((6, 8), 7, dtype=np.uint16)
    expected = pixels.copy()
    expected[rows, cols] = 0
    out = blank(pixels, [region])
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint16


def test_blank_rgb_zeroes_every_channel():
    pixels = np.full((5, 7, 3), 200, dtype=np.uint8)
    out = blank(pixels, [(0, 0, 2, 1), (5, 3, 7, 5)])
    assert out.shape == pixels.shape
    assert (out[0, 0:2] == 0).all() and (out[3:5, 5:7] == 0).all()
    assert int((out == 0).sum()) == (2 * 1 + 2 * 2) * 3


def test_blank_rejects_a_stack_of_frames():
    with pytest.raises(ValueError, match="one HxW or HxWxC frame"):
        blank(np.zeros((2, 4, 4, 3), dtype=np.uint8), [(0, 0, 1, 1)])


# --- OCR plugin --------------------------------------------------------------------------------


def test_text_hit_carries_no_text():
    assert [f.name for f in dataclasses.fields(TextHit)] == ["box", "score", "n_chars"]


def test_is_ocr_available_imports_nothing():
    code = (
        "import sys; from lib_lora_train.dicom import burned_in; burned_in.is_ocr_available(); "
        "print('rapidocr_onnxruntime' in sys.modules, 'onnxruntime' in sys.modules, 'cv2' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False", "False"]


def test_ocr_off_does_nothing(monkeypatch):
    monkeypatch.setattr(burned_in, "TextDetector", None)
    outcome = ocr_gate([synthetic_image()], IngestConfig(ocr="off"))
    assert outcome == OcrOutcome(ran=False, frames_checked=0)


def test_ocr_auto_without_package_reports_it_did_not_run(monkeypatch):
    monkeypatch.setattr(burned_in, "is_ocr_available", lambda plugin="rapidocr": False)
    assert ocr_gate([synthetic_image()], IngestConfig(ocr="auto")) == OcrOutcome(ran=False, frames_checked=0)


def test_ocr_required_without_package_raises(monkeypatch):
    monkeypatch.setattr(burned_in, "is_ocr_available", lambda plugin="rapidocr": False)
    with pytest.raises(BurnedInTextError, match="pip install rapidocr-onnxruntime") as info:
        ocr_gate([synthetic_image()], IngestConfig(ocr="required"))
    assert info.value.code == "ocr_unavailable"
    with pytest.raises(BurnedInTextError, match="rapidocr-onnxruntime") as info:
        TextDetector().find_text(synthetic_image())
    assert info.value.code == "ocr_unavailable"


@pytest.mark.parametrize("shape, dtype", [((8, 8), np.uint16), ((8, 8, 4), np.uint8), ((2, 8, 8, 3), np.uint8)])
def test_find_text_rejects_frames_it_cannot_read(shape, dtype):
    with pytest.raises(ValueError, match="uint8 HxW or HxWx3"):
        TextDetector().find_text(np.zeros(shape, dtype=dtype))


@needs_ocr
def test_synthetic_text_is_found_and_blanking_removes_it(detector):
    hits = detector.find_text(synthetic_image())
    assert hits and all(isinstance(hit, TextHit) for hit in hits)
    x0, y0, x1, y1 = hits[0].box
    assert x0 < 60 and y0 < 70 and x1 > 350 and y1 > 80, "the box must cover the drawn text"
    assert detector.find_text(synthetic_image(with_text=False)) == []
    assert burned_in.find_text(synthetic_image(), detector=detector) == hits
    assert detector.find_text(blank(synthetic_image(), [hit.box for hit in hits])) == []


@needs_ocr
def test_ocr_gate_checks_the_blanked_frames(detector):
    config = IngestConfig(blank_regions=((0, 30, 512, 110),))
    assert ocr_gate([synthetic_image()], config, detector) == OcrOutcome(ran=True, frames_checked=1)


@needs_ocr
def test_boxes_are_in_frame_coordinates_after_downscaling():
    frame = synthetic_image(size=(1200, 2400), origin=(1600, 900))
    hits = TextDetector(max_side=1200).find_text(frame)
    assert hits
    x0, y0, x1, y1 = hits[0].box
    assert 1550 < x0 < 1660 and 880 < y0 < 960 and x1 > 1950 and y1 > 940


@needs_ocr
@pytest.mark.parametrize("name", TEXT_FILES)
def test_ocr_rejects_ultrasound_with_burned_in_text(corpus_file, detector, caplog, name):
    ds = read(corpus_file(name))
    frame = render(ds, frame=0)
    assert detector.find_text(frame)
    caplog.set_level("DEBUG")
    with pytest.raises(BurnedInTextError, match=r"text was detected in the pixels \(\d+ text region") as info:
        ocr_gate([frame], IngestConfig(), detector)
    assert info.value.code == "text_in_pixels"
    assert_no_phi(str(info.value), ds)
    assert_no_phi(caplog.text, ds)


@needs_ocr
@pytest.mark.parametrize("name", CLEAN_FILES)
def test_ocr_finds_no_text_in_clean_images(corpus_file, detector, name):
    frame = render(read(corpus_file(name)), frame=0)
    assert detector.find_text(frame) == []
    assert ocr_gate([frame], IngestConfig(), detector) == OcrOutcome(ran=True, frames_checked=1)


@needs_ocr
def test_ocr_gate_samples_frames_of_a_clean_multiframe(corpus_file, detector):
    frames = render(read(corpus_file("emri_small.dcm")))
    assert len(frames) == 10
    assert ocr_gate(frames, IngestConfig(ocr="required"), detector) == OcrOutcome(ran=True, frames_checked=3)


@needs_ocr
def test_ocr_rejects_the_greyscale_cine_loop(corpus_file, detector):
    ds = read_zipped(corpus_file("ultrasounds/GREYSCALE_CINE.zip"))
    frames = render(ds)
    with pytest.raises(BurnedInTextError, match="in frame 0") as info:
        ocr_gate(frames, IngestConfig(), detector)
    assert info.value.code == "text_in_pixels"
    assert_no_phi(str(info.value), ds)
