"""What the views of a results file show beside the recorded figures, computed in one place: a run's
ceilings, each case's fractions of them and its place under the roofline, and the suite's compare pairs.

The HTML report, `ossbench compare` and the terminal tables render what these functions return; none of
them looks up a ceiling or divides by one itself. The roofline arithmetic is `ossbench.measure.roofline`'s
(the same the runner records per case); ratios of medians and their CIs are `ossbench.bootstrap`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from .expectations import PairReport, evaluate
from .measure.roofline import dtype_key, over_ceiling, resolve_ceilings, roofline
from .records import Ceilings  # as `resolve_ceilings` shapes them: {"compute_tflops": {"bf16": ...}, ...}
from .results import CaseResult, Environment, RunResult

# A memory-bound case timed with a hot cache whose data fits in the cache: its "% of speed of light" is
# against DRAM bandwidth, which a cache-resident working set does not need (it can read 976% "of it").
HOT_CACHE_SHORT = "hot cache"
HOT_CACHE_TEXT = "hot cache: data fits in cache, the DRAM roof is not its ceiling"


def run_ceilings(env: Environment) -> Ceilings | None:
    """The ceilings a run's roofline used (``environment.ceilings``: calibrated where `ossbench calibrate`
    measured them, else the datasheet row); for results written before those were recorded, the datasheet
    row (``environment.peak``) in the same shape. None when the run has neither (a CPU without calibration)."""
    recorded = getattr(env, "ceilings", None)
    if recorded:
        return recorded if isinstance(recorded, dict) else recorded.model_dump()
    return resolve_ceilings(env.peak, None)


def case_key(case: CaseResult) -> str:
    """The compute ceiling a case runs against ("bf16", "fp32", "tf32" when its params allow TF32, ...)."""
    return dtype_key(case.dtype, tf32=bool(case.params.get("tf32") or case.params.get("allow_tf32")))


def compute_ceiling(ceilings: Ceilings | None, key: str) -> float | None:
    """TFLOP/s of the compute ceiling `key` ("bf16", ...), None when the run has none for it."""
    value = (ceilings or {}).get("compute_tflops", {}).get(key)
    return float(value) if value else None


def bandwidth_ceiling(ceilings: Ceilings | None) -> float | None:
    """GB/s of the memory bandwidth ceiling, None when the run has none."""
    value = (ceilings or {}).get("bandwidth_gbps")
    return float(value) if value else None


def _over(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def cache_resident(case: CaseResult, cache_bytes: int | None) -> bool:
    """The case was timed with a hot cache (no flush between samples) and its minimum bytes fit in the
    device's last-level cache (`cache_bytes`; when unknown, as on CPU results, assumed to fit): its data may
    be served from cache, so the DRAM bandwidth roof does not bound it."""
    hot = (case.timing or {}).get("cache") == "hot"
    return hot and bool(case.bytes) and (cache_bytes is None or case.bytes <= cache_bytes)


def run_cache_bytes(env: Environment) -> int | None:
    """The last-level cache a run's hot-cache cases may sit in: the GPU's L2; None when not recorded (CPU)."""
    return getattr(env, "l2_cache_bytes", None)


def ceiling_fractions(case: CaseResult, ceilings: Ceilings | None,
                      cache_bytes: int | None = 0) -> tuple[float | None, float | None]:
    """(achieved TFLOP/s / the dtype's compute ceiling, achieved GB/s from the minimum bytes / bandwidth
    ceiling), each None when unknown; 0.42 = 42%. The bandwidth fraction is None for a `cache_resident`
    case (pass the run's `run_cache_bytes`; the default, no cache, fits nothing): DRAM is not its ceiling."""
    return (_over(case.derived.tflops, compute_ceiling(ceilings, case_key(case))),
            None if cache_resident(case, cache_bytes) else _over(case.derived.gbps, bandwidth_ceiling(ceilings)))


def ceiling_ratios(key: str, reference: Ceilings | None,
                   other: Ceilings | None) -> tuple[float | None, float | None]:
    """(other's compute ceiling `key` / the reference's, other's bandwidth / the reference's), None when
    either side lacks it."""
    return (_over(compute_ceiling(other, key), compute_ceiling(reference, key)),
            _over(bandwidth_ceiling(other), bandwidth_ceiling(reference)))


@dataclass(frozen=True)
class Placement:
    """Where a case sits under its device's roofline."""

    intensity: float | None  # FLOP per byte (cost-model FLOPs / minimum bytes)
    bound: str | None  # "compute" or "memory": which roof is lower at this intensity
    fraction: float | None  # speed of light: floor time / measured median (1.0 = at the roof)
    key: str  # the compute ceiling it runs against ("bf16", "tf32", ...)
    reason: str | None = None  # why bound/fraction are unknown
    hot_cache: bool = False  # memory-bound, timed hot and small enough for the cache: the DRAM roof is not its ceiling

    @property
    def over_ceiling(self) -> bool:
        """Faster than the ceiling allows: the ceiling is wrong (shown as a warning, never as a percentage).
        Not for a `hot_cache` case, whose DRAM roof is simply not its ceiling."""
        return over_ceiling(self.fraction) and not self.hot_cache


def place(case: CaseResult, ceilings: Ceilings | None, cache_bytes: int | None = 0) -> Placement:
    """A case's arithmetic intensity, bound and fraction of the ceiling: the case's recorded ``roofline``,
    else computed from its figures and `ceilings`. A memory-bound case that is `cache_resident` (pass the
    run's `run_cache_bytes`; the default, no cache, fits nothing) is marked ``hot_cache``."""
    record = getattr(case, "roofline", None)
    if record is not None and not isinstance(record, dict):
        record = record.model_dump()
    if not record:
        median = case.stats.median if case.status == "ok" and case.stats else None
        record = roofline(case.flops, case.bytes, median, case_key(case), ceilings)
    key = record.get("dtype_key") or case_key(case)
    if not record.get("available"):
        intensity = record.get("intensity")
        if intensity is None and case.flops and case.bytes:
            intensity = case.flops / case.bytes
        return Placement(intensity, None, None, key, record.get("reason"))
    hot = record.get("bound") == "memory" and cache_resident(case, cache_bytes)
    return Placement(record.get("intensity"), record.get("bound"), record.get("speed_of_light"), key, hot_cache=hot)


def place_cases(run: RunResult) -> list[Placement]:
    """Every case's placement under the run's ceilings, index-aligned with ``run.cases``."""
    ceilings, cache = run_ceilings(run.environment), run_cache_bytes(run.environment)
    return [place(c, ceilings, cache) for c in run.cases]


@dataclass(frozen=True)
class RunAnalysis:
    """What one run's report shows beside the recorded figures."""

    ceilings: Ceilings | None
    placements: list[Placement]  # index-aligned with the run's cases
    pairs: list[PairReport]  # the suite's compare pairs, with speedup CIs


def analyze_run(run: RunResult) -> RunAnalysis:
    return RunAnalysis(run_ceilings(run.environment), place_cases(run), evaluate(run))
