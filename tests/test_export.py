"""Export: CSV, Parquet round trip, and a pytest-benchmark saved run that `pytest-benchmark compare` reads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ossbench.cli import main
from ossbench.export import export, sample_stats, to_pytest_benchmark
from ossbench.measure.stats import summarize
from ossbench.results import CaseResult, Environment, RunResult, SuiteInfo


WIDE = {"COLUMNS": "300"}  # long temporary paths: keep rich from wrapping the error message


def make_run(rng, scale: float = 1.0) -> RunResult:
    run = RunResult(
        suite=SuiteInfo(name="attention", path="a.yaml", sha256="0" * 64, family="attention", preset="gpt-oss-20b"),
        environment=Environment(device_type="cuda", device_name="NVIDIA H100 80GB HBM3", python="3.11",
                                platform="linux", host="h", ossbench_version="0.1.0", git_revision="abc123-dirty",
                                start_time="2026-01-01T00:00:00+00:00"))
    for i, window in enumerate([None, 128, "none"]):  # a parameter whose type differs between cases
        samples = scale * (i + 1) * rng.lognormal(0.0, 0.05, 40)
        run.cases.append(CaseResult(id=f"attention/v{i}/seq_len={1024 * (i + 1)}", family="attention",
                                    variant=f"v{i}", axes={"seq_len": 1024 * (i + 1)},
                                    params={"seq_len": 1024 * (i + 1), "window": window}, dtype="bfloat16",
                                    status="ok", samples_ms=samples.tolist(), stats=summarize(samples),
                                    flops=1e12, bytes=1e9, tokens=1024))
    run.cases.append(CaseResult(id="attention/v9/seq_len=1", family="attention", variant="v9", dtype="bfloat16",
                                status="failed", error="boom"))
    return run


def test_csv_has_one_row_per_case(tmp_path):
    path = export(make_run(np.random.default_rng(0)), "csv", tmp_path / "r.csv")
    df = pd.read_csv(path)
    assert len(df) == 4
    assert {"id", "variant", "status", "median_ms", "ci95_low_ms", "n", "param.window", "seq_len"} <= set(df.columns)
    assert list(df["status"]) == ["ok", "ok", "ok", "failed"]
    # integer parameters stay integers although the failed case has none (was "1024.0")
    text = path.read_text()
    assert "1024.0" not in text and ",1024," in text
    assert run_df_ints(make_run(np.random.default_rng(0)).to_dataframe())


def run_df_ints(df: pd.DataFrame) -> bool:
    """In the DataFrame itself: nullable integers, the gap missing, numbers and text left as they were."""
    assert str(df["seq_len"].dtype) == "Int64" and str(df["param.seq_len"].dtype) == "Int64"
    assert df["seq_len"].tolist()[:3] == [1024, 2048, 3072] and pd.isna(df["seq_len"][3])
    assert str(df["n"].dtype) == "Int64" and df["param.window"].dtype == object
    return True


def test_parquet_round_trip(tmp_path):
    pytest.importorskip("pyarrow")
    run = make_run(np.random.default_rng(1))
    df = pd.read_parquet(export(run, "parquet", tmp_path / "r.parquet"))
    expected = run.to_dataframe()
    assert list(df.columns) == list(expected.columns) and len(df) == 4
    assert np.allclose(df["median_ms"][:3], expected["median_ms"][:3])
    window = df["param.window"]  # numbers and text in one column: stored as text, missing stays missing
    assert list(window.isna()) == [True, False, False, True] and list(window[1:3]) == ["128", "none"]


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` raise ImportError
    run_file = make_run(np.random.default_rng(2)).save(tmp_path / "results.json")
    out = CliRunner().invoke(main, ["export", str(run_file), "--format", "parquet"], env=WIDE)
    assert out.exit_code == 2 and "pyarrow" in out.output and "Traceback" not in out.output
    assert "ossbench[parquet]" in out.output


def test_pytest_benchmark_stats_are_in_seconds():
    run = make_run(np.random.default_rng(3))
    data = to_pytest_benchmark(run)
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version"} <= set(data)
    assert data["commit_info"] == {"id": "abc123", "dirty": True, "project": "ossbench", "branch": None, "time": None}
    assert len(data["benchmarks"]) == 3  # the failed case is left out
    bench = data["benchmarks"][0]
    stats = bench["stats"]
    assert stats["median"] == pytest.approx(run.cases[0].stats.median / 1e3)
    assert stats["rounds"] == 40 and len(stats["data"]) == 40 and stats["iterations"] == 1
    assert stats["ops"] == pytest.approx(1 / stats["mean"])
    assert stats["q1"] <= stats["median"] <= stats["q3"] and stats["ld15iqr"] >= stats["min"]
    assert bench["name"] == run.cases[0].id and bench["param"] == "seq_len=1024"


def test_sample_stats_outliers():
    s = sample_stats(np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 10.0]))
    assert s["iqr_outliers"] == 1 and s["hd15iqr"] == 1.0 and s["outliers"] == f"{s['stddev_outliers']};1"


def _pytest_benchmark_cli() -> list[str]:
    exe = Path(sys.executable).with_name("pytest-benchmark")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("pytest-benchmark") or shutil.which("py.test-benchmark")
    if found:
        return [found]
    pytest.skip("pytest-benchmark's console script is not installed")


def test_pytest_benchmark_compare_reads_two_exports(tmp_path):
    rng = np.random.default_rng(4)
    files = []
    for k, scale in enumerate((1.0, 1.5)):
        results = make_run(rng, scale).save(tmp_path / f"run{k}" / "results.json")
        out = CliRunner().invoke(main, ["export", str(results), "--format", "pytest-benchmark",
                                        "-o", str(tmp_path / f"000{k + 1}_run.json")])
        assert out.exit_code == 0, out.output
        files.append(out.output.strip())
    json.loads(Path(files[0]).read_text())
    proc = subprocess.run([*_pytest_benchmark_cli(), "compare", *files, "--columns", "min,median,max"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for i in range(3):
        assert f"attention/v{i}/seq_len={1024 * (i + 1)}" in proc.stdout, proc.stdout
    assert "0001_run" in proc.stdout and "0002_run" in proc.stdout
    assert "Failed to load" not in proc.stdout + proc.stderr


def test_default_output_path_is_beside_the_results(tmp_path):
    results = make_run(np.random.default_rng(5)).save(tmp_path / "results.json")
    out = CliRunner().invoke(main, ["export", str(results), "--format", "csv"])
    assert out.exit_code == 0 and Path(out.output.strip()) == tmp_path / "results.csv"
    bad = CliRunner().invoke(main, ["export", str(tmp_path / "nope.json"), "--format", "csv"], env=WIDE)
    assert bad.exit_code == 2 and "no such file" in bad.output


def test_pytest_benchmark_export_is_strict_json_with_null_for_non_finite_values(tmp_path):
    """Samples are checked at load, but other numbers (cost, derived figures, params) may be NaN or inf:
    the export writes null for them, never a bare NaN that strict JSON readers refuse."""
    rng = np.random.default_rng(40)
    data = json.loads(make_run(rng).to_json())
    data["cases"][0]["flops"] = float("nan")
    data["cases"][0]["derived"] = {"tflops": float("inf"), "gbps": 1.5}
    data["cases"][1]["params"]["scale"] = float("-inf")
    src = tmp_path / "results.json"
    src.write_text(json.dumps(data))  # Python's json writes NaN / Infinity tokens, and reads them back
    out_path = tmp_path / "pb.json"
    out = CliRunner().invoke(main, ["export", str(src), "--format", "pytest-benchmark", "-o", str(out_path)], env=WIDE)
    assert out.exit_code == 0, out.output

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    saved = json.loads(out_path.read_text(), parse_constant=refuse)
    first, second = saved["benchmarks"][0], saved["benchmarks"][1]
    assert first["extra_info"]["flops"] is None and first["extra_info"]["tflops"] is None
    assert first["extra_info"]["gbps"] == 1.5
    assert second["params"]["scale"] is None
    assert len(first["stats"]["data"]) == 40  # the samples themselves are untouched
