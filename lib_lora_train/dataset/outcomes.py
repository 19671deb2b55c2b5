"""Records of what ``prepare`` did, and the manifest and report built from them.

Only pseudonyms, counts, codes, content hashes and position-based labels go in here:
these files are shown to users, read by the registry and kept for audits.
"""

import collections
import dataclasses
import datetime

from .. import __version__
from ..dicom import profile

MANY_IMAGES = 200
FEW_IMAGES = 50


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One training image: where it is, what it says, whose data it came from (pseudonyms)."""

    file_name: str
    caption: str
    patient: str
    study: str
    source: str
    frame: int
    window: dict
    sha256: str


@dataclasses.dataclass(frozen=True)
class FileOutcome:
    """What happened to one input file."""

    label: str
    sha256: str
    status: str
    code: str = ""
    message: str = ""
    patient: str = ""
    study: str = ""
    modality: str = ""
    images: tuple = ()
    dicom_file: str = ""
    pixel_checks: str = ""
    action_counts: dict = dataclasses.field(default_factory=dict)
    warnings: tuple = ()

    @classmethod
    def rejected(cls, label, sha256, error):
        return cls(label=label, sha256=sha256 or "", status="rejected",
                   code=getattr(error, "code", "error"), message=str(error))

    def to_dict(self):
        """Manifest form: without the input's content hash (a hash of an identified file lets
        whoever holds that file confirm it was used; only the report's short prefix of rejected
        files keeps it, so the user can find them)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()
                if key != "sha256" and value not in ("", (), {}, None)}


def build_manifest(dataset_id, config, outcomes, images, captions):
    """The machine record of a dataset: lineage for the registry and for erasure."""
    accepted = [o for o in outcomes if o.status == "accepted"]
    return {
        "dataset_id": dataset_id,
        "created_at": _now(),
        "tool": {"name": "medical-lora", "version": __version__},
        "deidentification": {
            "profile": f"DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile ({profile.PROFILE_EDITION})",
            "allow_list_version": profile.ALLOW_LIST_VERSION,
            "date_policy": config.date_policy,
            "uids": "replaced with HMAC-SHA256 pseudonyms (site key)",
            "patient_ids": "replaced with HMAC-SHA256 pseudonyms (site key)",
        },
        "options": config.to_dict(),
        "captions": captions,
        "counts": _counts(outcomes, images),
        "patients": sorted({o.patient for o in accepted}),
        "studies": sorted({o.study for o in accepted}),
        "files": [o.to_dict() for o in outcomes],
        "images": [dataclasses.asdict(image) for image in images],
    }


def build_report(dataset_id, config, outcomes, images):
    """The human summary: counts, modality mix, rejections with reasons, warnings."""
    rejected = [o for o in outcomes if o.status != "accepted"]
    accepted = [o for o in outcomes if o.status == "accepted"]
    return {
        "dataset_id": dataset_id,
        "created_at": _now(),
        "counts": _counts(outcomes, images),
        "modalities": dict(collections.Counter(o.modality for o in accepted)),
        "rejected": [{"input": o.label, "sha256": o.sha256[:12], "code": o.code, "reason": o.message}
                     for o in rejected],
        "rejection_codes": dict(collections.Counter(o.code for o in rejected)),
        "pixel_checks": dict(collections.Counter(o.pixel_checks for o in accepted)),
        "warnings": _warnings(outcomes, images),
        "options": {"window": config.window, "resolution": config.resolution, "frames": config.frames,
                    "date_policy": config.date_policy, "ocr": config.ocr},
    }


def _counts(outcomes, images):
    accepted = [o for o in outcomes if o.status == "accepted"]
    return {
        "inputs": len(outcomes),
        "accepted_files": len(accepted),
        "rejected_files": len(outcomes) - len(accepted),
        "images": len(images),
        "patients": len({o.patient for o in accepted}),
        "studies": len({o.study for o in accepted}),
    }


def _warnings(outcomes, images):
    warnings = []
    if len(images) > MANY_IMAGES:
        warnings.append(
            f"data minimisation: {len(images)} images; a LoRA rarely needs more than {MANY_IMAGES}. "
            "Consider training on fewer images (GDPR Art. 5(1)(c))."
        )
    elif 0 < len(images) < FEW_IMAGES:
        warnings.append(f"note: {len(images)} images; fewer than {FEW_IMAGES} may give a weak adapter.")
    if not images:
        warnings.append("no training image was prepared; see the rejected files and their reasons.")
    for outcome in outcomes:
        warnings.extend(f"{outcome.label}: {text}" for text in outcome.warnings)
    return warnings


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
