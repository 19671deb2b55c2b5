"""Reject captions that contain personal data: header values of the source file or generic PHI.

A caption is rejected, never "scrubbed" (DICOM_NOTES.md section 5.4): first every value of the
source file's :class:`~lib_lora_train.dicom.identifiers.IdentifierIndex` is looked for on token
boundaries of the normalised caption, then generic patterns that need no header (dates, times,
e-mail and web addresses, phone numbers, long numbers, ID-like codes, UIDs, ``Family^Given``,
ages over 89; HIPAA Safe Harbor, 45 CFR 164.514(b)(2)). Only the *kind* of data found is
reported or logged, never the value.
"""

import dataclasses
import logging
import re
from collections.abc import Callable

from ..dicom.identifiers import MONTH_NAMES, compact_text, fold_text, normalize_text
from ..errors import CaptionPHIError

logger = logging.getLogger(__name__)

KIND_DATE = "a date"
KIND_TIME = "a time of day"
KIND_EMAIL = "an e-mail address"
KIND_URL = "a web address"
KIND_PHONE = "a phone number"
KIND_LONG_NUMBER = "a long number (possible record number)"
KIND_ID_CODE = "an ID-like code"
KIND_UID = "a UID"
KIND_PERSON_NAME = "a DICOM person name"
KIND_AGE = "an age over 89"

_MONTH = "(?:" + "|".join(sorted({n for names in MONTH_NAMES.values() for n in names}, key=len, reverse=True)) + ")"
_ORDINAL = r"(?:st|nd|rd|th)?"
_AGE = r"(?:9\d|1[0-4]\d)"
_MIN_ID_CHARS = 6
_MIN_PHONE_DIGITS = 7

# Radiology tokens that look like codes but identify no one: window settings (W1500, L-600),
# sizes and units (5mm, 120kV, 1.5T, 250mAs), matrices (512x512), vertebrae (C1-C7, T1-T12,
# L1-L5, S1), MR weightings and b-values (T1, T2, b1000), isotopes (18F, 99mTc), short numbers.
ALLOWED_CODE = re.compile(
    r"(?:ww|wl|wc|w|l)-?\d{1,5}"
    r"|\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?(?:mm|cm|um|m|kv|kvp|ma|mas|ms|s|sec|min|t|hu|mgy|mbq|ml|mg|mhz|khz"
    r"|hz|bit|bits|px|fps|d|x|deg|mgi|mmol)"
    r"|\d{2,4}x\d{2,4}(?:x\d{2,4})?"
    r"|[ctls]\d{1,2}(?:-[ctls]?\d{1,2})?"
    r"|t[12]w?|b\d{1,4}|x\d{1,2}|\d{1,2}(?:st|nd|rd|th)|\d{1,3}m?[a-z]{1,2}|\d{1,3}"
)


@dataclasses.dataclass(frozen=True)
class _Rule:
    """A generic PHI pattern; ``accept`` confirms a regex hit (e.g. a valid day and month)."""

    name: str
    kind: str
    pattern: re.Pattern
    accept: Callable[[re.Match], bool] | None = None


def _valid_ymd(match):
    year, month, day = (int(g) for g in match.groups())
    return 1800 <= year <= 2199 and 1 <= month <= 12 and 1 <= day <= 31


def _valid_dmy(match):
    first, second = int(match.group(1)), int(match.group(2))
    day_first = 1 <= first <= 31 and 1 <= second <= 12
    month_first = 1 <= first <= 12 and 1 <= second <= 31
    return day_first or month_first


def _valid_phone(match):
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    separated = re.search(r"\d[\s().\-/]+\d", text) is not None
    return digits >= _MIN_PHONE_DIGITS and (text.startswith(("+", "(")) or separated)


def _id_like(match):
    token = match.group(0)
    if sum(c.isalnum() for c in token) < _MIN_ID_CHARS or not any(c.isdigit() for c in token):
        return False
    if ALLOWED_CODE.fullmatch(token):
        return False
    parts = [p for p in re.split(r"[-._]", token) if p]
    return not all(p.isalpha() or ALLOWED_CODE.fullmatch(p) for p in parts)


# Order matters: the first rule that fires names the kind (an e-mail before its domain, a
# date before the phone-number shape it also has).
GENERIC_RULES = (
    _Rule("email", KIND_EMAIL, re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    _Rule("url", KIND_URL, re.compile(
        r"\b(?:https?|ftp)://\S+|\bwww\.\S+"
        r"|\b[\w-]+(?:\.[\w-]+)*\.(?:com|org|net|edu|gov|info|io|de|at|ch|uk|fr|nl|it|es|eu|us|ca)\b"
    )),
    _Rule("uid", KIND_UID, re.compile(r"\b\d+(?:\.\d+){3,}\b")),
    _Rule("dicom_name", KIND_PERSON_NAME, re.compile(r"\w\^|\^\w")),
    _Rule("iso_date", KIND_DATE, re.compile(r"\b(\d{4})[-./](\d{1,2})[-./](\d{1,2})\b"), _valid_ymd),
    _Rule("numeric_date", KIND_DATE, re.compile(r"\b(\d{1,2})[-./](\d{1,2})[-./](\d{4}|\d{2})\b"), _valid_dmy),
    _Rule("compact_date", KIND_DATE, re.compile(r"\b(1[89]\d{2}|2[01]\d{2})(\d{2})(\d{2})\b"), _valid_ymd),
    _Rule("month_day", KIND_DATE, re.compile(rf"\b{_MONTH}\.?\s+\d{{1,2}}{_ORDINAL}\b")),
    _Rule("day_month", KIND_DATE, re.compile(rf"\b\d{{1,2}}{_ORDINAL}\.?\s+(?:of\s+)?{_MONTH}\b")),
    _Rule("time", KIND_TIME, re.compile(
        r"\b(?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d)?\b|\b(?:[1-9]|1[0-2])(?::[0-5]\d)?\s?(?:a\.m\.|p\.m\.|am|pm)\b"
    )),
    _Rule("age", KIND_AGE, re.compile(
        rf"\b{_AGE}\s*-?\s*(?:years?|yrs?|y)\b(?:\.?\s*-?\s*old)?|\b{_AGE}\s*(?:yo|y/o|y\.o\.)"
        rf"|\bage[ds]?\s*(?:of\s*)?[:=]?\s*{_AGE}\b"
    )),
    _Rule("phone", KIND_PHONE, re.compile(r"(?<![\w.])[+(]?\d[\d\s().\-/]{5,}\d(?![\w.])"), _valid_phone),
    _Rule("year", KIND_DATE, re.compile(r"\b(?:19|20)\d{2}\b")),
    _Rule("long_number", KIND_LONG_NUMBER, re.compile(r"\b\d{6,}\b")),
    _Rule("id_code", KIND_ID_CODE, re.compile(r"\w+(?:[-.]\w+)*"), _id_like),
)


def find_phi(text, index=None):
    """Return the kind of personal data in a text, or None when none is found.

    Args:
        text (`str`): the caption (or trigger word, style phrase) to check.
        index (`IdentifierIndex`, *optional*): values harvested from the source file's
            original header; without it only the generic patterns run, which cannot catch a
            bare name such as "John Smith".

    Returns:
        `str | None`: a phrase such as ``"a date"`` or ``"a person's name from the file
        header"``; it never contains the matched value, so it is safe to show and log.
    """
    hit = _first_hit(text, index)
    if hit is None:
        return None
    kind, source = hit
    logger.info("caption rejected: %s (%s)", kind, source)
    return kind


def check_caption(text, index=None):
    """Raise if a text contains personal data; see :func:`find_phi`.

    Raises:
        CaptionPHIError: with the kind of data found (never the value), so the user can
            remove it.
    """
    kind = find_phi(text, index)
    if kind is not None:
        raise CaptionPHIError(kind)


def _first_hit(text, index):
    if not isinstance(text, str):
        raise TypeError(f"a caption must be text, got {type(text).__name__}")
    if index is not None:
        value = _longest_header_match(text, index)
        if value is not None:
            return value.kind, f"header:{value.keyword}"
    folded = fold_text(text)
    for rule in GENERIC_RULES:
        for match in rule.pattern.finditer(folded):
            if rule.accept is None or rule.accept(match):
                return rule.kind, f"pattern:{rule.name}"
    return None


def _longest_header_match(text, index):
    """The longest index value found in the text; the most complete evidence names the kind.

    E.g. the station name "CT01_OC0", not the private suite id "CT01" inside it.
    """
    views = (f" {normalize_text(text)} ", f" {compact_text(text)} ")
    best = None
    for value in index.values:
        if best is not None and len(value.normalized) <= len(best.normalized):
            continue
        needle = f" {value.normalized} "
        if any(needle in view for view in views):
            best = value
    return best
