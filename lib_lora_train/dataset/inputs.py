"""Turn the paths a user gives (files, folders, .zip archives) into a list of byte sources.

Nothing is extracted to disk: archive members are read into memory, one at a time, after
their declared size and compression ratio have been checked, and while reading the actual
size is capped too (a member may lie about its size). Inputs are named by position
("input 3", "input 2, member 5"), never by path: folder and file names often carry
patient names.
"""

import dataclasses
import io
import os
import pathlib
import stat
import zipfile

from ..errors import InputError


@dataclasses.dataclass(frozen=True)
class InputSource:
    """One candidate file.

    Attributes:
        label (`str`): position-based name safe to show and log.
        read (`Callable[[], bytes]`): returns the content; raises `InputError`.
        error (`InputError`, *optional*): set when the source is unusable before reading.
    """

    label: str
    read: object
    error: object = None


def expand_inputs(paths, max_file_bytes, max_zip_ratio, max_zip_bytes):
    """List every candidate file under ``paths``, in a stable order.

    Args:
        paths (`list[str | os.PathLike]`): files, folders (recursed) or ``.zip`` archives.
        max_file_bytes (`int`): largest accepted file or member.
        max_zip_ratio (`int`): largest accepted uncompressed/compressed ratio of a member.
        max_zip_bytes (`int`): largest accepted total uncompressed size of one archive.

    Returns:
        `list[InputSource]`
    """
    sources = []
    for position, raw in enumerate(paths, start=1):
        path = pathlib.Path(raw)
        label = f"input {position}"
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
            sources += [_expand_file(f"{label}, file {n}", p, max_file_bytes, max_zip_ratio, max_zip_bytes)
                        for n, p in enumerate(files, start=1)]
        elif path.is_file():
            sources += _expand_file(label, path, max_file_bytes, max_zip_ratio, max_zip_bytes)
        else:
            sources.append(InputSource(label, None, InputError(f"{label}: no such file or folder", code="not_found")))
    return _flatten(sources)


def _flatten(items):
    flat = []
    for item in items:
        flat.extend(item if isinstance(item, list) else [item])
    return flat


def _expand_file(label, path, max_file_bytes, max_zip_ratio, max_zip_bytes):
    if zipfile.is_zipfile(path) and not _looks_like_dicom(path):
        return _zip_sources(label, path, max_file_bytes, max_zip_ratio, max_zip_bytes)
    return [InputSource(label, lambda: _read_file(label, path, max_file_bytes))]


def _looks_like_dicom(path):
    with open(path, "rb") as handle:
        return _has_dicom_preamble(handle.read(132))


def _has_dicom_preamble(head):
    return head[128:132] == b"DICM"


def _read_file(label, path, max_file_bytes):
    size = os.stat(path).st_size
    if size > max_file_bytes:
        raise InputError(f"{label}: file is {size} bytes, above the limit of {max_file_bytes}", code="too_large")
    return path.read_bytes()


def _zip_sources(label, path, max_file_bytes, max_zip_ratio, max_zip_bytes):
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        return [InputSource(label, None, InputError(f"{label}: unreadable zip archive ({type(exc).__name__})", code="bad_zip"))]
    declared_total = sum(m.file_size for m in members)
    if declared_total > max_zip_bytes:
        return [InputSource(label, None, InputError(
            f"{label}: zip archive expands to {declared_total} bytes, above the limit of {max_zip_bytes}",
            code="zip_too_large"))]
    sources = []
    for number, member in enumerate(members, start=1):
        member_label = f"{label}, member {number}"
        problem = _member_problem(member, max_file_bytes, max_zip_ratio)
        if problem:
            sources.append(InputSource(member_label, None, InputError(f"{member_label}: {problem}", code="zip_unsafe")))
        else:
            sources.append(InputSource(member_label, _member_reader(path, member, member_label, max_file_bytes)))
    return sources


def _member_problem(member, max_file_bytes, max_zip_ratio):
    name = member.filename.replace("\\", "/")
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or (len(name) > 1 and name[1] == ":"):
        return "unsafe path in archive (absolute or with '..'); member skipped"
    if stat.S_ISLNK(member.external_attr >> 16):
        return "symbolic link in archive; member skipped"
    if member.flag_bits & 0x1:
        return "encrypted archive member; decrypt it first"
    if member.file_size > max_file_bytes:
        return f"member is {member.file_size} bytes, above the limit of {max_file_bytes}"
    if member.file_size > 1024 * 1024 and member.file_size > max_zip_ratio * max(member.compress_size, 1):
        return f"compression ratio above {max_zip_ratio}:1 (possible zip bomb); member skipped"
    return None


def _member_reader(path, member, label, max_file_bytes):
    def read():
        try:
            with zipfile.ZipFile(path) as archive, archive.open(member) as handle:
                data = handle.read(min(member.file_size, max_file_bytes) + 1)
        except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
            raise InputError(f"{label}: cannot be read from the archive ({type(exc).__name__})", code="bad_zip") from None
        if len(data) > member.file_size or len(data) > max_file_bytes:
            raise InputError(f"{label}: member is larger than the archive declares; skipped", code="zip_unsafe")
        if not _has_dicom_preamble(data[:132]) and zipfile.is_zipfile(io.BytesIO(data)):
            raise InputError(f"{label}: archives inside archives are not supported; unpack it first", code="nested_zip")
        return data

    return read
