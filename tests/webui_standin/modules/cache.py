"""Stand-in for WebUI 1.10.1 ``modules/cache.py``: ``caches``, ``cache(subsection)``, ``cached_data_for_file``.

The real subsections are ``diskcache.Cache`` objects under ``cache_dir``; here each is a dict,
which offers the same ``get``, ``in``, ``[]``, ``del`` and ``pop`` the callers use.
"""

import os

caches = {}


def cache(subsection):
    """``cache.py::cache``: the cache of one subsection (e.g. ``"hashes-addnet"``), created on first use."""
    return caches.setdefault(subsection, {})


def cached_data_for_file(subsection, title, filename, func):
    """``cache.py::cached_data_for_file``: ``func()`` cached under ``title`` until the file's mtime grows."""
    existing_cache = cache(subsection)
    ondisk_mtime = os.path.getmtime(filename)
    entry = existing_cache.get(title)
    if entry and ondisk_mtime > entry.get("mtime", 0):
        entry = None
    if not entry or "value" not in entry:
        value = func()
        if value is None:
            return None
        entry = {"mtime": ondisk_mtime, "value": value}
        existing_cache[title] = entry
    return entry["value"]
