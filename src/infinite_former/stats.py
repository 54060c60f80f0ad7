"""Paired statistics for comparing two models: mean difference and a bootstrap 95% CI.

Every benchmark that says "model A beats model B" goes through :func:`paired_comparison`.
The two models are evaluated on the same units (documents for language modelling, test
sequences for sorting, dialogues for dialogue) under the same seeds, so the comparison is
paired: the statistic is the mean of the per-unit differences ``a - b``, and its 95% CI comes
from a two-level bootstrap that resamples seeds and units with replacement (seeds carry the
training noise, units the test-set noise). A difference whose CI contains zero is reported as
"within noise".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _as_matrix(x: Any, name: str) -> np.ndarray:
    """(seeds, units) float64 from a (units,) or (seeds, units) array-like."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty (units,) or (seeds, units) array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def bootstrap_mean_ci(
    diffs: Any, num_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """Mean of ``diffs`` (seeds, units) and its bootstrap CI over seeds × units.

    Each resample draws S seeds and U units with replacement and takes the mean of the
    selected (seed, unit) cells; the mean of a resample is ``w_sᵀ D w_u / (S U)`` with
    multinomial count vectors w_s, w_u, so no (resamples, S, U) tensor is built.
    """
    d = _as_matrix(diffs, "diffs")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if num_resamples < 100:
        raise ValueError(f"num_resamples must be >= 100, got {num_resamples!r}")
    s, u = d.shape
    rng = np.random.default_rng(seed)
    w_seed = rng.multinomial(s, np.full(s, 1.0 / s), size=num_resamples)  # (R, S)
    w_unit = rng.multinomial(u, np.full(u, 1.0 / u), size=num_resamples)  # (R, U)
    means = ((w_seed @ d) * w_unit).sum(1) / (s * u)  # (R,)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(d.mean()), (float(lo), float(hi))


def paired_comparison(
    a: Any,
    b: Any,
    names: tuple[str, str] = ("a", "b"),
    higher_is_better: bool = True,
    num_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare two models scored on the same (seeds, units): mean of a - b, 95% CI, verdict.

    a, b: per-unit scores, shape (units,) or (seeds, units), rows in the same seed order and
    columns in the same unit order. ``verdict`` is "a better", "b better" or "within noise"
    (the CI contains 0), in the models' names.
    """
    ma, mb = _as_matrix(a, names[0]), _as_matrix(b, names[1])
    if ma.shape != mb.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must be scored on the same seeds × units, got {ma.shape} and {mb.shape}"
        )
    mean, (lo, hi) = bootstrap_mean_ci(ma - mb, num_resamples=num_resamples, seed=seed)
    if lo > 0 or hi < 0:
        a_higher = lo > 0
        verdict = f"{names[0] if a_higher == higher_is_better else names[1]} better"
    else:
        verdict = "within noise"
    return {
        "a": names[0],
        "b": names[1],
        "mean_diff": mean,
        "ci95": [lo, hi],
        "seeds": int(ma.shape[0]),
        "units": int(ma.shape[1]),
        "higher_is_better": higher_is_better,
        "verdict": verdict,
    }


def seeds_won(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True) -> int:
    """How many seeds (paired by position) a scores strictly better than b on the seed's mean."""
    if len(a) != len(b):
        raise ValueError(f"a and b must have one score per seed each, got {len(a)} and {len(b)}")
    sign = 1.0 if higher_is_better else -1.0
    return sum(1 for x, y in zip(a, b) if sign * (x - y) > 0)
