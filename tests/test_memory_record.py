"""What the model says it did (return_record): the memory update's UpdateRecord, the read's
ReadRecord, their path through LongTermAttention, the LM and a Hugging Face model with memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from infinite_former import LongTermAttention, LTMConfig, LTMState, ridge, sticky_positions, uniform_positions
from infinite_former import memory as memory_module
from infinite_former.basis import GaussianBasis
from infinite_former.hf import add_memory
from infinite_former.introspection import AgeMap
from infinite_former.memory import UpdateRecord, bin_mass, update_memory
from infinite_former.models import InfiniteFormerLM, ModelConfig

KW = dict(num_samples=6, tau=0.5, ridge_lambda=0.5)
BLOCK = 8


def memory_with_content(sticky: bool) -> tuple[LTMState, GaussianBasis]:
    """Two rows: row 0 holds 10 tokens and an uneven sticky bin mass, row 1 is empty."""
    basis = GaussianBasis(16, (0.05, 0.1))
    g = torch.Generator().manual_seed(0)
    state = LTMState.empty(2, 16, 4, 5)
    state = update_memory(state, torch.randn(2, 10, 4, generator=g), basis, **KW, sticky=sticky)
    mass = torch.tensor([[0.1, 3.0, 0.2, 0.0, 1.5], [0.0] * 5])
    return LTMState(state.coeffs, torch.tensor([10, 0]), mass), basis


def rebuild(state: LTMState, x: torch.Tensor, basis, samples: torch.Tensor, tau: float) -> torch.Tensor:
    """B of the contraction, refit from the old signal sampled at ``samples`` (batch, M): ridge.py's
    operators, not update_memory."""
    common = dict(num_basis=16, widths=basis.widths, ridge_lambda=0.5, edge_padding=False, tau=tau)
    common.update(device=x.device, dtype=x.dtype)
    m, n = samples.shape[1], x.shape[1]
    g_old = ridge.cached_operator("contract_old", (m, n), **common)
    g_new = ridge.cached_operator("contract_new", (m, n), **common)
    old = ridge.reconstruct(state.coeffs, basis(samples))  # X̄_old(s_m): (batch, M, e)
    return ridge.fit(old, g_old) + ridge.fit(x, g_new)


# ------------------------------------------------------------------------------------- the update


@pytest.mark.parametrize("sticky", [True, False])
def test_record_holds_the_positions_the_update_sampled(sticky):
    """The recorded s_m are the ones the update used: the fit rebuilt from them is the update's B (and
    from other positions it is not); sticky: they are the draws of the same generator state."""
    state, basis = memory_with_content(sticky)
    x = torch.randn(2, 7, 4, generator=torch.Generator().manual_seed(1))
    new, rec = update_memory(
        state, x, basis, **KW, sticky=sticky, generator=torch.Generator().manual_seed(7), return_record=True
    )
    assert isinstance(rec, UpdateRecord) and rec.sticky is sticky and rec.count == 7
    assert rec.first.tolist() == [10, 0] and rec.contracted.tolist() == [True, False]
    assert rec.absorbed.tolist() == [True, True] and rec.tau.tolist() == [0.5, 0.5]
    assert torch.equal(rec.vectors, x) and torch.isnan(rec.samples[1]).all()  # row 1: a fresh fit
    if sticky:
        drawn = sticky_positions(state.bin_mass, 6, torch.Generator().manual_seed(7))
        assert torch.equal(rec.samples[0], drawn[0])
        assert rec.samples[0].diff().ge(0).all() and not torch.equal(rec.samples[0], uniform_positions(6))
    else:
        assert torch.equal(rec.samples[0], uniform_positions(6))
    samples = rec.samples.nan_to_num(0.5)
    torch.testing.assert_close(rebuild(state, x, basis, samples, 0.5)[0], new.coeffs[0], rtol=1e-5, atol=1e-6)
    shifted = (samples + 0.3 / 6).clamp_max(1)
    assert not torch.allclose(rebuild(state, x, basis, shifted, 0.5)[0], new.coeffs[0], rtol=1e-3, atol=1e-4)
    # where the new vectors went: evenly on [τ, 1] after a contraction, on [0, 1] in a fresh fit
    mids = (torch.arange(7, dtype=torch.float64) + 0.5) / 7
    torch.testing.assert_close(rec.new_positions(), torch.stack([0.5 + 0.5 * mids, mids]))


@pytest.mark.parametrize("sticky", [True, False])
def test_recording_an_update_changes_nothing(sticky):
    state, basis = memory_with_content(sticky)
    x = torch.randn(2, 7, 4, generator=torch.Generator().manual_seed(1))
    plain = update_memory(state, x, basis, **KW, sticky=sticky, generator=torch.Generator().manual_seed(7))
    recorded, _ = update_memory(
        state, x, basis, **KW, sticky=sticky, generator=torch.Generator().manual_seed(7), return_record=True
    )
    for name in ("coeffs", "length", "bin_mass"):
        assert torch.equal(getattr(plain, name), getattr(recorded, name))
    same, rec = update_memory(state, x[:, :0], basis, **KW, sticky=sticky, return_record=True)
    assert same is state and rec.count == 0 and not rec.absorbed.any()  # nothing absorbed


def test_age_map_follows_the_recorded_tau_and_samples():
    """The age map comes from the record's τ and s_m, whatever contraction produced them."""
    state, basis = memory_with_content(sticky=False)
    x = torch.randn(2, 7, 4, generator=torch.Generator().manual_seed(1))
    _, rec = update_memory(state, x, basis, **KW, return_record=True)
    before = AgeMap.empty(256).absorb(0, 10, 0.5, None)
    after = before.follow(rec)
    np.testing.assert_array_equal(after.pos, before.absorb(10, 7, 0.5, rec.samples[0].double().numpy()).pos)
    assert after.locate(np.array([10.0]))[0] == pytest.approx(0.5, abs=1e-2)  # the old/new boundary at τ
    other = UpdateRecord(**{**rec.__dict__, "tau": torch.tensor([0.8, 0.8], dtype=torch.float64)})
    assert before.follow(other).locate(np.array([10.0]))[0] == pytest.approx(0.8, abs=1e-2)
    fresh = AgeMap.empty(256).follow(rec, row=1)  # row 1's update was a fresh fit of tokens 0..6
    np.testing.assert_allclose(fresh.locate(np.array([0.0, 7.0])), [0.0, 1.0], atol=1e-2)


def test_long_term_attention_records_its_absorption_and_read():
    torch.manual_seed(0)
    ltm = LongTermAttention(
        LTMConfig(d_model=8, n_heads=2, num_basis=8, num_samples=4, widths=(0.1,), num_bins=4)
    )
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    state = ltm(None, k, None)
    out, new, kl, rec = ltm(
        q, k, state, return_kl=True, generator=torch.Generator().manual_seed(1), return_record=True
    )
    out2, new2, kl2 = ltm(q, k, state, return_kl=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, out2) and torch.equal(new.coeffs, new2.coeffs) and torch.equal(kl, kl2)
    assert len(rec.updates) == 1 and rec.updates[0].first.tolist() == [5, 5]
    gated = k * torch.sigmoid(ltm.gate_logits(k))
    torch.testing.assert_close(rec.updates[0].vectors, gated)  # the vectors fit: after the gate
    mu, sigma2, _ = ltm.densities(q, new)
    assert torch.equal(rec.read.mu, mu) and torch.equal(rec.read.sigma2, sigma2) and rec.read.valid.all()
    absorbed, rec = ltm(None, k, state, generator=torch.Generator().manual_seed(1), return_record=True)
    assert torch.equal(absorbed.coeffs, new.coeffs) and rec.read is None and len(rec.updates) == 1


# ----------------------------------------------------------------------------------------- the LM


def tiny_lm(memory_type: str) -> InfiniteFormerLM:
    torch.manual_seed(0)
    cfg = dict(
        vocab_size=50, d_model=16, n_layers=2, n_heads=2, d_inner=32, dropout=0.0, mem_len=8,
        memory_type=memory_type, ltm=dict(num_basis=16, num_samples=16, num_bins=8),
    )  # fmt: skip
    model = InfiniteFormerLM(ModelConfig(**cfg)).eval()
    with torch.no_grad():  # a memory whose output is not negligible
        for blk in model.layers:
            blk.ltm.out.weight.mul_(20)
    return model


def run_lm(model, tokens, record: bool, reset_at: int | None = None):
    torch.manual_seed(3)  # sticky sampling draws from the global RNG
    state, logits, records = None, [], []
    with torch.no_grad():
        for i, s in enumerate(range(0, tokens.shape[1], 6)):
            if i == reset_at:  # row 1 starts a new document: the rows hand over different counts
                state = state.reset(torch.tensor([False, True]))
            out, state = model(tokens[:, s : s + 6], state, return_record=record)
            logits.append(out.logits)
            records.append(out.record)
    return torch.cat(logits, 1), state, records


@pytest.mark.parametrize("memory_type", ["infinite_sticky", "infinite"])
def test_lm_recording_changes_nothing_and_computes_nothing_when_off(memory_type, monkeypatch):
    model = tiny_lm(memory_type)
    tokens = torch.randint(0, 50, (2, 48), generator=torch.Generator().manual_seed(0))
    made = []
    original = memory_module._record
    monkeypatch.setattr(memory_module, "_record", lambda *a, **k: made.append(1) or original(*a, **k))
    logits, state, records = run_lm(model, tokens, record=False, reset_at=4)
    assert not made and all(r is None for r in records)  # off: no record is even assembled
    logits_r, state_r, records_r = run_lm(model, tokens, record=True, reset_at=4)
    assert made and torch.equal(logits, logits_r)
    a, b = state.state_dict(), state_r.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(records_r[0]) == 2 and records_r[0][0].updates == []  # per layer; nothing absorbed yet
    # after row 1's reset the rows hand over different counts: one update per count, each kept by its rows
    split = [r[0].updates for r in records_r if len(r[0].updates) == 2]
    assert split
    for a, b in split:
        assert a.count != b.count and (a.absorbed ^ b.absorbed).all()


@pytest.mark.parametrize("memory_type", ["infinite_sticky", "infinite"])
def test_lm_records_the_draws_and_densities_the_forward_used(memory_type, monkeypatch):
    """Record vs the model's own computation, seen from outside: each recorded s_m is the sticky draw
    update_memory made (a spy), and each read's μ, σ² are the densities of the layer's queries (the
    LN₁ output, caught by a hook) on the memory it read; sticky: their bin mass is the state's. The
    old inspector cross-checked densities for sticky memories only; uniform ones get it here too."""
    drawn = []
    original = memory_module.sticky_positions

    def spy(mass, num_samples, generator=None):
        drawn.append(original(mass, num_samples, generator))
        return drawn[-1]

    monkeypatch.setattr(memory_module, "sticky_positions", spy)
    model = tiny_lm(memory_type)
    queries = {}  # layer -> its first LN₁ output of the call: the window (its last T are the queries)
    hooks = [
        blk.ln1.register_forward_hook(lambda m, a, out, i=i: queries.setdefault(i, out))
        for i, blk in enumerate(model.layers)
    ]
    tokens = torch.randint(0, 50, (2, 36), generator=torch.Generator().manual_seed(0))
    state, used = None, 0
    with torch.no_grad():
        for s in range(0, 36, 6):
            queries.clear()
            out, state = model(tokens[:, s : s + 6], state, return_record=True)
            for i, (blk, rec) in enumerate(zip(model.layers, out.record, strict=True)):
                for update in rec.updates:
                    if update.sticky and update.contracted.any():
                        assert torch.equal(update.samples, drawn[used])
                        used += 1
                    assert torch.isnan(update.samples).any() == (not update.contracted.all())
                mu, sigma2, _ = blk.ltm.densities(queries[i][:, -6:], state.ltm[i])
                assert torch.equal(rec.read.mu, mu) and torch.equal(rec.read.sigma2, sigma2)
                if state.ltm[i].length[0] > 0 and memory_type == "infinite_sticky":
                    mass = bin_mass(blk.ltm.normalizer.cdf, rec.read.mu, rec.read.sigma2, 8)
                    torch.testing.assert_close(mass, state.ltm[i].bin_mass)
    for hook in hooks:
        hook.remove()
    assert used == len(drawn) == (2 * 3 if memory_type == "infinite_sticky" else 0)


# ------------------------------------------------------------------------------ Hugging Face model


def tiny_hf(sticky: bool = True, training_free: dict | None = None):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    memory = dict(block_size=BLOCK, num_basis=16, num_samples=8, num_bins=8, widths=(0.05,), sticky=sticky)
    model = add_memory(AutoModelForCausalLM.from_config(config), training_free=training_free, **memory).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.memory_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def run_hf(model, ids, mask, record: bool):
    torch.manual_seed(5)
    memory, logits, records = None, [], []
    with torch.no_grad():
        for s in range(0, ids.shape[1], 10):
            out = model(
                ids[:, s : s + 10], memory=memory, attention_mask=mask[:, s : s + 10], return_record=record
            )
            memory = out.memory
            logits.append(out.logits)
            records.append(out.record)
    return torch.cat(logits, 1), memory, records


def test_hf_recording_changes_nothing_and_records_each_segment():
    """A padded batch read in calls of 10 tokens (blocks of 8): same logits and memory with the record
    on; each segment's record says which rows' blocks were absorbed before it and where they sat."""
    model = tiny_hf(sticky=True)
    ids = torch.randint(2, 100, (2, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1 starts 3 tokens later: its blocks fill at other times
    logits, memory, records = run_hf(model, ids, mask, record=False)
    assert all(r is None for r in records)
    logits_r, memory_r, records_r = run_hf(model, ids, mask, record=True)
    assert torch.equal(logits, logits_r)
    for a, b in zip(memory.ltm, memory_r.ltm, strict=True):
        assert torch.equal(a.coeffs, b.coeffs) and torch.equal(a.bin_mass, b.bin_mass)
    segments = [seg for call in records_r for seg in call]
    starts = [[seg.start for seg in call] for call in records_r]
    assert starts[0] == [0, 8] and sum(seg.length for seg in segments) == 40
    absorbed = {0: [], 1: []}
    for seg in segments:
        assert len(seg.layers) == 2 and seg.layers[0].read.mu.shape == (2, 2, seg.length)
        for update in seg.layers[0].updates:
            for row in (0, 1):
                if update.absorbed[row]:
                    absorbed[row].append((int(update.first[row]), update.count))
    assert absorbed[0] == [(0, 8), (8, 8), (16, 8), (24, 8)]  # every block of each row, once, in order
    assert absorbed[1] == [(0, 8), (8, 8), (16, 8), (24, 8)]


@pytest.mark.parametrize("sticky", [True, False])
def test_hf_records_the_densities_of_the_layer_queries(sticky):
    """The recorded μ, σ² are ltm.densities of the self-attention's input (a hook) on the memory read,
    for sticky and uniform memories; sticky: their bin mass is the one the state kept."""
    model = tiny_hf(sticky)
    layers = model.memory_config.layer_ids(len(model.decoder_layout.layers))
    queries = {}
    hooks = [
        model.decoder_layout.attentions[i].register_forward_pre_hook(
            lambda m, a, kw, k=k: queries.__setitem__(k, a[0] if a else kw["hidden_states"]), with_kwargs=True
        )
        for k, i in enumerate(layers)
    ]
    ids = torch.randint(2, 100, (1, 4 * BLOCK), generator=torch.Generator().manual_seed(0))
    memory, checked = None, 0
    with torch.no_grad():
        for s in range(0, ids.shape[1], BLOCK):
            out = model(ids[:, s : s + BLOCK], memory=memory, return_record=True)
            memory = out.memory
            (segment,) = out.record
            for k, (ltm, rec) in enumerate(zip(model.ltm, segment.layers, strict=True)):
                mu, sigma2, _ = ltm.densities(queries[k], memory.ltm[k])
                assert torch.equal(rec.read.mu, mu) and torch.equal(rec.read.sigma2, sigma2)
                assert rec.read.valid.all() == (s > 0)
                if sticky and s > 0:
                    mass = bin_mass(ltm.normalizer.cdf, mu, sigma2, 8)
                    torch.testing.assert_close(mass, memory.ltm[k].bin_mass)
                checked += 1
    for hook in hooks:
        hook.remove()
    assert checked == 4 * 2


@pytest.mark.parametrize("sticky", [True, False])
def test_hf_training_free_memory_records_its_absorptions_and_reads(sticky):
    """A training-free memory (no weights, read through the layer's own attention): the same logits
    and memory with the record on; each block absorbed once, in order; the read's Gibbs moments lie
    in [0, 1], valid once the memory holds tokens, and (sticky) give the bin mass the state kept."""
    model = tiny_hf(sticky, training_free={"alpha": 0.5})
    ids = torch.randint(2, 100, (1, 4 * BLOCK), generator=torch.Generator().manual_seed(0))
    runs = []
    for record in (False, True):
        torch.manual_seed(5)
        memory, outs = None, []
        with torch.no_grad():
            for s in range(0, ids.shape[1], BLOCK):
                outs.append(model(ids[:, s : s + BLOCK], memory=memory, return_record=record))
                memory = outs[-1].memory
        runs.append(outs)
    absorbed = []
    for s, (plain, out) in enumerate(zip(*runs, strict=True)):
        assert plain.record is None and torch.equal(plain.logits, out.logits)
        for a, b in zip(plain.memory.ltm, out.memory.ltm, strict=True):
            assert torch.equal(a.coeffs, b.coeffs) and torch.equal(a.bin_mass, b.bin_mass)
        (segment,) = out.record
        assert len(segment.layers) == 2
        absorbed += [(int(u.first[0]), u.count) for u in segment.layers[0].updates if u.absorbed[0]]
        for ltm, layer, state in zip(model.ltm, segment.layers, out.memory.ltm, strict=True):
            read = layer.read
            assert read.mu.shape == read.sigma2.shape == (1, 2, BLOCK)
            assert read.valid.all() == (s > 0)
            assert bool(((read.mu >= 0) & (read.mu <= 1)).all())
            assert bool((read.sigma2 >= ltm.config.min_sigma2).all())
            if sticky and s > 0:
                mass = bin_mass(ltm.normalizer.cdf, read.mu, read.sigma2, 8)
                torch.testing.assert_close(mass, state.bin_mass)
    assert absorbed == [(0, BLOCK), (BLOCK, BLOCK), (2 * BLOCK, BLOCK)]


def test_hf_record_under_gradient_checkpointing_is_the_forward_one():
    """Training with gradient checkpointing (the backward pass recomputes each memory read): the
    records equal those of the same step without checkpointing, and the backward leaves them so."""
    runs = []
    for checkpointing in (False, True):
        model = tiny_hf(sticky=True).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        ids = torch.randint(2, 100, (2, 3 * BLOCK + 3), generator=torch.Generator().manual_seed(0))
        torch.manual_seed(5)
        out = model(ids, labels=ids, return_record=True)
        out.loss.backward()
        runs.append(out.record)
    plain, checkpointed = runs
    assert [(s.start, s.length) for s in plain] == [(s.start, s.length) for s in checkpointed]
    assert len(plain) == 4
    for a, b in zip(plain, checkpointed, strict=True):
        for la, lb in zip(a.layers, b.layers, strict=True):
            torch.testing.assert_close(lb.read.mu, la.read.mu, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(lb.read.sigma2, la.read.sigma2, atol=1e-6, rtol=1e-6)
            assert torch.equal(la.read.valid, lb.read.valid)
            assert len(la.updates) == len(lb.updates)
            for ua, ub in zip(la.updates, lb.updates, strict=True):
                assert torch.equal(ua.absorbed, ub.absorbed) and torch.equal(
                    ua.samples.isnan(), ub.samples.isnan()
                )
                torch.testing.assert_close(ub.vectors, ua.vectors, atol=1e-6, rtol=1e-6)
