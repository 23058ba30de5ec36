"""Statistics of timing samples: the median with a distribution-free CI95, and the summary the results file stores.

Timing samples are skewed (a floor set by the hardware, a tail from interference), so the median is the
headline and its confidence interval comes from order statistics, which assume nothing about the shape.
No torch here: this module is used by compare/gate/report on results files as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binom

from .spec import BenchSpec  # the stopping rule's defaults live there

CI_LEVEL = 0.95
# With n samples, (min, max) covers the median with probability 1 - 2 * 0.5**n: below 95% for n <= 5,
# so for such n the CI is (min, max) and is narrower than a true 95% interval.
_MIN_N_FOR_ORDER_CI = 6


def median_ci95(samples: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Distribution-free 95% confidence interval of the median, from order statistics.

    The number of samples below the true median is Binomial(n, 1/2), so [x_(j), x_(n+1-j)] (1-based order
    statistics) covers the median with probability 1 - 2 * P(B <= j - 1). We take the largest j that keeps
    that probability >= 95% (the interval is therefore conservative: coverage >= 95%, up to a few points
    more for small n because the binomial is discrete). For n < 6 no such j exists and (min, max) is returned.
    """
    x = np.sort(np.asarray(samples, dtype=float))
    n = x.size
    if n == 0:
        raise ValueError("median_ci95 needs at least one sample")
    if n < _MIN_N_FOR_ORDER_CI:
        return float(x[0]), float(x[-1])
    tail = (1.0 - CI_LEVEL) / 2.0
    # t = largest count with P(B <= t) <= tail; then j - 1 = t, i.e. 0-based index t for the low end.
    t = int(binom.ppf(tail, n, 0.5))
    if binom.cdf(t, n, 0.5) > tail:
        t -= 1
    t = max(t, 0)
    return float(x[t]), float(x[n - 1 - t])


def relative_half_width(ci: tuple[float, float], median: float) -> float:
    """(hi - lo) / 2 / median: the ± of the CI as a fraction of the median."""
    lo, hi = ci
    if median > 0:
        return (hi - lo) / 2.0 / median
    return 0.0 if hi == lo else float("inf")


def summarize(samples_ms: Sequence[float] | np.ndarray, target_rel_ci: float = BenchSpec().target_rel_ci) -> dict:
    """The statistics stored in a results file (the fields of ``ossbench.results.Stats``), in ms.

    ``converged`` here only says whether the CI reached the target; the timer also requires its minimum
    sample count and time (see ``ossbench.measure.timer.bench``).
    """
    x = np.asarray(samples_ms, dtype=float)
    if x.size == 0:
        raise ValueError("summarize needs at least one sample")
    median = float(np.median(x))
    lo, hi = median_ci95(x)
    rel_ci = relative_half_width((lo, hi), median)
    p10, p90 = np.percentile(x, [10, 90])
    return {
        "n": int(x.size),
        "median": median,
        "mean": float(x.mean()),
        "stdev": float(x.std(ddof=1)) if x.size > 1 else 0.0,  # sample stdev
        "min": float(x.min()),
        "max": float(x.max()),
        "p10": float(p10),
        "p90": float(p90),
        "ci95_low": lo,
        "ci95_high": hi,
        "rel_ci": float(rel_ci),
        "converged": bool(rel_ci <= target_rel_ci),
    }
