"""Export a results file to other tools' formats: CSV, Parquet, and pytest-benchmark's saved-run JSON.

CSV and Parquet hold `RunResult.to_dataframe()` (one row per case). The pytest-benchmark file holds the
cases that ran (status ok) with their every sample, in seconds, so `pytest-benchmark compare A.json B.json`
can read two exported runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import UserError
from .results import CaseResult, RunResult, write_atomic

Format = Literal["csv", "parquet", "pytest-benchmark"]
FORMATS: tuple[str, ...] = ("csv", "parquet", "pytest-benchmark")
SUFFIX = {"csv": ".csv", "parquet": ".parquet", "pytest-benchmark": ".pytest-benchmark.json"}
# The pytest-benchmark release whose saved-run layout this follows; its readers do not check it.
PYTEST_BENCHMARK_FORMAT = "5.1.0"


def default_path(results_path: Path, fmt: Format) -> Path:
    """``reports/x/results.json`` -> ``reports/x/results.csv`` (or .parquet, .pytest-benchmark.json)."""
    return results_path.with_name(results_path.stem + SUFFIX[fmt])


def export(run: RunResult, fmt: Format, path: str | Path) -> Path:
    """Write `run` to `path` in format `fmt`; returns the path."""
    path = Path(path)
    if fmt == "csv":
        path.parent.mkdir(parents=True, exist_ok=True)
        run.to_dataframe().to_csv(path, index=False)
        return path
    if fmt == "parquet":
        return _parquet(run, path)
    if fmt == "pytest-benchmark":
        # Strict JSON: a bare NaN or Infinity (which Python's json writes by default) breaks other readers.
        return write_atomic(path, json.dumps(finite_or_null(to_pytest_benchmark(run)), indent=1, allow_nan=False))
    raise UserError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")


def _parquet(run: RunResult, path: Path) -> Path:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UserError("parquet export needs the 'pyarrow' package: pip install 'ossbench[parquet]' "
                        "(or pip install pyarrow)") from None
    df = run.to_dataframe()
    # Arrow needs one type per column; a parameter that is a number in one case and text in another
    # (e.g. window: 128 / "none") is stored as text.
    for col in df.columns[df.dtypes == object]:
        present = df[col].notna()
        if len({type(v) for v in df[col][present]}) > 1:
            df[col] = [str(v) if ok else None for v, ok in zip(df[col], present)]
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return path


# ----------------------------------------------------------------------------------- pytest-benchmark


def finite_or_null(value: Any) -> Any:
    """`value` with every NaN or infinite float (in nested dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def sample_stats(samples_s: np.ndarray) -> dict[str, Any]:
    """pytest-benchmark's `stats` fields for one benchmark, from samples in seconds.

    Quartiles use numpy's default (linear) interpolation, which can differ slightly from
    pytest-benchmark's own quartile method on small samples; the outlier fields use its definitions
    (Tukey 1.5 IQR fences; beyond one standard deviation from the mean).
    """
    x = np.sort(np.asarray(samples_s, float))
    mean = float(x.mean())
    stddev = float(x.std(ddof=1)) if x.size > 1 else 0.0
    q1, q3 = (float(q) for q in np.percentile(x, [25, 75]))
    iqr = q3 - q1
    lo_fence, hi_fence = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    inside = x[(x >= lo_fence) & (x <= hi_fence)]
    iqr_outliers = int(x.size - inside.size)
    stddev_outliers = int(np.sum((x < mean - stddev) | (x > mean + stddev)))
    return {
        "min": float(x[0]), "max": float(x[-1]), "mean": mean, "stddev": stddev, "rounds": int(x.size),
        "median": float(np.median(x)), "iqr": iqr, "q1": q1, "q3": q3,
        "iqr_outliers": iqr_outliers, "stddev_outliers": stddev_outliers,
        "outliers": f"{stddev_outliers};{iqr_outliers}",
        "ld15iqr": float(inside[0]) if inside.size else float(x[0]),
        "hd15iqr": float(inside[-1]) if inside.size else float(x[-1]),
        "ops": 1.0 / mean if mean > 0 else 0.0, "total": float(x.sum()),
    }


def pytest_benchmark_options(timing: dict[str, Any], device_type: str) -> dict[str, Any]:
    """pytest-benchmark's per-benchmark `options`, from a case's `timing` (`Measurement.settings()`): how
    ossbench took the samples, in pytest-benchmark's field names where it has one."""
    return {"timer": "cuda events" if device_type == "cuda" else "time.perf_counter",
            "min_rounds": timing.get("min_samples"), "min_time": timing.get("min_time_s"),
            "max_time": timing.get("max_time_s"), "warmup": bool(timing.get("warmup_s", 0)),
            "disable_gc": True, "cache": timing.get("cache")}  # bench pauses the collector while sampling


def pytest_benchmark_extra_info(c: CaseResult) -> dict[str, Any]:
    """pytest-benchmark's `extra_info` for a case: its variant, dtype, cost and derived rates."""
    return {"variant": c.variant, "dtype": c.dtype, "flops": c.flops, "bytes": c.bytes, "tokens": c.tokens,
            **{k: v for k, v in c.derived.model_dump().items() if v is not None}}


def _benchmark(run: RunResult, c: CaseResult) -> dict[str, Any]:
    samples_s = np.asarray(c.samples_ms, float) / 1e3
    stats = sample_stats(samples_s)
    stats["data"] = samples_s.tolist()
    stats["iterations"] = 1  # each ossbench sample times one call
    param = ",".join(f"{k}={v}" for k, v in c.axes.items()) or None
    # A case timed by the pytest plugin keeps its test's name, so that this export and the file
    # pytest-benchmark wrote in that session (`--benchmark-json`) name the benchmark alike.
    test = c.info.get("pytest") if isinstance(c.info.get("pytest"), dict) else {}
    return {
        "group": c.family,
        "name": test.get("name") or c.id,
        "fullname": test.get("nodeid") or f"{run.suite.name}::{c.id}",
        "params": dict(c.params),
        "param": param,
        "extra_info": pytest_benchmark_extra_info(c),
        "options": pytest_benchmark_options(c.timing or run.timing, run.environment.device_type),
        "stats": stats,
    }


def to_pytest_benchmark(run: RunResult) -> dict[str, Any]:
    """The run as a pytest-benchmark saved run (machine_info, commit_info, benchmarks, datetime, version).

    Only cases with status ok are included (pytest-benchmark drops benchmarks that errored, too).
    """
    env = run.environment
    revision = env.git_revision or ""
    machine_info = {
        "node": env.host, "platform": env.platform, "python_version": env.python, "cpu": {"brand_raw": env.cpu},
        "device_type": env.device_type, "device_name": env.device_name, "gpu_count": env.gpu_count,
        "driver": env.driver, "cuda": env.cuda, "torch": env.torch, "triton": env.triton,
        "ossbench_version": env.ossbench_version,
    }
    commit_info = {"id": revision.removesuffix("-dirty") or None, "dirty": revision.endswith("-dirty"),
                   "project": "ossbench", "branch": None, "time": None}
    benchmarks = [_benchmark(run, c) for c in run.cases if c.status == "ok" and c.samples_ms]
    return {"machine_info": machine_info, "commit_info": commit_info, "benchmarks": benchmarks,
            "datetime": env.start_time, "version": PYTEST_BENCHMARK_FORMAT}
