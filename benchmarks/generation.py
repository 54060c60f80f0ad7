"""Generation cost of GPT-2 + long-term memory after 1k / 10k / 100k tokens read, vs plain GPT-2.

Model: GPT-2-small size (12 layers, 768 wide, 12 heads, vocab 50257, 1024 positions),
random weights; the memory model has a LongTermAttention in every layer (N = M = 512,
τ = 0.5, sticky, gated; block L = 512) with random (non-zero) output weights. Plain GPT-2
shares the same GPT-2 weights and uses its KV cache (HF generate).

For each amount of text read, the stream's state is kept and greedy generation of
``--new-tokens`` tokens (batch 1) is timed ``--repeats`` times from that same state.
Per-token times come from a logits processor stamping each decoding step. Peak memory:
the process peak RSS (VmHWM, reset before each timed run) minus the RSS before it, and
the size of the state (memory object, or plain GPT-2's KV cache).

Reading: text is read through the full model block by block. If that would exceed
``--full-read-budget-s``, the rest of the largest read is *fast-forwarded*: whole
blocks of synthetic layer-input vectors (per-layer mean/std of the real hidden states)
are absorbed into every layer's memory with the same update as a real block (gate,
contraction, sticky sampling, refit), skipping GPT-2's layers; the last 1-2 blocks are
read for real again. The state then has exactly the shape and token count of a real
read, and generation runs the real code path. The JSON records how many tokens were
read each way.

    python benchmarks/generation.py --threads 1 --out results/generation_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessor, LogitsProcessorList

from infinite_former.hf import InfiniteGPT2Config, InfiniteGPT2LMHeadModel, InfiniteGPT2Stream
from infinite_former.utils import machine_info


class StepClock(LogitsProcessor):
    """Records the time of each decoding step (called once per generated token)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return scores


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def tensor_mb(*objs) -> float:
    total, seen = 0, set()

    def walk(x):
        nonlocal total
        if isinstance(x, torch.Tensor):
            if id(x) not in seen:
                seen.add(id(x))
                total += x.numel() * x.element_size()
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        elif hasattr(x, "__dataclass_fields__"):
            for name in x.__dataclass_fields__:
                walk(getattr(x, name))
        elif hasattr(x, "layers"):  # transformers Cache
            for layer in x.layers:
                walk([getattr(layer, "keys", None), getattr(layer, "values", None)])

    for o in objs:
        walk(o)
    return total / 2**20


def timed(run, repeats: int) -> dict:
    """run(clock) -> (state_mb, blocks_absorbed); returns timing + memory summary."""
    totals, token_ms, peaks, before, states, absorbed = [], [], [], [], [], []
    for _ in range(repeats):
        clock = StepClock()
        rss0 = rss_mb()
        has_peak = reset_peak()
        t0 = time.perf_counter()
        state_mb, n_absorbed = run(clock)
        t1 = time.perf_counter()
        peaks.append(rss_mb("VmHWM") - rss0 if has_peak else float("nan"))
        before.append(rss0)
        totals.append(t1 - t0)
        stamps = [t0, *clock.stamps]
        token_ms.extend(1000 * (b - a) for a, b in zip(stamps, stamps[1:], strict=False))
        states.append(state_mb)
        absorbed.append(n_absorbed)
    new = len(clock.stamps)
    return {
        "new_tokens": new,
        "tokens_per_s": new / statistics.median(totals),
        "total_s_median": statistics.median(totals),
        "token_ms_median": statistics.median(token_ms),
        "token_ms_max": max(token_ms),
        "blocks_absorbed_during_generation": absorbed[0],
        "rss_before_mb": statistics.median(before),
        "peak_rss_increase_mb": max(peaks),
        "state_mb": states[0],
        "repeats": repeats,
    }


def synthetic_blocks(
    stream: InfiniteGPT2Stream, model: InfiniteGPT2LMHeadModel, blocks: int, gen: torch.Generator
):
    """Absorb `blocks` blocks of synthetic layer inputs (real per-layer mean/std) into the memory."""
    mem = stream.memory
    if mem.position != mem.block_size:
        raise RuntimeError("fast-forward needs a complete pending block")
    stats = [(p.mean(dim=(0, 1)), p.std(dim=(0, 1))) for p in mem.pending]
    length = mem.block_size
    for _ in range(blocks):
        mem = model.absorb_block(mem)
        pending = tuple(
            (mean + std * torch.randn(1, length, mean.numel(), generator=gen)).to(mem.pending[0].dtype)
            for mean, std in stats
        )
        kv = tuple(
            (k.new_zeros(1, k.shape[1], 1, k.shape[3]).expand(1, -1, length, -1),) * 2 for k, _ in mem.kv
        )
        mem = replace(mem, pending=pending, kv=kv, num_tokens=mem.num_tokens + length)
    stream.memory = mem


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reads", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--plain-contexts", type=int, nargs="+", default=[256, 512, 992])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--full-read-budget-s", type=float, default=300.0)
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--block-size", type=int, default=512)
    p.add_argument("--num-basis", type=int, default=512)
    p.add_argument("--num-samples", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/generation_cpu.json")
    p.add_argument("--plot", default=None, help="png path (default: --out with .png)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()

    gpt2 = dict(
        vocab_size=args.vocab, n_positions=1024, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head
    )
    config = InfiniteGPT2Config(
        **gpt2, block_size=args.block_size, num_basis=args.num_basis, num_samples=args.num_samples
    )
    model = InfiniteGPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for ltm in model.ltm:  # random, non-zero memory output (zero-init would be a no-op branch)
            ltm.out.weight.normal_(0.0, 0.02)
    plain = GPT2LMHeadModel(GPT2Config(**gpt2)).eval()
    plain.transformer, plain.lm_head = model.transformer, model.lm_head  # the same GPT-2 weights
    text = torch.randint(0, args.vocab, (1, max([*args.reads, *args.plain_contexts]) + 1), generator=gen)
    gen_kwargs = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)

    # ------------------------------------------------------------ plain GPT-2 + KV cache
    plain_rows = []
    for ctx in args.plain_contexts:
        if ctx + args.new_tokens > 1024:
            raise ValueError(
                f"plain context {ctx} + {args.new_tokens} new tokens exceeds GPT-2's 1024 positions"
            )
        ids = text[:, :ctx]
        with torch.no_grad():
            prefill = plain(ids[:, :-1], use_cache=True).cache  # the context is in the KV cache

        def run_plain(clock, ids=ids, prefill=prefill, ctx=ctx):
            cache = copy.deepcopy(prefill)
            out = plain.generate(
                ids,
                cache=cache,
                attention_mask=torch.ones_like(ids),
                logits_processor=LogitsProcessorList([clock]),
                **gen_kwargs,
            )
            assert out.shape[1] == ctx + args.new_tokens
            return tensor_mb(cache), 0

        row = {"context_tokens": ctx, **timed(run_plain, args.repeats)}
        plain_rows.append(row)
        print(
            f"plain GPT-2 ctx {ctx}: {row['tokens_per_s']:.1f} tok/s, {row['token_ms_median']:.1f} ms/token",
            flush=True,
        )

    # ------------------------------------------------------------ GPT-2 + memory
    stream = InfiniteGPT2Stream(model)
    block = args.block_size
    rows, read_s, full_tokens, synthetic_tokens = [], 0.0, 0, 0
    for target in sorted(args.reads):
        t_read = time.perf_counter()
        while stream.num_tokens < target:
            remaining = target - stream.num_tokens
            over_budget = read_s + (time.perf_counter() - t_read) > args.full_read_budget_s
            fed = stream.num_tokens - 1  # the stream keeps its newest token unfed
            if over_budget and remaining > 3 * block and fed > 0 and fed % block == 0:
                blocks = remaining // block - 1  # leave 1-2 blocks to read for real
                synthetic_blocks(stream, model, blocks, gen)
                synthetic_tokens += blocks * block
                continue
            step = block - (fed % block) if fed > 0 else block + 1  # stop at block boundaries
            n = min(step, remaining)
            start = stream.num_tokens
            stream.read(text[:, start : start + n])
            full_tokens += n
        read_s += time.perf_counter() - t_read
        saved = (stream.memory, stream.last)

        def run_memory(clock, saved=saved):
            stream.memory, stream.last = saved
            before = int(saved[0].ltm_tokens)
            new = stream.generate(logits_processor=LogitsProcessorList([clock]), **gen_kwargs)
            assert new.shape[1] == args.new_tokens
            return tensor_mb(stream.memory), (int(stream.memory.ltm_tokens) - before) // block

        row = {
            "tokens_read": target,
            "tokens_read_full_model": full_tokens,
            "tokens_absorbed_synthetic": synthetic_tokens,
            "read_s_cumulative": read_s,
            "ltm_tokens": int(saved[0].ltm_tokens),
            "stm_tokens": saved[0].position,
            **timed(run_memory, args.repeats),
        }
        stream.memory, stream.last = saved
        rows.append(row)
        print(
            f"memory model after {target} read ({full_tokens} full, {synthetic_tokens} synthetic, {read_s:.0f} s): "
            f"{row['tokens_per_s']:.1f} tok/s, {row['token_ms_median']:.1f} ms/token",
            flush=True,
        )

    result = {
        "machine": machine_info(),
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "config": {
            **vars(args),
            "model": "GPT-2-small size, random weights",
            "ltm": {
                k: getattr(config, k)
                for k in ("num_basis", "num_samples", "tau", "sticky", "gate", "block_size")
            },
        },
        "notes": [
            "batch 1, greedy; tokens_per_s = new_tokens / median wall time of one generate call (from the saved state)",
            "plain GPT-2: context prefilled into its KV cache (untimed), then HF generate with that cache",
            "memory model: InfiniteGPT2Stream.generate (GenerationMixin) after reading; its STM block is at most "
            f"{block} tokens, older text is only in the fixed-size memory",
            "blocks_absorbed_during_generation > 0 means a block boundary was crossed while generating: that "
            "step also absorbs a 512-token block into every layer's memory (token_ms_max)",
            "tokens_absorbed_synthetic > 0: those blocks were fast-forwarded (synthetic layer inputs absorbed by the "
            "real memory update, GPT-2 layers skipped) to keep the run short; see the module docstring",
            "peak_rss_increase_mb: VmHWM during generation minus VmRSS before it (allocator caching blurs it); "
            "state_mb: bytes of the memory object / KV cache after generation",
        ],
        "plain_gpt2": plain_rows,
        "gpt2_with_memory": rows,
        "wall_s": time.perf_counter() - started,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(result, Path(args.plot) if args.plot else out.with_suffix(".png"))
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mem, plain = result["gpt2_with_memory"], result["plain_gpt2"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = [r["tokens_read"] for r in mem]
    axes[0].plot(x, [r["token_ms_median"] for r in mem], "o-", label="GPT-2 + memory (median ms/token)")
    axes[0].plot(
        x,
        [r["total_s_median"] * 1000 / r["new_tokens"] for r in mem],
        "s--",
        label="GPT-2 + memory (mean, incl. block absorb)",
    )
    axes[0].plot(
        [r["context_tokens"] for r in plain],
        [r["token_ms_median"] for r in plain],
        "^-",
        label="plain GPT-2 + KV cache",
    )
    axes[0].set(xscale="log", xlabel="tokens read before generating", ylabel="ms per generated token")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    axes[1].plot(x, [r["state_mb"] for r in mem], "o-", label="GPT-2 + memory: state")
    axes[1].plot(
        [r["context_tokens"] for r in plain],
        [r["state_mb"] for r in plain],
        "^-",
        label="plain GPT-2: KV cache",
    )
    axes[1].set(xscale="log", xlabel="tokens read before generating", ylabel="MiB")
    axes[1].set_ylim(bottom=0)
    axes[1].legend(fontsize=8)
    m = result["machine"]
    c = result["config"]
    fig.suptitle(
        f"{c['n_layer']} layers x {c['n_embd']} (random weights), N = {c['num_basis']}, M = {c['num_samples']}, "
        f"batch 1, {m.get('torch_threads')} thread(s), {m.get('cpu_model', m['processor'])}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
