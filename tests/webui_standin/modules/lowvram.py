"""Stand-in for WebUI 1.10.1 ``modules/lowvram.py`` (the ``--medvram`` path).

``setup_for_low_vram`` registers ``send_me_to_gpu`` as a forward pre-hook on ``sd_model.model`` and on
the SD 1.x text transformer (its parent, the embedder, is what moves), and wraps
``first_stage_model.encode``/``decode`` (the VAE is not called through ``forward``). The hook moves the
previous ``module_in_gpu`` to the CPU and the called module to ``devices.device``. The real setup runs
before the hijack wraps ``cond_stage_model`` (``sd_models.py::load_model``), so the stand-in reaches
the embedder through ``.wrapped``. The per-block ``--lowvram`` hooks are not modeled.
"""

import torch

from modules import devices, shared

module_in_gpu = None
cpu = torch.device("cpu")


def send_everything_to_cpu():
    global module_in_gpu

    if module_in_gpu is not None:
        module_in_gpu.to(cpu)
    module_in_gpu = None


def is_needed(sd_model):
    opts = shared.cmd_opts
    return opts.lowvram or opts.medvram or opts.medvram_sdxl and hasattr(sd_model, "conditioner")


def setup_for_low_vram(sd_model, use_medvram):
    if getattr(sd_model, "lowvram", False):
        return
    if not use_medvram:
        raise NotImplementedError("the stand-in models --medvram only")
    sd_model.lowvram = True
    parents = {}

    def send_me_to_gpu(module, _):
        global module_in_gpu

        module = parents.get(module, module)
        if module_in_gpu == module:
            return
        if module_in_gpu is not None:
            module_in_gpu.to(cpu)
        module.to(devices.device)
        module_in_gpu = module

    first_stage_model = sd_model.first_stage_model
    encode, decode = first_stage_model.encode, first_stage_model.decode

    def first_stage_model_encode_wrap(x):
        send_me_to_gpu(first_stage_model, None)
        return encode(x)

    def first_stage_model_decode_wrap(z):
        send_me_to_gpu(first_stage_model, None)
        return decode(z)

    embedder = getattr(sd_model.cond_stage_model, "wrapped", sd_model.cond_stage_model)
    embedder.transformer.register_forward_pre_hook(send_me_to_gpu)
    parents[embedder.transformer] = embedder
    first_stage_model.register_forward_pre_hook(send_me_to_gpu)
    first_stage_model.encode = first_stage_model_encode_wrap
    first_stage_model.decode = first_stage_model_decode_wrap
    sd_model.model.register_forward_pre_hook(send_me_to_gpu)


def is_enabled(sd_model):
    return sd_model.lowvram
