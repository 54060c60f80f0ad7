"""Decoder-only language model with a Transformer-XL short-term memory and a
pluggable long-term memory: ``xl`` | ``compressive`` | ``infinite`` | ``infinite_sticky``.

    model = InfiniteFormerLM(ModelConfig(vocab_size=V, memory_type="infinite_sticky"))
    out, state = model(tokens)                  # first segment (state None = empty memories)
    out, state = model(next_tokens, state.detach(), targets=..., loss_mask=...)

Layers are pre-LN: h ← h + Drop(Z_STM + Z_LTM)(LN₁(h)),  h ← h + Drop(FFN(LN₂(h))), with a final
LayerNorm before the (optionally tied) output projection.

Short-term memory (Dai et al. 2019). Per layer the mems are the layer INPUTS (residual stream,
before LN₁) of the last mem_len tokens, detached. Attention runs over [mem; segment] with
relative positions: score_ij = (q_i + u)ᵀk_j + (q_i + v)ᵀ W_R R_{i-j}, R sinusoidal, computed
with the rel-shift trick; query i sees every memory vector and the segment's tokens ≤ i.

Batched memories are right-aligned with per-row valid counts (``mem_valid`` ...), so a row can
be reset at a document boundary (its old memory masked out) while the other rows continue, with
no loop over rows; relative distances of the valid entries are those of a fresh stream.

Memory types (memory_type.py's protocol, one file each, registry.py): what the layers keep beyond
the STM and how they read it. The forward asks the type for a plan of the call (what the STM keeps,
what attention sees), then per layer for the attention window and, after the short-term attention,
for its read (an output added to Z_STM before the residual, the layer's new memory state, an aux
term); the type then collects the new memory state, aux_loss and extras.
- xl (xl.py): the STM alone.
- compressive (compressive.py): evicted mems compressed by c into cmem_len slots (Rae et al.
  2020); aux_loss = recon_weight · Σ_layers attention-reconstruction loss.
- infinite, infinite_sticky (infinite.py): the ∞-former's continuous LTM (PAPER §2-3), fed with
  the vectors that leave the STM; aux_loss = kl_weight · Σ_layers KL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..provenance import check_fingerprint
from ..utils import check_int, describe
from .config import ModelConfig
from .layers import Block, sinusoid
from .memory_type import SegmentPlan, tensor_problem, vector_problems
from .registry import memory_type_class
from .state import LMState


@dataclass
class LMOutput:
    """logits (batch, T, V); loss: mean cross-entropy over counted positions (None without
    targets); aux_loss: weighted KL (infinite*) or reconstruction loss (compressive), 0 for xl.

    extras: "nll_sum" and "n_targets" (sum / count behind loss), "kl" and "recon" per layer
    (unweighted, (n_layers,)), "ltm_length" (batch,) tokens absorbed by the LTM (layer 0),
    and with return_densities=True (or return_record) "ltm_mu"/"ltm_sigma2": per layer (batch, H, T).

    record: with return_record=True, per layer what its memory did in this call (the memory type's
    record: for infinite* an attention.LTMRecord, the absorptions with their sample positions and
    the read's densities; None for types that record nothing); else None.
    """

    logits: Tensor
    loss: Tensor | None
    aux_loss: Tensor
    extras: dict[str, Any] = field(default_factory=dict)
    record: list[Any] | None = None


class InfiniteFormerLM(nn.Module):
    """Decoder-only LM, Transformer-XL recurrence, memory type chosen by config (module doc).
    self.memory is the memory type (memory_type.py); its per-layer modules live in the Blocks."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = c = config
        self.memory = memory_type_class(c.memory_type)(c)  # the memory type: no tensors, no state
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(Block(c, self.memory) for _ in range(c.n_layers))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        own = f".{self.memory.module_name}"
        for name, module in self.named_modules():  # the memory's modules keep their own initialisation
            if self.memory.module_name is None or own not in name:
                self._init_weights(module)
        if c.tie_weights:
            self.head.weight = self.embed.weight

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    # -------------------------------------------------------------------------- state

    def memory_fingerprint(self) -> dict[str, Any]:
        """What a state must have been made by (provenance.py): memory type, e, H, layers and,
        with a long-term memory, its N, D and schedule (τ, contraction schedule and p, sticky)."""
        c = self.config
        fp: dict[str, Any] = {
            "architecture": type(self).__name__,
            "memory_type": c.memory_type,
            "hidden_size": c.d_model,
            "num_heads": c.n_heads,
            "num_layers": c.n_layers,
        }
        ltm = next((blk.ltm.config for blk in self.layers if getattr(blk, "ltm", None) is not None), None)
        if ltm is not None:
            fp.update(
                num_basis=ltm.num_basis,
                num_bins=ltm.num_bins,
                tau=ltm.tau,
                schedule=ltm.schedule,
                power=ltm.power,
                sticky=ltm.sticky,
            )
        return fp

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> LMState:
        """Empty memories for batch_size streams."""
        c = self.config
        check_int("batch_size", batch_size, 1)
        empty = torch.zeros(batch_size, 0, c.d_model, device=device, dtype=self.embed.weight.dtype)
        count = torch.zeros(batch_size, dtype=torch.long, device=device)
        return LMState(
            mems=[empty.clone() for _ in range(c.n_layers)],
            mem_valid=count,
            memory=self.memory.init_state(batch_size, self.layers, empty, count),
            fingerprint=self.memory_fingerprint(),
        )

    # ------------------------------------------------------------------------ forward

    def forward(
        self,
        tokens: Tensor,
        state: LMState | None = None,
        targets: Tensor | None = None,
        loss_mask: Tensor | None = None,
        *,
        return_densities: bool = False,
        return_record: bool = False,
    ) -> tuple[LMOutput, LMState]:
        """tokens (batch, T) -> (LMOutput, new state). The new mems are detached; the returned
        state is not (LTM coefficients carry the gate's graph): call state.detach() between
        truncated-backprop windows. Targets < 0 are ignored in the loss, like loss_mask False.
        return_record: LMOutput.record says what each layer's memory did (same logits and state)."""
        b, T = self._check_inputs(tokens, state, targets, loss_mask)
        if state is None:
            state = self.init_state(b, tokens.device)
        h = self.drop(self.embed(tokens))  # (b, T, e)
        memory = self.memory
        plan = memory.plan(state.memory, state.mem_valid, state.mems[0].shape[1], T)  # same for every layer
        pos, mask = self._positions(plan, T, h)

        record = return_densities or return_record
        mems, reads = [], []
        for layer, blk in enumerate(self.layers):
            block = torch.cat([state.mems[layer], h], dim=1)  # (b, S, e) right-aligned [mem; segment]
            window = memory.window(state.memory, layer, block, h, state.mem_valid, plan)  # (b, window + T, e)
            x = blk.ln1(window)
            z = blk.attn(x, T, pos, mask)  # short-term attention Z_STM, after W_O
            read = memory.read(blk, state.memory, layer, x, block, h, plan, record)
            if read.z is not None:
                z = z + read.z  # e.g. Z = Z_STM + Z_LTM, before the residual
            reads.append(read)
            # contiguous: a view would keep the whole block alive, and its stride would change with
            # the block's width (one more compiled graph per stride under --compile)
            mems.append(block[:, block.shape[1] - plan.stm_width :].detach().contiguous())
            h = h + blk.drop(z)
            h = h + blk.ff(blk.ln2(h))

        logits = self.head(self.ln_f(h))
        new_memory, aux, extras = memory.finish(reads, plan, logits)
        idle = [p for read in reads for p in read.idle]
        if idle and torch.is_grad_enabled():
            # 0·Σp keeps every parameter in the graph (gradient 0) in calls that do not use it
            # (LTM gate before anything left the STM, compressor before anything was evicted),
            # so DDP works without find_unused_parameters.
            aux = aux + 0.0 * sum(p.sum() for p in idle)
        loss = None
        if targets is not None:
            loss, extras["nll_sum"], extras["n_targets"] = self._loss(logits, targets, loss_mask)
        new = LMState(mems=mems, mem_valid=plan.keep, memory=new_memory, fingerprint=state.fingerprint)
        records = [read.record for read in reads] if return_record else None
        return LMOutput(logits=logits, loss=loss, aux_loss=aux, extras=extras, record=records), new

    # ----------------------------------------------------------------------- steps

    def _positions(self, plan: SegmentPlan, T: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """The sinusoids R (window + T, e) and the attention mask (b, 1, T, window + T): True where
        allowed (causal in the segment, only each row's valid memory entries before it)."""
        window, length, dev = plan.window, plan.window + T, like.device
        pos = self.drop(sinusoid(length, self.config.d_model, dev, like.dtype))
        i = torch.arange(T, device=dev)[:, None]
        j = torch.arange(length, device=dev)[None, :]
        causal = j <= (window + i)  # (T, window + T)
        mem_ok = j[None] >= (window - plan.attended)[:, None, None]  # (b, 1, window + T)
        return pos, (causal[None] & mem_ok)[:, None]

    def _loss(
        self, logits: Tensor, targets: Tensor, loss_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean cross-entropy over counted positions (targets >= 0 and loss_mask): (loss, Σ NLL, count)."""
        counted = targets >= 0
        if loss_mask is not None:
            counted = counted & loss_mask
        nll = F.cross_entropy(
            logits.reshape(-1, self.config.vocab_size).float(),
            targets.clamp_min(0).reshape(-1),
            reduction="none",
        )
        nll_sum = (nll * counted.reshape(-1)).sum()
        n = counted.sum()
        return nll_sum / n.clamp_min(1), nll_sum.detach(), n

    # --------------------------------------------------------------------------- checks

    def _check_inputs(
        self, tokens: Tensor, state: LMState | None, targets: Tensor | None, loss_mask: Tensor | None
    ) -> tuple[int, int]:
        c = self.config
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be a (batch, T) LongTensor, got {describe(tokens)}")
        b, T = tokens.shape
        if T == 0:
            raise ValueError("tokens must have at least one position (T >= 1)")
        if c.max_segment_len is not None and T > c.max_segment_len:
            raise ValueError(f"segment length {T} exceeds max_segment_len={c.max_segment_len}")
        # compiled: the value checks run inside the graph (no host read, no graph break) and raise
        # a RuntimeError with the same message, without the range found
        compiling = torch.compiler.is_compiling()
        if compiling:
            in_range = ((tokens >= 0) & (tokens < c.vocab_size)).all()
            torch._assert_async(in_range, f"tokens must be in [0, {c.vocab_size})")
        elif tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= c.vocab_size):
            raise ValueError(
                f"tokens must be in [0, {c.vocab_size}), got range [{int(tokens.min())}, {int(tokens.max())}]"
            )
        if targets is not None:
            if not isinstance(targets, Tensor) or targets.shape != (b, T) or targets.dtype != torch.long:
                raise ValueError(f"targets must be a ({b}, {T}) LongTensor, got {describe(targets)}")
            message = f"targets must be < vocab_size={c.vocab_size} (negative = ignored)"
            if compiling:
                torch._assert_async((targets < c.vocab_size).all(), message)
            elif int(targets.max()) >= c.vocab_size:
                raise ValueError(message)
        if loss_mask is not None and (
            not isinstance(loss_mask, Tensor) or loss_mask.shape != (b, T) or loss_mask.dtype != torch.bool
        ):
            raise ValueError(f"loss_mask must be a ({b}, {T}) bool tensor, got {describe(loss_mask)}")
        if state is not None:
            if not isinstance(state, LMState):
                raise ValueError(f"state must be a LMState or None, got {type(state).__name__}")
            check_fingerprint(state.fingerprint, self.memory_fingerprint(), "state")
            if state.batch_size != b:
                raise ValueError(f"state has batch size {state.batch_size} but tokens have {b}")
            if len(state.mems) != c.n_layers:
                raise ValueError(
                    f"state has {len(state.mems)} layers of mems, expected n_layers={c.n_layers}"
                )
            self.memory.check_state(state.memory, c.n_layers)
            bad = tensor_problem("mem_valid", state.mem_valid, (b,), count=True)
            bad += vector_problems("mems", state.mems, b, c.d_model)
            bad += self.memory.shape_problems(state.memory, b, c.d_model, self.layers)
            if bad:
                raise ValueError(
                    f"state does not fit this model (batch {b}, e={c.d_model}): {'; '.join(bad[:4])}"
                )
        return b, T


def zero_ltm_output(model: nn.Module) -> None:
    """Zero every layer's LTM output projection, so an ∞-former starts as a Transformer-XL with the
    same short-term memory (the LTM's contribution grows from 0 as it trains), like the GPT-2 model."""
    with torch.no_grad():
        for blk in model.layers:
            ltm = getattr(blk, "ltm", None)
            if ltm is not None:
                ltm.out.weight.zero_()
                ltm.out.bias.zero_()
