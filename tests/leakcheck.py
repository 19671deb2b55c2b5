"""Independent needle harvesting for leak tests (deliberately not the product's harvester).

A needle is an identifying string from an original file: person names and their parts,
identifiers, non-class UIDs, dates, institution/station/device values and free text,
from every nesting level and from private elements. Tests assert that no needle appears
in any output byte.
"""

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom._uid_dict import UID_dictionary

TEXT_VRS = {"LO", "SH", "ST", "LT", "UT", "UC", "PN", "DA", "DT", "TM", "UI", "CS", "AE", "UN", "OB"}
CLASS_UID_KEYWORDS = {"SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
                      "ImplementationClassUID", "CodingSchemeUID", "ContextGroupExtensionCreatorUID",
                      "RelatedGeneralSOPClassUID", "ReferencedSOPClassUIDInFile", "SOPClassesInStudy",
                      "AffectedSOPClassUID"}
IDENTIFYING_KEYWORD_PARTS = ("Name", "ID", "Date", "Institution", "Station", "Serial", "Description", "Comment",
                             "History", "Address", "Telephone", "Accession", "Protocol", "Operator", "Physician")
NOT_IDENTIFYING = {"SeriesNumber", "InstanceNumber", "AcquisitionNumber", "CodingSchemeDesignator",
                   "CodeMeaning", "CodeValue", "PatientSex", "ModalityLUTType", "PixelPaddingValue"}
TECHNICAL_KEYWORDS = {"ImageType", "FrameType", "BodyPartExamined", "Modality"}
GENERIC = {"anonymous", "anonymized", "unknown", "none", "test", "normal", "other", "default", "study", "series",
           "image", "patient", "primary", "original", "derived", "secondary", "axial", "chest", "head", "ct", "mr"}


def harvest_needles(ds, min_length=5):
    """Set of identifying strings in ``ds`` (recursively, private elements included)."""
    needles = set()

    def visit(dataset):
        for elem in dataset.iterall():
            for text in _values(elem):
                text = text.strip().strip("\x00").strip()
                if len(text) >= min_length and text.lower() not in GENERIC and text not in UID_dictionary:
                    needles.add(text)

    visit(ds)
    if getattr(ds, "file_meta", None) is not None:
        visit(ds.file_meta)
    return {n for n in needles if n.casefold() not in technical_terms(ds)}


def technical_terms(ds):
    """Values of kept technical attributes (a description may repeat them: not a leak)."""
    terms = set()
    for elem in ds.iterall():
        if elem.keyword in TECHNICAL_KEYWORDS and elem.value is not None:
            values = elem.value if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]
            terms.update(str(v).casefold() for v in values)
    return terms


def _values(elem):
    keyword = keyword_for_tag(elem.tag) or ""
    if elem.VR == "SQ" or keyword in NOT_IDENTIFYING or keyword in CLASS_UID_KEYWORDS:
        return []
    private = elem.tag.is_private
    if not private and elem.VR not in ("PN", "DA", "DT", "UI") and not any(p in keyword for p in IDENTIFYING_KEYWORD_PARTS):
        return []
    if elem.VR not in TEXT_VRS:
        return []
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode("latin-1", errors="ignore")
        return [v for v in value.replace("\x00", "\\").split("\\") if v.isprintable()]
    values = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
    out = []
    for item in values:
        text = str(item) if item is not None else ""
        out.append(text)
        if elem.VR == "PN":
            out.extend(part for part in text.replace("^", " ").split() if len(part) >= 5)
    return out


def find_needles(data, needles):
    """The needles present in ``data`` (bytes), case-insensitive, UTF-8 or UTF-16."""
    lowered = data.lower()
    return sorted(n for n in needles if n.lower().encode() in lowered or n.lower().encode("utf-16-le") in lowered)
