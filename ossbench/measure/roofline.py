"""Hardware ceilings for roofline analysis.

The ceilings a run uses (calibrated where `ossbench calibrate` measured them, else the datasheet's, whose
table is ossbench/peaks.py) and the roofline arithmetic per case (intensity, bound, floor time, achieved
fraction of the binding ceiling). Kept free of torch so that `ossbench env` and report rendering stay cheap to import.
"""

from __future__ import annotations

from typing import Any

# The datasheet table lives on the ground floor (ossbench/peaks.py); re-exported for existing callers.
from ..peaks import PEAK_TABLE, peak_for, peak_row, peak_row_name  # noqa: F401

# Ceiling keys: compute per dtype key (TFLOP/s) and memory bandwidth (GB/s). A calibration file and a
# datasheet row both use these names.
COMPUTE_KEYS = ("bf16", "fp16", "tf32", "fp32")
DTYPE_KEYS = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}

# A case measured faster than its ceiling allows: the ceiling is wrong (a calibration made on a busy machine,
# an old one, the wrong datasheet row), not the case. Recorded in `roofline.flags` and shown as this text,
# never as a plain percentage (docs/measure.md).
CEILING_BELOW_MEASURED = "ceiling_below_measured"
CEILING_BELOW_MEASURED_SHORT = "ceiling below measured"  # a terminal cell; the table's caption says the rest
CEILING_BELOW_MEASURED_TEXT = f"{CEILING_BELOW_MEASURED_SHORT}: calibration stale or wrong"


def over_ceiling(fraction: float | None) -> bool:
    """True for a fraction of a ceiling above 1 (100%): the measurement beat the ceiling."""
    return fraction is not None and fraction > 1.0


def fraction_text(fraction: float) -> str:
    """'42.0%', or for a fraction above 1 the warning with the figure: 'ceiling below measured: ... (454%)'."""
    if over_ceiling(fraction):
        return f"{CEILING_BELOW_MEASURED_TEXT} ({fraction * 100:.0f}%)"
    return f"{fraction * 100:.1f}%"


def dtype_key(dtype: str, *, tf32: bool = False) -> str:
    """The ceiling a dtype's matmuls run against: "bf16", "fp16", "fp32", "tf32" (float32 with TF32 allowed)."""
    key = DTYPE_KEYS.get(dtype, dtype)
    return "tf32" if key == "fp32" and tf32 else key


def resolve_ceilings(datasheet: dict[str, Any] | None, calibration: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ceilings a run uses: calibrated values where a calibration has them, else the datasheet row's.

    A calibration measures what this device reaches (a large matmul per dtype, a large device copy); the
    datasheet gives the vendor's peak. Each value's source is recorded, both sets are kept. None when
    neither exists (a CPU without calibration): the roofline then says "no ceiling" instead of inventing one.
    """
    cal = (calibration or {}).get("ceilings", {})
    sheet = datasheet or {}
    if not cal and not datasheet:
        return None
    compute: dict[str, float] = {}
    sources: dict[str, str] = {}
    for key in COMPUTE_KEYS:
        if cal.get(f"{key}_tflops") is not None:
            compute[key], sources[key] = float(cal[f"{key}_tflops"]), "calibrated"
        elif sheet.get(f"{key}_tflops") is not None:
            compute[key], sources[key] = float(sheet[f"{key}_tflops"]), "datasheet"
    bandwidth = None
    if cal.get("copy_gbps") is not None:
        bandwidth, sources["bandwidth"] = float(cal["copy_gbps"]), "calibrated"
    elif sheet.get("hbm_gbps") is not None:
        bandwidth, sources["bandwidth"] = float(sheet["hbm_gbps"]), "datasheet"
    return {
        "compute_tflops": compute,
        "bandwidth_gbps": bandwidth,
        "sources": sources,
        "datasheet": sheet.get("name"),
        "calibration": (calibration or {}).get("path"),
        # saved with `calibrate --force` although its checks failed (noisy or implausible)
        "calibration_forced": bool((calibration or {}).get("forced")),
        "calibrated_values": dict(cal) or None,
    }


def roofline(flops: float | None, nbytes: float | None, median_ms: float | None, key: str,
             ceilings: dict[str, Any] | None) -> dict[str, Any]:
    """Where one case sits under the roofline of `ceilings` (see `resolve_ceilings`), for dtype key `key`.

    intensity = flops / bytes (FLOP per byte of the cost model's minimum traffic); the ridge point is
    peak FLOP/s / peak bytes/s; a case left of the ridge is memory-bound. The floor time is
    max(flops / peak compute, bytes / peak bandwidth): no implementation runs faster (within the cost
    model). `speed_of_light` = floor / measured median, i.e. the achieved fraction of the binding ceiling;
    above 1, `flags` holds CEILING_BELOW_MEASURED (the ceiling, not the case, is wrong).
    """
    if not flops or not nbytes or not median_ms or median_ms <= 0:
        return {"available": False, "reason": "no FLOP/byte cost or no timing for this case"}
    intensity = flops / nbytes
    if ceilings is None:
        return {"available": False, "reason": "no ceiling: device not in the datasheet table and not calibrated "
                                              "(run `ossbench calibrate`)", "intensity": intensity}
    tflops = ceilings.get("compute_tflops", {}).get(key)
    gbps = ceilings.get("bandwidth_gbps")
    if tflops is None or gbps is None:
        missing = f"{key} compute" if tflops is None else "memory bandwidth"
        return {"available": False, "reason": f"no ceiling for {missing} on this device "
                                              "(run `ossbench calibrate`)", "intensity": intensity}
    peak_flops, peak_bytes = tflops * 1e12, gbps * 1e9
    ridge = peak_flops / peak_bytes
    compute_s, memory_s = flops / peak_flops, nbytes / peak_bytes
    bound = "compute" if compute_s >= memory_s else "memory"
    floor_s = max(compute_s, memory_s)
    sources = ceilings.get("sources", {})
    fraction = floor_s / (median_ms / 1e3)
    return {
        "available": True,
        "dtype_key": key,
        "intensity": intensity,
        "ridge": ridge,
        "bound": bound,
        "ceiling_tflops": tflops,
        "ceiling_gbps": gbps,
        "compute_source": sources.get(key),
        "bandwidth_source": sources.get("bandwidth"),
        "floor_ms": floor_s * 1e3,
        "speed_of_light": fraction,
        "flags": [CEILING_BELOW_MEASURED] if over_ceiling(fraction) else [],
    }
