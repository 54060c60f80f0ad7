"""Gaussian RBFs ψ on [0, 1] (PAPER §1): layout, values, dtypes, bad input."""

import math

import pytest
import torch

from infinite_former.basis import GaussianBasis, exp_floor, gaussian_pdf, rbf_layout


def test_layout_is_evenly_spaced_centres_times_widths():
    mu, sigma = rbf_layout(12, (0.01, 0.05))
    assert mu.shape == sigma.shape == (12,) and mu.dtype == torch.float64
    # width-major: the first C = 6 functions have width 0.01, the next 6 width 0.05
    centres = torch.linspace(0, 1, 6, dtype=torch.float64)
    torch.testing.assert_close(mu, torch.cat([centres, centres]))
    torch.testing.assert_close(sigma, torch.tensor([0.01] * 6 + [0.05] * 6, dtype=torch.float64))
    # every (centre, width) pair exactly once
    assert len({(float(m), float(s)) for m, s in zip(mu, sigma)}) == 12


def test_single_width_layout_and_factored_buffers():
    basis = GaussianBasis(5, (0.1,))
    torch.testing.assert_close(basis.centres, torch.linspace(0, 1, 5, dtype=torch.float64))
    torch.testing.assert_close(basis.widths2, torch.tensor([0.01], dtype=torch.float64))
    basis2 = GaussianBasis(8, (0.02, 0.03))
    assert basis2.centres.shape == (4,) and basis2.widths2.shape == (2,)
    torch.testing.assert_close(basis2.mu, basis2.centres.repeat(2))
    torch.testing.assert_close(basis2.sigma**2, basis2.widths2.repeat_interleave(4))


def test_values_match_the_gaussian_formula_at_any_positions():
    basis = GaussianBasis(16, (0.05, 0.1))
    t = torch.tensor([-0.3, 0.0, 0.123, 0.5, 0.999, 1.0, 1.7], dtype=torch.float64).view(7, 1)
    psi = basis.double()(t)  # (7, 1, 16)
    assert psi.shape == (7, 1, 16)
    mu, sigma = rbf_layout(16, (0.05, 0.1))
    ref = torch.exp(-0.5 * (t[..., None] - mu) ** 2 / sigma**2) / (sigma * math.sqrt(2 * math.pi))
    torch.testing.assert_close(psi, ref, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(gaussian_pdf(t[..., None], mu, sigma**2), ref, rtol=1e-12, atol=1e-300)


def test_each_basis_function_integrates_to_one():
    basis = GaussianBasis(6, (0.01, 0.05)).double()
    t = torch.linspace(-1, 2, 30001, dtype=torch.float64)
    integral = torch.trapezoid(basis(t), t, dim=0)
    torch.testing.assert_close(integral, torch.ones(6, dtype=torch.float64), rtol=1e-9, atol=0)


def test_far_positions_underflow_to_tiny_not_nan_and_are_fast_path_clamped():
    basis = GaussianBasis(4, (0.005,))
    psi = basis(torch.tensor([50.0, -50.0]))
    assert torch.isfinite(psi).all() and (psi >= 0).all()
    # clamped exponent: within the smallest normal float32 of the true value 0
    assert psi.max() <= torch.finfo(torch.float32).tiny * 1e3
    assert exp_floor(torch.float32) == -87.0 and exp_floor(torch.float64) == -708.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtype_and_device_follow_positions(dtype):
    basis = GaussianBasis(8, (0.05, 0.1))
    t = torch.rand(3, 4).to(dtype)
    psi = basis(t)
    assert psi.dtype == dtype and psi.device == t.device and psi.shape == (3, 4, 8)
    ref = basis.double()(t.double())
    rel = ((psi.double() - ref).norm() / ref.norm()).item()
    assert rel <= (5e-2 if dtype == torch.bfloat16 else 1e-6)


def test_gradcheck_in_positions():
    basis = GaussianBasis(6, (0.1, 0.2)).double()
    t = torch.rand(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(basis, (t,))


@pytest.mark.parametrize(
    "num_basis, widths, match",
    [
        (1, (0.01,), "num_basis"),
        (0, (0.01,), "num_basis"),
        (2.5, (0.01,), "num_basis"),
        (True, (0.01,), "num_basis"),
        (8, (0.0, 0.1), "widths"),
        (8, (-0.01, 0.1), "widths"),
        (8, (float("nan"), 0.1), "widths"),
        (8, (), "widths"),
        (9, (0.01, 0.05), "num_basis"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(num_basis, widths, match):
    with pytest.raises(ValueError, match=match):
        rbf_layout(num_basis, widths)
    with pytest.raises(ValueError, match=match):
        GaussianBasis(num_basis, widths)


def test_constants_first_built_in_inference_mode_still_serve_autograd():
    """The basis' cast constants are cached per (layout, device, dtype): an entry made under
    inference_mode must be a plain tensor, or a later training step could not save it for backward."""
    basis = GaussianBasis(6, (0.07, 0.11))  # a layout no other test uses: the first call builds it
    with torch.inference_mode():
        basis(torch.rand(4))
    t = torch.rand(5, dtype=torch.float32, requires_grad=True)
    basis(t).sum().backward()
    t64 = t.detach().double().requires_grad_()
    basis(t64).sum().backward()
    torch.testing.assert_close(t.grad.double(), t64.grad, rtol=1e-4, atol=1e-3)
