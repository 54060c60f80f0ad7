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


def exp_floor(dtype: torch.dtype) -> float:
    """Smallest exponent whose exp is still a normal number of dtype (≈ -87 in float32).

    Exponents are clamped there before exp: the result differs from the true
    value by less than the smallest normal number, and vectorised exp is ~40x
    slower on arguments that underflow to zero or subnormals.
    """
    return float(math.ceil(math.log(torch.finfo(dtype).tiny)))


def gaussian_pdf(t: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """𝒩(t; mean, var), elementwise with broadcasting."""
    arg = (-0.5 * (t - mean) ** 2 / var).clamp_min(exp_floor(torch.result_type(t, var)))
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
        self.register_buffer("mu", mu, persistent=False)
        self.register_buffer("sigma", sigma, persistent=False)
        # The same layout, factored: ψ_{w·C + c} has centre centres[c] and variance widths2[w].
        n_centres = num_basis // len(self.widths)
        self.register_buffer("centres", mu[:n_centres].clone(), persistent=False)  # (C,)
        self.register_buffer("widths2", sigma[::n_centres] ** 2, persistent=False)  # (W,)

    def params_like(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(μ_k, σ_k) as (N,) tensors on x's device and dtype."""
        return self.mu.to(x.device, x.dtype), self.sigma.to(x.device, x.dtype)

    def factored_like(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(centres (C,), squared widths (W,)) on x's device and dtype (width-major ψ)."""
        return self.centres.to(x.device, x.dtype), self.widths2.to(x.device, x.dtype)

    def forward(self, t: Tensor) -> Tensor:
        """ψ(t): (...,) positions -> (..., N) basis values."""
        centres, widths2 = self.factored_like(t)
        d2 = (t.unsqueeze(-1) - centres).square_().unsqueeze(-2)  # (t - μ_c)²: (..., 1, C)
        log_norm = (-0.5 * torch.log(2.0 * math.pi * widths2)).unsqueeze(-1)  # (W, 1)
        arg = torch.addcmul(log_norm, d2, (-0.5 / widths2).unsqueeze(-1))  # (..., W, C)
        return arg.clamp_min_(exp_floor(arg.dtype)).exp_().flatten(-2)

    def extra_repr(self) -> str:
        return f"N={self.num_basis}, widths={self.widths}"
