"""A run's ceilings in words, for the report's header. Which ceilings a run has, and where each case sits
under them, is `ossbench.analysis`'s (`run_ceilings`, `place`)."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any


def shown_path(path: str | None) -> str | None:
    """A local path as a shared report shows it: an absolute path (a home folder, a CI workspace) by its file
    name only; a relative one (``suites/attention.yaml``) as it is. The full path stays in results.json."""
    if not path:
        return path
    p = PurePath(path)
    return p.name if p.is_absolute() or str(path).startswith("~") else str(path)


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
        origin.append(f"calibration {shown_path(ceilings['calibration'])}{forced}")
    return ", ".join(parts) + (f"; from {' and '.join(origin)}" if origin else "")
