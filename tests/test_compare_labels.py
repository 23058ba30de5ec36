"""`ossbench compare` as a reader meets it (issue 15, item 4): short run names or --label, a geometric mean
summary per pair of runs, every case labelled in the forest plot, "too few samples" instead of "nan",
ceilings described as the fractions use them, and no "HBM" for a CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ossbench.cli import main
from ossbench.compare import compare_runs
from ossbench.measure.roofline import resolve_ceilings
from ossbench.measure.stats import summarize
from ossbench.results import CaseResult, Derived, Environment, RunResult, SuiteInfo

H100 = {"name": "H100 SXM", "source": "datasheet", "bf16_tflops": 989.0, "hbm_gbps": 3350.0}


def _run(device: str, cases: dict[str, float], *, rng, n: int = 40, device_type: str = "cuda",
         peak: dict | None = H100, **env) -> RunResult:
    run = RunResult(
        suite=SuiteInfo(name="attention", path="a.yaml", sha256="0" * 64, family="attention", preset="gpt-oss-20b"),
        environment=Environment(device_type=device_type, device_name=device, python="3.11", platform="linux",
                                host="h", ossbench_version="0.1.0", start_time="2026-01-01T00:00:00+00:00",
                                peak=peak, **env))
    for case_id, median_ms in cases.items():
        samples = median_ms * rng.lognormal(0.0, 0.02, n)
        stats = summarize(samples)
        run.cases.append(CaseResult(id=case_id, family="attention", variant=case_id.split("/")[1], dtype="bfloat16",
                                    status="ok", samples_ms=samples.tolist(), stats=stats, flops=1e12, bytes=1e9,
                                    derived=Derived(tflops=1e12 / (stats["median"] / 1e3) / 1e12,
                                                    gbps=1e9 / (stats["median"] / 1e3) / 1e9)))
    return run


def _save(tmp_path: Path, *runs: RunResult) -> list[str]:
    # As `ossbench run` lays them out: one folder per run, results.json inside.
    return [str(r.save(tmp_path / f"attention-run{k}" / "results.json")) for k, r in enumerate(runs)]


CASES = {f"attention/v{k}/s={k}": 1.0 + k for k in range(30)}


def test_labels_default_to_short_ids_and_label_names_each_run(tmp_path) -> None:
    rng = np.random.default_rng(0)
    files = _save(tmp_path, _run("GPU", CASES, rng=rng), _run("GPU", CASES, rng=rng))
    out = CliRunner().invoke(main, ["compare", *files], env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    assert "GPU attention-run0" in out.output and "GPU attention-run1" in out.output
    assert str(tmp_path) not in out.output
    html = tmp_path / "c.html"
    out = CliRunner().invoke(main, ["compare", *files, "--label", "before", "--label", "after", "-o", str(html)],
                             env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    page = html.read_text()
    assert "before vs after" in page and str(tmp_path) not in page
    out = CliRunner().invoke(main, ["compare", *files, "--label", "only-one"])
    assert out.exit_code == 2 and "--label" in out.output and "Traceback" not in out.output


def test_geomean_summary_of_a_known_speedup() -> None:
    rng = np.random.default_rng(1)
    ref = _run("A", CASES, rng=rng)
    fast = _run("B", {k: v / 2 for k, v in CASES.items()}, rng=rng)
    (summary,) = [s for s in compare_runs([ref, fast]).summaries if s is not None]
    speedups = [c.vs_reference[1].speedup for c in compare_runs([ref, fast]).cases]
    assert summary.n_cases == 30 and summary.too_few == 0
    assert summary.geomean == pytest.approx(float(np.exp(np.mean(np.log(speedups)))))
    lo, hi = summary.geomean_ci95
    assert lo < summary.geomean < hi and lo < 2.0 < hi and hi / lo < 1.05  # 30 cases, 2% noise: tight
    assert summary.lowest == min(speedups) and summary.highest == max(speedups)


def test_summary_in_terminal_and_html(tmp_path) -> None:
    rng = np.random.default_rng(2)
    files = _save(tmp_path, _run("A", CASES, rng=rng), _run("B", {k: v / 2 for k, v in CASES.items()}, rng=rng))
    html = tmp_path / "c.html"
    out = CliRunner().invoke(main, ["compare", *files, "-o", str(html)], env={"COLUMNS": "250"})
    assert out.exit_code == 0 and "geometric mean speedup over A" in out.output
    page = html.read_text()
    assert page.index('id="summary"') < page.index('id="cases"') and "geomean speedup over A" in page


def test_one_sample_reads_too_few_samples() -> None:
    rng = np.random.default_rng(3)
    c = compare_runs([_run("A", CASES, rng=rng, n=1), _run("B", CASES, rng=rng)])
    vs = c.cases[0].vs_reference[1]
    assert vs.speedup_ci95 is None and vs.ratio_ci95 is None and vs.n == 1
    assert c.summaries[1].too_few == 30
    from rich.console import Console

    from ossbench.compare_table import print_comparison
    from ossbench.report.compare_html import render_compare_report

    console = Console(record=True, width=250, color_system=None)
    print_comparison(c, console)
    text = console.export_text()
    assert "too few samples (n=1)" in text and "nan" not in text
    page = render_compare_report(c)
    assert "too few samples (n=1)" in page and "nanx" not in page


def test_forest_plot_labels_every_case() -> None:
    from ossbench.report.compare_html import ROW_HEIGHT, speedup_chart
    from ossbench.report.page import ChartIds

    rng = np.random.default_rng(4)
    c = compare_runs([_run("A", CASES, rng=rng), _run("B", CASES, rng=rng)])
    (forest,) = speedup_chart(c, ChartIds(), {"A": "#111111", "B": "#222222"})
    yaxis = forest.figure["layout"]["yaxis"]
    assert yaxis["tickmode"] == "array" and yaxis["tickvals"] == list(CASES)  # every case, none skipped
    assert forest.figure["layout"]["height"] >= ROW_HEIGHT * len(CASES)


def test_cpu_runs_show_their_calibrated_ceilings_and_no_hbm(tmp_path) -> None:
    rng = np.random.default_rng(5)
    cal = resolve_ceilings(None, {"ceilings": {"bf16_tflops": 1.0, "copy_gbps": 20.0},
                                  "path": "/home/bob/.cache/ossbench/calibration/cpu.json"})
    runs = [_run(d, CASES, rng=rng, device_type="cpu", peak=None, ceilings=cal) for d in ("cpu-a", "cpu-b")]
    c = compare_runs(runs)
    assert c.bandwidth_name == "memory BW"
    from rich.console import Console

    from ossbench.compare_table import print_comparison
    from ossbench.report.compare_html import render_compare_report

    console = Console(record=True, width=250, color_system=None)
    print_comparison(c, console)
    assert "HBM" not in console.export_text()
    page = render_compare_report(c)
    assert "HBM" not in page and "none for CPU" not in page and "/home/bob" not in page
    assert "memory 20 GB/s (calibrated)" in page and "calibration cpu.json" in page
