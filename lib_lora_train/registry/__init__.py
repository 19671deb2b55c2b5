"""The adapter registry (SQLite), its hash-chained audit log, and erasure (GDPR Art. 5, 17, 25, 30).

Importing this package loads neither torch nor safetensors: the WebUI glue uses it at start-up.

    registry = Registry(home)
    record = registry.register(exported, config_dict=..., dataset_manifest=..., ..., actor="alice")
    receipt = registry.delete("chest_ct_v1", actor="alice", reason="no longer needed")
"""

from .adapters import Registry
from .audit import ACTIONS, AuditLog, ChainReport
from .errors import (
    AdapterNameInUseError, AdapterNotFoundError, AuditTamperedError, ErasureError, RegistryCorruptError,
    RegistryError,
)
from .lifecycle import site_pseudonymizer
from .records import AdapterRecord, new_adapter_id
from .verify import Problem

__all__ = [
    "ACTIONS", "AdapterNameInUseError", "AdapterNotFoundError", "AdapterRecord", "AuditLog", "AuditTamperedError",
    "ChainReport", "ErasureError", "Problem", "Registry", "RegistryCorruptError", "RegistryError", "new_adapter_id",
    "site_pseudonymizer",
]
