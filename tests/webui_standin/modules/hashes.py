"""Stand-in for WebUI 1.10.1 ``modules/hashes.py``: ``sha256_from_cache``, ``sha256``, ``addnet_hash_safetensors``.

Hashes are cached in ``cache("hashes-addnet")`` (safetensors, hash of the bytes after the header)
or ``cache("hashes")`` under a title such as ``"lora/NAME"``, with the file's mtime.
"""

import hashlib
import os.path

from modules import cache, shared


def sha256_from_cache(filename, title, use_addnet_hash=False):
    hashes = cache.cache("hashes-addnet") if use_addnet_hash else cache.cache("hashes")
    try:
        ondisk_mtime = os.path.getmtime(filename)
    except FileNotFoundError:
        return None
    if title not in hashes:
        return None
    cached_sha256 = hashes[title].get("sha256", None)
    if ondisk_mtime > hashes[title].get("mtime", 0) or cached_sha256 is None:
        return None
    return cached_sha256


def sha256(filename, title, use_addnet_hash=False):
    hashes = cache.cache("hashes-addnet") if use_addnet_hash else cache.cache("hashes")
    value = sha256_from_cache(filename, title, use_addnet_hash)
    if value is not None:
        return value
    if shared.cmd_opts.no_hashing:
        return None
    with open(filename, "rb") as file:
        value = addnet_hash_safetensors(file) if use_addnet_hash else hashlib.sha256(file.read()).hexdigest()
    hashes[title] = {"mtime": os.path.getmtime(filename), "sha256": value}
    return value


def addnet_hash_safetensors(b):
    """kohya-ss hash: sha256 of everything after the safetensors header."""
    b.seek(0)
    n = int.from_bytes(b.read(8), "little")
    b.seek(n + 8)
    return hashlib.sha256(b.read()).hexdigest()
