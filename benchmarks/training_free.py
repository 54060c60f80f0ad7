"""The training-free memory on a causal LM pretrained here (GPT-2 or Llama): test NLL against the same
model without memory and with the previous block in its window, paired by block, per distance bucket.

    python benchmarks/pretrain.py --arch gpt2 --out runs/gpt2-shakespeare      # (and --arch llama)
    python benchmarks/training_free.py --model runs/gpt2-shakespeare   # -> results/training_free_gpt2_cpu.json

Every model reads each test document (3 plays) from its start in blocks of L = 128 tokens (the GPT-2
fine-tuning benchmark's blocks) and predicts every token after the first:

* ``base``: the pretrained model on each block alone (what every memory model starts from);
* ``window``: the pretrained model with the previous block of its document in its window (2L positions);
* ``free_<density>_a<α>`` / ``free_<density>_softmax``: ``add_memory(model, training_free=...)`` with
  the fine-tuning benchmark's memory (N = M = 128, τ = 0.5, sticky, seeded), blocks in order, combined
  with the block's attention by a weight α or through one softmax normaliser (the memory counted as
  the tokens it stands for): no weight added or trained.

Units are blocks (the same blocks and targets for every model): mean NLL per token of each block,
paired comparisons (bootstrap 95% CI, ``infinite_former.stats``) of each training-free variant
against ``base`` and ``window`` over all blocks, and per bucket of the target's offset inside its
block and of the block's index in its document. Blocks of one document are not independent, so the
CIs are narrower than independent documents would give; there are only 3 test documents. The model is
any causal LM folder (AutoModelForCausalLM): GPT-2's absolute positions, Llama's rotary ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from infinite_former.data.text import load_corpus_split, tokenize_documents
from infinite_former.data.tokenizer import hf_tokenizer
from infinite_former.hf import add_memory
from infinite_former.hf.training_free import TrainingFreeConfig
from infinite_former.stats import paired_comparison
from infinite_former.training.records import parameter_counts, portable_path
from infinite_former.utils import machine_info

REPO = Path(__file__).resolve().parents[1]
MEMORY = dict(num_basis=128, num_samples=128, tau=0.5)
OFFSETS = ((0, 16), (16, 32), (32, 64), (64, 128))  # target offset inside its block (for L = 128)
BLOCK_INDEX = ((0, 1), (1, 2), (2, 4), (4, 16), (16, 10**9))  # the block's index in its document

Reader = Callable[[Tensor], Tensor]  # a document's ids (T,) -> NLL of ids[1:] (T - 1,)


def block_nll(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="none")


def base_reader(model, L: int) -> Reader:
    def read(ids: Tensor) -> Tensor:
        out = [model(ids[None, s : s + L]).logits[0] for s in range(0, len(ids) - 1, L)]
        return block_nll(torch.cat(out)[: len(ids) - 1], ids[1:])

    return read


def window_reader(model, L: int) -> Reader:
    def read(ids: Tensor) -> Tensor:
        out = []
        for s in range(0, len(ids) - 1, L):
            start = max(0, s - L)  # the previous block in the window, positions from 0
            out.append(model(ids[None, start : s + L]).logits[0, s - start :])
        return block_nll(torch.cat(out)[: len(ids) - 1], ids[1:])

    return read


def memory_reader(model, L: int) -> Reader:
    def read(ids: Tensor) -> Tensor:
        torch.manual_seed(0)  # sticky sampling
        memory, out = None, []
        for s in range(0, len(ids) - 1, L):
            step = model(ids[None, s : s + L], memory=memory)
            memory = step.memory
            out.append(step.logits[0])
        return block_nll(torch.cat(out)[: len(ids) - 1], ids[1:])

    return read


def per_block(nll: Tensor, L: int, buckets: tuple | None = None) -> tuple[list[float], list[int]]:
    """Mean NLL of each block (restricted to target offsets in buckets' [lo, hi)), and block indices."""
    means, index = [], []
    for b, s in enumerate(range(0, len(nll), L)):
        chunk = nll[s : s + L]
        if buckets is not None:
            chunk = chunk[buckets[0] : buckets[1]]
        if len(chunk):
            means.append(float(chunk.mean()))
            index.append(b)
    return means, index


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(REPO / "runs" / "gpt2-shakespeare"))
    p.add_argument(
        "--data",
        default=os.environ.get(
            "INFINITE_FORMER_SHAKESPEARE", str(REPO.parent / "shared" / "data" / "shakespeare")
        ),
    )
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument(
        "--variants",
        default="gibbs:0.5,gaussian:0.5,gibbs:0.1,gibbs:softmax,gaussian:softmax",
        help="DENSITY:ALPHA or DENSITY:softmax, comma-separated",
    )
    p.add_argument(
        "--max-tokens", type=int, default=0, help="read at most this many tokens per document (0: all)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="default: results/training_free_<model_type>_cpu.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (Path(args.model) / "model.safetensors").is_file():
        sys.exit(f"{args.model}: no model; run benchmarks/pretrain.py first")
    model_type = AutoConfig.from_pretrained(args.model).model_type
    args.out = args.out or REPO / "results" / f"training_free_{model_type}_cpu.json"
    tok = hf_tokenizer(args.model)
    docs = tokenize_documents(load_corpus_split(args.data, "test"), tok).tokens
    if args.max_tokens:
        docs = [d[: args.max_tokens] for d in docs]
    L = args.block_size

    def plain():
        return AutoModelForCausalLM.from_pretrained(args.model).eval()

    readers: dict[str, Reader] = {"base": base_reader(plain(), L), "window": window_reader(plain(), L)}
    settings = {}
    params = {name: parameter_counts(plain(), plain()) for name in readers}  # no memory weights anywhere
    for item in args.variants.split(","):
        free = TrainingFreeConfig.parse(item)
        model = add_memory(plain(), training_free=free, block_size=L, **MEMORY).eval()
        readers[free.label] = memory_reader(model, L)
        settings[free.label] = free.to_dict()
        params[free.label] = parameter_counts(model, plain())
        sticky = model.memory_config.ltm.sticky

    nll, seconds = {}, {}
    with torch.no_grad():
        for name, read in readers.items():
            start = time.perf_counter()
            nll[name] = [read(d) for d in docs]  # per document: (T - 1,)
            seconds[name] = round(time.perf_counter() - start, 1)
            mean = float(torch.cat(nll[name]).mean())
            print(f"{name}: NLL {mean:.4f} nats/token ({seconds[name]} s)", flush=True)

    def units(name: str, offsets: tuple | None = None, blocks: tuple | None = None) -> list[float]:
        out = []
        for doc in nll[name]:
            means, index = per_block(doc, L, offsets)
            out += [
                m for m, b in zip(means, index, strict=True) if blocks is None or blocks[0] <= b < blocks[1]
            ]
        return out

    def compare(a: str, b: str, **where) -> dict:
        pair = paired_comparison(units(a, **where), units(b, **where), names=(a, b), higher_is_better=False)
        return {**pair, "unit": "mean NLL (nats/token) of a block", **{k: list(v) for k, v in where.items()}}

    frees = [n for n in readers if n.startswith("free_")]
    pairs = [compare(f, other) for f in frees for other in ("base", "window")]
    buckets = [compare(f, "base", offsets=o) for f in frees for o in OFFSETS if o[0] < L]
    buckets += [compare(f, "base", blocks=b) for f in frees for b in BLOCK_INDEX if units(f, blocks=b)]
    out = {
        "benchmark": "training_free",
        "command": " ".join(
            ["python", "benchmarks/training_free.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "model": portable_path(args.model),
        "model_type": model_type,
        "evaluation": f"test split ({len(docs)} documents), blocks of {L} tokens, each document from its start",
        "memory": {**MEMORY, "block_size": L, "sticky": sticky},
        "training_free": settings,
        "models": {
            name: {
                "nll_per_token": float(torch.cat(v).mean()),
                "seconds": seconds[name],
                "num_parameters": params[name],
            }
            for name, v in nll.items()
        },
        "tokens": sum(len(d) - 1 for d in docs),
        "pairs": pairs,
        "buckets": buckets,
        "machine": {**machine_info(), "torch_threads": args.threads},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for pair in pairs + buckets:
        where = {k: pair[k] for k in ("offsets", "blocks") if k in pair}
        print(f"{pair['a']} - {pair['b']} {where}: {pair['mean_diff']:+.4f} {pair['ci95']} {pair['verdict']}")

    return 0


if __name__ == "__main__":
    sys.exit(main())
