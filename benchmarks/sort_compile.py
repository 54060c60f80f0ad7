"""What `infinite-former sort --compile` saves end to end: the same command with and without it.

    python benchmarks/sort_compile.py                 # the CLI default (800 steps, lengths 128-512)
    python benchmarks/sort_compile.py --setting long  # benchmarks/sorting.py's (1000 steps, up to 2048)

Each setting runs `infinite-former sort` twice in subprocesses, eager then `--compile`, each model in
its own process (the CLI's default: two side by side on two cores), and records per model: the
training seconds (compilation included), the wall seconds of the last half of the training steps
(from train_log.csv: compiled code is warm by then) and the test accuracies. The compiled run gets
an empty inductor cache (TORCHINDUCTOR_CACHE_DIR in a temporary folder), as on a first run on a
machine; --warm-cache keeps the user's cache, where an earlier run may have left compiled kernels.
Writes results/sort_compile_cpu.json (each setting replaces its own entry).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infinite_former.utils import machine_info, write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "sort_compile_cpu.json"
SETTINGS = {
    "default": [],
    "long": [
        "--lengths",
        "256,512,1024,2048",
        "--batch-size",
        "8",
        "--steps",
        "1000",
        "--eval-sequences",
        "128",
    ],
}


def last_half_seconds(log: Path, steps: int) -> float:
    """Wall seconds between the logged steps steps/2 and steps (train_log.csv's time column)."""
    times = {int(r["step"]): float(r["time"]) for r in csv.DictReader(log.open())}
    return round(times[steps] - times[steps // 2], 2)


def run(flags: list[str], out: Path, name: str, env: dict[str, str] | None = None) -> dict:
    cmd = ["infinite-former", "sort", *flags, "--out", str(out), "--name", name, "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    res = json.loads((out / name / "results.json").read_text())
    steps = res["settings"]["steps"]
    return {
        "command": " ".join(["infinite-former", "sort", *flags]),
        "wall_seconds": round(wall, 1),
        "models": {
            m: {
                "num_parameters": r["num_parameters"],
                "train_seconds": round(r["train_seconds"], 1),
                "last_half_wall_seconds": last_half_seconds(out / name / m / "train_log.csv", steps),
                "accuracy": r["test"],
            }
            for m, r in res["runs"].items()
        },
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=sorted(SETTINGS), default="default")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--warm-cache", action="store_true", help="keep the user's inductor cache")
    args = p.parse_args(argv)
    flags = SETTINGS[args.setting]
    with tempfile.TemporaryDirectory() as tmp:
        env = (
            None
            if args.warm_cache
            else {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")}
        )
        eager = run(flags, Path(tmp), "eager")
        compiled = run([*flags, "--compile"], Path(tmp), "compiled", env)
    entry = {
        "inductor_cache": "the user's (may hold kernels of earlier runs)" if args.warm_cache else "empty",
        "eager": eager,
        "compiled": compiled,
        "speedup": {
            m: {
                "training, compilation included": round(
                    eager["models"][m]["train_seconds"] / compiled["models"][m]["train_seconds"], 3
                ),
                "last half of the steps": round(
                    eager["models"][m]["last_half_wall_seconds"]
                    / compiled["models"][m]["last_half_wall_seconds"],
                    3,
                ),
            }
            for m in eager["models"]
        },
    }
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    result["machine"] = {**machine_info(precision="fp32"), "torch_threads": 1}  # each CLI worker's
    result["command"] = "python benchmarks/sort_compile.py --setting SETTING"
    result["note"] = (
        "one run each, two models side by side on the machine's cores: the machine is shared, so these "
        "are single measurements, not paired comparisons; the accuracies differ because compiled sticky "
        "sampling draws other random numbers"
    )
    result[args.setting] = entry
    write_json(out, result)
    print(json.dumps(entry["speedup"], indent=1))


if __name__ == "__main__":
    sys.exit(main())
