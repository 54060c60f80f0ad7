"""fp32 vs bf16 on the CPU (issue 17): speed of the layer and of training, and accuracy, paired.

    python benchmarks/precision.py speed                       # layer + training steps, interleaved
    python benchmarks/precision.py sort --precision bf16 --seeds 0 2   # sorting records (a process)
    python benchmarks/precision.py sort --precision bf16 --seeds 1     # (a second one, side by side)
    python benchmarks/precision.py lm --precision bf16 --seeds 0 1 2   # Shakespeare LM records (long)
    python benchmarks/precision.py summarize                   # -> results/precision_cpu.json

One torch thread per process. bf16 = autocast to bfloat16 (training/precision.py), with the memory's
float32 islands. Times are process CPU time per step (the machine is shared: wall time also counts
other processes' load; both are recorded), every variant interleaved step by step.

* speed/layer: LongTermAttention forward + backward of one segment (issue 2's configuration:
  batch 8, e 512, 8 heads, N = M = L = 512, sticky, gate, KL) and plain softmax attention over
  N keys with the same shapes, fp32 and bf16.
* speed/training: one optimizer step (all segments of a batch) of the sorting benchmark's models at
  length 2048 (benchmarks/sorting.py settings) and of the Shakespeare LM's models (d 128, 2 layers,
  seg 128, batch 8; benchmarks/lm_shakespeare.py), ∞-former (sticky) and Transformer-XL, fp32, bf16.
* sort: the sorting benchmark's ∞-former (sticky) trained and tested in --precision with the
  benchmark's settings; records in results/precision_cpu_runs/. fp32 records are taken from the
  sorting benchmark itself (results/sorting_cpu_runs, same settings key) unless this script made one.
  `summarize` pairs bf16 with fp32 by seed and test sequence at each length (infinite_former.stats).
* lm: the same for the Shakespeare LM benchmark's ∞-former (sticky) (3000 steps; fp32 records from
  results/lm_shakespeare_cpu_runs), paired by seed and test document: perplexity ratio and its CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from infinite_former import LongTermAttention, LTMConfig
from infinite_former.data.segments import Shard
from infinite_former.data.sorting import SortingConfig, SortingGenerator, SortingStream
from infinite_former.experiments.sort import train_and_test
from infinite_former.models import InfiniteFormerLM
from infinite_former.stats import paired_comparison, seeds_won
from infinite_former.training.precision import autocast
from infinite_former.training.records import RunRecords, nll_per_token
from infinite_former.utils import machine_info, seed_everything, write_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import lm_shakespeare  # noqa: E402
import sorting  # noqa: E402
from ltm_scaling import FULL, PlainAttention  # noqa: E402

RECORDS = ROOT / "results" / "precision_cpu_runs"
OUT = ROOT / "results" / "precision_cpu.json"
PRECISIONS = ("fp32", "bf16")
SORT_MODEL = "infinite_sticky"


def cpu_and_wall(step) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    step()
    return time.process_time() - c0, time.perf_counter() - t0


def interleaved(steps: dict, reps: int, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Median CPU and wall seconds per call of each named step, run in rounds (every step once per
    round, cpu_ms_all[r] is round r) in a seeded random order per round, so that no step always
    runs right after the same other one."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    samples = {name: [] for name in steps}
    order = random.Random(0)
    for _ in range(reps):
        for name in order.sample(list(steps), len(steps)):
            samples[name].append(cpu_and_wall(steps[name]))
    return {
        name: {
            "cpu_ms": round(1e3 * statistics.median(c for c, _ in s), 2),
            "wall_ms": round(1e3 * statistics.median(w for _, w in s), 2),
            "cpu_ms_all": [round(1e3 * c, 1) for c, _ in s],
        }
        for name, s in samples.items()
    }


# ------------------------------------------------------------------------------------ speed


def layer_steps() -> dict:
    c = FULL
    b, e, h, seg = c["batch"], c["d_model"], c["n_heads"], c["segment"]
    torch.manual_seed(0)
    ltm = LongTermAttention(
        LTMConfig(d_model=e, n_heads=h, num_basis=c["num_basis"], num_samples=c["num_samples"])
    )
    plain = PlainAttention(e, h)
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(b, seg, e, generator=gen).requires_grad_(True)
    keys = torch.randn(b, c["num_basis"], e, generator=gen)
    boxes = {}
    with torch.no_grad():  # a memory that has absorbed a few segments (and holds sticky bin mass)
        state = ltm.update(ltm.init_state(b), torch.randn(b, seg, e, generator=gen))
        _, state = ltm(queries.detach(), torch.randn(b, seg, e, generator=gen), state)
    steps = {}
    for p in PRECISIONS:
        boxes[p] = [state]
        ctx = autocast(p, "cpu")

        def ltm_step(p=p, ctx=ctx) -> None:
            with ctx():
                out, st, kl = ltm(queries, torch.randn(b, seg, e, generator=gen), boxes[p][0], return_kl=True)
            (out.float().sum() + 1e-6 * kl).backward()
            ltm.zero_grad(set_to_none=True)
            queries.grad = None
            boxes[p][0] = st.detach()

        def plain_step(ctx=ctx) -> None:
            with ctx():
                out = plain(queries, keys)
            out.float().sum().backward()
            plain.zero_grad(set_to_none=True)
            queries.grad = None

        steps[f"ltm/{p}"] = ltm_step
        steps[f"plain/{p}"] = plain_step
    return steps


def sort_train_steps(models=(SORT_MODEL, "xl"), precisions=PRECISIONS, wrap=None) -> dict:
    """{sort/<model>/<precision>: one optimizer step}; wrap: applied to each model for its forward
    calls (e.g. torch.compile; the optimizer holds the model's own parameters)."""
    s0 = sorting.base_settings()
    length = max(s0.lengths)
    task = SortingConfig(length=length, num_symbols=s0.num_symbols, seed=0)
    stream = SortingStream(SortingGenerator(task), s0.segment_len, Shard(0, 1, s0.batch_size))
    batches = [list(stream.batch_segments(i)) for i in range(64)]
    steps = {}
    for name in models:
        s, memory_type = sorting.variant(s0, name)
        for p in precisions:
            seed_everything(0)
            core = InfiniteFormerLM(s.model_config(memory_type))
            opt = torch.optim.AdamW(core.parameters(), lr=s.lr)
            counter, ctx, model = [0], autocast(p, "cpu"), (wrap or (lambda m: m))(core)

            def step(model=model, core=core, opt=opt, ctx=ctx, counter=counter) -> None:
                segments = batches[counter[0] % len(batches)]
                counter[0] += 1
                state = core.init_state(s0.batch_size, "cpu")
                for seg in segments:  # the Trainer's loop: a no-grad pass, then the answer segment
                    state = state.reset(seg.reset)
                    if not seg.train:
                        with torch.no_grad(), ctx():
                            _, state = model(seg.tokens, state)
                        state = state.detach()
                        continue
                    with ctx():
                        out, state = model(seg.tokens, state, targets=seg.targets, loss_mask=seg.loss_mask)
                    (out.loss + out.aux_loss).backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    state = state.detach()

            steps[f"sort/{name}/{p}"] = step
    tokens = length * s0.batch_size
    return steps, tokens


def lm_train_steps(models=("infinite_sticky", "xl_equal"), precisions=PRECISIONS, wrap=None) -> dict:
    """{lm/<model>/<precision>: one optimizer step}; wrap: as in sort_train_steps."""
    S = lm_shakespeare.S
    b, seg, v = S["batch_size"], S["seg_len"], S["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, v, (64, b, seg + 1), generator=gen)
    steps = {}
    for name in models:
        memory_type = "xl" if name.startswith("xl") else name
        cfg = lm_shakespeare._config(memory_type, S["d_inner"])
        if name == "xl_equal":
            cfg = dataclasses.replace(cfg, mem_len=S["mem_len"] + S["num_basis"])
        for p in precisions:
            seed_everything(0)
            core = InfiniteFormerLM(cfg)
            opt = torch.optim.AdamW(core.parameters(), lr=S["lr"])
            box, ctx = [core.init_state(b, "cpu"), 0], autocast(p, "cpu")
            model = (wrap or (lambda m: m))(core)

            def step(model=model, opt=opt, ctx=ctx, box=box) -> None:
                chunk = data[box[1] % len(data)]
                box[1] += 1
                with ctx():
                    out, state = model(chunk[:, :-1], box[0], targets=chunk[:, 1:])
                loss = out.loss + (out.aux_loss if out.aux_loss is not None else 0.0)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                box[0] = state.detach()

            steps[f"lm/{name}/{p}"] = step
    return steps, b * seg


def layer_result(reps: int) -> dict:
    layer = interleaved(layer_steps(), reps)
    return {
        "what": "fwd + bwd of one segment: LTM (batch 8, e 512, 8 heads, N = M = L = 512, sticky, gate, "
        "KL) and plain softmax attention over N keys",
        "steps": layer,
        "bf16_speedup_cpu": {
            k: round(layer[f"{k}/fp32"]["cpu_ms"] / layer[f"{k}/bf16"]["cpu_ms"], 3) for k in ("ltm", "plain")
        },
        "ltm_over_plain_cpu": {
            p: round(layer[f"ltm/{p}"]["cpu_ms"] / layer[f"plain/{p}"]["cpu_ms"], 3) for p in PRECISIONS
        },
    }


def cmd_speed(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    started = time.perf_counter()
    result = {"machine": machine_info(precision="fp32 and bf16 (autocast), interleaved")}
    if "layer" in args.parts:
        result["layer"] = layer_result(args.reps)
        print(json.dumps(result["layer"], indent=1), flush=True)
    tasks = {"sort": sort_train_steps, "lm": lm_train_steps}
    for task in (t for t in ("sort", "lm") if t in args.parts):
        steps, tokens = tasks[task]()
        timing = interleaved(steps, args.train_reps)
        names = sorted({k.split("/")[1] for k in steps})
        tok_s = {k: round(tokens / (v["cpu_ms"] / 1e3), 1) for k, v in timing.items()}
        infinite = next(n for n in names if n.startswith("infinite"))
        xl = next(n for n in names if n.startswith("xl"))
        result[task] = {
            "tokens_per_step": tokens,
            "steps": timing,
            "tokens_per_cpu_s": tok_s,
            "bf16_speedup_cpu": {
                n: round(timing[f"{task}/{n}/fp32"]["cpu_ms"] / timing[f"{task}/{n}/bf16"]["cpu_ms"], 3)
                for n in names
            },
            "infinite_over_xl_tokens_per_s": {
                p: round(tok_s[f"{task}/{infinite}/{p}"] / tok_s[f"{task}/{xl}/{p}"], 3) for p in PRECISIONS
            },
        }
        print(task, json.dumps({k: v for k, v in result[task].items() if k != "steps"}), flush=True)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["command"] = (
        f"python benchmarks/precision.py speed --reps {args.reps} --train-reps {args.train_reps} "
        f"--parts {' '.join(args.parts)}" + (f" --out {args.out}" if args.out else "")
    )
    out = Path(args.out) if args.out else OUT.with_name("precision_speed_cpu.json")
    write_json(out, result)
    print(f"wrote {out}")


# ---------------------------------------------------------------------------------- accuracy


def sort_key(precision: str) -> str:
    return f"{sorting.settings_key()}-{precision}"


def sort_run(precision: str, seed: int, runs_dir: str) -> dict:
    s, memory_type = sorting.variant(sorting.base_settings(seed, runs_dir), SORT_MODEL)
    s = dataclasses.replace(s, precision=precision, name=f"{s.name}-{precision}")
    t0 = time.perf_counter()
    r = train_and_test(s, SORT_MODEL, memory_type, s.lengths, resume=False)
    model = sorting.load_model(r["run_dir"])
    with autocast(precision, "cpu")():
        test = {str(n): sorting.per_sequence_accuracy(model, s, n) for n in s.lengths}
    return {
        "variant": f"{SORT_MODEL}-{precision}",
        "precision": precision,
        "seed": seed,
        "steps": r["steps"],
        "seconds": time.perf_counter() - t0,
        "tokens_per_s": r["tokens_per_s"],
        "final_train_loss": r["final_train_loss"],
        "test": test,
        "machine": machine_info(precision=precision),
    }


def cmd_sort(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    p = args.precision
    RunRecords(RECORDS, sort_key(p)).run_missing(
        args.seeds,
        [f"{SORT_MODEL}-{p}"],
        lambda name, seed: sort_run(p, seed, args.runs_dir),
        lambda rec: (
            f"{ {n: round(statistics.fmean(v), 3) for n, v in rec['test'].items()} } ({rec['seconds']:.0f} s)"
        ),
    )


def lm_key(precision: str) -> str:
    return f"{lm_shakespeare.settings_key()}-{precision}"


def cmd_lm(args: argparse.Namespace) -> None:
    """The Shakespeare LM benchmark's ∞-former (sticky), trained and tested in --precision."""
    torch.set_num_threads(1)
    p, root = args.precision, Path(args.runs_dir)
    RunRecords(RECORDS, lm_key(p)).run_missing(
        args.seeds,
        [f"lm_{SORT_MODEL}-{p}"],
        lambda name, seed: {
            "precision": p,
            **lm_shakespeare.run_one(SORT_MODEL, seed, root, precision=p, tag=f"-{p}"),
        },
        lambda rec: f"test ppl {rec['test_ppl']:.3f} ({rec['seconds']:.0f} s)",
    )


def lm_summary() -> dict:
    """bf16 vs fp32 test NLL per token, paired by seed and test document (fp32: the LM benchmark's)."""
    bf16 = RunRecords(RECORDS, lm_key("bf16")).load([f"lm_{SORT_MODEL}-bf16"])[f"lm_{SORT_MODEL}-bf16"]
    fp32 = RunRecords(lm_shakespeare.RECORDS, lm_shakespeare.settings_key()).load([SORT_MODEL])[SORT_MODEL]
    seeds = sorted(set(bf16) & set(fp32))
    out: dict = {"model": SORT_MODEL, "settings_key": lm_shakespeare.settings_key(), "paired_seeds": seeds}
    if not seeds:
        return out
    docs = sorted(set.intersection(*(set(r[k]["per_document"]) for r in (bf16, fp32) for k in seeds)))
    a = [nll_per_token(bf16[k]["per_document"], docs) for k in seeds]
    b = [nll_per_token(fp32[k]["per_document"], docs) for k in seeds]
    cmp = paired_comparison(a, b, names=("bf16", "fp32"), higher_is_better=False)
    out.update(
        test_ppl={"bf16": [bf16[k]["test_ppl"] for k in seeds], "fp32": [fp32[k]["test_ppl"] for k in seeds]},
        bf16_minus_fp32_nll_per_token=cmp,
        ppl_ratio_bf16_over_fp32=math.exp(cmp["mean_diff"]),
        ppl_ratio_ci95=[math.exp(x) for x in cmp["ci95"]],
        within_1_percent=math.exp(cmp["ci95"][1]) <= 1.01 and math.exp(cmp["ci95"][0]) >= 0.99,
        documents=len(docs),
    )
    return out


def cmd_summarize(args: argparse.Namespace) -> None:
    bf16 = RunRecords(RECORDS, sort_key("bf16")).load([f"{SORT_MODEL}-bf16"])[f"{SORT_MODEL}-bf16"]
    own = RunRecords(RECORDS, sort_key("fp32")).load([f"{SORT_MODEL}-fp32"])[f"{SORT_MODEL}-fp32"]
    bench = sorting.load_records().get(SORT_MODEL, {})
    full = sorting.SETTINGS["steps"]  # a run stopped early (signal) is not a record to pair
    bf16 = {k: r for k, r in bf16.items() if r["steps"] == full}
    fp32 = {k: own.get(k, bench.get(k)) for k in set(own) | set(bench)}
    seeds = sorted(set(bf16) & set(fp32))
    result: dict = {
        "machine": machine_info(precision="fp32 vs bf16 (autocast)"),
        "sort": {
            "model": SORT_MODEL,
            "settings_key": sorting.settings_key(),
            "paired_seeds": seeds,
            "fp32_source": {
                k: "results/precision_cpu_runs" if k in own else "results/sorting_cpu_runs" for k in seeds
            },
        },
    }
    if seeds:
        lengths = list(bf16[seeds[0]]["test"])
        by_length = {}
        for n in lengths:
            a = [bf16[k]["test"][n] for k in seeds]
            b = [fp32[k]["test"][n] for k in seeds]
            cmp = paired_comparison(a, b, names=("bf16", "fp32"))
            mean_a = [statistics.fmean(x) for x in a]
            mean_b = [statistics.fmean(x) for x in b]
            by_length[n] = {
                "bf16": mean_a,
                "fp32": mean_b,
                "bf16_minus_fp32": cmp,
                "seeds_bf16_won": seeds_won(mean_a, mean_b),
                "ci_within_1_point": -0.01 <= cmp["ci95"][0] and cmp["ci95"][1] <= 0.01,  # equivalence
                "not_worse_by_1_point": cmp["ci95"][0] >= -0.01,
            }
        result["sort"]["accuracy"] = by_length
    result["lm"] = lm_summary()
    write_json(OUT, result)
    print(json.dumps({k: result[k] for k in ("sort", "lm")}, indent=1)[:4000])
    print(f"wrote {OUT}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--reps", type=int, default=5, help="timed layer steps per variant")
    sp.add_argument("--train-reps", type=int, default=5, help="timed training steps per variant")
    sp.add_argument("--parts", nargs="+", default=["layer", "sort", "lm"], choices=["layer", "sort", "lm"])
    sp.add_argument("--out", default=None)
    so = sub.add_parser("sort")
    so.add_argument("--precision", choices=PRECISIONS, required=True)
    so.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    so.add_argument("--runs-dir", default="runs/bench-precision")
    lm = sub.add_parser("lm")
    lm.add_argument("--precision", choices=PRECISIONS, required=True)
    lm.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    lm.add_argument("--runs-dir", default="runs/bench-precision-lm")
    sub.add_parser("summarize")
    args = p.parse_args(argv)
    {"speed": cmd_speed, "sort": cmd_sort, "lm": cmd_lm, "summarize": cmd_summarize}[args.cmd](args)


if __name__ == "__main__":
    main()
