"""Stand-in for WebUI 1.10.1 ``extensions-builtin/Lora/networks.py`` (imported as ``networks``: the
extension's folder is on ``sys.path``): the in-place weight merge and its backups.

``network_apply_weights`` (called by the patched ``Linear``/``Conv2d``/``GroupNorm``/``LayerNorm``
forwards, ``lora_patches.py``) keeps a CPU copy of the original weight and bias on first use
(``network_weights_backup``/``network_bias_backup``), restores from it when the wanted set of networks
changed, adds each network's ``calc_updown`` delta in place and records ``network_current_names``.
``MultiheadAttention``, fp16 caches and the functional mode are not modeled.

Also the registries (``available_networks``, ``available_network_aliases``, ``forbidden_network_aliases``,
``available_network_hash_lookup``, ``networks_in_memory``) and their refresh
(``process_network_files``, ``update_available_networks_by_names``, ``list_available_networks``),
with ``NetworkOnDisk`` from ``network.py``. Unlike the real module, importing this one does not call
``list_available_networks()`` (it would create ``cmd_opts.lora_dir`` in the working directory).
"""

import json
import os

import torch
from modules import cache, devices, hashes, shared

loaded_networks = []
available_networks = {}
available_network_aliases = {}
loaded_bundle_embeddings = {}
networks_in_memory = {}
available_network_hash_lookup = {}
forbidden_network_aliases = {}


def _read_metadata_from_safetensors(filename):
    """``sd_models.py::read_metadata_from_safetensors``: the header's ``__metadata__``, JSON values decoded."""
    with open(filename, "rb") as file:
        header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
    metadata = {}
    for key, value in header.get("__metadata__", {}).items():
        if isinstance(value, str) and value[:1] == "{":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        metadata[key] = value
    return metadata


class NetworkOnDisk:
    """``network.py::NetworkOnDisk``: metadata cached under ``"lora/" + name``, alias, hash (sd_version omitted)."""

    def __init__(self, name, filename):
        self.name, self.filename = name, filename
        self.is_safetensors = os.path.splitext(filename)[1].lower() == ".safetensors"
        self.metadata = {}
        if self.is_safetensors:
            self.metadata = cache.cached_data_for_file("safetensors-metadata", "lora/" + name, filename,
                                                       lambda: _read_metadata_from_safetensors(filename))
        self.alias = self.metadata.get("ss_output_name", self.name)
        self.hash = self.shorthash = None
        self.set_hash(self.metadata.get("sshs_model_hash")
                      or hashes.sha256_from_cache(filename, "lora/" + name, use_addnet_hash=self.is_safetensors) or "")

    def set_hash(self, v):
        self.hash, self.shorthash = v, v[0:12]
        if self.shorthash:
            available_network_hash_lookup[self.shorthash] = self

    def read_hash(self):
        if not self.hash:
            self.set_hash(hashes.sha256(self.filename, "lora/" + self.name, use_addnet_hash=self.is_safetensors) or "")


class Network:
    """``network.py::Network``: a loaded LoRA; ``modules`` maps ``network_layer_name`` -> delta.

    The real constructor is ``Network(name, network_on_disk)`` and ``load_network`` fills ``modules``
    and ``mtime``; here both come as arguments.
    """

    def __init__(self, name, modules, te_multiplier=1.0, unet_multiplier=1.0, dyn_dim=None, network_on_disk=None):
        self.name, self.modules = name, modules
        self.te_multiplier, self.unet_multiplier, self.dyn_dim = te_multiplier, unet_multiplier, dyn_dim
        self.network_on_disk = network_on_disk
        self.bundle_embeddings = {}
        self.mtime = None if network_on_disk is None else os.path.getmtime(network_on_disk.filename)
        self.mentioned_name = None


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


def process_network_files(names=None):
    candidates = list(shared.walk_files(shared.cmd_opts.lora_dir, allowed_extensions=[".pt", ".ckpt", ".safetensors"]))
    candidates += list(shared.walk_files(shared.cmd_opts.lyco_dir_backcompat,
                                         allowed_extensions=[".pt", ".ckpt", ".safetensors"]))
    for filename in candidates:
        if os.path.isdir(filename):
            continue
        name = os.path.splitext(os.path.basename(filename))[0]
        if names and name not in names:
            continue
        entry = NetworkOnDisk(name, filename)
        available_networks[name] = entry
        if entry.alias in available_network_aliases:
            forbidden_network_aliases[entry.alias.lower()] = 1
        available_network_aliases[name] = entry
        available_network_aliases[entry.alias] = entry


def update_available_networks_by_names(names):
    process_network_files(names)


def list_available_networks():
    available_networks.clear()
    available_network_aliases.clear()
    forbidden_network_aliases.clear()
    available_network_hash_lookup.clear()
    forbidden_network_aliases.update({"none": 1, "Addams": 1})
    os.makedirs(shared.cmd_opts.lora_dir, exist_ok=True)
    process_network_files()
