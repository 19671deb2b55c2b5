"""Export a finished training run as the adapter files every WebUI loads.

``NAME.safetensors`` is the file the WebUI's Lora folder, Additional Networks, ComfyUI and
diffusers load; ``pytorch_lora_weights.safetensors`` (the seed project's name) is a copy with
the same bytes. Both are written atomically.
"""

import pathlib
import shutil

from ..dataset.phi_check import check_caption
from ..fileio import atomic_path
from .kohya import peft_to_kohya
from .metadata import build_metadata
from .result import ExportResult
from .writer import save_lora_file

NOT_STATED = "not stated"


def kohya_tensors(result, facts, alpha):
    """The run's UNet (and text encoder) LoRA weights under kohya keys."""
    tensors = peft_to_kohya(result.unet_lora, "lora_unet", alpha, naming=facts.unet_naming)
    if result.text_encoder_lora:
        tensors.update(peft_to_kohya(result.text_encoder_lora, "lora_te", alpha))
    return tensors


def adapter_metadata(config, facts, result, session_id, registry_id):
    """Header metadata from an allow-list; the purpose (free text) is screened for personal data.

    The name needs no screen of its own: it is restricted to ``[A-Za-z0-9_.-]`` and chosen by
    staff; the generic ID pattern would refuse ordinary names such as ``chest_ct_v1``.
    """
    purpose = config.purpose or NOT_STATED
    check_caption(purpose)
    return build_metadata(
        name=config.adapter_name(), purpose=purpose,
        registry_id=registry_id or f"unregistered-{session_id}",
        base_model_version=facts.base_model_version, network_dim=config.lora_rank,
        network_alpha=config.lora_alpha, v_prediction=result.prediction_type == "v_prediction",
        num_train_images=result.num_images, max_train_steps=result.steps, num_epochs=result.epochs,
        resolution=config.resolution or facts.native_resolution, training_started_at=result.started_at,
        training_finished_at=result.finished_at, learning_rate=config.learning_rate,
        lr_scheduler=config.lr_scheduler, seed=config.seed, session_id=session_id, expires=config.expires,
    )


def export_adapter(folder, config, facts, result, *, session_id, registry_id=None, file_names=()):
    """Write ``folder/NAME.safetensors`` and byte-identical copies named ``file_names``.

    Returns:
        `ExportResult`
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = config.adapter_name()
    metadata = adapter_metadata(config, facts, result, session_id, registry_id)
    path = folder / f"{name}.safetensors"
    digest, size = save_lora_file(path, kohya_tensors(result, facts, config.lora_alpha), metadata,
                                  dtype=config.save_dtype)
    copies = []
    for file_name in file_names:
        with atomic_path(folder / file_name) as tmp:
            shutil.copyfile(path, tmp)
        copies.append(folder / file_name)
    return ExportResult(name, path, tuple(copies), digest, size, metadata)
