"""`ossbench calibrate`: measure this device's achievable ceilings and save them for runs to use.

Datasheet peaks are what the vendor promises; a large matmul per dtype and a large device-to-device copy
show what this device, driver and torch actually reach (an H100 SXM: ~800 of 989 bf16 TFLOP/s, ~3.0 of
3.35 TB/s). Runs then judge each case against these ceilings (`roofline.resolve_ceilings`).

Each ceiling is measured several times, the repeats interleaved (one round over every ceiling, then the
next), so other work that starts or stops mid-way shows as a spread; the ceiling is the median repeat. The
record carries its checks and the machine load (`calibration_checks`), and `save_calibration` refuses a
record whose checks failed unless forced.

Files: one JSON per device under `calibration_dir()` ($OSSBENCH_CALIBRATION_DIR, else
$XDG_CACHE_HOME/ossbench/calibration, else ~/.cache/ossbench/calibration), named by `device_slug`.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..hardware import Device, resolve_device
from ..results import write_atomic
from .calibration_checks import (MAX_SPREAD, check_calibration, cpu_bf16_support, load_warnings, machine_load,
                                 spread)
from .spec import BenchSpec

SCHEMA = "ossbench.calibration/1"
# name -> (torch dtype name, allow TF32 in matmuls)
CUDA_MATMULS = {"bf16": ("bfloat16", False), "fp16": ("float16", False), "tf32": ("float32", True),
                "fp32": ("float32", False)}
CPU_MATMULS = {"fp32": ("float32", False), "bf16": ("bfloat16", False)}
CUDA_MATMUL_N = 8192  # large enough to fill an H100; 1.1 TFLOP per bf16 call
CUDA_COPY_BYTES = 2**30
CPU_MATMUL_N = 512
CPU_COPY_BYTES = 64 * 2**20  # well beyond a CPU's last-level cache
CPU_SLOW_CALL_S = 0.25  # a CPU dtype whose one call takes longer than this has no fast path: not a ceiling
DEFAULT_REPEATS = 5  # measurements of each ceiling; enough for a spread, ~5x one measurement's time
QUICK_REPEATS = 3
# Ceilings are hot-cache figures: the copy and the matmuls are far larger than any cache anyway. Otherwise
# the timer's defaults, with a longer warm-up and a shorter budget (each ceiling is measured `repeats` times).
TIMING = BenchSpec(cache="hot", warmup_s=0.3, max_time_s=5.0)
QUICK_TIMING = TIMING.replace(warmup_s=0.05, min_samples=5, min_time_s=0.1, max_time_s=0.6, target_rel_ci=0.05)


def calibration_dir() -> Path:
    env = os.environ.get("OSSBENCH_CALIBRATION_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "ossbench" / "calibration"


def device_slug(device_name: str, device_type: str = "cuda", threads: int | None = None) -> str:
    """File-name key: "nvidia-h100-80gb-hbm3"; on CPU the model and torch's thread count ("cpu-...-2t")."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "unknown"
    if device_type == "cpu":
        return f"cpu-{slug}-{threads}t" if threads else f"cpu-{slug}"
    return slug


def calibration_path(device_name: str, device_type: str, threads: int | None = None,
                     directory: Path | None = None) -> Path:
    return (directory or calibration_dir()) / f"{device_slug(device_name, device_type, threads)}.json"


class CalibrationRefused(Exception):
    """A calibration whose checks failed (noisy or implausible): not saved unless forced."""

    def __init__(self, problems: list[dict[str, str]]) -> None:
        self.problems = problems
        super().__init__("calibration not saved: " + "; ".join(p["message"] for p in problems))


@dataclass
class _Ceiling:
    """One ceiling's timed call, its buffers allocated once, measured once per round."""

    fn: Callable[[], object] | None  # None when skipped
    work: float  # FLOPs (matmul) or bytes moved (copy) per call
    unit: str  # "tflops" (work / s / 1e12) or "gbps" (work / s / 1e9)
    info: dict[str, Any]  # {"n": ...} or {"bytes": ...}
    tf32: bool = False
    skipped: str | None = None
    runs: list[Any] = field(default_factory=list)  # one bench Measurement per repeat

    def measure(self, bench, torch, device: Device, timing: BenchSpec) -> None:
        if self.fn is None:
            return
        with _allow_tf32(torch, self.tf32):
            try:
                self.runs.append(bench(self.fn, spec=timing, device=device))
            except (RuntimeError, TypeError) as e:  # a dtype this device/torch cannot multiply
                self.fn, self.skipped, self.runs = None, f"{type(e).__name__}: {e}", []

    def summary(self) -> dict[str, Any]:
        if self.fn is None or not self.runs:
            return {**self.info, self.unit: None, "skipped": self.skipped or "not measured"}
        scale = 1e12 if self.unit == "tflops" else 1e9
        medians = [m.median_ms for m in self.runs]
        values = [self.work / (ms / 1e3) / scale for ms in medians]
        median_ms = statistics.median(medians)
        return {**self.info, self.unit: self.work / (median_ms / 1e3) / scale, "median_ms": median_ms,
                "repeats": values, "spread": spread(values), "converged": all(m.converged for m in self.runs),
                "runs": [{"median_ms": m.median_ms, "rel_ci": m.rel_ci, "samples": m.n, "converged": m.converged}
                         for m in self.runs]}


@contextmanager
def _allow_tf32(torch, allow: bool):
    was = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = was


def calibrate(device: str | Device, *, quick: bool = False, repeats: int | None = None, matmul_n: int | None = None,
              copy_bytes: int | None = None, max_spread: float = MAX_SPREAD) -> dict[str, Any]:
    """Measure matmul TFLOP/s per dtype and copy GB/s (read + write bytes) on `device` (a Device, or a spec
    for `hardware.resolve_device`: "cpu", "cuda:N").

    Returns the calibration record with its `checks` and `load` (not saved; see `save_calibration`). On
    CUDA: bf16, fp16, tf32 and fp32 matmuls of n x n (default 8192) and a 1 GiB copy; on CPU: fp32 (and bf16
    when it has a fast path) matmuls of 512 and a 64 MiB copy, at torch's current thread count. Each is
    measured `repeats` times (default 5, 3 with `quick`); its ceiling is the median repeat.
    """
    import torch

    from .timer import bench

    k = repeats or (QUICK_REPEATS if quick else DEFAULT_REPEATS)
    if k < 2:
        raise ValueError(f"repeats must be at least 2 to measure a spread, got {k}")
    device = resolve_device(device)
    dev, is_cuda = device.torch_device, device.is_cuda
    if is_cuda:
        torch.cuda.set_device(dev)
    threads = None if is_cuda else torch.get_num_threads()
    n = matmul_n or (CUDA_MATMUL_N if is_cuda else CPU_MATMUL_N)
    timing = QUICK_TIMING if quick else TIMING
    matmuls = {key: _matmul(torch, dev, getattr(torch, dtype_name), tf32, n)
               for key, (dtype_name, tf32) in (CUDA_MATMULS if is_cuda else CPU_MATMULS).items()}
    copy = _copy(torch, dev, copy_bytes or (CUDA_COPY_BYTES if is_cuda else CPU_COPY_BYTES))
    before = machine_load(device)  # after the buffers: on a GPU this process now holds its context
    for _ in range(k):
        for ceiling in (*matmuls.values(), copy):
            ceiling.measure(bench, torch, device, timing)
    after = machine_load(device)
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "device_type": device.type,
        "device_name": device.name,
        "threads": threads,
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "repeats": k,
        "matmul": {key: m.summary() for key, m in matmuls.items()},
        "copy": copy.summary(),
        "load": {"before": before, "after": after, "warnings": load_warnings(before, after, threads)},
    }
    ceilings = {f"{key}_tflops": m["tflops"] for key, m in record["matmul"].items() if m["tflops"] is not None}
    if record["copy"]["gbps"] is not None:
        ceilings["copy_gbps"] = record["copy"]["gbps"]
    record["ceilings"] = ceilings
    record["load"]["loaded"] = bool(record["load"]["warnings"])
    record["checks"] = check_calibration(record, max_spread=max_spread,
                                         bf16_support=None if is_cuda else cpu_bf16_support())
    return record


def _matmul(torch, dev, dtype, tf32: bool, n: int) -> _Ceiling:
    info = {"n": n}
    try:
        with _allow_tf32(torch, tf32):
            a = torch.randn(n, n, device=dev, dtype=dtype)  # random data: zeros run faster than real data
            b = torch.randn(n, n, device=dev, dtype=dtype)
            c = torch.empty(n, n, device=dev, dtype=dtype)
            if dev.type == "cpu":
                t0 = time.perf_counter()
                torch.matmul(a, b, out=c)
                one_call_s = time.perf_counter() - t0
                if one_call_s > CPU_SLOW_CALL_S:
                    return _Ceiling(None, 0, "tflops", info, skipped=(
                        f"one call took {one_call_s:.2f} s: no fast {dtype} matmul on this CPU"))
    except (RuntimeError, TypeError) as e:  # a dtype this device/torch cannot multiply
        return _Ceiling(None, 0, "tflops", info, skipped=f"{type(e).__name__}: {e}")
    return _Ceiling(lambda: torch.matmul(a, b, out=c), 2 * n**3, "tflops", info, tf32=tf32)


def _copy(torch, dev, nbytes: int) -> _Ceiling:
    src = torch.randint(0, 2**31 - 1, (nbytes // 4,), device=dev, dtype=torch.int32)
    dst = torch.empty_like(src)
    moved = 2 * src.numel() * 4  # every byte is read once and written once
    return _Ceiling(lambda: dst.copy_(src), moved, "gbps", {"bytes": nbytes})


def save_calibration(record: dict[str, Any], directory: Path | None = None, *, force: bool = False) -> Path:
    """Write the record for runs to use; raise CalibrationRefused when its checks failed, unless `force`
    (then `forced` is recorded as true). A record without checks (built by hand) is checked here."""
    checks = record.get("checks") or check_calibration(record)
    if not checks["ok"] and not force:
        raise CalibrationRefused(checks["problems"])
    record = {**record, "checks": checks, "forced": not checks["ok"]}
    path = calibration_path(record["device_name"], record["device_type"], record.get("threads"), directory)
    return write_atomic(path, json.dumps(record, indent=1))


def load_calibration(device_name: str, device_type: str, threads: int | None = None,
                     directory: Path | None = None) -> dict[str, Any] | None:
    """The saved calibration for this device (with its `path`), or None when none (or an unreadable one)."""
    if device_type == "cpu" and threads is None:
        import torch

        threads = torch.get_num_threads()
    path = calibration_path(device_name, device_type, threads, directory)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA or not isinstance(record.get("ceilings"), dict):
        return None
    record["path"] = str(path)
    return record
