"""Small shared helpers, each in one place: argument checks, config (de)serialisation, seeding,
the machine description of results files, atomic JSON writes, the main-process test."""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import platform
import random
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import torch

CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512f", "avx2")
"""The CPU features that decide matmul speed per dtype (bf16 on AMX / AVX-512 BF16, float32 on AVX)."""


def cpu_flags() -> dict[str, bool]:
    """Which of CPU_FLAGS the CPU reports (/proc/cpuinfo; all False where it cannot be read)."""
    found: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    found = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {flag: flag in found for flag in CPU_FLAGS}


def machine_info(precision: str | None = None) -> dict[str, Any]:
    """Describe the machine a result was measured on (goes into results/*.json): CPU model and
    its matmul-relevant flags (CPU_FLAGS), torch threads and version, and the precision if given."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": "cpu",
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["cpu_flags"] = cpu_flags()
    if precision is not None:
        info["precision"] = precision
    if torch.cuda.is_available():
        info["device"] = "cuda"
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A float32 island: autocast disabled on device_type inside the block. Only enters
    torch.autocast where autocast is on (entering one costs ~20 µs of Python per call)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


T = TypeVar("T")


def check_int(name: str, value: Any, minimum: int = 1, symbol: str | None = None) -> None:
    """Raise ValueError naming the setting unless value is an int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        label = f"{name} ({symbol})" if symbol else name
        raise ValueError(f"{label} must be an int >= {minimum}, got {value!r}")


def config_from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """Build a config dataclass from a dict, rejecting keys it does not have."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; expected a subset of {sorted(known)}")
    return cls(**d)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (if installed) and torch RNGs."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is optional for the core
        pass


def describe(x: Any) -> str:
    """What x is, for error messages: a tensor's shape and dtype, else its type name."""
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write text to path atomically (a temporary file, fsync, then rename); creates parent folders.

    A reader sees the old file or the new one, never a half-written one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    return p


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write obj as indented JSON, atomically (``write_text_atomic``)."""
    return write_text_atomic(path, json.dumps(obj, indent=2))


def is_main_process() -> bool:
    """True on rank 0 of a torchrun / accelerate launch (and in a plain single process)."""
    return int(os.environ.get("RANK", "0")) == 0
