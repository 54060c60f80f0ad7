"""Where saved things come from: model fingerprints and reading saved files safely.

A memory state is only meaningful to the model that made it: the same architecture, hidden
size (e), heads (H), N basis functions, memory layers and update schedule (τ, block length L).
A saved state records that *fingerprint* (a flat dict of JSON values); loading or feeding it to
another model is refused with a message naming both. Files that cannot be read (truncated,
garbage, empty, a directory) give one ValueError line naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")

Fingerprint = dict[str, Any]  # JSON values only: str, int, float, bool, None, lists of them


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """'key: saved != current' for each key where the two fingerprints differ."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} != {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def check_fingerprint(
    saved: Mapping[str, Any] | None, current: Mapping[str, Any], what: str = "the memory state"
) -> None:
    """ValueError naming both models unless ``saved`` (None: made before fingerprints) matches."""
    if saved is None:
        return
    if not isinstance(saved, Mapping):
        raise ValueError(f"{what} has a malformed model fingerprint: {type(saved).__name__}")
    diff = fingerprint_differences(saved, current)
    if diff:
        raise ValueError(
            f"{what} was made by another model: made by {_name(saved)}, given to {_name(current)} "
            f"(saved != this model: {'; '.join(diff)})"
        )


def _name(fp: Mapping[str, Any]) -> str:
    arch = fp.get("architecture", "?")
    return f"{arch} (e={fp.get('hidden_size')}, H={fp.get('num_heads')}, N={fp.get('num_basis')})"


def encode_fingerprint(fp: Mapping[str, Any]) -> Tensor:
    """A fingerprint as a uint8 tensor of its JSON (so a state dict stays a dict of tensors)."""
    return torch.tensor(list(json.dumps(dict(fp), sort_keys=True).encode()), dtype=torch.uint8)


def decode_fingerprint(t: Any) -> Fingerprint | None:
    """Inverse of encode_fingerprint (None stays None); ValueError for anything else."""
    if t is None:
        return None
    try:
        fp = json.loads(bytes(t.detach().cpu().to(torch.uint8).tolist()).decode())
        if not isinstance(fp, dict):
            raise ValueError(f"a {type(fp).__name__}")
    except Exception as err:  # noqa: BLE001 - any malformed entry: one clear error
        raise ValueError(f"the state's model fingerprint is malformed: {_first_line(err)}") from None
    return fp


def load_torch_file(
    path: str | os.PathLike, map_location: torch.device | str | None = None, what: str = "state"
) -> dict[str, Any]:
    """torch.load(weights_only=True) of a saved dict; any failure is one ValueError naming the file."""
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, garbage, empty, missing: one clear line
        raise ValueError(f"cannot read {what} file {os.fspath(path)}: {_first_line(err)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} file {os.fspath(path)} holds a {type(data).__name__}, not a saved {what}")
    return data


def load_state_file(
    path: str | os.PathLike,
    from_state_dict: Callable[[dict[str, Any]], T],
    map_location: torch.device | str | None = None,
    what: str = "memory state",
) -> T:
    """``from_state_dict`` of a dict saved with torch.save; an unreadable file or a malformed
    state is one ValueError naming the file."""
    d = load_torch_file(path, map_location, what)
    try:
        return from_state_dict(d)
    except ValueError as err:
        raise ValueError(f"{os.fspath(path)}: {err}") from None


def load_safetensors_file(path: str | os.PathLike, what: str = "weights") -> dict[str, Tensor]:
    """The tensors of a safetensors file, all finite; else one ValueError naming the file."""
    try:
        from safetensors.torch import load_file  # the core needs torch alone; safetensors only here

        tensors = load_file(os.fspath(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, ...: one clear line
        raise ValueError(f"cannot read {what} file {os.fspath(path)}: {_first_line(err)}") from None
    check_finite(tensors, f"{what} file {os.fspath(path)}")
    return tensors


def check_finite(tensors: Mapping[str, Tensor], source: str) -> None:
    """ValueError naming the first tensors holding NaN or ±inf."""
    bad = [
        k
        for k, t in tensors.items()
        if isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise ValueError(f"{source} holds non-finite values (NaN or inf) in {sorted(bad)[:5]}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


__all__ = [
    "Fingerprint",
    "check_finite",
    "check_fingerprint",
    "decode_fingerprint",
    "encode_fingerprint",
    "fingerprint_differences",
    "load_safetensors_file",
    "load_state_file",
    "load_torch_file",
]
