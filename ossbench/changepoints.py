"""Change points in one case's medians over successive runs: where the level moved, by how much, how sure.

The unit is a run's median (one number per run), not the run's samples: run-to-run variation on a CI
machine (another host, clocks, a driver update) is larger than what the samples of one run show, so only
runs can tell a real change from it. Detection works on log medians (a 10% slowdown is the same step at
1 µs and at 1 s) in two stages:

1. Candidates: PELT (`ruptures`, least-squares cost, exact) with a penalty of ``PENALTY_FACTOR * sigma^2 * ln(n)``,
   where sigma is the run-to-run noise estimated robustly from the differences of successive medians (a
   step moves one difference, so it barely moves their MAD). A segment of one run inside the history is
   an outlier run, not a level: its start is dropped. The latest run is always a candidate, so a change
   can be seen the first time it shows.
2. Validation: each candidate is tested between the runs since the previous change and the runs up to the
   next one (at most ``window`` each side): Student's t-test on the log medians, two-sided (a single run after
   the change is allowed: the pooled variance comes from the runs before). A candidate stays when p < alpha
   AND the ratio of medians moved by at least ``min_change``; otherwise the weakest is dropped and its
   neighbours re-tested, until every remaining change passes.

The p-value is of the test at a place chosen by the search, so it is optimistic as a p-value; the rates
of false alarms and of detection on synthetic histories (`ossbench.history_synth`, docs/history.md) are
what say how far to trust it. The ratio's CI95 is the percentile bootstrap of the ratio of medians
(`ossbench.bootstrap`, the run medians as samples), absent while one side holds a single run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .bootstrap import BOOTSTRAP_SEED, ratio_of_medians_ci
from .errors import UserError

PENALTY_FACTOR = 3.0  # 2, 3 and 5 give about the same rates on synthetic histories (validation decides; docs/history.md)
MIN_SEGMENT = 2  # runs: a lone outlier run inside a history is not a level of its own
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
SIGMA_FLOOR = 1e-4  # log units (0.01%): identical medians (timer ticks) must not make every wobble "certain"
DEFAULT_ALPHA = 0.01
DEFAULT_WINDOW = 20  # runs each side of a change that its test uses


@dataclass(frozen=True)
class Detected:
    """A change in level starting at ``index`` (the first run of the new level)."""

    index: int
    ratio: float  # median of the runs after / median of the runs before (> 1: slower)
    ci95: tuple[float, float] | None  # bootstrap CI95 of the ratio; None with a single run on one side
    p_value: float  # two-sided Student t-test on the log medians of the two windows
    n_before: int  # runs in each window
    n_after: int


def noise_sigma(log_values: np.ndarray) -> float:
    """Run-to-run noise (standard deviation, log units) from the MAD of successive differences."""
    d = np.diff(log_values)
    if d.size == 0:
        return SIGMA_FLOOR
    mad = float(np.median(np.abs(d - np.median(d))))
    return max(MAD_TO_SIGMA * mad / math.sqrt(2.0), SIGMA_FLOOR)


def require_ruptures():
    """The `ruptures` module, or a UserError saying how to install it (the optional `history` extra)."""
    try:
        import ruptures
    except ImportError:
        raise UserError("ossbench history needs the 'ruptures' package: pip install 'ossbench[history]' "
                        "(or pip install ruptures)") from None
    return ruptures


def pelt_candidates(log_values: np.ndarray, penalty_factor: float = PENALTY_FACTOR) -> list[int]:
    """Start indices of new levels proposed by PELT (single-run segments allowed, then dropped inside the
    history: an outlier run, not a level), plus the latest run."""
    n = log_values.size
    ruptures = require_ruptures()
    pen = penalty_factor * noise_sigma(log_values) ** 2 * math.log(n)
    # KernelCPD with the linear kernel is PELT on the least-squares cost in ruptures' C code: the same
    # breakpoints as Pelt(model="l2") and several hundred times faster (0.08 ms against 23 ms at 60 runs).
    algo = ruptures.KernelCPD(kernel="linear", min_size=1).fit(log_values.reshape(-1, 1))
    found = [b for b in algo.predict(pen=pen) if b < n]
    return sorted(set(drop_short_segments(found, n)) | {n - 1})


def drop_short_segments(starts: list[int], n: int) -> list[int]:
    """Drop the start of every segment shorter than MIN_SEGMENT runs that is not the last one: its runs
    join the level before (validation then drops the segment's end too when it was only the outlier's)."""
    bounds = sorted(starts) + [n]
    return [a for a, b in zip(bounds, bounds[1:]) if b - a >= MIN_SEGMENT or b == n]


def change_figures(log_before: np.ndarray, log_after: np.ndarray, rng: np.random.Generator) -> Detected | None:
    """The figures of a change between two windows (log medians); None when the test cannot be made."""
    from scipy.stats import ttest_ind

    nb, na = log_before.size, log_after.size
    if nb < 2 or na < 1 or nb + na < 3:
        return None
    before, after = np.exp(log_before), np.exp(log_after)
    ratio = float(np.median(after) / np.median(before))
    if np.ptp(log_before) == 0.0 and np.ptp(log_after) == 0.0:  # identical runs each side: certain if the levels differ
        p = 0.0 if ratio != 1.0 else 1.0
    else:
        p = float(ttest_ind(log_after, log_before, equal_var=True).pvalue)
    ci = None
    if min(nb, na) >= 2:
        _, ci = ratio_of_medians_ci(before, after, rng)
    return Detected(index=-1, ratio=ratio, ci95=ci, p_value=p, n_before=nb, n_after=na)


def validate(log_values: np.ndarray, candidates: Sequence[int], *, alpha: float, min_change: float,
             window: int) -> list[Detected]:
    """Keep the candidates that pass (p < alpha and |ratio - 1| >= min_change), dropping the weakest first."""
    kept = sorted(set(candidates))
    n = log_values.size
    while True:
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        results: list[tuple[int, Detected | None]] = []
        for j, k in enumerate(kept):
            lo = kept[j - 1] if j else 0
            hi = kept[j + 1] if j + 1 < len(kept) else n
            d = change_figures(log_values[max(lo, k - window):k], log_values[k:min(hi, k + window)], rng)
            results.append((k, d))

        def weakness(item: tuple[int, Detected | None]) -> tuple[float, float]:
            d = item[1]
            return (math.inf, 0.0) if d is None else (d.p_value, -abs(math.log(d.ratio)))

        failing = [r for r in results if r[1] is None or r[1].p_value >= alpha
                   or abs(r[1].ratio - 1.0) < min_change]
        if not failing:
            return [_at(d, k) for k, d in results if d is not None]
        kept.remove(max(failing, key=weakness)[0])


def _at(d: Detected, index: int) -> Detected:
    return Detected(index=index, ratio=d.ratio, ci95=d.ci95, p_value=d.p_value, n_before=d.n_before,
                    n_after=d.n_after)


def find_changes(medians: Sequence[float], *, alpha: float = DEFAULT_ALPHA, min_change: float = 0.05,
                 window: int = DEFAULT_WINDOW,
                 candidates: Callable[[np.ndarray], list[int]] = pelt_candidates) -> list[Detected]:
    """The changes of level in a series of run medians (ms, in run order), oldest first.

    ``candidates`` proposes start indices from the log medians (PELT by default; `ossbench.history_synth`
    tries others); validation is the same whichever proposes.
    """
    y = np.log(np.asarray(medians, dtype=float))
    if y.size < 3:
        return []
    return validate(y, candidates(y), alpha=alpha, min_change=min_change, window=window)
