"""What survives de-identification: the PS3.15 table and this product's allow-list.

Two rules decide each element, in this order:

1. An attribute listed in DICOM PS3.15 Annex E Table E.1-1 (2026c, Basic Application
   Level Confidentiality Profile) gets the table's action. Compound actions resolve to
   their most protective member that keeps the output valid: ``Z/D`` -> ``Z``; every
   ``X/...`` -> ``X`` (this product writes no object whose IOD needs those attributes).
2. Anything else survives only if it is on :data:`ALLOWED_KEYWORDS` (pixel module, value
   transforms, geometry, a few acquisition descriptors) and, for sequences, on
   :data:`ALLOWED_SEQUENCES`, whose items are cleaned by the same two rules. Private
   elements never survive. This allow-list, not a deny-list, is what stopped every leak
   measured on the public PHI-rich test files (DICOM_NOTES 2.8).
"""

import csv
import dataclasses
import functools
import importlib.resources

PROFILE_EDITION = "2026c"
ALLOW_LIST_VERSION = "1"
TABLE_RESOURCE = "ps3_15_e1_1.csv"

# (0012,0064) De-identification Method Code Sequence items, CID 7050.
CODE_BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CODE_CLEAN_PIXEL_DATA = ("113101", "Clean Pixel Data")
CODE_MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")

COMPOUND_ACTIONS = {"Z/D": "Z", "X/Z": "X", "X/D": "X", "X/Z/D": "X", "X/Z/U*": "X"}

ALLOWED_KEYWORDS = frozenset(
    {
        # SOP common / identification that carries no identity (UIDs are in the table: U)
        "SpecificCharacterSet", "SOPClassUID", "Modality", "ImageType", "InstanceNumber", "SeriesNumber",
        # image pixel module
        "PhotometricInterpretation", "Rows", "Columns", "SamplesPerPixel", "PlanarConfiguration",
        "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "NumberOfFrames", "PixelData",
        "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod",
        "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
        "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
        "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
        "SegmentedRedPaletteColorLookupTableData", "SegmentedGreenPaletteColorLookupTableData",
        "SegmentedBluePaletteColorLookupTableData",
        # value transforms (PS3.3 C.11): modality LUT, VOI, presentation, padding
        "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTType", "LUTDescriptor", "LUTData",
        "WindowCenter", "WindowWidth", "VOILUTFunction", "PresentationLUTShape",
        "PixelPaddingValue", "PixelPaddingRangeLimit",
        # geometry
        "PixelSpacing", "SliceThickness", "SpacingBetweenSlices", "ImageOrientationPatient",
        "ImagePositionPatient", "PatientPosition", "SliceLocation",
        # acquisition descriptors used for captions (BodyPartExamined only as a vocabulary.py term)
        "BodyPartExamined", "ImageLaterality", "Laterality", "ViewPosition", "KVP",
        # pixel provenance, set truthfully by this product
        "BurnedInAnnotation", "RecognizableVisualFeatures",
    }
)

ALLOWED_SEQUENCES = frozenset(
    {
        "ModalityLUTSequence", "VOILUTSequence",
        # Enhanced (multi-frame) objects: only the functional groups that pixels need
        "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
        "PixelMeasuresSequence", "PlanePositionSequence", "PlaneOrientationSequence",
        "PixelValueTransformationSequence", "FrameVOILUTSequence",
    }
)

# Storage SOP classes that have pixel data but are not pictures to train on.
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.5": "Surface Segmentation",
    "1.2.840.10008.5.1.4.1.1.30": "Parametric Map",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.1.3.10": "Media Storage Directory (DICOMDIR)",
}


@dataclasses.dataclass(frozen=True)
class ProfileTable:
    """Table E.1-1 as lookups: exact tags, and repeating groups (50xx, 60xx)."""

    exact: dict
    masked: tuple

    def action_for(self, tag):
        """The resolved action (``D``, ``Z``, ``X``, ``K``, ``C`` or ``U``) of a tag, or None."""
        action = self.exact.get(int(tag))
        if action is None:
            for value, mask, masked_action in self.masked:
                if int(tag) & mask == value:
                    action = masked_action
                    break
        return COMPOUND_ACTIONS.get(action, action)


@functools.lru_cache(maxsize=1)
def load_profile_table():
    """Read the bundled Table E.1-1 transcription (cached; it is immutable)."""
    text = importlib.resources.files(__package__).joinpath(TABLE_RESOURCE).read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    exact, masked = {}, []
    for row in rows:
        tag, action = row["tag"], row["action"]
        if "x" in tag:
            mask = int("".join("0" if c == "x" else "F" for c in tag), 16)
            masked.append((int(tag.replace("x", "0"), 16), mask, action))
        else:
            exact[int(tag, 16)] = action
    return ProfileTable(exact=exact, masked=tuple(masked))
