"""Frozen Stable Diffusion components from a local config folder and a diffusers-named state dict.

Both ways of getting a model (the embedded tiny one and a converted single file) end here, so
there is one place that instantiates modules without random initialisation, checks every
expected weight is present with the right shape, loads them, and freezes the result. Config
folders use the diffusers pipeline layout (``unet/config.json``, ``vae/config.json``,
``text_encoder/config.json``, ``scheduler/scheduler_config.json``, ``tokenizer/``) and are
only ever read from disk: nothing here can reach the network.
"""

import contextlib
import json
import logging
import pathlib
import re

from ..errors import ModelLoadError

logger = logging.getLogger(__name__)

COMPONENT_NAMES = ("unet", "vae", "text_encoder")
# Checkpoint tensors no text encoder needs: OpenCLIP's projection and logit scale, and CLIP's
# position ids: a buffer the module builds itself (merged checkpoints often carry corrupted,
# non-integer ones, which the WebUI repairs for the same reason).
_IGNORED_TEXT_KEYS = re.compile(r"(^|\.)(text_projection(\.weight)?|logit_scale|embeddings\.position_ids)$")
_TEXT_LAYER = re.compile(r"(^|\.)encoder\.layers\.(\d+)\.")


def read_json(path, what):
    """Read a JSON file, turning a missing or broken file into a :class:`ModelLoadError`."""
    try:
        return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read the {what} ({pathlib.Path(path).name}: {type(error).__name__}); "
                             "reinstall the extension or rebuild the model cache") from error


def load_component_configs(config_dir):
    """The three model configs and the scheduler config of a config folder.

    Args:
        config_dir (`pathlib.Path`): a diffusers-layout folder.

    Returns:
        `dict[str, dict]`: ``unet``, ``vae``, ``text_encoder`` and ``scheduler`` configs.
    """
    config_dir = pathlib.Path(config_dir)
    configs = {name: read_json(config_dir / name / "config.json", f"{name} config") for name in COMPONENT_NAMES}
    configs["scheduler"] = read_json(config_dir / "scheduler" / "scheduler_config.json", "scheduler config")
    return configs


def _empty_weights():
    try:
        from accelerate import init_empty_weights
    except ImportError:
        return contextlib.nullcontext()
    # Parameters go to the meta device (no allocation, no random init); buffers stay real.
    return init_empty_weights(include_buffers=False)


def instantiate_component(name, config):
    """Build one component from its config, with parameters on the meta device when possible.

    Args:
        name (`str`): one of :data:`COMPONENT_NAMES`.
        config (`dict`): its ``config.json`` content.

    Returns:
        `torch.nn.Module`
    """
    import torch

    # Without accelerate the constructors initialise randomly: keep the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]), _empty_weights():
        if name == "text_encoder":
            from transformers import CLIPTextConfig, CLIPTextModel

            return CLIPTextModel(CLIPTextConfig.from_dict(config))
        from diffusers import AutoencoderKL, UNet2DConditionModel

        cls = UNet2DConditionModel if name == "unet" else AutoencoderKL
        return cls.from_config(config)


def _align_text_prefix(module, state_dict):
    # transformers >= 5.6 flattened CLIPTextModel (no ``text_model.``); older versions need it.
    wrapped = hasattr(module, "text_model")
    aligned = {}
    for key, value in state_dict.items():
        bare = key.removeprefix("text_model.")
        aligned[f"text_model.{bare}" if wrapped else bare] = value
    return aligned


def _is_ignorable_text_key(key, num_layers):
    if _IGNORED_TEXT_KEYS.search(key):
        return True
    layer = _TEXT_LAYER.search(key)
    # SD 2.x keeps all 24 OpenCLIP blocks but uses the penultimate output: extra blocks are unused.
    return layer is not None and int(layer.group(2)) >= num_layers


def _check_keys(name, module, state_dict, source):
    expected = module.state_dict(keep_vars=True)
    # Buffers (position ids, ...) keep their constructed values when the file lacks them.
    missing = sorted(key for key, _ in module.named_parameters() if key not in state_dict)
    if missing:
        raise ModelLoadError(f"{source}: the {name} lacks {len(missing)} weight(s), e.g. '{missing[0]}'; the file is "
                             "incomplete or not a Stable Diffusion 1.x/2.x checkpoint")
    wrong = sorted(key for key, value in state_dict.items()
                   if key in expected and tuple(expected[key].shape) != tuple(value.shape))
    if wrong:
        key = wrong[0]
        raise ModelLoadError(f"{source}: {len(wrong)} {name} weight(s) have unexpected shapes, e.g. '{key}' is "
                             f"{tuple(state_dict[key].shape)}, expected {tuple(expected[key].shape)}; the checkpoint "
                             "does not match the model configuration")
    return [key for key in state_dict if key not in expected]


def match_state_dict(name, module, state_dict, source):
    """Fit a converted state dict to ``module``: align names, drop unused tensors, check the rest.

    Args:
        name (`str`): the component, for messages.
        module (`torch.nn.Module`): from :func:`instantiate_component` (meta parameters are fine).
        state_dict (`dict[str, torch.Tensor]`): diffusers/transformers-named weights.
        source (`str`): a short, path-free label of the file, for messages.

    Returns:
        `dict[str, torch.Tensor]`: exactly the tensors the module will take.

    Raises:
        `ModelLoadError`: a weight is missing or has the wrong shape.
    """
    if name == "text_encoder":
        state_dict = _align_text_prefix(module, state_dict)
        num_layers = module.config.num_hidden_layers
        state_dict = {k: v for k, v in state_dict.items() if not _is_ignorable_text_key(k, num_layers)}
    unexpected = set(_check_keys(name, module, state_dict, source))
    if unexpected:
        logger.warning("%s: %d %s tensor(s) are not used, e.g. '%s'", source, len(unexpected), name,
                       min(unexpected))
    return {key: value for key, value in state_dict.items() if key not in unexpected}


def load_component_weights(name, module, state_dict, source):
    """Check (see :func:`match_state_dict`) and assign the weights to ``module``; returns it."""
    module.load_state_dict(match_state_dict(name, module, state_dict, source), strict=False, assign=True)
    return module


def freeze_component(module, device, dtype):
    """Move to ``device``/``dtype``, switch to eval mode and turn off every gradient."""
    import torch

    # Plain ``nn.Module.to``: diffusers' override warns about fp32-only modules these models lack.
    torch.nn.Module.to(module, device=device, dtype=dtype)
    module.requires_grad_(False)
    module.eval()
    return module


def build_component(name, config, state_dict, source, device, dtype):
    """Instantiate, load, check and freeze one component; see :func:`load_component_weights`."""
    module = load_component_weights(name, instantiate_component(name, config), state_dict, source)
    return freeze_component(module, device, dtype)
