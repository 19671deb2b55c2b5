"""``DiffusersHost``: the standalone :class:`~.base.ModelHost`, on diffusers and transformers modules.

It loads either the embedded tiny model or a local single-file SD 1.x/2.x checkpoint, fully
offline, freezes every weight, and exposes what LoRA training needs (encoders, the UNet, the
noise schedule, the prediction type, a fingerprint of the frozen weights) plus ``generate`` for
before/after previews. Loading never downloads anything: configs ship in ``model_configs/``,
the tokenizer vocabulary is built locally (:mod:`.tokenizer`).
"""

import gc
import logging
import pathlib

import torch

from .base import ModelFacts
from .cache import sha256_file
from .components import (
    COMPONENT_NAMES,
    ModelLoadError,
    build_component,
    load_component_configs,
    read_json,
)
from .embedded import WEIGHTS_NAME, ensure_embedded_folder
from .single_file import (
    CLIP_PREFIX,
    OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    CheckpointReader,
    check_layout_matches_configs,
    convert_to_diffusers,
    detect_layout,
    resolve_prediction_type,
    shipped_config_dir,
)
from .tokenizer import ensure_clip_vocab_folder, load_clip_tokenizer

__all__ = ["DiffusersHost", "ModelLoadError"]

logger = logging.getLogger(__name__)

_ARCHITECTURES = {("sd_v1", "epsilon"): "stable-diffusion-v1", ("sd_v1", "v_prediction"): "stable-diffusion-v1",
                  ("sd_v2", "epsilon"): "stable-diffusion-v2-512", ("sd_v2", "v_prediction"): "stable-diffusion-v2-768-v"}


def _load_tokenizer(config_dir, cache_dir):
    tokenizer_dir = pathlib.Path(config_dir) / "tokenizer"
    tokenizer_config = read_json(tokenizer_dir / "tokenizer_config.json", "tokenizer config")
    if (tokenizer_dir / "vocab.json").is_file() and (tokenizer_dir / "merges.txt").is_file():
        return load_clip_tokenizer(tokenizer_dir, tokenizer_config)
    return load_clip_tokenizer(ensure_clip_vocab_folder(cache_dir), tokenizer_config)


def _native_resolution(configs, version, prediction_type):
    vae_factor = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
    resolution = configs["unet"]["sample_size"] * vae_factor
    # SD 2.x ships as 768-v and a 512 epsilon "base" with the same architecture.
    return 512 if (version, prediction_type, resolution) == ("sd_v2", "epsilon", 768) else resolution


def _single_file_facts(name, version, prediction_type, configs):
    return {
        "base_model_version": version,
        "architecture": f"{_ARCHITECTURES[(version, prediction_type)]}/lora",
        "is_v2": version == "sd_v2",
        "native_resolution": _native_resolution(configs, version, prediction_type),
        "unet_naming": "diffusers",
        "display_name": pathlib.Path(name).stem,
    }


class DiffusersHost:
    """A frozen Stable Diffusion model on diffusers modules (see :class:`~.base.ModelHost`).

    Use :meth:`embedded` or :meth:`from_single_file` rather than the constructor.

    Attributes:
        unet, vae, text_encoder (`torch.nn.Module`): frozen, in eval mode.
        tokenizer (`transformers.CLIPTokenizer`)
        device (`torch.device`), dtype (`torch.dtype`)
        prediction_type (`str`): ``"epsilon"`` or ``"v_prediction"``.
        prediction_rule (`str`): which rule decided the prediction type (path-free, for logs).
        alphas_cumprod (`torch.Tensor`): float64 on CPU, 1000 values, from the scheduler config.
        scheduler_config (`dict`): DDPM training-schedule config, ``prediction_type`` filled in.
    """

    def __init__(self, modules, tokenizer, scheduler_config, *, prediction_type, prediction_rule, facts, hash_model,
                 device, dtype):
        from diffusers import DDPMScheduler

        self.unet, self.vae, self.text_encoder = (modules[name] for name in COMPONENT_NAMES)
        self.tokenizer = tokenizer
        self.device, self.dtype = torch.device(device), dtype
        self.prediction_type, self.prediction_rule = prediction_type, prediction_rule
        self.scheduler_config = dict(scheduler_config, prediction_type=prediction_type)
        scheduler = DDPMScheduler.from_config(self.scheduler_config)
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)
        self._facts_fields, self._hash_model, self._facts = facts, hash_model, None
        self._pipeline = None
        logger.info("loaded %s: %s, prediction type %s (%s)", facts["display_name"], facts["base_model_version"],
                    prediction_type, prediction_rule)

    @classmethod
    def embedded(cls, cache_dir, device="cpu", dtype=torch.float32):
        """The embedded tiny SD-1.x-architecture model, built once under ``cache_dir`` and reused.

        Args:
            cache_dir (`str` or `os.PathLike`): model cache of the data home; the model lives in
                ``<cache_dir>/embedded-v1/`` with a manifest of file hashes (a damaged copy is rebuilt).
            device (`str` or `torch.device`), dtype (`torch.dtype`): for the frozen weights.

        Returns:
            `DiffusersHost`
        """
        from safetensors.torch import load_file

        folder, manifest = ensure_embedded_folder(cache_dir)
        configs = load_component_configs(folder)
        modules = {name: build_component(name, configs[name], load_file(str(folder / name / WEIGHTS_NAME)),
                                         "embedded model", device, dtype) for name in COMPONENT_NAMES}
        weight_hashes = "".join(f"{name}:{manifest['files'][f'{name}/{WEIGHTS_NAME}']}\n" for name in COMPONENT_NAMES)
        model_hash = _sha256_text(weight_hashes)
        facts = {"base_model_version": "sd_v1", "architecture": "stable-diffusion-v1/lora", "is_v2": False,
                 "native_resolution": _native_resolution(configs, "sd_v1", "epsilon"), "unet_naming": "diffusers",
                 "display_name": "embedded-tiny-sd1"}
        return cls(modules, load_clip_tokenizer(folder / "tokenizer"), configs["scheduler"],
                   prediction_type="epsilon", prediction_rule="embedded model: epsilon", facts=facts,
                   hash_model=lambda: model_hash, device=device, dtype=dtype)

    @classmethod
    def from_single_file(cls, path, cache_dir, device="cpu", dtype=torch.float32, prediction_type="auto",
                         config_dir=None):
        """Load a local SD 1.x/2.x single-file checkpoint (LDM key layout), fully offline.

        The file is classified from its key names and shapes before any weight is read, so a
        LoRA, SDXL or inpainting file is refused at once.

        Args:
            path (`str` or `os.PathLike`): ``.safetensors`` or ``.ckpt``.
            cache_dir (`str` or `os.PathLike`): model cache (the CLIP vocabulary is built there once).
            device (`str` or `torch.device`), dtype (`torch.dtype`): for the frozen weights.
            prediction_type (`str`): ``"auto"`` (see :func:`.single_file.resolve_prediction_type`),
                ``"epsilon"`` or ``"v_prediction"``.
            config_dir (`str` or `os.PathLike`, *optional*): a diffusers-layout config folder to use
                instead of the shipped ``model_configs/sd15`` / ``sd21`` (tests use tiny configs).

        Returns:
            `DiffusersHost`

        Raises:
            `ModelLoadError`: missing, damaged or unsupported file; the message names the file's base
                name only and says what to do.
        """
        reader = CheckpointReader(path)
        layout = detect_layout(reader.shapes, reader.name)
        config_dir = pathlib.Path(config_dir) if config_dir is not None else shipped_config_dir(layout.base_model_version)
        configs = load_component_configs(config_dir)
        check_layout_matches_configs(layout, configs, reader.name)
        prediction, rule = resolve_prediction_type(reader.path, layout.base_model_version, prediction_type)
        tokenizer = _load_tokenizer(config_dir, cache_dir)
        if len(tokenizer) > configs["text_encoder"]["vocab_size"]:
            raise ModelLoadError(f"{reader.name}: the tokenizer has {len(tokenizer)} tokens but the text encoder only "
                                 f"{configs['text_encoder']['vocab_size']}; the model configuration is inconsistent")
        converted = convert_to_diffusers(reader.load((UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX, OPEN_CLIP_PREFIX)),
                                         configs, layout)
        modules = {name: build_component(name, configs[name], converted.pop(name), reader.name, device, dtype)
                   for name in COMPONENT_NAMES}
        facts = _single_file_facts(reader.name, layout.base_model_version, prediction, configs)
        checkpoint = reader.path
        return cls(modules, tokenizer, configs["scheduler"], prediction_type=prediction, prediction_rule=rule,
                   facts=facts, hash_model=lambda: sha256_file(checkpoint), device=device, dtype=dtype)

    @property
    def facts(self):
        """`ModelFacts`; the checkpoint's SHA-256 is computed on first access (streamed), then kept."""
        if self._facts is None:
            self._facts = ModelFacts(model_hash=self._hash_model(), **self._facts_fields)
        return self._facts

    def encode_images(self, pixels, generator=None, sample=True):
        """Images in [-1, 1], (B, 3, H, W) -> VAE latents times ``vae.config.scaling_factor``.

        Samples the latent distribution like diffusers' ``train_text_to_image_lora.py`` (the
        posterior noise is a mild augmentation); pass ``sample=False`` for its mean.

        Args:
            pixels (`torch.Tensor`): image batch; moved to the host's device and dtype.
            generator (`torch.Generator`, *optional*): for reproducible sampling.
            sample (`bool`): sample (default) or take the mean.

        Returns:
            `torch.Tensor`: (B, 4, H/8, W/8), no gradient.
        """
        with torch.no_grad():
            dist = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
            latents = dist.sample(generator=generator) if sample else dist.mean
            return latents * self.vae.config.scaling_factor

    def encode_prompts(self, prompts):
        """Captions -> (B, 77, D) text-encoder hidden states, exactly as ``StableDiffusionPipeline``.

        Pads to ``tokenizer.model_max_length`` (77) and truncates. For SD 2.x the shipped text
        encoder has 23 of OpenCLIP's 24 blocks, so its last hidden state is the penultimate layer
        (after the final layer norm), as in diffusers. Gradients flow only when some text-encoder
        parameter is trainable (text-encoder LoRA).

        Args:
            prompts (`list[str]` or `str`)

        Returns:
            `torch.Tensor` in the host's dtype.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        trainable = any(param.requires_grad for param in self.text_encoder.parameters())
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            hidden = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return hidden.to(self.dtype)

    def predict(self, noisy_latents, timesteps, conditioning):
        """``unet(noisy_latents, timesteps, encoder_hidden_states=conditioning).sample``, inputs moved to the host."""
        return self.unet(noisy_latents.to(self.device, self.dtype), timesteps.to(self.device),
                         encoder_hidden_states=conditioning.to(self.device, self.dtype)).sample

    def modules_to_fingerprint(self):
        """``(name, module)`` pairs of the frozen base: UNet, VAE and text encoder."""
        return [(name, getattr(self, name)) for name in COMPONENT_NAMES]

    def _build_pipeline(self):
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        scheduler = DDIMScheduler.from_config(self.scheduler_config, clip_sample=False, set_alpha_to_one=False,
                                              steps_offset=1, timestep_spacing="leading")
        pipeline = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                           unet=self.unet, scheduler=scheduler, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def generate(self, prompt, *, seed, steps=20, guidance_scale=7.5, height=None, width=None, negative_prompt=""):
        """One preview image with DDIM, from the host's own (possibly LoRA-injected) modules.

        Args:
            prompt (`str`): the caption.
            seed (`int`): the initial noise comes from a CPU generator with this seed.
            steps (`int`), guidance_scale (`float`): DDIM steps and classifier-free guidance.
            height, width (`int`, *optional*): default the model's native size.
            negative_prompt (`str`): empty means the unconditional prompt.

        Returns:
            `PIL.Image.Image`
        """
        if self._pipeline is None:
            self._pipeline = self._build_pipeline()
        size = self.unet.config.sample_size * self._pipeline.vae_scale_factor
        was_training = [module.training for _, module in self.modules_to_fingerprint()]
        for _, module in self.modules_to_fingerprint():
            module.eval()
        try:
            with torch.no_grad():
                result = self._pipeline(prompt, negative_prompt=negative_prompt or None, num_inference_steps=steps,
                                        guidance_scale=guidance_scale, height=height or size, width=width or size,
                                        generator=torch.Generator("cpu").manual_seed(seed), output_type="pil")
        finally:
            for (_, module), training in zip(self.modules_to_fingerprint(), was_training):
                module.train(training)
        return result.images[0]

    def close(self):
        """Drop the modules and free their memory (also on the GPU); the host is unusable afterwards."""
        self.unet = self.vae = self.text_encoder = self.tokenizer = self._pipeline = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _sha256_text(text):
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()
