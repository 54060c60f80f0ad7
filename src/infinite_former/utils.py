"""Small shared helpers, each in one place: argument checks, config (de)serialisation, seeding,
the machine description of results files, atomic JSON writes, the main-process test."""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import platform
import random
import types
import typing
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    """Build a config dataclass from a dict, rejecting keys it does not have and values whose
    type is not the field's (a ValueError naming the field, never a TypeError from inside)."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__} settings must be a dict, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; expected a subset of {sorted(known)}")
    _check_dict_types(cls, d)
    return cls(**d)


def require_fields(d: dict[str, Any], names: list[str] | tuple[str, ...], what: str) -> None:
    """Raise ValueError naming the fields of ``names`` that ``d`` lacks (a saved config must hold them all)."""
    missing = [n for n in names if n not in d]
    if missing:
        raise ValueError(f"{what} lacks the field(s) {missing}; a saved config must hold every field")


def check_field_types(config: Any) -> None:
    """Raise ValueError naming the first dataclass field whose value does not have its annotated type.

    Understands int, float (an int is accepted and made a float), bool (never for a number), str,
    ``X | None``, tuples (a list is accepted and made a tuple), lists and dicts; other annotations
    are left to the config's own checks. config_from_dict runs the same check on a dict.
    """
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value = getattr(config, f.name)
        ok, converted = _typed(value, hints[f.name])
        if not ok:
            raise ValueError(
                f"{type(config).__name__}.{f.name} must be {_type_name(hints[f.name])}, got {value!r}"
            )
        if converted is not value:
            object.__setattr__(config, f.name, converted)


def _check_dict_types(cls: type, d: dict[str, Any]) -> None:
    """check_field_types on the values of a dict of cls's fields, before cls is built."""
    hints = typing.get_type_hints(cls)
    for name, value in d.items():
        if not _typed(value, hints.get(name, Any))[0]:
            raise ValueError(f"{cls.__name__}.{name} must be {_type_name(hints[name])}, got {value!r}")


def _typed(value: Any, hint: Any) -> tuple[bool, Any]:
    """(value fits hint, value converted: an int made a float, a list made a tuple)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for a in args:
            ok, v = _typed(value, a)
            if ok:
                return True, v
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return ok, float(value) if ok and not isinstance(value, float) else value
    if hint is str:
        return isinstance(value, str), value
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False, value
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return False, value
            items = [_typed(v, a) for v, a in zip(value, args, strict=True)]
        else:
            items = [_typed(v, args[0]) for v in value] if args else [(True, v) for v in value]
        if not all(ok for ok, _ in items):
            return False, value
        converted = [v for _, v in items]
        return True, tuple(converted) if origin is tuple else converted
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    return True, value  # other annotations: the config checks them itself


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        return f"a list of {_type_name(args[0])}" if args else "a list"
    return "None" if hint is type(None) else f"a {getattr(hint, '__name__', hint)}"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (if installed) and torch RNGs."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is optional for the core
        pass


@contextmanager
def seeded_rng(seed: int, device: torch.device | str) -> Iterator[None]:
    """Run the block with torch's global RNG (CPU, and ``device``'s if CUDA), from which sticky
    sampling draws, seeded with ``seed``; the caller's RNG state is restored afterwards."""
    dev = torch.device(device)
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        if dev.type == "cuda":
            with torch.cuda.device(dev):
                torch.cuda.manual_seed(seed)
        yield


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


def deprecated_aliases(module: str, aliases: dict[str, tuple[Any, str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for former names, ``aliases[old] = (object, new name)``:
    using an old name warns with DeprecationWarning (CHANGELOG.md lists them)."""

    def __getattr__(name: str) -> Any:
        if name not in aliases:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value, new = aliases[name]
        warnings.warn(f"{module}.{name} is deprecated: use {new}", DeprecationWarning, stacklevel=2)
        return value

    return __getattr__
