"""Evaluation of segment-recurrent models: loss, perplexity, accuracy, bits per byte.

- ``evaluate``: over a stream of segments, loss / perplexity / token accuracy on masked positions
  (the Trainer's periodic and final evaluation; sorting accuracy).
- ``evaluate_documents``: per-document and corpus perplexity and bits per byte of any
  ``step(tokens, state) -> (logits, state)`` over document lanes; ``evaluate_lm`` for an
  ``InfiniteFormerLM``.

The memory state is carried across the segments exactly as in training
(reset rows where ``segment.reset``), with the model in eval mode and no
gradients. Sums (not means) are accumulated so that results over several
processes combine exactly through ``reduce`` (e.g. an all-reduce sum).
Randomness of the model (sticky-memory sampling) draws from a forked, freshly
seeded RNG (``seeded_rng``), so evaluating never changes the caller's RNG streams.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import utils
from ..data.segments import Segment
from ..data.text import DocumentLanes, DocumentNLL, TokenizedCorpus


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
    with seeded_rng(device, seed):
        return _evaluate(model, segments, device, autocast, reduce, max_targets_per_row)


def seeded_rng(device: torch.device | str, seed: int) -> contextlib.AbstractContextManager[None]:
    """Run the block with torch's RNG (CPU, and the CUDA device if ``device`` is one) forked and
    seeded with ``seed``; the caller's RNG state is restored afterwards (utils.seeded_rng)."""
    return utils.seeded_rng(seed, device)


def _evaluate(model, segments, device, autocast, reduce, max_targets_per_row) -> dict[str, Any]:
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


@torch.no_grad()
def evaluate_documents(
    step: Callable[[Tensor, Any], tuple[Tensor, Any]],
    init_state: Callable[[int], Any],
    corpus: TokenizedCorpus,
    batch_size: int,
    seg_len: int,
    eos_id: int,
    device: torch.device | str = "cpu",
    max_positions: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-document and corpus perplexity and bits per byte of a segment-recurrent model.

    step(tokens (B, T), state) -> (logits (B, T, V), state); init_state(B) -> state or None.
    Each document is read once, in its own lane, from its first token, with the lane's memory
    reset at its start (``state.reset(reset)``). Sticky memories draw random (stratified) sample
    positions, so the torch RNG is seeded with ``seed`` inside a forked RNG state: evaluation is
    reproducible and leaves the caller's RNG untouched.
    """
    lanes = DocumentLanes(
        corpus, batch_size, seg_len, eos_id, loop=False, train=False, max_positions=max_positions
    )
    acc = DocumentNLL(corpus)
    t0 = time.perf_counter()
    with seeded_rng(device, seed):
        state = init_state(batch_size)
        for seg in lanes:
            seg = seg.to(device)
            if state is not None:
                state = state.reset(seg.reset)
            logits, state = step(seg.tokens, state)
            nll = F.cross_entropy(logits.float().transpose(1, 2), seg.targets, reduction="none")  # (B, T)
            acc.add(nll, seg.loss_mask, seg.doc_ids)
    out = acc.summary()
    out["seconds"] = time.perf_counter() - t0
    return out


def evaluate_lm(
    model: nn.Module, corpus: TokenizedCorpus, batch_size: int, seg_len: int, eos_id: int, device="cpu"
) -> dict[str, Any]:
    """:func:`evaluate_documents` for an ``InfiniteFormerLM`` (memory carried across segments)."""
    was_training = model.training
    model.eval()

    def step(tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        out, state = model(tokens, state)
        return out.logits, state

    try:
        return evaluate_documents(
            step,
            lambda b: model.init_state(b, device),
            corpus,
            batch_size,
            seg_len,
            eos_id,
            device,
            max_positions=model.config.max_segment_len,
        )
    finally:
        model.train(was_training)


__all__ = ["evaluate", "evaluate_documents", "evaluate_lm", "seeded_rng"]
