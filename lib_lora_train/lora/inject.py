"""Inject LoRA layers into a frozen module tree with PEFT, and take them out again exactly.

Works on any ``torch.nn.Module`` tree: a diffusers ``UNet2DConditionModel``, the WebUI's LDM
UNet (``input_blocks.1.1.transformer_blocks.0.attn1.to_q``: same leaf names) or a
``CLIPTextModel`` (``q_proj``/``k_proj``/``v_proj``/``out_proj``). Order follows diffusers'
``train_text_to_image_lora.py``: freeze the base -> inject -> upcast the LoRA parameters to fp32
(``training_utils.cast_training_params``) -> build the trainable-parameter list once, as a list.

State dicts are PEFT-form everywhere: ``<module path>.lora_A.weight`` / ``.lora_B.weight`` with
the adapter name removed, as ``get_peft_model_state_dict`` writes them. Only PEFT APIs that
exist in peft 0.13.2 (the version inside the WebUI) are used.
"""

import dataclasses
import math
import numbers

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..errors import LoraInjectError

DEFAULT_ADAPTER_NAME = "medical_lora"
UNET_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")
SUPPORTED_LAYER_TYPES = (nn.Linear, nn.Conv2d)
LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)
PEFT_WEIGHT_SUFFIXES = ("lora_A.weight", "lora_B.weight")
_NAMES_SHOWN = 8


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """What to inject: the LoRA hyper-parameters and which layers get an adapter.

    Attributes:
        rank (`int`): the LoRA rank ``r`` (>= 1).
        alpha (`float`): PEFT's ``lora_alpha``; the update is scaled by ``alpha / rank``, which is
            also how A1111 scales it (``NetworkModule.calc_scale``), so this value is exported as is.
        dropout (`float`): ``lora_dropout`` in [0, 1).
        target_modules (`tuple[str, ...]`): module names, each equal to a module's full path or to
            its last dot-separated parts (PEFT's list semantics), e.g. ``"to_out.0"``.
    """

    rank: int
    alpha: float
    dropout: float = 0.0
    target_modules: tuple = UNET_TARGET_MODULES

    def __post_init__(self):
        _check_rank(self.rank)
        _check_alpha(self.alpha)
        _check_dropout(self.dropout)
        object.__setattr__(self, "target_modules", _checked_targets(self.target_modules))


def _check_rank(rank):
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
        raise LoraInjectError(f"LoraSpec.rank must be an integer >= 1, got {rank!r}")


def _check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
        raise LoraInjectError(f"LoraSpec.alpha must be a finite number > 0, got {alpha!r}")


def _check_dropout(dropout):
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise LoraInjectError(f"LoraSpec.dropout must be a number in [0, 1), got {dropout!r}")


def _checked_targets(targets):
    # A bare string would be a regular expression to PEFT; names only keeps matching predictable.
    if isinstance(targets, str) or not targets:
        raise LoraInjectError(
            f"LoraSpec.target_modules must be a non-empty tuple of module names such as {UNET_TARGET_MODULES}, "
            f"got {targets!r}"
        )
    targets = tuple(targets)
    bad = [t for t in targets if not isinstance(t, str) or not t or t.startswith(".") or t.endswith(".")]
    if bad or len(set(targets)) != len(targets):
        raise LoraInjectError(f"LoraSpec.target_modules must hold distinct, non-empty module names, got {targets!r}")
    return targets


class InjectedLora:
    """Handle on one injected adapter: its trainable parameters and the way back.

    Attributes:
        module (`torch.nn.Module`): the model the adapter lives in.
        adapter_name (`str`)
        spec (`LoraSpec`)
        layer_names (`tuple[str, ...]`): module paths of the adapted layers, in model order.
        parameters (`list[torch.nn.Parameter]`): the LoRA A/B weights, the only trainable
            parameters of ``module``; a list, so it can feed both the optimizer and gradient clipping.
    """

    def __init__(self, module, adapter_name, spec, layer_names, parameters, restore):
        self.module = module
        self.adapter_name = adapter_name
        self.spec = spec
        self.layer_names = tuple(layer_names)
        self.parameters = parameters
        self._restore = restore

    @property
    def num_layers(self):
        """`int`: how many layers carry the adapter."""
        return len(self.layer_names)

    @property
    def removed(self):
        """`bool`: whether :meth:`remove` has run."""
        return self._restore is None

    def remove(self):
        """Put every original layer back, restore ``requires_grad`` flags, drop PEFT's attribute.

        Idempotent, and safe after an exception in the middle of training: it only swaps module
        references, so the base weights come back bit-identical (they were never modified).
        """
        if self._restore is None:
            return
        self._restore.apply()
        self._restore = None
        self.parameters.clear()

    def state_dict(self):
        """PEFT-form copy of the adapter weights; see :func:`lora_state_dict`."""
        return lora_state_dict(self.module, self.adapter_name)

    def load_state_dict(self, state):
        """Copy PEFT-form weights into the adapter; see :func:`load_lora_state_dict`."""
        load_lora_state_dict(self.module, state, self.adapter_name)


@dataclasses.dataclass
class _Restore:
    """Everything :func:`inject_lora` changes, captured before it changes it."""

    module: nn.Module
    originals: list
    grad_flags: list
    had_peft_config: bool
    peft_config: object
    peft_config_items: dict

    @classmethod
    def capture(cls, module, targets):
        originals = []
        for name, layer in targets.items():
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            originals.append((parent, attr, layer))
        config = module.__dict__.get("peft_config")
        return cls(
            module=module,
            originals=originals,
            grad_flags=[(p, p.requires_grad) for p in module.parameters()],
            had_peft_config="peft_config" in module.__dict__,
            peft_config=config,
            peft_config_items=dict(config) if isinstance(config, dict) else {},
        )

    def apply(self):
        for parent, attr, original in self.originals:
            setattr(parent, attr, original)
        for param, flag in self.grad_flags:
            param.requires_grad_(flag)
        self._restore_peft_config()

    def _restore_peft_config(self):
        # BaseTuner copies its config dict onto the model (and updates one that is already there).
        if not self.had_peft_config:
            self.module.__dict__.pop("peft_config", None)
            return
        if isinstance(self.peft_config, dict):
            self.peft_config.clear()
            self.peft_config.update(self.peft_config_items)
        self.module.__dict__["peft_config"] = self.peft_config


def inject_lora(module, spec, adapter_name=DEFAULT_ADAPTER_NAME):
    """Freeze ``module``, inject a LoRA adapter into the targeted layers, and return its handle.

    Everything is checked before the model is touched (PEFT's ``BaseTuner.inject_adapter`` asks
    for the same); if a later step fails, the model is restored before the error propagates.

    Args:
        module (`torch.nn.Module`): the model; any naming convention.
        spec (`LoraSpec`): rank, alpha, dropout and target module names.
        adapter_name (`str`, *optional*): PEFT adapter name; it never appears in exported keys.

    Returns:
        `InjectedLora`: the trainable parameter list, layer count and ``remove()``.

    Raises:
        `LoraInjectError`: a target matches no module or a layer type LoRA cannot adapt, the
            model already carries PEFT layers, or the adapter name is invalid.
    """
    _check_adapter_name(adapter_name)
    _check_not_injected(module)
    targets = find_target_layers(module, spec.target_modules)
    restore = _Restore.capture(module, targets)
    try:
        parameters = _inject(module, spec, adapter_name, list(targets))
    except BaseException:
        restore.apply()
        raise
    return InjectedLora(module, adapter_name, spec, list(targets), parameters, restore)


def _inject(module, spec, adapter_name, expected_names):
    for param in module.parameters():
        param.requires_grad_(False)
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        init_lora_weights=True,
        bias="none",
    )
    inject_adapter_in_model(config, module, adapter_name)
    layers = _injected_layers(module, adapter_name)
    if [name for name, _ in layers] != expected_names:
        raise LoraInjectError(
            f"PEFT adapted {len(layers)} layers but {len(expected_names)} were targeted; "
            "check that target names do not also match nested modules"
        )
    parameters = _train_ready_parameters(layers, adapter_name)
    _check_only_trainable(module, parameters)
    return parameters


def _check_adapter_name(adapter_name):
    if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
        raise LoraInjectError(f"adapter_name must be a non-empty string without dots, got {adapter_name!r}")


def _check_not_injected(module):
    for name, sub in module.named_modules():
        if isinstance(sub, BaseTunerLayer):
            raise LoraInjectError(
                f"the model already carries PEFT layers (first: {name!r}); "
                "call remove() on the previous adapter before injecting another"
            )


def find_target_layers(module, target_modules):
    """Resolve target names to layers, with PEFT's list semantics (full path or dotted suffix).

    Args:
        module (`torch.nn.Module`)
        target_modules (`Sequence[str]`)

    Returns:
        `dict[str, torch.nn.Module]`: module path -> layer, in model order.

    Raises:
        `LoraInjectError`: a target matches nothing (the message lists some layer names the
            model does have), or matches a module that is not a Linear/Conv2d layer.
    """
    found = {}
    hits = {target: 0 for target in target_modules}
    for name, sub in module.named_modules():
        matched = [t for t in target_modules if name == t or name.endswith("." + t)]
        if not matched:
            continue
        if not isinstance(sub, SUPPORTED_LAYER_TYPES):
            raise LoraInjectError(_unsupported_message(matched[0], name, sub))
        found[name] = sub
        for target in matched:
            hits[target] += 1
    missing = [t for t, count in hits.items() if count == 0]
    if missing:
        raise LoraInjectError(_not_found_message(missing, module))
    return found


def _unsupported_message(target, name, sub):
    inner = [n for n, m in sub.named_modules() if n and isinstance(m, SUPPORTED_LAYER_TYPES)]
    hint = f" Name a layer inside it, e.g. {target + '.' + inner[0]!r}." if inner else ""
    return (
        f"Target module {target!r} matches {name!r} ({type(sub).__name__}), which LoRA cannot adapt: "
        f"only Linear and Conv2d layers can.{hint}"
    )


def _not_found_message(missing, module):
    leaf_names = []
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            leaf = _short_name(name)
            if leaf not in leaf_names:
                leaf_names.append(leaf)
    shown = ", ".join(repr(n) for n in leaf_names[:_NAMES_SHOWN]) or "none"
    return (
        f"Target modules {missing} not found in the base model ({type(module).__name__}). "
        f"Linear layers it has include: {shown}. Please check LoraSpec.target_modules: each name must "
        "equal a module's full path or its last dot-separated parts, e.g. 'to_q' or 'to_out.0'."
    )


def _short_name(path):
    parts = path.split(".")
    if len(parts) > 1 and parts[-1].isdigit():
        return ".".join(parts[-2:])
    return parts[-1]


def _injected_layers(module, adapter_name):
    return [
        (name, sub)
        for name, sub in module.named_modules()
        if isinstance(sub, LoraLayer) and adapter_name in sub.lora_A
    ]


def _train_ready_parameters(layers, adapter_name):
    parameters = []
    for _, layer in layers:
        for sub in (layer.lora_A[adapter_name], layer.lora_B[adapter_name]):
            for param in sub.parameters():
                if param.dtype in LOW_PRECISION_DTYPES:
                    # fp16/bf16 optimizer updates underflow; diffusers cast_training_params does this too.
                    param.data = param.data.to(torch.float32)
                param.requires_grad_(True)
                parameters.append(param)
    return parameters


def _check_only_trainable(module, parameters):
    expected = {id(p) for p in parameters}
    extra = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in expected]
    if extra or len(parameters) != len(expected):
        raise LoraInjectError(
            f"unexpected trainable parameters after injection: {extra[:_NAMES_SHOWN]}; "
            "only LoRA A/B weights may train"
        )


def lora_state_dict(module, adapter_name=DEFAULT_ADAPTER_NAME):
    """Copy the adapter's weights out in PEFT form, adapter name removed.

    Args:
        module (`torch.nn.Module`): a model with the adapter injected.
        adapter_name (`str`, *optional*)

    Returns:
        `dict[str, torch.Tensor]`: ``<module path>.lora_A.weight`` (rank x in) and
        ``.lora_B.weight`` (out x rank), detached CPU copies in the parameters' dtype.

    Raises:
        `LoraInjectError`: no adapter of that name is injected.
    """
    state = {}
    for key, param in _adapter_parameters(module, adapter_name).items():
        state[key] = param.detach().to("cpu", copy=True).contiguous()
    return state


def load_lora_state_dict(module, state, adapter_name=DEFAULT_ADAPTER_NAME):
    """Copy PEFT-form weights into an injected adapter (resume, round trips).

    All keys and shapes are checked before any weight is written.

    Args:
        module (`torch.nn.Module`): a model with the adapter injected.
        state (`dict[str, torch.Tensor]`): PEFT-form keys, exactly those of :func:`lora_state_dict`.
        adapter_name (`str`, *optional*)

    Raises:
        `LoraInjectError`: keys are missing or unexpected, or a shape differs.
    """
    params = _adapter_parameters(module, adapter_name)
    missing = sorted(params.keys() - state.keys())
    unexpected = sorted(state.keys() - params.keys())
    if missing or unexpected:
        raise LoraInjectError(
            f"LoRA state does not match the injected adapter: missing {missing[:_NAMES_SHOWN]} "
            f"({len(missing)}), unexpected {unexpected[:_NAMES_SHOWN]} ({len(unexpected)}); "
            "was it trained with the same target modules on the same model?"
        )
    for key, param in params.items():
        if tuple(state[key].shape) != tuple(param.shape):
            raise LoraInjectError(
                f"LoRA weight {key!r} has shape {tuple(state[key].shape)}, the adapter needs "
                f"{tuple(param.shape)}; check the rank"
            )
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(state[key])


def set_lora_scale(module, scale, adapter_name=DEFAULT_ADAPTER_NAME):
    """Multiply every adapted layer's ``alpha / rank`` by ``scale`` (0 turns the adapter off).

    Args:
        module (`torch.nn.Module`): a model with the adapter injected.
        scale (`float`): 1.0 restores the trained strength.
        adapter_name (`str`, *optional*)

    Returns:
        `int`: the number of layers rescaled.
    """
    layers = _injected_layers(module, adapter_name)
    if not layers:
        raise LoraInjectError(f"no LoRA adapter named {adapter_name!r} is injected in this model")
    for _, layer in layers:
        layer.set_scale(adapter_name, scale)
    return len(layers)


def _adapter_parameters(module, adapter_name):
    layers = _injected_layers(module, adapter_name)
    if not layers:
        raise LoraInjectError(f"no LoRA adapter named {adapter_name!r} is injected in this model")
    params = {}
    for name, layer in layers:
        params[f"{name}.{PEFT_WEIGHT_SUFFIXES[0]}"] = layer.lora_A[adapter_name].weight
        params[f"{name}.{PEFT_WEIGHT_SUFFIXES[1]}"] = layer.lora_B[adapter_name].weight
    return params
