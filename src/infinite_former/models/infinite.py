"""The ∞-former's long-term memory (PAPER §2-3) as a memory type: ``infinite`` (uniform sampling)
and ``infinite_sticky`` (sticky memories).

In every layer a LongTermAttention with its own state. It is fed with the vectors that LEAVE the
short-term memory: when a segment is appended to the mems, the oldest layer inputs that no longer
fit drop out. They are kept as "pending" in the returned state and absorbed into the LTM (after
LN₁ of the layer, then the LTM's gate) at the start of the next call, before the LTM is read with
the layer's normalised current-segment hidden states as queries. So the LTM always holds exactly
the tokens older than the mems, a query never sees a future token (also with mem_len = 0, where
the whole segment leaves the STM after the call), and the LTM's gate is trained by the loss of the
segment that reads it. The LTM output Z_LTM is added to the short-term attention output after both
output projections, before the residual. aux_loss = kl_weight · Σ_layers KL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..attention import LongTermAttention, LTMRecord
from ..memory import LTMState, UpdateRecord
from .memory_type import LayerRead, MemoryType, SegmentPlan, layer_tensors, tensor_problem, vector_problems


@dataclass
class InfiniteState:
    """ltm: per layer the LTMState of the LongTermAttention; ltm_pending: per layer (batch, P, e)
    layer inputs that left the STM in the last call and enter the LTM at the start of the next,
    row i's last ltm_pending_count[i] valid."""

    ltm: list[LTMState]
    ltm_pending: list[Tensor]
    ltm_pending_count: Tensor

    MARKER: ClassVar[str] = "ltm_pending_count"  # the state_dict key that says "infinite"

    def map(self, fn: Callable[[Tensor], Tensor]) -> InfiniteState:
        return InfiniteState(
            [s.map(fn) for s in self.ltm], [fn(t) for t in self.ltm_pending], fn(self.ltm_pending_count)
        )

    def state_dict(self) -> dict[str, Tensor]:
        d = {f"ltm.{i}.{k}": v for i, s in enumerate(self.ltm) for k, v in s.state_dict().items()}
        d.update({f"ltm_pending.{i}": t for i, t in enumerate(self.ltm_pending)})
        d["ltm_pending_count"] = self.ltm_pending_count
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, Tensor]) -> InfiniteState:
        ltm = []
        while f"ltm.{len(ltm)}.coeffs" in d:
            i = len(ltm)
            ltm.append(
                LTMState.from_state_dict({k: d[f"ltm.{i}.{k}"] for k in ("coeffs", "length", "bin_mass")})
            )
        return cls(ltm, layer_tensors(d, "ltm_pending"), d["ltm_pending_count"])


@dataclass(frozen=True)
class AbsorbPlan:
    """pending_count (b,): vectors each row hands to the LTM, absorbed at the next call;
    absorb_counts: the distinct non-zero counts the last call handed over, absorbed now;
    every_row: every row hands over the same (non-zero) count."""

    pending_count: Tensor
    absorb_counts: list[int]
    every_row: bool = False


class InfiniteMemory(MemoryType):
    """The ∞-former with uniform sampling: an unbounded continuous LTM of N basis functions."""

    name: ClassVar[str] = "infinite"
    label: ClassVar[str] = "∞-former"
    budget_rule: ClassVar[str] = "infinite: mem_len STM + N basis"
    module_name: ClassVar[str | None] = "ltm"
    state_class: ClassVar[type | None] = InfiniteState
    sticky: ClassVar[bool] = False

    @classmethod
    def equal_budget(cls, mem_len: int, num_basis: int) -> dict[str, int]:
        return {"mem_len": mem_len}  # + the LTM's N basis functions (ltm.num_basis)

    @classmethod
    def budget_record(cls, fields: Mapping[str, Any]) -> dict[str, Any]:
        ltm = fields["ltm"]  # an LTMConfig (M = N when its num_samples is None)
        return {"mem_len": fields["mem_len"], "num_basis": ltm.num_basis, "num_samples": ltm.samples}

    def state_size(self) -> int:
        return self.config.mem_len + self.config.ltm.num_basis

    def layer_module(self) -> nn.Module:
        return LongTermAttention(replace(self.config.ltm_config(), sticky=self.sticky))

    def init_state(
        self, batch_size: int, layers: nn.ModuleList, empty: Tensor, count: Tensor
    ) -> InfiniteState:
        return InfiniteState(
            ltm=[blk.ltm.init_state(batch_size, empty.device) for blk in layers],
            ltm_pending=[empty.clone() for _ in layers],
            ltm_pending_count=count.clone(),
        )

    def check_state(self, memory: Any, n_layers: int) -> None:
        if not isinstance(memory, InfiniteState) or len(memory.ltm) != n_layers:
            raise ValueError(f"state has no long-term memory, expected one for memory_type {self.name!r}")

    def shape_problems(self, memory: InfiniteState, batch: int, e: int, layers: nn.ModuleList) -> list[str]:
        bad = (
            []
            if len(memory.ltm_pending) == len(layers)
            else [f"ltm_pending has {len(memory.ltm_pending)} layers, needs {len(layers)}"]
        )
        bad += tensor_problem("ltm_pending_count", memory.ltm_pending_count, (batch,), count=True)
        bad += vector_problems("ltm_pending", memory.ltm_pending, batch, e)
        for i, (blk, s) in enumerate(zip(layers, memory.ltm)):
            n, d = blk.ltm.config.num_basis, blk.ltm.config.num_bins
            bad += tensor_problem(f"ltm[{i}].coeffs (batch, N, e)", s.coeffs, (batch, n, e))
            bad += tensor_problem(f"ltm[{i}].length", s.length, (batch,), count=True)
            bad += tensor_problem(f"ltm[{i}].bin_mass (batch, D)", s.bin_mass, (batch, d))
        return bad

    def plan(self, memory: InfiniteState, mem_valid: Tensor, mem_width: int, T: int) -> SegmentPlan:
        plan = super().plan(memory, mem_valid, mem_width, T)
        handed = set(memory.ltm_pending_count.tolist())  # the one host read of the counts
        absorb = AbsorbPlan(
            pending_count=mem_valid + T - plan.keep,  # leave the STM now, enter the LTM next call
            absorb_counts=sorted(handed - {0}),
            every_row=len(handed) == 1 and 0 not in handed,
        )
        return replace(plan, extra=absorb)

    def read(
        self,
        blk: nn.Module,
        memory: InfiniteState,
        layer: int,
        x: Tensor,
        block: Tensor,
        h: Tensor,
        plan: SegmentPlan,
        record: bool,
    ) -> LayerRead:
        """Absorb the pending vectors, then read the LTM with the segment's normalised inputs.
        record: LayerRead.record is the layer's LTMRecord (its absorptions and its read)."""
        ltm: LongTermAttention = blk.ltm
        queries = x[:, x.shape[1] - h.shape[1] :]  # (b, T, e)
        counts, every_row = plan.extra.absorb_counts, plan.extra.every_row
        updates: list[UpdateRecord] | None = [] if record else None
        state = self._absorb(
            blk, memory.ltm[layer], memory.ltm_pending[layer], memory.ltm_pending_count, counts, updates,
            every_row,
        )  # fmt: skip
        z, state, kl, *read = ltm(queries, None, state, return_kl=True, return_record=record)  # Z_LTM
        idle = list(ltm.gate.parameters()) if not counts and ltm.gate is not None else []
        pending = block[:, : plan.leaving].detach().contiguous()  # absorbed next call (one stride: see mems)
        done = LTMRecord(updates, read[0].read) if record else None
        return LayerRead(z=z, state=(state, pending), aux=kl, idle=idle, record=done)

    @staticmethod
    def _absorb(
        blk: nn.Module,
        state: LTMState,
        pending: Tensor,
        count: Tensor,
        counts: list[int],
        updates: list[UpdateRecord] | None = None,
        every_row: bool = False,
    ) -> LTMState:
        """Absorb each row's pending vectors (its last count[i]) into the LTM; appends the
        UpdateRecord of each update to ``updates`` (if not None).

        Rows usually share one count; otherwise one batched update per distinct count (not per
        row), each row taking the result of its own count, so every row gets exactly the fit a
        lone stream would get."""
        if pending.shape[1] == 0 or not counts:
            return state
        width = pending.shape[1]
        x = blk.ln1(pending)
        out = state
        # eager on CPU, where every row hands over the same count (the plan's every_row, the usual
        # case): the update's state is the result as it is (merging would copy it); compiled: always merge
        uniform = not torch.compiler.is_compiling() and every_row and count.device.type == "cpu"
        for n in counts:
            rows = count == n
            if updates is None:
                new = blk.ltm.update(state, x[:, width - n :])
            else:
                new, done = blk.ltm.update(state, x[:, width - n :], return_record=True)
                updates.append(done.only(rows))
            out = new if uniform else out.merge(new, rows)
        return out

    def finish(
        self, reads: list[LayerRead], plan: SegmentPlan, like: Tensor
    ) -> tuple[InfiniteState, Tensor, dict[str, Any]]:
        kls = torch.stack([r.aux for r in reads])  # (n_layers,)
        state = InfiniteState(
            ltm=[r.state[0] for r in reads],
            ltm_pending=[r.state[1] for r in reads],
            ltm_pending_count=plan.extra.pending_count,
        )
        extras: dict[str, Any] = {"kl": kls.detach(), "ltm_length": state.ltm[0].length}
        if reads[0].record is not None:  # recorded: the densities of the reads, per layer (b, H, T)
            extras["ltm_mu"] = [r.record.read.mu for r in reads]
            extras["ltm_sigma2"] = [r.record.read.sigma2 for r in reads]
        return state, self.config.ltm.kl_weight * kls.sum(), extras


class StickyInfiniteMemory(InfiniteMemory):
    """The ∞-former with sticky memories: samples drawn where past queries attended (PAPER §3.2)."""

    name: ClassVar[str] = "infinite_sticky"
    label: ClassVar[str] = "∞-former (sticky)"
    sticky: ClassVar[bool] = True
