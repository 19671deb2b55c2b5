"""Pure tensor helpers of the diffusion objective: noising, targets, Min-SNR weights.

Noise is added in float32 by this code, from the host's ``alphas_cumprod`` (float64), never
by a model's own half-precision buffers: at fp16, sqrt(1 - alpha_bar) near t=0 loses most of
its digits.
"""

import torch


def _gather(schedule, timesteps, like):
    values = schedule.to(device=like.device, dtype=torch.float64)[timesteps.to(like.device)]
    return values.to(torch.float32).view(-1, *([1] * (like.ndim - 1)))


def add_noise(latents, noise, timesteps, alphas_cumprod):
    """Forward diffusion q(x_t | x_0) = sqrt(a) x_0 + sqrt(1 - a) noise, in float32."""
    alpha_bar = _gather(alphas_cumprod, timesteps, latents)
    return alpha_bar.sqrt() * latents.float() + (1.0 - alpha_bar).sqrt() * noise.float()


def diffusion_target(latents, noise, timesteps, alphas_cumprod, prediction_type):
    """What the model should predict: the noise (epsilon) or the velocity v (Salimans & Ho, 2022).

    Raises:
        ValueError: an unknown prediction type (never guess: a wrong target trains garbage).
    """
    if prediction_type == "epsilon":
        return noise.float()
    if prediction_type == "v_prediction":
        alpha_bar = _gather(alphas_cumprod, timesteps, latents)
        return alpha_bar.sqrt() * noise.float() - (1.0 - alpha_bar).sqrt() * latents.float()
    raise ValueError(f"unknown prediction type {prediction_type!r}; expected 'epsilon' or 'v_prediction'")


def compute_snr(alphas_cumprod, timesteps):
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep (float32)."""
    alpha_bar = alphas_cumprod.to(torch.float64)[timesteps.cpu()]
    return (alpha_bar / (1.0 - alpha_bar)).to(torch.float32)


def min_snr_weights(snr, gamma, prediction_type):
    """Per-sample loss weights of Min-SNR-gamma (Hang et al., 2023, arXiv:2303.09556).

    For epsilon targets the weight is min(SNR, gamma) / SNR; for v targets, whose loss is
    already scaled by (SNR + 1), it is min(SNR, gamma) / (SNR + 1).
    """
    clipped = torch.minimum(snr, torch.full_like(snr, float(gamma)))
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped / snr


def per_sample_mse(prediction, target):
    """Mean squared error per sample, in float32."""
    error = (prediction.float() - target.float()) ** 2
    return error.mean(dim=tuple(range(1, error.ndim)))
