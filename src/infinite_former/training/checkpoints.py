"""Checkpoints: where they are, reading them back (weights_only), RNG states.

A checkpoint is a folder ``<out_dir>/checkpoints/step-XXXXXXXX`` holding ``model.safetensors``,
``trainer.pt`` (step, configs, optimizer, scheduler), one ``rank<i>.pt`` per process (RNG states,
stream position, memory state) and ``config.json``; ``checkpoints/latest`` names the newest. The
Trainer writes them (``Trainer.save``); this module finds and reads them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


class CheckpointError(RuntimeError):
    """A checkpoint is missing a file, unreadable or inconsistent with the run."""


CKPT_SUBDIR = "checkpoints"
LATEST = "latest"


def find_checkpoint(path: str | os.PathLike) -> str:
    """Resolve a run directory, its checkpoints/ folder or a step folder to a step folder.

    Raises FileNotFoundError (naming the path) when there is none.
    """
    path = os.fspath(path)
    candidates = [path, os.path.join(path, CKPT_SUBDIR)]
    for c in candidates:
        if os.path.isfile(os.path.join(c, "trainer.pt")):
            return c
        latest = os.path.join(c, LATEST)
        if os.path.isfile(latest):
            with open(latest) as f:
                name = f.read().strip()
            step_dir = os.path.join(c, name)
            if not name or not os.path.isdir(step_dir):
                raise CheckpointError(f"checkpoint pointer {latest} names {name!r}, which does not exist")
            return step_dir
    raise FileNotFoundError(
        f"no checkpoint found at {path} (expected {os.path.join(path, CKPT_SUBDIR, LATEST)})"
    )


def load_checkpoint(path: str | os.PathLike, rank: int = 0) -> dict[str, Any]:
    """Read a checkpoint (CPU tensors): {'trainer': ..., 'rank': ..., 'model': state_dict, 'dir': ...}.

    Everything is loaded with weights_only=True; any failure becomes a
    CheckpointError naming the file. Nothing is written.
    """
    step_dir = find_checkpoint(path)
    files = {
        "trainer": os.path.join(step_dir, "trainer.pt"),
        "rank": os.path.join(step_dir, f"rank{rank}.pt"),
        "model": os.path.join(step_dir, "model.safetensors"),
    }
    out: dict[str, Any] = {"dir": step_dir}
    for key, file in files.items():
        if not os.path.isfile(file):
            raise CheckpointError(f"checkpoint {step_dir} is incomplete: {file} is missing")
        try:
            if key == "model":
                from safetensors.torch import load_file

                out[key] = load_file(file, device="cpu")
            else:
                out[key] = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any parse failure means a corrupt file
            raise CheckpointError(f"checkpoint file {file} is corrupt or unreadable: {e}") from e
    for required in ("step", "train_config", "optimizer", "scheduler", "world_size"):
        if required not in out["trainer"]:
            raise CheckpointError(f"checkpoint file {files['trainer']} lacks '{required}'")
    for required in ("rng", "stream", "memory"):
        if required not in out["rank"]:
            raise CheckpointError(f"checkpoint file {files['rank']} lacks '{required}'")
    return out


# --------------------------------------------------------------------------- writing safely


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every file under ``path`` and the folders themselves (before renaming it into place)."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder (its entries: a rename into it survives a crash)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(out_dir: str | os.PathLike) -> list[str]:
    """Remove ``checkpoints/.step-N.tmp`` folders left by a run killed while saving; returns them."""
    root = os.path.join(out_dir, CKPT_SUBDIR)
    if not os.path.isdir(root):
        return []
    stale = [n for n in os.listdir(root) if n.startswith(".step-") and n.endswith(".tmp")]
    for name in stale:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return stale


# --------------------------------------------------------------------------- resuming

# settings a resumed run may change, only with --override KEY=VALUE (memory settings never)
RESUME_OVERRIDABLE = (
    "lr",
    "ltm_lr",
    "steps",
    "warmup_steps",
    "min_lr_ratio",
    "weight_decay",
    "clip",
    "eval_every",
    "ckpt_every",
    "eval_batch_size",
    "precision",  # changes the numerics: refused on resume unless given with --override
)
# not settings of the run: where it writes, how it reports, derived counts
RESUME_IGNORED = (
    "out_dir",
    "progress",
    "tensorboard",
    "log_every",
    "device",
    "compile",  # how the forward runs, not what it computes (see TrainConfig.compile)
    "train_documents",
    "train_tokens",
    "examples",
)


def parse_overrides(items: list[str] | None, resume: bool) -> dict[str, Any]:
    """``--override KEY=VALUE`` items (VALUE parsed as JSON when possible); only with --resume and
    only for RESUME_OVERRIDABLE keys (ValueError naming the key otherwise)."""
    out: dict[str, Any] = {}
    if items and not resume:
        raise ValueError("--override changes a resumed run's settings: use it with --resume")
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--override: expected KEY=VALUE, got {item!r}")
        if key not in RESUME_OVERRIDABLE:
            raise ValueError(
                f"--override: {key!r} cannot change when resuming; allowed: {list(RESUME_OVERRIDABLE)}"
            )
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def resume_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], ignore: tuple[str, ...] | set[str] = ()
) -> list[str]:
    """'key: run X, now Y' for each setting (dotted; leaf names in ``ignore`` skipped) that differs."""
    a, b = _flatten(saved), _flatten(current)
    skip = set(RESUME_IGNORED) | set(ignore)
    return [
        f"{k}: run {a.get(k)!r}, now {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if k.rsplit(".", 1)[-1] not in skip and a.get(k) != b.get(k)
    ]


def check_resume(
    run: str | os.PathLike,
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    overrides: Mapping[str, Any],
    ignore: tuple[str, ...] = (),
) -> None:
    """Refuse to resume ``run`` with settings that differ from its saved ones (listing them); the
    keys in ``overrides`` (--override KEY=VALUE) may differ."""
    diff = resume_differences(saved, current, {*overrides, *ignore})
    if diff:
        raise ValueError(
            f"--resume: these settings differ from the run in {os.fspath(run)!r}: {'; '.join(diff)}. "
            f"Resume with the run's settings; {list(RESUME_OVERRIDABLE)} may change with "
            "--override KEY=VALUE, memory and model settings cannot"
        )


def exit_status(stop_signal: int | None) -> int:
    """The shell's convention for a run stopped by a signal (after saving): 128 + its number."""
    return 128 + int(stop_signal) if stop_signal else 0


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states, in weights_only-loadable types."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def is_tied(model: nn.Module, key: str, saved: Mapping[str, Tensor]) -> bool:
    """True when parameter `key` shares storage with a parameter present in `saved` (tied weights)."""
    sd = model.state_dict()
    ptr = sd[key].data_ptr()
    return any(sd[k].data_ptr() == ptr for k in saved if k in sd)


def load_weights(model: nn.Module, weights: Mapping[str, Tensor], source: str) -> None:
    """Load a checkpoint's weights strictly: every key must match, except a tied weight stored once.

    Raises CheckpointError naming `source` and the keys that are missing, unexpected or mis-shaped.
    """
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise CheckpointError(f"checkpoint {source} does not match the model: {e}") from e
    missing = [k for k in missing if not is_tied(model, k, weights)]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {source} does not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


__all__ = [
    "RESUME_OVERRIDABLE",
    "CheckpointError",
    "check_resume",
    "exit_status",
    "find_checkpoint",
    "fsync_dir",
    "fsync_tree",
    "load_checkpoint",
    "load_weights",
    "parse_overrides",
    "remove_stale_temporaries",
    "resume_differences",
    "rng_state",
    "set_rng_state",
]
