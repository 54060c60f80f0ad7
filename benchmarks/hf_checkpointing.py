"""Peak memory of one training step of a causal LM with memory, with and without gradient checkpointing.

Model: a Llama-architecture model of about GPT-2-small size (12 layers, 768 wide, 12 heads, MLP
3072, vocab 32000), random weights, after ``add_memory`` (N = M = 512, τ = 0.5, sticky, gated,
block L = 512) with random non-zero memory output weights. One step = forward of ``--tokens``
tokens in one call (labels on every token: the graph of all blocks is kept) + backward.

Each mode runs in its own fresh process (same seed, same data), so the high-water marks do not mix:
the process's peak resident set (VmHWM, reset through /proc/self/clear_refs after the model is
built) minus its resident set before the step is the step's peak memory. That counts everything the
step allocates (activations, graph, gradients, allocator slack), so it is an upper bound on what
the step needs; both modes are measured the same way. The losses of the two modes are recorded
(they must agree: checkpointing changes memory, not the numbers).

    python benchmarks/hf_checkpointing.py --threads 1 --out results/hf_checkpointing_cpu.json
    python benchmarks/hf_checkpointing.py --quick --out /tmp/hf_checkpointing_quick.json   # toy sizes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from infinite_former.hf import add_memory
from infinite_former.utils import machine_info

FULL = dict(
    layers=12, hidden=768, heads=12, intermediate=3072, vocab=32000, tokens=4096, block_size=512, basis=512
)
QUICK = dict(layers=2, hidden=64, heads=4, intermediate=128, vocab=1000, tokens=256, block_size=64, basis=32)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return []
    return [flag for flag in CPU_FLAGS if flag in flags]


def child(mode: str, sizes: dict, seed: int) -> dict:
    """One training step in this process: peak memory (MiB), seconds, loss."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=sizes["vocab"],
        hidden_size=sizes["hidden"],
        intermediate_size=sizes["intermediate"],
        num_hidden_layers=sizes["layers"],
        num_attention_heads=sizes["heads"],
        num_key_value_heads=sizes["heads"],
        max_position_embeddings=sizes["block_size"],
    )
    model = add_memory(
        LlamaForCausalLM(config),
        block_size=sizes["block_size"],
        num_basis=sizes["basis"],
        num_samples=sizes["basis"],
    )
    with torch.no_grad():
        for p in model.memory_parameters():
            p.normal_(0.0, 0.02)
    model.train()
    if mode == "checkpointing":
        model.gradient_checkpointing_enable()
    x = torch.randint(0, sizes["vocab"], (1, sizes["tokens"]), generator=torch.Generator().manual_seed(seed))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set (VmHWM) to the current one
    before = proc_status_kb("VmRSS")
    start = time.perf_counter()
    out = model(x, labels=x)
    out.loss.backward()
    seconds = time.perf_counter() - start
    peak = proc_status_kb("VmHWM")
    return {
        "mode": mode,
        "step_peak_mib": round((peak - before) / 1024, 1),
        "rss_before_step_mib": round(before / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "step_seconds": round(seconds, 2),
        "loss": float(out.loss),
        "parameters": sum(p.numel() for p in model.parameters()),
        "memory_parameters": sum(p.numel() for p in model.memory_parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="toy sizes (seconds)")
    parser.add_argument("--out", type=Path, default=Path("results/hf_checkpointing_cpu.json"))
    parser.add_argument("--child", choices=["plain", "checkpointing"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    if args.child:
        print(json.dumps(child(args.child, sizes, args.seed)))
        return
    runs = []
    for mode in ("plain", "checkpointing"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--threads",
            str(args.threads),
            "--seed",
            str(args.seed),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        done = subprocess.run(
            cmd + (["--quick"] if args.quick else []), env=env, capture_output=True, text=True
        )
        if done.returncode:
            sys.exit(f"{mode} run failed:\n{done.stderr}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    plain, ckpt = runs
    result = {
        "benchmark": "hf_checkpointing",
        "command": " ".join(["python", "benchmarks/hf_checkpointing.py", *sys.argv[1:]]),
        "model": {
            "architecture": "llama",
            **sizes,
            "memory": "add_memory: every layer, N = M = basis, sticky, gated",
        },
        "runs": runs,
        "step_peak_ratio_checkpointing_vs_plain": round(ckpt["step_peak_mib"] / plain["step_peak_mib"], 3),
        "step_time_ratio_checkpointing_vs_plain": round(ckpt["step_seconds"] / plain["step_seconds"], 3),
        "loss_abs_difference": abs(ckpt["loss"] - plain["loss"]),
        "machine": {**machine_info(), "torch_threads": args.threads, "cpu_flags": cpu_flags()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in list(result)[4:7]}))


if __name__ == "__main__":
    main()
