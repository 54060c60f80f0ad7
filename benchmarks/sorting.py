"""Sorting benchmark on the CPU: is the ∞-former's memory worth it at long lengths?

    python benchmarks/sorting.py run --seeds 0 2 4    # train + test; one record per (variant, seed)
    python benchmarks/sorting.py run --seeds 1 3      # (a second process, side by side)
    python benchmarks/sorting.py throughput           # interleaved training tokens/s of every variant
    python benchmarks/sorting.py summarize            # -> results/sorting_cpu.json + .png

One thread per process. Five variants, trained with the same steps, batch and data on batches that
cycle through the lengths ("mixed"), then tested on the same held-out sequences of each length:
  xl               Transformer-XL with the equal memory budget (mem_len + N past states),
  xl_params        the same Transformer-XL with its FFN grown to the ∞-former's parameter count,
  compressive      mem_len + N compressed slots,
  infinite         mem_len short-term memory + an LTM of N basis functions (uniform samples),
  infinite_sticky  the same with sticky memories.
At 2048 tokens XL's 96-token window (segment 32 + 64 memories) covers under 5 % of the sequence.

Each finished run writes results/sorting_cpu_runs/<variant>-seed<k>.json (per-sequence test
accuracies, the training-loss curve, an LTM-wipe ablation), so partial results can be committed
and a later `run` skips what is done. `summarize` pairs the variants by seed and test sequence
and reports mean differences with bootstrap 95% CIs (infinite_former.stats).
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

from infinite_former.attention import LTMConfig
from infinite_former.data.segments import Shard
from infinite_former.data.sorting import (
    SortingConfig,
    SortingGenerator,
    SortingStream,
    materialize,
    symbol_counts,
)
from infinite_former.experiments.sort import DEFAULTS_02, LEGACY_02, SortSettings, train_and_test
from infinite_former.models import InfiniteFormerLM, ModelConfig, memory_labels
from infinite_former.plots import plot_accuracy
from infinite_former.stats import paired_comparison, seeds_won
from infinite_former.training import load_checkpoint
from infinite_former.training.checkpoints import load_weights
from infinite_former.training.logs import loss_curve
from infinite_former.training.records import RunRecords, settings_hash
from infinite_former.utils import machine_info, seed_everything

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "results" / "sorting_cpu_runs"
OUT = ROOT / "results" / "sorting_cpu.json"
VARIANTS = ("xl", "xl_params", "compressive", "infinite", "infinite_sticky")
BASELINES = ("xl", "xl_params", "compressive")
INFINITE = ("infinite", "infinite_sticky")

# SortSettings' CPU defaults (4 symbols, segment 32, STM 32 + N = 32, 2 layers, d 64, lr 3e-3)
# at longer lengths, batch 8 and 1000 steps (the ∞-formers' loss is still falling at 500:
# see the learning curves in the results file).
SETTINGS = dict(
    lengths=(256, 512, 1024, 2048),
    batch_size=8,
    steps=1000,
    ltm=dict(num_samples=32),
    eval_sequences=128,
    progress=False,
)


def base_settings(seed: int = 0, runs_dir: str = "runs/bench-sorting") -> SortSettings:
    return SortSettings(**SETTINGS, seed=seed, out=runs_dir, name=f"seed{seed}")


def settings_key() -> str:
    """A short hash of the settings a record was made with (records of other settings are ignored)."""
    s = base_settings().to_dict()
    for k in ("seed", "out", "name", "models", "format_version"):
        s.pop(k)
    # Hashed in the 0.2 form (the seven sort settings flat), so that the records made before 0.3
    # stay valid; another memory setting enters the key only where it differs from its 0.2 value.
    ltm, before = s.pop("ltm"), LTMConfig(**DEFAULTS_02).settings()
    s.update({k: ltm.pop(k) for k in LEGACY_02})
    s.update({k: v for k, v in ltm.items() if v != before[k]})
    if s.get("precision") == "fp32":  # the same runs as before the precision setting existed
        s.pop("precision")
    if s.get("compile") is False:  # likewise eager runs, from before the compile setting
        s.pop("compile")
    return settings_hash(s)


def num_params(cfg: ModelConfig) -> int:
    return sum(p.numel() for p in InfiniteFormerLM(cfg).parameters())


# beyond the paper (issue 18's carry-back, benchmarks/sorting_reach.py): the ∞-former (uniform
# samples) with the recall benchmark's best LTM options (benchmarks/recall.py BEST)
REACH = dict(schedule="uniform_time", widths="auto")


def variant(s: SortSettings, name: str) -> tuple[SortSettings, str]:
    """(settings, memory type) of a variant; xl_params grows XL's d_inner to the ∞-former's count;
    infinite_reach is the ∞-former with the LTM options REACH."""
    if name == "infinite_reach":
        return dataclasses.replace(s, ltm=dataclasses.replace(s.ltm, **REACH)), "infinite"
    if name != "xl_params":
        return s, name
    target = num_params(s.model_config("infinite"))
    per_unit = s.n_layers * (2 * s.d_model + 1)  # one more FFN unit: a row of W1, b1 and a column of W2
    extra = target - num_params(s.model_config("xl"))
    return dataclasses.replace(s, d_inner=s.d_inner + round(extra / per_unit)), "xl"


# ----------------------------------------------------------------------------------------- testing


@torch.no_grad()
def per_sequence_accuracy(
    model: InfiniteFormerLM, s: SortSettings, length: int, wipe_ltm: bool = False
) -> list[float]:
    """Answer accuracy of each held-out test sequence (teacher forcing), in sequence order.

    wipe_ltm: every layer's LTM (and the states waiting to enter it) is emptied just before
    the segment holding the answer, so the answer can use the short-term memory only.
    """
    b = s.batch_size
    num_batches = -(-s.eval_sequences // b)
    task = SortingConfig(length=length, num_symbols=s.num_symbols, seed=s.seed, split="test")
    stream = SortingStream(SortingGenerator(task), s.segment_len, Shard(0, 1, b))
    model.eval()
    accs: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for i in range(num_batches):
            segments = list(stream.batch_segments(i))
            state = model.init_state(b, "cpu")
            correct = torch.zeros(b)
            count = torch.zeros(b)
            for k, seg in enumerate(segments):
                state = state.reset(seg.reset)
                if wipe_ltm and k == len(segments) - 1:
                    everyone = torch.ones(b, dtype=torch.bool)
                    memory = dataclasses.replace(
                        state.memory,
                        ltm=[m.reset(everyone) for m in state.ltm],
                        ltm_pending_count=torch.zeros_like(state.ltm_pending_count),
                    )
                    state = dataclasses.replace(state, memory=memory)
                out, state = model(seg.tokens, state)
                if seg.targets is None or seg.loss_mask is None:
                    continue
                hit = (out.logits.argmax(-1) == seg.targets) & seg.loss_mask
                correct += hit.sum(1).float()
                count += seg.loss_mask.sum(1).float()
            accs.extend((correct / count.clamp_min(1)).tolist())
    return accs[: s.eval_sequences]


def load_model(run_dir: str) -> InfiniteFormerLM:
    ck = load_checkpoint(run_dir)
    model = InfiniteFormerLM(ModelConfig.from_dict(ck["trainer"]["model_config"]))
    load_weights(model, ck["model"], run_dir)  # strict, tied weights aside
    return model


def run_one(name: str, seed: int, runs_dir: str) -> dict:
    s, memory_type = variant(base_settings(seed, runs_dir), name)
    t0 = time.perf_counter()
    r = train_and_test(s, name, memory_type, s.lengths, resume=False)
    model = load_model(r["run_dir"])
    record = {
        "variant": name,
        "memory_type": memory_type,
        "seed": seed,
        "settings_key": settings_key(),
        "d_inner": s.d_inner,
        "num_parameters": r["num_parameters"],
        "steps": r["steps"],
        "seconds": time.perf_counter() - t0,
        "tokens_per_s": r["tokens_per_s"],
        "final_train_loss": r["final_train_loss"],
        "loss_curve": loss_curve(r["run_dir"], every=50),
        "test": {str(n): per_sequence_accuracy(model, s, n) for n in s.lengths},
        "trainer_test_accuracy": {n: v["accuracy"] for n, v in r["test"].items()},
        "machine": machine_info(precision="fp32"),
    }
    if memory_type.startswith("infinite"):
        longest = max(s.lengths)
        record["test_ltm_wiped"] = {str(longest): per_sequence_accuracy(model, s, longest, wipe_ltm=True)}
    return record


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)

    def describe(rec: dict) -> str:
        accs = {n: round(statistics.fmean(v), 3) for n, v in rec["test"].items()}
        return f"{accs} ({rec['seconds']:.0f} s)"

    RunRecords(RECORDS, settings_key()).run_missing(
        args.seeds, args.variants, lambda name, seed: run_one(name, seed, args.runs_dir), describe
    )


# ---------------------------------------------------------------------------------- throughput


def cmd_throughput(args: argparse.Namespace, steps: int = 8) -> None:
    """Training tokens/s of every variant at the longest length, interleaved step by step."""
    torch.set_num_threads(1)
    s0 = base_settings()
    length = max(s0.lengths)
    models, optims = {}, {}
    for name in VARIANTS:
        s, memory_type = variant(s0, name)
        seed_everything(0)
        models[name] = InfiniteFormerLM(s.model_config(memory_type))
        optims[name] = torch.optim.AdamW(models[name].parameters(), lr=s.lr)
    task = SortingConfig(length=length, num_symbols=s0.num_symbols, seed=0)
    stream = SortingStream(SortingGenerator(task), s0.segment_len, Shard(0, 1, s0.batch_size))
    batches = [list(stream.batch_segments(i)) for i in range(steps + 1)]
    seconds = dict.fromkeys(VARIANTS, 0.0)
    tokens = dict.fromkeys(VARIANTS, 0)
    for i, segments in enumerate(batches):
        for name in VARIANTS:  # interleaved: load changes hit every variant alike
            model, opt = models[name], optims[name]
            t0 = time.perf_counter()
            state = model.init_state(s0.batch_size, "cpu")
            for seg in segments:
                state = state.reset(seg.reset)
                out, state = model(seg.tokens, state, targets=seg.targets, loss_mask=seg.loss_mask)
                (out.loss + out.aux_loss).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                state = state.detach()
            if i > 0:  # the first batch warms up
                seconds[name] += time.perf_counter() - t0
                tokens[name] += sum(seg.tokens.numel() for seg in segments)
    result = {
        "settings_key": settings_key(),
        "setup": f"training steps at length {length}, batch {s0.batch_size}, interleaved, 1 thread",
        "tokens_per_s": {name: tokens[name] / seconds[name] for name in VARIANTS},
        "machine": machine_info(precision="fp32"),
    }
    RECORDS.mkdir(parents=True, exist_ok=True)
    (RECORDS / "throughput.json").write_text(json.dumps(result, indent=1))
    print(result["tokens_per_s"])


# ------------------------------------------------------------------------------------- summary


def window_rule_accuracy(s: SortSettings, length: int, window: int, num: int = 2048) -> dict[str, float]:
    """Accuracy of fixed rules on the test split (teacher forcing), to read the learned ones against.

    exclusion_only: a uniform guess among the symbols not yet in the answer; last_W_token_counts:
    rank by counts over the last W tokens (all a model seeing only its short-term window can know).
    """
    v = s.num_symbols
    f = materialize(SortingConfig(length=length, num_symbols=v, seed=0, split="test"), np.arange(num))
    target = f[:, -v:].astype(np.int64)
    score = symbol_counts(f[:, max(0, length - window) : length], v).astype(np.float64) - 1e-6 * np.arange(v)
    used = np.zeros((num, v), dtype=bool)
    correct = 0
    for k in range(v):  # v answer positions
        pred = np.where(used, -np.inf, score).argmax(1)
        correct += int((pred == target[:, k]).sum())
        used[np.arange(num), target[:, k]] = True
    return {
        "exclusion_only": float(np.mean([1.0 / (v - k) for k in range(v)])),
        f"last_{window}_token_counts": correct / (num * v),
    }


def load_records() -> dict[str, dict[int, dict]]:
    return RunRecords(RECORDS, settings_key()).load(VARIANTS)


def cmd_summarize(args: argparse.Namespace) -> None:
    s = base_settings()
    recs = load_records()
    done = {name: sorted(by_seed) for name, by_seed in recs.items() if by_seed}
    paired_seeds = sorted(set.intersection(*(set(v) for v in done.values()))) if done else []
    lengths = [str(n) for n in s.lengths]
    models = {}
    for name, seeds in done.items():
        r0 = recs[name][seeds[0]]
        models[name] = {
            "num_parameters": r0["num_parameters"],
            "d_inner": r0["d_inner"],
            "seeds": seeds,
            "accuracy": {
                n: {
                    "mean": statistics.fmean(
                        acc := [statistics.fmean(recs[name][k]["test"][n]) for k in seeds]
                    ),
                    "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                    "seeds": acc,
                }
                for n in lengths
            },
            "final_train_loss": [recs[name][k]["final_train_loss"] for k in seeds],
            "loss_curve_mean": _mean_curve([recs[name][k]["loss_curve"] for k in seeds]),
        }
        if name in INFINITE:
            longest = lengths[-1]
            models[name]["ltm_wiped_accuracy_at_longest"] = [
                statistics.fmean(recs[name][k]["test_ltm_wiped"][longest]) for k in seeds
            ]
    pairs = []
    for a in INFINITE:
        for b in (*BASELINES, *(x for x in INFINITE if x != a)):
            if a not in done or b not in done or (b in INFINITE and b < a) or not paired_seeds:
                continue
            for n in lengths:
                xa = [recs[a][k]["test"][n] for k in paired_seeds]
                xb = [recs[b][k]["test"][n] for k in paired_seeds]
                p = paired_comparison(xa, xb, names=(a, b))
                p["length"] = int(n)
                p["seeds_won"] = seeds_won([np.mean(x) for x in xa], [np.mean(x) for x in xb])
                pairs.append(p)
    xl_window = s.segment_len + s.memory_budget()["xl"]["mem_len"]
    tput_path = RECORDS / "throughput.json"
    tput = json.loads(tput_path.read_text()) if tput_path.exists() else None
    result = {
        "machine": next(iter(recs[n][done[n][0]] for n in done))["machine"]
        if done
        else machine_info(precision="fp32"),
        "config": {
            **{
                k: v for k, v in s.to_dict().items() if k not in ("seed", "out", "name", "models", "progress")
            },
            "variants": list(VARIANTS),
            "memory_budget": s.memory_budget(),
            "xl_window_tokens": xl_window,
            "training": "each (variant, seed): one model, batches cycling through all lengths; same steps, "
            "batch and data",
            "metric": "answer accuracy per test sequence (teacher forcing), held-out test split; the same "
            f"{s.eval_sequences} sequences per length for every variant of a seed",
            "commands": [
                "python benchmarks/sorting.py run --seeds ...",
                "python benchmarks/sorting.py throughput",
                "python benchmarks/sorting.py summarize",
            ],
        },
        "complete": all(len(done.get(n, [])) == len(args.expected_seeds) for n in VARIANTS),
        "paired_seeds": paired_seeds,
        "models": models,
        "pairs": pairs,
        "reference_accuracy": {n: window_rule_accuracy(s, int(n), xl_window) for n in lengths},
        "throughput": tput,
    }
    OUT.write_text(json.dumps(result, indent=1))
    seed_counts = ", ".join(f"{m}: {len(d['seeds'])}" for m, d in models.items())
    plot_accuracy(
        {m: {int(n): v["mean"] for n, v in d["accuracy"].items()} for m, d in models.items()},
        OUT.with_suffix(".png"),
        title=f"sorting, {s.num_symbols} symbols, {s.steps} steps, mean ± std over seeds ({seed_counts})",
        errors={m: {int(n): v["std"] for n, v in d["accuracy"].items()} for m, d in models.items()},
        labels=memory_labels(),
    )
    for p in pairs:
        if p["length"] == int(lengths[-1]):
            print(f"{p['a']} - {p['b']} at {p['length']}: {p['mean_diff']:+.3f} {p['ci95']} {p['verdict']}")


def _mean_curve(curves: list[list[list[float]]]) -> list[list[float]]:
    steps = sorted(set.intersection(*(set(int(s) for s, _ in c) for c in curves)))
    by = [dict((int(s), v) for s, v in c) for c in curves]
    return [[s, statistics.fmean(d[s] for d in by)] for s in steps]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train and test variants for some seeds (skips finished records)")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    r.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    r.add_argument("--runs-dir", default="runs/bench-sorting")
    sub.add_parser("throughput", help="interleaved training tokens/s of every variant")
    sm = sub.add_parser("summarize", help="write results/sorting_cpu.json from the records")
    sm.add_argument("--expected-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = p.parse_args(argv)
    {"run": cmd_run, "throughput": cmd_throughput, "summarize": cmd_summarize}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
