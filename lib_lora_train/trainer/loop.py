"""The training loop: LoRA on a frozen host, one named function per stage.

Order follows diffusers' ``train_text_to_image_lora.py``: freeze and fingerprint the base,
cache latents and conditionings, inject LoRA, build optimizer and schedule, loop, and
always (success, cancel, error) remove the LoRA layers and check that the base weights are
bit-identical to what they were.
"""

import dataclasses
import logging
import math
import time

from ..errors import BaseModelChangedError, ConfigError, LoraTrainError
from ..hosts.base import fingerprint_modules
from ..lora.inject import LoraSpec, inject_lora, lora_state_dict, load_lora_state_dict
from . import checkpoint as checkpoints
from .data import StreamingDataset, encode_dataset
from .losses import add_noise, compute_snr, diffusion_target, min_snr_weights, per_sample_mse
from .precision import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

UNET_ADAPTER = "medical_lora"
TEXT_ADAPTER = "medical_lora_te"


class TrainingDivergedError(LoraTrainError, FloatingPointError):
    """The loss became NaN or infinite; nothing is exported."""


@dataclasses.dataclass(frozen=True)
class TrainProgress:
    """Snapshot sent to the progress callback after every optimizer step."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    learning_rate: float
    steps_per_second: float
    eta_seconds: float


@dataclasses.dataclass
class TrainResult:
    """What a run produced. ``stopped`` is ``completed``, ``early_stopping`` or ``cancelled``."""

    steps: int
    epochs: int
    stopped: str
    losses: list
    unet_lora: dict
    text_encoder_lora: dict
    num_images: int
    started_at: float
    finished_at: float
    base_fingerprint: str
    prediction_type: str = "epsilon"

    @property
    def final_loss(self):
        return self.losses[-1]["loss"] if self.losses else float("nan")


def plan_steps(num_examples, config):
    """Optimizer steps per epoch and in total (``max_steps`` wins over ``epochs``)."""
    batches = math.ceil(num_examples / config.batch_size)
    per_epoch = max(1, math.ceil(batches / config.gradient_accumulation_steps))
    total = config.max_steps if config.max_steps else per_epoch * config.epochs
    return per_epoch, total


def train_lora(host, examples, config, precision, *, cancel_event=None, progress=None, checkpoint_dir=None,
               sample_dir=None):
    """Train a LoRA adapter on ``host`` and return its weights (PEFT form, CPU).

    Args:
        host (`ModelHost`): the loaded, frozen model (weights in ``precision.weight_dtype``).
        examples (`list[TrainingExample]`): images and captions.
        config (`TrainConfig`): validated hyper-parameters.
        precision (`Precision`): device and mixed-precision mode.
        cancel_event (`threading.Event`, *optional*): set it to stop within one step.
        progress (`Callable[[TrainProgress], None]`, *optional*): called after each step.
        checkpoint_dir (`pathlib.Path`, *optional*): where resumable checkpoints go.
        sample_dir (`pathlib.Path`, *optional*): where ``sample_prompt`` previews go
            (``epoch_NNN.png``, every ``sample_every_epochs`` epochs if set, and after the last one).

    Returns:
        `TrainResult`

    Raises:
        TrainingDivergedError: the loss became NaN or infinite.
        BaseModelChangedError: the base weights changed (never expected).
    """
    before = fingerprint_modules(host.modules_to_fingerprint())
    run = _Run(host, examples, config, precision, cancel_event, progress, checkpoint_dir, before)
    run.sample_dir = sample_dir
    try:
        return run.execute()
    finally:
        run.restore()
        after = fingerprint_modules(host.modules_to_fingerprint())
        if after != before:
            raise BaseModelChangedError("the base model's weights changed during training; reload the model")


class _Run:
    """State of one training run; ``restore`` undoes everything ``execute`` set up."""

    def __init__(self, host, examples, config, precision, cancel_event, progress, checkpoint_dir, fingerprint):
        import torch

        self.host, self.examples, self.config, self.precision = host, examples, config, precision
        self.cancel_event, self.progress, self.checkpoint_dir = cancel_event, progress, checkpoint_dir
        self.fingerprint = fingerprint
        self.generator = torch.Generator().manual_seed(config.seed)
        self.injected = []
        self.checkpointing_enabled = False
        self.losses = []
        self.sample_dir = None

    def execute(self):
        import torch

        if self.config.sample_prompt and not callable(getattr(self.host, "generate", None)):
            raise ConfigError("sample previews during training (sample_prompt) are not available on this model host "
                              "(inside the WebUI the queue is held by training); leave sample_prompt empty and use "
                              "the before/after preview once the adapter is registered")
        torch.manual_seed(self.config.seed)
        started = time.time()
        resolution = self.config.resolution or self.host.facts.native_resolution
        if self.config.cache_latents:
            data = encode_dataset(self.host, self.examples, resolution, random_flip=self.config.random_flip)
        else:
            data = StreamingDataset(self.host, self.examples, resolution, self.config.random_flip)
        parameters = self._inject()
        per_epoch, total = plan_steps(len(self.examples), self.config)
        optimizer = build_optimizer(parameters, self.config, self.precision.device)
        scheduler = build_scheduler(optimizer, self.config, total)
        scaler = self.precision.grad_scaler()
        step, epoch = self._resume(optimizer, scheduler, scaler)
        stopped = self._loop(data, parameters, optimizer, scheduler, scaler, step, epoch, per_epoch, total)
        unet_state, text_state = self._lora_states()
        return TrainResult(
            steps=self.losses[-1]["step"] if self.losses else step, epochs=self.losses[-1]["epoch"] if self.losses else 0,
            stopped=stopped, losses=self.losses, unet_lora=unet_state, text_encoder_lora=text_state,
            num_images=len(self.examples), started_at=started, finished_at=time.time(),
            base_fingerprint=self.fingerprint, prediction_type=self.host.prediction_type,
        )

    def _inject(self):
        config = self.config
        self.injected.append(inject_lora(self.host.unet, LoraSpec(
            config.lora_rank, config.lora_alpha, config.lora_dropout, tuple(config.target_modules)), UNET_ADAPTER))
        if config.train_text_encoder:
            if self.host.text_encoder is None:
                raise ConfigError("train_text_encoder is not available for this model (e.g. SD 2.x inside the "
                                  "WebUI, whose OpenCLIP encoder is not supported); set train_text_encoder: false")
            self.injected.append(inject_lora(self.host.text_encoder, LoraSpec(
                config.lora_rank, config.lora_alpha, config.lora_dropout,
                tuple(config.text_encoder_target_modules)), TEXT_ADAPTER))
        self.host.unet.train()
        if config.gradient_checkpointing:
            self.host.unet.enable_gradient_checkpointing()
            self.checkpointing_enabled = True
        parameters = [p for injected in self.injected for p in injected.parameters]
        logger.info("training %d LoRA parameters in %d layers", sum(p.numel() for p in parameters),
                    sum(i.num_layers for i in self.injected))
        return parameters

    def _resume(self, optimizer, scheduler, scaler):
        if not self.config.resume_from_checkpoint or self.checkpoint_dir is None:
            return 0, 0
        path = checkpoints.find_checkpoint(self.checkpoint_dir, self.config.resume_from_checkpoint)
        if path is None:
            logger.info("no checkpoint to resume from yet; starting at step 0")
            return 0, 0
        import torch

        lora_state, state, done = checkpoints.load_checkpoint(path)
        load_lora_state_dict(self.host.unet, _split(lora_state, "unet."), UNET_ADAPTER)
        if self.config.train_text_encoder:
            load_lora_state_dict(self.host.text_encoder, _split(lora_state, "text_encoder."), TEXT_ADAPTER)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed from step %d", done["step"])
        return done["step"], done["epoch"]

    def _loop(self, data, parameters, optimizer, scheduler, scaler, step, epoch, per_epoch, total):
        tracker = _EarlyStopping(self.config.early_stopping_patience, self.config.early_stopping_min_delta)
        clock = time.perf_counter()
        first_step = step
        while step < total:
            epoch += 1
            epoch_losses = []
            for indices in self._epoch_batches(len(data), per_epoch):
                if self.cancel_event is not None and self.cancel_event.is_set():
                    return "cancelled"
                loss = self._optimizer_step(data, indices, parameters, optimizer, scheduler, scaler)
                step += 1
                epoch_losses.append(loss)
                self._record(step, epoch, loss, scheduler, total, first_step, clock)
                self._maybe_checkpoint(step, epoch, optimizer, scheduler, scaler)
                if step >= total:
                    break
            self._maybe_sample(epoch, finished=step >= total)
            if tracker.should_stop(sum(epoch_losses) / len(epoch_losses)):
                logger.info("early stopping after epoch %d: no improvement for %d epochs", epoch, tracker.patience)
                return "early_stopping"
        return "completed"

    def _maybe_sample(self, epoch, finished):
        """Render ``sample_prompt`` with the adapter as trained so far (atomic PNG, no text chunks)."""
        config = self.config
        if not config.sample_prompt or self.sample_dir is None:
            return
        if not finished and (config.sample_every_epochs is None or epoch % config.sample_every_epochs):
            return
        from ..dataset.images import png_bytes
        from ..fileio import write_bytes_atomic

        image = self.host.generate(config.sample_prompt, seed=config.seed)
        self.sample_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.sample_dir / f"epoch_{epoch:03d}.png", png_bytes(image))

    def _epoch_batches(self, count, per_epoch):
        import torch

        order = torch.randperm(count, generator=self.generator).tolist()
        size = self.config.batch_size
        batches = [order[i:i + size] for i in range(0, count, size)]
        accumulation = self.config.gradient_accumulation_steps
        for number in range(per_epoch):
            yield batches[number * accumulation:(number + 1) * accumulation]

    def _optimizer_step(self, data, micro_batches, parameters, optimizer, scheduler, scaler):
        import torch

        total_loss = 0.0
        for indices in micro_batches:
            loss = self._micro_step(data, indices) / len(micro_batches)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"the loss became {loss.item()} at step {len(self.losses) + 1}; nothing was exported. "
                    f"Try a lower learning_rate (now {self.config.learning_rate}) or mixed_precision: 'no'"
                )
            scaler.scale(loss).backward()
            total_loss += loss.item()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, self.config.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return total_loss

    def _micro_step(self, data, indices):
        """One forward pass: noise, predict, weighted MSE."""
        import torch

        host, config, device = self.host, self.config, self.precision.device
        latents = data.latents_for(indices, self.generator).to(device)
        noise = torch.randn(latents.shape, generator=self.generator).to(device)
        if config.noise_offset:
            noise = noise + config.noise_offset * torch.randn(
                (latents.shape[0], latents.shape[1], 1, 1), generator=self.generator).to(device)
        timesteps = torch.randint(0, len(host.alphas_cumprod), (latents.shape[0],), generator=self.generator)
        noisy = add_noise(latents, noise, timesteps, host.alphas_cumprod)
        target = diffusion_target(latents, noise, timesteps, host.alphas_cumprod, host.prediction_type)
        conditioning = self._conditioning(data, indices)
        with self.precision.autocast():
            prediction = host.predict(noisy.to(self.precision.weight_dtype), timesteps.to(device),
                                      conditioning.to(device, self.precision.weight_dtype))
        losses = per_sample_mse(prediction, target)
        if config.snr_gamma:
            weights = min_snr_weights(compute_snr(host.alphas_cumprod, timesteps), config.snr_gamma,
                                      host.prediction_type)
            losses = losses * weights.to(device)
        return losses.mean()

    def _conditioning(self, data, indices):
        if not self.config.train_text_encoder:
            return data.conditionings_for(indices)
        return self.host.encode_prompts([self.examples[i].caption for i in indices])

    def _record(self, step, epoch, loss, scheduler, total, first_step, clock):
        rate = (step - first_step) / max(time.perf_counter() - clock, 1e-9)
        entry = {"step": step, "epoch": epoch, "loss": loss, "learning_rate": scheduler.get_last_lr()[0]}
        self.losses.append(entry)
        if self.progress is not None:
            self.progress(TrainProgress(step, total, epoch, loss, entry["learning_rate"], rate,
                                        (total - step) / rate if rate > 0 else float("inf")))

    def _maybe_checkpoint(self, step, epoch, optimizer, scheduler, scaler):
        every = self.config.checkpointing_steps
        if every and self.checkpoint_dir is not None and step % every == 0:
            unet_state, text_state = self._lora_states()
            state = {f"unet.{k}": v for k, v in unet_state.items()}
            state.update({f"text_encoder.{k}": v for k, v in text_state.items()})
            checkpoints.save_checkpoint(self.checkpoint_dir, step, epoch, state, optimizer, scheduler, scaler,
                                        self.generator)

    def _lora_states(self):
        unet_state = {k: v.detach().float().cpu().clone()
                      for k, v in lora_state_dict(self.host.unet, UNET_ADAPTER).items()}
        text_state = {}
        if self.config.train_text_encoder:
            text_state = {k: v.detach().float().cpu().clone()
                          for k, v in lora_state_dict(self.host.text_encoder, TEXT_ADAPTER).items()}
        return unet_state, text_state

    def restore(self):
        """Remove every LoRA layer and undo every training-mode switch (idempotent).

        Every step runs even if an earlier one fails (an ExitStack runs them all and re-raises
        the first error), so one failing undo never leaves an adapter inside the base model.
        """
        import contextlib

        with contextlib.ExitStack() as undo:
            if self.host.text_encoder is not None:
                undo.callback(self.host.text_encoder.eval)
            undo.callback(self.host.unet.eval)
            undo.callback(self.injected.clear)
            for injected in self.injected:
                undo.callback(injected.remove)
            if self.checkpointing_enabled:
                self.checkpointing_enabled = False
                undo.callback(self.host.unet.disable_gradient_checkpointing)


def _split(state, prefix):
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


class _EarlyStopping:
    """Stop when the epoch loss has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, patience, min_delta):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.stale = float("inf"), 0

    def should_stop(self, epoch_loss):
        if self.patience is None:
            return False
        if epoch_loss < self.best - self.min_delta:
            self.best, self.stale = epoch_loss, 0
        else:
            self.stale += 1
        return self.stale >= self.patience
