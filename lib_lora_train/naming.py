"""The one rule for adapter names, shared by the config, export and the registry.

A name is what users type in ``<lora:NAME:0.7>``: the WebUI's prompt syntax cannot address a
name with ``:``, ``>``, spaces or path separators, and a leading ``.`` would hide the file.
"""

import re

ADAPTER_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
ADAPTER_NAME_RULE = "1 to 64 letters, digits, '_', '-' or '.', not starting with '.'"


def is_adapter_name(value):
    """True when ``value`` can be used as ``<lora:NAME>`` and as a file stem."""
    return isinstance(value, str) and ADAPTER_NAME_PATTERN.fullmatch(value) is not None


# A prepared dataset's id as it may come back from a page or an API client (``ds-YYYYMMDD-hex`` when
# made here): one path component, never ``..``.
DATASET_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
