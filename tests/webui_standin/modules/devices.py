"""Stand-in for WebUI 1.10.1 ``modules/devices.py``, with the values it has after ``--use-cpu all --no-half``.

``autocast()`` follows the real decision order: disabled or ``force_fp16`` -> no-op; fp8 on the CPU ->
bf16 CPU autocast; fp32 -> no-op; otherwise CUDA fp16 autocast (the MPS/XPU ``manual_cast`` branch is
not modeled).
"""

import contextlib

import torch

cpu = torch.device("cpu")
device = cpu
dtype = torch.float32
dtype_vae = torch.float32
dtype_unet = torch.float32
dtype_inference = torch.float32
unet_needs_upcast = False
fp8 = False
force_fp16 = False


def autocast(disable=False):
    if disable or force_fp16:
        return contextlib.nullcontext()
    if fp8 and device == cpu:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=True)
    if dtype == torch.float32 or dtype_inference == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cuda")


def without_autocast(disable=False):
    return torch.autocast("cuda", enabled=False) if torch.is_autocast_enabled() and not disable else contextlib.nullcontext()


def torch_gc():
    """Empties CUDA caches in the real module; nothing to do on the CPU."""
