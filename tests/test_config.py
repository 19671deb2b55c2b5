"""IngestConfig validation: every bad value named with what is allowed."""

import dataclasses

import pytest

from lib_lora_train.config import IngestConfig, field_help
from lib_lora_train.errors import ConfigError


@pytest.mark.parametrize(
    "values, message",
    [
        ({"window": "lungs"}, r"window='lungs' is not allowed; choose one of: file, auto, lung"),
        ({"resolution": 500}, "multiple of 8"),
        ({"resolution": 32}, "at least 64"),
        ({"resolution": "512"}, "whole number"),
        ({"resize_mode": "stretch"}, "pad, crop"),
        ({"frames": "first"}, "middle, all"),
        ({"date_policy": "keep"}, "remove, shift"),
        ({"ocr": "yes"}, "auto, required, off"),
        ({"reject_burned_in": "no"}, "true or false"),
        ({"caption_template": "{modality} of {patient_name}"}, r"unknown placeholder \{patient_name\}"),
        ({"caption_template": "{modality"}, "not a valid template"),
        ({"blank_regions": [(10, 10, 5, 20)]}, "x1 > x0"),
        ({"blank_regions": "0,0,1,1"}, "list of"),
        ({"windw": "lung"}, "did you mean 'window'"),
        ({"max_zip_ratio": 0}, "at least 1"),
    ],
)
def test_bad_values_are_named(values, message):
    with pytest.raises(ConfigError, match=message):
        IngestConfig.from_dict(values)


def test_defaults_are_valid_and_round_trip():
    config = IngestConfig(blank_regions=[[0, 0, 10, 10]])
    assert config.blank_regions == ((0, 0, 10, 10),)
    assert IngestConfig.from_dict(config.to_dict()) == config


def test_replace_validates_again():
    with pytest.raises(ConfigError):
        dataclasses.replace(IngestConfig(), window="nope")


def test_every_field_has_help():
    assert all(text for text in field_help(IngestConfig).values())
