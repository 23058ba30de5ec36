"""Optional measurements a case may carry, read defensively: NVML power and energy (``case.power``), the
profiler's kernel breakdown (``case.profile``) and clock monitoring (``case.clocks``). Older results files
and CPU runs lack some or all of them; the report then leaves those sections or columns out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..results import CaseResult


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _record(case: CaseResult, name: str) -> Any:
    """An optional record of the case, or None when absent or marked ``available: False``."""
    record = getattr(case, name, None)
    return None if record is None or _get(record, "available") is False else record


def energy_per_token_j(case: CaseResult) -> float | None:
    """Joules per token over the timed samples (NVML's energy counter / calls / tokens per call)."""
    energy = _get(_record(case, "power"), "energy")
    return None if energy is None or _get(energy, "available") is False else _get(energy, "per_token_j")


def mean_power_w(case: CaseResult) -> float | None:
    return _get(_get(_record(case, "power"), "power_w"), "mean")


def throttled(case: CaseResult) -> bool:
    """Some kept sample was taken while NVML reported power or thermal throttling."""
    flag = getattr(case, "throttled", None)
    return bool(flag if flag is not None else _get(getattr(case, "clocks", None), "throttled"))


def dram_over_model(case: CaseResult) -> float | None:
    """Measured DRAM bytes (hardware counters) over the cost model's minimum bytes, when measured."""
    return _get(_record(case, "counters"), "measured_over_model")


# Headline figures of a profile record: (label, key, unit).
FACTS = (("kernels per call", "kernels_per_call", ""), ("launches per call", "launches_per_call", ""),
         ("aten ops per call", "ops_per_call", ""), ("host time per call", "host_ms_per_call", " ms"),
         ("device busy per call", "device_ms_per_call", " ms"))


@dataclass(frozen=True)
class KernelRow:
    name: str
    calls_per_call: float | None  # launches of this kernel per call of the case's function
    ms_per_call: float | None  # its GPU time (CPU: self time) per call
    share: float | None  # of the profiled time, 0..1


@dataclass(frozen=True)
class KernelBreakdown:
    rows: list[KernelRow]
    facts: list[tuple[str, str]]  # headline figures, (label, value) in words


def kernel_breakdown(case: CaseResult) -> KernelBreakdown | None:
    """The case's profiled kernels (heaviest first) and per-call figures; None when it was not profiled."""
    prof = _record(case, "profile")
    top = _get(prof, "top")
    if not top:
        return None
    calls = _get(prof, "calls") or 1
    rows = [KernelRow(str(_get(k, "name")), _div(_get(k, "calls"), calls), _div(_get(k, "total_ms"), calls),
                      _get(k, "share")) for k in top]
    facts = []
    for label, key, unit in FACTS:
        value = _get(prof, key)
        if value is not None:
            facts.append((label, f"{value:.4g}{unit}"))
    if _get(prof, "launch_bound") is not None:
        facts.append(("launch-bound", "yes: the host takes longer to issue a call than the device to run it"
                      if _get(prof, "launch_bound") else "no"))
    if _get(prof, "trace"):
        facts.append(("trace", str(_get(prof, "trace"))))
    return KernelBreakdown(rows, facts)


def _div(a: float | None, b: float) -> float | None:
    return None if a is None else a / b
