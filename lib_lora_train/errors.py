"""Exception hierarchy of medical-lora.

Every error the product raises derives from :class:`LoraTrainError` and also from the
builtin that describes its nature, so callers can catch either. Messages say what failed,
which input, and how to fix it, and never contain personal data: inputs are named by their
batch position and a short content hash, never by element values or user paths.
"""


class LoraTrainError(Exception):
    """Base class of every error raised by ``lib_lora_train``."""


class ConfigError(LoraTrainError, ValueError):
    """A configuration key has a wrong type or value, or is unknown."""


class HomeError(LoraTrainError, OSError):
    """The data home cannot be created, read or written."""


class InputError(LoraTrainError, ValueError):
    """One input (file, folder member or archive member) cannot be ingested.

    Attributes:
        code (`str`): machine-readable reason, stable across versions, e.g. ``"not_dicom"``.
    """

    code = "bad_input"

    def __init__(self, message, code=None):
        super().__init__(message)
        if code is not None:
            self.code = code


class DicomError(InputError):
    """A DICOM file cannot be de-identified or converted."""

    code = "dicom_error"


class DicomDecodeError(DicomError, RuntimeError):
    """Pixel data cannot be decoded (missing codec, corrupt or truncated data)."""

    code = "decode_failed"


class UnsupportedImageError(DicomError):
    """The file is DICOM but not an image this product can train on."""

    code = "unsupported_image"


class BurnedInTextError(DicomError):
    """The pixels carry, or are likely to carry, burned-in text."""

    code = "burned_in_text"


class CaptionPHIError(LoraTrainError, ValueError):
    """A caption contains personal data.

    Attributes:
        kind (`str`): the kind of data found (e.g. ``"a name from the file header"``),
            never the value itself.
    """

    code = "caption_phi"

    def __init__(self, kind):
        super().__init__(f"caption rejected: it contains {kind}; remove it and try again")
        self.kind = kind


class LoraInjectError(LoraTrainError, ValueError):
    """LoRA cannot be injected, read or loaded as asked (bad spec, unknown targets, mismatched state)."""


class ExportError(LoraTrainError, ValueError):
    """An adapter cannot be exported as asked: bad keys, shapes, names, metadata or file."""


class ModelLoadError(LoraTrainError, RuntimeError):
    """A base model cannot be loaded: missing, damaged, unsupported, or not a base model at all."""


class BaseModelChangedError(LoraTrainError, RuntimeError):
    """The frozen base weights differ after training: a bug; the model must be reloaded."""


class JobBusyError(LoraTrainError, RuntimeError):
    """The queue is full: too many jobs are already waiting."""


class JobNotFoundError(LoraTrainError, LookupError):
    """No job has this id (it never existed, or it left the bounded history)."""
