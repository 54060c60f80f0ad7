"""InfiniteGPT2Memory: the explicit state GPT-2 + ∞-former carries between calls.

Two parts, both per layer:

* the short-term memory (STM) of the current block: the GPT-2 keys/values of
  the block's tokens so far (``kv``) and their layer-input hidden states
  (``pending``), which are absorbed into the long-term memory once the block
  is complete;
* the long-term memory (LTM): one core ``MemoryState`` (coefficients B, tokens
  absorbed, sticky bin mass) per memory layer. Its size is fixed (N × e),
  whatever the number of tokens read.

The object is immutable in practice: the model returns a new one and never
changes the one passed in, so a memory can be kept, reused and branched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..attention import MemoryProjections
from ..memory import MemoryState

KV = tuple[Tensor, Tensor]  # keys, values (batch, H, p, d)


@dataclass
class InfiniteGPT2Memory:
    """State of GPT-2 + long-term memory for a batch of streams.

    ltm:       one MemoryState per memory layer (config.memory_layer_ids order).
    pending:   one (batch, p, e) tensor per memory layer: layer-input hidden states
               (residual stream) of the p tokens of the current block.
    kv:        one (keys, values) pair per GPT-2 layer, each (batch, H, p, d): the
               short-term context (GPT-2 KV cache) of the current block.
    keep:      (batch,) bool; False marks rows reset mid-stream, whose complete
               pending block is dropped instead of absorbed.
    num_tokens: (batch,) int64 tokens seen per row since the last reset.
    block_size: tokens per short-term block (L); a complete block is absorbed
               into the LTM when the next token arrives.
    ltm_cache: optional per-LTM projections of B (LongTermAttention.projections), kept only when gradients are off (inference) so that
               per-token generation computes them once per block. Tied to the
               weights they were computed with; None = compute when needed.
    """

    ltm: tuple[MemoryState, ...]
    pending: tuple[Tensor, ...]
    kv: tuple[KV, ...]
    keep: Tensor
    num_tokens: Tensor
    block_size: int
    ltm_cache: tuple[MemoryProjections, ...] | None = None

    @property
    def batch_size(self) -> int:
        return self.keep.shape[0]

    @property
    def position(self) -> int:
        """Tokens in the current short-term block (0 .. block_size)."""
        return self.kv[0][0].shape[2]

    @property
    def ltm_tokens(self) -> Tensor:
        """(batch,) tokens absorbed into the long-term memory so far."""
        if self.ltm:
            return self.ltm[0].length
        return torch.zeros_like(self.num_tokens)

    def detach(self) -> InfiniteGPT2Memory:
        """The same memory cut from the autograd graph (call between training steps)."""
        return InfiniteGPT2Memory(
            ltm=tuple(s.detach() for s in self.ltm),
            pending=tuple(p.detach() for p in self.pending),
            kv=tuple((k.detach(), v.detach()) for k, v in self.kv),
            keep=self.keep,
            num_tokens=self.num_tokens,
            block_size=self.block_size,
            ltm_cache=None if self.ltm_cache is None else tuple(p.detach() for p in self.ltm_cache),
        )

    def reset(self, rows: Tensor | None = None) -> InfiniteGPT2Memory:
        """Empty the memory: all rows (rows=None), or chosen rows (bool mask (batch,) or indices).

        Resetting chosen rows is allowed only at a block boundary (position 0 or
        a complete block), because the rows share the block's position: a
        complete pending block of those rows is dropped, not absorbed.
        """
        if rows is None:
            return InfiniteGPT2Memory(
                ltm=tuple(s.reset(torch.ones_like(self.keep)) for s in self.ltm),
                pending=tuple(p[:, :0] for p in self.pending),
                kv=tuple((k[:, :, :0], v[:, :, :0]) for k, v in self.kv),
                keep=torch.ones_like(self.keep),
                num_tokens=torch.zeros_like(self.num_tokens),
                block_size=self.block_size,
            )
        mask = _row_mask(rows, self.batch_size, self.keep.device)
        if self.position not in (0, self.block_size):
            raise ValueError(
                f"reset(rows) needs a block boundary, but the current block holds {self.position} tokens; "
                "reset all rows with reset() or reset once the block is complete"
            )
        return InfiniteGPT2Memory(
            ltm=tuple(s.reset(mask) for s in self.ltm),
            pending=self.pending,
            kv=self.kv,
            keep=self.keep & ~mask if self.position == self.block_size else self.keep,  # nothing pending at 0
            num_tokens=self.num_tokens * ~mask,
            block_size=self.block_size,
            ltm_cache=None,
        )

    def select(self, rows: Tensor) -> InfiniteGPT2Memory:
        """The memory of a subset / reordering of rows (indices or bool mask)."""
        return InfiniteGPT2Memory(
            ltm=tuple(s.select(rows) for s in self.ltm),
            pending=tuple(p[rows] for p in self.pending),
            kv=tuple((k[rows], v[rows]) for k, v in self.kv),
            keep=self.keep[rows],
            num_tokens=self.num_tokens[rows],
            block_size=self.block_size,
            ltm_cache=None if self.ltm_cache is None else tuple(p.select(rows) for p in self.ltm_cache),
        )

    def state_dict(self) -> dict[str, Any]:
        """Tensors and ints of the memory (not the derived ltm_cache)."""
        return memory_state_dict(self)

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> InfiniteGPT2Memory:
        return memory_from_state_dict(d)

    def save(self, path: str | os.PathLike) -> None:
        """Save the memory (e.g. a book read once) to a file."""
        torch.save(
            {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in self.state_dict().items()}, path
        )

    @classmethod
    def load(
        cls, path: str | os.PathLike, map_location: torch.device | str | None = None
    ) -> InfiniteGPT2Memory:
        return cls.from_state_dict(torch.load(path, map_location=map_location, weights_only=True))

    def to(self, device: torch.device | str) -> InfiniteGPT2Memory:
        """Move every tensor to a device."""
        return InfiniteGPT2Memory(
            ltm=tuple(s.to(device) for s in self.ltm),
            pending=tuple(p.to(device) for p in self.pending),
            kv=tuple((k.to(device), v.to(device)) for k, v in self.kv),
            keep=self.keep.to(device),
            num_tokens=self.num_tokens.to(device),
            block_size=self.block_size,
            ltm_cache=None if self.ltm_cache is None else tuple(p.to(device) for p in self.ltm_cache),
        )


def memory_state_dict(memory: InfiniteGPT2Memory) -> dict[str, Any]:
    """A flat dict of tensors + ints (torch.save-able with weights_only loading)."""
    d: dict[str, Any] = {
        "block_size": memory.block_size,
        "keep": memory.keep,
        "num_tokens": memory.num_tokens,
    }
    for i, state in enumerate(memory.ltm):
        for name, t in state.state_dict().items():
            d[f"ltm.{i}.{name}"] = t
    for i, p in enumerate(memory.pending):
        d[f"pending.{i}"] = p
    for i, (k, v) in enumerate(memory.kv):
        d[f"kv.{i}.keys"], d[f"kv.{i}.values"] = k, v
    return d


def memory_from_state_dict(d: dict[str, Any]) -> InfiniteGPT2Memory:
    """Inverse of memory_state_dict."""
    try:
        n_ltm = len([k for k in d if k.startswith("pending.")])
        n_layers = len([k for k in d if k.startswith("kv.") and k.endswith(".keys")])
        ltm = tuple(
            MemoryState.from_state_dict(
                {k.split(".", 2)[2]: v for k, v in d.items() if k.startswith(f"ltm.{i}.")}
            )
            for i in range(n_ltm)
        )
        return InfiniteGPT2Memory(
            ltm=ltm,
            pending=tuple(d[f"pending.{i}"] for i in range(n_ltm)),
            kv=tuple((d[f"kv.{i}.keys"], d[f"kv.{i}.values"]) for i in range(n_layers)),
            keep=d["keep"],
            num_tokens=d["num_tokens"],
            block_size=int(d["block_size"]),
        )
    except KeyError as err:
        raise ValueError(f"not an InfiniteGPT2Memory state dict: missing {err}") from err


def _row_mask(rows: Tensor, batch_size: int, device: torch.device) -> Tensor:
    if not isinstance(rows, Tensor):
        rows = torch.as_tensor(rows)
    if rows.dtype == torch.bool:
        if rows.shape != (batch_size,):
            raise ValueError(f"rows must be a bool mask of shape ({batch_size},), got {tuple(rows.shape)}")
        return rows.to(device)
    mask = torch.zeros(batch_size, dtype=torch.bool, device=device)
    mask[rows.to(device)] = True
    return mask
