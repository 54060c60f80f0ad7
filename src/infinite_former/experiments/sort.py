"""The sorting experiment (paper §5): train memory types at an equal memory budget, test per length.

    settings = SortSettings(models=("infinite_sticky", "xl"), lengths=(512, 1024, 2048), ...)
    results = run_sort_experiment(settings)      # dict, also written to <out>/<name>/results.json

Memory budget (vectors per layer, equal for all types): with short-term
memory mem_len and N = num_basis,
  xl:                mem_len + N past hidden states (``xl_mem_len``),
  compressive:       mem_len + cmem_len (= N) compressed slots, rate c,
  infinite(_sticky): mem_len + an LTM of N basis functions (M samples).

Training per length (``train_on="each"``, the paper's protocol) or one model
per type on batches cycling through all lengths (``train_on="mixed"``,
cheaper on a CPU); both test every model on held-out sequences (split
"test") of each length.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from ..attention import FORMAT_VERSION, LTM_DEFAULTS_02, LTMConfig, host_ltm, legacy_keywords, read_host_dict
from ..data.sorting import SortingConfig, SortingGenerator, SortingStream
from ..models import MEMORY_TYPES, InfiniteFormerLM, ModelConfig, memory_labels
from ..training import TrainConfig, Trainer, find_checkpoint
from ..training.checkpoints import exit_status
from ..training.precision import check_precision, from_legacy_bf16
from ..utils import (
    check_int,
    check_output_path,
    config_from_dict,
    is_main_process,
    machine_info,
    seed_everything,
    write_json,
)
from .flags import COMPILE_FLAG, PRECISION_FLAG, Flag, add_flags, int_list, memory_flags, merge, overrides

# The sort preset of the memory's settings (the CPU demo: N = 32, M = N, τ = 0.75); 0.2 held seven
# of them flat under these names, the rest were LTMConfig's 0.2 defaults.
LTM_PRESET: dict[str, Any] = {"num_basis": 32, "tau": 0.75, "widths": (0.01, 0.05), "ridge_lambda": 1.0}
LEGACY_02: dict[str, str] = {
    k: k for k in ("num_basis", "num_samples", "tau", "widths", "ridge_lambda", "num_bins", "kl_weight")
}
DEFAULTS_02: dict[str, Any] = {**LTM_DEFAULTS_02, **LTM_PRESET, "num_samples": None}


@legacy_keywords(LEGACY_02, DEFAULTS_02)
@dataclass
class SortSettings:
    """Everything the sorting experiment needs; validated once (ValueError names the field).

    The defaults are the CPU demo (`infinite-former sort` with no flags): 4 symbols, lengths
    128/256/512, segments of 32, STM 32 + N = 32 (XL: 64 memories), a 2-layer d=64 model, 800
    steps of batch 16 on batches cycling through the lengths, both models trained at once (one
    process and one thread per model). paper_settings() holds the paper's configuration.
    ltm: the memory's settings (an LTMConfig, or a dict of its settings over LTM_PRESET); each
    model's memory type decides its ``sticky``.
    """

    models: tuple[str, ...] = ("infinite_sticky", "xl")
    lengths: tuple[int, ...] = (128, 256, 512)
    train_on: str = "mixed"  # "each": a model per length | "mixed": one model per type, all lengths
    num_symbols: int = 4
    segment_len: int = 32
    mem_len: int = 32
    ltm: LTMConfig = field(default_factory=lambda: LTMConfig(**LTM_PRESET))
    xl_mem_len: int | None = None  # None: mem_len + N (equal budget)
    cmem_len: int | None = None  # None: N
    compression_rate: int = 2
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_inner: int = 128
    dropout: float = 0.0
    steps: int = 800
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int | None = None  # None: steps // 10
    min_lr_ratio: float = 0.0
    clip: float = 1.0
    eval_sequences: int = 256
    valid_sequences: int = 0
    eval_every: int = 0
    ckpt_every: int = 0
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | auto (training/precision.py)
    compile: bool = False  # torch.compile the training segments (TrainConfig.compile)
    threads: int = 0  # 0: torch default (1 per process when jobs > 1)
    jobs: int = 0  # models trained at once in separate processes (CPU); 0: one per core, up to #runs
    out: str = "runs"
    name: str = "sort"
    progress: bool = True

    def __post_init__(self) -> None:
        self.ltm = host_ltm(self.ltm, LTM_PRESET, "ltm")
        self.models = tuple(self.models)
        self.lengths = tuple(self.lengths)
        if not self.models:
            raise ValueError("models must name at least one memory type")
        bad = [m for m in self.models if m not in MEMORY_TYPES]
        if bad:
            raise ValueError(f"models: unknown memory type(s) {bad}; expected some of {list(MEMORY_TYPES)}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models has duplicates: {list(self.models)}")
        if not self.lengths:
            raise ValueError("lengths must name at least one sequence length")
        for n in self.lengths:
            check_int("lengths", n, 1)
        if self.train_on not in ("each", "mixed"):
            raise ValueError(f"train_on must be 'each' or 'mixed', got {self.train_on!r}")
        if self.segment_len < self.num_symbols:
            raise ValueError(
                f"segment_len ({self.segment_len}) must be >= num_symbols ({self.num_symbols}): "
                "the whole answer must sit in the last segment"
            )
        check_precision(self.precision)
        check_int("eval_sequences", self.eval_sequences, 1)
        for name in ("threads", "valid_sequences", "jobs"):
            check_int(name, getattr(self, name), 0)
        if not self.name or os.sep in self.name:
            raise ValueError(f"name must be a non-empty folder name, got {self.name!r}")
        # Build every config once so that a bad value fails here, before any training.
        SortingConfig(length=max(self.lengths), num_symbols=self.num_symbols, seed=self.seed)
        for m in self.models:
            self.model_config(m)
        self.train_config("check")

    # ------------------------------------------------------------- derived configs

    @property
    def vocab_size(self) -> int:
        return self.num_symbols + 2

    def memory_budget(self) -> dict[str, Any]:
        """Vectors per layer each memory type may keep (the equal-budget rule, each type's own)."""
        rules = dict.fromkeys(kind.budget_rule for kind in MEMORY_TYPES.values())  # in order, once each
        record = {"rule": "; ".join(rules)}
        for name, kind in MEMORY_TYPES.items():
            record[name] = kind.budget_record(self.model_fields(name))
        return record

    def model_config(self, memory_type: str) -> ModelConfig:
        return ModelConfig(**self.model_fields(memory_type))

    def model_fields(self, memory_type: str) -> dict[str, Any]:
        """The ModelConfig fields of memory_type's model (not validated: see model_config)."""
        kw: dict[str, Any] = dict(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_inner=self.d_inner,
            dropout=self.dropout,
            memory_type=memory_type,
            mem_len=self.mem_len,
            cmem_len=self.cmem_len or self.ltm.num_basis,
            compression_rate=self.compression_rate,
            ltm=self.ltm,  # sticky: ModelConfig sets it from the memory type
        )
        kw.update(
            MEMORY_TYPES[memory_type].equal_budget(self.mem_len, self.ltm.num_basis)
        )  # mem_len + N each
        if self.cmem_len:  # explicit sizes win over the rule
            kw["cmem_len"] = self.cmem_len
        if memory_type == "xl" and self.xl_mem_len:
            kw["mem_len"] = self.xl_mem_len
        return kw

    def train_config(self, run: str) -> TrainConfig:
        return TrainConfig(
            steps=self.steps,
            lr=self.lr,
            warmup_steps=self.steps // 10 if self.warmup_steps is None else self.warmup_steps,
            min_lr_ratio=self.min_lr_ratio,
            clip=self.clip,
            batch_size=self.batch_size,
            eval_every=self.eval_every,
            ckpt_every=self.ckpt_every,
            log_every=10,
            seed=self.seed,
            out_dir=os.path.join(self.out, self.name, run),
            device=self.device,
            precision=self.precision,
            compile=self.compile,
            progress=self.progress,
        )

    def effective_jobs(self) -> int:
        """Processes to train in: 1 on CUDA or under torchrun/accelerate (WORLD_SIZE set)."""
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if distributed or self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available()):
            return 1
        jobs = self.jobs or (os.cpu_count() or 1)
        return max(1, min(jobs, len(self.runs())))

    def runs(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """(run folder, memory type, training lengths) for every model to train."""
        if self.train_on == "mixed":
            return [(m, m, self.lengths) for m in self.models]
        return [(f"{m}-L{n}", m, (n,)) for m in self.models for n in self.lengths]

    def to_dict(self) -> dict[str, Any]:
        """The saved form: the format version, the settings, the memory's nested under ``ltm``."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "ltm"}
        d["models"], d["lengths"] = list(self.models), list(self.lengths)
        return {"format_version": FORMAT_VERSION, **d, "ltm": self.ltm.settings()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SortSettings:
        """Read saved settings (format 0.3, or 0.2 converted; the pre-precision ``bf16`` setting
        becomes ``precision``); every field must be there."""
        if isinstance(d, dict):
            d = from_legacy_bf16(d)
            d.setdefault("compile", False)  # saved before the setting existed: eager
        d = read_host_dict(d, [f.name for f in fields(cls)], LEGACY_02, DEFAULTS_02, "SortSettings")
        return config_from_dict(cls, d)


def paper_settings(**overrides: Any) -> SortSettings:
    """The paper's sorting configuration (§5), for GPUs: 3 layers, d 300, 6 heads, d_inner 300,
    segment = STM = 1024, N = M = 512, τ = 0.75, lengths 4k/8k/16k, 20k steps, batch 8,
    lr 2e-4 cosine, clip 0.25, dropout 0.1. Budget: XL 1536 = 1024 + 512 memories."""
    base = dict(
        lengths=(4000, 8000, 16000),
        train_on="each",
        num_symbols=20,
        segment_len=1024,
        mem_len=1024,
        ltm=dict(num_basis=512, num_samples=512),
        d_model=300,
        n_layers=3,
        n_heads=6,
        d_inner=300,
        dropout=0.1,
        steps=20000,
        batch_size=8,
        lr=2e-4,
        warmup_steps=0,
        clip=0.25,
        eval_sequences=800,
        ckpt_every=1000,
        name="sort-paper",
    )
    return SortSettings(**merge(base, overrides))


# ------------------------------------------------------------------------- running


def _streams(s: SortSettings, lengths: tuple[int, ...], split: str, num_batches: int | None = None):
    sources = [
        SortingGenerator(SortingConfig(length=n, num_symbols=s.num_symbols, seed=s.seed, split=split))
        for n in lengths
    ]
    return lambda shard: SortingStream(sources, s.segment_len, shard, num_batches=num_batches)


def train_and_test(
    s: SortSettings, run: str, memory_type: str, train_lengths: tuple[int, ...], resume: bool
) -> dict:
    """Train one model and test it at every length of the settings; returns its results."""
    cfg = s.model_config(memory_type)
    tcfg = s.train_config(run)
    seed_everything(s.seed)
    model = InfiniteFormerLM(cfg)
    eval_batches = max(1, math.ceil(s.eval_sequences / s.batch_size))
    evaluators = {f"test_{n}": _streams(s, (n,), "test", eval_batches) for n in s.lengths}
    if s.valid_sequences:
        vb = max(1, math.ceil(s.valid_sequences / s.batch_size))
        evaluators.update({f"valid_{n}": _streams(s, (n,), "valid", vb) for n in train_lengths})
    valid = {k: v for k, v in evaluators.items() if k.startswith("valid_")}
    test = {k: v for k, v in evaluators.items() if k.startswith("test_")}
    trainer = Trainer(
        model,
        tcfg,
        _streams(s, train_lengths, "train"),
        valid,
        model_config=cfg.to_dict(),
        final_evaluators=test,
    )
    resume_from: bool | str = False
    if resume:
        try:
            resume_from = find_checkpoint(tcfg.out_dir)
        except FileNotFoundError:
            resume_from = False  # this run had not saved anything yet: start it
    res = trainer.fit(resume=resume_from)
    out = {
        "memory_type": memory_type,
        "train_lengths": list(train_lengths),
        "steps": res.step,
        "stopped_by_signal": res.stopped_by_signal,
        "stop_signal": res.stop_signal,
        "train_seconds": res.train_seconds,
        "tokens_per_s": res.tokens_per_s,
        "final_train_loss": res.losses[-1] if res.losses else None,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "test": {
            str(n): {
                "accuracy": res.eval_metrics.get(f"test_{n}/accuracy"),
                "loss": res.eval_metrics.get(f"test_{n}/loss"),
                "num_targets": res.eval_metrics.get(f"test_{n}/num_targets"),
            }
            for n in s.lengths
        },
        "run_dir": tcfg.out_dir,
    }
    return out


def run_sort_experiment(s: SortSettings, resume: bool = False, log=print) -> dict[str, Any]:
    """Train and test every (model, length); write results.json and accuracy.png under out/name."""
    root = os.path.join(s.out, s.name)
    if resume and not os.path.isdir(root):
        raise FileNotFoundError(f"--resume: run folder {root} does not exist")
    t0 = time.perf_counter()
    jobs = s.effective_jobs()
    if jobs > 1:
        runs, stop_signal = _train_in_parallel(s, resume, jobs, log)
    else:
        if s.threads:
            torch.set_num_threads(s.threads)
        runs, stop_signal = {}, None
        for run, memory_type, train_lengths in s.runs():
            log(f"[sort] training {run} ({memory_type}, lengths {list(train_lengths)}, {s.steps} steps)")
            runs[run] = train_and_test(s, run, memory_type, train_lengths, resume)
            if runs[run]["stopped_by_signal"]:
                stop_signal = runs[run]["stop_signal"] or signal.SIGTERM.value
                break
    interrupted = stop_signal is not None
    accuracy: dict[str, dict[str, float | None]] = {m: {} for m in s.models}
    for r in runs.values():
        for n, v in r["test"].items():
            if s.train_on == "mixed" or [int(n)] == r["train_lengths"]:
                accuracy[r["memory_type"]][n] = v["accuracy"]
    results = {
        "machine": machine_info(),
        "settings": s.to_dict(),
        "memory_budget": s.memory_budget(),
        "metric": "token accuracy on the num_symbols answer positions (teacher forcing), test split",
        "accuracy": accuracy,
        "runs": runs,
        "interrupted": interrupted,
        "stop_signal": stop_signal,
        "total_seconds": time.perf_counter() - t0,
    }
    if is_main_process():
        write_json(os.path.join(root, "results.json"), results)
        if not interrupted:
            from ..plots import plot_accuracy

            plot_accuracy(
                {m: {int(n): a for n, a in d.items() if a is not None} for m, d in accuracy.items()},
                os.path.join(root, "accuracy.png"),
                title=f"sorting, {s.num_symbols} symbols ({s.steps} steps, batch {s.batch_size})",
                chance=None,
                labels=memory_labels(),
            )
    return results


def _worker(s: SortSettings, run: str, memory_type: str, lengths: tuple[int, ...], resume: bool) -> dict:
    torch.set_num_threads(s.threads or 1)
    return train_and_test(s, run, memory_type, lengths, resume)


def _train_in_parallel(s: SortSettings, resume: bool, jobs: int, log) -> tuple[dict[str, Any], int | None]:
    """Train the runs in `jobs` spawned processes (one thread each unless --threads says otherwise).
    Returns the runs and the signal that stopped them (None: all finished).

    SIGTERM to this process is forwarded to the workers; SIGINT (Ctrl-C) reaches them from the
    terminal. Each worker then checkpoints at its next step boundary; runs not yet started are
    cancelled. Progress bars are off in workers (their output would interleave).
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    worker_settings = replace(s, progress=False)
    stop: dict[str, int | None] = {"raised": None}  # the signal this process received
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {}
        for run, memory_type, lengths in s.runs():
            log(
                f"[sort] training {run} ({memory_type}, lengths {list(lengths)}, {s.steps} steps) in a worker"
            )
            futures[run] = pool.submit(_worker, worker_settings, run, memory_type, lengths, resume)

        def handle(signum, frame):
            stop["raised"] = int(signum)
            for f in futures.values():
                f.cancel()
            if signum == signal.SIGTERM:
                for proc in list(getattr(pool, "_processes", {}).values()):
                    if proc.is_alive():
                        os.kill(proc.pid, signal.SIGTERM)

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            runs: dict[str, Any] = {}
            for run, f in futures.items():
                if f.cancelled():
                    continue
                runs[run] = f.result()
                log(
                    f"[sort] finished {run}: {runs[run]['steps']} steps in {runs[run]['train_seconds']:.0f} s"
                )
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
    stopped = [r.get("stop_signal") or signal.SIGTERM.value for r in runs.values() if r["stopped_by_signal"]]
    if stop["raised"] is not None:
        return runs, stop["raised"]
    if stopped or len(runs) < len(futures):
        return runs, stopped[0] if stopped else signal.SIGTERM.value
    return runs, None


def format_table(results: dict[str, Any]) -> str:
    """Accuracy table: one row per model, one column per length."""
    acc = results["accuracy"]
    lengths = sorted({int(n) for d in acc.values() for n in d})
    head = f"{'model':<18}" + "".join(f"{n:>10}" for n in lengths)
    lines = [head, "-" * len(head)]
    for m, d in acc.items():
        cells = "".join(f"{d[str(n)]:>10.3f}" if d.get(str(n)) is not None else f"{'-':>10}" for n in lengths)
        lines.append(f"{m:<18}{cells}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def _models(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [n for n in names if n not in MEMORY_TYPES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown memory type(s) {bad}; choose from {','.join(MEMORY_TYPES)}"
        )
    return names


# flag -> SortSettings field
SORT_FLAGS: list[Flag] = [
    Flag(
        "--models",
        "models",
        _models,
        "memory types, comma-separated (xl,compressive,infinite,infinite_sticky)",
    ),
    Flag("--lengths", "lengths", int_list, "sequence lengths, comma-separated (e.g. 512,1024,2048 or 4k,8k)"),
    Flag(
        "--train-on",
        "train_on",
        str,
        "'each': one model per length (paper) | 'mixed': one model on all lengths",
    ),
    Flag("--num-symbols", "num_symbols", int, "vocabulary of the sequences (paper: 20)"),
    Flag("--segment-len", "segment_len", int, "tokens per segment S"),
    Flag(
        "--mem-len", "mem_len", int, "short-term memory (Transformer-XL mems) of the ∞-former / compressive"
    ),
    *memory_flags(exclude=("sticky",)),  # the memory type decides sticky
    Flag(
        "--xl-mem-len", "xl_mem_len", int, "Transformer-XL memory (default mem_len + num_basis: equal budget)"
    ),
    Flag("--cmem-len", "cmem_len", int, "compressed memory slots (default num_basis)"),
    Flag("--compression-rate", "compression_rate", int, "compression rate c"),
    Flag("--d-model", "d_model", int, "model width e"),
    Flag("--n-layers", "n_layers", int, "layers"),
    Flag("--n-heads", "n_heads", int, "attention heads H"),
    Flag("--d-inner", "d_inner", int, "feed-forward width"),
    Flag("--dropout", "dropout", float, "dropout"),
    Flag("--steps", "steps", int, "optimizer steps per model"),
    Flag("--batch-size", "batch_size", int, "sequences per step (global, over all processes)"),
    Flag("--lr", "lr", float, "peak learning rate (AdamW)"),
    Flag("--warmup", "warmup_steps", int, "linear warmup steps (then cosine decay)"),
    Flag("--min-lr-ratio", "min_lr_ratio", float, "final lr / peak lr of the cosine"),
    Flag("--clip", "clip", float, "gradient-norm clipping (0: off)"),
    Flag("--eval-sequences", "eval_sequences", int, "held-out test sequences per length"),
    Flag(
        "--valid-sequences",
        "valid_sequences",
        int,
        "validation sequences per length, evaluated every --eval-every",
    ),
    Flag("--eval-every", "eval_every", int, "evaluate every N steps (0: at the end only)"),
    Flag("--ckpt-every", "ckpt_every", int, "checkpoint every N steps (0: at the end and on SIGINT/SIGTERM)"),
    Flag("--seed", "seed", int, "seed of data, initialisation and training"),
    Flag("--device", "device", str, "auto | cpu | cuda"),
    PRECISION_FLAG,
    COMPILE_FLAG,
    Flag("--threads", "threads", int, "torch CPU threads per process (0: torch default; 1 with --jobs > 1)"),
    Flag("--jobs", "jobs", int, "models trained at once in separate CPU processes (0: one per core)"),
    Flag("--out", "out", str, "output root folder"),
    Flag("--name", "name", str, "run name: results go to <out>/<name>/"),
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
    add_flags(p, SORT_FLAGS)
    p.add_argument("--resume", action="store_true", help="continue <out>/<name> from its checkpoints")
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", default=None, help="no progress bars"
    )
    p.set_defaults(func=run_sort)
    return p


def sort_settings_from_args(args: argparse.Namespace) -> SortSettings:
    given = overrides(args, SORT_FLAGS)
    if args.progress is not None:
        given["progress"] = args.progress
    if args.preset == "paper":
        return paper_settings(**given)
    return SortSettings(**given)


def run_sort(args: argparse.Namespace) -> int:
    settings = sort_settings_from_args(args)  # ValueError on bad settings: before any training
    check_output_path(os.path.join(settings.out, settings.name), "--out")
    main_process = is_main_process()  # under torchrun only rank 0 reports
    log = (lambda m: print(m, flush=True)) if main_process else (lambda m: None)
    results = run_sort_experiment(settings, resume=args.resume, log=log)
    root = f"{settings.out}/{settings.name}"
    if not main_process:
        return exit_status(results["stop_signal"])
    if results["interrupted"]:
        print(f"interrupted: checkpoints saved; continue with the same flags plus --resume ({root})")
        return exit_status(results["stop_signal"])  # 130 on SIGINT, 143 on SIGTERM
    print()
    print(format_table(results))
    print(f"\n{results['total_seconds']:.0f} s; results: {root}/results.json, plot: {root}/accuracy.png")
    return 0


add_parser = add_sort_parser  # every experiment module offers add_parser(subparsers) to cli.py

__all__ = [
    "SortSettings",
    "add_parser",
    "format_table",
    "paper_settings",
    "run_sort_experiment",
    "train_and_test",
]
