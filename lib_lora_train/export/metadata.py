"""Build the safetensors header of an exported adapter from an allow-list of keys.

The header is public: A1111 serves it at ``GET /sdapi/v1/loras`` and in the metadata popup,
and Additional Networks lists every ``ss_*`` key (A1111_CONTRACT.md 3.8, 4). So only fixed-format
training facts and this product's ids go in; never ``ss_tag_frequency``, ``ss_dataset_dirs``,
captions, paths, or free text other than the adapter's name and purpose, which a caller-supplied
checker screens.

Version keys are chosen by what the loaders read. A1111 v1.10.1
``extensions-builtin/Lora/network.py::NetworkOnDisk.detect_version``: ``ss_base_model_version``
starting ``sdxl_`` -> SDXL, ``ss_v2 == "True"`` -> SD2, any other metadata -> SD1 (it never reads
``modelspec.*`` for LoRAs). Forge ``sd_forge_lora/network.py::detect_version`` needs
``modelspec.architecture == "stable-diffusion-v1/lora"`` for SD1 and uses ``ss_v2`` for SD2.
Architecture ids are kohya sd-scripts' (``library/sai_model_spec.py``: ``ARCH_SD_V1``,
``ARCH_SD_V2_512``, ``ARCH_SD_V2_768_V`` + ``"/lora"``).
"""

import datetime
import math
import numbers
import re
import secrets

from .. import __version__
from ..errors import ExportError
from ..hosts.base import MODELSPEC_ARCHITECTURES
from ..naming import ADAPTER_NAME_PATTERN

BASE_MODEL_VERSIONS = ("sd_v1", "sd_v2")
FIXED_METADATA = {
    "ss_network_module": "networks.lora",
    "modelspec.sai_model_spec": "1.0.0",
    # kohya writes "diffusers" for SD1/SD2 LoRAs: the key names derive from diffusers module paths.
    "modelspec.implementation": "diffusers",
}
REQUIRED_METADATA_KEYS = frozenset(
    {
        *FIXED_METADATA,
        "ss_network_dim",
        "ss_network_alpha",
        "ss_base_model_version",
        "ss_v2",
        "modelspec.architecture",
        "modelspec.title",
        "ss_output_name",
        "ss_session_id",
        "medical_lora.registry_id",
        "medical_lora.purpose",
        "medical_lora.version",
    }
)
MIXED_PRECISIONS = ("no", "fp16", "bf16")
NAME_PATTERN = ADAPTER_NAME_PATTERN
REGISTRY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
IDENTIFIER_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,39}")
VERSION_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]{0,31}")
SESSION_ID_PATTERN = re.compile(r"\d{1,20}")
PURPOSE_MAX_CHARS = 200


def _format_count(field, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ExportError(f"metadata field {field!r} must be an integer >= 0, got {value!r}")
    return str(int(value))


def _format_positive(field, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ExportError(f"metadata field {field!r} must be a finite number > 0, got {value!r}")
    return str(float(value))


def _format_resolution(field, value):
    size = (value, value) if isinstance(value, numbers.Integral) else tuple(value)
    if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in size):
        raise ExportError(f"metadata field {field!r} must be an integer or (width, height), got {value!r}")
    return f"({int(size[0])}, {int(size[1])})"


def _format_timestamp(field, value):
    if isinstance(value, datetime.datetime):
        value = value.timestamp()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ExportError(f"metadata field {field!r} must be unix seconds or a datetime, got {value!r}")
    return str(int(value))


def _format_date(field, value):
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    text = str(value)
    parse = datetime.datetime.fromisoformat if "T" in text else datetime.date.fromisoformat
    try:
        return parse(text).isoformat()
    except ValueError:
        raise ExportError(f"metadata field {field!r} must be an ISO 8601 date such as 2026-12-31") from None


def _format_identifier(field, value):
    return _matching(field, value, IDENTIFIER_PATTERN)


def _format_precision(field, value):
    if value not in MIXED_PRECISIONS:
        raise ExportError(f"metadata field {field!r} must be one of {MIXED_PRECISIONS}, got {value!r}")
    return value


def _format_session_id(field, value):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = str(int(value))
    return _matching(field, value, SESSION_ID_PATTERN)


def _format_version(field, value):
    return _matching(field, value, VERSION_PATTERN)


def _matching(field, value, pattern):
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ExportError(f"metadata field {field!r} must match {pattern.pattern!r}, got {value!r}")
    return value


# Optional keyword of build_metadata -> (header key, formatter).
OPTIONAL_FIELDS = {
    "num_train_images": ("ss_num_train_images", _format_count),
    "max_train_steps": ("ss_max_train_steps", _format_count),
    "num_epochs": ("ss_num_epochs", _format_count),
    "resolution": ("ss_resolution", _format_resolution),
    "training_started_at": ("ss_training_started_at", _format_timestamp),
    "training_finished_at": ("ss_training_finished_at", _format_timestamp),
    "learning_rate": ("ss_learning_rate", _format_positive),
    "lr_scheduler": ("ss_lr_scheduler", _format_identifier),
    "seed": ("ss_seed", _format_count),
    "mixed_precision": ("ss_mixed_precision", _format_precision),
    "session_id": ("ss_session_id", _format_session_id),
    "expires": ("medical_lora.expires", _format_date),
    "version": ("medical_lora.version", _format_version),
}
# sshs_model_hash is added by export.writer from the tensor bytes it writes, never by callers.
ALLOWED_METADATA_KEYS = frozenset(
    {*REQUIRED_METADATA_KEYS, *(key for key, _ in OPTIONAL_FIELDS.values()), "sshs_model_hash"}
)


def build_metadata(
    *,
    name,
    purpose,
    registry_id,
    base_model_version,
    network_dim,
    network_alpha,
    v_prediction=False,
    text_checker=None,
    **fields,
):
    """Header metadata for an exported adapter: allow-listed keys, every value a string.

    Args:
        name (`str`): the adapter name and file stem: 1-64 of ``[A-Za-z0-9_.-]``, not starting
            with ``.`` (A1111's prompt syntax cannot address names with ``:`` or ``>``); written as
            ``ss_output_name`` (A1111's alias) and ``modelspec.title``.
        purpose (`str`): one line, at most 200 characters, written as ``medical_lora.purpose``.
        registry_id (`str`): the registry row id, ``medical_lora.registry_id``.
        base_model_version (`str`): ``"sd_v1"`` or ``"sd_v2"``.
        network_dim (`int`): the LoRA rank.
        network_alpha (`float`): the trained ``lora_alpha`` (the value the file's alphas hold).
        v_prediction (`bool`, *optional*): the base model predicts v (SD2 768-v).
        text_checker (`Callable[[str], None]`, *optional*): raises when a text holds personal data,
            e.g. ``lib_lora_train.dataset.phi_check.check_caption``; applied to name and purpose.
        **fields: optional keys of :data:`OPTIONAL_FIELDS` (``num_train_images``,
            ``training_started_at``, ``learning_rate``, ``expires``, ...).

    Returns:
        `dict[str, str]`

    Raises:
        `ExportError`: an unknown field, or a value of the wrong type or format.
    """
    unknown = sorted(set(fields) - set(OPTIONAL_FIELDS))
    if unknown:
        raise ExportError(f"unknown metadata fields {unknown}; allowed: {sorted(OPTIONAL_FIELDS)}")
    if base_model_version not in BASE_MODEL_VERSIONS:
        raise ExportError(f"base_model_version must be one of {BASE_MODEL_VERSIONS}, got {base_model_version!r}")
    name = _matching("name", name, NAME_PATTERN)
    purpose = _checked_purpose(purpose)
    if text_checker is not None:
        text_checker(name)
        text_checker(purpose)
    metadata = dict(FIXED_METADATA)
    metadata.update(
        {
            "ss_network_dim": _format_count("network_dim", network_dim),
            "ss_network_alpha": _format_positive("network_alpha", network_alpha),
            "ss_base_model_version": base_model_version,
            "ss_v2": str(base_model_version == "sd_v2"),
            "modelspec.architecture": MODELSPEC_ARCHITECTURES[(base_model_version, bool(v_prediction))],
            "modelspec.title": name,
            "ss_output_name": name,
            "ss_session_id": str(secrets.randbelow(2**32)),
            "medical_lora.registry_id": _matching("registry_id", registry_id, REGISTRY_ID_PATTERN),
            "medical_lora.purpose": purpose,
            "medical_lora.version": __version__,
        }
    )
    for field, value in fields.items():
        if value is not None:
            key, formatter = OPTIONAL_FIELDS[field]
            metadata[key] = formatter(field, value)
    validate_metadata(metadata)
    return metadata


def _checked_purpose(purpose):
    if not isinstance(purpose, str) or not purpose.strip():
        raise ExportError("purpose must be a non-empty string")
    purpose = purpose.strip()
    if len(purpose) > PURPOSE_MAX_CHARS or not purpose.isprintable():
        raise ExportError(f"purpose must be one printable line of at most {PURPOSE_MAX_CHARS} characters")
    return purpose


def validate_metadata(metadata):
    """Check header metadata: allow-listed keys only, string values, required keys present.

    Args:
        metadata (`dict[str, str]`)

    Raises:
        `ExportError`: a key outside :data:`ALLOWED_METADATA_KEYS` (e.g. ``ss_tag_frequency``), a
            value that is not a string (safetensors requires ``Dict[str, str]``), or a missing key.
    """
    if not isinstance(metadata, dict):
        raise ExportError(f"metadata must be a dict of strings, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if key not in ALLOWED_METADATA_KEYS:
            raise ExportError(
                f"metadata key {key!r} is not allowed: the header is public (A1111 serves it at "
                f"/sdapi/v1/loras), so only these keys are written: {sorted(ALLOWED_METADATA_KEYS)}"
            )
        if not isinstance(value, str):
            raise ExportError(f"metadata value of {key!r} must be a str, got {type(value).__name__}")
    missing = sorted(REQUIRED_METADATA_KEYS - set(metadata))
    if missing:
        raise ExportError(f"metadata lacks {missing}; build it with build_metadata()")
