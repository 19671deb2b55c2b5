"""Synthetic CT slices with planted fake identifiers, for the demo, tests and benchmarks.

Each phantom is a real, valid CT Image Storage object (a body ellipse with lungs, spine
and a padded field of view) whose header carries invented but realistic personal data in
more than 30 attributes: top-level, nested in sequences, in a private block, in an
overlay and in the UIDs. ``planted_values`` lists every such string so a test can prove
that none of them reaches any output byte.
"""

import dataclasses

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

FAMILY_NAMES = ("QUILLFEATHER", "MARROWDALE", "TUMBLEWICK", "BRACKENRIDGE", "OSGOODWYN", "FERNSWALLOW")
GIVEN_NAMES = ("ZEPHYRINE", "BARTHOLO", "ISOLDINE", "CASPERIAN", "MAREIKE", "THADDEUS")
UID_ROOT = "1.2.826.0.1.3680043.9.7777"
PADDING_STORED = -2000  # stored value outside the scanner's field of view (-3024 HU)
INTERCEPT = -1024


@dataclasses.dataclass(frozen=True)
class PhantomPatient:
    """Invented identity of one phantom patient (deterministic from its index)."""

    index: int

    @property
    def family(self):
        return FAMILY_NAMES[self.index % len(FAMILY_NAMES)] + ("" if self.index < len(FAMILY_NAMES) else str(self.index))

    @property
    def given(self):
        return GIVEN_NAMES[self.index % len(GIVEN_NAMES)]

    @property
    def patient_id(self):
        return f"MRN{7345001 + self.index * 7919:08d}"

    @property
    def birth_date(self):
        return f"19{47 + self.index % 50:02d}0{1 + self.index % 9}1{self.index % 9}"

    @property
    def study_date(self):
        return f"2024{1 + self.index % 9:02d}2{self.index % 9}"


def planted_values(patient):
    """Every identifying string planted in the phantoms of ``patient``."""
    i = patient.index
    return [
        patient.family, patient.given, f"{patient.family}^{patient.given}", patient.patient_id,
        patient.birth_date, patient.study_date, f"ACC{9100200 + i}", f"STUDY{4400 + i}",
        f"{77 + i} Wistful Lane, Larkhaven", f"+44 20 7946 0{100 + i:03d}", f"OLDID{5550100 + i}",
        f"HOLLOWBROOK^{patient.given}", f"St Wendeline Infirmary {i}", f"Cinderford Row {i}, Larkhaven",
        f"Thoracic Unit {i} Larkhaven", "WHITLOCK^EMERSON", "PEMBERLY^OCTAVIA", "DUNMORE^RAFFERTY",
        f"CTSTATION{i:03d}", f"SN-{88123400 + i}", f"Lung screening for {patient.family}",
        f"Chest {patient.given} followup", f"PROTO-{patient.family}", f"Seen by WHITLOCK on {patient.study_date}",
        f"History: fall at Larkhaven quarry {i}", f"Prefers morning visits {patient.given}",
        f"REQPROC{6600 + i}", f"Requested by PEMBERLY for {patient.family}", f"{UID_ROOT}.{i}",
        f"PRIVATE-{patient.patient_id}", f"Overlay note {patient.family}", f"SCHED{3300 + i}",
    ]


def make_ct_slice(patient, slice_index, n_slices=8, size=256, seed=0):
    """Build one phantom CT slice of ``patient`` as a pydicom Dataset (with file meta).

    Args:
        patient (`PhantomPatient`): whose identifiers to plant.
        slice_index (`int`): position in the series, shapes the anatomy.
        n_slices (`int`): series length (the lungs are largest mid-series).
        size (`int`): rows = columns.
        seed (`int`): noise seed, so the same call gives the same bytes.
    """
    ds = Dataset()
    _add_identity(ds, patient, slice_index)
    _add_image(ds, _ct_pixels(patient, slice_index, n_slices, size, seed))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


def _add_identity(ds, patient, slice_index):
    p, i, names = patient, patient.index, planted_values(patient)
    root = f"{UID_ROOT}.{i}"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{root}.3.{slice_index + 1}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = f"{root}.1", f"{root}.2", f"{root}.4"
    ds.Modality, ds.BodyPartExamined, ds.ImageType = "CT", "CHEST", ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = names[2], p.patient_id, p.birth_date
    ds.PatientSex, ds.PatientAge = "F" if i % 2 else "M", f"{2024 - int(p.birth_date[:4]):03d}Y"
    ds.PatientAddress, ds.PatientTelephoneNumbers = names[8], names[9]
    ds.OtherPatientIDs, ds.OtherPatientNames, ds.IssuerOfPatientID = names[10], names[11], "LARKHAVEN-MPI"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = p.study_date
    ds.StudyTime, ds.AcquisitionDateTime = "093512", p.study_date + "093512"
    ds.AccessionNumber, ds.StudyID = names[6], names[7]
    ds.InstitutionName, ds.InstitutionAddress, ds.InstitutionalDepartmentName = names[12], names[13], names[14]
    ds.ReferringPhysicianName, ds.PerformingPhysicianName, ds.OperatorsName = names[15], names[16], names[17]
    ds.StationName, ds.DeviceSerialNumber = names[18], names[19]
    ds.StudyDescription, ds.SeriesDescription, ds.ProtocolName = names[20], names[21], names[22]
    ds.ImageComments, ds.AdditionalPatientHistory, ds.PatientComments = names[23], names[24], names[25]
    ds.SeriesNumber, ds.InstanceNumber = 2, slice_index + 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-160, -160, -100 + 5 * slice_index]
    ds.SliceThickness, ds.PixelSpacing = 5, [1.25, 1.25]
    request = Dataset()
    request.RequestedProcedureID, request.AccessionNumber = names[26], names[6]
    request.RequestedProcedureDescription, request.ScheduledProcedureStepID = names[27], names[31]
    ds.RequestAttributesSequence = Sequence([request])
    other_id = Dataset()
    other_id.PatientID, other_id.IssuerOfPatientID = names[10], "LARKHAVEN-MPI"
    ds.OtherPatientIDsSequence = Sequence([other_id])
    referenced = Dataset()
    referenced.ReferencedSOPClassUID, referenced.ReferencedSOPInstanceUID = CTImageStorage, f"{root}.9.1"
    ds.ReferencedImageSequence = Sequence([referenced])
    block = ds.private_block(0x0099, "LARKHAVEN PHI", create=True)
    block.add_new(0x10, "LO", names[29])
    block.add_new(0x11, "PN", names[2])
    block.add_new(0x12, "DA", p.birth_date)
    ds.add_new(0x60000022, "LO", names[30])  # (6000,0022) Overlay Description
    ds.add_new(0x60004000, "LT", names[30])  # (6000,4000) Overlay Comments


def _ct_pixels(patient, slice_index, n_slices, size, seed):
    """Hounsfield-like anatomy: air, body (soft tissue), two lungs, spine, padded corners."""
    rng = np.random.default_rng(seed * 100003 + patient.index * 101 + slice_index)
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    hu = np.full((size, size), -1000.0)
    hu[(x / 0.85) ** 2 + (y / 0.62) ** 2 <= 1] = 40.0
    mid = 1.0 - abs(slice_index - (n_slices - 1) / 2) / max(n_slices, 1)
    for side in (-1, 1):
        hu[((x - side * 0.38) / (0.26 * mid + 0.05)) ** 2 + ((y + 0.05) / (0.42 * mid + 0.05)) ** 2 <= 1] = -850.0
    hu[(x / 0.09) ** 2 + ((y - 0.42) / 0.09) ** 2 <= 1] = 700.0
    hu += rng.normal(0.0, 12.0, hu.shape)
    stored = np.clip(np.round(hu - INTERCEPT), -1000, 3000).astype(np.int16)
    stored[x**2 + y**2 > 1.0] = PADDING_STORED
    return stored


def _add_image(ds, stored):
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = INTERCEPT, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = -600, 1500
    ds.PixelPaddingValue = PADDING_STORED
    ds.PixelData = stored.tobytes()


def write_phantom_series(folder, n_patients=3, slices_per_patient=4, size=256, seed=0):
    """Write phantom CT series into ``folder`` (named by patient and slice, no PHI in names).

    Returns:
        `list[pathlib.Path]`: the files written.
    """
    import pathlib

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(n_patients):
        patient = PhantomPatient(index)
        for slice_index in range(slices_per_patient):
            path = folder / f"phantom_p{index:02d}_s{slice_index:03d}.dcm"
            make_ct_slice(patient, slice_index, slices_per_patient, size, seed).save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths
