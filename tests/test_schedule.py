"""Contraction schedules (fixed / uniform_time / power) and widths="auto" (issue 18), against a float64
reference written here, through the LM, add_memory-style configs, introspection and save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infinite_former import LongTermAttention, LTMConfig
from infinite_former.attention import auto_widths
from infinite_former.basis import gaussian_pdf, rbf_layout
from infinite_former.hf.memory_config import MemoryConfig
from infinite_former.introspection import AgeMap, LayerReport, record_absorption
from infinite_former.memory import LTMState, contraction_tau, sticky_positions, update_memory
from infinite_former.models import InfiniteFormerLM, ModelConfig


def reference_update(coeffs, length, x, n, widths, m, lam, schedule, tau, power, samples=None):
    """One row, float64, straight from the definitions: B_new = argmin Σ‖Bᵀψ(t_i) − y_i‖² + λ‖B‖².
    samples: the M positions s_m of the old signal (None: uniform midpoints)."""
    mu, sigma = rbf_layout(n, widths)
    psi = lambda t: gaussian_pdf(t[:, None], mu, sigma**2)  # noqa: E731  (T, N)
    num_new = x.shape[0]
    if length == 0:
        pos, ys = (torch.arange(num_new, dtype=torch.float64) + 0.5) / num_new, x
    else:
        frac = length / (length + num_new)
        t_k = {"fixed": tau, "uniform_time": frac, "power": frac**power}[schedule]
        s = (torch.arange(m, dtype=torch.float64) + 0.5) / m if samples is None else samples
        old = psi(s) @ coeffs  # X̄_old(s_m): (M, e), placed evenly on [0, τ_k] whatever the s_m
        even = (torch.arange(m, dtype=torch.float64) + 0.5) / m
        pos = torch.cat(
            [even * t_k, t_k + (torch.arange(num_new, dtype=torch.float64) + 0.5) / num_new * (1 - t_k)]
        )
        ys = torch.cat([old, x])
    f = psi(pos)  # (M + L, N)
    return torch.linalg.solve(f.T @ f + lam * torch.eye(n, dtype=torch.float64), f.T @ ys)


@pytest.mark.parametrize("sticky", [False, True])
@pytest.mark.parametrize("schedule", ["fixed", "uniform_time", "power"])
def test_update_matches_float64_reference_with_rows_of_different_lengths(schedule, sticky):
    """Rows whose memories hold different token counts (one reset, one empty) get their own τ_k;
    sticky: the old signal is sampled where the bin mass says (the same draws as the update's)."""
    torch.manual_seed(0)
    n, m, e, lam = 16, 12, 3, 0.3
    gen = torch.Generator().manual_seed(3)
    cfg = dict(num_samples=m, tau=0.6, ridge_lambda=lam, schedule=schedule, power=1.7, sticky=sticky)
    basis = LongTermAttention(LTMConfig(d_model=e, n_heads=1, num_basis=n, widths="auto", gate=False)).basis
    state = LTMState.empty(3, n, e, 4, dtype=torch.float64)
    ref, lengths = [torch.zeros(n, e, dtype=torch.float64)] * 3, [0, 0, 0]
    for step, size in enumerate([5, 7, 4, 6]):
        if step in (1, 2):  # row `step` starts a new document: its τ_k sequence restarts
            state = state.reset(torch.arange(3) == step)
            ref[step], lengths[step] = torch.zeros(n, e, dtype=torch.float64), 0
        x = torch.randn(3, size, e, dtype=torch.float64)
        state.bin_mass = torch.rand(3, 4, dtype=torch.float64) ** 3  # uneven mass over D = 4 bins
        samples = sticky_positions(state.bin_mass, m, torch.Generator().set_state(gen.get_state()))
        state = update_memory(state, x, basis, generator=gen, **cfg)
        for r in range(3):
            s_r = samples[r] if sticky else None
            ref[r] = reference_update(
                ref[r], lengths[r], x[r], n, basis.widths, m, lam, schedule, 0.6, 1.7, s_r
            )
            lengths[r] += size
    torch.testing.assert_close(state.length, torch.tensor(lengths))
    torch.testing.assert_close(state.coeffs, torch.stack(ref), rtol=1e-9, atol=1e-9)


def test_schedules_place_tokens_where_the_docstring_says():
    """Age map (the introspection's) after blocks of unequal size: uniform_time puts token j at (j + ½)/n,
    power p puts a block born at j..j' on [(j/n)^p, (j'/n)^p], fixed τ the newest block on [τ, 1]."""
    sizes = [10, 30, 20, 40]
    total = sum(sizes)
    for schedule, power in [("uniform_time", 1.0), ("power", 2.0), ("fixed", 1.0)]:
        am, length = AgeMap.empty(8192), torch.zeros(1, dtype=torch.long)
        for k, size in enumerate(sizes):
            tau = float(contraction_tau(length, size, schedule, 0.5, power)[0])
            am = am.absorb(int(length), size, tau, None if k == 0 else (np.arange(64) + 0.5) / 64)
            length += size
        born = np.array([0.0, 10.0, 40.0, 60.0, 100.0])  # block boundaries
        expect = {"uniform_time": born / total, "power": (born / total) ** 2}.get(schedule)
        if expect is None:
            expect = np.array([0.0, 0.125 * 0.5, 0.125, 0.5, 1.0])  # τ³/2 inside the first block (linear)
            born = np.array([0.0, 5.0, 10.0, 60.0, 100.0])
        np.testing.assert_allclose(am.locate(born), expect, atol=2e-3)


def test_uniform_time_keeps_a_flat_trace_of_a_smooth_stream_where_fixed_forgets():
    """A smooth signal streamed through 24 blocks: uniform_time still recovers the oldest block,
    the paper's τ = 0.5 has squeezed it below the resolution of N basis functions."""
    torch.manual_seed(0)
    n_tok, block = 24 * 32, 32
    t = torch.arange(n_tok, dtype=torch.float64) / n_tok
    stream = torch.stack([torch.sin(2 * math.pi * f * t + f) for f in (1.0, 2.0, 3.0)], -1)[None]
    errs = {}
    for schedule in ("fixed", "uniform_time"):
        cfg = LTMConfig(d_model=3, n_heads=1, num_basis=128, num_samples=128, widths="auto", ridge_lambda=1e-3,
                        gate=False, sticky=False, schedule=schedule)  # fmt: skip
        ltm = LongTermAttention(cfg).double()
        state, am = ltm.init_state(1, dtype=torch.float64), AgeMap.empty(8192)
        for k in range(n_tok // block):
            old = state
            state = ltm.update(state, stream[:, k * block : (k + 1) * block])
            tau = float(contraction_tau(old.length, block, schedule, cfg.tau, cfg.power)[0])
            am = am.absorb(k * block, block, tau, None if k == 0 else (np.arange(128) + 0.5) / 128)
        where = torch.tensor(am.locate(np.arange(block) + 0.5))  # the oldest block
        rec = (ltm.basis(where) @ state.coeffs[0]).squeeze(0)
        errs[schedule] = float((rec - stream[0, :block]).norm() / stream[0, :block].norm())
    assert errs["uniform_time"] < 0.25 and errs["fixed"] > 0.5, errs


def test_lm_with_uniform_time_sticky_and_auto_widths_saves_and_loads(tmp_path):
    """The LM builds with the new options; its memory state (with the token count that drives τ_k)
    round-trips through save/load and the next segment gives the same outputs."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=30, d_model=16, n_layers=1, n_heads=2, d_inner=32, dropout=0.0, mem_len=8,
                      memory_type="infinite_sticky", ltm=dict(num_basis=16, num_samples=16, num_bins=8,
                      widths="auto", schedule="uniform_time"))  # fmt: skip
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    model = InfiniteFormerLM(cfg).eval()
    assert model.layers[0].ltm.basis.widths == auto_widths(16)
    ids = torch.randint(0, 30, (2, 40))
    state = None
    with torch.no_grad():
        for s in range(0, 32, 8):
            _, state = model(ids[:, s : s + 8], state)
        ltm = state.ltm[0]
        assert int(ltm.length[0]) == 16
        ltm.save(tmp_path / "m.pt")
        loaded = LTMState.load(tmp_path / "m.pt")
        torch.testing.assert_close(loaded.length, ltm.length)
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        layer = model.layers[0].ltm
        x = torch.randn(2, 8, 16)
        a = layer.update(ltm, x, generator=g1)
        b = layer.update(loaded, x, generator=g2)
    torch.testing.assert_close(a.coeffs, b.coeffs, rtol=0, atol=0)


def test_introspection_age_map_follows_the_schedule():
    """record_absorption (what inspect_document calls per absorption) moves the age map by the update's
    own τ_k: under uniform_time token j of n sits at (j + ½)/n after blocks of unequal size."""
    ltm = LongTermAttention(LTMConfig(d_model=4, n_heads=1, num_basis=16, num_samples=16, widths="auto",
                                      sticky=False, schedule="uniform_time"))  # fmt: skip
    report = LayerReport(attention_mass=np.zeros((1, 1)), outside_mass=np.zeros(1))
    state, am = ltm.init_state(1), AgeMap.empty(8192)
    for size in (6, 10, 4, 12):
        x = torch.randn(1, size, 4)
        state, update = ltm.update(state, x, return_record=True)
        am = record_absorption(report, am, update, stride=1, num_bins=ltm.config.num_bins)
    coords = np.array([2.0, 3.0, 10.0, 20.5, 31.5])  # (the map clamps within ½ sample of the edges)
    np.testing.assert_allclose(am.locate(coords), coords / 32, atol=1e-3)
    assert report.absorptions == 4 and len(report.tracked_positions) == 32


def test_config_validation_and_auto_widths():
    assert auto_widths(512) == (1 / 512, 2.5 / 512)
    assert LTMConfig(d_model=4, n_heads=1, num_basis=8, widths="auto").basis_widths == auto_widths(8)
    assert (
        MemoryConfig(ltm=dict(widths="auto", schedule="power", power=3.0)).ltm_config(4, 1).schedule
        == "power"
    )
    with pytest.raises(ValueError, match="schedule must be one of"):
        LTMConfig(d_model=4, n_heads=1, schedule="linear")
    with pytest.raises(ValueError, match="power"):
        LTMConfig(d_model=4, n_heads=1, schedule="power", power=0.0)
    with pytest.raises(ValueError, match="'auto'"):
        LTMConfig(d_model=4, n_heads=1, widths="wide")
    with pytest.raises(ValueError, match="needs RBF widths >= 1/N"):  # diverges: benchmarks/reach.py
        LTMConfig(d_model=4, n_heads=1, num_basis=32, widths=(0.01, 0.05), schedule="uniform_time")
    assert LTMConfig(d_model=4, n_heads=1, num_basis=32, widths=(0.01, 0.05)).schedule == "fixed"
    with pytest.raises(ValueError, match="schedule must be one of"):
        ModelConfig(vocab_size=5, ltm={"schedule": "nope"})
    with pytest.raises(ValueError, match="schedule must be one of"):
        contraction_tau(torch.ones(1), 4, "nope")


def test_add_memory_and_the_gpt2_config_take_the_new_options(tmp_path):
    """add_memory(schedule=, widths="auto") builds memories that follow the schedule (the memory after
    3 blocks differs from the paper's τ), and InfiniteGPT2Config saves and reloads the options."""
    from transformers import AutoModelForCausalLM, GPT2Config

    from infinite_former.hf import InfiniteGPT2Config, add_memory

    base = dict(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=50, bos_token_id=0, eos_token_id=1)
    memory = dict(block_size=8, num_basis=16, num_samples=16, num_bins=8, sticky=False)
    x = torch.randint(0, 50, (1, 32), generator=torch.Generator().manual_seed(0))
    coeffs = {}
    for schedule in ("fixed", "uniform_time"):
        torch.manual_seed(0)
        model = add_memory(AutoModelForCausalLM.from_config(GPT2Config(**base)), schedule=schedule,
                           widths="auto", **memory).eval()  # fmt: skip
        ltm = model.ltm[0]
        assert ltm.config.schedule == schedule and ltm.basis.widths == auto_widths(16)
        with torch.no_grad():
            coeffs[schedule] = model(x).memory.ltm[0].coeffs
    assert not torch.allclose(coeffs["fixed"], coeffs["uniform_time"])
    cfg = InfiniteGPT2Config(**base, **memory, schedule="power", power=3.0, widths="auto")
    cfg.save_pretrained(tmp_path)
    again = InfiniteGPT2Config.from_pretrained(tmp_path)
    assert (again.ltm["schedule"], again.ltm["power"], again.ltm["widths"]) == ("power", 3.0, "auto")
    assert again.ltm_config().basis_widths == auto_widths(16)


def test_generated_cli_flags_set_the_schedule_power_and_auto_widths():
    """--schedule, --power and --widths auto are generated from the LTMConfig fields (experiments/flags.py)
    and reach the memory's settings; a bad schedule is refused before training."""
    from infinite_former.cli import build_parser
    from infinite_former.experiments.sort import sort_settings_from_args

    parser = build_parser(["sort"])
    flags = ["sort", "--num-basis", "16", "--schedule", "power", "--power", "3", "--widths", "auto"]
    s = sort_settings_from_args(parser.parse_args(flags))
    assert (s.ltm.schedule, s.ltm.power, s.ltm.widths) == ("power", 3.0, "auto")
    assert s.ltm.basis_widths == auto_widths(16)
    assert sort_settings_from_args(parser.parse_args(["sort", "--widths", "0.1,0.2"])).ltm.widths == (
        0.1,
        0.2,
    )
    with pytest.raises(ValueError, match="schedule must be one of"):
        sort_settings_from_args(parser.parse_args(["sort", "--schedule", "linear"]))


def test_configs_saved_before_the_schedule_load_with_the_papers_behaviour():
    """schedule and power arrive in format 0.4: a 0.3 file (without them) loads with the paper's fixed τ,
    a 0.4 file must have them, and the saved form round-trips "auto"."""
    cfg = ModelConfig(vocab_size=30, ltm=dict(num_basis=16, widths="auto", schedule="power", power=3.0))
    saved = cfg.to_dict()
    assert saved["format_version"] == "0.4" and saved["ltm"]["widths"] == "auto"
    assert ModelConfig.from_dict(saved) == cfg
    old = {
        **saved,
        "format_version": "0.3",
        "ltm": {k: v for k, v in saved["ltm"].items() if k not in ("schedule", "power")},
    }
    loaded = ModelConfig.from_dict(old)
    assert (loaded.ltm.schedule, loaded.ltm.power, loaded.ltm.basis_widths) == ("fixed", 2.0, auto_widths(16))
    with pytest.raises(ValueError, match="schedule"):
        ModelConfig.from_dict({**old, "format_version": "0.4"})


def test_state_fingerprint_records_the_schedule():
    """A memory state made under one schedule is refused by a model with another (same weights, sizes)."""
    from infinite_former.provenance import check_fingerprint

    kw = dict(vocab_size=30, d_model=16, n_layers=1, n_heads=2, d_inner=32, mem_len=8, memory_type="infinite")
    ltm = dict(num_basis=16, num_samples=16, widths="auto")
    fps = {
        name: InfiniteFormerLM(ModelConfig(**kw, ltm={**ltm, **extra})).memory_fingerprint()
        for name, extra in [
            ("fixed", {}),
            ("uniform", {"schedule": "uniform_time"}),
            ("p3", {"schedule": "power", "power": 3.0}),
            ("p2", {"schedule": "power"}),
        ]
    }
    check_fingerprint(fps["fixed"], fps["fixed"])
    with pytest.raises(ValueError, match="schedule: 'uniform_time' != 'fixed'"):
        check_fingerprint(fps["uniform"], fps["fixed"])
    with pytest.raises(ValueError, match="power: 3.0 != 2.0"):
        check_fingerprint(fps["p3"], fps["p2"])
