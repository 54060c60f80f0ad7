"""Helpers of the 2-process tests: a training script run under torch.distributed.run, and the same
script's ``train`` run in this process on the whole batch."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch


def two_processes_vs_one(tmp_path, name: str, script: str) -> tuple[dict, list[float], dict[str, float]]:
    """Run ``script`` (saved as <name>.py) on 2 CPU processes, then its ``train(slice(None))`` here.

    The script's main writes {"losses", "weights", "world"} from rank 0 to the path in argv[1].
    Returns (the 2-process results, the 1-process losses, the 1-process weights).
    """
    path = tmp_path / f"{name}.py"
    path.write_text(script)
    result = tmp_path / f"{name}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        cmd + [str(path), str(result)], capture_output=True, text=True, timeout=240, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(result.read_text())
    assert two["world"] == 2

    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(name)  # the same training function, one process, whole batch
    finally:
        sys.path.remove(str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses, weights = module.train(slice(None))
    finally:
        torch.set_num_threads(threads)
    return two, losses, weights


def assert_same_training(two: dict, losses: list[float], weights: dict[str, float]) -> None:
    """Equal losses at every step, a loss that went down, and equal trained weights."""
    assert two["losses"] == pytest.approx(losses, abs=1e-5)
    assert losses[-1] < losses[0]
    assert weights.keys() == two["weights"].keys()
    for name, value in weights.items():
        assert two["weights"][name] == pytest.approx(value, rel=1e-4, abs=1e-4), name
