"""Kernel breakdown of one case: a few extra calls under torch.profiler, after timing, never during it.

Each profiled call runs as bench ran it (the cold-cache flush first when the case was timed cold), then
synchronises, so every GPU kernel can be attributed to its call: the kernels that start inside a call's
window belong to it; the flush finished before the window opened. From that: the top kernels (on CPU: the
top aten ops by self time), kernels and launches per call, host time per call (issuing the work) against
device busy time per call (running it), and a Chrome trace (gzipped) that Perfetto and chrome://tracing open.

The per-call synchronisation is what makes the attribution exact; it also means the device never runs
ahead of the host here, which is the point of the host-vs-device comparison: `launch_bound` says the host
needs longer to issue a call than the device needs to run it, so back-to-back calls would leave it idle.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .quiet import quiet_profiler

CALL = "ossbench.call"  # host: issuing one call
WINDOW = "ossbench.window"  # host: one call and the synchronisation after it
_MARKERS = (CALL, WINDOW)
_LAUNCH = re.compile(r"(cu|cuda)(LaunchKernel|LaunchKernelEx|LaunchKernelExC|GraphLaunch|LaunchCooperativeKernel)")
DEFAULT_CALLS = 5
DEFAULT_TOP = 10


def trace_file_name(case_id: str) -> str:
    """A file name for a case's trace: "attention/full/seq_len=64" -> "attention_full_seq_len=64-<hash>.json.gz".

    The readable part alone would map "p/q" and "p_q" to one file (the second trace overwriting the first),
    so 12 hex digits of the id's SHA-256 follow it: distinct ids get distinct files (a collision needs
    ~2**24 cases). The readable part is cut at 120 characters to stay within file-name limits.
    """
    readable = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", case_id).strip("_")[:120]
    digest = hashlib.sha256(case_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{readable}-{digest}.json.gz"


def profile_calls(fn: Callable[[], object], device: str, *, calls: int = DEFAULT_CALLS, warmup_calls: int = 2,
                  flush: Callable[[], None] | None = None, top: int = DEFAULT_TOP,
                  trace_path: str | Path | None = None) -> dict[str, Any]:
    """Profile `calls` calls of fn on `device` ("cpu" or "cuda:N"); see the module doc and docs/measure.md.

    Returns the `profile` record of a case; writes a gzipped Chrome trace to `trace_path` when given.
    """
    quiet_profiler()  # before torch.profiler starts for the first time in this process
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    is_cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if is_cuda else (lambda: None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if is_cuda else [])
    for _ in range(warmup_calls):  # the profiler's own start-up must not meet a cold first call
        fn()
    sync()
    with profile(activities=activities) as prof:
        for _ in range(calls):
            if flush is not None:
                flush()
            sync()
            with record_function(WINDOW):
                with record_function(CALL):
                    fn()
                sync()
    record = summarize_events(list(prof.events()), calls, is_cuda, top)
    record["cache"] = "cold" if flush is not None else "hot"
    record["trace"] = None
    if trace_path is not None:
        try:
            record["trace"] = str(export_trace(prof, Path(trace_path)))
        except Exception as e:  # noqa: BLE001 - a failed export loses the trace, not the breakdown
            record["trace_error"] = f"{type(e).__name__}: {e}"
    return record


def export_trace(prof, path: Path) -> Path:
    """Write the profiler's Chrome trace, gzipped (Perfetto and chrome://tracing read .json.gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        with raw.open("rb") as src, gzip.open(path, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
    return path


# ----------------------------------------------------------------------------------- reading the events


def _on_device(e) -> bool:
    kind = getattr(getattr(e, "device_type", None), "name", str(getattr(e, "device_type", "")))
    return kind.upper() in ("CUDA", "PRIVATEUSE1", "XPU", "MTIA", "HPU")


def _is_device(e) -> bool:
    """Device work: kernels, memcpy, memset (not the GPU-side copies of our record_function markers)."""
    return _on_device(e) and not _is_marker(e)


def _is_marker(e) -> bool:
    return e.name in _MARKERS or bool(getattr(e, "is_user_annotation", False))


def _span(e) -> tuple[float, float]:
    return float(e.time_range.start), float(e.time_range.end)


def _inside(t: float, ranges: list[tuple[float, float]]) -> int | None:
    for i, (lo, hi) in enumerate(ranges):
        if lo <= t <= hi:
            return i
    return None


def _union_us(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(spans):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total


def summarize_events(events: list, calls: int, is_cuda: bool, top: int = DEFAULT_TOP) -> dict[str, Any]:
    """The profile record from torch.profiler FunctionEvents (times in the results are milliseconds)."""
    call_spans = [_span(e) for e in events if e.name == CALL and not _on_device(e)]
    windows = [_span(e) for e in events if e.name == WINDOW and not _on_device(e)]
    host_ms = sum(hi - lo for lo, hi in call_spans) / 1e3 / calls
    record: dict[str, Any] = {"available": True, "activities": ["cpu", "cuda"] if is_cuda else ["cpu"],
                              "calls": calls, "host_ms_per_call": host_ms}
    if is_cuda:
        record.update(_device_breakdown(events, windows, call_spans, calls, top))
        device_ms = record["device_ms_per_call"]
        record["launch_bound"] = host_ms > device_ms if device_ms else None
    else:
        record.update(_cpu_breakdown(events, call_spans, calls, top))
        record["launch_bound"] = None  # the host does the work itself: nothing is launched
    return record


def _device_breakdown(events, windows, call_spans, calls, top) -> dict[str, Any]:
    device = [e for e in events if _is_device(e)]
    by_call: list[list[tuple[float, float]]] = [[] for _ in windows]
    mine, note = [], None
    for e in device:
        i = _inside(_span(e)[0], windows)
        if i is not None:
            by_call[i].append(_span(e))
            mine.append(e)
    if device and not mine:  # clocks not aligned on this platform: keep everything, say so
        mine, note = device, "device events could not be matched to calls; all profiled device work counted"
    total_us = sum(_span(e)[1] - _span(e)[0] for e in mine)
    groups: dict[str, list[float]] = {}
    for e in mine:
        groups.setdefault(e.name, []).append(_span(e)[1] - _span(e)[0])
    table = sorted(({"name": name, "calls": len(d), "total_ms": sum(d) / 1e3, "mean_ms": sum(d) / len(d) / 1e3,
                     "share": sum(d) / total_us if total_us else 0.0} for name, d in groups.items()),
                   key=lambda r: -r["total_ms"])
    spans = [max(h for _, h in c) - min(lo for lo, _ in c) for c in by_call if c]
    busy_us = _union_us([_span(e) for e in mine])
    launches = sum(1 for e in events if not _on_device(e) and _LAUNCH.search(e.name)
                   and _inside(_span(e)[0], call_spans) is not None)
    out = {
        "top": table[:top],
        "kernels_per_call": len(mine) / calls,
        "launches_per_call": launches / calls,
        "device_ms_per_call": busy_us / 1e3 / calls,
        "device_span_ms_per_call": sum(spans) / len(spans) / 1e3 if spans else None,
        "distinct_kernels": len(groups),
    }
    span_total = sum(spans)
    out["device_idle_fraction"] = max(0.0, 1 - busy_us / span_total) if span_total else None
    if note:
        out["note"] = note
    return out


def _cpu_breakdown(events, call_spans, calls, top) -> dict[str, Any]:
    ops = [e for e in events if not _is_marker(e) and not _on_device(e)
           and _inside(_span(e)[0], call_spans) is not None]
    groups: dict[str, list[float]] = {}
    for e in ops:
        groups.setdefault(e.name, []).append(float(e.self_cpu_time_total))
    host_us = sum(hi - lo for lo, hi in call_spans)
    table = sorted(({"name": name, "calls": len(d), "total_ms": sum(d) / 1e3, "mean_ms": sum(d) / len(d) / 1e3,
                     "share": sum(d) / host_us if host_us else 0.0} for name, d in groups.items()),
                   key=lambda r: -r["total_ms"])
    in_ops = sum(r["total_ms"] for r in table) * 1e3
    return {
        "top": table[:top],
        "ops_per_call": len(ops) / calls,
        "kernels_per_call": None,
        "launches_per_call": None,
        "device_ms_per_call": None,
        "untracked_host_share": max(0.0, 1 - in_ops / host_us) if host_us else None,  # Python, not in aten ops
        "distinct_ops": len(groups),
    }
