"""A toy memory type: the short-term memory plus one slot per layer holding the mean of every layer
input that left it. Attention runs over [mean; mem; segment]. No parameters, no aux loss."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .compressive import concat_right_aligned, valid_mask
from .memory_type import LayerRead, MemoryType, SegmentPlan, layer_tensors


@dataclass
class MeanState:
    """sums: per layer (batch, 1, e) Σ of the layer inputs that left the STM; count (batch,) how many."""

    sums: list[Tensor]
    count: Tensor

    MARKER: ClassVar[str] = "mean_count"  # the state_dict key that says "mean"

    def map(self, fn: Callable[[Tensor], Tensor]) -> MeanState:
        return MeanState([fn(t) for t in self.sums], fn(self.count))

    def state_dict(self) -> dict[str, Tensor]:
        return {**{f"mean_sums.{i}": t for i, t in enumerate(self.sums)}, "mean_count": self.count}

    @classmethod
    def from_state_dict(cls, d: dict[str, Tensor]) -> MeanState:
        return cls(layer_tensors(d, "mean_sums"), d["mean_count"])


class MeanMemory(MemoryType):
    """The STM (mem_len + N - 1 vectors under the equal budget) plus the mean of what left it."""

    name: ClassVar[str] = "mean"
    label: ClassVar[str] = "mean of past states"
    budget_rule: ClassVar[str] = "mean: mem_len + N - 1 STM + 1 mean"
    state_class: ClassVar[type | None] = MeanState

    @classmethod
    def equal_budget(cls, mem_len: int, num_basis: int) -> dict[str, int]:
        return {"mem_len": mem_len + num_basis - 1}

    def state_size(self) -> int:
        return self.config.mem_len + 1

    def init_state(self, batch_size: int, layers: nn.ModuleList, empty: Tensor, count: Tensor) -> MeanState:
        return MeanState([empty.new_zeros(batch_size, 1, empty.shape[-1]) for _ in layers], count.clone())

    def check_state(self, memory: Any, n_layers: int) -> None:
        if not isinstance(memory, MeanState) or len(memory.sums) != n_layers:
            raise ValueError("state has no mean memory, expected one for memory_type 'mean'")

    def plan(self, memory: MeanState, mem_valid: Tensor, mem_width: int, T: int) -> SegmentPlan:
        plan = super().plan(memory, mem_valid, mem_width, T)  # the STM as in Transformer-XL
        has_mean = (memory.count > 0).long()  # (b,)
        leaving = mem_valid + T - plan.keep  # (b,) vectors each row drops now
        extra = (has_mean, leaving, memory.count + leaving)
        return dataclasses.replace(plan, window=mem_width + 1, attended=mem_valid + has_mean, extra=extra)

    def window(
        self, memory: MeanState, layer: int, block: Tensor, h: Tensor, mem_valid: Tensor, plan: SegmentPlan
    ) -> Tensor:
        mean = memory.sums[layer] / memory.count.clamp_min(1)[:, None, None]  # (b, 1, e)
        mems = block[:, : block.shape[1] - h.shape[1]]
        window = concat_right_aligned(mean, plan.extra[0], mems, mem_valid, plan.window)  # right-aligned
        return torch.cat([window, h], dim=1)

    def read(self, blk, memory, layer, x, block, h, plan, return_densities) -> LayerRead:
        leaving = block[:, : plan.leaving].detach()  # (b, P, e): row i's last leaving[i] are valid
        ok = valid_mask(plan.extra[1], plan.leaving)[..., None]
        return LayerRead(state=memory.sums[layer] + (leaving * ok).sum(1, keepdim=True))

    def finish(self, reads, plan, like):
        return MeanState([r.state for r in reads], plan.extra[2]), like.new_zeros(()), {}
