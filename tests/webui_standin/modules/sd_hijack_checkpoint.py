"""Stand-in for WebUI 1.10.1 ``modules/sd_hijack_checkpoint.py``: ``add()`` replaces the LDM blocks'
``forward`` at class level with reentrant ``torch.utils.checkpoint.checkpoint(self._forward, ...)``
(torch 2.1's default, passed explicitly here because newer torch requires it); ``stored`` holds the
originals while the patch is in place; ``remove()`` puts them back. ``AttentionBlock`` is patched too
in the real module; the stand-in UNet has none.
"""

import ldm.modules.attention
import ldm.modules.diffusionmodules.openaimodel
from torch.utils.checkpoint import checkpoint


def BasicTransformerBlock_forward(self, x, context=None):
    return checkpoint(self._forward, x, context, use_reentrant=True)


def ResBlock_forward(self, x, emb):
    return checkpoint(self._forward, x, emb, use_reentrant=True)


stored = []


def add():
    if stored:
        return
    stored.extend([ldm.modules.attention.BasicTransformerBlock.forward,
                   ldm.modules.diffusionmodules.openaimodel.ResBlock.forward])
    ldm.modules.attention.BasicTransformerBlock.forward = BasicTransformerBlock_forward
    ldm.modules.diffusionmodules.openaimodel.ResBlock.forward = ResBlock_forward


def remove():
    if not stored:
        return
    ldm.modules.attention.BasicTransformerBlock.forward = stored[0]
    ldm.modules.diffusionmodules.openaimodel.ResBlock.forward = stored[1]
    stored.clear()
