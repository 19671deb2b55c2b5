"""Stand-in for WebUI 1.10.1 ``modules/sd_unet.py``: ``current_unet`` is the active replacement UNet
(e.g. TensorRT's ``SdUnet``, with ``.option.label``), ``None`` when the checkpoint's own UNet runs."""

import torch

current_unet_option = None
current_unet = None


class SdUnet(torch.nn.Module):
    def forward(self, x, timesteps, context, *args, **kwargs):
        raise NotImplementedError()

    def activate(self):
        pass

    def deactivate(self):
        pass
