"""Does fine-tuning from the training-free memory converge faster than from the zero-initialised one?

    python benchmarks/training_free_finetune.py run --model runs/gpt2-shakespeare --seeds 0 1 2
    python benchmarks/training_free_finetune.py summarize --model runs/gpt2-shakespeare
        # -> results/training_free_finetune_gpt2_cpu.json

Three starts, each fine-tuned with ``infinite-former lm finetune`` and the GPT-2 benchmark's recipe
(blocks of L = 128, 4 lanes, AdamW 5e-5 for the model's weights, 2.5e-4 for new memory weights,
N = M = 128, τ = 0.5, sticky, KL 1e-6; ``STEPS`` steps, validation every ``EVAL_EVERY``):

  free       ``--training-free gibbs:0.5``: the memory read through the model's own attention (the
             default training-free mode, chosen before any result); fine-tuning trains the model's
             weights, which are also the memory's (no new weights)
  zero       the trainable memory (new W_Q, W_K, W_V, W_O per layer), its output projection at zero:
             it starts as the base model block by block (``lm finetune``'s default)
  no_memory  the same recipe without memory (``--no-memory``): the reference both must beat

Each run records its validation loss (the first ``EVAL_SEGMENTS`` blocks of each of 4 lanes over
the validation plays, blocks in order with the memory) at step 0 (the start, evaluated here on the
same blocks) and every EVAL_EVERY steps, and its test NLL per document at the end (the saved model,
blocks in order; the base model is not evaluated again: benchmarks/training_free.py has it). ``summarize``
pairs the starts by seed at every checkpoint (validation) and by seed × test document at the end
(bootstrap 95% CIs, infinite_former.stats). The runs' models stay in --runs-dir (not committed):
seed 0's ``no_memory`` and ``zero`` models are the fine-tuned models of benchmarks/probes.py.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from infinite_former.experiments import lm as lm_cli
from infinite_former.stats import paired_comparison
from infinite_former.training.records import (
    RunRecords,
    finished_run,
    nll_per_token,
    per_document_nll,
    portable_path,
    settings_hash,
)
from infinite_former.utils import write_json

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("INFINITE_FORMER_SHAKESPEARE", REPO.parent / "shared" / "data" / "shakespeare"))
VARIANTS = ("free", "zero", "no_memory")
FREE = "gibbs:0.5"
STEPS, EVAL_EVERY, EVAL_SEGMENTS = 300, 100, 25
S = dict(block_size=128, batch_size=4, num_basis=128, num_samples=128, tau=0.5, lr=5e-5, ltm_lr=2.5e-4,
         kl_weight=1e-6, warmup=0)  # fmt: skip
PAIRS = (("free", "zero"), ("free", "no_memory"), ("zero", "no_memory"))


def settings_key(steps: int) -> str:
    return settings_hash([S, FREE, steps, EVAL_EVERY, EVAL_SEGMENTS])


def finetune_settings(
    variant: str, seed: int, run_dir: Path, args: argparse.Namespace
) -> lm_cli.LMFinetuneSettings:
    ltm = dict(kl_weight=S["kl_weight"], num_basis=S["num_basis"], num_samples=S["num_samples"], tau=S["tau"])
    return lm_cli.LMFinetuneSettings(
        model=str(args.model), data=str(args.data), run_dir=str(run_dir), cache_dir=str(run_dir.parent / "cache"),
        block_size=S["block_size"], batch_size=S["batch_size"], steps=args.steps, warmup=S["warmup"], lr=S["lr"],
        ltm_lr=S["ltm_lr"], ltm=ltm, seed=seed, eval_splits=(), device="cpu", progress=False,
        tensorboard=False, log_every=10, no_memory=variant == "no_memory",
        training_free=FREE if variant == "free" else None, eval_every=EVAL_EVERY, eval_segments=EVAL_SEGMENTS,
    )  # fmt: skip


def start_loss(s: lm_cli.LMFinetuneSettings) -> float:
    """The validation loss of the model a run starts from, on the blocks its periodic validation reads."""
    from infinite_former.data.segments import Shard
    from infinite_former.data.tokenizer import hf_tokenizer
    from infinite_former.hf.training import HFMemoryLM, load_memory_model
    from infinite_former.training.evaluation import evaluate

    tok = hf_tokenizer(s.model)
    corpus = lm_cli._load_split(s.data, s.valid_split, tok, s.cache_dir)
    stream = lm_cli.valid_evaluator(corpus, s.block_size, tok.eos_id, s.eval_segments)
    torch.manual_seed(s.seed)
    model = HFMemoryLM(load_memory_model(s.model, s.memory(), True).eval())
    shard = Shard(batch_size=s.batch_size)
    with torch.no_grad():
        return float(evaluate(model, stream(shard), "cpu")["loss"])


def test_result(s: lm_cli.LMFinetuneSettings, folder: Path) -> dict:
    """The fine-tuned model's test perplexity per document (blocks in order, memory reset per document);
    the base model's is the training-free benchmark's (not evaluated again here)."""
    from infinite_former.data.tokenizer import hf_tokenizer
    from infinite_former.hf.training import evaluate_hf_pair, load_memory_model

    tok = hf_tokenizer(folder)
    corpus = lm_cli._load_split(s.data, "test", tok, s.cache_dir)
    model = load_memory_model(str(folder), {}, True)
    with torch.no_grad():
        res = evaluate_hf_pair(model, None, corpus, s.block_size, s.batch_size, tok.eos_id)
    return next(iter(res.values()))


def valid_curve(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "eval_log.csv") as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "valid/loss"}


def run_one(variant: str, seed: int, args: argparse.Namespace) -> dict:
    run_dir = Path(args.runs_dir) / f"{variant}-seed{seed}"
    s = finetune_settings(variant, seed, run_dir, args)
    t0 = time.perf_counter()
    start = start_loss(s)
    res = lm_cli.lm_finetune(s)
    test = test_result(s, run_dir / "model")
    return {
        "flags": {"free": ["--training-free", FREE], "zero": [], "no_memory": ["--no-memory"]}[variant],
        "valid_loss": {0: start, **valid_curve(run_dir)},
        "test_ppl": test["ppl"],
        "per_document": per_document_nll(test),
        "model": portable_path(run_dir / "model"),
        **finished_run(res, run_dir, t0),
    }


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    records = RunRecords(Path(args.records), settings_key(args.steps))
    records.folder.mkdir(parents=True, exist_ok=True)
    records.run_missing(
        args.seeds, args.variants, lambda v, k: run_one(v, k, args),
        lambda rec: f"valid {rec['valid_loss']} test ppl {rec['test_ppl']:.3f} ({rec['seconds']:.0f} s)",
    )  # fmt: skip


def cmd_summarize(args: argparse.Namespace) -> None:
    recs = RunRecords(Path(args.records), settings_key(args.steps)).load(VARIANTS)
    done = [v for v in VARIANTS if recs[v]]
    if not done:
        raise SystemExit("no records yet: run `training_free_finetune.py run` first")
    seeds = sorted(set.intersection(*(set(recs[v]) for v in done)))
    steps = sorted({int(k) for v in done for r in recs[v].values() for k in r["valid_loss"]})
    curves = {
        v: {str(t): statistics.fmean(recs[v][k]["valid_loss"][str(t)] for k in seeds) for t in steps}
        for v in done
    }
    valid_pairs, test_pairs = [], []
    for a, b in PAIRS:
        if a not in done or b not in done:
            continue
        for t in steps:
            scores = [[recs[v][k]["valid_loss"][str(t)] for k in seeds] for v in (a, b)]
            pair = paired_comparison(*scores, names=(a, b), higher_is_better=False)
            valid_pairs.append({**pair, "step": t, "unit": "validation loss (nats/token) of a seed"})
        docs = sorted(recs[a][seeds[0]]["per_document"])
        scores = [[x for k in seeds for x in nll_per_token(recs[v][k]["per_document"], docs)] for v in (a, b)]
        pair = paired_comparison(*scores, names=(a, b), higher_is_better=False)
        test_pairs.append({**pair, "step": args.steps, "unit": "test NLL (nats/token) per seed and document"})
    any_rec = next(iter(recs[done[0]].values()))
    out = {
        "benchmark": "training_free_finetune",
        "model": portable_path(args.model),
        "settings": {**S, "steps": args.steps, "eval_every": EVAL_EVERY, "eval_segments_per_lane": EVAL_SEGMENTS,
                     "free": FREE, "data": "../shared/data/shakespeare"},  # fmt: skip
        "variants": {v: recs[v][seeds[0]]["flags"] for v in done},
        "paired_seeds": seeds,
        "valid_loss": curves,
        "test_nll_per_token": {
            v: statistics.fmean(x for k in seeds for x in nll_per_token(recs[v][k]["per_document"], sorted(
                recs[v][k]["per_document"]))) for v in done
        },  # fmt: skip
        "valid_pairs": valid_pairs,
        "test_pairs": test_pairs,
        "train_seconds": {v: statistics.fmean(r["train_seconds"] for r in recs[v].values()) for v in done},
        "commands": [f"python benchmarks/training_free_finetune.py run --model {args.model} --seeds "
                     + " ".join(map(str, seeds)) + f" --steps {args.steps}",
                     f"python benchmarks/training_free_finetune.py summarize --model {args.model} --steps {args.steps}"],
        "machine": {**any_rec["machine"], "torch_threads": 1},
    }  # fmt: skip
    write_json(args.out, out)
    for p in valid_pairs + test_pairs:
        print(f"step {p['step']}: {p['a']} - {p['b']}: {p['mean_diff']:+.4f} {p['ci95']} {p['verdict']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "summarize"):
        c = sub.add_parser(name)
        c.add_argument("--model", type=Path, default=REPO / "runs" / "gpt2-shakespeare")
        c.add_argument("--data", type=Path, default=DATA)
        c.add_argument("--steps", type=int, default=STEPS)
        c.add_argument(
            "--records", default=None, help="default: results/training_free_finetune_<type>_cpu_runs"
        )
        if name == "run":
            c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
            c.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
            c.add_argument("--runs-dir", default=str(REPO / "runs" / "training_free_finetune"))
        else:
            c.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(args.model).model_type
    stem = REPO / "results" / f"training_free_finetune_{model_type}_cpu"
    args.records = args.records or f"{stem}_runs"
    if args.cmd == "summarize":
        args.out = args.out or Path(f"{stem}.json")
    {"run": cmd_run, "summarize": cmd_summarize}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
