"""Long-document LM on Shakespeare's plays at CPU scale: Transformer-XL vs Compressive vs ∞-former
(uniform and sticky), trained from scratch with the same model, the same training budget and an
equal memory budget; test perplexity and bits per byte.

    python benchmarks/lm_shakespeare.py [--data ../shared/data/shakespeare] [--steps 400] ...

Every model runs through ``infinite-former lm train`` (lm_cli.lm_train): the same document lanes,
trainer, seed and hyperparameters. A byte-level BPE (HF ``tokenizers``) is trained once on the train
split and reused by every model. Memory budget per layer (vectors kept): xl mem_len = m + N;
compressive mem_len = m, cmem_len = N (rate c = 2); ∞-former mem_len = m, N basis functions.

Writes results/lm_shakespeare_cpu.json and results/lm_shakespeare_cpu.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from infinite_former import lm_cli  # noqa: E402
from infinite_former.utils import machine_info  # noqa: E402

MODELS = ("xl", "compressive", "infinite", "infinite_sticky")
LABELS = {
    "xl": "Transformer-XL",
    "compressive": "Compressive",
    "infinite": "∞-former",
    "infinite_sticky": "∞-former (sticky)",
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "shakespeare"))
    p.add_argument("--out", default=str(REPO / "results" / "lm_shakespeare_cpu.json"))
    p.add_argument("--run-root", default=str(REPO / "runs" / "lm_shakespeare"))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument(
        "--vocab-size", type=int, default=2048, help="byte-level BPE vocabulary (trained on train/)"
    )
    p.add_argument(
        "--tokenizer", default="bpe", help="'bpe' (train one) or a saved tokenizer folder to reuse"
    )
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=8, help="B document lanes")
    p.add_argument("--seg-len", type=int, default=128, help="T tokens per segment")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-inner", type=int, default=512)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--mem-len", type=int, default=128, help="m: short-term memory of compressive / ∞-former")
    p.add_argument(
        "--num-basis", type=int, default=128, help="N: ∞-former basis functions = compressive slots"
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--eval-split", default="test")
    p.add_argument("--eval-batch-size", type=int, default=3, help="test documents read in parallel")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--ltm-default-init",
        action="store_true",
        help="keep the LTM's default initialisation (default: its output projection starts at 0, "
        "so every ∞-former starts as a Transformer-XL with mem_len m)",
    )
    return p.parse_args()


def train_argv(a: argparse.Namespace, model: str, tokenizer: str, run_dir: Path, cache: Path) -> list[str]:
    m, n = a.mem_len, a.num_basis
    memory = {
        "xl": ["--mem-len", str(m + n)],
        "compressive": ["--mem-len", str(m), "--cmem-len", str(n), "--compression-rate", "2"],
        "infinite": ["--mem-len", str(m), "--num-basis", str(n)],
        "infinite_sticky": ["--mem-len", str(m), "--num-basis", str(n)],
    }[model]
    if model.startswith("infinite") and not a.ltm_default_init:
        memory.append("--ltm-zero-init-output")
    return [
        "lm", "train", "--data", a.data, "--run-dir", str(run_dir), "--cache-dir", str(cache),
        "--tokenizer", tokenizer, "--vocab-size", str(a.vocab_size), "--memory-type", model,
        "--seg-len", str(a.seg_len), "--batch-size", str(a.batch_size), "--steps", str(a.steps),
        "--warmup", str(a.warmup), "--lr", str(a.lr), "--min-lr-ratio", str(a.min_lr_ratio),
        "--d-model", str(a.d_model), "--n-layers", str(a.n_layers), "--n-heads", str(a.n_heads),
        "--d-inner", str(a.d_inner), "--dropout", str(a.dropout), "--seed", str(a.seed),
        "--valid-split", "", "--eval-splits", a.eval_split, "--eval-batch-size", str(a.eval_batch_size),
        "--device", "cpu", "--no-progress", "--log-every", "10", *memory,
    ]  # fmt: skip


def read_losses(run_dir: Path) -> tuple[list[int], list[float]]:
    with open(run_dir / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    return [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]


def plot(results: dict, curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    ppl = [results[n]["test_ppl"] for n in names]
    bars = axes[0].bar([LABELS[n] for n in names], ppl, color=["C0", "C1", "C2", "C3"][: len(names)])
    for b, v, n in zip(bars, ppl, names):
        axes[0].text(
            b.get_x() + b.get_width() / 2,
            v,
            f"{v:.2f}\n{results[n]['test_bpb']:.3f} bpb",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    axes[0].set_ylim(min(ppl) * 0.95, max(ppl) * 1.05)
    axes[0].set_ylabel("test perplexity (BPE tokens)")
    axes[0].tick_params(axis="x", labelsize=8)
    axes[0].set_title("Shakespeare test set")
    for n in names:
        steps, losses = curves[n]
        axes[1].plot(steps, losses, label=LABELS[n], lw=1)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("training loss (nats/token)")
    axes[1].legend(fontsize=8)
    axes[1].set_title("training")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_output(a: argparse.Namespace, results: dict, t_all: float) -> dict:
    return {
        "machine": machine_info(),
        "config": {
            "data": os.path.relpath(a.data, REPO) if os.path.isabs(a.data) else a.data,
            "tokenizer": f"byte-level BPE (HF tokenizers), vocab {a.vocab_size}, trained on train/",
            "eval_split": a.eval_split,
            "steps": a.steps,
            "batch_size": a.batch_size,
            "seg_len": a.seg_len,
            "tokens_per_model": a.steps * a.batch_size * a.seg_len,
            "d_model": a.d_model,
            "n_layers": a.n_layers,
            "n_heads": a.n_heads,
            "d_inner": a.d_inner,
            "dropout": a.dropout,
            "lr": a.lr,
            "warmup": a.warmup,
            "min_lr_ratio": a.min_lr_ratio,
            "memory_budget_per_layer": a.mem_len + a.num_basis,
            "memory": {
                "xl": {"mem_len": a.mem_len + a.num_basis},
                "compressive": {"mem_len": a.mem_len, "cmem_len": a.num_basis, "compression_rate": 2},
                "infinite": {"mem_len": a.mem_len, "num_basis": a.num_basis, "num_samples": a.num_basis},
                "infinite_sticky": {
                    "mem_len": a.mem_len,
                    "num_basis": a.num_basis,
                    "num_samples": a.num_basis,
                },
            },
            "ltm_init": "default (LongTermAttention's own)"
            if a.ltm_default_init
            else "output projection zero",
            "threads": a.threads,
            "seed": a.seed,
            "total_seconds": time.perf_counter() - t_all,
            "command": "python benchmarks/lm_shakespeare.py " + " ".join(sys.argv[1:]),
        },
        "models": results,
    }


def main() -> None:
    a = parse()
    torch.set_num_threads(a.threads)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise ValueError(f"--models: unknown {bad}; choose from {MODELS}")
    root = Path(a.run_root)
    cache = root / "cache"
    parser = argparse.ArgumentParser(prog="infinite-former")
    lm_cli.add_lm_parser(parser.add_subparsers(dest="command"))
    tokenizer = a.tokenizer
    results, curves = {}, {}
    t_all = time.perf_counter()
    for model in models:
        run_dir = root / model
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        args = parser.parse_args(train_argv(a, model, tokenizer, run_dir, cache))
        args.no_tensorboard = True
        print(f"== {model}", flush=True)
        res = lm_cli.lm_train(args)
        tokenizer = str(run_dir / "tokenizer")  # the next models reuse this BPE (or the one given)
        test = res["eval"][a.eval_split]
        results[model] = {
            "test_ppl": test["ppl"],
            "test_bpb": test["bpb"],
            "train_seconds": res["train_seconds"],
            "tokens_per_s": res["tokens_per_s"],
            "eval_seconds": test["seconds"],
            "final_train_loss": res["train_loss_last"],
            "parameters": res["parameters"],
            "test_tokens": test["tokens"],
            "test_bytes": test["bytes"],
            "per_document_ppl": {k: v["ppl"] for k, v in test["per_document"].items()},
        }
        curves[model] = read_losses(run_dir)
        print(json.dumps({model: results[model]}, indent=1), flush=True)
        partial = Path(a.out).with_suffix(".partial.json")  # survives an interrupted benchmark
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(build_output(a, results, t_all), indent=2))
    out = build_output(a, results, t_all)
    out_path = Path(a.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2))
    plot(results, curves, out_path.with_suffix(".png"))
    print(f"\n{'model':<20}{'test ppl':>10}{'bpb':>8}{'train s':>9}{'tok/s':>8}")
    for m, r in results.items():
        print(
            f"{LABELS[m]:<20}{r['test_ppl']:>10.3f}{r['test_bpb']:>8.4f}{r['train_seconds']:>9.0f}{r['tokens_per_s']:>8.0f}"
        )
    out_path.with_suffix(".partial.json").unlink(missing_ok=True)
    print(f"wrote {out_path} and {out_path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
