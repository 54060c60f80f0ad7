"""Reading a LongTermAttention memory with its per-state projections computed once.

LongTermAttention.attend recomputes V = B W_V (N × e × e work) and the
(W_K Bᵀ w_μ, W_K Bᵀ w_σ) projections on every call. They depend only on the
memory coefficients B, which change once per block; during token-by-token
generation this module computes them once per block (``projections``) and
reads the memory with them (``attend``), which keeps the cost per generated
token small and flat. The query projection is folded in too: μ and σ² only
need q_h · (W_K Bᵀ w)_h = x · W_{Q,h}ᵀ (W_K Bᵀ w)_h, so per token the memory
costs an e × 2H product instead of an e × e one. ``attend`` must equal LongTermAttention.attend: tests
check it (tests/test_hf.py::test_cached_read_equals_core_attend).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attention import LongTermAttention, gaussian_kl
from ..memory import MemoryState, bin_mass

Projections = tuple[Tensor, Tensor]  # V heads (batch, H, N, d); W_Qᵀ Kᵀw (batch, e, H·2) float32


def projections(ltm: LongTermAttention, state: MemoryState, dtype: torch.dtype) -> Projections:
    """V = B W_V per head, and W_{Q,h}ᵀ W_K Bᵀ[w_μ, w_σ] per head, for one memory state."""
    b = state.coeffs.shape[0]
    h, d = ltm.config.n_heads, ltm.head_dim
    coeffs = state.coeffs  # B: (batch, N, e)
    values = ltm.value(coeffs.to(dtype)).view(b, -1, h, d).transpose(1, 2)  # (batch, H, N, d)
    with torch.autocast(device_type=coeffs.device.type, enabled=False):
        w = torch.cat([ltm.mu_proj.weight, ltm.sigma_proj.weight]).to(coeffs.dtype)  # (2, N)
        wb = torch.matmul(w, coeffs)  # (batch, 2, e)
        wk = ltm.key(wb.to(ltm.key.weight.dtype)).float()  # (batch, 2, e)
        wk = wk.view(b, 2, h, d)  # (batch, 2, H, d)
        w_query = ltm.query.weight.float().view(h, d, -1)  # W_Q per head: (H, d, e)
        qwk = torch.einsum("hde,bjhd->behj", w_query, wk).flatten(2).contiguous()  # (batch, e, H·2)
    return values, qwk


def attend(
    ltm: LongTermAttention,
    queries: Tensor,
    state: MemoryState,
    proj: Projections,
    need_kl: bool = True,
) -> tuple[Tensor, MemoryState, Tensor | None]:
    """Same as ltm.attend(queries, state) given proj = projections(ltm, state, queries.dtype).

    need_kl=False skips the KL regularizer (returned as None), e.g. at inference.
    """
    b, q, e = queries.shape
    h, d = ltm.config.n_heads, ltm.head_dim
    if ltm.query.bias is not None:
        raise ValueError("ltm_read.attend expects a query projection without bias")
    values, qwk = proj
    with torch.autocast(device_type=queries.device.type, enabled=False):
        bias = torch.cat([ltm.mu_proj.bias, ltm.sigma_proj.bias]).float()  # (2,)
        scores = torch.matmul(queries.float(), qwk)  # x · W_Qᵀ Kᵀw: (batch, q, H·2)
        logits = scores.view(b, q, h, 2).transpose(1, 2) / math.sqrt(d) + bias  # (batch, H, q, 2)
        mu = torch.sigmoid(logits[..., 0])
        sigma2 = F.softplus(logits[..., 1]).clamp_min(ltm.config.min_sigma2)
        if hasattr(ltm.normalizer, "context") and (torch.is_grad_enabled() or q > 1):
            context = ltm.normalizer.context(mu, sigma2, values)  # V_hᵀ E_p[ψ], E_p[ψ] never stored
        else:  # a few queries without autograd: E_p[ψ] (batch, H, q, N) is small, use it directly
            context = ltm.normalizer(mu, sigma2).to(values.dtype) @ values  # (batch, H, q, d)
    out = ltm.out(context.transpose(1, 2).reshape(b, q, e))
    has_memory = state.length > 0
    all_rows = bool(has_memory.all())
    if not all_rows:
        out = out * has_memory[:, None, None].to(out.dtype)
    kl = None
    if need_kl:
        kl = gaussian_kl(sigma2, ltm.config.kl_sigma0)
        if not all_rows:
            kl = kl * has_memory[:, None, None]
    if ltm.config.sticky:
        mass = bin_mass(ltm.normalizer.cdf, mu.detach(), sigma2.detach(), ltm.config.num_bins)
        if not all_rows:
            mass = mass * has_memory[:, None]
        state = replace(state, bin_mass=mass.to(state.bin_mass.dtype))
    return out, state, kl
