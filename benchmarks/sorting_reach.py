"""Issue 18's carry-back: the sorting benchmark with the recall benchmark's best LTM options.

    python benchmarks/sorting_reach.py run --seeds 0 1 2     # -> results/sorting_reach_cpu_runs/
    python benchmarks/sorting_reach.py summarize             # -> results/sorting_reach_cpu.json

``infinite_reach`` is the ∞-former (uniform samples) with ``schedule="uniform_time"`` and
``widths="auto"`` (benchmarks/recall.py's BEST), trained and tested exactly as the variants of
benchmarks/sorting.py (same settings, seeds, data and held-out sequences). The summary pairs it,
by seed and test sequence, with that benchmark's committed records of the same seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sorting  # noqa: E402  (the sorting benchmark: settings, training, records)
from infinite_former.stats import paired_comparison, seeds_won  # noqa: E402
from infinite_former.training.records import RunRecords  # noqa: E402
from infinite_former.utils import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "results" / "sorting_reach_cpu_runs"
OUT = ROOT / "results" / "sorting_reach_cpu.json"
NAME = "infinite_reach"
OTHERS = ("infinite", "infinite_sticky", "xl", "xl_params", "compressive")


def cmd_run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    RunRecords(RECORDS, sorting.settings_key()).run_missing(
        args.seeds,
        [NAME],
        lambda name, seed: sorting.run_one(name, seed, args.runs_dir),
        lambda rec: f"{ {n: round(statistics.fmean(v), 3) for n, v in rec['test'].items()} }",
    )


def cmd_summarize(args: argparse.Namespace) -> None:
    ours = RunRecords(RECORDS, sorting.settings_key()).load([NAME])[NAME]
    theirs = sorting.load_records()
    seeds = sorted(k for k in ours if all(k in theirs.get(o, {}) for o in OTHERS))
    if not seeds:
        raise SystemExit("no seed of infinite_reach has records of every other variant yet")
    s = sorting.base_settings()
    lengths = [str(n) for n in s.lengths]
    recs = {NAME: ours, **{o: theirs[o] for o in OTHERS}}
    models = {
        name: {
            "num_parameters": recs[name][seeds[0]]["num_parameters"],
            "accuracy": {
                n: statistics.fmean(statistics.fmean(recs[name][k]["test"][n]) for k in seeds)
                for n in lengths
            },
        }
        for name in (NAME, *OTHERS)
    }
    pairs = []
    for other in OTHERS:
        for n in lengths:
            xa = [recs[NAME][k]["test"][n] for k in seeds]
            xb = [recs[other][k]["test"][n] for k in seeds]
            p = paired_comparison(xa, xb, names=(NAME, other))
            p["length"] = int(n)
            p["seeds_won"] = seeds_won([np.mean(x) for x in xa], [np.mean(x) for x in xb])
            pairs.append(p)
    write_json(
        OUT,
        {
            "machine": ours[seeds[0]]["machine"],
            "config": {
                "variant": f"{NAME}: ∞-former (uniform samples) with LTM options {sorting.REACH}",
                "settings_key": sorting.settings_key(),
                "paired_with": "results/sorting_cpu_runs (the same settings, seeds and test sequences)",
                "metric": "answer accuracy per held-out test sequence (teacher forcing)",
                "commands": [
                    "python benchmarks/sorting_reach.py run --seeds ...",
                    "python benchmarks/sorting_reach.py summarize",
                ],
            },
            "seeds": seeds,
            "models": models,
            "pairs": pairs,
        },
    )
    for p in pairs:
        if p["length"] == max(s.lengths):
            lo, hi = p["ci95"]
            print(
                f"{NAME} - {p['b']} at {p['length']}: {p['mean_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] {p['verdict']}"
            )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--runs-dir", default="runs/bench-sorting-reach")
    r.set_defaults(func=cmd_run)
    sub.add_parser("summarize").set_defaults(func=cmd_summarize)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
