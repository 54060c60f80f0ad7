"""Evaluation over a stream of segments: loss, perplexity and token accuracy on masked positions.

The memory state is carried across the segments exactly as in training
(reset rows where ``segment.reset``), with the model in eval mode and no
gradients. Sums (not means) are accumulated so that results over several
processes combine exactly through ``reduce`` (e.g. an all-reduce sum).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .train import Segment


@torch.no_grad()
def evaluate(
    model: nn.Module,
    segments: Iterable[Segment],
    device: torch.device | str = "cpu",
    *,
    autocast: Callable[[], Any] | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    max_targets_per_row: int = 0,
    seed: int | None = 0,
) -> dict[str, Any]:
    """Run `segments` through `model`; metrics over the positions in each segment's loss_mask.

    With a seed, the model's own randomness (sticky-memory sampling) draws from
    a forked, freshly seeded RNG: results are reproducible and the caller's
    RNG streams (e.g. training's) are left untouched.

    Returns {"loss": mean NLL (nats), "ppl", "accuracy" (argmax == target),
    "num_targets", "seconds"} and, if max_targets_per_row > 0,
    "accuracy_by_index": accuracy of the i-th masked position of a row in a
    segment (for sorting: the rank in the sorted answer), i < max_targets_per_row.
    """
    if seed is None:
        return _evaluate(model, segments, device, autocast, reduce, max_targets_per_row)
    dev = torch.device(device)
    fork = (
        torch.random.fork_rng(devices=[dev], device_type="cuda")
        if dev.type == "cuda"
        else torch.random.fork_rng(devices=[])
    )
    with fork:
        torch.manual_seed(seed)
        return _evaluate(model, segments, device, autocast, reduce, max_targets_per_row)


def _evaluate(model, segments, device, autocast, reduce, max_targets_per_row) -> dict[str, Any]:
    import time

    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    k = max_targets_per_row
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nll, correct, count
    by_index = torch.zeros(2, max(k, 1), dtype=torch.float64, device=device)  # correct, count
    state = None
    ctx = autocast if autocast is not None else contextlib.nullcontext
    try:
        for segment in segments:
            segment = segment.to(device)
            if state is None:
                state = model.init_state(segment.batch_size, device)
            state = state.reset(segment.reset)
            with ctx():
                out, state = model(segment.tokens, state)
            if segment.targets is None:
                continue
            mask = (
                segment.loss_mask
                if segment.loss_mask is not None
                else torch.ones_like(segment.tokens, dtype=torch.bool)
            )
            if not bool(mask.any()):
                continue
            logits = out.logits.float()[mask]  # (n, V)
            targets = segment.targets[mask]
            correct = logits.argmax(-1) == targets
            sums += torch.stack(
                [
                    F.cross_entropy(logits, targets, reduction="sum").double(),
                    correct.sum().double(),
                    torch.tensor(float(targets.numel()), dtype=torch.float64, device=device),
                ]
            )
            if k:
                index = (mask.long().cumsum(1) - 1)[mask]  # i-th masked position of its row
                keep = index < k
                by_index[0].index_add_(0, index[keep], correct[keep].double())
                by_index[1].index_add_(0, index[keep], torch.ones_like(index[keep], dtype=torch.float64))
    finally:
        model.train(was_training)
    if reduce is not None:
        sums, by_index = reduce(sums), reduce(by_index)
    count = float(sums[2])
    if count == 0:
        raise ValueError("evaluate: the segments hold no masked target positions")
    loss = float(sums[0]) / count
    result: dict[str, Any] = {
        "loss": loss,
        "ppl": math.exp(min(loss, 700.0)),
        "accuracy": float(sums[1]) / count,
        "num_targets": int(count),
        "seconds": time.perf_counter() - t0,
    }
    if k:
        result["accuracy_by_index"] = (by_index[0] / by_index[1].clamp_min(1)).tolist()
    return result
