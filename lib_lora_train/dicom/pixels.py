"""Decoded, windowed 8-bit frames from a pydicom Dataset.

The display pipeline of PS3.3 C.11 is applied per frame: decode one frame, Modality LUT
(rescale to e.g. Hounsfield units, C.11.1, including the Enhanced functional groups that
pydicom ignores), Pixel Padding (C.7.5.1.1.2), VOI window or VOI LUT (C.11.2), then the
MONOCHROME1 / INVERSE presentation inversion (C.11.6) that pydicom does not do. Colour
images are converted to 8-bit RGB without windowing.
"""

import dataclasses
import logging

import numpy as np
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    as_pixel_options,
    convert_color_space,
)
from pydicom.pixels.decoders.base import get_decoder

from lib_lora_train.dicom import decoders
from lib_lora_train.dicom.window import (
    VOI_LUT_FUNCTIONS,
    WINDOW_MODES,
    WINDOW_PRESETS,
    Window,
    apply_window,
    auto_window,
    invert,
    preset_window,
)
from lib_lora_train.errors import ConfigError, DicomError, UnsupportedImageError

logger = logging.getLogger(__name__)

# Decompression-bomb guard: a header is checked against these before anything is decoded.
DEFAULT_MAX_FRAME_PIXELS = 2**26  # 8192 x 8192
DEFAULT_MAX_TOTAL_PIXELS = 2**30

FRAME_MODES = ("middle", "all")
GREY_INTERPRETATIONS = ("MONOCHROME1", "MONOCHROME2")
COLOUR_INTERPRETATIONS = ("RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR")


@dataclasses.dataclass(frozen=True)
class RenderedFrame:
    """One frame ready to be written as an 8-bit image.

    Attributes:
        index (`int`): 0-based frame index in the file.
        pixels (`np.ndarray`): ``uint8``, HxW (grey) or HxWx3 (RGB).
        window (`Window`, *optional*): the window applied; None for colour images and when
            the file's (0028,3010) VOI LUT Sequence was applied instead of a window.
        hu_range (`tuple[float, float]`, *optional*): min/max of the Modality LUT output of
            the real (non-padding) pixels, for sanity checks; None for colour images.
    """

    index: int
    pixels: np.ndarray
    window: Window | None
    hu_range: tuple[float, float] | None


def _invalid(message):
    return UnsupportedImageError(message, code="invalid_pixel_module")


def _int_attr(ds, keyword, label):
    try:
        return int(ds[keyword].value)
    except (KeyError, TypeError, ValueError):
        raise _invalid(f"{label} is missing or not an integer") from None


def frame_count(ds):
    """Number of frames from (0028,0008) Number of Frames; 1 when absent, empty or 0.

    Raises:
        UnsupportedImageError: code ``"invalid_pixel_module"``, the value is not an integer.
    """
    try:
        value = ds.get("NumberOfFrames")
        return max(int(value), 1) if value not in (None, "") else 1
    except (TypeError, ValueError):
        raise _invalid("(0028,0008) Number of Frames is not an integer") from None


def check_dimensions(
    ds, max_frame_pixels=DEFAULT_MAX_FRAME_PIXELS, max_total_pixels=DEFAULT_MAX_TOTAL_PIXELS
):
    """Reject absurd image dimensions from the header alone, before any decoding.

    A few header bytes can announce gigabytes of pixels (a decompression bomb), so the
    product of (0028,0010) Rows, (0028,0011) Columns and (0028,0008) Number of Frames is
    checked first. Counts are pixels, samples per pixel not included.

    Args:
        ds (`pydicom.Dataset`): dataset with the Image Pixel module.
        max_frame_pixels (`int`): most pixels one frame may have.
        max_total_pixels (`int`): most pixels all frames together may have.

    Raises:
        DicomError: code ``"too_large"``.
        UnsupportedImageError: code ``"invalid_pixel_module"``, rows or columns missing or < 1.
    """
    rows = _int_attr(ds, "Rows", "(0028,0010) Rows")
    columns = _int_attr(ds, "Columns", "(0028,0011) Columns")
    if rows < 1 or columns < 1:
        raise _invalid("(0028,0010) Rows and (0028,0011) Columns must be at least 1")
    per_frame = rows * columns
    total = per_frame * frame_count(ds)
    if per_frame > max_frame_pixels or total > max_total_pixels:
        raise DicomError(
            f"image too large to convert safely: {per_frame} pixels per frame "
            f"(limit {max_frame_pixels}), {total} in all frames (limit {max_total_pixels}) "
            "from (0028,0010) Rows, (0028,0011) Columns "
            "and (0028,0008) Number of Frames",
            code="too_large",
        )


def _functional_item(ds, frame_index, keyword):
    """First item of a functional group macro for a frame: per-frame first, then shared.

    PS3.3 C.7.6.16: a macro sits either in (5200,9230) Per-Frame or (5200,9229) Shared
    Functional Groups Sequence; None when the dataset has neither (not an Enhanced IOD).
    """
    places = (("PerFrameFunctionalGroupsSequence", frame_index), ("SharedFunctionalGroupsSequence", 0))
    for groups_keyword, position in places:
        groups = ds.get(groups_keyword)
        if groups and position < len(groups):
            inner = groups[position].get(keyword)
            if inner:
                return inner[0]
    return None


def _first(value):
    """First value of a possibly multi-valued element (several windows: use the first)."""
    if value is None or value == "":
        return None
    if isinstance(value, (str, bytes, int, float)):
        return value
    return value[0] if len(value) else None


def _float_or(value, default):
    value = _first(value)
    return default if value is None else float(value)


def modality_values(ds, frame_pixels, frame_index):
    """Apply the Modality LUT (PS3.3 C.11.1) to one frame of stored values.

    (0028,1053) Rescale Slope / (0028,1052) Rescale Intercept are looked up in the frame's
    Pixel Value Transformation functional group, then the shared one, then the top level:
    pydicom's ``apply_modality_lut`` reads only the top level and returns raw values for
    Enhanced CT/MR. A (0028,3000) Modality LUT Sequence is applied through pydicom.

    Args:
        ds (`pydicom.Dataset`): dataset of the frame.
        frame_pixels (`np.ndarray`): decoded stored values of one frame.
        frame_index (`int`): 0-based index of the frame (selects the per-frame group).

    Returns:
        `np.ndarray`: float64 modality values (Hounsfield units for CT).
    """
    if ds.get("ModalityLUTSequence"):
        return np.asarray(apply_modality_lut(frame_pixels, ds), dtype=np.float64)
    item = _functional_item(ds, frame_index, "PixelValueTransformationSequence") or ds
    slope = _float_or(item.get("RescaleSlope"), 1.0)
    intercept = _float_or(item.get("RescaleIntercept"), 0.0)
    return np.asarray(frame_pixels, dtype=np.float64) * slope + intercept


def _padding_stored(ds, value):
    """A (0028,0120)/(0028,0121) value as a stored value, undoing a US/SS mix-up."""
    if isinstance(value, bytes):
        value = int.from_bytes(value[:2], "little", signed=ds.get("PixelRepresentation") == 1)
    value = int(value)
    bits = int(ds.get("BitsAllocated") or 16)
    if ds.get("PixelRepresentation") == 1 and value >= 2 ** (bits - 1):
        return value - 2**bits
    if ds.get("PixelRepresentation") == 0 and value < 0:
        return value + 2**bits
    return value


def padding_mask(ds, stored):
    """Pixels marked as padding (outside the field of view) by the file.

    PS3.3 C.7.5.1.1.2: (0028,0120) Pixel Padding Value, or with (0028,0121) Pixel Padding
    Range Limit the inclusive range between both, compared with STORED values (before
    the Modality LUT). Padding must not take part in windowing.

    Args:
        ds (`pydicom.Dataset`): dataset of the frame.
        stored (`np.ndarray`): decoded stored values.

    Returns:
        `np.ndarray`: bool array of ``stored``'s shape, True where a pixel is padding.
    """
    stored = np.asarray(stored)
    value = ds.get("PixelPaddingValue")
    if value is None or value == "":
        return np.zeros(stored.shape, dtype=bool)
    low = _padding_stored(ds, value)
    limit = ds.get("PixelPaddingRangeLimit")
    high = _padding_stored(ds, limit) if limit not in (None, "") else low
    low, high = min(low, high), max(low, high)
    as_int = stored.astype(np.int64, copy=False)
    return (as_int >= low) & (as_int <= high)


def file_window(ds, frame_index):
    """The file's own VOI window for a frame, or None when it has none (or an unusable one).

    (0028,1050) Window Center / (0028,1051) Window Width, first value when multi-valued,
    from the frame's Frame VOI LUT functional group (PS3.3 C.7.6.16.2.10), else the top
    level; (0028,1056) VOI LUT Function honoured (LINEAR when absent, C.11.2.1.3).
    """
    item = _functional_item(ds, frame_index, "FrameVOILUTSequence") or ds
    center, width = _first(item.get("WindowCenter")), _first(item.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = str(item.get("VOILUTFunction") or ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in VOI_LUT_FUNCTIONS:
        logger.warning("unsupported (0028,1056) VOI LUT Function; using LINEAR")
        function = "LINEAR"
    try:
        return Window(name="file", center=float(center), width=float(width), function=function)
    except ValueError:
        logger.warning("unusable (0028,1051) Window Width in the file; using an automatic window")
        return None


def _voi_lut_grey(ds, values):
    """Apply the (0028,3010) VOI LUT Sequence through pydicom, then scale its range to 0..255."""
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    entries, first_map = int(descriptor[0]) or 2**16, int(descriptor[1])
    # Clip first: pydicom stores ``value - first_map`` in a uint16 array before clipping.
    inputs = np.clip(np.rint(values), first_map, first_map + entries - 1).astype(np.int64)
    mapped = np.asarray(apply_voi_lut(inputs, ds, index=0, prefer_lut=True), dtype=np.float64)
    every_input = first_map + np.arange(entries, dtype=np.int64)
    table = np.asarray(apply_voi_lut(every_input, ds), dtype=np.float64)
    low, high = float(table.min()), float(table.max())
    scaled = (mapped - low) / max(high - low, 1.0)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _window_grey(ds, values, real, frame_index, window):
    """Grey levels and the window used, for a ``window`` option already validated."""
    if window in WINDOW_PRESETS:
        chosen = preset_window(window)
    elif window == "file":
        chosen = file_window(ds, frame_index)
        if chosen is None and ds.get("VOILUTSequence"):
            return _voi_lut_grey(ds, values), None
    else:
        chosen = None
    if chosen is None:
        chosen = auto_window(values, mask=real)
    return apply_window(values, chosen), chosen


def _is_inverted(ds):
    """MONOCHROME1 (minimum is white, C.7.6.3.1.2) or (2050,0020) Presentation LUT Shape INVERSE.

    C.11.6.1.2 pairs INVERSE with MONOCHROME1, so both together mean one inversion.
    """
    shape = str(ds.get("PresentationLUTShape") or "").strip().upper()
    return str(ds.PhotometricInterpretation).strip() == "MONOCHROME1" or shape == "INVERSE"


def _render_grey(ds, stored, frame_index, window):
    values = modality_values(ds, stored, frame_index)
    padding = padding_mask(ds, stored)
    real = ~padding
    hu_range = (float(values[real].min()), float(values[real].max())) if real.any() else None
    grey, applied = _window_grey(ds, values, real, frame_index, window)
    if _is_inverted(ds):
        grey = invert(grey)
    grey[padding] = 0
    return RenderedFrame(index=frame_index, pixels=grey, window=applied, hu_range=hu_range)


def _to_uint8(rgb, bits):
    """Scale colour samples of ``bits`` bits to 0..255 (e.g. 16-bit RGB, 16-bit palettes)."""
    top = 2**bits - 1
    if top == 255 and rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    scaled = np.clip(rgb.astype(np.float64), 0, top) * (255.0 / top)
    return np.round(scaled).astype(np.uint8)


def _render_colour(ds, decoded, photometric, frame_index):
    """RGB frame from decoded colour data; colour images are never windowed."""
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(decoded, ds)[..., :3]
        except (ValueError, KeyError, AttributeError):
            message = "a (0028,1101-1203) Palette Color Lookup Table Descriptor or Data is missing or invalid"
            raise _invalid(message) from None
        bits = rgb.dtype.itemsize * 8
    else:
        rgb = decoded
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            rgb = convert_color_space(decoded, photometric, "RGB")
        bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    return RenderedFrame(index=frame_index, pixels=_to_uint8(rgb, bits), window=None, hu_range=None)


def _decode_frame(ds, frame_index):
    """Decode one frame only, with the photometric interpretation of the decoded data.

    Uses pydicom 3's ``Decoder.as_array(index=...)``, which reads and decodes just that
    frame (``ds.pixel_array`` would decode all of them), and whose returned properties
    say when pydicom converted YBR to RGB.
    """
    decoder = get_decoder(decoders.transfer_syntax(ds))
    array, properties = decoder.as_array(ds, index=frame_index, **as_pixel_options(ds))
    photometric = str(properties.get("photometric_interpretation") or ds.PhotometricInterpretation)
    return array, photometric.strip()


def _render_frame(ds, frame_index, window):
    try:
        decoded, photometric = _decode_frame(ds, frame_index)
    except DicomError:
        raise
    except Exception as exc:  # any decoder/numpy failure becomes a personal-data-free error
        raise decoders.translate_decode_error(exc, ds) from None
    if photometric in GREY_INTERPRETATIONS:
        return _render_grey(ds, decoded, frame_index, window)
    if photometric in COLOUR_INTERPRETATIONS:
        return _render_colour(ds, decoded, photometric, frame_index)
    raise UnsupportedImageError(
        "the decoded (0028,0004) Photometric Interpretation is not supported",
        code="unsupported_photometric",
    )


def _check_options(window, frames):
    if window not in WINDOW_PRESETS and window not in WINDOW_MODES:
        choices = WINDOW_MODES + tuple(WINDOW_PRESETS)
        raise ConfigError(f"window must be one of {choices}, got {window!r}")
    if frames not in FRAME_MODES:
        raise ConfigError(f"frames must be one of {FRAME_MODES}, got {frames!r}")


def _check_image(ds, window):
    """Checks that need only the header: pixel data present, known interpretation, preset fits."""
    if "PixelData" not in ds:
        raise UnsupportedImageError(
            "the dataset has no (7FE0,0010) Pixel Data, so it is not an image "
            "(e.g. a report, waveform or plan)",
            code="no_pixel_data",
        )
    photometric = str(ds.get("PhotometricInterpretation") or "").strip()
    if not photometric:
        raise _invalid("(0028,0004) Photometric Interpretation is missing")
    if photometric not in GREY_INTERPRETATIONS + COLOUR_INTERPRETATIONS + ("YBR_ICT", "YBR_RCT"):
        raise UnsupportedImageError(
            "this (0028,0004) Photometric Interpretation is not supported",
            code="unsupported_photometric",
        )
    if window in WINDOW_PRESETS and str(ds.get("Modality") or "").strip().upper() != "CT":
        raise UnsupportedImageError(
            f"window preset '{window}' is in Hounsfield units and only applies to CT images, but the "
            "(0008,0060) Modality is not CT; use window='file' (the file's own window) or window='auto'",
            code="window_not_applicable",
        )


def render_frames(
    ds,
    *,
    window="file",
    frames="middle",
    max_frame_pixels=DEFAULT_MAX_FRAME_PIXELS,
    max_total_pixels=DEFAULT_MAX_TOTAL_PIXELS,
):
    """Decode and window frames of an image dataset into 8-bit arrays.

    Args:
        ds (`pydicom.Dataset`): the (de-identified) dataset, with file meta and every
            pixel-relevant attribute, including Enhanced functional groups.
        window (`str`): a :data:`WINDOW_PRESETS` name (CT only), ``"file"`` (the file's own
            window or VOI LUT, else automatic) or ``"auto"`` (percentiles of real pixels).
        frames (`str`): ``"middle"`` decodes only frame ``n // 2``; ``"all"`` every frame.
        max_frame_pixels (`int`): see :func:`check_dimensions`.
        max_total_pixels (`int`): see :func:`check_dimensions`.

    Returns:
        `list[RenderedFrame]`: in frame order.

    Raises:
        ConfigError: ``window`` or ``frames`` is not a known option.
        UnsupportedImageError: ``"no_pixel_data"``, ``"window_not_applicable"``,
            ``"unsupported_photometric"`` or ``"invalid_pixel_module"``.
        DicomError: ``"too_large"``, checked before decoding.
        DicomDecodeError: ``"codec_missing"``, ``"truncated"`` or ``"decode_failed"``.
    """
    _check_options(window, frames)
    _check_image(ds, window)
    check_dimensions(ds, max_frame_pixels, max_total_pixels)
    decoders.check_decodable(ds)
    count = frame_count(ds)
    indices = [count // 2] if frames == "middle" else range(count)
    return [_render_frame(ds, index, window) for index in indices]
