"""Small shared helpers, each in one place: argument checks, config (de)serialisation, seeding,
the machine description of results files, atomic JSON writes, the main-process test."""

from __future__ import annotations

import json
import numbers
import os
import platform
import random
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import torch


def machine_info() -> dict[str, Any]:
    """Describe the machine a result was measured on (goes into results/*.json)."""
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
    if torch.cuda.is_available():
        info["device"] = "cuda"
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


T = TypeVar("T")


def check_int(name: str, value: Any, minimum: int = 1, symbol: str | None = None) -> None:
    """Raise ValueError naming the setting unless value is an int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        label = f"{name} ({symbol})" if symbol else name
        raise ValueError(f"{label} must be an int >= {minimum}, got {value!r}")


def config_from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """Build a config dataclass from a dict, rejecting keys it does not have and values whose
    type is not the field's (a ValueError naming the field, never a TypeError from inside)."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__} settings must be a dict, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; expected a subset of {sorted(known)}")
    check_field_types(cls, d)
    return cls(**d)


def check_field_types(cls: type, d: dict[str, Any]) -> None:
    """ValueError naming the first field of ``d`` whose value does not fit ``cls``'s annotation
    (JSON lists stand for tuples; an int for a float; never a bool for a number)."""
    hints = typing.get_type_hints(cls)
    for name, value in d.items():
        hint = hints.get(name, Any)
        if not _fits(value, hint):
            raise ValueError(f"{cls.__name__} field {name!r} must be {_type_name(hint)}, got {value!r}")


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
        return all(_fits(v, args[0]) for v in value) if args else True
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # other annotations: the config checks them itself


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


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


def check_output_path(path: str | os.PathLike | None, name: str, folder: bool = True) -> None:
    """ValueError naming the flag unless ``path`` can be created or reused as a folder (folder=True)
    or a file: no existing file where a folder is needed (itself or a parent), no folder where a
    file is. Checked before any work starts; None (a default chosen later) passes."""
    if path is None:
        return
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise ValueError(f"{name}: {str(p)!r} is an existing file, expected a folder (or a new path)")
    if not folder and p.is_dir():
        raise ValueError(f"{name}: {str(p)!r} is a folder, expected a file path")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{name}: {str(p)!r} lies under {str(parent)!r}, which is a file")
            break


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write text to path atomically (a temporary file, fsync, then rename); creates parent folders.

    A reader sees the old file or the new one, never a half-written one."""
    p = Path(path)
    check_output_path(p, "path", folder=False)
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
