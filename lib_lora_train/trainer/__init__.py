"""LoRA training on a frozen model host: data, losses, the loop, and the user-facing trainer."""
