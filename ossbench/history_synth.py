"""Synthetic histories with planted steps and drifts: the detection rate and false-alarm rate of
`ossbench.changepoints`, and the experiment that chose its candidate method and penalty.

    python -m ossbench.history_synth [--histories 200] [--seed 0]

prints, per scenario and candidate method, the share of histories whose planted change was found (in the
right direction, within ``TOLERANCE`` runs of where it was planted) and the share with a false alarm (a
change reported anywhere else; in a flat history, any change). docs/history.md quotes its output.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .changepoints import DEFAULT_ALPHA, MIN_SEGMENT, Detected, find_changes, pelt_candidates

N_RUNS = 30
SIGMA = 0.02  # run-to-run noise of a median on a CI runner: 2% (lognormal)
TOLERANCE = 2  # runs: a change found this close to where it was planted counts as found
MIN_CHANGE = 0.05  # the history command's default (the gate's 5%)
RECENT = 3  # runs: a change this close to the end is "new" (`ossbench history --recent`)


@dataclass(frozen=True)
class Planted:
    """Where a planted change may be found: a change of the right direction starting in [lo, hi] counts."""

    lo: int
    hi: int
    slower: bool


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    make: Callable[[np.random.Generator], tuple[np.ndarray, Planted | None]]  # log medians, the planted change


def _noise(rng: np.random.Generator, heavy: bool = False) -> np.ndarray:
    if heavy:  # Student t with 3 degrees of freedom, scaled to the same spread: occasional outlier runs
        return rng.standard_t(3, N_RUNS) * SIGMA / math.sqrt(3.0)
    return rng.normal(0.0, SIGMA, N_RUNS)


def _step(size: float, lo: int, hi: int, heavy: bool = False):
    def make(rng: np.random.Generator):
        k = int(rng.integers(lo, hi + 1))
        y = _noise(rng, heavy)
        y[k:] += math.log1p(size)
        # planted at the end: only there can it be found
        where = (k, N_RUNS - 1) if k >= N_RUNS - TOLERANCE else (k - TOLERANCE, k + TOLERANCE)
        return y, Planted(*where, slower=size > 0)
    return make


def _drift(total: float, start: int):
    def make(rng: np.random.Generator):
        y = _noise(rng)
        y[start:] += np.linspace(0.0, math.log1p(total), N_RUNS - start + 1)[1:]
        return y, Planted(start - TOLERANCE, N_RUNS - 1, slower=True)  # a drift has no single place
    return make


def _flat(heavy: bool):
    def make(rng: np.random.Generator):
        return _noise(rng, heavy), None
    return make


SCENARIOS = (
    Scenario("flat", "no change, 2% normal noise", _flat(False)),
    Scenario("flat-heavy", "no change, Student-t (3 df) noise of the same spread: outlier runs", _flat(True)),
    Scenario("step+10%", "+10% step at a run between 8 and 22", _step(0.10, 8, 22)),
    Scenario("step+7%", "+7% step at a run between 8 and 22", _step(0.07, 8, 22)),
    Scenario("step-10%", "-10% step (an improvement) at a run between 8 and 22", _step(-0.10, 8, 22)),
    Scenario("step+10%-heavy", "+10% step, Student-t noise", _step(0.10, 8, 22, heavy=True)),
    Scenario("drift+20%", "+20% spread linearly over the last 20 runs", _drift(0.20, 10)),
    Scenario("new+10%@last", "+10% step at the latest run", _step(0.10, N_RUNS - 1, N_RUNS - 1)),
    Scenario("new+10%@last2", "+10% step at the second latest run", _step(0.10, N_RUNS - 2, N_RUNS - 2)),
)


def window_candidates(log_values: np.ndarray, width: int = 5) -> list[int]:
    """The alternative that was tried: a two-sided Mann-Whitney U test between the ``width`` runs before and
    after each index, keeping local minima of p below alpha (plus the latest run, as PELT's)."""
    from scipy.stats import mannwhitneyu

    n = log_values.size
    p = np.ones(n)
    for k in range(width, n - width + 1):
        p[k] = mannwhitneyu(log_values[k - width:k], log_values[k:k + width], alternative="two-sided").pvalue
    found = [k for k in range(1, n) if p[k] < DEFAULT_ALPHA and p[k] <= p[k - 1] and (k + 1 == n or p[k] < p[k + 1])]
    return sorted(set(found) | {n - 1})


METHODS: dict[str, Callable[[np.ndarray], list[int]]] = {
    "pelt": pelt_candidates,
    "pelt-pen2": lambda y: pelt_candidates(y, penalty_factor=2.0),
    "pelt-pen5": lambda y: pelt_candidates(y, penalty_factor=5.0),
    "window-mwu": window_candidates,
}


@dataclass(frozen=True)
class Rates:
    scenario: str
    method: str
    histories: int
    detected: float  # share of histories whose planted change was found (0 for a flat history)
    false_alarm: float  # share with a change reported away from the planted one (flat: any change)
    new_false_alarm: float  # share with a slower change in the last RECENT runs that was not planted there
    new_false_confirm2: float  # the same, counting only changes seen in 2 runs or more (--confirm 2)


def judge(changes: list[Detected], planted: Planted | None) -> tuple[bool, bool, bool, bool]:
    """(found, false alarm, false "new regression", false "new" seen in 2 runs) for one history."""
    def near(c: Detected) -> bool:
        return planted is not None and planted.lo <= c.index <= planted.hi and (c.ratio > 1) == planted.slower

    extra = [c for c in changes if not near(c)]
    new = [c for c in extra if c.index >= N_RUNS - RECENT and c.ratio > 1]
    return any(map(near, changes)), bool(extra), bool(new), any(c.index <= N_RUNS - 2 for c in new)


def measure(scenario: Scenario, method: str = "pelt", histories: int = 200, seed: int = 0) -> Rates:
    rng = np.random.default_rng([seed, SCENARIOS.index(scenario)])
    found = false = new_false = new_false2 = 0
    for _ in range(histories):
        y, planted = scenario.make(rng)
        changes = find_changes(np.exp(y), alpha=DEFAULT_ALPHA, min_change=MIN_CHANGE, candidates=METHODS[method])
        f, fa, nf, nf2 = judge(changes, planted)
        found, false, new_false, new_false2 = found + f, false + fa, new_false + nf, new_false2 + nf2
    return Rates(scenario.name, method, histories, found / histories, false / histories, new_false / histories,
                 new_false2 / histories)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ossbench.history_synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--histories", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: " + ", ".join(METHODS))
    args = parser.parse_args(argv)
    print(f"{args.histories} histories of {N_RUNS} runs per scenario, seed {args.seed}; alpha {DEFAULT_ALPHA}, "
          f"min change {MIN_CHANGE:.0%}, segments >= {MIN_SEGMENT} runs, found = within {TOLERANCE} runs")
    print(f"{'scenario':<16} {'method':<11} {'found':>6} {'false alarm':>12} {'false new':>10} {'(confirm 2)':>12}")
    for s in SCENARIOS:
        for m in args.methods.split(","):
            r = measure(s, m, args.histories, args.seed)
            shown = "-" if s.name.startswith("flat") else f"{r.detected:.1%}"
            print(f"{s.name:<16} {m:<11} {shown:>6} {r.false_alarm:>12.1%} {r.new_false_alarm:>10.1%} "
                  f"{r.new_false_confirm2:>12.1%}")


if __name__ == "__main__":
    main()
