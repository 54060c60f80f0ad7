"""Every figure of the package (matplotlib, Agg backend: no display needed): sorting accuracy by
length, and the memory-introspection figures (curves by age, sticky-sample histograms). The
functions take plain arrays; the modules that compute them (``introspection``) name the curves."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


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
    plt = _pyplot()
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class AgeCurve:
    """One line of a figure by age: ``value`` (n,) at ``age`` (n,) tokens ago; ``reference``, if
    given, is drawn as a dotted level in the line's colour and labelled ``reference_label``."""

    label: str
    age: np.ndarray
    value: np.ndarray
    reference: float | None = None
    reference_label: str = ""


def plot_by_age(
    curves: Sequence[AgeCurve],
    path: str | os.PathLike,
    *,
    ylabel: str,
    title: str,
    mem_len: int = 0,
    level: tuple[float, str] | None = None,
    ylim_bottom: float | None = None,
) -> None:
    """Curves against the age of the remembered content (log axis), with the end of the short-term
    memory (``mem_len`` tokens) marked and an optional dashed ``level`` (value, label)."""
    from matplotlib import ticker

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=120)
    for c in curves:
        (line,) = ax.plot(c.age, c.value, marker="o", ms=3, label=c.label)
        if c.reference is not None:
            ax.axhline(c.reference, color=line.get_color(), ls=":", lw=1, label=c.reference_label)
    if level is not None:
        ax.axhline(level[0], color="black", ls="--", lw=0.8, label=level[1])
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("age of the remembered content (tokens ago)")
    if mem_len:
        ax.axvline(mem_len, color="grey", ls=":", lw=1)
        ax.annotate(
            "short-term memory ends", (mem_len, 1), xycoords=("data", "axes fraction"),
            xytext=(3, -12), textcoords="offset points", fontsize=7, color="grey",
        )  # fmt: skip
    ax.grid(alpha=0.3)
    ax.set_ylabel(ylabel)
    if ylim_bottom is not None:
        ax.set_ylim(bottom=ylim_bottom)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_sample_histograms(
    panels: Sequence[tuple[str, np.ndarray]], path: str | os.PathLike, *, num_samples: int, title: str
) -> None:
    """Where sticky sampling took its M samples of the old signal: one panel per (name,
    (absorptions, D) counts), absorptions upwards, the position t on [0, 1] across."""
    plt = _pyplot()
    n = len(panels)
    fig, axes = plt.subplots(n, 1, figsize=(6, 1.0 + 2.2 * n), dpi=120, squeeze=False, sharex=True)
    for (name, hist), ax in zip(panels, axes[:, 0], strict=True):
        if not len(hist):
            ax.set_visible(False)
            continue
        im = ax.imshow(
            hist, aspect="auto", origin="lower", extent=(0, 1, 0.5, len(hist) + 0.5), cmap="viridis",
            interpolation="nearest",
        )  # fmt: skip
        ax.set_ylabel(f"{name}\nabsorption #")
        fig.colorbar(im, ax=ax, label=f"samples per bin (of M = {num_samples})")
    axes[-1, 0].set_xlabel("position t of the sample on the old signal (0 = oldest, 1 = newest)")
    axes[0, 0].set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
