"""Everything we want measured on a GPU, as one command that stops itself on a time budget.

    python benchmarks/gpu_suite.py --out "$OUT"                  # on the GPU machine, ≤ 9 minutes
    python benchmarks/gpu_suite.py --dry-run --out /tmp/suite     # every step on the CPU, toy sizes

Steps, in order; each runs in its own subprocess, a failure is recorded and the suite goes on, and the
results JSON is rewritten after every step, so whatever finished is on disk if the run is cut off:

1. ``pytest -m cuda``: the CUDA tests (tests/test_cuda.py and the other ``cuda``-marked tests).
2. LTM scaling (benchmarks/ltm_scaling.py): float32 and bf16, eager and torch.compile; LongTermAttention
   forward + backward of one segment beside softmax attention (F.scaled_dot_product_attention) over
   N = 512 keys with the same shapes, after 4k, 64k and 1M tokens were absorbed.
3. Generation (benchmarks/generation.py, as a subprocess with the flags it supports).
4. A paper-scale sorting slice: ``infinite-former sort --preset paper`` at length 4k for a few hundred
   steps per memory type, the ∞-former (sticky) in float32 and in bf16 (partial: the paper trains 20k).
5. The Shakespeare LM (the recipe of benchmarks/lm_shakespeare.py, through ``lm train``) at a larger
   model size, Transformer-XL and the ∞-former (sticky) (partial: few steps);
   skipped, with the reason recorded, when ``--data`` has no such folder (the GPU machine receives
   only the repository: copy the data into an ignored folder of it, e.g. data_local/shakespeare).

Writes ``<out>/gpu_<device>.json`` (``gpu_dry_run.json`` with --dry-run): the machine (device name,
torch, CUDA), every step's status (ok / failed: <error> / skipped: <reason>), its numbers, and the
issue's goals as met / not met / not measured. Intermediate files go to ``--work`` (not to --out,
so that the device tool's 8-file limit on $OUT is not reached).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from infinite_former.utils import machine_info  # noqa: E402

LTM_VARIANTS = [("float32", False), ("bfloat16", False), ("float32", True), ("bfloat16", True)]
SORT_RUNS = [  # (memory type, bf16): the sticky ∞-former in both precisions first (the bf16 goal)
    ("infinite_sticky", "off"),
    ("infinite_sticky", "on"),
    ("xl", "on"),
    ("infinite", "on"),
    ("compressive", "on"),
]
GOALS = {
    "ltm_fwd_bwd_le_1.5x_sdpa": "LTM layer forward + backward ≤ 1.5× SDPA over N keys at the same shapes",
    "flat_cost_4k_to_1M": "flat cost from 4k to 1M tokens (LTM time max/min ≤ 1.1)",
    "bf16_within_1pct_of_fp32_sorting": "bf16 within 1% of float32 on the sorting accuracy",
    "compiled_ge_1.3x_eager": "compiled ≥ 1.3× faster than eager (LTM forward + backward)",
}


# -------------------------------------------------------------------------------------- running


class Suite:
    """Runs steps under one time budget and keeps the results JSON up to date."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.start = time.perf_counter()
        self.work = Path(args.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.device = "cpu" if args.dry_run else "cuda"
        self.steps: dict[str, dict[str, Any]] = {}
        name = "dry_run" if args.dry_run else _slug(machine_info().get("gpu", "cpu"))
        self.path = Path(args.out) / f"gpu_{name}.json"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        if args.dry_run:
            self.env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.start)

    def run(self, name: str, cap_s: float, fn, *fn_args) -> None:
        """Run one step with at most cap_s seconds (less if the budget is shorter); record its result."""
        limit = min(cap_s, self.left() - self.args.reserve_s)
        if limit < self.args.min_step_s:
            self.steps[name] = {"status": f"skipped: out of time budget ({self.left():.0f} s left)"}
        else:
            t0 = time.perf_counter()
            print(f"== {name} (up to {limit:.0f} s)", flush=True)
            try:
                rec = fn(limit, *fn_args)
            except Exception as e:  # noqa: BLE001 -- any failure is recorded and the suite goes on
                rec = {"status": f"failed: {type(e).__name__}: {_clean(str(e))[-600:]}"}
            rec.setdefault("status", "ok")
            rec["seconds"] = round(time.perf_counter() - t0, 1)
            self.steps[name] = rec
            print(f"   {rec['status']} ({rec['seconds']} s)", flush=True)
        self.write()

    def call(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        """A subprocess from the repository root; raises StepError with its output tail if it fails."""
        try:
            proc = subprocess.run(
                argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=max(timeout, 1)
            )
        except subprocess.TimeoutExpired as e:
            tail = (e.stdout or b"")[-800:] if isinstance(e.stdout, bytes) else (e.stdout or "")[-800:]
            raise StepError(f"timed out after {timeout:.0f} s; output tail: {_clean(str(tail))}") from None
        if proc.returncode != 0:
            raise StepError(f"exit {proc.returncode}: {_clean((proc.stdout + proc.stderr)[-1500:])}")
        return proc

    def write(self) -> None:
        data = {
            "suite": "benchmarks/gpu_suite.py",
            "command": "python benchmarks/gpu_suite.py " + " ".join(_public_argv(self.args)),
            "dry_run": self.args.dry_run,
            "partial": True,  # the sorting and LM steps are short slices of the paper's runs
            "machine": {**machine_info(), "cuda": torch.version.cuda, "cudnn": _cudnn()},
            "budget_s": self.args.budget_s,
            "elapsed_s": round(time.perf_counter() - self.start, 1),
            "steps": self.steps,
            "goals": goals(self.steps, self.args.dry_run),
        }
        paths = {str(self.work.resolve()): "<work>", str(Path(self.args.data).resolve()): "<data>"}
        data = _public(data, dict(sorted(paths.items(), key=lambda kv: -len(kv[0]))))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, self.path)


class StepError(RuntimeError):
    pass


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unknown"


def _clean(text: str) -> str:
    """No absolute paths of this machine in the results."""
    return text.replace(str(REPO) + os.sep, "").replace(str(REPO), ".").replace(str(Path.home()), "<home>")


def _command(argv: list[str]) -> str:
    return "python " + " ".join(shlex.quote(a) for a in argv[1:])


def _public(obj: Any, paths: dict[str, str]) -> Any:
    """obj with every absolute path of this machine replaced by a name (<work>, <data>, .)."""
    if isinstance(obj, dict):
        return {k: _public(v, paths) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_public(v, paths) for v in obj]
    if isinstance(obj, str):
        for path, name in paths.items():
            obj = obj.replace(path, name)
        return _clean(obj)
    return obj


def _cudnn() -> int | None:
    return torch.backends.cudnn.version() if torch.cuda.is_available() else None


def _public_argv(args: argparse.Namespace) -> list[str]:
    out = ["--dry-run"] if args.dry_run else []
    out += ["--budget-s", str(args.budget_s)]
    return out


# ---------------------------------------------------------------------------------------- steps


def step_pytest(suite: Suite, limit: float) -> dict[str, Any]:
    # the test files that hold cuda-marked tests (collecting only these keeps an unrelated missing
    # package on the GPU machine from failing the step); a dry run collects test_cuda.py only
    marked = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if "mark.cuda" in p.read_text()
    )
    target = ["tests/test_cuda.py"] if suite.args.dry_run else marked
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", *target, "-p", "no:cacheprovider", "-rs"]
    try:
        proc = suite.call(argv, limit)
        output = proc.stdout
    except StepError as e:
        counts = _pytest_counts(str(e))
        return {"status": f"failed: {str(e)[-600:]}", "counts": counts}
    counts = _pytest_counts(output)
    rec: dict[str, Any] = {"command": _command(argv), "counts": counts}
    if not counts.get("passed") and not suite.args.dry_run:
        rec["status"] = "failed: no CUDA test passed (all skipped: is CUDA visible?)"
    return rec


def _pytest_counts(text: str) -> dict[str, int]:
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", text)}


def step_ltm(suite: Suite, limit: float, dtype: str, compiled: bool) -> dict[str, Any]:
    out = suite.work / f"ltm_{dtype}_{'compiled' if compiled else 'eager'}.json"
    argv = [sys.executable, "benchmarks/ltm_scaling.py", "--device", suite.device, "--dtype", dtype]
    argv += ["--no-full-attention", "--out", str(out), "--threads", "1"]
    if suite.args.dry_run:
        argv += ["--quick", "--reps", "1", "--contexts", "64", "256"]
    else:
        argv += ["--reps", "5", "--contexts", "4096", "65536", "1048576"]
    if compiled:
        argv += ["--compile", "--compile-backend", "eager" if suite.args.dry_run else "inductor"]
    suite.call(argv, limit)
    res = json.loads(out.read_text())
    rows = res["rows"]
    return {
        "command": _command(argv),
        "config": {k: res["config"][k] for k in ("batch", "segment_L", "d_model", "n_heads", "num_basis")},
        "ltm_ms_by_context": {str(r["context_tokens"]): r["ms_per_segment"] for r in rows},
        "ltm_peak_mb_by_context": {str(r["context_tokens"]): r["peak_mb"] for r in rows},
        "sdpa_ms": res["plain_attention"]["ms_per_segment"],
        "ltm_ms_median": statistics.median(r["ms_per_segment"] for r in rows),
        "ratios": res["ratios"],
        "max_context": max(r["context_tokens"] for r in rows),
    }


def step_generation(suite: Suite, limit: float) -> dict[str, Any]:
    script = "benchmarks/generation.py"
    # the flags it has (another change adds --device / --quick), read from its argparse calls
    flags = set(re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\"", (REPO / script).read_text()))
    out = suite.work / "generation.json"
    argv = [sys.executable, script, "--out", str(out), "--plot", str(suite.work / "generation.png")]
    if "--device" in flags:
        argv += ["--device", suite.device]
    elif not suite.args.dry_run:
        raise StepError("benchmarks/generation.py has no --device flag yet (it would run on the CPU)")
    if "--threads" in flags:
        argv += ["--threads", "1"]
    if suite.args.dry_run:
        if "--quick" in flags:
            argv += ["--quick"]
        else:  # toy sizes through the flags it has
            argv += (
                "--reads 100 --plain-contexts 32 --new-tokens 4 --repeats 1 --n-layer 2 --n-embd 32".split()
            )
            argv += "--n-head 2 --vocab 100 --block-size 32 --num-basis 16 --num-samples 16".split()
    elif "--full-read-budget-s" in flags:
        argv += ["--full-read-budget-s", str(int(max(20, limit / 3)))]
    suite.call(argv, limit)
    res = json.loads(out.read_text())
    return {"command": _command(argv), **{k: v for k, v in res.items() if k not in ("machine", "command")}}


def step_sort(suite: Suite, limit: float) -> dict[str, Any]:
    """One `sort --preset paper` run per (memory type, bf16) at 4k, while the step's time lasts."""
    a = suite.args
    runs: dict[str, Any] = {}
    t0 = time.perf_counter()
    for model, bf16 in SORT_RUNS[:2] if a.dry_run else SORT_RUNS:  # dry run: the two the goal needs
        key = f"{model}/{'bf16' if bf16 == 'on' else 'fp32'}"
        left = limit - (time.perf_counter() - t0)
        if left < a.min_step_s:
            runs[key] = {"status": "skipped: out of the step's time"}
            continue
        name = f"sort_{model}_{'bf16' if bf16 == 'on' else 'fp32'}"
        argv = [sys.executable, "-m", "infinite_former.cli", "sort", "--preset", "paper", "--models", model]
        argv += ["--out", str(suite.work), "--name", name, "--no-progress", "--device", suite.device]
        if a.dry_run:  # toy sizes
            argv += [
                "--precision",
                "bf16" if bf16 == "on" else "fp32",
                "--lengths",
                "64",
                "--num-symbols",
                "4",
            ]
            argv += "--segment-len 16 --mem-len 8 --num-basis 8 --num-bins 8 --d-model 16 --n-heads 2".split()
            argv += (
                "--d-inner 32 --n-layers 1 --steps 2 --batch-size 2 --eval-sequences 4 --threads 1".split()
            )
        else:
            argv += ["--precision", "bf16" if bf16 == "on" else "fp32", "--lengths", "4000"]
            argv += ["--steps", str(a.sort_steps)]
            argv += ["--eval-sequences", str(a.sort_eval_sequences)]
        try:
            suite.call(argv, left)
            res = json.loads((suite.work / name / "results.json").read_text())
            length = str(res["settings"]["lengths"][0])
            run = next(iter(res["runs"].values()))
            runs[key] = {
                "status": "ok",
                "accuracy": res["accuracy"][model][length],
                "chance": 1.0 / res["settings"]["num_symbols"],
                "length": int(length),
                "steps": run.get("steps"),
                "tokens_per_s": run.get("tokens_per_s"),
                "final_train_loss": run.get("final_train_loss"),
            }
        except Exception as e:  # noqa: BLE001
            runs[key] = {"status": f"failed: {_clean(str(e))[-600:]}"}
    settings = "--preset paper --lengths 4000" + ("" if a.dry_run else f" --steps {a.sort_steps}")
    return {
        "partial": True,
        "note": f"{settings}: a short slice of the paper's 20k steps; accuracies are far from converged",
        "runs": runs,
    }


def step_shakespeare(suite: Suite, limit: float) -> dict[str, Any]:
    """The Shakespeare LM at a larger size: Transformer-XL (m + N states) and the ∞-former (sticky,
    m states + N basis functions, LTM output starting at 0), the recipe of benchmarks/lm_shakespeare.py
    (whose settings are fixed at CPU scale), through `lm train` with a shared byte-level BPE."""
    a = suite.args
    data = Path(a.data)
    if not (data / "train").is_dir():
        return {"status": f"skipped: no data folder {data.name}/train (pass --data DIR)"}
    if a.dry_run:
        m, n, size = 16, 16, "--seg-len 16 --batch-size 2 --steps 2 --d-model 16 --n-layers 1 --n-heads 2"
        size += " --d-inner 32 --vocab-size 300 --eval-batch-size 1"
    else:
        m, n, size = (
            256,
            256,
            f"--seg-len 256 --batch-size 16 --steps {a.lm_steps} --d-model 512 --n-layers 4",
        )
        size += " --n-heads 8 --d-inner 2048 --vocab-size 2048 --eval-batch-size 8"
    memory = {
        "xl": ["--memory-type", "xl", "--mem-len", str(m + n)],
        "infinite_sticky": ["--memory-type", "infinite_sticky", "--mem-len", str(m), "--num-basis", str(n)]
        + ["--ltm-zero-init-output"],
    }
    runs: dict[str, Any] = {}
    tokenizer, t0 = "bpe", time.perf_counter()
    for model, flags in memory.items():
        run_dir = suite.work / f"lm_{model}"
        argv = [sys.executable, "-m", "infinite_former.cli", "lm", "train", "--data", str(data)]
        argv += ["--run-dir", str(run_dir), "--tokenizer", tokenizer, *size.split(), *flags]
        argv += ["--warmup", "1" if a.dry_run else "20", "--lr", "1e-3", "--min-lr-ratio", "0.1"]
        argv += ["--dropout", "0", "--valid-split", "", "--eval-splits", "test", "--device", suite.device]
        argv += ["--no-progress", "--no-tensorboard", "--seed", "0"]
        left = limit - (time.perf_counter() - t0)
        try:
            if left < a.min_step_s:
                raise StepError("out of the step's time")
            suite.call(argv, left)
            res = json.loads((run_dir / "results.json").read_text())
            test = res["eval"]["test"]
            runs[model] = {
                "status": "ok",
                "test_ppl": test["ppl"],
                "test_bpb": test["bpb"],
                "parameters": res.get("parameters"),
                "tokens_per_s": res.get("tokens_per_s"),
                "train_seconds": res.get("train_seconds"),
                "final_train_loss": res.get("train_loss_last"),
                "command": _command(argv),
            }
            tokenizer = str(run_dir / "tokenizer")  # the next model reuses this BPE
        except Exception as e:  # noqa: BLE001
            runs[model] = {"status": f"failed: {_clean(str(e))[-600:]}"}
    return {"partial": True, "note": "a few hundred steps: far from the paper's training", "runs": runs}


# ---------------------------------------------------------------------------------------- goals


def goals(steps: dict[str, dict[str, Any]], dry_run: bool = False) -> dict[str, dict[str, Any]]:
    """Each goal of issue 11 as met / not met / not measured, with the numbers behind it.
    In a dry run (CPU, toy sizes) every goal is "not measured", with what the verdict would be."""

    def ok(name: str) -> dict[str, Any] | None:
        rec = steps.get(name)
        return rec if rec and rec.get("status") == "ok" else None

    out: dict[str, dict[str, Any]] = {}
    eager32 = ok("ltm_float32_eager")
    if eager32:
        ratio = eager32["ratios"]["ltm_over_plain_time"]
        others = {
            n[4:]: steps[n]["ratios"]["ltm_over_plain_time"]
            for n in steps
            if n.startswith("ltm_") and ok(n) and n != "ltm_float32_eager"
        }
        out["ltm_fwd_bwd_le_1.5x_sdpa"] = _verdict(ratio <= 1.5, {"float32_eager": ratio, **others})
        spread = eager32["ratios"]["ltm_time_max_over_min"]
        if eager32["max_context"] >= 1_000_000:
            out["flat_cost_4k_to_1M"] = _verdict(spread <= 1.1, {"ltm_time_max_over_min": spread})
        else:
            out["flat_cost_4k_to_1M"] = _not_measured(
                f"contexts reached only {eager32['max_context']:,} tokens"
            )
    else:
        out["ltm_fwd_bwd_le_1.5x_sdpa"] = _not_measured("the float32 eager LTM step did not finish")
        out["flat_cost_4k_to_1M"] = _not_measured("the float32 eager LTM step did not finish")
    runs = (ok("sort_paper_4k") or {}).get("runs", {})
    fp32, bf16 = runs.get("infinite_sticky/fp32", {}), runs.get("infinite_sticky/bf16", {})
    learned = fp32.get("status") == "ok" and fp32["accuracy"] >= 2 * fp32.get("chance", 0.0)
    if fp32.get("status") == "ok" and bf16.get("status") == "ok" and not learned:
        out["bf16_within_1pct_of_fp32_sorting"] = _not_measured(
            f"float32 accuracy {fp32['accuracy']:.3f} is under twice chance ({fp32.get('chance', 0):.3f}): "
            "the models have not learned enough for a precision comparison (more steps needed)"
        )
    elif fp32.get("status") == "ok" and bf16.get("status") == "ok":
        rel = abs(bf16["accuracy"] - fp32["accuracy"]) / max(fp32["accuracy"], 1e-12)
        out["bf16_within_1pct_of_fp32_sorting"] = _verdict(
            rel <= 0.01,
            {"fp32": fp32["accuracy"], "bf16": bf16["accuracy"], "relative_difference": round(rel, 4)},
        )
    else:
        out["bf16_within_1pct_of_fp32_sorting"] = _not_measured(
            "both sorting runs of the sticky ∞-former are needed"
        )
    speedups = {}
    for dtype in ("float32", "bfloat16"):
        e, c = ok(f"ltm_{dtype}_eager"), ok(f"ltm_{dtype}_compiled")
        if e and c:
            speedups[dtype] = round(e["ltm_ms_median"] / c["ltm_ms_median"], 3)
    if "float32" in speedups:
        out["compiled_ge_1.3x_eager"] = _verdict(speedups["float32"] >= 1.3, {"speedup": speedups})
    else:
        out["compiled_ge_1.3x_eager"] = _not_measured("the float32 eager and compiled LTM steps are needed")
    for key, text in GOALS.items():
        out[key]["goal"] = text
        if dry_run:
            out[key]["dry_run_verdict"] = out[key]["status"]
            out[key]["status"] = "not measured"
    return out


def _verdict(met: bool, numbers: dict[str, Any]) -> dict[str, Any]:
    return {"status": "met" if met else "not met", **numbers}


def _not_measured(why: str) -> dict[str, Any]:
    return {"status": "not measured", "why": why}


# --------------------------------------------------------------------------------------- render


def render_markdown(data: dict[str, Any]) -> str:
    """The suite's results as README markdown (a goals table, then the numbers behind them);
    benchmarks/report.py can call this once a GPU results file is committed."""
    m = data["machine"]
    where = m.get("gpu") or m.get("cpu_model") or m.get("processor", "?")
    lines = [
        f"`python benchmarks/gpu_suite.py`{' --dry-run (CPU, toy sizes)' if data['dry_run'] else ''}: "
        f"{where}, torch {m.get('torch')}, CUDA {m.get('cuda') or '–'}; {data['elapsed_s']:.0f} s.",
        "",
        "| goal | status | numbers |",
        "|---|---|---|",
    ]
    for g in data["goals"].values():
        shown = {k: v for k, v in g.items() if k not in ("goal", "status", "dry_run_verdict")}
        flat = {f"{k} {k2}": v2 for k, v in shown.items() if isinstance(v, dict) for k2, v2 in v.items()}
        flat.update({k: v for k, v in shown.items() if not isinstance(v, dict)})
        nums = ", ".join(str(v) if k == "why" else f"{k}: {v}" for k, v in flat.items())
        lines.append(f"| {g['goal']} | {g['status']} | {nums} |")
    ltm = {k[4:]: v for k, v in data["steps"].items() if k.startswith("ltm_") and v.get("status") == "ok"}
    if ltm:
        contexts = sorted({int(c) for v in ltm.values() for c in v["ltm_ms_by_context"]})
        lines += [
            "",
            "| LTM forward + backward, ms | "
            + " | ".join(f"{c:,} tokens" for c in contexts)
            + " | SDPA ms |",
        ]
        lines.append("|---|" + "---:|" * (len(contexts) + 1))
        for name, v in ltm.items():
            cells = [f"{v['ltm_ms_by_context'].get(str(c), float('nan')):.2f}" for c in contexts]
            lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + f" | {v['sdpa_ms']:.2f} |")
    sort = data["steps"].get("sort_paper_4k", {}).get("runs", {})
    if sort:
        lines += ["", "| sorting, --preset paper, 4k (partial) | accuracy | steps |", "|---|---:|---:|"]
        for key, r in sort.items():
            acc = f"{r['accuracy']:.3f}" if r.get("status") == "ok" else r.get("status", "?")
            lines.append(f"| {key} | {acc} | {r.get('steps', '–')} |")
    for name, step in data["steps"].items():
        if not str(step.get("status", "")).startswith("ok"):
            lines.append(f"\n{name}: {step['status']}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU at toy sizes (seconds)")
    p.add_argument(
        "--budget-s", type=float, default=510.0, help="stop starting steps after this many seconds"
    )
    p.add_argument("--reserve-s", type=float, default=10.0, help="kept free at the end of the budget")
    p.add_argument(
        "--min-step-s", type=float, default=15.0, help="a step with less time than this is skipped"
    )
    p.add_argument("--out", default="results", help="folder for gpu_<device>.json (e.g. $OUT)")
    p.add_argument("--work", default="runs/gpu_suite", help="folder for intermediate files")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "shakespeare"))
    p.add_argument("--sort-steps", type=int, default=300, help="optimizer steps per sorting run")
    p.add_argument("--sort-eval-sequences", type=int, default=64)
    p.add_argument("--lm-steps", type=int, default=150)
    p.add_argument("--render", metavar="JSON", help="print a results file as README markdown, run nothing")
    args = p.parse_args(argv)
    if args.render:
        return args
    if args.budget_s <= 0:
        raise SystemExit(f"--budget-s must be > 0, got {args.budget_s}")
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run for the CPU check")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse(argv)
    if args.render:
        print(render_markdown(json.loads(Path(args.render).read_text())))
        return Path(args.render)
    suite = Suite(args)
    suite.run("pytest_cuda", 150, lambda limit: step_pytest(suite, limit))
    for dtype, compiled in LTM_VARIANTS:
        name = f"ltm_{dtype}_{'compiled' if compiled else 'eager'}"
        cap = 120 if compiled else 60  # compiling forward + backward takes most of a compiled step
        suite.run(name, cap, lambda limit, d=dtype, c=compiled: step_ltm(suite, limit, d, c))
    suite.run("generation", 90, lambda limit: step_generation(suite, limit))
    suite.run("sort_paper_4k", 170, lambda limit: step_sort(suite, limit))
    suite.run("lm_shakespeare_large", 120, lambda limit: step_shakespeare(suite, limit))
    print(f"wrote {suite.path}")
    for g in goals(suite.steps, args.dry_run).values():
        print(f"{g['status']:>13}  {g['goal']}")
    return suite.path


if __name__ == "__main__":
    main()
