"""Stand-in for kohya-ss/sd-webui-additional-networks (HEAD e9f3d62) ``scripts/model_util.py``.

The WebUI loads it as ``scripts.model_util`` next to ``scripts/additional_networks.py``; a caller
reaches it as ``entry.module.model_util`` of that script's ``modules.scripts.scripts_data`` entry.
Mirrors the module dicts ``lora_models`` (``"stem(hash12)"`` -> path, ``"None"`` -> None),
``lora_model_names`` (lower stem -> ``"stem(hash12)"``; never cleared by ``update_models``),
``lora_models_dir``, the JSON hash cache ``cache("hashes")`` keyed by full path, ``dump_cache`` and
``update_models`` (folders from ``opts.data["additional_networks_extra_lora_path"]``, CSV-split as
``util.py::split_path_list``). Sorting, filters, legacy hashes and the file lock are not modeled.
"""

import csv
import io
import os

from modules import hashes, shared

lora_models = {}
lora_model_names = {}
legacy_model_names = {}
lora_models_dir = os.path.join("extensions", "sd-webui-additional-networks", "models", "lora")
cache_data = {}


def split_path_list(path_list):
    return [path for row in csv.reader(io.StringIO(path_list)) for path in row]


def cache(subsection):
    return cache_data.setdefault(subsection, {})


def dump_cache():
    """The real one writes ``cache_data`` to ``<ext>/hashes.json``."""


def _model_hash(filename):
    cached = cache("hashes").get(filename)
    mtime = os.stat(filename).st_mtime
    if cached is None or cached["mtime"] != mtime:
        with open(filename, "rb") as file:
            cached = {"model": hashes.addnet_hash_safetensors(file)[0:12], "legacy": "", "mtime": mtime}
        cache("hashes")[filename] = cached
    return cached["model"]


def update_models():
    paths = [lora_models_dir]
    for path in split_path_list(shared.opts.data.get("additional_networks_extra_lora_path", "")):
        path = path.lstrip()
        if os.path.isdir(path):
            paths.append(path)
    found = {}
    for path in paths:
        for filename in shared.walk_files(path, allowed_extensions=[".pt", ".ckpt", ".safetensors"]):
            stem = os.path.splitext(os.path.basename(filename))[0]
            found[f"{stem}({_model_hash(filename)})"] = filename
    lora_models.clear()
    lora_models["None"] = None
    lora_models.update(found)
    for name_and_hash, filename in lora_models.items():
        if filename is not None:
            lora_model_names[os.path.splitext(os.path.basename(filename))[0].lower()] = name_and_hash
    dump_cache()
