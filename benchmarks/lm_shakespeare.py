"""Long-document LM on Shakespeare's plays at CPU scale, trained from scratch, several seeds, paired.

    python benchmarks/lm_shakespeare.py run --seeds 0 1 2       # one record per (variant, seed)
    python benchmarks/lm_shakespeare.py throughput              # interleaved training tokens/s
    python benchmarks/lm_shakespeare.py summarize               # -> results/lm_shakespeare_cpu.json

Every model goes through ``infinite-former lm train`` with the same document lanes, trainer,
hyperparameters and byte-level BPE (trained once on train/ and reused). Variants, with m = 128
short-term states and N = 128:
  xl_equal     Transformer-XL keeping m + N states (equal memory budget),
  xl_stm       Transformer-XL keeping m states (the paper's convention: same short-term memory),
  xl_params    xl_equal with its FFN grown to the ∞-former's parameter count,
  compressive  m states + N compressed slots (rate 2),
  infinite, infinite_sticky   m states + an LTM of N basis functions.
Two conventions are read from the same runs: equal_budget (xl = xl_equal) and same_stm
(xl = xl_stm); compressive and the ∞-formers are the same runs in both.

Each run writes results/lm_shakespeare_cpu_runs/<variant>-seed<k>.json with its per-document test
NLL, so partial results can be committed and `run` skips what is done. `summarize` pairs models by
seed and test document (infinite_former.stats): mean difference in log perplexity and 95% CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from infinite_former.data.text import DocumentLanes, load_corpus_split, tokenize_documents
from infinite_former.data.tokenizer import TextTokenizer, build_tokenizer
from infinite_former.experiments import lm as lm_cli
from infinite_former.models import InfiniteFormerLM, ModelConfig
from infinite_former.stats import paired_comparison
from infinite_former.training.records import (
    RunRecords,
    finished_run,
    nll_per_token,
    per_document_nll,
    settings_hash,
)
from infinite_former.utils import machine_info, seed_everything

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "results" / "lm_shakespeare_cpu_runs"
OUT = REPO / "results" / "lm_shakespeare_cpu.json"
DATA = os.environ.get("INFINITE_FORMER_SHAKESPEARE", str(REPO.parent / "shared" / "data" / "shakespeare"))
VARIANTS = ("xl_equal", "xl_stm", "xl_params", "compressive", "infinite", "infinite_sticky")
CONVENTIONS = {
    "equal_budget": {"xl": "xl_equal", "xl_params": "xl_params", "compressive": "compressive",
                     "infinite": "infinite", "infinite_sticky": "infinite_sticky"},
    "same_stm": {"xl": "xl_stm", "compressive": "compressive", "infinite": "infinite",
                 "infinite_sticky": "infinite_sticky"},
}  # fmt: skip
PAIRS = [("infinite", "xl"), ("infinite_sticky", "xl"), ("infinite", "xl_params"), ("infinite_sticky", "xl_params"),
         ("infinite", "compressive"), ("infinite_sticky", "compressive"), ("infinite_sticky", "infinite"),
         ("compressive", "xl")]  # fmt: skip

# beyond the paper (issue 18's carry-back, benchmarks/lm_reach.py): the ∞-former (uniform samples) with the
# recall benchmark's best LTM options (benchmarks/recall.py BEST, as benchmarks/sorting.py REACH)
REACH = dict(schedule="uniform_time", widths="auto")

# The model and budget: 2 layers, d 128, 3000 steps x 8 lanes x 128 tokens (5x the first benchmark).
S = dict(
    steps=3000, batch_size=8, seg_len=128, d_model=128, n_layers=2, n_heads=4, d_inner=512, dropout=0.0,
    mem_len=128, num_basis=128, lr=1e-3, warmup=150, min_lr_ratio=0.1, vocab_size=2048, eval_batch_size=3,
)  # fmt: skip


def settings_key() -> str:
    return settings_hash(S)


def variant_settings(name: str) -> dict:
    """Each variant's model settings over S (LMTrainSettings fields); infinite_reach (not in VARIANTS,
    run by benchmarks/lm_reach.py) is the ∞-former with the LTM options REACH."""
    m, n = S["mem_len"], S["num_basis"]
    infinite = dict(mem_len=m, ltm={"num_basis": n}, ltm_zero_init_output=True)
    settings = {
        "xl_equal": dict(memory_type="xl", mem_len=m + n),
        "xl_stm": dict(memory_type="xl", mem_len=m),
        "xl_params": dict(memory_type="xl", mem_len=m + n, d_inner=matched_d_inner()),
        "compressive": dict(memory_type="compressive", mem_len=m, cmem_len=n, compression_rate=2),
        "infinite": dict(memory_type="infinite", **infinite),
        "infinite_sticky": dict(memory_type="infinite_sticky", **infinite),
        "infinite_reach": dict(memory_type="infinite", **{**infinite, "ltm": {"num_basis": n, **REACH}}),
    }
    return settings[name]


def memory_flags(name: str) -> list[str]:
    """The variant's settings as `lm train` flags (kept in each run record)."""
    out: list[str] = []
    for key, value in variant_settings(name).items():
        if key == "ltm":
            out += [x for k, v in value.items() for x in (f"--{k.replace('_', '-')}", str(v))]
        elif value is True:
            out.append(f"--{key.replace('_', '-')}")
        else:
            out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def _config(memory_type: str, d_inner: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=S["vocab_size"], d_model=S["d_model"], n_layers=S["n_layers"], n_heads=S["n_heads"],
        d_inner=d_inner, dropout=0.0, memory_type=memory_type, mem_len=S["mem_len"],
        ltm=dict(num_basis=S["num_basis"], num_samples=S["num_basis"], tau=0.5),
    )  # fmt: skip


def matched_d_inner() -> int:
    """XL's FFN width at which it has the ∞-former's parameter count (the `lm train` defaults)."""
    count = lambda cfg: sum(p.numel() for p in InfiniteFormerLM(cfg).parameters())  # noqa: E731
    extra = count(_config("infinite", S["d_inner"])) - count(_config("xl", S["d_inner"]))
    return S["d_inner"] + round(extra / (S["n_layers"] * (2 * S["d_model"] + 1)))


def train_settings(
    name: str, seed: int, run_dir: Path, tokenizer: str, cache: Path
) -> lm_cli.LMTrainSettings:
    """`lm train`'s settings for one variant and seed (the budget S)."""
    common = {
        k: S[k] for k in ("vocab_size", "seg_len", "batch_size", "steps", "warmup", "lr", "min_lr_ratio")
    }
    model = {k: S[k] for k in ("d_model", "n_layers", "n_heads", "d_inner", "dropout", "eval_batch_size")}
    return lm_cli.LMTrainSettings(
        data=DATA, run_dir=str(run_dir), cache_dir=str(cache), tokenizer=tokenizer, **common,
        **{**model, **variant_settings(name)}, seed=seed, valid_split="", eval_splits=("test",),
        device="cpu", progress=False, tensorboard=False, log_every=10,
    )  # fmt: skip


def shared_tokenizer(root: Path) -> str:
    """Train the byte-level BPE once (on train/) and return its folder, reused by every run."""
    path = root / "tokenizer"
    if not (path / "tokenizer_meta.json").is_file():
        docs = load_corpus_split(DATA, "train")
        build_tokenizer("bpe", (d.text for d in docs), vocab_size=S["vocab_size"]).save(path)
    return str(path)


def run_one(name: str, seed: int, root: Path, precision: str = "fp32", tag: str = "") -> dict:
    """Train + test one variant in ``precision`` (fp32 | bf16 | auto); tag: run-dir suffix."""
    run_dir = root / f"{name}{tag}-seed{seed}"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    settings = train_settings(name, seed, run_dir, shared_tokenizer(root), root / "cache")
    settings = dataclasses.replace(settings, precision=precision)
    t0 = time.perf_counter()
    res = lm_cli.lm_train(settings)
    test = res["eval"]["test"]
    return {
        "flags": memory_flags(name),
        "parameters": res["parameters"],
        "test_ppl": test["ppl"],
        "test_bpb": test["bpb"],
        "per_document": per_document_nll(test),
        **finished_run(res, run_dir, t0),
    }


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    root = Path(args.runs_dir)
    RunRecords(RECORDS, settings_key()).run_missing(
        args.seeds,
        args.variants,
        lambda name, seed: run_one(name, seed, root),
        lambda rec: f"test ppl {rec['test_ppl']:.3f} ({rec['seconds']:.0f} s)",
    )


def cmd_throughput(args: argparse.Namespace, steps: int = 6) -> None:
    """Training tokens/s of every variant, interleaved step by step on the same lane batches."""
    torch.set_num_threads(1)
    root = Path(args.runs_dir)
    tok = TextTokenizer.load(shared_tokenizer(root))
    corpus = tokenize_documents(load_corpus_split(DATA, "train"), tok, cache_dir=str(root / "cache"))
    lanes = DocumentLanes(corpus, S["batch_size"], S["seg_len"], tok.eos_id, loop=True)
    batches = [next(iter(lanes)) for _ in range(steps + 1)]
    models, optims = {}, {}
    for name in VARIANTS:
        flags = dict(zip(memory_flags(name)[::2], memory_flags(name)[1::2]))
        seed_everything(0)
        cfg = ModelConfig(
            vocab_size=tok.vocab_size, d_model=S["d_model"], n_layers=S["n_layers"], n_heads=S["n_heads"],
            d_inner=int(flags.get("--d-inner", S["d_inner"])), dropout=0.0, memory_type=flags["--memory-type"],
            mem_len=int(flags["--mem-len"]), cmem_len=int(flags.get("--cmem-len", 64)),
            ltm=dict(num_basis=S["num_basis"], num_samples=S["num_basis"], tau=0.5),
        )  # fmt: skip
        models[name] = InfiniteFormerLM(cfg)
        optims[name] = torch.optim.AdamW(models[name].parameters(), lr=S["lr"])
    states = {name: models[name].init_state(S["batch_size"]) for name in VARIANTS}
    seconds = dict.fromkeys(VARIANTS, 0.0)
    for i, seg in enumerate(batches):
        for name in VARIANTS:  # interleaved: load changes hit every variant alike
            t0 = time.perf_counter()
            state = states[name].reset(seg.reset)
            out, state = models[name](seg.tokens, state, targets=seg.targets, loss_mask=seg.loss_mask)
            (out.loss + out.aux_loss).backward()
            optims[name].step()
            optims[name].zero_grad(set_to_none=True)
            states[name] = state.detach()
            if i > 0:
                seconds[name] += time.perf_counter() - t0
    tokens = steps * S["batch_size"] * S["seg_len"]
    result = {
        "settings_key": settings_key(),
        "setup": f"{steps} training steps of {S['batch_size']} lanes x {S['seg_len']} tokens, interleaved, 1 thread",
        "tokens_per_s": {name: tokens / seconds[name] for name in VARIANTS},
        "machine": machine_info(precision="fp32"),
    }
    RECORDS.mkdir(parents=True, exist_ok=True)
    (RECORDS / "throughput.json").write_text(json.dumps(result, indent=1))
    print({k: round(v) for k, v in result["tokens_per_s"].items()})


def _log_ppl(by_seed: dict[int, dict], seeds: list[int], docs: list[str]) -> list[list[float]]:
    """(seeds, documents) test NLL per token of one variant."""
    return [nll_per_token(by_seed[k]["per_document"], docs) for k in seeds]


def cmd_summarize(args: argparse.Namespace) -> None:
    recs = RunRecords(RECORDS, settings_key()).load(VARIANTS)
    conventions = {}
    for conv, names in CONVENTIONS.items():
        done = {label: sorted(recs[v]) for label, v in names.items() if recs[v]}
        paired_seeds = sorted(set.intersection(*(set(s) for s in done.values()))) if done else []
        models = {}
        for label, seeds in done.items():
            rs = [recs[names[label]][k] for k in seeds]
            models[label] = {
                "variant": names[label],
                "parameters": rs[0]["parameters"],
                "test_ppl": statistics.fmean(r["test_ppl"] for r in rs),
                "test_bpb": statistics.fmean(r["test_bpb"] for r in rs),
                "seeds": [
                    {"seed": r["seed"], "test_ppl": r["test_ppl"], "test_bpb": r["test_bpb"]} for r in rs
                ],
            }
        pairs = []
        for a, b in PAIRS:
            if a not in done or b not in done or not paired_seeds:
                continue
            docs = sorted(recs[names[a]][paired_seeds[0]]["per_document"])

            xa, xb = (_log_ppl(recs[names[label]], paired_seeds, docs) for label in (a, b))
            p = paired_comparison(xa, xb, names=(a, b), higher_is_better=False)
            p["unit"] = "nats/token per document"
            pairs.append(p)
        conventions[conv] = {"paired_seeds": paired_seeds, "models": models, "pairs": pairs}
    tput = RECORDS / "throughput.json"
    result = {
        "machine": next((r["machine"] for by in recs.values() for r in by.values()), machine_info(precision="fp32")),
        "settings": {**S, "data": "../shared/data/shakespeare", "eval_split": "test",
                     "tokenizer": f"byte-level BPE (HF tokenizers), vocab {S['vocab_size']}, trained on train/",
                     "xl_params_d_inner": matched_d_inner(), "ltm_init": "output projection zero"},
        "complete": all(len(recs[v]) >= len(args.expected_seeds) for v in VARIANTS),
        "conventions": conventions,
        "models": conventions["equal_budget"]["models"],
        "throughput": json.loads(tput.read_text()) if tput.exists() else None,
        "loss_curves": {v: {k: r["loss_curve"] for k, r in by.items()} for v, by in recs.items() if by},
        "commands": ["python benchmarks/lm_shakespeare.py run --seeds ...",
                     "python benchmarks/lm_shakespeare.py throughput",
                     "python benchmarks/lm_shakespeare.py summarize"],
    }  # fmt: skip
    OUT.write_text(json.dumps(result, indent=1))
    for conv, c in conventions.items():
        for p in c["pairs"]:
            print(f"{conv}: {p['a']} - {p['b']}: {p['mean_diff']:+.4f} {p['ci95']} {p['verdict']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    r.add_argument("--runs-dir", default=str(REPO / "runs" / "lm_shakespeare"))
    t = sub.add_parser("throughput")
    t.add_argument("--runs-dir", default=str(REPO / "runs" / "lm_shakespeare"))
    sm = sub.add_parser("summarize")
    sm.add_argument("--expected-seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    {"run": cmd_run, "throughput": cmd_throughput, "summarize": cmd_summarize}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
