"""A suite's `compare` pairs evaluated on a run: speedup of candidate over baseline at each sweep point with
its bootstrap CI95, next to the cost model's predicted ratio, and whether the pair's expectation is met."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .bootstrap import BOOTSTRAP_SEED, speedup_ci
from .results import CaseResult, RunResult

MIN_CI_SAMPLES = 2  # fewer samples in a case: its median has no confidence interval


@dataclass(frozen=True)
class PairOutcome:
    baseline_id: str
    candidate_id: str
    axes: dict[str, Any]
    speedup: float | None  # baseline median / candidate median (> 1: candidate is faster)
    flops_ratio: float | None  # baseline flops / candidate flops, from the cost model
    bytes_ratio: float | None
    met: bool | None  # None: no expectation, or a case did not run
    bound: str  # the expectation in words, e.g. "speedup >= 0.5 x flops ratio"
    speedup_ci95: tuple[float, float] | None = None  # percentile bootstrap CI95 of the speedup, from the samples
    n: int | None = None  # the smaller sample count of the two cases (None: a case did not run)
    relative_to: str = "none"  # what the expectation scales by: "none", "flops" or "bytes"

    @property
    def too_few_samples(self) -> bool:
        """A case has fewer than MIN_CI_SAMPLES samples: no interval exists and the verdict rests on one number."""
        return self.n is not None and self.n < MIN_CI_SAMPLES

    @property
    def judged_ratio(self) -> float | None:
        """The cost-model ratio the expectation scales by (FLOP ratio when it is judged on none)."""
        return self.bytes_ratio if self.relative_to == "bytes" else self.flops_ratio

    @property
    def judged_on(self) -> str:
        """The name of `judged_ratio`: "bytes" or "FLOP"."""
        return "bytes" if self.relative_to == "bytes" else "FLOP"


@dataclass(frozen=True)
class PairReport:
    baseline: str
    candidate: str
    claim: str
    outcomes: list[PairOutcome]
    relative_to: str = "none"  # the expectation's scale: "none", "flops" or "bytes"

    @property
    def met(self) -> bool | None:
        verdicts = [o.met for o in self.outcomes if o.met is not None]
        return None if not verdicts else all(verdicts)


def evaluate(run: RunResult) -> list[PairReport]:
    rng = np.random.default_rng(BOOTSTRAP_SEED)  # one stream for the run: the same file gives the same CIs
    return [_evaluate_pair(run, pair, rng) for pair in run.suite.compare]


def _evaluate_pair(run: RunResult, pair: dict[str, Any], rng: np.random.Generator) -> PairReport:
    by_key = {(c.variant, _key(c.axes)): c for c in run.cases}
    where = pair.get("where") or {}
    expect = pair.get("expect") or {}
    outcomes = []
    for c in run.cases:
        if c.variant != pair["baseline"] or any(c.params.get(k) != v for k, v in where.items()):
            continue
        cand = by_key.get((pair["candidate"], _key(c.axes)))
        if cand is not None:
            outcomes.append(_outcome(c, cand, expect, rng))
    return PairReport(pair["baseline"], pair["candidate"], pair.get("claim", ""), outcomes,
                      expect.get("relative_to", "none"))


def _key(axes: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in axes.items()))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _outcome(base: CaseResult, cand: CaseResult, expect: dict[str, Any], rng: np.random.Generator) -> PairOutcome:
    ran = base.status == "ok" and cand.status == "ok" and base.stats and cand.stats
    speedup = base.stats.median / cand.stats.median if ran else None
    ci = speedup_ci(base.samples_ms, cand.samples_ms, rng) if ran and base.samples_ms and cand.samples_ms else None
    if ci is not None and not all(np.isfinite(ci)):
        ci = None  # one sample on a side: no interval (shown as "too few samples", never as "nan")
    n = min(len(base.samples_ms) or base.stats.n, len(cand.samples_ms) or cand.stats.n) if ran else None
    flops_ratio, bytes_ratio = _ratio(base.flops, cand.flops), _ratio(base.bytes, cand.bytes)
    relative_to = expect.get("relative_to", "none")
    scale = {"none": 1.0, "flops": flops_ratio, "bytes": bytes_ratio}[relative_to]
    lo, hi = expect.get("speedup_min"), expect.get("speedup_max")
    unit = "" if relative_to == "none" else f" x {relative_to} ratio"
    bound = " and ".join(b for b in (f"speedup >= {lo}{unit}" if lo else "",
                                     f"speedup <= {hi}{unit}" if hi else "") if b)
    met = None
    if bound and speedup is not None and scale:
        met = (lo is None or speedup >= lo * scale) and (hi is None or speedup <= hi * scale)
    return PairOutcome(base.id, cand.id, dict(base.axes), speedup, flops_ratio, bytes_ratio, met, bound, ci, n,
                       relative_to)
