"""Publish an exported adapter into the WebUI's Lora folder, usable at once, and forget it completely.

Sources mirrored (AUTOMATIC1111 WebUI v1.10.1 unless noted; A1111_CONTRACT.md sections 3.4, 3.10, 4, 5):
``extensions-builtin/Lora/networks.py`` (registries, weight backups), ``network.py`` (cache titles
``"lora/" + name``), ``modules/cache.py``, ``modules/hashes.py``, ``modules/processing.py`` (cond cache),
``modules/ui_extra_networks.py`` (sidecar names), kohya-ss/sd-webui-additional-networks
``scripts/model_util.py`` and Forge ``extensions-builtin/sd_forge_lora/networks.py``.
"""

import contextlib
import csv
import io
import logging
import os
import pathlib
import shutil

from ..errors import LoraTrainError
from ..fileio import sha256_file, write_json_atomic
from ..naming import ADAPTER_NAME_RULE, is_adapter_name

logger = logging.getLogger(__name__)

MODEL_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif")
TEXT_SIDECARS = (".json", ".txt", ".description.txt", ".civitai.info", ".safetensors.backup")
SD_VERSIONS = ("SD1", "SD2", "SDXL", "Unknown")
CACHE_SUBSECTIONS = ("safetensors-metadata", "hashes-addnet", "hashes")
ADDNET_PATH_SETTING = "additional_networks_extra_lora_path"


class PublishError(LoraTrainError, ValueError):
    """An adapter cannot be published into the WebUI's Lora folder (bad name, collision)."""


def publish_adapter(exported, lora_dir, *, activation_text, preferred_weight=0.7, description, sd_version=None,
                    networks_module=None, addnet=None, shared_module=None):
    """Copy an exported adapter into the Lora folder, write its card sidecar and refresh the lists.

    ``<lora:NAME:w>`` already works without a refresh (``networks.py::load_networks`` rescans unknown
    names), but the cards, ``/sdapi/v1/loras`` and the hash lookup need
    ``networks.list_available_networks()``, and Additional Networks only sees folders named in its
    setting, after ``model_util.update_models()``.

    Args:
        exported (`ExportResult`): needs ``name``, ``path`` and ``sha256``.
        lora_dir (`str` or `os.PathLike`): ``shared.cmd_opts.lora_dir``.
        activation_text (`str`): the trigger word(s) the card appends to the prompt; screened for personal data.
        preferred_weight (`float`): the card's weight (``ui_extra_networks_lora.py::create_item``).
        description (`str`): the card's description; screened for personal data.
        sd_version (`str`, *optional*): one of ``SD1``, ``SD2``, ``SDXL``, ``Unknown``; overrides the detected
            version for card filtering. Left out, the WebUI detects it from the file's metadata.
        networks_module (`module`, *optional*): the built-in Lora extension's ``networks``.
        addnet (`module`, *optional*): Additional Networks' ``scripts/model_util.py`` (see :func:`find_addnet`).
        shared_module (`module`, *optional*): ``modules.shared``, for AddNet's setting (default ``addnet.shared``).

    Returns:
        `pathlib.Path`: the published file.

    Raises:
        PublishError: the name is unusable or another file already has it; CaptionPHIError: personal data.
    """
    name = exported.name
    if not is_adapter_name(name):
        raise PublishError(f"adapter name not usable in <lora:NAME>: use {ADAPTER_NAME_RULE}")
    from ..dataset.phi_check import check_caption  # lazily: it loads pydicom

    check_caption(activation_text)
    check_caption(description)
    if sd_version is not None and sd_version not in SD_VERSIONS:
        raise PublishError(f"sd_version must be one of {', '.join(SD_VERSIONS)}")
    lora_dir = pathlib.Path(lora_dir)
    lora_dir.mkdir(parents=True, exist_ok=True)
    target = lora_dir / f"{name}.safetensors"
    _refuse_collision(lora_dir, name, exported.sha256)
    if not target.exists():
        _copy_verified(pathlib.Path(exported.path), target, exported.sha256)
    write_json_atomic(target.with_suffix(".json"),
                      _user_metadata(activation_text, preferred_weight, description, sd_version))
    if networks_module is not None:
        networks_module.list_available_networks()
    if addnet is not None:
        _addnet_add_folder(addnet, shared_module or addnet.shared, lora_dir)
        addnet.update_models()
    logger.info("published adapter %s into the WebUI Lora folder", name)
    return target


def _refuse_collision(lora_dir, name, sha256):
    """One stem, one network: ``process_network_files`` keys by file stem, the last file found wins."""
    for extension in MODEL_EXTENSIONS:
        existing = lora_dir / f"{name}{extension}"
        if existing.exists() and (extension != ".safetensors" or sha256_file(existing) != sha256):
            raise PublishError(f"the WebUI Lora folder already has a different model named {name!r}; "
                               "rename the adapter or delete that file first")


def _copy_verified(source, target, sha256):
    """Copy, check against the export's hash, then link into place.

    ``os.link`` fails if a file of that name appeared after the collision check (another tool
    saving a model), so nothing is ever overwritten, and readers never see half a file.
    """
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        if sha256_file(tmp) != sha256:
            raise PublishError("the exported adapter changed since export (sha256 mismatch); export it again")
        try:
            os.link(tmp, target)
        except FileExistsError:
            if sha256_file(target) != sha256:
                raise PublishError(f"the WebUI Lora folder already has a different model named {target.stem!r}; "
                                   "rename the adapter or delete that file first") from None
    finally:
        tmp.unlink(missing_ok=True)


def _user_metadata(activation_text, preferred_weight, description, sd_version):
    """The keys ``ui_edit_user_metadata.py::LoraUserMetadataEditor.save_lora_user_metadata`` writes."""
    metadata = {"description": description, "activation text": activation_text,
                "preferred weight": float(preferred_weight), "negative text": "", "notes": ""}
    if sd_version is not None:
        metadata["sd version"] = sd_version
    return metadata


def _addnet_add_folder(addnet, shared_module, lora_dir):
    """Append the folder, CSV-quoted, to AddNet's setting (``util.py::split_path_list`` reads it back)."""
    opts = shared_module.opts
    current = opts.data.get(ADDNET_PATH_SETTING, "")
    folders = [path.strip() for path in _split_path_list(current)]
    if any(path and os.path.abspath(path) == os.path.abspath(lora_dir) for path in folders):
        return
    quoted = '"' + str(lora_dir).replace('"', '""') + '"'
    opts.data[ADDNET_PATH_SETTING] = f"{current},{quoted}" if current.strip() else quoted
    opts.save(shared_module.config_filename)


def _split_path_list(value):
    """AddNet's ``util.py::split_path_list``: one CSV record per line, fields are folders."""
    return [path for row in csv.reader(io.StringIO(value)) for path in row]


def find_addnet(scripts_module):
    """Additional Networks' ``model_util`` module, or None when the extension is not loaded.

    Its modules have no stable import name (``from scripts import model_util``), so the entry of
    ``modules.scripts.scripts_data`` (``ScriptClassData(script_class, path, basedir, module)``) whose
    path ends in ``additional_networks.py`` is used.
    """
    for entry in getattr(scripts_module, "scripts_data", ()):
        if os.path.basename(entry.path) == "additional_networks.py":
            return getattr(entry.module, "model_util", None)
    return None


def forget_adapter(name, lora_dir, *, networks_module, shared_module, processing_module=None, cache_module=None,
                   addnet=None, lock=None):
    """Make the WebUI forget an adapter: weights, lists, files, caches (A1111_CONTRACT.md 3.4).

    Each step mirrors what the WebUI would otherwise keep: merged deltas stay in the weights until
    the next forward (``networks.py::network_apply_weights``), ``networks_in_memory`` keeps the
    tensors, the registries keep the card, ``modules/cache.py`` keeps metadata and hashes under
    ``"lora/NAME"``, ``StableDiffusionProcessing.cached_c``/``cached_uc`` keep conditioning made
    with it, AddNet keeps ``lora_model_names`` and its own hash cache. Idempotent.

    Args:
        name (`str`): the adapter's name (file stem).
        lora_dir (`str` or `os.PathLike`): ``shared.cmd_opts.lora_dir``; only files inside it are removed.
        networks_module, shared_module (`module`): ``networks`` (Lora or ``sd_forge_lora``) and ``modules.shared``.
        processing_module, cache_module (`module`, *optional*): ``modules.processing`` and ``modules.cache``.
        addnet (`module`, *optional*): AddNet's ``model_util``.
        lock (*optional*): a context manager held for the in-memory steps, normally ``call_queue.queue_lock``.

    Returns:
        `dict`: ``name``, ``unloaded``, ``layers_restored``, ``registry_entries``, ``files_removed``
        (names relative to ``lora_dir``), ``cache_entries``, ``cond_cache_reset``, ``forge``, ``addnet``,
        ``notes`` and ``nothing_to_do``.
    """
    lora_dir = pathlib.Path(lora_dir)
    files = _adapter_files(lora_dir, name, networks_module)
    models = {os.path.abspath(path) for path in files if path.suffix in MODEL_EXTENSIONS}
    report = {"name": name, "notes": []}
    with lock if lock is not None else contextlib.nullcontext():
        report["registry_entries"] = _registry_entries(networks_module, name, models)
        unloaded = _unload(networks_module, name, models)
        report["unloaded"] = sorted(unloaded)
        report["layers_restored"] = _restore_layers(networks_module, shared_module, unloaded | {name})
        report["forge"] = _forget_forge(networks_module, shared_module, files, report["notes"])
        report["cond_cache_reset"] = _reset_cond_cache(processing_module, report["notes"])
        report["files_removed"] = _remove_files(lora_dir, files)
        report["cache_entries"] = _purge_caches(cache_module, name, report["notes"])
        networks_module.list_available_networks()
    report["addnet"] = _forget_addnet(addnet, name, models)
    report["nothing_to_do"] = not any(report[key] for key in (
        "registry_entries", "unloaded", "layers_restored", "files_removed", "cache_entries", "addnet"))
    logger.info("WebUI forgot adapter %s: %d files, %d layers restored, %d cache entries", name,
                len(report["files_removed"]), report["layers_restored"], len(report["cache_entries"]))
    return report


def _adapter_files(lora_dir, name, networks_module):
    """The model and every sidecar (``ui_extra_networks.py::find_preview``/``find_description``, ``.json``)."""
    folders = {lora_dir}
    entry = networks_module.available_networks.get(name)
    if entry is not None and _inside(lora_dir, entry.filename):
        folders.add(pathlib.Path(entry.filename).parent)
    suffixes = MODEL_EXTENSIONS + TEXT_SIDECARS + tuple(
        f"{infix}.{ext}" for ext in PREVIEW_EXTENSIONS for infix in ("", ".preview"))
    return sorted(folder / f"{name}{suffix}" for folder in folders for suffix in suffixes
                  if os.path.lexists(folder / f"{name}{suffix}"))


def _inside(folder, path):
    return pathlib.Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


def _registry_entries(networks, name, models):
    """Which registries name it (``networks.py``: stem, alias and shorthash lookups)."""
    found = []
    for registry in ("available_networks", "available_network_aliases", "available_network_hash_lookup"):
        table = getattr(networks, registry, {})
        if any(key == name or os.path.abspath(getattr(entry, "filename", "")) in models
               for key, entry in table.items()):
            found.append(registry)
    if name in getattr(networks, "networks_in_memory", {}):
        found.append("networks_in_memory")
    return found


def _unload(networks, name, models):
    """Drop it from ``loaded_networks`` (in place: ``lora.py`` aliases the list) and ``networks_in_memory``."""
    def matches(net):
        on_disk = getattr(net, "network_on_disk", None)
        return net.name == name or (on_disk is not None and os.path.abspath(on_disk.filename) in models)

    removed = {net.name for net in networks.loaded_networks if matches(net)}
    networks.loaded_networks[:] = [net for net in networks.loaded_networks if not matches(net)]
    in_memory = getattr(networks, "networks_in_memory", {})
    for key in [key for key, net in in_memory.items() if matches(net)]:
        removed.add(key)
        in_memory.pop(key, None)
    return removed


def _restore_layers(networks, shared_module, names):
    """Back out merged deltas now rather than on the next forward.

    ``network_restore_weights_from_backup`` copies the CPU backups back; ``network_reset_cached_weight``
    drops them, so the next forward of a layer still wanted by another network re-backs up the
    clean weight and re-applies only that network (``network_apply_weights``).
    """
    if not hasattr(networks, "network_restore_weights_from_backup"):
        return 0
    import torch

    mapping = getattr(getattr(shared_module, "sd_model", None), "network_layer_mapping", None) or {}
    restored, seen = 0, set()
    for module in mapping.values():
        current = getattr(module, "network_current_names", ()) or ()
        if id(module) in seen or not any(entry[0] in names for entry in current):
            continue
        seen.add(id(module))
        with torch.no_grad():
            networks.network_restore_weights_from_backup(module)
        networks.network_reset_cached_weight(module)
        restored += 1
    return restored


def _forget_forge(networks, shared_module, files, notes):
    """Forge: ``load_lora_state_dict`` is an ``lru_cache`` and ``current_lora_hash`` skips repatching."""
    loader = getattr(networks, "load_lora_state_dict", None)
    if loader is None or not hasattr(loader, "cache_clear"):
        return False
    loader.cache_clear()
    model = getattr(shared_module, "sd_model", None)
    current = str(getattr(model, "current_lora_hash", ""))
    if any(str(path) in current or path.name in current for path in files):
        original = getattr(model, "forge_objects_original", None)
        if original is not None:
            model.forge_objects.unet, model.forge_objects.clip = original.unet, original.clip
        model.current_lora_hash = str([])
        notes.append("forge: patched UNet/CLIP reset to the originals")
    return True


def _reset_cond_cache(processing, notes):
    """``processing.py``: conditioning is cached in class attributes keyed by prompt and extra networks."""
    if processing is None:
        notes.append("prompt conditioning cache not reset (no processing module)")
        return False
    processing.StableDiffusionProcessing.cached_c = [None, None]
    processing.StableDiffusionProcessing.cached_uc = [None, None]
    txt2img = getattr(processing, "StableDiffusionProcessingTxt2Img", None)
    if txt2img is not None:
        txt2img.cached_hr_c = [None, None]
        txt2img.cached_hr_uc = [None, None]
    return True


def _remove_files(lora_dir, files):
    removed = []
    for path in files:
        if _inside(lora_dir, path):
            path.unlink(missing_ok=True)
            removed.append(os.path.relpath(path, lora_dir))
    return removed


def _purge_caches(cache_module, name, notes):
    """``network.py``/``hashes.py`` titles: ``"lora/" + name`` in metadata and both hash subsections."""
    if cache_module is None:
        notes.append("WebUI disk caches not purged (no cache module); their entries are mtime-checked")
        return []
    purged = []
    title = "lora/" + name
    for subsection in CACHE_SUBSECTIONS:
        store = cache_module.cache(subsection)
        if title in store:
            store.pop(title, None)
            purged.append(f"{subsection}:{title}")
    return purged


def _forget_addnet(addnet, name, models):
    """AddNet: ``update_models`` rebuilds ``lora_models`` but never clears ``lora_model_names``."""
    if addnet is None:
        return []
    done = []
    if addnet.lora_model_names.pop(name.lower(), None) is not None:
        done.append("lora_model_names")
    hash_cache = addnet.cache("hashes")
    for key in [key for key in hash_cache if os.path.abspath(key) in models]:
        hash_cache.pop(key, None)
        done.append("hashes.json")
    if done:
        addnet.dump_cache()
    addnet.update_models()
    return done


def webui_delete_hook(lora_dir, *, networks_module, shared_module, processing_module=None, cache_module=None,
                      addnet=None, lock=None, reports=None):
    """A ``Registry.delete(..., hooks=(hook,))`` hook that runs :func:`forget_adapter` for the record.

    The registry calls it before marking the row deleted; an exception here aborts the delete
    and leaves the row active, so a WebUI that still holds the adapter is never reported clean.

    Args:
        reports (`list`, *optional*): each call's report is appended here (for the receipt or log).
    """
    def hook(record):
        report = forget_adapter(record.name, lora_dir, networks_module=networks_module, shared_module=shared_module,
                                processing_module=processing_module, cache_module=cache_module, addnet=addnet,
                                lock=lock)
        if reports is not None:
            reports.append(report)
        return report

    return hook
