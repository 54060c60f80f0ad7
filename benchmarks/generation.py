"""Generation cost of a causal LM + ∞-former memory after ~1k / 10k / 100k tokens read, vs the
same base model with transformers' DynamicCache at 1k / 4k / 16k tokens of context.

Model: a Llama-architecture model of about GPT-2-small size (12 layers, 768 wide, 12 heads,
MLP 3072, vocab 32000; ``--arch gpt2`` for GPT-2 itself), random weights (speed does not depend
on them). The memory model is the same model after ``add_memory`` (a LongTermAttention in every
layer, N = M = 512, τ = 0.5, sticky, gated; block L = 512) with random non-zero output weights.

Every memory row is measured at the same position inside a block: the amount read is rounded to
n·L + ``--position`` tokens (default L/2), so generation starts with the same short-term block
length in every row and never crosses a block boundary while timed; the rows differ only in what
the fixed-size memory has absorbed. The baseline prefills its context into a DynamicCache in
chunks (untimed), then HF generate continues from that cache.

Per-token times come from a logits processor stamping each decoding step (with a device
synchronise on GPU); state MB is the size of the memory object / the KV cache after generation.
Reading 100k tokens through the full model is slow on one CPU thread, so past
``--full-read-budget-s`` the read is *fast-forwarded*: whole blocks of synthetic layer inputs
(per-layer mean/std of the real ones) are absorbed with the real memory update (gate,
contraction, sampling, refit), skipping the model's layers; the last blocks are read for real.
No query attends in those blocks, so their sticky statistics are empty and sticky sampling falls
back to uniform there (same cost, different content). The state then has exactly the shape and token count of a real read; the JSON records how
many tokens were read each way.

    python benchmarks/generation.py --threads 1 --out results/generation_cpu.json
    python benchmarks/generation.py --device cuda --out results/generation_gpu.json
    python benchmarks/generation.py --quick --out /tmp/generation_quick.json   # toy sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import (
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
)

from infinite_former.hf import HFMemoryState, add_memory
from infinite_former.utils import machine_info

QUICK = dict(
    layers=2,
    hidden=64,
    heads=4,
    intermediate=128,
    vocab=1000,
    block_size=32,
    num_basis=32,
    num_samples=32,
    reads=[100, 1000, 10000],
    contexts=[128, 512, 2048],
    new_tokens=8,
    repeats=2,
    full_read_budget_s=5.0,
    prefill_chunk=256,
)


class StepClock(LogitsProcessor):
    """Records the time of each decoding step (called once per generated token)."""

    def __init__(self, device: torch.device) -> None:
        self.stamps: list[float] = []
        self.cuda = device.type == "cuda"

    def __call__(self, input_ids, scores):
        if self.cuda:
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        return scores


def tensor_mb(x) -> float:
    """MiB of the tensors in a memory state or a transformers cache."""
    if isinstance(x, HFMemoryState):
        tensors = [t for s in x.ltm for t in s.state_dict().values()] + list(x.pending)
        tensors += [t for kv in x.kv for t in kv] + [x.slots, x.num_tokens]
    else:
        tensors = [t for layer in x.layers for t in (layer.keys, layer.values)]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def timed(run, repeats: int, device: torch.device) -> dict:
    """run(clock) -> state MB; returns the timing summary of `repeats` runs."""
    totals, token_ms, states = [], [], []
    for _ in range(repeats):
        clock = StepClock(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        states.append(run(clock))
        totals.append(time.perf_counter() - t0)
        stamps = [t0, *clock.stamps]
        token_ms.extend(1000 * (b - a) for a, b in zip(stamps[1:], stamps[2:], strict=False))  # decode steps
    new = len(clock.stamps)
    return {
        "new_tokens": new,
        "tokens_per_s": new / statistics.median(totals),
        "total_s_median": statistics.median(totals),
        "token_ms_median": statistics.median(token_ms),
        "token_ms_max": max(token_ms),
        "state_mb": states[0],
        "repeats": repeats,
    }


def build_base(args) -> torch.nn.Module:
    if args.arch == "gpt2":
        positions = max(args.contexts) + args.new_tokens + 1
        config = GPT2Config(
            vocab_size=args.vocab,
            n_positions=positions,
            n_layer=args.layers,
            n_embd=args.hidden,
            n_head=args.heads,
            n_inner=args.intermediate,
        )
        return GPT2LMHeadModel(config)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=max(args.contexts) + args.new_tokens + 1,
    )
    return LlamaForCausalLM(config)


def synthetic_blocks(model, memory: HFMemoryState, blocks: int, gen: torch.Generator) -> HFMemoryState:
    """Absorb `blocks` blocks of synthetic layer inputs (the real per-layer mean/std) into the memory."""
    if memory.position != memory.block_size or memory.batch_size != 1:
        raise RuntimeError("fast-forward needs one row with a complete block")
    stats = [(p.mean(dim=(0, 1)), p.std(dim=(0, 1))) for p in memory.pending]
    length = memory.block_size
    for _ in range(blocks):
        memory = model.absorb_blocks(memory)
        pending = tuple(
            (mean.cpu() + std.cpu() * torch.randn(1, length, mean.numel(), generator=gen)).to(mean)
            for mean, std in stats
        )
        kv = tuple((k.new_zeros(1, k.shape[1], length, k.shape[3]),) * 2 for k, _ in memory.kv or ())
        memory = replace(
            memory,
            pending=pending,
            kv=kv,
            slots=torch.ones(1, length, dtype=torch.bool, device=memory.slots.device),
            num_tokens=memory.num_tokens + length,
        )
    return memory


def read_until(model, memory, text, target, state, args, gen):
    """Read text into memory until `target` tokens; fast-forward whole blocks past the time budget."""
    block = args.block_size
    t0 = time.perf_counter()
    while int(memory.num_tokens) < target:
        fed = int(memory.num_tokens)
        remaining = target - fed
        over = state["read_s"] + (time.perf_counter() - t0) > args.full_read_budget_s
        if over and remaining > 3 * block and fed > 0 and memory.position == block:
            blocks = remaining // block - 1  # leave the last blocks to read for real
            memory = synthetic_blocks(model, memory, blocks, gen)
            state["synthetic"] += blocks * block
            continue
        n = min(block - memory.position if memory.position < block else block, remaining)
        with torch.no_grad():
            memory = model(text[:, fed : fed + n].to(args.device), memory=memory, logits_to_keep=1).memory
        state["full"] += n
    state["read_s"] += time.perf_counter() - t0
    return memory


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["llama", "gpt2"], default="llama")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--quick", action="store_true", help="toy sizes: a smoke run of seconds (e.g. in a GPU suite)"
    )
    p.add_argument("--reads", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--full-read-budget-s", type=float, default=300.0)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=3072)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--block-size", type=int, default=512)
    p.add_argument("--num-basis", type=int, default=512)
    p.add_argument("--num-samples", type=int, default=512)
    p.add_argument(
        "--position", type=int, default=None, help="in-block position where generation starts (L/2)"
    )
    p.add_argument(
        "--prefill-chunk", type=int, default=512, help="baseline prefill chunk (bounds attention memory)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/generation_cpu.json")
    p.add_argument("--plot", default=None, help="png path (default: --out with .png)")
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    args.position = args.block_size // 2 if args.position is None else args.position
    if not 0 < args.position <= args.block_size - args.new_tokens - 1:
        raise ValueError(f"--position must be in (0, block_size - new_tokens - 1], got {args.position}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()

    model = build_base(args).to(device).eval()
    length = max(max(args.contexts), max(args.reads) + args.block_size) + 2
    text = torch.randint(0, args.vocab, (1, length), generator=gen)
    gen_kwargs = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)

    # ------------------------------------------------------------ base model + DynamicCache
    baseline = []
    for ctx in args.contexts:
        ids = text[:, :ctx].to(device)
        cache = DynamicCache()
        with torch.no_grad():  # prefill all but the last context token, in chunks (untimed)
            for s in range(0, ctx - 1, args.prefill_chunk):
                model(
                    ids[:, s : min(s + args.prefill_chunk, ctx - 1)],
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )

        def run_base(clock, ids=ids, cache=cache, ctx=ctx):
            out = model.generate(
                ids,
                cache=cache,
                attention_mask=torch.ones_like(ids),
                logits_processor=LogitsProcessorList([clock]),
                **gen_kwargs,
            )
            assert out.shape[1] == ctx + args.new_tokens
            mb = tensor_mb(cache)
            cache.crop(-(cache.get_seq_length() - (ctx - 1)))  # back to the prefilled context
            return mb

        row = {"context_tokens": ctx, **timed(run_base, args.repeats, device)}
        del cache
        baseline.append(row)
        print(f"base + DynamicCache, context {ctx}: {row['token_ms_median']:.1f} ms/token", flush=True)

    # ------------------------------------------------------------ the same model + memory
    model = add_memory(
        model, block_size=args.block_size, num_basis=args.num_basis, num_samples=args.num_samples
    ).eval()
    with torch.no_grad():
        for ltm in model.ltm:  # random, non-zero memory output (zero-init would be a no-op branch)
            ltm.out.weight.normal_(0.0, 0.02)
    memory = model.init_memory(1, device)
    state = {"read_s": 0.0, "full": 0, "synthetic": 0}
    rows = []
    for target in sorted(args.reads):
        tokens = max(round(target / args.block_size), 1) * args.block_size + args.position  # n·L + position
        memory = read_until(model, memory, text, tokens, state, args, gen)
        assert memory.position == args.position
        saved = memory
        prompt = text[:, tokens : tokens + 1].to(device)

        def run_memory(clock, saved=saved, prompt=prompt):
            out = model.generate(
                prompt,
                memory=saved,
                logits_processor=LogitsProcessorList([clock]),
                return_dict_in_generate=True,
                **gen_kwargs,
            )
            assert out.sequences.shape[1] == 1 + args.new_tokens
            assert int(out.memory.ltm_tokens) == int(saved.ltm_tokens)  # no block absorbed while timed
            return tensor_mb(out.memory)

        row = {
            "tokens_read": tokens,
            "target": target,
            "tokens_read_full_model": state["full"],
            "tokens_absorbed_synthetic": state["synthetic"],
            "read_s_cumulative": state["read_s"],
            "ltm_tokens": int(saved.ltm_tokens),
            "block_position": saved.position,
            **timed(run_memory, args.repeats, device),
        }
        rows.append(row)
        print(
            f"memory after {tokens} read ({state['full']} full, {state['synthetic']} fast-forwarded): "
            f"{row['token_ms_median']:.1f} ms/token, state {row['state_mb']:.1f} MB",
            flush=True,
        )

    result = {
        "machine": machine_info(precision="fp32"),
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "config": {
            **vars(args),
            "model": f"{'Llama' if args.arch == 'llama' else 'GPT-2'} architecture, random weights",
            "memory": {
                "num_basis": args.num_basis,
                "num_samples": args.num_samples,
                "tau": 0.5,
                "sticky": True,
            },
        },
        "notes": [
            "batch 1, greedy; ms per token = median over the decoding steps (the prompt's step excluded) of "
            "`repeats` generate calls from the same saved state",
            "baseline: the same base model, context prefilled into a transformers DynamicCache (untimed), then HF "
            "generate with that cache",
            f"memory model: generate from the state after reading n·{args.block_size} + {args.position} tokens, so "
            f"every row starts at position {args.position} of its block and no block is absorbed while timed",
            "tokens_absorbed_synthetic > 0: those blocks were fast-forwarded (synthetic layer inputs absorbed by the "
            "real memory update, the model's layers skipped) to keep the run short; see the module docstring",
            "state_mb: bytes of the memory object (LTM + current block's KV cache and layer inputs) / of the KV cache",
        ],
        "baseline": baseline,
        "with_memory": rows,
        "wall_s": time.perf_counter() - started,
    }
    out = Path(args.out)
    if out.exists():  # an earlier run's numbers may be cited: keep them, newest last
        previous = json.loads(out.read_text())
        kept = ("machine", "command", "baseline", "with_memory", "wall_s")
        result["history"] = [*previous.get("history", []), {k: previous[k] for k in kept if k in previous}]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    plot(result, Path(args.plot) if args.plot else out.with_suffix(".png"))
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mem, base = result["with_memory"], result["baseline"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in (
        (axes[0], "token_ms_median", "ms per generated token"),
        (axes[1], "state_mb", "MiB"),
    ):
        ax.plot([r["tokens_read"] for r in mem], [r[key] for r in mem], "o-", label="with memory")
        ax.plot(
            [r["context_tokens"] for r in base], [r[key] for r in base], "^-", label="base + DynamicCache"
        )
        ax.set(xscale="log", xlabel="tokens read / context", ylabel=label)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    m, c = result["machine"], result["config"]
    fig.suptitle(
        f"{c['model']}: {c['layers']} layers x {c['hidden']}, N = {c['num_basis']}, M = {c['num_samples']}, "
        f"block {c['block_size']}; batch 1, {m.get('gpu') or m.get('cpu_model', m['processor'])}, "
        f"{m.get('torch_threads')} thread(s)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
