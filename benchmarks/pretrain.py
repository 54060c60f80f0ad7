"""Pretrain a small GPT-2 or Llama on the training plays, as a regular Hugging Face folder.

    python benchmarks/pretrain.py                       # -> runs/gpt2-shakespeare/
    python benchmarks/pretrain.py --arch llama          # -> runs/llama-shakespeare/
    python benchmarks/pretrain.py --steps 20 --n-layer 1 --n-embd 32 --out /tmp/tiny   # smoke run

No pretrained weights reach these machines, so the paper's GPT-2 experiment (fine-tune GPT-2 with
the long-term memory) needs a GPT-2 made here, and the training-free memory and the probes need a
rotary-position (Llama-architecture) model besides. This script trains transformers'
GPT2LMHeadModel or LlamaForCausalLM (same width, depth, heads and context; SwiGLU width 8/3·d,
tied embeddings as GPT-2's) from scratch on random windows of the train split with a byte-level BPE trained on the same
split, and saves model + tokenizer with save_pretrained, so that
`infinite-former lm finetune --model runs/gpt2-shakespeare` loads it like any GPT-2 folder. The
folder is not committed; this script rebuilds it (seeded). Its training curve and test
perplexity (contexts of n_positions tokens, no memory) go to <out>/pretrain.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from infinite_former.data.text import load_corpus_split, tokenize_documents
from infinite_former.data.tokenizer import EOS_TOKEN, train_bpe_tokenizer
from infinite_former.utils import machine_info, seed_everything

REPO = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "shakespeare"))
    p.add_argument("--arch", choices=("gpt2", "llama"), default="gpt2", help="which architecture to train")
    p.add_argument("--out", default=None, help="the model folder (default runs/<arch>-shakespeare)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-positions", type=int, default=256, help="context; lm finetune's --block-size ≤ this")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-windows", type=int, default=64, help="test windows for the perplexity")
    a = p.parse_args(argv)
    a.out = a.out or str(REPO / "runs" / f"{a.arch}-shakespeare")
    return a


def model_config(a: argparse.Namespace, vocab_size: int, eos_id: int):
    """The architecture's config at the requested size (the same d, depth, heads and context)."""
    from transformers import GPT2Config, LlamaConfig

    if a.arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_positions=a.n_positions, n_embd=a.n_embd, n_layer=a.n_layer,
            n_head=a.n_head, bos_token_id=eos_id, eos_token_id=eos_id,
        )  # fmt: skip
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=a.n_embd, intermediate_size=64 * math.ceil(a.n_embd * 8 / 3 / 64),
        num_hidden_layers=a.n_layer, num_attention_heads=a.n_head, num_key_value_heads=a.n_head,
        max_position_embeddings=a.n_positions, tie_word_embeddings=True, bos_token_id=eos_id,
        eos_token_id=eos_id, pad_token_id=eos_id,
    )  # fmt: skip


def hf_tokenizer(texts: list[str], vocab_size: int):
    """The byte-level BPE as a GPT2TokenizerFast (what GPT-2 folders hold)."""
    from transformers import GPT2TokenizerFast

    bpe = train_bpe_tokenizer(texts, vocab_size=vocab_size)
    return GPT2TokenizerFast(
        tokenizer_object=bpe.backend, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN
    )


def windows(stream: torch.Tensor, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """n random windows of `length` + 1 tokens from one long token stream: (n, length + 1)."""
    starts = torch.randint(0, stream.numel() - length - 1, (n,), generator=gen)
    return torch.stack([stream[s : s + length + 1] for s in starts.tolist()])


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    seed_everything(a.seed)
    from transformers import AutoModelForCausalLM

    train_docs = load_corpus_split(a.data, "train")
    tok = hf_tokenizer([d.text for d in train_docs], a.vocab_size)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    from infinite_former.data.tokenizer import gpt2_tokenizer

    text_tok = gpt2_tokenizer(out)  # the saved folder, read back as lm finetune will read it

    def stream(split: str) -> torch.Tensor:
        corpus = tokenize_documents(load_corpus_split(a.data, split), text_tok)
        eos = torch.tensor([text_tok.eos_id])
        return torch.cat([t for doc in corpus.tokens for t in (doc, eos)])

    train, test = stream("train"), stream("test")
    model = AutoModelForCausalLM.from_config(model_config(a, len(tok), tok.eos_token_id))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warm = max(1, a.warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)))
    )
    gen = torch.Generator().manual_seed(a.seed)
    curve, t0 = [], time.perf_counter()
    model.train()
    for step in range(1, a.steps + 1):
        batch = windows(train, a.batch_size, a.n_positions, gen)
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss  # HF shifts the labels
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % max(1, a.steps // 50) == 0 or step == a.steps:
            curve.append([step, loss.item()])
            print(f"step {step} loss {float(loss):.3f}", flush=True)
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        test_batch = windows(test, a.eval_windows, a.n_positions, torch.Generator().manual_seed(0))
        nll = sum(
            float(model(input_ids=w[:, :-1], labels=w[:, :-1]).loss) for w in test_batch.split(8)
        ) / len(test_batch.split(8))
    model.save_pretrained(out)
    report = {
        "machine": machine_info(),
        "architecture": type(model).__name__,
        "config": {k: v for k, v in vars(a).items() if k not in ("data", "out")},
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": seconds,
        "loss_curve": curve,
        "test_ppl_context": math.exp(nll),
        "test_windows": a.eval_windows,
        "command": "python benchmarks/pretrain.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    (out / "pretrain.json").write_text(json.dumps(report, indent=1))
    print(f"saved {out}; test ppl over {a.n_positions}-token windows: {report['test_ppl_context']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
