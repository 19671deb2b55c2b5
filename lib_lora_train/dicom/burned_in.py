"""Pixel-PHI gate: keep files whose pixels show burned-in text out of the training set.

Header values are removed by de-identification, but text burned into the pixels (names, IDs,
dates, the hospital) survives it: offline OCR found such text in 7 public ultrasound test files,
several of which lack (0028,0301) Burned In Annotation (DICOM notes §0 item 4, §2.9). Two
independent checks therefore run:

1. :func:`gate` rejects, from the header alone, the kinds of files that usually carry burned-in
   text (ultrasound, secondary capture, screenshots, photographs, documents), unless the user
   configured ``blank_regions`` to blank the annotated areas.
2. :func:`ocr_gate` runs an optional offline OCR plugin (rapidocr-onnxruntime) on the frames and
   rejects a file when text is found. The plugin follows pydicom's decoder plugins: a dependency
   table, :func:`is_ocr_available` and one worker, :meth:`TextDetector.find_text`.

Recognised text is never returned, stored or logged: it may be a patient's name. Only boxes,
scores and character counts leave this module.
"""

import dataclasses
import importlib.util
import logging

import numpy as np
from pydicom import uid

from ..errors import BurnedInTextError

LOGGER = logging.getLogger(__name__)

FIX_HINT = "use a file without burned-in text, or configure blank_regions to blank the annotated areas"

# SOP Class UID -> what such a file is. These IODs hold frame-grabbed ultrasound, screen grabs,
# photographs, video or documents, whose pixels routinely carry annotations or faces, the
# targets of the Clean Pixel Data and Clean Recognizable Visual Features options (PS3.15 E.3.1-2).
RISKY_SOP_CLASSES = {
    uid.UltrasoundImageStorage: "an ultrasound image",
    uid.UltrasoundMultiFrameImageStorage: "an ultrasound image",
    "1.2.840.10008.5.1.4.1.1.6": "an ultrasound image",  # Ultrasound Image Storage (Retired)
    "1.2.840.10008.5.1.4.1.1.3": "an ultrasound image",  # Ultrasound Multi-frame (Retired)
    uid.EnhancedUSVolumeStorage: "an ultrasound image",
    uid.SecondaryCaptureImageStorage: "a secondary capture",
    uid.MultiFrameSingleBitSecondaryCaptureImageStorage: "a secondary capture",
    uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage: "a secondary capture",
    uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage: "a secondary capture",
    uid.MultiFrameTrueColorSecondaryCaptureImageStorage: "a secondary capture",
    uid.VLEndoscopicImageStorage: "a visible-light photograph",
    uid.VLMicroscopicImageStorage: "a visible-light photograph",
    uid.VLSlideCoordinatesMicroscopicImageStorage: "a visible-light photograph",
    uid.VLPhotographicImageStorage: "a visible-light photograph",
    uid.DermoscopicPhotographyImageStorage: "a visible-light photograph",
    uid.VideoEndoscopicImageStorage: "a video",
    uid.VideoMicroscopicImageStorage: "a video",
    uid.VideoPhotographicImageStorage: "a video",
    uid.EncapsulatedPDFStorage: "an encapsulated document",
    uid.EncapsulatedCDAStorage: "an encapsulated document",
}

# (0008,0060) Modality -> what such a file is (PS3.3 C.7.3.1.1.1).
RISKY_MODALITIES = {
    "US": "an ultrasound image",
    "IVUS": "an intravascular ultrasound image",
    "XC": "an external-camera photograph",
    "DOC": "a document",
}

# (0008,0008) Image Type values that vendors use for screenshots and report pages. SECONDARY
# alone is not listed: it marks any post-processed image (MPR, MR_small.dcm), not text.
RISKY_IMAGE_TYPES = {
    "SCREEN SAVE": "a screen capture",
    "CSA REPORT": "a scanner report page",
}

# OCR plugin name -> importable modules it needs; the pip package to install for each plugin.
CROSS_SECTIONAL_MODALITIES = {"CT", "MR", "PT", "NM"}
OCR_DEPENDENCIES = {"rapidocr": ("rapidocr_onnxruntime",)}
OCR_PACKAGES = {"rapidocr": "rapidocr-onnxruntime"}

# Measured on min-max rendered 8-bit frames (tests/dicom/test_burned_in.py): clean CT/MR/CR/DX
# gave nothing above 0.25 with >= 2 characters (single laterality letters such as "R" reach
# 0.99, hence the character floor); burned-in PHI on the ultrasound files scored >= 0.94.
MIN_SCORE = 0.6
MIN_CHARS = 3
# Larger frames are downscaled first: OCR time grows with area (3.8 s for a 1955x1841 CR at
# full size), and text too small to read at this size is too small to learn at training size.
MAX_OCR_SIDE = 1600
# Burned-in annotations are the same on every frame of a cine loop; check a few, evenly spaced.
MAX_OCR_FRAMES = 3


@dataclasses.dataclass(frozen=True)
class TextHit:
    """One region of the image where text was recognised. Holds no recognised text.

    Attributes:
        box (`tuple[int, int, int, int]`): (x0, y0, x1, y1), half-open, in the frame's pixel
            coordinates, usable as a ``blank_regions`` entry.
        score (`float`): recognition confidence, 0..1.
        n_chars (`int`): number of letters and digits read.
    """

    box: tuple
    score: float
    n_chars: int


@dataclasses.dataclass(frozen=True)
class OcrOutcome:
    """What :func:`ocr_gate` did, for a truthful record of the checks a file passed.

    Attributes:
        ran (`bool`): False when OCR was off or, with ``ocr="auto"``, not installed.
        frames_checked (`int`): number of frames OCR looked at.
    """

    ran: bool
    frames_checked: int


def burned_in_risk(ds):
    """Say why the header suggests burned-in text or a face, from fixed phrases only.

    Args:
        ds (`pydicom.Dataset`): the original dataset (before de-identification).

    Returns:
        `str` or `None`: a short reason without any header value, or None when none applies.
    """
    for check in (_annotation_risk, _sop_class_risk, _modality_risk, _image_type_risk, _conversion_risk):
        reason = check(ds)
        if reason:
            return reason
    return None


def gate(ds, config):
    """Reject a file whose header says its pixels likely show burned-in text.

    With ``config.blank_regions`` set the file is accepted: the caller blanks those regions (and
    :func:`ocr_gate` checks the blanked frames).

    Args:
        ds (`pydicom.Dataset`): the original dataset.
        config (`IngestConfig`): uses ``reject_burned_in`` and ``blank_regions``.

    Returns:
        `str` or `None`: the risk found (also when accepted thanks to ``blank_regions``).

    Raises:
        BurnedInTextError: ``reject_burned_in`` is on, a risk exists and no regions are blanked.
    """
    reason = burned_in_risk(ds)
    if reason and config.reject_burned_in and not config.blank_regions:
        raise BurnedInTextError(
            f"file rejected to protect privacy: it is {reason}, so its pixels likely show burned-in "
            f"text such as names, IDs or dates, or identifying features; fix: {FIX_HINT}"
        )
    return reason


def blank(pixels, regions):
    """Return a copy of a frame with each rectangle set to 0.

    Args:
        pixels (`np.ndarray`): one frame, HxW or HxWxC, in the raw frame's coordinates.
        regions (`Iterable[tuple[int, int, int, int]]`): (x0, y0, x1, y1), half-open; parts outside
            the image are ignored.

    Returns:
        `np.ndarray`: the blanked copy, same shape and dtype.
    """
    if pixels.ndim not in (2, 3):
        raise ValueError(f"blank expects one HxW or HxWxC frame, got an array with shape {pixels.shape}")
    out = np.array(pixels, copy=True)
    height, width = out.shape[:2]
    for x0, y0, x1, y1 in regions:
        out[_clip(y0, height) : _clip(y1, height), _clip(x0, width) : _clip(x1, width)] = 0
    return out


def is_ocr_available(plugin="rapidocr"):
    """Return True when every module the OCR plugin needs can be imported (nothing is imported)."""
    return all(importlib.util.find_spec(name) is not None for name in OCR_DEPENDENCIES[plugin])


class TextDetector:
    """Finds text regions in 8-bit frames with RapidOCR, created on first use and then reused.

    Args:
        max_side (`int`): frames whose longer side exceeds this are downscaled before OCR.
    """

    def __init__(self, max_side=MAX_OCR_SIDE):
        self.max_side = max_side
        self._engine = None

    def find_text(self, pixels, min_score=MIN_SCORE, min_chars=MIN_CHARS):
        """Return the regions where text was read, without the text.

        Args:
            pixels (`np.ndarray`): uint8 frame, HxW (grey) or HxWx3 (RGB).
            min_score (`float`): lowest recognition confidence that counts.
            min_chars (`int`): fewest letters/digits that count; single laterality letters
                ("L", "R") are not PHI.

        Returns:
            `list[TextHit]`: boxes in the frame's coordinates.

        Raises:
            BurnedInTextError: code ``"ocr_unavailable"`` when the OCR package cannot be loaded.
        """
        _check_frame(pixels)
        engine = self._get_engine()
        image, scale = self._to_engine_image(pixels)
        results, _ = engine(image, text_score=min_score)
        hits = []
        for points, text, score in results or []:
            n_chars = sum(ch.isalnum() for ch in text)
            if float(score) >= min_score and n_chars >= min_chars:
                hits.append(TextHit(_bounding_box(points, scale, pixels.shape), float(score), n_chars))
        return hits

    def _get_engine(self):
        if self._engine is None:
            if not is_ocr_available():
                raise _unavailable_error()
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as exc:
                raise _unavailable_error(f"is installed but failed to import ({type(exc).__name__})") from exc
            self._engine = RapidOCR()
        return self._engine

    def _to_engine_image(self, pixels):
        # RapidOCR takes arrays in OpenCV's BGR order.
        image = np.ascontiguousarray(pixels[..., ::-1] if pixels.ndim == 3 else pixels)
        scale = min(1.0, self.max_side / max(image.shape[:2]))
        if scale < 1.0:
            import cv2  # a dependency of rapidocr-onnxruntime, importable once the engine loaded

            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return image, scale


def find_text(pixels, min_score=MIN_SCORE, min_chars=MIN_CHARS, detector=None):
    """Return the text regions of one frame; see :meth:`TextDetector.find_text`.

    Pass a ``detector`` to reuse its OCR engine across calls; without one a new engine is built.
    """
    return (detector or TextDetector()).find_text(pixels, min_score=min_score, min_chars=min_chars)


def ocr_gate(frames, config, detector=None, max_frames=MAX_OCR_FRAMES):
    """Reject a file when OCR reads text in its frames (after ``blank_regions`` are blanked).

    Args:
        frames (`Sequence[np.ndarray]`): the file's uint8 frames, HxW or HxWx3.
        config (`IngestConfig`): uses ``ocr`` ("auto", "required", "off") and ``blank_regions``.
        detector (`TextDetector`, *optional*): reuse its engine across files.
        max_frames (`int`): at most this many frames, evenly spaced, are checked.

    Returns:
        `OcrOutcome`: whether OCR ran and on how many frames.

    Raises:
        BurnedInTextError: code ``"ocr_unavailable"`` when ``ocr="required"`` and the package is
            missing; code ``"text_in_pixels"`` when text is found.
    """
    if config.ocr == "off":
        return OcrOutcome(ran=False, frames_checked=0)
    if not is_ocr_available():
        if config.ocr == "required":
            raise _unavailable_error(context=" with ocr='required'")
        LOGGER.debug("OCR check skipped: %s is not installed", OCR_PACKAGES["rapidocr"])
        return OcrOutcome(ran=False, frames_checked=0)
    detector = detector or TextDetector()
    indices = _sample_indices(len(frames), max_frames)
    for index in indices:
        frame = blank(frames[index], config.blank_regions) if config.blank_regions else frames[index]
        hits = detector.find_text(frame)
        if hits:
            raise _text_found_error(index, hits)
    return OcrOutcome(ran=True, frames_checked=len(indices))


def _annotation_risk(ds):
    if _upper(ds, "BurnedInAnnotation") not in ("", "NO"):
        return "an image marked as having burned-in annotation ((0028,0301) Burned In Annotation)"
    if _upper(ds, "RecognizableVisualFeatures") not in ("", "NO"):
        return "an image with recognizable visual features (e.g. a face)"
    return None


def _sop_class_risk(ds):
    sop_class = str(ds.get("SOPClassUID") or _file_meta(ds).get("MediaStorageSOPClassUID") or "").strip()
    kind = RISKY_SOP_CLASSES.get(sop_class)
    return f"{kind} (SOP class {uid.UID(sop_class).name})" if kind else None


def _modality_risk(ds):
    modality = _upper(ds, "Modality")
    kind = RISKY_MODALITIES.get(modality)
    return f"{kind} (modality {modality})" if kind else None


def _image_type_risk(ds):
    for value in _values(ds, "ImageType"):
        kind = RISKY_IMAGE_TYPES.get(value)
        if kind:
            return f"{kind} (Image Type {value})"
    return None


def _conversion_risk(ds):
    # (0018,0064) Conversion Type belongs to the SC Equipment module: the image was digitised from
    # video, film or a workstation screen, even when the SOP class does not say so.
    # A CT/MR/PET/NM object that carries it (e.g. public CT collections re-exported by CTP with
    # "DV") is still a scanner image; the OCR pass guards it like any other.
    if _upper(ds, "ConversionType") and _upper(ds, "Modality") not in CROSS_SECTIONAL_MODALITIES:
        return "a converted or captured image ((0018,0064) Conversion Type is present)"
    return None


def _file_meta(ds):
    return getattr(ds, "file_meta", None) or {}


def _upper(ds, keyword):
    value = ds.get(keyword)
    return str(value).strip().upper() if value is not None else ""


def _values(ds, keyword):
    value = ds.get(keyword)
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    return [str(item).strip().upper() for item in items]


def _clip(value, limit):
    return min(max(int(value), 0), limit)


def _bounding_box(points, scale, shape):
    corners = np.asarray(points, dtype=np.float64) / scale
    height, width = shape[:2]
    x0, y0 = np.floor(corners.min(axis=0))
    x1, y1 = np.ceil(corners.max(axis=0))
    return (_clip(x0, width), _clip(y0, height), _clip(x1, width), _clip(y1, height))


def _sample_indices(count, max_frames):
    if count <= max_frames:
        return list(range(count))
    if max_frames == 1:
        return [count // 2]
    return sorted({round(i * (count - 1) / (max_frames - 1)) for i in range(max_frames)})


def _check_frame(pixels):
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise ValueError(f"OCR expects a uint8 HxW or HxWx3 frame, got dtype {pixels.dtype} and shape {pixels.shape}")


def _unavailable_error(problem="is not installed", context=""):
    plugin = "rapidocr"
    package = OCR_PACKAGES[plugin]
    return BurnedInTextError(
        f"the OCR check for burned-in text cannot run{context}: the '{plugin}' plugin requires {package}, "
        f"which {problem}; install it with `pip install {package}`, or set ocr to 'auto' or 'off'",
        code="ocr_unavailable",
    )


def _text_found_error(index, hits):
    boxes = ", ".join(str(list(hit.box)) for hit in hits[:5])
    more = f" and {len(hits) - 5} more" if len(hits) > 5 else ""
    return BurnedInTextError(
        f"file rejected to protect privacy: text was detected in the pixels ({len(hits)} text region(s) "
        f"in frame {index}, at [x0, y0, x1, y1] {boxes}{more}); burned-in text often holds names, IDs "
        f"or dates; fix: {FIX_HINT}",
        code="text_in_pixels",
    )
