"""`ossbench calibrate`: measure this device's achievable ceilings and save them for runs to use.

Datasheet peaks are what the vendor promises; a large matmul per dtype and a large device-to-device copy
show what this device, driver and torch actually reach (an H100 SXM: ~800 of 989 bf16 TFLOP/s, ~3.0 of
3.35 TB/s). Runs then judge each case against these ceilings (`roofline.resolve_ceilings`).

Files: one JSON per device under `calibration_dir()` ($OSSBENCH_CALIBRATION_DIR, else
$XDG_CACHE_HOME/ossbench/calibration, else ~/.cache/ossbench/calibration), named by `device_slug`.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..results import write_atomic

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


def _timing(quick: bool) -> dict[str, Any]:
    # Ceilings are hot-cache figures: the copy and the matmuls are far larger than any cache anyway.
    if quick:
        return dict(cache="hot", warmup_s=0.05, min_samples=5, min_time_s=0.1, max_time_s=0.6, target_rel_ci=0.05)
    return dict(cache="hot", warmup_s=0.3, min_samples=10, min_time_s=0.5, max_time_s=5.0, target_rel_ci=0.01)


def calibrate(device: str, *, quick: bool = False, matmul_n: int | None = None,
              copy_bytes: int | None = None) -> dict[str, Any]:
    """Measure matmul TFLOP/s per dtype and copy GB/s (read + write bytes) on `device` ("cpu", "cuda:N").

    Returns the calibration record (not saved; see `save_calibration`). On CUDA: bf16, fp16, tf32 and fp32
    matmuls of n x n (default 8192) and a 1 GiB copy; on CPU: fp32 (and bf16 when it has a fast path)
    matmuls of 512 and a 64 MiB copy, at torch's current thread count.
    """
    import torch

    from ..env import cpu_model
    from .timer import bench

    dev = torch.device(device)
    is_cuda = dev.type == "cuda"
    if is_cuda:
        torch.cuda.set_device(dev)
    name = torch.cuda.get_device_name(dev) if is_cuda else cpu_model()
    threads = None if is_cuda else torch.get_num_threads()
    n = matmul_n or (CUDA_MATMUL_N if is_cuda else CPU_MATMUL_N)
    timing = _timing(quick)
    matmuls: dict[str, Any] = {}
    for key, (dtype_name, tf32) in (CUDA_MATMULS if is_cuda else CPU_MATMULS).items():
        matmuls[key] = _matmul(bench, torch, dev, getattr(torch, dtype_name), tf32, n, timing)
    nbytes = copy_bytes or (CUDA_COPY_BYTES if is_cuda else CPU_COPY_BYTES)
    copy = _copy(bench, torch, dev, nbytes, timing)
    ceilings = {f"{k}_tflops": v["tflops"] for k, v in matmuls.items() if v.get("tflops") is not None}
    ceilings["copy_gbps"] = copy["gbps"]
    return {
        "schema": SCHEMA,
        "device_type": dev.type,
        "device_name": name,
        "threads": threads,
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "matmul": matmuls,
        "copy": copy,
        "ceilings": ceilings,
    }


def _matmul(bench, torch, dev, dtype, tf32: bool, n: int, timing: dict) -> dict[str, Any]:
    import time

    was = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a = torch.randn(n, n, device=dev, dtype=dtype)  # random data: zeros run faster than real data
        b = torch.randn(n, n, device=dev, dtype=dtype)
        c = torch.empty(n, n, device=dev, dtype=dtype)
        if dev.type == "cpu":
            t0 = time.perf_counter()
            torch.matmul(a, b, out=c)
            one_call_s = time.perf_counter() - t0
            if one_call_s > CPU_SLOW_CALL_S:
                return {"n": n, "tflops": None,
                        "skipped": f"one call took {one_call_s:.2f} s: no fast {dtype} matmul on this CPU"}
        m = bench(lambda: torch.matmul(a, b, out=c), device=str(dev), **timing)
    except (RuntimeError, TypeError) as e:  # a dtype this device/torch cannot multiply
        return {"n": n, "tflops": None, "skipped": f"{type(e).__name__}: {e}"}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = was
    return {"n": n, "tflops": 2 * n**3 / (m.median_ms / 1e3) / 1e12, "median_ms": m.median_ms,
            "rel_ci": m.rel_ci, "samples": m.n, "converged": m.converged}


def _copy(bench, torch, dev, nbytes: int, timing: dict) -> dict[str, Any]:
    src = torch.randint(0, 2**31 - 1, (nbytes // 4,), device=dev, dtype=torch.int32)
    dst = torch.empty_like(src)
    m = bench(lambda: dst.copy_(src), device=str(dev), **timing)
    moved = 2 * src.numel() * 4  # every byte is read once and written once
    return {"bytes": nbytes, "gbps": moved / (m.median_ms / 1e3) / 1e9, "median_ms": m.median_ms,
            "rel_ci": m.rel_ci, "samples": m.n, "converged": m.converged}


def save_calibration(record: dict[str, Any], directory: Path | None = None) -> Path:
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
