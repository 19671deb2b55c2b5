"""Erasure across adapters: forget one patient everywhere (Art. 17) and expire old adapters (Art. 5(1)(e)).

Both run the registry's per-adapter erasure (``Registry.erase_record``) for each adapter they
select, so each adapter gets its own receipt and audit entry; ``forget_patient`` also removes
prepared datasets that no adapter references, found by their manifest. Both are safe to run
again after a crash: what was erased is not found again, what was not is.
"""

import datetime
import logging
import pathlib

from . import erasure
from .errors import RegistryError

logger = logging.getLogger(__name__)


def site_pseudonymizer(home):
    """The pseudonymizer of the site key the data was ingested with, to find a patient's data.

    Never creates a key: a new one would find nothing and report a patient as erased.

    Raises:
        RegistryError: the data home has no site key.
    """
    from ..dicom.pseudonym import Pseudonymizer, load_or_create_site_key

    if not home.site_key_path.exists():
        raise RegistryError("no site key in the data home (secrets/site.key): the pseudonyms of ingested data cannot "
                            "be computed; restore site.key from backup (a new key would find nothing)")
    return Pseudonymizer(load_or_create_site_key(home.site_key_path))


def forget_patient(registry, pseudonym, *, actor, reason, hooks):
    """Erase every adapter and dataset whose lineage holds ``pseudonym``; returns one receipt.

    Searched: the prepared datasets under the home's ``datasets`` folder and every dataset folder
    a registry row names. Datasets kept elsewhere without a registry row cannot be found; the
    receipt lists manifests that could not be read (``unchecked_manifests``) for a manual check.
    """
    requested_at = erasure.utc_now()
    found, unreadable = erasure.find_datasets_with_patient(_dataset_folders(registry), pseudonym)
    found_ids = {_dataset_id(folder) for folder in found} - {None}
    adapters = registry.adapters_with_patient(pseudonym, dataset_ids=found_ids, dataset_paths={str(f) for f in found})
    adapter_receipts = [
        registry.erase_record(record, actor=actor, reason=reason, reason_code="patient_erasure", final_status="deleted",
                              dataset_mode="always", hooks=hooks)
        for record in adapters
    ]
    datasets = [_dataset_summary(r["dataset"], r["adapter_id"]) for r in adapter_receipts if r["dataset"]["removed"]]
    done = {d["path"] for d in datasets}
    for folder in found:
        if str(folder) not in done and (folder / erasure.MANIFEST).exists():
            datasets.append(_dataset_summary(erase_dataset(folder, registry, actor)["dataset"], None))
    receipt = {
        "receipt_version": erasure.RECEIPT_VERSION, "kind": "patient_erasure", "patient": pseudonym,
        "reason": reason, "requested_by": actor or "anonymous", "requested_at": requested_at,
        "completed_at": erasure.utc_now(), "adapters": adapter_receipts, "datasets": datasets,
        "unchecked_manifests": unreadable,
        "counts": {"adapters": len(adapter_receipts), "datasets": len(datasets),
                   "files_removed": sum(r["counts"]["files_removed"] for r in adapter_receipts)
                   + sum(d["file_count"] for d in datasets if d["removed_by"] is None),
                   "bytes_removed": sum(r["counts"]["bytes_removed"] for r in adapter_receipts)
                   + sum(d["bytes"] for d in datasets if d["removed_by"] is None)},
    }
    return registry.store_erasure(receipt, subject=pseudonym, actor=actor)


def expire(registry, *, as_of, unused_days, dry_run, actor, hooks):
    """Erase adapters past their expiry date or unused too long; list them only when ``dry_run``.

    Interrupted erasures (rows still ``deleting``) are finished too, so a scheduled run repairs
    what a crash left.
    """
    as_of = _as_date(as_of)
    if not isinstance(unused_days, int) or isinstance(unused_days, bool) or unused_days < 1:
        raise ValueError(f"unused_days={unused_days!r} must be a whole number of days >= 1")
    due = [(record, code) for record in registry.list() for code in [due_reason(record, as_of, unused_days)] if code]
    items = [{"adapter_id": r.id, "name": r.name, "reason_code": code, "expires_at": r.expires_at,
              "last_used_at": r.last_used_at, "created_at": r.created_at} for r, code in due]
    report = {"as_of": as_of.isoformat(), "unused_days": unused_days, "dry_run": dry_run, "adapters": items}
    if dry_run:
        registry.audit.append("expire", actor=actor, target="registry", outcome="dry_run", details={
            "as_of": as_of.isoformat(), "unused_days": unused_days, "adapters": len(items),
            "adapter_ids": [i["adapter_id"] for i in items], "dry_run": True})
        return report
    for (record, code), item in zip(due, items):
        item["receipt"] = registry.erase_record(
            record, actor=actor, reason=_expiry_reason(record, code, unused_days), reason_code=code,
            final_status="expired", dataset_mode="if_unused", hooks=hooks)
    return report


def due_reason(record, as_of, unused_days):
    """``"expired"``, ``"unused"``, ``"interrupted"`` (erasure to finish) or None for a record."""
    if record.status == "deleting":
        return "interrupted"
    if record.status != "active":
        return None
    if record.expires_at < as_of.isoformat():
        return "expired"
    used = datetime.datetime.fromisoformat(record.last_used_at or record.created_at).date()
    return "unused" if (as_of - used).days > unused_days else None


def _expiry_reason(record, code, unused_days):
    if code == "expired":
        return f"expired: the retention period ended on {record.expires_at}"
    if code == "unused":
        return f"unused for more than {unused_days} days"
    return "finishing an interrupted erasure"


def erase_dataset(folder, registry, actor):
    """Remove one prepared dataset folder (found by its manifest); the receipt."""
    plan = erasure.plan_dataset_erasure(folder, registry.protected_folders())
    removals = erasure.remove_files(plan)
    erasure.prune_folders(plan)
    erasure.confirm_erased(plan)
    return erasure.build_receipt(plan, removals, kind="dataset_erasure", completed_by=actor or "anonymous")


def _dataset_summary(dataset, adapter_id):
    """One removed dataset; its file list only when no adapter receipt already holds it."""
    summary = {"dataset_id": dataset.get("dataset_id"), "path": dataset["path"], "removed_by": adapter_id,
               "file_count": dataset.get("file_count", 0), "bytes": dataset.get("bytes", 0)}
    if adapter_id is None:
        summary["files"] = dataset.get("files", [])
    return summary


def _dataset_folders(registry):
    home = registry.home
    manifests = sorted(home.datasets_dir.glob("*/manifest.json")) if home.datasets_dir.is_dir() else []
    folders = [p.parent for p in manifests]
    return [f.resolve() for f in folders] + [pathlib.Path(r.dataset_path) for r in registry.list() if r.dataset_path]


def _dataset_id(folder):
    try:
        return erasure.read_manifest(folder).get("dataset_id")
    except (OSError, ValueError):
        return None


def _as_date(value):
    if value is None:
        return datetime.datetime.now(datetime.timezone.utc).date()
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    try:
        return datetime.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"as_of={value!r} must be a date YYYY-MM-DD") from None
