"""A run's ceilings as the report uses them, and each case's place under them.

The arithmetic is `ossbench.measure.roofline`'s (the same that the runner records per case); this module
only picks its inputs from a results file: the run's resolved ceilings (``environment.ceilings``: calibrated
where `ossbench calibrate` measured them, else the datasheet row) or, for results written before those were
recorded, the datasheet row in ``environment.peak``. A case's recorded ``roofline`` wins over a recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..measure.roofline import dtype_key, over_ceiling, resolve_ceilings, roofline
from ..results import CaseResult, Environment

def run_ceilings(env: Environment) -> dict[str, Any] | None:
    """``{"compute_tflops": {key: value}, "bandwidth_gbps": ..., "sources": {...}, ...}`` or None."""
    recorded = getattr(env, "ceilings", None)
    if recorded:
        return recorded if isinstance(recorded, dict) else recorded.model_dump()
    return resolve_ceilings(env.peak, None)


def describe_ceilings(ceilings: dict[str, Any] | None, device_type: str) -> str:
    """One line: "bf16 989 TFLOP/s (datasheet), ..., HBM 3350 GB/s (datasheet)", or why there are none."""
    if not ceilings:
        return ("none (CPU runs have no datasheet row; run `ossbench calibrate` to measure some)"
                if device_type == "cpu" else "none: device not in the datasheet table and not calibrated")
    sources = ceilings.get("sources", {})
    parts = [f"{key} {value:g} TFLOP/s ({sources.get(key, '?')})"
             for key, value in ceilings.get("compute_tflops", {}).items()]
    if ceilings.get("bandwidth_gbps"):
        parts.append(f"memory {ceilings['bandwidth_gbps']:g} GB/s ({sources.get('bandwidth', '?')})")
    origin = [f"datasheet row {ceilings['datasheet']}"] if ceilings.get("datasheet") else []
    if ceilings.get("calibration"):
        forced = " (saved with --force despite failed checks)" if ceilings.get("calibration_forced") else ""
        origin.append(f"calibration {ceilings['calibration']}{forced}")
    return ", ".join(parts) + (f"; from {' and '.join(origin)}" if origin else "")


def case_key(case: CaseResult) -> str:
    """The compute ceiling a case runs against ("bf16", "fp32", "tf32" when its params allow TF32, ...)."""
    return dtype_key(case.dtype, tf32=bool(case.params.get("tf32") or case.params.get("allow_tf32")))


@dataclass(frozen=True)
class Placement:
    """Where a case sits under its device's roofline."""

    intensity: float | None  # FLOP per byte (cost-model FLOPs / minimum bytes)
    bound: str | None  # "compute" or "memory": which roof is lower at this intensity
    fraction: float | None  # speed of light: floor time / measured median (1.0 = at the roof)
    key: str  # the compute ceiling it runs against ("bf16", "tf32", ...)
    reason: str | None = None  # why bound/fraction are unknown

    @property
    def over_ceiling(self) -> bool:
        """Faster than the ceiling allows: the ceiling is wrong (shown as a warning, never as a percentage)."""
        return over_ceiling(self.fraction)


def place(case: CaseResult, ceilings: dict[str, Any] | None) -> Placement:
    """A case's arithmetic intensity, bound and fraction of the ceiling (recorded, else computed)."""
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
    return Placement(record.get("intensity"), record.get("bound"), record.get("speed_of_light"), key)
