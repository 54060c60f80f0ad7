"""The long-term memory's update against references written out here (PAPER §3), in float64:
the contraction for τ other than 0.5 (uniform and sticky samples), and the gate's value."""

from __future__ import annotations

import math

import pytest
import torch

from infinite_former import LongTermAttention, LTMConfig, LTMState
from infinite_former.basis import GaussianBasis
from infinite_former.memory import sticky_positions, update_memory

N, M, L, E, D = 12, 7, 5, 3, 6  # basis functions, old samples, new vectors, width, sticky bins
WIDTHS = (0.05, 0.2)
LAMBDA = 0.1


def psi(basis: GaussianBasis, t: torch.Tensor) -> torch.Tensor:
    """ψ(t) = [𝒩(t; μ_k, σ_k²)]_k written out: (..., T) -> (..., T, N), float64."""
    mu, sigma = basis.mu.double(), basis.sigma.double()
    z = (t.double()[..., None] - mu) / sigma
    return torch.exp(-0.5 * z**2) / (math.sqrt(2 * math.pi) * sigma)


def ridge_fit(basis: GaussianBasis, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """B = (F Fᵀ + λI)⁻¹ F X with F = [ψ(t_1) … ψ(t_T)]: t (batch, T), x (batch, T, e) -> (batch, N, e)."""
    f = psi(basis, t).transpose(-1, -2)  # F: (batch, N, T)
    gram = f @ f.transpose(-1, -2) + LAMBDA * torch.eye(basis.num_basis, dtype=torch.float64)
    return torch.linalg.solve(gram, f @ x.double())


@pytest.mark.parametrize("sticky", [False, True], ids=["uniform", "sticky"])
@pytest.mark.parametrize("tau", [0.3, 0.75])
def test_update_is_the_ridge_fit_on_the_contraction_positions_for_tau(tau, sticky):
    """X̄_old is sampled at s_1..s_M (midpoints (m - ½)/M, or the sticky quantiles), the samples
    are refit at τ(m - ½)/M on [0, τ], the L new vectors at τ + (1 - τ)(l - ½)/L on [τ, 1]."""
    basis = GaussianBasis(N, WIDTHS)
    gen = torch.Generator().manual_seed(0)
    old = torch.randn(2, N, E, generator=gen, dtype=torch.float64)  # B of a memory that holds tokens
    mass = torch.rand(2, D, generator=gen, dtype=torch.float64) ** 4  # uneven attention mass per bin
    state = LTMState(coeffs=old, length=torch.tensor([9, 40]), bin_mass=mass)
    x = torch.randn(2, L, E, generator=gen, dtype=torch.float64)

    out = update_memory(
        state,
        x,
        basis,
        num_samples=M,
        tau=tau,
        ridge_lambda=LAMBDA,
        sticky=sticky,
        generator=torch.Generator().manual_seed(7),
    )

    mid = (torch.arange(M, dtype=torch.float64) + 0.5) / M  # (M,)
    if sticky:  # the same draw as the update's: its own tests check the sampler
        s = sticky_positions(mass, M, torch.Generator().manual_seed(7)).double()  # (2, M)
        assert not torch.allclose(s, mid.expand(2, M), atol=1e-3)  # not the uniform positions
    else:
        s = mid.expand(2, M)
    samples = psi(basis, s) @ old  # X̄_old(s_m) = Bᵀψ(s_m): (2, M, e)
    t_old = tau * mid  # (M,) on [0, τ]
    t_new = tau + (1 - tau) * (torch.arange(L, dtype=torch.float64) + 0.5) / L  # (L,) on [τ, 1]
    t = torch.cat([t_old, t_new]).expand(2, M + L)
    ref = ridge_fit(basis, t, torch.cat([samples, x], dim=1))
    torch.testing.assert_close(out.coeffs, ref, rtol=1e-7, atol=1e-9)
    assert out.length.tolist() == [9 + L, 40 + L]
    # the reference itself depends on τ: the test could not pass with τ ignored
    t_half = torch.cat([0.5 * mid, 0.5 + 0.5 * (torch.arange(L, dtype=torch.float64) + 0.5) / L])
    other = ridge_fit(basis, t_half.expand(2, M + L), torch.cat([samples, x], dim=1))
    assert (other - ref).abs().max() > 1e-2


def test_fresh_memory_is_the_ridge_fit_on_midpoints_of_0_1():
    """An empty row fits the L new vectors alone at (l - ½)/L, whatever τ."""
    basis = GaussianBasis(N, WIDTHS)
    x = torch.randn(1, L, E, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    empty = LTMState.empty(1, N, E, D, dtype=torch.float64)
    out = update_memory(empty, x, basis, num_samples=M, tau=0.3, ridge_lambda=LAMBDA)
    t = ((torch.arange(L, dtype=torch.float64) + 0.5) / L)[None]
    torch.testing.assert_close(out.coeffs, ridge_fit(basis, t, x), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("sticky", [False, True], ids=["uniform", "sticky"])
def test_gated_update_absorbs_x_times_sigmoid_of_the_conv1d_gate(sticky):
    """LongTermAttention.update(state, x) == update_memory(state, x ⊙ sigmoid(Conv1d(x))), the Conv1d
    (kernel 3, padding 1) applied by torch itself, channels first."""
    torch.manual_seed(0)
    cfg = LTMConfig(
        d_model=8,
        n_heads=2,
        num_basis=N,
        num_samples=M,
        tau=0.3,
        widths=WIDTHS,
        ridge_lambda=LAMBDA,
        num_bins=D,
        sticky=sticky,
    )
    ltm = LongTermAttention(cfg).double()
    with torch.no_grad():  # a gate far from sigmoid(0) = ½ everywhere
        ltm.gate.bias.normal_(0.0, 2.0)
    gen = torch.Generator().manual_seed(3)
    state = ltm.init_state(2, dtype=torch.float64)
    state = ltm.update(state, torch.randn(2, 6, 8, generator=gen, dtype=torch.float64))
    state = LTMState(state.coeffs, state.length, torch.rand(2, D, generator=gen, dtype=torch.float64))
    x = torch.randn(2, L, 8, generator=gen, dtype=torch.float64)

    out = ltm.update(state, x, generator=torch.Generator().manual_seed(5))

    gate = torch.sigmoid(ltm.gate(x.transpose(1, 2)).transpose(1, 2))  # (2, L, e)
    assert (gate - 0.5).abs().mean() > 0.2
    kw = dict(num_samples=M, tau=0.3, ridge_lambda=LAMBDA, sticky=sticky)
    ref = update_memory(
        state, x * gate, GaussianBasis(N, WIDTHS), generator=torch.Generator().manual_seed(5), **kw
    )
    torch.testing.assert_close(out.coeffs, ref.coeffs, rtol=1e-10, atol=1e-12)
    # and the gate matters: the ungated update is another memory
    ungated = update_memory(
        state, x, GaussianBasis(N, WIDTHS), generator=torch.Generator().manual_seed(5), **kw
    )
    assert (ungated.coeffs - out.coeffs).abs().max() > 1e-3
