"""Tests for lib_lora_train/export/writer.py: checked, atomic writes; header and hash read back."""

import hashlib
import json
import re

import pytest
import torch

from lib_lora_train.export import writer
from lib_lora_train.export.kohya import ExportError, peft_to_kohya
from lib_lora_train.export.metadata import build_metadata
from lib_lora_train.export.writer import (
    compute_model_hash,
    hash_file_data,
    read_lora_file,
    read_lora_metadata,
    save_lora_file,
)
from tests.export.test_kohya import (
    A1111_REPO,
    A1111_REV,
    read_sd15_unet_shapes,
    upstream_function,
)

ALPHA = 0.1
RANK = 4
PATHS = (
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k",
)
SIZE_LIMIT_BYTES = 10 * 1024 * 1024


def kohya_tensors(seed=0):
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for path in PATHS:
        state[f"{path}.lora_A.weight"] = torch.randn(RANK, 16, generator=generator)
        state[f"{path}.lora_B.weight"] = torch.randn(24, RANK, generator=generator)
    return peft_to_kohya(state, "lora_unet", ALPHA)


def metadata(name="chest_ct_v1"):
    return build_metadata(
        name=name, purpose="teaching", registry_id="lora-1", base_model_version="sd_v1", network_dim=RANK,
        network_alpha=ALPHA,
    )


def header_length(path):
    with open(path, "rb") as handle:
        return int.from_bytes(handle.read(8), "little")


def test_save_and_read_back(tmp_path):
    tensors, header = kohya_tensors(), metadata()
    path = tmp_path / "chest_ct_v1.safetensors"
    digest, size = save_lora_file(path, tensors, header)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert size == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == [path.name]

    loaded, read_back = read_lora_file(path)
    assert loaded.keys() == tensors.keys()
    for key, value in tensors.items():
        if key.endswith(".alpha"):
            assert loaded[key].dtype == torch.float32 and loaded[key].shape == () and loaded[key].item() == value.item()
        else:
            assert loaded[key].dtype == torch.float16
            assert torch.equal(loaded[key], value.half())
    assert read_back == dict(header, sshs_model_hash=read_back["sshs_model_hash"])
    assert read_lora_metadata(path) == read_back
    assert all(isinstance(v, str) for v in read_back.values())


def test_header_json_holds_only_the_allow_listed_metadata(tmp_path):
    path = tmp_path / "a.safetensors"
    save_lora_file(path, kohya_tensors(), metadata("a"))
    with open(path, "rb") as handle:
        handle.seek(8)
        header = json.loads(handle.read(header_length(path)))
    assert set(header["__metadata__"]) == set(metadata("a")) | {"sshs_model_hash"}
    assert "ss_tag_frequency" not in header["__metadata__"]


@pytest.mark.parametrize(("dtype", "torch_dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_other_save_dtypes(tmp_path, dtype, torch_dtype):
    path = tmp_path / "a.safetensors"
    save_lora_file(path, kohya_tensors(), metadata("a"), dtype=dtype)
    loaded, _ = read_lora_file(path)
    assert {v.dtype for k, v in loaded.items() if not k.endswith(".alpha")} == {torch_dtype}
    with pytest.raises(ExportError, match="dtype must be one of"):
        save_lora_file(path, kohya_tensors(), metadata("a"), dtype="fp8")


def test_model_hash_is_the_addnet_hash_and_ignores_metadata(tmp_path):
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_lora_file(first, kohya_tensors(), metadata("a"))
    save_lora_file(second, kohya_tensors(), dict(metadata("b"), sshs_model_hash="0" * 64))
    hash_a = read_lora_metadata(first)["sshs_model_hash"]
    assert re.fullmatch(r"[0-9a-f]{64}", hash_a)
    assert hash_a == hash_file_data(first) == read_lora_metadata(second)["sshs_model_hash"]
    assert first.read_bytes() != second.read_bytes()
    loaded, _ = read_lora_file(first)
    assert compute_model_hash(loaded) == hash_a


def test_model_hash_matches_a1111s_own_computation(tmp_path):
    addnet_hash_safetensors = upstream_function(A1111_REPO, A1111_REV, "modules/hashes.py", "addnet_hash_safetensors")
    path = tmp_path / "a.safetensors"
    save_lora_file(path, kohya_tensors(), metadata("a"))
    with open(path, "rb") as handle:
        assert addnet_hash_safetensors(handle) == read_lora_metadata(path)["sshs_model_hash"]


def test_crash_mid_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    save_lora_file(path, kohya_tensors(), metadata("a"))
    old = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(writer, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_lora_file(path, kohya_tensors(seed=1), metadata("a"))
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda t, m: t.update({next(iter(t)): torch.full((RANK, 16), float("nan"))}), "NaN or infinite"),
        (lambda t, m: t.update({next(iter(t)): torch.full((RANK, 16), 1e6)}), "overflow the save dtype"),
        (lambda t, m: t.pop(next(k for k in t if k.endswith(".alpha"))), "has no alpha"),
        (lambda t, m: t.update({"unet.x.lora_A.weight": torch.zeros(1)}), "no kohya prefix"),
        (lambda t, m: m.update({"ss_tag_frequency": "{}"}), "'ss_tag_frequency' is not allowed"),
        (lambda t, m: m.update({"ss_seed": 1}), "must be a str"),
    ],
)
def test_invalid_input_writes_nothing(tmp_path, mutate, match):
    tensors, header = kohya_tensors(), metadata("a")
    mutate(tensors, header)
    with pytest.raises(ExportError, match=match):
        save_lora_file(tmp_path / "a.safetensors", tensors, header)
    assert list(tmp_path.iterdir()) == []


def test_rank8_sd15_attention_adapter_is_small(tmp_path):
    shapes = read_sd15_unet_shapes()
    rank = 8
    state, expected_data_bytes = {}, 0
    for key, (out_features, in_features) in (
        (k, s) for k, s in shapes.items() if re.search(r"\.attn[12]\.(to_[qkv]|to_out\.0)\.weight$", k)
    ):
        module = key[: -len(".weight")]
        state[f"{module}.lora_A.weight"] = torch.zeros(rank, in_features)
        state[f"{module}.lora_B.weight"] = torch.zeros(out_features, rank)
        expected_data_bytes += 2 * rank * (in_features + out_features) + 4  # fp16 weights, fp32 alpha
    assert len(state) == 2 * 128
    tensors = peft_to_kohya(state, "lora_unet", 8.0, naming="ldm")
    path = tmp_path / "sd15_rank8.safetensors"
    _, size = save_lora_file(path, tensors, metadata("sd15_rank8"))
    assert expected_data_bytes == 3_189_248
    assert size == 8 + header_length(path) + expected_data_bytes
    assert size < SIZE_LIMIT_BYTES
