"""One input file through the whole chain: read, gate, de-identify, render, caption, write.

The order matters for privacy: identifying values are harvested from the original only to
screen captions; the original is de-identified before any pixel is decoded; pixels are
rendered from the de-identified dataset (what is kept is exactly what can be re-rendered);
burned-in text is gated on the header first and on the pixels (OCR) after rendering.
"""

import dataclasses
import hashlib
import io
import logging

import numpy as np

from ..dicom import burned_in, pixels
from ..dicom.deid import deidentify, mark_pixels_clean
from ..dicom.identifiers import harvest_identifiers
from ..dicom.read import check_is_image, read_dataset
from ..errors import InputError, LoraTrainError
from .captions import caption_for
from .images import fit_square, png_bytes
from .outcomes import FileOutcome, ImageRecord

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class HeaderScan:
    """First-pass facts about one input, used for batch-level checks."""

    label: str
    sha256: str = ""
    modality: str = ""
    instance_key: str = ""
    error: object = None


def scan_header(source):
    """Read one input and check that it is a DICOM image; never raises for bad input."""
    if source.error is not None:
        return HeaderScan(source.label, error=source.error)
    try:
        data = source.read()
        sha256 = hashlib.sha256(data).hexdigest()
        ds = read_dataset(data, source.label)
        check_is_image(ds, source.label)
        return HeaderScan(source.label, sha256, str(ds.get("Modality", "") or ""), str(ds.get("SOPInstanceUID", "")))
    except LoraTrainError as exc:
        return HeaderScan(source.label, locals().get("sha256", ""), error=exc)
    except Exception as exc:  # a damaged file may break pydicom in unforeseen ways
        return HeaderScan(source.label, locals().get("sha256", ""), error=_unexpected(source.label, exc))


def _unexpected(label, exc):
    # Only the type: messages of third-party exceptions may quote header values.
    logger.error("%s: unexpected %s", label, type(exc).__name__)
    return InputError(f"{label}: unexpected {type(exc).__name__} while reading; file skipped", code="internal_error")


class FilePipeline:
    """Processes accepted inputs into images (and de-identified DICOMs) in a staging folder.

    Args:
        staging (`pathlib.Path`): folder with ``images/`` (and ``dicom/``) subfolders.
        config (`IngestConfig`): validated options.
        pseudonymizer (`Pseudonymizer`): keyed pseudonyms of this site.
        captions (`bool`): write captions (False for conversion only).
        detector (`burned_in.TextDetector`, *optional*): OCR engine, created lazily if None.
    """

    def __init__(self, staging, config, pseudonymizer, *, captions=True, detector=None):
        self.staging = staging
        self.config = config
        self.pseudonymizer = pseudonymizer
        self.captions = captions
        self.detector = detector if detector is not None else burned_in.TextDetector()
        self.identifiers = None  # union of the accepted files' header values, for the caption-edit screen

    def process(self, source, scan):
        """Return ``(FileOutcome, [ImageRecord, ...])``; bad input gives a rejected outcome."""
        try:
            return self._process(source, scan)
        except LoraTrainError as exc:
            message = str(exc) if str(exc).startswith(scan.label) else f"{scan.label}: {exc}"
            return FileOutcome(scan.label, scan.sha256, "rejected", getattr(exc, "code", "error"), message), []
        except Exception as exc:
            return FileOutcome.rejected(scan.label, scan.sha256, _unexpected(scan.label, exc)), []

    def _process(self, source, scan):
        config, label = self.config, scan.label
        original = read_dataset(source.read(), label)
        burned_in.gate(original, config)
        pixels.check_dimensions(original, config.max_frame_pixels, config.max_total_pixels)
        identifiers = harvest_identifiers(original) if self.captions else None
        result = deidentify(original, self.pseudonymizer, date_policy=config.date_policy)
        deid = result.dataset
        if config.blank_regions:
            _blank_stored_pixels(deid, config.blank_regions)
        frames = pixels.render_frames(deid, window=config.window, frames=config.frames,
                                      max_frame_pixels=config.max_frame_pixels,
                                      max_total_pixels=config.max_total_pixels)
        ocr = burned_in.ocr_gate([frame.pixels for frame in frames], config, self.detector)
        if config.blank_regions or ocr.ran:
            mark_pixels_clean(deid)
        source_key = str(original.get("SOPInstanceUID", "") or scan.sha256)
        images = [self._write_image(frame, deid, identifiers, result, source_key) for frame in frames]
        dicom_file = self._write_dicom(deid, source_key) if self.captions and config.keep_deid_dicom else ""
        if identifiers is not None:
            self.identifiers = identifiers if self.identifiers is None else self.identifiers.merged(identifiers)
        return FileOutcome(
            label=label, sha256=scan.sha256, status="accepted", patient=result.patient, study=result.study,
            modality=scan.modality, images=tuple(image.file_name for image in images), dicom_file=dicom_file,
            pixel_checks=_pixel_checks(config, ocr), action_counts=result.action_counts,
            warnings=_warnings(result),
        ), images

    def _write_image(self, frame, deid, identifiers, result, source_key):
        stem = self.pseudonymizer.image_name(source_key, frame.index)
        file_name = f"images/{stem}.png"
        data = png_bytes(fit_square(frame.pixels, self.config.resolution, self.config.resize_mode))
        (self.staging / file_name).write_bytes(data)  # staging is invisible until published
        window = frame.window
        caption = ""
        if self.captions:
            caption = caption_for(deid, identifiers, self.config, window.name if window is not None else None)
        return ImageRecord(
            file_name=file_name, caption=caption, patient=result.patient, study=result.study,
            source=stem if frame.index == 0 else self.pseudonymizer.image_name(source_key, 0), frame=frame.index,
            window={} if window is None else dataclasses.asdict(window), sha256=hashlib.sha256(data).hexdigest(),
        )

    def _write_dicom(self, deid, source_key):
        file_name = f"dicom/{self.pseudonymizer.image_name(source_key, -1)}.dcm"
        buffer = io.BytesIO()
        deid.save_as(buffer, enforce_file_format=True)
        (self.staging / file_name).write_bytes(buffer.getvalue())
        return file_name


def _blank_stored_pixels(ds, regions):
    """Blank ``regions`` in the stored pixels themselves, re-encoded uncompressed.

    The kept DICOM must not carry what the PNG hides, so blanking happens on the dataset
    before rendering, not on the rendered image.
    """
    array = ds.pixel_array
    multi = int(ds.get("NumberOfFrames", 1) or 1) > 1
    frames = array if multi else array[np.newaxis]
    blanked = np.stack([burned_in.blank(frame, regions) for frame in frames])
    photometric = str(ds.PhotometricInterpretation)
    if photometric.startswith("YBR"):
        photometric = "RGB"  # pydicom converted it while decoding
    ds.set_pixel_data(blanked if multi else blanked[0], photometric, int(ds.BitsStored))


def _pixel_checks(config, ocr):
    if config.blank_regions:
        return "regions blanked" + (", OCR found no text" if ocr.ran else "")
    return "OCR found no text" if ocr.ran else "header checks only (OCR not run)"


def _warnings(result):
    if result.patient_id_missing:
        return ("the file has no PatientID; it is tracked by its study pseudonym, so 'forget this patient' "
                "cannot find it by patient id",)
    return ()
