"""Fault test (issue 20, build 6): a tiny training run, checkpointing every step, is killed with
SIGKILL at random moments (most of them inside a checkpoint write, whose file writes are slowed
down in the child to widen that window). Every time, the run directory must resume: the latest
checkpoint is complete (or there is none yet, and the run starts over), the half-written
``.step-N.tmp`` folder is removed, and the resumed run ends with exactly the weights and losses of
the uninterrupted run. The kill moments are drawn from a seeded RNG; the cases are counted.
"""

from __future__ import annotations

import collections
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from infinite_former.training import CheckpointError, TrainConfig, Trainer, find_checkpoint
from test_train import sorting_stream, tiny_model

STEPS = 5
KILLS = 4

CHILD = textwrap.dedent(
    """
    import os, sys, time
    import torch
    torch.set_num_threads(1)
    from infinite_former.training import TrainConfig, Trainer
    from test_train import sorting_stream, tiny_model

    save, fsync = torch.save, os.fsync
    torch.save = lambda *a, **k: (time.sleep(0.03), save(*a, **k))[1]  # slow disk: a wide window
    os.fsync = lambda fd: (time.sleep(0.01), fsync(fd))[1]
    config = TrainConfig(steps={steps}, batch_size=4, ckpt_every=1, out_dir=sys.argv[1],
                         progress=False, tensorboard=False, device="cpu")
    print("start", flush=True)
    Trainer(tiny_model(), config, sorting_stream).fit(resume=os.path.isdir(os.path.join(sys.argv[1], "checkpoints")))
    """
).format(steps=STEPS)


def config(out: Path) -> TrainConfig:
    return TrainConfig(
        steps=STEPS,
        batch_size=4,
        ckpt_every=1,
        out_dir=str(out),
        progress=False,
        tensorboard=False,
        device="cpu",
    )


def test_sigkill_during_checkpointing_always_resumes_to_the_uninterrupted_run(tmp_path):
    reference = tiny_model()
    Trainer(reference, config(tmp_path / "ref"), sorting_stream).fit()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    cases: collections.Counter[str] = collections.Counter()
    for i in range(KILLS):
        out = tmp_path / f"run{i}"
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert child.stdout.readline().strip() == b"start"
        root = out / "checkpoints"
        while not root.is_dir() and child.poll() is None:  # the first checkpoint write has begun
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.8))  # the 5 steps and their slowed-down checkpoints take about 1 s
        writing = root.is_dir() and any(p.name.endswith(".tmp") for p in root.iterdir())
        child.kill()  # SIGKILL
        child.wait()
        cases["killed while writing a checkpoint" if writing else "killed between checkpoints"] += 1
        try:
            done = int(find_checkpoint(out).rsplit("-", 1)[1])
        except FileNotFoundError:
            done = 0  # killed before the first checkpoint was complete
        except CheckpointError as err:  # a `latest` naming a missing or broken folder: the failure sought
            raise AssertionError(f"kill {i}: checkpoint folder left broken: {err}") from None
        cases[f"resumed from step {done}"] += 1
        model = tiny_model(seed=123 if done else 0)  # resumed weights must come from the checkpoint
        result = Trainer(model, config(out), sorting_stream).fit(resume=done > 0)
        assert result.step == STEPS
        assert not any(p.name.endswith(".tmp") for p in root.iterdir())  # leftovers removed
        for (name, got), want in zip(
            model.state_dict().items(), reference.state_dict().values(), strict=True
        ):
            assert torch.allclose(got, want, atol=1e-6, rtol=0), (i, done, name)
    print(f"\nSIGKILL fault cases: {dict(cases)}")
    assert sum(v for k, v in cases.items() if k.startswith("killed")) == KILLS
