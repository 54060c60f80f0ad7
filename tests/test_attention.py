"""LongTermAttention (PAPER §2-4): the paper's formulas, gradients, dtypes, compile, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from infinite_former import LongTermAttention, LTMConfig, LTMState, gaussian_kl
from infinite_former.continuous import gaussian_expectation, sparsemax_expectation

TINY = dict(d_model=8, n_heads=2, num_basis=8, num_samples=4, widths=(0.1, 0.2), num_bins=4, ridge_lambda=0.5)


def tiny_ltm(**over) -> LongTermAttention:
    torch.manual_seed(0)
    return LongTermAttention(LTMConfig(**{**TINY, **over}))


def filled_state(ltm, batch=2, steps=2, dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    state = ltm.init_state(batch, dtype=dtype)
    with torch.no_grad():
        for _ in range(steps):
            q = torch.randn(batch, 3, ltm.config.d_model, generator=gen).to(dtype)
            x = torch.randn(batch, 5, ltm.config.d_model, generator=gen).to(dtype)
            _, state = ltm(q, x, state, generator=gen)
    return state


# ----------------------------------------------------------------- the formulas


@pytest.mark.parametrize("normalizer", ["softmax", "sparsemax"])
def test_attend_equals_the_paper_formulas(normalizer):
    """K = B W_K, V = B W_V; s = K_h q/√d; μ = sigmoid(w_μᵀs), σ² = softplus(w_σᵀs); z = V_hᵀE_p[ψ]; W_O."""
    ltm = tiny_ltm(normalizer=normalizer).double()
    state = filled_state(ltm, dtype=torch.float64)
    queries = torch.randn(2, 3, 8, dtype=torch.float64)
    out, _, kl = ltm.attend(queries, state)

    b, h, d = 2, 2, 4
    keys = (state.coeffs @ ltm.key.weight.T).view(b, -1, h, d).transpose(1, 2)  # (b, H, N, d)
    values = (state.coeffs @ ltm.value.weight.T).view(b, -1, h, d).transpose(1, 2)
    qh = (queries @ ltm.query.weight.T).view(b, 3, h, d).transpose(1, 2)
    s = qh @ keys.transpose(-1, -2) / math.sqrt(d)  # (b, H, q, N)
    mu = torch.sigmoid(s @ ltm.mu_proj.weight[0] + ltm.mu_proj.bias)
    sigma2 = F.softplus(s @ ltm.sigma_proj.weight[0] + ltm.sigma_proj.bias).clamp_min(ltm.config.min_sigma2)
    expect_fn = gaussian_expectation if normalizer == "softmax" else sparsemax_expectation
    z = expect_fn(mu, sigma2, ltm.basis.mu, ltm.basis.sigma) @ values  # (b, H, q, d)
    ref = ltm.out(z.transpose(1, 2).reshape(b, 3, 8))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kl, gaussian_kl(sigma2, 0.05), rtol=1e-10, atol=1e-12)
    m, s2, _ = ltm.densities(queries, state)
    torch.testing.assert_close(m, mu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s2, sigma2, rtol=1e-10, atol=1e-12)


def test_gate_is_the_conv1d_gate():
    ltm = tiny_ltm()
    x = torch.randn(2, 6, 8)
    ref = ltm.gate(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(ltm.gate_logits(x), ref, rtol=1e-5, atol=1e-6)


def test_kl_regularizer_value():
    assert gaussian_kl(torch.tensor(0.05**2), 0.05).item() == pytest.approx(0.0, abs=1e-7)
    r = 3.0
    assert gaussian_kl(torch.tensor(r * 0.05**2), 0.05).item() == pytest.approx(0.5 * (r - math.log(r) - 1))
    ltm = tiny_ltm()
    state = filled_state(ltm)
    q = torch.randn(2, 3, 8)
    out, new_state, kl = ltm(q, None, state, return_kl=True)
    _, sigma2, _ = ltm.densities(q, state)
    assert kl.dim() == 0
    torch.testing.assert_close(kl, gaussian_kl(sigma2, 0.05).mean())
    # rows with empty memory are excluded from the mean
    kl_partial = ltm(q, None, state.reset(torch.tensor([True, False])), return_kl=True)[2]
    torch.testing.assert_close(kl_partial, gaussian_kl(sigma2[1], 0.05).mean())


def test_empty_memory_gives_zero_output():
    ltm = tiny_ltm()
    q = torch.randn(2, 3, 8)
    out, state = ltm(q)
    assert torch.equal(out, torch.zeros_like(out)) and state.length.tolist() == [0, 0]
    out, state = ltm(q, torch.randn(2, 0, 8), None)
    assert torch.equal(out, torch.zeros_like(out))
    out, state = ltm(q, torch.randn(2, 4, 8), state.reset(torch.tensor([True, False])))
    assert out.abs().sum() > 0 and state.length.tolist() == [4, 4]


def test_zero_init_output_and_no_gate():
    ltm = tiny_ltm(zero_init_output=True, gate=False)
    assert ltm.gate is None
    out, _ = ltm(torch.randn(1, 2, 8), torch.randn(1, 3, 8))
    assert torch.equal(out, torch.zeros_like(out))


def test_absorb_only_call_equals_update():
    """ltm(None, x, state): the update as a module call (what FSDP's hooks see), same numbers."""
    ltm = tiny_ltm(sticky=True)
    state = filled_state(ltm)
    x = torch.randn(2, 5, 8)
    a = ltm(None, x, state, generator=torch.Generator().manual_seed(3))
    b = ltm.update(state, x, generator=torch.Generator().manual_seed(3))
    for name in ("coeffs", "length", "bin_mass"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    empty = ltm(None, torch.randn(2, 5, 8))  # no state: absorbed into an empty memory
    assert torch.equal(empty.length, torch.full((2,), 5))
    assert ltm(None, x[:, :0], state) is state  # nothing to absorb
    with pytest.raises(ValueError, match="new_vectors must be a"):
        ltm(None, torch.randn(2, 5, 3), state)
    with pytest.raises(ValueError, match="queries=None"):
        ltm(None, None, state)


# ------------------------------------------------------------------- gradients


def test_past_is_detached_but_gate_and_projections_get_gradients():
    ltm = tiny_ltm()
    state = filled_state(ltm)
    past = state.coeffs.clone().requires_grad_(True)
    state = LTMState(past, state.length, state.bin_mass)
    x = torch.randn(2, 5, 8, requires_grad=True)
    q = torch.randn(2, 3, 8, requires_grad=True)
    out, new_state, kl = ltm(q, x, state, return_kl=True)
    (out.square().sum() + kl).backward()
    assert past.grad is None  # no gradient flows into past segments
    for name, p in ltm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert new_state.coeffs.requires_grad  # current segment is in the graph; .detach() cuts it
    assert not new_state.detach().coeffs.requires_grad


def test_layer_gradcheck_float64():
    ltm = tiny_ltm(sticky=False).double()
    state = filled_state(ltm, dtype=torch.float64)
    q = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ltm(a, b, state)[0], (q, x))


# ------------------------------------------------------------- dtypes / devices


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes_follow_inputs(dtype):
    ref_ltm = tiny_ltm()
    ltm = tiny_ltm().to(dtype)
    gen = torch.Generator().manual_seed(4)
    qs = [torch.randn(2, 3, 8, generator=gen) for _ in range(3)]
    xs = [torch.randn(2, 5, 8, generator=gen) for _ in range(3)]
    state = ref_state = None
    with torch.no_grad():
        for q, x in zip(qs, xs):
            out, state = ltm(q.to(dtype), x.to(dtype), state, generator=torch.Generator().manual_seed(0))
            ref, ref_state = ref_ltm(q, x, ref_state, generator=torch.Generator().manual_seed(0))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert state.coeffs.dtype == torch.promote_types(dtype, torch.float32)  # memory kept in >= float32
    assert state.length.dtype == torch.long
    rel = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert rel <= {torch.float32: 1e-6, torch.float64: 1e-5, torch.bfloat16: 0.1}[dtype]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    cpu = tiny_ltm(sticky=False)
    gpu = tiny_ltm(sticky=False).to("cuda", dtype)
    q, x = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    with torch.no_grad():
        out_c, st_c = cpu(q, x)
        out_c, st_c = cpu(q, x, st_c)
        out_g, st_g = gpu(q.cuda().to(dtype), x.cuda().to(dtype))
        out_g, st_g = gpu(q.cuda().to(dtype), x.cuda().to(dtype), st_g)
    assert out_g.device.type == "cuda" and st_g.coeffs.device.type == "cuda" and out_g.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 0.1
    assert ((out_g.float().cpu() - out_c).norm() / out_c.norm()).item() <= tol
    moved = st_g.to("cpu")
    assert moved.coeffs.device.type == "cpu" and moved.length.dtype == torch.long


def test_compiled_forward_equals_eager():
    """torch.compile of the layer's forward (CPU): same output and state as eager."""
    ltm = tiny_ltm(sticky=False)
    state = filled_state(ltm)
    q, x = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    with torch.no_grad():
        out, new_state = ltm(q, x, state)
        c_out, c_state = torch.compile(ltm)(q, x, state)
    torch.testing.assert_close(c_out, out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_state.coeffs, new_state.coeffs, rtol=1e-5, atol=1e-6)
    assert torch.equal(c_state.length, new_state.length)


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "over, match",
    [
        (dict(tau=0.0), "tau"),
        (dict(tau=1.0), "tau"),
        (dict(tau=-0.5), "tau"),
        (dict(tau=1.5), "tau"),
        (dict(num_basis=1), "num_basis"),
        (dict(num_basis=7), "num_basis"),
        (dict(widths=(0.0, 0.1)), "widths"),
        (dict(widths=(-0.1, 0.1)), "widths"),
        (dict(ridge_lambda=0.0), "ridge_lambda"),
        (dict(ridge_lambda=-1.0), "ridge_lambda"),
        (dict(num_samples=0), "num_samples"),
        (dict(num_bins=0), "num_bins"),
        (dict(n_heads=3), "n_heads"),
        (dict(d_model=0), "d_model"),
        (dict(min_sigma2=0.0), "min_sigma2"),
        (dict(normalizer="entmax"), "normalizer"),
    ],
)
def test_bad_config_raises_value_error_naming_the_argument(over, match):
    with pytest.raises(ValueError, match=match):
        LTMConfig(**{**TINY, **over})


def test_config_round_trips_through_dict():
    cfg = LTMConfig(**TINY)
    assert LTMConfig.from_dict(cfg.to_dict()) == cfg
    assert isinstance(LTMConfig.from_dict({**cfg.to_dict(), "widths": [0.1, 0.2]}).widths, tuple)


@pytest.mark.parametrize(
    "queries, new_vectors, state_batch, match",
    [
        (torch.randn(3, 8), None, None, "queries"),
        (torch.randn(2, 3, 7), None, None, "queries"),
        ("not a tensor", None, None, "queries"),
        (torch.randn(2, 3, 8), torch.randn(5, 8), None, "new_vectors"),
        (torch.randn(2, 3, 8), torch.randn(2, 5, 6), None, "new_vectors"),
        (torch.randn(2, 3, 8), torch.randn(3, 5, 8), None, "new_vectors"),
        (torch.randn(2, 3, 8), torch.randn(2, 5, 8), 3, "state"),
        (torch.randn(2, 3, 8), None, 1, "state"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(queries, new_vectors, state_batch, match):
    ltm = tiny_ltm()
    state = ltm.init_state(state_batch) if state_batch else None
    with pytest.raises(ValueError, match=match):
        ltm(queries, new_vectors, state)


def test_wrong_state_type_and_shape_raise():
    ltm = tiny_ltm()
    q = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="state"):
        ltm(q, None, {"coeffs": torch.zeros(2, 8, 8)})
    bad = ltm.init_state(2)
    bad = LTMState(bad.coeffs, bad.length, torch.zeros(2, 5))  # D = 5, config says 4
    with pytest.raises(ValueError, match="bin_mass"):
        ltm(q, None, bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_are_rejected_when_check_finite(bad):
    ltm = tiny_ltm()
    q, x = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    q_bad, x_bad = q.clone(), x.clone()
    q_bad[1, 2, 3] = bad
    x_bad[0, 4, 0] = bad
    with pytest.raises(ValueError, match="queries"):
        ltm(q_bad, x)
    with pytest.raises(ValueError, match="new_vectors"):
        ltm(q, x_bad)
    # finite but huge values whose sum overflows are not mistaken for non-finite ones
    huge = torch.full((1, 2, 8), 3e38)
    ltm(huge, None)
    # with the check off, nothing is raised (the caller opted out)
    unchecked = tiny_ltm(check_finite=False)
    out, _ = unchecked(q, x_bad)
    assert out.shape == (2, 3, 8)
