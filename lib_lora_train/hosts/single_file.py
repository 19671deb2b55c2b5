"""Local single-file Stable Diffusion checkpoints (original LDM key layout): check, detect, convert.

A1111-style ``.safetensors`` / ``.ckpt`` files hold the UNet under ``model.diffusion_model.``, the
VAE under ``first_stage_model.`` and the text encoder under ``cond_stage_model.transformer.``
(SD 1.x, OpenAI CLIP) or ``cond_stage_model.model.`` (SD 2.x, OpenCLIP). The layout is read from
the safetensors header (shapes only) before any weight is loaded, so the wrong kind of file
(a LoRA, SDXL, an inpainting model, random bytes) is refused at once with a message that says
what the file is and what to do. Weights are then renamed with diffusers' own converters
(``diffusers.loaders.single_file_utils``) against the shipped configs in ``model_configs/``;
nothing is fetched from a hub. Messages name the file by its base name only.
"""

import dataclasses
import logging
import pathlib
import re

from .base import PREDICTION_TYPES
from .components import ModelLoadError

logger = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_PREFIX = "conditioner.embedders.1."
MODEL_CONFIGS_DIR = pathlib.Path(__file__).parent / "model_configs"
SHIPPED_CONFIGS = {"sd_v1": "sd15", "sd_v2": "sd21"}
_LORA_KEY = re.compile(r"^lora_(unet|te\d?)_|\.(lora_down|lora_up|lora_A|lora_B|hada_w1_a|lokr_w1)(\.|$)")
_SPECIAL_UNETS = {9: "an inpainting model (9 UNet input channels)",
                  8: "an instruct-pix2pix model (8 UNet input channels)"}
_PARAMETERIZATION = re.compile(r"^\s*parameterization\s*:\s*[\"']?([A-Za-z0-9_]+)[\"']?\s*(#.*)?$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class CheckpointLayout:
    """What the key set of a checkpoint says about the model.

    Attributes:
        base_model_version (`str`): ``"sd_v1"`` or ``"sd_v2"``.
        context_dim (`int`): width of the UNet's cross-attention context (768 SD 1.x, 1024 SD 2.x).
        in_channels (`int`): UNet input channels (4 for text-to-image models).
    """

    base_model_version: str
    context_dim: int
    in_channels: int


def _sniff_format(path):
    with open(path, "rb") as handle:
        head = handle.read(16)
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:2] == b"PK":
        return "torch-zip"
    if head[:1] == b"\x80":  # a pickle protocol marker: torch's legacy (pre-1.6) format
        return "torch-legacy"
    return None


def _safetensors_shapes(path, name):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:  # a bad header: truncated, or not safetensors after all
        raise ModelLoadError(f"{name} is damaged or truncated (its safetensors header does not match the file); "
                             "download or copy it again") from error


def _torch_state_dict(path, name, mmap):
    import pickle

    import torch

    try:
        # weights_only: a .ckpt is a pickle, and an untrusted pickle can run code when loaded.
        loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise ModelLoadError(f"{name} holds Python objects that cannot be loaded safely; convert it to .safetensors "
                             "(e.g. with the WebUI's Checkpoint Merger) and choose that file") from error
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise ModelLoadError(f"{name} is damaged or not a PyTorch checkpoint ({type(error).__name__}); "
                             "download or copy it again") from error
    state_dict = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state_dict, dict):
        raise ModelLoadError(f"{name} does not contain a state dict; choose a Stable Diffusion checkpoint")
    return {key: value for key, value in state_dict.items() if hasattr(value, "shape")}


class CheckpointReader:
    """Shapes first, tensors on demand, for one local checkpoint file.

    Args:
        path (`str` or `os.PathLike`): a ``.safetensors`` or ``.ckpt`` file.

    Raises:
        `ModelLoadError`: the file is missing, unreadable, or neither format.
    """

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.name = self.path.name
        if not self.path.is_file():
            raise ModelLoadError(f"checkpoint {self.name} not found; check the file name in the base model setting")
        try:
            kind = _sniff_format(self.path)
        except OSError as error:
            raise ModelLoadError(f"checkpoint {self.name} cannot be read ({type(error).__name__})") from error
        if kind is None:
            raise ModelLoadError(f"{self.name} is not a model checkpoint (neither safetensors nor PyTorch); "
                                 "choose a Stable Diffusion 1.x/2.x .safetensors or .ckpt file")
        self.kind = kind
        self._tensors = None if kind == "safetensors" else _torch_state_dict(self.path, self.name, kind == "torch-zip")
        self.shapes = (_safetensors_shapes(self.path, self.name) if kind == "safetensors"
                       else {key: tuple(value.shape) for key, value in self._tensors.items()})

    def load(self, prefixes):
        """Tensors whose keys start with one of ``prefixes`` (the rest of the file is never read)."""
        wanted = [key for key in self.shapes if key.startswith(tuple(prefixes))]
        if self._tensors is not None:
            return {key: self._tensors[key] for key in wanted}
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in wanted}
        except (SafetensorError, OSError) as error:  # changed on disk since its header was read
            raise ModelLoadError(f"{self.name} is damaged or truncated ({type(error).__name__}); "
                                 "download or copy it again") from error


def _refuse_non_base(shapes, name):
    keys = list(shapes)
    if any(_LORA_KEY.search(key) for key in keys):
        raise ModelLoadError(f"{name} is a LoRA/LyCORIS adapter, not a base model; choose a full Stable Diffusion "
                             "1.x/2.x checkpoint as the base model (put adapters in the LoRA folder)")
    if any(key.startswith(SDXL_PREFIX) for key in keys):
        raise ModelLoadError(f"{name} is an SDXL checkpoint: SDXL is not supported yet; choose a Stable Diffusion "
                             "1.x or 2.x checkpoint")
    if not any(key.startswith(UNET_PREFIX) for key in keys):
        component = ("down_blocks.", "conv_in.", "text_model.", "encoder.", "decoder.", VAE_PREFIX, "cond_stage_model.")
        hint = ("it looks like a single component (UNet, VAE or text encoder); choose a complete checkpoint"
                if any(key.startswith(component) for key in keys)
                else "choose a Stable Diffusion 1.x/2.x checkpoint in the original (LDM) layout")
        raise ModelLoadError(f"{name} has an unknown layout (no 'model.diffusion_model.' weights); {hint}")


def detect_layout(shapes, name):
    """Classify a checkpoint by its key names and shapes, refusing everything but SD 1.x/2.x text-to-image.

    Args:
        shapes (`dict[str, tuple[int, ...]]`): key -> shape, e.g. from :class:`CheckpointReader`.
        name (`str`): the file's base name, for messages.

    Returns:
        `CheckpointLayout`

    Raises:
        `ModelLoadError`: a LoRA, SDXL, inpainting/instruct UNet, or an unknown layout.
    """
    _refuse_non_base(shapes, name)
    in_shape = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if in_shape is None or len(in_shape) != 4:
        raise ModelLoadError(f"{name} has an unknown UNet layout (no 'input_blocks.0.0' convolution); choose a "
                             "Stable Diffusion 1.x/2.x checkpoint")
    if in_shape[1] != 4:
        what = _SPECIAL_UNETS.get(in_shape[1], f"a UNet with {in_shape[1]} input channels")
        raise ModelLoadError(f"{name} is {what}; LoRA training needs a text-to-image model with 4 input channels")
    if any(key.startswith(OPEN_CLIP_PREFIX) for key in shapes):
        version = "sd_v2"
    elif any(key.startswith(CLIP_PREFIX) for key in shapes):
        version = "sd_v1"
    else:
        raise ModelLoadError(f"{name} has no text encoder ('cond_stage_model.' weights); choose a complete "
                             "Stable Diffusion 1.x/2.x checkpoint")
    if not any(key.startswith(VAE_PREFIX) for key in shapes):
        raise ModelLoadError(f"{name} has no VAE ('first_stage_model.' weights); choose a complete checkpoint")
    context = [shape[1] for key, shape in shapes.items()
               if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight") and len(shape) == 2]
    if not context:
        raise ModelLoadError(f"{name} has an unknown UNet layout (no cross-attention); choose a Stable Diffusion "
                             "1.x/2.x checkpoint")
    return CheckpointLayout(version, context[0], in_shape[1])


def _read_parameterization(yaml_path, name):
    try:
        text = yaml_path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise ModelLoadError(f"the .yaml beside {name} cannot be read ({type(error).__name__})") from error
    match = _PARAMETERIZATION.search(text)
    value = match.group(1) if match else "eps"  # the LDM default when the key is absent
    if value not in ("eps", "v"):
        raise ModelLoadError(f"the .yaml beside {name} sets parameterization '{value}'; only 'eps' and 'v' are "
                             "supported")
    return value


def resolve_prediction_type(path, version, requested="auto"):
    """Decide epsilon vs v-prediction, and say which rule decided (for the logs).

    ``"auto"`` follows the WebUI: a same-named ``.yaml`` beside the checkpoint wins
    (``parameterization: "v"`` -> v_prediction, else epsilon); without one, SD 1.x predicts
    epsilon and SD 2.x is taken to be the common 768-v model (v_prediction).

    Args:
        path (`pathlib.Path`): the checkpoint.
        version (`str`): ``"sd_v1"`` or ``"sd_v2"``.
        requested (`str`): ``"auto"`` or one of :data:`PREDICTION_TYPES`.

    Returns:
        `tuple[str, str]`: prediction type and a path-free description of the deciding rule.
    """
    if requested in PREDICTION_TYPES:
        return requested, f"set explicitly: {requested}"
    if requested != "auto":
        raise ModelLoadError(f"prediction_type='{requested}' is not valid; use 'auto', "
                             + ", ".join(f"'{value}'" for value in PREDICTION_TYPES))
    yaml_path = pathlib.Path(path).with_suffix(".yaml")
    if yaml_path.is_file():
        value = _read_parameterization(yaml_path, pathlib.Path(path).name)
        return ("v_prediction" if value == "v" else "epsilon"), f"the .yaml beside the checkpoint: parameterization {value}"
    if version == "sd_v1":
        return "epsilon", "SD 1.x checkpoint without a .yaml: epsilon"
    return "v_prediction", "SD 2.x checkpoint without a .yaml: assumed the 768-v model (v_prediction)"


def convert_to_diffusers(state_dict, configs, layout):
    """Rename LDM-layout tensors to diffusers/transformers names with diffusers' converters.

    Args:
        state_dict (`dict[str, torch.Tensor]`): the checkpoint (meta tensors work too).
        configs (`dict[str, dict]`): ``unet``, ``vae`` and ``text_encoder`` configs.
        layout (`CheckpointLayout`)

    Returns:
        `dict[str, dict[str, torch.Tensor]]`: one state dict per component.
    """
    import types

    from diffusers.loaders import single_file_utils as sfu

    converted = {
        "unet": sfu.convert_ldm_unet_checkpoint(state_dict, configs["unet"]),
        "vae": sfu.convert_ldm_vae_checkpoint(state_dict, configs["vae"]),
    }
    if layout.base_model_version == "sd_v2":
        # The converter reads only ``config.hidden_size`` of the model, to split fused q/k/v.
        stub = types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=configs["text_encoder"]["hidden_size"]))
        converted["text_encoder"] = sfu.convert_open_clip_checkpoint(stub, state_dict, prefix=OPEN_CLIP_PREFIX)
    else:
        converted["text_encoder"] = sfu.convert_ldm_clip_checkpoint(state_dict)
    return converted


def check_layout_matches_configs(layout, configs, name):
    """Refuse a checkpoint whose detected widths disagree with the configs it would be loaded with."""
    expected = configs["unet"]["cross_attention_dim"]
    if layout.context_dim != expected or configs["text_encoder"]["hidden_size"] != expected:
        raise ModelLoadError(f"{name}: the UNet's text context is {layout.context_dim} wide but the "
                             f"{layout.base_model_version} configuration expects {expected}; the checkpoint is not "
                             "a standard Stable Diffusion 1.x/2.x model")


def shipped_config_dir(version):
    """The shipped config folder (``model_configs/sd15`` or ``sd21``) for a base model version."""
    return MODEL_CONFIGS_DIR / SHIPPED_CONFIGS[version]
