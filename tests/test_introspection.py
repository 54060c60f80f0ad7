"""Memory introspection (introspection.py, `lm inspect`): the age map, the reading, the report, the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from infinite_former import LongTermAttention, LTMConfig
from infinite_former.cli import main
from infinite_former.introspection import AgeMap, InspectConfig, inspect_document, write_report
from infinite_former.memory import uniform_positions
from infinite_former.models import InfiniteFormerLM, ModelConfig
from infinite_former.ridge import reconstruct

WORDS = "the king queen lord lady sword crown castle night day love death war peace".split()


def tiny_lm(memory_type: str = "infinite_sticky", **over) -> InfiniteFormerLM:
    torch.manual_seed(0)
    cfg = dict(
        vocab_size=50, d_model=16, n_layers=2, n_heads=2, d_inner=32, dropout=0.0, mem_len=8,
        memory_type=memory_type, ltm=dict(num_basis=16, num_samples=16, num_bins=8),
    )  # fmt: skip
    return InfiniteFormerLM(ModelConfig(**{**cfg, **over})).eval()


# ---------------------------------------------------------------------------------- the age map


def test_age_map_uniform_contraction_has_the_closed_form():
    """Uniform samples, τ = 0.5, blocks of 10: block i of k sits on [τ^(k-i), τ^(k-1-i)], the first on [0, τ^(k-1)]."""
    am = AgeMap.empty(4096)
    for k in range(4):
        samples = None if k == 0 else uniform_positions(64, dtype=torch.float64).numpy()
        am = am.absorb(10 * k, 10, 0.5, samples)
    assert np.all(np.diff(am.pos) >= 0) and am.pos[0] >= 0 and am.pos[-1] <= 40
    # the newest block is spread linearly over [τ, 1]; the one before over [τ², τ]; the first over [0, τ³]
    np.testing.assert_allclose(am.locate(np.array([30.0, 35.0, 40.0])), [0.5, 0.75, 1.0], atol=1e-3)
    np.testing.assert_allclose(am.locate(np.array([20.0, 30.0])), [0.25, 0.5], atol=2e-3)
    np.testing.assert_allclose(am.locate(np.array([10.0])), [0.125], atol=2e-3)
    np.testing.assert_allclose(am.locate(np.array([5.0])), [0.0625], atol=2e-3)


def test_age_map_locates_stored_content_of_a_smooth_stream():
    """A smooth stream through a real LTM: the vector at the located t is the token's, with an error that
    grows with age; a map shifted by one block finds other content (errors near 1)."""
    torch.manual_seed(0)
    block, n = 64, 640
    ltm = LongTermAttention(
        LTMConfig(d_model=8, n_heads=2, num_basis=128, num_samples=128, widths=(0.01,), ridge_lambda=1e-3,
                  gate=False, sticky=False)
    )  # fmt: skip
    t = torch.arange(n) / n
    stream = torch.stack(
        [torch.sin(20 * torch.pi * f * t) for f in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.3)], -1
    )
    stream = stream[None] + 0.2
    state, am = ltm.init_state(1), AgeMap.empty(4096)
    for k in range(n // block):
        samples = None if k == 0 else uniform_positions(128, dtype=torch.float64).numpy()
        state = ltm.update(state, stream[:, k * block : (k + 1) * block])
        am = am.absorb(k * block, block, 0.5, samples)

    def errors(coords):
        rec = reconstruct(state.coeffs, ltm.basis(torch.tensor(am.locate(coords), dtype=torch.float32)))[0]
        return ((rec - stream[0]).norm(dim=-1) / stream[0].norm(dim=-1)).view(-1, block).mean(1)

    pos = np.arange(n) + 0.5
    err = errors(pos)
    assert err[-1] < 1e-3 and err[-3] < 0.05  # the newest blocks are recovered
    assert err[0] > 5 * err[-3]  # older content is squeezed and blurred
    assert errors(np.clip(pos + block, 0, n - 0.5))[-4:-1].min() > 0.5


# ---------------------------------------------------------------------------------- the reading


def test_reading_is_the_models_own_computation():
    """Uniform sampling: the inspector's reading (explicit absorption) gives the model's own NLL."""
    model = tiny_lm("infinite")
    ids = torch.randint(0, 50, (200,), generator=torch.Generator().manual_seed(0))
    report = inspect_document(model, ids, seg_len=8, config=InspectConfig(grid_points=256, max_tracked=64))
    state, nll, count = None, 0.0, 0
    with torch.no_grad():
        for s in range(0, 200, 8):
            tgt = torch.cat([ids[s + 1 : s + 9], torch.full((max(0, s + 9 - 200),), -1)])[None]
            out, state = model(ids[None, s : s + 8], state, targets=tgt)
            nll, count = nll + float(out.extras["nll_sum"]), count + int(out.extras["n_targets"])
    assert report.meta["nll_per_token"] == pytest.approx(nll / count, rel=1e-6)
    assert report.layers[0].absorptions == 200 // 8 - 2  # segment 1 leaves the STM in call 2, enters in 3
    for i, layer in enumerate(report.layers):
        heads = layer.attention_mass.shape[0]
        total = layer.attention_mass.sum() + layer.outside_mass.sum()
        assert total == pytest.approx(layer.queries * heads, rel=1e-6)  # each density has mass 1
        assert layer.queries == 200 - 16  # from call 3 on, every query reads a non-empty memory
        assert not layer.sticky_histograms and report.median_attention_age(i) > model.config.mem_len / 2


def test_sticky_histograms_are_the_samples_the_update_used(sticky_draws):
    """The recorded sample positions are those update_memory drew (a spy on memory.sticky_positions)."""
    used = sticky_draws
    model = tiny_lm("infinite_sticky")
    ids = torch.randint(0, 50, (120,), generator=torch.Generator().manual_seed(1))
    report = inspect_document(model, ids, seg_len=8, config=InspectConfig(grid_points=128, seed=3))
    recorded = [h for step in zip(*(r.sticky_histograms for r in report.layers)) for h in step]
    assert (
        len(recorded) == len(used) == 2 * (120 // 8 - 3)
    )  # one per layer per absorption into a non-empty memory
    for a, b in zip(recorded, used):
        np.testing.assert_array_equal(a, b)
    assert all(h.sum() == 16 for h in recorded)


def test_report_json_and_figures(tmp_path):
    model = tiny_lm("infinite_sticky")
    ids = torch.randint(0, 50, (300,), generator=torch.Generator().manual_seed(2))
    report = inspect_document(model, ids, seg_len=16, config=InspectConfig(grid_points=128, max_tracked=100))
    files = write_report(report, tmp_path)
    assert set(files) == {"json", "attention_age", "reconstruction", "sticky"}
    for name in files.values():
        if name.endswith(".png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "inspect.json").read_text())
    assert data["tokens"] == 300 and len(data["layers"]) == 2 and "torch" in data["machine"]
    rec = data["layers"][0]["reconstruction"]
    assert sum(rec["tokens"]) == len(report.layers[0].tracked_positions) > 50
    assert all(e is None or e >= 0 for e in rec["mean_relative_error"])
    assert rec["at_age"]["1000"] == {"relative_error": None, "tokens": 0}  # the document is shorter
    assert 0 < rec["baseline_mean_vector"] < 2


def test_models_without_long_term_memory_are_refused():
    with pytest.raises(ValueError, match="no long-term memory"):
        inspect_document(tiny_lm("xl"), torch.arange(20) % 50, seg_len=8)
    with pytest.raises(ValueError, match="seg_len"):
        inspect_document(tiny_lm("infinite"), torch.arange(20) % 50, seg_len=0)


# ------------------------------------------------------------------------------------------- CLI


def test_lm_inspect_cli_end_to_end(tmp_path, capsys):
    rng = random.Random(0)
    for split in ("train", "test"):
        (tmp_path / "corpus" / split).mkdir(parents=True)
        (tmp_path / "corpus" / split / "a.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(80)))
    run = tmp_path / "run"
    argv = ["train", "--data", str(tmp_path / "corpus"), "--run-dir", str(run), "--tokenizer", "bytes"]
    argv += "--seg-len 16 --batch-size 2 --steps 2 --warmup 1 --d-model 16 --n-heads 2 --d-inner 32".split()
    argv += "--mem-len 16 --num-basis 16 --num-bins 8 --no-progress --no-tensorboard".split()
    argv += ["--valid-split", "", "--device", "cpu", "--eval-splits"]
    assert main(["lm", *argv]) == 0
    text = tmp_path / "doc.txt"
    text.write_text(" ".join(rng.choice(WORDS) for _ in range(150)))
    out = tmp_path / "inspect"
    argv = ["inspect", "--run", str(run), "--text", str(text), "--out", str(out), "--device", "cpu"]
    assert main(["lm", *argv, "--grid-points", "128"]) == 0
    printed = capsys.readouterr().out
    assert "layer 0: median attention age" in printed and "inspect.json" in printed
    raw = (out / "inspect.json").read_text()
    assert str(tmp_path) not in raw  # no absolute paths in the results
    data = json.loads(raw)
    assert data["run"] == "run" and data["text"] == "doc.txt" and data["step"] == 2
    assert data["tokens"] == len(text.read_bytes()) and {"attention_age", "sticky"} <= set(data["files"])
    assert main(["lm", "inspect", "--run", str(run), "--text", str(tmp_path / "nope.txt")]) == 2
    assert "--text" in capsys.readouterr().err


def test_lm_inspect_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    text = Path(tmp_path / "doc.txt")
    text.write_text("some words")
    assert main(["lm", "inspect", "--run", str(tmp_path / "none"), "--text", str(text)]) == 2
    assert "lm_config.json" in capsys.readouterr().err
