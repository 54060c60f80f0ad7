"""Command-line flags mapped onto typed configs, the same way for every subcommand.

Each experiment lists its flags as ``Flag(flag, field, type, help)``: ``add_flags`` registers them
on its parser (default None: the config's own default applies), and ``overrides`` turns the parsed
flags that were given into keyword arguments of the config, which validates them once (a bad value
is a ValueError naming the field, before anything runs). ``--set KEY=VALUE`` reaches any other field.

The memory's flags are not written by hand: ``memory_flags`` generates one per LTMConfig setting
(``--num-basis`` sets ``ltm.num_basis``; type from the field's annotation, help from its
documentation), so a new memory setting gets its flag in every command. ``MEMORY_FLAG_SPELLING`` is
the one table of settings whose flag is spelled otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch

from ..attention import SETTINGS, LTMConfig


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
    metavar: str | None = None
    const: Any = None  # with nargs="?": the value of the bare flag

    @property
    def attr(self) -> str:
        return self.dest or self.field


def on_off(text: str) -> bool:
    """on | off (also true | false, 1 | 0) -> bool: the spelling of every on/off flag."""
    choices = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}
    if text.lower() not in choices:
        raise argparse.ArgumentTypeError(f"expected on | off, got {text!r}")
    return choices[text.lower()]


PRECISION_FLAG = Flag(
    "--precision",
    "precision",
    str,
    "fp32 (default) | bf16 (autocast; the memory's ridge fit and normalisers stay float32) | auto "
    "(bf16 on CUDA and on CPUs whose bf16 matmul is measurably faster; the log says which)",
    choices=("fp32", "bf16", "auto"),
)
"""--precision for every training and evaluation command (TrainConfig.precision)."""

COMPILE_FLAG = Flag(
    "--compile",
    "compile",
    on_off,
    "torch.compile the forward of the training segments (static shapes; evaluation stays eager): "
    "--compile or --compile on; off by default. Where it pays: docs/results.md, 'Speed'",
    nargs="?",
    const=True,
    metavar="on|off",
)
"""--compile for the training commands where compiling wins (TrainConfig.compile)."""


def check_precision(precision: str) -> None:
    """ValueError unless precision is one of --precision's choices."""
    if precision not in PRECISION_FLAG.choices:
        raise ValueError(f"--precision must be one of {list(PRECISION_FLAG.choices)}, got {precision!r}")


@contextlib.contextmanager
def eval_precision(precision: str | None, device: str = "auto") -> Iterator[str]:
    """Run an eval command's body in its ``precision`` (resolved for ``device``; printed with the
    reason); yields the resolved "fp32" | "bf16" (for the results file)."""
    from ..training.precision import autocast, resolve_precision

    resolved_device = resolve_device(device)
    resolved, why = resolve_precision(precision or "fp32", resolved_device)
    print(f"precision: {resolved} ({why})")
    with autocast(resolved, resolved_device)():
        yield resolved


def add_flags(parser: argparse.ArgumentParser, flags: Iterable[Flag]) -> None:
    for f in flags:
        kw: dict[str, Any] = {"dest": f.attr, "type": f.type, "default": f.default, "help": f.help}
        if f.nargs:
            kw["nargs"] = f.nargs
        if f.const is not None:
            kw["const"] = f.const
        if f.choices:
            kw["choices"] = f.choices
        if f.metavar:
            kw["metavar"] = f.metavar
        parser.add_argument(f.flag, **kw)


def overrides(args: argparse.Namespace, flags: Iterable[Flag]) -> dict[str, Any]:
    """{config field: value} for every flag with a value (given, or with a default of its own);
    a dotted field (``ltm.num_basis``) goes into a nested dict (``{"ltm": {"num_basis": ...}}``)."""
    out: dict[str, Any] = {}
    for f in flags:
        value = getattr(args, f.attr)
        if value is not None:
            head, _, rest = f.field.partition(".")
            if rest:
                out.setdefault(head, {})[rest] = value
            else:
                out[f.field] = value
    return out


def merge(*dicts: dict[str, Any]) -> dict[str, Any]:
    """Keyword dicts merged left to right, nested dicts (``ltm``) merged key by key."""
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def flat_memory(given: dict[str, Any]) -> dict[str, Any]:
    """``{"ltm": {...}, **rest}`` -> add_memory's flat keywords (the settings beside the rest)."""
    rest = {k: v for k, v in given.items() if k != "ltm"}
    return {**rest, **given.get("ltm", {})}


# ---------------------------------------------------------------------------- the memory's flags


def sampling(text: str) -> bool:
    """``sticky`` | ``uniform`` -> LTMConfig.sticky."""
    if text not in ("sticky", "uniform"):
        raise argparse.ArgumentTypeError(f"expected sticky | uniform, got {text!r}")
    return text == "sticky"


# LTMConfig setting -> (flag, parser, help) where its flag is not the generated --<setting> one.
MEMORY_FLAG_SPELLING: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "sticky": ("--sampling", sampling, "where the M points of the old signal are sampled: sticky | uniform"),
}


def _parser_for(hint: Any) -> Callable[[str], Any]:
    """The argparse type of an LTMConfig annotation (X | None: X's; a union: the first that parses)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parsers = [_parser_for(a) for a in args]

        def first(text: str) -> Any:
            for parse in parsers:
                try:
                    return parse(text)
                except (argparse.ArgumentTypeError, ValueError):
                    continue
            raise argparse.ArgumentTypeError(f"cannot read {text!r}")

        return parsers[0] if len(parsers) == 1 else first
    if typing.get_origin(hint) is tuple:
        return float_list if args[0] is float else int_list
    return {bool: on_off, int: int, float: float}.get(
        hint, str
    )  # anything else: as text, the config checks it


def memory_flags(exclude: Iterable[str] = ()) -> list[Flag]:
    """One flag per LTMConfig setting, generated from its fields: ``--num-basis`` sets
    ``ltm.num_basis``, typed by the annotation, documented by the field's doc and paper symbol,
    default None (the host config's preset applies). Settings marked cli=False, and those in
    ``exclude`` (e.g. sticky where the memory type decides it), get none."""
    hints = typing.get_type_hints(LTMConfig)
    out = []
    for f in dataclasses.fields(LTMConfig):
        if f.name not in SETTINGS or not f.metadata.get("cli", True) or f.name in exclude:
            continue
        symbol = f.metadata.get("symbol")
        flag, parse, doc = MEMORY_FLAG_SPELLING.get(
            f.name,
            ("--" + f.name.replace("_", "-"), _parser_for(hints[f.name]), f.metadata.get("doc", f.name)),
        )
        help = f"{symbol}: {doc}" if symbol else doc
        metavar = flag.removeprefix("--").replace("-", "_").upper()
        out.append(Flag(flag, f"ltm.{f.name}", parse, help, dest=f"ltm_{f.name}", metavar=metavar))
    return out


def eval_splits(args: argparse.Namespace) -> list[str]:
    """The splits of ``--eval-splits`` (``--eval-splits ""`` or no value: none)."""
    return [split for split in getattr(args, "eval_splits", None) or [] if split]


def parse_set(items: list[str] | None, cls: type, aliases: dict[str, str] | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` overrides of a dataclass's fields, VALUE parsed as JSON when possible.
    ``ltm.NAME`` reaches a memory setting; aliases: former names -> current ones (e.g. 0.2's
    ``ltm_num_bins`` -> ``ltm.num_bins``)."""
    names = {f.name for f in fields(cls)}
    if "ltm" in names:  # a host of the memory's settings: each is reachable, the nested field is not
        names = (names - {"ltm"}) | {f"ltm.{s}" for s in SETTINGS}
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        k = (aliases or {}).get(k, k)
        if k not in names:
            raise ValueError(f"--set: unknown {cls.__name__} field {k!r}; known: {sorted(names)}")
        try:
            value = json.loads(v)
        except json.JSONDecodeError:
            value = v
        head, _, rest = k.partition(".")
        if rest:
            out.setdefault(head, {})[rest] = value
        else:
            out[k] = value
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
