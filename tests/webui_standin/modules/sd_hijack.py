"""Stand-in for WebUI 1.10.1 ``modules/sd_hijack.py``: ``apply_optimizations`` / ``undo_optimizations``
swap ``ldm.modules.attention.CrossAttention.forward`` at class level.

``attention_CrossAttention_forward`` plays ``hypernetworks/hypernetwork.py::attention_CrossAttention_forward``
(vanilla attention that applies ``shared.loaded_hypernetworks`` to the context), which
``undo_optimizations`` installs; ``scaled_dot_product_attention_forward`` plays
``sd_hijack_optimizations.py``'s "sdp", which applies hypernetworks too. Each stand-in hypernetwork is a
callable ``context -> context``. The ``AttnBlock``/``nonlinearity``/``sgm`` swaps are not modeled.
"""

import ldm.modules.attention
import torch
from ldm.modules.attention import merge_heads, split_heads

from modules import shared


def _hypernetwork_context(context):
    for hypernetwork in shared.loaded_hypernetworks:
        context = hypernetwork(context)
    return context


def attention_CrossAttention_forward(self, x, context=None, mask=None):
    context = _hypernetwork_context(x if context is None else context)
    q, k, v = (split_heads(t, self.heads) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
    weights = (torch.bmm(q, k.transpose(1, 2)) * self.scale).softmax(dim=-1)
    return self.to_out(merge_heads(torch.bmm(weights, v), self.heads))


def scaled_dot_product_attention_forward(self, x, context=None, mask=None):
    context = _hypernetwork_context(x if context is None else context)
    q, k, v = (split_heads(t, self.heads) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return self.to_out(merge_heads(out, self.heads))


def undo_optimizations():
    ldm.modules.attention.CrossAttention.forward = attention_CrossAttention_forward


def apply_optimizations(option=None):
    undo_optimizations()
    if (option or shared.opts.cross_attention_optimization) == "None":
        return ""
    ldm.modules.attention.CrossAttention.forward = scaled_dot_product_attention_forward
    return "sdp"
