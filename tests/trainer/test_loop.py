"""The training loop on the embedded tiny model: it learns, it stops, it never touches the base."""

import threading

import pytest
import torch

from lib_lora_train.config import TrainConfig
from lib_lora_train.hosts.base import fingerprint_modules
from lib_lora_train.hosts.diffusers_host import DiffusersHost
from lib_lora_train.trainer import checkpoint as checkpoints
from lib_lora_train.trainer.data import encode_dataset, load_examples
from lib_lora_train.trainer.losses import add_noise, diffusion_target, per_sample_mse
from lib_lora_train.trainer.loop import TrainingDivergedError, train_lora
from lib_lora_train.trainer.precision import resolve_precision

CPU = resolve_precision("cpu", "no")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    return DiffusersHost.embedded(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def examples(dataset):
    return load_examples(dataset)


def _config(tmp_path, **overrides):
    values = dict(train_data_dir=str(tmp_path), resolution=64, lora_rank=4, lora_alpha=4.0, learning_rate=1e-3,
                  batch_size=2, max_steps=4, output_dir=str(tmp_path / "out" / "test_lora"), mixed_precision="no",
                  device="cpu")
    values.update(overrides)
    return TrainConfig(**values)


def _no_lora_left(module):
    return not any("lora_" in name for name, _ in module.named_modules())


def _eval_loss(host, examples, seed=0):
    """Loss on fixed noise and timesteps, so before/after compare like with like."""
    data = encode_dataset(host, examples, 64)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(data.latents.shape, generator=generator)
    timesteps = torch.randint(100, 900, (len(data),), generator=generator)
    with torch.no_grad():
        noisy = add_noise(data.latents, noise, timesteps, host.alphas_cumprod)
        prediction = host.predict(noisy, timesteps, data.conditionings)
        target = diffusion_target(data.latents, noise, timesteps, host.alphas_cumprod, host.prediction_type)
        return per_sample_mse(prediction, target).mean().item()


def test_loss_falls_when_overfitting_and_base_is_untouched(host, examples, tmp_path):
    before = fingerprint_modules(host.modules_to_fingerprint())
    baseline = _eval_loss(host, examples)
    config = _config(tmp_path, max_steps=40, learning_rate=5e-3)
    result = train_lora(host, examples, config, CPU)
    assert result.stopped == "completed" and result.steps == 40
    assert fingerprint_modules(host.modules_to_fingerprint()) == before
    assert _no_lora_left(host.unet)
    # load the trained weights back and measure the same fixed loss
    from lib_lora_train.lora.inject import LoraSpec, inject_lora

    injected = inject_lora(host.unet, LoraSpec(4, 4.0, 0.0, tuple(config.target_modules)), "check")
    try:
        injected.load_state_dict(result.unet_lora)
        trained = _eval_loss(host, examples)
    finally:
        injected.remove()
    assert trained < baseline * 0.9, (baseline, trained)
    assert fingerprint_modules(host.modules_to_fingerprint()) == before


def test_same_seed_same_adapter(host, examples, tmp_path):
    first = train_lora(host, examples, _config(tmp_path), CPU)
    second = train_lora(host, examples, _config(tmp_path), CPU)
    assert first.unet_lora.keys() == second.unet_lora.keys()
    assert all(torch.equal(first.unet_lora[k], second.unet_lora[k]) for k in first.unet_lora)
    assert any(v.abs().sum() > 0 for k, v in first.unet_lora.items() if "lora_B" in k)  # it learned something


def test_cancel_stops_within_one_step(host, examples, tmp_path):
    before = fingerprint_modules(host.modules_to_fingerprint())
    cancel = threading.Event()
    steps = []

    def on_progress(progress):
        steps.append(progress.step)
        if progress.step == 2:
            cancel.set()

    result = train_lora(host, examples, _config(tmp_path, max_steps=50), CPU, cancel_event=cancel,
                        progress=on_progress)
    assert result.stopped == "cancelled" and steps == [1, 2]
    assert fingerprint_modules(host.modules_to_fingerprint()) == before and _no_lora_left(host.unet)


def test_exception_mid_training_restores_everything(host, examples, tmp_path, monkeypatch):
    before = fingerprint_modules(host.modules_to_fingerprint())
    calls = []
    real_predict = host.predict

    def failing_predict(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated out of memory")
        return real_predict(*args)

    monkeypatch.setattr(host, "predict", failing_predict)
    with pytest.raises(RuntimeError, match="simulated"):
        train_lora(host, examples, _config(tmp_path, gradient_checkpointing=True), CPU)
    monkeypatch.undo()
    assert fingerprint_modules(host.modules_to_fingerprint()) == before and _no_lora_left(host.unet)
    assert not host.unet.training and not host.unet.is_gradient_checkpointing


def test_nan_loss_stops_with_a_clear_message(host, examples, tmp_path, monkeypatch):
    before = fingerprint_modules(host.modules_to_fingerprint())
    real_predict = host.predict
    monkeypatch.setattr(host, "predict", lambda *args: real_predict(*args) * float("nan"))
    with pytest.raises(TrainingDivergedError, match="lower learning_rate"):
        train_lora(host, examples, _config(tmp_path), CPU)
    monkeypatch.undo()
    assert fingerprint_modules(host.modules_to_fingerprint()) == before and _no_lora_left(host.unet)


def test_v_prediction_target_is_used(host, examples, tmp_path, monkeypatch):
    seen = []
    import lib_lora_train.trainer.loop as loop

    real_target = loop.diffusion_target

    def spy(latents, noise, timesteps, schedule, prediction_type):
        seen.append(prediction_type)
        return real_target(latents, noise, timesteps, schedule, prediction_type)

    monkeypatch.setattr(loop, "diffusion_target", spy)
    monkeypatch.setattr(host, "prediction_type", "v_prediction")
    result = train_lora(host, examples, _config(tmp_path, max_steps=2, snr_gamma=5.0), CPU)
    assert set(seen) == {"v_prediction"} and result.prediction_type == "v_prediction"


def test_checkpoint_and_resume_match_an_uninterrupted_run(host, examples, tmp_path):
    # 4 images, batch 2: 2 steps per epoch; checkpoints fall on epoch boundaries.
    straight = train_lora(host, examples, _config(tmp_path, max_steps=4), CPU)
    folder = tmp_path / "ckpt"
    train_lora(host, examples, _config(tmp_path, max_steps=2, checkpointing_steps=2), CPU, checkpoint_dir=folder)
    assert checkpoints.find_checkpoint(folder, "latest").name == "step-00000002"
    resumed = train_lora(host, examples, _config(tmp_path, max_steps=4, resume_from_checkpoint="latest"), CPU,
                         checkpoint_dir=folder)
    assert [e["step"] for e in resumed.losses] == [3, 4]
    for key, value in straight.unet_lora.items():
        assert torch.allclose(value, resumed.unet_lora[key], atol=1e-6), key


def test_early_stopping_on_a_plateau(host, examples, tmp_path):
    config = _config(tmp_path, max_steps=None, epochs=20, early_stopping_patience=1, early_stopping_min_delta=10.0)
    result = train_lora(host, examples, config, CPU)
    assert result.stopped == "early_stopping" and result.epochs == 2 and result.steps == 4


def test_gradient_accumulation_and_uncached_latents(host, examples, tmp_path):
    config = _config(tmp_path, batch_size=1, gradient_accumulation_steps=2, max_steps=2, cache_latents=False,
                     random_flip=True, noise_offset=0.05, lr_scheduler="cosine", lr_warmup_steps=1)
    result = train_lora(host, examples, config, CPU)
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(e["loss"])) for e in result.losses)


def test_text_encoder_lora_trains_and_is_removed(host, examples, tmp_path):
    before = fingerprint_modules(host.modules_to_fingerprint())
    result = train_lora(host, examples, _config(tmp_path, train_text_encoder=True, max_steps=2), CPU)
    assert result.text_encoder_lora and all("lora_" in k for k in result.text_encoder_lora)
    assert fingerprint_modules(host.modules_to_fingerprint()) == before and _no_lora_left(host.text_encoder)


def test_sample_previews_show_the_adapter_as_trained_so_far(host, examples, tmp_path):
    """sample_prompt renders after every sample_every_epochs epochs and after the last, as plain PNGs."""
    import numpy as np
    from PIL import Image

    from lib_lora_train.dataset.images import png_chunk_types

    before = fingerprint_modules(host.modules_to_fingerprint())
    samples = tmp_path / "samples"
    # 4 images, batch 2: 2 steps per epoch, 6 steps = 3 epochs; every 2 epochs plus the last
    config = _config(tmp_path, max_steps=6, learning_rate=5e-3, sample_prompt="CT scan of chest", sample_every_epochs=2)
    train_lora(host, examples, config, CPU, sample_dir=samples)
    assert sorted(p.name for p in samples.iterdir()) == ["epoch_002.png", "epoch_003.png"]
    assert set(png_chunk_types((samples / "epoch_003.png").read_bytes())) == {"IHDR", "IDAT", "IEND"}
    without = np.asarray(host.generate("CT scan of chest", seed=config.seed))
    assert not np.array_equal(np.asarray(Image.open(samples / "epoch_003.png")), without)  # the adapter was on
    assert fingerprint_modules(host.modules_to_fingerprint()) == before and _no_lora_left(host.unet)


def test_sample_previews_are_refused_on_a_host_that_cannot_render(host, examples, tmp_path):
    from lib_lora_train.errors import ConfigError

    class NoRendering:
        """The trainer's view of a host without ``generate`` (the WebUI's loaded model)."""

        def __getattr__(self, name):
            if name == "generate":
                raise AttributeError(name)
            return getattr(host, name)

    config = _config(tmp_path, sample_prompt="CT scan of chest")
    with pytest.raises(ConfigError, match="sample_prompt"):
        train_lora(NoRendering(), examples, config, CPU, sample_dir=tmp_path / "samples")
    assert _no_lora_left(host.unet)
