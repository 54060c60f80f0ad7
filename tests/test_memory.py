"""Unbounded memory (PAPER §3): state, update, sticky sampling, batch independence, save/load."""

import pytest
import torch

from infinite_former import (
    LongTermAttention,
    LTMConfig,
    LTMState,
    ridge,
    sticky_positions,
    uniform_positions,
)
from infinite_former.basis import GaussianBasis
from infinite_former.continuous import gaussian_cdf
from infinite_former.memory import bin_mass, update_memory

TINY = dict(d_model=8, n_heads=2, num_basis=8, num_samples=4, widths=(0.1, 0.2), num_bins=4, ridge_lambda=0.5)


def tiny_ltm(**over) -> LongTermAttention:
    torch.manual_seed(0)
    return LongTermAttention(LTMConfig(**{**TINY, **over}))


def layout(state: LTMState) -> list[tuple]:
    return [(k, tuple(v.shape), v.dtype, v.numel() * v.element_size()) for k, v in state.state_dict().items()]


def test_state_size_is_the_same_after_1_and_1000_updates():
    ltm = tiny_ltm()
    gen = torch.Generator().manual_seed(0)
    state = None
    sizes = {}
    with torch.no_grad():
        for step in range(1, 1001):
            q = torch.randn(2, 3, 8, generator=gen)
            _, state = ltm(q, torch.randn(2, 3, 8, generator=gen), state, generator=gen)
            if step in (1, 1000):
                sizes[step] = layout(state)
    assert sizes[1] == sizes[1000]
    assert state.length.tolist() == [3000, 3000]
    assert torch.isfinite(state.coeffs).all() and torch.isfinite(state.bin_mass).all()


def test_update_contracts_old_signal_and_appends_new_vectors():
    """Without sampling error (constant signal), the memory after an update equals old on [0, τ], new on [τ, 1]."""
    basis = GaussianBasis(64, (0.01, 0.02))
    state = LTMState.empty(1, 64, 1, 4, dtype=torch.float64)
    kw = dict(num_samples=64, tau=0.5, ridge_lambda=1e-3)
    state = update_memory(state, torch.full((1, 64, 1), 2.0, dtype=torch.float64), basis, **kw)
    assert state.length.tolist() == [64]
    state = update_memory(state, torch.full((1, 64, 1), -1.0, dtype=torch.float64), basis, **kw)
    assert state.length.tolist() == [128]
    psi = basis.double()
    old = ridge.reconstruct(state.coeffs, psi(torch.linspace(0.05, 0.4, 50, dtype=torch.float64)))
    new = ridge.reconstruct(state.coeffs, psi(torch.linspace(0.6, 0.95, 50, dtype=torch.float64)))
    torch.testing.assert_close(
        old, torch.full_like(old, 2.0), atol=5e-2, rtol=0
    )  # the step at τ rings a little
    torch.testing.assert_close(new, torch.full_like(new, -1.0), atol=5e-2, rtol=0)


def test_empty_rows_fit_fresh_and_mixed_batches_match_single_rows():
    basis = GaussianBasis(8, (0.1, 0.2))
    kw = dict(num_samples=4, tau=0.5, ridge_lambda=0.5)
    torch.manual_seed(1)
    x1, x2 = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    full = update_memory(LTMState.empty(2, 8, 3, 4), x1, basis, **kw)
    mixed = full.reset(torch.tensor([True, False]))
    out = update_memory(mixed, x2, basis, **kw)
    fresh_row0 = update_memory(LTMState.empty(1, 8, 3, 4), x2[:1], basis, **kw)
    contracted_row1 = update_memory(full.select(torch.tensor([1])), x2[1:], basis, **kw)
    torch.testing.assert_close(out.coeffs[:1], fresh_row0.coeffs)
    torch.testing.assert_close(out.coeffs[1:], contracted_row1.coeffs)
    assert out.length.tolist() == [5, 10]
    # no new vectors: the state is returned unchanged
    assert update_memory(out, torch.zeros(2, 0, 3), basis, **kw) is out


def test_uniform_positions_are_midpoints():
    torch.testing.assert_close(uniform_positions(4), torch.tensor([0.125, 0.375, 0.625, 0.875]))


def test_sticky_sampling_follows_the_bin_mass():
    gen = torch.Generator().manual_seed(0)
    mass = torch.tensor([[0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], [1.0] * 10])
    pos = sticky_positions(mass, 600, gen)
    assert pos.shape == (2, 600) and (pos >= 0).all() and (pos <= 1).all()
    assert (pos[:, 1:] >= pos[:, :-1]).all()  # sorted
    counts = torch.stack([torch.histc(p, bins=10, min=0, max=1) for p in pos])
    assert counts[0, 2] == pytest.approx(500, abs=2) and counts[0, 6] == pytest.approx(100, abs=2)
    assert counts[0].sum() == 600 and counts[0, [0, 1, 3, 4, 5, 7, 8, 9]].sum() == 0
    assert (counts[1] - 60).abs().max() <= 2


def test_rows_without_mass_fall_back_to_uniform():
    gen = torch.Generator().manual_seed(1)
    pos = sticky_positions(torch.zeros(3, 8), 400, gen)
    counts = torch.stack([torch.histc(p, bins=8, min=0, max=1) for p in pos])
    assert (counts - 50).abs().max() <= 2


def test_sticky_statistics_from_attention_densities():
    """Seeded: densities concentrated around t = 0.8 put far more samples there than uniform sampling."""
    gen = torch.Generator().manual_seed(2)
    mu = torch.full((1, 2, 16), 0.8) + 0.02 * torch.randn(1, 2, 16, generator=gen)
    sigma2 = torch.full((1, 2, 16), 1e-3)
    mass = bin_mass(gaussian_cdf, mu, sigma2, 32)
    assert mass.shape == (1, 32)
    assert mass.sum().item() == pytest.approx(32.0, rel=1e-3)  # 2 heads × 16 queries, all mass inside [0, 1]
    pos = sticky_positions(mass, 256, gen)[0]
    near = ((pos > 0.7) & (pos < 0.9)).float().mean().item()
    assert near > 0.9  # uniform sampling would put 20% there
    # and stochastic, seeded: the same generator seed gives the same positions, another seed others
    again = sticky_positions(mass, 256, torch.Generator().manual_seed(5))
    assert torch.equal(again, sticky_positions(mass, 256, torch.Generator().manual_seed(5)))
    assert not torch.equal(again, sticky_positions(mass, 256, torch.Generator().manual_seed(6)))


def test_sticky_update_gives_the_attended_region_more_resolution():
    """After attending to [0.1875, 0.3125], a sticky update keeps that part of the old signal sharper.

    Old position v goes to new position τ·interp(v; sampled positions -> their slots (m - ½)/M):
    uniform sampling maps it to τ·v, sticky sampling spreads the attended region over [0, τ]
    (τ = 0.25 here, so that uniform sampling squeezes the old signal below the basis' resolution).
    """
    basis = GaussianBasis(64, (0.01, 0.02))
    kw = dict(num_samples=32, tau=0.25, ridge_lambda=1e-3)
    t = ridge.midpoints(256)
    state = update_memory(LTMState.empty(1, 64, 1, 16), torch.sin(40 * t)[None, :, None].float(), basis, **kw)
    mass = torch.zeros(1, 16)
    mass[0, 3:5] = 1.0
    state = LTMState(state.coeffs, state.length, mass)
    v = torch.linspace(0.2, 0.3, 41)
    slots = uniform_positions(32)
    errs = {}
    for sticky in (False, True):
        out = update_memory(
            state,
            torch.zeros(1, 256, 1),
            basis,
            sticky=sticky,
            generator=torch.Generator().manual_seed(0),
            **kw,
        )
        pos = (
            sticky_positions(mass, 32, torch.Generator().manual_seed(0))[0]
            if sticky
            else uniform_positions(32)
        )
        idx = torch.searchsorted(pos, v).clamp(1, 31)
        w = (v - pos[idx - 1]) / (pos[idx] - pos[idx - 1])
        new_t = 0.25 * (slots[idx - 1] + w * (slots[idx] - slots[idx - 1]))
        mem = ridge.reconstruct(out.coeffs, basis(new_t))[0, :, 0]
        ref = torch.sin(40 * v)
        errs[sticky] = ((mem - ref).norm() / ref.norm()).item()
    assert errs[True] < 0.1 and errs[True] < 0.5 * errs[False], errs


# ------------------------------------------------------------------ state object


def test_reset_empties_chosen_rows_only():
    ltm = tiny_ltm()
    with torch.no_grad():
        _, state = ltm(torch.randn(3, 2, 8), torch.randn(3, 4, 8))
    r = state.reset(torch.tensor([True, False, False]))
    assert r.length.tolist() == [0, 4, 4]
    assert (r.coeffs[0] == 0).all() and (r.bin_mass[0] == 0).all()
    for name in ("coeffs", "length", "bin_mass"):
        assert torch.equal(getattr(r, name)[1:], getattr(state, name)[1:])
    assert torch.equal(state.reset(torch.tensor([0])).coeffs, r.coeffs)  # indices work too
    with pytest.raises(ValueError, match="rows"):
        state.reset(torch.tensor([True, False]))


def test_detach_to_select_and_state_dict():
    ltm = tiny_ltm()
    q = torch.randn(2, 2, 8)
    x = torch.randn(2, 3, 8, requires_grad=True)
    _, state = ltm(q, x)
    assert state.coeffs.requires_grad
    d = state.detach()
    assert not d.coeffs.requires_grad and torch.equal(d.coeffs, state.coeffs)
    s64 = d.to(torch.float64)
    assert s64.coeffs.dtype == torch.float64 and s64.length.dtype == torch.long
    sel = d.select(torch.tensor([1]))
    assert sel.batch_size == 1 and torch.equal(sel.coeffs[0], d.coeffs[1])
    back = LTMState.from_state_dict(d.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), d.state_dict().values()))
    with pytest.raises(ValueError, match="missing"):
        LTMState.from_state_dict({"coeffs": d.coeffs})


def test_empty_state_is_at_least_float32():
    assert LTMState.empty(1, 4, 2, 3, dtype=torch.bfloat16).coeffs.dtype == torch.float32
    assert LTMState.empty(1, 4, 2, 3, dtype=torch.float64).coeffs.dtype == torch.float64


def test_save_load_reproduces_outputs_exactly(tmp_path):
    ltm = tiny_ltm()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        state = None
        for _ in range(3):
            _, state = ltm(
                torch.randn(2, 3, 8, generator=gen), torch.randn(2, 3, 8, generator=gen), state, generator=gen
            )
        path = tmp_path / "memory.pt"
        state.save(path)
        loaded = LTMState.load(path)
        q, x = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
        out_a, state_a = ltm(q, x, state, generator=torch.Generator().manual_seed(9))
        out_b, state_b = ltm(q, x, loaded, generator=torch.Generator().manual_seed(9))
    assert torch.equal(out_a, out_b)
    for a, b in zip(state_a.state_dict().values(), state_b.state_dict().values()):
        assert torch.equal(a, b)


# ------------------------------------------------------------ batch independence


@pytest.mark.parametrize("sticky", [True, False])
def test_batch_rows_are_independent(sticky):
    ltm = tiny_ltm(sticky=sticky)
    gen = torch.Generator().manual_seed(3)
    qs = [torch.randn(2, 3, 8, generator=gen) for _ in range(4)]
    xs = [torch.randn(2, 5, 8, generator=gen) for _ in range(4)]

    def run(perturb_row0: bool, reset_at: int | None = None):
        state, outs = None, []
        for step, (q, x) in enumerate(zip(qs, xs)):
            if perturb_row0:
                q, x = q.clone(), x.clone()
                q[0] = q[0] * 3 + 1
                x[0] = torch.randn(5, 8, generator=torch.Generator().manual_seed(step))
            if reset_at == step:
                state = state.reset(torch.tensor([True, False]))
            out, state = ltm(q, x, state, generator=torch.Generator().manual_seed(step))
            outs.append(out)
        return torch.stack(outs), state

    with torch.no_grad():
        ref_out, ref_state = run(False)
        out, state = run(True)
        reset_out, reset_state = run(False, reset_at=2)
    assert not torch.equal(out[:, 0], ref_out[:, 0])  # the perturbation does reach row 0
    assert torch.equal(out[:, 1], ref_out[:, 1])
    for name in ("coeffs", "length", "bin_mass"):
        assert torch.equal(getattr(state, name)[1], getattr(ref_state, name)[1])
    # resetting row 0 leaves row 1 untouched
    assert torch.equal(reset_out[:, 1], ref_out[:, 1])
    assert torch.equal(reset_state.coeffs[1], ref_state.coeffs[1])
    assert reset_state.length.tolist() == [10, 20]


@pytest.mark.parametrize(
    "kwargs, vectors, match",
    [
        (dict(num_samples=0), (2, 3, 4), "num_samples"),
        (dict(tau=1.0), (2, 3, 4), "tau"),
        (dict(tau=0.0), (2, 3, 4), "tau"),
        (dict(ridge_lambda=0.0), (2, 3, 4), "ridge_lambda"),
        ({}, (3, 3, 4), "batch"),
        ({}, (2, 3, 5), "new_vectors"),
        ({}, (2, 4), "new_vectors"),
    ],
)
def test_update_rejects_bad_arguments(kwargs, vectors, match):
    basis = GaussianBasis(8, (0.1, 0.2))
    state = update_memory(
        LTMState.empty(2, 8, 4, 4), torch.randn(2, 3, 4), basis, num_samples=4, tau=0.5, ridge_lambda=0.5
    )
    kw = {**dict(num_samples=4, tau=0.5, ridge_lambda=0.5), **kwargs}
    with pytest.raises(ValueError, match=match):
        update_memory(state, torch.randn(*vectors), basis, **kw)
    with pytest.raises(ValueError, match="num_basis|N ="):
        update_memory(
            LTMState.empty(2, 6, 4, 4),
            torch.randn(2, 3, 4),
            basis,
            num_samples=4,
            tau=0.5,
            ridge_lambda=0.5,
        )


def test_sticky_positions_reject_bad_arguments():
    with pytest.raises(ValueError, match="bin_mass"):
        sticky_positions(torch.ones(4), 3)
    with pytest.raises(ValueError, match="num_samples"):
        sticky_positions(torch.ones(1, 4), 0)


def test_state_maps_and_merges_itself_row_by_row():
    a = LTMState.empty(3, 8, 4, 4)
    b = LTMState(torch.randn(3, 8, 4), torch.tensor([5, 6, 7]), torch.rand(3, 4))
    merged = a.merge(b, torch.tensor([False, True, False]))
    assert torch.equal(merged.coeffs[1], b.coeffs[1]) and torch.equal(merged.coeffs[[0, 2]], a.coeffs[[0, 2]])
    assert merged.length.tolist() == [0, 6, 0] and torch.equal(merged.bin_mass[1], b.bin_mass[1])
    doubled = b.map(lambda t: t * 2)
    assert torch.equal(doubled.coeffs, 2 * b.coeffs) and doubled.length.tolist() == [10, 12, 14]
    assert torch.equal(b.select(torch.tensor([2])).coeffs, b.coeffs[2:])
