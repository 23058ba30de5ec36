"""Ratios of medians with a percentile bootstrap CI95: the one estimator behind every speedup ossbench
shows (`ossbench compare`, the suite's compare pairs in the terminal and the report)."""

from __future__ import annotations

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed: comparing or rendering the same results twice gives the same intervals


def bootstrap_medians(samples: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The medians of `resamples` bootstrap resamples of `samples` (n draws with replacement each), drawn
    exactly without building the resamples, so the cost is one sort, not resamples x n.

    Each draw picks sorted sample ``ceil(n * u)`` for a uniform u, so the j-th smallest of a resample is
    sorted sample ``ceil(n * U_(j))``, where U_(j), the j-th smallest of n uniforms, is Beta(j, n - j + 1).
    For odd n the median is the j = (n + 1) / 2 -th; for even n it averages the j = n / 2 -th and the next,
    U_(j+1) = U_(j) + (1 - U_(j)) * V with V ~ Beta(1, n - j) (the smallest of the n - j uniforms above
    U_(j)). The result has the same distribution as ``np.median`` of real resamples.
    """
    x = np.sort(np.asarray(samples, dtype=float))
    n = x.size
    j = (n + 1) // 2

    def pick(u: np.ndarray) -> np.ndarray:
        return x[np.clip(np.ceil(n * u).astype(np.int64) - 1, 0, n - 1)]

    u = rng.beta(j, n - j + 1, resamples)
    if n % 2:
        return pick(u)
    return (pick(u) + pick(u + (1.0 - u) * rng.beta(1, n - j, resamples))) / 2.0


def ratio_of_medians_draws(reference: np.ndarray, other: np.ndarray, rng: np.random.Generator,
                           resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, np.ndarray | None]:
    """median(other) / median(reference) and `resamples` bootstrap draws of it (None when a side has fewer
    than two samples: nothing to resample). `ratio_of_medians_ci` takes its percentiles; `ossbench.compare`
    also combines the draws of many cases into a geometric mean's interval."""
    ratio = float(np.median(other) / np.median(reference))
    if min(len(reference), len(other)) < 2:
        return ratio, None
    return ratio, bootstrap_medians(other, resamples, rng) / bootstrap_medians(reference, resamples, rng)


def ratio_of_medians_ci(reference: np.ndarray, other: np.ndarray, rng: np.random.Generator,
                        resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, tuple[float, float]]:
    """median(other) / median(reference) with a percentile bootstrap CI95.

    The two samples are resampled independently (the two-sample design), each resample's median drawn by
    `bootstrap_medians`, which keeps the cost independent of the sample count (two million samples a run
    cost one sort). Percentile rather than BCa: BCa's jackknife acceleration is unreliable for the median,
    a non-smooth statistic, and with many tied timer ticks it degenerates.
    """
    ratio, ratios = ratio_of_medians_draws(reference, other, rng, resamples)
    if ratios is None:  # one sample (a case that hit its budget): no interval exists
        return ratio, (float("nan"), float("nan"))
    lo, hi = (float(q) for q in np.percentile(ratios, [2.5, 97.5]))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        lo = hi = ratio
    return ratio, (lo, hi)


def speedup_ci(baseline: np.ndarray, candidate: np.ndarray, rng: np.random.Generator,
               resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """The percentile bootstrap CI95 of median(baseline) / median(candidate), the speedup of the candidate."""
    # ratio_of_medians_ci(reference, other) is median(other) / median(reference): the candidate is the reference.
    _, ci = ratio_of_medians_ci(np.asarray(candidate, float), np.asarray(baseline, float), rng, resamples)
    return ci
