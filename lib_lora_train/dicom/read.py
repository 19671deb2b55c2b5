"""Parse bytes into a pydicom Dataset, with one clear error per way a file can be bad.

Files must carry the DICOM Part 10 preamble and "DICM" prefix; a file without them is
accepted only if it starts like a little-endian dataset (group 0008) and then parses into
an object with a SOP Class. ``force=True`` alone would turn any bytes into a bogus dataset.
"""

import contextlib
import io
import logging
import warnings

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ImplicitVRLittleEndian

from ..errors import DicomError, UnsupportedImageError
from . import profile

logger = logging.getLogger(__name__)


class _DropRecords(logging.Filter):
    def filter(self, record):
        return False


@contextlib.contextmanager
def pydicom_silenced():
    """Keep pydicom from echoing element values into logs and warnings while we work.

    pydicom's validation reports an invalid value by quoting it ("Invalid value for VR UI:
    '<the value>'") through both ``warnings`` and its logger, so a malformed PatientName or
    UID would reach a log line. Inside this context validation is off and pydicom's log
    records and warnings are dropped; our own messages say what went wrong without values.
    """
    settings = pydicom.config.settings
    modes = settings.reading_validation_mode, settings.writing_validation_mode
    pydicom_logger = logging.getLogger("pydicom")
    blocker = _DropRecords()
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    pydicom_logger.addFilter(blocker)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_logger.removeFilter(blocker)
        settings.reading_validation_mode, settings.writing_validation_mode = modes


def read_dataset(data, label):
    """Parse a whole file held in memory.

    Args:
        data (`bytes`): file content.
        label (`str`): position-based name of the input for messages.

    Returns:
        `pydicom.Dataset` with ``file_meta.TransferSyntaxUID`` set.

    Raises:
        DicomError: ``not_dicom``, ``truncated`` or ``malformed``.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        ds = _read_without_preamble(data, label)
    except Exception as exc:  # pydicom raises several types on damaged files
        raise _parse_error(exc, label) from None
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    try:
        ds.keys()
        ds.get("SOPClassUID")
    except Exception as exc:
        raise _parse_error(exc, label) from None
    return ds


def _read_without_preamble(data, label):
    if data[:2] != b"\x08\x00":
        raise DicomError(f"{label}: not a DICOM file (no 'DICM' prefix at byte 128)", code="not_dicom")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        sop_class = ds.get("SOPClassUID")
    except Exception:
        sop_class = None
    if not sop_class:
        raise DicomError(f"{label}: not a DICOM file (no preamble and no readable SOP Class UID)", code="not_dicom")
    return ds


def _parse_error(exc, label):
    text = str(exc).lower()
    if isinstance(exc, EOFError) or "end of file" in text or "truncat" in text or "bytes" in text:
        return DicomError(f"{label}: the file is truncated or damaged ({type(exc).__name__})", code="truncated")
    return DicomError(f"{label}: the DICOM structure is malformed ({type(exc).__name__})", code="malformed")


def check_is_image(ds, label):
    """Refuse objects that are not pictures to train on (SR, RT plan, waveform, SEG, ...).

    Raises:
        UnsupportedImageError: ``no_pixel_data`` or ``not_an_image``.
    """
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if not sop_class:
        raise UnsupportedImageError(f"{label}: no (0008,0016) SOP Class UID; not an image object", code="not_an_image")
    if sop_class in profile.NON_IMAGE_SOP_CLASSES:
        kind = profile.NON_IMAGE_SOP_CLASSES[sop_class]
        raise UnsupportedImageError(f"{label}: a {kind} object is not an image to train on", code="not_an_image")
    if "PixelData" not in ds:
        name = pydicom.uid.UID(sop_class).name
        if name.endswith("Image Storage"):
            raise DicomError(
                f"{label}: a {name} object without pixel data; the file is probably truncated", code="truncated"
            )
        kind = f" ({name})" if name != sop_class else ""
        raise UnsupportedImageError(f"{label}: no pixel data{kind}; not an image to train on", code="no_pixel_data")
    if ds.get("BitsAllocated") == 1:
        raise UnsupportedImageError(f"{label}: 1-bit pixel data (a mask), not an image to train on", code="not_an_image")
