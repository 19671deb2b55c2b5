"""``AdapterRecord``: one registry row as a frozen value, and the checks on what goes into a row.

The row is the technical backbone of the GDPR Art. 30 record of processing (DICOM_NOTES.md
section 6): purpose, legal basis, DPIA reference, owner, de-identification profile, lineage
(pseudonymous patient and study ids), retention. Lineage holds only the keyed pseudonyms that
ingest wrote into the dataset manifest, never raw ids: anything else is refused.
"""

import dataclasses
import datetime
import hashlib
import json
import pathlib
import re
import secrets

from ..errors import ConfigError
from ..fileio import sha256_file
from ..naming import ADAPTER_NAME_PATTERN

PATIENT_PSEUDONYM = re.compile(r"P[0-9a-f]{32}")
STUDY_PSEUDONYM = re.compile(r"S[0-9a-f]{32}")
NAME_PATTERN = ADAPTER_NAME_PATTERN
ADAPTER_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
FINGERPRINT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
TEXT_MAX_CHARS = 200
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class AdapterRecord:
    """One adapter in the registry (a row of ``adapters`` with its lineage)."""

    id: str
    name: str
    file_path: str
    sha256: str
    size_bytes: int
    copies: tuple
    base_fingerprint: str
    config: dict
    config_digest: str
    num_images: int
    patients: tuple
    studies: tuple
    dataset_id: str
    dataset_path: str | None
    data_source: str
    purpose: str
    legal_basis: str
    dpia_reference: str
    deid_profile: str
    deid_version: str
    department: str
    owner: str
    created_at: str
    created_by: str
    expires_at: str
    last_used_at: str | None
    status: str
    deleted_at: str | None = None
    deleted_by: str | None = None
    deleted_reason: str | None = None

    @property
    def is_active(self):
        return self.status == "active"

    def to_dict(self, lineage=False):
        """JSON form for the CLI and the WebUI: counts of patients and studies; the pseudonyms
        themselves only with ``lineage=True`` (data minimisation, Art. 5(1)(c))."""
        data = dataclasses.asdict(self)
        data["copies"] = list(self.copies)
        data["n_patients"], data["n_studies"] = len(self.patients), len(self.studies)
        if lineage:
            data["patients"], data["studies"] = list(self.patients), list(self.studies)
        else:
            del data["patients"], data["studies"]
        return data


def record_from_row(row, patients, studies):
    """Build a record from an ``adapters`` row (a ``sqlite3.Row``) and its lineage."""
    names = {field.name for field in dataclasses.fields(AdapterRecord)}
    values = {key: row[key] for key in row.keys() if key in names}
    values.update(copies=tuple(json.loads(row["copies_json"])), config=json.loads(row["config_json"]),
                  patients=tuple(patients), studies=tuple(studies))
    return AdapterRecord(**values)


def new_adapter_id():
    """A fresh adapter id: date plus random hex (no link to any input); valid as ``registry_id`` in
    the exported file's metadata, so a trainer can reserve it before export."""
    return f"lora-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d}-{secrets.token_hex(4)}"


def config_digest(config_dict):
    """Canonical JSON of a training config and its SHA-256 (the digest goes to the audit log)."""
    try:
        text = json.dumps(config_dict, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        raise ConfigError("config_dict must be JSON-serialisable (use TrainConfig.to_dict())") from None
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()


def checked_text(name, value):
    """One printable line of 1-200 characters (a registry field shown to the DPO)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} is required: a short text (GDPR Art. 30 record); got {type(value).__name__}")
    value = value.strip()
    if len(value) > TEXT_MAX_CHARS or not value.isprintable():
        raise ConfigError(f"{name} must be one printable line of at most {TEXT_MAX_CHARS} characters")
    return value


def checked_match(name, value, pattern, hint):
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ConfigError(f"{name} must be {hint}")
    return value


def checked_lineage(manifest):
    """Dataset id, pseudonymous patients and studies, de-id profile and image count of a manifest.

    Raises:
        ConfigError: a missing key, or a patient/study value that is not a keyed pseudonym
            (a raw id must never reach the registry; the value itself is not echoed).
    """
    if not isinstance(manifest, dict):
        raise ConfigError("dataset_manifest must be the dict read from the dataset's manifest.json")
    missing = [key for key in ("dataset_id", "patients", "studies", "images") if key not in manifest]
    if missing:
        raise ConfigError(f"dataset_manifest lacks {', '.join(missing)}; pass the manifest.json written by prepare")
    dataset_id = checked_match("dataset_manifest['dataset_id']", manifest["dataset_id"], ADAPTER_ID_PATTERN,
                               "a dataset id such as ds-20250101-1a2b3c4d")
    patients = _checked_pseudonyms("patients", manifest["patients"], PATIENT_PSEUDONYM)
    studies = _checked_pseudonyms("studies", manifest["studies"], STUDY_PSEUDONYM)
    if not isinstance(manifest["images"], list) or not manifest["images"]:
        raise ConfigError("dataset_manifest['images'] must list the training images; the dataset is empty")
    deid = manifest.get("deidentification") or {}
    profile = str(deid.get("profile") or "unknown")
    version = str(deid.get("allow_list_version") or manifest.get("tool", {}).get("version") or "unknown")
    return dataset_id, patients, studies, profile, version, len(manifest["images"])


def checked_expiry(expires, created, retention_days):
    """Expiry date (ISO ``YYYY-MM-DD``): ``expires`` or ``retention_days`` after ``created``."""
    if expires is None:
        return (created.date() + datetime.timedelta(days=retention_days)).isoformat()
    if isinstance(expires, datetime.datetime):
        expires = expires.date()
    if isinstance(expires, str):
        try:
            expires = datetime.date.fromisoformat(expires)
        except ValueError:
            raise ConfigError(f"expires={expires!r} must be a date YYYY-MM-DD") from None
    if not isinstance(expires, datetime.date):
        raise ConfigError("expires must be a date, a datetime or a YYYY-MM-DD string")
    if expires <= created.date():
        raise ConfigError(f"expires={expires.isoformat()} must be after today ({created.date().isoformat()})")
    return expires.isoformat()


def checked_file(path, sha256, size_bytes):
    """The exported file exists and has the size and hash the export reported."""
    path = pathlib.Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"the exported adapter file {path.name} does not exist; export it again")
    checked_match("export_result.sha256", sha256, SHA256_PATTERN, "a SHA-256 hex digest")
    if path.stat().st_size != size_bytes:
        raise ConfigError(f"the adapter file {path.name} has {path.stat().st_size} bytes, the export reported "
                          f"{size_bytes}; it changed after export. Export it again")
    if sha256_file(path) != sha256:
        raise ConfigError(f"the adapter file {path.name} does not match the exported SHA-256; it changed after "
                          "export. Export it again")
    return path


def _checked_pseudonyms(key, values, pattern):
    if not isinstance(values, list):
        raise ConfigError(f"dataset_manifest['{key}'] must be a list of pseudonyms")
    bad = sum(1 for value in values if not isinstance(value, str) or not pattern.fullmatch(value))
    if bad:
        raise ConfigError(f"dataset_manifest['{key}'] holds {bad} value(s) that are not keyed pseudonyms "
                          f"({pattern.pattern}); only manifests written by prepare can be registered")
    return tuple(sorted(set(values)))
