"""``WebUIHost``: the :class:`~.base.ModelHost` over the checkpoint the AUTOMATIC1111 WebUI has loaded.

It trains on ``shared.sd_model`` (an ``ldm`` ``LatentDiffusion``) in place: the VAE and text
encoder are called the way the WebUI calls them, the UNet is called through the hijacked
``apply_model`` (the path A1111's own embedding training takes), and :meth:`WebUIHost.
prepared_for_training` puts every WebUI patch, flag and merged Lora weight back afterwards.

This is the only module, with :mod:`.webui_patches`, that uses the WebUI's ``modules``, and only
inside functions, so it imports without the WebUI. Sources are AUTOMATIC1111 WebUI v1.10.1 and
Stability-AI/stablediffusion ``cf1d67a`` (A1111_CONTRACT.md 0).
"""

import contextlib
import importlib
import importlib.util
import logging

import torch

from ..errors import ModelLoadError
from .base import ModelFacts, fingerprint_modules
from .webui_patches import enable_block_checkpointing, training_session

__all__ = ["LdmUNet", "WebUIHost", "escape_prompt"]

logger = logging.getLogger(__name__)

# ``LatentDiffusion.parameterization`` -> the trainer's prediction type (diffusers' names).
PARAMETERIZATIONS = {"eps": "epsilon", "v": "v_prediction"}
# One chunk of A1111's prompt encoding: BOS + 75 tokens + EOS (``sd_hijack_clip.py``).
CHUNK_TOKENS = 77
# Characters A1111's prompt parser reads as emphasis syntax (``prompt_parser.py::re_attention``);
# a backslash makes each literal. The backslash itself goes first.
PROMPT_ESCAPES = (("\\", "\\\\"), ("(", "\\("), (")", "\\)"), ("[", "\\["), ("]", "\\]"))
DEFAULT_DISPLAY_NAME = "webui-checkpoint"


def _webui(name):
    """A WebUI module, imported when first needed (never at import time of this package)."""
    return importlib.import_module(f"modules.{name}")


def escape_prompt(text):
    """Make a caption literal for A1111's prompt parser: ``(x)`` would mean 1.1x emphasis."""
    for character, escaped in PROMPT_ESCAPES:
        text = text.replace(character, escaped)
    return text


class LdmUNet(torch.nn.Module):
    """The WebUI's LDM ``UNetModel`` as the trainer's ``host.unet``, with gradient checkpointing.

    The UNet is held as the child ``diffusion_model``, so module paths read as in the WebUI's own
    ``sd_model.model`` (``diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q``), the
    names the built-in Lora extension maps (``networks.py::assign_network_names_to_compvis_modules``)
    and :func:`~lib_lora_train.export.kohya.ldm_unet_to_diffusers_path` accepts.

    Args:
        diffusion_model (`torch.nn.Module`): ``sd_model.model.diffusion_model``.
    """

    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model
        self._undo_checkpointing = None

    def forward(self, x, timesteps, context):
        """``UNetModel.forward(x, timesteps, context=...)``; training calls :meth:`WebUIHost.predict`."""
        return self.diffusion_model(x, timesteps, context=context)

    @property
    def gradient_checkpointing(self):
        """`bool`: whether the blocks recompute their activations in backward."""
        return self._undo_checkpointing is not None

    def enable_gradient_checkpointing(self):
        """Checkpoint every ``BasicTransformerBlock``/``ResBlock``/``AttentionBlock`` (non-reentrant)."""
        if self._undo_checkpointing is None:
            self._undo_checkpointing = enable_block_checkpointing(self.diffusion_model)

    def disable_gradient_checkpointing(self):
        """Remove what :meth:`enable_gradient_checkpointing` set; idempotent."""
        undo, self._undo_checkpointing = self._undo_checkpointing, None
        if undo is not None:
            undo()


class WebUIHost:
    """The WebUI's loaded SD 1.x/2.x checkpoint as a :class:`~.base.ModelHost`.

    Use :meth:`from_shared`, and train only inside :meth:`prepared_for_training` while holding the
    WebUI's ``call_queue.queue_lock`` (a generation would rewrite the weights meanwhile).

    Attributes:
        sd_model: the WebUI's ``LatentDiffusion``.
        unet (`LdmUNet`): wraps ``sd_model.model.diffusion_model``.
        text_encoder (`torch.nn.Module | None`): SD 1.x: the transformers ``CLIPTextModel`` inside the
            hijacked ``cond_stage_model``; SD 2.x (OpenCLIP): ``None``, no text-encoder LoRA.
        device (`torch.device`), dtype (`torch.dtype`): ``devices.device``, ``devices.dtype_unet``.
        mixed_precision (`str`): the trainer's ``mixed_precision`` that matches the WebUI: ``"fp16"`` for
            an fp16 UNet on CUDA (``devices.autocast()`` is fp16 autocast, so gradients need loss
            scaling), else ``"no"``. bf16 would not apply: the WebUI's ``apply_model`` casts to fp16.
        prediction_type (`str`): from ``sd_model.parameterization``.
        alphas_cumprod (`torch.Tensor`): float64 on CPU, the checkpoint's training schedule.
        facts (`ModelFacts`)
    """

    def __init__(self, sd_model, shared):
        devices = _webui("devices")
        self.sd_model, self._shared = sd_model, shared
        self.unet = LdmUNet(sd_model.model.diffusion_model)
        self.text_encoder = _clip_text_model(sd_model)
        self.device, self.dtype = torch.device(devices.device), devices.dtype_unet
        half = self.dtype == torch.float16 and self.device.type == "cuda"
        self.mixed_precision = "fp16" if half else "no"
        self.prediction_type = _prediction_type(sd_model)
        self.alphas_cumprod = _training_schedule(sd_model)
        self.facts = _facts(sd_model, self.prediction_type)
        self._in_session = False
        logger.info("WebUI checkpoint %s: %s, prediction type %s", self.facts.display_name,
                    self.facts.base_model_version, self.prediction_type)

    @classmethod
    def from_shared(cls, shared_module=None):
        """Build the host over ``modules.shared.sd_model`` after :meth:`check_supported`.

        Reading ``shared.sd_model`` loads the selected checkpoint if none is loaded yet
        (``shared_items.py::Shared.sd_model``), as opening txt2img does.

        Args:
            shared_module (`module`, *optional*): the WebUI's ``modules.shared``; imported when omitted.

        Returns:
            `WebUIHost`

        Raises:
            `ModelLoadError`: see :meth:`check_supported`.
        """
        shared = shared_module if shared_module is not None else _webui("shared")
        sd_model = shared.sd_model
        cls.check_supported(sd_model, shared.cmd_opts, shared.opts)
        return cls(sd_model, shared)

    @staticmethod
    def check_supported(sd_model, cmd_opts, opts=None):
        """Refuse a model or WebUI setup this host cannot train on, saying why and what to do.

        Checked in order, first match wins: no model, Forge, SD3, SDXL, other model types,
        inpainting/instruct-pix2pix, a replaced UNet (TensorRT), ``--lowvram``, FP8 weights.

        Args:
            sd_model: ``shared.sd_model`` (may be ``None``).
            cmd_opts (`argparse.Namespace`): ``shared.cmd_opts``.
            opts (`Options`, *optional*): ``shared.opts``; imported when omitted.

        Raises:
            `ModelLoadError`: with the reason and the fix.
        """
        opts = opts if opts is not None else _webui("shared").opts
        for check in UNSUPPORTED_CHECKS:
            reason = check(sd_model, cmd_opts, opts)
            if reason is not None:
                raise ModelLoadError(reason)

    @contextlib.contextmanager
    def prepared_for_training(self):
        """Context in which the trainer may inject, train and remove a LoRA; restores everything.

        See :func:`.webui_patches.training_session` for what changes; gradient checkpointing the
        trainer enabled is switched off too. ``--medvram`` works as is: its hooks put the VAE or text
        encoder on the GPU while they encode and the UNet while it predicts
        (``lowvram.py::setup_for_low_vram``), and the trainer encodes everything before it injects.

        Yields:
            `WebUIHost`: this host.

        Raises:
            `ModelLoadError`: the WebUI loaded another model or changed setup since the host was built.
            `BaseModelChangedError`: on exit, the checkpoint's weights differ from those on entry.
        """
        self._check_still_current()
        with training_session(self.sd_model, self._shared, self._fingerprint):
            self._in_session = True
            try:
                yield self
            finally:
                self._in_session = False
                self.unet.disable_gradient_checkpointing()

    def _check_still_current(self):
        self.check_supported(self._shared.sd_model, self._shared.cmd_opts, self._shared.opts)
        if self._shared.sd_model is not self.sd_model:
            raise ModelLoadError("the WebUI loaded another checkpoint since training was set up; start again")

    def _fingerprint(self):
        return fingerprint_modules(self.modules_to_fingerprint())

    def encode_images(self, pixels):
        """Images in [-1, 1], (B, 3, H, W) -> latents times ``sd_model.scale_factor``, float32.

        ``get_first_stage_encoding(encode_first_stage(x))`` with ``x`` in ``devices.dtype_vae``, as
        ``sd_samplers_common.py::images_tensor_to_samples`` does with ``approximation=0`` (the full
        VAE, never TAESD). The posterior is sampled, like A1111's embedding training.

        Raises:
            `ModelLoadError`: the VAE produced NaN (half-precision VAE), or encoding after LoRA
                injection under ``--medvram``.
        """
        self._check_encoders_usable()
        devices = _webui("devices")
        with torch.no_grad():
            posterior = self.sd_model.encode_first_stage(pixels.to(devices.device, devices.dtype_vae))
            latents = self.sd_model.get_first_stage_encoding(posterior).float()
        if not torch.isfinite(latents).all():
            raise ModelLoadError("the VAE produced NaN latents (half precision overflow); restart the WebUI "
                                 "with --no-half-vae and try again")
        return latents

    def encode_prompts(self, prompts):
        """Captions -> (B, 77, D) conditioning through the WebUI's hijacked text encoder.

        ``sd_model.get_learned_conditioning`` under ``devices.autocast()``, as A1111's embedding
        training encodes its captions, so clip skip, TI embeddings and the SD 2.x penultimate layer
        match generation. Captions are escaped first (emphasis syntax is read literally; with
        ``opts.emphasis == "None"`` nothing is parsed). Captions over 75 tokens come back in several
        77-token chunks; only the first chunk is kept, so every caption has the UNet's 77 positions.

        Raises:
            `ModelLoadError`: encoding after LoRA injection under ``--medvram``.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        self._check_encoders_usable()
        if getattr(self._shared.opts, "emphasis", "Original") != "None":
            prompts = [escape_prompt(prompt) for prompt in prompts]
        with _webui("devices").autocast():
            conditioning = self.sd_model.get_learned_conditioning(prompts)
        if conditioning.shape[1] > CHUNK_TOKENS:
            logger.info("captions longer than 75 tokens: only their first 75 tokens condition training")
            conditioning = conditioning[:, :CHUNK_TOKENS]
        return conditioning

    def _check_encoders_usable(self):
        # Under --medvram a VAE/text-encoder call moves the UNet, with any injected LoRA weights, to
        # the CPU (lowvram.py::send_me_to_gpu); the optimizer's state would stay on the GPU. In a
        # session the base is frozen, so a trainable UNet parameter is an injected adapter.
        if not (self._in_session and _webui("lowvram").is_enabled(self.sd_model)):
            return
        if any(parameter.requires_grad for parameter in self.unet.parameters()):
            raise ModelLoadError("with --medvram, training reads cached latents and conditionings only: set "
                                 "cache_latents: true and train_text_encoder: false, or restart without --medvram")

    def predict(self, noisy_latents, timesteps, conditioning):
        """The UNet's raw output (epsilon or v) via ``sd_model.apply_model(x, t, cond)``.

        That is what A1111's embedding training runs (``LatentDiffusion.forward`` -> ``p_losses`` ->
        ``apply_model``). The WebUI's wrapper (``sd_hijack_unet.py::apply_model``) casts the inputs to
        ``devices.dtype_unet`` and runs under ``devices.autocast()``; ``sd_model.model`` carries the
        ``--medvram`` hook that puts the UNet on the GPU.
        """
        return self.sd_model.apply_model(noisy_latents.to(self.device), timesteps.to(self.device),
                                         conditioning.to(self.device))

    def modules_to_fingerprint(self):
        """``(name, module)`` pairs of the frozen base: UNet, VAE and the (hijacked) text encoder."""
        return [("unet", self.sd_model.model.diffusion_model),
                ("first_stage_model", self.sd_model.first_stage_model),
                ("cond_stage_model", self.sd_model.cond_stage_model)]


def _clip_text_model(sd_model):
    # SD 1.x: FrozenCLIPEmbedderWithCustomWords.wrapped (FrozenCLIPEmbedder).transformer is a
    # transformers CLIPTextModel, the module kohya's lora_te keys name. SD 2.x OpenCLIP is not.
    if not getattr(sd_model, "is_sd1", False):
        return None
    wrapped = getattr(sd_model.cond_stage_model, "wrapped", sd_model.cond_stage_model)
    return getattr(wrapped, "transformer", None)


def _prediction_type(sd_model):
    parameterization = getattr(sd_model, "parameterization", None)
    if parameterization not in PARAMETERIZATIONS:
        raise ModelLoadError(f"the loaded checkpoint predicts {parameterization!r}; only {sorted(PARAMETERIZATIONS)} "
                             "(epsilon or v) can be trained")
    return PARAMETERIZATIONS[parameterization]


def _training_schedule(sd_model):
    # sd_models.py::apply_alpha_schedule_override replaces alphas_cumprod per generation (fp16 when
    # opts.use_downcasted_alpha_bar, zero terminal SNR); load_model_weights keeps the original.
    schedule = getattr(sd_model, "alphas_cumprod_original", None)
    if schedule is None:
        schedule = sd_model.alphas_cumprod
    return schedule.detach().to("cpu", torch.float64)


def _facts(sd_model, prediction_type):
    from .base import MODELSPEC_ARCHITECTURES

    version = "sd_v2" if getattr(sd_model, "is_sd2", False) else "sd_v1"
    v_prediction = prediction_type == "v_prediction"
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return ModelFacts(
        base_model_version=version,
        architecture=MODELSPEC_ARCHITECTURES[(version, v_prediction)],
        is_v2=version == "sd_v2",
        native_resolution=768 if version == "sd_v2" and v_prediction else 512,
        unet_naming="ldm",
        display_name=getattr(info, "name_for_extra", None) or DEFAULT_DISPLAY_NAME,
        model_hash=getattr(info, "sha256", None) or getattr(info, "shorthash", None)
        or getattr(sd_model, "sd_model_hash", None),
    )


def _no_model(sd_model, cmd_opts, opts):
    if sd_model is None:
        return ("no checkpoint is loaded in the WebUI; pick an SD 1.x or SD 2.x checkpoint in the "
                "'Stable Diffusion checkpoint' dropdown and try again")
    return None


def forge_refusal():
    """Why this WebUI cannot train in-process (it is Forge), or None; for the tab, before any model."""
    return _forge(None, None, None)


def _forge(sd_model, cmd_opts, opts):
    # Forge ships ``modules_forge`` (and, in current releases, an empty ``modules/sd_hijack.py`` stub);
    # its loaded model carries ``forge_objects``.
    if (hasattr(sd_model, "forge_objects") or importlib.util.find_spec("modules_forge") is not None
            or importlib.util.find_spec("modules.sd_hijack") is None):
        return ("in-process training is not available on Forge; ingest, registry and delete work. Train with "
                "'python -m lib_lora_train train' outside the WebUI instead")
    return None


def _sd3(sd_model, cmd_opts, opts):
    if getattr(sd_model, "is_sd3", False):
        return "the loaded checkpoint is Stable Diffusion 3, which cannot be trained here; load an SD 1.x or 2.x one"
    return None


def _sdxl(sd_model, cmd_opts, opts):
    if getattr(sd_model, "is_sdxl", False):
        return "the loaded checkpoint is SDXL (or SSD-1B), which cannot be trained here yet; load an SD 1.x or 2.x one"
    return None


def _other_type(sd_model, cmd_opts, opts):
    ldm_unet = getattr(getattr(sd_model, "model", None), "diffusion_model", None)
    if ldm_unet is None or not (getattr(sd_model, "is_sd1", False) or getattr(sd_model, "is_sd2", False)):
        return "the loaded checkpoint is not an SD 1.x or SD 2.x model; load an SD 1.x or 2.x one"
    return None


def _extra_channels(sd_model, cmd_opts, opts):
    channels = getattr(sd_model.model.diffusion_model, "in_channels", 4)
    key = getattr(sd_model.model, "conditioning_key", "crossattn")
    if channels != 4 or key != "crossattn":
        return (f"the loaded checkpoint is an inpainting or instruct-pix2pix model (UNet input channels {channels}, "
                f"conditioning {key!r}); it needs image channels this trainer does not supply. Load a regular "
                "text-to-image checkpoint")
    return None


def _replaced_unet(sd_model, cmd_opts, opts):
    current = _webui("sd_unet").current_unet
    if current is not None:
        label = getattr(getattr(current, "option", None), "label", type(current).__name__)
        return (f"the UNet is replaced by {label!r} (Settings > Stable Diffusion > SD Unet, e.g. TensorRT), which "
                "cannot be trained; set SD Unet to 'None' and try again")
    return None


def _lowvram(sd_model, cmd_opts, opts):
    if getattr(cmd_opts, "lowvram", False):
        return ("training is not possible with --lowvram (the WebUI's own embedding training refuses it too); "
                "restart without --lowvram (--medvram works)")
    return None


def _fp8(sd_model, cmd_opts, opts):
    if getattr(_webui("devices"), "fp8", False) or getattr(opts, "fp8_storage", "Disable") == "Enable":
        return ("FP8 weight storage is on (Settings > Optimizations > FP8 weight); LoRA training needs fp16 or "
                "fp32 weights: set it to 'Disable', reload the checkpoint and try again")
    return None


UNSUPPORTED_CHECKS = (_no_model, _forge, _sd3, _sdxl, _other_type, _extra_channels, _replaced_unet, _lowvram, _fp8)
