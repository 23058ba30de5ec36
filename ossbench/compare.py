"""Cross-run comparison: the same cases measured by several runs (other GPUs, versions, commits).

The first run is the reference. For every case it shares with another run we give the ratio of medians with
a bootstrap CI95, and each run's achieved fraction of its own device's ceilings, so a reader can tell whether
a difference between two GPUs follows their compute, their memory bandwidth, or neither (docs/gate.md has
the rule). The data classes here are what the views render: `ossbench.compare_table` (terminal) and
`ossbench.report.compare_html` (HTML). Ceilings and fractions come from `ossbench.analysis`, the ratio CI
from `ossbench.bootstrap`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pathlib import Path

from .analysis import Ceilings, case_key, ceiling_fractions, ceiling_ratios, run_cache_bytes, run_ceilings
from .bootstrap import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, ratio_of_medians_draws
from .errors import UserError
from .results import CaseResult, RunResult

# A speedup "follows" a device ratio when it is within this relative distance of it.
FOLLOWS_TOLERANCE = 0.15

Follows = Literal["bandwidth", "compute", "compute and bandwidth", "neither", "same ceilings", "unknown"]


@dataclass(frozen=True)
class RunInfo:
    """One compared run. `unmatched`: its case ids that have no counterpart (see `compare_runs`)."""

    label: str
    suite: str
    device_name: str
    device_type: str
    peak: dict[str, Any] | None  # the device's peak table row (environment.peak), None when unknown
    torch: str | None
    git_revision: str | None
    start_time: str
    n_cases: int
    unmatched: list[str]
    ceilings: Ceilings | None = None  # what its fractions divide by (`analysis.run_ceilings`): calibrated or datasheet


@dataclass(frozen=True)
class CaseRun:
    """One case as one run measured it. Fractions are of that run's own device ceilings (0.42 = 42%)."""

    status: str
    error: str | None
    median_ms: float | None
    ci95_ms: tuple[float, float] | None  # CI95 of the median, from the results file
    n: int
    tflops: float | None
    gbps: float | None
    compute_key: str  # the compute ceiling used (`analysis.case_key`), e.g. "bf16"
    compute_fraction: float | None  # achieved TFLOP/s / peak TFLOP/s for the dtype
    bandwidth_fraction: float | None  # achieved GB/s (from the minimum bytes) / peak HBM GB/s


@dataclass(frozen=True)
class VsReference:
    """A run's case against the reference run's same case."""

    ratio: float  # other median / reference median (> 1: slower than the reference)
    ratio_ci95: tuple[float, float] | None  # percentile bootstrap CI95 of the ratio of medians
    speedup: float  # 1 / ratio (> 1: faster than the reference)
    speedup_ci95: tuple[float, float] | None  # None when a side has one sample (no interval exists)
    compute_ratio: float | None  # other device's peak compute / reference's, for the case's dtype
    bandwidth_ratio: float | None  # other device's peak HBM bandwidth / reference's
    follows: Follows
    n: int = 0  # the smaller sample count of the two sides


@dataclass(frozen=True)
class RunSummary:
    """One run against the reference over every case both ran: the geometric mean of the speedups."""

    label: str
    n_cases: int
    geomean: float  # exp(mean(log speedup)) over the matched cases that ran in both
    geomean_ci95: tuple[float, float]  # percentile bootstrap: each case's medians resampled, the mean re-taken
    lowest: float  # the smallest and largest speedup among those cases
    highest: float
    too_few: int  # cases with one sample on a side (they enter with their point speedup, no spread)


@dataclass(frozen=True)
class CaseComparison:
    """One case id across runs; `runs` and `vs_reference` are index-aligned with `Comparison.runs`."""

    id: str
    family: str
    variant: str
    axes: dict[str, Any]
    dtype: str
    runs: list[CaseRun | None]  # None: that run does not have the case
    vs_reference: list[VsReference | None]  # [0] is always None; None where either side did not run ok


@dataclass(frozen=True)
class Comparison:
    runs: list[RunInfo]  # runs[0] is the reference
    cases: list[CaseComparison]  # cases of the reference that at least one other run has, in its order
    follows_tolerance: float = FOLLOWS_TOLERANCE
    # index-aligned with runs; None for [0] and for a run that shares no case that ran ok in both
    summaries: list[RunSummary | None] = field(default_factory=list)

    @property
    def reference(self) -> RunInfo:
        return self.runs[0]

    @property
    def bandwidth_name(self) -> str:
        """What the bandwidth ceiling is called: "HBM" when every run is on a GPU, else "memory BW" (a CPU
        reads DRAM)."""
        return "HBM" if all(r.device_type == "cuda" for r in self.runs) else "memory BW"


def compare_runs(runs: list[RunResult], labels: list[str] | None = None, *,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 sources: list[str] | None = None) -> Comparison:
    """Match cases by id across `runs` (the first is the reference) and compare each run to it.

    A run's `unmatched` cases are, for the reference, its ids found in no other run, and for another run,
    its ids the reference lacks. Labels default to the device names (with ``#k`` added when they repeat).
    A run that shares no case id with the reference raises UserError (an empty table would read as "no
    difference"); `sources` (the files, for that message) default to the labels.
    """
    if len(runs) < 2:
        raise UserError(f"compare needs at least two runs (got {len(runs)})")
    labels = list(labels) if labels is not None else run_labels(runs)
    if len(labels) != len(runs) or len(set(labels)) != len(labels):
        raise UserError(f"compare needs one distinct label per run (got {labels!r})")
    sources = list(sources) if sources is not None else labels

    by_id = [{c.id: c for c in run.cases} for run in runs]
    for k in range(1, len(runs)):
        if not by_id[0].keys() & by_id[k].keys():
            raise UserError(f"{sources[k]} (suite {runs[k].suite.name!r}, {len(runs[k].cases)} case(s)) shares no "
                            f"case id with the reference {sources[0]} (suite {runs[0].suite.name!r}, "
                            f"{len(runs[0].cases)} case(s)): nothing to compare")
    ceilings = [run_ceilings(run.environment) for run in runs]
    caches = [run_cache_bytes(run.environment) for run in runs]
    ref_ids = list(by_id[0])
    others_ids = set().union(*(set(d) for d in by_id[1:]))
    infos = []
    for k, (run, label) in enumerate(zip(runs, labels)):
        unmatched = ([i for i in ref_ids if i not in others_ids] if k == 0
                     else [c.id for c in run.cases if c.id not in by_id[0]])
        env = run.environment
        infos.append(RunInfo(label=label, suite=run.suite.name, device_name=env.device_name,
                             device_type=env.device_type, peak=env.peak, torch=env.torch,
                             git_revision=env.git_revision, start_time=env.start_time,
                             n_cases=len(run.cases), unmatched=unmatched, ceilings=ceilings[k]))

    rng = np.random.default_rng(seed)
    totals = [_LogTotal(resamples) for _ in runs]  # per run: sums of log speedups, point and per resample
    cases = []
    for case_id in ref_ids:
        if case_id not in others_ids:
            continue
        ref = by_id[0][case_id]
        present = [d.get(case_id) for d in by_id]
        cells = [_case_run(c, ceil, cache) if c is not None else None
                 for c, ceil, cache in zip(present, ceilings, caches)]
        vs: list[VsReference | None] = [None]
        for k in range(1, len(runs)):
            vs.append(_vs_reference(ref, present[k], ceilings[0], ceilings[k], rng, resamples, totals[k]))
        cases.append(CaseComparison(id=case_id, family=ref.family, variant=ref.variant, axes=dict(ref.axes),
                                    dtype=ref.dtype, runs=cells, vs_reference=vs))
    summaries = [None] + [totals[k].summary(labels[k]) for k in range(1, len(runs))]
    return Comparison(runs=infos, cases=cases, summaries=summaries)


class _LogTotal:
    """Running sums of log speedups over cases (the point values and each bootstrap resample's), so the
    geometric mean's interval costs O(resamples) memory however many cases there are."""

    def __init__(self, resamples: int) -> None:
        self.draws = np.zeros(resamples)
        self.points: list[float] = []
        self.too_few = 0

    def add(self, speedup: float, speedup_draws: np.ndarray | None) -> None:
        self.points.append(speedup)
        if speedup_draws is None:  # one sample on a side: the point value in every resample
            self.too_few += 1
            self.draws += np.log(speedup)
        else:
            self.draws += np.log(speedup_draws)

    def summary(self, label: str) -> RunSummary | None:
        n = len(self.points)
        if not n:
            return None
        geomean = float(np.exp(np.mean(np.log(self.points))))
        lo, hi = (float(np.exp(q / n)) for q in np.percentile(self.draws, [2.5, 97.5]))
        return RunSummary(label, n, geomean, (lo, hi), min(self.points), max(self.points), self.too_few)


def run_labels(runs: list[RunResult], paths: list[str] | None = None) -> list[str]:
    """One short label per run: the device names when they tell the runs apart; else the device with the
    run's folder (a ``results.json``'s folder name, otherwise folder/file); ``#k`` added where labels still
    repeat. Never the full path: labels are titles, legend entries and column heads."""
    names = [r.environment.device_name for r in runs]
    if len(set(names)) == len(names):
        return names
    given = [f"{n} {_where(p)}" for n, p in zip(names, paths)] if paths is not None else names
    return [g if given.count(g) == 1 else f"{g} #{k + 1}" for k, g in enumerate(given)]


def _where(path: str) -> str:
    """The short name of a results file: its folder's name for ``DIR/results.json`` (what `ossbench run`
    writes), else ``folder/file``."""
    p = Path(path)
    if p.name in ("results.json", "journal.jsonl") and p.parent.name:
        return p.parent.name
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _case_run(c: CaseResult, ceilings: Ceilings | None, cache_bytes: int | None) -> CaseRun:
    s = c.stats if c.status == "ok" else None
    compute_fraction, bandwidth_fraction = ceiling_fractions(c, ceilings, cache_bytes)
    return CaseRun(status=c.status, error=c.error, median_ms=s.median if s else None,
                   ci95_ms=(s.ci95_low, s.ci95_high) if s else None, n=s.n if s else 0,
                   tflops=c.derived.tflops, gbps=c.derived.gbps, compute_key=case_key(c),
                   compute_fraction=compute_fraction, bandwidth_fraction=bandwidth_fraction)


def classify(speedup: float, compute_ratio: float | None, bandwidth_ratio: float | None,
             tolerance: float = FOLLOWS_TOLERANCE) -> Follows:
    """Which device ratio a speedup follows (the rule in docs/gate.md, "Reading a comparison")."""
    if compute_ratio is None or bandwidth_ratio is None:
        return "unknown"

    def near(a: float, b: float) -> bool:
        return abs(a / b - 1.0) <= tolerance

    if near(compute_ratio, 1.0) and near(bandwidth_ratio, 1.0):
        return "same ceilings"  # same class of device: the hardware explains no difference
    by_compute, by_bandwidth = near(speedup, compute_ratio), near(speedup, bandwidth_ratio)
    if by_compute and by_bandwidth:
        return "compute and bandwidth"  # the two devices' ratios are too close to tell apart
    return "compute" if by_compute else "bandwidth" if by_bandwidth else "neither"


def _vs_reference(ref: CaseResult, other: CaseResult | None, ref_ceilings: Ceilings | None,
                  other_ceilings: Ceilings | None, rng: np.random.Generator,
                  resamples: int, total: _LogTotal) -> VsReference | None:
    if other is None or ref.status != "ok" or other.status != "ok" or not ref.samples_ms or not other.samples_ms:
        return None
    ratio, draws = ratio_of_medians_draws(np.asarray(ref.samples_ms, float), np.asarray(other.samples_ms, float),
                                          rng, resamples)
    ratio_ci = speedup_ci = None
    if draws is not None:
        lo, hi = (float(q) for q in np.percentile(draws, [2.5, 97.5]))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            lo = hi = ratio
        ratio_ci, speedup_ci = (lo, hi), (1.0 / hi, 1.0 / lo)
    compute_ratio, bandwidth_ratio = ceiling_ratios(case_key(ref), ref_ceilings, other_ceilings)
    speedup = 1.0 / ratio
    total.add(speedup, None if draws is None else 1.0 / draws)
    return VsReference(ratio=ratio, ratio_ci95=ratio_ci, speedup=speedup, speedup_ci95=speedup_ci,
                       compute_ratio=compute_ratio, bandwidth_ratio=bandwidth_ratio,
                       follows=classify(speedup, compute_ratio, bandwidth_ratio),
                       n=min(len(ref.samples_ms), len(other.samples_ms)))
