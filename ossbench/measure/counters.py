"""Measured DRAM traffic of one case, from hardware counters: CUPTI through torch.profiler, or Nsight Compute.

The cost model's bytes are a *minimum* (each input read once, each output written once); a kernel that
re-reads, spills or pads moves more. The hardware counters `dram__bytes_read.sum` and
`dram__bytes_write.sum` say what actually crossed the DRAM interface, per call.

Two sources, tried in this order:
1. torch.profiler in CUPTI range-profiler mode (`_ExperimentalConfig(profiler_metrics=...)`). Only torch
   builds whose Kineto was linked with NVIDIA's perf libraries return values; stock wheels usually do not.
   Whether this build does is probed once per process in a subprocess (a failing CUPTI session must not
   take the run down with it).
2. Nsight Compute (`ncu`, with `--ncu`): the case is re-run in a child process under
   `ncu --metrics ... --csv --profile-from-start off`, only the calls between cudaProfilerStart/Stop are
   profiled, and the CSV is parsed. ncu flushes the caches before each kernel (its default cache control),
   so the bytes are cold-cache bytes, matching bench's default cold mode.

When neither is possible the record says so: `{"available": False, "reason": "..."}`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .quiet import quiet_profiler

DRAM_METRICS = ("dram__bytes_read.sum", "dram__bytes_write.sum")
NCU_TIMEOUT_S = 600
_BYTE_UNITS = {"byte": 1, "bytes": 1, "b": 1, "kbyte": 1e3, "kb": 1e3, "mbyte": 1e6, "mb": 1e6,
               "gbyte": 1e9, "gb": 1e9, "tbyte": 1e12, "tb": 1e12, "kibyte": 2**10, "kib": 2**10,
               "mibyte": 2**20, "mib": 2**20, "gibyte": 2**30, "gib": 2**30}


def unavailable(reason: str, **extra: Any) -> dict[str, Any]:
    return {"available": False, "reason": reason, **extra}


def dram_record(read_bytes: float, write_bytes: float, calls: int, source: str,
                median_ms: float | None = None, model_bytes: float | None = None, **extra: Any) -> dict[str, Any]:
    """Per-call DRAM bytes and, given the case's median, the measured GB/s next to the modelled minimum."""
    per_read, per_write = read_bytes / calls, write_bytes / calls
    total = per_read + per_write
    rec: dict[str, Any] = {"available": True, "source": source, "calls": calls, "read_bytes": per_read,
                           "write_bytes": per_write, "bytes": total, **extra}
    if median_ms:
        rec["gbps"] = total / (median_ms / 1e3) / 1e9
    if model_bytes:
        rec["model_bytes"] = model_bytes
        rec["measured_over_model"] = total / model_bytes
    return rec


# -------------------------------------------------------------------------------- CUPTI via torch.profiler


def metrics_from_trace(trace: dict[str, Any], metrics: Sequence[str] = DRAM_METRICS) -> dict[str, float]:
    """Sum each metric over the trace events that carry it in their args (Kineto's range-profiler output)."""
    sums: dict[str, float] = {}
    for event in trace.get("traceEvents", []):
        args = event.get("args") or {}
        for m in metrics:
            value = args.get(m)
            if isinstance(value, (int, float)):
                sums[m] = sums.get(m, 0.0) + float(value)
    return sums


def cupti_dram_bytes(fn: Callable[[], object], calls: int = 3) -> dict[str, Any]:
    """DRAM bytes of `calls` calls of fn through torch.profiler's CUPTI range profiler (in this process)."""
    quiet_profiler()
    import torch
    from torch.profiler import ProfilerActivity, profile

    config_cls = getattr(torch.profiler, "_ExperimentalConfig", None)
    if config_cls is None:
        return unavailable("this torch has no torch.profiler._ExperimentalConfig")
    fn()
    torch.cuda.synchronize()
    config = config_cls(profiler_metrics=list(DRAM_METRICS), profiler_measure_per_kernel=False)
    with profile(activities=[ProfilerActivity.CUDA], experimental_config=config) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        sums = metrics_from_trace(json.loads(path.read_text()))
    if set(sums) != set(DRAM_METRICS):
        return unavailable("torch.profiler returned no CUPTI metric values (this torch's Kineto was built "
                           "without the CUPTI range profiler)")
    return {"read": sums[DRAM_METRICS[0]], "write": sums[DRAM_METRICS[1]], "calls": calls}


_PROBE = """
import json, torch
from ossbench.measure.counters import cupti_dram_bytes
a = torch.randn(4096, 4096, device="cuda")
b = torch.empty_like(a)
print("OSSBENCH-PROBE " + json.dumps(cupti_dram_bytes(lambda: b.copy_(a), calls=1)))
"""
_probe_result: tuple[bool, str] | None = None


def child_env() -> dict[str, str]:
    """The environment for a child Python that must import this ossbench (installed or not)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": root + (os.pathsep + path if path else "")}


def cupti_supported(timeout_s: float = 180.0) -> tuple[bool, str]:
    """Whether this torch build returns CUPTI DRAM metrics, probed once in a child process: (ok, reason)."""
    global _probe_result
    if _probe_result is not None:
        return _probe_result
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s,
                              env=child_env())
    except (OSError, subprocess.TimeoutExpired) as e:
        _probe_result = (False, f"CUPTI probe did not finish: {type(e).__name__}")
        return _probe_result
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("OSSBENCH-PROBE ")), None)
    if line is None:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        _probe_result = (False, f"CUPTI probe failed (exit {done.returncode}): {tail[:200]}")
    else:
        result = json.loads(line.split(" ", 1)[1])
        ok = "read" in result and result["read"] > 0
        _probe_result = (ok, "" if ok else result.get("reason", "CUPTI probe returned no DRAM bytes"))
    return _probe_result


# ---------------------------------------------------------------------------------------- Nsight Compute


def ncu_path() -> str | None:
    return shutil.which("ncu")


def ncu_command(argv: Sequence[str], metrics: Sequence[str] = DRAM_METRICS, ncu: str = "ncu") -> list[str]:
    """ncu around `argv`, profiling only between cudaProfilerStart and cudaProfilerStop, CSV in base units."""
    return [ncu, "--metrics", ",".join(metrics), "--csv", "--print-units", "base", "--profile-from-start", "off",
            "--target-processes", "all", *argv]


def _number(text: str) -> float:
    return float(text.replace(",", "").strip())


def parse_ncu_csv(text: str) -> list[dict[str, Any]]:
    """Rows of ncu's `--csv` metric table: {"id", "kernel", "metric", "unit", "value" (bytes when a byte unit)}.

    ncu prints its own `==PROF==` lines and the program's output before the table, so everything before
    the header row (the line starting with `"ID"`) is skipped.
    """
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith('"ID"')), None)
    if start is None:
        return []
    rows = []
    for row in csv.DictReader(io.StringIO("\n".join(lines[start:]))):
        metric, raw = row.get("Metric Name"), row.get("Metric Value")
        if not metric or raw is None:
            continue
        unit = (row.get("Metric Unit") or "").strip()
        try:
            value = _number(raw)
        except ValueError:
            continue  # "n/a" and the like
        scale = _BYTE_UNITS.get(unit.lower())
        rows.append({"id": row.get("ID"), "kernel": row.get("Kernel Name", ""), "metric": metric,
                     "unit": "byte" if scale else unit, "value": value * scale if scale else value})
    return rows


def dram_from_ncu(rows: list[dict[str, Any]], calls: int, **kwargs: Any) -> dict[str, Any]:
    """Total DRAM bytes over the profiled kernels, per call, with the kernels' count and the busiest ones."""
    got = {m: [r for r in rows if r["metric"] == m] for m in DRAM_METRICS}
    if not all(got.values()):
        return unavailable("ncu's output had no DRAM byte metrics (were any kernels profiled?)")
    read = sum(r["value"] for r in got[DRAM_METRICS[0]])
    write = sum(r["value"] for r in got[DRAM_METRICS[1]])
    per_kernel: dict[str, float] = {}
    for m in DRAM_METRICS:
        for r in got[m]:
            per_kernel[r["kernel"]] = per_kernel.get(r["kernel"], 0.0) + r["value"]
    busiest = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:5]
    return dram_record(read, write, calls, "ncu", kernels_profiled=len(got[DRAM_METRICS[0]]),
                       top_kernels=[{"kernel": k[:200], "bytes": v / calls} for k, v in busiest], **kwargs)


def run_ncu(argv: Sequence[str], calls: int, *, timeout_s: float = NCU_TIMEOUT_S, env: dict[str, str] | None = None,
            **kwargs: Any) -> dict[str, Any]:
    """Run `argv` (a program making `calls` calls between cudaProfilerStart/Stop) under ncu; the DRAM record."""
    ncu = ncu_path()
    if ncu is None:
        return unavailable("ncu (Nsight Compute) is not on the PATH")
    try:
        done = subprocess.run(ncu_command(argv, ncu=ncu), capture_output=True, text=True, timeout=timeout_s,
                              env=env)
    except subprocess.TimeoutExpired:
        return unavailable(f"ncu did not finish within {timeout_s:g} s")
    except OSError as e:
        return unavailable(f"could not start ncu: {e}")
    rows = parse_ncu_csv(done.stdout)
    if done.returncode != 0 or not rows:
        err = [ln for ln in (done.stdout + "\n" + done.stderr).splitlines() if "ERR" in ln or "rror" in ln]
        return unavailable(f"ncu exited {done.returncode}: {(err or ['no metric rows in its output'])[-1][:300]}")
    return dram_from_ncu(rows, calls, **kwargs)
