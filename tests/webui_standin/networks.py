"""Stand-in for WebUI 1.10.1 ``extensions-builtin/Lora/networks.py`` (imported as ``networks``: the
extension's folder is on ``sys.path``): the in-place weight merge and its backups.

``network_apply_weights`` (called by the patched ``Linear``/``Conv2d``/``GroupNorm``/``LayerNorm``
forwards, ``lora_patches.py``) keeps a CPU copy of the original weight and bias on first use
(``network_weights_backup``/``network_bias_backup``), restores from it when the wanted set of networks
changed, adds each network's ``calc_updown`` delta in place and records ``network_current_names``.
``MultiheadAttention``, fp16 caches and the functional mode are not modeled.
"""

import torch
from modules import devices

loaded_networks = []


class Network:
    """``network.py::Network``: a loaded LoRA; ``modules`` maps ``network_layer_name`` -> delta."""

    def __init__(self, name, modules, te_multiplier=1.0, unet_multiplier=1.0, dyn_dim=None):
        self.name, self.modules = name, modules
        self.te_multiplier, self.unet_multiplier, self.dyn_dim = te_multiplier, unet_multiplier, dyn_dim


class NetworkModuleDelta:
    """A module whose ``calc_updown(weight)`` returns ``(delta, ex_bias)`` like ``network_lora.NetworkModuleLora``."""

    def __init__(self, delta):
        self.delta = delta

    def calc_updown(self, weight):
        return self.delta.to(weight), None


def assign_network_names_to_compvis_modules(sd_model):
    mapping = {}
    for root in (getattr(sd_model.cond_stage_model, "wrapped", sd_model.cond_stage_model), sd_model.model):
        for name, module in root.named_modules():
            network_name = name.replace(".", "_")
            mapping[network_name] = module
            module.network_layer_name = network_name
    sd_model.network_layer_mapping = mapping


def store_weights_backup(weight):
    return None if weight is None else weight.to(devices.cpu, copy=True)


def restore_weights_backup(obj, field, weight):
    if weight is None:
        setattr(obj, field, None)
        return
    getattr(obj, field).copy_(weight)


def network_restore_weights_from_backup(self):
    weights_backup = getattr(self, "network_weights_backup", None)
    bias_backup = getattr(self, "network_bias_backup", None)
    if weights_backup is None and bias_backup is None:
        return
    if weights_backup is not None:
        restore_weights_backup(self, "weight", weights_backup)
    restore_weights_backup(self, "bias", bias_backup)


def network_apply_weights(self):
    network_layer_name = getattr(self, "network_layer_name", None)
    if network_layer_name is None:
        return
    current_names = getattr(self, "network_current_names", ())
    wanted_names = tuple((x.name, x.te_multiplier, x.unet_multiplier, x.dyn_dim) for x in loaded_networks)
    if getattr(self, "network_weights_backup", None) is None and wanted_names != ():
        self.network_weights_backup = store_weights_backup(self.weight)
    if getattr(self, "network_bias_backup", None) is None and wanted_names != ():
        self.network_bias_backup = store_weights_backup(getattr(self, "bias", None))
    if current_names != wanted_names:
        network_restore_weights_from_backup(self)
        for net in loaded_networks:
            module = net.modules.get(network_layer_name)
            if module is not None and hasattr(self, "weight"):
                with torch.no_grad():
                    updown, _ = module.calc_updown(self.weight)
                    self.weight.copy_((self.weight.to(dtype=updown.dtype) + updown).to(dtype=self.weight.dtype))
        self.network_current_names = wanted_names


def network_reset_cached_weight(self):
    self.network_current_names = ()
    self.network_weights_backup = None
    self.network_bias_backup = None
