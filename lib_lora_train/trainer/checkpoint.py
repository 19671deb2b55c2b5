"""Resumable training checkpoints: LoRA weights, optimizer, schedule, step and random state.

A checkpoint folder is written under a temporary name and renamed when complete, so a crash
while saving never leaves a checkpoint that looks valid but is not.
"""

import json
import os
import pathlib
import shutil

from ..errors import ConfigError

PREFIX = "step-"


def save_checkpoint(folder, step, epoch, lora_state, optimizer, scheduler, scaler, generator):
    """Write ``folder/step-N/`` atomically and return its path."""
    import torch
    from safetensors.torch import save_file

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:08d}"
    partial = folder / f".{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in lora_state.items()}, partial / "lora.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state()}, partial / "training_state.pt")
    (partial / "progress.json").write_text(json.dumps({"step": step, "epoch": epoch}))
    for item in partial.iterdir():
        with open(item, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():  # never a moment without a complete checkpoint of this step
        stale = folder / f".{final.name}.old"
        shutil.rmtree(stale, ignore_errors=True)
        final.rename(stale)
        partial.rename(final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        partial.rename(final)
    return final


def find_checkpoint(folder, request):
    """Resolve ``resume_from_checkpoint``: ``"latest"`` in ``folder``, or an explicit path.

    Returns:
        `pathlib.Path | None`: None for "latest" when there is none yet.
    """
    if request == "latest":
        found = sorted(pathlib.Path(folder).glob(f"{PREFIX}*")) if pathlib.Path(folder).is_dir() else []
        return found[-1] if found else None
    path = pathlib.Path(request)
    if not (path / "progress.json").is_file():
        raise ConfigError(f"resume_from_checkpoint={request!r} is not a checkpoint folder (no progress.json)")
    return path


def load_checkpoint(path):
    """Read a checkpoint: (lora_state, training_state, progress)."""
    import torch
    from safetensors.torch import load_file

    path = pathlib.Path(path)
    training_state = torch.load(path / "training_state.pt", map_location="cpu", weights_only=True)
    progress = json.loads((path / "progress.json").read_text())
    return load_file(path / "lora.safetensors"), training_state, progress
