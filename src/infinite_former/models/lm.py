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

Long-term memory of the ∞-former (PAPER §2-3): in every layer a LongTermAttention with its own
state. It is fed with the vectors that LEAVE the short-term memory: when a segment is appended
to the mems, the oldest layer inputs that no longer fit drop out. They are kept as "pending" in
the returned state and absorbed into the LTM (after LN₁ of the layer, then the LTM's gate) at
the start of the next call, before the LTM is read with the layer's normalised current-segment
hidden states as queries. So the LTM always holds exactly the tokens older than the mems, a
query never sees a future token (also with mem_len = 0, where the whole segment leaves the STM
after the call), and the LTM's gate is trained by the loss of the segment that reads it. The LTM
output is added to the short-term attention output after both output projections, before the
residual. aux_loss = kl_weight · Σ_layers KL.

Compressive (Rae et al. 2020): the vectors leaving the mems are compressed by c (compressive.py)
into a cmem of cmem_len slots; attention runs over [cmem; mem; segment]. To compress whole
groups only, a row evicts a multiple of c vectors, so its STM holds between mem_len and
mem_len + c - 1 vectors. aux_loss = recon_weight · Σ_layers attention-reconstruction loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..memory import LTMState
from ..utils import check_int, describe
from .compressive import concat_right_aligned, reconstruction_loss, take_evicted
from .config import ModelConfig
from .layers import Block, sinusoid
from .state import LMState


@dataclass
class LMOutput:
    """logits (batch, T, V); loss: mean cross-entropy over counted positions (None without
    targets); aux_loss: weighted KL (infinite*) or reconstruction loss (compressive), 0 for xl.

    extras: "nll_sum" and "n_targets" (sum / count behind loss), "kl" and "recon" per layer
    (unweighted, (n_layers,)), "ltm_length" (batch,) tokens absorbed by the LTM (layer 0),
    and with return_densities=True "ltm_mu"/"ltm_sigma2": per layer (batch, H, T).
    """

    logits: Tensor
    loss: Tensor | None
    aux_loss: Tensor
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SegmentLayout:
    """Where everything sits in one call, the same for every layer (memories are right-aligned
    with per-row counts; see the module docstring). b rows, segment length T.

    stm_keep (b,): layer inputs each row keeps as mems after this call; stm_width: their max.
    leaving: vectors leaving [mem; segment] on the left this call (the LTM's pending vectors).
    window: memory positions attended before the segment (cmem width + mem width, or mem width).
    pos (window + T, e): the sinusoids R; mask (b, 1, T, window + T): True where attention is allowed.
    Compressive: evict (b,) vectors each row compresses (evict_width their max), new_slots (b,)
    slots each row gains, cmem_valid (b,) / cmem_width: the new compressed memory's counts / width.
    ∞-former: pending_count (b,) vectors each row hands to the LTM, absorbed at the next call;
    absorb_counts: the distinct non-zero counts the last call handed over, absorbed now.
    """

    stm_keep: Tensor
    stm_width: int
    leaving: int
    window: int
    pos: Tensor
    mask: Tensor
    evict: Tensor | None = None
    evict_width: int = 0
    new_slots: Tensor | None = None
    cmem_width: int = 0
    cmem_valid: Tensor | None = None
    pending_count: Tensor | None = None
    absorb_counts: list[int] = field(default_factory=list)


class InfiniteFormerLM(nn.Module):
    """Decoder-only LM, Transformer-XL recurrence, memory type chosen by config (module doc)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        for name, module in self.named_modules():  # the LTM keeps its own initialisation
            if ".ltm" not in name:
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

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> LMState:
        """Empty memories for batch_size streams."""
        c = self.config
        check_int("batch_size", batch_size, 1)
        dtype = self.embed.weight.dtype
        empty = lambda: torch.zeros(batch_size, 0, c.d_model, device=device, dtype=dtype)  # noqa: E731
        count = lambda: torch.zeros(batch_size, dtype=torch.long, device=device)  # noqa: E731
        return LMState(
            mems=[empty() for _ in range(c.n_layers)],
            mem_valid=count(),
            cmems=[empty() for _ in range(c.n_layers)] if c.uses_cmem else [],
            cmem_valid=count() if c.uses_cmem else None,
            ltm=[blk.ltm.init_state(batch_size, device) for blk in self.layers] if c.uses_ltm else [],
            ltm_pending=[empty() for _ in range(c.n_layers)] if c.uses_ltm else [],
            ltm_pending_count=count() if c.uses_ltm else None,
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
    ) -> tuple[LMOutput, LMState]:
        """tokens (batch, T) -> (LMOutput, new state). The new mems are detached; the returned
        state is not (LTM coefficients carry the gate's graph): call state.detach() between
        truncated-backprop windows. Targets < 0 are ignored in the loss, like loss_mask False."""
        b, T = self._check_inputs(tokens, state, targets, loss_mask)
        if state is None:
            state = self.init_state(b, tokens.device)
        h = self.drop(self.embed(tokens))  # (b, T, e)
        layout = self._layout(state, T, h)  # where everything sits: the same for every layer

        new = LMState(mems=[], mem_valid=layout.stm_keep, cmem_valid=layout.cmem_valid)
        new.ltm_pending_count = layout.pending_count
        kls, recons, mus, sigma2s = [], [], [], []
        idle: list[Tensor] = []  # parameters this call does not use (see _aux_loss)
        for layer, blk in enumerate(self.layers):
            block = torch.cat([state.mems[layer], h], dim=1)  # (b, S, e) right-aligned [mem; segment]
            x = blk.ln1(self._window(state, layer, block, h, layout))  # (b, window + T, e)
            z = blk.attn(x, T, layout.pos, layout.mask)  # short-term attention Z_STM, after W_O
            if blk.ltm is not None:
                queries = x[:, -T:]
                ltm_state = self._absorb(blk, state.ltm[layer], state.ltm_pending[layer], state, layout)
                if return_densities:
                    mu, sigma2, _ = blk.ltm.densities(queries, ltm_state)
                    mus.append(mu)
                    sigma2s.append(sigma2)
                z_ltm, ltm_state, kl = blk.ltm(queries, None, ltm_state, return_kl=True)  # long-term read
                z = z + z_ltm  # Z = Z_STM + Z_LTM, before the residual
                kls.append(kl)
                new.ltm.append(ltm_state)
                new.ltm_pending.append(block[:, : layout.leaving].detach())  # absorbed next call
                if not layout.absorb_counts and blk.ltm.gate is not None:
                    idle.extend(blk.ltm.gate.parameters())
            if blk.compressor is not None:
                cmem, recon = self._compress(blk, state.cmems[layer], state.cmem_valid, block, h, layout)
                new.cmems.append(cmem)
                recons.append(recon)
                if layout.evict_width == 0:
                    idle.extend(blk.compressor.parameters())
            new.mems.append(block[:, block.shape[1] - layout.stm_width :].detach())
            h = h + blk.drop(z)
            h = h + blk.ff(blk.ln2(h))

        logits = self.head(self.ln_f(h))
        aux, extras = self._aux_loss(logits, kls, recons, idle, new)
        if return_densities and mus:
            extras["ltm_mu"], extras["ltm_sigma2"] = mus, sigma2s
        loss = None
        if targets is not None:
            loss, extras["nll_sum"], extras["n_targets"] = self._loss(logits, targets, loss_mask)
        return LMOutput(logits=logits, loss=loss, aux_loss=aux, extras=extras), new

    # ----------------------------------------------------------------------- steps

    def _layout(self, state: LMState, T: int, like: Tensor) -> SegmentLayout:
        """The memory layout of this call: per-row counts, widths, positions and the attention mask."""
        c = self.config
        mem_width = state.mems[0].shape[1]
        block_width = mem_width + T  # [mem; segment]
        mem_valid = state.mem_valid
        evict = new_slots = cmem_valid = None
        evict_width = cmem_width = 0
        if c.uses_cmem:
            # a row evicts whole groups of c vectors, so its STM keeps mem_len .. mem_len + c - 1
            evict = (mem_valid + T - c.mem_len).clamp_min(0) // c.compression_rate * c.compression_rate
            keep = mem_valid + T - evict
            stm_width = int(keep.max())
            evict_width = int(evict.max())
            new_slots = evict // c.compression_rate
            cmem_width = min(c.cmem_len, int((state.cmem_valid + new_slots).max()))
            cmem_valid = (state.cmem_valid + new_slots).clamp_max(c.cmem_len)
            attended = state.cmem_valid + mem_valid  # valid memory entries each row attends to
            window = state.cmems[0].shape[1] + mem_width
        else:
            keep = (mem_valid + T).clamp_max(c.mem_len)
            stm_width = min(c.mem_len, block_width)
            attended, window = mem_valid, mem_width
        pending_count = absorb_counts = None
        if c.uses_ltm:
            pending_count = mem_valid + T - keep  # leave the STM now, enter the LTM next call
            absorb_counts = sorted({int(n) for n in state.ltm_pending_count.tolist()} - {0})

        length = window + T
        dev = like.device
        pos = self.drop(sinusoid(length, c.d_model, dev, like.dtype))
        i = torch.arange(T, device=dev)[:, None]
        j = torch.arange(length, device=dev)[None, :]
        causal = j <= (window + i)  # (T, window + T)
        mem_ok = j[None] >= (window - attended)[:, None, None]  # (b, 1, window + T)
        return SegmentLayout(
            stm_keep=keep,
            stm_width=stm_width,
            leaving=block_width - stm_width,
            window=window,
            pos=pos,
            mask=(causal[None] & mem_ok)[:, None],  # (b, 1, T, window + T)
            evict=evict,
            evict_width=evict_width,
            new_slots=new_slots,
            cmem_width=cmem_width,
            cmem_valid=cmem_valid,
            pending_count=pending_count,
            absorb_counts=absorb_counts or [],
        )

    def _window(self, state: LMState, layer: int, block: Tensor, h: Tensor, layout: SegmentLayout) -> Tensor:
        """What the layer attends over, before LN₁: [cmem; mem; segment] (compressive) or
        [mem; segment]: (b, window + T, e)."""
        if not self.config.uses_cmem:
            return block
        memory = concat_right_aligned(
            state.cmems[layer], state.cmem_valid, state.mems[layer], state.mem_valid, layout.window
        )
        return torch.cat([memory, h], dim=1)

    @staticmethod
    def _absorb(
        blk: Block, ltm_state: LTMState, pending: Tensor, state: LMState, layout: SegmentLayout
    ) -> LTMState:
        """Absorb each row's pending vectors (its last state.ltm_pending_count[i]) into the LTM.

        Rows usually share one count; otherwise one batched update per distinct count (not per
        row), each row taking the result of its own count, so every row gets exactly the fit a
        lone stream would get."""
        if pending.shape[1] == 0 or not layout.absorb_counts:
            return ltm_state
        width = pending.shape[1]
        x = blk.ln1(pending)
        out = ltm_state
        for n in layout.absorb_counts:
            out = out.merge(blk.ltm.update(ltm_state, x[:, width - n :]), state.ltm_pending_count == n)
        return out

    def _compress(
        self, blk: Block, cmem: Tensor, cmem_valid: Tensor, block: Tensor, h: Tensor, layout: SegmentLayout
    ) -> tuple[Tensor, Tensor]:
        """Compress the vectors leaving the mems into new slots: (new cmem, reconstruction loss)."""
        old = take_evicted(block, layout.stm_keep, layout.evict, layout.evict_width).detach()  # (b, E, e)
        comp = blk.compressor(old)  # (b, E/c, e)
        key_value = lambda t: blk.attn.key_value(blk.norm_detached(t), detach=True)  # noqa: E731
        queries = blk.attn.query(blk.norm_detached(h.detach()), detach=True)
        recon = reconstruction_loss(
            queries, old, layout.evict, comp, layout.new_slots, key_value, blk.attn.n_heads
        )
        cmem = concat_right_aligned(cmem, cmem_valid, comp.detach(), layout.new_slots, layout.cmem_width)
        return cmem, recon

    def _aux_loss(
        self, logits: Tensor, kls: list[Tensor], recons: list[Tensor], idle: list[Tensor], new: LMState
    ) -> tuple[Tensor, dict[str, Any]]:
        """kl_weight · Σ KL (∞-former) or recon_weight · Σ reconstruction (compressive), else 0."""
        c = self.config
        extras: dict[str, Any] = {}
        if kls:
            aux = c.ltm.kl_weight * torch.stack(kls).sum()
            extras["kl"] = torch.stack(kls).detach()
            extras["ltm_length"] = new.ltm[0].length
        elif recons:
            aux = c.recon_weight * torch.stack(recons).sum()
            extras["recon"] = torch.stack(recons).detach()
        else:
            aux = logits.new_zeros(())
        if idle and torch.is_grad_enabled():
            # 0·Σp keeps every parameter in the graph (gradient 0) in calls that do not use it
            # (LTM gate before anything left the STM, compressor before anything was evicted),
            # so DDP works without find_unused_parameters.
            aux = aux + 0.0 * sum(p.sum() for p in idle)
        return aux, extras

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
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= c.vocab_size):
            raise ValueError(
                f"tokens must be in [0, {c.vocab_size}), got range [{int(tokens.min())}, {int(tokens.max())}]"
            )
        if targets is not None:
            if not isinstance(targets, Tensor) or targets.shape != (b, T) or targets.dtype != torch.long:
                raise ValueError(f"targets must be a ({b}, {T}) LongTensor, got {describe(targets)}")
            if int(targets.max()) >= c.vocab_size:
                raise ValueError(f"targets must be < vocab_size={c.vocab_size} (negative = ignored)")
        if loss_mask is not None and (
            not isinstance(loss_mask, Tensor) or loss_mask.shape != (b, T) or loss_mask.dtype != torch.bool
        ):
            raise ValueError(f"loss_mask must be a ({b}, {T}) bool tensor, got {describe(loss_mask)}")
        if state is not None:
            if not isinstance(state, LMState):
                raise ValueError(f"state must be a LMState or None, got {type(state).__name__}")
            if state.batch_size != b:
                raise ValueError(f"state has batch size {state.batch_size} but tokens have {b}")
            if len(state.mems) != c.n_layers:
                raise ValueError(
                    f"state has {len(state.mems)} layers of mems, expected n_layers={c.n_layers}"
                )
            if c.uses_cmem and (len(state.cmems) != c.n_layers or state.cmem_valid is None):
                raise ValueError("state has no compressed memory, expected one for memory_type 'compressive'")
            if c.uses_ltm and (len(state.ltm) != c.n_layers or state.ltm_pending_count is None):
                raise ValueError(
                    f"state has no long-term memory, expected one for memory_type {c.memory_type!r}"
                )
        return b, T


def zero_ltm_output(model: nn.Module) -> None:
    """Zero every layer's LTM output projection, so an ∞-former starts as a Transformer-XL with the
    same short-term memory (the LTM's contribution grows from 0 as it trains), like the GPT-2 model."""
    with torch.no_grad():
        for blk in model.layers:
            if blk.ltm is not None:
                blk.ltm.out.weight.zero_()
                blk.ltm.out.bias.zero_()
