"""No subnormal numbers in the memory's matrix products (issue 17), in float32 and bf16.

Intel CPUs handle subnormals in microcode: a product of two nonzero entries that lands below the
smallest normal number made the memory 3.6x slower there. The operands of every matrix product of a
real update + read + backward are captured at the dispatcher (no mocks of our math) and checked:
no operand holds a subnormal, and no product of two nonzero entries can underflow.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from infinite_former import LongTermAttention, LTMConfig
from infinite_former.basis import GaussianBasis

aten = torch.ops.aten
PRODUCTS = {aten.mm.default, aten.bmm.default, aten.addmm.default, aten.baddbmm.default}


class CaptureProducts(TorchDispatchMode):
    """Records (op name, smallest nonzero |entry| of each operand, any subnormal) of every product."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        a, b = args[-2:] if func in PRODUCTS else (None, None)  # (addmm/baddbmm: the bias is no factor)
        # float64 products only build the cached ridge operators, once per layout (reference precision)
        if a is not None and a.dtype != torch.float64:
            self.seen.append((str(func), smallest_nonzero(a), smallest_nonzero(b), has_subnormal(a, b)))
        return func(*args, **(kwargs or {}))


def smallest_nonzero(t: torch.Tensor) -> float:
    mags = t.detach().abs().float()
    nonzero = mags[mags > 0]
    return nonzero.min().item() if nonzero.numel() else float("inf")


def has_subnormal(*ts: torch.Tensor) -> bool:
    return any(bool(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).any()) for t in ts)


@pytest.mark.parametrize("normalizer", ["softmax", "sparsemax"])
@pytest.mark.parametrize("sticky", [True, False])
@pytest.mark.parametrize("precision", ["fp32", "bf16-autocast", "bf16-weights"])
def test_update_and_read_products_hold_no_subnormals(precision, sticky, normalizer):
    # the layout shrunk: narrow widths (0.005, 0.01) leave most of ψ and E_p[ψ] in the far tails
    config = LTMConfig(
        d_model=32, n_heads=4, num_basis=64, num_samples=64, widths=(0.005, 0.01), num_bins=16,
        sticky=sticky, normalizer=normalizer,
    )  # fmt: skip
    torch.manual_seed(0)
    ltm = LongTermAttention(config)
    with (
        torch.no_grad()
    ):  # narrow densities (σ² near its floor), as trained models have: E_p[ψ] has far tails
        ltm.sigma_proj.bias.fill_(-8.0)
    dtype = torch.bfloat16 if precision == "bf16-weights" else torch.float32
    ltm = ltm.to(dtype)
    gen = torch.Generator().manual_seed(1)
    seg = [torch.randn(2, 24, 32, generator=gen).to(dtype) for _ in range(3)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-autocast"):
        with CaptureProducts() as capture:
            _, state = ltm(seg[0], seg[0], None, generator=gen)  # fresh fit, then a read (sticky mass)
            out, state, kl = ltm(seg[1], seg[2], state, return_kl=True, generator=gen)  # contract + read
            (out.float().square().mean() + kl).backward()
    names = {name for name, *_ in capture.seen}
    assert len(capture.seen) >= 8 and {"aten.bmm.default"} <= names, capture.seen
    for name, small_a, small_b, subnormal in capture.seen:
        assert not subnormal, f"{name} has a subnormal operand"
        # a product of the two smallest nonzero entries stays a normal number
        assert small_a * small_b >= torch.finfo(torch.float32).tiny, (name, small_a, small_b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_negligible_basis_values_are_exact_zeros(dtype):
    """ψ below θ = ε·P/N is exactly 0 (not the smallest normal number exp gives at the clamp), and
    what is kept is unchanged."""
    basis = GaussianBasis(64, (0.005, 0.01))
    t = torch.linspace(-0.2, 1.2, 301).to(dtype)
    psi = basis(t)
    ref = basis.double()(t.double())  # float64: exact tails
    theta = torch.finfo(dtype).eps * basis.peak / 64
    assert bool((psi[ref < theta / 2] == 0).all()) and (psi == 0).float().mean() > 0.5
    if dtype == torch.float32:  # (bf16 positions hold too few digits for narrow widths to compare)
        kept = ref > 2 * theta  # exp of arguments down to log θ ≈ -20: relative accuracy ~ε·|arg|
        torch.testing.assert_close(psi[kept].double(), ref[kept], rtol=1e-4, atol=0)
    far = basis(torch.tensor([50.0, -50.0], dtype=dtype))
    assert bool((far == 0).all())
