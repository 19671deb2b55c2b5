"""Put the WebUI's loaded checkpoint into a trainable state, and back exactly as it was.

Each ``suspend_*``/``freeze_*``/``enable_*`` function changes one piece of WebUI state that
would break LoRA training or change the base weights under it, and returns the callable that
undoes that change. :func:`training_session` stacks them, so success, cancel and an exception
all undo everything in reverse order; it then proves with a fingerprint that the checkpoint's
weights are bit-identical to what they were before training.

Only this module and :mod:`.webui_host` touch WebUI state, and only inside functions: importing
it needs neither the WebUI nor its ``ldm`` package. Sources are AUTOMATIC1111 WebUI v1.10.1.
"""

import contextlib
import functools
import importlib
import logging
import sys

logger = logging.getLogger(__name__)

# What ``modules/sd_hijack.py::undo_optimizations`` overwrites. Every cross-attention optimization
# (``modules/sd_hijack_optimizations.py``: xformers, sdp, sub-quadratic, Doggettx, ...) only swaps
# these, so restoring them restores the optimization that was active, whatever the settings say now.
ATTENTION_PATCH_TARGETS = (
    ("ldm.modules.attention", "CrossAttention", "forward"),
    ("ldm.modules.diffusionmodules.model", "AttnBlock", "forward"),
    ("ldm.modules.diffusionmodules.model", None, "nonlinearity"),
    ("sgm.modules.attention", "CrossAttention", "forward"),
    ("sgm.modules.diffusionmodules.model", "AttnBlock", "forward"),
    ("sgm.modules.diffusionmodules.model", None, "nonlinearity"),
)
# LDM blocks with an un-checkpointed ``_forward``: those ``modules/sd_hijack_checkpoint.py`` patches.
CHECKPOINTED_BLOCKS = ("BasicTransformerBlock", "ResBlock", "AttentionBlock")
# Where the built-in Lora extension keeps the original weights of a layer it merged into
# (``extensions-builtin/Lora/networks.py::network_apply_weights``).
LORA_BACKUP_ATTRIBUTES = ("network_weights_backup", "network_bias_backup")
# What is used of that module; another top-level ``networks`` module lacks these.
LORA_EXTENSION_API = ("loaded_networks", "network_restore_weights_from_backup", "network_reset_cached_weight")
_MISSING = object()


def _noop():
    """Undo for a change that was not needed."""


def unmerge_builtin_lora(sd_model):
    """Take every built-in Lora delta out of the weights and leave the extension with nothing loaded.

    A1111 merges LoRA deltas into the weights in place on a layer's next forward and keeps a CPU
    copy of the originals (``networks.py::network_apply_weights``). Emptying ``loaded_networks``
    in place and calling ``network_restore_weights_from_backup`` then ``network_reset_cached_weight``
    on each backed-up layer is the eager form of what the next generation would do
    (A1111_CONTRACT.md 3.4); networks load again lazily from the next prompt. Nothing to undo.

    Args:
        sd_model (`torch.nn.Module`): the WebUI's loaded model.

    Returns:
        `int`: how many layers were restored (0 when the extension is not loaded).
    """
    import torch

    networks = sys.modules.get("networks")
    if not all(hasattr(networks, name) for name in LORA_EXTENSION_API):
        return 0
    networks.loaded_networks.clear()
    restored = 0
    with torch.no_grad():
        for module in sd_model.modules():
            if all(getattr(module, name, None) is None for name in LORA_BACKUP_ATTRIBUTES):
                continue
            networks.network_restore_weights_from_backup(module)
            networks.network_reset_cached_weight(module)
            restored += 1
    if restored:
        logger.info("restored %d layers from the built-in Lora extension's weight backups", restored)
    return restored


def suspend_hypernetworks(shared):
    """Unload hypernetworks for the run: every CrossAttention forward applies them to the context.

    ``modules/hypernetworks/hypernetwork.py::attention_CrossAttention_forward`` and each optimized
    forward call ``apply_hypernetworks(shared.loaded_hypernetworks, ...)``; the list keeps the last
    prompt's hypernetworks until the next one. A1111's hypernetwork training empties it the same way.
    """
    loaded = getattr(shared, "loaded_hypernetworks", None)
    if not loaded:
        return _noop
    shared.loaded_hypernetworks = []

    def undo():
        shared.loaded_hypernetworks = loaded

    return undo


def suspend_attention_optimizations(opts):
    """Switch to vanilla attention for the run, as A1111's own training does, unless the user opted in.

    ``modules/textual_inversion/ui.py::train_embedding`` and ``hypernetworks/ui.py`` call
    ``sd_hijack.undo_optimizations()`` unless ``opts.training_xattention_optimizations``. Instead of
    ``apply_optimizations()`` afterwards (which re-reads the settings and prints), the patched
    attributes are snapshotted and put back exactly.
    """
    if getattr(opts, "training_xattention_optimizations", False):
        return _noop
    saved = _snapshot_attributes(ATTENTION_PATCH_TARGETS)
    try:
        importlib.import_module("modules.sd_hijack").undo_optimizations()
    except BaseException:
        _restore_attributes(saved)
        raise
    return functools.partial(_restore_attributes, saved)


def _snapshot_attributes(targets):
    saved = []
    for module_name, class_name, attribute in targets:
        module = sys.modules.get(module_name)
        owner = getattr(module, class_name, None) if class_name else module
        if owner is not None:
            saved.append((owner, attribute, vars(owner).get(attribute, _MISSING)))
    return saved


def _restore_attributes(saved):
    for owner, attribute, value in saved:
        if value is not _MISSING:
            setattr(owner, attribute, value)
        elif attribute in vars(owner):
            delattr(owner, attribute)


def suspend_webui_checkpointing():
    """Take out A1111's own gradient-checkpointing patch if it is active; put it back afterwards.

    ``modules/sd_hijack_checkpoint.py::add`` replaces the LDM blocks' ``forward`` with the
    reentrant ``torch.utils.checkpoint.checkpoint``, under which LoRA weights inside a block get
    no gradient when the block's inputs do not require grad. Its ``stored`` list is non-empty
    while the patch is in place (only during A1111's TI/HN training).
    """
    checkpoint = importlib.import_module("modules.sd_hijack_checkpoint")
    if not checkpoint.stored:
        return _noop
    checkpoint.remove()
    return checkpoint.add


def freeze_model(sd_model):
    """Set ``requires_grad=False`` on every parameter; the undo restores each flag and train/eval mode.

    A1111 never freezes the UNet (A1111_CONTRACT.md 2.6): its parameters keep
    ``requires_grad=True``, so autograd would keep a graph and gradients for every frozen weight.
    """
    flags = [(parameter, parameter.requires_grad) for parameter in sd_model.parameters()]
    modes = [(module, module.training) for module in sd_model.modules()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)

    def undo():
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode

    return undo


def enable_block_checkpointing(unet):
    """Recompute each LDM block in backward with non-reentrant ``torch.utils.checkpoint``.

    The WebUI's patch (``modules/sd_hijack_checkpoint.py``) is reentrant, which gives LoRA weights
    inside a block no gradient when the block input does not require grad (A1111_CONTRACT.md 2.7).
    This sets an instance-level ``forward`` on each block (``_forward`` under ``use_reentrant=False``),
    leaving the classes alone; the undo deletes those instance attributes again.

    Args:
        unet (`torch.nn.Module`): the LDM ``UNetModel``.

    Returns:
        `Callable[[], None]`: the undo.
    """
    patched = []
    for module in unet.modules():
        if type(module).__name__ in CHECKPOINTED_BLOCKS and callable(getattr(module, "_forward", None)):
            patched.append((module, vars(module).get("forward", _MISSING)))
            module.forward = functools.partial(_checkpointed_call, module._forward)
    logger.info("gradient checkpointing on %d UNet blocks", len(patched))
    return functools.partial(_restore_forwards, patched)


def _checkpointed_call(function, *args, **kwargs):
    from torch.utils.checkpoint import checkpoint

    return checkpoint(function, *args, use_reentrant=False, **kwargs)


def _restore_forwards(patched):
    for module, forward in patched:
        if forward is _MISSING:
            vars(module).pop("forward", None)
        else:
            module.forward = forward


def check_unchanged(fingerprint, before):
    """Raise ``BaseModelChangedError`` when the base weights' fingerprint differs from ``before``."""
    from ..errors import BaseModelChangedError

    if fingerprint() != before:
        raise BaseModelChangedError(
            "the WebUI checkpoint's weights changed during training; reload the checkpoint "
            "(Settings > Actions > Reload checkpoint, or pick it again) before generating"
        )


@contextlib.contextmanager
def training_session(sd_model, shared, fingerprint):
    """Context in which ``sd_model`` can be trained; everything is undone on exit, in reverse order.

    On entry: built-in Lora deltas are taken out of the weights, then the fingerprint of the clean
    checkpoint weights is taken; hypernetworks, attention optimizations and A1111's checkpointing
    patch are suspended; every parameter is frozen. On exit (success, cancel or exception) each
    change is undone and the fingerprint is compared.

    Args:
        sd_model (`torch.nn.Module`): the WebUI's loaded model.
        shared (`module`): the WebUI's ``modules.shared`` (``opts``, ``loaded_hypernetworks``).
        fingerprint (`Callable[[], str]`): fingerprint of the frozen base weights.

    Yields:
        `str`: the fingerprint taken on entry.

    Raises:
        `BaseModelChangedError`: on exit, when the weights differ from those on entry.
    """
    unmerge_builtin_lora(sd_model)
    before = fingerprint()
    with contextlib.ExitStack() as stack:
        stack.callback(check_unchanged, fingerprint, before)
        stack.callback(suspend_hypernetworks(shared))
        stack.callback(suspend_attention_optimizations(shared.opts))
        stack.callback(suspend_webui_checkpointing())
        stack.callback(freeze_model(sd_model))
        yield before
