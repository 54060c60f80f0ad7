"""LongTermAttention: continuous attention over the unbounded memory (paper §2-4).

    out, state = ltm(queries, new_vectors, state)

1. new_vectors (batch, L, e) are gated (k ⊙ sigmoid(Conv1d(k))) and absorbed
   into the memory: contraction by τ, M samples, refit of B (memory.py).
2. Keys and values come from the coefficients: K = B W_K, V = B W_V.
3. Per head h and query i: s = K_h q_{h,i} / √d ∈ ℝ^N, μ = sigmoid(w_μᵀ s),
   σ² = softplus(w_σᵀ s) (w_μ, w_σ ∈ ℝ^N shared by the heads).
4. z = V_hᵀ E_p[ψ] with p = 𝒩(μ, σ²) (or the continuous sparsemax), then W_O.

The state is passed in and returned, never stored on the module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .basis import GaussianBasis
from .continuous import NORMALIZERS
from .memory import LTMState, bin_mass, update_memory
from .utils import autocast_off, check_int, config_from_dict, describe


@dataclass
class LTMConfig:
    """Hyperparameters of one long-term attention layer (paper symbols in brackets).

    Defaults follow the official GPT-2 configuration: N = M = 512, τ = 0.5,
    widths {0.005, 0.01}, λ = 0.5, D = 128 bins, σ² >= 1e-4, σ₀ = 0.05.
    """

    d_model: int  # e
    n_heads: int  # H
    num_basis: int = 512  # N
    num_samples: int = 512  # M
    tau: float = 0.5  # τ
    widths: tuple[float, ...] = (0.005, 0.01)  # σ_k of the RBFs
    ridge_lambda: float = 0.5  # λ
    edge_padding: bool = False
    sticky: bool = True
    num_bins: int = 128  # D
    normalizer: str = "softmax"  # or "sparsemax"
    min_sigma2: float = 1e-4
    kl_sigma0: float = 0.05  # σ₀ of the KL regularizer
    gate: bool = True
    zero_init_output: bool = False  # start with out == 0 (e.g. to extend a pretrained model)
    check_finite: bool = True

    def __post_init__(self) -> None:
        self.widths = tuple(float(w) for w in self.widths)
        check_int("d_model", self.d_model)
        check_int("n_heads", self.n_heads)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        check_int("num_basis", self.num_basis, minimum=2, symbol="N")
        check_int("num_samples", self.num_samples, symbol="M")
        check_int("num_bins", self.num_bins, symbol="D")
        if not (0.0 < self.tau < 1.0):
            raise ValueError(f"tau (τ) must be in (0, 1), got {self.tau!r}")
        if not self.widths or any(not (w > 0) or not math.isfinite(w) for w in self.widths):
            raise ValueError(f"widths must be positive finite numbers, got {self.widths!r}")
        if self.num_basis % len(self.widths):
            raise ValueError(
                f"num_basis (N={self.num_basis}) must be a multiple of len(widths)={len(self.widths)}"
            )
        for name in ("ridge_lambda", "min_sigma2", "kl_sigma0"):
            value = getattr(self, name)
            if not (value > 0) or not math.isfinite(value):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if self.normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {sorted(NORMALIZERS)}, got {self.normalizer!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LTMConfig:
        return config_from_dict(cls, d)


@dataclass(frozen=True)
class MemoryProjections:
    """The projections of one memory state B that every read of it shares.

    values:        V = B W_V per head, (batch, H, N, d), in the queries' dtype.
    score_weights: W_{Q,h}ᵀ (B W_K)ᵀ [w_μ, w_σ] per head, (batch, e, H·2), in >= float32.

    They change only when B does (once per absorbed block), so token-by-token decoding
    computes them once per block. Tied to the weights they were computed with.
    """

    values: Tensor
    score_weights: Tensor

    def select(self, rows: Tensor) -> MemoryProjections:
        return MemoryProjections(self.values[rows], self.score_weights[rows])

    def detach(self) -> MemoryProjections:
        return MemoryProjections(self.values.detach(), self.score_weights.detach())

    def to(self, *args, **kwargs) -> MemoryProjections:
        return MemoryProjections(self.values.to(*args, **kwargs), self.score_weights.to(*args, **kwargs))


def gaussian_kl(sigma2: Tensor, sigma0: float) -> Tensor:
    """KL(𝒩(μ, σ²) ‖ 𝒩(μ, σ₀²)) = ½(σ²/σ₀² - log(σ²/σ₀²) - 1), elementwise."""
    ratio = sigma2 / sigma0**2
    return 0.5 * (ratio - torch.log(ratio) - 1.0)


class LongTermAttention(nn.Module):
    """Continuous attention over an unbounded long-term memory (the ∞-former LTM)."""

    def __init__(self, config: LTMConfig) -> None:
        super().__init__()
        self.config = config
        e, n = config.d_model, config.num_basis
        self.head_dim = e // config.n_heads
        self.basis = GaussianBasis(n, config.widths)
        self.normalizer = NORMALIZERS[config.normalizer](self.basis)
        self.query = nn.Linear(e, e, bias=False)
        self.key = nn.Linear(e, e, bias=False)
        self.value = nn.Linear(e, e, bias=False)
        self.out = nn.Linear(e, e)
        self.mu_proj = nn.Linear(n, 1)  # w_μ, shared across heads
        self.sigma_proj = nn.Linear(n, 1)  # w_σ
        self.gate = nn.Conv1d(e, e, kernel_size=3, padding=1) if config.gate else None
        if config.zero_init_output:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    # ----------------------------------------------------------------- state

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> LTMState:
        """An empty memory for batch_size streams."""
        c = self.config
        return LTMState.empty(batch_size, c.num_basis, c.d_model, c.num_bins, device, dtype)

    def update(
        self, state: LTMState, new_vectors: Tensor, generator: torch.Generator | None = None
    ) -> LTMState:
        """Gate (optional) and absorb new_vectors (batch, L, e) into the memory."""
        x = new_vectors
        if self.gate is not None and x.shape[1] > 0:
            x = x * torch.sigmoid(self.gate_logits(x))
        c = self.config
        return update_memory(
            state,
            x,
            self.basis,
            num_samples=c.num_samples,
            tau=c.tau,
            ridge_lambda=c.ridge_lambda,
            edge_padding=c.edge_padding,
            sticky=c.sticky,
            generator=generator,
        )

    def gate_logits(self, x: Tensor) -> Tensor:
        """Conv1d_{e→e, kernel 3}(x) over the L positions: (batch, L, e) -> (batch, L, e).

        Same numbers as self.gate(x.transpose(1, 2)).transpose(1, 2), computed as one
        (batch·L, 3e) × (3e, e) matmul over the three shifted copies of x, which is
        faster than a channels-first convolution and needs no transposes.
        """
        assert self.gate is not None
        length = x.shape[1]
        padded = F.pad(x, (0, 0, 1, 1))  # (batch, L + 2, e)
        window = torch.cat([padded[:, k : k + length] for k in range(3)], dim=-1)  # (batch, L, 3e)
        weight = self.gate.weight.permute(0, 2, 1).reshape(self.gate.out_channels, -1)  # (e, 3e)
        return F.linear(window, weight, self.gate.bias)

    # ------------------------------------------------------------- attention

    def projections(self, state: LTMState, dtype: torch.dtype | None = None) -> MemoryProjections:
        """What every read of one memory state needs from B, computed once (e.g. once per block).

        V = B W_V per head, and W_{Q,h}ᵀ (W_K Bᵀ [w_μ, w_σ])_h per head, so that a query x gives
        the paper's w_μᵀ s = x · (W_{Q,h}ᵀ K_hᵀ w_μ) (s = K_h q_h, K = B W_K) without materialising
        K, the (batch, H, q, N) scores or even q_h = W_Q x. dtype: that of the queries (default
        B's); the score weights are kept in at least float32.
        """
        b = state.coeffs.shape[0]
        h, d = self.config.n_heads, self.head_dim
        coeffs = state.coeffs  # B: (batch, N, e), float32 or wider
        dtype = dtype or coeffs.dtype
        values = self.value(coeffs.to(dtype)).view(b, -1, h, d).transpose(1, 2)  # (batch, H, N, d)
        with autocast_off(coeffs.device.type):
            work = torch.promote_types(dtype, torch.float32)  # μ, σ² in >= float32
            w = torch.cat([self.mu_proj.weight, self.sigma_proj.weight]).to(coeffs.dtype)  # (2, N)
            wb = torch.matmul(w, coeffs)  # w_μᵀB, w_σᵀB: (batch, 2, e)
            wk = self.key(wb.to(self.key.weight.dtype)).to(work).view(b, 2, h, d)  # Kᵀw: (batch, 2, H, d)
            w_query = self.query.weight.to(work).view(h, d, -1)  # W_{Q,h}: (H, d, e)
            scores = torch.einsum("hde,bjhd->behj", w_query, wk).flatten(2)  # (batch, e, H·2)
        return MemoryProjections(values=values, score_weights=scores.contiguous())

    def densities(
        self, queries: Tensor, state: LTMState, projections: MemoryProjections | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """μ, σ² (batch, H, q) of each query's density, and V heads (batch, H, N, d).

        μ = sigmoid(w_μᵀ s), σ² = softplus(w_σᵀ s), s = K_h q_h / √d, computed as
        x · (W_{Q,h}ᵀ K_hᵀ w) / √d with the projections of the state (see ``projections``).
        """
        if projections is None:
            projections = self.projections(state, queries.dtype)
        b, q, _ = queries.shape
        h, d = self.config.n_heads, self.head_dim
        weights = projections.score_weights  # (batch, e, H·2)
        with autocast_off(queries.device.type):
            bias = torch.cat([self.mu_proj.bias, self.sigma_proj.bias]).to(weights.dtype)  # (2,)
            scores = torch.matmul(queries.to(weights.dtype), weights)  # (batch, q, H·2)
            logits = scores.view(b, q, h, 2).transpose(1, 2) / math.sqrt(d) + bias  # (batch, H, q, 2)
            mu = torch.sigmoid(logits[..., 0])
            sigma2 = F.softplus(logits[..., 1]).clamp_min(self.config.min_sigma2)
        return mu, sigma2, projections.values

    def read(
        self,
        queries: Tensor,
        state: LTMState,
        projections: MemoryProjections | None = None,
        *,
        query_mask: Tensor | None = None,
        return_kl: bool = True,
        sticky_stats: bool | None = None,
        accumulate_mass: bool = False,
    ) -> tuple[Tensor, LTMState, Tensor | None]:
        """Read the memory: (out (batch, q, e), state with the new bin mass, KL (batch, H, q) or None).

        projections: ``self.projections(state, queries.dtype)``, computed here if None; pass it to
            reuse it for every read of the same state (token-by-token decoding).
        query_mask: (batch, q) bool, False for queries that must not count (padding): their KL is 0
            and they add no sticky bin mass. Their output is computed like any other.
        return_kl: compute KL(𝒩(μ, σ²) ‖ 𝒩(μ, σ₀²)) per row, head and query (else None).
        sticky_stats: compute the bin mass for sticky sampling (default: config.sticky).
        accumulate_mass: add the bin mass to the state's instead of replacing it (a block read
            in several calls accumulates the mass of all its queries).
        Rows whose memory is empty get out = 0, KL = 0 and no bin mass.
        """
        b, q, e = queries.shape
        mu, sigma2, values = self.densities(queries, state, projections)
        with autocast_off(queries.device.type):
            if torch.is_grad_enabled() or q > 1:
                context = self.normalizer.context(mu, sigma2, values)  # V_hᵀ E_p[ψ]: (batch, H, q, d)
            else:  # one query without autograd (decoding): E_p[ψ] (batch, H, 1, N) is small, use it
                context = self.normalizer(mu, sigma2).to(values.dtype) @ values
        out = self.out(context.transpose(1, 2).reshape(b, q, e))
        has_memory = state.length > 0  # (batch,)
        # eager: one host read skips the masking where every row has memory; compiled: always mask
        # (exact: a product with ones), so the graph has no break
        every_row = not torch.compiler.is_compiling() and bool(has_memory.all())
        all_rows = query_mask is None and every_row
        valid = has_memory[:, None] if query_mask is None else has_memory[:, None] & query_mask  # (batch, q)
        if not every_row:
            out = out * has_memory[:, None, None].to(out.dtype)
        kl = None
        if return_kl:
            kl = gaussian_kl(sigma2, self.config.kl_sigma0)
            if not all_rows:
                kl = kl * valid[:, None, :]
        if self.config.sticky if sticky_stats is None else sticky_stats:
            weight = None if all_rows else valid[:, None, :].to(mu.dtype)  # (batch, 1, q)
            mass = bin_mass(self.normalizer.cdf, mu.detach(), sigma2.detach(), self.config.num_bins, weight)
            mass = mass.to(state.bin_mass.dtype)
            state = replace(state, bin_mass=state.bin_mass + mass if accumulate_mass else mass)
        return out, state, kl

    def attend(self, queries: Tensor, state: LTMState) -> tuple[Tensor, LTMState, Tensor]:
        """Read the memory: (out (batch, q, e), state with new bin mass, KL (batch, H, q))."""
        return self.read(queries, state)

    def forward(
        self,
        queries: Tensor | None,
        new_vectors: Tensor | None = None,
        state: LTMState | None = None,
        *,
        return_kl: bool = False,
        generator: torch.Generator | None = None,
    ):
        """Absorb new_vectors, then attend with queries.

        queries: (batch, q, e) of the current segment; new_vectors: (batch, L, e)
        entering the memory (None or L = 0: no update); state: None for an
        empty memory. Returns (out (batch, q, e), state), plus the mean KL
        regularizer over rows with memory, heads and queries if return_kl.
        Rows whose memory is empty get out = 0.

        queries None: only absorb new_vectors and return the new state. This is
        ``update`` as a module call, which FSDP's hooks see (hf/fsdp.py).
        """
        if queries is None:
            if new_vectors is None or return_kl:
                raise ValueError("queries=None (absorb only) needs new_vectors and return_kl=False")
            self._check_inputs(new_vectors, None, state, name="new_vectors")
            state = state if state is not None else self.init_state(new_vectors.shape[0], new_vectors.device)
            return self.update(state, new_vectors, generator) if new_vectors.shape[1] > 0 else state
        self._check_inputs(queries, new_vectors, state)
        if state is None:
            state = self.init_state(queries.shape[0], queries.device, queries.dtype)
        if new_vectors is not None and new_vectors.shape[1] > 0:
            state = self.update(state, new_vectors, generator)
        out, state, kl = self.attend(queries, state)
        if not return_kl:
            return out, state
        rows = (state.length > 0).sum().clamp_min(1)
        return out, state, kl.sum() / (rows * kl.shape[1] * kl.shape[2])

    # ---------------------------------------------------------------- checks

    def _check_inputs(
        self, queries: Tensor, new_vectors: Tensor | None, state: LTMState | None, name: str = "queries"
    ) -> None:
        e = self.config.d_model
        if not isinstance(queries, Tensor) or queries.dim() != 3 or queries.shape[-1] != e:
            n = "q" if name == "queries" else "L"
            raise ValueError(f"{name} must be a (batch, {n}, {e}) tensor, got {describe(queries)}")
        batch = queries.shape[0]
        if new_vectors is not None:
            if not isinstance(new_vectors, Tensor) or new_vectors.dim() != 3 or new_vectors.shape[-1] != e:
                raise ValueError(f"new_vectors must be a (batch, L, {e}) tensor, got {describe(new_vectors)}")
            if new_vectors.shape[0] != batch:
                raise ValueError(f"new_vectors has batch size {new_vectors.shape[0]} but queries has {batch}")
        if state is not None:
            if not isinstance(state, LTMState):
                raise ValueError(f"state must be an LTMState or None, got {type(state).__name__}")
            c = self.config
            expected = {
                "coeffs": (batch, c.num_basis, e),
                "length": (batch,),
                "bin_mass": (batch, c.num_bins),
            }
            for name, shape in expected.items():
                got = tuple(getattr(state, name).shape)
                if got != shape:
                    raise ValueError(
                        f"state.{name} has shape {got}, expected {shape} "
                        f"(batch size of state and queries must match)"
                    )
        if self.config.check_finite and not torch.compiler.is_compiling():
            for name, t in (("queries", queries), ("new_vectors", new_vectors)):
                # A finite sum proves every element finite (NaN and Inf propagate); only a
                # non-finite sum (which may also be an overflow) needs the elementwise check.
                if t is not None and t.numel() and not bool(torch.isfinite(t.sum())):
                    if not bool(torch.isfinite(t).all()):
                        raise ValueError(f"{name} contains NaN or Inf values")
