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

``CompressiveMemory`` is the memory type (memory_type.py's protocol): to
compress whole groups only, a row evicts a multiple of c vectors, so its STM
holds between mem_len and mem_len + c - 1 vectors; attention runs over
[cmem; mem; segment]; aux_loss = recon_weight · Σ_layers reconstruction loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .memory_type import LayerRead, MemoryType, SegmentPlan, layer_tensors, tensor_problem, vector_problems


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


# ------------------------------------------------------------------------ the memory type


@dataclass
class CompressiveState:
    """cmems: per layer (batch, C, e) compressed slots, row i's last cmem_valid[i] valid."""

    cmems: list[Tensor]
    cmem_valid: Tensor

    MARKER: ClassVar[str] = "cmem_valid"  # the state_dict key that says "compressive"

    def map(self, fn: Callable[[Tensor], Tensor]) -> CompressiveState:
        return CompressiveState([fn(t) for t in self.cmems], fn(self.cmem_valid))

    def state_dict(self) -> dict[str, Tensor]:
        return {**{f"cmems.{i}": t for i, t in enumerate(self.cmems)}, "cmem_valid": self.cmem_valid}

    @classmethod
    def from_state_dict(cls, d: dict[str, Tensor]) -> CompressiveState:
        return cls(layer_tensors(d, "cmems"), d["cmem_valid"])


@dataclass(frozen=True)
class CompressionPlan:
    """evict (b,): vectors each row compresses (evict_width their max); new_slots (b,): slots each
    row gains; cmem_valid (b,) / cmem_width: the new compressed memory's counts / width."""

    evict: Tensor
    evict_width: int
    new_slots: Tensor
    cmem_valid: Tensor
    cmem_width: int


class CompressiveMemory(MemoryType):
    """Compressive Transformer (Rae et al. 2020): evicted mems compressed by c into cmem_len slots."""

    name: ClassVar[str] = "compressive"
    label: ClassVar[str] = "Compressive"
    budget_rule: ClassVar[str] = "compressive: mem_len + cmem_len"
    module_name: ClassVar[str | None] = "compressor"
    state_class: ClassVar[type | None] = CompressiveState

    @classmethod
    def check_config(cls, config: Any) -> None:
        if config.cmem_len < 1:
            raise ValueError(f"cmem_len must be >= 1 for memory_type 'compressive', got {config.cmem_len}")
        if config.mem_len < config.compression_rate:
            raise ValueError(
                f"mem_len ({config.mem_len}) must be >= compression_rate ({config.compression_rate}) "
                "for memory_type 'compressive' (the STM must hold a full group of c vectors)"
            )

    @classmethod
    def equal_budget(cls, mem_len: int, num_basis: int) -> dict[str, int]:
        return {"mem_len": mem_len, "cmem_len": num_basis}  # N compressed slots

    @classmethod
    def budget_record(cls, fields: Mapping[str, Any]) -> dict[str, Any]:
        return {k: fields[k] for k in ("mem_len", "cmem_len", "compression_rate")}

    def state_size(self) -> int:
        return self.config.mem_len + self.config.cmem_len

    def layer_module(self) -> nn.Module:
        return Compressor(self.config.d_model, self.config.compression_rate)

    def init_state(
        self, batch_size: int, layers: nn.ModuleList, empty: Tensor, count: Tensor
    ) -> CompressiveState:
        return CompressiveState([empty.clone() for _ in layers], count.clone())

    def check_state(self, memory: Any, n_layers: int) -> None:
        if not isinstance(memory, CompressiveState) or len(memory.cmems) != n_layers:
            raise ValueError("state has no compressed memory, expected one for memory_type 'compressive'")

    def shape_problems(
        self, memory: CompressiveState, batch: int, e: int, layers: nn.ModuleList
    ) -> list[str]:
        return tensor_problem("cmem_valid", memory.cmem_valid, (batch,), count=True) + vector_problems(
            "cmems", memory.cmems, batch, e
        )

    def plan(self, memory: CompressiveState, mem_valid: Tensor, mem_width: int, T: int) -> SegmentPlan:
        c = self.config
        rate = c.compression_rate
        # a row evicts whole groups of c vectors, so its STM keeps mem_len .. mem_len + c - 1
        evict = (mem_valid + T - c.mem_len).clamp_min(0) // rate * rate  # (b,)
        keep = mem_valid + T - evict
        stm_width = int(keep.max())
        new_slots = evict // rate
        total = memory.cmem_valid + new_slots
        compression = CompressionPlan(
            evict=evict,
            evict_width=int(evict.max()),
            new_slots=new_slots,
            cmem_valid=total.clamp_max(c.cmem_len),
            cmem_width=min(c.cmem_len, int(total.max())),
        )
        return SegmentPlan(
            keep=keep,
            stm_width=stm_width,
            leaving=mem_width + T - stm_width,
            window=memory.cmems[0].shape[1] + mem_width,
            attended=memory.cmem_valid + mem_valid,  # valid memory entries each row attends to
            extra=compression,
        )

    def window(
        self,
        memory: CompressiveState,
        layer: int,
        block: Tensor,
        h: Tensor,
        mem_valid: Tensor,
        plan: SegmentPlan,
    ) -> Tensor:
        """[cmem; mem; segment]: (b, window + T, e)."""
        mems = block[:, : block.shape[1] - h.shape[1]]
        window = concat_right_aligned(memory.cmems[layer], memory.cmem_valid, mems, mem_valid, plan.window)
        return torch.cat([window, h], dim=1)

    def read(
        self,
        blk: nn.Module,
        memory: CompressiveState,
        layer: int,
        x: Tensor,
        block: Tensor,
        h: Tensor,
        plan: SegmentPlan,
        record: bool,
    ) -> LayerRead:
        """Compress the vectors leaving the mems into new slots; nothing is added to Z_STM."""
        p: CompressionPlan = plan.extra
        old = take_evicted(block, plan.keep, p.evict, p.evict_width).detach()  # (b, E, e)
        comp = blk.compressor(old)  # (b, E/c, e)
        key_value = lambda t: blk.attn.key_value(blk.norm_detached(t), detach=True)  # noqa: E731
        queries = blk.attn.query(blk.norm_detached(h.detach()), detach=True)
        recon = reconstruction_loss(queries, old, p.evict, comp, p.new_slots, key_value, blk.attn.n_heads)
        cmem = concat_right_aligned(
            memory.cmems[layer], memory.cmem_valid, comp.detach(), p.new_slots, p.cmem_width
        )
        idle = list(blk.compressor.parameters()) if p.evict_width == 0 else []
        return LayerRead(state=cmem, aux=recon, idle=idle)

    def finish(
        self, reads: list[LayerRead], plan: SegmentPlan, like: Tensor
    ) -> tuple[CompressiveState, Tensor, dict[str, Any]]:
        recons = torch.stack([r.aux for r in reads])  # (n_layers,)
        state = CompressiveState([r.state for r in reads], plan.extra.cmem_valid)
        return state, self.config.recon_weight * recons.sum(), {"recon": recons.detach()}
