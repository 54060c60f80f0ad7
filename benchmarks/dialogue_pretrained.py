"""The paper's dialogue recipe on a pretrained model: a GPT-2 pretrained here, fine-tuned on the
Shakespeare dialogues with and without the long-term memory, 3 seeds, paired by seed and test scene.

    python benchmarks/pretrain.py --data ../shared/data/shakespeare   # -> runs/gpt2-shakespeare (once)
    python benchmarks/dialogue_pretrained.py run --seeds 0 1 2         # one record per (variant, seed)
    python benchmarks/dialogue_pretrained.py summarize                 # -> results/dialogue_pretrained_cpu.json

PAPER §5 (CMU-DoG): GPT-2 fine-tuned on document-grounded dialogue; per reply the document and the
history are cut into blocks from the end, so the document reaches the reply only through the
memory; AdamW 5e-5 (the memory's weights 2.5e-4), nucleus sampling top-p 0.9, ≤ 50 new tokens;
F1, ROUGE-1, ROUGE-L, METEOR. CMU-DoG and GPT-2's weights cannot reach this machine, so the set is
the one of ``dialogue_shakespeare.py`` (one dialogue per scene of the plays, the play before the
scene its document, each next speech a reply) and the base model the GPT-2 that ``pretrain.py``
trains on the training plays (its own BPE). Four variants, each through ``infinite-former dialogue
train --model BASE`` on the same examples in the same order for the same steps:

  no_memory        ``--no-memory``: the fine-tuned GPT-2 sees only the reply's block
  infinite         ``--sampling uniform``: + the LTM (new weights, zero-initialised output)
  infinite_sticky  + the LTM with sticky memories (the paper's best model)
  training_free    ``--training-free gibbs:0.5``: + the memory read through GPT-2's own attention
                   (``hf/training_free.py``, no weight added; sticky, the same N, M, τ). Its GPT-2
                   weights are fine-tuned like the others' (the dialogue tokens are new, so no
                   variant can be evaluated untrained); the memory itself has nothing to train.
  free_at_eval     control, evaluation only: no_memory's fine-tuned weights (same seed) with the
                   training-free memory added for the evaluation ("try it before training").

Every reply of test scene k under seed s is sampled with the same seed in every variant, so the
comparisons are paired by (seed, scene): mean per-scene difference a − b and its two-level
bootstrap 95% CI over seeds and scenes (``infinite_former.stats.paired_comparison``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from infinite_former.data.dialogue import (
    SpecialIds,
    add_dialogue_tokens,
    context_ids,
    load_dialogues,
    select_turns,
    write_shakespeare_jsonl,
)
from infinite_former.data.tokenizer import gpt2_tokenizer
from infinite_former.experiments.dialogue import DialogueTrainSettings, dialogue_train
from infinite_former.stats import paired_comparison
from infinite_former.training.records import RunRecords, finished_run, settings_hash
from infinite_former.utils import machine_info, write_json

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "results" / "dialogue_pretrained_cpu_runs"
OUT = REPO / "results" / "dialogue_pretrained_cpu.json"
DATA = os.environ.get("INFINITE_FORMER_SHAKESPEARE", str(REPO.parent / "shared" / "data" / "shakespeare"))
BASE = REPO / "runs" / "gpt2-shakespeare"
VARIANTS = ("no_memory", "infinite", "infinite_sticky", "training_free", "free_at_eval")
FREE = "gibbs:0.5"  # the training-free memory's density and α (add_memory's defaults)
# each variant's settings over the recipe S (DialogueTrainSettings fields) and its `dialogue train` flags
VARIANT: dict[str, dict[str, Any]] = {
    "no_memory": dict(no_memory=True),
    "infinite": dict(uniform=True),
    "infinite_sticky": {},
    "training_free": dict(training_free=FREE),
}
FLAGS = {
    "no_memory": ["--no-memory"],
    "infinite": ["--sampling", "uniform"],
    "infinite_sticky": ["--sampling", "sticky"],
    "training_free": ["--training-free", FREE],
    "free_at_eval": ["--no-memory", "then at evaluation: add_memory(training_free=...)"],
}
PAIRS = [("infinite", "no_memory"), ("infinite_sticky", "no_memory"), ("training_free", "no_memory"),
         ("infinite_sticky", "infinite"), ("training_free", "infinite_sticky"),
         ("free_at_eval", "no_memory")]  # fmt: skip
# metric -> higher is better; log_reply_ppl: mean NLL per reply token of a scene (log of its perplexity)
METRICS = {"f1": True, "rouge1": True, "rougeL": True, "meteor": True, "log_reply_ppl": False}

# The recipe at this scale (the paper: L = N = M = 512, 3 epochs). L = 128, half the base model's
# context as in gpt2_finetune.py; N = M = 128, τ = 0.5, KL 1e-6, the paper's learning rates.
# steps, eval_replies: sized to ~30 CPU-minutes for 5 variants x 3 seeds on one thread, from a short run
# of each variant on a GPT-2 of this size (20 steps, 61 replies): s per training step (no memory /
# uniform / sticky / training-free) 0.18 / 0.40 / 0.53 / 0.60, s per evaluated reply 0.55 / 0.70 /
# 0.88 / 0.98 (wall time on a 2-core machine shared with other jobs).
S: dict[str, Any] = dict(
    block_size=128, num_basis=128, num_samples=128, tau=0.5, kl_weight=1e-6, lr=5e-5, ltm_lr=2.5e-4,
    warmup=0, steps=300, max_document_chars=1500, max_turns=12, eval_replies=1, top_p=0.9,
    max_new_tokens=50,
)  # fmt: skip


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    """S with the command line's changes (``--set KEY=VALUE``, for smoke runs)."""
    out = dict(S)
    for item in args.set or []:
        key, _, value = item.partition("=")
        if key not in S:
            raise SystemExit(f"--set: {key!r} is not a recipe setting ({', '.join(S)})")
        out[key] = type(S[key])(value)
    return out


def train_settings(s: dict[str, Any], name: str, seed: int, data: Path, run_dir: Path, base: Path):
    """`dialogue train`'s settings for one variant and seed."""
    ltm = dict(num_basis=s["num_basis"], num_samples=s["num_samples"], tau=s["tau"], kl_weight=s["kl_weight"])
    return DialogueTrainSettings(
        model=str(base), data=str(data), run_dir=str(run_dir), block_size=s["block_size"], ltm=ltm,
        steps=s["steps"], warmup=s["warmup"], lr=s["lr"], ltm_lr=s["ltm_lr"], seed=seed, device="cpu",
        eval_splits=("test",), max_eval_replies=s["eval_replies"], top_p=s["top_p"],
        max_new_tokens=s["max_new_tokens"], progress=False, tensorboard=False, log_every=25,
        **VARIANT[name],
    )  # fmt: skip


def data_dir(runs_dir: Path) -> Path:
    return runs_dir / "data"


def free_at_eval(s: dict[str, Any], seed: int, runs_dir: Path) -> dict[str, Any]:
    """The no_memory model of ``seed`` with the training-free memory added, evaluated (no training)."""
    from transformers import GPT2LMHeadModel

    from infinite_former.data.tokenizer import TextTokenizer
    from infinite_former.experiments.dialogue import evaluate_dialogues
    from infinite_former.hf import add_memory

    folder = runs_dir / f"no_memory-seed{seed}" / "model"
    if not (folder / "config.json").is_file():
        raise SystemExit(
            f"{folder}: no fine-tuned no_memory model; run the no_memory variant of seed {seed} first"
        )
    density, alpha = FREE.split(":")
    ltm = dict(num_basis=s["num_basis"], num_samples=s["num_samples"], tau=s["tau"])
    plain = GPT2LMHeadModel.from_pretrained(folder)  # its weights, without the block machinery
    model = add_memory(
        plain, training_free={"density": density, "alpha": float(alpha)}, block_size=s["block_size"], **ltm
    )
    test = evaluate_dialogues(
        model, TextTokenizer.load(folder), load_dialogues(data_dir(runs_dir) / "test.jsonl", "test"),
        s["eval_replies"], seed, s["top_p"], s["max_new_tokens"], "cpu",
    )  # fmt: skip
    print(f"test: {test['overall']}", flush=True)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "training_free": model.training_free.to_dict(),
        "sticky": bool(model.memory_config.ltm.sticky),
        "train_seconds": 0.0,
        "final_train_loss": None,
        "machine": machine_info(),
    }, test


def run_one(s: dict[str, Any], name: str, seed: int, runs_dir: Path, base: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    if name == "free_at_eval":
        info, test = free_at_eval(s, seed, runs_dir)
        return {"flags": FLAGS[name], **info, **evaluation(test), "seconds": time.perf_counter() - t0}
    run_dir = runs_dir / f"{name}-seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    out = dialogue_train(train_settings(s, name, seed, data_dir(runs_dir), run_dir, base))
    return {
        "flags": FLAGS[name],
        "sticky": out["sticky"],
        "training_free": out["training_free"],
        "parameters": out["parameters"],
        "steps": out["steps"],
        "epochs": out["epochs"],
        **evaluation(out["eval"]["test"]),
        **finished_run(out, run_dir, t0),
    }


def evaluation(test: dict[str, Any]) -> dict[str, Any]:
    """What a record keeps of evaluate_dialogues' result: overall, per scene, a few replies."""
    keys = ("dialogue", "name", "f1", "rouge1", "rougeL", "meteor", "reply_ppl", "replies")
    return {
        "overall": test["overall"],
        "per_dialogue": [{k: r[k] for k in keys} for r in test["per_dialogue"]],
        "eval_seconds": test["seconds"],
        "examples": [
            {k: r[k] for k in ("dialogue", "turn", "prediction", "reference")} for r in test["replies"][:4]
        ],
    }


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    s, base, runs_dir = recipe(args), Path(args.base), Path(args.runs_dir)
    if not (base / "model.safetensors").is_file():
        raise SystemExit(
            f"--base {base}: no pretrained model there; run `python benchmarks/pretrain.py` first"
        )
    write_shakespeare_jsonl(args.data, data_dir(runs_dir), s["max_document_chars"], s["max_turns"])
    RunRecords(args.records, settings_hash(s)).run_missing(
        args.seeds,
        args.variants,
        lambda name, seed: run_one(s, name, seed, runs_dir, base),
        lambda r: (
            f"F1 {r['overall']['f1']:.2f} reply ppl {r['overall']['reply_ppl']:.2f} ({r['seconds']:.0f} s)"
        ),
    )


def document_lengths(s: dict[str, Any], data: Path, base: Path) -> dict[str, Any]:
    """Tokens of the document part (``<bos> <doc> document``) and of the history of every evaluated
    test reply, against the block L: the document must be longer than one block for the memory to matter."""
    tok = add_dialogue_tokens(gpt2_tokenizer(base))
    ids = SpecialIds.of(tok)
    doc, history = [], []
    for dialogue in load_dialogues(data / "test.jsonl", "test"):
        cache: dict = {}
        for turn in select_turns(len(dialogue.turns), s["eval_replies"]):
            d, h = context_ids(dialogue, turn, tok, ids, cache)
            doc.append(len(d))
            history.append(len(h))
    L = s["block_size"]
    return {
        "block_size": L,
        "replies": len(doc),
        "document_tokens": {"mean": statistics.fmean(doc), "min": min(doc), "max": max(doc)},
        "document_blocks_mean": statistics.fmean(math.ceil(n / L) for n in doc),
        "longer_than_one_block": sum(n > L for n in doc) / len(doc),
        "history_tokens": {"mean": statistics.fmean(history), "min": min(history), "max": max(history)},
    }


def column(record: dict[str, Any], metric: str) -> list[float]:
    """One seed's per-scene scores (in scene order)."""
    rows = sorted(record["per_dialogue"], key=lambda r: r["dialogue"])
    if metric == "log_reply_ppl":
        return [math.log(r["reply_ppl"]) for r in rows]
    return [r[metric] for r in rows]


def verdict_line(a: str, b: str, pairs: list[dict[str, Any]]) -> str:
    """One sentence per comparison: which metrics differ beyond noise, and in whose favour."""
    better = [
        f"{p['metric']}: {p['verdict'].removesuffix(' better')} better"
        for p in pairs
        if p["verdict"] != "within noise"
    ]
    noise = [p["metric"] for p in pairs if p["verdict"] == "within noise"]
    parts = better + ([f"within noise on {', '.join(noise)}"] if noise else [])
    return f"{a} vs {b}: " + "; ".join(parts)


def cmd_summarize(args: argparse.Namespace) -> None:
    s = recipe(args)
    recs = RunRecords(args.records, settings_hash(s)).load(VARIANTS)
    done = [v for v in VARIANTS if recs[v]]
    if not done:
        raise SystemExit("no records yet: run `python benchmarks/dialogue_pretrained.py run` first")
    paired = sorted(set.intersection(*(set(recs[v]) for v in done)))  # the seeds every model has
    models: dict[str, Any] = {}
    for v in done:
        rs = [recs[v][k] for k in sorted(recs[v])]
        common = [recs[v][k] for k in paired]  # means over the paired seeds only (a partial run stays fair)
        models[v] = {
            **{k: statistics.fmean(r["overall"][k] for r in common) for k in ("f1", "rouge1", "rougeL", "meteor")},
            "reply_ppl": statistics.fmean(r["overall"]["reply_ppl"] for r in common),
            "parameters": rs[0]["parameters"],
            "flags": rs[0]["flags"],
            "seeds": [{"seed": r["seed"], **{k: r["overall"][k] for k in (*METRICS, "reply_ppl") if k in r["overall"]}} for r in rs],
            "train_seconds": statistics.fmean(r["train_seconds"] for r in rs),
            "eval_seconds": statistics.fmean(r["eval_seconds"] for r in rs),
            "final_train_loss": [r["final_train_loss"] for r in rs],
        }  # fmt: skip
    if "no_memory" in models:
        for m in models.values():
            m["memory_parameters"] = m["parameters"] - models["no_memory"]["parameters"]
    pairs, verdicts = [], []
    for a, b in PAIRS:
        seeds = sorted(set(recs.get(a, {})) & set(recs.get(b, {})))
        if not seeds:
            continue
        rows = []
        for metric, higher in METRICS.items():
            sa = [column(recs[a][k], metric) for k in seeds]
            sb = [column(recs[b][k], metric) for k in seeds]
            p = paired_comparison(sa, sb, names=(a, b), higher_is_better=higher)
            rows.append({"metric": metric, **p})
        pairs += rows
        verdicts.append(verdict_line(a, b, rows))
    any_rec = recs[done[0]][min(recs[done[0]])]
    pretrain_path = Path(args.base) / "pretrain.json"
    pretrain = json.loads(pretrain_path.read_text()) if pretrain_path.is_file() else None
    base_model = None if pretrain is None else {
        "script": "benchmarks/pretrain.py", "config": pretrain["config"], "parameters": pretrain["parameters"],
        "test_ppl_context": pretrain["test_ppl_context"],
    }  # fmt: skip
    data = data_dir(Path(args.runs_dir))  # (re)written: the same files `run` trained and evaluated on
    counts = write_shakespeare_jsonl(args.data, data, s["max_document_chars"], s["max_turns"])
    result = {
        "machine": any_rec["machine"],
        "settings": {
            **s,
            "data": "../shared/data/shakespeare",
            "counts": counts,
            "memory": "every layer; sticky except `infinite`; LTM output zero-initialised (trained variants)",
            "pairs_over": "seeds x test scenes (per-scene means of the evaluated replies); two-level bootstrap",
            "cut": args.cut,
        },
        "documents": document_lengths(s, data, Path(args.base)),
        "base_model": base_model,
        "paired_seeds": paired,
        "complete": all(len(recs[v]) >= len(args.expected_seeds) for v in VARIANTS),
        "models": models,
        "pairs": pairs,
        "verdicts": verdicts,
        "examples": {v: recs[v][min(recs[v])]["examples"] for v in done},
        "commands": ["python benchmarks/pretrain.py --data ../shared/data/shakespeare",
                     "python benchmarks/dialogue_pretrained.py run --seeds 0 1 2",
                     "python benchmarks/dialogue_pretrained.py summarize"],
    }  # fmt: skip
    write_json(args.out, result)
    for line in verdicts:
        print(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    sm = sub.add_parser("summarize")
    sm.add_argument("--expected-seeds", type=int, nargs="+", default=[0, 1, 2])
    sm.add_argument("--out", default=str(OUT))
    sm.add_argument("--cut", default="", help="what was cut to fit the CPU (recorded with the settings)")
    for q in (r, sm):
        q.add_argument("--base", default=str(BASE), help="the pretrained GPT-2 folder (pretrain.py)")
        q.add_argument("--data", default=DATA, help="the plays: train/ valid/ test/")
        q.add_argument("--runs-dir", default=str(REPO / "runs" / "dialogue_pretrained"))
        q.add_argument("--records", default=str(RECORDS))
        q.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a recipe setting (S)")
    args = p.parse_args(argv)
    {"run": cmd_run, "summarize": cmd_summarize}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
