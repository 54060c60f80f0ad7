"""LongTermAttention cost per segment while streaming long contexts, against two baselines.

    python benchmarks/ltm_scaling.py            # full run (≈ 10 min on 2 shared CPU cores)
    python benchmarks/ltm_scaling.py --quick    # tiny smoke version (< 30 s)

Writes results/ltm_scaling.json and results/ltm_scaling.png.

* LTM: forward + backward of one segment (absorb L new vectors: gate, contraction, refit; then
  continuous attention of L queries; KL term in the loss) after the memory has absorbed 4k, 64k
  and 1,048,576 tokens. The stream is really absorbed, segment by segment, with the layer's own
  update under torch.no_grad.
* the same LTM step with ``torch.set_flush_denormal(True)`` (switched on for that step only),
  interleaved: the layer holds no subnormal numbers (issue 17), so both must agree within 10 %.
  Subnormals are slow only on CPUs that handle them in microcode (Intel); elsewhere (AMD)
  both times agree regardless, so there this is a check of the setting, not of the penalty.
* plain attention: softmax attention over N discrete keys with the same shapes (q projection,
  k/v projections of N key vectors, scaled-dot-product attention, output projection), timed in
  the same loop, interleaved with the LTM steps.
* full causal attention: L queries attending to all past + current tokens (cached past K/V, as
  in Transformer-XL), at doubling contexts, each point in a subprocess under an address-space
  limit (RLIMIT_AS), so running out of memory is recorded as {"oom": true}.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from infinite_former import LongTermAttention, LTMConfig
from infinite_former.utils import machine_info

ROOT = Path(__file__).resolve().parents[1]
FULL = dict(batch=8, d_model=512, n_heads=8, num_basis=512, num_samples=512, segment=512)
QUICK = dict(batch=2, d_model=64, n_heads=4, num_basis=32, num_samples=32, segment=32)

PEAK_METHOD = (
    "CPU: growth of the process's peak resident set size during one timed step: free heap memory is "
    "returned to the OS (glibc malloc_trim(0)), the kernel's high-water mark is reset "
    "(/proc/self/clear_refs 5), then peak_mb = VmHWM after the step - VmRSS before it. It counts what "
    "the step itself allocates (activations, temporaries, gradients) above the resident parameters, "
    "inputs and memory state. CUDA: torch.cuda.max_memory_allocated growth. state_mb: what persists between "
    "segments (LTM: the MemoryState; plain attention: its N key vectors; full attention: the cached past K/V), "
    "total_mb = peak_mb + state_mb."
)
TIME_METHOD = (
    "wall-clock time of forward + backward (+ zero_grad) per segment, median over the timed steps after "
    "warm-up; cpu_ms_per_segment is the process CPU time of the same steps (less sensitive to other "
    "processes on a shared machine)."
)

_LIBC = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None


# ------------------------------------------------------------------ measuring


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


class PeakMemory:
    """Peak memory growth of one step (see PEAK_METHOD)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            if _LIBC is not None:
                _LIBC.malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.peak_mb = (_status_kb("VmHWM") * 1024 - self.base) / 2**20


def timed(step, device: torch.device) -> dict[str, float]:
    with PeakMemory(device) as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"ms": wall * 1e3, "cpu_ms": cpu * 1e3, "peak_mb": mem.peak_mb}


def nbytes_mb(*tensors: torch.Tensor) -> float:
    return round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 2)


def summary(samples: list[dict[str, float]], state_mb: float) -> dict[str, float]:
    peak = statistics.median(s["peak_mb"] for s in samples)
    return {
        "ms_per_segment": round(statistics.median(s["ms"] for s in samples), 2),
        "cpu_ms_per_segment": round(statistics.median(s["cpu_ms"] for s in samples), 2),
        "peak_mb": round(peak, 1),
        "state_mb": state_mb,
        "total_mb": round(peak + state_mb, 1),
        "ms_all": [round(s["ms"], 1) for s in samples],
        "peak_mb_all": [round(s["peak_mb"], 1) for s in samples],
    }


# ------------------------------------------------------------------ the layers


class PlainAttention(nn.Module):
    """Softmax attention of L queries over N discrete key vectors (same shapes as the LTM)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.h = n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        return x.view(b, n, self.h, e // self.h).transpose(1, 2)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        z = F.scaled_dot_product_attention(
            self.heads(self.q(queries)), self.heads(self.k(keys)), self.heads(self.v(keys))
        )
        b, _, n, _ = z.shape
        return self.o(z.transpose(1, 2).reshape(b, n, -1))


# ------------------------------------------------------------------ full causal attention (child)


def full_attention_point(args: argparse.Namespace) -> None:
    """One context size of full causal attention; prints one JSON line (runs in a subprocess)."""
    torch.set_num_threads(args.threads)
    c = QUICK if args.quick else FULL
    b, e, h, seg = c["batch"], c["d_model"], c["n_heads"], c["segment"]
    total = args.full_point
    past = total - seg
    device = torch.device(args.device)
    result: dict = {"context_tokens": total}
    try:
        torch.manual_seed(0)
        layer = PlainAttention(e, h).to(device)
        # the cached, already projected keys and values of all past tokens (no gradient)
        past_k = torch.randn(b, h, past, e // h, device=device)
        past_v = torch.randn(b, h, past, e // h, device=device)
        x = torch.randn(b, seg, e, device=device, requires_grad=True)
        pos = torch.arange(total, device=device)
        allowed = pos[None, :] <= (past + torch.arange(seg, device=device))[:, None]  # (L, T) causal

        def step() -> None:
            q, k, v = layer.heads(layer.q(x)), layer.heads(layer.k(x)), layer.heads(layer.v(x))
            keys, values = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
            z = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)
            out = layer.o(z.transpose(1, 2).reshape(b, seg, e))
            out.sum().backward()
            layer.zero_grad(set_to_none=True)
            x.grad = None

        # small contexts: 1 warm-up + 2 timed steps; large ones (seconds to minutes each): 1 cold step
        warmup, reps = (1, 2) if total <= args.full_reps_upto else (0, 1)
        for _ in range(warmup):
            step()
        samples = [timed(step, device) for _ in range(reps)]
        result.update(summary(samples, nbytes_mb(past_k, past_v)))
    except (RuntimeError, MemoryError) as err:  # allocation failure under the address-space limit
        if "memory" not in str(err).lower() and not isinstance(err, MemoryError):
            raise
        result.update({"oom": True, "error": str(err).splitlines()[0][:200]})
    print(json.dumps(result), flush=True)


def run_full_attention(args: argparse.Namespace, contexts: list[int]) -> list[dict]:
    limit = int(args.mem_limit_gb * 2**30)

    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    rows = []
    for total in contexts:
        cmd = [sys.executable, __file__, "--full-point", str(total), "--threads", str(args.threads)]
        cmd += ["--device", args.device, "--full-reps-upto", str(args.full_reps_upto)]
        if args.quick:
            cmd.append("--quick")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=args.full_timeout_s,
                preexec_fn=set_limit,
                cwd=ROOT,
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if lines:
                row = json.loads(lines[-1])
            else:  # killed without a word: count a signal (e.g. the OOM killer) as out-of-memory
                row = {"context_tokens": total, "oom": proc.returncode < 0, "returncode": proc.returncode}
                row["stderr_tail"] = proc.stderr[-300:]
        except subprocess.TimeoutExpired:
            row = {"context_tokens": total, "timeout": True, "timeout_s": args.full_timeout_s}
        row["subprocess_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print("full attention", row, flush=True)
        if row.get("oom"):
            break
    return rows


# ------------------------------------------------------------------ LTM streaming (parent)


def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    c = QUICK if args.quick else FULL
    b, e, h, seg = c["batch"], c["d_model"], c["n_heads"], c["segment"]
    contexts = args.contexts or ([8 * seg, 32 * seg, 128 * seg] if args.quick else [4096, 65536, 1048576])
    cfg = LTMConfig(d_model=e, n_heads=h, num_basis=c["num_basis"], num_samples=c["num_samples"])
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    ltm = LongTermAttention(cfg).to(device, dtype)
    plain = PlainAttention(e, h).to(device, dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    # --compile: both timed layers run compiled (the streaming updates stay eager)
    ltm_fn = torch.compile(ltm, backend=args.compile_backend) if args.compile else ltm
    plain_fn = torch.compile(plain, backend=args.compile_backend) if args.compile else plain

    def segment(batch: int) -> torch.Tensor:
        return torch.randn(batch, seg, e, device=device, generator=gen).to(dtype)

    keys = segment(b)[:, : c["num_basis"]]  # N discrete key vectors for the plain layer (no gradient)
    queries = segment(b).requires_grad_(True)  # queries come from upstream layers: they need gradients

    # How many rows to stream: all b if the 1M-token stream fits the budget, else 1 row, replicated.
    with torch.no_grad():
        probe = ltm.update(ltm.init_state(b, device), segment(b))
        t0 = time.perf_counter()
        for _ in range(3):
            probe = ltm.update(probe, segment(b))
        update_s = (time.perf_counter() - t0) / 3
    n_updates = max(contexts) // seg
    stream_batch = b if (args.stream_batch == "full" or n_updates * update_s <= args.stream_budget_s) else 1
    if args.stream_batch == "1":
        stream_batch = 1
    print(
        f"update at batch {b}: {update_s * 1e3:.0f} ms -> streaming {n_updates} updates with batch {stream_batch}"
    )

    def ltm_step(state_box: list) -> None:
        out, state, kl = ltm_fn(queries, segment(b), state_box[0], return_kl=True)
        (out.sum() + 1e-6 * kl).backward()
        ltm.zero_grad(set_to_none=True)
        queries.grad = None
        state_box[0] = state.detach()

    def flushed_ltm_step(state_box: list) -> None:
        torch.set_flush_denormal(True)
        try:
            ltm_step(state_box)
        finally:
            torch.set_flush_denormal(False)

    def plain_step() -> None:
        plain_fn(queries, keys).sum().backward()
        plain.zero_grad(set_to_none=True)
        queries.grad = None

    # 1. Stream, keeping the state reached at each checkpoint (8 MB each).
    state = ltm.init_state(stream_batch, device)
    absorbed, stream_s, boxes = 0, 0.0, {}
    for target in sorted(contexts):
        t0 = time.perf_counter()
        with torch.no_grad():
            while absorbed < target:
                state = ltm.update(state, segment(stream_batch))
                absorbed += seg
        stream_s += time.perf_counter() - t0
        assert int(state.length[0]) == absorbed == target
        rows_idx = torch.zeros(b, dtype=torch.long, device=device)
        boxes[target] = [state.select(rows_idx) if stream_batch == 1 else state]
        print(f"streamed {absorbed} tokens ({stream_s:.0f} s)", flush=True)

    # 2. Time every checkpoint round-robin, each step followed by a plain-attention step, so that all
    #    of them see the same (shared-machine) load; each checkpoint's memory keeps absorbing segments.
    for box in boxes.values():
        for _ in range(args.warmup):
            ltm_step(box)
            plain_step()
            flushed_ltm_step(box)
    ltm_samples = {t: [] for t in boxes}
    plain_samples = {t: [] for t in boxes}
    flush_samples = {t: [] for t in boxes}
    for _ in range(args.reps):
        for target, box in boxes.items():
            ltm_samples[target].append(timed(lambda box=box: ltm_step(box), device))
            plain_samples[target].append(timed(plain_step, device))
            flush_samples[target].append(timed(lambda box=box: flushed_ltm_step(box), device))
    rows, plain_rows = [], []
    for target, box in boxes.items():
        row = {
            "context_tokens": target,
            **summary(ltm_samples[target], nbytes_mb(*box[0].state_dict().values())),
        }
        prow = {"context_tokens": target, **summary(plain_samples[target], nbytes_mb(keys))}
        flush = summary(flush_samples[target], row["state_mb"])
        row["flush_denormal"] = {k: flush[k] for k in ("ms_per_segment", "cpu_ms_per_segment", "ms_all")}
        row["time_over_flush_denormal"] = round(row["ms_per_segment"] / flush["ms_per_segment"], 3)
        row["cpu_time_over_flush_denormal"] = round(
            row["cpu_ms_per_segment"] / flush["cpu_ms_per_segment"], 3
        )
        row["tokens_absorbed_after_timing"] = int(box[0].length[0])
        row["ratio_to_plain"] = round(row["ms_per_segment"] / prow["ms_per_segment"], 3)
        row["cpu_ratio_to_plain"] = round(row["cpu_ms_per_segment"] / prow["cpu_ms_per_segment"], 3)
        rows.append(row)
        plain_rows.append(prow)
        print("ltm", row, "\nplain", prow, flush=True)

    ltm_ms = [r["ms_per_segment"] for r in rows]
    ltm_cpu = [r["cpu_ms_per_segment"] for r in rows]
    ltm_peak = [r["peak_mb"] for r in rows]
    plain_ms = statistics.median(r["ms_per_segment"] for r in plain_rows)
    plain_cpu = statistics.median(r["cpu_ms_per_segment"] for r in plain_rows)
    ratios = {
        "ltm_over_plain_time": round(statistics.median(ltm_ms) / plain_ms, 3),
        "ltm_over_plain_cpu_time": round(statistics.median(ltm_cpu) / plain_cpu, 3),
        "ltm_over_plain_peak_mb": round(
            statistics.median(ltm_peak) / statistics.median(r["peak_mb"] for r in plain_rows), 3
        ),
        "ltm_time_max_over_min": round(max(ltm_ms) / min(ltm_ms), 3),
        "ltm_cpu_time_max_over_min": round(max(ltm_cpu) / min(ltm_cpu), 3),
        "ltm_peak_max_over_min": round(max(ltm_peak) / min(ltm_peak), 3),
        "ltm_time_over_flush_denormal_max": max(r["time_over_flush_denormal"] for r in rows),
        "ltm_time_over_flush_denormal_min": min(r["time_over_flush_denormal"] for r in rows),
    }
    targets = {
        "ltm_over_plain_time<=2": ratios["ltm_over_plain_time"] <= 2,
        "ltm_time_max_over_min<=1.1": ratios["ltm_time_max_over_min"] <= 1.1,
        "ltm_peak_max_over_min<=1.1": ratios["ltm_peak_max_over_min"] <= 1.1,
        "ltm_time_vs_flush_denormal_within_10pct": all(
            abs(r["time_over_flush_denormal"] - 1) <= 0.1 for r in rows
        ),
        "ltm_cpu_time_vs_flush_denormal_within_10pct": all(
            abs(r["cpu_time_over_flush_denormal"] - 1) <= 0.1 for r in rows
        ),
    }
    print("ratios", ratios, targets, flush=True)

    full_contexts = args.full_contexts or (
        [seg * 2**k for k in range(3, 9)] if args.quick else [4096 * 2**k for k in range(0, 9)]
    )
    full_rows = [] if args.no_full_attention else run_full_attention(args, full_contexts)

    result = {
        "machine": machine_info(precision=args.dtype),
        "torch": torch.__version__,
        "command": "python benchmarks/ltm_scaling.py"
        + (" --quick" if args.quick else "")
        + _variant_flags(args),
        "config": {
            **cfg.to_dict(),
            "batch": b,
            "segment_L": seg,
            "threads": args.threads,
            "device": str(device),
            "dtype": args.dtype,
            "compiled": bool(args.compile),
            "compile_backend": args.compile_backend if args.compile else None,
            "warmup_steps": args.warmup,
            "timed_steps": args.reps,
            "loss": "out.sum() + 1e-6 * KL; queries require grad, new vectors do not (they left the STM)",
        },
        "timing_method": TIME_METHOD,
        "peak_mb_method": PEAK_METHOD,
        "stream": {
            "how": "each segment of L random vectors absorbed with ltm.update under torch.no_grad; the state "
            "reached at each checkpoint is kept (replicated to the batch with MemoryState.select if streamed "
            "with 1 row); the checkpoints are then timed round-robin (warm-up, then reps rounds of: LTM step "
            "at each checkpoint, each followed by a plain-attention step); the timed LTM steps keep "
            "absorbing new segments",
            "stream_batch": stream_batch,
            "update_ms_at_batch": round(update_s * 1e3, 1),
            "updates": n_updates,
            "stream_seconds": round(stream_s, 1),
        },
        "rows": rows,
        "plain_attention": {
            "what": "softmax attention of L queries over N discrete keys: q/k/v/o projections + SDPA",
            "rows": plain_rows,
            "ms_per_segment": plain_ms,
            "cpu_ms_per_segment": plain_cpu,
        },
        "full_attention": {
            "what": "L queries attend causally to all past + current tokens (cached past K/V, current K/V "
            "projected), SDPA with a boolean causal mask; one subprocess per point",
            "mem_limit_gb": args.mem_limit_gb,
            "timeout_s": args.full_timeout_s,
            "rows": full_rows,
        },
        "ratios": ratios,
        "targets": targets,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    out = ROOT / ("results/ltm_scaling_quick.json" if args.quick else "results/ltm_scaling.json")
    out = Path(args.out) if args.out else out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')} in {result['wall_seconds']} s")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ltm, plain = result["rows"], result["plain_attention"]["rows"]
    full_ok = [r for r in result["full_attention"]["rows"] if "ms_per_segment" in r]
    full_bad = [r for r in result["full_attention"]["rows"] if r.get("oom") or r.get("timeout")]
    for ax, key, label in (
        (axes[0], "ms_per_segment", "ms per segment (fwd + bwd)"),
        (axes[1], "total_mb", "MB: step peak + persistent state"),
    ):
        ax.plot(
            [r["context_tokens"] for r in ltm], [r[key] for r in ltm], "o-", label="∞-former LTM (N = 512)"
        )
        ax.plot(
            [r["context_tokens"] for r in plain],
            [r[key] for r in plain],
            "s--",
            label="plain attention, 512 keys",
        )
        ax.plot(
            [r["context_tokens"] for r in full_ok],
            [r[key] for r in full_ok],
            "^-",
            label="full causal attention",
        )
        if full_ok:
            for r in full_bad:
                tag = "OOM" if r.get("oom") else "timeout"
                y = max(x[key] for x in full_ok)
                ax.plot([r["context_tokens"]], [y], "rx", ms=10)
                ax.annotate(
                    tag, (r["context_tokens"], y), textcoords="offset points", xytext=(4, 4), color="r"
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context tokens absorbed")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(
        f"LongTermAttention vs attention baselines — {m.get('cpu_model', m.get('processor'))}, "
        f"{result['config']['threads']} thread(s), batch {result['config']['batch']}, e = {result['config']['d_model']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _variant_flags(args: argparse.Namespace) -> str:
    """The flags that change what is measured (for the results' "command" field)."""
    flags = f" --device {args.device}" if args.device != "cpu" else ""
    flags += f" --dtype {args.dtype}" if args.dtype != "float32" else ""
    flags += f" --compile --compile-backend {args.compile_backend}" if args.compile else ""
    flags += " --no-full-attention" if args.no_full_attention else ""
    return flags


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny smoke version (< 30 s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    p.add_argument("--contexts", type=int, nargs="*", help="LTM checkpoints in tokens")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=7, help="timed steps per checkpoint")
    p.add_argument("--stream-batch", choices=["auto", "full", "1"], default="auto")
    p.add_argument(
        "--stream-budget-s", type=float, default=300.0, help="max seconds to stream with the full batch"
    )
    p.add_argument("--full-contexts", type=int, nargs="*", help="full-attention context sizes")
    p.add_argument(
        "--full-reps-upto",
        type=int,
        default=8192,
        help="warm-up + 2 timed steps up to here, then 1 cold step",
    )
    p.add_argument("--full-timeout-s", type=float, default=120.0, help="per full-attention point")
    p.add_argument(
        "--mem-limit-gb", type=float, default=8.0, help="RLIMIT_AS of each full-attention subprocess"
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="layers and inputs")
    p.add_argument("--compile", action="store_true", help="time torch.compile'd layers (LTM and plain)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (with --compile)")
    p.add_argument("--no-full-attention", action="store_true", help="skip the full-attention subprocesses")
    p.add_argument("--out", default=None, help="results JSON (default results/ltm_scaling[_quick].json)")
    p.add_argument("--full-point", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.reps = min(args.reps, 3)
        args.full_timeout_s = min(args.full_timeout_s, 20.0)
        args.mem_limit_gb = min(args.mem_limit_gb, 3.0)
    return args


if __name__ == "__main__":
    a = parse()
    if a.full_point:
        full_attention_point(a)
    else:
        main(a)
