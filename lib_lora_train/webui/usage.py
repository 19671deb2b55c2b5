"""Record in the registry when a registered adapter is used in a generation, off the hot path.

The WebUI calls :meth:`UsageRecorder.record` from an AlwaysVisible script's ``process_batch``
with the extra-network data it parsed from the prompt (``p.extra_network_data['lora']``, a list
of ``ExtraNetworkParams`` whose first positional item is the name). The registry update and the
audit entry run on one background thread, so generation never waits for the database.
"""

import concurrent.futures
import logging

logger = logging.getLogger(__name__)


def lora_names(extra_network_data):
    """Names of the ``<lora:NAME:...>`` networks in a batch's parsed extra-network data."""
    names = []
    for params in (extra_network_data or {}).get("lora", []) or []:
        positional = getattr(params, "positional", None) or getattr(params, "items", None) or []
        if positional and isinstance(positional[0], str) and positional[0] not in names:
            names.append(positional[0])
    return names


class UsageRecorder:
    """Marks adapters used (for the unused-adapter expiry) and writes one ``use`` audit entry.

    Args:
        home (`DataHome`): the data home of the registry.
    """

    def __init__(self, home):
        self.home = home
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="medical-lora-usage")

    def record(self, names, actor=None):
        """Queue the names of one generation batch; returns the future (tests wait on it)."""
        names = [name for name in dict.fromkeys(names) if name]
        if not names:
            return None
        return self._executor.submit(self._mark, names, actor or "anonymous")

    def _mark(self, names, actor):
        from ..registry import Registry

        try:
            with Registry(self.home) as registry:
                used = [name for name in names if registry.mark_used(name)]
                if used:
                    registry.audit.append("use", actor=actor, target=used[0], details={"names": used})
            return used
        except Exception as exc:  # usage tracking must never break generation
            logger.warning("could not record adapter use (%s)", type(exc).__name__)
            return []

    def close(self):
        self._executor.shutdown(wait=True)
