"""Sorting benchmark on the CPU: all four memory types, equal memory and training budgets, 3 seeds.

    python benchmarks/sorting.py            # -> results/sorting_cpu.json, results/sorting_cpu.png

One thread (torch.set_num_threads(1)). Every (memory type, seed) trains one
model with the same steps and batch on batches that cycle through the
lengths ("mixed" training), then is tested on held-out sequences of each
length. Memory budget per layer: see SortSettings.memory_budget (XL keeps
mem_len + N states; compressive mem_len + N compressed slots; the ∞-formers
mem_len STM + N basis functions). Training throughput of the four types is
measured side by side (interleaved timed steps, same model size, longest
length) in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from infinite_former.data.sorting import SortingConfig, SortingGenerator, SortingStream
from infinite_former.plots import plot_accuracy
from infinite_former.sort_experiment import MEMORY_TYPES, SortSettings, train_and_test
from infinite_former.train import Shard
from infinite_former.utils import machine_info, seed_everything

# The CPU demo's settings (SortSettings defaults: 4 symbols, lengths 128/256/512, segment 32,
# STM 32 + N = 32, 2 layers, d 64, batch 16, lr 3e-3), with fewer steps and test sequences so
# that 4 types x 3 seeds fit about half an hour on one thread.
DEFAULTS = dict(num_samples=32, steps=500, eval_sequences=128, progress=False)


def throughput(settings: SortSettings, length: int, steps: int = 8) -> dict[str, float]:
    """Training tokens/s of every memory type, interleaved step by step (same data, same size)."""
    from infinite_former.model import InfiniteFormerLM

    models, optims = {}, {}
    shard = Shard(0, 1, settings.batch_size)
    task = SortingConfig(length=length, num_symbols=settings.num_symbols, seed=settings.seed)
    stream = SortingStream(SortingGenerator(task), settings.segment_len, shard)
    batches = [list(stream.batch_segments(i)) for i in range(steps + 1)]
    for m in MEMORY_TYPES:
        seed_everything(0)
        models[m] = InfiniteFormerLM(settings.model_config(m))
        optims[m] = torch.optim.AdamW(models[m].parameters(), lr=settings.lr)
    seconds = {m: 0.0 for m in MEMORY_TYPES}
    tokens = {m: 0 for m in MEMORY_TYPES}
    for i, segments in enumerate(batches):
        for m in MEMORY_TYPES:  # interleaved: load changes hit every type alike
            model, opt = models[m], optims[m]
            t0 = time.perf_counter()
            state = model.init_state(shard.batch_size, "cpu")
            for seg in segments:
                state = state.reset(seg.reset)
                if not seg.train:
                    with torch.no_grad():
                        _, state = model(seg.tokens, state)
                    state = state.detach()
                    continue
                out, state = model(seg.tokens, state, targets=seg.targets, loss_mask=seg.loss_mask)
                (out.loss + out.aux_loss).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                state = state.detach()
            if i > 0:  # the first batch warms up
                seconds[m] += time.perf_counter() - t0
                tokens[m] += sum(s.tokens.numel() for s in segments)
    return {m: tokens[m] / seconds[m] for m in MEMORY_TYPES}


def reference_accuracy(settings: SortSettings, length: int, window: int, num: int = 2048) -> dict[str, float]:
    """Accuracies of fixed rules on the test split (teacher forcing), to read the learned ones against.

    exclusion_only: a uniform guess among the symbols not yet in the answer;
    last_window_counts: rank by counts over the last `window` tokens (what a model that sees only
    its short-term window can know), ties by smaller id; full counts would score 1.
    """
    import numpy as np

    from infinite_former.data.sorting import materialize, symbol_counts

    v = settings.num_symbols
    cfg = SortingConfig(length=length, num_symbols=v, seed=settings.seed, split="test")
    f = materialize(cfg, np.arange(num))
    target = f[:, -v:].astype(np.int64)
    counts = symbol_counts(f[:, max(0, length - window) : length], v).astype(np.float64)
    score = counts - 1e-6 * np.arange(v)  # ties: smaller id first
    used = np.zeros((num, v), dtype=bool)
    correct = 0
    for k in range(v):  # v answer positions, teacher forcing
        pred = np.where(used, -np.inf, score).argmax(1)
        correct += int((pred == target[:, k]).sum())
        used[np.arange(num), target[:, k]] = True
    return {
        "exclusion_only": float(np.mean([1.0 / (v - k) for k in range(v)])),
        f"last_{window}_token_counts": correct / (num * v),
    }


def ltm_ablation(settings: SortSettings, run_dir: str, length: int, num_batches: int) -> dict[str, float]:
    """Test accuracy of a trained ∞-former with and without its long-term memory in the last segment.

    "wiped": every layer's LTM (and the vectors waiting to enter it) emptied just before the
    segment holding the answer, so the answer can use only the short-term memory.
    """
    import dataclasses

    from infinite_former.model import InfiniteFormerLM, ModelConfig
    from infinite_former.train import load_checkpoint

    ck = load_checkpoint(run_dir)
    model = InfiniteFormerLM(ModelConfig.from_dict(ck["trainer"]["model_config"]))
    model.load_state_dict(ck["model"], strict=False)
    model.eval()
    b = settings.batch_size
    task = SortingConfig(length=length, num_symbols=settings.num_symbols, seed=settings.seed, split="test")
    stream = SortingStream(SortingGenerator(task), settings.segment_len, Shard(0, 1, b))
    out: dict[str, float] = {}
    for mode in ("full", "wiped"):
        torch.manual_seed(0)
        correct = total = 0
        for i in range(num_batches):
            segments = list(stream.batch_segments(i))
            state = model.init_state(b, "cpu")
            with torch.no_grad():
                for k, seg in enumerate(segments):
                    state = state.reset(seg.reset)
                    if mode == "wiped" and k == len(segments) - 1:
                        everyone = torch.ones(b, dtype=torch.bool)
                        state = dataclasses.replace(
                            state,
                            ltm=[m.reset(everyone) for m in state.ltm],
                            ltm_pending_count=torch.zeros_like(state.ltm_pending_count),
                        )
                    logits, state = model(seg.tokens, state)
            hit = (logits.logits.argmax(-1) == seg.targets)[seg.loss_mask]
            correct += int(hit.sum())
            total += hit.numel()
        out[mode] = correct / total
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--lengths", type=int, nargs="+", default=list(SortSettings().lengths))
    p.add_argument("--models", nargs="+", default=list(MEMORY_TYPES), choices=MEMORY_TYPES)
    p.add_argument("--runs-dir", default="runs/bench-sorting")
    p.add_argument("--out", default="results/sorting_cpu.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    base = dict(DEFAULTS, steps=args.steps, lengths=tuple(args.lengths), models=tuple(args.models))

    tput_settings = SortSettings(**base, out=args.runs_dir, name="throughput")
    tput = throughput(tput_settings, max(args.lengths))
    print("throughput tokens/s:", {k: round(v) for k, v in tput.items()}, flush=True)

    per_seed: dict[str, dict[str, list[float]]] = {m: {str(n): [] for n in args.lengths} for m in args.models}
    runs = []
    ablation: dict[str, list[dict[str, float]]] = {}
    for seed in args.seeds:
        for m in args.models:  # interleaved, so a partial run stays balanced
            s = SortSettings(**base, seed=seed, out=args.runs_dir, name=f"seed{seed}")
            t0 = time.perf_counter()
            r = train_and_test(s, m, m, s.lengths, resume=False)
            for n in args.lengths:
                per_seed[m][str(n)].append(r["test"][str(n)]["accuracy"])
            runs.append(
                {
                    "model": m,
                    "seed": seed,
                    "seconds": time.perf_counter() - t0,
                    "final_train_loss": r["final_train_loss"],
                    "tokens_per_s": r["tokens_per_s"],
                }
            )
            accs = {n: round(per_seed[m][str(n)][-1], 4) for n in args.lengths}
            print(f"seed {seed} {m:16s} {accs} ({runs[-1]['seconds']:.0f} s)", flush=True)
            if m.startswith("infinite"):
                eval_batches = -(-s.eval_sequences // s.batch_size)
                abl = ltm_ablation(s, r["run_dir"], max(args.lengths), eval_batches)
                ablation.setdefault(m, []).append(abl)
                print(f"    LTM wiped before the answer segment at {max(args.lengths)}: {abl}", flush=True)

    models = {
        m: {
            n: {
                "mean": statistics.fmean(v),
                "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                "seeds": v,
            }
            for n, v in by_len.items()
        }
        for m, by_len in per_seed.items()
    }
    longest = str(max(args.lengths))
    means = {m: models[m][longest]["mean"] for m in models}
    baselines = [m for m in ("xl", "compressive") if m in means]
    claim = {
        f"{inf}_beats_{b}_at_{longest}": means[inf] > means[b]
        for inf in ("infinite", "infinite_sticky")
        if inf in means
        for b in baselines
    }
    settings = SortSettings(**base, out=args.runs_dir, name="seed0")
    result = {
        "machine": machine_info(),
        "config": {
            **settings.to_dict(),
            "seeds": args.seeds,
            "memory_budget": settings.memory_budget(),
            "training": "each (type, seed): one model, batches cycling through all lengths; same steps and batch",
            "metric": "token accuracy on the answer positions (teacher forcing), held-out test split",
            "scale_note": "CPU scale: lengths, symbols (num_symbols) and model are far smaller than the paper's "
            "(20 symbols, 4k-16k tokens, 20k steps); see notes.",
            "command": "python benchmarks/sorting.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "torch_threads": torch.get_num_threads(),
        },
        "models": models,
        "throughput_tokens_per_s": tput,
        "throughput_setup": f"training steps at length {max(args.lengths)}, batch {settings.batch_size}, "
        "interleaved across types, 1 thread",
        "claim_infinite_beats_baselines_at_longest": claim,
        "ltm_ablation_at_longest": {
            "what": "test accuracy at the longest length with every layer's long-term memory emptied "
            "just before the answer segment ('wiped') vs intact ('full'), per seed",
            **{m: {k: [a[k] for a in v] for k in ("full", "wiped")} for m, v in ablation.items()},
        },
        "reference_accuracy": {
            str(n): reference_accuracy(
                settings, n, settings.segment_len + settings.memory_budget()["xl"]["mem_len"]
            )
            for n in args.lengths
        },
        "runs": runs,
        "total_seconds": time.perf_counter() - t_start,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    png = os.path.splitext(args.out)[0] + ".png"
    plot_accuracy(
        {m: {int(n): v["mean"] for n, v in d.items()} for m, d in models.items()},
        png,
        title=f"sorting, {settings.num_symbols} symbols, CPU, mean ± std over {len(args.seeds)} seeds",
        errors={m: {int(n): v["std"] for n, v in d.items()} for m, d in models.items()},
    )
    print(
        json.dumps(
            {
                "models": {m: {n: round(v["mean"], 4) for n, v in d.items()} for m, d in models.items()},
                "claim": claim,
                "total_seconds": round(result["total_seconds"]),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
