"""Applying an exported kohya file to a host for generation, and taking it off again."""

import pytest
import torch

from lib_lora_train.errors import ExportError
from lib_lora_train.export.kohya import peft_to_kohya
from lib_lora_train.export.writer import save_lora_file
from lib_lora_train.hosts.base import fingerprint_modules
from lib_lora_train.hosts.diffusers_host import DiffusersHost
from lib_lora_train.lora.apply import applied_adapter
from lib_lora_train.lora.inject import LoraSpec, inject_lora


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    return DiffusersHost.embedded(tmp_path_factory.mktemp("models"))


def _adapter_file(host, path, scale=0.05):
    injected = inject_lora(host.unet, LoraSpec(2, 2.0, 0.0, ("to_q", "to_v")), "make")
    try:
        with torch.no_grad():
            for parameter in injected.parameters:
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * scale)
        state = injected.state_dict()
    finally:
        injected.remove()
    metadata = {"ss_network_module": "networks.lora", "modelspec.sai_model_spec": "1.0.0",
                "modelspec.implementation": "diffusers", "ss_network_dim": "2", "ss_network_alpha": "2.0",
                "ss_base_model_version": "sd_v1", "ss_v2": "False", "modelspec.architecture": "stable-diffusion-v1/lora",
                "modelspec.title": "t", "ss_output_name": "t", "ss_session_id": "1",
                "medical_lora.registry_id": "r1", "medical_lora.purpose": "test", "medical_lora.version": "0.1.0"}
    save_lora_file(path, peft_to_kohya(state, "lora_unet", 2.0), metadata, dtype="fp32")
    return path


def test_weight_scales_the_effect_and_removal_is_exact(host, tmp_path):
    path = _adapter_file(host, tmp_path / "t.safetensors")
    before = fingerprint_modules(host.modules_to_fingerprint())
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t, c = torch.tensor([300]), host.encode_prompts(["CT scan"])
    outputs = {}
    for weight in (0.0, 0.5, 1.0):
        with applied_adapter(host, path, weight), torch.no_grad():
            outputs[weight] = host.predict(x, t, c)
    with torch.no_grad():
        base = host.predict(x, t, c)
    assert torch.equal(outputs[0.0], base)
    small, large = (outputs[0.5] - base).abs().mean(), (outputs[1.0] - base).abs().mean()
    assert 0 < small < large
    assert fingerprint_modules(host.modules_to_fingerprint()) == before


def test_removed_even_when_generation_fails(host, tmp_path):
    path = _adapter_file(host, tmp_path / "t.safetensors")
    before = fingerprint_modules(host.modules_to_fingerprint())
    with pytest.raises(RuntimeError, match="boom"):
        with applied_adapter(host, path, 1.0):
            raise RuntimeError("boom")
    assert fingerprint_modules(host.modules_to_fingerprint()) == before
    assert not any("lora_" in name for name, _ in host.unet.named_modules())


def test_adapter_for_another_model_is_refused(host, tmp_path):
    tensors = {"lora_unet_input_blocks_99_1_proj_in.lora_down.weight": torch.zeros(2, 8),
               "lora_unet_input_blocks_99_1_proj_in.lora_up.weight": torch.zeros(8, 2),
               "lora_unet_input_blocks_99_1_proj_in.alpha": torch.tensor(2.0)}
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "other.safetensors"))
    with pytest.raises(ExportError, match="match no module"):
        with applied_adapter(host, tmp_path / "other.safetensors", 1.0):
            pass
    assert not any("lora_" in name for name, _ in host.unet.named_modules())
