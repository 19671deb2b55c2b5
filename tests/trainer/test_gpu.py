"""Mixed-precision training on a CUDA GPU (skipped where there is none).

Run on a GPU machine with: python -m pytest tests/trainer/test_gpu.py -q
"""

import pytest
import torch

from bench.train_step import write_png_dataset
from lib_lora_train.config import TrainConfig
from lib_lora_train.hosts.base import fingerprint_modules
from lib_lora_train.home import resolve_home
from lib_lora_train.lora.apply import applied_adapter
from lib_lora_train.trainer.api import LoRATrainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_training_on_cuda(precision, tmp_path):
    dataset = write_png_dataset(tmp_path / "ds", 64)
    config = TrainConfig(train_data_dir=str(dataset), resolution=64, lora_rank=4, lora_alpha=4.0, batch_size=2,
                         max_steps=20, learning_rate=1e-3, device="cuda", mixed_precision=precision,
                         output_dir=str(tmp_path / "gpu_lora"), snr_gamma=5.0, gradient_checkpointing=True)
    trainer = LoRATrainer(config, resolve_home(tmp_path / "home"))
    host = trainer.build_model()
    assert host.unet.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    before = fingerprint_modules(host.modules_to_fingerprint())
    result = trainer.train()
    losses = [entry["loss"] for entry in result.losses]
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses)))
    assert all(value.dtype == torch.float32 for value in result.unet_lora.values())  # LoRA trained in fp32
    assert fingerprint_modules(host.modules_to_fingerprint()) == before
    exported = trainer.export_lora_weights()
    x = torch.randn(1, 4, 8, 8, device="cuda", dtype=host.dtype)
    t, c = torch.tensor([300], device="cuda"), host.encode_prompts(["CT scan of chest"])
    with torch.no_grad():
        base = host.predict(x, t, c)
        with applied_adapter(host, exported.path, 1.0):
            adapted = host.predict(x, t, c)
    assert torch.isfinite(adapted).all() and not torch.equal(adapted, base)
    assert fingerprint_modules(host.modules_to_fingerprint()) == before
