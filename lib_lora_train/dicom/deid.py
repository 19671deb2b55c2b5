"""De-identify one DICOM dataset in memory (PS3.15 Annex E Basic Profile + allow-list).

The output is a fresh dataset built element by element: nothing is copied unless the
profile table or the allow-list (see :mod:`.profile`) says so, recursively inside every
sequence. UIDs are replaced with keyed pseudonyms, the patient is represented only by
HMAC(site key, PatientID), and the dataset states truthfully what was done
((0012,0062) Patient Identity Removed, (0012,0063)/(0012,0064) De-identification Method).
The input dataset is never modified.
"""

import collections
import dataclasses
import datetime
import logging

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from .. import __version__
from ..errors import DicomError
from . import profile
from .vocabulary import BODY_PART_TERMS, fold_body_part

logger = logging.getLogger(__name__)

DATE_POLICIES = ("remove", "shift")
# Dates kept (shifted per patient) under the Modified Dates option; times are kept with them.
LONGITUDINAL_DATES = frozenset({"StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"})
LONGITUDINAL_DATETIMES = frozenset({"AcquisitionDateTime"})
LONGITUDINAL_TIMES = frozenset({"StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime"})

# Dummy values for action D, by VR: valid for the VR and carrying no information.
DUMMY_BY_VR = {
    "PN": "ANONYMIZED", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED", "ST": "ANONYMIZED",
    "UT": "ANONYMIZED", "UC": "ANONYMIZED", "CS": "ANONYMIZED", "AE": "ANONYMIZED", "UR": "",
    "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y", "IS": "0", "DS": "0",
    "US": 0, "SS": 0, "UL": 0, "SL": 0, "FL": 0.0, "FD": 0.0, "UV": 0, "SV": 0,
}


@dataclasses.dataclass(frozen=True)
class DeidResult:
    """A de-identified dataset and what was done to it (counts only, never values).

    Attributes:
        dataset (`pydicom.Dataset`): the new dataset, with file meta, ready to save.
        patient (`str`): keyed patient pseudonym.
        study (`str`): keyed study pseudonym.
        patient_id_missing (`bool`): the source had no PatientID; the pseudonym then
            derives from the study, and "forget this patient" cannot find this file by id.
        action_counts (`dict[str, int]`): elements per action (``X``, ``Z``, ``D``, ``U``,
            ``K``, ``allowed``, ``not_allowed``, ``private``, ``shifted``).
    """

    dataset: Dataset
    patient: str
    study: str
    patient_id_missing: bool
    action_counts: dict


class _Context:
    """Per-dataset state of one de-identification run."""

    def __init__(self, pseudonymizer, date_policy, patient):
        self.pseudonymizer = pseudonymizer
        self.date_policy = date_policy
        self.patient = patient
        self.table = profile.load_profile_table()
        self.date_shift = pseudonymizer.date_shift(patient) if date_policy == "shift" else None
        self.counts = collections.Counter()


def deidentify(source, pseudonymizer, *, date_policy="remove"):
    """Return a de-identified copy of ``source``.

    Args:
        source (`pydicom.Dataset`): the original dataset (as read; left unchanged).
        pseudonymizer (`Pseudonymizer`): keyed pseudonyms of this site.
        date_policy (`str`): ``"remove"`` (Basic Profile) or ``"shift"`` (Retain
            Longitudinal Temporal Information with Modified Dates).

    Returns:
        `DeidResult`

    Raises:
        DicomError: the dataset has a malformed element that the profile must keep.
    """
    if date_policy not in DATE_POLICIES:
        raise ValueError(f"date_policy must be one of {DATE_POLICIES}, got {date_policy!r}")
    patient_id = str(source.get("PatientID", "") or "").strip()
    study_uid = str(source.get("StudyInstanceUID", "") or "").strip()
    patient = pseudonymizer.patient(patient_id) if patient_id else pseudonymizer.patient("study:" + study_uid)
    ctx = _Context(pseudonymizer, date_policy, patient)
    cleaned = _clean_dataset(source, ctx)
    cleaned.PatientID = patient
    _record_method(cleaned, date_policy)
    cleaned.file_meta = _file_meta(source, cleaned)
    return DeidResult(
        dataset=cleaned,
        patient=patient,
        study=pseudonymizer.study(study_uid) if study_uid else pseudonymizer.study("patient:" + patient),
        patient_id_missing=not patient_id,
        action_counts=dict(ctx.counts),
    )


def _clean_dataset(source, ctx):
    out = Dataset()
    for tag in list(source.keys()):
        element = _clean_element(source, tag, ctx)
        if element is not None:
            out.add(element)
    return out


def _clean_element(source, tag, ctx):
    if tag.is_private:
        ctx.counts["private"] += 1
        return None
    if tag.element == 0 or tag.group in (0x0000, 0x0002):  # group lengths, command set, misplaced meta
        return None
    keyword = keyword_for_tag(tag)
    if ctx.date_policy == "shift" and keyword in LONGITUDINAL_DATES | LONGITUDINAL_DATETIMES | LONGITUDINAL_TIMES:
        return _shifted(_converted(source, tag), keyword, ctx)
    action = ctx.table.action_for(tag)
    if action is not None:
        ctx.counts[action] += 1
        return None if action in ("X", "C") else _apply_action(_converted(source, tag), action, ctx)
    if keyword in profile.ALLOWED_SEQUENCES:
        ctx.counts["allowed"] += 1
        return _cleaned_sequence(_converted(source, tag), ctx)
    if keyword in profile.ALLOWED_KEYWORDS:
        element = _converted(source, tag)
        if element.VR == "SQ" or (keyword == "BodyPartExamined" and not _is_body_part_term(element.value)):
            ctx.counts["not_allowed"] += 1
            return None
        ctx.counts["allowed"] += 1
        return DataElement(element.tag, element.VR, element.value)
    ctx.counts["not_allowed"] += 1
    return None


def _converted(source, tag):
    """The element with its value parsed; parse errors become a clear per-file error."""
    try:
        return source[tag]
    except Exception as exc:  # pydicom raises many types for malformed values
        raise DicomError(
            f"element ({tag.group:04X},{tag.element:04X}) {keyword_for_tag(tag) or 'private'} "
            f"is malformed ({type(exc).__name__}); the file cannot be de-identified safely",
            code="malformed",
        ) from None


def _apply_action(element, action, ctx):
    if element.VR == "SQ":
        if action == "Z":
            return DataElement(element.tag, "SQ", Sequence())
        if action == "D":  # a non-empty sequence that says nothing: one empty item
            return DataElement(element.tag, "SQ", Sequence([Dataset()]))
        return _cleaned_sequence(element, ctx)
    if action == "Z":
        return DataElement(element.tag, element.VR, None)
    if action == "U":
        return DataElement(element.tag, element.VR, _replaced_uids(element.value, ctx))
    if action == "D":
        vr = element.VR if element.VR in DUMMY_BY_VR else (dictionary_VR(element.tag).split(" ")[0])
        if element.VR == "UI":
            return DataElement(element.tag, "UI", _replaced_uids(element.value, ctx))
        return DataElement(element.tag, vr, DUMMY_BY_VR.get(vr))
    return DataElement(element.tag, element.VR, element.value)  # K


def _replaced_uids(value, ctx):
    if value is None or value == "":
        return value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [ctx.pseudonymizer.uid(v) for v in value]
    return ctx.pseudonymizer.uid(value)


def _cleaned_sequence(element, ctx):
    items = [_clean_dataset(item, ctx) for item in element.value or []]
    return DataElement(element.tag, "SQ", Sequence(items))


def _shifted(element, keyword, ctx):
    ctx.counts["shifted"] += 1
    value = element.value
    if not value or keyword in LONGITUDINAL_TIMES:
        return DataElement(element.tag, element.VR, value)
    text = str(value)
    try:
        date = datetime.datetime.strptime(text[:8], "%Y%m%d") + ctx.date_shift
    except ValueError:
        ctx.counts["shifted"] -= 1
        return DataElement(element.tag, element.VR, None)  # unparseable: empty it (Z)
    return DataElement(element.tag, element.VR, date.strftime("%Y%m%d") + text[8:])


def _is_body_part_term(value):
    return isinstance(value, str) and fold_body_part(value) in BODY_PART_TERMS


def _record_method(ds, date_policy):
    """Write (0012,0062)-(0012,0064) and (0028,0303) truthfully (PS3.3 C.7.1.1, C.12.1)."""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [
        f"DICOM PS3.15 E.1-1 Basic Profile ({profile.PROFILE_EDITION})",
        f"allow-list v{profile.ALLOW_LIST_VERSION}; dates {'shifted' if date_policy == 'shift' else 'removed'}",
        f"medical-lora {__version__}",
    ]
    codes = [profile.CODE_BASIC_PROFILE]
    if date_policy == "shift":
        codes.append(profile.CODE_MODIFIED_DATES)
    ds.DeidentificationMethodCodeSequence = Sequence([_code_item(*code) for code in codes])
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if date_policy == "shift" else "REMOVED"


def _code_item(value, meaning):
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def mark_pixels_clean(ds):
    """Record that a pixel pass ran (OCR found no text, or regions were blanked).

    Only then may (0028,0301) Burned In Annotation say NO and the Clean Pixel Data code be
    claimed; claiming it without a pixel pass would be false provenance.
    """
    ds.BurnedInAnnotation = "NO"
    ds.DeidentificationMethodCodeSequence.append(_code_item(*profile.CODE_CLEAN_PIXEL_DATA))


def _file_meta(source, cleaned):
    meta = FileMetaDataset()
    original_meta = getattr(source, "file_meta", None)
    syntax = getattr(original_meta, "TransferSyntaxUID", None) if original_meta is not None else None
    meta.TransferSyntaxUID = syntax or ImplicitVRLittleEndian
    if meta.TransferSyntaxUID.is_private or not meta.TransferSyntaxUID.is_transfer_syntax:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = cleaned.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPInstanceUID = cleaned.get("SOPInstanceUID", "")
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta
