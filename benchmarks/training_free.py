"""The training-free memory on the GPT-2 pretrained here: test perplexity against the same model without
memory and with the previous block in its window, paired by document.

    python benchmarks/pretrain_gpt2.py --data /work/shared/data/shakespeare        # -> runs/gpt2-shakespeare
    python benchmarks/training_free.py --out results/training_free_gpt2_cpu.json

Every model reads the test split's documents in blocks of L = 128 tokens (the GPT-2 fine-tuning
benchmark's blocks), each document from its start in its own lane:

* ``base``: the pretrained model on each block alone (what the memory models start from);
* ``window``: the pretrained model with the previous block of its document in its window (2L positions);
* ``free_<density>_a<α>``: ``add_memory(model, training_free={density, alpha})`` with the fine-tuning
  benchmark's memory (N = M = 128, τ = 0.5, sticky; evaluation seeded), no weights added or trained.

The JSON holds each model's test perplexity and bits per byte, and paired comparisons (mean NLL per
token per document, bootstrap 95% CI over documents, ``infinite_former.stats``) of each training-free
variant against ``base`` and ``window``. One evaluation seed: the models are deterministic given it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from infinite_former.data.text import load_corpus_split, tokenize_documents
from infinite_former.data.tokenizer import hf_tokenizer
from infinite_former.hf import add_memory
from infinite_former.hf.training import evaluate_hf_pair, evaluate_window
from infinite_former.stats import paired_comparison
from infinite_former.training.records import nll_per_token, per_document_nll
from infinite_former.utils import machine_info

REPO = Path(__file__).resolve().parents[1]
MEMORY = dict(num_basis=128, num_samples=128, tau=0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(REPO / "runs" / "gpt2-shakespeare"))
    p.add_argument("--data", default=str(REPO.parent.parent / "shared" / "data" / "shakespeare"))
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--variants", default="gibbs:0.5,gaussian:0.5,gibbs:0.25", help="density:alpha,...")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "results" / "training_free_gpt2_cpu.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import GPT2LMHeadModel

    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"{args.model}: no model; run benchmarks/pretrain_gpt2.py first")
    tok = hf_tokenizer(args.model)
    data = args.data if Path(args.data).exists() else "/work/shared/data/shakespeare"
    corpus = tokenize_documents(load_corpus_split(data, "test"), tok)
    L, batch = args.block_size, args.batch_size

    def plain() -> GPT2LMHeadModel:
        return GPT2LMHeadModel.from_pretrained(args.model).eval()

    results, seconds = {}, {}
    with torch.no_grad():
        start = time.perf_counter()
        results["base"] = evaluate_hf_pair(None, plain(), corpus, L, batch, tok.eos_id)["gpt2"]
        seconds["base"] = time.perf_counter() - start
        start = time.perf_counter()
        results["window"] = evaluate_window(plain(), corpus, L, batch, tok.eos_id)
        seconds["window"] = time.perf_counter() - start
        for item in args.variants.split(","):
            density, alpha = item.split(":")
            name = f"free_{density}_a{alpha}"
            model = add_memory(
                plain(), training_free={"density": density, "alpha": float(alpha)}, block_size=L, **MEMORY
            ).eval()
            start = time.perf_counter()
            results[name] = evaluate_hf_pair(model, None, corpus, L, batch, tok.eos_id)["gpt2_memory"]
            seconds[name] = time.perf_counter() - start
            print(
                f"{name}: test ppl {results[name]['ppl']:.3f} (base {results['base']['ppl']:.3f})", flush=True
            )

    per_doc = {name: per_document_nll(r) for name, r in results.items()}
    docs = sorted(per_doc["base"])
    scores = {name: [nll_per_token(d, docs)] for name, d in per_doc.items()}
    pairs = []
    for name in (n for n in results if n.startswith("free_")):
        for other in ("base", "window"):
            pair = paired_comparison(scores[name], scores[other], names=(name, other), higher_is_better=False)
            pair["unit"] = "nats/token per test document"
            pairs.append(pair)
    out = {
        "benchmark": "training_free",
        "command": " ".join(["python", "benchmarks/training_free.py", *sys.argv[1:]]),
        "model": args.model,
        "evaluation": f"test split, blocks of {L} tokens, each document from its start, evaluation seed 0",
        "memory": {**MEMORY, "block_size": L, "sticky": True},
        "models": {
            name: {"test_ppl": r["ppl"], "test_bpb": r["bpb"], "seconds": round(seconds[name], 1)}
            for name, r in results.items()
        },
        "pairs": pairs,
        "documents": len(docs),
        "machine": {**machine_info(), "torch_threads": args.threads},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for pair in pairs:
        print(f"{pair['a']} - {pair['b']}: {pair['mean_diff']:+.4f} {pair['ci95']} {pair['verdict']}")


if __name__ == "__main__":
    main()
