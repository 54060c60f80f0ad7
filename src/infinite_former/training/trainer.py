"""One training loop for every model: segments, memory carried across them, checkpoints.

Protocol. A data stream yields ``Segment``s (data/segments.py: tokens,
targets, loss_mask, a ``reset`` row mask and a ``train`` flag). The model
returns a recurrent state (``RecurrentState`` below). The trainer keeps it
across segments: ``state.reset(segment.reset)`` before and
``state.detach()`` after each one (truncated back-propagation, paper §5).
Segments with ``train=False`` run under ``torch.no_grad`` (sorting: every
segment but the last, the one holding the answer); each ``train=True``
segment back-propagates ``out.loss + out.aux_loss`` and makes exactly one
optimizer step (language modelling: every segment).

    trainer = Trainer(model, TrainConfig(...), make_train_stream, evaluators={"valid": make_valid})
    result = trainer.fit(resume=False)

``make_train_stream(shard)`` builds this process's stream: ``shard`` says the
rank, the world size and the local batch size (global batch / processes).
A stream also has ``state_dict()`` / ``load_state_dict()`` giving its position
after the last segment it yielded; the trainer saves it at step boundaries.

Features: Hugging Face Accelerate (CPU, one GPU, or DDP through
``accelerate launch`` / ``torchrun``), AdamW with linear warmup + cosine
decay, gradient clipping, precision fp32 | bf16 | auto (precision.py), optional torch.compile of the
training segments' forward (``compile``), tqdm progress bar, CSV and
TensorBoard logs, periodic evaluation, atomic checkpoints every N steps and on
SIGINT/SIGTERM (model weights in safetensors; optimizer, scheduler, RNG
states, stream position, memory state and step with torch.save, read back
with weights_only=True) and exact resumption.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..data.segments import EvalFactory, Shard, StreamFactory
from ..utils import check_int, config_from_dict, seed_everything, write_json, write_text_atomic
from .checkpoints import (
    CKPT_SUBDIR,
    LATEST,
    CheckpointError,
    fsync_dir,
    fsync_tree,
    load_checkpoint,
    load_weights,
    remove_stale_temporaries,
    rng_state,
    set_rng_state,
    to_cpu,
)
from .evaluation import evaluate
from .logs import TrainLogger
from .precision import check_precision, from_legacy_bf16, resolve_precision

# --------------------------------------------------------------------------- protocol


class RecurrentState(Protocol):
    """What the trainer needs of a model's memory state (LMState, HFMemoryState, ...).

    reset(rows) empties the rows where a new sequence starts; detach() cuts the graph between
    segments; to(device) moves it; state_dict() / from_state_dict() save it with a checkpoint
    and load it back on resume. Each returns a new state."""

    def reset(self, rows: Tensor) -> RecurrentState: ...

    def detach(self) -> RecurrentState: ...

    def to(self, device: torch.device | str) -> RecurrentState: ...

    def state_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RecurrentState: ...


# ---------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Hyperparameters of a training run, validated once.

    batch_size is the GLOBAL batch (rows per optimizer step, summed over
    processes); it must be divisible by the number of processes.
    warmup_steps: linear warmup to lr, then cosine decay to min_lr_ratio·lr at
    ``steps``. clip: max gradient norm (0 = off). eval_every / ckpt_every /
    log_every: in optimizer steps (0 = only at the end). precision: "fp32" (default) | "bf16"
    (autocast) | "auto" (bf16 on CUDA and on CPUs with fast bf16 matmuls; see precision.py).
    compile: run the model's forward on training-stream segments (no-grad passes and training
    segments) through ``torch.compile(model, dynamic=False)``; evaluation stays eager. Static
    shapes: a segment stream has few shapes, and automatic dynamic shapes made compiled steps
    slower on the CPU (benchmarks/compile_cpu.py). The same computation up to float rounding;
    random draws (sticky sampling) come from the compiled kernels' own generator, seeded from
    torch's, so a compiled run is reproducible but does not repeat an eager run's draws.
    device: "auto" | "cpu" | "cuda".
    """

    steps: int = 1000
    lr: float = 2e-4
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    clip: float = 0.25
    batch_size: int = 8
    eval_batch_size: int | None = None  # None: batch_size
    eval_every: int = 0
    ckpt_every: int = 0
    log_every: int = 10
    seed: int = 0
    out_dir: str = "runs/train"
    precision: str = "fp32"  # "auto" is opt-in until paired accuracy runs back bf16 (issue 17)
    compile: bool = False
    device: str = "auto"
    progress: bool = True
    tensorboard: bool = True
    find_unused_parameters: bool = True  # DDP: layers idle in a step (e.g. an empty memory) are fine
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, saved with checkpoints

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        for name, minimum in (("steps", 1), ("batch_size", 1), ("seed", 0)):
            check_int(name, getattr(self, name), minimum)
        for name in ("warmup_steps", "eval_every", "ckpt_every", "log_every"):
            check_int(name, getattr(self, name), 0)
        if self.eval_batch_size is not None:
            check_int("eval_batch_size", self.eval_batch_size, 1)
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be <= steps ({self.steps})")
        _check_float("lr", self.lr, lo=0.0, lo_open=True)
        _check_float("min_lr_ratio", self.min_lr_ratio, lo=0.0, hi=1.0)
        _check_float("weight_decay", self.weight_decay, lo=0.0)
        _check_float("clip", self.clip, lo=0.0)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        check_precision(self.precision)
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was requested but CUDA is not available")
        if not isinstance(self.out_dir, (str, os.PathLike)) or not str(self.out_dir):
            raise ValueError(f"out_dir must be a non-empty path, got {self.out_dir!r}")
        self.out_dir = os.fspath(self.out_dir)

    @property
    def use_cuda(self) -> bool:
        return self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, from_legacy_bf16(d))  # saved before precision existed: bf16


def _check_float(name: str, value: Any, lo: float, hi: float | None = None, lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and (hi is None or value <= hi)
    if not ok:
        bound = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def lr_lambda(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup over warmup_steps, then cosine decay to min_lr_ratio at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- trainer


@dataclass
class TrainResult:
    """What a fit() call did. losses: global mean CE per optimizer step of this call.

    train_seconds / tokens_per_s count training segments only (no evaluation or checkpointing);
    tokens are all segment tokens of all processes, no-grad segments included."""

    step: int
    losses: list[float]
    stopped_by_signal: bool
    tokens_per_s: float
    train_seconds: float
    eval_metrics: dict[str, float]
    checkpoint: str | None
    stop_signal: int | None = None  # SIGINT / SIGTERM number when stopped by a signal
    precision: str = ""  # what the run used and why (Trainer.resolve_precision)

    def summary(self) -> dict[str, Any]:
        """The fields every command's results.json reports about its training."""
        return {
            "steps": self.step,
            "train_loss_last": self.losses[-1] if self.losses else None,
            "train_seconds": self.train_seconds,
            "tokens_per_s": self.tokens_per_s,
            "checkpoint": self.checkpoint,
            "stopped_by_signal": self.stopped_by_signal,
            "stop_signal": self.stop_signal,
            "precision": self.precision,
        }


# compiled graphs per code object while a compiled run trains (torch's default: 8). Every model of
# the package shares its forward's code objects, and one model needs a graph per memory width, grad
# mode and absorption plan (about ten), so several models trained in one process need room.
COMPILE_GRAPH_LIMIT = 256


@contextlib.contextmanager
def _compile_limits(on: bool) -> Iterator[None]:
    """While a compiled run trains: room for a graph per memory width, grad mode and absorption
    plan of every model trained in this process, and an error instead of a silent fall-back to
    eager beyond it."""
    if not on:
        yield
        return
    with torch._dynamo.config.patch(
        recompile_limit=COMPILE_GRAPH_LIMIT,
        accumulated_recompile_limit=16 * COMPILE_GRAPH_LIMIT,
        fail_on_recompile_limit_hit=True,
    ):
        yield


class _SignalFlag:
    """SIGINT/SIGTERM set a flag; the loop saves and stops at the next step boundary."""

    def __init__(self) -> None:
        self.raised: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        self.raised = signum

    def __enter__(self) -> _SignalFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Train any model with the ``out, state = model(tokens, state, targets=, loss_mask=)`` interface.

    model: built and initialised by the caller (seed before building it);
    it must provide ``init_state(batch, device)``, and its output ``loss``
    (mean CE over masked positions) and ``aux_loss`` (already weighted; may be None).
    train_stream: factory Shard -> SegmentStream. evaluators: name -> factory
    Shard -> finite iterable of Segments, evaluated with evaluation.evaluate()
    every eval_every steps and at the end; final_evaluators: only at the end.
    eval_fn: optional extra evaluation, (unwrapped model, trainer) -> metrics.
    param_groups: optional model -> list of AdamW parameter groups (each may
    hold its own "lr"; the schedule scales every group).
    model_config: saved with each checkpoint (e.g. ModelConfig.to_dict()).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_stream: StreamFactory,
        evaluators: Mapping[str, EvalFactory] | None = None,
        eval_fn: Callable[[nn.Module, Trainer], dict[str, float]] | None = None,
        param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None,
        model_config: dict[str, Any] | None = None,
        final_evaluators: Mapping[str, EvalFactory] | None = None,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
        if not callable(getattr(model, "init_state", None)):
            raise ValueError("model must provide init_state(batch_size, device)")
        self.model = model
        self.config = config
        self.train_stream = train_stream
        self.evaluators = dict(evaluators or {})
        self.final_evaluators = dict(final_evaluators or {})
        self.eval_fn = eval_fn
        self.param_groups = param_groups
        self.model_config = model_config or {}
        self.accelerator: Any = None
        self.precision, self.precision_reason = resolve_precision(
            config.precision, "cuda" if config.use_cuda else "cpu"
        )

    # ------------------------------------------------------------------ setup

    def _make_accelerator(self) -> Any:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        cfg = self.config
        kwargs = [DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)]
        return Accelerator(
            cpu=not cfg.use_cuda,
            mixed_precision="bf16" if self.precision == "bf16" else "no",
            kwargs_handlers=kwargs,
            step_scheduler_with_optimizer=False,
        )

    @property
    def shard(self) -> Shard:
        acc = self.accelerator
        return Shard(acc.process_index, acc.num_processes, self.config.batch_size // acc.num_processes)

    def eval_shard(self) -> Shard:
        acc = self.accelerator
        total = self.config.eval_batch_size or self.config.batch_size
        return Shard(acc.process_index, acc.num_processes, max(total // acc.num_processes, 1))

    # --------------------------------------------------------------- fitting

    def fit(self, resume: bool | str | os.PathLike = False) -> TrainResult:
        """Train to config.steps (or until SIGINT/SIGTERM), evaluating and checkpointing.

        resume: False (fresh run), True (continue from out_dir's latest
        checkpoint) or a path (run dir or checkpoint dir). A missing or
        corrupt checkpoint raises before anything is written.
        """
        cfg = self.config
        acc = self.accelerator = self._make_accelerator()
        if cfg.batch_size % acc.num_processes:
            raise ValueError(
                f"batch_size ({cfg.batch_size}) must be divisible by the number of processes ({acc.num_processes})"
            )
        ckpt = None
        if resume:
            ckpt = load_checkpoint(cfg.out_dir if resume is True else resume, acc.process_index)
            saved = ckpt["trainer"]
            if saved["world_size"] != acc.num_processes:
                raise CheckpointError(
                    f"checkpoint {ckpt['dir']} was written by {saved['world_size']} processes, "
                    f"this run has {acc.num_processes}"
                )
            if saved["train_config"]["batch_size"] != cfg.batch_size:
                raise CheckpointError(
                    f"checkpoint {ckpt['dir']} used batch_size {saved['train_config']['batch_size']}, "
                    f"this run has {cfg.batch_size}"
                )
        else:
            seed_everything(cfg.seed + acc.process_index)
        if acc.is_main_process:
            remove_stale_temporaries(cfg.out_dir)  # left by a run killed while saving

        model = self.model
        if ckpt is not None:
            load_weights(model, ckpt["model"], ckpt["dir"])
        model.to(acc.device)
        groups = self.param_groups(model) if self.param_groups else [{"params": list(model.parameters())}]
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        )
        wrapped, optimizer = acc.prepare(model, optimizer)
        core = acc.unwrap_model(wrapped)
        if cfg.compile:  # compiled lazily, at the first segment of each shape and grad mode
            wrapped = torch.compile(wrapped, dynamic=False)
        stream = self.train_stream(self.shard)
        step = 0
        state: RecurrentState = core.init_state(self.shard.batch_size, acc.device)
        if ckpt is not None:
            optimizer.load_state_dict(ckpt["trainer"]["optimizer"])
            scheduler.load_state_dict(ckpt["trainer"]["scheduler"])
            stream.load_state_dict(ckpt["rank"]["stream"])
            state = type(state).from_state_dict(ckpt["rank"]["memory"]).to(acc.device)
            step = int(ckpt["trainer"]["step"])
            set_rng_state(ckpt["rank"]["rng"])

        logger = (
            TrainLogger(cfg.out_dir, cfg.tensorboard, acc.is_main_process, step)
            if step < cfg.steps or ckpt is None
            else None
        )
        acc.print(f"precision: {self.precision} ({self.precision_reason})")
        if cfg.compile:
            acc.print("compile: torch.compile (inductor, static shapes) for training segments")
        result = TrainResult(step, [], False, 0.0, 0.0, {}, ckpt["dir"] if ckpt else None)
        result.precision = f"{self.precision} ({self.precision_reason})"
        try:
            with _SignalFlag() as flag, _compile_limits(cfg.compile):
                self._loop(wrapped, core, optimizer, scheduler, stream, state, step, logger, flag, result)
            if result.step >= cfg.steps and not result.eval_metrics and not result.stopped_by_signal:
                # resumed from a finished run: nothing to train, but report its evaluation
                result.eval_metrics = self._evaluate(core, result.step, None, final=True)
        finally:
            if logger is not None:
                logger.close()
        return result

    def _loop(self, wrapped, core, optimizer, scheduler, stream, state, step, logger, flag, result) -> None:
        cfg, acc = self.config, self.accelerator
        params = [p for g in optimizer.param_groups for p in g["params"]]
        bar = None
        if cfg.progress and acc.is_main_process and step < cfg.steps:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=step, desc="train", dynamic_ncols=True)
        tokens = 0
        busy = 0.0  # seconds spent on training segments (not evaluation or checkpoints)
        iterator = iter(stream)
        wrapped.train()
        last_saved = result.checkpoint if step >= cfg.steps else None
        while step < cfg.steps:
            t_seg = time.perf_counter()
            try:
                segment = next(iterator).to(acc.device)
            except StopIteration:
                acc.print(f"training stream ended after {step} steps")
                break
            state = state.reset(segment.reset)
            tokens += segment.tokens.numel()
            if not segment.train:
                with torch.no_grad():
                    _, state = wrapped(segment.tokens, state)
                state = state.detach()
                busy += time.perf_counter() - t_seg
                continue
            out, state = wrapped(segment.tokens, state, targets=segment.targets, loss_mask=segment.loss_mask)
            aux = out.aux_loss if out.aux_loss is not None else torch.zeros((), device=acc.device)
            acc.backward(out.loss + aux)
            grad_norm = acc.clip_grad_norm_(params, cfg.clip) if cfg.clip > 0 else torch.zeros(())
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state = state.detach()
            step += 1
            stats = torch.stack(
                [
                    out.loss.detach().float(),
                    aux.detach().float(),
                    torch.tensor(float(flag.raised is not None)),
                ]
            ).to(acc.device)
            if acc.num_processes > 1:
                stats = acc.reduce(stats, "sum")
                stats[:2] /= acc.num_processes
            loss, aux_v, stop = float(stats[0]), float(stats[1]), float(stats[2]) > 0
            if not (math.isfinite(loss) and math.isfinite(aux_v)):  # every rank sees the reduced values
                raise FloatingPointError(
                    f"training diverged at step {step}: loss {loss}, aux loss {aux_v} (not finite); nothing "
                    f"was saved for this step (last checkpoint: {last_saved or 'none'}). Lower the learning "
                    "rate, lengthen the warmup or clip gradients, and resume from the last checkpoint."
                )
            busy += time.perf_counter() - t_seg
            result.losses.append(loss)
            tok_s = tokens * acc.num_processes / max(busy, 1e-9)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
            if logger is not None and (cfg.log_every == 0 or step % cfg.log_every == 0 or step == cfg.steps):
                logger.train(step, loss, aux_v, scheduler.get_last_lr()[0], float(grad_norm), tok_s)
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                result.eval_metrics = self._evaluate(core, step, logger, final=step == cfg.steps)
            if stop or (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == cfg.steps:
                last_saved = self.save(core, optimizer, scheduler, stream, state, step)
            if stop:
                acc.print(f"stopping on signal; checkpoint saved at step {step}: {last_saved}")
                result.stopped_by_signal = True
                result.stop_signal = int(flag.raised or signal.SIGTERM)  # (another rank's signal: TERM)
                break
        if bar is not None:
            bar.close()
        result.step = step
        result.train_seconds = busy
        result.tokens_per_s = tokens * acc.num_processes / max(busy, 1e-9)
        result.checkpoint = last_saved

    def _evaluate(
        self, core: nn.Module, step: int, logger: TrainLogger | None, final: bool
    ) -> dict[str, float]:
        acc = self.accelerator
        metrics: dict[str, float] = {}
        evaluators = {**self.evaluators, **self.final_evaluators} if final else self.evaluators
        for name, factory in evaluators.items():
            res = evaluate(
                core, factory(self.eval_shard()), acc.device, autocast=acc.autocast, reduce=_reducer(acc)
            )
            metrics.update({f"{name}/{k}": v for k, v in res.items() if isinstance(v, (int, float))})
        if self.eval_fn is not None:
            metrics.update(self.eval_fn(core, self))
        if logger is not None and metrics:
            logger.evaluation(step, metrics)
        return metrics

    # --------------------------------------------------------------- saving

    def save(self, core, optimizer, scheduler, stream, state, step: int) -> str:
        """Write checkpoints/step-XXXXXXXX atomically; the previous one is removed only afterwards."""
        from safetensors.torch import save_model

        cfg, acc = self.config, self.accelerator
        root = os.path.join(cfg.out_dir, CKPT_SUBDIR)
        name = f"step-{step:08d}"
        final = os.path.join(root, name)
        tmp = os.path.join(root, f".{name}.tmp")
        if acc.is_main_process:
            os.makedirs(root, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        acc.wait_for_everyone()
        torch.save(
            {"rng": rng_state(), "stream": stream.state_dict(), "memory": to_cpu(state.state_dict())},
            os.path.join(tmp, f"rank{acc.process_index}.pt"),
        )
        if acc.is_main_process:
            save_model(core, os.path.join(tmp, "model.safetensors"))
            torch.save(
                {
                    "step": step,
                    "world_size": acc.num_processes,
                    "train_config": cfg.to_dict(),
                    "model_config": self.model_config,
                    "optimizer": to_cpu(optimizer.state_dict()),
                    "scheduler": scheduler.state_dict(),
                },
                os.path.join(tmp, "trainer.pt"),
            )
            write_json(
                os.path.join(tmp, "config.json"),
                {"step": step, "train": cfg.to_dict(), "model": self.model_config},
            )
        acc.wait_for_everyone()
        if acc.is_main_process:
            fsync_tree(tmp)  # the files and folder are on disk before the rename makes them the checkpoint
            previous = None
            latest = os.path.join(root, LATEST)
            if os.path.isfile(latest):
                with open(latest) as f:
                    previous = f.read().strip()
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(root)
            write_text_atomic(latest, name)
            if previous and previous != name:
                shutil.rmtree(os.path.join(root, previous), ignore_errors=True)
        acc.wait_for_everyone()
        return final


def _reducer(acc: Any) -> Callable[[Tensor], Tensor] | None:
    if acc.num_processes == 1:
        return None
    return lambda t: acc.reduce(t, "sum")


__all__ = ["RecurrentState", "TrainConfig", "TrainResult", "Trainer", "lr_lambda"]
