"""Stand-in for WebUI 1.10.1 ``modules/sd_hijack_unet.py::apply_model``, installed on
``LatentDiffusion.apply_model`` at import as the real ``CondFunc`` does: inputs and cond tensors cast to
``devices.dtype_unet``, the UNet run under ``devices.autocast()``, ``.float()`` when ``unet_needs_upcast``."""

import ldm.models.diffusion.ddpm
import torch

from modules import devices


def apply_model(orig_func, self, x_noisy, t, cond, **kwargs):
    if isinstance(cond, dict):
        for key, value in cond.items():
            if isinstance(value, list):
                cond[key] = [x.to(devices.dtype_unet) if isinstance(x, torch.Tensor) else x for x in value]
            elif isinstance(value, torch.Tensor):
                cond[key] = value.to(devices.dtype_unet)
    with devices.autocast():
        result = orig_func(self, x_noisy.to(devices.dtype_unet), t.to(devices.dtype_unet), cond, **kwargs)
        return result.float() if devices.unet_needs_upcast else result


def _install(owner):
    original = owner.apply_model
    if getattr(original, "hijacked", False):
        return

    def hijacked(self, x_noisy, t, cond, **kwargs):
        return apply_model(original, self, x_noisy, t, cond, **kwargs)

    hijacked.hijacked = True
    owner.apply_model = hijacked


_install(ldm.models.diffusion.ddpm.LatentDiffusion)
