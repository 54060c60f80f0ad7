import numpy as np
import pytest

from infinite_former.stats import bootstrap_mean_ci, paired_comparison, seeds_won


def test_ci_contains_the_mean_and_shrinks_with_more_units():
    rng = np.random.default_rng(0)
    small = rng.normal(0.5, 1.0, size=(3, 20))
    large = rng.normal(0.5, 1.0, size=(3, 2000))
    m_small, (lo_s, hi_s) = bootstrap_mean_ci(small)
    m_large, (lo_l, hi_l) = bootstrap_mean_ci(large)
    assert lo_s <= m_small <= hi_s and lo_l <= m_large <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3
    assert lo_l < 0.5 < hi_l


def test_bootstrap_matches_a_naive_resampling_loop():
    rng = np.random.default_rng(1)
    d = rng.normal(size=(4, 30))
    _, (lo, hi) = bootstrap_mean_ci(d, num_resamples=4000, seed=3)
    naive = []
    r = np.random.default_rng(7)
    for _ in range(4000):
        s = r.integers(0, 4, size=4)
        u = r.integers(0, 30, size=30)
        naive.append(d[s][:, u].mean())
    nlo, nhi = np.quantile(naive, [0.025, 0.975])
    assert lo == pytest.approx(nlo, abs=0.05) and hi == pytest.approx(nhi, abs=0.05)


def test_verdicts():
    base = np.linspace(0, 1, 200)
    better = paired_comparison(base + 0.2, base, names=("inf", "xl"))
    assert better["verdict"] == "inf better" and better["mean_diff"] == pytest.approx(0.2)
    assert better["ci95"][0] == pytest.approx(0.2) and better["ci95"][1] == pytest.approx(0.2)
    lower = paired_comparison(base + 0.2, base, names=("inf", "xl"), higher_is_better=False)  # e.g. ppl
    assert lower["verdict"] == "xl better"
    rng = np.random.default_rng(0)
    noise = paired_comparison(base + rng.normal(0, 1, 200), base, names=("inf", "xl"))
    assert noise["verdict"] == "within noise" and noise["ci95"][0] < 0 < noise["ci95"][1]


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="same seeds"):
        paired_comparison([1.0, 2.0], [1.0], names=("inf", "xl"))
    with pytest.raises(ValueError, match="inf contains NaN"):
        paired_comparison([1.0, float("nan")], [1.0, 2.0], names=("inf", "xl"))
    with pytest.raises(ValueError, match="diffs must be"):
        bootstrap_mean_ci(np.zeros((2, 2, 2)))
    assert seeds_won([0.9, 0.5, 0.7], [0.8, 0.6, 0.7]) == 1
    assert seeds_won([10.0, 12.0], [11.0, 11.0], higher_is_better=False) == 1
