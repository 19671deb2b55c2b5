"""The embedded default model: a tiny SD-1.x-architecture model built from seeded random weights.

It lets the product (demo, self-check, tests) train and export a LoRA end to end on any CPU
without a real checkpoint. The architecture is SD 1.x in miniature: a cross-attention UNet
(``block_out_channels`` (32, 64), two layers per block, attention in the first block and the
mid block, like SD's last block without attention), a VAE that downsamples by 8 like SD's
(64 px images <-> 8x8x4 latents, ``scaling_factor`` 0.18215), a 3-layer CLIP text encoder of
width 32 with 77 positions, and a small local BPE tokenizer. Weights are drawn from a
``torch.Generator`` per parameter name, so every build on a machine gives the same bytes; the
result is cached under the data home in a verified folder (see :mod:`.cache`).
"""

import copy
import logging
import pathlib

from .cache import ensure_cached_folder
from .components import COMPONENT_NAMES
from .tokenizer import END_TOKEN, START_TOKEN, write_tiny_tokenizer_folder

logger = logging.getLogger(__name__)

EMBEDDED_FOLDER = "embedded-v1"
EMBEDDED_KIND = "embedded-tiny-sd1"
EMBEDDED_SEED = 20240229
WEIGHTS_NAME = "model.safetensors"

TINY_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 2,
    "cross_attention_dim": 32,
    "attention_head_dim": 2,
    "norm_num_groups": 32,
    "use_linear_projection": False,
    "upcast_attention": False,
}
TINY_VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [32, 64, 64, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}
TINY_TEXT_CONFIG = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 32,
}
SD_SCHEDULER_CONFIG = {
    "_class_name": "DDPMScheduler",
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "clip_sample": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
TINY_TOKENIZER_CONFIG = {
    "tokenizer_class": "CLIPTokenizer",
    "model_max_length": 77,
    "bos_token": START_TOKEN,
    "eos_token": END_TOKEN,
    "unk_token": END_TOKEN,
    "pad_token": END_TOKEN,
    "do_lower_case": True,
}


def tiny_configs(vocab_size, variant="sd1"):
    """Configs of the tiny model; ``variant="sd2"`` mirrors SD 2.x's differences for tests.

    Args:
        vocab_size (`int`): size of the tiny tokenizer's vocabulary (special tokens last).
        variant (`str`): ``"sd1"`` (the embedded model) or ``"sd2"`` (linear attention
            projections, per-block head counts, GELU text encoder, ``!`` padding, v-prediction).

    Returns:
        `dict[str, dict]`: ``unet``, ``vae``, ``text_encoder``, ``scheduler``, ``tokenizer``.
    """
    configs = copy.deepcopy({"unet": TINY_UNET_CONFIG, "vae": TINY_VAE_CONFIG, "text_encoder": TINY_TEXT_CONFIG,
                             "scheduler": SD_SCHEDULER_CONFIG, "tokenizer": TINY_TOKENIZER_CONFIG})
    configs["text_encoder"].update(vocab_size=vocab_size, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                                   pad_token_id=vocab_size - 1)
    if variant == "sd2":
        configs["unet"].update(use_linear_projection=True, attention_head_dim=[2, 4], upcast_attention=True)
        configs["text_encoder"].update(hidden_act="gelu", pad_token_id=0)
        configs["scheduler"]["prediction_type"] = "v_prediction"
        configs["tokenizer"]["pad_token"] = "!"
    return configs


def _init_parameter(owner, leaf, param, generator):
    import torch

    if isinstance(owner, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
        return torch.ones(param.shape) if leaf == "weight" else torch.zeros(param.shape)
    noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
    if isinstance(owner, torch.nn.Embedding):
        return noise * 0.02
    if isinstance(owner, (torch.nn.Linear, torch.nn.Conv2d)):
        return noise * (param[0].numel() ** -0.5 if leaf == "weight" else 0.02)
    raise TypeError(f"no seeded initialisation for {type(owner).__name__}.{leaf}")


def seed_parameters(module, seed):
    """Overwrite every parameter with values drawn from one generator, in sorted name order.

    Relying on the modules' own initialisers would tie the bytes to diffusers/transformers
    versions and consume the caller's global RNG; this depends only on ``torch.randn``.

    Args:
        module (`torch.nn.Module`): the module to fill in place.
        seed (`int`): generator seed.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters(), key=lambda item: item[0]):
            owner_path, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            param.copy_(_init_parameter(owner, leaf, param, generator))


def build_tiny_modules(configs, seed=EMBEDDED_SEED):
    """Instantiate and seed the tiny UNet, VAE and text encoder on CPU in float32.

    Args:
        configs (`dict[str, dict]`): from :func:`tiny_configs`.
        seed (`int`): base seed; each component uses its own offset.

    Returns:
        `dict[str, torch.nn.Module]`
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    # The constructors' own random init would advance the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        modules = {
            "unet": UNet2DConditionModel.from_config(configs["unet"]),
            "vae": AutoencoderKL.from_config(configs["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"])),
        }
    for offset, name in enumerate(COMPONENT_NAMES):
        seed_parameters(modules[name], seed + offset)
        modules[name].requires_grad_(False).eval()
    return modules


def write_model_folder(folder, configs, modules):
    """Write configs and safetensors weights in the diffusers pipeline folder layout.

    Args:
        folder (`pathlib.Path`): destination.
        configs (`dict[str, dict]`): configs of every component, scheduler and tokenizer.
        modules (`dict[str, torch.nn.Module]`): the three weighted components.
    """
    import json

    from safetensors.torch import save_file

    folder = pathlib.Path(folder)
    for name in COMPONENT_NAMES:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "config.json").write_text(json.dumps(configs[name], indent=2, sort_keys=True),
                                                   encoding="utf-8")
        tensors = {key: value.contiguous() for key, value in modules[name].state_dict().items()}
        save_file(tensors, str(folder / name / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs["scheduler"], indent=2),
                                                                encoding="utf-8")


def build_embedded_folder(folder, seed=EMBEDDED_SEED):
    """Write the embedded model (tokenizer first: the text encoder's vocabulary size follows it)."""
    vocab_size = write_tiny_tokenizer_folder(pathlib.Path(folder) / "tokenizer", TINY_TOKENIZER_CONFIG)
    configs = tiny_configs(vocab_size)
    write_model_folder(folder, configs, build_tiny_modules(configs, seed))


def ensure_embedded_folder(cache_dir):
    """The verified embedded-model folder under ``cache_dir``, built on first use or when damaged.

    Args:
        cache_dir (`str` or `os.PathLike`): the model cache of the data home.

    Returns:
        `tuple[pathlib.Path, dict]`: the folder and its manifest (file hashes).
    """
    folder, manifest, built = ensure_cached_folder(pathlib.Path(cache_dir) / EMBEDDED_FOLDER, EMBEDDED_KIND,
                                                   build_embedded_folder, {"seed": EMBEDDED_SEED})
    if built:
        logger.info("built the embedded tiny model (seed %d)", EMBEDDED_SEED)
    return folder, manifest
