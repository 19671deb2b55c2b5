"""What an export produced; torch-free, so the registry and the WebUI glue can use it."""

import dataclasses
import pathlib


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """An exported adapter: its alias, main file, copies, content hash, size and header."""

    name: str
    path: pathlib.Path
    copies: tuple
    sha256: str
    size_bytes: int
    metadata: dict
