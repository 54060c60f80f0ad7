"""Continuous attention normalizers: (μ, σ²) -> E_p[ψ(t)] (paper §2).

Each query gets a density p over t ∈ ℝ, parametrised by a location μ and a
scale σ²; the attention context is V_hᵀ E_p[ψ(t)], so all we need from p is
the expectation of every basis function ψ_k, in closed form:

* continuous softmax: p = 𝒩(μ, σ²) and E_p[ψ_k] = 𝒩(μ; μ_k, σ² + σ_k²).
* continuous sparsemax (Martins et al., 2020): p(t) = [A - (t-μ)²/(2σ²)]₊, a
  truncated parabola with support [μ - a, μ + a], a = (3σ²/2)^(1/3),
  A = 3/(4a). E_p[ψ_k] integrates a quadratic against a Gaussian on an
  interval, which has a closed form through Φ and φ.

Gradients come from autograd through these formulas; they equal the
exponential-family expressions of the paper.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .basis import GaussianBasis, gaussian_pdf

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def _std_normal_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _std_normal_interval(lo: Tensor, hi: Tensor) -> Tensor:
    """Φ(hi) - Φ(lo) for lo <= hi without cancellation in the tails."""
    right = 0.5 * (torch.erfc(lo * _INV_SQRT2) - torch.erfc(hi * _INV_SQRT2))
    left = 0.5 * (torch.erfc(-hi * _INV_SQRT2) - torch.erfc(-lo * _INV_SQRT2))
    return torch.where(lo > 0, right, left)


# --------------------------------------------------------------------------- softmax


def gaussian_expectation(mu: Tensor, sigma2: Tensor, basis_mu: Tensor, basis_sigma: Tensor) -> Tensor:
    """E_{𝒩(μ,σ²)}[ψ_k] = 𝒩(μ; μ_k, σ² + σ_k²).

    mu, sigma2: (...,); basis_mu, basis_sigma: (N,). Returns (..., N).
    """
    return gaussian_pdf(mu.unsqueeze(-1), basis_mu, sigma2.unsqueeze(-1) + basis_sigma**2)


def gaussian_cdf(t: Tensor, mu: Tensor, sigma2: Tensor) -> Tensor:
    """P(T <= t) for T ~ 𝒩(μ, σ²), broadcasting."""
    return 0.5 * torch.erfc(-(t - mu) * torch.rsqrt(sigma2) * _INV_SQRT2)


# ------------------------------------------------------------------------- sparsemax


def sparsemax_support(sigma2: Tensor) -> tuple[Tensor, Tensor]:
    """Half-width a and height A of the truncated parabola with scale σ²."""
    a = (1.5 * sigma2) ** (1.0 / 3.0)
    return a, 0.75 / a


def sparsemax_pdf(t: Tensor, mu: Tensor, sigma2: Tensor) -> Tensor:
    """p(t) = [A - (t-μ)²/(2σ²)]₊, broadcasting."""
    _, height = sparsemax_support(sigma2)
    return torch.clamp(height - (t - mu) ** 2 / (2.0 * sigma2), min=0.0)


def sparsemax_cdf(t: Tensor, mu: Tensor, sigma2: Tensor) -> Tensor:
    """P(T <= t) under the truncated parabola, broadcasting."""
    a, height = sparsemax_support(sigma2)
    u = torch.maximum(torch.minimum(t - mu, a), -a)
    return height * (u + a) - (u**3 + a**3) / (6.0 * sigma2)


def sparsemax_expectation(mu: Tensor, sigma2: Tensor, basis_mu: Tensor, basis_sigma: Tensor) -> Tensor:
    """E_p[ψ_k] for the truncated parabola p with location μ and scale σ².

    With u = t - μ, d = μ_k - μ, s = σ_k and z-limits α, β of [-a, a]:
    E = A·I0 - I2/(2σ²), I0 = ∫ 𝒩(u; d, s²), I2 = ∫ u² 𝒩(u; d, s²) over [-a, a].
    mu, sigma2: (...,); basis: (N,). Returns (..., N).
    """
    a, height = sparsemax_support(sigma2)
    a, height, sigma2 = a.unsqueeze(-1), height.unsqueeze(-1), sigma2.unsqueeze(-1)
    d = basis_mu - mu.unsqueeze(-1)
    s = basis_sigma
    alpha, beta = (-a - d) / s, (a - d) / s
    pdf_a, pdf_b = _std_normal_pdf(alpha), _std_normal_pdf(beta)
    i0 = _std_normal_interval(alpha, beta)
    i2 = d * d * i0 + 2.0 * d * s * (pdf_a - pdf_b) + s * s * (i0 + alpha * pdf_a - beta * pdf_b)
    return height * i0 - i2 / (2.0 * sigma2)


# --------------------------------------------------------------------------- modules


class ContinuousSoftmax(nn.Module):
    """Gaussian density 𝒩(μ, σ²) over t; forward returns E_p[ψ] (..., N)."""

    name = "softmax"

    def __init__(self, basis: GaussianBasis) -> None:
        super().__init__()
        self.basis = basis

    def forward(self, mu: Tensor, sigma2: Tensor) -> Tensor:
        return gaussian_expectation(mu, sigma2, *self.basis.params_like(mu))

    def density(self, t: Tensor, mu: Tensor, sigma2: Tensor) -> Tensor:
        return gaussian_pdf(t, mu, sigma2)

    def cdf(self, t: Tensor, mu: Tensor, sigma2: Tensor) -> Tensor:
        return gaussian_cdf(t, mu, sigma2)


class ContinuousSparsemax(ContinuousSoftmax):
    """Truncated-parabola density; forward returns E_p[ψ] (..., N)."""

    name = "sparsemax"

    def forward(self, mu: Tensor, sigma2: Tensor) -> Tensor:
        return sparsemax_expectation(mu, sigma2, *self.basis.params_like(mu))

    def density(self, t: Tensor, mu: Tensor, sigma2: Tensor) -> Tensor:
        return sparsemax_pdf(t, mu, sigma2)

    def cdf(self, t: Tensor, mu: Tensor, sigma2: Tensor) -> Tensor:
        return sparsemax_cdf(t, mu, sigma2)


NORMALIZERS: dict[str, type[ContinuousSoftmax]] = {
    "softmax": ContinuousSoftmax,
    "sparsemax": ContinuousSparsemax,
}
