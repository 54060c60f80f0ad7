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

For the attention itself, :func:`gaussian_context` computes the context
z = E_p[ψ]ᵀ V (PAPER §2) without ever storing the (…, q, N) matrix E_p[ψ]:
it is built chunk by chunk over the queries in the forward and rebuilt in
the backward (like flash attention), with closed-form gradients for μ and σ².
σ² + σ_k² takes only W = len(widths) values per query, so with the
width-major RBF layout E_p[ψ] costs one fused multiply-add and one exp over
contiguous (..., W, C) blocks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .basis import GaussianBasis, flush_exp_, gaussian_pdf, negligible

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


def factored_gaussian_expectation(
    mu: Tensor, sigma2: Tensor, centres: Tensor, widths2: Tensor, peak: float
) -> tuple[Tensor, Tensor, Tensor]:
    """E_{𝒩(μ,σ²)}[ψ] for the width-major RBF layout, plus the pieces its gradient needs.

    mu, sigma2: (...,); centres: (C,) centres μ_c; widths2: (W,) variances σ_w²,
    with ψ_{w·C+c} = 𝒩(·; μ_c, σ_w²) and N = W·C; peak: the basis peak P (GaussianBasis.peak),
    which bounds every entry since 𝒩(μ; μ_c, σ² + σ_w²) <= 1/√(2πσ_w²). Entries below
    θ = ε·P/N are exact zeros (``negligible``: z = E_p[ψ]ᵀV moves by at most ε·P·max|V|).
    Returns E (..., N), d = μ - μ_c (..., 1, C) and r = 1/(σ² + σ_w²) (..., W, 1).
    """
    r = torch.reciprocal(sigma2.unsqueeze(-1) + widths2).unsqueeze(-1)  # (..., W, 1)
    d = (mu.unsqueeze(-1) - centres).unsqueeze(-2)  # (..., 1, C)
    log_norm = 0.5 * torch.log(r * (0.5 / math.pi))  # log 𝒩 normaliser: (..., W, 1)
    # log E = log_norm - ½ d² r over (..., W, C), then exp in place. A multiply and an add in place
    # rather than one addcmul: broadcasting three inputs makes addcmul ~2x slower on the CPU.
    arg = (d * d).mul(-0.5 * r).add_(log_norm)
    theta = negligible(arg.dtype, peak, arg.shape[-1] * arg.shape[-2])
    return flush_exp_(arg, theta).flatten(-2), d, r


# Elements of one block of E_p[ψ]: on CPU a block stays below glibc's mmap threshold
# (32 MiB, larger blocks are page-faulted in afresh on every allocation) and near cache;
# accelerators take the whole (G, q, N) at once.
_BLOCK_ELEMENTS = {"cpu": 1 << 20}
_BLOCK_ELEMENTS_DEFAULT = 1 << 28


def _blocks(groups: int, queries: int, num_basis: int, device: torch.device) -> list[tuple[slice, slice]]:
    """(group slice, query slice) blocks covering (G, q): whole groups while they fit."""
    target = _BLOCK_ELEMENTS.get(device.type, _BLOCK_ELEMENTS_DEFAULT)
    per_group = queries * num_basis
    if per_group <= target:
        step = max(1, target // per_group)
        return [(slice(g, g + step), slice(None)) for g in range(0, groups, step)]
    step = max(1, target // (groups * num_basis))
    return [(slice(None), slice(q, q + step)) for q in range(0, queries, step)]


def _context_blocks(
    mu: Tensor,
    sigma2: Tensor,
    values: Tensor,
    centres: Tensor,
    widths2: Tensor,
    peak: float,
    keep: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """z = E_{𝒩(μ,σ²)}[ψ]ᵀ V block by block: mu, sigma2 (G, q); values (G, N, d) -> (G, q, d).
    keep: where (G, q) is one block, also return its (E, d, r) (``factored_gaussian_expectation``)."""
    blocks = _blocks(*mu.shape, values.shape[1], mu.device)
    if len(blocks) == 1:  # small reads (most): one block, no output buffer
        expect, d, r = factored_gaussian_expectation(mu, sigma2, centres, widths2, peak)
        return torch.matmul(expect.to(values.dtype), values), ((expect, d, r) if keep else None)
    out = values.new_empty(*mu.shape, values.shape[-1])
    for gs, qs in blocks:
        expect, _, _ = factored_gaussian_expectation(mu[gs, qs], sigma2[gs, qs], centres, widths2, peak)
        out[gs, qs] = torch.matmul(expect.to(values.dtype), values[gs])
    return out, None


class _GaussianContext(torch.autograd.Function):
    """z = E_{𝒩(μ,σ²)}[ψ]ᵀ V per (group, query). E_p[ψ] is rebuilt per block in the backward, never
    stored, unless the whole (G, q, N) is one block (<= _BLOCK_ELEMENTS, a few MB): then the
    forward's E_p[ψ] is kept for the backward, which saves rebuilding it (exp and all)."""

    @staticmethod
    def forward(
        ctx, mu: Tensor, sigma2: Tensor, values: Tensor, centres: Tensor, widths2: Tensor, peak: float
    ) -> Tensor:
        out, kept = _context_blocks(mu, sigma2, values, centres, widths2, peak, keep=True)
        ctx.save_for_backward(mu, sigma2, values, centres, widths2, *(kept or ()))
        ctx.peak, ctx.kept = peak, kept is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        mu, sigma2, values, centres, widths2, *kept = ctx.saved_tensors
        num_widths = widths2.shape[0]
        need_mu, need_s2, need_v = ctx.needs_input_grad[:3]
        grad_mu = torch.zeros_like(mu) if need_mu else None
        grad_s2 = torch.zeros_like(sigma2) if need_s2 else None
        grad_values = (
            torch.zeros_like(values, dtype=torch.promote_types(values.dtype, mu.dtype)) if need_v else None
        )
        blocks = [(slice(None), slice(None))] if ctx.kept else _blocks(*mu.shape, values.shape[1], mu.device)
        for gs, qs in blocks:
            if ctx.kept:
                expect, d, r = kept
            else:
                expect, d, r = factored_gaussian_expectation(
                    mu[gs, qs], sigma2[gs, qs], centres, widths2, ctx.peak
                )
            g = grad_out[gs, qs]  # (g, chunk, d)
            if need_v:
                grad_values[gs] += torch.matmul(expect.to(values.dtype).transpose(-1, -2), g)
            if not (need_mu or need_s2):
                continue
            # a = ∂L/∂E ⊙ E, viewed (g, chunk, W, C); its moments in d = μ - μ_c give the gradients:
            # ∂E/∂μ = -E d r,  ∂E/∂σ² = ½ E r (r d² - 1).
            a = torch.matmul(g, values[gs].transpose(-1, -2)).to(expect.dtype).mul_(expect)
            a = a.unflatten(-1, (num_widths, -1))
            s0 = a.sum(-1, keepdim=True)
            s1 = a.mul_(d).sum(-1, keepdim=True)
            s2 = a.mul_(d).sum(-1, keepdim=True)  # (g, chunk, W, 1)
            if need_mu:
                grad_mu[gs, qs] = -(r * s1).sum((-2, -1))
            if need_s2:
                grad_s2[gs, qs] = 0.5 * (r * (r * s2 - s0)).sum((-2, -1))
        gv = grad_values.to(values.dtype) if need_v else None
        return grad_mu, grad_s2, gv, None, None, None


def gaussian_context(mu: Tensor, sigma2: Tensor, values: Tensor, basis: GaussianBasis) -> Tensor:
    """Continuous-softmax context z = V_hᵀ E_{𝒩(μ,σ²)}[ψ] without storing E_p[ψ].

    mu, sigma2: (..., q) in float32 or float64; values: (..., N, d) (any float
    dtype; E_p[ψ] is cast to it for the product). Returns (..., q, d) in
    values' dtype. Differentiable in mu, sigma2 and values (first order).
    """
    lead = mu.shape[:-1]
    centres, widths2 = basis.factored_like(mu)
    args = (
        mu.reshape(-1, mu.shape[-1]),
        sigma2.reshape(-1, sigma2.shape[-1]),
        values.reshape(-1, *values.shape[-2:]),
        centres,
        widths2,
        basis.peak,
    )
    needs_grad = torch.is_grad_enabled() and (
        mu.requires_grad or sigma2.requires_grad or values.requires_grad
    )
    # without autograd (no_grad passes, decoding) the same blocks, minus the Function's bookkeeping
    out = _GaussianContext.apply(*args) if needs_grad else _context_blocks(*args)[0]
    return out.view(*lead, *out.shape[-2:])


def gaussian_cdf(t: Tensor, mu: Tensor, sigma2: Tensor) -> Tensor:
    """P(T <= t) = ½ + ½·erf((t - μ)/√(2σ²)) for T ~ 𝒩(μ, σ²), broadcasting.

    erf rather than ½·erfc(-z): the same function to within one rounding of ½ (absolute error
    below ε/2, which is all the sticky bin masses, differences of CDFs summed over queries, can
    use), without erfc's slow path for large |z|: ~2-6x faster on the CPU. Tails below ε/2 become 0.
    """
    scale = torch.rsqrt(sigma2) * _INV_SQRT2  # 1/√(2σ²)
    z = (t - mu).mul_(scale)  # (t - μ)/√(2σ²)
    return torch.erf(z).mul_(0.5).add_(0.5)


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
        """E_p[ψ]: mu, sigma2 (...,) -> (..., N)."""
        return factored_gaussian_expectation(mu, sigma2, *self.basis.factored_like(mu), self.basis.peak)[0]

    def context(self, mu: Tensor, sigma2: Tensor, values: Tensor) -> Tensor:
        """z = E_p[ψ]ᵀ V: mu, sigma2 (..., q), values (..., N, d) -> (..., q, d)."""
        return gaussian_context(mu, sigma2, values, self.basis)

    def density(self, t: Tensor, mu: Tensor, sigma2: Tensor) -> Tensor:
        return gaussian_pdf(t, mu, sigma2)

    def cdf(self, t: Tensor, mu: Tensor, sigma2: Tensor) -> Tensor:
        return gaussian_cdf(t, mu, sigma2)


class ContinuousSparsemax(ContinuousSoftmax):
    """Truncated-parabola density; forward returns E_p[ψ] (..., N)."""

    name = "sparsemax"

    def forward(self, mu: Tensor, sigma2: Tensor) -> Tensor:
        """E_p[ψ]: mu, sigma2 (...,) -> (..., N); entries below θ = ε·P/N (and rounding
        negatives) are exact zeros (``negligible``)."""
        expect = sparsemax_expectation(mu, sigma2, *self.basis.params_like(mu))
        theta = negligible(expect.dtype, self.basis.peak, self.basis.num_basis)
        return nn.functional.threshold(expect, theta, 0.0)

    def context(self, mu: Tensor, sigma2: Tensor, values: Tensor) -> Tensor:
        """z = E_p[ψ]ᵀ V: mu, sigma2 (..., q), values (..., N, d) -> (..., q, d)."""
        return self(mu, sigma2).to(values.dtype) @ values

    def density(self, t: Tensor, mu: Tensor, sigma2: Tensor) -> Tensor:
        return sparsemax_pdf(t, mu, sigma2)

    def cdf(self, t: Tensor, mu: Tensor, sigma2: Tensor) -> Tensor:
        return sparsemax_cdf(t, mu, sigma2)


NORMALIZERS: dict[str, type[ContinuousSoftmax]] = {
    "softmax": ContinuousSoftmax,
    "sparsemax": ContinuousSparsemax,
}
