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
        c = self.config
        b, T = self._check_inputs(tokens, state, targets, loss_mask)
        if state is None:
            state = self.init_state(b, tokens.device)
        h = self.drop(self.embed(tokens))  # (b, T, e)
        dev = h.device

        # Bookkeeping shared by all layers (right-aligned memories, per-row counts).
        m = state.mems[0].shape[1]
        S = m + T
        v_mem = state.mem_valid
        if c.uses_cmem:
            evict = (v_mem + T - c.mem_len).clamp_min(0) // c.compression_rate * c.compression_rate
            keep = v_mem + T - evict
            K = int(keep.max())
            E = int(evict.max())
            q_new = evict // c.compression_rate
            C = state.cmems[0].shape[1]
            v_cm = state.cmem_valid
            C_new = min(c.cmem_len, int((v_cm + q_new).max()))
            cmem_valid_new = (v_cm + q_new).clamp_max(c.cmem_len)
            n_mem = v_cm + v_mem  # valid memory entries attended per row
            M_len = C + m
        else:
            keep = (v_mem + T).clamp_max(c.mem_len)
            K = min(c.mem_len, S)
            n_mem, M_len = v_mem, m
        P = S - K  # vectors leaving the STM block (pending for the LTM)
        pend_count = (v_mem + T - keep) if c.uses_ltm else None
        if c.uses_ltm:
            absorb_counts = sorted({int(n) for n in state.ltm_pending_count.tolist()} - {0})

        L = M_len + T
        pos = self.drop(sinusoid(L, c.d_model, dev, h.dtype))
        i = torch.arange(T, device=dev)[:, None]
        j = torch.arange(L, device=dev)[None, :]
        causal = j <= (M_len + i)  # (T, L)
        mem_ok = j[None] >= (M_len - n_mem)[:, None, None]  # (b, 1, L)
        mask = (causal[None] & mem_ok)[:, None]  # (b, 1, T, L)

        new_mems, new_cmems, new_ltm, new_pending = [], [], [], []
        kls, recons, mus, sigma2s = [], [], [], []
        idle: list[Tensor] = []  # parameters this call does not use (see below)
        for layer, blk in enumerate(self.layers):
            mem = state.mems[layer]
            combined = torch.cat([mem, h], dim=1)  # (b, S, e) right-aligned [mem; segment]
            if c.uses_cmem:
                memory = concat_right_aligned(state.cmems[layer], v_cm, mem, v_mem, M_len)
                x = blk.ln1(torch.cat([memory, h], dim=1))
            else:
                x = blk.ln1(combined)
            z = blk.attn(x, T, pos, mask)  # Z_STM after W_O
            if blk.ltm is not None:
                ltm_state = self._absorb(
                    blk, state.ltm[layer], state.ltm_pending[layer], state.ltm_pending_count, absorb_counts
                )
                queries = x[:, -T:]
                if return_densities:
                    mu, sigma2, _ = blk.ltm.densities(queries, ltm_state)
                    mus.append(mu)
                    sigma2s.append(sigma2)
                z_ltm, ltm_state, kl = blk.ltm(queries, None, ltm_state, return_kl=True)
                z = z + z_ltm  # Z = Z_STM + Z_LTM, before the residual
                kls.append(kl)
                new_ltm.append(ltm_state)
                new_pending.append(combined[:, :P].detach())
                if not absorb_counts and blk.ltm.gate is not None:
                    idle.extend(blk.ltm.gate.parameters())
            if c.uses_cmem:
                old = take_evicted(combined, keep, evict, E).detach()  # (b, E, e)
                comp = blk.compressor(old)  # (b, E/c, e)
                key_value = lambda t, blk=blk: blk.attn.key_value(blk.norm_detached(t), detach=True)  # noqa: E731
                queries = blk.attn.query(blk.norm_detached(h.detach()), detach=True)
                recons.append(reconstruction_loss(queries, old, evict, comp, q_new, key_value, c.n_heads))
                new_cmems.append(concat_right_aligned(state.cmems[layer], v_cm, comp.detach(), q_new, C_new))
                if E == 0:
                    idle.extend(blk.compressor.parameters())
            new_mems.append(combined[:, S - K :].detach())
            h = h + blk.drop(z)
            h = h + blk.ff(blk.ln2(h))

        logits = self.head(self.ln_f(h))
        zero = logits.new_zeros(())
        extras: dict[str, Any] = {}
        if kls:
            aux = c.kl_weight * torch.stack(kls).sum()
            extras["kl"] = torch.stack(kls).detach()
            extras["ltm_length"] = new_ltm[0].length
        elif recons:
            aux = c.recon_weight * torch.stack(recons).sum()
            extras["recon"] = torch.stack(recons).detach()
        else:
            aux = zero
        if idle and torch.is_grad_enabled():
            # 0·Σp keeps every parameter in the graph (gradient 0) in calls that do not use it
            # (LTM gate before anything left the STM, compressor before anything was evicted),
            # so DDP works without find_unused_parameters.
            aux = aux + 0.0 * sum(p.sum() for p in idle)
        if return_densities and mus:
            extras["ltm_mu"], extras["ltm_sigma2"] = mus, sigma2s

        loss = None
        if targets is not None:
            counted = targets >= 0
            if loss_mask is not None:
                counted = counted & loss_mask
            nll = F.cross_entropy(
                logits.reshape(-1, c.vocab_size).float(), targets.clamp_min(0).reshape(-1), reduction="none"
            )
            nll_sum = (nll * counted.reshape(-1)).sum()
            n = counted.sum()
            loss = nll_sum / n.clamp_min(1)
            extras["nll_sum"], extras["n_targets"] = nll_sum.detach(), n

        new_state = LMState(
            mems=new_mems,
            mem_valid=keep,
            cmems=new_cmems,
            cmem_valid=cmem_valid_new if c.uses_cmem else None,
            ltm=new_ltm,
            ltm_pending=new_pending,
            ltm_pending_count=pend_count,
        )
        return LMOutput(logits=logits, loss=loss, aux_loss=aux, extras=extras), new_state

    @staticmethod
    def _absorb(
        blk: Block, ltm_state: LTMState, pending: Tensor, counts: Tensor, distinct: list[int]
    ) -> LTMState:
        """Absorb each row's pending vectors (its last counts[i]) into the LTM.

        Rows usually share one count; otherwise one batched update per distinct count (not per
        row), each row taking the result of its own count, so every row gets exactly the fit a
        lone stream would get."""
        if pending.shape[1] == 0 or not distinct:
            return ltm_state
        P = pending.shape[1]
        x = blk.ln1(pending)
        out = ltm_state
        for n in distinct:
            upd = blk.ltm.update(ltm_state, x[:, P - n :])
            rows = counts == n
            out = LTMState(
                coeffs=torch.where(rows[:, None, None], upd.coeffs, out.coeffs),
                length=torch.where(rows, upd.length, out.length),
                bin_mass=out.bin_mass,
            )
        return out

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
