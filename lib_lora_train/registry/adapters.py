"""``Registry``: the lifecycle of adapters (register, use, delete, forget a patient, expire, verify).

One SQLite file under the data home holds one row per adapter (see ``db.py`` for the schema);
the audit log (``audit.py``) records every change. Erasure is a small state machine so that it
is idempotent and crash-safe: run the hooks (the row stays active if one fails), store the plan
with status ``deleting``, remove the files, confirm they are gone, then mark the row deleted
with its receipt in one transaction. Running ``delete`` again at any point finishes the job, and
a row never says deleted while one of its files remains.
"""

import datetime
import json
import logging
import pathlib
import sqlite3
import threading

from . import db, erasure, lifecycle, verify
from .audit import AuditLog, is_audit_id
from .errors import AdapterNameInUseError, AdapterNotFoundError, ErasureError
from .records import (
    ADAPTER_ID_PATTERN, FINGERPRINT_PATTERN, NAME_PATTERN, checked_expiry, checked_file, checked_lineage,
    checked_match, checked_text, config_digest, new_adapter_id, record_from_row,
)

logger = logging.getLogger(__name__)

DEFAULT_RETENTION_DAYS = 365
LIVE = ("active", "deleting")
FINISHED = ("deleted", "expired")


class Registry:
    """The adapter registry of one data home.

    Args:
        home (`DataHome`): where the database, the audit log, adapters and datasets live.
        retention_days (`int`): default lifetime of an adapter (GDPR Art. 5(1)(e)); one year.
        timeout (`float`): seconds to wait for another process's write lock.

    Raises:
        RegistryCorruptError: the database file is not a registry this version can use.
    """

    def __init__(self, home, *, retention_days=DEFAULT_RETENTION_DAYS, timeout=db.DEFAULT_TIMEOUT_S):
        self.home = home.ensure()
        self.retention_days = retention_days
        self.audit = AuditLog(home.audit_log_path)
        self._conn = db.connect(home.registry_path, timeout=timeout)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()  # one connection, shared by the WebUI's threads

    def close(self):
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def register(self, export_result, *, config_dict, dataset_manifest, dataset_path, base_fingerprint, purpose,
                 owner, department, legal_basis, dpia_reference, data_source, expires=None, actor,
                 adapter_id=None):
        """Record an exported adapter with its lineage and GDPR Art. 30 facts; returns the record.

        Args:
            export_result (`ExportResult`): ``name``, ``path``, ``copies``, ``sha256``, ``size_bytes``.
            config_dict (`dict`): the training config (``TrainConfig.to_dict()``).
            dataset_manifest (`dict`): the dataset's ``manifest.json``; its patient and study
                pseudonyms become the adapter's lineage (raw ids are refused).
            dataset_path (`str | os.PathLike | None`): the prepared dataset folder (erased with the
                adapter), or None when it no longer exists.
            expires (`datetime.date | str`, *optional*): default ``retention_days`` from now.
            actor (`str | None`): the signed-in user (None: anonymous, access control off).
            adapter_id (`str`, *optional*): an id reserved with :func:`new_adapter_id` and already
                written into the file's metadata.

        Raises:
            ConfigError: a missing or malformed value (checked before anything is written).
            AdapterNameInUseError: an active adapter already has this name.
        """
        row, lineage = self._new_row(export_result, config_dict, dataset_manifest, dataset_path, base_fingerprint,
                                     dict(purpose=purpose, owner=owner, department=department, legal_basis=legal_basis,
                                          dpia_reference=dpia_reference, data_source=data_source),
                                     expires, actor, adapter_id)
        with self._lock:
            try:
                with db.transaction(self._conn):
                    self._insert(row, *lineage)
                    self.audit.append("register", actor=actor, target=row["id"], details={
                        "adapter_id": row["id"], "name": row["name"], "sha256": row["sha256"],
                        "size_bytes": row["size_bytes"], "dataset_id": row["dataset_id"], "images": row["num_images"],
                        "patients": len(lineage[0]), "studies": len(lineage[1]), "config_digest": row["config_digest"],
                        "expires": row["expires_at"]})
            except sqlite3.IntegrityError:
                raise self._name_in_use(row["name"]) from None
        logger.info("registered adapter %s (%s)", row["id"], row["name"])
        return self.get(row["id"])

    def get(self, name_or_id):
        """The adapter with this id, else the live one with this name, else the latest deleted one.

        Raises:
            AdapterNotFoundError
        """
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM adapters WHERE id = ? OR name = ? ORDER BY id = ? DESC, "
                "status IN ('active', 'deleting') DESC, created_at DESC, rowid DESC LIMIT 1",
                (name_or_id, name_or_id, name_or_id)).fetchone()
            if row is None:
                raise AdapterNotFoundError(f"no adapter has the name or id {name_or_id!r}; "
                                           "see 'registry list --status all'")
            return self._record(row)

    def list(self, status=None):
        """Records in creation order, all or those with one ``status`` (active, deleting, deleted, expired)."""
        if status is not None and status not in db.ADAPTER_STATUSES:
            raise ValueError(f"status={status!r} is not one of {db.ADAPTER_STATUSES} (or None for all)")
        query = "SELECT * FROM adapters" + (" WHERE status = ?" if status else "") + " ORDER BY created_at, rowid"
        with self._lock:
            return [self._record(row) for row in self._conn.execute(query, (status,) if status else ())]

    def mark_used(self, name, when=None):
        """Record that an active adapter was used (one UPDATE; for the WebUI). Returns True if found."""
        when = (when or datetime.datetime.now(datetime.timezone.utc)).isoformat(timespec="seconds")
        with self._lock:
            cursor = self._conn.execute("UPDATE adapters SET last_used_at = ? WHERE status = 'active' AND "
                                        "(name = ? OR id = ?)", (when, name, name))
        return cursor.rowcount > 0

    def delete(self, name_or_id, *, actor, reason, delete_training_data=True, hooks=()):
        """Erase an adapter, its sidecars and copies, and (by default) its training data.

        The dataset folder is kept when ``delete_training_data`` is False or another active
        adapter still uses it (the receipt says so). Deleting a deleted adapter returns its
        stored receipt; deleting an interrupted one finishes it.

        Args:
            reason (`str`): why (one line; refused if it holds personal data such as dates or ids).
            hooks (`Iterable[Callable[[AdapterRecord], None]]`): called before the row changes
                (the WebUI drops the adapter from its lists); a failure aborts, the row stays active.

        Returns:
            `dict`: the erasure receipt (see ``erasure.build_receipt``), with ``adapter_id``,
            ``name``, ``status``, ``reason``, ``requested_by`` and ``audit_hash``.

        Raises:
            AdapterNotFoundError, ErasureError, CaptionPHIError (reason holds personal data).
        """
        record = self.get(name_or_id)
        if record.status in FINISHED:
            return self.stored_receipt(record.id)
        reason = _screened_reason(reason)
        mode = "if_unused" if delete_training_data else "keep"
        return self.erase_record(record, actor=actor, reason=reason, reason_code="user_request", final_status="deleted",
                           dataset_mode=mode, hooks=hooks)

    def forget_patient(self, patient_id, pseudonymizer, *, actor, reason, hooks=()):
        """Erase every adapter and prepared dataset that used one patient's data (GDPR Art. 17).

        The raw ``patient_id`` is turned into its keyed pseudonym at once and appears nowhere:
        not in the receipt, the audit log or the logs.

        Returns:
            `dict`: one receipt: ``patient`` (pseudonym), ``adapters`` (their receipts),
            ``datasets``, ``counts``, ``unchecked_manifests``, ``audit_hash``.
        """
        return lifecycle.forget_patient(self, pseudonymizer.patient(patient_id), actor=actor,
                              reason=_screened_reason(reason), hooks=hooks)

    def expire(self, as_of=None, unused_days=365, dry_run=False, *, actor, hooks=()):
        """Erase adapters past their expiry date or unused for more than ``unused_days`` (Art. 5(1)(e)).

        Returns:
            `dict`: ``as_of``, ``unused_days``, ``dry_run`` and ``adapters`` (id, name,
            reason_code, expires_at, last_used_at, and the receipt unless ``dry_run``).
        """
        return lifecycle.expire(self, as_of=as_of, unused_days=unused_days, dry_run=dry_run, actor=actor, hooks=hooks)

    def verify(self, repair=False, *, actor=None, hooks=()):
        """Check that registry and disk agree; returns a list of :class:`~.verify.Problem`.

        With ``repair=True``, rows whose file is gone are marked deleted (reason "file missing
        (repair)", training data kept) and interrupted erasures are finished. Orphan files are
        never deleted automatically: they are only listed (register or remove them by hand).
        """
        return verify.verify_registry(self, repair=repair, actor=actor, hooks=hooks)

    def stored_receipt(self, adapter_id):
        """The receipt stored when the adapter was erased (None while it is not)."""
        with self._lock:
            row = self._conn.execute("SELECT receipt_json FROM adapters WHERE id = ?", (adapter_id,)).fetchone()
        return json.loads(row["receipt_json"]) if row and row["receipt_json"] else None

    def live_users(self, dataset_id, dataset_path, exclude):
        """Ids of active adapters (other than ``exclude``) trained on this dataset."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id FROM adapters WHERE status = 'active' AND id != ? AND (dataset_id = ? OR dataset_path = ?) "
                "ORDER BY id", (exclude, dataset_id, dataset_path)).fetchall()
        return [row["id"] for row in rows]

    def adapters_with_patient(self, pseudonym, dataset_ids=(), dataset_paths=()):
        """Live adapters whose lineage holds ``pseudonym`` or that were trained on one of the datasets."""
        ids, paths = sorted(dataset_ids), sorted(dataset_paths)
        query = ("SELECT * FROM adapters WHERE status IN ('active', 'deleting') AND (id IN "
                 "(SELECT adapter_id FROM adapter_patients WHERE patient = ?)"
                 f" OR dataset_id IN ({', '.join('?' * len(ids))}) OR dataset_path IN ({', '.join('?' * len(paths))}))"
                 " ORDER BY created_at, rowid")
        with self._lock:
            return [self._record(row) for row in self._conn.execute(query, (pseudonym, *ids, *paths))]

    def store_erasure(self, receipt, *, subject, actor):
        """Keep a patient-erasure receipt in ``erasures`` with its audit entry; returns the receipt."""
        erasure_id = "er-" + new_adapter_id().split("-", 1)[1]
        receipt["erasure_id"] = erasure_id
        counts = receipt["counts"]
        with self._lock, db.transaction(self._conn):
            entry = self.audit.append("forget_patient", actor=actor, target=subject, details={
                "patient": subject, "adapters": counts["adapters"], "datasets": counts["datasets"],
                "adapter_ids": [r["adapter_id"] for r in receipt["adapters"]],
                "dataset_ids": [d["dataset_id"] for d in receipt["datasets"] if is_audit_id(d["dataset_id"])],
                "files_removed": counts["files_removed"], "bytes_removed": counts["bytes_removed"],
                "unchecked_manifests": len(receipt["unchecked_manifests"]),
                "receipt_sha256": erasure.receipt_digest(receipt)})
            receipt["audit_hash"] = entry["hash"]
            self._conn.execute("INSERT INTO erasures (id, kind, subject, created_at, created_by, receipt_json) "
                               "VALUES (?, ?, ?, ?, ?, ?)", (erasure_id, receipt["kind"], subject,
                                                             receipt["completed_at"], actor or "anonymous",
                                                             json.dumps(receipt)))
        logger.info("patient erasure %s: %d adapters, %d datasets", erasure_id, counts["adapters"], counts["datasets"])
        return receipt

    def erase_dataset(self, folder, *, actor, reason_code="dataset_not_kept"):
        """Erase a prepared dataset once its adapter is registered (the host is set not to keep
        training data). Its adapters keep their lineage (patient pseudonyms in this registry),
        so forget-patient still finds them. Writes one ``delete`` audit entry; the receipt."""
        receipt = lifecycle.erase_dataset(folder, self, actor)
        dataset = receipt["dataset"]
        self.audit.append("delete", actor=actor or "anonymous", target=dataset.get("dataset_id") or "dataset",
                          details={"dataset_id": dataset.get("dataset_id") or "unknown",
                                   "files_removed": receipt["counts"]["files_removed"],
                                   "bytes_removed": receipt["counts"]["bytes_removed"], "reason_code": reason_code})
        return receipt

    def protected_folders(self):
        """Folders an erasure never removes: the home and its top-level folders."""
        home = self.home
        return [p.resolve() for p in (home.root, home.adapters_dir, home.datasets_dir, home.secrets_dir)]

    def erase_record(self, record, *, actor, reason, reason_code, final_status, dataset_mode, hooks):
        """The erasure state machine shared by delete, forget, expire and repair; returns the receipt.

        An interrupted erasure resumes with its stored plan: its reason, final status and dataset
        decision win over the arguments (a dataset removal asked now is added).

        Args:
            reason_code (`str`): ``user_request``, ``patient_erasure``, ``expired``, ``unused``, ``repair``.
            final_status (`str`): ``"deleted"``, or ``"expired"`` (audited as ``expire``).
            dataset_mode (`str`): ``"if_unused"``, ``"keep"`` or ``"always"`` (see ``erasure``).
        """
        _run_hooks(record, hooks, self.audit, actor, _audit_action(final_status))
        fresh = erasure.plan_adapter_erasure(
            record, dataset_mode=dataset_mode, protected=self.protected_folders(),
            other_users=self.live_users(record.dataset_id, record.dataset_path, record.id))
        plan = self._mark_deleting(record, fresh, actor=actor, reason=reason, reason_code=reason_code,
                                   final_status=final_status)
        if plan is None:
            return self.stored_receipt(record.id)
        removals = erasure.remove_files(plan)
        erasure.prune_folders(plan)
        erasure.confirm_erased(plan)
        receipt = erasure.build_receipt(plan, removals, kind="adapter_erasure", completed_by=actor or "anonymous")
        receipt.update(adapter_id=record.id, row_id=record.id, name=record.name, status=plan["final_status"],
                       reason=plan["reason"], reason_code=plan["reason_code"], requested_at=plan["requested_at"],
                       requested_by=plan["requested_by"])
        return self._mark_deleted(record, receipt, actor=actor)

    def _mark_deleting(self, record, fresh, *, actor, reason, reason_code, final_status):
        """Store the plan with status 'deleting'; returns the plan to carry out (None if finished)."""
        with self._lock, db.transaction(self._conn):
            row = self._conn.execute("SELECT status, erasure_plan_json FROM adapters WHERE id = ?",
                                     (record.id,)).fetchone()
            if row["status"] in FINISHED:
                return None
            stored = json.loads(row["erasure_plan_json"]) if row["status"] == "deleting" else None
            plan = erasure.merge_plans(stored, fresh)
            if stored is None:
                plan.update(requested_at=erasure.utc_now(), requested_by=actor or "anonymous", reason=reason,
                            reason_code=reason_code, final_status=final_status)
            self._conn.execute("UPDATE adapters SET status = 'deleting', deleted_by = ?, deleted_reason = ?, "
                               "erasure_plan_json = ? WHERE id = ?",
                               (plan["requested_by"], plan["reason"], json.dumps(plan), record.id))
        return plan

    def _mark_deleted(self, record, receipt, *, actor):
        """Write the audit entry and mark the row deleted with its receipt, in one transaction."""
        with self._lock, db.transaction(self._conn):
            status = self._conn.execute("SELECT status FROM adapters WHERE id = ?", (record.id,)).fetchone()[0]
            if status != "deleting":
                return self.stored_receipt(record.id)
            entry = self.audit.append(_audit_action(receipt["status"]), actor=actor, target=record.id, details={
                "adapter_id": record.id, "name": record.name, "sha256": record.sha256,
                "dataset_id": record.dataset_id, "dataset_removed": receipt["dataset"]["removed"],
                **receipt["counts"], "reason_code": receipt["reason_code"],
                "status": receipt["status"], "receipt_sha256": erasure.receipt_digest(receipt)})
            receipt["audit_hash"] = entry["hash"]
            self._conn.execute("UPDATE adapters SET status = ?, deleted_at = ?, receipt_json = ? WHERE id = ?",
                               (receipt["status"], receipt["completed_at"], json.dumps(receipt), record.id))
        logger.info("adapter %s erased (%d files)", record.id, receipt["counts"]["files_removed"])
        return receipt

    def _new_row(self, export_result, config_dict, manifest, dataset_path, base_fingerprint, facts, expires, actor,
                 adapter_id):
        """Check every input and build the row and lineage (nothing is written here)."""
        name = checked_match("export_result.name", export_result.name, NAME_PATTERN,
                             "1-64 of [A-Za-z0-9_.-], not starting with '.'")
        path = checked_file(export_result.path, export_result.sha256, export_result.size_bytes)
        dataset_id, patients, studies, profile, version, images = checked_lineage(manifest)
        dataset_folder = _checked_dataset_folder(dataset_path, dataset_id)
        config_json, digest = config_digest(config_dict)
        created = datetime.datetime.now(datetime.timezone.utc)
        row = dict(
            id=checked_match("adapter_id", adapter_id or new_adapter_id(), ADAPTER_ID_PATTERN,
                             "an id from new_adapter_id()"),
            name=name, file_path=str(path), sha256=export_result.sha256, size_bytes=export_result.size_bytes,
            copies_json=json.dumps([str(pathlib.Path(p).resolve()) for p in export_result.copies]),
            base_fingerprint=checked_match("base_fingerprint", base_fingerprint, FINGERPRINT_PATTERN, "a hash or id"),
            config_json=config_json, config_digest=digest, num_images=images, dataset_id=dataset_id,
            dataset_path=dataset_folder, deid_profile=profile, deid_version=version,
            **{key: checked_text(key, value) for key, value in facts.items()},
            created_at=created.isoformat(timespec="seconds"), created_by=actor or "anonymous",
            expires_at=checked_expiry(expires, created, self.retention_days), status="active")
        if self._name_taken(name):
            raise self._name_in_use(name)
        return row, (patients, studies)

    def _insert(self, row, patients, studies):
        columns = ", ".join(row)
        marks = ", ".join("?" * len(row))
        self._conn.execute(f"INSERT INTO adapters ({columns}) VALUES ({marks})", tuple(row.values()))
        self._conn.executemany("INSERT INTO adapter_patients (adapter_id, patient) VALUES (?, ?)",
                               [(row["id"], p) for p in patients])
        self._conn.executemany("INSERT INTO adapter_studies (adapter_id, study) VALUES (?, ?)",
                               [(row["id"], s) for s in studies])

    def _name_taken(self, name):
        with self._lock:
            return self._conn.execute("SELECT 1 FROM adapters WHERE name = ? AND status IN ('active', 'deleting')",
                                      (name,)).fetchone() is not None

    @staticmethod
    def _name_in_use(name):
        return AdapterNameInUseError(f"an active adapter is already named {name!r}; choose another name, or "
                                     f"delete the old one first ('registry delete {name}')")

    def _record(self, row):
        patients = [r[0] for r in self._conn.execute(
            "SELECT patient FROM adapter_patients WHERE adapter_id = ? ORDER BY patient", (row["id"],))]
        studies = [r[0] for r in self._conn.execute(
            "SELECT study FROM adapter_studies WHERE adapter_id = ? ORDER BY study", (row["id"],))]
        return record_from_row(row, patients, studies)


def _audit_action(final_status):
    return "expire" if final_status == "expired" else "delete"


def _run_hooks(record, hooks, audit, actor, action):
    for hook in hooks:
        try:
            hook(record)
        except Exception as exc:
            audit.append(action, actor=actor, target=record.id, outcome="failed",
                         details={"adapter_id": record.id, "error_code": "hook_failed"})
            state = "still active" if record.status == "active" else "still 'deleting'"
            raise ErasureError(f"adapter {record.id} ({record.name}) was not deleted: the hook "
                               f"{getattr(hook, '__qualname__', type(hook).__name__)} failed ({type(exc).__name__}); "
                               f"the row is {state}. Fix the cause and delete again") from exc


def _screened_reason(reason):
    """The reason as one line, refused if it holds personal data (dates, ids, names...)."""
    from ..dataset.phi_check import check_caption

    reason = checked_text("reason", reason)
    check_caption(reason)
    return reason


def _checked_dataset_folder(dataset_path, dataset_id):
    if dataset_path is None:
        return None
    folder = pathlib.Path(dataset_path).resolve()
    try:
        same = json.loads((folder / erasure.MANIFEST).read_text(encoding="utf-8")).get("dataset_id") == dataset_id
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        from ..errors import ConfigError

        raise ConfigError(f"dataset_path is not the folder of dataset {dataset_id} (no manifest.json with that "
                          "dataset_id); pass the prepared dataset folder, or None if it no longer exists")
    return str(folder)
