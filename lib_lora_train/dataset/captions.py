"""Generate training captions from non-identifying attributes of a de-identified dataset.

Captions are generated, never typed (DICOM_NOTES.md section 5.4): Modality, BodyPartExamined
and the image plane are mapped to a controlled vocabulary, unknown values are dropped rather
than passed through (BodyPartExamined is free CS text in practice, PS3.16 Annex L lists the
defined terms), and every caption is then checked against the source file's header values
by :func:`~lib_lora_train.dataset.phi_check.check_caption`, because the trigger word and the
style phrase come from the user.
"""

import dataclasses
import math
import re
import string

from ..config import CAPTION_FIELDS
from ..dicom.vocabulary import BODY_PART_TERMS, fold_body_part
from ..dicom.window import WINDOW_MODES, WINDOW_PRESETS
from ..errors import ConfigError
from .phi_check import check_caption

# (0008,0060) Modality defined terms (PS3.3 C.7.3.1.1.1) -> caption phrase.
MODALITY_PHRASES = {
    "CT": "CT",
    "MR": "MRI",
    "CR": "X-ray",
    "DX": "X-ray",
    "RG": "X-ray",
    "RF": "fluoroscopy",
    "MG": "mammography",
    "NM": "nuclear medicine",
    "PT": "PET",
    "US": "ultrasound",
    "XA": "angiography",
    "IO": "intraoral X-ray",
    "PX": "panoramic X-ray",
    "BMD": "bone densitometry",
}

# Axis of the slice normal (patient LPS: x right->left, y anterior->posterior, z feet->head).
PLANE_BY_NORMAL_AXIS = ("sagittal", "coronal", "axial")
# A plane is named only if the normal is within ~37 degrees of one axis (cos 37deg ~ 0.8).
MIN_AXIS_COSINE = 0.8


@dataclasses.dataclass(frozen=True)
class CaptionAttributes:
    """The non-identifying facts a caption may state; None where unknown.

    Attributes:
        modality (`str | None`): phrase from :data:`MODALITY_PHRASES`, e.g. ``"MRI"``.
        body_part (`str | None`): phrase from :data:`BODY_PART_TERMS`, e.g. ``"chest"``.
        plane (`str | None`): ``"axial"``, ``"coronal"``, ``"sagittal"`` or ``"oblique"``.
    """

    modality: str | None = None
    body_part: str | None = None
    plane: str | None = None


def caption_attributes(ds):
    """Read modality, body part and plane of a de-identified dataset into the vocabulary.

    Args:
        ds (`pydicom.Dataset`): the de-identified dataset; only (0008,0060) Modality,
            (0018,0015) Body Part Examined and (0020,0037) Image Orientation (Patient) (or
            the Enhanced functional groups' Plane Orientation Sequence) are read.

    Returns:
        `CaptionAttributes`: values outside the vocabulary become None, never free text.
    """
    modality = MODALITY_PHRASES.get(_text(ds.get("Modality")).upper())
    return CaptionAttributes(modality, body_part_phrase(_text(ds.get("BodyPartExamined"))), plane_of(ds))


def body_part_phrase(value):
    """Map a BodyPartExamined value to the controlled list, or None if it is not on it."""
    return BODY_PART_TERMS.get(fold_body_part(value))


def plane_of(ds):
    """Name the image plane from the direction cosines, or None without a valid orientation."""
    cosines = _orientation(ds)
    if cosines is None:
        return None
    return plane_from_orientation(cosines)


def plane_from_orientation(cosines):
    """Name the plane of (0020,0037) Image Orientation (Patient) by its normal vector.

    Args:
        cosines (`Sequence[float]`): row then column direction cosines (6 numbers).

    Returns:
        `str | None`: ``"axial"``, ``"coronal"``, ``"sagittal"``, ``"oblique"`` when no axis
        dominates, or None for an invalid orientation (wrong length, not finite, degenerate).
    """
    try:
        values = [float(v) for v in cosines]
    except (TypeError, ValueError):
        return None
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        return None
    (rx, ry, rz), (cx, cy, cz) = values[:3], values[3:]
    normal = (ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx)
    length = math.sqrt(sum(n * n for n in normal))
    if length < 1e-6:
        return None
    magnitudes = [abs(n) / length for n in normal]
    axis = max(range(3), key=magnitudes.__getitem__)
    return PLANE_BY_NORMAL_AXIS[axis] if magnitudes[axis] >= MIN_AXIS_COSINE else "oblique"


def build_caption(attrs, config, window_name, index=None):
    """Fill the configured template and check the result for personal data.

    The template is split into comma-separated clauses; a clause whose placeholder is empty
    (unknown body part, no trigger word, window "file"/"auto") is dropped as a whole, so no
    caption reads "scan of , slice".

    Args:
        attrs (`CaptionAttributes`): from :func:`caption_attributes`.
        config (`IngestConfig`): supplies ``caption_template``, ``trigger_word``, ``style_phrase``.
        window_name (`str | None`): the window preset applied, or ``"file"``/``"auto"``/None.
        index (`IdentifierIndex`, *optional*): the source file's header values.

    Returns:
        `str`: e.g. ``"CT scan of lung, axial slice, lung window, medical_art style"``.

    Raises:
        ConfigError: the window name is not a preset or mode.
        CaptionPHIError: the caption contains personal data (typically from the trigger word
            or style phrase).
    """
    fields = {
        "trigger": config.trigger_word,
        "modality": attrs.modality,
        "body_part": attrs.body_part,
        "plane": attrs.plane,
        "window": _window_phrase(window_name),
        "style": config.style_phrase,
    }
    clauses = [_fill_clause(clause, fields) for clause in config.caption_template.split(",")]
    caption = ", ".join(c for c in clauses if c)
    # What the user typed is screened against the header; the vocabulary phrases are not: a
    # patient named "Pancreas" must not make "CT scan of pancreas" unusable, and a phrase from
    # a fixed list cannot carry anything about the person. The whole caption still passes the
    # generic patterns.
    for user_text in (config.trigger_word, config.style_phrase, _literal_text(config.caption_template)):
        check_caption(user_text, index)
    check_caption(caption)
    return caption


def caption_for(ds_deidentified, index, config, window_name):
    """Caption of one de-identified dataset, checked against its source file's index.

    Args:
        ds_deidentified (`pydicom.Dataset`): the de-identified dataset.
        index (`IdentifierIndex | None`): from ``harvest_identifiers`` on the original file.
        config (`IngestConfig`): caption settings.
        window_name (`str | None`): the window preset applied.

    Returns:
        `str`: the checked caption.

    Raises:
        CaptionPHIError: see :func:`build_caption`.
    """
    return build_caption(caption_attributes(ds_deidentified), config, window_name, index)


def _literal_text(template):
    """The words of a template outside its placeholders."""
    return " ".join(literal for literal, _, _, _ in string.Formatter().parse(template))


def _fill_clause(clause, fields):
    """Format one clause; an empty placeholder takes its preposition along ("CT scan of {body_part}"
    -> "CT scan"); a clause left with no placeholder value at all is dropped ("")."""
    names = [name for _, name, _, _ in string.Formatter().parse(clause) if name is not None]
    for name in names:
        if name in fields and not (fields[name] or "").strip():
            clause = re.sub(r"\s+(?:of|in|with|on)\s+\{" + name + r"\}", "", clause)
    names = [name for _, name, _, _ in string.Formatter().parse(clause) if name is not None]
    unknown = [name for name in names if name not in CAPTION_FIELDS]
    if unknown:
        raise ConfigError(f"caption template uses the unknown placeholder {{{unknown[0]}}}")
    values = {name: (fields[name] or "").strip() for name in names}
    if any(not value for value in values.values()):
        return ""
    return " ".join(clause.format(**values).split())


def _window_phrase(window_name):
    if window_name is None or window_name in WINDOW_MODES:
        return None
    if window_name not in WINDOW_PRESETS:
        raise ConfigError(
            f"window {window_name!r} is not known; use one of: {', '.join(WINDOW_MODES + tuple(WINDOW_PRESETS))}"
        )
    return window_name.replace("_", " ")


def _orientation(ds):
    """(0020,0037) at top level, else from the Enhanced Shared, then first Per-frame group."""
    if ds.get("ImageOrientationPatient") is not None:
        return ds.ImageOrientationPatient
    for group_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(group_keyword) or ()
        for group in groups[:1]:
            planes = group.get("PlaneOrientationSequence") or ()
            if planes and planes[0].get("ImageOrientationPatient") is not None:
                return planes[0].ImageOrientationPatient
    return None


def _text(value):
    """Stripped string of an attribute value (first value if multi-valued), "" when missing."""
    if value is None:
        return ""
    if not isinstance(value, str):
        value = value[0] if len(value) else ""
    return str(value).strip()
