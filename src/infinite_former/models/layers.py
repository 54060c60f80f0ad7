"""The layers of the LM: Transformer-XL relative attention and the pre-LN block (with its memory
type's module, e.g. the LTM or the compressor)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .memory_type import MemoryType


def sinusoid(length: int, dim: int, device=None, dtype=torch.float32) -> Tensor:
    """R for distances length-1, ..., 1, 0 (descending, as the rel-shift expects): (length, dim)."""
    pos = torch.arange(length - 1, -1, -1, device=device, dtype=torch.float32)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    angles = pos[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)


def rel_shift(x: Tensor) -> Tensor:
    """Transformer-XL rel-shift: x[..., i, k] scored against R for distance S-1-k, with the T
    queries the last T of S positions -> out[..., i, j] for distance (S - T + i) - j.
    (Entries with j > S - T + i are garbage and must be masked.)"""
    *lead, t, s = x.shape
    padded = F.pad(x, (1, 0))  # (..., T, S + 1)
    padded = padded.reshape(*lead, s + 1, t)
    return padded[..., 1:, :].reshape(*lead, t, s)


class RelativeAttention(nn.Module):
    """Multi-head attention with Transformer-XL relative positions (u, v, W_R per layer)."""

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = c.n_heads, c.d_model // c.n_heads
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model, bias=False)
        self.r_net = nn.Linear(c.d_model, c.d_model, bias=False)  # W_R
        self.u = nn.Parameter(torch.zeros(c.n_heads, self.head_dim))
        self.v = nn.Parameter(torch.zeros(c.n_heads, self.head_dim))
        self.out = nn.Linear(c.d_model, c.d_model, bias=False)
        self.drop = nn.Dropout(c.dropout)

    def key_value(self, x: Tensor, detach: bool = False) -> tuple[Tensor, Tensor]:
        e = x.shape[-1]
        w = self.qkv.weight.detach() if detach else self.qkv.weight
        return F.linear(x, w[e : 2 * e]), F.linear(x, w[2 * e :])

    def query(self, x: Tensor, detach: bool = False) -> Tensor:
        w = self.qkv.weight.detach() if detach else self.qkv.weight
        return F.linear(x, w[: x.shape[-1]])

    def forward(self, x: Tensor, n_query: int, pos: Tensor, mask: Tensor) -> Tensor:
        """x: (batch, S, e) normalised [memory; segment]; the last n_query are queries.
        pos: (S, e) sinusoids; mask: (batch, 1, T, S) True where attention is allowed."""
        b, S, e = x.shape
        H, d, T = self.n_heads, self.head_dim, n_query
        q = self.query(x[:, S - T :]).view(b, T, H, d).transpose(1, 2)  # (b, H, T, d)
        k, v = self.key_value(x)
        k = k.view(b, S, H, d).transpose(1, 2)  # (b, H, S, d)
        v = v.view(b, S, H, d).transpose(1, 2)
        r = self.r_net(pos).view(S, H, d).transpose(0, 1)  # (H, S, d)
        # score_ij = [(q_i + u)ᵀk_j + (q_i + v)ᵀ W_R R_{i-j}] / √d; the positional term (with the
        # mask as -inf) is the additive bias of a fused scaled-dot-product attention.
        bd = rel_shift((q + self.v[:, None]).to(r.dtype) @ r.transpose(-1, -2))  # position: (b, H, T, S)
        bias = (bd / math.sqrt(d)).masked_fill(~mask, float("-inf"))
        p = self.drop.p if self.training else 0.0
        qu = (q + self.u[:, None]).to(k.dtype)  # u, v are float32 parameters: keep autocast's dtype
        z = F.scaled_dot_product_attention(qu, k, v, attn_mask=bias.to(k.dtype), dropout_p=p)
        return self.out(z.transpose(1, 2).reshape(b, T, e))


class Block(nn.Module):
    """One pre-LN layer: relative attention over the memory type's window (+ its read), then FFN.
    The memory type's per-layer module, if any, is registered as Block.<memory.module_name>
    (``ltm``, ``compressor``), which fixes its checkpoint keys."""

    def __init__(self, c: ModelConfig, memory: MemoryType) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(c.d_model)
        self.attn = RelativeAttention(c)
        self.ln2 = nn.LayerNorm(c.d_model)
        self.ff = nn.Sequential(
            nn.Linear(c.d_model, c.d_inner), nn.GELU(), nn.Linear(c.d_inner, c.d_model), nn.Dropout(c.dropout)
        )
        self.drop = nn.Dropout(c.dropout)
        module = memory.layer_module()
        if module is not None:
            self.add_module(memory.module_name, module)

    def norm_detached(self, x: Tensor) -> Tensor:
        """LN₁ with detached parameters (for the reconstruction loss)."""
        w = self.ln1.weight.detach()
        b = self.ln1.bias.detach()
        return F.layer_norm(x, self.ln1.normalized_shape, w, b, self.ln1.eps)
