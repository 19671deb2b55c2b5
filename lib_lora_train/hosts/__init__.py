"""Model hosts: what the trainer needs from a loaded Stable Diffusion model."""
