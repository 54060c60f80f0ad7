"""Gaussian radial basis functions ψ on [0, 1] (paper §1).

ψ_k(t) = 𝒩(t; μ_k, σ_k²), k = 1..N. The official layout puts C = N / W
centres evenly on [0, 1] and gives every centre each of the W widths σ_k
(standard deviations): {0.01, 0.05} for sorting, {0.005, 0.01} for GPT-2.

We order the N functions width-major: ψ_{w·C + c} has width σ_w and centre
μ_c (the official code interleaves them; the set is the same, only the index
order differs). Width-major keeps the centre index innermost, which lets the
closed-form expectations run over contiguous (..., W, C) blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .utils import check_int

SQRT_2PI = math.sqrt(2.0 * math.pi)

# GaussianBasis._constants: the layout's numbers per (N, widths, device, dtype), a few dozen floats each
_CONSTANTS: dict[tuple, tuple[Tensor, ...]] = {}


def exp_floor(dtype: torch.dtype) -> float:
    """Smallest exponent whose exp is still a normal number of dtype (≈ -87 in float32).

    Exponents are clamped there before exp: the result differs from the true
    value by less than the smallest normal number, and vectorised exp is ~40x
    slower on arguments that underflow to zero or subnormals.
    """
    return float(math.ceil(math.log(torch.finfo(dtype).tiny)))


def negligible(dtype: torch.dtype, peak: float, terms: int) -> float:
    """θ = ε·peak/terms: entries below θ of a matrix that enters a product are replaced by exact zeros.

    ε is dtype's machine epsilon, peak bounds the matrix's entries (for ψ and E_p[ψ], the basis
    peak P = max_k ψ_k(μ_k) = 1/(√(2π)·min σ_k)) and terms is the length of the sums the matrix
    enters (N for ψ B and E_p[ψ]ᵀ V, L or M for a ridge fit). Error bound: every dropped entry is
    below θ, so each output of the product changes by at most terms·θ·max|other factor| =
    ε·peak·max|other factor|, the rounding error of one term at the peak; far below the product's
    own rounding error bound (~terms·ε·Σ|terms|). Why: entries down at the smallest normal number
    (what exp gives at ``exp_floor``) make products that underflow to subnormals, which Intel CPUs
    process in microcode (a 3.6x slower memory, issue 17); zeros cost nothing on any CPU.

    float64 is the reference precision (tests, operator construction): θ = 0 there, tails are kept
    down to ``exp_floor``.
    """
    if dtype == torch.float64:
        return 0.0
    return torch.finfo(dtype).eps * float(peak) / max(int(terms), 1)


def flush_exp_(arg: Tensor, theta: float) -> Tensor:
    """exp(arg) with values below θ set to exact zeros (see ``negligible``); arg is overwritten.

    arg is clamped just below log θ first, so exp never sees the slow underflow path; the
    clamped entries (and only those below θ) are then zeroed.
    """
    floor = exp_floor(arg.dtype) if theta <= 0 else max(math.log(theta) - 1.0, exp_floor(arg.dtype))
    out = arg.clamp_min_(floor).exp_()
    if theta <= 0:
        return out
    return torch.nn.functional.threshold(out, theta, 0.0, inplace=not out.requires_grad)


def gaussian_pdf(t: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """𝒩(t; mean, var), elementwise with broadcasting."""
    arg = -0.5 * (t - mean) ** 2 / var
    arg = arg.clamp_min(exp_floor(arg.dtype))  # (arg.dtype, not torch.result_type: no graph break)
    return torch.exp(arg) / torch.sqrt(2.0 * math.pi * var)


def check_layout(num_basis: int, widths: Sequence[float]) -> tuple[float, ...]:
    """Raise ValueError unless N >= 2 RBFs split evenly over positive finite widths; returns the widths."""
    check_int("num_basis", num_basis, 2, symbol="N")
    widths = tuple(float(w) for w in widths)
    if not widths or any(not (w > 0) or not math.isfinite(w) for w in widths):
        raise ValueError(f"widths must be positive finite numbers, got {widths!r}")
    if num_basis % len(widths):
        raise ValueError(f"num_basis (N={num_basis}) must be a multiple of len(widths)={len(widths)}")
    return widths


def rbf_layout(num_basis: int, widths: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Centres μ_k and widths σ_k of N Gaussian RBFs, in float64.

    Returns (mu, sigma), each (N,), width-major: index w·C + c has width
    widths[w] and the c-th of C = N / W evenly spaced centres.
    """
    widths = check_layout(num_basis, widths)
    n_centres = num_basis // len(widths)
    centres = torch.linspace(0.0, 1.0, n_centres, dtype=torch.float64)
    if n_centres == 1:
        centres = torch.full((1,), 0.5, dtype=torch.float64)
    mu = centres.repeat(len(widths))
    sigma = torch.tensor(widths, dtype=torch.float64).repeat_interleave(n_centres)
    return mu, sigma


class GaussianBasis(nn.Module):
    """N Gaussian RBFs ψ(t) ∈ ℝ^N on [0, 1].

    Centres and widths are kept as float64 buffers and cast to the dtype and
    device of the positions they are evaluated at.
    """

    mu: Tensor
    sigma: Tensor
    centres: Tensor
    widths2: Tensor

    def __init__(self, num_basis: int, widths: Sequence[float] = (0.01, 0.05)) -> None:
        super().__init__()
        mu, sigma = rbf_layout(num_basis, widths)
        self.num_basis = num_basis
        self.widths = tuple(float(w) for w in widths)
        self.peak = 1.0 / (SQRT_2PI * min(self.widths))  # P = max_k ψ_k(μ_k)
        self.register_buffer("mu", mu, persistent=False)
        self.register_buffer("sigma", sigma, persistent=False)
        # The same layout, factored: ψ_{w·C + c} has centre centres[c] and variance widths2[w].
        n_centres = num_basis // len(self.widths)
        self.register_buffer("centres", mu[:n_centres].clone(), persistent=False)  # (C,)
        self.register_buffer("widths2", sigma[::n_centres] ** 2, persistent=False)  # (W,)

    def params_like(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(μ_k, σ_k) as (N,) tensors on x's device and dtype."""
        return self._constants(x)[:2]

    def factored_like(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(centres (C,), squared widths (W,)) on x's device and dtype (width-major ψ)."""
        return self._constants(x)[2:4]

    def _constants(self, x: Tensor) -> tuple[Tensor, ...]:
        """μ (N,), σ (N,), centres (C,), σ_w² (W,), log 𝒩 normaliser -½log(2πσ_w²) (W, 1) and
        -1/(2σ_w²) (W, 1), in x's device and dtype: built once per (layout, device, dtype) from the
        float64 layout (a cast of fixed numbers, never of learned state), so that the hot path does
        not convert the float64 buffers on every call."""
        key = (self.num_basis, self.widths, x.device, x.dtype)
        got = _CONSTANTS.get(key)
        if got is None:
            with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable by autograd later
                mu, sigma = rbf_layout(self.num_basis, self.widths)
                widths2 = sigma[:: self.num_basis // len(self.widths)] ** 2
                got = tuple(
                    t.to(x.device, x.dtype)
                    for t in (
                        mu,
                        sigma,
                        mu[: self.num_basis // len(self.widths)].clone(),
                        widths2,
                        (-0.5 * torch.log(2.0 * math.pi * widths2)).unsqueeze(-1),
                        (-0.5 / widths2).unsqueeze(-1),
                    )
                )
            _CONSTANTS[key] = got
        return got

    def forward(self, t: Tensor) -> Tensor:
        """ψ(t): (...,) positions -> (..., N) basis values.

        Values below θ = ε·P/N (``negligible``) are exact zeros, so X̄(t) = Bᵀψ(t) is off by at
        most ε·P·max|B| and the product holds no subnormal numbers.
        """
        _, _, centres, _, log_norm, neg_half_inv = self._constants(t)  # log_norm, -1/(2σ_w²): (W, 1)
        d2 = (t.unsqueeze(-1) - centres).square_().unsqueeze(-2)  # (t - μ_c)²: (..., 1, C)
        # a multiply then an add in place: ~2x faster than one addcmul over three broadcast inputs
        arg = d2.mul(neg_half_inv).add_(log_norm)  # (..., W, C)
        return flush_exp_(arg, negligible(arg.dtype, self.peak, self.num_basis)).flatten(-2)

    def extra_repr(self) -> str:
        return f"N={self.num_basis}, widths={self.widths}"
