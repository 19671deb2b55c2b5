"""Tests of lib_lora_train/hosts/single_file.py: layout detection and LDM key conversion.

The shipped SD 1.5 configs are checked against the key list of a real SD 1.5 checkpoint
(``sd15_ldm_keys.txt``: key, dtype, shape) on the meta device, so no weights are needed.
"""

import json
import pathlib

import pytest

torch = pytest.importorskip("torch", reason="conversion needs torch")
pytest.importorskip("diffusers", reason="conversion needs diffusers")

from lib_lora_train.hosts.components import (
    COMPONENT_NAMES,
    ModelLoadError,
    instantiate_component,
    load_component_configs,
    match_state_dict,
)
from lib_lora_train.hosts.single_file import (
    convert_to_diffusers,
    detect_layout,
    resolve_prediction_type,
    shipped_config_dir,
)
from tests.hosts.tiny_checkpoint import to_ldm_state_dict

KEYS_FILE = pathlib.Path(__file__).resolve().parent.parent / "data" / "sd15_ldm_keys.txt"
MODEL_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")
DTYPES = {"float16": torch.float16, "float32": torch.float32, "int64": torch.int64, "int32": torch.int32}


def _real_sd15_shapes():
    entries = {}
    for line in KEYS_FILE.read_text().splitlines():
        key, dtype, shape = line.split()
        entries[key] = (DTYPES[dtype], tuple(json.loads(shape)))
    return entries


def _meta_modules(version):
    configs = load_component_configs(shipped_config_dir(version))
    with torch.device("meta"):
        modules = {name: instantiate_component(name, configs[name]) for name in COMPONENT_NAMES}
    return configs, modules


@pytest.fixture(scope="module")
def sd15():
    return _meta_modules("sd_v1")


def test_shipped_sd15_configs_map_onto_every_real_sd15_key(sd15):
    configs, modules = sd15
    ours = {key: tuple(value.shape) for key, value in to_ldm_state_dict(modules, configs, "sd1").items()
            if key.startswith(MODEL_PREFIXES)}
    real = {key: shape for key, (_, shape) in _real_sd15_shapes().items() if key.startswith(MODEL_PREFIXES)}
    assert ours == real


def test_real_sd15_keys_convert_to_the_shipped_modules(sd15):
    configs, modules = sd15
    entries = _real_sd15_shapes()
    layout = detect_layout({key: shape for key, (_, shape) in entries.items()}, "v1-5.safetensors")
    assert (layout.base_model_version, layout.context_dim, layout.in_channels) == ("sd_v1", 768, 4)
    checkpoint = {key: torch.empty(shape, dtype=dtype, device="meta") for key, (dtype, shape) in entries.items()}
    converted = convert_to_diffusers(checkpoint, configs, layout)
    for name in COMPONENT_NAMES:
        matched = match_state_dict(name, modules[name], converted[name], "v1-5.safetensors")
        assert set(matched) == set(modules[name].state_dict()), name


def test_shipped_sd21_configs_round_trip_through_the_openclip_layout():
    configs, modules = _meta_modules("sd_v2")
    checkpoint = to_ldm_state_dict(modules, configs, "sd2")
    assert "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight" in checkpoint
    layout = detect_layout({key: tuple(value.shape) for key, value in checkpoint.items()}, "v2-1_768.safetensors")
    assert (layout.base_model_version, layout.context_dim) == ("sd_v2", 1024)
    converted = convert_to_diffusers(checkpoint, configs, layout)
    for name in COMPONENT_NAMES:
        matched = match_state_dict(name, modules[name], converted[name], "v2-1_768.safetensors")
        assert set(matched) == set(modules[name].state_dict()), name
    assert modules["unet"].config.use_linear_projection and modules["text_encoder"].config.num_hidden_layers == 23


def test_tiny_round_trip_is_bit_identical(tiny_sd1, tiny_sd2):
    from lib_lora_train.hosts.embedded import tiny_configs
    from lib_lora_train.hosts.tokenizer import build_tiny_bpe

    for variant, (_, _, modules) in (("sd1", tiny_sd1), ("sd2", tiny_sd2)):
        configs = tiny_configs(len(build_tiny_bpe()[0]), variant)
        checkpoint = to_ldm_state_dict(modules, configs, variant)
        layout = detect_layout({k: tuple(v.shape) for k, v in checkpoint.items()}, "tiny")
        converted = convert_to_diffusers(checkpoint, configs, layout)
        for name in COMPONENT_NAMES:
            expected = modules[name].state_dict()
            matched = match_state_dict(name, modules[name], converted[name], "tiny")
            assert set(matched) == set(expected), (variant, name)
            assert all(torch.equal(matched[key], expected[key]) for key in expected), (variant, name)


@pytest.mark.parametrize("shapes, message", [
    ({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": (4, 8)}, "LoRA/LyCORIS adapter"),
    ({"unet.down_blocks.0.attentions.0.to_q.lora_A.weight": (4, 8)}, "LoRA/LyCORIS adapter"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
      "conditioner.embedders.1.model.ln_final.weight": (1280,)}, "SDXL is not supported yet"),
    ({"conv_in.weight": (320, 4, 3, 3)}, "single component"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (320, 8, 3, 3)}, "instruct-pix2pix"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
      "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3)}, "no text encoder"),
])
def test_detect_layout_refuses(shapes, message):
    with pytest.raises(ModelLoadError, match=message):
        detect_layout(shapes, "file.safetensors")


@pytest.mark.parametrize("version, requested, expected", [
    ("sd_v1", "auto", "epsilon"),
    ("sd_v2", "auto", "v_prediction"),
    ("sd_v2", "epsilon", "epsilon"),
    ("sd_v1", "v_prediction", "v_prediction"),
])
def test_resolve_prediction_type_without_yaml(tmp_path, version, requested, expected):
    prediction, rule = resolve_prediction_type(tmp_path / "model.safetensors", version, requested)
    assert prediction == expected and str(tmp_path) not in rule


def test_unsupported_yaml_parameterization_is_refused(tmp_path):
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    parameterization: x0\n")
    with pytest.raises(ModelLoadError, match="parameterization 'x0'"):
        resolve_prediction_type(tmp_path / "model.safetensors", "sd_v2")
