"""One function per user action, each writing its audit events: ingest, train (and export and
register). The CLI, the demo and later the UI call these, so every front end records the same
facts in the same hash-chained log; lower layers only return results.

Audit details hold ids, hashes, counts and codes only (``registry.audit.DETAIL_FIELDS``).
"""

import json
import logging
import pathlib

from .errors import ConfigError, LoraTrainError
from .registry import Registry, new_adapter_id

logger = logging.getLogger(__name__)

# TrainConfig keys the registry needs for the GDPR Art. 30 record of an adapter.
REGISTRY_FIELDS = ("purpose", "owner", "department", "legal_basis", "dpia_reference")


def ingest(home, inputs, output_dir, config, pseudonymizer, *, actor, overwrite=False, captions=True,
           progress=None, dataset_id=None):
    """``prepare`` plus an ``ingest`` audit entry (counts only)."""
    from .dataset.prepare import prepare_dataset

    result = prepare_dataset(inputs, output_dir, config, pseudonymizer, overwrite=overwrite, captions=captions,
                             progress=progress, dataset_id=dataset_id)
    counts = result.report["counts"]
    with Registry(home) as registry:
        registry.audit.append("ingest", actor=actor, target=result.dataset_id, outcome="ok" if result.ok else "failed",
                              details={"dataset_id": result.dataset_id, "inputs": counts["inputs"],
                                       "accepted": counts["accepted_files"], "rejected": counts["rejected_files"],
                                       "images": counts["images"], "patients": counts["patients"],
                                       "studies": counts["studies"]})
    return result


def forget_patient(home, patient_id, *, actor, reason, hooks=()):
    """Erase everything made from one patient (the id is hashed at once, never kept); the receipt.

    Raises:
        RegistryError: no site key in the data home (see ``registry.site_pseudonymizer``).
    """
    from .registry import site_pseudonymizer

    pseudonymizer = site_pseudonymizer(home)
    with Registry(home) as registry:
        return registry.forget_patient(patient_id, pseudonymizer, actor=actor, reason=reason, hooks=hooks)


def check_registry_fields(config):
    """Fail before training, not after, when the registry record would be incomplete.

    Raises:
        ConfigError: listing every missing key and how to set it.
    """
    if config.sample_prompt:
        from .dataset.phi_check import check_caption

        check_caption(config.sample_prompt)
    missing = [key for key in REGISTRY_FIELDS if not (getattr(config, key) or "").strip()]
    if missing:
        raise ConfigError(
            "the adapter registry needs " + ", ".join(missing) + " (GDPR Art. 30 record of processing); set them "
            "in the config file or with --set, e.g. --set purpose='segmentation research' --set owner='Dr. Lee'"
        )


def check_adapter_name_free(home, output_root, name):
    """Refuse, before training, a name an active adapter or an existing output folder has.

    Raises:
        AdapterNameInUseError
    """
    from .registry import AdapterNameInUseError

    with Registry(home) as registry:
        live = [r.name for r in registry.list() if r.status in ("active", "deleting")]
    # Case-insensitive, as on Windows and macOS file systems, where "Chest" and "chest" share one file.
    if name.casefold() in {other.casefold() for other in live}:
        raise AdapterNameInUseError(f"an adapter named {name!r} already exists; choose another name or delete it "
                                    "first")
    if (pathlib.Path(output_root) / name).exists():
        raise AdapterNameInUseError(f"the output folder for {name!r} already exists in the data home; choose "
                                    "another name")


def train_and_register(trainer, *, actor, progress=None, cancel_event=None, after_register=None):
    """Train, export and register one adapter, writing train_* / export / register audit entries.

    Args:
        trainer (`LoRATrainer`): configured; ``prepare_data`` and ``build_model`` may have run.
        actor (`str`): who asked (``cli:<user>``, the signed-in WebUI user, ``anonymous``).
        progress, cancel_event: passed to the loop.
        after_register (`Callable[[ExportResult, AdapterRecord], None]`, *optional*): run once the
            adapter is recorded, e.g. publishing it into the WebUI's Lora folder. If it fails, the
            adapter stays registered (it can be deleted like any other) and the error propagates.

    Returns:
        `tuple[TrainResult, ExportResult | None, AdapterRecord | None]`: export and record are None
        when the run was cancelled.
    """
    config, home = trainer.config, trainer.home
    check_registry_fields(config)
    adapter_id = new_adapter_id()
    with Registry(home) as registry:
        if trainer.examples is None:
            trainer.prepare_data()
        registry.audit.append("train_start", actor=actor, target=adapter_id,
                              details={"adapter_id": adapter_id, "images": len(trainer.examples),
                                       "config_digest": _digest(config.to_dict())})
        result = _train(trainer, registry, actor, adapter_id, progress, cancel_event)
        if result.stopped == "cancelled":
            return result, None, None
        exported = trainer.export_lora_weights(registry_id=adapter_id)
        registry.audit.append("export", actor=actor, target=adapter_id,
                              details={"adapter_id": adapter_id, "name": exported.name, "sha256": exported.sha256,
                                       "size_bytes": exported.size_bytes})
        record = _register(registry, trainer, exported, result, actor, adapter_id)
    if after_register is not None:
        after_register(exported, record)
    return result, exported, record


def _train(trainer, registry, actor, adapter_id, progress, cancel_event):
    try:
        result = trainer.train(cancel_event=cancel_event, progress=progress)
    except (Exception, KeyboardInterrupt) as exc:
        code = error_code(exc)
        registry.audit.append("train_fail", actor=actor, target=adapter_id, outcome="failed",
                              details={"adapter_id": adapter_id, "error_code": code})
        raise
    action = "train_cancel" if result.stopped == "cancelled" else "train_finish"
    registry.audit.append(action, actor=actor, target=adapter_id,
                          details={"adapter_id": adapter_id, "steps": result.steps, "epochs": result.epochs,
                                   "status": result.stopped, "base_fingerprint": result.base_fingerprint})
    return result


def error_code(exc):
    """A stable code for an error: its ``code`` if it has one, else its class name in snake case."""
    import re

    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return code
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def _register(registry, trainer, exported, result, actor, adapter_id):
    config = trainer.config
    dataset_dir = pathlib.Path(config.train_data_dir)
    manifest = _read_manifest(dataset_dir)
    return registry.register(
        exported, config_dict=config_for_record(config), dataset_manifest=manifest, dataset_path=dataset_dir,
        base_fingerprint=result.base_fingerprint, purpose=config.purpose, owner=config.owner,
        department=config.department, legal_basis=config.legal_basis, dpia_reference=config.dpia_reference,
        data_source=_data_source(manifest, trainer.host.facts), expires=config.expires, actor=actor,
        adapter_id=adapter_id,
    )


def config_for_record(config):
    """The training config as the registry keeps it: hyper-parameters, no paths or free text.

    Folder and file names may carry personal names; the dataset and adapter are referenced by
    their ids and hashes instead, and the base model by its fingerprint.
    """
    from .train_config import PATH_KEYS

    values = config.to_dict()
    for key in (*PATH_KEYS, "sample_prompt"):
        values.pop(key, None)
    values["base_model"] = "embedded" if config.base_model == "embedded" else "single-file checkpoint"
    return values


def _read_manifest(dataset_dir):
    try:
        return json.loads((dataset_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        raise LoraTrainError(
            f"the training set in {dataset_dir} has no readable manifest.json; only datasets made by "
            "'python -m lib_lora_train prepare' can be registered (their lineage is needed for erasure)"
        ) from None


def _data_source(manifest, facts):
    """A description without personal data: counts and pseudonymous dataset id only."""
    counts = manifest.get("counts", {})
    return (f"dataset {manifest.get('dataset_id', 'unknown')}: {counts.get('images', 0)} de-identified images of "
            f"{counts.get('patients', 0)} patients (pseudonymous), base model {facts.base_model_version}")


def _digest(payload):
    import hashlib

    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
