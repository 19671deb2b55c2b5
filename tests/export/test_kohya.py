"""Tests for lib_lora_train/export/kohya.py: names, alphas, shapes, LDM paths and round trips."""

import ast
import os
import pathlib
import re
import subprocess

import pytest
import torch
from torch import nn

from lib_lora_train.export.kohya import (
    ExportError,
    check_kohya_state_dict,
    kohya_to_peft,
    ldm_unet_to_diffusers_path,
    peft_to_kohya,
)
from lib_lora_train.export.metadata import build_metadata
from lib_lora_train.export.writer import read_lora_file, save_lora_file
from lib_lora_train.lora.inject import (
    TEXT_ENCODER_TARGET_MODULES,
    LoraSpec,
    inject_lora,
    load_lora_state_dict,
    lora_state_dict,
)
from tests.lora.test_inject import (
    TINY_UNET_LAYERS,
    build_tiny_text_encoder,
    build_tiny_unet,
    perturb_adapter,
    run_unet,
    text_ids,
    unet_inputs,
)

SD15_KEYS = pathlib.Path(__file__).resolve().parent.parent / "data" / "sd15_ldm_keys.txt"
LDM_UNET_PREFIX = "model.diffusion_model."
# Upstream sources (bare git mirrors) used to cross-check against the real loader code when present.
A1111_REPO = pathlib.Path(
    os.environ.get("MEDICAL_LORA_A1111_REPO", "/work/.mirror/kklouzal+stable-diffusion-webui/repo")
)
A1111_REV = "v1.10.1"
FORGE_REPO = pathlib.Path(
    os.environ.get("MEDICAL_LORA_FORGE_REPO", "/work/.mirror/lllyasviel+stable-diffusion-webui-forge/repo")
)
FORGE_REV = "dfdcbab6"
# Parameters of SD1/SD2 SpatialTransformers, selected independently of the code under test.
LDM_ATTENTION_KEY = re.compile(
    r"(?:input_blocks\.\d+\.1|middle_block\.1|output_blocks\.\d+\.1)\.(?:norm|proj_in|proj_out|transformer_blocks)\."
)
SD15_UNET_CONFIG = {
    "sample_size": 64,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD21_UNET_CONFIG = dict(
    SD15_UNET_CONFIG, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
)
ALPHA = 3.0
RANK = 4


def read_sd15_unet_shapes():
    """LDM UNet parameter name (without ``model.diffusion_model.``) -> shape, from the shared key list."""
    if not SD15_KEYS.is_file():
        pytest.skip(f"SD1.5 key list not found at {SD15_KEYS}")
    shapes = {}
    for line in SD15_KEYS.read_text().splitlines():
        name, _dtype, shape = line.split()
        if name.startswith(LDM_UNET_PREFIX):
            shapes[name[len(LDM_UNET_PREFIX):]] = tuple(int(n) for n in shape.strip("[]").split(",") if n)
    return shapes


def diffusers_conversion_of(ldm_shapes, layers_per_block=2):
    """LDM parameter name -> diffusers parameter name, read from diffusers' own checkpoint conversion."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    checkpoint = {LDM_UNET_PREFIX + k: torch.empty(shape, device="meta") for k, shape in ldm_shapes.items()}
    converted = convert_ldm_unet_checkpoint(checkpoint, {"layers_per_block": layers_per_block})
    by_tensor = {id(tensor): name for name, tensor in converted.items()}
    return {k[len(LDM_UNET_PREFIX):]: by_tensor[id(v)] for k, v in checkpoint.items() if id(v) in by_tensor}


def upstream_function(repo, rev, path, qualname):
    """A function from an upstream source file in a bare git mirror; skips when the mirror is absent.

    Top-level assignments and classes it may need are executed first; those that need the
    upstream's own modules are left out.
    """
    if not repo.is_dir():
        pytest.skip(f"upstream mirror {repo} is not available")
    source = subprocess.run(
        ["git", "-C", str(repo), "show", f"{rev}:{path}"], capture_output=True, text=True, check=False
    )
    if source.returncode != 0:
        pytest.skip(f"{path} at {rev} is not in {repo}")
    namespace = {"re": re, "enum": __import__("enum"), "hashlib": __import__("hashlib"), "os": os}
    tree = ast.parse(source.stdout)
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.ClassDef, ast.FunctionDef)):
            try:
                exec(compile(ast.Module([node], []), path, "exec"), namespace)  # noqa: S102 - pinned upstream source
            except (NameError, AttributeError, ImportError):
                continue  # needs the WebUI's own modules; not what is under test
    owner, _, name = qualname.rpartition(".")
    return getattr(namespace[owner], name) if owner else namespace[name]


def ldm_view(unet):
    """The tiny UNet's attention blocks re-parented under WebUI LDM names (shared, not copied)."""
    view = nn.Module()
    down, up = unet.down_blocks[0].attentions, unet.up_blocks[1].attentions
    view.input_blocks = nn.ModuleList(
        [nn.ModuleList([nn.Identity()])] + [nn.ModuleList([nn.Identity(), down[j]]) for j in range(2)]
    )
    view.middle_block = nn.ModuleList([nn.Identity(), unet.mid_block.attentions[0], nn.Identity()])
    view.output_blocks = nn.ModuleList(
        [nn.ModuleList([nn.Identity()]) for _ in range(3)]
        + [nn.ModuleList([nn.Identity(), up[j]]) for j in range(3)]
    )
    return view


def save_fp32(tmp_path, tensors, name="adapter"):
    metadata = build_metadata(
        name=name, purpose="test", registry_id="r-1", base_model_version="sd_v1", network_dim=RANK,
        network_alpha=ALPHA,
    )
    path = tmp_path / f"{name}.safetensors"
    save_lora_file(path, tensors, metadata, dtype="fp32")
    return path


@pytest.fixture
def trained_unet():
    unet = build_tiny_unet()
    injected = inject_lora(unet, LoraSpec(rank=RANK, alpha=ALPHA))
    perturb_adapter(unet)
    yield unet, injected
    injected.remove()


@pytest.fixture
def trained_text_encoder():
    encoder = build_tiny_text_encoder()
    injected = inject_lora(encoder, LoraSpec(rank=RANK, alpha=ALPHA, target_modules=TEXT_ENCODER_TARGET_MODULES))
    perturb_adapter(encoder, seed=5)
    yield encoder, injected
    injected.remove()


@pytest.mark.parametrize(
    ("ldm", "layers_per_block", "expected"),
    [
        (
            "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
            2,
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        ),
        ("model.diffusion_model.input_blocks.8.1.proj_in", 2, "down_blocks.2.attentions.1.proj_in"),
        ("diffusion_model.input_blocks.4.1.norm", 2, "down_blocks.1.attentions.0.norm"),
        (
            "diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_out.0",
            2,
            "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0",
        ),
        (
            "output_blocks.3.1.transformer_blocks.0.attn2.to_k",
            2,
            "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
        ),
        (
            "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj",
            2,
            "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj",
        ),
        ("input_blocks.3.1.proj_out", 1, "down_blocks.1.attentions.0.proj_out"),
    ],
)
def test_ldm_attention_paths_map_to_diffusers(ldm, layers_per_block, expected):
    assert ldm_unet_to_diffusers_path(ldm, layers_per_block=layers_per_block) == expected


@pytest.mark.parametrize(
    "ldm",
    [
        "input_blocks.1.0.in_layers.2",
        "input_blocks.3.0.op",
        "input_blocks.3.1.proj_in",
        "input_blocks.0.0",
        "output_blocks.2.1.conv",
        "middle_block.0.emb_layers.1",
        "time_embed.0",
        "input_blocks.1.1.normx",
    ],
)
def test_non_attention_ldm_paths_are_refused(ldm):
    with pytest.raises(ExportError, match="is not an attention module of an SD1/SD2 LDM UNet"):
        ldm_unet_to_diffusers_path(ldm)


def test_every_sd15_attention_module_maps_as_diffusers_converts_it():
    shapes = read_sd15_unet_shapes()
    conversion = diffusers_conversion_of(shapes)
    attention = sorted(k for k in shapes if LDM_ATTENTION_KEY.match(k))
    assert len(attention) == 416
    for key in attention:
        module, _, parameter = key.rpartition(".")
        assert f"{ldm_unet_to_diffusers_path(module)}.{parameter}" == conversion[key], key
    for key in set(shapes) - set(attention):
        with pytest.raises(ExportError):
            ldm_unet_to_diffusers_path(key.rpartition(".")[0])
    projections = [k for k in attention if re.search(r"\.attn[12]\.(to_[qkv]|to_out\.0)\.weight$", k)]
    assert len(projections) == 16 * 2 * 4


@pytest.mark.parametrize(("config", "proj_type"), [(SD15_UNET_CONFIG, nn.Conv2d), (SD21_UNET_CONFIG, nn.Linear)])
def test_mapped_names_are_exactly_the_diffusers_attention_parameters(config, proj_type):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    shapes = read_sd15_unet_shapes()
    # SD2.x uses the same LDM module names as SD1.5 (only proj_in/proj_out shapes differ).
    mapped = set()
    for key in shapes:
        if LDM_ATTENTION_KEY.match(key):
            module, _, parameter = key.rpartition(".")
            mapped.add(f"{ldm_unet_to_diffusers_path(module)}.{parameter}")
    block_attention = re.compile(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.")
    expected = {k for k in unet.state_dict() if block_attention.match(k)}
    assert mapped == expected
    assert isinstance(unet.get_submodule("down_blocks.0.attentions.0.proj_in"), proj_type)


def test_sd15_kohya_names_are_what_diffusers_and_a1111_expect():
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
    )
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    shapes = read_sd15_unet_shapes()
    conversion = diffusers_conversion_of(shapes)
    modules = [k[: -len(".weight")] for k in shapes if re.search(r"\.attn[12]\.(to_[qkv]|to_out\.0)\.weight$", k)]
    state = {}
    for module in modules:
        out_features, in_features = shapes[module + ".weight"]
        state[f"{module}.lora_A.weight"] = torch.zeros(1, in_features)
        state[f"{module}.lora_B.weight"] = torch.zeros(out_features, 1)
    kohya = peft_to_kohya(state, "lora_unet", 1.0, naming="ldm")
    names = {key.split(".")[0]: None for key in kohya}
    expected = {"lora_unet_" + conversion[m + ".weight"][: -len(".weight")].replace(".", "_") for m in modules}
    assert set(names) == expected

    converted, _alphas = _convert_non_diffusers_lora_to_diffusers(dict(kohya))
    peft_keys = convert_unet_state_dict_to_peft({k[len("unet."):]: v for k, v in converted.items()})
    diffusers_modules = [conversion[m + ".weight"][: -len(".weight")] for m in modules]
    assert set(peft_keys) == {f"{m}.{half}.weight" for m in diffusers_modules for half in ("lora_A", "lora_B")}


@pytest.mark.parametrize("is_sd2", [False, True])
def test_a1111_maps_kohya_names_back_to_the_ldm_modules(is_sd2):
    convert = upstream_function(
        A1111_REPO, A1111_REV, "extensions-builtin/Lora/networks.py", "convert_diffusers_name_to_compvis"
    )
    shapes = read_sd15_unet_shapes()
    modules = sorted({k.rpartition(".")[0] for k in shapes if LDM_ATTENTION_KEY.match(k)})
    for module in modules:
        kohya_name = "lora_unet_" + ldm_unet_to_diffusers_path(module).replace(".", "_")
        assert convert(kohya_name, is_sd2) == "diffusion_model_" + module.replace(".", "_")
    te_name = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    sd1_te = "transformer_text_model_encoder_layers_0_self_attn_q_proj"
    assert convert(te_name, is_sd2) == ("model_transformer_resblocks_0_attn_q_proj" if is_sd2 else sd1_te)


def test_export_has_down_up_and_the_trained_alpha_for_every_layer(trained_unet):
    unet, injected = trained_unet
    tensors = peft_to_kohya(lora_state_dict(unet), "lora_unet", ALPHA)
    assert len(tensors) == 3 * TINY_UNET_LAYERS
    for path in injected.layer_names:
        name = "lora_unet_" + path.replace(".", "_")
        layer = unet.get_submodule(path).get_base_layer()
        down, up, alpha = (tensors[f"{name}.{w}"] for w in ("lora_down.weight", "lora_up.weight", "alpha"))
        assert down.shape == (RANK, layer.in_features)
        assert up.shape == (layer.out_features, RANK)
        assert alpha.shape == () and alpha.dtype == torch.float32 and alpha.item() == ALPHA
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_down.weight" in tensors
    assert check_kohya_state_dict(tensors) == {k.split(".")[0]: RANK for k in tensors}


def test_text_encoder_keys_use_the_lora_te_prefix(trained_text_encoder):
    encoder, injected = trained_text_encoder
    tensors = peft_to_kohya(lora_state_dict(encoder), "lora_te", ALPHA)
    names = sorted({key.split(".")[0] for key in tensors})
    assert len(names) == injected.num_layers == 8
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert "lora_te_text_model_encoder_layers_1_self_attn_out_proj" in names
    nested = {"text_model." + k if k.startswith("encoder.") else k: v for k, v in lora_state_dict(encoder).items()}
    assert peft_to_kohya(nested, "lora_te_", ALPHA).keys() == tensors.keys()


def test_ldm_named_unet_exports_the_diffusers_keys():
    unet = build_tiny_unet()
    view = ldm_view(unet)
    injected = inject_lora(view, LoraSpec(rank=RANK, alpha=ALPHA))
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_q" in injected.layer_names
    perturb_adapter(view)
    from_ldm = peft_to_kohya(lora_state_dict(view), "lora_unet", ALPHA, naming="ldm")
    from_diffusers = peft_to_kohya(lora_state_dict(unet), "lora_unet", ALPHA)
    assert from_ldm.keys() == from_diffusers.keys()
    assert all(torch.equal(from_ldm[k], from_diffusers[k]) for k in from_ldm)
    injected.remove()


def test_round_trip_through_diffusers_reproduces_the_trained_outputs(tmp_path, trained_unet, trained_text_encoder):
    from diffusers import StableDiffusionPipeline

    unet, _ = trained_unet
    encoder, _ = trained_text_encoder
    tensors = peft_to_kohya(lora_state_dict(unet), "lora_unet", ALPHA)
    tensors.update(peft_to_kohya(lora_state_dict(encoder), "lora_te", ALPHA))
    path = save_fp32(tmp_path, tensors)

    state, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
    fresh_unet, fresh_encoder = build_tiny_unet(), build_tiny_text_encoder()
    StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet=fresh_unet)
    StableDiffusionPipeline.load_lora_into_text_encoder(state, alphas, text_encoder=fresh_encoder)
    reference = run_unet(unet, unet_inputs())
    assert not torch.allclose(run_unet(build_tiny_unet(), unet_inputs()), reference, atol=1e-4)
    assert torch.allclose(run_unet(fresh_unet, unet_inputs()), reference, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(
            fresh_encoder(text_ids()).last_hidden_state, encoder(text_ids()).last_hidden_state, atol=1e-5
        )


def test_round_trip_through_peft_is_exact(tmp_path, trained_unet, trained_text_encoder):
    unet, _ = trained_unet
    encoder, _ = trained_text_encoder
    tensors = peft_to_kohya(lora_state_dict(unet), "lora_unet", ALPHA)
    tensors.update(peft_to_kohya(lora_state_dict(encoder), "lora_te", ALPHA))
    loaded, _metadata = read_lora_file(save_fp32(tmp_path, tensors))

    fresh_unet = build_tiny_unet()
    resumed = inject_lora(fresh_unet, LoraSpec(rank=RANK, alpha=ALPHA))
    state, alphas = kohya_to_peft(loaded, "lora_unet", resumed.layer_names)
    assert set(alphas.values()) == {ALPHA} and len(alphas) == TINY_UNET_LAYERS
    resumed.load_state_dict(state)
    assert torch.equal(run_unet(fresh_unet, unet_inputs()), run_unet(unet, unet_inputs()))

    fresh_encoder = build_tiny_text_encoder()
    inject_lora(fresh_encoder, LoraSpec(rank=RANK, alpha=ALPHA, target_modules=TEXT_ENCODER_TARGET_MODULES))
    names = [name for name, _ in fresh_encoder.named_modules()]
    te_state, _ = kohya_to_peft(loaded, "lora_te", names)
    load_lora_state_dict(fresh_encoder, te_state)
    with torch.no_grad():
        assert torch.equal(fresh_encoder(text_ids()).last_hidden_state, encoder(text_ids()).last_hidden_state)


def test_kohya_to_peft_with_ldm_module_names_and_missing_alpha():
    unet = build_tiny_unet()
    view = ldm_view(unet)
    injected = inject_lora(view, LoraSpec(rank=RANK, alpha=ALPHA))
    state = perturb_adapter(view)
    tensors = peft_to_kohya(state, "lora_unet", ALPHA, naming="ldm")
    without_alpha = {k: v for k, v in tensors.items() if not k.endswith(".alpha")}
    back, alphas = kohya_to_peft(without_alpha, "lora_unet", injected.layer_names, naming="ldm")
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert set(alphas.values()) == {float(RANK)}
    injected.remove()


A = torch.zeros(RANK, 8)
B = torch.zeros(8, RANK)
UNET_PATH = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


@pytest.mark.parametrize(
    ("state", "kwargs", "match"),
    [
        ({f"{UNET_PATH}.weight": A}, {}, "is not a PEFT-form LoRA key"),
        ({f"{UNET_PATH}.lora_A.default.weight": A}, {}, "remove the adapter name"),
        ({f"{UNET_PATH}.lora_A.weight": A}, {}, "has no lora_B.weight"),
        ({f"{UNET_PATH}.lora_A.weight": A, f"{UNET_PATH}.lora_B.weight": torch.zeros(8, 3)}, {}, "not rank-consistent"),
        ({f"{UNET_PATH}.lora_A.weight": A, f"{UNET_PATH}.lora_B.weight": B}, {"alpha": 0}, "alpha must be"),
        ({f"{UNET_PATH}.lora_A.weight": A, f"{UNET_PATH}.lora_B.weight": B}, {"prefix": "lora_foo"}, "prefix must be"),
        ({f"{UNET_PATH}.lora_A.weight": A, f"{UNET_PATH}.lora_B.weight": B}, {"naming": "compvis"}, "naming must be"),
        (
            {f"{UNET_PATH}.lora_A.weight": A, f"{UNET_PATH}.lora_B.weight": B},
            {"prefix": "lora_te", "naming": "ldm"},
            "applies to the UNet only",
        ),
        ({"conv_in.lora_A.weight": A, "conv_in.lora_B.weight": B}, {}, "cannot be exported under 'lora_unet'"),
        (
            {"input_blocks.1.1.proj_in.lora_A.weight": A, "input_blocks.1.1.proj_in.lora_B.weight": B},
            {},
            "need naming='ldm'",
        ),
        (
            {
                "mid_block.attentions.0.a_b.c.lora_A.weight": A,
                "mid_block.attentions.0.a_b.c.lora_B.weight": B,
                "mid_block.attentions.0.a.b_c.lora_A.weight": A,
                "mid_block.attentions.0.a.b_c.lora_B.weight": B,
            },
            {},
            "both become kohya name",
        ),
        ({}, {}, "state is empty"),
    ],
)
def test_peft_to_kohya_checks_before_renaming(state, kwargs, match):
    arguments = {"prefix": "lora_unet", "alpha": ALPHA, **kwargs}
    with pytest.raises(ExportError, match=match):
        peft_to_kohya(state, arguments.pop("prefix"), arguments.pop("alpha"), **arguments)


def test_kohya_checks_reject_incomplete_or_stray_keys():
    name = "lora_unet_" + UNET_PATH.replace(".", "_")
    good = {f"{name}.lora_down.weight": A, f"{name}.lora_up.weight": B, f"{name}.alpha": torch.tensor(ALPHA)}
    assert check_kohya_state_dict(good) == {name: RANK}
    with pytest.raises(ExportError, match="has no alpha"):
        check_kohya_state_dict({k: v for k, v in good.items() if not k.endswith("alpha")})
    with pytest.raises(ExportError, match="has no lora_up.weight"):
        check_kohya_state_dict({k: v for k, v in good.items() if "lora_up" not in k})
    with pytest.raises(ExportError, match="one-element float tensor"):
        check_kohya_state_dict(dict(good, **{f"{name}.alpha": torch.ones(2)}))
    with pytest.raises(ExportError, match="no kohya prefix"):
        check_kohya_state_dict(dict(good, **{"unet.x.lora_A.weight": A}))
    with pytest.raises(ExportError, match="is not a kohya LoRA key"):
        check_kohya_state_dict(dict(good, **{f"{name}.dora_scale": A}))
    with pytest.raises(ExportError, match="match no module of the model"):
        kohya_to_peft(good, "lora_unet", ["up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"])
    assert kohya_to_peft(good, "lora_te", [UNET_PATH]) == ({}, {})
