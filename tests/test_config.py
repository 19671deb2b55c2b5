"""IngestConfig and TrainConfig validation: every bad value named with what is allowed."""

import dataclasses
import json
import os
import pathlib

import pytest

from lib_lora_train.config import IngestConfig, TrainConfig, field_help, load_config
from lib_lora_train.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]


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



# ---------------------------------------------------------------- TrainConfig


@pytest.fixture
def in_repo(monkeypatch):
    """Run from the project root, as the seed does, so relative paths resolve there."""
    monkeypatch.chdir(REPO)
    return REPO


def write_yaml(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_nested_seed_file_loads(in_repo):
    config = load_config("configs/medical_lora.yaml")
    assert config.base_model == str(REPO / "models/Stable-diffusion/v1-5-pruned.safetensors")
    assert (config.lora_rank, config.lora_alpha, config.batch_size, config.epochs) == (8, 16.0, 1, 10)
    assert config.learning_rate == 1e-4 and isinstance(config.learning_rate, float)
    assert config.freeze_modules == ("vae", "text_encoder", "unet")
    assert config.train_text_encoder is False
    assert config.train_data_dir == str(REPO / "data/medical_dataset")
    assert config.output_dir == str(REPO / "output/medical_art_lora")
    assert config.adapter_name() == "medical_art_lora"
    assert config.resolved_metadata_path() == str(REPO / "data/medical_dataset/metadata.csv")


def test_flat_seed_file_loads(in_repo):
    config = load_config("configs/my_lora_config.yaml")
    assert config.base_model == "embedded"
    assert config.metadata_path == str(REPO / "data/medical_dataset/metadata.csv")
    assert config.resolved_metadata_path() == config.metadata_path
    assert (config.lora_rank, config.batch_size, config.epochs) == (8, 1, 10)
    assert config.adapter_name() == "medical_art_lora"


def test_demo_file_is_small_and_embedded(in_repo):
    config = load_config("configs/demo.yaml")
    assert config.base_model == "embedded"
    assert config.resolution == 64 and config.lora_rank == 4
    assert config.mixed_precision == "no"
    assert 60 <= config.epochs * 18 // config.batch_size <= 120  # the demo's 18 phantom slices


def test_defaults_are_valid():
    config = TrainConfig()
    assert config.adapter_name() == "medical_art_lora"
    assert config.target_modules == ("to_q", "to_k", "to_v", "to_out.0")
    assert config.random_flip is False and config.cache_latents is True


def test_every_train_field_has_help():
    assert all(text for text in field_help(TrainConfig).values())


BAD_TRAIN_VALUES = [
    # model
    ("base_model", "", "base_model='' must be a non-empty text"),
    ("base_model", None, "base_model=None must be a non-empty text"),
    ("prediction_type", "sample", "prediction_type='sample' is not allowed; choose one of: auto, epsilon, v_pred"),
    ("device", "gpu", "device='gpu' is not allowed; choose one of: auto, cpu, cuda, cuda:N"),
    ("device", "cuda:x", "device='cuda:x' is not allowed"),
    ("mixed_precision", "fp8", "mixed_precision='fp8' is not allowed; choose one of: auto, no, fp16, bf16"),
    ("mixed_precision", False, "mixed_precision=False is not allowed"),
    # data
    ("train_data_dir", "", "train_data_dir='' must be a non-empty text"),
    ("train_data_dir", 3, "train_data_dir=3 must be a non-empty text .or null to unset.; put numbers in quotes"),
    ("metadata_path", [], r"metadata_path=\[\] must be a non-empty text"),
    ("resolution", 500, "resolution=500 must be a multiple of 8"),
    ("resolution", 32, "resolution=32 must be at least 64 and at most 2048"),
    ("resolution", 4096, "resolution=4096 must be at least 64 and at most 2048"),
    ("resolution", "512", "resolution='512' must be a whole number"),
    ("random_flip", "no", "random_flip='no' must be true or false"),
    # lora
    ("lora_rank", 0, "lora_rank=0 must be at least 1 and at most 1024"),
    ("lora_rank", 2048, "lora_rank=2048 must be at least 1 and at most 1024"),
    ("lora_rank", "8", "lora_rank='8' must be a whole number"),
    ("lora_rank", 8.0, "lora_rank=8.0 must be a whole number"),
    ("lora_alpha", 0, "lora_alpha=0 must be a number greater than 0"),
    ("lora_alpha", "big", "lora_alpha='big' must be a number greater than 0"),
    ("lora_alpha", True, "lora_alpha=True must be a number"),
    ("lora_dropout", 1.0, "lora_dropout=1.0 must be a number at least 0 and less than 1"),
    ("lora_dropout", -0.1, "lora_dropout=-0.1 must be a number at least 0"),
    ("target_modules", [], r"target_modules=\[\] must be a non-empty list of module names"),
    ("target_modules", "to_q", "target_modules='to_q' must be a non-empty list"),
    ("target_modules", ["to_q", ""], "target_modules entry '' must be a non-empty module name"),
    ("target_modules", ["to_q", 3], "target_modules entry 3 must be a non-empty module name"),
    ("train_text_encoder", 1, "train_text_encoder=1 must be true or false"),
    ("text_encoder_target_modules", None, "text_encoder_target_modules=None must be a non-empty list"),
    ("freeze_modules", ["vae", "text_encoder"], "full fine-tuning of 'unet' is not supported; only LoRA adapters"),
    ("freeze_modules", ["text_encoder", "unet"], "full fine-tuning of 'vae' is not supported"),
    ("freeze_modules", [], r"freeze_modules=\[\] must be a non-empty list"),
    ("freeze_modules", ["vae", "unet", "clip"],
     "freeze_modules entry 'clip' is not allowed; choose from: vae, text_encoder, unet"),
    # training
    ("batch_size", 0, "batch_size=0 must be at least 1 and at most 256"),
    ("batch_size", 257, "batch_size=257 must be at least 1 and at most 256"),
    ("gradient_accumulation_steps", 0, "gradient_accumulation_steps=0 must be at least 1"),
    ("epochs", 0, "epochs=0 must be at least 1"),
    ("epochs", None, "epochs=None must be a whole number"),
    ("max_steps", 0, r"max_steps=0 must be at least 1 \(or null to unset\)"),
    ("learning_rate", 0, "learning_rate=0 must be a number greater than 0 and less than 1"),
    ("learning_rate", 1, "learning_rate=1 must be a number greater than 0 and less than 1"),
    ("learning_rate", "1e-4x", "learning_rate='1e-4x' must be a number"),
    ("learning_rate", "nan", "learning_rate='nan' must be a number"),
    ("learning_rate", None, "learning_rate=None must be a number"),
    ("lr_scheduler", "cosine_2", "lr_scheduler='cosine_2' is not allowed; choose one of: constant, constant_with_warmup, co"),
    ("lr_warmup_steps", -1, "lr_warmup_steps=-1 must be at least 0"),
    ("optimizer", "sgd", "optimizer='sgd' is not allowed; choose one of: adamw, adamw8bit, auto"),
    ("adam_weight_decay", -0.01, "adam_weight_decay=-0.01 must be a number between 0 and 1"),
    ("max_grad_norm", 0, "max_grad_norm=0 must be a number greater than 0"),
    ("max_grad_norm", "inf", "max_grad_norm='inf' must be a number greater than 0"),
    ("gradient_checkpointing", "yes", "gradient_checkpointing='yes' must be true or false"),
    ("snr_gamma", 0, r"snr_gamma=0 must be a number greater than 0, e.g. 5.0 \(or null to unset\)"),
    ("noise_offset", 1.5, "noise_offset=1.5 must be a number between 0 and 1"),
    ("seed", -1, "seed=-1 must be at least 0 and at most 4294967295"),
    ("seed", 2**32, "must be at least 0 and at most 4294967295"),
    ("early_stopping_patience", 0, r"early_stopping_patience=0 must be at least 1 \(or null to unset\)"),
    ("early_stopping_min_delta", -1, "early_stopping_min_delta=-1 must be a number at least 0"),
    ("checkpointing_steps", 0, "checkpointing_steps=0 must be at least 1"),
    ("resume_from_checkpoint", "", "resume_from_checkpoint='' must be a non-empty text"),
    ("cache_latents", None, "cache_latents=None must be true or false"),
    # output
    ("output_dir", "", "output_dir='' must be a non-empty text"),
    ("output_dir", "./output/my lora", "output_dir ends in 'my lora', which is not a valid adapter name"),
    ("output_dir", ".", "output_dir ends in '.', which is not a valid adapter name"),
    ("name", "bad name", "name='bad name' is not a valid adapter name .*; use 1 to 64 letters"),
    ("save_dtype", "int8", "save_dtype='int8' is not allowed; choose one of: fp16, bf16, fp32"),
    ("sample_prompt", "", "sample_prompt='' must be a non-empty text"),
    ("sample_every_epochs", 0, "sample_every_epochs=0 must be at least 1"),
    # registry
    ("purpose", "x" * 201, "purpose is 201 characters long; at most 200 are allowed"),
    ("owner", 42, "owner=42 must be a non-empty text"),
    ("department", "", "department='' must be a non-empty text"),
    ("legal_basis", ["art6"], "legal_basis=.* must be a non-empty text"),
    ("dpia_reference", "y" * 201, "dpia_reference is 201 characters long"),
    ("expires", "31.12.2026", "expires='31.12.2026' must be a date written YYYY-MM-DD"),
    ("expires", "2026-02-30", "expires='2026-02-30' must be a date written YYYY-MM-DD"),
    ("expires", "20261231", "expires='20261231' must be a date"),
]


def test_bad_value_table_covers_every_field():
    assert {key for key, _, _ in BAD_TRAIN_VALUES} == set(field_help(TrainConfig))


@pytest.mark.parametrize("key, value, message", BAD_TRAIN_VALUES, ids=lambda v: str(v)[:30])
def test_bad_train_values_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({key: value})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"max_steps": 10, "lr_warmup_steps": 20}, "lr_warmup_steps=20 is more than max_steps=10"),
        ({"sample_every_epochs": 2}, "sample_every_epochs=2 needs a sample_prompt"),
    ],
)
def test_cross_field_rules(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("learning_rate", "1e-4", 1e-4),
        ("learning_rate", " 5e-5 ", 5e-5),
        ("lora_alpha", 16, 16.0),
        ("lora_alpha", "32", 32.0),
        ("snr_gamma", "5", 5.0),
        ("noise_offset", 0, 0.0),
    ],
)
def test_numeric_text_becomes_float(key, text, expected):
    value = getattr(TrainConfig(**{key: text}), key)
    assert value == expected and type(value) is float


@pytest.mark.parametrize(
    "name, valid",
    [
        ("medical_art_lora", True),
        ("ct-lung.v2", True),
        ("_x", True),
        ("a" * 64, True),
        ("bad name", False),
        ("a:b", False),
        ("<x>", False),
        ("../x", False),
        ("a/b", False),
        ("a\\b", False),
        (".hidden", False),
        ("", False),
        ("a" * 65, False),
        (7, False),
    ],
)
def test_adapter_name_validation(name, valid):
    if valid:
        assert TrainConfig(name=name).adapter_name() == name
    else:
        with pytest.raises(ConfigError, match="not a valid adapter name .*; use 1 to 64 letters"):
            TrainConfig(name=name)


@pytest.mark.parametrize(
    "output_dir, expected",
    [
        ("./output/medical_art_lora", "medical_art_lora"),
        ("./output/medical_art_lora/", "medical_art_lora"),
        ("/srv/adapters/ct-lung.v2", "ct-lung.v2"),
        ("lungs", "lungs"),
    ],
)
def test_adapter_name_derives_from_output_dir(output_dir, expected):
    assert TrainConfig(output_dir=output_dir).adapter_name() == expected


def test_explicit_name_wins_over_output_dir():
    assert TrainConfig(output_dir="./out/my lora", name="lungs").adapter_name() == "lungs"


def test_freeze_modules_without_text_encoder_trains_it():
    config = TrainConfig(freeze_modules=["vae", "unet"])
    assert config.train_text_encoder is True
    assert config.freeze_modules == ("vae", "unet")
    explicit = TrainConfig(freeze_modules=["vae", "unet"], train_text_encoder=False)
    assert explicit.train_text_encoder is True


def test_lists_become_tuples():
    config = TrainConfig(target_modules=["to_q", "to_v"], freeze_modules=["unet", "vae", "text_encoder"])
    assert config.target_modules == ("to_q", "to_v")
    assert config.freeze_modules == ("unet", "vae", "text_encoder")


def test_replace_validates_train_config_again():
    config = TrainConfig()
    assert dataclasses.replace(config, lora_rank=4).lora_rank == 4
    assert dataclasses.replace(config, learning_rate="2e-4").learning_rate == 2e-4
    with pytest.raises(ConfigError, match="lora_rank=0"):
        dataclasses.replace(config, lora_rank=0)
    with pytest.raises(ConfigError, match="keep 'unet' in freeze_modules"):
        dataclasses.replace(config, freeze_modules=("vae",))


def test_train_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lora_rank = 4


def test_to_dict_round_trips_through_json():
    config = TrainConfig(
        target_modules=["to_q", "to_v"], freeze_modules=["vae", "unet"], snr_gamma="5", name="lungs",
        expires="2026-12-31", purpose="teaching images", sample_prompt="ct scan", sample_every_epochs=2,
    )
    stored = json.loads(json.dumps(config.to_dict()))
    assert stored["target_modules"] == ["to_q", "to_v"]
    assert TrainConfig.from_dict(stored) == config


def test_from_dict_rejects_unknown_key_with_hint():
    with pytest.raises(ConfigError, match="unknown key 'lora_rnk'; did you mean 'lora_rank'"):
        TrainConfig.from_dict({"lora_rnk": 4})


def test_from_dict_lenient_drops_unknown_keys(caplog):
    config = TrainConfig.from_dict({"lora_rank": 4, "added_later": 1}, strict=False)
    assert config.lora_rank == 4
    assert "added_later" in caplog.text


def test_resolved_metadata_path():
    assert TrainConfig(train_data_dir="/d").resolved_metadata_path() == os.path.join("/d", "metadata.csv")
    assert TrainConfig(train_data_dir="/d", metadata_path="/m.csv").resolved_metadata_path() == "/m.csv"
    with pytest.raises(ConfigError, match="no training data: set train_data_dir"):
        TrainConfig().resolved_metadata_path()


def test_expires_accepts_a_yaml_date(tmp_path):
    assert load_config(write_yaml(tmp_path, "expires: 2026-12-31\n")).expires == "2026-12-31"


# ---------------------------------------------------------------- load_config


@pytest.mark.parametrize(
    "text, message",
    [
        ("train_config:\n  lora_rnk: 4\n", "unknown key 'lora_rnk' in train_config of .*; did you mean 'lora_rank'"),
        ("model_config:\n  base_modle: x\n", "unknown key 'base_modle' in model_config of .*did you mean 'base_model'"),
        ("lora_rnk: 4\n", "unknown key 'lora_rnk' at the top level of .*; did you mean 'lora_rank'"),
        ("train_confg:\n  lora_rank: 4\n", "unknown key 'train_confg' .*did you mean 'train_config'"),
        ("train_config:\n  model_config: {}\n", "unknown key 'model_config' in train_config"),
        ("model_config:\n  lora_rank: 8\ntrain_config:\n  lora_rank: 4\n",
         "key 'lora_rank' is set in both model_config and train_config; keep one"),
        ("lora_rank: 8\ntrain_config:\n  lora_rank: 4\n",
         "key 'lora_rank' is set in both the top level and train_config"),
        ("lora_rank: 8\nlora_rank: 4\n", "key 'lora_rank' appears twice"),
        ("train_config: 4\n", "train_config must hold keys such as 'lora_rank: 8'"),
        ("- lora_rank\n", "the file must hold keys such as"),
        ("train_config:\n  lora_rank: 0\n", r"config.yaml: lora_rank=0 must be at least 1"),
        ("learning_rate: fast\n", "learning_rate='fast' must be a number"),
    ],
)
def test_bad_files_are_named(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_yaml(tmp_path, text))


def test_sections_flatten(tmp_path):
    text = (
        "model_config:\n  lora_rank: 4\n"
        "data_config:\n  resolution: 256\n"
        "train_config:\n  epochs: 3\n"
        "output_config:\n  name: lungs\n"
        "seed: 7\n"
    )
    config = load_config(write_yaml(tmp_path, text))
    assert (config.lora_rank, config.resolution, config.epochs, config.name, config.seed) == (4, 256, 3, "lungs", 7)


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write_yaml(tmp_path, "")) == TrainConfig()


@pytest.mark.parametrize(
    "text, line",
    [
        ("lora_rank: 8\nepochs: [1, 2\n", 3),
        ("train_config:\n  lora_rank: 8\n   epochs: 3\n", 3),
        ("lora_rank: 8\nname: 'open\n", 3),
    ],
)
def test_yaml_syntax_error_names_the_line(tmp_path, text, line):
    with pytest.raises(ConfigError, match=rf"config.yaml is not valid YAML at line {line}, column \d+"):
        load_config(write_yaml(tmp_path, text))


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_non_utf8_file_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml is not UTF-8 text"):
        load_config(path)


def test_relative_paths_resolve_against_working_directory(tmp_path, monkeypatch):
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    path = write_yaml(
        config_dir,
        "base_model: models/sd.safetensors\ntrain_data_dir: data/set\noutput_dir: out/lungs\n"
        "resume_from_checkpoint: latest\n",
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(path)
    assert config.base_model == str(tmp_path / "models/sd.safetensors")
    assert config.train_data_dir == str(tmp_path / "data/set")
    assert config.output_dir == str(tmp_path / "out/lungs")
    assert config.resume_from_checkpoint == "latest"
    assert load_config(write_yaml(tmp_path, "base_model: embedded\n")).base_model == "embedded"


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("lora_rank=4", "lora_rank", 4),
        ("target_modules=[to_q,to_v]", "target_modules", ("to_q", "to_v")),
        ("snr_gamma=null", "snr_gamma", None),
        ("snr_gamma=5", "snr_gamma", 5.0),
        ("learning_rate=2e-4", "learning_rate", 2e-4),
        ("name=lungs", "name", "lungs"),
        ("train_config.epochs=3", "epochs", 3),
        ("sample_prompt=ct scan, lung window", "sample_prompt", "ct scan, lung window"),
        ("freeze_modules=[vae,unet]", "train_text_encoder", True),
    ],
)
def test_overrides_win_over_the_file(in_repo, override, key, expected):
    config = load_config("configs/medical_lora.yaml", overrides=["snr_gamma=1", override])
    assert getattr(config, key) == expected


@pytest.mark.parametrize(
    "override, message",
    [
        ("lora_rank", "override 'lora_rank' must be written key=value"),
        ("=4", "override '=4' must be written key=value"),
        ("lora_rnk=4", "unknown key 'lora_rnk' in --set; did you mean 'lora_rank'"),
        ("lora_rank=0", "lora_rank=0 must be at least 1"),
        ("lora_rank=four", "lora_rank='four' must be a whole number"),
        ("target_modules=[to_q", "override 'target_modules=\\[to_q': the value is not valid YAML"),
        ("freeze_modules=[vae]", "keep 'unet' in freeze_modules"),
    ],
)
def test_bad_overrides_are_named(in_repo, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/medical_lora.yaml", overrides=[override])
