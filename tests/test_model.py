"""Tests of the decoder LM (models/) and the compressive memory (models/compressive.py)."""

from __future__ import annotations

import pytest
import torch

from infinite_former.models import (
    MEMORY_TYPES,
    InfiniteFormerLM,
    LMOutput,
    LMState,
    ModelConfig,
)
from infinite_former.models.compressive import Compressor, concat_right_aligned
from infinite_former.models.layers import rel_shift

V = 13


def tiny(memory_type: str = "xl", **kw) -> ModelConfig:
    base = dict(
        vocab_size=V,
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_inner=64,
        dropout=0.0,
        mem_len=6,
        memory_type=memory_type,
        cmem_len=4,
        compression_rate=2,
        ltm=dict(num_basis=16, num_samples=16, num_bins=16),
    )
    return ModelConfig(**{**base, **kw, "ltm": {**base["ltm"], **kw.get("ltm", {})}})


def make(memory_type: str = "xl", seed: int = 0, **kw) -> InfiniteFormerLM:
    torch.manual_seed(seed)
    return InfiniteFormerLM(tiny(memory_type, **kw)).eval()


def run_segments(model, tokens, seg, state=None, seed=123):
    """Feed tokens (b, n) segment by segment; returns concatenated logits and the final state."""
    torch.manual_seed(seed)  # sticky sampling draws from the global RNG
    logits = []
    for s in range(0, tokens.shape[1], seg):
        out, state = model(tokens[:, s : s + seg], state)
        state = state.detach()
        logits.append(out.logits)
    return torch.cat(logits, dim=1), state


# ------------------------------------------------------------------------ relative positions


def test_rel_shift_matches_explicit_distances():
    T, S = 4, 9
    x = torch.randn(2, 3, T, S)
    y = rel_shift(x)
    m = S - T
    for i in range(T):
        for j in range(m + i + 1):
            # column k of x is scored against R for distance S-1-k
            assert torch.equal(y[..., i, j], x[..., i, S - 1 - (m + i - j)])


def test_xl_recurrence_equals_full_attention():
    """mem_len covering all past tokens: segment-by-segment == one pass over the whole sequence."""
    model = make("xl", mem_len=64)
    tokens = torch.randint(0, V, (2, 15))
    with torch.no_grad():
        full, _ = model(tokens)
        seg, _ = run_segments(model, tokens, 4)
    torch.testing.assert_close(seg, full.logits, atol=1e-5, rtol=1e-5)


def test_xl_finite_memory_differs_from_full_attention():
    """Sanity check that the equivalence above is not trivial: a short memory forgets."""
    model = make("xl", mem_len=2)
    tokens = torch.randint(0, V, (1, 12))
    with torch.no_grad():
        full, _ = model(tokens)
        seg, _ = run_segments(model, tokens, 4)
    assert not torch.allclose(seg[:, 8:], full.logits[:, 8:], atol=1e-4)
    torch.testing.assert_close(seg[:, :4], full.logits[:, :4], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- causality


@pytest.mark.parametrize(
    "memory_type, mem_len",
    [(mt, n) for mt in MEMORY_TYPES for n in (0, 2, 6) if not (mt == "compressive" and n < 2)],
)
def test_future_tokens_never_change_earlier_logits(memory_type, mem_len):
    model = make(memory_type, mem_len=mem_len)
    tokens = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        base, _ = run_segments(model, tokens, 4)
        for p in (5, 10, 13):
            changed = tokens.clone()
            changed[:, p] = (changed[:, p] + 1) % V
            other, _ = run_segments(model, changed, 4)
            torch.testing.assert_close(other[:, :p], base[:, :p], atol=1e-6, rtol=1e-6)
            assert not torch.allclose(other[:, p], base[:, p])  # the change is visible from p on


def test_ltm_reaches_across_segments():
    """The LTM path carries information beyond the STM: with mem_len=0 and no LTM (xl) a
    segment cannot depend on the previous one; with the LTM it does."""
    tokens = torch.randint(0, V, (1, 12))
    changed = tokens.clone()
    changed[:, 1] = (changed[:, 1] + 1) % V
    with torch.no_grad():
        for mt in ("xl", "infinite", "infinite_sticky"):
            model = make(mt, mem_len=0)
            a, _ = run_segments(model, tokens, 4)
            b, _ = run_segments(model, changed, 4)
            torch.testing.assert_close(a[:, 0], b[:, 0])  # before the change
            if mt == "xl":  # no memory at all: later segments are independent of segment 1
                torch.testing.assert_close(a[:, 4:], b[:, 4:], atol=1e-6, rtol=1e-6)
            else:  # segment 1 reaches segments 2 and 3 through the LTM
                assert not torch.allclose(a[:, 4:8], b[:, 4:8], atol=1e-6)
                assert not torch.allclose(a[:, 8:], b[:, 8:], atol=1e-6)


# ------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("memory_type", MEMORY_TYPES)
def test_loss_falls_on_fixed_batch(memory_type):
    torch.manual_seed(0)
    model = InfiniteFormerLM(tiny(memory_type, mem_len=4))
    model.train()
    pattern = torch.arange(24) % 5 + 1
    batch = pattern.repeat(2, 1)
    inputs, targets = batch[:, :-1], batch[:, 1:]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        state = None
        total = 0.0
        opt.zero_grad()
        for s in range(0, 20, 5):  # 4 segments, backprop through the whole window
            out, state = model(inputs[:, s : s + 5], state, targets=targets[:, s : s + 5])
            (out.loss + out.aux_loss).backward()
            state = state.detach()
            total += out.loss.item()
        opt.step()
        losses.append(total / 4)
    assert losses[-1] < 0.5 * losses[0], losses


# ----------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(mem_len=-1), "mem_len"),
        (dict(memory_type="lstm"), "memory_type"),
        (dict(d_model=30, n_heads=4), "d_model"),
        (dict(memory_type="compressive", cmem_len=0), "cmem_len"),
        (dict(memory_type="compressive", mem_len=2, compression_rate=4), "compression_rate"),
        (dict(compression_rate=0), "compression_rate"),
        (dict(dropout=1.5), "dropout"),
        (dict(ltm=dict(kl_weight=-1.0)), "kl_weight"),
        (dict(ltm=dict(tau=1.5)), "tau"),
        (dict(ltm=dict(num_basis=15)), "num_basis"),
        (dict(n_layers=0), "n_layers"),
        (dict(max_segment_len=0), "max_segment_len"),
    ],
)
def test_bad_config_raises_clear_error(kw, field):
    with pytest.raises(ValueError, match=field):
        tiny(**kw)


def test_config_round_trip_and_unknown_field():
    cfg = tiny("compressive")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    ltm = tiny("infinite_sticky").ltm_config()
    assert ltm.sticky and ltm.num_basis == 16 and not tiny("infinite").ltm_config().sticky


def test_bad_inputs_raise():
    model = make("xl", max_segment_len=8)
    with pytest.raises(ValueError, match="tokens"):
        model(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="tokens"):
        model(torch.full((2, 4), V))
    with pytest.raises(ValueError, match="max_segment_len"):
        model(torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="batch size"):
        model(torch.zeros(2, 4, dtype=torch.long), model.init_state(3))
    with pytest.raises(ValueError, match="targets"):
        model(torch.zeros(2, 4, dtype=torch.long), targets=torch.zeros(2, 3, dtype=torch.long))


# ------------------------------------------------------------------------ state management


@pytest.mark.parametrize("memory_type", ["xl", "compressive", "infinite"])
@pytest.mark.parametrize("mem_len", [3, 6])
def test_reset_row_behaves_like_fresh_stream(memory_type, mem_len):
    model = make(memory_type, mem_len=mem_len)
    history = torch.randint(0, V, (2, 12))
    future = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        _, state = run_segments(model, history, 4)
        state = state.reset(torch.tensor([True, False]))
        after, _ = run_segments(model, future, 4, state)
        fresh0, _ = run_segments(model, future[:1], 4)
        _, cont = run_segments(model, history, 4)
        cont1, _ = run_segments(model, future, 4, cont)
    torch.testing.assert_close(after[:1], fresh0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after[1:], cont1[1:], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(after[:1], cont1[:1], atol=1e-4)  # the reset did something


def test_reset_rejects_bad_rows():
    state = make("xl").init_state(2)
    with pytest.raises(ValueError, match="rows"):
        state.reset(torch.tensor([True]))


@pytest.mark.parametrize("memory_type", MEMORY_TYPES)
def test_state_dict_round_trip_reproduces_logits(memory_type):
    model = make(memory_type)
    tokens = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        _, state = run_segments(model, tokens[:, :8], 4)
        restored = LMState.from_state_dict({k: v.clone() for k, v in state.state_dict().items()})
        restored = restored.to("cpu")
        torch.manual_seed(5)
        a, _ = model(tokens[:, 8:], state)
        torch.manual_seed(5)
        b, _ = model(tokens[:, 8:], restored)
    assert isinstance(a, LMOutput)
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
    assert all(isinstance(v, torch.Tensor) for v in state.state_dict().values())


def test_loss_mask_and_ignore_index():
    model = make("xl")
    tokens = torch.randint(0, V, (2, 6))
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 3:] = True
    out, _ = model(tokens, targets=tokens, loss_mask=mask)
    logp = out.logits.log_softmax(-1)
    expected = -logp.gather(-1, tokens[..., None])[..., 0][:, 3:].mean()
    torch.testing.assert_close(out.loss, expected)
    ignored = tokens.clone()
    ignored[:, :3] = -100
    out2, _ = model(tokens, targets=ignored)
    torch.testing.assert_close(out2.loss, expected)
    assert int(out2.extras["n_targets"]) == 6
    out3, _ = model(tokens)
    assert out3.loss is None and float(out3.aux_loss) == 0.0


# ------------------------------------------------------------------------------ compressive


def test_concat_right_aligned():
    a = torch.arange(1, 4.0).view(1, 3, 1).repeat(2, 1, 1)  # [1, 2, 3]
    c = torch.arange(10, 12.0).view(1, 2, 1).repeat(2, 1, 1)  # [10, 11]
    out = concat_right_aligned(a, torch.tensor([2, 0]), c, torch.tensor([1, 2]), 4)
    assert out[0, :, 0].tolist() == [0, 2, 3, 11]
    assert out[1, :, 0].tolist() == [0, 0, 10, 11]


def test_compressive_memory_and_reconstruction_loss():
    model = make("compressive", mem_len=4, cmem_len=3)
    model.train()
    tokens = torch.randint(0, V, (2, 12))
    state = None
    for s in range(0, 12, 4):
        out, state = model(tokens[:, s : s + 4], state, targets=tokens[:, s : s + 4])
        state = state.detach()
    # 12 tokens, STM keeps 4, so 8 were compressed into 4 slots, of which the last 3 are kept
    assert state.cmem_valid.tolist() == [3, 3] and state.cmems[0].shape[1] == 3
    assert state.mem_valid.tolist() == [4, 4]
    recon = out.extras["recon"]
    assert (recon > 0).all() and torch.isfinite(recon).all()
    model.zero_grad()
    out.aux_loss.backward()
    for name, p in model.named_parameters():
        if ".compressor." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None or p.grad.abs().sum() == 0, name


def test_compressor_shapes():
    comp = Compressor(8, 3)
    assert comp(torch.randn(2, 6, 8)).shape == (2, 2, 8)
    with pytest.raises(ValueError, match="multiple"):
        comp(torch.randn(2, 5, 8))


# ------------------------------------------------------------------------------ ∞-former


@pytest.mark.parametrize("mem_len", [0, 4, 6])
def test_ltm_receives_exactly_the_vectors_leaving_the_stm(mem_len):
    seg = 4
    model = make("infinite", mem_len=mem_len)
    tokens = torch.randint(0, V, (2, 5 * seg))
    state = None
    with torch.no_grad():
        for k in range(5):
            out, state = model(tokens[:, k * seg : (k + 1) * seg], state)
            seen = (k + 1) * seg
            in_stm = min(mem_len, seen)
            left = seen - in_stm
            assert state.mem_valid.tolist() == [in_stm] * 2
            assert state.ltm_pending_count.tolist() == [left - int(state.ltm[0].length[0])] * 2
            # absorbed at the start of the call: what had left the STM before this segment
            prev_left = max(0, k * seg - min(mem_len, k * seg))
            for layer in range(2):
                assert state.ltm[layer].length.tolist() == [prev_left] * 2
    # the first absorption holds exactly layer 0's inputs of the oldest tokens (embeddings)
    with torch.no_grad():
        first = model.layers[0]
        state = None
        for k in range(5):
            _, state = model(tokens[:, k * seg : (k + 1) * seg], state)
            n = int(state.ltm[0].length[0])
            if n:
                break
        assert n > 0
        emb = model.embed(tokens[:, :n])
        ref = first.ltm.update(first.ltm.init_state(2), first.ln1(emb))
        torch.testing.assert_close(state.ltm[0].coeffs, ref.coeffs, atol=1e-5, rtol=1e-4)


def test_infinite_aux_loss_is_weighted_kl():
    model = make("infinite_sticky", mem_len=0, ltm=dict(kl_weight=1e-2))
    tokens = torch.randint(0, V, (2, 8))
    out, state = model(tokens[:, :4])
    assert float(out.aux_loss.detach()) == 0.0  # empty LTM: no KL
    out, state = model(tokens[:, 4:], state, return_densities=True)
    kl = out.extras["kl"]
    assert kl.shape == (2,) and (kl > 0).all()
    torch.testing.assert_close(out.aux_loss, 1e-2 * kl.sum())
    assert out.extras["ltm_mu"][0].shape == (2, 4, 4)
    # the KL gives gradients to the LTM's query/key path
    out.aux_loss.backward()
    assert model.layers[0].ltm.sigma_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("memory_type", MEMORY_TYPES)
def test_every_parameter_gets_a_gradient_on_the_first_segment(memory_type):
    """DDP without find_unused_parameters needs every parameter in the graph of every call."""
    model = make(memory_type)
    model.train()
    tokens = torch.randint(0, V, (2, 4))
    out, _ = model(tokens, targets=tokens)
    (out.loss + out.aux_loss).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("memory_type", MEMORY_TYPES)
def test_bf16_autocast_runs_and_keeps_memories_in_float32(memory_type):
    model = make(memory_type, mem_len=4)
    model.train()
    state = None
    for _ in range(3):
        tokens = torch.randint(0, V, (2, 4))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, state = model(tokens, state, targets=tokens)
        (out.loss + out.aux_loss).backward()
        state = state.detach()
    assert torch.isfinite(out.loss) and torch.isfinite(out.aux_loss)
    floats = {k: t.dtype for k, t in state.state_dict().items() if t.is_floating_point()}
    assert set(floats.values()) == {torch.float32}, floats  # mems, cmems, LTM coefficients, pending


@pytest.mark.parametrize("memory_type", ["infinite", "infinite_sticky"])
def test_task_loss_trains_the_ltm(memory_type):
    """Once the LTM holds something, the LM loss alone reaches all its parameters (incl. the gate)."""
    model = make(memory_type, mem_len=4, ltm=dict(kl_weight=0.0))
    model.train()
    tokens = torch.randint(0, V, (2, 12))
    state = None
    for s in range(0, 12, 4):
        model.zero_grad()
        out, state = model(tokens[:, s : s + 4], state, targets=tokens[:, s : s + 4])
        out.loss.backward()
        state = state.detach()
    assert int(state.ltm[0].length[0]) == 4
    for name, p in model.layers[0].ltm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
