"""Tests of lib_lora_train/hosts/diffusers_host.py: the embedded model and single-file loading."""

import socket

import pytest

torch = pytest.importorskip("torch", reason="the diffusers host needs torch")
pytest.importorskip("diffusers", reason="the diffusers host needs diffusers")

from lib_lora_train.hosts import embedded
from lib_lora_train.hosts.base import PREDICTION_TYPES, ModelHost, fingerprint_modules
from lib_lora_train.hosts.cache import sha256_file
from lib_lora_train.hosts.diffusers_host import DiffusersHost, ModelLoadError
from tests.hosts.tiny_checkpoint import write_config_dir, write_tiny_checkpoint


def _fingerprint(host):
    return fingerprint_modules(host.modules_to_fingerprint())


def _bare(state_dict):
    return {key.removeprefix("text_model."): value for key, value in state_dict.items()}


def test_network_is_blocked():
    with pytest.raises(RuntimeError, match="network access attempted"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)


# Embedded model ------------------------------------------------------------------------------


def test_embedded_host_implements_the_protocol(embedded_host):
    assert isinstance(embedded_host, ModelHost)
    facts = embedded_host.facts
    assert (facts.base_model_version, facts.is_v2, facts.native_resolution) == ("sd_v1", False, 64)
    assert (facts.architecture, facts.unet_naming) == ("stable-diffusion-v1/lora", "diffusers")
    assert len(facts.model_hash) == 64
    assert embedded_host.prediction_type == "epsilon" and embedded_host.prediction_type in PREDICTION_TYPES


def test_embedded_weights_are_frozen_and_in_eval_mode(embedded_host):
    for _, module in embedded_host.modules_to_fingerprint():
        assert not module.training
        assert not any(param.requires_grad for param in module.parameters())


def test_embedded_build_is_deterministic_across_cache_dirs(embedded_host, tmp_path):
    other = DiffusersHost.embedded(tmp_path)
    assert _fingerprint(other) == _fingerprint(embedded_host)
    assert other.facts.model_hash == embedded_host.facts.model_hash


def test_embedded_build_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    DiffusersHost.embedded(tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_embedded_cache_is_reused(embedded_host, embedded_cache, monkeypatch):
    def refuse(folder, seed=0):
        raise AssertionError("the cached embedded model was rebuilt")

    monkeypatch.setattr(embedded, "build_embedded_folder", refuse)
    again = DiffusersHost.embedded(embedded_cache)
    assert _fingerprint(again) == _fingerprint(embedded_host)


@pytest.mark.parametrize("damage", ["flip_byte", "delete_manifest", "truncate_vocab"])
def test_damaged_embedded_cache_is_rebuilt(embedded_host, tmp_path, monkeypatch, damage):
    DiffusersHost.embedded(tmp_path)
    folder = tmp_path / embedded.EMBEDDED_FOLDER
    if damage == "flip_byte":
        weights = folder / "unet" / embedded.WEIGHTS_NAME
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0x01
        weights.write_bytes(bytes(data))
    elif damage == "delete_manifest":
        (folder / "manifest.json").unlink()
    else:
        (folder / "tokenizer" / "vocab.json").write_text("{}")
    builds = []
    original = embedded.build_embedded_folder
    monkeypatch.setattr(embedded, "build_embedded_folder", lambda path, seed=0: builds.append(1) or original(path))
    rebuilt = DiffusersHost.embedded(tmp_path)
    assert builds == [1]
    assert _fingerprint(rebuilt) == _fingerprint(embedded_host)


def test_encode_images_shape_dtype_and_determinism(embedded_host):
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    first = embedded_host.encode_images(pixels, generator=torch.Generator().manual_seed(0))
    second = embedded_host.encode_images(pixels, generator=torch.Generator().manual_seed(0))
    mean = embedded_host.encode_images(pixels, sample=False)
    assert first.shape == (2, 4, 8, 8) and first.dtype == torch.float32
    assert torch.equal(first, second) and not torch.equal(first, mean)
    assert not first.requires_grad


def test_encode_prompts_shape_and_padding(embedded_host):
    conditioning = embedded_host.encode_prompts(["axial ct scan of the chest, lung window", "brain mri"])
    assert conditioning.shape == (2, 77, 32) and conditioning.dtype == torch.float32
    assert not conditioning.requires_grad
    single = embedded_host.encode_prompts("brain mri")
    assert torch.allclose(single[0], conditioning[1], atol=1e-6)
    long = embedded_host.encode_prompts(["chest " * 200])
    assert long.shape == (1, 77, 32)


def test_encode_prompts_tracks_gradients_only_for_trainable_text_encoder(tmp_path):
    host = DiffusersHost.embedded(tmp_path)
    host.text_encoder.get_input_embeddings().weight.requires_grad_(True)
    assert host.encode_prompts(["chest"]).requires_grad


def test_predict_shape_and_gradients_flow(tmp_path):
    # Speed is measured by bench/train_step.py, never by a timed test.
    host = DiffusersHost.embedded(tmp_path)
    host.unet.conv_out.weight.requires_grad_(True)
    latents = torch.randn(1, 4, 8, 8)
    output = host.predict(latents, torch.tensor([500]), host.encode_prompts(["chest"]))
    output.square().mean().backward()
    assert output.shape == latents.shape
    assert host.unet.conv_out.weight.grad is not None


def test_alphas_cumprod_is_the_sd_schedule(embedded_host):
    alphas = embedded_host.alphas_cumprod
    assert alphas.dtype == torch.float64 and alphas.device.type == "cpu" and alphas.shape == (1000,)
    assert bool((alphas[1:] < alphas[:-1]).all())
    assert alphas[0].item() == pytest.approx(1 - 0.00085, rel=1e-5)
    assert alphas[-1].item() == pytest.approx(0.0047, abs=2e-4)


def test_fingerprint_is_stable_and_sees_one_changed_weight(embedded_host, tmp_path):
    host = DiffusersHost.embedded(tmp_path)
    before = _fingerprint(host)
    assert _fingerprint(host) == before
    with torch.no_grad():
        weight = host.unet.conv_in.weight
        weight[0, 0, 0, 0] = torch.nextafter(weight[0, 0, 0, 0], torch.tensor(2.0))
    assert _fingerprint(host) != before


def test_generate_returns_a_deterministic_image(embedded_host):
    image = embedded_host.generate("axial ct chest", seed=3, steps=3)
    again = embedded_host.generate("axial ct chest", seed=3, steps=3)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert image.tobytes() == again.tobytes()


def test_generate_works_with_a_peft_lora_injected(tmp_path):
    peft = pytest.importorskip("peft", reason="LoRA injection needs peft")
    host = DiffusersHost.embedded(tmp_path)
    before = host.generate("chest", seed=1, steps=2)
    config = peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                             init_lora_weights=False)
    host.unet = peft.inject_adapter_in_model(config, host.unet)
    host.unet.train()
    after = host.generate("chest", seed=1, steps=2)
    assert after.size == (64, 64) and after.tobytes() != before.tobytes()
    assert host.unet.training


def test_close_releases_modules(tmp_path):
    with DiffusersHost.embedded(tmp_path) as host:
        assert host.unet is not None
    assert host.unet is None and host.vae is None and host.text_encoder is None


# Single files --------------------------------------------------------------------------------


def _assert_same_weights(host, modules):
    for name, module in modules.items():
        expected, loaded = _bare(module.state_dict()), _bare(getattr(host, name).state_dict())
        assert expected.keys() == loaded.keys(), name
        assert all(torch.equal(expected[key], loaded[key]) for key in expected), name


def _assert_same_outputs(host, modules):
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = modules["vae"].encode(pixels).latent_dist.mean * 0.18215
        ids = host.tokenizer(["ct chest"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        hidden = modules["text_encoder"](ids)[0]
        noise = modules["unet"](latents, torch.tensor([10]), encoder_hidden_states=hidden).sample
        assert torch.allclose(host.encode_images(pixels, sample=False), latents, atol=1e-6)
        assert torch.allclose(host.encode_prompts(["ct chest"]), hidden, atol=1e-6)
        assert torch.allclose(host.predict(latents, torch.tensor([10]), hidden), noise, atol=1e-6)


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_tiny_sd1_single_file_matches_its_source_model(tmp_path, fmt):
    checkpoint, config_dir, modules = write_tiny_checkpoint(tmp_path / "files", "sd1", fmt)
    host = DiffusersHost.from_single_file(checkpoint, tmp_path / "cache", config_dir=config_dir)
    _assert_same_weights(host, modules)
    _assert_same_outputs(host, modules)
    assert host.prediction_type == "epsilon" and "SD 1.x" in host.prediction_rule
    assert (host.facts.base_model_version, host.facts.is_v2) == ("sd_v1", False)
    assert host.facts.display_name == "tiny-sd1"
    assert host.facts.model_hash == sha256_file(checkpoint)
    for _, module in host.modules_to_fingerprint():
        assert not module.training and not any(p.requires_grad for p in module.parameters())


def test_legacy_format_ckpt_loads(tiny_sd1, tmp_path):
    checkpoint, config_dir, modules = tiny_sd1
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": _ldm_state(checkpoint)}, str(legacy), _use_new_zipfile_serialization=False)
    host = DiffusersHost.from_single_file(legacy, tmp_path / "cache", config_dir=config_dir)
    _assert_same_weights(host, modules)


def test_tiny_sd2_single_file_matches_its_source_model(tiny_sd2, tmp_path):
    checkpoint, config_dir, modules = tiny_sd2
    host = DiffusersHost.from_single_file(checkpoint, tmp_path, config_dir=config_dir)
    _assert_same_weights(host, modules)
    _assert_same_outputs(host, modules)
    assert host.prediction_type == "v_prediction" and "without a .yaml" in host.prediction_rule
    assert host.facts.architecture == "stable-diffusion-v2-768-v/lora" and host.facts.is_v2
    assert host.tokenizer.pad_token == "!"
    assert host.generate("chest", seed=0, steps=2).size == (64, 64)


@pytest.mark.parametrize("variant, yaml_text, expected", [
    ("sd2", 'model:\n  params:\n    parameterization: "eps"\n', "epsilon"),
    ("sd2", "model:\n  params:\n    parameterization: 'v'  # 768-v\n", "v_prediction"),
    ("sd2", "model:\n  params:\n    linear_start: 0.00085\n", "epsilon"),
    ("sd1", 'model:\n  params:\n    parameterization: "v"\n', "v_prediction"),
])
def test_prediction_type_from_yaml_beside_the_checkpoint(tmp_path, variant, yaml_text, expected):
    checkpoint, config_dir, _ = write_tiny_checkpoint(tmp_path, variant)
    checkpoint.with_suffix(".yaml").write_text(yaml_text)
    host = DiffusersHost.from_single_file(checkpoint, tmp_path / "cache", config_dir=config_dir)
    assert host.prediction_type == expected
    assert host.prediction_rule.startswith("the .yaml beside the checkpoint")
    assert host.scheduler_config["prediction_type"] == expected


def test_explicit_prediction_type_wins(tiny_sd2, tmp_path):
    checkpoint, config_dir, _ = tiny_sd2
    host = DiffusersHost.from_single_file(checkpoint, tmp_path, config_dir=config_dir, prediction_type="epsilon")
    assert (host.prediction_type, host.prediction_rule) == ("epsilon", "set explicitly: epsilon")
    assert host.facts.architecture == "stable-diffusion-v2-512/lora"
    with pytest.raises(ModelLoadError, match="prediction_type='x0' is not valid"):
        DiffusersHost.from_single_file(checkpoint, tmp_path, config_dir=config_dir, prediction_type="x0")


# Refused files ---------------------------------------------------------------------------------


def _save(path, tensors):
    from safetensors.torch import save_file

    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return path


def _ldm_state(checkpoint):
    from safetensors.torch import load_file

    return load_file(str(checkpoint))


class _Callback:
    """Stands for the pytorch_lightning objects some old .ckpt files pickle."""


def _bad_file(kind, folder, tiny_sd1):
    checkpoint = tiny_sd1[0]
    if kind == "missing":
        return folder / "absent.safetensors"
    if kind == "random":
        path = folder / "random.safetensors"
        path.write_bytes(bytes(range(256)) * 64)
        return path
    if kind == "truncated":
        path = folder / "truncated.safetensors"
        path.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
        return path
    if kind == "lora":
        return _save(folder / "my_lora.safetensors", {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
            "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 32)})
    if kind == "pickled_objects":
        path = folder / "old.ckpt"
        torch.save({"state_dict": {"x": torch.zeros(1)}, "callbacks": _Callback()}, str(path))
        return path
    state = _ldm_state(checkpoint)
    if kind == "sdxl":
        state = {k.replace("cond_stage_model.transformer.", "conditioner.embedders.1.model."): v for k, v in state.items()}
    elif kind == "inpainting":
        state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 9, 3, 3)
    elif kind == "unknown":
        state = {k.removeprefix("model.diffusion_model."): v for k, v in state.items() if "diffusion_model" in k}
    elif kind == "no_vae":
        state = {k: v for k, v in state.items() if not k.startswith("first_stage_model.")}
    return _save(folder / f"{kind}.safetensors", state)


@pytest.mark.parametrize("kind, message", [
    ("missing", r"checkpoint absent\.safetensors not found"),
    ("random", r"random\.safetensors is not a model checkpoint"),
    ("truncated", r"truncated\.safetensors is damaged or truncated"),
    ("lora", r"my_lora\.safetensors is a LoRA/LyCORIS adapter, not a base model"),
    ("sdxl", r"sdxl\.safetensors is an SDXL checkpoint: SDXL is not supported yet"),
    ("inpainting", r"inpainting\.safetensors is an inpainting model \(9 UNet input channels\)"),
    ("unknown", r"unknown\.safetensors has an unknown layout"),
    ("no_vae", r"no_vae\.safetensors has no VAE"),
    ("pickled_objects", r"old\.ckpt holds Python objects that cannot be loaded safely"),
])
def test_refused_files_say_why_by_base_name_only(tiny_sd1, tmp_path, kind, message):
    folder = tmp_path / "Doe_John_private"
    folder.mkdir()
    path = _bad_file(kind, folder, tiny_sd1)
    with pytest.raises(ModelLoadError, match=message) as caught:
        DiffusersHost.from_single_file(path, tmp_path / "cache", config_dir=tiny_sd1[1])
    assert "Doe_John" not in str(caught.value) and str(tmp_path) not in str(caught.value)
    assert isinstance(caught.value, RuntimeError)


def test_configs_of_another_width_are_refused(tiny_sd1, tmp_path):
    with pytest.raises(ModelLoadError, match="text context is 32 wide but the sd_v1 configuration expects 768"):
        DiffusersHost.from_single_file(tiny_sd1[0], tmp_path)


def test_real_clip_vocabulary_is_used_without_a_local_one(tiny_sd1, tmp_path):
    from lib_lora_train.hosts.tokenizer import find_clip_bpe_file

    try:
        find_clip_bpe_file()
    except ModelLoadError:
        pytest.skip("clip-anytorch is not installed (pip install --no-deps clip-anytorch)")
    checkpoint, config_dir, modules = tiny_sd1
    configs = {"tokenizer": {"model_max_length": 77, "pad_token": "<|endoftext|>"}}
    shipped_like = write_config_dir(tmp_path / "configs", _configs_of(config_dir) | configs, modules)
    for name in ("vocab.json", "merges.txt"):
        (shipped_like / "tokenizer" / name).unlink()
    with pytest.raises(ModelLoadError, match="the tokenizer has 49408 tokens but the text encoder only"):
        DiffusersHost.from_single_file(checkpoint, tmp_path / "cache", config_dir=shipped_like)
    assert (tmp_path / "cache" / "clip-vocab-v1" / "vocab.json").is_file()


def test_missing_clip_anytorch_names_the_install_command(tiny_sd1, tmp_path, monkeypatch):
    import importlib.metadata
    import importlib.util

    from lib_lora_train.hosts import tokenizer

    def no_distribution(name):
        raise importlib.metadata.PackageNotFoundError(name)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(tokenizer.importlib.metadata, "distribution", no_distribution)
    monkeypatch.setattr(tokenizer.importlib.util, "find_spec",
                        lambda name, *args: None if name == "clip" else real_find_spec(name, *args))
    checkpoint, config_dir, modules = tiny_sd1
    shipped_like = write_config_dir(tmp_path / "configs", _configs_of(config_dir), modules)
    (shipped_like / "tokenizer" / "vocab.json").unlink()
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps clip-anytorch"):
        DiffusersHost.from_single_file(checkpoint, tmp_path / "cache", config_dir=shipped_like)


def _configs_of(config_dir):
    from lib_lora_train.hosts.components import load_component_configs, read_json

    configs = load_component_configs(config_dir)
    configs["tokenizer"] = read_json(config_dir / "tokenizer" / "tokenizer_config.json", "tokenizer config")
    return configs
