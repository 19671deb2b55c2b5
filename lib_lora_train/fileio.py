"""Atomic file writes: a reader sees the old file or the complete new one, never half.

Each write goes to a temporary file in the destination's own folder (so the final rename
never crosses a file system), is flushed and fsynced, then renamed over the target.
"""

import contextlib
import hashlib
import json
import os
import pathlib
import tempfile


@contextlib.contextmanager
def atomic_path(target):
    """Yield a temporary path next to ``target``; on success rename it to ``target``.

    On an exception the temporary file is removed and ``target`` is left untouched.
    """
    target = pathlib.Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(target, data):
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target, text):
    """Write UTF-8 ``text`` to ``target`` atomically."""
    write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target, payload):
    """Write ``payload`` as indented, key-sorted JSON to ``target`` atomically."""
    write_text_atomic(target, json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def sha256_file(path, chunk_bytes=1 << 20):
    """SHA-256 hex digest of a file, read in chunks so multi-GB checkpoints never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
