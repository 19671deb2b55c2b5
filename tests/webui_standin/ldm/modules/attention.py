"""Stand-in for ``ldm/modules/attention.py``: the SD 1.x/2.x transformer classes, same module names.

Written from the classes' documented behaviour, not copied: ``CrossAttention`` (``to_q``/``to_k``/
``to_v`` without bias, ``to_out`` = Linear + Dropout, vanilla softmax attention),
``BasicTransformerBlock`` (``attn1`` self, ``attn2`` cross, GEGLU ``ff``, pre-LayerNorms; ``forward``
calls ``_forward`` through ``util.checkpoint`` with the block's ``checkpoint`` flag, which A1111's
``repair_config`` sets False) and ``SpatialTransformer`` (GroupNorm eps 1e-6, 1x1-conv or linear
``proj_in``/``proj_out``). A1111's cross-attention optimizations replace ``CrossAttention.forward``.
"""

import torch
from torch import nn


def _ldm_checkpoint(function, inputs, flag):
    # ldm/modules/diffusionmodules/util.py::checkpoint with flag False: a plain call.
    if flag:
        raise NotImplementedError("the stand-in models A1111's use_checkpoint=False only")
    return function(*inputs)


def split_heads(tensor, heads):
    batch, tokens, width = tensor.shape
    return tensor.reshape(batch, tokens, heads, width // heads).permute(0, 2, 1, 3).reshape(batch * heads, tokens, -1)


def merge_heads(tensor, heads):
    batch_heads, tokens, head_width = tensor.shape
    batch = batch_heads // heads
    return tensor.reshape(batch, heads, tokens, head_width).permute(0, 2, 1, 3).reshape(batch, tokens, -1)


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * nn.functional.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4, dropout=0.0):
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x):
        return self.net(x)


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x, context=None, mask=None):
        context = x if context is None else context
        q, k, v = (split_heads(t, self.heads) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        weights = (torch.bmm(q, k.transpose(1, 2)) * self.scale).softmax(dim=-1)
        return self.to_out(merge_heads(torch.bmm(weights, v), self.heads))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, n_heads, d_head, dropout=0.0, context_dim=None, checkpoint=True):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.checkpoint = checkpoint

    def forward(self, x, context=None):
        return _ldm_checkpoint(self._forward, (x, context), self.checkpoint)

    def _forward(self, x, context=None):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, in_channels, n_heads, d_head, depth=1, dropout=0.0, context_dim=None, use_linear=False,
                 use_checkpoint=True):
        super().__init__()
        inner = n_heads * d_head
        self.in_channels, self.use_linear = in_channels, use_linear
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(in_channels, inner) if use_linear else nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, n_heads, d_head, dropout, context_dim, use_checkpoint) for _ in range(depth)])
        self.proj_out = nn.Linear(inner, in_channels) if use_linear else nn.Conv2d(inner, in_channels, 1)

    def forward(self, x, context=None):
        batch, _, height, width = x.shape
        residual = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(batch, height * width, -1)
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context=context)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + residual
