"""Exceptions of the adapter registry, the audit log and erasure.

Each failure has its own class; each also derives from the builtin that describes it, so a
caller can catch ``LookupError`` for a missing adapter without importing this module. Messages
name adapters by id or name and files by role, never by patient data.
"""

from ..errors import LoraTrainError


class RegistryError(LoraTrainError, RuntimeError):
    """Base class of registry, audit and erasure errors."""


class RegistryCorruptError(RegistryError):
    """The registry file is not ours: not SQLite, another program's database, damaged, or newer.

    The file is never changed when this is raised.
    """


class AdapterNotFoundError(RegistryError, LookupError):
    """No adapter has the given name or id."""


class AdapterNameInUseError(RegistryError, ValueError):
    """An active adapter already has this ``<lora:NAME>`` alias."""


class ErasureError(RegistryError):
    """An erasure could not finish (a hook failed, a file could not be removed); retrying resumes it."""


class AuditTamperedError(RegistryError):
    """The audit log's hash chain or head does not match: a line was edited, removed, moved or added.

    Attributes:
        line (`int`): the first line (1-based) that cannot be trusted.
    """

    def __init__(self, message, line):
        super().__init__(message)
        self.line = line
