"""Tests for lib_lora_train/lora/inject.py on a tiny seeded UNet, a tiny CLIP text encoder and an LDM-named tree."""

import pytest
import torch
from torch import nn

from lib_lora_train.errors import LoraTrainError
from lib_lora_train.lora import inject as inject_module
from lib_lora_train.lora.inject import (
    TEXT_ENCODER_TARGET_MODULES,
    UNET_TARGET_MODULES,
    LoraInjectError,
    LoraSpec,
    find_target_layers,
    inject_lora,
    load_lora_state_dict,
    lora_state_dict,
    set_lora_scale,
)

SEED = 0
UNET_KWARGS = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "cross_attention_dim": 32,
    "sample_size": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "attention_head_dim": 8,
}
# 6 transformer blocks (2 down, 1 mid, 3 up) x attn1/attn2 x to_q/to_k/to_v/to_out.0
TINY_UNET_LAYERS = 48


def build_tiny_unet(seed=SEED):
    """The tiny diffusers UNet of the test suite, same weights for the same seed."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_KWARGS).eval()


def build_tiny_text_encoder(seed=SEED):
    """A 2-layer CLIPTextModel with hidden size 32."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
    )
    return CLIPTextModel(config).eval()


def unet_inputs(seed=1, dtype=torch.float32):
    """Latents, timesteps and conditioning for :func:`build_tiny_unet`."""
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float32).to(dtype)
    context = torch.randn(2, 5, 32, generator=generator, dtype=torch.float32).to(dtype)
    return sample, torch.tensor([10, 500]), context


def run_unet(unet, inputs):
    sample, timesteps, context = inputs
    with torch.no_grad():
        return unet(sample, timesteps, encoder_hidden_states=context).sample


def text_ids():
    return torch.tensor([[0, 5, 7, 9, 1], [0, 3, 3, 8, 1]])


def perturb_adapter(module, adapter_name=inject_module.DEFAULT_ADAPTER_NAME, seed=2):
    """Give the adapter random A and B so it changes outputs, as training would."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        key: torch.randn(value.shape, generator=generator) * 0.3
        for key, value in sorted(lora_state_dict(module, adapter_name).items())
    }
    load_lora_state_dict(module, state, adapter_name)
    return state


class _Attention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x):
        weights = torch.softmax(self.to_q(x) @ self.to_k(x).transpose(-1, -2), dim=-1)
        return self.to_out(weights @ self.to_v(x))


class _TransformerBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.attn1 = _Attention(dim)
        self.attn2 = _Attention(dim)

    def forward(self, x):
        x = x + self.attn1(x)
        return x + self.attn2(x)


class _SpatialTransformer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList([_TransformerBlock(dim)])
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x):
        h = self.proj_in(self.norm(x))
        for block in self.transformer_blocks:
            h = block(h)
        return x + self.proj_out(h)


class LdmNamedModel(nn.Module):
    """Module paths as in the WebUI's LDM UNet: input_blocks.1.1.transformer_blocks.0.attn1.to_q."""

    def __init__(self, dim=16):
        super().__init__()
        self.input_blocks = nn.ModuleList(
            [nn.ModuleList([nn.Linear(dim, dim)])]
            + [nn.ModuleList([nn.Linear(dim, dim), _SpatialTransformer(dim)]) for _ in range(2)]
        )
        self.middle_block = nn.ModuleList([nn.Linear(dim, dim), _SpatialTransformer(dim), nn.Linear(dim, dim)])

    def forward(self, x):
        for block in [*self.input_blocks, self.middle_block]:
            for layer in block:
                x = layer(x)
        return x


def build_ldm_named_model(seed=SEED):
    torch.manual_seed(seed)
    return LdmNamedModel().eval()


def snapshot(module):
    """Everything remove() must restore: module objects by path, weights, grad flags, attributes."""
    return {
        "modules": [(name, sub) for name, sub in module.named_modules()],
        "state": {key: value.clone() for key, value in module.state_dict().items()},
        "grad": [(name, p.requires_grad) for name, p in module.named_parameters()],
        "attributes": {name: sorted(vars(sub)) for name, sub in module.named_modules()},
    }


def assert_restored(module, before):
    after = snapshot(module)
    assert [name for name, _ in after["modules"]] == [name for name, _ in before["modules"]]
    assert all(a is b for (_, a), (_, b) in zip(after["modules"], before["modules"]))
    assert list(after["state"]) == list(before["state"])
    for key, value in before["state"].items():
        assert after["state"][key].dtype == value.dtype
        assert torch.equal(after["state"][key], value), key
    assert after["grad"] == before["grad"]
    assert after["attributes"] == before["attributes"]


@pytest.fixture
def unet():
    return build_tiny_unet()


def test_injection_targets_exactly_the_attention_projections(unet):
    leaves = (".to_q", ".to_k", ".to_v", ".to_out.0")
    expected = [name for name, sub in unet.named_modules() if isinstance(sub, nn.Linear) and name.endswith(leaves)]
    injected = inject_lora(unet, LoraSpec(rank=4, alpha=4.0))
    assert list(injected.layer_names) == expected
    assert injected.num_layers == TINY_UNET_LAYERS
    assert isinstance(injected.parameters, list)
    assert len(injected.parameters) == 2 * TINY_UNET_LAYERS
    injected.remove()


def test_only_lora_a_and_b_are_trainable(unet):
    injected = inject_lora(unet, LoraSpec(rank=4, alpha=4.0))
    trainable = [name for name, p in unet.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * TINY_UNET_LAYERS
    assert all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert {id(p) for p in unet.parameters() if p.requires_grad} == {id(p) for p in injected.parameters}
    shapes = {tuple(p.shape) for p in injected.parameters}
    assert shapes <= {(4, 32), (32, 4), (4, 64), (64, 4)}
    injected.remove()


def test_fresh_adapter_leaves_outputs_unchanged(unet):
    inputs = unet_inputs()
    reference = run_unet(unet, inputs)
    injected = inject_lora(unet, LoraSpec(rank=4, alpha=8.0))
    assert torch.equal(run_unet(unet, inputs), reference)
    injected.remove()


def test_perturbed_adapter_changes_outputs_and_scale_zero_turns_it_off(unet):
    inputs = unet_inputs()
    reference = run_unet(unet, inputs)
    injected = inject_lora(unet, LoraSpec(rank=4, alpha=8.0))
    perturb_adapter(unet)
    changed = run_unet(unet, inputs)
    assert not torch.allclose(changed, reference, atol=1e-4)
    assert set_lora_scale(unet, 0.0) == TINY_UNET_LAYERS
    assert torch.equal(run_unet(unet, inputs), reference)
    set_lora_scale(unet, 1.0)
    assert torch.equal(run_unet(unet, inputs), changed)
    injected.remove()


def test_gradients_reach_only_lora_parameters(unet):
    injected = inject_lora(unet, LoraSpec(rank=4, alpha=4.0))
    perturb_adapter(unet)
    sample, timesteps, context = unet_inputs()
    unet(sample, timesteps, encoder_hidden_states=context).sample.pow(2).mean().backward()
    assert all(p.grad is not None for p in injected.parameters)
    assert all(p.grad is None for p in unet.parameters() if not p.requires_grad)
    injected.remove()


def test_remove_restores_modules_and_weights_exactly(unet):
    inputs = unet_inputs()
    reference = run_unet(unet, inputs)
    before = snapshot(unet)
    injected = inject_lora(unet, LoraSpec(rank=4, alpha=8.0, dropout=0.1))
    perturb_adapter(unet)
    injected.remove()
    assert injected.removed
    assert_restored(unet, before)
    assert torch.equal(run_unet(unet, inputs), reference)
    injected.remove()
    assert_restored(unet, before)
    assert injected.parameters == []


def test_remove_after_an_exception_in_forward(unet):
    inputs = unet_inputs()
    reference = run_unet(unet, inputs)
    before = snapshot(unet)
    injected = inject_lora(unet, LoraSpec(rank=4, alpha=8.0))
    perturb_adapter(unet)
    sample, timesteps, _ = inputs
    try:
        with pytest.raises(RuntimeError):
            unet(sample, timesteps, encoder_hidden_states=torch.zeros(2, 5, 7)).sample.mean().backward()
    finally:
        injected.remove()
    assert injected.removed
    assert_restored(unet, before)
    assert torch.equal(run_unet(unet, inputs), reference)


def test_failure_during_injection_restores_the_model(unet, monkeypatch):
    before = snapshot(unet)

    def broken(layers, adapter_name):
        raise RuntimeError("simulated failure after PEFT injected")

    monkeypatch.setattr(inject_module, "_train_ready_parameters", broken)
    with pytest.raises(RuntimeError, match="simulated failure"):
        inject_lora(unet, LoraSpec(rank=4, alpha=4.0))
    assert_restored(unet, before)


def test_missing_target_gives_a_clear_error_and_changes_nothing(unet):
    before = snapshot(unet)
    with pytest.raises(LoraInjectError, match=r"Target modules \['to_qq'\] not found in the base model") as info:
        inject_lora(unet, LoraSpec(rank=4, alpha=4.0, target_modules=("to_q", "to_qq")))
    assert "'to_q'" in str(info.value) and "'to_out.0'" in str(info.value)
    assert isinstance(info.value, (LoraTrainError, ValueError))
    assert_restored(unet, before)


def test_target_that_is_not_a_layer_names_the_layer_inside(unet):
    with pytest.raises(LoraInjectError, match=r"'to_out' matches .*ModuleList.*e\.g\. 'to_out\.0'"):
        find_target_layers(unet, ("to_out",))


def test_second_injection_is_refused_until_remove(unet):
    injected = inject_lora(unet, LoraSpec(rank=4, alpha=4.0))
    with pytest.raises(LoraInjectError, match="already carries PEFT layers"):
        inject_lora(unet, LoraSpec(rank=4, alpha=4.0))
    injected.remove()
    inject_lora(unet, LoraSpec(rank=2, alpha=2.0)).remove()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0, "alpha": 1.0}, "rank must be an integer >= 1"),
        ({"rank": 4.0, "alpha": 1.0}, "rank must be an integer >= 1"),
        ({"rank": True, "alpha": 1.0}, "rank must be an integer >= 1"),
        ({"rank": 4, "alpha": 0}, "alpha must be a finite number > 0"),
        ({"rank": 4, "alpha": float("nan")}, "alpha must be a finite number > 0"),
        ({"rank": 4, "alpha": 4, "dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
        ({"rank": 4, "alpha": 4, "target_modules": "to_q"}, "non-empty tuple of module names"),
        ({"rank": 4, "alpha": 4, "target_modules": ()}, "non-empty tuple of module names"),
        ({"rank": 4, "alpha": 4, "target_modules": ("to_q", "to_q")}, "distinct, non-empty"),
        ({"rank": 4, "alpha": 4, "target_modules": ("to_q", ".to_k")}, "distinct, non-empty"),
    ],
)
def test_spec_validation(kwargs, match):
    with pytest.raises(LoraInjectError, match=match):
        LoraSpec(**kwargs)


def test_spec_is_frozen_and_normalises_lists():
    spec = LoraSpec(rank=4, alpha=2, target_modules=["to_q", "to_v"])
    assert spec.target_modules == ("to_q", "to_v")
    with pytest.raises(AttributeError):
        spec.rank = 8


def test_fp16_base_gets_fp32_lora_parameters():
    model = build_ldm_named_model().half()
    injected = inject_lora(model, LoraSpec(rank=4, alpha=4.0))
    assert all(p.dtype == torch.float32 for p in injected.parameters)
    assert all(p.dtype == torch.float16 for p in model.parameters() if not p.requires_grad)
    perturb_adapter(model)
    output = model(torch.randn(2, 3, 16).half())
    assert output.dtype == torch.float16 and torch.isfinite(output).all()
    injected.remove()
    assert all(p.dtype == torch.float16 for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_unet_gets_fp32_lora_parameters(unet, dtype):
    unet.to(dtype)
    injected = inject_lora(unet, LoraSpec(rank=4, alpha=4.0))
    assert {p.dtype for p in injected.parameters} == {torch.float32}
    assert {p.dtype for p in unet.parameters() if not p.requires_grad} == {dtype}
    injected.remove()
    assert {p.dtype for p in unet.parameters()} == {dtype}


def test_ldm_named_tree_gets_the_same_leaf_targets():
    model = build_ldm_named_model()
    before = snapshot(model)
    x = torch.randn(2, 3, 16)
    reference = model(x)
    injected = inject_lora(model, LoraSpec(rank=2, alpha=1.0, target_modules=UNET_TARGET_MODULES))
    assert injected.num_layers == 3 * 2 * 4
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_q" in injected.layer_names
    assert "middle_block.1.transformer_blocks.0.attn2.to_out.0" in injected.layer_names
    assert torch.equal(model(x), reference)
    perturb_adapter(model)
    assert not torch.allclose(model(x), reference)
    injected.remove()
    assert_restored(model, before)


def test_text_encoder_targets_clip_attention():
    encoder = build_tiny_text_encoder()
    before = snapshot(encoder)
    reference = encoder(text_ids()).last_hidden_state
    injected = inject_lora(encoder, LoraSpec(rank=4, alpha=4.0, target_modules=TEXT_ENCODER_TARGET_MODULES))
    assert injected.num_layers == 2 * 4
    # transformers 5 flattened CLIPTextModel (encoder.layers...); 4.x has text_model.encoder.layers...
    assert injected.layer_names[0].endswith("encoder.layers.0.self_attn.k_proj")
    assert torch.equal(encoder(text_ids()).last_hidden_state, reference)
    perturb_adapter(encoder)
    assert not torch.allclose(encoder(text_ids()).last_hidden_state, reference)
    injected.remove()
    assert_restored(encoder, before)


def test_state_dict_is_peft_form_and_round_trips(unet):
    injected = inject_lora(unet, LoraSpec(rank=4, alpha=8.0))
    state = perturb_adapter(unet)
    exported = injected.state_dict()
    assert sorted(exported) == sorted(state)
    assert all(key.endswith((".lora_A.weight", ".lora_B.weight")) for key in exported)
    assert not any("medical_lora" in key for key in exported)
    assert all(torch.equal(exported[key], state[key]) for key in state)
    first = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert exported[f"{first}.lora_A.weight"].shape == (4, 32)
    assert exported[f"{first}.lora_B.weight"].shape == (32, 4)

    other = build_tiny_unet()
    copy = inject_lora(other, LoraSpec(rank=4, alpha=8.0))
    copy.load_state_dict(exported)
    assert torch.equal(run_unet(other, unet_inputs()), run_unet(unet, unet_inputs()))
    injected.remove()
    copy.remove()


def test_load_state_dict_checks_keys_and_shapes_before_writing(unet):
    inject_lora(unet, LoraSpec(rank=4, alpha=8.0))
    state = lora_state_dict(unet)
    key = min(state)
    with pytest.raises(LoraInjectError, match=r"missing \[.*\] \(1\), unexpected \[\] \(0\)"):
        load_lora_state_dict(unet, {k: v for k, v in state.items() if k != key})
    bad = dict(state, **{key: torch.ones(3, 3)})
    with pytest.raises(LoraInjectError, match="has shape"):
        load_lora_state_dict(unet, bad)
    assert all(torch.equal(lora_state_dict(unet)[k], v) for k, v in state.items())
    with pytest.raises(LoraInjectError, match="no LoRA adapter named 'other'"):
        lora_state_dict(unet, "other")
