"""The ``infinite-former`` command line: ``sort | lm | passkey | probe | dialogue``.

    infinite-former sort                      # ∞-former (sticky) vs Transformer-XL, CPU, a few minutes
    infinite-former sort --preset paper       # the paper's sorting setup (GPU)
    infinite-former sort --models xl,compressive,infinite,infinite_sticky --lengths 1024,2048 --steps 500
    infinite-former sort --name mine --resume # continue an interrupted run
    infinite-former lm train | eval | finetune | inspect ...
    infinite-former passkey --model DIR --distances 512 2048
    infinite-former probe passkey | niah | vt | copy --model DIR ...
    infinite-former dialogue train | eval | chat ...

Every subcommand lives in ``experiments/`` and registers itself with ``add_parser(subparsers)``,
mapping its flags onto its typed config (``experiments/flags.py``). Only the command being run is
imported, so ``infinite-former sort`` works without the Hugging Face extra installed. Bad input (a
ValueError, a missing file, a missing or corrupt checkpoint) becomes a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable, Sequence
from types import ModuleType

from .training.checkpoints import CheckpointError

# command -> (its module in experiments/, the one-line help shown before that module is imported)
COMMANDS: dict[str, tuple[str, str]] = {
    "sort": ("sort", "the sorting task: ∞-former vs Transformer-XL / Compressive at an equal memory budget"),
    "lm": ("lm", "long-document language modeling (from scratch, or GPT-2 + memory)"),
    "passkey": ("passkey", "passkey retrieval: a model with memory reads a long prompt, answers a number"),
    "probe": ("probe", "offline long-context probes (passkey, niah, vt, copy) for any causal LM"),
    "dialogue": ("dialogue", "document-grounded dialogue (CMU-DoG): GPT-2 + memory"),
}


def command_module(name: str) -> ModuleType:
    """The experiment module behind ``infinite-former NAME`` (imported on first use)."""
    if name not in COMMANDS:
        raise ValueError(f"command: expected one of {sorted(COMMANDS)}, got {name!r}")
    return importlib.import_module(f".experiments.{COMMANDS[name][0]}", __package__)


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The CLI's parser. ``commands``: the commands whose modules are imported and whose flags are
    registered (default: all); the others appear with their help line only."""
    load = set(COMMANDS) if commands is None else set(commands)
    parser = argparse.ArgumentParser(prog="infinite-former", description="The ∞-former: unbounded memory.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_line) in COMMANDS.items():
        if name in load:
            command_module(name).add_parser(sub)
        else:
            sub.add_parser(name, help=help_line, add_help=False)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the top-level parser has no options but -h)."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    parser = build_parser([command] if command else [])
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        print(f"infinite-former: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
