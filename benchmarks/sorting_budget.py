"""Why one seed of the first sorting benchmark looked stuck: a training-budget measurement.

    python benchmarks/sorting_budget.py                  # -> results/sorting_budget_cpu.json
    python benchmarks/sorting_budget.py --slow-seed 3    # -> results/sorting_budget_seed3_cpu.json

The first sorting benchmark (commit 9c33fd3: lengths 128/256/512, batch 16, 500 steps) had a seed
(0) in which both ∞-formers lost to Transformer-XL at every length. This script retrains that
seed's Transformer-XL and ∞-former with the same settings for 500 steps and for 1000 steps, and
records the held-out accuracy every 100 steps (validation split) and the training loss. If the
∞-former at 1000 steps is well above its 500-step accuracy while Transformer-XL is not, the
cause is the training budget (the larger model was still learning), not a model that cannot learn.

``--slow-seed K`` asks the same of the current benchmark (benchmarks/sorting.py: lengths up to
2048, batch 8): it retrains seed K's Transformer-XL and ∞-former for twice the benchmark's steps.

Each run records num_parameters (base: the same model as a Transformer-XL; memory: what the LTM
adds). For a file written before that: ``python benchmarks/sorting_budget.py params [--out FILE]``
rebuilds the models from its recorded settings (no training).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import torch

from infinite_former.experiments.sort import SortSettings, train_and_test
from infinite_former.models import InfiniteFormerLM
from infinite_former.training.records import parameter_counts
from infinite_former.utils import machine_info

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "sorting_budget_cpu.json"
# the first benchmark's settings (SortSettings' CPU defaults with M = 32 and 128 test sequences)
FIRST = dict(
    ltm=dict(num_samples=32), eval_sequences=128, valid_sequences=128, eval_every=100, seed=0, progress=False
)


def validation_curve(run_dir: str, length: int) -> list[list[float]]:
    """[step, validation accuracy at `length`] from the run's eval_log.csv."""
    with open(Path(run_dir) / "eval_log.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == f"valid_{length}/accuracy"]
    return [[int(r["step"]), float(r["value"])] for r in rows]


def _benchmark_settings(seed: int, steps: int) -> SortSettings:
    """benchmarks/sorting.py's settings for `seed`, trained for `steps`."""
    spec = importlib.util.spec_from_file_location("bench_sorting", ROOT / "benchmarks" / "sorting.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    s = bench.base_settings(seed, "runs/bench-sorting-budget")
    return dataclasses.replace(
        s, steps=steps, valid_sequences=128, eval_every=steps // 10, name=f"slow{steps}"
    )


def num_parameters(s: SortSettings, model: str) -> dict[str, int]:
    """{"total", "base", "memory"} of `model` built from the settings (random weights); base: the
    same model as a Transformer-XL (its memory has no weights)."""
    return parameter_counts(InfiniteFormerLM(s.model_config(model)), InfiniteFormerLM(s.model_config("xl")))


def cmd_params(argv: list[str]) -> int:
    """Add num_parameters to every run of an existing results file, rebuilt from its settings."""
    p = argparse.ArgumentParser(prog="sorting_budget.py params", description=cmd_params.__doc__)
    p.add_argument(
        "--out", default=str(OUT), help="the results file (e.g. results/sorting_budget_seed3_cpu.json)"
    )
    path = Path(p.parse_args(argv).out)
    d = json.loads(path.read_text())
    for name, run in d["runs"].items():
        run["num_parameters"] = num_parameters(
            SortSettings.from_dict(d["settings"][str(run["steps"])]), run["model"]
        )
        print(name, run["num_parameters"])
    path.write_text(json.dumps(d, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["params"]:
        return cmd_params(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slow-seed", type=int, default=None, help="retrain this seed of the current benchmark")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    path = OUT
    if a.slow_seed is not None:
        path = ROOT / "results" / f"sorting_budget_seed{a.slow_seed}_cpu.json"
        plans = [_benchmark_settings(a.slow_seed, 2000)]
    else:
        plans = [
            SortSettings(**FIRST, steps=n, out="runs/bench-sorting-budget", name=f"steps{n}")
            for n in (500, 1000)
        ]
    out: dict = {"machine": machine_info(precision="fp32"), "settings": {}, "runs": {}}
    for s in plans:
        steps = s.steps
        out["settings"][str(steps)] = s.to_dict()
        for model in ("xl", "infinite"):
            r = train_and_test(s, model, model, s.lengths, resume=False)
            out["runs"][f"{model}-{steps}"] = {
                "model": model,
                "steps": steps,
                "test_accuracy": {n: v["accuracy"] for n, v in r["test"].items()},
                "final_train_loss": r["final_train_loss"],
                "num_parameters": num_parameters(s, model),
                f"valid_curve_{max(s.lengths)}": validation_curve(r["run_dir"], max(s.lengths)),
            }
            acc = {n: round(v["accuracy"], 3) for n, v in r["test"].items()}
            print(f"{model} {steps} steps: {acc}", flush=True)
            path.write_text(json.dumps(out, indent=1))
    out["command"] = "python benchmarks/sorting_budget.py " + " ".join(argv)
    path.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
