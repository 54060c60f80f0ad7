"""The training loop: learning, exact resume, DDP equivalence, config and checkpoint errors."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from infinite_former.data.segments import Segment, Shard
from infinite_former.data.sorting import SortingConfig, SortingGenerator, SortingStream
from infinite_former.models import MEMORY_TYPES, InfiniteFormerLM, ModelConfig
from infinite_former.training import (
    CheckpointError,
    TrainConfig,
    Trainer,
    evaluate,
    find_checkpoint,
    load_checkpoint,
    lr_lambda,
)

TASK = SortingConfig(length=20, num_symbols=4, seed=0)  # 24 inputs -> 3 segments of 8
SEG = 8


def tiny_model(memory_type: str = "infinite_sticky", dropout: float = 0.0, seed: int = 0) -> InfiniteFormerLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=TASK.vocab_size,
        d_model=16,
        n_layers=2,
        n_heads=2,
        d_inner=32,
        dropout=dropout,
        mem_len=8,
        memory_type=memory_type,
        cmem_len=4,
        compression_rate=2,
        ltm=dict(num_basis=8, num_samples=8, num_bins=8),
    )
    return InfiniteFormerLM(cfg)


def sorting_stream(shard: Shard) -> SortingStream:
    return SortingStream(SortingGenerator(TASK), SEG, shard)


class LMFraming:
    """Every segment trains (loss on every real token) and memory carries across steps: the LM case."""

    def __init__(self, shard: Shard) -> None:
        self.inner = sorting_stream(shard)

    def __iter__(self):
        for s in self.inner:
            yield Segment(s.tokens, s.targets, s.targets != TASK.pad_id, s.reset, train=True)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, d):
        self.inner.load_state_dict(d)


class SigtermAfter:
    """Delivers a real SIGTERM to this process while the k-th training segment is being produced."""

    def __init__(self, factory, k: int):
        self.factory, self.k = factory, k

    def __call__(self, shard: Shard):
        outer = self

        class _Stream:
            def __init__(self) -> None:
                self.inner = outer.factory(shard)
                self.seen = 0

            def __iter__(self):
                for s in self.inner:
                    if s.train:
                        self.seen += 1
                        if self.seen == outer.k:
                            os.kill(os.getpid(), signal.SIGTERM)
                    yield s

            def state_dict(self):
                return self.inner.state_dict()

            def load_state_dict(self, d):
                self.inner.load_state_dict(d)

        return _Stream()


def cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(
        steps=6,
        lr=1e-2,
        warmup_steps=1,
        batch_size=4,
        out_dir=str(tmp_path / "run"),
        progress=False,
        tensorboard=False,
        device="cpu",  # exact comparisons: CPU fp32 on every machine (CUDA: tests/test_cuda.py)
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("memory_type", MEMORY_TYPES)
def test_loss_falls_for_every_memory_type(tmp_path, memory_type):
    model = tiny_model(memory_type)
    res = Trainer(model, cfg(tmp_path, steps=12, batch_size=8), sorting_stream).fit()
    assert len(res.losses) == 12 and all(torch.isfinite(torch.tensor(res.losses)))
    first, last = sum(res.losses[:3]) / 3, sum(res.losses[-3:]) / 3
    assert last < first - 0.15, (memory_type, res.losses)


@pytest.mark.parametrize("framing", ["sorting", "lm"])
def test_interrupted_run_resumes_exactly(tmp_path, framing):
    factory = sorting_stream if framing == "sorting" else LMFraming
    # infinite_sticky + dropout: the model itself draws random numbers, so RNG state must be restored too
    full = Trainer(tiny_model(dropout=0.1), cfg(tmp_path / "a"), factory).fit()
    assert not full.stopped_by_signal and len(full.losses) == 6

    part = Trainer(tiny_model(dropout=0.1), cfg(tmp_path / "b"), SigtermAfter(factory, 3)).fit()
    assert part.stopped_by_signal and part.step == 3 and len(part.losses) == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    ckpt = find_checkpoint(tmp_path / "b" / "run")
    assert ckpt.endswith("step-00000003")
    rest = Trainer(tiny_model(dropout=0.1, seed=123), cfg(tmp_path / "b"), factory).fit(resume=True)
    assert rest.step == 6
    assert torch.allclose(
        torch.tensor(part.losses + rest.losses), torch.tensor(full.losses), atol=1e-6, rtol=0
    )
    # the CSV log holds each step once
    with open(tmp_path / "b" / "run" / "train_log.csv") as f:
        steps = [int(line.split(",")[0]) for line in list(f)[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 6


def test_checkpoint_contents_and_rotation(tmp_path):
    c = cfg(tmp_path, steps=4, ckpt_every=2, tensorboard=True)
    Trainer(tiny_model(), c, sorting_stream, model_config=tiny_model().config.to_dict()).fit()
    root = tmp_path / "run" / "checkpoints"
    assert sorted(os.listdir(root)) == ["latest", "step-00000004"]  # the step-2 one was removed after
    ck = load_checkpoint(tmp_path / "run")
    assert ck["trainer"]["step"] == 4 and ck["trainer"]["model_config"]["memory_type"] == "infinite_sticky"
    assert {"python", "torch"} <= set(ck["rank"]["rng"]) and ck["rank"]["stream"] == {"batch_index": 4}
    assert any(k.startswith("ltm") for k in ck["rank"]["memory"])
    assert set(ck["model"]) and all(isinstance(v, torch.Tensor) for v in ck["model"].values())
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "run" / "tb"))
    with open(tmp_path / "run" / "train_log.csv") as f:
        rows = list(f)
    assert rows[0].startswith("step,loss") and len(rows) == 1 + 1  # log_every=10: only the final step 4


def _tree_digest(path) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_a_diverged_loss_stops_training_before_any_checkpoint(tmp_path):
    model = tiny_model("xl")  # (the ∞-former's memory refuses NaN queries itself, with its own error)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))  # the forward computes a NaN loss at step 1
    with pytest.raises(FloatingPointError, match=r"diverged at step 1: loss nan.*last checkpoint: none"):
        Trainer(model, cfg(tmp_path, ckpt_every=1), sorting_stream).fit()
    assert not list((tmp_path / "run").rglob("*.safetensors")) and not list((tmp_path / "run").rglob("*.pt"))


def test_missing_checkpoint_is_a_clear_error_and_writes_nothing(tmp_path):
    c = cfg(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "run")):
        Trainer(tiny_model(), c, sorting_stream).fit(resume=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("victim", ["trainer.pt", "model.safetensors", "rank0.pt"])
def test_corrupt_checkpoint_is_a_clear_error_and_overwrites_nothing(tmp_path, victim):
    c = cfg(tmp_path, steps=2)
    Trainer(tiny_model(), c, sorting_stream).fit()
    step_dir = find_checkpoint(c.out_dir)
    with open(os.path.join(step_dir, victim), "r+b") as f:
        f.seek(10)
        f.write(b"\x00garbage\xff" * 4)
    before = _tree_digest(c.out_dir)
    with pytest.raises(CheckpointError, match=victim):
        Trainer(tiny_model(), cfg(tmp_path, steps=4), sorting_stream).fit(resume=True)
    assert _tree_digest(c.out_dir) == before


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(steps=0), "steps"),
        (dict(lr=-1.0), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(warmup_steps=10, steps=5), "warmup_steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(clip=-1.0), "clip"),
        (dict(betas=(0.9, 1.5)), "betas"),
        (dict(device="tpu"), "device"),
        (dict(precision="yes"), "precision"),
        (dict(compile="yes"), "compile"),
        (dict(min_lr_ratio=2.0), "min_lr_ratio"),
    ],
)
def test_bad_train_configs_fail_before_training(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(out_dir=str(tmp_path / "run"), **kw)
    assert not (tmp_path / "run").exists()


def test_bad_model_configs_fail_before_training():
    for kw, match in [
        (dict(mem_len=-1), "mem_len"),
        (dict(memory_type="lstm"), "memory_type"),
        (dict(d_model=30, n_heads=4), "divisible"),
    ]:
        with pytest.raises(ValueError, match=match):
            ModelConfig(vocab_size=6, **kw)
    # configs saved before precision existed (bf16 True / False / "auto") still load
    assert [TrainConfig.from_dict({"bf16": v}).precision for v in (True, False, "auto")] == [
        "bf16",
        "fp32",
        "auto",
    ]


def test_lr_schedule_warmup_then_cosine():
    vals = [lr_lambda(s, 4, 14, 0.1) for s in range(15)]
    assert vals[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert vals[4] == pytest.approx(1.0) and vals[9] == pytest.approx(0.55) and vals[14] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(vals[3:], vals[4:]))


def test_evaluate_accuracy_matches_a_direct_count():
    model = tiny_model("xl")
    segs = list(sorting_stream(Shard(0, 1, 3)).batch_segments(0))
    res = evaluate(model, segs, "cpu", max_targets_per_row=4)
    state, correct = model.init_state(3, "cpu"), 0
    model.eval()
    with torch.no_grad():
        for s in segs:
            out, state = model(s.tokens, state.reset(s.reset))
        correct = (out.logits.argmax(-1) == s.targets)[s.loss_mask].sum().item()
    assert res["num_targets"] == 12 and res["accuracy"] == pytest.approx(correct / 12)
    assert len(res["accuracy_by_index"]) == 4


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, {tests!r})
    from test_train import TrainConfig, Trainer, sorting_stream, tiny_model
    res = Trainer(tiny_model("infinite"), TrainConfig(steps=3, lr=1e-2, warmup_steps=1, batch_size=4,
                  out_dir={out!r}, progress=False, tensorboard=False, device="cpu"), sorting_stream).fit()
    import torch.distributed as dist
    if not dist.is_initialized() or dist.get_rank() == 0:
        json.dump(res.losses, open({result!r}, "w"))
    if dist.is_initialized():  # leave together: a rank exiting with the group alive can abort in gloo
        dist.barrier()
        dist.destroy_process_group()
    """
)


def test_two_process_ddp_matches_one_process(tmp_path):
    single = Trainer(
        tiny_model("infinite"),
        TrainConfig(
            steps=3,
            lr=1e-2,
            warmup_steps=1,
            batch_size=4,
            out_dir=str(tmp_path / "one"),
            progress=False,
            device="cpu",  # the torchrun side is forced to CPU fp32: compare like with like
        ),
        sorting_stream,
    ).fit()
    script = tmp_path / "ddp.py"
    result = tmp_path / "ddp.json"
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    script.write_text(DDP_SCRIPT.format(tests=tests_dir, out=str(tmp_path / "two"), result=str(result)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = json.loads(result.read_text())
    assert len(losses) == 3
    assert losses == pytest.approx(single.losses, abs=1e-5)
    ck = load_checkpoint(tmp_path / "two", rank=1)
    assert ck["trainer"]["world_size"] == 2 and ck["rank"]["stream"] == {"batch_index": 3}


def test_checkpoint_weights_load_strictly_except_tied(tmp_path):
    from infinite_former.training.checkpoints import load_weights

    model = tiny_model("xl")
    weights = {k: v for k, v in model.state_dict().items() if k != "head.weight"}  # tied: stored once
    load_weights(tiny_model("xl", seed=1), weights, "ok")  # loads
    with pytest.raises(CheckpointError, match=r"bad.*unexpected \['extra'\]"):
        load_weights(tiny_model("xl"), {**weights, "extra": torch.zeros(1)}, "bad")
    dropped = {k: v for k, v in weights.items() if k != "ln_f.weight"}
    with pytest.raises(CheckpointError, match=r"missing \['ln_f.weight'\]"):
        load_weights(tiny_model("xl"), dropped, "bad")
    with pytest.raises(CheckpointError, match="does not match"):
        load_weights(tiny_model("xl"), {**weights, "ln_f.weight": torch.zeros(3)}, "bad")


def test_loss_curve_averages_the_logged_losses_per_window(tmp_path):
    from infinite_former.training.logs import loss_curve

    with open(tmp_path / "train_log.csv", "w") as f:
        f.write("step,loss\n" + "".join(f"{s},{s / 10}\n" for s in range(10, 101, 10)))
    assert loss_curve(tmp_path, every=50) == [[50, 3.0], [100, 8.0]]  # means of 1..5 and 6..10
