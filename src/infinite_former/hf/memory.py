"""HFMemoryState: the explicit state a causal LM with memory carries between calls.

Two parts:

* the short-term memory (STM) of the current block, per row: the model's own keys/values of
  the block's tokens so far (``kv``, one pair per decoder layer) and their layer-input hidden
  states (``pending``, one per memory layer), absorbed into the long-term memory once the row's
  block holds ``block_size`` tokens. The block's tokens sit in *slots*; ``slots`` (batch, S)
  says which slots hold a real token of the row's block (padding and tokens of rows that were
  reset or absorbed earlier do not), so every row has its own block length and positions;
* the long-term memory (LTM): one core ``LTMState`` (coefficients B, tokens absorbed,
  sticky bin mass) per memory layer. Its size is fixed (N × e), however much was read.

The model returns a new state and never changes the one passed in, so a memory can be kept,
reused and branched. ``InfiniteGPT2Memory``, its former name, warns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from ..attention import MemoryProjections
from ..memory import LTMState
from ..provenance import check_finite, decode_fingerprint, encode_fingerprint, load_state_file
from ..utils import deprecated_aliases

KV = tuple[Tensor, Tensor]  # keys, values (batch, H_kv, S, d)


@dataclass
class HFMemoryState:
    """State of a causal LM + long-term memory for a batch of streams.

    ltm:        one LTMState per memory layer.
    pending:    one (batch, S, e) tensor per memory layer: the layer-input hidden states
                (residual stream) of the block's slots.
    kv:         one (keys, values) pair per decoder layer, each (batch, H_kv, S, d): the
                short-term context (the model's KV cache) of the current block; () when S = 0.
    slots:      (batch, S) bool, True where a slot holds a real token of the row's block.
    num_tokens: (batch,) int64 real tokens seen per row since its last reset.
    block_size: tokens per short-term block (L); a full block is absorbed into the LTM when
                the row's next token arrives.
    ltm_cache:  optional per-LTM projections of B (LongTermAttention.projections), kept only
                at inference, so that token-by-token decoding computes them once per block.
                Tied to the weights they were computed with; None = compute when needed.
    fingerprint: the model that made the state (MemoryCausalLM.memory_fingerprint; provenance.py),
                saved with it; another model refuses it. None: a state saved before fingerprints.
    """

    ltm: tuple[LTMState, ...]
    pending: tuple[Tensor, ...]
    kv: tuple[KV, ...]
    slots: Tensor
    num_tokens: Tensor
    block_size: int
    ltm_cache: tuple[MemoryProjections, ...] | None = None
    fingerprint: dict[str, Any] | None = None

    # ------------------------------------------------------------------ views

    @property
    def batch_size(self) -> int:
        return self.slots.shape[0]

    @property
    def block_lengths(self) -> Tensor:
        """(batch,) tokens in each row's current short-term block (0 .. block_size)."""
        return self.slots.sum(1)

    @property
    def position(self) -> int:
        """Tokens in the current short-term block (the longest over rows)."""
        return int(self.block_lengths.max()) if self.slots.numel() else 0

    @property
    def ltm_tokens(self) -> Tensor:
        """(batch,) tokens absorbed into the long-term memory so far."""
        return self.ltm[0].length if self.ltm else torch.zeros_like(self.num_tokens)

    # ------------------------------------------------------------------ transforms

    def _map(self, fn, ltm_fn=None, cache_fn=None) -> HFMemoryState:
        """Apply fn to every (batch, ...) tensor; LTMState / projections get their own."""
        return HFMemoryState(
            ltm=tuple(ltm_fn(s) for s in self.ltm) if ltm_fn else self.ltm,
            pending=tuple(fn(p) for p in self.pending),
            kv=tuple((fn(k), fn(v)) for k, v in self.kv),
            slots=fn(self.slots),
            num_tokens=fn(self.num_tokens),
            block_size=self.block_size,
            ltm_cache=None
            if self.ltm_cache is None or cache_fn is None
            else tuple(map(cache_fn, self.ltm_cache)),
            fingerprint=self.fingerprint,
        )

    def detach(self) -> HFMemoryState:
        """The same memory cut from the autograd graph (call between training steps)."""
        return self._map(lambda t: t.detach(), lambda s: s.detach(), lambda p: p.detach())

    def select(self, rows: Tensor) -> HFMemoryState:
        """The memory of a subset / reordering of rows (indices or bool mask), e.g. beams."""
        rows = torch.as_tensor(rows, device=self.slots.device)
        return self._map(lambda t: t[rows.to(t.device)], lambda s: s.select(rows), lambda p: p.select(rows))

    def to(self, device: torch.device | str) -> HFMemoryState:
        """Move every tensor to a device."""
        return self._map(lambda t: t.to(device), lambda s: s.to(device), lambda p: p.to(device))

    def reset(self, rows: Tensor | None = None) -> HFMemoryState:
        """Empty the memory of all rows (rows=None) or of chosen rows (bool mask (batch,) or indices).

        A reset row forgets its long-term memory and its current block: it continues exactly
        like a fresh stream, at any point, while the other rows go on.
        """
        mask = torch.ones_like(self.num_tokens, dtype=torch.bool)
        if rows is not None:
            mask = _row_mask(rows, self.batch_size, self.slots.device)
        return replace(
            self,
            ltm=tuple(s.reset(mask) for s in self.ltm),
            slots=self.slots & ~mask[:, None],
            num_tokens=self.num_tokens * ~mask,
            ltm_cache=None,
        ).compact()

    def compact(self) -> HFMemoryState:
        """Drop the leading slots that no row uses any more (after absorbing or resetting)."""
        used = self.slots.any(0)
        if self.slots.shape[1] == 0 or bool(used[0]):
            return self
        first = int(used.long().argmax()) if bool(used.any()) else self.slots.shape[1]
        keep = slice(first, None)
        return replace(
            self,
            pending=tuple(p[:, keep] for p in self.pending),
            kv=tuple((k[:, :, keep], v[:, :, keep]) for k, v in self.kv)
            if first < self.slots.shape[1]
            else (),
            slots=self.slots[:, keep],
        )

    # ------------------------------------------------------------------ save / load

    def state_dict(self) -> dict[str, Any]:
        """Tensors and ints of the memory (not the derived ltm_cache)."""
        d: dict[str, Any] = {
            "block_size": self.block_size,
            "slots": self.slots,
            "num_tokens": self.num_tokens,
        }
        if self.fingerprint is not None:
            d["fingerprint"] = encode_fingerprint(self.fingerprint)
        for i, state in enumerate(self.ltm):
            for name, t in state.state_dict().items():
                d[f"ltm.{i}.{name}"] = t
        for i, p in enumerate(self.pending):
            d[f"pending.{i}"] = p
        for i, (k, v) in enumerate(self.kv):
            d[f"kv.{i}.keys"], d[f"kv.{i}.values"] = k, v
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> HFMemoryState:
        """Inverse of state_dict; a missing or malformed entry raises a ValueError naming it."""
        if not isinstance(d, dict):
            raise ValueError(f"not an HFMemoryState state dict: a {type(d).__name__}")
        bad = [k for k, v in d.items() if k != "block_size" and not isinstance(v, Tensor)]
        if bad:
            raise ValueError(f"not an HFMemoryState state dict: {sorted(map(str, bad))[:5]} are not tensors")
        check_finite({k: v for k, v in d.items() if isinstance(v, Tensor)}, "the HFMemoryState state dict")
        try:
            n_ltm = len([k for k in d if k.startswith("pending.")])
            n_layers = len([k for k in d if k.startswith("kv.") and k.endswith(".keys")])
            names = [f.name for f in fields(LTMState)]
            ltm = tuple(
                LTMState.from_state_dict({n: d[f"ltm.{i}.{n}"] for n in names if f"ltm.{i}.{n}" in d})
                for i in range(n_ltm)
            )
            return cls(
                ltm=ltm,
                pending=tuple(d[f"pending.{i}"] for i in range(n_ltm)),
                kv=tuple((d[f"kv.{i}.keys"], d[f"kv.{i}.values"]) for i in range(n_layers)),
                slots=d["slots"] if "slots" in d else _slots_of_old_format(d, n_layers),
                num_tokens=d["num_tokens"],
                block_size=int(d["block_size"]),
                fingerprint=decode_fingerprint(d.get("fingerprint")),
            )
        except KeyError as err:
            raise ValueError(f"not an HFMemoryState state dict: missing {err}") from err
        except (TypeError, AttributeError, IndexError) as err:
            raise ValueError(f"not an HFMemoryState state dict: {err}") from err

    def save(self, path: str | os.PathLike) -> None:
        """Save the memory (e.g. a book read once) to a file."""
        torch.save(
            {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in self.state_dict().items()}, path
        )

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: torch.device | str | None = None) -> HFMemoryState:
        """A memory saved by ``save``; an unreadable or malformed file is one ValueError naming it."""
        return load_state_file(path, cls.from_state_dict, map_location)


__getattr__ = deprecated_aliases(
    __name__, {"InfiniteGPT2Memory": (HFMemoryState, "infinite_former.hf.HFMemoryState")}
)


def _slots_of_old_format(d: dict[str, Any], n_layers: int) -> Tensor:
    """The slots of a state saved by the former InfiniteGPT2Memory (one shared block position and a
    per-row ``keep`` flag: rows reset at a complete block had their block dropped)."""
    keep = d["keep"]
    length = d["kv.0.keys"].shape[2] if n_layers else 0
    slots = keep.new_ones(keep.shape[0], length)
    return slots & keep[:, None] if length == int(d["block_size"]) else slots


def _row_mask(rows: Tensor, batch_size: int, device: torch.device) -> Tensor:
    rows = torch.as_tensor(rows)
    if rows.dtype == torch.bool:
        if rows.shape != (batch_size,):
            raise ValueError(f"rows must be a bool mask of shape ({batch_size},), got {tuple(rows.shape)}")
        return rows.to(device)
    mask = torch.zeros(batch_size, dtype=torch.bool, device=device)
    mask[rows.to(device)] = True
    return mask


__all__ = ["HFMemoryState", "KV"]
