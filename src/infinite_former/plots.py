"""Plots for results files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping


def plot_accuracy(
    accuracy: Mapping[str, Mapping[int, float]],
    path: str | os.PathLike,
    title: str = "sorting",
    errors: Mapping[str, Mapping[int, float]] | None = None,
    chance: float | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Accuracy against sequence length, one line per model ({model: {length: acc}}); writes path.
    labels: the legend's name per model (the memory types': ``models.memory_labels()``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for model, by_len in accuracy.items():
        if not by_len:
            continue
        xs = sorted(by_len)
        ys = [by_len[x] for x in xs]
        err = [errors[model][x] for x in xs] if errors and model in errors else None
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=(labels or {}).get(model, model))
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
    ax.set_xscale("log", base=2)
    lengths = sorted({x for d in accuracy.values() for x in d})
    ax.set_xticks(lengths, [str(x) for x in lengths])
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("token accuracy on the answer")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
