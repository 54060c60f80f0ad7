"""Why one seed of the first sorting benchmark looked stuck: a training-budget measurement.

    python benchmarks/sorting_budget.py      # -> results/sorting_budget_cpu.json

The first sorting benchmark (commit 9c33fd3: lengths 128/256/512, batch 16, 500 steps) had a seed
(0) in which both ∞-formers lost to Transformer-XL at every length. This script retrains that
seed's Transformer-XL and ∞-former with the same settings for 500 steps and for 1000 steps, and
records the held-out accuracy every 100 steps (validation split) and the training loss. If the
∞-former at 1000 steps is well above its 500-step accuracy while Transformer-XL is not, the
cause is the training budget (the larger model was still learning), not a model that cannot learn.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch

from infinite_former.experiments.sort import SortSettings, train_and_test
from infinite_former.utils import machine_info

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "sorting_budget_cpu.json"
# the first benchmark's settings (SortSettings' CPU defaults with M = 32 and 128 test sequences)
FIRST = dict(num_samples=32, eval_sequences=128, valid_sequences=128, eval_every=100, seed=0, progress=False)


def validation_curve(run_dir: str, length: int) -> list[list[float]]:
    """[step, validation accuracy at `length`] from the run's eval_log.csv."""
    with open(Path(run_dir) / "eval_log.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == f"valid_{length}/accuracy"]
    return [[int(r["step"]), float(r["value"])] for r in rows]


def main() -> int:
    torch.set_num_threads(1)
    out: dict = {"machine": machine_info(), "settings": {}, "runs": {}}
    for steps in (500, 1000):
        s = SortSettings(**FIRST, steps=steps, out="runs/bench-sorting-budget", name=f"steps{steps}")
        out["settings"][str(steps)] = s.to_dict()
        for model in ("xl", "infinite"):
            r = train_and_test(s, model, model, s.lengths, resume=False)
            out["runs"][f"{model}-{steps}"] = {
                "model": model,
                "steps": steps,
                "test_accuracy": {n: v["accuracy"] for n, v in r["test"].items()},
                "final_train_loss": r["final_train_loss"],
                "valid_curve_512": validation_curve(r["run_dir"], 512),
            }
            acc = {n: round(v["accuracy"], 3) for n, v in r["test"].items()}
            print(f"{model} {steps} steps: {acc}", flush=True)
            OUT.write_text(json.dumps(out, indent=1))
    out["command"] = "python benchmarks/sorting_budget.py"
    OUT.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
