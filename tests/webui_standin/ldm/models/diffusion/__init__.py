"""Stand-in for ``ldm/models/diffusion``."""
