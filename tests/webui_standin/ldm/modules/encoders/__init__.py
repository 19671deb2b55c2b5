"""Stand-in for ``ldm/modules/encoders``."""
