"""Command-line flags mapped onto typed configs, the same way for every subcommand.

Each experiment lists its flags as ``Flag(flag, field, type, help)``: ``add_flags`` registers them
on its parser (default None: the config's own default applies), and ``overrides`` turns the parsed
flags that were given into keyword arguments of the config, which validates them once (a bad value
is a ValueError naming the field, before anything runs). ``--set KEY=VALUE`` reaches any other field.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch


@dataclass(frozen=True)
class Flag:
    """``flag`` sets config field ``field``; dest: the argparse attribute (default: field);
    default: used when the flag is absent (None: the config's own default)."""

    flag: str
    field: str
    type: Callable[[str], Any]
    help: str
    default: Any = None
    nargs: str | None = None
    dest: str | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def attr(self) -> str:
        return self.dest or self.field


PRECISION_FLAG = Flag(
    "--precision",
    "precision",
    str,
    "fp32 (default) | bf16 (autocast; the memory's ridge fit and normalisers stay float32) | auto "
    "(bf16 on CUDA and on CPUs whose bf16 matmul is measurably faster; the log says which)",
    choices=("fp32", "bf16", "auto"),
)
"""--precision for every training and evaluation command (TrainConfig.precision)."""


@contextlib.contextmanager
def eval_precision(args: argparse.Namespace) -> Iterator[None]:
    """Run an eval command's body in its --precision (resolved for --device; printed with the
    reason); ``args.precision`` becomes the resolved "fp32" | "bf16" (for the results file)."""
    from ..training.precision import autocast, resolve_precision

    device = resolve_device(getattr(args, "device", "auto"))
    args.precision, why = resolve_precision(getattr(args, "precision", None) or "fp32", device)
    print(f"precision: {args.precision} ({why})")
    with autocast(args.precision, device)():
        yield


def add_flags(parser: argparse.ArgumentParser, flags: Iterable[Flag]) -> None:
    for f in flags:
        kw: dict[str, Any] = {"dest": f.attr, "type": f.type, "default": f.default, "help": f.help}
        if f.nargs:
            kw["nargs"] = f.nargs
        if f.choices:
            kw["choices"] = f.choices
        parser.add_argument(f.flag, **kw)


def overrides(args: argparse.Namespace, flags: Iterable[Flag]) -> dict[str, Any]:
    """{config field: value} for every flag with a value (given, or with a default of its own)."""
    return {f.field: getattr(args, f.attr) for f in flags if getattr(args, f.attr) is not None}


def eval_splits(args: argparse.Namespace) -> list[str]:
    """The splits of ``--eval-splits`` (``--eval-splits ""`` or no value: none)."""
    return [split for split in getattr(args, "eval_splits", None) or [] if split]


def parse_set(items: list[str] | None, cls: type) -> dict[str, Any]:
    """``KEY=VALUE`` overrides of a dataclass's fields, VALUE parsed as JSON when possible."""
    names = {f.name for f in fields(cls)}
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if k not in names:
            raise ValueError(f"--set: unknown {cls.__name__} field {k!r}; known: {sorted(names)}")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def int_list(text: str) -> tuple[int, ...]:
    """``512,1024,2k`` -> (512, 1024, 2000)."""
    try:
        values = tuple(int(x.replace("k", "000")) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated ints (e.g. 512,1024,2k), got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` -> a torch.device (ValueError if CUDA is asked for and absent)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available")
    return torch.device(name)


def set_threads(threads: int) -> None:
    """``--threads N``: torch CPU threads (0 = torch's default)."""
    if threads < 0:
        raise ValueError(f"--threads must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)
