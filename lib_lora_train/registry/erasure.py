"""The file side of erasure: plan what to remove (with content hashes), remove it, confirm it is gone.

An erasure is planned before anything is removed, and the plan (every file with its SHA-256
and size) is stored in the registry row first; so a crash at any point loses no evidence, and
running the erasure again finishes it (GDPR Art. 17 "without undue delay", Art. 5(2)
accountability). What goes:

- the adapter file and its WebUI sidecars (same stem: ``.json``, ``.txt``, ``.png``,
  ``.preview.png`` and the other preview formats A1111 shows);
- its byte-identical copies (a copy whose content differs is kept and named in the receipt);
- when the adapter's folder is its own training output folder (``training_summary.json`` names
  this adapter and hash): the weights copy, loss log, loss curve, summary and checkpoints;
- the training set it was made from (the prepared dataset folder: images, captions, de-identified
  DICOMs, manifest), when asked and no other active adapter still uses it. ``manifest.json``
  goes last, so an interrupted erasure can still find the dataset by its manifest.
"""

import datetime
import hashlib
import json
import logging
import os
import pathlib

from ..fileio import sha256_file
from .errors import ErasureError

logger = logging.getLogger(__name__)

RECEIPT_VERSION = 1
SIDECAR_SUFFIXES = (".json", ".txt", ".png", ".jpg", ".jpeg", ".webp", ".gif",
                    ".preview.png", ".preview.jpg", ".preview.jpeg", ".preview.webp", ".preview.gif")
WEIGHTS_COPY = "pytorch_lora_weights.safetensors"
TRAINING_SUMMARY = "training_summary.json"
TRAINING_OUTPUTS = ("losses.csv", "loss_curve.png", TRAINING_SUMMARY)
CHECKPOINTS_DIR = "checkpoints"
SAMPLES_DIR = "samples"  # training previews (sample_prompt), made with the adapter
MANIFEST = "manifest.json"
# Order of removal: the adapter file first (the WebUI stops listing it at once), the manifest last.
ROLE_ORDER = ("adapter", "copy", "sidecar", "training_output", "checkpoint", "dataset", "dataset_manifest")


def plan_adapter_erasure(record, *, dataset_mode, other_users, protected):
    """Everything to remove for one adapter, as a JSON-able plan (see module docstring).

    Args:
        record (`AdapterRecord`): the adapter.
        dataset_mode (`str`): ``"if_unused"``, ``"keep"`` or ``"always"`` (patient erasure).
        other_users (`list[str]`): ids of other active adapters trained on the same dataset.
        protected (`list[pathlib.Path]`): folders never removed (the home and its top folders).

    Returns:
        `dict`: ``adapter_path``, ``files`` (path, role, sha256, size_bytes), ``kept`` (path, role,
        note), ``dataset`` (dataset_id, path, action, note) and ``folders`` to remove when empty.
    """
    path = pathlib.Path(record.file_path)
    files, kept, folders = [file_entry(path, "adapter")], [], []
    for copy in record.copies:
        _add_if_same(files, kept, pathlib.Path(copy), "copy", record.sha256)
    files += [file_entry(p, "sidecar") for p in sidecar_paths(path) if os.path.lexists(p)]
    if _is_own_output_folder(path.parent, record) and path.parent not in protected:
        _add_if_same(files, kept, path.parent / WEIGHTS_COPY, "training_output", record.sha256)
        files += [file_entry(path.parent / n, "training_output") for n in TRAINING_OUTPUTS
                  if os.path.lexists(path.parent / n)]
        for subfolder, role in ((CHECKPOINTS_DIR, "checkpoint"), (SAMPLES_DIR, "training_output")):
            subfolder_files, subfolder_dirs = _tree(path.parent / subfolder)
            files += [file_entry(p, role) for p in subfolder_files]
            folders += [str(d) for d in subfolder_dirs]
        folders.append(str(path.parent))
    dataset, dataset_files, dataset_dirs = _dataset_part(record, dataset_mode, other_users, protected)
    return {"adapter_path": str(path), "files": _unique(files + dataset_files), "kept": kept,
            "dataset": dataset, "folders": folders + dataset_dirs}


def plan_dataset_erasure(folder, protected):
    """Plan to remove one prepared dataset folder found by its manifest (patient erasure)."""
    folder = pathlib.Path(folder)
    dataset_id = read_manifest(folder).get("dataset_id") if (folder / MANIFEST).exists() else None
    files, dirs = _dataset_files(folder, protected)
    dataset = {"dataset_id": dataset_id, "path": str(folder), "action": "remove", "note": ""}
    return {"adapter_path": None, "files": files, "kept": [], "dataset": dataset, "folders": dirs}


def merge_plans(stored, fresh):
    """The stored plan (hashes taken before anything was removed) plus files found since.

    A dataset removal in either plan wins: a patient erasure that resumes an interrupted delete
    which kept the dataset must still remove it.
    """
    if stored is None:
        return fresh
    known = {entry["path"] for entry in stored["files"]}
    merged = dict(stored)
    if fresh["dataset"].get("action") == "remove":
        merged["dataset"] = fresh["dataset"]
    merged["files"] = _unique(stored["files"] + [e for e in fresh["files"] if e["path"] not in known])
    merged["folders"] = list(dict.fromkeys(stored["folders"] + fresh["folders"]))
    return merged


def remove_files(plan):
    """Remove every planned file; returns ``{path: {"removed_at", "found_absent"}}``.

    Raises:
        ErasureError: some files could not be removed (each is named by role and the error);
            the others are removed, and running the erasure again retries the rest.
    """
    results, failures = {}, []
    for entry in plan["files"]:
        try:
            unlink_file(entry["path"])
            results[entry["path"]] = {"removed_at": utc_now(), "found_absent": False}
        except FileNotFoundError:
            results[entry["path"]] = {"removed_at": utc_now(), "found_absent": True}
        except OSError as exc:
            failures.append(f"{entry['role']} file {pathlib.Path(entry['path']).name} ({exc.strerror})")
    if failures:
        raise ErasureError(f"{len(failures)} file(s) could not be removed: {'; '.join(failures)}. "
                           "Fix the permissions and run the erasure again; it resumes where it stopped")
    return results


def unlink_file(path):
    """Remove one file (a symbolic link itself, never its target)."""
    os.unlink(path)


def prune_folders(plan):
    """Remove the planned folders that are now empty, deepest first; non-empty ones stay."""
    for folder in sorted(set(plan["folders"]), key=lambda f: len(pathlib.Path(f).parts), reverse=True):
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            continue
        except OSError:
            logger.info("kept a folder that still holds other files")


def confirm_erased(plan):
    """Raise :class:`ErasureError` if any planned file, a new sidecar, or a dataset file remains."""
    remaining = [e["role"] for e in plan["files"] if os.path.lexists(e["path"])]
    if plan["adapter_path"]:
        remaining += ["sidecar" for p in sidecar_paths(pathlib.Path(plan["adapter_path"])) if os.path.lexists(p)]
    if plan["dataset"].get("action") == "remove":
        remaining += ["dataset" for _ in _tree(pathlib.Path(plan["dataset"]["path"]))[0]]
    if remaining:
        roles = ", ".join(sorted(set(remaining)))
        raise ErasureError(f"{len(remaining)} file(s) still present after removal ({roles}); the row stays "
                           "'deleting'; run the erasure again")


def build_receipt(plan, removals, *, kind, completed_by):
    """The erasure receipt: each removed file with hash, size and time; kept items; counts."""
    entries = []
    for entry in plan["files"]:
        done = removals.get(entry["path"], {"removed_at": utc_now(), "found_absent": True})
        entries.append(dict(entry, **done))
    dataset = dict(plan["dataset"])
    dataset_entries = [e for e in entries if e["role"].startswith("dataset")]
    if dataset.get("action") == "remove":
        dataset.update(removed=True, files=dataset_entries, file_count=len(dataset_entries),
                       bytes=sum(e["size_bytes"] or 0 for e in dataset_entries))
    else:
        dataset["removed"] = False
    other = [e for e in entries if not e["role"].startswith("dataset")]
    return {
        "receipt_version": RECEIPT_VERSION, "kind": kind, "files": other, "kept": plan["kept"], "dataset": dataset,
        "counts": {"files_removed": len(entries), "bytes_removed": sum(e["size_bytes"] or 0 for e in entries),
                   "files_kept": len(plan["kept"])},
        "completed_at": utc_now(), "completed_by": completed_by,
    }


def receipt_digest(receipt):
    """SHA-256 of a receipt's canonical JSON, without its ``audit_hash`` (added after the audit entry)."""
    body = {k: v for k, v in receipt.items() if k != "audit_hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def find_datasets_with_patient(folders, pseudonym):
    """Dataset folders whose manifest lists ``pseudonym``, and folders whose manifest is unreadable."""
    found, unreadable = [], []
    for folder in dict.fromkeys(pathlib.Path(f) for f in folders):
        if not (folder / MANIFEST).is_file():
            continue
        try:
            manifest = read_manifest(folder)
        except (OSError, ValueError):
            unreadable.append(str(folder))
            continue
        if manifest_lists_patient(manifest, pseudonym):
            found.append(folder)
    return found, unreadable


def manifest_lists_patient(manifest, pseudonym):
    """True when the manifest's patients, images or files name the pseudonym."""
    if pseudonym in manifest.get("patients", []):
        return True
    items = list(manifest.get("images", [])) + list(manifest.get("files", []))
    return any(isinstance(item, dict) and item.get("patient") == pseudonym for item in items)


def read_manifest(folder):
    """The parsed ``manifest.json`` of a dataset folder (``ValueError`` if not a JSON object)."""
    manifest = json.loads((pathlib.Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    if not isinstance(manifest, dict):
        raise ValueError("manifest.json is not a JSON object")
    return manifest


def file_entry(path, role):
    """Plan entry of one file: path, role, SHA-256 and size (None when absent or a link)."""
    path = pathlib.Path(path)
    digest = size = None
    if path.is_file() and not path.is_symlink():
        digest, size = sha256_file(path), path.stat().st_size
    return {"path": str(path), "role": role, "sha256": digest, "size_bytes": size}


def sidecar_paths(adapter_path):
    """Files the WebUI keeps next to an adapter: same stem, sidecar suffixes."""
    stem = adapter_path.with_suffix("")
    return [stem.with_name(stem.name + suffix) for suffix in SIDECAR_SUFFIXES]


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _dataset_part(record, mode, other_users, protected):
    base = {"dataset_id": record.dataset_id, "path": record.dataset_path}
    if not record.dataset_path:
        return dict(base, action="none", note="no dataset folder was registered"), [], []
    folder = pathlib.Path(record.dataset_path)
    if mode == "keep":
        return dict(base, action="keep", note="kept: training data deletion was not requested"), [], []
    if mode == "if_unused" and other_users:
        return dict(base, action="keep", note="kept: still used by active adapter(s) " + ", ".join(other_users)), [], []
    if not folder.exists():
        return dict(base, action="absent", note="already absent"), [], []
    try:
        same = read_manifest(folder).get("dataset_id") == record.dataset_id
    except (OSError, ValueError):
        same = False
    if not same or folder in protected:
        return dict(base, action="keep", note="not removed: the folder no longer holds this dataset "
                                              "(manifest missing or of another dataset); check it by hand"), [], []
    files, dirs = _dataset_files(folder, protected)
    return dict(base, action="remove", note=""), files, dirs


def _dataset_files(folder, protected):
    paths, dirs = _tree(folder)
    manifest = folder / MANIFEST
    entries = [file_entry(p, "dataset") for p in paths if p != manifest]
    if manifest in paths:
        entries.append(file_entry(manifest, "dataset_manifest"))
    return entries, [str(d) for d in dirs if d not in protected]


def _tree(folder):
    """Files (never following links) and folders (the folder itself included) under ``folder``."""
    if not folder.is_dir() or folder.is_symlink():
        return [], []
    files, dirs = [], []
    for root, dirnames, filenames in os.walk(folder, followlinks=False):
        root = pathlib.Path(root)
        dirs.append(root)
        files += [root / name for name in sorted(filenames)]
        files += [root / name for name in dirnames if (root / name).is_symlink()]
    return files, dirs


def _is_own_output_folder(folder, record):
    try:
        summary = json.loads((folder / TRAINING_SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get("name") == record.name and summary.get("sha256") == record.sha256


def _add_if_same(files, kept, path, role, sha256):
    if not os.path.lexists(path):
        return
    entry = file_entry(path, role)
    if entry["sha256"] == sha256:
        files.append(entry)
    else:
        kept.append({"path": str(path), "role": role, "note": "kept: its content differs from the registered adapter"})


def _unique(entries):
    by_path = {}
    for entry in entries:
        by_path.setdefault(entry["path"], entry)
    return sorted(by_path.values(), key=lambda e: ROLE_ORDER.index(e["role"]))
