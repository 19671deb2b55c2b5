"""Typed, validated configuration: one dataclass per job, checked once in ``__post_init__``.

Help texts live in ``field(metadata={"help": ...})`` and are the single source for CLI
help and UI labels. A validated config is never mutated: derive a new one with
:func:`dataclasses.replace`, which validates again.

This module holds :class:`IngestConfig` and the shared checks; :class:`TrainConfig` and
:func:`load_config` live in :mod:`.train_config` (which imports these checks) and are
re-exported here, so ``from lib_lora_train.config import TrainConfig`` works.
"""

import dataclasses
import difflib
import string

from .dicom.window import WINDOW_MODES, WINDOW_PRESETS
from .errors import ConfigError

WINDOW_CHOICES = WINDOW_MODES + tuple(WINDOW_PRESETS)
CAPTION_FIELDS = ("trigger", "modality", "body_part", "plane", "window", "style")
DEFAULT_CAPTION_TEMPLATE = "{trigger}, {modality} scan of {body_part}, {plane} slice, {window} window, {style}"


def _help(text, **kwargs):
    return dataclasses.field(metadata={"help": text}, **kwargs)


def _check_choice(key, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def _check_int(key, value, minimum, maximum=None, optional=False):
    if optional and value is None:
        return
    unset = " (or null to unset)" if optional else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} must be a whole number{unset}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ConfigError(f"{key}={value!r} must be at least {minimum}{upper}{unset}")


def _check_bool(key, value):
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")


def _check_template(key, template):
    if not isinstance(template, str) or not template.strip():
        raise ConfigError(f"{key} must be a non-empty text with placeholders such as {{modality}}")
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"{key} is not a valid template ({exc}); use {{name}} placeholders") from None
    for name in names:
        if name not in CAPTION_FIELDS:
            raise ConfigError(
                f"{key} uses the unknown placeholder {{{name}}}; allowed: "
                + ", ".join("{" + f + "}" for f in CAPTION_FIELDS)
            )


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """Options of the DICOM -> de-identified training set step (``prepare``)."""

    # conversion
    resolution: int = _help("Side of the square training image in pixels.", default=512)
    resize_mode: str = _help("Keep the aspect ratio by padding ('pad') or centre-cropping ('crop').", default="pad")
    window: str = _help(
        "VOI window: 'file' (the file's own, else auto), 'auto', or a CT preset: " + ", ".join(WINDOW_PRESETS) + ".",
        default="file",
    )
    frames: str = _help("Multi-frame files: 'middle' frame only, or 'all' frames.", default="middle")
    # de-identification
    date_policy: str = _help(
        "Dates: 'remove' them (default), or 'shift' them by a consistent per-patient offset.", default="remove"
    )
    reject_burned_in: bool = _help(
        "Reject files that have, or usually have, burned-in text (ultrasound, secondary capture, screenshots).",
        default=True,
    )
    ocr: str = _help(
        "OCR check for text in pixels: 'auto' (when rapidocr-onnxruntime is installed), 'required', or 'off'.",
        default="auto",
    )
    blank_regions: tuple = _help(
        "Pixel rectangles (x0, y0, x1, y1) to blank before conversion; when set, files that usually carry "
        "burned-in text are accepted with these regions blanked.",
        default=(),
    )
    keep_deid_dicom: bool = _help("Keep one de-identified DICOM per accepted file for later re-rendering.", default=True)
    # captions
    caption_template: str = _help(
        "Caption wording; placeholders: " + ", ".join("{" + f + "}" for f in CAPTION_FIELDS) + ".",
        default=DEFAULT_CAPTION_TEMPLATE,
    )
    trigger_word: str = _help("Word that will call up the adapter in prompts (may be empty).", default="")
    style_phrase: str = _help("Phrase appended to every caption.", default="medical_art style")
    # limits against decompression bombs and zip bombs
    max_frame_pixels: int = _help("Largest accepted frame, in pixels (rows x columns).", default=64 * 1024 * 1024)
    max_total_pixels: int = _help("Largest accepted file, in pixels over all frames.", default=512 * 1024 * 1024)
    max_file_bytes: int = _help("Largest accepted input file, in bytes.", default=2 * 1024**3)
    max_zip_ratio: int = _help("Largest accepted compression ratio of a zip member.", default=200)
    max_zip_bytes: int = _help("Largest accepted total uncompressed size of one zip archive.", default=8 * 1024**3)

    def __post_init__(self):
        _check_int("resolution", self.resolution, 64, 4096)
        if self.resolution % 8:
            raise ConfigError(f"resolution={self.resolution} must be a multiple of 8 (the VAE downsamples by 8)")
        _check_choice("resize_mode", self.resize_mode, ("pad", "crop"))
        _check_choice("window", self.window, WINDOW_CHOICES)
        _check_choice("frames", self.frames, ("middle", "all"))
        _check_choice("date_policy", self.date_policy, ("remove", "shift"))
        _check_bool("reject_burned_in", self.reject_burned_in)
        _check_choice("ocr", self.ocr, ("auto", "required", "off"))
        _check_bool("keep_deid_dicom", self.keep_deid_dicom)
        object.__setattr__(self, "blank_regions", _validated_regions(self.blank_regions))
        _check_template("caption_template", self.caption_template)
        for key in ("trigger_word", "style_phrase"):
            if not isinstance(getattr(self, key), str):
                raise ConfigError(f"{key} must be text")
        for key in ("max_frame_pixels", "max_total_pixels", "max_file_bytes", "max_zip_ratio", "max_zip_bytes"):
            _check_int(key, getattr(self, key), 1)

    @classmethod
    def from_dict(cls, values):
        """Build from a mapping, rejecting unknown keys with a did-you-mean hint."""
        return _from_dict(cls, values)

    def to_dict(self):
        """Plain-JSON form (tuples as lists), for manifests and the registry."""
        return {
            key: [list(r) for r in value] if key == "blank_regions" else value
            for key, value in dataclasses.asdict(self).items()
        }


def _validated_regions(regions):
    if isinstance(regions, (str, bytes)) or not isinstance(regions, (list, tuple)):
        raise ConfigError(f"blank_regions={regions!r} must be a list of [x0, y0, x1, y1] rectangles")
    checked = []
    for region in regions:
        if (
            not isinstance(region, (list, tuple))
            or len(region) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in region)
            or region[2] <= region[0]
            or region[3] <= region[1]
        ):
            raise ConfigError(
                f"blank_regions entry {region!r} must be [x0, y0, x1, y1] with whole numbers >= 0, x1 > x0, y1 > y0"
            )
        checked.append(tuple(region))
    return tuple(checked)


def field_help(cls):
    """Map each field name of a config dataclass to its help text."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _reject_unknown(keys, known, where=""):
    for key in keys:
        if key not in known:
            hint = difflib.get_close_matches(str(key), sorted(known), n=1)
            suffix = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"unknown key {key!r}{where}{suffix}")


def _from_dict(cls, values):
    _reject_unknown(values, {f.name for f in dataclasses.fields(cls)})
    return cls(**values)


def __getattr__(name):
    # Lazy re-export (PEP 562): train_config imports this module's checks, so an eager
    # import here would be circular whichever of the two modules is imported first.
    if name in ("TrainConfig", "load_config"):
        from . import train_config

        return getattr(train_config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
