"""The continuous signal X̄(t) = Bᵀψ(t) (PAPER §1): ridge fit, edge padding, operator cache, stream."""

import math

import pytest
import torch

from infinite_former import ridge
from infinite_former.basis import GaussianBasis, gaussian_pdf, rbf_layout
from infinite_former.memory import LTMState, update_memory

F64 = torch.float64


def smooth(t: torch.Tensor) -> torch.Tensor:
    """A smooth 3-channel test signal on positions t: (T,) -> (T, 3)."""
    return torch.stack(
        [torch.sin(2 * math.pi * t) + 0.3 * t, torch.cos(5 * t) * t, torch.exp(-4 * (t - 0.5) ** 2)], -1
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("widths, lam", [((0.005, 0.01), 0.5), ((0.01, 0.05), 1.0)])
def test_smooth_signal_reconstructed_from_256_basis_functions(widths, lam):
    basis = GaussianBasis(256, widths).double()
    t = ridge.midpoints(1024)
    x = smooth(t)[None]  # (1, L = 1024, 3)
    coeffs = ridge.fit(x, ridge.ridge_operator(t, 256, widths, lam))  # edge_padding=False: the default
    assert coeffs.shape == (1, 256, 3)
    assert rel(ridge.reconstruct(coeffs, basis(t)), x) <= 1e-2
    # also between the sample points
    t_mid = torch.linspace(0.02, 0.98, 777, dtype=F64)
    assert rel(ridge.reconstruct(coeffs, basis(t_mid)), smooth(t_mid)[None]) <= 1e-2


def test_float32_fit_matches_float64():
    widths = (0.005, 0.01)
    t = ridge.midpoints(1024)
    x = smooth(t)[None]
    op64 = ridge.cached_operator("fresh", (1024,), 256, widths, 0.5, False, 0.5, torch.device("cpu"), F64)
    op32 = ridge.cached_operator(
        "fresh", (1024,), 256, widths, 0.5, False, 0.5, torch.device("cpu"), torch.float32
    )
    assert op32.dtype == torch.float32
    assert rel(ridge.fit(x.float(), op32).double(), ridge.fit(x, op64)) <= 1e-5


def test_edge_padding_pulls_the_signal_towards_zero_outside_unit_interval():
    widths, n = (0.005, 0.01), 256
    basis = GaussianBasis(n, widths).double()
    t = ridge.midpoints(1024)
    x = smooth(t)[None]
    outside = torch.cat(
        [torch.linspace(-0.05, -0.01, 20, dtype=F64), torch.linspace(1.01, 1.05, 20, dtype=F64)]
    )
    peaks = {}
    for pad in (False, True):
        coeffs = ridge.fit(x, ridge.ridge_operator(t, n, widths, 0.5, edge_padding=pad))
        peaks[pad] = ridge.reconstruct(coeffs, basis(outside)).abs().max().item()
        inside = ridge.reconstruct(coeffs, basis(torch.linspace(0.05, 0.95, 100, dtype=F64)))
        assert rel(inside, smooth(torch.linspace(0.05, 0.95, 100, dtype=F64))[None]) <= 1e-2
    signal_scale = x.abs().max().item()
    assert peaks[False] > 0.5 * x[0, -1].abs().max().item()  # without padding the edge value carries on
    assert peaks[True] < 0.2 * peaks[False] and peaks[True] < 0.1 * signal_scale


def test_operator_is_the_ridge_solution_without_explicit_inverse():
    widths, n, lam = (0.05, 0.1), 12, 0.7
    t = torch.rand(40, dtype=F64).sort().values
    g = ridge.ridge_operator(t, n, widths, lam)
    mu, sigma = rbf_layout(n, widths)
    f = gaussian_pdf(t[None, :], mu[:, None], sigma[:, None] ** 2)  # F: (N, L)
    ref = torch.linalg.solve(f @ f.T + lam * torch.eye(n, dtype=F64), f).T  # G = Fᵀ(FFᵀ + λI)⁻¹
    assert g.shape == (40, n) and g.dtype == F64
    torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-12)
    # and B = GᵀX minimises ‖FᵀB - X‖² + λ‖B‖²: the gradient of that objective vanishes
    x = torch.randn(40, 3, dtype=F64)
    b = g.T @ x
    grad = f @ (f.T @ b - x) + lam * b
    assert grad.abs().max() < 1e-9


@pytest.mark.parametrize("length", [1, 2, 7, 333, 1000])
def test_any_length_works_without_a_table(length):
    g = ridge.cached_operator("fresh", (length,), 16, (0.05, 0.1), 0.5, False, 0.5, torch.device("cpu"), F64)
    assert g.shape == (length, 16) and torch.isfinite(g).all()
    x = torch.randn(2, length, 4, dtype=F64)
    assert ridge.fit(x, g).shape == (2, 16, 4)


def test_operator_cache_is_keyed_by_layout():
    cpu = torch.device("cpu")
    args = ((37,), 16, (0.05, 0.1), 0.5, False, 0.5, cpu, torch.float32)
    a = ridge.cached_operator("fresh", *args)
    assert ridge.cached_operator("fresh", *args) is a  # built once
    other_lambda = ridge.cached_operator(
        "fresh", (37,), 16, (0.05, 0.1), 0.25, False, 0.5, cpu, torch.float32
    )
    padded = ridge.cached_operator("fresh", (37,), 16, (0.05, 0.1), 0.5, True, 0.5, cpu, torch.float32)
    assert other_lambda is not a and not torch.equal(other_lambda, a)
    assert padded is not a and not torch.equal(padded, a)
    new = ridge.cached_operator("contract_new", (5, 37), 16, (0.05, 0.1), 0.5, False, 0.5, cpu, torch.float32)
    old = ridge.cached_operator("contract_old", (5, 37), 16, (0.05, 0.1), 0.5, False, 0.5, cpu, torch.float32)
    full = ridge.ridge_operator(ridge.contraction_positions(5, 37, 0.5), 16, (0.05, 0.1), 0.5)
    torch.testing.assert_close(torch.cat([old, new]).double(), full, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        ridge.cached_operator("nope", *args)


def test_contraction_positions():
    pos = ridge.contraction_positions(4, 2, 0.5)
    torch.testing.assert_close(pos, torch.tensor([0.0625, 0.1875, 0.3125, 0.4375, 0.625, 0.875], dtype=F64))


@pytest.mark.parametrize("lam", [0.0, -1.0])
def test_non_positive_lambda_raises(lam):
    with pytest.raises(ValueError, match="ridge_lambda"):
        ridge.ridge_operator(ridge.midpoints(8), 8, (0.1,), lam)


def test_reconstruction_error_stays_bounded_over_50_stream_updates():
    """Uniform sampling: after k updates of L tokens, chunk k - i of the stream lies on [τ^{i+1}, τ^i].

    Compare the memory signal there with the ground-truth stream, warped the same way, on the three
    newest chunks, after every update: the error is small and does not grow.
    """
    n, m, length, tau, lam, widths = 256, 256, 256, 0.5, 0.5, (0.005, 0.01)
    basis = GaussianBasis(n, widths)

    def stream(s: torch.Tensor) -> torch.Tensor:  # token index -> (T, 3); varies over a few chunks
        u = s / length
        return torch.stack(
            [
                torch.sin(2 * math.pi * u / 3),
                torch.cos(2 * math.pi * u / 5 + 1),
                0.5 * torch.sin(2 * math.pi * u / 2.3 + 2),
            ],
            -1,
        )

    state = LTMState.empty(1, n, 3, 4)  # float32 coefficients, as in the model
    errors, peaks = [], []
    grid = torch.linspace(0, 1, 501, dtype=F64)
    for k in range(1, 51):
        x = stream(torch.arange((k - 1) * length, k * length, dtype=F64) + 0.5)[None].float()
        state = update_memory(state, x, basis, num_samples=m, tau=tau, ridge_lambda=lam)
        step = []
        for i in range(min(k, 3)):
            lo, hi = (tau ** (i + 1) if k > i + 1 else 0.0), tau**i
            t = ridge.midpoints(200, lo, hi)
            truth = stream((k - i - 1) * length + (t - lo) / (hi - lo) * length)
            mem = ridge.reconstruct(state.coeffs.double(), basis.double()(t))[0]
            step.append(rel(mem, truth))
        errors.append(max(step))
        peaks.append(ridge.reconstruct(state.coeffs.double(), basis.double()(grid)).abs().max().item())
    assert max(errors) <= 1e-2, errors
    assert max(errors[-10:]) <= 3 * max(errors[:10])  # no drift
    # Anywhere on [0, 1] (including the oldest, most compressed chunks near 0, which may overshoot a
    # little) the signal stays bounded, and it does not grow with the number of updates.
    assert max(peaks) <= 2.0 and max(peaks[-20:]) <= 1.2, peaks
