"""Segments, shards and the stream protocol: what every data source yields and the trainer reads.

A data stream yields ``Segment``s (tokens, targets, loss_mask, a ``reset`` row mask, a ``train``
flag and, for document lanes, the document id of each row). ``Shard`` says which rows of the global
batch this process reads. A training stream is any ``SegmentStream``: an iterable of segments with
``state_dict()`` / ``load_state_dict()`` giving its position after the last segment it yielded.
Nothing here knows about models or the training loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
from torch import Tensor

from ..utils import describe


@dataclass
class Segment:
    """One segment of a batch of streams.

    tokens:    (b, T) long, the inputs.
    targets:   (b, T) long, next tokens (None: nothing to predict).
    loss_mask: (b, T) bool, positions counted in loss and accuracy (None: all).
    reset:     (b,) bool, rows whose memory is emptied BEFORE this segment
               (a new sequence / document starts in that row).
    train:     back-propagate this segment and take one optimizer step.
    doc_ids:   (b,) long, the document each row reads (document lanes; -1: idle row), or None.
    """

    tokens: Tensor
    targets: Tensor | None = None
    loss_mask: Tensor | None = None
    reset: Tensor | None = None
    train: bool = True
    doc_ids: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, Tensor) or self.tokens.dim() != 2:
            raise ValueError(f"Segment.tokens must be a (batch, T) tensor, got {describe(self.tokens)}")
        shape = tuple(self.tokens.shape)
        for name in ("targets", "loss_mask"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"Segment.{name} must have shape {shape}, got {tuple(t.shape)}")
        if self.reset is None:
            self.reset = torch.zeros(shape[0], dtype=torch.bool)
        if self.reset.dtype != torch.bool or tuple(self.reset.shape) != (shape[0],):
            raise ValueError(f"Segment.reset must be a bool tensor of shape ({shape[0]},)")
        if self.doc_ids is not None and tuple(self.doc_ids.shape) != (shape[0],):
            raise ValueError(f"Segment.doc_ids must have shape ({shape[0]},), got {describe(self.doc_ids)}")

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Segment:
        return Segment(
            **{f.name: fn(v) if isinstance(v := getattr(self, f.name), Tensor) else v for f in fields(self)}
        )

    def to(self, device: torch.device | str) -> Segment:
        return self._map(lambda t: t.to(device, non_blocking=True))

    def select(self, rows: slice | Tensor) -> Segment:
        """The segment of a subset of rows (e.g. this process's shard of the global batch)."""
        return self._map(lambda t: t[rows])


@dataclass(frozen=True)
class Shard:
    """This process's share of the global batch: rows rank·batch_size .. (rank+1)·batch_size − 1."""

    rank: int = 0
    world_size: int = 1
    batch_size: int = 1  # local rows

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def rows(self) -> slice:
        """This shard's rows of the global batch."""
        return slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)


class SegmentStream(Protocol):
    """What the trainer needs from a training stream."""

    def __iter__(self) -> Iterator[Segment]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


StreamFactory = Callable[[Shard], SegmentStream]
EvalFactory = Callable[[Shard], Iterable[Segment]]

__all__ = ["EvalFactory", "Segment", "SegmentStream", "Shard", "StreamFactory"]
