"""Tab step 6: the registered adapters, deletion, "forget a patient" and the audit view.

Every action goes through the registry with the host's delete hooks (the WebUI's Lora lists
and caches), so the tab, the REST API and the command line erase the same way and return the
same receipts.
"""

import dataclasses

from ..errors import InputError

DELETE_REASON = "erasure requested in the medical-lora tab"
FORGET_REASON = "patient erasure requested in the medical-lora tab"
ADAPTER_COLUMNS = ("name", "purpose", "owner", "department", "created", "expires", "last used", "size", "status")
AUDIT_COLUMNS = ("time", "actor", "action", "target", "outcome")
AUDIT_ROWS = 50


@dataclasses.dataclass(frozen=True)
class AdapterRow:
    """One row of the adapters table (no lineage: pseudonyms are not shown)."""

    name: str
    purpose: str
    owner: str
    department: str
    created: str
    expires: str
    last_used: str
    size: str
    status: str

    def cells(self):
        return list(dataclasses.astuple(self))


def human_size(size_bytes):
    """``1.2 MB``-style size for people."""
    size = float(size_bytes or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def adapter_rows(home, include_deleted=False):
    """The registry's adapters, newest first; active (and deleting) only unless asked."""
    from ..registry import Registry

    with Registry(home) as registry:
        records = registry.list()
    if not include_deleted:
        records = [record for record in records if record.status in ("active", "deleting")]
    return [AdapterRow(record.name, record.purpose, record.owner, record.department, record.created_at[:10],
                       (record.expires_at or "")[:10], (record.last_used_at or "never")[:10],
                       human_size(record.size_bytes), record.status)
            for record in reversed(records)]


def delete_adapter(context, name, *, user):
    """Erase one adapter everywhere (file, sidecars, host lists, training data); the receipt."""
    from ..registry import Registry

    actor = context.check_allowed(user, "delete")
    name = (name or "").strip()
    if not name:
        raise InputError("choose the adapter to delete", code="no_adapter")
    with Registry(context.home) as registry:
        return registry.delete(name, actor=actor, reason=DELETE_REASON, hooks=context.state.delete_hooks)


def forget_patient(context, patient_id, *, user):
    """Erase every adapter and dataset made from one patient's images; the receipt.

    The id is turned into its keyed pseudonym at once and is neither stored nor logged.
    """
    from ..workflow import forget_patient as forget

    actor = context.check_allowed(user, "delete")
    patient_id = (patient_id or "").strip()
    if not patient_id:
        raise InputError("type the patient id (DICOM PatientID) to forget", code="no_patient")
    return forget(context.home, patient_id, actor=actor, reason=FORGET_REASON, hooks=context.state.delete_hooks)


@dataclasses.dataclass(frozen=True)
class AuditView:
    """The latest audit entries and the result of checking the whole chain."""

    rows: list
    intact: bool
    lines: int
    problem: str


def audit_view(home, limit=AUDIT_ROWS):
    """Newest ``limit`` entries (time, actor, action, target, outcome) and the chain check."""
    from ..registry import Registry

    with Registry(home) as registry:
        report = registry.audit.check_chain()
        entries = registry.audit.latest(limit)
    rows = [[entry.get("time", ""), entry.get("actor", ""), entry.get("action", ""), entry.get("target", ""),
             entry.get("outcome", "")] for entry in entries]
    problem = "" if report.ok else f"line {report.first_bad_line}: {report.reason}"
    return AuditView(rows, report.ok, report.lines, problem)
