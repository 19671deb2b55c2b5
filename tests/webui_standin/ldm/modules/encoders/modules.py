"""Stand-in for ``ldm/modules/encoders/modules.py::FrozenCLIPEmbedder``: a tokenizer and a transformers
``CLIPTextModel`` named ``transformer``, which A1111's ``sd_hijack_clip`` wraps and calls directly."""

from torch import nn


class FrozenCLIPEmbedder(nn.Module):
    def __init__(self, tokenizer, transformer):
        super().__init__()
        self.tokenizer = tokenizer
        self.transformer = transformer
