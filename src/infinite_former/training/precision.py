"""Precision as a setting: ``fp32 | bf16 | auto`` (issue 17).

bf16 means autocast to bfloat16 around the model's forward (weights, optimizer state and
gradients stay float32). The memory keeps float32 islands whatever the setting: the ridge fit
and the contraction (memory.update_memory), the Gaussian normalisers and the densities' μ, σ²
(attention.LongTermAttention.densities / read) run with autocast off in >= float32, and the
softmax statistics of the losses are taken in float32 (cross-entropy autocasts to float32).

``auto`` resolves once per process: bf16 on CUDA; on a CPU, bf16 where a one-off matmul
micro-benchmark shows bf16 at least ``BF16_MIN_SPEEDUP`` times faster than float32 (CPUs with
AMX or AVX-512 BF16 usually are, others emulate bf16 and are slower); float32 otherwise. The
reason is returned with the choice, for the run log.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ..utils import cpu_flags

PRECISIONS = ("fp32", "bf16", "auto")
BF16_MIN_SPEEDUP = 1.3  # "measurably faster": below this, noise on a shared machine could decide
PAIR = (torch.float32, torch.bfloat16)


def check_precision(precision: Any) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {' | '.join(PRECISIONS)}, got {precision!r}")
    return precision


@functools.cache
def cpu_bf16_speedup(size: int = 256, rounds: int = 5) -> float:
    """float32 time / bf16 time of a (size × size) matmul on this CPU with the current thread
    count: median over rounds that alternate the two dtypes (measured once per process)."""
    gen = torch.Generator().manual_seed(0)
    mats = {dt: [torch.randn(size, size, generator=gen).to(dt) for _ in range(2)] for dt in PAIR}
    reps = 8
    ratios = []
    for _ in range(rounds + 1):  # the first round only warms up (library initialisation)
        times = {}
        for dt, (a, b) in mats.items():
            a @ b  # warm
            t0 = time.process_time()  # CPU time: other processes' load does not count
            for _ in range(reps):
                a @ b
            times[dt] = time.process_time() - t0
        ratios.append(times[torch.float32] / times[torch.bfloat16])
    return statistics.median(ratios[1:])


def from_legacy_bf16(d: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict with the pre-0.3 ``bf16`` setting (True / False / "auto": bf16 on GPU only)
    as one with ``precision`` (bf16 / fp32 / auto); other dicts unchanged (a copy)."""
    d = dict(d)
    if "bf16" in d and "precision" not in d:
        legacy = d.pop("bf16")
        d["precision"] = {True: "bf16", False: "fp32"}.get(legacy, "auto")
    return d


def resolve_precision(precision: str, device: torch.device | str) -> tuple[str, str]:
    """("fp32" | "bf16", why): the precision a run uses on ``device`` and the reason, for the log."""
    check_precision(precision)
    dev = torch.device(device)
    if precision != "auto":
        return precision, "requested"
    if dev.type == "cuda":
        return "bf16", "auto: CUDA device"
    if dev.type != "cpu":
        return "fp32", f"auto: {dev.type} device"
    flags = ", ".join(f for f, on in cpu_flags().items() if on) or "none found"
    speedup = cpu_bf16_speedup()
    choice = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
    return choice, (
        f"auto: CPU bf16 matmul {speedup:.2f}x float32's (256², {torch.get_num_threads()} thread(s); "
        f"bf16 from {BF16_MIN_SPEEDUP}x); CPU flags: {flags}"
    )


def autocast(precision: str, device: torch.device | str) -> Callable[[], contextlib.AbstractContextManager]:
    """A context factory: bf16 autocast on ``device`` for "bf16", nothing for "fp32" (resolved)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"autocast needs a resolved precision (fp32 | bf16), got {precision!r}")
    dev_type = torch.device(device).type
    if precision == "fp32":
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=dev_type, dtype=torch.bfloat16)
