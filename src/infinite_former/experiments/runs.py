"""What every training command shares (``lm train``, ``lm finetune``, ``dialogue train``): typed
settings of a run (data, run folder, the training loop, resume), their flags, and the map from
parsed flags onto a settings dataclass.

A command's settings dataclass is the one home of its defaults; its parser takes them from there
(``parser.set_defaults(**defaults_of(Settings))``), so a flag is one line and the functions
(``lm_train(settings)``) can be called without argparse, as the benchmarks do.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..training import TrainConfig
from ..training.checkpoints import RESUME_OVERRIDABLE, parse_overrides
from ..utils import check_output_path
from .flags import PRECISION_FLAG, Flag, add_flags, check_precision, memory_flags, overrides

S = TypeVar("S")

# flag -> TrainConfig field, for every training command (defaults: the command's settings)
TRAIN_FLAGS: list[Flag] = [
    Flag("--batch-size", "batch_size", int, "B: parallel document lanes (global batch)"),
    Flag("--steps", "steps", int, "optimizer steps"),
    Flag("--warmup", "warmup_steps", int, "linear warmup steps", dest="warmup"),
    Flag("--weight-decay", "weight_decay", float, "AdamW weight decay"),
    Flag("--ckpt-every", "ckpt_every", int, "checkpoint every N steps (0: at the end)"),
    Flag("--log-every", "log_every", int, "log every N steps"),
    Flag("--seed", "seed", int, "seed of initialisation and training"),
    Flag("--device", "device", str, "auto | cpu | cuda", choices=("auto", "cpu", "cuda")),
    Flag("--lr", "lr", float, "peak learning rate (AdamW; fine-tuning: of the base model's weights)"),
    Flag("--clip", "clip", float, "gradient-norm clipping (0: off)"),
    PRECISION_FLAG,
]


@dataclass(frozen=True)
class RunSettings:
    """A training run: data, run folder, the training loop (TrainConfig's fields, checked when the
    command builds it), resume. ``override``: ``--override KEY=VALUE`` items (with ``resume`` only)."""

    data: str = ""
    run_dir: str = "runs/lm"
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("valid", "test")
    cache_dir: str | None = None
    batch_size: int = 8
    steps: int = 1000
    warmup: int = 100
    weight_decay: float = 0.0
    ckpt_every: int = 0
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    lr: float = 2.5e-4
    clip: float = 0.25
    precision: str = "fp32"
    resume: bool = False
    override: tuple[str, ...] = ()
    progress: bool = True
    tensorboard: bool = True
    threads: int = 0

    def __post_init__(self) -> None:
        for name in ("eval_splits", "override"):  # lists from argparse or callers: stored as tuples
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))
        if not self.data:
            raise ValueError("--data: give a corpus (a folder with train/ valid/ test/, a file, or hf:NAME)")
        check_precision(self.precision)
        parse_overrides(list(self.override), self.resume)  # --override only with --resume, known keys
        check_output_path(self.run_dir, "--run-dir")
        check_output_path(self.cache_dir, "--cache-dir")
        if self.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {self.threads}")

    @property
    def splits_to_evaluate(self) -> list[str]:
        """``eval_splits`` without empty names (``--eval-splits ""``: none)."""
        return [s for s in self.eval_splits if s]

    def changes(self) -> dict[str, Any]:
        """The ``--override`` items as {TrainConfig field or setting: value}."""
        return parse_overrides(list(self.override), self.resume)

    def with_changes(self: S, changes: dict[str, Any], flags: Iterable[Flag]) -> S:
        """These settings with ``--override`` values in place of the flags they change."""
        attrs = {f.field: f.attr for f in flags} | {"ltm_lr": "ltm_lr"}
        names = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        for key in changes:
            if key not in attrs or attrs[key] not in names:
                raise ValueError(f"--override: {key!r} is not a setting of this command")
        return dataclasses.replace(self, **{attrs[k]: v for k, v in changes.items()})  # type: ignore[type-var]

    def train_config(self, flags: Iterable[Flag], **fields: Any) -> TrainConfig:
        """TrainConfig from the training-loop settings named by ``flags``, plus per-command fields."""
        outputs = dict(out_dir=str(Path(self.run_dir)), progress=self.progress, tensorboard=self.tensorboard)
        return TrainConfig(**{**overrides(self, flags), **outputs, **fields})  # type: ignore[arg-type]


def check_steps_or_epochs(steps: int, epochs: float) -> None:
    """Fine-tuning's length: ``steps`` >= 0 (0: from ``epochs``), ``epochs`` a number > 0."""
    if not (epochs > 0 and math.isfinite(epochs)):
        raise ValueError(f"--epochs must be a number > 0, got {epochs}")
    if steps < 0:
        raise ValueError(f"--steps must be >= 0 (0: from --epochs), got {steps}")


def defaults_of(cls: type) -> dict[str, Any]:
    """{field: default} of a settings dataclass (what its parser shows when a flag is absent);
    tuples as lists (argparse's ``append`` adds to them)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def settings_from_args(cls: type[S], args: argparse.Namespace, **extra: Any) -> S:
    """A settings dataclass from parsed flags: each field from the flag of its name (``--no-X``
    sets ``X=False``); the memory's generated flags (``--num-basis``) fill the ``ltm`` dict field."""
    given: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name == "ltm":
            flags = [m for m in memory_flags() if hasattr(args, m.attr)]
            given["ltm"] = overrides(args, flags).get("ltm", {})
        elif getattr(args, f"no_{f.name}", False) is True:
            given[f.name] = False
        elif getattr(args, f.name, None) is not None:
            value = getattr(args, f.name)
            given[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**{**given, **extra})


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The flags of RunSettings (their defaults: set from the command's settings class)."""
    p.add_argument(
        "--data", required=True, help="corpus: folder with train/ valid/ test/, a folder/.txt, or hf:NAME"
    )
    p.add_argument("--run-dir", help="output folder (checkpoints, logs, results.json)")
    p.add_argument("--train-split")
    p.add_argument("--eval-splits", nargs="*", help="splits evaluated after training")
    p.add_argument("--cache-dir", help="token cache (default: <run-dir>/cache)")
    add_flags(p, TRAIN_FLAGS)
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>'s latest checkpoint")
    p.add_argument(
        "--override",
        action="append",
        metavar="KEY=VALUE",
        help=f"with --resume: change one of {', '.join(RESUME_OVERRIDABLE)} (settings must otherwise match)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--threads", type=int, help="torch CPU threads (0 = torch's default)")


__all__ = [
    "TRAIN_FLAGS",
    "RunSettings",
    "add_run_args",
    "check_steps_or_epochs",
    "defaults_of",
    "settings_from_args",
]
