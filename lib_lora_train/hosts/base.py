"""The interface between the trainer and a loaded Stable Diffusion model.

A host owns a frozen model (the standalone diffusers host, or the WebUI's loaded
checkpoint) and exposes just what LoRA training needs: the UNet module tree to inject into,
image -> latent and prompt -> conditioning encoders, the noise schedule, the prediction
type, and a fingerprint of the frozen weights so callers can prove the base model is
unchanged after training, cancel or a crash.
"""

import dataclasses
import hashlib
import typing

PREDICTION_TYPES = ("epsilon", "v_prediction")
# (ss_base_model_version, v-prediction) -> modelspec.architecture, as kohya's determine_architecture.
MODELSPEC_ARCHITECTURES = {
    ("sd_v1", False): "stable-diffusion-v1/lora",
    ("sd_v1", True): "stable-diffusion-v1/lora",
    ("sd_v2", False): "stable-diffusion-v2-512/lora",
    ("sd_v2", True): "stable-diffusion-v2-768-v/lora",
}



@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """Descriptive facts about the base model, for export metadata and registry rows.

    Attributes:
        base_model_version (`str`): kohya ``ss_base_model_version``: ``"sd_v1"`` or ``"sd_v2"``.
        architecture (`str`): ``modelspec.architecture``, e.g. ``"stable-diffusion-v1/lora"``.
        is_v2 (`bool`): SD 2.x (OpenCLIP text encoder).
        native_resolution (`int`): the resolution the model was trained at (512 or 768).
        unet_naming (`str`): module-path convention of ``Host.unet``: ``"diffusers"``
            (``down_blocks.0.attentions.0...``) or ``"ldm"`` (``input_blocks.1.1...``), which
            decides how kohya keys are derived at export.
        display_name (`str`): a short label without paths (paths may carry personal names).
        model_hash (`str`): ``sshs_model_hash``-style SHA-256 of the checkpoint, or of the
            embedded model's weights.
    """

    base_model_version: str
    architecture: str
    is_v2: bool
    native_resolution: int
    unet_naming: str
    display_name: str
    model_hash: str


@typing.runtime_checkable
class ModelHost(typing.Protocol):
    """What a trainer needs from a loaded model. The base weights stay frozen.

    Attributes:
        unet (`torch.nn.Module`): the denoiser; LoRA is injected into its modules. It also offers
            ``enable_gradient_checkpointing()`` / ``disable_gradient_checkpointing()``, and the
            checkpointing must let LoRA weights inside checkpointed blocks receive gradients
            (non-reentrant), which the WebUI's own reentrant patch does not.
        text_encoder (`torch.nn.Module | None`): for optional text-encoder LoRA.
        device (`torch.device`), dtype (`torch.dtype`): of the frozen weights.
        prediction_type (`str`): one of :data:`PREDICTION_TYPES`.
        alphas_cumprod (`torch.Tensor`): float64 on CPU, one value per training timestep.
        facts (`ModelFacts`)
    """

    unet: typing.Any
    text_encoder: typing.Any
    device: typing.Any
    dtype: typing.Any
    prediction_type: str
    alphas_cumprod: typing.Any
    facts: ModelFacts

    def encode_images(self, pixels):
        """Images (B, 3, H, W) in [-1, 1] -> latents already multiplied by the VAE scaling factor."""

    def encode_prompts(self, prompts):
        """List of captions -> conditioning tensor (B, 77, D) as the UNet expects it."""

    def predict(self, noisy_latents, timesteps, conditioning):
        """UNet output for noisy latents at integer timesteps (same shape as the latents)."""

    def modules_to_fingerprint(self):
        """Iterable of ``(name, module)`` whose parameters and buffers make up the frozen base."""


def fingerprint_modules(named_modules):
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes) of the modules.

    Bit-exact: any change to any frozen weight, even in the last bit, changes it.

    Args:
        named_modules (`Iterable[tuple[str, torch.nn.Module]]`)

    Returns:
        `str`: hex digest.
    """
    digest = hashlib.sha256()
    for prefix, module in named_modules:
        tensors = list(module.state_dict(keep_vars=False).items())
        for name, tensor in sorted(tensors, key=lambda item: item[0]):
            data = tensor.detach().to("cpu").contiguous()
            digest.update(f"{prefix}.{name}|{data.dtype}|{tuple(data.shape)}|".encode())
            digest.update(data.view(-1).view(dtype=_byte_dtype()).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def _byte_dtype():
    import torch

    return torch.uint8
