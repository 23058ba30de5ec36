"""ossbench.measure.stats: the order-statistics CI of the median and the results-file summary."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ossbench.measure.stats import median_ci95, summarize
from ossbench.results import Stats


def brute_force_median_ci95(samples):
    """Largest symmetric pair of order statistics whose coverage, summed term by term, is still >= 95%."""
    x = sorted(samples)
    n = len(x)
    pmf = [math.comb(n, b) / 2**n for b in range(n + 1)]
    best = None
    for j in range(1, n // 2 + 1):  # 1-based: interval [x_(j), x_(n+1-j)]
        coverage = sum(pmf[b] for b in range(j, n + 1 - j))  # P(j <= B <= n - j)
        if coverage >= 0.95:
            best = j
    if best is None:
        return x[0], x[-1]
    return x[best - 1], x[n - best]


@pytest.mark.parametrize("n", [1, 2, 5, 6, 7, 10, 11, 20, 37, 50, 101, 256])
def test_median_ci_matches_brute_force(n):
    rng = np.random.default_rng(n)
    samples = rng.lognormal(0.0, 0.5, size=n).tolist()
    assert median_ci95(samples) == pytest.approx(brute_force_median_ci95(samples))


def test_median_ci_known_values():
    # n=10: P(B <= 1) = 11/1024 <= 2.5% < P(B <= 2), so the CI is [x_(2), x_(9)].
    assert median_ci95(list(range(1, 11))) == (2.0, 9.0)
    # Order does not matter; tiny n falls back to (min, max).
    assert median_ci95([5.0, 1.0, 3.0]) == (1.0, 5.0)
    with pytest.raises(ValueError):
        median_ci95([])


def test_median_ci_coverage_on_skewed_distribution():
    # Lognormal(0, 1): true median is exp(0) = 1. The exact-binomial CI is conservative (nominal 96.2% at n=40).
    rng = np.random.default_rng(1234)
    trials, n = 2000, 40
    draws = rng.lognormal(0.0, 1.0, size=(trials, n))
    hits = 0
    for row in draws:
        lo, hi = median_ci95(row)
        hits += lo <= 1.0 <= hi
    coverage = hits / trials
    print(f"\nCI95 coverage over {trials} lognormal draws of n={n}: {coverage:.3f}")
    assert 0.92 <= coverage <= 0.985


def test_summarize_matches_stats_model():
    samples = [1.0, 1.1, 0.9, 1.05, 0.95, 1.2, 1.0, 0.98, 1.02, 1.01, 3.0]
    s = summarize(samples, target_rel_ci=0.5)
    assert set(s) == set(Stats.model_fields)
    Stats.model_validate(s)
    assert s["n"] == len(samples)
    assert s["median"] == pytest.approx(float(np.median(samples)))
    assert s["mean"] == pytest.approx(float(np.mean(samples)))
    assert s["stdev"] == pytest.approx(float(np.std(samples, ddof=1)))
    assert (s["min"], s["max"]) == (0.9, 3.0)
    assert s["p10"] <= s["median"] <= s["p90"]
    assert s["ci95_low"] <= s["median"] <= s["ci95_high"]
    assert s["rel_ci"] == pytest.approx((s["ci95_high"] - s["ci95_low"]) / 2 / s["median"])
    assert s["converged"] is True
    assert summarize(samples, target_rel_ci=1e-6)["converged"] is False


def test_summarize_single_sample():
    s = summarize([2.5])
    assert s["n"] == 1 and s["stdev"] == 0.0 and s["ci95_low"] == s["ci95_high"] == 2.5 and s["rel_ci"] == 0.0


def test_stats_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, ossbench.measure.stats; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
