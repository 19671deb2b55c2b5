"""Stand-in for ``ldm/models``."""
