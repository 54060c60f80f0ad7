"""Recall at a controlled distance, trained from scratch on the CPU: how far back does each memory reach?

    python benchmarks/recall.py run --task gist --seeds 0 1 2        # one record per (task-variant, seed)
    python benchmarks/recall.py run --task verbatim --seeds 0 1 2    # (a second process, side by side)
    python benchmarks/recall.py summarize                            # -> results/recall_cpu.json + .png

Tasks (infinite_former.data.recall): "gist" (the 4 symbols of a 32-token signal segment by
frequency, D filler tokens back; chance 0.521) and "verbatim" (the 2-symbol value of a key given
D tokens back among distractor pairs; chance 0.125). One thread per process.

Models, all at the same state per layer (the sorting benchmark's equal budget, SortSettings' CPU
defaults: 2 layers, d 64, segments of 32, STM 32 + N = 32):
  xl               Transformer-XL, 64 past hidden states,
  compressive      32 STM + 32 compressed slots (rate 2),
  infinite         32 STM + an LTM of N = 32 basis functions, the paper's memory (fixed τ = 0.75,
                   widths {0.01, 0.05}, uniform samples),
  infinite_sticky  the same with sticky samples,
  infinite_reach   the same LTM with the options of benchmarks/reach.py: schedule uniform_time,
                   widths "auto", uniform samples (see BEST);
  ablation (gist only, --variants): infinite_auto_widths (widths "auto" alone; the schedule
                   alone is refused with the paper's widths at N = 32, see ABLATIONS).
Every model of a (task, seed) trains on the same batches, cycling through the training distances
(32: the content is (mostly) inside the short-term windows, a control that the task is learnt; 256: only a
long-term state can hold it), then is tested on the same held-out sequences (split "test", items never seen in training) at every
test distance. Score: per test sequence, the accuracy of its answer tokens (teacher forcing).
`summarize` pairs the models by seed and test sequence (bootstrap 95% CIs, infinite_former.stats).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from infinite_former.data.recall import TASKS, RecallConfig, RecallGenerator
from infinite_former.data.segments import Shard
from infinite_former.data.sorting import SortingStream
from infinite_former.experiments.sort import SortSettings
from infinite_former.models import InfiniteFormerLM, ModelConfig
from infinite_former.stats import paired_comparison, seeds_won
from infinite_former.training import Trainer
from infinite_former.training.records import RunRecords, finished_run, settings_hash
from infinite_former.utils import machine_info, seed_everything
from reach import cpu_flags  # benchmarks/reach.py (this script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "results" / "recall_cpu_runs"
OUT = ROOT / "results" / "recall_cpu.json"
VARIANTS = ("xl", "compressive", "infinite", "infinite_sticky", "infinite_reach")
BEST = dict(schedule="uniform_time", widths="auto")  # infinite_reach's LTMConfig, from benchmarks/reach.py
# the two halves of BEST alone (--variants ...): which of them makes the difference. The schedule alone
# (infinite_uniform_time, the paper's widths 0.01 < 1/N at N = 32) trained, then its memory diverged to
# NaN in the longer test streams; LTMConfig now refuses that combination, so only the widths are ablated.
ABLATIONS = ("infinite_auto_widths",)
LTM_OPTIONS = {
    "infinite_reach": BEST,
    "infinite_auto_widths": dict(widths="auto"),
}
# D = 32 puts the content inside XL's 96-token window and mostly inside the others' 64-token short-term
# window (all but its first few tokens): the control that shows a model learnt the task; D = 256 needs the long-term state. Longer distances
# are tests of the same models (CPU time).
TRAIN_DISTANCES = (32, 256)
TEST_DISTANCES = (32, 256, 1024, 4096)
SETTINGS = dict(steps=400, batch_size=8, eval_sequences=64, progress=False, lengths=(1,))


def base_settings(seed: int, runs_dir: str) -> SortSettings:
    """The model and training settings (SortSettings' CPU defaults; its sorting fields are unused)."""
    return SortSettings(**SETTINGS, seed=seed, out=runs_dir, name=f"seed{seed}")


def settings_key() -> str:
    s = base_settings(0, "").to_dict()
    for k in ("seed", "out", "name", "models", "lengths"):
        s.pop(k)
    return settings_hash({**s, "train": TRAIN_DISTANCES, "test": TEST_DISTANCES, "best": BEST})


def model_config(s: SortSettings, variant: str) -> ModelConfig:
    memory_type = "infinite" if variant in LTM_OPTIONS else variant
    cfg = s.model_config(memory_type)
    ltm = dataclasses.replace(cfg.ltm, **LTM_OPTIONS.get(variant, {}))
    return dataclasses.replace(cfg, vocab_size=RecallConfig("gist", 0).vocab_size, ltm=ltm)


def stream(task: str, distances: tuple[int, ...], split: str, seed: int, segment_len: int, batch: int):
    sources = [RecallGenerator(RecallConfig(task, d, seed=seed, split=split)) for d in distances]
    return lambda shard: SortingStream(sources, segment_len, shard)


@torch.no_grad()
def per_item_accuracy(model: InfiniteFormerLM, s: SortSettings, task: str, distance: int) -> list[float]:
    """Answer accuracy of each held-out test sequence (teacher forcing), in sequence order."""
    b = s.batch_size
    source = RecallGenerator(RecallConfig(task, distance, seed=s.seed, split="test"))
    batches = SortingStream(source, s.segment_len, Shard(0, 1, b))
    model.eval()
    accs: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # sticky sampling draws: the same for every model
        for i in range(-(-s.eval_sequences // b)):
            state = model.init_state(b, "cpu")
            correct, count = torch.zeros(b), torch.zeros(b)
            for seg in batches.batch_segments(i):
                state = state.reset(seg.reset)
                out, state = model(seg.tokens, state)
                hit = (out.logits.argmax(-1) == seg.targets) & seg.loss_mask
                correct += hit.sum(1).float()
                count += seg.loss_mask.sum(1).float()
            accs.extend((correct / count.clamp_min(1)).tolist())
    return accs[: s.eval_sequences]


def run_one(record_name: str, seed: int, runs_dir: str) -> dict:
    task, variant = record_name.split("-", 1)
    s = base_settings(seed, runs_dir)
    cfg = model_config(s, variant)
    tcfg = dataclasses.replace(s.train_config(record_name), log_every=25)
    t0 = time.perf_counter()
    seed_everything(seed)
    model = InfiniteFormerLM(cfg)
    train = stream(task, TRAIN_DISTANCES, "train", seed, s.segment_len, s.batch_size)
    res = Trainer(model, tcfg, train, model_config=cfg.to_dict()).fit(resume=False)
    return {
        "task": task,
        "model": variant,
        "model_config": cfg.to_dict(),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "steps": res.step,
        **finished_run(res.summary(), tcfg.out_dir, t0),
        "test": {str(d): per_item_accuracy(model, s, task, d) for d in TEST_DISTANCES},
        "seconds_with_test": time.perf_counter() - t0,
    }


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)

    def describe(rec: dict) -> str:
        return (
            f"{ {d: round(statistics.fmean(v), 3) for d, v in rec['test'].items()} } ({rec['seconds']:.0f} s)"
        )

    names = [f"{args.task}-{v}" for v in args.variants]
    RunRecords(RECORDS, settings_key()).run_missing(
        args.seeds, names, lambda name, seed: run_one(name, seed, args.runs_dir), describe
    )


# ------------------------------------------------------------------------------------- summary


def cmd_summarize(args: argparse.Namespace) -> None:
    names = [f"{t}-{v}" for t in TASKS for v in VARIANTS + ABLATIONS]
    recs = RunRecords(RECORDS, settings_key()).load(names)
    s = base_settings(0, "")
    tasks: dict[str, dict] = {}
    pairs, table, accuracy_table = [], [], []
    for task in TASKS:
        done = {v: sorted(recs[f"{task}-{v}"]) for v in VARIANTS + ABLATIONS if recs[f"{task}-{v}"]}
        if not done:
            continue
        models = {}
        for v, seeds in done.items():
            by_seed = {k: recs[f"{task}-{v}"][k] for k in seeds}
            models[v] = {
                "seeds": seeds,
                "num_parameters": by_seed[seeds[0]]["num_parameters"],
                "train_seconds": [r["train_seconds"] for r in by_seed.values()],
                "final_train_loss": [r["final_train_loss"] for r in by_seed.values()],
                "accuracy": {
                    str(d): {
                        "mean": statistics.fmean(
                            acc := [statistics.fmean(r["test"][str(d)]) for r in by_seed.values()]
                        ),
                        "seeds": acc,
                    }
                    for d in TEST_DISTANCES
                },
            }
        chance = RecallConfig(task, 0).chance_accuracy
        for a, b in [("infinite_reach", x) for x in VARIANTS + ABLATIONS if x != "infinite_reach"] + [
            ("infinite", "xl"),
            ("infinite_sticky", "xl"),
            *((x, "infinite") for x in ABLATIONS),
        ]:
            common = sorted(set(done.get(a, [])) & set(done.get(b, [])))
            if not common:
                continue
            for d in TEST_DISTANCES:
                xa = [recs[f"{task}-{a}"][k]["test"][str(d)] for k in common]
                xb = [recs[f"{task}-{b}"][k]["test"][str(d)] for k in common]
                p = {"task": task, "distance": d, **paired_comparison(xa, xb, names=(a, b))}
                p["seeds_won"] = seeds_won([np.mean(x) for x in xa], [np.mean(x) for x in xb])
                pairs.append(p)
                table.append(
                    f"| {task} | {d} | {a} − {b} | {p['mean_diff']:+.3f} | [{p['ci95'][0]:+.3f}, "
                    f"{p['ci95'][1]:+.3f}] | {p['seeds']} | {p['verdict']} |"
                )
        above = []  # each model against chance, per distance: is the CI of (accuracy − chance) above 0?
        for v, seeds in done.items():
            for d in TEST_DISTANCES:
                x = np.array([recs[f"{task}-{v}"][k]["test"][str(d)] for k in seeds])
                p = paired_comparison(x, np.full_like(x, chance), names=(v, "chance"))
                above.append({"model": v, "distance": d, **p})
        tasks[task] = {"chance_accuracy": chance, "models": models, "vs_chance": above}
        accuracy_table.append(
            f"| {task} (chance {chance:.3f}) | " + " | ".join(f"D={d}" for d in TEST_DISTANCES) + " |"
        )
        accuracy_table.append("|---|" + "---|" * len(TEST_DISTANCES))
        for v in done:
            cells = []
            for d in TEST_DISTANCES:
                p = next(x for x in above if x["model"] == v and x["distance"] == d)
                mark = {"within noise": "", f"{v} better": " ↑", "chance better": " ↓"}[p["verdict"]]
                cells.append(f"{models[v]['accuracy'][str(d)]['mean']:.3f}{mark}")
            accuracy_table.append(f"| {v} ({len(done[v])} seeds) | " + " | ".join(cells) + " |")
    first = next(iter(recs[n][k] for n in names for k in recs[n]), None)
    result = {
        "machine": {**(first["machine"] if first else machine_info()), "cpu_flags": cpu_flags()},
        "config": {
            "settings": {
                k: v for k, v in s.to_dict().items() if k not in ("seed", "out", "name", "models", "lengths")
            },
            "train_distances": list(TRAIN_DISTANCES),
            "test_distances": list(TEST_DISTANCES),
            "variants": list(VARIANTS),
            "ablations": list(ABLATIONS),
            "ltm_options": LTM_OPTIONS,
            "memory_budget": s.memory_budget(),
            "metric": "answer-token accuracy per held-out test sequence (teacher forcing); the same "
            f"{s.eval_sequences} test sequences per distance for every model of a seed",
            "commands": [
                "python benchmarks/recall.py run --task gist --seeds 0 1 2",
                "python benchmarks/recall.py run --task verbatim --seeds 0 1 2",
                "python benchmarks/recall.py summarize",
            ],
        },
        "complete": all(len(recs[f"{t}-{v}"]) >= 3 for t in TASKS for v in VARIANTS),
        "tasks": tasks,
        "pairs": pairs,
        "accuracy_table": accuracy_table,  # ↑ / ↓: the 95% CI of (accuracy − chance) excludes 0
        "table": [
            "| task | D | pair | mean diff | 95% CI | seeds | verdict |",
            "|---|---|---|---|---|---|---|",
            *table,
        ],
    }
    OUT.write_text(json.dumps(result, indent=1))
    plot(result, OUT.with_suffix(".png"))
    print("\n".join(accuracy_table + [""] + result["table"]))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = result["tasks"]
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5.5 * max(1, len(tasks)), 4), squeeze=False)
    for ax, (task, t) in zip(axes[0], tasks.items()):
        for v, m in t["models"].items():
            ds = [int(d) for d in m["accuracy"]]
            ys = [m["accuracy"][str(d)]["mean"] for d in ds]
            lo = [min(m["accuracy"][str(d)]["seeds"]) for d in ds]
            hi = [max(m["accuracy"][str(d)]["seeds"]) for d in ds]
            line = ax.plot(ds, ys, marker="o", label=f"{v} ({len(m['seeds'])} seeds)")[0]
            ax.fill_between(ds, lo, hi, color=line.get_color(), alpha=0.15)
        ax.axhline(t["chance_accuracy"], color="grey", ls="--", lw=1, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("distance D (tokens between the content and the query)")
        ax.set_ylabel("answer accuracy (test)")
        ax.set_title(f"{task}: mean over seeds (band: min-max)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train and test variants for some seeds (skips finished records)")
    r.add_argument("--task", choices=TASKS, required=True)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS + ABLATIONS)
    r.add_argument("--runs-dir", default="runs/bench-recall")
    sub.add_parser("summarize", help="write results/recall_cpu.json and .png from the records")
    args = p.parse_args(argv)
    {"run": cmd_run, "summarize": cmd_summarize}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
