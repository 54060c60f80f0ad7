"""The paper's GPT-2 experiment at CPU scale: fine-tune a GPT-2 pretrained here, with and without memory.

    python benchmarks/pretrain.py --steps 1500                 # -> runs/gpt2-shakespeare/ (once)
    python benchmarks/gpt2_finetune.py run --seeds 0 1 2            # one record per (variant, seed)
    python benchmarks/gpt2_finetune.py controls --seeds 0 1 2       # evaluation-only controls
    python benchmarks/gpt2_finetune.py summarize                    # -> results/gpt2_finetune_cpu.json
    python benchmarks/gpt2_finetune.py params     # parameter counts into that file (no training, no weights)

PAPER §5: GPT-2 fine-tuned on long documents in sequential blocks, AdamW 5e-5 for GPT-2's weights
and 2.5e-4 for the new LTM weights, τ = 0.5, KL on. No pretrained GPT-2 reaches this machine, so
the base model is the small GPT-2 that ``pretrain.py`` trains on the training plays (context
256). The block is half its context (the paper: 512 of GPT-2's 1024), so each block is read alone
by the models without memory and with the previous blocks' long-term memory by the others:

  base             the pretrained model, not fine-tuned, each block alone
  no_memory        fine-tuned with the same recipe, each block alone (``lm finetune --no-memory``)
  infinite         fine-tuned with the LTM, uniform sampling (``--sampling uniform``)
  infinite_sticky  fine-tuned with the LTM, sticky memories (``--sampling sticky``)
  controls (evaluation only, `controls`):
  no_memory_window       the no_memory models, each block read with the previous block in view
  infinite[_sticky]_wiped  the memory models with their memory emptied before every block
  base_window            the pretrained model, each block read with the previous block in view

Every run goes through ``infinite-former lm finetune`` and writes
results/gpt2_finetune_cpu_runs/<variant>-seed<k>.json with its per-document test NLL and the
passkey probe on its saved model (distances inside and beyond one block; the base model is probed
with its whole context window). `summarize` pairs the models by seed and test document
(infinite_former.stats): mean difference in nats/token and its 95% bootstrap CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from infinite_former.experiments import lm as lm_cli
from infinite_former.experiments import passkey as passkey_cli
from infinite_former.stats import paired_comparison
from infinite_former.training.records import (
    RunRecords,
    finished_run,
    nll_per_token,
    parameter_counts,
    per_document_nll,
    settings_hash,
)
from infinite_former.utils import machine_info, write_json

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "results" / "gpt2_finetune_cpu_runs"
OUT = REPO / "results" / "gpt2_finetune_cpu.json"
DATA = os.environ.get("INFINITE_FORMER_SHAKESPEARE", str(REPO.parent / "shared" / "data" / "shakespeare"))
BASE = REPO / "runs" / "gpt2-shakespeare"
VARIANTS = ("no_memory", "infinite", "infinite_sticky")
# each variant's settings over the recipe below; FLAGS: the same as `lm finetune` flags (kept in each run record)
VARIANT = {
    "no_memory": dict(no_memory=True),
    "infinite": dict(ltm={"sticky": False}),
    "infinite_sticky": dict(ltm={"sticky": True}),
}
FLAGS = {
    "no_memory": ["--no-memory"],
    "infinite": ["--sampling", "uniform"],
    "infinite_sticky": ["--sampling", "sticky"],
}
# the baseline a one-block memory must beat: the fine-tuned model without memory, reading each
# block with the previous block in its window (`window`, hf.training.evaluate_window)
WINDOW = "no_memory_window"
CONTROLS = (WINDOW, "infinite_wiped", "infinite_sticky_wiped", "base_window")  # `controls`: evaluation only
PAIRS = [("infinite", "no_memory"), ("infinite_sticky", "no_memory"), ("infinite_sticky", "infinite"),
         ("infinite", WINDOW), ("infinite_sticky", WINDOW), ("no_memory", WINDOW),
         ("infinite", "infinite_wiped"), ("infinite_sticky", "infinite_sticky_wiped"),
         ("infinite_wiped", "no_memory"), ("infinite_sticky_wiped", "no_memory"), ("base_window", "base"),
         ("no_memory", "base"), ("infinite", "base"), ("infinite_sticky", "base")]  # fmt: skip

# The recipe at this scale: blocks of L = 128 tokens (half the base model's context), 4 document
# lanes, N = M = 128 basis functions / samples, the paper's learning rates, KL weight and τ.
# 1200 steps (0.6M tokens, half an epoch of the training plays; the paper: one epoch): what 9 runs
# cost on 2 cores beside the LM benchmark (measured: 800 steps without memory in 3 min).
S = dict(
    block_size=128, batch_size=4, steps=1200, num_basis=128, num_samples=128, tau=0.5, lr=5e-5,
    ltm_lr=2.5e-4, kl_weight=1e-6, warmup=0,
)  # fmt: skip
# The passkey probe: 10 passkeys at each distance (filler tokens between the key and the question).
PASSKEY = dict(distances=[32, 256, 1024], trials=10, prefix=16, digits=5, seed=0)


def settings_key() -> str:
    return settings_hash([S, PASSKEY])


def finetune_settings(name: str, seed: int, run_dir: Path, base: Path) -> lm_cli.LMFinetuneSettings:
    """`lm finetune`'s settings for one variant and seed (the recipe S)."""
    variant = VARIANT[name]
    ltm = dict(kl_weight=S["kl_weight"], num_basis=S["num_basis"], num_samples=S["num_samples"], tau=S["tau"])
    return lm_cli.LMFinetuneSettings(
        model=str(base), data=DATA, run_dir=str(run_dir), cache_dir=str(run_dir.parent / "cache"),
        block_size=S["block_size"], batch_size=S["batch_size"], steps=S["steps"], warmup=S["warmup"],
        lr=S["lr"], ltm_lr=S["ltm_lr"], ltm={**ltm, **variant.get("ltm", {})}, seed=seed,
        eval_splits=("test",), device="cpu", progress=False, tensorboard=False, log_every=10,
        no_memory=variant.get("no_memory", False),
    )  # fmt: skip


def passkey(model: Path, window: bool) -> dict:
    config = passkey_cli.PasskeyConfig(**PASSKEY)
    res = passkey_cli.passkey_probe(str(model), config, window=window)
    return {
        "stream": res["stream"],
        "per_distance": {
            d: {k: r[k] for k in ("accuracy", "correct", "trials", "prompt_tokens")}
            | {"answers": [a["answer"] for a in r["answers"][:3]]}
            for d, r in res["per_distance"].items()
        },
    }


def run_one(name: str, seed: int, root: Path, base: Path) -> dict:
    run_dir = root / f"{name}-seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    res = lm_cli.lm_finetune(finetune_settings(name, seed, run_dir, base))
    test = res["eval"]["test"]
    from infinite_former.hf.training import pair_result

    tuned = pair_result(test, "finetuned" if name == "no_memory" else "memory")
    base = pair_result(test, "base")
    return {
        "flags": FLAGS[name],
        "sticky": res["sticky"],
        "test_ppl": tuned["ppl"],
        "test_bpb": tuned["bpb"],
        "per_document": per_document_nll(tuned),
        "base": {
            "test_ppl": base["ppl"],
            "test_bpb": base["bpb"],
            "per_document": per_document_nll(base),
        },  # fmt: skip
        "passkey": passkey(run_dir / "model", window=False),
        **finished_run(res, run_dir, t0),
    }


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    base = Path(args.base)
    if not (base / "config.json").is_file():
        raise SystemExit(f"--base {base}: no model there; run `python benchmarks/pretrain.py` first")
    RECORDS.mkdir(parents=True, exist_ok=True)
    window = RECORDS / "base_passkey.json"
    if not window.exists() or json.loads(window.read_text())["settings_key"] != settings_key():
        write_json(
            window, {"settings_key": settings_key(), **passkey(base, window=True), "machine": machine_info()}
        )
    RunRecords(RECORDS, settings_key()).run_missing(
        args.seeds,
        args.variants,
        lambda name, seed: run_one(name, seed, Path(args.runs_dir), base),
        lambda rec: f"test ppl {rec['test_ppl']:.3f} ({rec['seconds']:.0f} s)",
    )


def cmd_controls(args: argparse.Namespace) -> None:
    """Evaluation-only controls on the fine-tuned models (same test blocks and targets):
    no_memory_window: the no_memory weights, each block read with the previous one in the window;
    <memory variant>_wiped: a model fine-tuned with memory, its memory emptied before every block
    (its output is then 0: the fine-tuned GPT-2 weights alone);
    base_window: the pretrained model, previous block in the window (the same for every seed)."""
    from transformers import GPT2LMHeadModel

    from infinite_former.data.text import load_corpus_split, tokenize_documents
    from infinite_former.data.tokenizer import hf_tokenizer
    from infinite_former.hf import load_model
    from infinite_former.hf.training import HFMemoryLM, evaluate_window
    from infinite_former.training.evaluation import evaluate_documents

    torch.set_num_threads(1)

    def run_control(name: str, seed: int) -> dict:
        tuned = "no_memory" if name == WINDOW else name.removesuffix("_wiped")
        folder = (
            Path(args.base)
            if name == "base_window"
            else Path(args.runs_dir) / f"{tuned}-seed{seed}" / "model"
        )
        if not (folder / "config.json").is_file():
            raise SystemExit(
                f"{folder}: no fine-tuned model; run `gpt2_finetune.py run --seeds {seed}` first"
            )
        tok = hf_tokenizer(folder)
        corpus = tokenize_documents(load_corpus_split(DATA, "test"), tok)
        L, batch = S["block_size"], S["batch_size"]
        if name in (WINDOW, "base_window"):
            model = GPT2LMHeadModel.from_pretrained(folder)  # the same weights, without the block machinery
            res, how = evaluate_window(model, corpus, L, batch, tok.eos_id), "previous block in the window"
        else:
            wrapped = HFMemoryLM(load_model(folder).eval())

            def step(t, s):  # an empty memory before every block
                return wrapped(t, wrapped.init_state(t.shape[0]))[0].logits, None

            with torch.no_grad():
                res = evaluate_documents(step, lambda b: None, corpus, batch, L, tok.eos_id)
            how = "memory emptied before every block"
        return {
            "test_ppl": res["ppl"],
            "test_bpb": res["bpb"],
            "per_document": per_document_nll(res),
            "evaluation": f"blocks of {L} tokens, {how}",
            "machine": machine_info(),
        }

    RunRecords(RECORDS, settings_key()).run_missing(
        args.seeds, CONTROLS, run_control, lambda rec: f"test ppl {rec['test_ppl']:.3f}"
    )


def num_parameters(base_config: dict, variant: str) -> dict[str, int]:
    """{"total", "base", "memory"} parameters of the model a variant evaluates, rebuilt (random weights)
    from the pretrained GPT-2's recorded config and S: base / no_memory (and their controls) have
    GPT-2's weights only; the memory variants (and their wiped controls) add an LTM per layer."""
    from infinite_former.hf import InfiniteGPT2Config, InfiniteGPT2LMHeadModel

    gpt2 = {k: base_config[k] for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")}
    gpt2 |= {"bos_token_id": 0, "eos_token_id": 0}  # any id in the vocabulary: no effect on the counts
    memory = {k: S[k] for k in ("block_size", "num_basis", "num_samples", "tau")}

    def build(**kw) -> torch.nn.Module:
        return InfiniteGPT2LMHeadModel(InfiniteGPT2Config(**gpt2, **memory, **kw))

    plain = build(memory_layers=[])
    weights = variant.removesuffix("_wiped").removesuffix("_window")  # the weights the variant evaluates
    if weights not in ("base", *VARIANTS):
        raise ValueError(f"variant: unknown model {variant!r}")
    model = plain if weights in ("base", "no_memory") else build(sticky=weights == "infinite_sticky")
    return parameter_counts(model, plain)


def with_parameter_counts(models: dict, base_model: dict | None) -> dict:
    """``models`` with each one's num_parameters; checks the rebuilt GPT-2 against the recorded count."""
    if base_model is None:
        raise SystemExit("no base model config recorded (pretrain.json): cannot count parameters")
    out = {
        name: {**m, "num_parameters": num_parameters(base_model["config"], name)}
        for name, m in models.items()
    }
    base = num_parameters(base_model["config"], "base")["total"]
    if base != base_model["parameters"]:
        raise SystemExit(
            f"rebuilt GPT-2 has {base:,} parameters, the pretrained one {base_model['parameters']:,}"
        )
    return out


def cmd_params(args: argparse.Namespace) -> None:
    """Add num_parameters to every model of an existing results file (models rebuilt, no training)."""
    d = json.loads(Path(args.out).read_text())
    d["models"] = with_parameter_counts(d["models"], d["base_model"])
    command = "python benchmarks/gpt2_finetune.py params"
    d["commands"] = [c for c in d.get("commands", []) if c != command] + [command]
    write_json(args.out, d)
    for name, m in json.loads(Path(args.out).read_text())["models"].items():
        print(f"{name}: {m['num_parameters']}")


def cmd_summarize(args: argparse.Namespace) -> None:
    recs = RunRecords(RECORDS, settings_key()).load((*VARIANTS, *CONTROLS))
    done = [v for v in (*VARIANTS, *CONTROLS) if recs[v]]
    if not done:
        raise SystemExit("no records yet: run `python benchmarks/gpt2_finetune.py run` first")
    any_rec = next(iter(recs[done[0]].values()))
    base_ppls = {round(r["base"]["test_ppl"], 6) for v in VARIANTS for r in recs[v].values()}
    if len(base_ppls) != 1:  # every run evaluates the same base model on the same blocks
        raise SystemExit(f"the base model's test ppl differs between records: {sorted(base_ppls)}")
    models: dict = {
        "base": {"test_ppl": any_rec["base"]["test_ppl"], "test_bpb": any_rec["base"]["test_bpb"]}
    }
    for v in done:
        rs = [recs[v][k] for k in sorted(recs[v])]
        models[v] = {
            "test_ppl": statistics.fmean(r["test_ppl"] for r in rs),
            "test_bpb": statistics.fmean(r["test_bpb"] for r in rs),
            "seeds": [{"seed": r["seed"], "test_ppl": r["test_ppl"], "test_bpb": r["test_bpb"]} for r in rs],
        }
    seeds = sorted(set.intersection(*(set(recs[v]) for v in done)))
    docs = sorted(any_rec["per_document"])
    scores = {v: [nll_per_token(recs[v][k]["per_document"], docs) for k in seeds] for v in done}
    scores["base"] = [nll_per_token(any_rec["base"]["per_document"], docs) for _ in seeds]
    pairs = []
    for a, b in PAIRS:
        if a in scores and b in scores and seeds:
            p = paired_comparison(scores[a], scores[b], names=(a, b), higher_is_better=False)
            p["unit"] = "nats/token per test document"
            pairs.append(p)
    base_pk = json.loads((RECORDS / "base_passkey.json").read_text())
    passkey_acc = {
        "base (whole context window)": {d: r["accuracy"] for d, r in base_pk["per_distance"].items()}
    }
    for v in (v for v in done if v in VARIANTS):
        per_d = [recs[v][k]["passkey"]["per_distance"] for k in sorted(recs[v])]
        passkey_acc[v] = {d: statistics.fmean(p[d]["accuracy"] for p in per_d) for d in per_d[0]}
    pretrain_path = Path(args.base) / "pretrain.json"
    pretrain = json.loads(pretrain_path.read_text()) if pretrain_path.is_file() else None
    base_model = None if pretrain is None else {
        "script": "benchmarks/pretrain.py",
        "config": pretrain["config"], "parameters": pretrain["parameters"],
        "train_seconds": pretrain["train_seconds"], "test_ppl_256_token_windows": pretrain["test_ppl_context"],
    }  # fmt: skip
    result = {
        "machine": any_rec["machine"],
        "settings": {**S, "data": "../shared/data/shakespeare", "eval_split": "test", "passkey": PASSKEY},
        "base_model": base_model,
        "complete": all(len(recs[v]) >= len(args.expected_seeds) for v in VARIANTS),
        "paired_seeds": seeds,
        "models": with_parameter_counts(models, base_model),
        "pairs": pairs,
        "passkey_accuracy": passkey_acc,
        "train_seconds": {v: statistics.fmean(r["train_seconds"] for r in recs[v].values()) for v in VARIANTS if recs[v]},
        "loss_curves": {v: {k: r["loss_curve"] for k, r in recs[v].items()} for v in VARIANTS if recs[v]},
        "commands": ["python benchmarks/pretrain.py --steps 1500",
                     "python benchmarks/gpt2_finetune.py run --seeds 0 1 2",
                     "python benchmarks/gpt2_finetune.py controls --seeds 0 1 2",
                     "python benchmarks/gpt2_finetune.py summarize"],
    }  # fmt: skip
    write_json(OUT, result)
    for p in pairs:
        print(f"{p['a']} - {p['b']}: {p['mean_diff']:+.4f} {p['ci95']} {p['verdict']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    r.add_argument("--base", default=str(BASE), help="the pretrained GPT-2 folder (pretrain.py)")
    r.add_argument("--runs-dir", default=str(REPO / "runs" / "gpt2_finetune"))
    w = sub.add_parser("controls", help="evaluation-only controls: previous block in view, memory wiped")
    w.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    w.add_argument("--runs-dir", default=str(REPO / "runs" / "gpt2_finetune"))
    w.add_argument("--base", default=str(BASE), help="the pretrained GPT-2 folder (pretrain.py)")
    sm = sub.add_parser("summarize")
    sm.add_argument("--expected-seeds", type=int, nargs="+", default=[0, 1, 2])
    sm.add_argument("--base", default=str(BASE))
    pp = sub.add_parser("params", help="add each model's parameter count to a results file (no training)")
    pp.add_argument("--out", default=str(OUT), help="the results file written by summarize")
    args = p.parse_args(argv)
    commands = {"run": cmd_run, "controls": cmd_controls, "summarize": cmd_summarize, "params": cmd_params}
    commands[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
