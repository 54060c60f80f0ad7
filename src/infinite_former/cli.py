"""The ``infinite-former`` command line.

    infinite-former sort                      # ∞-former (sticky) vs Transformer-XL, CPU, a few minutes
    infinite-former sort --preset paper       # the paper's sorting setup (GPU)
    infinite-former sort --models xl,compressive,infinite,infinite_sticky --lengths 1024,2048 --steps 500
    infinite-former sort --name mine --resume # continue an interrupted run

Extra subcommands plug in through ``SUBCOMMANDS``: (module, function) pairs;
each module that can be imported provides ``function(subparsers)``, which adds
its parser(s) and sets ``func`` (args -> exit code) with ``set_defaults``.
A module that is absent is skipped; one that fails to import raises.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .sort_experiment import MEMORY_TYPES, SortSettings, format_table, paper_settings, run_sort_experiment

# Registrars of more subcommands: the language-model group `lm train|eval|finetune`.
SUBCOMMANDS: list[tuple[str, str]] = [("infinite_former.lm_cli", "add_lm_parser")]


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x.replace("k", "000")) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated ints (e.g. 512,1024,2k), got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _models(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [n for n in names if n not in MEMORY_TYPES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown memory type(s) {bad}; choose from {','.join(MEMORY_TYPES)}"
        )
    return names


# flag -> (SortSettings field, type, help)
_SORT_FLAGS: list[tuple[str, str, Any, str]] = [
    (
        "--models",
        "models",
        _models,
        "memory types, comma-separated (xl,compressive,infinite,infinite_sticky)",
    ),
    ("--lengths", "lengths", _int_list, "sequence lengths, comma-separated (e.g. 512,1024,2048 or 4k,8k)"),
    (
        "--train-on",
        "train_on",
        str,
        "'each': one model per length (paper) | 'mixed': one model on all lengths",
    ),
    ("--num-symbols", "num_symbols", int, "vocabulary of the sequences (paper: 20)"),
    ("--segment-len", "segment_len", int, "tokens per segment S"),
    ("--mem-len", "mem_len", int, "short-term memory (Transformer-XL mems) of the ∞-former / compressive"),
    ("--num-basis", "num_basis", int, "N, basis functions of the ∞-former's long-term memory"),
    ("--num-samples", "num_samples", int, "M, samples of the old signal per update (default N)"),
    ("--tau", "tau", float, "τ, contraction factor of the long-term memory"),
    ("--widths", "widths", _float_list, "RBF widths, comma-separated"),
    ("--ridge-lambda", "ridge_lambda", float, "λ of the ridge regression"),
    ("--num-bins", "num_bins", int, "D, bins of the sticky-memory density"),
    ("--kl-weight", "kl_weight", float, "weight of the KL regularizer"),
    ("--xl-mem-len", "xl_mem_len", int, "Transformer-XL memory (default mem_len + num_basis: equal budget)"),
    ("--cmem-len", "cmem_len", int, "compressed memory slots (default num_basis)"),
    ("--compression-rate", "compression_rate", int, "compression rate c"),
    ("--d-model", "d_model", int, "model width e"),
    ("--n-layers", "n_layers", int, "layers"),
    ("--n-heads", "n_heads", int, "attention heads H"),
    ("--d-inner", "d_inner", int, "feed-forward width"),
    ("--dropout", "dropout", float, "dropout"),
    ("--steps", "steps", int, "optimizer steps per model"),
    ("--batch-size", "batch_size", int, "sequences per step (global, over all processes)"),
    ("--lr", "lr", float, "peak learning rate (AdamW)"),
    ("--warmup", "warmup_steps", int, "linear warmup steps (then cosine decay)"),
    ("--min-lr-ratio", "min_lr_ratio", float, "final lr / peak lr of the cosine"),
    ("--clip", "clip", float, "gradient-norm clipping (0: off)"),
    ("--eval-sequences", "eval_sequences", int, "held-out test sequences per length"),
    (
        "--valid-sequences",
        "valid_sequences",
        int,
        "validation sequences per length, evaluated every --eval-every",
    ),
    ("--eval-every", "eval_every", int, "evaluate every N steps (0: at the end only)"),
    ("--ckpt-every", "ckpt_every", int, "checkpoint every N steps (0: at the end and on SIGINT/SIGTERM)"),
    ("--seed", "seed", int, "seed of data, initialisation and training"),
    ("--device", "device", str, "auto | cpu | cuda"),
    ("--threads", "threads", int, "torch CPU threads per process (0: torch default; 1 with --jobs > 1)"),
    ("--jobs", "jobs", int, "models trained at once in separate CPU processes (0: one per core)"),
    ("--out", "out", str, "output root folder"),
    ("--name", "name", str, "run name: results go to <out>/<name>/"),
]


def add_sort_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sort",
        help="the sorting task: ∞-former vs baselines at an equal memory budget",
        description="Train and test memory types on the sorting task (paper §5). With no arguments: "
        "∞-former (sticky) vs Transformer-XL on the CPU in a few minutes; writes results.json and "
        "accuracy.png under <out>/<name>/.",
    )
    p.add_argument("--preset", choices=("cpu", "paper"), default="cpu", help="base settings (default: cpu)")
    for flag, field_name, kind, help_text in _SORT_FLAGS:
        p.add_argument(flag, dest=field_name, type=kind, default=None, help=help_text)
    p.add_argument("--resume", action="store_true", help="continue <out>/<name> from its checkpoints")
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", default=None, help="no progress bars"
    )
    p.set_defaults(func=run_sort)
    return p


def sort_settings_from_args(args: argparse.Namespace) -> SortSettings:
    overrides = {f: getattr(args, f) for _, f, _, _ in _SORT_FLAGS if getattr(args, f) is not None}
    if args.progress is not None:
        overrides["progress"] = args.progress
    if args.preset == "paper":
        return paper_settings(**overrides)
    return SortSettings(**overrides)


def run_sort(args: argparse.Namespace) -> int:
    settings = sort_settings_from_args(args)  # ValueError on bad settings: before any training
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    log = (lambda m: print(m, flush=True)) if main_process else (lambda m: None)
    results = run_sort_experiment(settings, resume=args.resume, log=log)
    root = f"{settings.out}/{settings.name}"
    if not main_process:
        return 128 + signal.SIGTERM.value if results["interrupted"] else 0
    if results["interrupted"]:
        print(f"interrupted: checkpoints saved; continue with the same flags plus --resume ({root})")
        return 128 + signal.SIGTERM.value
    print()
    print(format_table(results))
    print(f"\n{results['total_seconds']:.0f} s; results: {root}/results.json, plot: {root}/accuracy.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infinite-former", description="The ∞-former: unbounded memory.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_sort_parser(sub)
    for module_name, function in SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:  # not written / not installed: skip; other import errors surface
                continue
            raise
        getattr(module, function)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        from .train import CheckpointError

        if isinstance(e, RuntimeError) and not isinstance(e, CheckpointError):
            raise
        print(f"infinite-former: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
