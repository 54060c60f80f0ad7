"""Checkpoints: where they are, reading them back (weights_only), RNG states.

A checkpoint is a folder ``<out_dir>/checkpoints/step-XXXXXXXX`` holding ``model.safetensors``,
``trainer.pt`` (step, configs, optimizer, scheduler), one ``rank<i>.pt`` per process (RNG states,
stream position, memory state) and ``config.json``; ``checkpoints/latest`` names the newest. The
Trainer writes them (``Trainer.save``); this module finds and reads them.
"""

from __future__ import annotations

import os
import random
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
    "CheckpointError",
    "find_checkpoint",
    "load_checkpoint",
    "load_weights",
    "rng_state",
    "set_rng_state",
]
