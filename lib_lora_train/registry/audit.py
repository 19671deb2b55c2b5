"""The audit log: an append-only, hash-chained JSON-lines file, kept apart from the database.

Separate from the registry so that restoring a database backup cannot silently rewrite history
(GDPR Art. 5(2) accountability, Art. 30 records). Each line is the canonical JSON of one entry
(sorted keys, separators ``(",", ":")``, UTF-8); ``hash`` is the SHA-256 of the canonical JSON
of every other field, ``prev_hash`` included, so editing, removing, moving or inserting a line
breaks the chain at that line. Removing trailing lines keeps the chain intact, so a small
sidecar, ``audit.head``, records the line count, byte size and last hash after every append.

Appends happen under an exclusive lock (``fcntl.flock``; ``msvcrt.locking`` on a lock file on
Windows) with flush and fsync. The head is updated in two steps around the line (announce
the new hash as ``pending``, write the line, commit the head), so a crash between the two
files is told apart from tampering and repaired by the next append.

Details are allow-listed: ids, content hashes, counts, codes and dates, checked by kind; never
personal data, raw patient ids, free text or paths.
"""

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import pathlib
import re

from ..fileio import write_json_atomic
from .errors import AuditTamperedError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
GENESIS_HASH = "0" * 64
ANONYMOUS = "anonymous"
ACTIONS = frozenset({
    "ingest", "caption_edit", "train_start", "train_finish", "train_cancel", "train_fail", "export", "register",
    "use", "delete", "forget_patient", "expire", "verify", "auth_failed",
})
OUTCOMES = frozenset({"ok", "failed", "refused", "dry_run", "problems"})
ENTRY_FIELDS = frozenset({"v", "time", "actor", "access_control", "action", "target", "outcome", "details",
                          "prev_hash", "hash"})

_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.:+-]{0,127}")  # adapter names may start with _ or -
_HASH = re.compile(r"[0-9a-f]{8,64}")
_CODE = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ACTOR = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
DETAIL_KINDS = {
    "id": lambda v: isinstance(v, str) and _ID.fullmatch(v) is not None,
    "hash": lambda v: isinstance(v, str) and _HASH.fullmatch(v) is not None,
    "count": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "code": lambda v: isinstance(v, str) and _CODE.fullmatch(v) is not None,
    "date": lambda v: isinstance(v, str) and _DATE.fullmatch(v) is not None,
    "flag": lambda v: isinstance(v, bool),
}
# The allow-list of detail fields and the kind of value each may hold; "ids" means a list of ids.
DETAIL_FIELDS = {
    "adapter_id": "id", "adapter_ids": "ids", "name": "id", "names": "ids", "dataset_id": "id",
    "dataset_ids": "ids", "patient": "id", "session_id": "id", "base_fingerprint": "id",
    "sha256": "hash", "config_digest": "hash", "receipt_sha256": "hash", "manifest_sha256": "hash",
    "size_bytes": "count", "images": "count", "patients": "count", "studies": "count", "steps": "count",
    "epochs": "count", "inputs": "count", "accepted": "count", "rejected": "count", "adapters": "count",
    "datasets": "count", "files_removed": "count", "bytes_removed": "count", "files_kept": "count",
    "problems": "count", "repaired": "count", "unused_days": "count", "unchecked_manifests": "count",
    "reason_code": "code", "error_code": "code", "status": "code", "problem_kinds": "codes",
    "expires": "date", "as_of": "date", "dataset_removed": "flag", "dry_run": "flag",
}


@dataclasses.dataclass(frozen=True)
class ChainReport:
    """Result of checking the audit log.

    Attributes:
        lines (`int`): complete lines in the log.
        first_bad_line (`int | None`): first line (1-based) that cannot be trusted; None if intact.
        reason (`str`): why that line is bad, or a note about an intact log.
    """

    lines: int
    first_bad_line: int | None
    reason: str = ""

    @property
    def ok(self):
        return self.first_bad_line is None

    def to_dict(self):
        return {"ok": self.ok, "lines": self.lines, "first_bad_line": self.first_bad_line, "reason": self.reason}


def is_audit_id(value):
    """True when ``value`` may stand in the log as an id (target or id detail)."""
    return DETAIL_KINDS["id"](value)


def canonical_json(payload):
    """The one byte form that is hashed and written: sorted keys, no spaces, UTF-8."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def entry_hash(entry):
    """SHA-256 over the canonical JSON of every field of ``entry`` except ``hash``."""
    return hashlib.sha256(canonical_json({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def check_details(details):
    """Raise ``ValueError`` unless every detail is allow-listed and holds a value of its kind."""
    for key, value in details.items():
        kind = DETAIL_FIELDS.get(key)
        if kind is None:
            raise ValueError(f"audit detail {key!r} is not allow-listed; allowed: {sorted(DETAIL_FIELDS)}")
        is_list = kind not in DETAIL_KINDS
        base = kind[:-1] if is_list else kind
        valid = all(DETAIL_KINDS[base](item) for item in value) if is_list and isinstance(value, list) else \
            (not is_list and DETAIL_KINDS[base](value))
        if not valid:
            expected = f"a list of {base} values" if is_list else f"one {base} value"
            raise ValueError(f"audit detail {key!r} must be {expected} (details hold ids, hashes, counts, codes "
                             "and dates only, never free text)")


class AuditLog:
    """The append-only audit log of one data home.

    Args:
        path (`pathlib.Path`): the JSON-lines file (``DataHome.audit_log_path``); the head is
            stored next to it as ``audit.head``.
    """

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.head_path = self.path.with_name("audit.head")

    def append(self, action, *, actor, target, outcome="ok", details=None):
        """Append one entry and return it (with its ``hash``).

        Args:
            action (`str`): one of :data:`ACTIONS`.
            actor (`str | None`): the signed-in user; None or ``"anonymous"`` when access control
                is off (recorded as ``access_control: false``, and warned about).
            target (`str | None`): id of what was acted on (adapter id, dataset id, pseudonym).
            outcome (`str`): one of :data:`OUTCOMES`.
            details (`dict`, *optional*): allow-listed fields only (:data:`DETAIL_FIELDS`).

        Raises:
            ValueError: unknown action or outcome, a target that is not an id, a detail that is
                not allow-listed or not of its kind.
        """
        entry = self._new_entry(action, actor, target, outcome, dict(details or {}))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path, "a+b") as handle:
            head, trusted, tail_ok = self._settled_head(handle)
            entry["prev_hash"] = head["hash"]
            entry["hash"] = entry_hash(entry)
            line = canonical_json(entry) + b"\n"
            if trusted:
                write_json_atomic(self.head_path, dict(head, pending=entry["hash"]))
            handle.write(line if tail_ok else b"\n" + line)
            handle.flush()
            os.fsync(handle.fileno())
            if trusted:
                size = os.fstat(handle.fileno()).st_size
                write_json_atomic(self.head_path, {"lines": head["lines"] + 1, "bytes": size, "hash": entry["hash"]})
        return entry

    def check_chain(self):
        """Check every line and the head; returns a :class:`ChainReport`."""
        if self.path.exists():
            with _locked(self.path, "rb") as handle:  # an append changes the log and the head together
                data, head = handle.read(), self._read_head()
        else:
            data, head = b"", self._read_head()
        raw_lines = data.split(b"\n")
        fragment = raw_lines.pop()  # b"" when the file ends with a newline
        hashes = []
        for number, raw in enumerate(raw_lines, start=1):
            problem = _line_problem(raw, hashes[-1] if hashes else GENESIS_HASH)
            if problem:
                return ChainReport(len(raw_lines), number, problem)
            hashes.append(json.loads(raw)["hash"])
        return _check_head(head, hashes, fragment)

    def latest(self, limit=50):
        """The last ``limit`` entries, newest first (for the tab's audit view)."""
        if not self.path.exists():
            return []
        with _locked(self.path, "rb") as handle:
            lines = handle.read().split(b"\n")
        entries = []
        for raw in reversed(lines):
            if len(entries) >= limit:
                break
            if raw.strip():
                try:
                    entries.append(json.loads(raw))
                except ValueError:
                    continue  # check_chain reports the damaged line
        return entries

    def verify_chain(self):
        """Return the first bad line number (1-based), or None when the log is intact."""
        return self.check_chain().first_bad_line

    def ensure_intact(self):
        """Raise :class:`AuditTamperedError` unless the log is intact; returns the report."""
        report = self.check_chain()
        if not report.ok:
            raise AuditTamperedError(f"the audit log {self.path.name} is not intact at line "
                                     f"{report.first_bad_line}: {report.reason}", report.first_bad_line)
        return report

    def _new_entry(self, action, actor, target, outcome, details):
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}; allowed: {sorted(ACTIONS)}")
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown audit outcome {outcome!r}; allowed: {sorted(OUTCOMES)}")
        if target is not None and not is_audit_id(target):
            raise ValueError("audit target must be an id ([A-Za-z0-9_.:+-], at most 128 characters), not free text")
        check_details(details)
        anonymous = actor in (None, "", ANONYMOUS)
        if anonymous:
            logger.warning("audit: %s by an anonymous user; access control is off (sign-in: --gradio-auth in the "
                           "WebUI, --auth standalone)", action)
        elif not isinstance(actor, str) or not _ACTOR.fullmatch(actor):
            raise ValueError("audit actor must be a user name of 1-128 printable characters")
        return {"v": FORMAT_VERSION, "time": _utc_now(), "actor": ANONYMOUS if anonymous else actor,
                "access_control": not anonymous, "action": action, "target": target, "outcome": outcome,
                "details": details}

    def _read_head(self):
        try:
            head = json.loads(self.head_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"lines": -1, "bytes": -1, "hash": ""}
        return head if isinstance(head, dict) and {"lines", "bytes", "hash"} <= set(head) else \
            {"lines": -1, "bytes": -1, "hash": ""}

    def _settled_head(self, handle):
        """The head to chain to, whether it matches the file, and whether the file ends cleanly.

        Finishes or rolls back an append that a crash interrupted; anything else that does not
        match is left alone (and the head not advanced) so ``check_chain`` keeps reporting it.
        """
        size = os.fstat(handle.fileno()).st_size
        head = self._read_head()
        if head is None and size == 0:
            return {"lines": 0, "bytes": 0, "hash": GENESIS_HASH}, True, True
        if head is not None and head.get("pending") and size > head["bytes"]:
            head = self._finish_interrupted(handle, head, size)
            size = os.fstat(handle.fileno()).st_size
        last_hash, ends_cleanly = _last_line_hash(handle, size)
        if head is not None and head["bytes"] == size and head["hash"] == (last_hash if size else GENESIS_HASH):
            return {k: head[k] for k in ("lines", "bytes", "hash")}, True, True
        logger.error("the audit log was changed outside medical-lora; the head is kept as it was so that "
                     "'audit verify' keeps reporting where; new entries are still appended")
        return {"lines": -1, "bytes": size, "hash": last_hash or GENESIS_HASH}, False, ends_cleanly

    def _finish_interrupted(self, handle, head, size):
        handle.seek(head["bytes"])
        tail = handle.read(size - head["bytes"])
        if b"\n" not in tail:
            logger.warning("audit: removing an incomplete line left by an interrupted append")
            handle.truncate(head["bytes"])
            return head
        if tail.count(b"\n") == 1 and tail.endswith(b"\n") and not _line_problem(tail[:-1], head["hash"]) \
                and json.loads(tail)["hash"] == head["pending"]:
            head = {"lines": head["lines"] + 1, "bytes": size, "hash": head["pending"]}
            write_json_atomic(self.head_path, head)
        return head


def _line_problem(raw, prev_hash):
    """Why line ``raw`` is bad given the previous line's hash, or "" when it is good."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return "not valid JSON (edited, truncated or binary data)"
    if not isinstance(entry, dict) or set(entry) != ENTRY_FIELDS:
        return "not an audit entry (fields missing or added)"
    if entry["prev_hash"] != prev_hash:
        return "prev_hash does not match the previous line: a line was removed, inserted or moved here"
    if entry_hash(entry) != entry["hash"]:
        return "hash does not match the line's content: the line was edited"
    return ""


def _check_head(head, hashes, fragment):
    lines = len(hashes)
    last = hashes[-1] if hashes else GENESIS_HASH
    if fragment:
        if head is not None and head.get("pending") and head["lines"] == lines and head["hash"] == last:
            return ChainReport(lines, None, "an interrupted append left an incomplete last line; "
                                            "the next append removes it")
        return ChainReport(lines, lines + 1, "incomplete last line (no newline): the file was truncated or appended to")
    if head is None:
        if lines == 0:
            return ChainReport(0, None, "empty log")
        return ChainReport(lines, lines, "audit.head is missing: trailing lines may have been removed")
    if head["lines"] < 0:
        return ChainReport(lines, max(lines, 1), "audit.head is unreadable")
    if lines < head["lines"]:
        return ChainReport(lines, lines + 1, f"the log ends after line {lines} but the head records "
                                             f"{head['lines']} lines: trailing lines were removed")
    if lines == head["lines"]:
        if last != head["hash"]:
            return ChainReport(lines, max(lines, 1), "this line is not the last line recorded in audit.head: "
                                                    "lines were removed or replaced")
        return ChainReport(lines, None, "")
    if lines == head["lines"] + 1 and head.get("pending") == last and \
            (hashes[head["lines"] - 1] if head["lines"] else GENESIS_HASH) == head["hash"]:
        return ChainReport(lines, None, "the last append was interrupted after its line was written; "
                                        "the next append updates the head")
    return ChainReport(lines, head["lines"] + 1, f"lines after line {head['lines']} (the head's count) "
                                                 "were added outside medical-lora")


def _last_line_hash(handle, size):
    """Hash stored in the last complete line (None if none or unreadable), and whether the file
    ends with a newline."""
    if size == 0:
        return None, True
    handle.seek(max(0, size - 65536))
    chunk = handle.read()
    ends_cleanly = chunk.endswith(b"\n")
    complete = chunk.rsplit(b"\n", 1)[0] if not ends_cleanly else chunk[:-1]
    last = complete.rsplit(b"\n", 1)[-1]
    try:
        value = json.loads(last).get("hash")
    except (ValueError, AttributeError):
        value = None
    return value if isinstance(value, str) else None, ends_cleanly


@contextlib.contextmanager
def _locked(path, mode):
    """Open ``path`` in ``mode``, holding the log's exclusive lock for the block."""
    with open(path, mode) as handle:
        with _exclusive_lock(handle, path):
            yield handle


@contextlib.contextmanager
def _exclusive_lock(handle, path):
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is not None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return
    import msvcrt  # Windows: lock one byte of a separate lock file (the log's own bytes grow)

    with open(path.with_name(path.name + ".lock"), "a+b") as lock:
        lock.seek(0)
        while True:
            try:
                msvcrt.locking(lock.fileno(), msvcrt.LK_LOCK, 1)
                break
            except OSError:
                continue  # LK_LOCK gives up after ~10 s; keep waiting like flock does
        try:
            yield
        finally:
            lock.seek(0)
            msvcrt.locking(lock.fileno(), msvcrt.LK_UNLCK, 1)


def _utc_now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
