"""The CI regression gate: a current run against a stored baseline, case by case.

A case regresses only when both hold: its samples are significantly slower (one-sided Mann-Whitney U on
the timed samples, p < alpha) AND its median is slower by more than the threshold. The test alone would
flag run-to-run drift of a fraction of a percent on a quiet GPU (thousands of samples make tiny shifts
significant); the threshold alone would flag noise on short, noisy runs. When the sample counts are too
small for the test ever to reach alpha, the threshold on the medians decides alone (and the verdict says
so), and a baseline case missing from the current run fails the gate. docs/gate.md states the rule.
The decision is a `GateResult`; `ossbench.gate_outputs` renders it (terminal table, markdown, JUnit XML).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .errors import UserError
from .results import CaseResult, RunResult
from .units import fmt_ms as _ms

DEFAULT_MAX_SLOWDOWN = 0.05
DEFAULT_ALPHA = 0.01

Verdict = Literal["regression", "improvement", "unchanged", "new failure", "still failing", "fixed",
                  "skipped", "missing", "new"]
# A case that ran in the baseline and is absent now fails too: a run killed early (a journal with no cases)
# or a filter that dropped cases must not pass as "nothing got slower".
FAILING: frozenset[str] = frozenset({"regression", "new failure", "missing"})
_ORDER = ("regression", "new failure", "missing", "improvement", "unchanged", "fixed", "still failing", "skipped",
          "new")
_BROKEN = ("failed", "oom")
TOO_FEW = "too few samples for significance: judged on the medians' threshold"


@dataclass(frozen=True)
class CaseVerdict:
    id: str
    verdict: Verdict
    threshold: float  # the max slowdown that applied to this case (0.05 = 5%)
    baseline_status: str | None = None  # None: the case is not in that run
    current_status: str | None = None
    baseline_median_ms: float | None = None
    current_median_ms: float | None = None
    ratio: float | None = None  # current median / baseline median (> 1: slower)
    p_slower: float | None = None  # one-sided Mann-Whitney U p-value, H1: current samples are larger
    p_faster: float | None = None  # the mirror test, H1: current samples are smaller
    n_baseline: int = 0
    n_current: int = 0
    error: str | None = None  # the current run's error for a failed case
    min_p: float | None = None  # the smallest one-sided p-value these sample counts allow (`smallest_p`)
    on_medians: bool = False  # min_p >= alpha: the test cannot decide, the medians' threshold did alone

    @property
    def failing(self) -> bool:
        return self.verdict in FAILING

    @property
    def p_value(self) -> float | None:
        """The one-sided p-value in the direction the median moved."""
        if self.ratio is None:
            return None
        return self.p_slower if self.ratio >= 1 else self.p_faster

    def describe(self) -> str:
        """The figures in one line, e.g. for a JUnit failure message."""
        if self.verdict == "new failure":
            return (f"{self.id}: {self.current_status} in the current run (was {self.baseline_status})"
                    + (f": {self.error}" if self.error else ""))
        if self.verdict == "missing":
            return f"{self.id}: in the baseline ({self.baseline_status}) but missing from the current run"
        if self.ratio is None:
            return f"{self.id}: {self.verdict}"
        test = (f"{TOO_FEW} (smallest possible p={self.min_p:.2g})" if self.on_medians
                else f"one-sided Mann-Whitney p={self.p_value:.2g}")
        return (f"{self.id}: median {_ms(self.baseline_median_ms)} → {_ms(self.current_median_ms)} "
                f"({(self.ratio - 1) * 100:+.1f}%, threshold {self.threshold * 100:g}%), "
                f"{test}, n={self.n_baseline}/{self.n_current}")


@dataclass(frozen=True)
class GateResult:
    baseline_device: str
    current_device: str
    suite: str
    alpha: float
    max_slowdown: float  # the default threshold (per-case overrides are in each CaseVerdict)
    cases: list[CaseVerdict]  # baseline order, then cases new in the current run
    notes: list[str] = field(default_factory=list)  # things a reader should know (suite file changed, ...)

    @property
    def passed(self) -> bool:
        return not any(c.failing for c in self.cases)

    def having(self, *verdicts: str) -> list[CaseVerdict]:
        return [c for c in self.cases if c.verdict in verdicts]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cases:
            out[c.verdict] = out.get(c.verdict, 0) + 1
        return out

    def summary(self) -> str:
        """One line: PASSED/FAILED, the counts, the settings."""
        counts = self.counts()
        compared = sum(counts.get(v, 0) for v in ("regression", "improvement", "unchanged"))
        others = ", ".join(f"{counts[v]} {v}" for v in _ORDER if v not in FAILING and counts.get(v))
        return (f"{'PASSED' if self.passed else 'FAILED'}: {counts.get('regression', 0)} regression(s), "
                f"{counts.get('new failure', 0)} newly failing, {counts.get('missing', 0)} missing"
                + (f"; {others}" if others else "")
                + f" ({compared} compared; max slowdown {self.max_slowdown * 100:g}%, alpha {self.alpha:g};"
                  f" baseline {self.baseline_device}, current {self.current_device})")


def gate(baseline: RunResult, current: RunResult, *, max_slowdown: float | None = None,
         alpha: float = DEFAULT_ALPHA, overrides: dict[str, float] | None = None,
         allow_hardware_mismatch: bool = False) -> GateResult:
    """Decide, case by case, whether `current` regressed against `baseline`.

    `max_slowdown` defaults to the current run's suite `gate.max_slowdown`, else 5%; `overrides` (id
    substring -> threshold, longest matching substring wins) default to the suite's `gate.cases`.
    Raises UserError when the runs come from different device models, unless `allow_hardware_mismatch`.
    """
    b_dev, c_dev = baseline.environment.device_name, current.environment.device_name
    if b_dev != c_dev and not allow_hardware_mismatch:
        raise UserError(f"baseline was measured on {b_dev!r} but the current run on {c_dev!r}; timings from "
                        "different GPU models are not comparable (use --allow-hardware-mismatch to gate anyway,"
                        " or `ossbench compare` to study the difference)")
    suite_gate = current.suite.gate or {}
    if max_slowdown is None:
        max_slowdown = suite_gate.get("max_slowdown") or DEFAULT_MAX_SLOWDOWN
    if overrides is None:
        overrides = dict(suite_gate.get("cases") or {})
    if not max_slowdown > 0 or any(not v > 0 for v in overrides.values()):
        raise UserError("gate thresholds must be > 0")
    if not 0 < alpha < 1:
        raise UserError(f"alpha must be between 0 and 1 (got {alpha})")

    notes = []
    if b_dev != c_dev:
        notes.append(f"hardware mismatch allowed: baseline {b_dev}, current {c_dev}")
    if baseline.suite.name != current.suite.name:
        notes.append(f"different suites: baseline {baseline.suite.name!r}, current {current.suite.name!r}")
    elif baseline.suite.sha256 != current.suite.sha256:
        notes.append("the suite file changed between the runs (sha256 differs)")
    if baseline.suite.profile != current.suite.profile:
        notes.append(f"different profiles: baseline {baseline.suite.profile}, current {current.suite.profile}")

    if not baseline.cases:
        raise UserError(f"the baseline ({baseline.suite.name!r}) has no cases: there is nothing to gate against")
    if not current.cases:
        notes.append("the current run has no cases (an interrupted run's journal?): every baseline case is "
                     "missing")
    cur = {c.id: c for c in current.cases}
    if current.cases and not any(b.id in cur for b in baseline.cases):
        # Passing here would let a wrong baseline file wave everything through.
        raise UserError(f"no case of the current run ({current.suite.name!r}) is in the baseline "
                        f"({baseline.suite.name!r}): is it the right baseline file?")
    verdicts = []
    for b in baseline.cases:
        threshold = threshold_for(b.id, max_slowdown, overrides)
        verdicts.append(_judge(b, cur.get(b.id), threshold, alpha))
    base_ids = {b.id for b in baseline.cases}
    for c in current.cases:
        if c.id not in base_ids:
            verdicts.append(CaseVerdict(id=c.id, verdict="new", threshold=threshold_for(c.id, max_slowdown, overrides),
                                        current_status=c.status, current_median_ms=_median(c)))
    return GateResult(baseline_device=b_dev, current_device=c_dev, suite=current.suite.name, alpha=alpha,
                      max_slowdown=max_slowdown, cases=verdicts, notes=notes)


def threshold_for(case_id: str, default: float, overrides: dict[str, float]) -> float:
    """The override whose key is the longest substring of `case_id` (the most specific), else `default`."""
    hits = [k for k in overrides if k in case_id]
    return overrides[max(hits, key=len)] if hits else default


def _median(c: CaseResult | None) -> float | None:
    return float(np.median(c.samples_ms)) if c is not None and c.status == "ok" and c.samples_ms else None


def _judge(b: CaseResult, c: CaseResult | None, threshold: float, alpha: float) -> CaseVerdict:
    common = dict(id=b.id, threshold=threshold, baseline_status=b.status, baseline_median_ms=_median(b))
    if c is None:
        return CaseVerdict(verdict="missing", **common)
    common.update(current_status=c.status, current_median_ms=_median(c), error=c.error)
    if c.status in _BROKEN:
        return CaseVerdict(verdict="still failing" if b.status in _BROKEN else "new failure", **common)
    if c.status == "skipped":
        return CaseVerdict(verdict="skipped", **common)
    if b.status in _BROKEN:
        return CaseVerdict(verdict="fixed", **common)
    if b.status != "ok" or not b.samples_ms or not c.samples_ms:
        return CaseVerdict(verdict="skipped", **common)  # nothing to compare against (baseline skipped)

    from scipy.stats import mannwhitneyu

    x, y = np.asarray(c.samples_ms, float), np.asarray(b.samples_ms, float)
    ratio = float(np.median(x) / np.median(y))
    p_slower = float(mannwhitneyu(x, y, alternative="greater").pvalue)
    p_faster = float(mannwhitneyu(x, y, alternative="less").pvalue)
    min_p = smallest_p(x.size, y.size)
    # Too few samples: no outcome of the test could reach alpha, so requiring it would pass any slowdown.
    on_medians = min_p >= alpha
    slower = on_medians or p_slower < alpha
    faster = on_medians or p_faster < alpha
    # The improvement threshold mirrors the slowdown one in log space: 5% slower <-> 1.05x faster.
    if slower and ratio > 1 + threshold:
        verdict: Verdict = "regression"
    elif faster and ratio < 1 / (1 + threshold):
        verdict = "improvement"
    else:
        verdict = "unchanged"
    return CaseVerdict(verdict=verdict, ratio=ratio, p_slower=p_slower, p_faster=p_faster,
                       n_baseline=y.size, n_current=x.size, min_p=min_p, on_medians=on_medians, **common)


def smallest_p(n1: int, n2: int) -> float:
    """The smallest one-sided Mann-Whitney p-value any n1 and n2 samples can give: 1 / C(n1 + n2, n1),
    reached when every sample of one run lies beyond every sample of the other (no ties; ties only raise
    it). With 4 samples each that is 1/70 ≈ 0.014, so at alpha 0.01 no 4-against-4 case could ever be
    significant."""
    # In log space: C(n1 + n2, n1) itself has about a million digits for two million samples a side.
    log_comb = math.lgamma(n1 + n2 + 1) - math.lgamma(n1 + 1) - math.lgamma(n2 + 1)
    return math.exp(-log_comb)


def parse_fraction(text: str | float, what: str = "max slowdown") -> float:
    """'5%' -> 0.05, '0.05' -> 0.05. A bare number >= 1 is refused as ambiguous (write 5% or 0.05)."""
    s = str(text).strip()
    try:
        value = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise UserError(f"{what} {text!r} is not a number (write 5% or 0.05)") from None
    if not value > 0 or not np.isfinite(value):
        raise UserError(f"{what} must be > 0 (got {text!r})")
    if not s.endswith("%") and value >= 1:
        raise UserError(f"{what} {text!r} is ambiguous: write {s}% or {value / 100:g} (a fraction)")
    return value

