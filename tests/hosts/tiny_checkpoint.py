"""Test helper: tiny single-file checkpoints in the original LDM key layout, with matching configs.

The inverse of diffusers' LDM -> diffusers converters, written for SD's module structure
(``layers_per_block`` resnets per down block, one more per up block, the upsampler after the last
one; VAE up blocks numbered in reverse; OpenCLIP's fused q/k/v). ``to_ldm_state_dict`` works on
meta tensors too, which lets tests compare the shipped SD 1.5 configs with a real key list.
"""

import json
import pathlib
import re

import torch

from lib_lora_train.hosts.embedded import (
    build_tiny_modules,
    tiny_configs,
    write_model_folder,
)
from lib_lora_train.hosts.tokenizer import build_tiny_bpe, write_bpe_files

RESNET_TO_LDM = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                 ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPEN_CLIP_RENAMES = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                     ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj"))


def _resnet(rest):
    for old, new in RESNET_TO_LDM:
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _unet_key(key, per_block, up_has_attention):
    head, _, leaf = key.rpartition(".")
    if head in UNET_FIXED:
        return f"{UNET_FIXED[head]}.{leaf}"
    match = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", key)
    if match:
        side, block, kind, index, rest = match.groups()
        block, index = int(block), int(index)
        if side == "down":
            if kind == "downsamplers":
                return f"input_blocks.{(block + 1) * (per_block + 1)}.0.op.{rest.removeprefix('conv.')}"
            slot = 1 + block * (per_block + 1) + index
            return f"input_blocks.{slot}.{0 if kind == 'resnets' else 1}.{_resnet(rest) if kind == 'resnets' else rest}"
        row = block * (per_block + 1)
        if kind == "upsamplers":
            return f"output_blocks.{row + per_block}.{2 if up_has_attention[block] else 1}.{rest}"
        return f"output_blocks.{row + index}.{0 if kind == 'resnets' else 1}.{_resnet(rest) if kind == 'resnets' else rest}"
    match = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    kind, index, rest = match.groups()
    if kind == "resnets":
        return f"middle_block.{2 * int(index)}.{_resnet(rest)}"
    return f"middle_block.1.{rest}"


def unet_to_ldm(state_dict, config):
    """Diffusers UNet2DConditionModel names -> ``model.diffusion_model.*`` names (tensors unchanged)."""
    per_block = config["layers_per_block"]
    up_has_attention = [any(k.startswith(f"up_blocks.{b}.attentions.") for k in state_dict)
                        for b in range(len(config["up_block_types"]))]
    return {"model.diffusion_model." + _unet_key(k, per_block, up_has_attention): v for k, v in state_dict.items()}


def _vae_key(key, num_blocks):
    key = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", key)
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.",
                 lambda m: f"decoder.up.{num_blocks - 1 - int(m.group(1))}.block.", key)
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                 lambda m: f"decoder.up.{num_blocks - 1 - int(m.group(1))}.upsample.", key)
    key = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}.", key)
    match = re.match(r"(.+)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", key)
    if match:
        key = f"{match.group(1)}.mid.attn_1.{VAE_ATTENTION[match.group(2)]}.{match.group(3)}"
    return key.replace("conv_shortcut", "nin_shortcut")


def vae_to_ldm(state_dict, config):
    """Diffusers AutoencoderKL names -> ``first_stage_model.*``; attention weights become 1x1 convs."""
    converted = {}
    for key, value in state_dict.items():
        ldm_key = _vae_key(key, len(config["block_out_channels"]))
        if ".mid.attn_1." in ldm_key and ldm_key.endswith("weight") and ".norm." not in ldm_key:
            value = value[:, :, None, None]
        converted["first_stage_model." + ldm_key] = value
    return converted


def clip_to_ldm(state_dict):
    """transformers CLIPTextModel names -> ``cond_stage_model.transformer.text_model.*``."""
    return {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v for k, v in state_dict.items()}


def _open_clip_layer(state_dict, prefix, index):
    source = {k.removeprefix("text_model.")[len(f"encoder.layers.{index}."):]: v for k, v in state_dict.items()
              if k.removeprefix("text_model.").startswith(f"encoder.layers.{index}.")}
    out = {}
    for kind in ("weight", "bias"):
        out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([source[f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
    for key, value in source.items():
        if not re.match(r"self_attn\.[qkv]_proj\.", key):
            for old, new in OPEN_CLIP_RENAMES:
                key = key.replace(old, new)
            out[prefix + key] = value
    return out


def open_clip_to_ldm(state_dict, num_layers, extra_layers=1):
    """transformers CLIPTextModel -> OpenCLIP ``cond_stage_model.model.*`` with fused q/k/v.

    ``extra_layers`` unused blocks are appended (copies of the last one), as SD 2.x checkpoints
    hold all 24 OpenCLIP blocks while the penultimate output is used.
    """
    bare = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    prefix = "cond_stage_model.model."
    width = bare["embeddings.token_embedding.weight"].shape[1]
    out = {prefix + "token_embedding.weight": bare["embeddings.token_embedding.weight"],
           prefix + "positional_embedding": bare["embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": bare["final_layer_norm.weight"],
           prefix + "ln_final.bias": bare["final_layer_norm.bias"],
           prefix + "text_projection": torch.eye(width, device=bare["final_layer_norm.weight"].device),
           prefix + "logit_scale": torch.tensor(4.6052)}
    for index in range(num_layers):
        out.update(_open_clip_layer(bare, f"{prefix}transformer.resblocks.{index}.", index))
    for extra in range(extra_layers):
        last = _open_clip_layer(bare, f"{prefix}transformer.resblocks.{num_layers + extra}.", num_layers - 1)
        out.update({k: v + 1.0 for k, v in last.items()})
    return out


def to_ldm_state_dict(modules, configs, variant):
    """A full LDM-layout state dict (UNet, VAE, text encoder, schedule buffers) from diffusers modules."""
    state = {}
    state.update(unet_to_ldm(modules["unet"].state_dict(), configs["unet"]))
    state.update(vae_to_ldm(modules["vae"].state_dict(), configs["vae"]))
    text = modules["text_encoder"].state_dict()
    if variant == "sd2":
        state.update(open_clip_to_ldm(text, configs["text_encoder"]["num_hidden_layers"]))
    else:
        state.update(clip_to_ldm(text))
        state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["alphas_cumprod"] = torch.linspace(0.999, 0.005, 1000).half()
    return state


def write_config_dir(folder, configs, modules):
    """Tiny diffusers-layout config folder (configs + tiny tokenizer) for ``from_single_file(config_dir=...)``."""
    folder = pathlib.Path(folder)
    write_model_folder(folder, configs, modules)
    for name in ("unet", "vae", "text_encoder"):
        (folder / name / "model.safetensors").unlink()
    write_bpe_files(folder / "tokenizer", *build_tiny_bpe())
    (folder / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(configs["tokenizer"]), encoding="utf-8")
    return folder


def write_tiny_checkpoint(folder, variant="sd1", fmt="safetensors", seed=7):
    """Write ``tiny-<variant>.<fmt>`` and its config folder; return ``(checkpoint, config_dir, modules)``.

    Args:
        folder (`pathlib.Path`): destination.
        variant (`str`): ``"sd1"`` (CLIP text encoder) or ``"sd2"`` (OpenCLIP, linear projections).
        fmt (`str`): ``"safetensors"`` or ``"ckpt"`` (a ``{"state_dict": ...}`` torch file).
        seed (`int`): weight seed, different from the embedded model's.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    configs = tiny_configs(len(build_tiny_bpe()[0]), variant)
    modules = build_tiny_modules(configs, seed)
    state = {k: v.contiguous() for k, v in to_ldm_state_dict(modules, configs, variant).items()}
    path = folder / f"tiny-{variant}.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 1}, str(path))
    return path, write_config_dir(folder / f"configs-{variant}", configs, modules), modules
