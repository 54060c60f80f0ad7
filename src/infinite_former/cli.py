"""The ``infinite-former`` command line: ``sort | lm | passkey | dialogue``.

    infinite-former sort                      # ∞-former (sticky) vs Transformer-XL, CPU, a few minutes
    infinite-former sort --preset paper       # the paper's sorting setup (GPU)
    infinite-former sort --models xl,compressive,infinite,infinite_sticky --lengths 1024,2048 --steps 500
    infinite-former sort --name mine --resume # continue an interrupted run
    infinite-former lm train | eval | finetune | inspect ...
    infinite-former passkey --model DIR --distances 512 2048
    infinite-former dialogue train | eval | chat ...

Every subcommand lives in ``experiments/`` and registers itself with ``add_parser(subparsers)``,
mapping its flags onto its typed config (``experiments/flags.py``). Bad input (a ValueError, a
missing file, a missing or corrupt checkpoint) becomes a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .experiments import dialogue, lm, passkey, probe, sort
from .training import CheckpointError

COMMANDS = (sort, lm, passkey, probe, dialogue)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infinite-former", description="The ∞-former: unbounded memory.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
