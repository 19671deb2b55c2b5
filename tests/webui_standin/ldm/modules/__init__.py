"""Stand-in for ``ldm/modules``."""
