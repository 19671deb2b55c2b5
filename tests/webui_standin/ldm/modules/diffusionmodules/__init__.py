"""Stand-in for ``ldm/modules/diffusionmodules``."""
