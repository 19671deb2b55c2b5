"""Verified cache folders: build once, publish atomically, trust only what still matches its manifest.

Generated model files (the embedded tiny model, the CLIP vocabulary) live under the data home.
A folder is built in a temporary sibling, gets a ``manifest.json`` with the SHA-256 of every
file, and is renamed into place in one step, so a crash mid-build never leaves a half folder
that looks complete. On every use the manifest is checked; a folder that fails the check
(edited, truncated, half deleted) is rebuilt instead of trusted.
"""

import json
import logging
import os
import pathlib
import shutil
import tempfile

from ..fileio import sha256_file
from .components import ModelLoadError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


def read_verified_manifest(folder, kind):
    """Return the manifest of ``folder`` if every listed file still has its recorded hash, else `None`.

    Args:
        folder (`pathlib.Path`): the cache folder.
        kind (`str`): the expected ``kind`` field; a folder made for something else is not trusted.

    Returns:
        `dict | None`: the manifest, or `None` when the folder is missing, foreign or damaged.
    """
    manifest_path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("kind") != kind or not files:
            return None
        for name, expected in files.items():
            if sha256_file(folder / name) != expected:
                logger.warning("cache folder %s: %s does not match its manifest", folder.name, name)
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


def _write_manifest(folder, kind, extra):
    files = {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }
    manifest = dict(extra, kind=kind, files=files)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def ensure_cached_folder(folder, kind, build, extra=None):
    """Return a verified ``folder``, building it with ``build(tmp_folder)`` when missing or damaged.

    The build runs in a temporary sibling folder that is renamed into place only once the
    manifest is written. If another process published a good folder meanwhile, that one wins.

    Args:
        folder (`str` or `os.PathLike`): where the cached files live.
        kind (`str`): recorded in the manifest and checked on reuse.
        build (`Callable[[pathlib.Path], None]`): writes the files into the folder it is given.
        extra (`dict`, *optional*): more fields to record in the manifest (versions, seeds).

    Returns:
        `tuple[pathlib.Path, dict, bool]`: the folder, its manifest, and whether this call built it.

    Raises:
        `ModelLoadError`: the folder cannot be written (e.g. a read-only data home).
    """
    folder = pathlib.Path(folder)
    manifest = read_verified_manifest(folder, kind)
    if manifest is not None:
        return folder, manifest, False
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            build(tmp)
            manifest = _write_manifest(tmp, kind, extra or {})
            _publish(tmp, folder, kind)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as error:
        raise ModelLoadError(f"cannot write the model cache folder {folder.name} ({type(error).__name__}); "
                             "check that the data home is writable and has free space") from error
    return folder, manifest, True


def _publish(tmp, folder, kind):
    if folder.exists():
        logger.warning("rebuilding damaged cache folder %s", folder.name)
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(tmp, folder)
    except OSError:
        # Another process published the same folder first; keep it if it verifies.
        if read_verified_manifest(folder, kind) is None:
            raise
