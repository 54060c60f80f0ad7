"""The machinery behind the README's claims: the compressive baseline, the paper preset, evaluation
that leaves training alone, interrupted parallel runs, and the benchmark's verdict logic."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from infinite_former.cli import main
from infinite_former.data.sorting import SortingConfig, SortingGenerator, SortingStream
from infinite_former.models import InfiniteFormerLM, ModelConfig
from infinite_former.training import TrainConfig, Trainer, find_checkpoint

ROOT = Path(__file__).resolve().parent.parent

TINY = [
    "--num-symbols", "4", "--segment-len", "16", "--mem-len", "8", "--num-basis", "8",
    "--num-samples", "8", "--num-bins", "8", "--d-model", "16", "--n-heads", "2", "--d-inner", "32",
    "--n-layers", "1", "--batch-size", "4", "--eval-sequences", "8", "--threads", "1", "--no-progress",
    "--device", "cpu",  # CPU on every machine: --jobs 2 needs CPU workers (one process on CUDA)
]  # fmt: skip


def compressive_model() -> InfiniteFormerLM:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=11, d_model=16, n_layers=2, n_heads=2, d_inner=32, dropout=0.0,
        memory_type="compressive", mem_len=8, cmem_len=4, compression_rate=2,
    )  # fmt: skip
    return InfiniteFormerLM(cfg).eval()


@torch.no_grad()
def test_compressive_memory_holds_the_compressed_evicted_states_in_order():
    model = compressive_model()
    tokens = torch.randint(0, 11, (2, 20))
    state = model.init_state(2)
    for seg in tokens.split(4, dim=1):  # 5 segments of 4: 12 tokens leave the 8-token STM
        _, state = model(seg, state)
    # Layer 0's inputs are the token embeddings. Evicted: tokens 0..11, compressed in pairs
    # into 6 slots, of which the last cmem_len = 4 are kept: the pairs (4,5) .. (10,11).
    evicted = model.embed(tokens[:, 4:12])
    expected = model.layers[0].compressor(evicted)  # (2, 4, e)
    assert state.cmem_valid.tolist() == [4, 4]
    torch.testing.assert_close(state.cmems[0], expected)
    torch.testing.assert_close(state.mems[0], model.embed(tokens[:, 12:20]))


@torch.no_grad()
def test_compressed_memory_changes_the_outputs():
    model = compressive_model()
    tokens = torch.randint(0, 11, (2, 24))
    state = model.init_state(2)
    for seg in tokens[:, :20].split(4, dim=1):
        _, state = model(seg, state)
    with_cmem, _ = model(tokens[:, 20:], state)
    emptied = state.reset(torch.zeros(2, dtype=torch.bool))
    emptied.memory.cmem_valid = torch.zeros_like(state.cmem_valid)
    without, _ = model(tokens[:, 20:], emptied)
    assert (with_cmem.logits - without.logits).abs().max() > 1e-4


def _fit(tmp_path, eval_every: int) -> list[float]:
    task = SortingConfig(length=20, num_symbols=4, seed=0)
    torch.manual_seed(0)
    model = InfiniteFormerLM(
        ModelConfig(
            vocab_size=task.vocab_size, d_model=16, n_layers=1, n_heads=2, d_inner=32, dropout=0.0,
            memory_type="infinite_sticky", mem_len=8, ltm=dict(num_basis=8, num_samples=8, num_bins=8),
        )
    )  # fmt: skip
    stream = lambda shard: SortingStream(SortingGenerator(task), 8, shard)  # noqa: E731
    valid = SortingConfig(length=20, num_symbols=4, seed=0, split="valid")
    evaluators = {"valid": lambda shard: SortingStream(SortingGenerator(valid), 8, shard, num_batches=1)}
    cfg = TrainConfig(
        steps=6, lr=1e-2, warmup_steps=1, batch_size=4, eval_every=eval_every, out_dir=str(tmp_path / "run"),
        progress=False, tensorboard=False, device="cpu", precision="fp32",
    )  # fmt: skip
    return Trainer(model, cfg, stream, evaluators).fit().losses


def test_evaluation_does_not_change_the_training_trajectory(tmp_path):
    # sticky sampling draws random numbers in evaluation too: they must not shift training's RNG
    assert _fit(tmp_path / "a", eval_every=2) == _fit(tmp_path / "b", eval_every=0)


def test_paper_preset_trains_one_model_per_length(tmp_path, capsys):
    code = main(
        ["sort", "--preset", "paper", *TINY, "--lengths", "20,40", "--steps", "2", "--ckpt-every", "0",
         "--models", "infinite_sticky,xl", "--jobs", "1", "--out", str(tmp_path), "--name", "p"]
    )  # fmt: skip
    assert code == 0
    res = json.loads((tmp_path / "p" / "results.json").read_text())
    assert res["settings"]["train_on"] == "each" and res["settings"]["num_symbols"] == 4
    assert res["settings"]["ltm"]["tau"] == 0.75 and res["settings"]["clip"] == 0.25  # from the preset
    assert sorted(res["runs"]) == ["infinite_sticky-L20", "infinite_sticky-L40", "xl-L20", "xl-L40"]
    for run in res["runs"].values():
        assert run["steps"] == 2 and len(run["train_lengths"]) == 1
    assert set(res["accuracy"]["xl"]) == {"20", "40"}


def test_sigterm_reaches_the_workers_and_each_saves_a_checkpoint(tmp_path):
    cmd = [sys.executable, "-m", "infinite_former.cli", "sort", *TINY, "--lengths", "64", "--steps", "100000",
           "--jobs", "2", "--out", str(tmp_path), "--name", "s"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs = [tmp_path / "s" / m / "train_log.csv" for m in ("infinite_sticky", "xl")]
    deadline = time.time() + 120
    while not all(p.exists() and p.stat().st_size > 0 for p in logs):  # both workers are training
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM.value, out
    assert "interrupted" in out
    for m in ("infinite_sticky", "xl"):
        assert os.path.isfile(os.path.join(find_checkpoint(tmp_path / "s" / m), "trainer.pt"))


def _sorting_benchmark():
    spec = importlib.util.spec_from_file_location("bench_sorting", ROOT / "benchmarks" / "sorting.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_verdict_on_a_constructed_not_above_case(tmp_path, monkeypatch):
    bench = _sorting_benchmark()
    monkeypatch.setattr(bench, "RECORDS", tmp_path)
    monkeypatch.setattr(bench, "OUT", tmp_path / "out.json")
    gen = torch.Generator().manual_seed(0)
    n = bench.base_settings().eval_sequences
    for seed in (0, 1, 2):
        for name in bench.VARIANTS:
            # every baseline scores 0.8 per sequence; the ∞-formers 0.05 lower, with noise
            level = 0.75 if name in bench.INFINITE else 0.8
            acc = {
                str(L): (level + 0.01 * torch.randn(n, generator=gen)).tolist()
                for L in bench.SETTINGS["lengths"]
            }
            rec = {
                "variant": name, "seed": seed, "settings_key": bench.settings_key(), "d_inner": 1,
                "num_parameters": 1, "final_train_loss": 0.1, "loss_curve": [[50, 1.0]], "test": acc,
                "machine": {"device": "cpu"},
            }  # fmt: skip
            if name in bench.INFINITE:
                rec["test_ltm_wiped"] = {str(max(bench.SETTINGS["lengths"])): acc["2048"]}
            (tmp_path / f"{name}-seed{seed}.json").write_text(json.dumps(rec))
    bench.main(["summarize", "--expected-seeds", "0", "1", "2"])
    res = json.loads((tmp_path / "out.json").read_text())
    assert res["complete"] and res["paired_seeds"] == [0, 1, 2]
    at_longest = [p for p in res["pairs"] if p["length"] == 2048 and p["b"] in bench.BASELINES]
    assert len(at_longest) == 6
    for p in at_longest:
        assert p["verdict"] == f"{p['b']} better" and p["seeds_won"] == 0
        assert p["ci95"][1] < 0 and p["mean_diff"] == pytest.approx(-0.05, abs=0.01)
