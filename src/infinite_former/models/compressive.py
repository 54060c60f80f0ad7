"""The Compressive Transformer baseline's memory (Rae et al. 2020).

Per layer, the oldest vectors that leave the short-term memory (STM) are not
dropped: every c of them (c = compression rate) are compressed into one slot
by a Conv1d with kernel = stride = c, and the slots are appended to a
compressed memory (cmem) that keeps its last cmem_len slots. The layer then
attends over [cmem; mem; segment].

The compressor is trained only by the attention-reconstruction loss: the
content-based attention of the layer's current queries over the evicted
vectors should equal their attention over the compressed slots; the
attention's projections, the queries and the evicted vectors are detached,
so only the compressor gets gradients. Compressed slots are stored detached,
so the task loss never reaches the compressor.

Batched memories are kept RIGHT-ALIGNED with a per-row count of valid
entries: row i's valid vectors are the last n_i positions of its tensor.
This lets rows of a batch hold memories of different lengths (e.g. after a
document boundary resets one row) without any loop over rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Compressor(nn.Module):
    """f_c: (batch, c·k, e) -> (batch, k, e), a Conv1d with kernel = stride = c."""

    def __init__(self, d_model: int, rate: int) -> None:
        super().__init__()
        if rate < 1:
            raise ValueError(f"compression rate must be >= 1, got {rate!r}")
        self.rate = rate
        self.conv = nn.Conv1d(d_model, d_model, kernel_size=rate, stride=rate)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] % self.rate:
            raise ValueError(f"length {x.shape[1]} is not a multiple of the compression rate {self.rate}")
        if x.shape[1] == 0:
            return x
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


# ------------------------------------------------------------ right-aligned bookkeeping


def valid_mask(counts: Tensor, length: int) -> Tensor:
    """(batch, length) bool: position j of row i is valid iff j >= length - counts[i]."""
    pos = torch.arange(length, device=counts.device)
    return pos[None, :] >= (length - counts)[:, None]


def concat_right_aligned(a: Tensor, na: Tensor, c: Tensor, nc: Tensor, out_len: int) -> Tensor:
    """Concatenate two right-aligned blocks per row and keep the last out_len.

    a: (batch, A, e) with na (batch,) valid at its end; c: (batch, C, e) with nc
    valid. Returns (batch, out_len, e): row i holds [a_valid; c_valid] made
    contiguous and right-aligned (its last min(na+nc, out_len) entries), zeros
    before. Pure gather, no loop over rows.
    """
    b, A, e = a.shape
    C = c.shape[1]
    both = torch.cat([a, c], dim=1)  # (batch, A + C, e)
    rank = torch.arange(out_len - 1, -1, -1, device=a.device)[None, :]  # rank from the right
    from_c = rank < nc[:, None]
    src = torch.where(from_c, A + C - 1 - rank, A - 1 - (rank - nc[:, None]))
    ok = rank < (na + nc)[:, None]
    src = torch.where(ok, src, 0).clamp(0, max(A + C - 1, 0))
    if A + C == 0:
        return a.new_zeros(b, out_len, e)
    out = both.gather(1, src[..., None].expand(b, out_len, e))
    return out * ok[..., None].to(out.dtype)


def take_evicted(combined: Tensor, keep: Tensor, evict: Tensor, width: int) -> Tensor:
    """The vectors each row evicts, right-aligned: (batch, width, e).

    combined: (batch, S, e) right-aligned [mem; segment]; row i keeps its last
    keep[i] vectors and evicts the evict[i] just before them.
    """
    b, S, e = combined.shape
    j = torch.arange(width, device=combined.device)[None, :]
    src = (S - keep - width)[:, None] + j
    ok = j >= (width - evict)[:, None]
    src = torch.where(ok, src, 0).clamp(0, max(S - 1, 0))
    out = combined.gather(1, src[..., None].expand(b, width, e))
    return out * ok[..., None].to(out.dtype)


# --------------------------------------------------------------- reconstruction loss


def reconstruction_loss(
    queries: Tensor,
    old: Tensor,
    old_count: Tensor,
    compressed: Tensor,
    compressed_count: Tensor,
    key_value: Callable[[Tensor], tuple[Tensor, Tensor]],
    n_heads: int,
) -> Tensor:
    """Attention-reconstruction loss ||attn(Q, old) - attn(Q, f_c(old))||² (Rae et al. 2020, §3.2).

    queries: (batch, T, e) already projected and detached; old: (batch, E, e)
    evicted vectors, right-aligned with old_count valid; compressed: (batch,
    E/c, e) with compressed_count valid. key_value maps vectors to detached
    (keys, values) with the layer's own (detached) normalisation and
    projections. Content-based attention, no positions. Mean squared error
    over rows that evicted something, queries and channels; 0 if none did.
    """
    rows = old_count > 0
    if old.shape[1] == 0 or not bool(rows.any()):
        return compressed.sum() * 0.0
    b, T, e = queries.shape
    d = e // n_heads
    q = queries.view(b, T, n_heads, d).transpose(1, 2)  # (batch, H, T, d)

    def attend(x: Tensor, count: Tensor) -> Tensor:
        k, v = key_value(x)
        k = k.view(b, -1, n_heads, d).transpose(1, 2)
        v = v.view(b, -1, n_heads, d).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)  # (batch, H, T, S)
        mask = valid_mask(count.clamp_min(1), x.shape[1])[:, None, None, :]
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return probs @ v  # (batch, H, T, d)

    target = attend(old.detach(), old_count).detach()
    recon = attend(compressed, compressed_count)
    err = F.mse_loss(recon, target, reduction="none").mean(dim=(1, 2, 3))  # (batch,)
    return (err * rows).sum() / rows.sum()
