"""LMState: every layer's memories for a batch of streams, passed in and returned by the model."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from ..provenance import check_finite, decode_fingerprint, encode_fingerprint
from ..utils import deprecated_aliases
from .memory_type import layer_tensors
from .registry import MEMORY_TYPES


@dataclass(init=False)
class LMState:
    """Memories of all layers for a batch of streams (passed in and returned by the model).

    mems:      per layer (batch, m, e) layer inputs (the short-term memory, every memory type);
               row i's valid ones are its last mem_valid[i].
    memory:    the memory type's own state (models/<type>.py), None for the STM alone: e.g.
               ``CompressiveState`` (cmems, cmem_valid) or ``InfiniteState`` (ltm, ltm_pending,
               ltm_pending_count). Its fields also read as attributes: ``state.ltm`` is
               ``state.memory.ltm``.
    fingerprint: the model that made the state (InfiniteFormerLM.memory_fingerprint, provenance.py);
               saved with it, checked by the model it is fed to. None: saved before fingerprints.

    The 0.2 flat keywords (``LMState(..., ltm=..., ltm_pending_count=...)``, also through
    dataclasses.replace) still work, with a DeprecationWarning: they go to the memory's state.
    """

    mems: list[Tensor]
    mem_valid: Tensor
    memory: Any = None
    fingerprint: dict[str, Any] | None = None

    def __init__(
        self,
        mems: list[Tensor],
        mem_valid: Tensor,
        memory: Any = None,
        fingerprint: dict[str, Any] | None = None,
        **legacy: Any,
    ) -> None:
        self.mems = mems
        self.mem_valid = mem_valid
        self.memory = _legacy_memory(memory, legacy) if legacy else memory
        self.fingerprint = fingerprint

    def __getattr__(self, name: str) -> Any:
        # only called for names that are not LMState's own: read them from the memory's state
        memory = self.__dict__.get("memory")
        if memory is not None and not name.startswith("_") and hasattr(memory, name):
            return getattr(memory, name)
        kind = "no memory state" if memory is None else f"a {type(memory).__name__}"
        raise AttributeError(f"LMState (with {kind}) has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _FIELDS:
            raise AttributeError(
                f"LMState has no field {name!r}: set the memory type's fields on state.memory "
                "(e.g. dataclasses.replace(state.memory, ...))"
            )
        super().__setattr__(name, value)

    @property
    def batch_size(self) -> int:
        return self.mem_valid.shape[0]

    def map(self, fn: Callable[[Tensor], Tensor]) -> LMState:
        """Apply fn to every tensor of every layer (all are batch-first), e.g. detach, a device
        move, a row index; the memory type's state maps itself."""
        return LMState(
            mems=[fn(t) for t in self.mems],
            mem_valid=fn(self.mem_valid),
            memory=None if self.memory is None else self.memory.map(fn),
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
        """Start a new document in the chosen rows (bool mask (batch,)): their mems and memory
        (cmems, pending vectors, LTM, ...) are emptied; other rows are unchanged. Returns a new state."""
        if not isinstance(rows, Tensor) or rows.dtype != torch.bool or rows.shape != (self.batch_size,):
            raise ValueError(f"rows must be a bool tensor of shape ({self.batch_size},), got {rows!r}")
        if rows.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(rows.any()):
            return self.map(lambda t: t)  # no row starts a document (most segments): nothing to empty
        rows = rows.to(self.mem_valid.device)
        keep = ~rows

        return self.map(lambda t: t * keep.view(-1, *([1] * (t.dim() - 1))).to(t.dtype))

    def state_dict(self) -> dict[str, Tensor]:
        """Flat dict of tensors (for checkpoints): mem_valid, the fingerprint (a uint8 tensor of its
        JSON), mems.<layer>, then the memory's keys."""
        d: dict[str, Tensor] = {"mem_valid": self.mem_valid}
        if self.fingerprint is not None:
            d["fingerprint"] = encode_fingerprint(self.fingerprint)
        for i, t in enumerate(self.mems):
            d[f"mems.{i}"] = t
        if self.memory is not None:
            d.update(self.memory.state_dict())
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> LMState:
        """Inverse of state_dict; the memory's state class is the one whose MARKER key d holds."""
        if not isinstance(d, dict) or "mem_valid" not in d:
            raise ValueError("model state dict is missing 'mem_valid'")
        bad = sorted(str(k) for k, v in d.items() if not isinstance(v, Tensor))
        if bad:
            raise ValueError(f"model state dict has entries that are not tensors: {bad[:5]}")
        check_finite(d, "the model state dict")
        found = {k.state_class for k in MEMORY_TYPES.values() if k.state_class is not None}
        found = [s for s in found if s.MARKER in d]
        if len(found) > 1:
            raise ValueError(f"model state dict holds the states of several memory types: {found}")
        try:
            memory = found[0].from_state_dict(d) if found else None
        except KeyError as e:
            raise ValueError(f"model state dict is missing {e.args[0]!r} ({found[0].__name__})") from None
        return cls(
            mems=layer_tensors(d, "mems"),
            mem_valid=d["mem_valid"],
            memory=memory,
            fingerprint=decode_fingerprint(d.get("fingerprint")),
        )


_FIELDS = frozenset(f.name for f in fields(LMState))


def _legacy_memory(memory: Any, legacy: dict[str, Any]) -> Any:
    """The memory state the 0.2 flat fields describe: `memory` with them replaced, or a new state
    of the one memory type whose state has them all (empty values of the others' are dropped)."""
    warnings.warn(
        f"LMState({', '.join(legacy)}=...) is deprecated: the memory type's state is LMState.memory",
        DeprecationWarning,
        stacklevel=3,
    )
    given = {k: v for k, v in legacy.items() if v is not None and not (isinstance(v, list) and not v)}
    if memory is not None:
        unknown = set(legacy) - {f.name for f in fields(memory)}
        if unknown:
            raise ValueError(f"{type(memory).__name__} has no field(s) {sorted(unknown)}")
        return dataclasses.replace(memory, **legacy)
    if not given:
        return None
    classes = {k.state_class for k in MEMORY_TYPES.values() if k.state_class is not None}
    for cls in classes:
        names = {f.name for f in fields(cls)}
        if set(given) <= names:
            missing = names - set(given)
            if missing:
                raise ValueError(f"{cls.__name__} also needs {sorted(missing)}")
            return cls(**given)
    raise ValueError(f"no memory type's state has the fields {sorted(given)}")


__getattr__ = deprecated_aliases(
    __name__, {"ModelState": (LMState, "infinite_former.models.LMState")}
)  # the 0.1 name
