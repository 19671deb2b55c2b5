"""Tests for lib_lora_train/export/metadata.py: allow-list, string values, version keys loaders read."""

import datetime
import types

import pytest

from lib_lora_train import __version__
from lib_lora_train.errors import CaptionPHIError, LoraTrainError
from lib_lora_train.export.kohya import ExportError
from lib_lora_train.export.metadata import (
    ALLOWED_METADATA_KEYS,
    build_metadata,
    validate_metadata,
)
from tests.export.test_kohya import (
    A1111_REPO,
    A1111_REV,
    FORGE_REPO,
    FORGE_REV,
    upstream_function,
)


def required(**overrides):
    values = {
        "name": "chest_ct_v1",
        "purpose": "teaching images of chest CT windows",
        "registry_id": "lora-0001",
        "base_model_version": "sd_v1",
        "network_dim": 8,
        "network_alpha": 4,
    }
    values.update(overrides)
    return values


def test_sd1_metadata_has_the_version_keys_and_only_strings():
    metadata = build_metadata(**required())
    assert set(metadata) <= ALLOWED_METADATA_KEYS
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_network_dim"] == "8"
    assert metadata["ss_network_alpha"] == "4.0"
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert metadata["ss_v2"] == "False"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert metadata["modelspec.sai_model_spec"] == "1.0.0"
    assert metadata["modelspec.title"] == metadata["ss_output_name"] == "chest_ct_v1"
    assert metadata["medical_lora.registry_id"] == "lora-0001"
    assert metadata["medical_lora.purpose"] == "teaching images of chest CT windows"
    assert metadata["medical_lora.version"] == __version__
    assert metadata["ss_session_id"].isdigit()
    for forbidden in ("ss_tag_frequency", "ss_dataset_dirs", "ss_sd_model_name", "sshs_model_hash"):
        assert forbidden not in metadata


@pytest.mark.parametrize(
    ("version", "v_prediction", "architecture", "v2"),
    [
        ("sd_v1", False, "stable-diffusion-v1/lora", "False"),
        ("sd_v2", False, "stable-diffusion-v2-512/lora", "True"),
        ("sd_v2", True, "stable-diffusion-v2-768-v/lora", "True"),
    ],
)
def test_architecture_follows_kohya_ids(version, v_prediction, architecture, v2):
    metadata = build_metadata(**required(base_model_version=version), v_prediction=v_prediction)
    assert metadata["modelspec.architecture"] == architecture
    assert metadata["ss_v2"] == v2


@pytest.mark.parametrize(
    ("repo", "rev", "path"),
    [
        (A1111_REPO, A1111_REV, "extensions-builtin/Lora/network.py"),
        (FORGE_REPO, FORGE_REV, "extensions-builtin/sd_forge_lora/network.py"),
    ],
)
@pytest.mark.parametrize(("version", "expected"), [("sd_v1", "SD1"), ("sd_v2", "SD2")])
def test_webui_detects_the_sd_version_from_the_header(repo, rev, path, version, expected):
    detect_version = upstream_function(repo, rev, path, "NetworkOnDisk.detect_version")
    metadata = build_metadata(**required(base_model_version=version), v_prediction=version == "sd_v2")
    assert detect_version(types.SimpleNamespace(metadata=metadata)).name == expected


@pytest.mark.parametrize(
    ("field", "value", "key", "expected"),
    [
        ("num_train_images", 40, "ss_num_train_images", "40"),
        ("max_train_steps", 1000, "ss_max_train_steps", "1000"),
        ("num_epochs", 5, "ss_num_epochs", "5"),
        ("resolution", 512, "ss_resolution", "(512, 512)"),
        ("resolution", (768, 512), "ss_resolution", "(768, 512)"),
        ("training_started_at", 1700000000.7, "ss_training_started_at", "1700000000"),
        (
            "training_finished_at",
            datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC),
            "ss_training_finished_at",
            "1704153600",
        ),
        ("learning_rate", 1e-4, "ss_learning_rate", "0.0001"),
        ("lr_scheduler", "cosine_with_restarts", "ss_lr_scheduler", "cosine_with_restarts"),
        ("seed", 42, "ss_seed", "42"),
        ("mixed_precision", "fp16", "ss_mixed_precision", "fp16"),
        ("session_id", 1234, "ss_session_id", "1234"),
        ("expires", datetime.date(2026, 12, 31), "medical_lora.expires", "2026-12-31"),
        ("expires", "2026-12-31", "medical_lora.expires", "2026-12-31"),
        ("version", "1.2.0", "medical_lora.version", "1.2.0"),
    ],
)
def test_optional_fields_are_formatted_as_strings(field, value, key, expected):
    assert build_metadata(**required(), **{field: value})[key] == expected


def test_fields_left_none_are_omitted():
    assert "ss_seed" not in build_metadata(**required(), seed=None)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"num_train_images": -1}, "'num_train_images' must be an integer >= 0"),
        ({"seed": True}, "'seed' must be an integer >= 0"),
        ({"resolution": (0, 512)}, "'resolution' must be an integer or"),
        ({"learning_rate": 0}, "'learning_rate' must be a finite number > 0"),
        ({"lr_scheduler": "Cosine With Restarts"}, "'lr_scheduler' must match"),
        ({"mixed_precision": "fp8"}, "'mixed_precision' must be one of"),
        ({"expires": "next year"}, "'expires' must be an ISO 8601 date"),
        ({"version": "1 0"}, "'version' must match"),
        ({"session_id": "abc"}, "'session_id' must match"),
        ({"name": "my:lora"}, "'name' must match"),
        ({"name": "../x"}, "'name' must match"),
        ({"name": ".hidden"}, "'name' must match"),
        ({"name": "a" * 65}, "'name' must match"),
        ({"name": ""}, "'name' must match"),
        ({"registry_id": "a b"}, "'registry_id' must match"),
        ({"purpose": "line one\nline two"}, "one printable line"),
        ({"purpose": "x" * 201}, "at most 200 characters"),
        ({"purpose": "  "}, "purpose must be a non-empty string"),
        ({"base_model_version": "sdxl_base_v1-0"}, "base_model_version must be one of"),
        ({"network_dim": 8.0}, "'network_dim' must be an integer"),
        ({"network_alpha": float("inf")}, "'network_alpha' must be a finite number"),
    ],
)
def test_bad_values_are_refused(overrides, match):
    values = required()
    extra = {k: v for k, v in overrides.items() if k not in values}
    values.update({k: v for k, v in overrides.items() if k in values})
    with pytest.raises(ExportError, match=match):
        build_metadata(**values, **extra)


def test_unknown_fields_raise_value_error():
    with pytest.raises(ValueError, match=r"unknown metadata fields \['tag_frequency'\]") as info:
        build_metadata(**required(), tag_frequency={"img": {"chest": 3}})
    assert isinstance(info.value, LoraTrainError)


@pytest.mark.parametrize("key", ["ss_tag_frequency", "ss_dataset_dirs", "ss_caption", "source_path", "ssmd_author"])
def test_validate_refuses_keys_outside_the_allow_list(key):
    metadata = dict(build_metadata(**required()), **{key: "{}"})
    with pytest.raises(ExportError, match=f"metadata key '{key}' is not allowed"):
        validate_metadata(metadata)


def test_validate_requires_strings_and_the_required_keys():
    metadata = build_metadata(**required())
    with pytest.raises(ExportError, match="must be a str, got int"):
        validate_metadata(dict(metadata, ss_network_dim=8))
    with pytest.raises(ExportError, match=r"lacks \['ss_v2'\]"):
        validate_metadata({k: v for k, v in metadata.items() if k != "ss_v2"})
    with pytest.raises(ExportError, match="must be a dict of strings"):
        validate_metadata([("ss_v2", "False")])


def test_text_checker_screens_name_and_purpose():
    seen = []
    build_metadata(**required(), text_checker=seen.append)
    assert seen == ["chest_ct_v1", "teaching images of chest CT windows"]


def test_phi_in_the_purpose_is_refused_by_the_caption_screen():
    from lib_lora_train.dataset.phi_check import check_caption

    with pytest.raises(CaptionPHIError, match="a date"):
        build_metadata(**required(name="chest_ct", purpose="follow-up scans of 2024-03-05"), text_checker=check_caption)
    build_metadata(**required(name="ct_lung_window"), text_checker=check_caption)


def test_each_build_gets_a_new_session_id():
    assert build_metadata(**required())["ss_session_id"] != build_metadata(**required())["ss_session_id"]
