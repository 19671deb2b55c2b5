"""Device, mixed precision and optimizer choices, decided once from the config and the machine."""

import contextlib
import dataclasses
import importlib.util
import logging

from ..errors import ConfigError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Precision:
    """How a run computes.

    Attributes:
        device (`torch.device`): where the model and the LoRA live.
        mode (`str`): ``"no"`` (fp32), ``"fp16"`` (autocast + loss scaling) or ``"bf16"`` (autocast).
        weight_dtype (`torch.dtype`): dtype of the frozen base weights.
    """

    device: object
    mode: str
    weight_dtype: object

    def autocast(self):
        """Autocast context for the forward pass (a no-op in fp32)."""
        import torch

        if self.mode == "no":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.mode == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self):
        """A loss scaler for fp16 (gradients would underflow without it), else a disabled one."""
        import torch

        return torch.amp.GradScaler(self.device.type, enabled=self.mode == "fp16")


def resolve_device(name):
    """``"auto"`` -> CUDA when available, else CPU; an unavailable CUDA request is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA GPU is available; use device: cpu or auto")
    return device


def resolve_precision(device_name, mixed_precision):
    """Pick the device and the precision; fp16/bf16 need CUDA (CPU autocast is slower than fp32)."""
    import torch

    device = resolve_device(device_name)
    mode = mixed_precision
    if mode == "auto":
        if device.type != "cuda":
            mode = "no"
        else:
            mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode in ("fp16", "bf16") and device.type != "cuda":
        raise ConfigError(f"mixed_precision={mixed_precision!r} needs a CUDA GPU; on the CPU use 'no' or 'auto'")
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mode]
    return Precision(device=device, mode=mode, weight_dtype=weight_dtype)


def build_optimizer(parameters, config, device):
    """AdamW over the LoRA parameters; 8-bit (bitsandbytes) when asked for or, with "auto", possible."""
    import torch

    eight_bit = config.optimizer == "adamw8bit" or (
        config.optimizer == "auto" and device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None
    )
    if eight_bit:
        if device.type != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("optimizer='adamw8bit' needs a CUDA GPU and bitsandbytes (pip install bitsandbytes)")
        import bitsandbytes

        optimizer_class = bitsandbytes.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    logger.info("optimizer: %s", optimizer_class.__name__)
    return optimizer_class(parameters, lr=config.learning_rate, weight_decay=config.adam_weight_decay)


def build_scheduler(optimizer, config, total_steps):
    """Learning-rate schedule (constant, warmup, cosine, linear) from transformers' ``get_scheduler``.

    transformers, not diffusers: the WebUI has transformers (4.30) but no diffusers.
    """
    from transformers.optimization import get_scheduler

    return get_scheduler(config.lr_scheduler, optimizer=optimizer, num_warmup_steps=config.lr_warmup_steps,
                         num_training_steps=max(total_steps, 1))
