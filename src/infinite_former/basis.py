"""Gaussian radial basis functions ψ on [0, 1] (paper §1).

ψ_k(t) = 𝒩(t; μ_k, σ_k²), k = 1..N. The official layout puts N / len(widths)
centres μ_k evenly on [0, 1] and gives every centre each of the widths σ_k
(standard deviations): {0.01, 0.05} for sorting, {0.005, 0.01} for GPT-2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

SQRT_2PI = math.sqrt(2.0 * math.pi)


def gaussian_pdf(t: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """𝒩(t; mean, var), elementwise with broadcasting."""
    return torch.exp(-0.5 * (t - mean) ** 2 / var) / torch.sqrt(2.0 * math.pi * var)


def rbf_layout(num_basis: int, widths: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Centres μ_k and widths σ_k of N Gaussian RBFs, in float64.

    Returns (mu, sigma), each (N,): centre-major, every centre with each width.
    """
    if isinstance(num_basis, bool) or not isinstance(num_basis, int) or num_basis < 2:
        raise ValueError(f"num_basis (N) must be an int >= 2, got {num_basis!r}")
    widths = tuple(float(w) for w in widths)
    if not widths or any(not (w > 0) or not math.isfinite(w) for w in widths):
        raise ValueError(f"widths must be positive finite numbers, got {widths!r}")
    if num_basis % len(widths):
        raise ValueError(f"num_basis (N={num_basis}) must be a multiple of len(widths)={len(widths)}")
    n_centres = num_basis // len(widths)
    centres = torch.linspace(0.0, 1.0, n_centres, dtype=torch.float64)
    if n_centres == 1:
        centres = torch.full((1,), 0.5, dtype=torch.float64)
    mu = centres.repeat_interleave(len(widths))
    sigma = torch.tensor(widths, dtype=torch.float64).repeat(n_centres)
    return mu, sigma


class GaussianBasis(nn.Module):
    """N Gaussian RBFs ψ(t) ∈ ℝ^N on [0, 1].

    Centres and widths are kept as float64 buffers and cast to the dtype and
    device of the positions they are evaluated at.
    """

    mu: Tensor
    sigma: Tensor

    def __init__(self, num_basis: int, widths: Sequence[float] = (0.01, 0.05)) -> None:
        super().__init__()
        mu, sigma = rbf_layout(num_basis, widths)
        self.num_basis = num_basis
        self.widths = tuple(float(w) for w in widths)
        self.register_buffer("mu", mu, persistent=False)
        self.register_buffer("sigma", sigma, persistent=False)

    def params_like(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(μ_k, σ_k) as (N,) tensors on x's device and dtype."""
        return self.mu.to(x.device, x.dtype), self.sigma.to(x.device, x.dtype)

    def forward(self, t: Tensor) -> Tensor:
        """ψ(t): (...,) positions -> (..., N) basis values."""
        mu, sigma = self.params_like(t)
        return gaussian_pdf(t.unsqueeze(-1), mu, sigma**2)

    def extra_repr(self) -> str:
        return f"N={self.num_basis}, widths={self.widths}"
