"""Apply an exported kohya adapter file to a host's model, temporarily, at a chosen weight.

This is how the standalone tools honour ``<lora:NAME:0.7>``: the very file the WebUI would
load is read back, mapped onto the model's own module names, injected with peft, scaled,
and removed again afterwards, leaving the base weights bit-identical.
"""

import contextlib

from ..errors import ExportError
from ..export.kohya import kohya_to_peft
from ..export.writer import read_lora_file
from .inject import LoraSpec, inject_lora, load_lora_state_dict, set_lora_scale

PARTS = (("lora_unet", "unet", "medical_lora_apply"), ("lora_te", "text_encoder", "medical_lora_apply_te"))


@contextlib.contextmanager
def applied_adapter(host, path, weight=1.0):
    """Context in which ``host``'s UNet (and text encoder) carry the adapter in ``path``.

    Args:
        host (`ModelHost`): the model to apply it to.
        path (`str | os.PathLike`): a kohya ``.safetensors`` adapter.
        weight (`float`): the ``<lora:NAME:weight>`` multiplier.

    Raises:
        ExportError: the file does not fit this model (other architecture or targets).
    """
    tensors, _ = read_lora_file(path)
    injected = []
    try:
        for prefix, attribute, adapter_name in PARTS:
            if any(key.startswith(prefix + "_") for key in tensors):
                injected.append(_inject_part(host, tensors, prefix, attribute, adapter_name, weight))
        if not injected:
            raise ExportError("the adapter file holds no lora_unet or lora_te weights")
        yield
    finally:
        for handle in reversed(injected):
            handle.remove()


def _inject_part(host, tensors, prefix, attribute, adapter_name, weight):
    module = getattr(host, attribute)
    naming = host.facts.unet_naming if attribute == "unet" else "diffusers"
    names = [name for name, _ in module.named_modules()]
    state, alphas = kohya_to_peft(tensors, prefix, names, naming=naming)
    ranks = {value.shape[0] for key, value in state.items() if key.endswith("lora_A.weight")}
    if len(ranks) != 1 or len(set(alphas.values())) != 1:
        raise ExportError("adapters with mixed ranks or alphas per layer are not supported here")
    handle = inject_lora(module, LoraSpec(ranks.pop(), next(iter(alphas.values())), 0.0, tuple(sorted(alphas))),
                         adapter_name)
    try:
        load_lora_state_dict(module, {k: v.to(module_dtype(module)) for k, v in state.items()}, adapter_name)
        set_lora_scale(module, float(weight), adapter_name)
    except BaseException:
        handle.remove()
        raise
    return handle


def module_dtype(module):
    """dtype of a module's first parameter (the LoRA layers match the base)."""
    return next(module.parameters()).dtype
