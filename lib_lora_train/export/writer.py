"""Write and read the adapter file: one safetensors file, checked first, replaced atomically.

The file goes to a temporary name in the destination folder, is fsynced, then renamed over the
target (``fileio.atomic_path``): A1111 reloads a LoRA when its mtime grows and hashes it by
mtime (A1111_CONTRACT.md 3.3, 3.9), and its directory walk must never see half a file.

``sshs_model_hash`` is the hash A1111 and Additional Networks would compute themselves:
SHA-256 of the file bytes after the 8-byte length and the JSON header (A1111 v1.10.1
``modules/hashes.py::addnet_hash_safetensors``, the same as kohya sd-scripts'
``train_util.addnet_hash_safetensors``). A1111 trusts the header value without checking it, so it
is computed here from the exact tensor bytes written, and verified on the written file.
"""

import hashlib
import os

import torch
from safetensors import safe_open
from safetensors.torch import save, save_file

from ..fileio import atomic_path, sha256_file
from ..errors import ExportError
from .kohya import KOHYA_ALPHA, check_kohya_state_dict
from .metadata import validate_metadata

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# A 0-d fp32 alpha keeps values like 0.1 exact; A1111 (.item()), Additional Networks, ComfyUI
# and diffusers (.item()) all read any one-element float tensor (A1111_CONTRACT.md 3.7).
ALPHA_DTYPE = torch.float32
MODEL_HASH_KEY = "sshs_model_hash"
_LENGTH_BYTES = 8
_CHUNK_BYTES = 1 << 20


def save_lora_file(path, tensors, metadata, dtype="fp16"):
    """Convert, check and atomically write a kohya adapter with its header metadata.

    Args:
        path (`str | os.PathLike`): destination ``<lora dir>/<name>.safetensors``; its folder must exist.
        tensors (`dict[str, torch.Tensor]`): kohya keys from ``export.kohya.peft_to_kohya``.
        metadata (`dict[str, str]`): from ``export.metadata.build_metadata``; ``sshs_model_hash``
            is (re)computed here.
        dtype (`str`, *optional*): ``"fp16"`` (default, what A1111 users expect), ``"bf16"`` or
            ``"fp32"`` for the LoRA weights; alphas are always 0-d fp32.

    Returns:
        `tuple[str, int]`: SHA-256 hex digest of the whole file, and its size in bytes.

    Raises:
        `ExportError`: bad dtype, keys, shapes, alphas, non-finite values or metadata; nothing
            is written then, and an existing file at ``path`` stays as it was.
    """
    prepared = _prepare_tensors(tensors, dtype)
    check_kohya_state_dict(prepared)
    header = dict(metadata) if isinstance(metadata, dict) else metadata
    validate_metadata(header)
    header[MODEL_HASH_KEY] = compute_model_hash(prepared)
    with atomic_path(path) as tmp:
        save_file(prepared, str(tmp), metadata=header)
        if hash_file_data(tmp) != header[MODEL_HASH_KEY]:
            raise ExportError("the written tensor bytes differ from the hashed ones; the file was not saved")
        digest, size = sha256_file(tmp), os.path.getsize(tmp)
    return digest, size


def _prepare_tensors(tensors, dtype):
    if dtype not in SAVE_DTYPES:
        raise ExportError(f"dtype must be one of {tuple(SAVE_DTYPES)}, got {dtype!r}")
    prepared = {}
    for key, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ExportError(f"{key!r} is a {type(tensor).__name__}, not a tensor")
        is_alpha = key.endswith("." + KOHYA_ALPHA)
        target = ALPHA_DTYPE if is_alpha else SAVE_DTYPES[dtype]
        converted = tensor.detach().to("cpu", dtype=target, copy=True).contiguous()
        if is_alpha and converted.numel() == 1:
            converted = converted.reshape(())
        if not bool(torch.isfinite(converted).all()):
            raise ExportError(
                f"{key!r} holds NaN or infinite values in {dtype}; the training diverged or the "
                "values overflow the save dtype (try dtype='fp32' or a lower learning rate)"
            )
        prepared[key] = converted
    return prepared


def compute_model_hash(tensors):
    """``sshs_model_hash`` of tensors: SHA-256 of their safetensors data section.

    The data section does not depend on the header, so this equals the hash of any file that
    holds exactly these tensors, whatever its metadata.

    Args:
        tensors (`dict[str, torch.Tensor]`): CPU, contiguous, already in the save dtype.

    Returns:
        `str`: 64 hex characters.
    """
    blob = save(tensors)
    header_length = int.from_bytes(blob[:_LENGTH_BYTES], "little")
    return hashlib.sha256(memoryview(blob)[_LENGTH_BYTES + header_length:]).hexdigest()


def hash_file_data(path):
    """SHA-256 of a safetensors file after its header, as A1111's ``addnet_hash_safetensors``.

    Args:
        path (`str | os.PathLike`)

    Returns:
        `str`: 64 hex characters.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        header_length = int.from_bytes(handle.read(_LENGTH_BYTES), "little")
        handle.seek(_LENGTH_BYTES + header_length)
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_lora_file(path):
    """Read an adapter file back: its tensors (on CPU) and its header metadata.

    Args:
        path (`str | os.PathLike`)

    Returns:
        `tuple[dict[str, torch.Tensor], dict[str, str]]`
    """
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = dict(handle.metadata() or {})
        names = handle.keys()
        tensors = {key: handle.get_tensor(key) for key in names}
    return tensors, metadata


def read_lora_metadata(path):
    """Read only the header metadata of an adapter file (no tensor data is loaded).

    Args:
        path (`str | os.PathLike`)

    Returns:
        `dict[str, str]`
    """
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return dict(handle.metadata() or {})
