"""Whether a calibration can be trusted: the spread of its repeats, its plausibility against the datasheet,
the CPU's bf16/fp32 consistency, and the load of the machine it was measured on.

A ceiling is the denominator of every case's speed of light. One measured while other work held the
device reads low and makes cases look faster than the hardware allows (a CPU "speed of light" of 454%), so
`ossbench calibrate` measures each ceiling several times and refuses to save a noisy or implausible one
(docs/measure.md). Torch-free: the record is plain data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..peaks import peak_for

if TYPE_CHECKING:
    from ..hardware import Device

# Spread of one ceiling's repeats: max / min - 1. Not an IQR: a burst of other work shows up in one or two
# repeats, i.e. in the extremes, which an IQR over five values ignores.
SPREAD_METRIC = "max/min - 1"
MAX_SPREAD = 0.10
# A measured ceiling against the datasheet's: below half is a busy, throttled or misidentified device; more
# than 10% above is no dense peak (or the wrong row). A healthy H100 SXM reaches ~81% of bf16, ~90% of HBM.
PLAUSIBLE_VS_DATASHEET = (0.50, 1.10)
# CPU: the most a bf16 matmul can outrun an fp32 one, by the CPU's bf16 support (x86 /proc/cpuinfo flags).
# Peak FLOP per cycle per core, bf16 over fp32: AMX-BF16 tiles (1024) over two AVX-512 FMA units (64) are
# 16x; AVX512_BF16's dot product (two bf16 products per fp32 lane) is 2x; with neither, bf16 is widened to
# fp32 and at best as fast. Each limit is 1.5x that peak ratio, since neither matmul reaches its peak.
CPU_BF16_OVER_FP32_LIMIT = {"amx_bf16": 24.0, "avx512_bf16": 3.0, "none": 1.5}
CPUINFO = Path("/proc/cpuinfo")


def spread(values: list[float]) -> float:
    """max / min - 1 of positive values (0.10: the fastest repeat was 10% faster than the slowest)."""
    return max(values) / min(values) - 1 if values and min(values) > 0 else float("inf")


def cpu_bf16_support(cpuinfo: Path = CPUINFO) -> str | None:
    """"amx_bf16", "avx512_bf16" or "none" from an x86 CPU's flags; None where unknown (not x86, no file)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags_line = next((line for line in text.splitlines() if line.startswith("flags")), None)
    if flags_line is None:  # not x86 (an ARM lists "Features"): no rule we can justify
        return None
    flags = set(flags_line.partition(":")[2].split())
    return next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), "none")


def ceilings_of(record: dict[str, Any]) -> list[tuple[str, str, str | None, dict[str, Any]]]:
    """(label, unit, datasheet key, entry) for each measured ceiling of a calibration record."""
    rows = [(f"{key} matmul", "TFLOP/s", f"{key}_tflops", entry) for key, entry in record.get("matmul", {}).items()]
    if record.get("copy"):
        rows.append(("copy (read+write)", "GB/s", "hbm_gbps", record["copy"]))
    return rows


def value_of(entry: dict[str, Any]) -> float | None:
    return entry.get("tflops", entry.get("gbps"))


def check_calibration(record: dict[str, Any], *, max_spread: float = MAX_SPREAD,
                      bf16_support: str | None = None) -> dict[str, Any]:
    """The checks of a calibration record: ``{"ok", "problems": [{"ceiling", "check", "message"}], ...}``.

    A problem (each refuses the save): a ceiling whose repeats spread more than `max_spread`; one outside
    PLAUSIBLE_VS_DATASHEET of the device's datasheet row, where it has one; on an x86 CPU, a bf16 matmul
    ceiling beyond CPU_BF16_OVER_FP32_LIMIT times the fp32 one (`bf16_support` as `cpu_bf16_support` says).
    """
    sheet = peak_for(record.get("device_name", ""))
    lo, hi = PLAUSIBLE_VS_DATASHEET
    problems = []
    for label, unit, sheet_key, entry in ceilings_of(record):
        value, repeats = value_of(entry), entry.get("repeats") or []
        if value is None:
            continue  # skipped (no fast path, unsupported dtype): nothing saved for it
        s = entry.get("spread")
        if s is not None and s > max_spread:
            problems.append({"ceiling": label, "check": "spread", "message": (
                f"{label}: repeats spread {s:.1%} ({SPREAD_METRIC} over {len(repeats)}: {min(repeats):.4g} to "
                f"{max(repeats):.4g} {unit}), over the {max_spread * 100:g}% threshold")})
        datasheet = (sheet or {}).get(sheet_key)
        if datasheet:
            ratio = value / datasheet
            if not lo <= ratio <= hi:
                problems.append({"ceiling": label, "check": "datasheet", "message": (
                    f"{label}: {value:.4g} {unit} is {ratio:.0%} of the datasheet's {datasheet:g} ({sheet['name']}); "
                    f"plausible is {lo:.0%} to {hi:.0%}")})
    problems += _cpu_consistency(record, bf16_support)
    return {"ok": not problems, "problems": problems, "spread_metric": SPREAD_METRIC, "max_spread": max_spread,
            "datasheet": (sheet or {}).get("name"), "plausible_vs_datasheet": list(PLAUSIBLE_VS_DATASHEET),
            "cpu_bf16": bf16_support if record.get("device_type") == "cpu" else None}


def _cpu_consistency(record: dict[str, Any], bf16_support: str | None) -> list[dict[str, str]]:
    if record.get("device_type") != "cpu" or bf16_support not in CPU_BF16_OVER_FP32_LIMIT:
        return []
    matmul = record.get("matmul", {})
    bf16, fp32 = (matmul.get(k, {}).get("tflops") for k in ("bf16", "fp32"))
    limit = CPU_BF16_OVER_FP32_LIMIT[bf16_support]
    if not bf16 or not fp32 or bf16 / fp32 <= limit:
        return []
    support = "no bf16 instructions" if bf16_support == "none" else bf16_support
    return [{"ceiling": "bf16 matmul", "check": "consistency", "message": (
        f"bf16 matmul: {bf16:.4g} TFLOP/s is {bf16 / fp32:.1f}x the fp32 {fp32:.4g}; a CPU with {support} allows "
        f"at most {limit:g}x (the fp32 figure is too low: other work on the cores?)")}]


# ------------------------------------------------------------------------------------------ machine load


def machine_load(device: Device, *, nvml: Any | None = None) -> dict[str, Any]:
    """What else the machine was doing: the load average (1, 5, 15 min) and CPU count; on a GPU, the number
    of other processes holding a compute context on it (NVML), or why that count is unknown."""
    out: dict[str, Any] = {"loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                           "cpu_count": os.cpu_count()}
    if device.is_cuda:
        out["gpu_other_processes"], out["gpu_processes_note"] = other_gpu_processes(device, nvml=nvml)
    return out


def other_gpu_processes(device: Device, *, nvml: Any | None = None) -> tuple[int | None, str]:
    """(count, note) of compute processes on the GPU other than this one; (None, why) when NVML cannot say.

    Called while this process holds a context on the GPU. NVML reports PIDs of the host's namespace: inside a
    container this process's PID is not among them, and one of the processes listed is taken to be it.
    """
    from .nvml import NvmlUnavailable, open_device

    try:
        dev = open_device(device.index, nvml=nvml)
    except NvmlUnavailable as e:
        return None, str(e)
    try:
        query = getattr(dev.nvml, "nvmlDeviceGetComputeRunningProcesses", None)
        if query is None:
            return None, "nvmlDeviceGetComputeRunningProcesses not in these NVML bindings"
        pids = [getattr(p, "pid", None) for p in query(dev.handle)]
    except Exception as e:  # noqa: BLE001 - NotSupported, NoPermission, ... depending on the driver
        return None, f"nvmlDeviceGetComputeRunningProcesses failed: {e or type(e).__name__}"
    finally:
        dev.close()
    if os.getpid() in pids:
        return len(pids) - pids.count(os.getpid()), ""
    return max(len(pids) - 1, 0), "this process's PID is not among NVML's (a container?): one taken to be it"


def load_warnings(before: dict[str, Any], after: dict[str, Any], threads: int | None) -> list[str]:
    """Why the machine counts as loaded, one line each (empty when quiet).

    CPU: the 1-minute load average before measuring is at least one runnable task more than the cores the
    calibration leaves free (cpu_count - threads); the average after includes the calibration's own threads,
    so it is recorded but not judged. GPU: any other process with a compute context, before or after.
    """
    lines = []
    loadavg, cpus = before.get("loadavg"), before.get("cpu_count")
    if threads and loadavg and cpus:
        free = max(cpus - threads, 0)
        if loadavg[0] >= free + 1:
            lines.append(f"1-minute load average {loadavg[0]:.2f} before measuring, on {cpus} CPUs with "
                         f"{threads} calibration threads: other work competed for the cores")
    others = [n for n in (before.get("gpu_other_processes"), after.get("gpu_other_processes")) if n]
    if others:
        lines.append(f"{max(others)} other process(es) held a compute context on the GPU (NVML)")
    return lines
