"""Steps 3 to 5 of the tab: the record, presets and options, the job, the result and its preview."""

import dataclasses

import numpy as np
import pytest

from lib_lora_train.config import IngestConfig
from lib_lora_train.errors import ConfigError, InputError
from lib_lora_train.registry import AdapterNameInUseError
from lib_lora_train.hosts.base import fingerprint_modules
from lib_lora_train.train_config import TrainConfig
from lib_lora_train.ui import datasets, training
from lib_lora_train.ui.context import AccessDeniedError

from .conftest import FAST_OPTIONS, RECORD, make_context


@pytest.mark.parametrize("preset, images, steps", [("quick", 3, 100), ("quick", 30, 300), ("quick", 500, 400),
                                                   ("standard", 20, 600), ("thorough", 5, 800)])
def test_presets_scale_with_the_dataset_and_are_clamped(preset, images, steps):
    values = training.preset_values(preset, images)
    assert values["max_steps"] == steps
    assert values["lora_alpha"] == values["lora_rank"]
    TrainConfig.from_dict({key: value for key, value in values.items()})  # every value is valid


def test_an_unknown_preset_is_refused():
    with pytest.raises(ConfigError, match="quick, standard, thorough"):
        training.preset_values("turbo", 3)


def test_the_advanced_options_are_every_trainer_option_but_paths_and_record():
    shown = {field.key for field in training.option_fields()}
    every = {field.name for field in dataclasses.fields(TrainConfig)}
    assert shown == every - training.HIDDEN_KEYS
    kinds = {field.key: field.kind for field in training.option_fields()}
    assert kinds["lora_rank"] == "int" and kinds["learning_rate"] == "float" and kinds["optimizer"] == "choice"
    assert kinds["target_modules"] == "list" and kinds["gradient_checkpointing"] == "bool"


def test_option_values_are_converted_and_empty_optional_ones_unset():
    fields = {field.key: field for field in training.option_fields()}
    assert training.option_value(fields["max_steps"], "") is None
    assert training.option_value(fields["max_steps"], "12") == 12
    assert training.option_value(fields["lora_rank"], 8.0) == 8
    assert training.option_value(fields["target_modules"], "to_q, to_v") == ("to_q", "to_v")
    with pytest.raises(ConfigError, match="whole number"):
        training.option_value(fields["lora_rank"], 4.5)
    with pytest.raises(ConfigError, match="must not be empty"):
        training.option_value(fields["learning_rate"], " ")
    for field, typed in (("max_steps", "abc"), ("max_steps", "1e400"), ("snr_gamma", "five")):
        with pytest.raises(ConfigError, match=f"^{field.replace('_', ' ')} must be a number"):
            training.option_value(fields[field], typed)


def test_the_webui_tab_offers_no_training_previews():
    keys = {field.key for field in training.option_fields(training_previews=False)}
    assert not keys & set(training.SAMPLE_KEYS) and "lora_rank" in keys


def test_cancelling_a_finished_job_says_so(context, prepared):
    config = training.build_config(context, prepared.dataset_id, RECORD, FAST_OPTIONS)
    job_id = training.start_training(context, config, user=None)
    context.state.jobs.wait(job_id, timeout=300)
    with pytest.raises(InputError, match="already finished"):
        training.cancel_job(context, None, user=None)


@pytest.fixture
def prepared(home, gradio_uploads):
    upload_id = datasets.take_uploads(home, gradio_uploads)
    return datasets.prepare_uploads(home, upload_id, IngestConfig(ocr="off", resolution=64), actor="alice")


def test_build_config_validates_name_and_record(context, prepared):
    config = training.build_config(context, prepared.dataset_id, RECORD, FAST_OPTIONS)
    assert config.name == "chest_ct" and config.max_steps == 2 and config.expires == "2027-06-30"
    assert config.output_dir == str(context.home.adapters_dir / "chest_ct")
    with pytest.raises(ConfigError, match="cannot be used in <lora:NAME:0.7>"):
        training.build_config(context, prepared.dataset_id, dict(RECORD, name="chest ct:1"), FAST_OPTIONS)
    with pytest.raises(ConfigError, match="purpose"):
        training.build_config(context, prepared.dataset_id, dict(RECORD, purpose=" "), FAST_OPTIONS)
    with pytest.raises(ConfigError, match="expires is required"):
        training.build_config(context, prepared.dataset_id, dict(RECORD, expires=""), FAST_OPTIONS)
    with pytest.raises(InputError, match="no dataset prepared"):
        training.build_config(context, "", RECORD, FAST_OPTIONS)


def test_train_from_the_tab_registers_the_adapter_and_erases_the_uploads(context, prepared, embedded_host):
    base = fingerprint_modules(embedded_host.modules_to_fingerprint())
    config = training.build_config(context, prepared.dataset_id, RECORD, FAST_OPTIONS)
    job_id = training.start_training(context, config, user=None, upload_id=prepared.upload_id)
    assert not datasets.upload_folder(context.home, prepared.upload_id).exists()
    context.state.jobs.wait(job_id, timeout=300)
    view = training.job_view(context)  # no id: a reloaded page re-attaches to the latest job
    assert view.status.job_id == job_id and view.status.state == "done", view.status.error
    assert len(view.losses) == view.status.step == 2
    assert view.adapter.name == "chest_ct" and view.adapter.created_by == "anonymous"
    assert view.snippet == "<lora:chest_ct:0.7>"
    assert fingerprint_modules(embedded_host.modules_to_fingerprint()) == base
    with pytest.raises(AdapterNameInUseError, match="already exists"):
        training.build_config(context, prepared.dataset_id, RECORD, FAST_OPTIONS)
    with pytest.raises(AdapterNameInUseError, match="already exists"):  # one file on Windows and macOS
        training.build_config(context, prepared.dataset_id, dict(RECORD, name="Chest_CT"), FAST_OPTIONS)
    without, with_adapter = training.before_after(context, "chest_ct", "CT scan of chest")
    assert without.size == with_adapter.size and np.asarray(without).tobytes() != np.asarray(with_adapter).tobytes()
    assert fingerprint_modules(embedded_host.modules_to_fingerprint()) == base


def test_only_listed_users_may_train(home, embedded_host, prepared):
    context = make_context(home, embedded_host, auth_enabled=True, train_users=("alice",))
    config = training.build_config(context, prepared.dataset_id, RECORD, FAST_OPTIONS)
    with pytest.raises(AccessDeniedError, match="'mallory' may not train"):
        training.start_training(context, config, user="mallory")
    assert context.state.jobs.latest() is None
    from lib_lora_train.registry import Registry

    with Registry(home) as registry:
        entry = registry.audit.latest(1)[0]
    assert (entry["action"], entry["actor"], entry["target"], entry["outcome"]) == (
        "auth_failed", "mallory", "tab:train", "refused")


def test_a_host_that_cannot_train_says_why(home, embedded_host, prepared):
    context = make_context(home, embedded_host, training_refused="Forge: in-process training is not available")
    config = training.build_config(context, prepared.dataset_id, RECORD, FAST_OPTIONS)
    with pytest.raises(ConfigError, match="Forge"):
        training.start_training(context, config, user=None)


def test_cancel_without_a_job_is_a_clear_error(context):
    with pytest.raises(InputError, match="no training job"):
        training.cancel_job(context, None, user=None)
    assert training.job_view(context).status is None


def test_previews_refuse_a_prompt_with_personal_data(context):
    from lib_lora_train.errors import CaptionPHIError

    with pytest.raises(CaptionPHIError):
        training.before_after(context, "chest_ct", "CT of the chest, born 1961-04-12")


def test_training_previews_are_shown_and_erased_with_the_adapter(context, prepared):
    from lib_lora_train.ui import adapters, render

    options = dict(FAST_OPTIONS, sample_prompt="CT scan of chest")
    config = training.build_config(context, prepared.dataset_id, RECORD, options)
    job_id = training.start_training(context, config, user=None)
    assert context.state.jobs.wait(job_id, timeout=300).state == "done"
    view = training.job_view(context, job_id)
    assert view.sample is not None and view.sample.name.startswith("epoch_")
    assert render.sample(view.sample).count("data:image/png;base64,") == 1
    adapters.delete_adapter(context, "chest_ct", user=None)
    assert not (context.home.adapters_dir / "chest_ct").exists()
    assert render.sample(view.sample) == ""
