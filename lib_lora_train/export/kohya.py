"""PEFT-form LoRA state <-> kohya keys, the names every SD1/SD2 LoRA loader understands.

The only module that makes ``lora_unet_<diffusers path, . -> _>.lora_down.weight`` /
``.lora_up.weight`` / ``.alpha`` keys (and ``lora_te_text_model_encoder_layers_N_...`` for the
text encoder). These are what A1111's ``networks.py::convert_diffusers_name_to_compvis``, the
Additional Networks extension (``lora_compvis.py``), ComfyUI and diffusers'
``_convert_non_diffusers_lora_to_diffusers`` all map (A1111_CONTRACT.md 3.6, 3.11).

``alpha`` is the trained ``lora_alpha``, not the rank: A1111 scales by alpha / rank
(``NetworkModule.calc_scale``), as PEFT does; diffusers' ``convert_state_dict_to_kohya`` writes
the rank, which is right only when alpha == rank.

A UNet whose modules carry the WebUI's LDM names (``input_blocks.1.1.transformer_blocks...``)
is exported under the diffusers names via :func:`ldm_unet_to_diffusers_path`, because Additional
Networks only loads diffusers-style ``lora_unet_down_blocks_...`` keys.
"""

import math
import numbers
import re

import torch

from ..errors import ExportError

KOHYA_PREFIXES = ("lora_unet", "lora_te", "lora_te1", "lora_te2")
NAMINGS = ("diffusers", "ldm")
PEFT_TO_KOHYA_WEIGHT = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}
KOHYA_TO_PEFT_WEIGHT = {kohya: peft for peft, kohya in PEFT_TO_KOHYA_WEIGHT.items()}
KOHYA_ALPHA = "alpha"

# Module paths each prefix may carry: what A1111's convert_diffusers_name_to_compvis and
# Additional Networks' lora_compvis.py can map back to the LDM model (conv_in/conv_out and
# time_embedding make Additional Networks assert, A1111_CONTRACT.md 3.11).
KOHYA_PATH_PATTERNS = {
    "lora_unet": re.compile(
        r"(?:(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(?:attentions|resnets)\.\d+\..+"
        r"|down_blocks\.\d+\.downsamplers\.0\.conv|up_blocks\.\d+\.upsamplers\.0\.conv)"
    ),
    "lora_te": re.compile(r"text_model\.encoder\.layers\.\d+\..+"),
    "lora_te1": re.compile(r"text_model\.encoder\.layers\.\d+\..+"),
    "lora_te2": re.compile(r"text_model\.encoder\.layers\.\d+\..+"),
}

# LDM SpatialTransformer children; diffusers' Transformer2DModel uses the same names below the block.
LDM_TRANSFORMER_CHILDREN = ("norm", "proj_in", "proj_out", "transformer_blocks")
LDM_PATH_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
LDM_BLOCK_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.")
# transformers 5 flattened CLIPTextModel (encoder.layers.N...); 4.x, the WebUI's 4.30.2 included,
# nests it (text_model.encoder.layers.N...), which is the name kohya keys carry.
CLIP_TEXT_ROOT = "text_model."
CLIP_FLAT_ROOT = "encoder.layers."
_LDM_BLOCK_ATTENTION = re.compile(r"(input_blocks|output_blocks)\.(\d+)\.1\.(.+)")
_LDM_MIDDLE_ATTENTION = re.compile(r"middle_block\.1\.(.+)")
_NAMES_SHOWN = 5


def ldm_unet_to_diffusers_path(path, layers_per_block=2):
    """Map an SD1/SD2 LDM UNet attention module path to its diffusers module path.

    ``input_blocks.{1,2,4,5,7,8}.1`` -> ``down_blocks.{0..2}.attentions.{0,1}``,
    ``middle_block.1`` -> ``mid_block.attentions.0``, ``output_blocks.{3..11}.1`` ->
    ``up_blocks.{1..3}.attentions.{0..2}``; the part below the block (``transformer_blocks.0.
    attn1.to_q``, ``proj_in``, ...) is the same in both. The arithmetic is the one diffusers'
    ``convert_ldm_unet_checkpoint`` uses; SD2.x shares the layout (only ``proj_in``/``proj_out``
    are Linear there).

    Args:
        path (`str`): module path, optionally prefixed ``model.diffusion_model.`` or ``diffusion_model.``.
        layers_per_block (`int`, *optional*): 2 for SD1/SD2.

    Returns:
        `str`: e.g. ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``.

    Raises:
        `ExportError`: ``path`` is not inside an attention block (resnets, samplers, conv_in...).
    """
    stripped = _strip_ldm_prefix(path)
    middle = _LDM_MIDDLE_ATTENTION.fullmatch(stripped)
    if middle and _is_transformer_child(middle.group(1)):
        return f"mid_block.attentions.0.{middle.group(1)}"
    block = _LDM_BLOCK_ATTENTION.fullmatch(stripped)
    if block and _is_transformer_child(block.group(3)):
        kind, index, rest = block.group(1), int(block.group(2)), block.group(3)
        if kind == "input_blocks" and index >= 1:
            level, layer = divmod(index - 1, layers_per_block + 1)
            if layer < layers_per_block:
                return f"down_blocks.{level}.attentions.{layer}.{rest}"
        elif kind == "output_blocks":
            level, layer = divmod(index, layers_per_block + 1)
            return f"up_blocks.{level}.attentions.{layer}.{rest}"
    raise ExportError(
        f"{path!r} is not an attention module of an SD1/SD2 LDM UNet: expected input_blocks.N.1.*, "
        f"middle_block.1.* or output_blocks.N.1.* followed by one of {LDM_TRANSFORMER_CHILDREN}"
    )


def _strip_ldm_prefix(path):
    for prefix in LDM_PATH_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


def _is_transformer_child(rest):
    return rest.split(".", 1)[0] in LDM_TRANSFORMER_CHILDREN


def peft_to_kohya(state_dict, prefix, alpha, naming="diffusers", ldm_to_diffusers=None):
    """Rename a PEFT-form adapter state to kohya keys and add the real ``alpha``.

    Args:
        state_dict (`dict[str, torch.Tensor]`): ``<module path>.lora_A.weight`` (rank x in) and
            ``.lora_B.weight`` (out x rank), adapter name removed.
        prefix (`str`): ``"lora_unet"`` for the UNet, ``"lora_te"`` for an SD1 text encoder
            (module paths of a ``CLIPTextModel``: ``text_model.encoder.layers.N...``, or
            ``encoder.layers.N...`` as transformers 5 names them).
        alpha (`float`): the trained ``lora_alpha``; written as a 0-d fp32 tensor per module.
        naming (`str`, *optional*): ``"diffusers"`` (paths used as they are) or ``"ldm"``
            (paths of the WebUI's LDM UNet, mapped by ``ldm_to_diffusers``).
        ldm_to_diffusers (`Callable[[str], str]`, *optional*): LDM -> diffusers path mapping for
            ``naming="ldm"``; defaults to :func:`ldm_unet_to_diffusers_path`.

    Returns:
        `dict[str, torch.Tensor]`: ``<prefix>_<path with _>.lora_down.weight``,
        ``.lora_up.weight`` and ``.alpha`` for every module.

    Raises:
        `ExportError`: unknown keys, a missing half, inconsistent shapes, names the loaders
            cannot map, or two modules that collapse onto one kohya name.
    """
    prefix = _checked_prefix(prefix, naming)
    _check_alpha(alpha)
    to_diffusers = _path_mapper(prefix, naming, ldm_to_diffusers)
    tensors, owners = {}, {}
    for path, (down, up) in _peft_pairs(state_dict).items():
        _check_pair_shapes(path, down, up)
        name = kohya_module_name(prefix, to_diffusers(path))
        if name in owners:
            raise ExportError(f"modules {owners[name]!r} and {path!r} both become kohya name {name!r}")
        owners[name] = path
        tensors[f"{name}.lora_down.weight"] = down.detach()
        tensors[f"{name}.lora_up.weight"] = up.detach()
        tensors[f"{name}.{KOHYA_ALPHA}"] = torch.tensor(float(alpha), dtype=torch.float32)
    return tensors


def kohya_module_name(prefix, diffusers_path):
    """``prefix`` + diffusers module path with dots as underscores, checked against what loaders map.

    Args:
        prefix (`str`): one of :data:`KOHYA_PREFIXES`.
        diffusers_path (`str`): e.g. ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``.

    Returns:
        `str`: e.g. ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``.

    Raises:
        `ExportError`: A1111 or Additional Networks could not map the name back to a module.
    """
    if not KOHYA_PATH_PATTERNS[prefix].fullmatch(diffusers_path):
        ldm = _strip_ldm_prefix(diffusers_path).startswith(LDM_BLOCK_ROOTS)
        hint = " (modules of the WebUI's LDM UNet need naming='ldm')" if ldm else ""
        raise ExportError(
            f"module {diffusers_path!r} cannot be exported under {prefix!r}: A1111 and Additional Networks "
            f"only map paths matching {KOHYA_PATH_PATTERNS[prefix].pattern!r}{hint}"
        )
    return f"{prefix}_{diffusers_path.replace('.', '_')}"


def kohya_to_peft(state_dict, prefix, module_names, naming="diffusers", ldm_to_diffusers=None):
    """Rename kohya keys of one prefix back to PEFT form, for resume and round trips.

    Underscores are ambiguous (``to_q`` vs ``to.q``), so names are resolved against the module
    paths the target model actually has, as A1111 resolves them against its layer mapping.

    Args:
        state_dict (`dict[str, torch.Tensor]`): kohya keys; keys of other kohya prefixes are ignored.
        prefix (`str`): which part to read, e.g. ``"lora_unet"``.
        module_names (`Iterable[str]`): module paths of the model to load into, e.g.
            ``InjectedLora.layer_names`` or the names from ``named_modules()``.
        naming (`str`, *optional*): naming of ``module_names``: ``"diffusers"`` or ``"ldm"``.
        ldm_to_diffusers (`Callable[[str], str]`, *optional*): as in :func:`peft_to_kohya`.

    Returns:
        `tuple[dict[str, torch.Tensor], dict[str, float]]`: the PEFT-form state and each module's
        alpha (the rank when the file stores none, as kohya defines it).

    Raises:
        `ExportError`: a name matches no module, a module lacks down or up, or shapes disagree.
    """
    prefix = _checked_prefix(prefix, naming)
    lookup = _kohya_lookup(prefix, module_names, _path_mapper(prefix, naming, ldm_to_diffusers))
    groups = _kohya_groups(state_dict, prefix)
    unknown = sorted(name for name in groups if name not in lookup)
    if unknown:
        raise ExportError(
            f"{len(unknown)} kohya modules match no module of the model, e.g. {unknown[:_NAMES_SHOWN]}; "
            "was the adapter trained on this model type with the same targets?"
        )
    state, alphas = {}, {}
    for name, weights in groups.items():
        down, up = _kohya_pair(name, weights)
        path = lookup[name]
        state[f"{path}.lora_A.weight"] = down
        state[f"{path}.lora_B.weight"] = up
        alphas[path] = float(weights[KOHYA_ALPHA].item()) if KOHYA_ALPHA in weights else float(down.shape[0])
    return state, alphas


def check_kohya_state_dict(tensors):
    """Check a kohya adapter before it is written: names, completeness, shapes and alphas.

    Every module needs ``lora_down.weight``, ``lora_up.weight`` and a one-element ``alpha`` > 0
    (A1111 reads it with ``.item()``, A1111_CONTRACT.md 3.7).

    Args:
        tensors (`dict[str, torch.Tensor]`)

    Returns:
        `dict[str, int]`: kohya module name -> rank.

    Raises:
        `ExportError`: the first problem found.
    """
    if not tensors:
        raise ExportError("the adapter has no tensors; was anything injected and trained?")
    ranks = {}
    for prefix in KOHYA_PREFIXES:
        for name, weights in _kohya_groups(tensors, prefix).items():
            down, _ = _kohya_pair(name, weights)
            if KOHYA_ALPHA not in weights:
                raise ExportError(f"kohya module {name!r} has no alpha; loaders would assume alpha = rank")
            _check_alpha_tensor(name, weights[KOHYA_ALPHA])
            ranks[name] = int(down.shape[0])
    _check_all_prefixed(tensors)
    return ranks


def _checked_prefix(prefix, naming):
    prefix = prefix[:-1] if isinstance(prefix, str) and prefix.endswith("_") else prefix
    if prefix not in KOHYA_PREFIXES:
        raise ExportError(f"prefix must be one of {KOHYA_PREFIXES}, got {prefix!r}")
    if naming not in NAMINGS:
        raise ExportError(f"naming must be one of {NAMINGS}, got {naming!r}")
    if naming == "ldm" and prefix != "lora_unet":
        raise ExportError("naming='ldm' applies to the UNet only; text encoder paths are already diffusers-style")
    return prefix


def _check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
        raise ExportError(f"alpha must be the trained lora_alpha, a finite number > 0, got {alpha!r}")


def _path_mapper(prefix, naming, ldm_to_diffusers):
    if naming == "ldm":
        return ldm_to_diffusers or ldm_unet_to_diffusers_path
    if prefix == "lora_unet":
        return lambda path: path
    return _nested_clip_path


def _nested_clip_path(path):
    return CLIP_TEXT_ROOT + path if path.startswith(CLIP_FLAT_ROOT) else path


def _peft_pairs(state_dict):
    halves = {}
    for key, tensor in state_dict.items():
        path, weight = _split_peft_key(key)
        if not isinstance(tensor, torch.Tensor):
            raise ExportError(f"{key!r} is a {type(tensor).__name__}, not a tensor")
        halves.setdefault(path, {})[weight] = tensor
    if not halves:
        raise ExportError("the adapter state is empty; was anything injected and trained?")
    pairs = {}
    for path, weights in halves.items():
        missing = [w for w in PEFT_TO_KOHYA_WEIGHT if w not in weights]
        if missing:
            raise ExportError(f"module {path!r} has no {missing[0]}; every LoRA layer needs lora_A and lora_B")
        pairs[path] = (weights["lora_A.weight"], weights["lora_B.weight"])
    return pairs


def _split_peft_key(key):
    for weight in PEFT_TO_KOHYA_WEIGHT:
        if key.endswith("." + weight):
            return key[: -len(weight) - 1], weight
    hint = " (remove the adapter name, as get_peft_model_state_dict does)" if re.search(r"\.lora_[AB]\.", key) else ""
    raise ExportError(f"{key!r} is not a PEFT-form LoRA key <module path>.lora_A.weight / .lora_B.weight{hint}")


def _check_pair_shapes(name, down, up):
    if not (down.is_floating_point() and up.is_floating_point()):
        raise ExportError(f"LoRA weights of {name!r} must be floating point, got {down.dtype} and {up.dtype}")
    linear = down.ndim == 2 and up.ndim == 2
    conv = down.ndim == 4 and up.ndim == 4 and tuple(up.shape[2:]) == (1, 1)
    if not (linear or conv) or down.shape[0] < 1 or up.shape[1] != down.shape[0]:
        raise ExportError(
            f"LoRA weights of {name!r} are not rank-consistent: down {tuple(down.shape)}, up {tuple(up.shape)}; "
            "expected down (rank, in[, k, k]) and up (out, rank[, 1, 1])"
        )


def _kohya_groups(tensors, prefix):
    groups = {}
    for key, tensor in tensors.items():
        if not key.startswith(prefix + "_"):
            continue
        name, dot, weight = key.partition(".")
        if not dot or weight not in (*KOHYA_TO_PEFT_WEIGHT, KOHYA_ALPHA):
            raise ExportError(
                f"{key!r} is not a kohya LoRA key <name>.lora_down.weight / .lora_up.weight / .alpha"
            )
        if not isinstance(tensor, torch.Tensor):
            raise ExportError(f"{key!r} is a {type(tensor).__name__}, not a tensor")
        groups.setdefault(name, {})[weight] = tensor
    return groups


def _kohya_pair(name, weights):
    missing = [w for w in KOHYA_TO_PEFT_WEIGHT if w not in weights]
    if missing:
        raise ExportError(f"kohya module {name!r} has no {missing[0]}")
    down, up = weights["lora_down.weight"], weights["lora_up.weight"]
    _check_pair_shapes(name, down, up)
    return down, up


def _check_alpha_tensor(name, alpha):
    if alpha.numel() != 1 or not alpha.is_floating_point():
        raise ExportError(f"alpha of {name!r} must be a one-element float tensor, got shape {tuple(alpha.shape)}")
    value = float(alpha.item())
    if not math.isfinite(value) or value <= 0:
        raise ExportError(f"alpha of {name!r} must be finite and > 0, got {value}")


def _check_all_prefixed(tensors):
    stray = [k for k in tensors if not any(k.startswith(p + "_") for p in KOHYA_PREFIXES)]
    if stray:
        raise ExportError(
            f"{len(stray)} keys have no kohya prefix {KOHYA_PREFIXES}, e.g. {stray[:_NAMES_SHOWN]}; "
            "dotted peft/diffusers keys are silently skipped by A1111"
        )


def _kohya_lookup(prefix, module_names, to_diffusers):
    lookup = {}
    for path in module_names:
        try:
            name = kohya_module_name(prefix, to_diffusers(path))
        except ValueError:
            continue
        lookup.setdefault(name, path)
    return lookup
