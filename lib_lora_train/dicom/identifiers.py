"""Harvest every identifying value of an original DICOM header into a caption-check index.

The index is built from the ORIGINAL (not yet de-identified) dataset of one source file and
is used to reject any caption that repeats one of its values (DICOM_NOTES.md section 5.4).
It walks nested sequences, file meta and text-valued private elements (and ``UN`` elements
that decode as ASCII text), because that is where de-identifiers leak (PS3.15 Annex E,
Table E.1-1; DICOM_NOTES.md section 1.4).

Index values are stored normalised (see :func:`normalize_text`) and matched on token
boundaries. Values that identify no one are left out of the index, on purpose: strings
shorter than 3 characters, placeholders such as ``ANONYMOUS`` or ``UNKNOWN``, generic
institution words, and free-text descriptions of fewer than 3 words (``THORAX``,
``US KIDNEY``), which would otherwise reject clean captions. Free text is indexed as whole
phrases only, never as single words ("acute" occurs in real history fields).
"""

import contextlib
import dataclasses
import datetime
import logging
import re
import struct
import unicodedata

from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue

logger = logging.getLogger(__name__)

KIND_NAME = "a person's name from the file header"
KIND_ID = "an identifier from the file header"
KIND_DATE = "a date from the file header"
KIND_INSTITUTION = "an institution from the file header"
KIND_ADDRESS = "an address from the file header"
KIND_UID = "a UID from the file header"
KIND_DEVICE = "a device identifier from the file header"
KIND_FREE_TEXT = "a free-text description from the file header"

# Month names used for date renderings here and for the generic date patterns of the
# caption check: English full and short forms, German full and short forms (NFKD-folded).
MONTH_NAMES = {
    1: ("january", "jan", "januar", "janner"), 2: ("february", "feb", "februar"),
    3: ("march", "mar", "marz", "maerz", "mrz"), 4: ("april", "apr"),
    5: ("may", "mai"), 6: ("june", "jun", "juni"),
    7: ("july", "jul", "juli"), 8: ("august", "aug"),
    9: ("september", "sep", "sept"), 10: ("october", "oct", "oktober", "okt"),
    11: ("november", "nov"), 12: ("december", "dec", "dezember", "dez"),
}

ID_KEYWORDS = frozenset({
    "PatientID", "OtherPatientIDs", "IssuerOfPatientID", "AccessionNumber", "StudyID", "RequestedProcedureID",
    "ScheduledProcedureStepID", "PerformedProcedureStepID", "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest", "AdmissionID", "ServiceEpisodeID", "MedicalRecordLocator",
    "InsurancePlanIdentification", "PatientTelephoneNumbers", "MilitaryRank", "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID", "ClinicalTrialProtocolID", "ClinicalTrialSiteID", "ContainerIdentifier",
    "SpecimenIdentifier",
})
# Keywords ending in ID/Number that are technical counters, not identifiers (PS3.3 C.7.3.1, C.7.6.1).
TECHNICAL_NUMBER_KEYWORDS = frozenset({
    "SeriesNumber", "InstanceNumber", "AcquisitionNumber", "StackID", "InStackPositionNumber",
    "TemporalPositionIdentifier", "EchoNumbers", "ReferencedFrameNumber", "InConcatenationNumber",
    "TypeOfPatientID", "StudyStatusID", "StudyPriorityID", "ConcatenationFrameOffsetNumber",
})
DEVICE_KEYWORDS = frozenset({
    "StationName", "DeviceSerialNumber", "DeviceID", "DeviceUID", "GantryID", "DetectorID", "CassetteID", "PlateID",
    "SourceApplicationEntityTitle", "StationAETitle", "NetworkID",
})
INSTITUTION_KEYWORDS = frozenset({
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "RequestingService",
    "ResponsibleOrganization",
})
ADDRESS_KEYWORDS = frozenset({
    "PatientAddress", "RegionOfResidence", "CountryOfResidence", "CurrentPatientLocation",
    "PatientInstitutionResidence", "AssignedLocation",
})
FREE_TEXT_KEYWORDS = frozenset({
    "StudyDescription", "SeriesDescription", "ImageComments", "AdditionalPatientHistory", "PatientComments",
    "RequestedProcedureDescription", "PerformedProcedureStepDescription", "ScheduledProcedureStepDescription",
    "ProtocolName", "ReasonForStudy", "StudyComments", "ReasonForTheRequestedProcedure", "DerivationDescription",
    "FrameComments", "BranchOfService", "CommentsOnThePerformedProcedureStep", "AdmittingDiagnosesDescription",
    "Occupation", "MedicalAlerts", "Allergies", "PatientState", "TextValue", "InterpretationText",
    "ImagingServiceRequestComments", "RequestedProcedureComments", "VisitComments",
})
# Words of institution names and addresses that identify no one on their own.
INSTITUTION_STOP_WORDS = frozenset({
    "hospital", "hospitals", "clinic", "clinics", "clinical", "center", "centre", "medical", "medicine",
    "university", "department", "radiology", "radiological", "imaging", "institute", "general", "health",
    "healthcare", "care", "services", "service", "systems", "system", "the", "and", "for", "our", "saint",
    "default", "diagnostic", "diagnostics", "regional", "community", "memorial", "children", "childrens", "county",
    "city", "national", "private", "practice", "group", "unit", "ward", "campus", "school", "college", "foundation",
    "trust", "nhs", "inc", "ltd", "gmbh", "llc", "corp", "company", "klinik", "klinikum", "kliniken", "krankenhaus",
    "universitat", "praxis", "abteilung", "radiologie", "zentrum", "hopital", "ospedale", "street", "road",
    "avenue", "lane", "none", "unknown", "state", "north", "south", "east", "west", "new", "upper", "lower",
    "central", "pet", "vet", "veterinary", "animal", "heart", "cancer", "eye", "women", "womens", "orthopedic",
    "orthopaedic", "cardiology", "oncology", "neurology", "pediatric", "paediatric", "rehabilitation", "mri",
    "scan", "scanning", "xray", "ultrasound", "nuclear",
})
# Placeholders that de-identifiers and test data use; they identify no one.
GENERIC_VALUES = frozenset({
    "anonymous", "anonymized", "anonymised", "anon", "none", "unknown", "null", "nil", "test", "patient", "removed",
    "redacted", "deidentified", "empty", "unnamed", "default", "de identified", "no name", "not applicable",
})

TEXT_VRS = frozenset({"AE", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "UC", "UI", "UR", "UT"})
_ID_VRS = frozenset({"AE", "LO", "LT", "SH", "ST", "UC", "UT"})
_MIN_LEN = 3
_MIN_PHRASE_WORDS = 3
_MIN_PHRASE_CHARS = 10
_MIN_ADDRESS_DIGITS = 4
_MAX_UN_TEXT = 1024

_NON_ALNUM = re.compile(r"[\W_]+")
_SEPARATORS = re.compile(r"[^\w\s]|_")
_DATE_IN_VALUE = re.compile(r"(?<!\d)(\d{4})[.-]?(0[1-9]|1[0-2])[.-]?(0[1-9]|[12]\d|3[01])")
_DATE_LIKE_TEXT = re.compile(r"(?:19|20)\d{6}(?:\d{0,6}(?:\.\d{1,6})?)?(?:[+-]\d{4})?")
_UID_LIKE = re.compile(r"\d+(?:\.\d+){2,}")
_WORD = re.compile(r"[^\W\d_]{3,}")
_STANDARD_UID_ROOT = "1.2.840.10008."
_UNTYPED = "untyped"  # private or UN text: its kind is guessed from the value


def fold_text(text):
    """NFKD-decompose, strip accents and casefold; punctuation is kept."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def normalize_text(text):
    """Fold text for matching: :func:`fold_text`, then every run of non-alphanumerics -> one space.

    Args:
        text (`str`): any text.

    Returns:
        `str`: tokens separated by single spaces, e.g. ``"Müller^Jörg"`` -> ``"muller jorg"``.
    """
    return " ".join(_NON_ALNUM.sub(" ", fold_text(text)).split())


def compact_text(text):
    """Like :func:`normalize_text`, but separators between characters are removed, not spaced.

    Catches identifiers written without or with other separators (``11-05-25-142825`` ->
    ``110525142825``).
    """
    return " ".join(_SEPARATORS.sub("", fold_text(text)).split())


@dataclasses.dataclass(frozen=True)
class IdentifyingValue:
    """One normalised value to look for in captions.

    Attributes:
        kind (`str`): human phrase for the kind of data, safe to show and log.
        keyword (`str`): the element it came from (``"PatientID"``, ``"private"``), safe to log.
        normalized (`str`): the value as :func:`normalize_text` folds it; never log it.
    """

    kind: str
    keyword: str
    normalized: str

    def __repr__(self):
        return f"IdentifyingValue(kind={self.kind!r}, keyword={self.keyword!r})"


@dataclasses.dataclass(frozen=True)
class IdentifierIndex:
    """The identifying values of one or more source files (its repr never shows a value).

    Attributes:
        values (`tuple[IdentifyingValue, ...]`): normalised caption-check values, de-duplicated.
        raw_strings (`tuple[str, ...]`): the original strings they were harvested from.
    """

    values: tuple[IdentifyingValue, ...] = ()
    raw_strings: tuple[str, ...] = ()

    def __repr__(self):
        return f"IdentifierIndex({len(self.values)} values)"

    def merged(self, other):
        """Return an index holding the values of both (for a batch of one patient's files)."""
        return _build_index(self.values + other.values, self.raw_strings + other.raw_strings)

    def all_raw_strings(self):
        """Every original string harvested, for leak tests that grep outputs for them.

        Returns:
            `list[str]`: stripped originals of at least 3 characters, placeholders and
            institution values made only of generic words left out (they occur by chance).
        """
        return list(self.raw_strings)


def harvest_identifiers(ds):
    """Collect the identifying values of an original dataset, nested and private ones included.

    Args:
        ds (`pydicom.Dataset`): the file as read, before de-identification; its ``file_meta``
            is walked too.

    Returns:
        `IdentifierIndex`: the index for :func:`lib_lora_train.dataset.phi_check.find_phi`.
    """
    values, raws = [], []
    for dataset in (getattr(ds, "file_meta", None), ds):
        if dataset is not None:
            _walk(dataset, values, raws)
    index = _build_index(tuple(values), tuple(raws))
    logger.debug("harvested %d identifying values", len(index.values))
    return index


def _build_index(values, raws):
    first = {}
    for value in values:
        first.setdefault(value.normalized, value)
    return IdentifierIndex(tuple(first.values()), tuple(dict.fromkeys(raws)))


def _walk(dataset, values, raws):
    for tag in list(dataset.keys()):
        element = _element(dataset, tag)
        if element is None:
            continue
        if element.VR == "SQ":
            for item in element.value or ():
                _walk(item, values, raws)
            continue
        kind = _classify(element)
        if kind is None:
            continue
        keyword = element.keyword or "private"
        for text in _texts(element):
            item_kind = _classify_untyped(text) if kind == _UNTYPED else kind
            values.extend(_index_text(item_kind, keyword, text))
            if _raw_worth_keeping(text, item_kind):
                raws.append(text)


def _index_text(kind, keyword, text):
    """Index values of one text; free text also yields the dates written inside it."""
    forms = [(kind, form) for form in _FORMS[kind](text)]
    if kind == KIND_FREE_TEXT:
        forms += [(KIND_DATE, form) for date in _parse_dates(text) for form in _date_renderings(date)]
    return [IdentifyingValue(k, keyword, form) for k, form in forms if _indexable(form)]


def _element(dataset, tag):
    try:
        return dataset[tag]
    except (ValueError, TypeError, KeyError, NotImplementedError, OverflowError, struct.error):
        # a malformed value must not hide the rest of the header: read its bytes as UN
        raw = dataset.get_item(tag)
        if raw is None or not isinstance(raw.value, (bytes, bytearray)):
            return None
        return DataElement(tag, "UN", bytes(raw.value))


def _classify(element):
    """Return the kind of an element, ``_UNTYPED`` for private/UN text, or None to skip it."""
    vr, keyword, tag = element.VR, element.keyword, element.tag
    if tag.is_private_creator:
        return None
    if vr == "UN":
        return _UNTYPED
    if vr not in TEXT_VRS:
        return None
    if vr in ("PN", "DA", "DT"):
        return KIND_NAME if vr == "PN" else KIND_DATE
    if vr == "UI":
        return None if keyword.endswith(("ClassUID", "TransferSyntaxUID")) else KIND_UID
    if tag.is_private:
        return KIND_DEVICE if vr == "AE" else _UNTYPED
    return _classify_public(keyword, vr)


def _classify_public(keyword, vr):
    if keyword in DEVICE_KEYWORDS or vr == "AE":
        return KIND_DEVICE
    if keyword in INSTITUTION_KEYWORDS:
        return KIND_INSTITUTION
    if keyword in ADDRESS_KEYWORDS or keyword.endswith("Address"):
        return KIND_ADDRESS
    if keyword in TECHNICAL_NUMBER_KEYWORDS:
        return None
    id_suffix = keyword.endswith(("ID", "IDs", "Number", "Numbers", "Identifier"))
    if keyword in ID_KEYWORDS or "Telephone" in keyword or "Telecom" in keyword or (vr in _ID_VRS and id_suffix):
        return KIND_ID
    if keyword in FREE_TEXT_KEYWORDS or keyword.endswith(("Description", "Comments")):
        return KIND_FREE_TEXT
    return None


def _classify_untyped(text):
    """Guess the kind of a private or UN text value, whose meaning the standard does not give."""
    if _UID_LIKE.fullmatch(text):
        return KIND_UID
    if _DATE_LIKE_TEXT.fullmatch(text) and _parse_dates(text):
        return KIND_DATE
    if "^" in text and _WORD.search(text):
        return KIND_NAME
    if len(text.split()) == 1 and any(c.isdigit() for c in text) and sum(c.isalnum() for c in text) >= 4:
        return KIND_ID
    return KIND_FREE_TEXT


def _texts(element):
    """The element's values as stripped strings (multi-values split), empty ones dropped."""
    value = _decode_un(element.value) if element.VR == "UN" else element.value
    items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    texts = [bytes(i).decode("latin-1") if isinstance(i, (bytes, bytearray)) else str(i) for i in items if i is not None]
    return [t.strip(" \x00") for t in texts if t.strip(" \x00")]


def _decode_un(value):
    """Text of an ``UN`` value if it is printable ASCII of reasonable length, else nothing."""
    if not isinstance(value, (bytes, bytearray)) or len(value) > _MAX_UN_TEXT:
        return []
    text = bytes(value).rstrip(b"\x00 ")
    if len(text) < _MIN_LEN or not all(32 <= b < 127 or b in (9, 10, 13) for b in text):
        return []
    return text.decode("ascii").split("\\")


def _indexable(form):
    return len(form.replace(" ", "")) >= _MIN_LEN and form not in GENERIC_VALUES


def _raw_worth_keeping(text, kind):
    normalized = normalize_text(text)
    if len(text) < _MIN_LEN or not _indexable(normalized):
        return False
    if kind == KIND_UID and text.startswith(_STANDARD_UID_ROOT):
        return False
    if kind in (KIND_INSTITUTION, KIND_ADDRESS):
        return any(token not in INSTITUTION_STOP_WORDS for token in normalized.split())
    return True


def _name_forms(text):
    """Full name in both orders plus every component and word of at least 3 characters."""
    groups = [g for g in text.split("=") if g.strip("^ ")]
    forms = []
    for group in groups:
        components = [normalize_text(c) for c in group.split("^")]
        components = [c for c in components if c]
        forms.append(" ".join(components))
        if len(components) >= 2:
            forms.append(" ".join(components[1:] + components[:1]))
            forms.append(f"{components[1]} {components[0]}")
        for component in components:
            forms.append(component)
            forms.extend(component.split())
    return forms


def _id_forms(text):
    """The ID as written, without separators, and without leading zeros."""
    normalized, compact = normalize_text(text), compact_text(text).replace(" ", "")
    forms = [normalized, compact]
    if compact.isdigit() and len(compact.lstrip("0")) >= 5:
        forms.append(compact.lstrip("0"))
    return forms


def _uid_forms(text):
    if text.startswith(_STANDARD_UID_ROOT):
        return []
    return [normalize_text(text), compact_text(text)]


def _place_forms(text):
    """Whole institution/address phrase plus its distinctive words and long numbers (postcodes)."""
    normalized = normalize_text(text)
    tokens = [t for t in normalized.split() if t not in INSTITUTION_STOP_WORDS]
    return [normalized] + [t for t in tokens if not t.isdigit() or len(t) >= _MIN_ADDRESS_DIGITS]


def _phrase_forms(text):
    """Free text as one whole phrase, only when long enough to identify anything."""
    normalized = normalize_text(text)
    words = normalized.split()
    if len(words) < _MIN_PHRASE_WORDS or len(normalized) < _MIN_PHRASE_CHARS or not _WORD.search(normalized):
        return []
    return [normalized]


def _date_forms(text):
    """The raw value plus every rendering of each date in it (numeric and month-name forms)."""
    forms = [normalize_text(text), compact_text(text)]
    for date in _parse_dates(text):
        forms.extend(_date_renderings(date))
    return forms


def _parse_dates(text):
    dates = []
    for year, month, day in _DATE_IN_VALUE.findall(text):
        with contextlib.suppress(ValueError):  # e.g. 20230231
            dates.append(datetime.date(int(year), int(month), int(day)))
    return dates


def _date_renderings(date):
    """Numeric forms (Y-M-D, D.M.Y, M/D/Y; padded or not; 4- or 2-digit years) and month-name forms."""
    y4, y2, mm, dd = f"{date.year:04d}", f"{date.year % 100:02d}", f"{date.month:02d}", f"{date.day:02d}"
    forms = []
    for y in (y4, y2):
        for m, d in ((mm, dd), (str(date.month), str(date.day))):
            forms += [f"{y} {m} {d}", f"{d} {m} {y}", f"{m} {d} {y}"]
        forms += [f"{y}{mm}{dd}", f"{dd}{mm}{y}", f"{mm}{dd}{y}"]  # padded only: "1500" is no date
    for name in MONTH_NAMES[date.month]:
        forms.append(f"{name} {y4}")
        for d in (str(date.day), dd, _ordinal(date.day)):
            forms += [f"{d} {name} {y4}", f"{name} {d} {y4}", f"{d} {name} {y2}", f"{name} {d} {y2}"]
            forms += [f"{d} {name}", f"{name} {d}", f"{d} of {name} {y4}"]
    return forms


def _ordinal(day):
    suffix = "th" if day in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


_FORMS = {
    KIND_NAME: _name_forms, KIND_ID: _id_forms, KIND_DEVICE: _id_forms, KIND_DATE: _date_forms, KIND_UID: _uid_forms,
    KIND_INSTITUTION: _place_forms, KIND_ADDRESS: _place_forms, KIND_FREE_TEXT: _phrase_forms,
}
