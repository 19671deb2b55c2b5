"""Stand-in for ``ldm/models/diffusion/ddpm.py``: ``DiffusionWrapper`` and the ``LatentDiffusion`` methods
A1111 uses, with the real semantics (written, not copied):

- ``encode_first_stage`` is ``@torch.no_grad`` and returns the posterior; ``get_first_stage_encoding``
  samples it and multiplies by ``scale_factor``.
- ``get_learned_conditioning(c)`` calls ``cond_stage_model(c)`` (A1111's hijack wrapper has no ``encode``).
- ``apply_model(x, t, cond)`` wraps a tensor cond as ``{'c_crossattn': [cond]}`` and calls ``self.model``,
  which concatenates the list and calls ``diffusion_model(x, t, context=...)``.
- ``alphas_cumprod`` is a registered buffer.
"""

import torch
from torch import nn


class DiffusionWrapper(nn.Module):
    def __init__(self, diffusion_model, conditioning_key="crossattn"):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.conditioning_key = conditioning_key

    def forward(self, x, t, c_concat=None, c_crossattn=None, c_adm=None):
        if self.conditioning_key == "crossattn":
            return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1))
        if self.conditioning_key == "hybrid":
            return self.diffusion_model(torch.cat([x] + c_concat, dim=1), t, context=torch.cat(c_crossattn, 1))
        raise NotImplementedError(self.conditioning_key)


class LatentDiffusion(nn.Module):
    def __init__(self, diffusion_model, first_stage_model, cond_stage_model, alphas_cumprod, *, scale_factor=0.18215,
                 parameterization="eps", conditioning_key="crossattn"):
        super().__init__()
        self.model = DiffusionWrapper(diffusion_model, conditioning_key)
        self.first_stage_model = first_stage_model
        self.cond_stage_model = cond_stage_model
        self.cond_stage_forward = None
        self.scale_factor = scale_factor
        self.parameterization = parameterization
        self.register_buffer("alphas_cumprod", alphas_cumprod)

    @torch.no_grad()
    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior):
        if isinstance(encoder_posterior, torch.Tensor):
            return self.scale_factor * encoder_posterior
        return self.scale_factor * encoder_posterior.sample()

    def get_learned_conditioning(self, c):
        return self.cond_stage_model(c)

    def apply_model(self, x_noisy, t, cond, return_ids=False):
        if not isinstance(cond, dict):
            key = "c_concat" if self.model.conditioning_key == "concat" else "c_crossattn"
            cond = {key: cond if isinstance(cond, list) else [cond]}
        result = self.model(x_noisy, t, **cond)
        return result[0] if isinstance(result, tuple) and not return_ids else result
