"""Check that the registry and the disk agree, and repair what can be repaired safely.

Problems found: active rows whose file is missing or whose size or SHA-256 differs from the
registered one, erasures left half done (rows still ``deleting``), and orphan ``.safetensors``
files in the folders the registry knows (the home's ``adapters`` folder and every registered
adapter's folder) that no live row names. Repair marks rows whose file is gone as deleted
(training data kept) and finishes interrupted erasures; it never deletes orphan files, which
may be adapters someone has not registered yet: they are listed for a person to decide.
"""

import dataclasses
import logging
import pathlib

from ..fileio import sha256_file
from .errors import RegistryError

logger = logging.getLogger(__name__)

REPAIR_REASON = "file missing (repair)"
ORPHAN_NOTE = "not in the registry; never deleted automatically: register it or remove it by hand"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One disagreement between registry and disk.

    Attributes:
        kind (`str`): ``missing_file``, ``size_mismatch``, ``hash_mismatch``, ``interrupted_erasure``
            or ``orphan_file``.
        target (`str`): the adapter id, or the orphan file's path (relative to the home when inside it).
        detail (`str`): what is wrong and what to do.
        repaired (`bool`): True when ``verify(repair=True)`` fixed it.
    """

    kind: str
    target: str
    detail: str
    repaired: bool = False

    def to_dict(self):
        return dataclasses.asdict(self)


def find_problems(registry):
    """Every :class:`Problem` of the registry, rows first, then orphan files."""
    records = registry.list()
    problems = [p for record in records for p in [_row_problem(record)] if p is not None]
    return problems + _orphans(registry.home, records)


def verify_registry(registry, *, repair, actor, hooks):
    """:func:`find_problems`, then (with ``repair``) fix rows; records a ``verify`` audit entry."""
    problems = find_problems(registry)
    if repair:
        problems = [_repaired(registry, problem, actor, hooks) for problem in problems]
    registry.audit.append("verify", actor=actor, target="registry", outcome="problems" if problems else "ok", details={
        "problems": len(problems), "repaired": sum(p.repaired for p in problems),
        "problem_kinds": sorted({p.kind for p in problems})})
    for problem in problems:
        logger.warning("registry verify: %s %s%s", problem.kind, problem.target,
                       " (repaired)" if problem.repaired else "")
    return problems


def _row_problem(record):
    if record.status == "deleting":
        return Problem("interrupted_erasure", record.id, f"the erasure of {record.name} was interrupted; run "
                       f"'registry delete {record.id}' or 'registry verify --repair' to finish it")
    if record.status != "active":
        return None
    path = pathlib.Path(record.file_path)
    if not path.is_file():
        return Problem("missing_file", record.id, f"the file of active adapter {record.name} is gone; "
                       "'registry verify --repair' marks the row deleted")
    if path.stat().st_size != record.size_bytes:
        return Problem("size_mismatch", record.id, f"the file of {record.name} has {path.stat().st_size} bytes, the "
                       f"registry says {record.size_bytes}; it was replaced or damaged: restore it or delete it")
    if sha256_file(path) != record.sha256:
        return Problem("hash_mismatch", record.id, f"the file of {record.name} does not match its registered SHA-256; "
                       "it was replaced or damaged: restore it or delete the adapter")
    return None


def _orphans(home, records):
    live = [r for r in records if r.status in ("active", "deleting")]
    known = {pathlib.Path(p) for r in live for p in (r.file_path, *r.copies)}
    folders = {home.adapters_dir.resolve()} | {pathlib.Path(r.file_path).parent for r in records}
    orphans = []
    for folder in sorted(folders):
        if folder.is_dir():
            orphans += [p for p in sorted(folder.glob("*.safetensors")) if p.is_file() and p.resolve() not in known]
    return [Problem("orphan_file", _display(path, home), ORPHAN_NOTE) for path in orphans]


def _repaired(registry, problem, actor, hooks):
    if problem.kind not in ("missing_file", "interrupted_erasure"):
        return problem
    record = registry.get(problem.target)
    try:
        registry.erase_record(record, actor=actor, reason=REPAIR_REASON, reason_code="repair", final_status="deleted",
                              dataset_mode="keep", hooks=hooks)
    except RegistryError as exc:
        return dataclasses.replace(problem, detail=f"{problem.detail}; repair failed: {exc}")
    done = "marked deleted (training data kept)" if problem.kind == "missing_file" else "erasure finished"
    return dataclasses.replace(problem, detail=f"{problem.detail}; repaired: {done}", repaired=True)


def _display(path, home):
    try:
        return str(path.resolve().relative_to(home.root.resolve()))
    except ValueError:
        return str(path)
