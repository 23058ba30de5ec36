"""Environment capture: what ran the benchmark (device, driver, CUDA, torch, triton, host, ossbench revision).

The device itself (name, SM count, L2, CPU model, datasheet row) comes from the `hardware.Device` the run
resolved; NVML's driver query goes through `measure.nvml`, the one place that opens and closes NVML.
torch, triton and pynvml are imported inside functions: importing this module must stay cheap, because the
CLI imports it and `ossbench --help` has to start fast.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .hardware import Device, cpu_model, resolve_device  # noqa: F401 - cpu_model: callers import it from here
from .measure.nvml import NvmlUnavailable, driver_info

_GIT_TIMEOUT_S = 3.0  # a hung git (network filesystem, lock) must not hold up a run


def capture(device: str | Device) -> dict[str, Any]:
    """The fields of `ossbench.results.Environment` for a run on `device` (a Device, or a spec for
    `hardware.resolve_device`: "auto", "cpu", "cuda", "cuda:N")."""
    start_time = datetime.now(timezone.utc).isoformat(timespec="seconds")
    import torch

    dev = resolve_device(device)
    return {
        "device_type": dev.type,
        "device_name": dev.name,
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "driver": _nvml_driver(),
        "cuda": torch.version.cuda,
        "torch": str(torch.__version__),  # a str subclass; keep the plain string
        "triton": triton_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu": f"{dev.cpu_model} ({os.cpu_count()} logical cores)",
        "ossbench_version": ossbench_version(),
        "git_revision": git_revision(),
        "start_time": start_time,
        "l2_cache_bytes": dev.l2_cache_bytes,
        "sm_count": dev.sm_count,
        "peak": dev.peak,
    }


def triton_version() -> str | None:
    try:
        import triton
    except Exception:  # not installed, or installed but broken (wrong CUDA, missing libs)
        return None
    return getattr(triton, "__version__", None)


def ossbench_version() -> str:
    try:
        return importlib.metadata.version("ossbench")
    except importlib.metadata.PackageNotFoundError:
        # Running from a source tree that was never pip-installed: say so in the version string.
        from . import __version__

        return f"{__version__}+unknown"


def git_revision(source_root: Path | None = None) -> str | None:
    """HEAD of the ossbench source checkout ("<sha>" or "<sha>-dirty"); None when not run from a checkout.

    `source_root` defaults to the directory holding the `ossbench` package.
    """
    source_root = source_root or Path(__file__).resolve().parent.parent
    # An installed copy may sit inside some unrelated repository (a venv in a project); its HEAD says
    # nothing about this code.
    if {"site-packages", "dist-packages"} & set(source_root.parts):
        return None
    head = _git(source_root, "rev-parse", "HEAD")
    if head is None:
        return None
    status = _git(source_root, "status", "--porcelain")
    return f"{head}-dirty" if status else head


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=_GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _nvml_driver() -> str | None:
    try:
        return driver_info()[0]
    except NvmlUnavailable:
        return None


def nvml_status() -> str:
    """NVML's state in one line: 'available: driver X, N GPUs' or 'unavailable: <reason>'."""
    try:
        driver, count = driver_info()
    except NvmlUnavailable as e:
        return f"unavailable: {e}"
    return f"available: driver {driver}, {count} GPU{'s' if count != 1 else ''}"


def describe(env: dict[str, Any], nvml: str | None = None) -> list[tuple[str, str]]:
    """(label, value) rows for `ossbench env`. `nvml` is the NVML status line; queried when not given."""

    def show(value: Any) -> str:
        return "-" if value is None else str(value)

    device = f"{env['device_name']} ({env['device_type']})"
    rows = [
        ("device", device),
        ("GPUs", show(env.get("gpu_count"))),
        ("driver", show(env.get("driver"))),
        ("CUDA", show(env.get("cuda"))),
        ("torch", show(env.get("torch"))),
        ("triton", env.get("triton") or "not installed"),
        ("NVML", nvml if nvml is not None else nvml_status()),
        ("peak", describe_peak(env.get("peak"), env["device_type"])),
    ]
    if env.get("sm_count") is not None:
        rows.append(("SMs", str(env["sm_count"])))
    if env.get("l2_cache_bytes") is not None:
        rows.append(("L2 cache", f"{env['l2_cache_bytes'] / 2**20:g} MiB"))
    rows += [
        ("CPU", show(env.get("cpu"))),
        ("python", show(env.get("python"))),
        ("platform", show(env.get("platform"))),
        ("host", show(env.get("host"))),
        ("ossbench", f"{env.get('ossbench_version')} (git {env.get('git_revision') or 'unknown'})"),
    ]
    return rows


def describe_peak(peak: dict[str, Any] | None, device_type: str = "cuda") -> str:
    """One line for a peak-table row, e.g. "H100 SXM (datasheet): bf16 989 TFLOP/s, ... HBM 3350 GB/s, 80 GB"."""
    if peak is None:
        return "none for CPU" if device_type == "cpu" else "device not in the datasheet table"

    def num(key: str, unit: str) -> str:
        value = peak.get(key)
        return "n/a" if value is None else f"{value:g} {unit}"

    return (f"{peak.get('name')} ({peak.get('source')}): bf16/fp16 {num('bf16_tflops', 'TFLOP/s')}, "
            f"tf32 {num('tf32_tflops', 'TFLOP/s')}, fp32 {num('fp32_tflops', 'TFLOP/s')}, "
            f"HBM {num('hbm_gbps', 'GB/s')}, {num('memory_gb', 'GB')}")
