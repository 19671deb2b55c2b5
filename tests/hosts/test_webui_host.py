"""``WebUIHost`` on the WebUI stand-in: refusals, unmerging the built-in Lora, training, exact restoration.

The stand-in ``sd_model`` is a ``LatentDiffusion`` whose UNet is a real LDM-layout ``UNetModel`` loaded
with the embedded tiny diffusers UNet's weights (converted to LDM names), so its outputs, module paths
and kohya names can be checked against the diffusers model itself.
"""

import contextlib
import copy
import importlib
import pathlib
import sys
import threading
import types

import numpy as np
import pytest
import torch
from PIL import Image

from lib_lora_train.errors import ModelLoadError
from lib_lora_train.export.kohya import peft_to_kohya
from lib_lora_train.hosts.base import fingerprint_modules
from lib_lora_train.hosts.webui_host import WebUIHost, escape_prompt
from lib_lora_train.lora.inject import LoraSpec, inject_lora
from lib_lora_train.train_config import TrainConfig
from lib_lora_train.trainer.data import TrainingExample
from lib_lora_train.errors import BaseModelChangedError
from lib_lora_train.trainer.loop import train_lora
from lib_lora_train.trainer.precision import resolve_precision
from tests.hosts.tiny_checkpoint import unet_to_ldm

STANDIN = pathlib.Path(__file__).resolve().parent.parent / "webui_standin"
STANDIN_ROOTS = ("modules", "ldm", "networks")
STANDIN_MODULES = ("modules.shared", "modules.devices", "modules.sd_unet", "modules.lowvram", "modules.sd_hijack",
                   "modules.sd_hijack_checkpoint", "modules.sd_hijack_unet", "modules.sd_hijack_clip", "networks",
                   "ldm.modules.attention", "ldm.modules.diffusionmodules.openaimodel", "ldm.models.diffusion.ddpm",
                   "ldm.models.autoencoder", "ldm.modules.encoders.modules")
CPU = resolve_precision("cpu", "no")
# The layer types whose forward the built-in Lora extension patches (lora_patches.py), MHA aside.
PATCHED_BY_LORA = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
ATTN_Q = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"


def _is_standin(name):
    return name.split(".", 1)[0] in STANDIN_ROOTS


@pytest.fixture(scope="module")
def webui():
    """The stand-in WebUI modules, imported for this test module only (``sys.modules`` restored after)."""
    saved = {name: module for name, module in sys.modules.items() if _is_standin(name)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(STANDIN))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; and no OpenMP spinning against other processes on a small machine
    try:
        yield types.SimpleNamespace(**{name.rsplit(".", 1)[-1]: importlib.import_module(name)
                                       for name in STANDIN_MODULES})
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(STANDIN))
        for name in [name for name in sys.modules if _is_standin(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def _build_sd_model(webui, host):
    """What ``sd_models.load_model`` leaves: a hijacked, eval-mode ``LatentDiffusion`` (fp32, CPU)."""
    unet = webui.openaimodel.UNetModel(4, 32, 4, num_res_blocks=2, attention_resolutions=(1,), channel_mult=(1, 2),
                                       num_heads=2, context_dim=32)
    state = unet_to_ldm(host.unet.state_dict(), host.unet.config)
    unet.load_state_dict({key.removeprefix("model.diffusion_model."): value for key, value in state.items()})
    embedder = webui.modules.FrozenCLIPEmbedder(host.tokenizer, copy.deepcopy(host.text_encoder))
    sd_model = webui.ddpm.LatentDiffusion(
        unet, webui.autoencoder.AutoencoderKL(copy.deepcopy(host.vae)),
        webui.sd_hijack_clip.FrozenCLIPEmbedderWithCustomWords(embedder, None), host.alphas_cumprod.float(),
        scale_factor=host.vae.config.scaling_factor)
    sd_model.alphas_cumprod_original = sd_model.alphas_cumprod
    sd_model.is_sd1, sd_model.is_sd2, sd_model.is_sdxl, sd_model.is_ssd, sd_model.is_sd3 = True, False, False, False, False
    sd_model.sd_checkpoint_info = types.SimpleNamespace(name_for_extra="tiny-sd1", sha256="ab" * 32, shorthash="ababababab")
    sd_model.lowvram = False
    return sd_model.eval()


@pytest.fixture
def sd_model(webui, embedded_host):
    """A freshly loaded stand-in checkpoint and a WebUI in its default state (optimizations applied)."""
    shared = webui.shared
    shared.opts.data.clear()
    # Prompts are still parsed; "Original" would divide by a zero mean: the tiny text encoder's final
    # LayerNorm has unit weight and zero bias, so every token's features average to exactly 0.
    shared.opts.data["emphasis"] = "Ignore"
    for flag in ("lowvram", "medvram"):
        setattr(shared.cmd_opts, flag, False)
    webui.devices.fp8 = False
    webui.sd_unet.current_unet = None
    webui.networks.loaded_networks.clear()
    webui.lowvram.module_in_gpu = None
    webui.sd_hijack_checkpoint.remove()
    webui.sd_hijack.apply_optimizations()
    shared.loaded_hypernetworks = []
    shared.sd_model = _build_sd_model(webui, embedded_host)
    webui.networks.assign_network_names_to_compvis_modules(shared.sd_model)
    return shared.sd_model


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    generator = np.random.default_rng(3)
    result = []
    for index, caption in enumerate(["mdl chest ct", "mdl (axial) chest ct"]):
        path = folder / f"{index}.png"
        Image.fromarray(generator.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        result.append(TrainingExample(path, caption))
    return result


def _config(tmp_path, **overrides):
    values = {"train_data_dir": str(tmp_path), "resolution": 64, "lora_rank": 4, "lora_alpha": 4.0,
              "learning_rate": 1e-3, "batch_size": 2, "max_steps": 3, "output_dir": str(tmp_path / "out" / "webui_lora"),
              "mixed_precision": "no", "device": "cpu"}
    values.update(overrides)
    return TrainConfig(**values)


def _weights(module):
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def test_standin_matches_the_diffusers_model(webui, sd_model, embedded_host):
    host = WebUIHost.from_shared(webui.shared)
    noisy = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([10, 700])
    conditioning = host.encode_prompts(["mdl chest ct", "a b"])
    assert torch.equal(conditioning, embedded_host.encode_prompts(["mdl chest ct", "a b"]))
    with torch.no_grad():
        expected = embedded_host.predict(noisy, timesteps, conditioning)
        assert torch.allclose(host.predict(noisy, timesteps, conditioning), expected, atol=1e-5)
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    torch.manual_seed(5)
    latents = host.encode_images(pixels)
    torch.manual_seed(5)
    assert torch.allclose(latents, embedded_host.encode_images(pixels), atol=1e-6)


UNSUPPORTED = [
    ("no model", lambda w, m: setattr(w.shared, "sd_model", None), "no checkpoint is loaded"),
    ("forge", lambda w, m: setattr(m, "forge_objects", None), "not available on Forge; ingest, registry and delete"),
    ("sd3", lambda w, m: setattr(m, "is_sd3", True), "Stable Diffusion 3"),
    ("sdxl", lambda w, m: setattr(m, "is_sdxl", True), "SDXL"),
    ("other", lambda w, m: setattr(m, "is_sd1", False), "not an SD 1.x or SD 2.x"),
    ("inpainting", lambda w, m: setattr(m.model.diffusion_model, "in_channels", 9), "inpainting or instruct-pix2pix"),
    ("pix2pix", lambda w, m: setattr(m.model, "conditioning_key", "hybrid"), "conditioning 'hybrid'"),
    ("tensorrt", lambda w, m: setattr(w.sd_unet, "current_unet", types.SimpleNamespace(
        option=types.SimpleNamespace(label="[TRT] tiny"))), r"replaced by '\[TRT\] tiny'.*SD Unet to 'None'"),
    ("lowvram", lambda w, m: setattr(w.shared.cmd_opts, "lowvram", True), "--lowvram.*--medvram works"),
    ("fp8 loaded", lambda w, m: setattr(w.devices, "fp8", True), "FP8 weight"),
    ("fp8 setting", lambda w, m: w.shared.opts.data.update(fp8_storage="Enable"), "set it to 'Disable'"),
]


@pytest.mark.parametrize("setup, match", [case[1:] for case in UNSUPPORTED], ids=[case[0] for case in UNSUPPORTED])
def test_unsupported_setups_say_why_and_what_to_do(webui, sd_model, setup, match):
    setup(webui, sd_model)
    with pytest.raises(ModelLoadError, match=match):
        WebUIHost.from_shared(webui.shared)


@pytest.mark.parametrize("is_sd2, parameterization, expected", [
    (False, "eps", ("sd_v1", "epsilon", "stable-diffusion-v1/lora", 512)),
    (True, "eps", ("sd_v2", "epsilon", "stable-diffusion-v2-512/lora", 512)),
    (True, "v", ("sd_v2", "v_prediction", "stable-diffusion-v2-768-v/lora", 768)),
])
def test_facts_and_parameterization(webui, sd_model, is_sd2, parameterization, expected):
    sd_model.is_sd1, sd_model.is_sd2, sd_model.parameterization = not is_sd2, is_sd2, parameterization
    sd_model.alphas_cumprod = sd_model.alphas_cumprod_original.half()  # apply_alpha_schedule_override
    host = WebUIHost.from_shared(webui.shared)
    facts = host.facts
    assert (facts.base_model_version, host.prediction_type, facts.architecture, facts.native_resolution) == expected
    assert (facts.unet_naming, facts.display_name, facts.model_hash) == ("ldm", "tiny-sd1", "ab" * 32)
    assert host.alphas_cumprod.dtype == torch.float64
    assert torch.equal(host.alphas_cumprod, sd_model.alphas_cumprod_original.double())
    assert (host.text_encoder is None) == is_sd2


def test_unknown_parameterization_is_refused(webui, sd_model):
    sd_model.parameterization = "x0"
    with pytest.raises(ModelLoadError, match="predicts 'x0'"):
        WebUIHost.from_shared(webui.shared)


def test_merged_builtin_lora_is_taken_out_before_training(webui, sd_model):
    checkpoint = _weights(sd_model)
    layer = sd_model.model.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn1.to_q
    delta = webui.networks.NetworkModuleDelta(torch.full_like(layer.weight, 0.5))
    webui.networks.loaded_networks.append(webui.networks.Network("other", {layer.network_layer_name: delta}))
    with torch.no_grad():  # what a generation's forwards do (lora_patches.py -> network_apply_weights)
        for module in sd_model.modules():
            if isinstance(module, PATCHED_BY_LORA):
                webui.networks.network_apply_weights(module)
    assert not torch.equal(layer.weight, checkpoint[f"model.{ATTN_Q}.weight"])
    host = WebUIHost.from_shared(webui.shared)
    with host.prepared_for_training():
        assert all(torch.equal(value, checkpoint[name]) for name, value in sd_model.state_dict().items())
        assert webui.networks.loaded_networks == [] and layer.network_weights_backup is None
    assert all(torch.equal(value, checkpoint[name]) for name, value in sd_model.state_dict().items())


def test_train_three_steps_and_export_the_diffusers_kohya_names(webui, sd_model, embedded_host, examples, tmp_path):
    host = WebUIHost.from_shared(webui.shared)
    before = fingerprint_modules(host.modules_to_fingerprint())
    with host.prepared_for_training():
        result = train_lora(host, examples, _config(tmp_path), CPU)
    assert result.steps == 3 and fingerprint_modules(host.modules_to_fingerprint()) == before
    assert f"{ATTN_Q}.lora_A.weight" in result.unet_lora
    ldm_keys = peft_to_kohya(result.unet_lora, "lora_unet", 4.0, naming="ldm")
    diffusers_unet = copy.deepcopy(embedded_host.unet)
    injected = inject_lora(diffusers_unet, LoraSpec(4, 4.0))
    diffusers_keys = peft_to_kohya(injected.state_dict(), "lora_unet", 4.0)
    assert {k: tuple(v.shape) for k, v in ldm_keys.items()} == {k: tuple(v.shape) for k, v in diffusers_keys.items()}
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in ldm_keys


def test_text_encoder_lora_trains_through_the_hijacked_encoder(webui, sd_model, examples, tmp_path):
    host = WebUIHost.from_shared(webui.shared)
    assert host.mixed_precision == "no" and host.text_encoder is sd_model.cond_stage_model.wrapped.transformer
    before = fingerprint_modules(host.modules_to_fingerprint())
    with host.prepared_for_training():
        result = train_lora(host, examples, _config(tmp_path, max_steps=2, train_text_encoder=True), CPU)
    kohya = peft_to_kohya(result.text_encoder_lora, "lora_te", 4.0)
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in kohya
    assert any(tensor.abs().sum() > 0 for key, tensor in result.text_encoder_lora.items() if "lora_B" in key)
    assert fingerprint_modules(host.modules_to_fingerprint()) == before


def _observe_training_state(webui, sd_model, seen):
    attention = webui.attention.CrossAttention.forward
    seen.append({"vanilla": attention is webui.sd_hijack.attention_CrossAttention_forward,
                 "hypernetworks": list(webui.shared.loaded_hypernetworks),
                 "webui_checkpointing": bool(webui.sd_hijack_checkpoint.stored),
                 "frozen": not any(p.requires_grad for n, p in sd_model.named_parameters() if "lora_" not in n)})


@pytest.mark.parametrize("ending", ["completed", "cancelled", "error"])
def test_everything_is_restored_after_success_cancel_and_error(webui, sd_model, examples, tmp_path, ending):
    flags = {name: index % 3 != 0 for index, (name, _) in enumerate(sd_model.named_parameters())}
    for name, parameter in sd_model.named_parameters():
        parameter.requires_grad_(flags[name])
    hypernetworks = webui.shared.loaded_hypernetworks = [lambda context: context * 2]
    webui.sd_hijack_checkpoint.add()
    optimized = webui.attention.CrossAttention.forward
    host = WebUIHost.from_shared(webui.shared)
    before = fingerprint_modules(host.modules_to_fingerprint())
    cancel, seen = threading.Event(), []

    def on_progress(progress):
        _observe_training_state(webui, sd_model, seen)
        if ending == "error":
            raise RuntimeError("injected failure")
        cancel.set()

    config = _config(tmp_path, gradient_checkpointing=True, max_steps=3 if ending == "completed" else 2)
    expected = pytest.raises(RuntimeError, match="injected") if ending == "error" else contextlib.nullcontext()
    with expected, host.prepared_for_training():
        result = train_lora(host, examples, config, CPU, progress=on_progress,
                            cancel_event=cancel if ending == "cancelled" else None)
        assert result.stopped == ending
    assert seen and seen[0] == {"vanilla": True, "hypernetworks": [], "webui_checkpointing": False, "frozen": True}
    assert {name: p.requires_grad for name, p in sd_model.named_parameters()} == flags
    assert not any(module.training for module in sd_model.modules())
    assert webui.attention.CrossAttention.forward is optimized is webui.sd_hijack.scaled_dot_product_attention_forward
    assert webui.shared.loaded_hypernetworks is hypernetworks and webui.sd_hijack_checkpoint.stored
    assert not any("forward" in vars(module) or "lora_" in name for name, module in sd_model.named_modules())
    assert fingerprint_modules(host.modules_to_fingerprint()) == before


def _lora_gradients(host, checkpointing):
    injected = inject_lora(host.unet, LoraSpec(2, 2.0))
    try:
        with torch.no_grad():
            for parameter in injected.parameters:
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        if checkpointing:
            host.unet.enable_gradient_checkpointing()
        noisy = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
        output = host.predict(noisy, torch.tensor([5, 500]), host.encode_prompts(["mdl chest ct", "b"]).detach())
        output.square().mean().backward()
        patched = sum("forward" in vars(module) for module in host.unet.modules())
        return [parameter.grad.clone() for parameter in injected.parameters], patched
    finally:
        host.unet.disable_gradient_checkpointing()
        injected.remove()


def test_gradient_checkpointing_gives_lora_weights_their_gradients(webui, sd_model):
    host = WebUIHost.from_shared(webui.shared)
    with host.prepared_for_training():
        plain, none_patched = _lora_gradients(host, checkpointing=False)
        checkpointed, patched = _lora_gradients(host, checkpointing=True)
    assert none_patched == 0 and patched == 18  # the stand-in UNet's 12 ResBlocks and 6 BasicTransformerBlocks
    assert all(grad.abs().sum() > 0 for grad in checkpointed)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))
    assert not any("forward" in vars(module) for module in sd_model.modules())


def test_medvram_encodes_first_then_keeps_the_unet_on_the_device(webui, sd_model, examples, tmp_path):
    webui.shared.cmd_opts.medvram = True
    webui.lowvram.setup_for_low_vram(sd_model, use_medvram=True)
    host = WebUIHost.from_shared(webui.shared)
    host.encode_images(torch.zeros(1, 3, 64, 64))
    assert webui.lowvram.module_in_gpu is sd_model.first_stage_model
    with host.prepared_for_training():
        train_lora(host, examples, _config(tmp_path, max_steps=2), CPU)
        assert webui.lowvram.module_in_gpu is sd_model.model
        with pytest.raises(ModelLoadError, match="cache_latents: true"):
            train_lora(host, examples, _config(tmp_path, max_steps=1, cache_latents=False), CPU)


def test_captions_are_literal_and_cut_to_the_first_chunk(webui, sd_model, embedded_host):
    host = WebUIHost.from_shared(webui.shared)
    assert escape_prompt(r"a (b) [c] \d") == r"a \(b\) \[c\] \\d"
    literal = "mdl (axial) [chest] ct"
    assert torch.equal(host.encode_prompts([literal]), embedded_host.encode_prompts([literal]))
    long_caption = " ".join(["chest"] * 100)
    conditioning = host.encode_prompts([long_caption, "a"])
    assert conditioning.shape == (2, 77, 32)
    assert torch.equal(conditioning, sd_model.get_learned_conditioning([long_caption, "a"])[:, :77])
    webui.shared.opts.data["emphasis"] = "None"
    assert torch.equal(host.encode_prompts([literal]), embedded_host.encode_prompts([literal]))


def test_changed_weights_and_a_switched_checkpoint_are_reported(webui, sd_model, embedded_host):
    host = WebUIHost.from_shared(webui.shared)
    flags = [parameter.requires_grad for parameter in sd_model.parameters()]
    bias = sd_model.first_stage_model.vae.decoder.conv_out.bias
    with pytest.raises(BaseModelChangedError, match="reload the checkpoint"), host.prepared_for_training():
        bias.data.add_(1.0)
    assert [parameter.requires_grad for parameter in sd_model.parameters()] == flags and any(flags)
    webui.shared.sd_model = _build_sd_model(webui, embedded_host)
    with pytest.raises(ModelLoadError, match="another checkpoint"), host.prepared_for_training():
        pass


def test_forge_is_recognised_before_any_model_is_loaded(tmp_path, monkeypatch):
    """Current Forge keeps a stub ``modules/sd_hijack.py``; its ``modules_forge`` package tells it apart."""
    from lib_lora_train.hosts.webui_host import forge_refusal

    assert forge_refusal() is None  # the A1111 stand-in
    (tmp_path / "modules_forge").mkdir()
    (tmp_path / "modules_forge" / "forge_version.py").write_text("version = 'f2.0.1'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "not available on Forge" in forge_refusal()
