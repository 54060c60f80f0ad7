"""The memory-type protocol of the LM: what XL, Compressive and the ∞-former each implement.

Every memory type shares the Transformer-XL short-term memory (STM): per layer the layer inputs of
the last mem_len tokens, right-aligned with per-row counts (lm.py). A memory type decides what
happens around it, and nothing else in the LM branches on the type:

- ``plan``: once per call, how many vectors each row keeps in the STM, what attention sees
  before the segment (the window) and anything the type precomputes for all layers;
- ``window``: per layer, the vectors the short-term attention runs over ([mem; segment] by default);
- ``read``: per layer, after the short-term attention: absorb what left the STM, read the memory
  (an output added to Z_STM, or none) and return the layer's new memory state and aux-loss term;
- ``finish``: collect the layers into the new memory state, the weighted aux loss and the extras;
- records: ``read(..., record=True)`` returns in ``LayerRead.record`` what the memory did in the
  layer (the ∞-former: its absorptions and its read), which the LM's ``return_record`` hands out;
- ``init_state`` / ``state_class``: the memory's own state (None when the STM is all it keeps),
  a dataclass with ``map``, ``state_dict`` and ``from_state_dict``, passed in and returned;
- ``layer_module``: the per-layer module (registered on the Block under ``module_name``, which
  fixes its checkpoint keys), ``num_parameters``;
- ``state_size``, ``equal_budget``, ``budget_rule``, ``budget_record``: the memory per layer in
  vectors and the rule that gives every type the same budget of mem_len + N vectors;
- ``label``: the name plots and tables show.

The base class behaves as the STM alone; a type sets its name, label and budget and overrides
what it changes. The registry (registry.py) maps each ``memory_type`` name to its class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..utils import describe


@dataclass(frozen=True)
class SegmentPlan:
    """Where everything sits in one call, the same for every layer. b rows, segment length T.

    keep (b,): layer inputs each row keeps in the STM after this call; stm_width: their max.
    leaving: vectors that leave [mem; segment] on the left this call (mem width + T - stm_width).
    window: memory positions attended before the segment; attended (b,): how many are valid.
    extra: whatever the memory type computed for all layers (its own dataclass or None).
    """

    keep: Tensor
    stm_width: int
    leaving: int
    window: int
    attended: Tensor
    extra: Any = None


@dataclass
class LayerRead:
    """What a memory type returns for one layer: z (b, T, e) added to the short-term attention's
    output (None: nothing), the layer's new memory state, its aux-loss term (unweighted), the
    parameters it did not use in this call, and, when asked to record, the type's record of what
    it did in this layer (None: nothing recorded; the ∞-former's: an attention.LTMRecord)."""

    z: Tensor | None = None
    state: Any = None
    aux: Tensor | None = None
    idle: list[nn.Parameter] = field(default_factory=list)
    record: Any = None


class MemoryType:
    """The protocol; its defaults are the STM alone (no memory state, no module, no aux loss).

    A memory type is built once per model from its config (a ModelConfig, typed Any here: config.py
    validates memory_type through the registry, so the types cannot import it back) and holds no
    tensors: its state is passed in and returned by the LM's forward, its parameters live in each
    Block."""

    name: ClassVar[str]  # the ModelConfig.memory_type value
    label: ClassVar[str]  # the name plots and tables show
    budget_rule: ClassVar[str]  # the equal-budget rule in words, for results files
    module_name: ClassVar[str | None] = None  # the Block attribute of the per-layer module
    state_class: ClassVar[type | None] = None  # the memory state's dataclass (None: no state)

    def __init__(self, config: Any) -> None:
        self.config = config

    # ------------------------------------------------------------------ settings and sizes

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Raise ValueError for settings this memory type cannot run with."""

    @classmethod
    def equal_budget(cls, mem_len: int, num_basis: int) -> dict[str, int]:
        """ModelConfig fields giving this type a memory of mem_len + N vectors per layer (the
        equal-budget rule of the sorting experiment)."""
        raise NotImplementedError(f"{cls.__name__} must define equal_budget")

    @classmethod
    def budget_record(cls, fields: Mapping[str, Any]) -> dict[str, Any]:
        """The sizes a results file records for this type's budget, from ModelConfig fields."""
        return {"mem_len": fields["mem_len"]}

    def state_size(self) -> int:
        """Vectors per layer the memory holds at most, STM included: the budget it spends
        (equal_budget(mem_len, N) makes it mem_len + N for every type)."""
        return self.config.mem_len

    # ------------------------------------------------------------------ modules

    def layer_module(self) -> nn.Module | None:
        """The module each layer gets (registered as Block.<module_name>), or None."""
        return None

    def num_parameters(self, layers: nn.ModuleList) -> int:
        """Parameters of the memory's per-layer modules, all layers."""
        if self.module_name is None:
            return 0
        return sum(p.numel() for blk in layers for p in getattr(blk, self.module_name).parameters())

    # ------------------------------------------------------------------ state

    def init_state(self, batch_size: int, layers: nn.ModuleList, empty: Tensor, count: Tensor) -> Any:
        """The empty memory state of the model's layers (Blocks). empty: (batch, 0, e) in the model's
        dtype and the requested device; count: (batch,) long zeros."""
        return None

    def check_state(self, memory: Any, n_layers: int) -> None:
        """Raise ValueError if memory is not this type's state for n_layers layers."""
        if memory is not None:
            raise ValueError(
                f"state has a {type(memory).__name__}, expected no memory beyond the STM "
                f"for memory_type {self.name!r}"
            )

    def shape_problems(self, memory: Any, batch: int, e: int, layers: nn.ModuleList) -> list[str]:
        """What in the memory's state does not fit this model (after check_state): one line per
        tensor, naming it and the shape it needs (``tensor_problem``). Checked before any torch
        op sees the state, so a state from another model fails here and not inside a matmul."""
        return []

    # ------------------------------------------------------------------ one call

    def plan(self, memory: Any, mem_valid: Tensor, mem_width: int, T: int) -> SegmentPlan:
        """The STM keeps the last mem_len vectors of [mem; segment]; attention sees [mem; segment]."""
        mem_len = self.config.mem_len
        keep = (mem_valid + T).clamp_max(mem_len)  # (b,)
        stm_width = min(mem_len, mem_width + T)
        return SegmentPlan(keep, stm_width, mem_width + T - stm_width, mem_width, mem_valid)

    def window(
        self, memory: Any, layer: int, block: Tensor, h: Tensor, mem_valid: Tensor, plan: SegmentPlan
    ) -> Tensor:
        """What layer `layer` attends over, before LN₁: (b, window + T, e). block (b, S, e) is
        [mem; segment] (row i's mems: its last mem_valid[i] before the segment), h (b, T, e)."""
        return block

    def read(
        self,
        blk: nn.Module,
        memory: Any,
        layer: int,
        x: Tensor,
        block: Tensor,
        h: Tensor,
        plan: SegmentPlan,
        record: bool,
    ) -> LayerRead:
        """After the short-term attention of layer `layer`: x (b, window + T, e) the normalised window,
        block (b, S, e) = [mem; segment] before LN₁, h (b, T, e) the segment's layer inputs;
        record: put the type's record of what it did in LayerRead.record."""
        return LayerRead()

    def finish(
        self, reads: list[LayerRead], plan: SegmentPlan, like: Tensor
    ) -> tuple[Any, Tensor, dict[str, Any]]:
        """(new memory state, weighted aux loss (a 0-dim tensor like `like`), extras)."""
        return None, like.new_zeros(()), {}


def layer_tensors(d: dict[str, Tensor], prefix: str) -> list[Tensor]:
    """d[f"{prefix}.0"], d[f"{prefix}.1"], ... while present (a memory state's per-layer tensors)."""
    out: list[Tensor] = []
    while f"{prefix}.{len(out)}" in d:
        out.append(d[f"{prefix}.{len(out)}"])
    return out


def tensor_problem(name: str, t: Any, shape: tuple[int | None, ...], count: bool = False) -> list[str]:
    """[] if t is a tensor of that shape (None: any size) and kind (count: int64, else floating),
    else one line saying what it is and what it needs."""
    fits = (
        isinstance(t, Tensor)
        and t.dim() == len(shape)
        and all(want is None or got == want for got, want in zip(t.shape, shape))
        and (t.dtype == torch.long if count else t.is_floating_point())
    )
    return [] if fits else [f"{name} is {describe(t)}, needs {shape} {'int64' if count else 'float'}"]


def vector_problems(name: str, ts: list[Tensor], batch: int, e: int) -> list[str]:
    """Per-layer (batch, width, e) vectors with one width shared by the layers."""
    width = ts[0].shape[1] if ts and isinstance(ts[0], Tensor) and ts[0].dim() == 3 else None
    return [p for i, t in enumerate(ts) for p in tensor_problem(f"{name}[{i}]", t, (batch, width, e))]
