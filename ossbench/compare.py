"""Cross-run comparison: the same cases measured by several runs (other GPUs, versions, commits).

The first run is the reference. For every case it shares with another run we give the ratio of medians with
a bootstrap CI95, and each run's achieved fraction of its own device's ceilings, so a reader can tell whether
a difference between two GPUs follows their compute, their memory bandwidth, or neither (docs/gate.md has
the rule). The data classes here are what `ossbench.report.compare_html` renders; `comparison_table` is the
terminal view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from rich.table import Table

from .errors import UserError
from .measure.roofline import over_ceiling
from .results import CaseResult, RunResult
from .summary import STATUS_STYLE, beaten_ceiling_caption, beaten_ceiling_cell, fmt_ms
from .text import printable, term_text

# A speedup "follows" a device ratio when it is within this relative distance of it.
FOLLOWS_TOLERANCE = 0.15
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0

Follows = Literal["bandwidth", "compute", "compute and bandwidth", "neither", "same ceilings", "unknown"]

# Which peak-table key bounds a case's math, by dtype (float64 has no tensor-core peak in the table).
_COMPUTE_KEY = {"bfloat16": "bf16_tflops", "float16": "fp16_tflops", "float32": "fp32_tflops"}


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
    compute_key: str | None  # the peak-table key used for compute, e.g. "bf16_tflops"
    compute_fraction: float | None  # achieved TFLOP/s / peak TFLOP/s for the dtype
    bandwidth_fraction: float | None  # achieved GB/s (from the minimum bytes) / peak HBM GB/s


@dataclass(frozen=True)
class VsReference:
    """A run's case against the reference run's same case."""

    ratio: float  # other median / reference median (> 1: slower than the reference)
    ratio_ci95: tuple[float, float]  # percentile bootstrap CI95 of the ratio of medians
    speedup: float  # 1 / ratio (> 1: faster than the reference)
    speedup_ci95: tuple[float, float]
    compute_ratio: float | None  # other device's peak compute / reference's, for the case's dtype
    bandwidth_ratio: float | None  # other device's peak HBM bandwidth / reference's
    follows: Follows


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

    @property
    def reference(self) -> RunInfo:
        return self.runs[0]


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
    labels = list(labels) if labels is not None else _default_labels(runs)
    if len(labels) != len(runs) or len(set(labels)) != len(labels):
        raise UserError(f"compare needs one distinct label per run (got {labels!r})")
    sources = list(sources) if sources is not None else labels

    by_id = [{c.id: c for c in run.cases} for run in runs]
    for k in range(1, len(runs)):
        if not by_id[0].keys() & by_id[k].keys():
            raise UserError(f"{sources[k]} (suite {runs[k].suite.name!r}, {len(runs[k].cases)} case(s)) shares no "
                            f"case id with the reference {sources[0]} (suite {runs[0].suite.name!r}, "
                            f"{len(runs[0].cases)} case(s)): nothing to compare")
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
                             n_cases=len(run.cases), unmatched=unmatched))

    rng = np.random.default_rng(seed)
    cases = []
    for case_id in ref_ids:
        if case_id not in others_ids:
            continue
        ref = by_id[0][case_id]
        present = [d.get(case_id) for d in by_id]
        ceilings = [run_ceilings(run.environment) for run in runs]
        cells = [_case_run(c, ceil) if c is not None else None for c, ceil in zip(present, ceilings)]
        vs: list[VsReference | None] = [None]
        for k in range(1, len(runs)):
            vs.append(_vs_reference(ref, present[k], ceilings[0], ceilings[k], rng, resamples))
        cases.append(CaseComparison(id=case_id, family=ref.family, variant=ref.variant, axes=dict(ref.axes),
                                    dtype=ref.dtype, runs=cells, vs_reference=vs))
    return Comparison(runs=infos, cases=cases)


def _default_labels(runs: list[RunResult]) -> list[str]:
    names = [r.environment.device_name for r in runs]
    return [n if names.count(n) == 1 else f"{n} #{k + 1}" for k, n in enumerate(names)]


def compute_key(case: CaseResult) -> str | None:
    """The peak-table key bounding this case's math: bf16/fp16 by dtype; float32 uses the plain fp32 peak
    unless the case's params enable TF32 (a truthy `tf32` or `allow_tf32`); None for other dtypes."""
    if case.dtype == "float32" and (case.params.get("tf32") or case.params.get("allow_tf32")):
        return "tf32_tflops"
    return _COMPUTE_KEY.get(case.dtype)


def run_ceilings(env) -> dict[str, Any] | None:
    """The ceilings a run's roofline used (calibrated where measured, else the datasheet), keyed like the peak
    table; the datasheet row itself for results files that predate recorded ceilings."""
    ceilings = getattr(env, "ceilings", None)
    if not ceilings:
        return env.peak
    row = {f"{key}_tflops": value for key, value in ceilings.get("compute_tflops", {}).items()}
    if ceilings.get("bandwidth_gbps"):
        row["hbm_gbps"] = ceilings["bandwidth_gbps"]
    return row


def _peak(peak: dict[str, Any] | None, key: str | None) -> float | None:
    value = (peak or {}).get(key) if key else None
    return float(value) if value else None


def _fraction(achieved: float | None, peak: float | None) -> float | None:
    return achieved / peak if achieved is not None and peak else None


def _case_run(c: CaseResult, peak: dict[str, Any] | None) -> CaseRun:
    key = compute_key(c)
    s = c.stats if c.status == "ok" else None
    return CaseRun(status=c.status, error=c.error, median_ms=s.median if s else None,
                   ci95_ms=(s.ci95_low, s.ci95_high) if s else None, n=s.n if s else 0,
                   tflops=c.derived.tflops, gbps=c.derived.gbps, compute_key=key,
                   compute_fraction=_fraction(c.derived.tflops, _peak(peak, key)),
                   bandwidth_fraction=_fraction(c.derived.gbps, _peak(peak, "hbm_gbps")))


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


def ratio_of_medians_ci(reference: np.ndarray, other: np.ndarray, rng: np.random.Generator,
                        resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, tuple[float, float]]:
    """median(other) / median(reference) with a percentile bootstrap CI95.

    The two samples are resampled independently (the two-sample design), each resample's median drawn by
    `bootstrap_medians`, which keeps the cost independent of the sample count (two million samples a run
    cost one sort). Percentile rather than BCa: BCa's jackknife acceleration is unreliable for the median,
    a non-smooth statistic, and with many tied timer ticks it degenerates.
    """
    ratio = float(np.median(other) / np.median(reference))
    if min(len(reference), len(other)) < 2:  # one sample (a case that hit its budget): no interval exists
        return ratio, (float("nan"), float("nan"))
    ratios = bootstrap_medians(other, resamples, rng) / bootstrap_medians(reference, resamples, rng)
    lo, hi = (float(q) for q in np.percentile(ratios, [2.5, 97.5]))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        lo = hi = ratio
    return ratio, (lo, hi)


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


def _vs_reference(ref: CaseResult, other: CaseResult | None, ref_peak: dict[str, Any] | None,
                  other_peak: dict[str, Any] | None, rng: np.random.Generator,
                  resamples: int) -> VsReference | None:
    if other is None or ref.status != "ok" or other.status != "ok" or not ref.samples_ms or not other.samples_ms:
        return None
    ratio, (lo, hi) = ratio_of_medians_ci(np.asarray(ref.samples_ms, float), np.asarray(other.samples_ms, float),
                                          rng, resamples)
    key = compute_key(ref)
    ref_c, oth_c = _peak(ref_peak, key), _peak(other_peak, key)
    ref_b, oth_b = _peak(ref_peak, "hbm_gbps"), _peak(other_peak, "hbm_gbps")
    compute_ratio = oth_c / ref_c if ref_c and oth_c else None
    bandwidth_ratio = oth_b / ref_b if ref_b and oth_b else None
    speedup = 1.0 / ratio
    return VsReference(ratio=ratio, ratio_ci95=(lo, hi), speedup=speedup, speedup_ci95=(1.0 / hi, 1.0 / lo),
                       compute_ratio=compute_ratio, bandwidth_ratio=bandwidth_ratio,
                       follows=classify(speedup, compute_ratio, bandwidth_ratio))


# ------------------------------------------------------------------------------------------- terminal


def _pct(x: float | None) -> str:
    """A fraction of a run's ceiling; above 100% the warning that the ceiling is wrong (rich markup)."""
    if x is None:
        return "-"
    return beaten_ceiling_cell(f"{x * 100:.0f}%") if over_ceiling(x) else f"{x * 100:.1f}%"


def comparison_table(c: Comparison) -> Table:
    """One row per (case, run): median ± CI, speedup vs the reference with its CI95, % of the run's ceilings."""
    ref = c.reference
    beaten = sum(over_ceiling(f) for case in c.cases for cell in case.runs if cell and cell.status == "ok"
                 for f in (cell.compute_fraction, cell.bandwidth_fraction))
    t = Table(title=term_text(f"{ref.suite}: speedup vs {ref.label} (reference median / run median; "
                           f"> 1 is faster)"), title_justify="left",
              caption=beaten_ceiling_caption(beaten), caption_justify="left")
    for col, justify in (("case", "left"), ("run", "left"), ("median", "right"), ("CI95", "right"),
                         ("speedup [CI95]", "right"), ("% peak compute", "right"), ("% peak HBM", "right"),
                         ("follows", "left")):
        t.add_column(col, justify=justify, overflow="fold")
    for case in c.cases:
        for k, (info, cell, vs) in enumerate(zip(c.runs, case.runs, case.vs_reference)):
            name = term_text(case.id) if k == 0 else ""
            if cell is None:
                t.add_row(name, term_text(info.label), "[dim]absent[/]", "", "", "", "", "", end_section=False)
                continue
            if cell.status != "ok":
                why = f"[{STATUS_STYLE[cell.status]}]{cell.status}[/]"
                if cell.error:
                    why += " " + term_text(cell.error[:100])
                t.add_row(name, term_text(info.label), why, "", "", "", "", "")
                continue
            ci = f"{cell.ci95_ms[0]:.4g}-{cell.ci95_ms[1]:.4g}" if cell.ci95_ms else "-"
            speed = ("ref" if k == 0 else "-" if vs is None else
                     f"{vs.speedup:.2f} [{vs.speedup_ci95[0]:.2f}, {vs.speedup_ci95[1]:.2f}]")
            follows = "" if k == 0 or vs is None else vs.follows
            t.add_row(name, term_text(info.label), fmt_ms(cell.median_ms), ci, speed,
                      _pct(cell.compute_fraction), _pct(cell.bandwidth_fraction), follows)
        t.add_section()
    return t


def unmatched_lines(c: Comparison) -> list[str]:
    """Plain-text lines (controls escaped, see `printable`) listing each run's unmatched case ids (empty when
    every case matched)."""
    lines = []
    for k, info in enumerate(c.runs):
        if info.unmatched:
            where = "in no other run" if k == 0 else f"not in the reference ({c.reference.label})"
            lines.append(printable(f"{info.label}: {len(info.unmatched)} case(s) {where}: "
                                   + ", ".join(info.unmatched)))
    return lines
