"""LMState: every layer's memories for a batch of streams, passed in and returned by the model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..memory import LTMState
from ..provenance import check_finite, decode_fingerprint, encode_fingerprint


@dataclass
class LMState:
    """Memories of all layers for a batch of streams (passed in and returned by the model).

    mems:   per layer (batch, m, e) layer inputs; row i's valid ones are its last mem_valid[i].
    cmems:  per layer (batch, C, e) compressed slots, last cmem_valid[i] valid (compressive only).
    ltm:    per layer LTMState of the LongTermAttention (infinite types only).
    ltm_pending: per layer (batch, P, e) layer inputs that left the STM in the last call and
            enter the LTM at the start of the next; last ltm_pending_count[i] valid.
    fingerprint: the model that made the state (InfiniteFormerLM.memory_fingerprint, provenance.py);
            saved with it, checked by the model it is fed to. None: saved before fingerprints.
    """

    mems: list[Tensor]
    mem_valid: Tensor
    cmems: list[Tensor] = field(default_factory=list)
    cmem_valid: Tensor | None = None
    ltm: list[LTMState] = field(default_factory=list)
    ltm_pending: list[Tensor] = field(default_factory=list)
    ltm_pending_count: Tensor | None = None
    fingerprint: dict[str, Any] | None = None

    @property
    def batch_size(self) -> int:
        return self.mem_valid.shape[0]

    def map(self, fn: Callable[[Tensor], Tensor]) -> LMState:
        """Apply fn to every tensor of every layer (all are batch-first), e.g. detach, a device
        move, a row index; the LTM states map themselves."""
        opt = lambda t: None if t is None else fn(t)  # noqa: E731
        return LMState(
            mems=[fn(t) for t in self.mems],
            mem_valid=fn(self.mem_valid),
            cmems=[fn(t) for t in self.cmems],
            cmem_valid=opt(self.cmem_valid),
            ltm=[s.map(fn) for s in self.ltm],
            ltm_pending=[fn(t) for t in self.ltm_pending],
            ltm_pending_count=opt(self.ltm_pending_count),
            fingerprint=self.fingerprint,
        )

    def detach(self) -> LMState:
        return self.map(lambda t: t.detach())

    def to(self, device: torch.device | str) -> LMState:
        return self.map(lambda t: t.to(device))

    def select(self, rows: Tensor) -> LMState:
        """The state of a subset of rows (index tensor or bool mask)."""
        return self.map(lambda t: t[rows])

    def reset(self, rows: Tensor) -> LMState:
        """Start a new document in the chosen rows (bool mask (batch,)): their mems, cmems,
        pending vectors and LTM are emptied; other rows are unchanged. Returns a new state."""
        if not isinstance(rows, Tensor) or rows.dtype != torch.bool or rows.shape != (self.batch_size,):
            raise ValueError(f"rows must be a bool tensor of shape ({self.batch_size},), got {rows!r}")
        rows = rows.to(self.mem_valid.device)
        keep = ~rows

        return self.map(lambda t: t * keep.view(-1, *([1] * (t.dim() - 1))).to(t.dtype))

    def state_dict(self) -> dict[str, Tensor]:
        """Flat dict of tensors (for checkpoints); the fingerprint as a uint8 tensor of its JSON."""
        d: dict[str, Tensor] = {"mem_valid": self.mem_valid}
        if self.fingerprint is not None:
            d["fingerprint"] = encode_fingerprint(self.fingerprint)
        for i, t in enumerate(self.mems):
            d[f"mems.{i}"] = t
        for i, t in enumerate(self.cmems):
            d[f"cmems.{i}"] = t
        if self.cmem_valid is not None:
            d["cmem_valid"] = self.cmem_valid
        for i, s in enumerate(self.ltm):
            for k, v in s.state_dict().items():
                d[f"ltm.{i}.{k}"] = v
        for i, t in enumerate(self.ltm_pending):
            d[f"ltm_pending.{i}"] = t
        if self.ltm_pending_count is not None:
            d["ltm_pending_count"] = self.ltm_pending_count
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> LMState:
        if not isinstance(d, dict) or "mem_valid" not in d:
            raise ValueError("model state dict is missing 'mem_valid'")
        bad = sorted(str(k) for k, v in d.items() if not isinstance(v, Tensor))
        if bad:
            raise ValueError(f"model state dict has entries that are not tensors: {bad[:5]}")
        check_finite(d, "the model state dict")

        def layers(prefix: str) -> list[Tensor]:
            out, i = [], 0
            while f"{prefix}.{i}" in d:
                out.append(d[f"{prefix}.{i}"])
                i += 1
            return out

        ltm, i = [], 0
        while f"ltm.{i}.coeffs" in d:
            ltm.append(
                LTMState.from_state_dict(
                    {k: d[n] for k in ("coeffs", "length", "bin_mass") if (n := f"ltm.{i}.{k}") in d}
                )
            )
            i += 1
        return cls(
            mems=layers("mems"),
            mem_valid=d["mem_valid"],
            cmems=layers("cmems"),
            cmem_valid=d.get("cmem_valid"),
            ltm=ltm,
            ltm_pending=layers("ltm_pending"),
            ltm_pending_count=d.get("ltm_pending_count"),
            fingerprint=decode_fingerprint(d.get("fingerprint")),
        )


ModelState = LMState  # the 0.1 name; kept for one release (README: "Moved in 0.2")
