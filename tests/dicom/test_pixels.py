"""Tests of pixel decoding and windowing on real public files and synthetic datasets."""

import copy
import tracemalloc
import types

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.decoders.base import DecodeRunner, Decoder
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1

from lib_lora_train.dicom import decoders, pixels
from lib_lora_train.dicom.pixels import (
    check_dimensions,
    frame_count,
    modality_values,
    padding_mask,
    render_frames,
)
from lib_lora_train.errors import ConfigError, DicomDecodeError, DicomError, UnsupportedImageError

PERSONAL_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "OperatorsName",
    "AccessionNumber",
    "StationName",
    "DeviceSerialNumber",
    "StudyDate",
)


def read(corpus_file, name):
    return pydicom.dcmread(corpus_file(name))


def assert_no_personal_data(error, ds):
    message = str(error)
    for keyword in PERSONAL_KEYWORDS:
        value = str(ds.get(keyword) or "")
        if len(value) >= 3:
            assert value not in message, keyword


def make_ds(stored, *, signed=False, bits_stored=16, photometric="MONOCHROME2", modality="CT", **attributes):
    """A native little-endian grey dataset holding ``stored`` (HxW or FxHxW)."""
    array = np.asarray(stored)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality = modality
    ds.Rows, ds.Columns = array.shape[-2:]
    if array.ndim == 3:
        ds.NumberOfFrames = array.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = array.astype("<i2" if signed else "<u2").tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def decodable_or_skip(ds):
    try:
        decoders.check_decodable(ds)
    except DicomDecodeError as error:
        pytest.skip(str(error))


def one(ds, **options):
    frames = render_frames(ds, **options)
    assert len(frames) == 1
    return frames[0]


# --- Modality LUT -------------------------------------------------------------------------


def test_ct_small_hu_range_is_plausible_and_lung_window_renders(corpus_file):
    ds = read(corpus_file, "CT_small.dcm")
    frame = one(ds, window="lung")
    low, high = frame.hu_range
    assert -1100.0 < low < -700.0 and 500.0 < high < 3100.0
    hu = modality_values(ds, ds.pixel_array, 0)
    assert -1050.0 < np.median(hu[:8, :8]) < -750.0  # air in the corner
    assert frame.window.name == "lung" and frame.pixels.dtype == np.uint8
    assert frame.pixels.shape == (ds.Rows, ds.Columns) and frame.pixels.std() > 20


def test_enhanced_ct_rescale_comes_from_functional_groups(corpus_file):
    ds = read(corpus_file, "eCT_Supplemental.dcm")
    assert "RescaleIntercept" not in ds
    raw = pydicom.pixels.pixel_array(ds, index=0)
    # The caveat this module exists for: pydicom leaves the values raw (0..1196).
    assert np.array_equal(apply_modality_lut(raw, ds), raw)
    hu = modality_values(ds, raw, 0)
    assert hu.min() == pytest.approx(-1024.0) and -100.0 < hu.max() < 300.0
    frames = render_frames(ds, window="file", frames="all")
    assert [f.index for f in frames] == [0, 1]
    assert min(f.hu_range[0] for f in frames) == pytest.approx(-1024.0)
    assert max(f.hu_range[1] for f in frames) == pytest.approx(172.0)
    # Frame VOI LUT functional group (shared): W 102 / L 49.
    assert (frames[0].window.center, frames[0].window.width) == (49.0, 102.0)


def test_per_frame_groups_override_shared_groups():
    def group(slope, intercept, center=None, width=None):
        item = Dataset()
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept, "HU"
        item.PixelValueTransformationSequence = [transform]
        if center is not None:
            voi = Dataset()
            voi.WindowCenter, voi.WindowWidth = center, width
            item.FrameVOILUTSequence = [voi]
        return item

    ds = make_ds(np.full((2, 2, 2), 100), RescaleSlope=5, RescaleIntercept=5)
    ds.SharedFunctionalGroupsSequence = [group(1, -1000, 0, 100)]
    ds.PerFrameFunctionalGroupsSequence = [Dataset(), group(2, -50)]
    frames = render_frames(ds, frames="all")
    assert [f.hu_range for f in frames] == [(-900.0, -900.0), (150.0, 150.0)]
    assert all((f.window.center, f.window.width) == (0.0, 100.0) for f in frames)


def test_modality_lut_sequence_uses_pydicom(corpus_file):
    ds = read(corpus_file, "mlut_18.dcm")
    stored = ds.pixel_array
    expected = apply_modality_lut(stored, copy.deepcopy(ds)).astype(np.float64)
    assert np.array_equal(modality_values(ds, stored, 0), expected)
    assert one(ds).hu_range == (float(expected.min()), float(expected.max()))


def test_known_hu_ramp_through_lung_preset_gives_exact_grey_levels():
    hu = np.array([[-2000, -1350, -975, -600], [-225, 150, 1000, 3000]])
    ds = make_ds(hu + 1024, signed=True, RescaleSlope=1, RescaleIntercept=-1024)
    frame = one(ds, window="lung")
    assert frame.pixels.tolist() == [[0, 0, 64, 128], [191, 255, 255, 255]]
    assert frame.hu_range == (-2000.0, 3000.0)


def test_signed_16_bit_with_padding_value():
    stored = np.array([[-2000, -1024], [0, 1000]])
    ds = make_ds(stored, signed=True, PixelPaddingValue=-2000)
    frame = one(ds, window="auto")
    assert frame.hu_range == (-1024.0, 1000.0)
    assert frame.pixels[0, 0] == 0
    assert frame.window.center - frame.window.width / 2 > -1100.0


def test_bits_stored_below_bits_allocated_signed():
    # 12 bits stored in 16 allocated: 0x0FFB is -5, high bits are not part of the value.
    ds = make_ds(np.zeros((1, 3)), signed=True, bits_stored=12)
    ds.PixelData = np.array([0x0FFB, 5, 0xF001], dtype="<u2").tobytes()
    assert one(ds, window="auto").hu_range == (-5.0, 5.0)


def test_j2k_pixel_representation_mismatch_gives_signed_values(corpus_file):
    ds = read(corpus_file, "J2K_pixelrep_mismatch.dcm")
    frame = one(ds)
    assert frame.hu_range[0] < -1000.0 and frame.hu_range[1] < 4000.0


# --- padding ------------------------------------------------------------------------------


def test_padding_range_limit_and_unsigned_misread_value():
    stored = np.array([[0, 1, 2, 3, 4, 5]], dtype=np.int16)
    ds = make_ds(stored, signed=True, PixelPaddingValue=4, PixelPaddingRangeLimit=2)
    assert padding_mask(ds, stored).tolist() == [[False, False, True, True, True, False]]
    # -2000 written as US 63536 in a signed image still marks -2000.
    ds = make_ds(stored, signed=True, PixelPaddingValue=63536)
    assert padding_mask(ds, np.array([-2000, 0])).tolist() == [True, False]
    assert not padding_mask(make_ds(stored), stored).any()


def test_padding_is_excluded_from_auto_window(corpus_file):
    ds = read(corpus_file, "693_UNCR.dcm")
    frame = one(ds, window="auto")
    assert frame.hu_range[0] == pytest.approx(-1024.0)  # -3024 padding excluded
    assert frame.window.center - frame.window.width / 2 > -1100.0
    padding = padding_mask(ds, ds.pixel_array)
    assert padding.mean() > 0.1 and (frame.pixels[padding] == 0).all()
    del ds.PixelPaddingValue
    unpadded = one(ds, window="auto")
    assert unpadded.window.center - unpadded.window.width / 2 == pytest.approx(-3024.0)


# --- VOI window and inversion -------------------------------------------------------------


def test_file_window_first_value_and_voi_lut_function():
    ds = make_ds(np.array([[0, 50, 100]]), modality="MR", WindowCenter=[50, 500], WindowWidth=[100, 1000])
    ds.VOILUTFunction = "SIGMOID"
    frame = one(ds)
    assert (frame.window.name, frame.window.center, frame.window.width) == ("file", 50.0, 100.0)
    assert frame.window.function == "SIGMOID"
    assert frame.pixels.tolist() == [[30, 128, 225]]


def test_file_window_falls_back_to_auto():
    ds = make_ds(np.arange(16).reshape(4, 4), modality="MR")
    assert one(ds, window="file").window.name == "auto"
    ds.WindowCenter, ds.WindowWidth = 10, 0  # unusable width
    assert one(ds, window="file").window.name == "auto"


def test_voi_lut_sequence_is_applied_then_scaled():
    ds = make_ds(np.array([[0, 1, 2, 3, 9]]), modality="MR")
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.LUTData = [1000, 3000, 2000, 4000]
    ds.VOILUTSequence = [item]
    frame = one(ds, window="file")
    assert frame.window is None
    assert frame.pixels.tolist() == [[0, 170, 85, 255, 255]]


def test_real_voi_lut_file(corpus_file):
    ds = read(corpus_file, "vlut_04.dcm")
    frame = one(ds)
    expected = np.asarray(apply_voi_lut(ds.pixel_array, copy.deepcopy(ds)), dtype=np.float64)
    assert frame.window is None
    assert np.corrcoef(frame.pixels.ravel(), expected.ravel())[0, 1] > 0.99


def test_preset_on_mr_is_rejected(corpus_file):
    ds = read(corpus_file, "MR_small.dcm")
    with pytest.raises(UnsupportedImageError) as info:
        render_frames(ds, window="lung")
    assert info.value.code == "window_not_applicable"
    assert "Hounsfield" in str(info.value) and "'file'" in str(info.value) and "'auto'" in str(info.value)
    assert_no_personal_data(info.value, ds)
    assert one(ds, window="file").window.name == "file"


def test_monochrome1_is_inverted(corpus_file):
    ds = read(corpus_file, "RG1_UNCR.dcm")
    stored = ds.pixel_array
    frame = one(ds)
    bone = stored < np.percentile(stored, 5)  # MONOCHROME1: low stored values display white
    background = stored > np.percentile(stored, 95)
    assert frame.pixels[bone].mean() > frame.pixels[background].mean() + 100
    ds.PhotometricInterpretation = "MONOCHROME2"
    as_mono2 = one(ds)
    assert np.array_equal(frame.pixels, 255 - as_mono2.pixels)


def test_presentation_lut_shape_inverse():
    stored = np.array([[0, 100]])
    normal = one(make_ds(stored, modality="MR", WindowCenter=50, WindowWidth=100)).pixels
    inverse = make_ds(stored, modality="MR", WindowCenter=50, WindowWidth=100, PresentationLUTShape="INVERSE")
    assert np.array_equal(one(inverse).pixels, 255 - normal)
    # C.11.6.1.2 pairs INVERSE with MONOCHROME1: one inversion, not two.
    inverse.PhotometricInterpretation = "MONOCHROME1"
    assert np.array_equal(one(inverse).pixels, 255 - normal)


# --- colour -------------------------------------------------------------------------------


def test_palette_colour_to_rgb(corpus_file):
    ds = read(corpus_file, "OBXXXX1A.dcm")
    frame = one(ds, window="auto")
    assert frame.window is None and frame.hu_range is None
    assert frame.pixels.shape == (ds.Rows, ds.Columns, 3) and frame.pixels.dtype == np.uint8
    lut = apply_color_lut(ds.pixel_array, ds)[..., :3]  # 16-bit LUT entries
    assert np.abs(frame.pixels - np.round(lut / 257.0)).max() <= 1
    channels = frame.pixels.astype(int)
    assert (np.abs(channels[..., 0] - channels[..., 1]) > 20).sum() > 1000


def test_segmented_16_bit_palette(corpus_file):
    ds = read(corpus_file, "gdcm-US-ALOKA-16.dcm")
    frame = one(ds)
    expected = np.round(apply_color_lut(ds.pixel_array, ds)[..., :3] / 257.0)
    assert frame.pixels.shape == (ds.Rows, ds.Columns, 3)
    assert np.abs(frame.pixels.astype(float) - expected).max() <= 1


def test_16_bit_rgb_scaled_to_8_bit(corpus_file):
    sixteen = one(read(corpus_file, "SC_rgb_16bit.dcm"))
    eight = one(read(corpus_file, "SC_rgb.dcm"))
    assert sixteen.pixels.dtype == np.uint8
    assert np.abs(sixteen.pixels.astype(int) - eight.pixels.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "name", ["SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_uncompressed.dcm"]
)
def test_ybr_is_converted_to_rgb(corpus_file, name):
    ds = read(corpus_file, name)
    decodable_or_skip(ds)
    assert ds.PhotometricInterpretation.startswith("YBR")
    rgb = one(ds).pixels.astype(int)
    # Colour bars of SC_rgb.dcm: red, green, blue, black, white rows at column 50.
    reference = {5: (255, 0, 0), 25: (0, 255, 0), 45: (0, 0, 255), 65: (0, 0, 0), 95: (255, 255, 255)}
    for row, colour in reference.items():
        assert np.abs(rgb[row, 50] - np.array(colour)).max() <= 8, row


# --- frames -------------------------------------------------------------------------------


def test_middle_decodes_one_frame_and_all_every_frame(corpus_file, monkeypatch):
    ds = read(corpus_file, "emri_small.dcm")
    indices = []
    original = Decoder.as_array

    def spy(self, src, **kwargs):
        indices.append(kwargs.get("index"))
        return original(self, src, **kwargs)

    monkeypatch.setattr(Decoder, "as_array", spy)
    middle = render_frames(ds, window="auto", frames="middle")
    assert indices == [5] and [f.index for f in middle] == [5]
    indices.clear()
    every = render_frames(ds, window="auto", frames="all")
    assert indices == list(range(10)) and [f.index for f in every] == list(range(10))
    assert np.array_equal(every[5].pixels, middle[0].pixels)
    assert frame_count(ds) == 10


def test_middle_decodes_one_encapsulated_frame(corpus_file, monkeypatch):
    ds = read(corpus_file, "emri_small_RLE.dcm")
    decoded = []
    original = DecodeRunner._get_frame_info

    def spy(self, src):
        decoded.append(len(src))
        return original(self, src)

    monkeypatch.setattr(DecodeRunner, "_get_frame_info", spy)
    render_frames(ds, frames="middle")
    assert len(decoded) == 1
    decoded.clear()
    render_frames(ds, frames="all")
    assert len(decoded) == 10


def test_single_frame_gives_one_frame(corpus_file):
    ds = read(corpus_file, "MR_small.dcm")
    assert frame_count(ds) == 1
    assert [f.index for f in render_frames(ds, frames="all")] == [0]


# --- transfer syntaxes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "compressed, reference",
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),
    ],
)
def test_lossless_codecs_match_uncompressed(corpus_file, compressed, reference):
    ds = read(corpus_file, compressed)
    decodable_or_skip(ds)
    assert np.array_equal(one(ds, window="auto").pixels, one(read(corpus_file, reference), window="auto").pixels)


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "bad_sequence.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"])
def test_jpeg_lossless_decodes(corpus_file, name):
    ds = read(corpus_file, name)
    decodable_or_skip(ds)
    frame = one(ds, window="auto")
    assert frame.pixels.shape == (ds.Rows, ds.Columns) and frame.pixels.std() > 5


def test_lossy_jpeg_2000_ct_close_to_uncompressed(corpus_file):
    lossy = read(corpus_file, "693_J2KI.dcm")
    decodable_or_skip(lossy)
    a = one(lossy, window="bone").pixels.astype(float)
    b = one(read(corpus_file, "693_UNCR.dcm"), window="bone").pixels.astype(float)
    assert np.abs(a - b).mean() < 5 and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97


# --- errors -------------------------------------------------------------------------------


def test_truncated_pixel_data(corpus_file):
    ds = read(corpus_file, "MR_truncated.dcm")
    with pytest.raises(DicomDecodeError) as info:
        render_frames(ds)
    assert info.value.code == "truncated"
    assert "8130 of 8192 bytes" in str(info.value)
    assert_no_personal_data(info.value, ds)


def test_12_bit_lossy_jpeg_names_a_package(corpus_file):
    ds = read(corpus_file, "JPEG-lossy.dcm")
    with pytest.raises(DicomDecodeError) as info:
        render_frames(ds)
    assert info.value.code in ("decode_failed", "codec_missing")
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in str(info.value)
    assert "JPEG Extended" in str(info.value)
    assert_no_personal_data(info.value, ds)


def test_codec_missing_names_transfer_syntax_and_packages(corpus_file, monkeypatch):
    ds = read(corpus_file, "JPEG-LL.dcm")
    fake = types.SimpleNamespace(is_native=False, available_plugins=())
    monkeypatch.setattr(decoders, "get_decoder", lambda uid: fake)
    with pytest.raises(DicomDecodeError) as info:
        render_frames(ds)
    assert info.value.code == "codec_missing"
    message = str(info.value)
    assert "JPEG Lossless" in message and "pip install python-gdcm" in message
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in message


def test_unknown_transfer_syntax_is_codec_missing():
    ds = make_ds(np.zeros((2, 2)))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    with pytest.raises(DicomDecodeError) as info:
        render_frames(ds)
    assert info.value.code == "codec_missing" and "MPEG2" in str(info.value)
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(DicomDecodeError, match=r"\(0002,0010\) Transfer Syntax UID"):
        render_frames(ds)


def test_check_decodable_reports_usable_plugins(corpus_file):
    assert decoders.check_decodable(read(corpus_file, "CT_small.dcm")) == ()
    rle = read(corpus_file, "MR_small_RLE.dcm")
    assert "pydicom" in decoders.check_decodable(rle)
    assert decoders.TRANSFER_SYNTAX_DECODERS[JPEGLosslessSV1].options[0].pip == "python-gdcm"


def test_translate_decode_error_keeps_no_decoder_text(corpus_file):
    ds = read(corpus_file, "JPEG-LL.dcm")
    failed = RuntimeError(
        "Unable to decode as exceptions were raised by all available plugins:\n"
        "  gdcm: value SECRET-NAME\n  pylibjpeg: other SECRET-NAME"
    )
    error = decoders.translate_decode_error(failed, ds)
    assert error.code == "decode_failed" and "gdcm, pylibjpeg" in str(error)
    assert "SECRET" not in str(error)
    missing = RuntimeError("Unable to decompress because all plugins are missing dependencies:\n\tgdcm")
    assert decoders.translate_decode_error(missing, ds).code == "codec_missing"
    reshape = ValueError("cannot reshape array of size 3 into shape SECRET")
    assert "SECRET" not in str(decoders.translate_decode_error(reshape, ds))


def test_absurd_dimensions_rejected_without_allocating():
    ds = make_ds(np.zeros((2, 2)))
    ds.Rows = ds.Columns = 60000
    ds.NumberOfFrames = 1000
    tracemalloc.start()
    try:
        with pytest.raises(DicomError) as info:
            render_frames(ds)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.code == "too_large" and peak < 5_000_000
    with pytest.raises(DicomError, match="too large"):
        check_dimensions(make_ds(np.zeros((2, 2, 4))), max_frame_pixels=10, max_total_pixels=10)
    check_dimensions(make_ds(np.zeros((2, 2, 4))), max_frame_pixels=8, max_total_pixels=16)


def test_missing_pixel_data(corpus_file):
    ds = read(corpus_file, "CT_small.dcm")
    del ds.PixelData
    with pytest.raises(UnsupportedImageError) as info:
        render_frames(ds)
    assert info.value.code == "no_pixel_data"
    assert_no_personal_data(info.value, ds)


def test_invalid_number_of_frames(corpus_file):
    ds = read(corpus_file, "badVR.dcm")  # (0028,0008) Number of Frames '1A'
    with pytest.warns(UserWarning), pytest.raises(UnsupportedImageError) as info:
        render_frames(ds)
    assert info.value.code == "invalid_pixel_module"
    assert "(0028,0008) Number of Frames" in str(info.value)


def test_invalid_image_module_and_options():
    ds = make_ds(np.zeros((2, 2)))
    with pytest.raises(ConfigError):
        render_frames(ds, window="lungs")
    with pytest.raises(ConfigError):
        render_frames(ds, frames="first")
    del ds.Rows
    with pytest.raises(UnsupportedImageError, match=r"\(0028,0010\) Rows"):
        render_frames(ds)


def test_colour_ct_secondary_capture_ignores_preset(corpus_file):
    ds = read(corpus_file, "ctbrain1.dcm")
    decodable_or_skip(ds)
    frame = one(ds, window="lung")
    assert frame.window is None and frame.pixels.shape[-1] == 3


def test_unsupported_photometric_interpretation():
    ds = make_ds(np.zeros((2, 2)), photometric="YBR_PARTIAL_420")
    with pytest.raises(UnsupportedImageError) as info:
        pixels.render_frames(ds)
    assert info.value.code == "unsupported_photometric" and "YBR_PARTIAL_420" not in str(info.value)
