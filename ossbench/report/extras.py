"""Optional measurements a case may carry, read defensively: NVML power and energy (``case.power``), the
profiler's kernel breakdown (``case.profile``) and clock monitoring (``case.clocks``). Older results files
and CPU runs lack some or all of them; the report then leaves those sections or columns out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote

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
    trace: str | None = None  # the Chrome trace's file name
    trace_href: str | None = None  # a relative link to it from the page's folder, when the file is there


def kernel_breakdown(case: CaseResult, page_dir: str | os.PathLike | None = None) -> KernelBreakdown | None:
    """The case's profiled kernels (heaviest first) and per-call figures; None when it was not profiled.
    `page_dir`: the folder the page is written to, for the link to the case's trace."""
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
    trace = _get(prof, "trace")
    name = PurePath(str(trace)).name if trace else None
    return KernelBreakdown(rows, facts, name, trace_link(str(trace), page_dir) if trace else None)


TRACES = "traces"  # the run's folder for Chrome traces (ossbench.depth), beside results.json and report.html


def trace_link(recorded: str, page_dir: str | os.PathLike | None) -> str | None:
    """A relative URL from the page's folder to a trace: ``traces/<name>`` beside the page (where `ossbench
    run` puts them), else the recorded path when it exists from here; None when the file is not found."""
    here = Path(page_dir or ".")
    name = PurePath(recorded).name
    for candidate in (here / TRACES / name, Path(recorded)):
        if candidate.is_file():
            return quote(Path(os.path.relpath(candidate.resolve(), here.resolve())).as_posix())
    return None


@dataclass(frozen=True)
class KernelTable:
    """The profiled cases of one shape (same family, mode and sweep point) side by side: the heaviest
    kernels of any of them, each variant's time per call of it."""

    shape: str  # "attention, prefill, seq_len=512"
    cases: list[CaseResult]  # columns
    rows: list[tuple[str, list[float | None]]]  # (kernel, ms per call in each case; None: not in its top list)
    totals: list[float | None]  # device busy time per call of each case (CPU: host time per call)


KERNEL_ROWS = 12  # rows of a side-by-side table: the heaviest kernels of any of its cases


def kernel_tables(cases: list[CaseResult]) -> list[KernelTable]:
    """One table per shape that has profiled cases, variants side by side (see `KernelTable`)."""
    groups: dict[tuple, list[tuple[CaseResult, KernelBreakdown]]] = {}
    for c in cases:
        k = kernel_breakdown(c)
        if k is not None:
            key = (c.family, tuple((a, repr(v)) for a, v in c.axes.items()))
            groups.setdefault(key, []).append((c, k))
    tables = []
    for (family, _), members in groups.items():
        heaviest: dict[str, float] = {}
        for _, k in members:
            for row in k.rows:
                heaviest[row.name] = max(heaviest.get(row.name, 0.0), row.ms_per_call or 0.0)
        names = sorted(heaviest, key=heaviest.get, reverse=True)[:KERNEL_ROWS]
        per_case = [{row.name: row.ms_per_call for row in k.rows} for _, k in members]
        rows = [(name, [times.get(name) for times in per_case]) for name in names]
        totals = [_get(_record(c, "profile"), "device_ms_per_call") or _get(_record(c, "profile"), "host_ms_per_call")
                  for c, _ in members]
        axes = members[0][0].axes
        shape = ", ".join([family] + [str(v) if a == "mode" else f"{a}={v}" for a, v in axes.items()])
        tables.append(KernelTable(shape, [c for c, _ in members], rows, totals))
    return tables


def _div(a: float | None, b: float) -> float | None:
    return None if a is None else a / b
