"""Continuous softmax / sparsemax (PAPER §2): closed forms vs numerical integration, gradients."""

import pytest
import torch

import infinite_former.continuous as cont
from infinite_former.basis import GaussianBasis
from infinite_former.continuous import (
    ContinuousSoftmax,
    ContinuousSparsemax,
    gaussian_context,
    gaussian_expectation,
    sparsemax_cdf,
    sparsemax_expectation,
    sparsemax_pdf,
    sparsemax_support,
)

F64 = torch.float64
# (μ, σ²) including μ outside [0, 1] and tiny σ²
CASES = [
    (0.37, 1e-2),
    (0.0, 1e-4),
    (1.0, 0.3),
    (-0.3, 1e-3),
    (1.4, 2e-2),
    (0.5, 1e-6),
    (0.73, 1e-7),
    (-2.0, 0.8),
]


def simpson(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Composite Simpson over an odd number of evenly spaced points t (dim 0)."""
    h = t[1] - t[0]
    w = torch.ones_like(t)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return (h / 3.0) * (w[:, None] * values).sum(0)


def numerical_expectation(density, lo: float, hi: float, basis: GaussianBasis, step: float) -> torch.Tensor:
    n = int((hi - lo) / step) // 2 * 2 + 1
    t = torch.linspace(lo, hi, max(n, 2001), dtype=F64)
    return simpson(density(t)[:, None] * basis(t), t)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def basis():
    return GaussianBasis(16, (0.01, 0.05)).double()


@pytest.mark.parametrize("mu, sigma2", CASES)
def test_softmax_closed_form_equals_numerical_integration(basis, mu, sigma2):
    sd = sigma2**0.5
    step = min(sd, 0.01) / 200
    num = numerical_expectation(
        lambda t: torch.exp(-0.5 * (t - mu) ** 2 / sigma2) / (2 * torch.pi * sigma2) ** 0.5,
        mu - 14 * sd,
        mu + 14 * sd,
        basis,
        step,
    )
    m, s2 = torch.tensor(mu, dtype=F64), torch.tensor(sigma2, dtype=F64)
    assert rel_err(ContinuousSoftmax(basis)(m, s2), num) <= 1e-6
    assert rel_err(gaussian_expectation(m, s2, basis.mu, basis.sigma), num) <= 1e-6


@pytest.mark.parametrize("mu, sigma2", CASES)
def test_sparsemax_closed_form_equals_numerical_integration(basis, mu, sigma2):
    m, s2 = torch.tensor(mu, dtype=F64), torch.tensor(sigma2, dtype=F64)
    a, _ = sparsemax_support(s2)
    a = a.item()
    step = min(a, 0.01) / 200
    # integrate over the exact support [μ - a, μ + a] (the density has kinks at its ends)
    num = numerical_expectation(lambda t: sparsemax_pdf(t, m, s2), mu - a, mu + a, basis, step)
    assert rel_err(ContinuousSparsemax(basis)(m, s2), num) <= 1e-6
    assert rel_err(sparsemax_expectation(m, s2, basis.mu, basis.sigma), num) <= 1e-6


@pytest.mark.parametrize("normalizer", [ContinuousSoftmax, ContinuousSparsemax])
def test_densities_are_normalised_and_cdf_matches(basis, normalizer):
    norm = normalizer(basis)
    t = torch.linspace(-3, 4, 200001, dtype=F64)
    for mu, sigma2 in [(0.3, 1e-2), (1.2, 0.05)]:
        m, s2 = torch.tensor(mu, dtype=F64), torch.tensor(sigma2, dtype=F64)
        p = norm.density(t, m, s2)
        assert (p >= 0).all()
        assert abs(torch.trapezoid(p, t).item() - 1.0) < 1e-6
        cdf = norm.cdf(t, m, s2)
        num_cdf = torch.cumulative_trapezoid(p, t)
        torch.testing.assert_close(cdf[1:], num_cdf, atol=1e-6, rtol=0)
    assert torch.all(
        sparsemax_cdf(torch.tensor([-10.0, 10.0], dtype=F64), m, s2) == torch.tensor([0.0, 1.0], dtype=F64)
    )


def random_params(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = (torch.rand(shape, generator=g, dtype=F64) * 1.6 - 0.3).requires_grad_()
    sigma2 = (10 ** (torch.rand(shape, generator=g, dtype=F64) * 4 - 5)).requires_grad_()  # 1e-5 .. 0.1
    return mu, sigma2


@pytest.mark.parametrize("normalizer", [ContinuousSoftmax, ContinuousSparsemax])
def test_normalizers_pass_gradcheck_in_mu_and_sigma2(normalizer):
    basis = GaussianBasis(8, (0.05, 0.1)).double()
    mu, sigma2 = random_params((2, 3))
    assert torch.autograd.gradcheck(normalizer(basis), (mu, sigma2))


def test_fused_context_passes_gradcheck_and_equals_the_explicit_product():
    basis = GaussianBasis(8, (0.05, 0.1)).double()
    mu, sigma2 = random_params((2, 3, 4), seed=1)
    values = torch.randn(2, 3, 8, 5, dtype=F64, requires_grad=True)
    z = gaussian_context(mu, sigma2, values, basis)
    ref = gaussian_expectation(mu, sigma2, basis.mu, basis.sigma) @ values
    assert z.shape == (2, 3, 4, 5)
    torch.testing.assert_close(z, ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda m, s, v: gaussian_context(m, s, v, basis), (mu, sigma2, values))


@pytest.mark.parametrize("block", [7, 40, 1 << 20])
def test_fused_context_is_the_same_for_every_block_size(monkeypatch, block):
    """Blocks over groups, over queries, or everything at once: same values and gradients."""
    basis = GaussianBasis(8, (0.05, 0.1)).double()
    mu, sigma2 = random_params((6, 5), seed=2)
    values = torch.randn(6, 8, 3, dtype=F64, requires_grad=True)
    ref = gaussian_expectation(mu, sigma2, basis.mu, basis.sigma) @ values
    ref_grads = torch.autograd.grad(ref.square().sum(), (mu, sigma2, values))
    monkeypatch.setitem(cont._BLOCK_ELEMENTS, "cpu", block)
    z = gaussian_context(mu, sigma2, values, basis)
    grads = torch.autograd.grad(z.square().sum(), (mu, sigma2, values))
    torch.testing.assert_close(z, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_gradient_matches_the_exponential_family_formula():
    """PAPER §2: ∂E_p[ψ]/∂θ = E[φψᵀ] - E[φ]E[ψ]ᵀ with θ = (μ/σ², -1/(2σ²)), φ = (t, t²)."""
    basis = GaussianBasis(6, (0.05, 0.1)).double()
    mu, s2 = torch.tensor(0.4, dtype=F64), torch.tensor(0.02, dtype=F64)
    bm, bs2 = basis.mu, basis.sigma**2
    s = gaussian_expectation(mu, s2, basis.mu, basis.sigma)
    mu_t = (bm * s2 + mu * bs2) / (s2 + bs2)
    var_t = s2 * bs2 / (s2 + bs2)
    e_t, e_t2 = s * mu_t, s * (mu_t**2 + var_t)
    d_theta1 = e_t - mu * s  # ∂E/∂θ1
    d_theta2 = e_t2 - (s2 + mu**2) * s  # ∂E/∂θ2
    # chain rule: θ1 = μ/σ², θ2 = -1/(2σ²)  =>  μ = -θ1/(2θ2), σ² = -1/(2θ2)
    theta1, theta2 = mu / s2, -0.5 / s2
    # ∂E/∂μ = ∂E/∂θ1 · ∂θ1/∂μ = d_theta1 / σ²; ∂E/∂σ² = d_theta1·(-μ/σ⁴) + d_theta2·(1/(2σ⁴))
    d_mu = d_theta1 / s2
    d_s2 = d_theta1 * (-mu / s2**2) + d_theta2 * (0.5 / s2**2)
    jac = torch.autograd.functional.jacobian(lambda m, v: ContinuousSoftmax(basis)(m, v), (mu, s2))
    torch.testing.assert_close(jac[0], d_mu, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(jac[1], d_s2, rtol=1e-9, atol=1e-9)
    assert theta1 > 0 and theta2 < 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_context_in_low_precision_values_is_close_to_float64(dtype):
    basis = GaussianBasis(16, (0.01, 0.05))
    torch.manual_seed(0)
    mu = torch.rand(2, 8)
    sigma2 = torch.rand(2, 8) * 0.01 + 1e-4
    values = torch.randn(2, 16, 4)
    z = gaussian_context(mu, sigma2, values.to(dtype), basis)
    assert z.dtype == dtype and torch.isfinite(z).all()
    ref = gaussian_context(mu.double(), sigma2.double(), values.double(), basis)
    assert rel_err(z.double(), ref) <= (3e-2 if dtype == torch.bfloat16 else 1e-5)


def test_sparsemax_density_has_compact_support_softmax_does_not(basis):
    mu, s2 = torch.tensor(0.5, dtype=F64), torch.tensor(1e-4, dtype=F64)
    a, height = sparsemax_support(s2)
    t = torch.tensor([0.5 - 1.01 * a, 0.5 - 0.99 * a, 0.5, 0.5 + 0.99 * a, 0.5 + 1.01 * a], dtype=F64)
    p = sparsemax_pdf(t, mu, s2)
    assert p[0] == 0 and p[-1] == 0 and (p[1:-1] > 0).all() and torch.isclose(p[2], height)
    assert (ContinuousSoftmax(basis).density(t, mu, s2) > 0).all()


def test_float32_gaussian_cdf_and_bin_masses_match_float64():
    """The erf form of the CDF in float32 against float64 erfc: off only by the float32 rounding of
    z = (t - μ)/√(2σ²) (up to ~4e-6 where σ ~ 3e-3 makes the CDF steep; the erfc form was off as much)."""
    from infinite_former.memory import bin_mass

    g = torch.Generator().manual_seed(3)
    mu = (torch.rand(2, 3, 40, generator=g) * 1.4 - 0.2).double()  # float32 numbers, held in float64
    sigma2 = (10 ** (torch.rand(2, 3, 40, generator=g) * 4 - 5)).double()
    t = torch.linspace(-0.5, 1.5, 301).double()
    ref = 0.5 * torch.erfc((mu[..., None] - t) / torch.sqrt(2 * sigma2[..., None]))  # float64, exact tails
    cdf = cont.gaussian_cdf(t.float(), mu[..., None].float(), sigma2[..., None].float())
    assert cdf.dtype == torch.float32
    assert (cdf.double() - ref).abs().max().item() <= 5e-6
    masses = bin_mass(cont.gaussian_cdf, mu.float(), sigma2.float(), 64)
    ref_masses = bin_mass(cont.gaussian_cdf, mu, sigma2, 64)
    assert (masses.double() - ref_masses).abs().max().item() <= 2.5e-5  # summed over 3 heads x 40 queries


def test_context_without_autograd_is_the_autograd_path():
    """No gradient needed (no_grad passes, decoding): the same blocks, bit for bit, and no graph;
    with gradients the fused Function (E_p[ψ] rebuilt in its backward, never stored)."""
    basis = GaussianBasis(16, (0.02, 0.05))
    g = torch.Generator().manual_seed(4)
    mu = torch.rand(2, 3, 7, generator=g).requires_grad_()
    sigma2 = (torch.rand(2, 3, 7, generator=g) * 0.01 + 1e-4).requires_grad_()
    values = torch.randn(2, 3, 16, 5, generator=g)
    with_graph = gaussian_context(mu, sigma2, values, basis)
    with torch.no_grad():
        without = gaussian_context(mu, sigma2, values, basis)
    fused = with_graph.grad_fn.next_functions[0][0]  # under the final view
    assert "_GaussianContext" in type(fused).__name__ and without.grad_fn is None
    assert torch.equal(with_graph.detach(), without)
    ref = gaussian_expectation(mu.double(), sigma2.double(), basis.mu, basis.sigma) @ values.double()
    torch.testing.assert_close(without.double(), ref, rtol=1e-4, atol=1e-4)
