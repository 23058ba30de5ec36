"""Roofline arithmetic: ceilings (calibrated over datasheet, per value), intensity, bound, floor, speed of light."""

from __future__ import annotations

import re

import pytest

from ossbench.measure.roofline import dtype_key, peak_for, resolve_ceilings, roofline
from ossbench.measure.stats import summarize
from ossbench.results import CaseResult, Derived, Environment, RunResult, Stats, SuiteInfo
from ossbench.summary import speed_of_light

H100 = peak_for("NVIDIA H100 80GB HBM3")


def test_dtype_keys():
    assert dtype_key("bfloat16") == "bf16" and dtype_key("float16") == "fp16"
    assert dtype_key("float32") == "fp32" and dtype_key("float32", tf32=True) == "tf32"
    assert dtype_key("bfloat16", tf32=True) == "bf16" and dtype_key("float64") == "fp64"


def test_datasheet_ceilings():
    c = resolve_ceilings(H100, None)
    assert c["compute_tflops"] == {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0}
    assert c["bandwidth_gbps"] == 3350.0 and c["datasheet"] == "H100 SXM" and c["calibration"] is None
    assert set(c["sources"].values()) == {"datasheet"}


def test_calibrated_values_win_per_value_and_the_rest_come_from_the_datasheet():
    cal = {"path": "/x/h100.json", "ceilings": {"bf16_tflops": 798.0, "copy_gbps": 3000.0}}
    c = resolve_ceilings(H100, cal)
    assert c["compute_tflops"]["bf16"] == 798.0 and c["sources"]["bf16"] == "calibrated"
    assert c["compute_tflops"]["fp32"] == 67.0 and c["sources"]["fp32"] == "datasheet"
    assert c["bandwidth_gbps"] == 3000.0 and c["sources"]["bandwidth"] == "calibrated"
    assert c["calibration"] == "/x/h100.json" and c["calibrated_values"]["bf16_tflops"] == 798.0


def test_no_datasheet_and_no_calibration_means_no_ceiling():
    assert resolve_ceilings(None, None) is None
    r = roofline(1e9, 1e6, 1.0, "fp32", None)
    assert r["available"] is False and r["reason"].startswith("no ceiling") and r["intensity"] == 1000.0


def test_a_cpu_calibration_alone_is_enough():
    c = resolve_ceilings(None, {"ceilings": {"fp32_tflops": 0.1, "copy_gbps": 20.0}})
    assert c["compute_tflops"] == {"fp32": 0.1} and c["datasheet"] is None
    assert roofline(1e9, 1e6, 20.0, "fp32", c)["available"]
    missing = roofline(1e9, 1e6, 20.0, "bf16", c)
    assert not missing["available"] and "bf16 compute" in missing["reason"]


def test_memory_bound_case():
    # Decode-like: 2 GFLOP over 1 GB is 2 FLOP/byte, far left of the H100 bf16 ridge (989e12 / 3350e9 ~ 295).
    c = resolve_ceilings(H100, None)
    r = roofline(2e9, 1e9, 0.5, "bf16", c)
    assert r["bound"] == "memory" and r["intensity"] == 2.0
    assert r["ridge"] == pytest.approx(989e12 / 3350e9)
    floor_ms = 1e9 / 3350e9 * 1e3
    assert r["floor_ms"] == pytest.approx(floor_ms)
    assert r["speed_of_light"] == pytest.approx(floor_ms / 0.5)  # = achieved GB/s / peak GB/s
    assert r["speed_of_light"] == pytest.approx((1e9 / 0.5e-3) / 3350e9)
    assert r["compute_source"] == "datasheet" and r["bandwidth_source"] == "datasheet"


def test_compute_bound_case():
    # An 8192^3 bf16 matmul: 1.1 TFLOP over 402 MB: ~2730 FLOP/byte, right of the ridge.
    n = 8192
    flops, nbytes = 2 * n**3, 3 * n * n * 2
    c = resolve_ceilings(H100, {"ceilings": {"bf16_tflops": 800.0}})
    median_ms = flops / 798e12 * 1e3  # what the H100 in this workplace measured
    r = roofline(flops, nbytes, median_ms, "bf16", c)
    assert r["bound"] == "compute" and r["ceiling_tflops"] == 800.0 and r["compute_source"] == "calibrated"
    assert r["speed_of_light"] == pytest.approx(798 / 800)


def test_missing_cost_or_timing():
    c = resolve_ceilings(H100, None)
    assert not roofline(None, 1e6, 1.0, "bf16", c)["available"]
    assert not roofline(1e9, 0, 1.0, "bf16", c)["available"]
    assert not roofline(1e9, 1e6, None, "bf16", c)["available"]


def test_datasheet_gaps_are_not_filled_in():
    l4 = resolve_ceilings(peak_for("NVIDIA L4"), None)
    assert "fp32" not in l4["compute_tflops"]
    assert not roofline(1e9, 1e6, 1.0, "fp32", l4)["available"]


def test_summary_column():
    case = CaseResult(id="a", family="f", variant="v", dtype="bfloat16", status="ok",
                      roofline=roofline(2e9, 1e9, 0.5, "bf16", resolve_ceilings(H100, None)))
    assert speed_of_light(case) == "60% mem"
    assert speed_of_light(CaseResult(id="b", family="f", variant="v", dtype="float32", status="ok")) == "-"


# ------------------------------------------------------------------- a case faster than its ceiling allows
# The case: a calibration made on a busy CPU gave ceilings so low that cases showed 122% to 454%.

BUSY_CPU_CAL = {"path": "/x/cpu.json", "ceilings": {"fp32_tflops": 0.013, "copy_gbps": 3.3}}


def _beaten_case(case_id: str = "attention/full/seq_len=512", median_ms: float = 1.0) -> CaseResult:
    """52 MFLOP (over 1 MB: compute-bound) in `median_ms`: in 1 ms that is 0.052 TFLOP/s, 4x the 0.013 ceiling."""
    flops, nbytes = 5.2e7, 1e6
    samples = [median_ms * (1 + 0.01 * k) for k in range(-5, 6)]
    ceilings = resolve_ceilings(None, BUSY_CPU_CAL)
    return CaseResult(id=case_id, family="attention", variant="full", dtype="float32", status="ok",
                      samples_ms=samples, stats=Stats(**summarize(samples)), flops=flops, bytes=nbytes,
                      derived=Derived(tflops=flops / median_ms / 1e9, gbps=nbytes / median_ms / 1e6),
                      roofline=roofline(flops, nbytes, median_ms, "fp32", ceilings))


def test_a_fraction_above_one_is_flagged_in_the_record():
    from ossbench.measure.roofline import CEILING_BELOW_MEASURED, over_ceiling

    c = resolve_ceilings(None, BUSY_CPU_CAL)
    over = roofline(5.2e7, 1e6, 1.0, "fp32", c)  # 0.052 TFLOP/s against a 0.013 ceiling
    assert over["speed_of_light"] == pytest.approx(4.0) and over["flags"] == [CEILING_BELOW_MEASURED]
    under = roofline(5.2e6, 1e6, 1.0, "fp32", c)  # 40%
    assert under["speed_of_light"] == pytest.approx(0.4) and under["flags"] == []
    at_the_roof = roofline(1.3e7, 1e6, 1.0, "fp32", c)  # exactly 100% is reachable, not a wrong ceiling
    assert at_the_roof["speed_of_light"] == pytest.approx(1.0) and not over_ceiling(1.0)


def _cpu_run(cases: list[CaseResult]) -> RunResult:
    env = Environment(device_type="cpu", device_name="AMD EPYC", python="3.11", platform="Linux", host="h",
                      ossbench_version="0.1.0", start_time="2026-01-01T00:00:00+00:00",
                      ceilings=resolve_ceilings(None, BUSY_CPU_CAL))
    suite = SuiteInfo(name="attention", path="a.yaml", sha256="0" * 64, family="attention", preset="gpt-oss-20b")
    return RunResult(suite=suite, environment=env, cases=cases)


def test_the_flag_survives_the_results_file(tmp_path):
    from ossbench.measure.roofline import CEILING_BELOW_MEASURED
    from ossbench.results import load_results

    run = _cpu_run([_beaten_case()])
    loaded = load_results(run.save(tmp_path / "results.json"))
    assert loaded.cases[-1].roofline["flags"] == [CEILING_BELOW_MEASURED]


def test_the_terminal_summary_shows_the_warning_not_a_percentage():
    from rich.console import Console

    from ossbench.summary import cases_table

    run = _cpu_run([_beaten_case()])
    assert "ceiling below measured" in speed_of_light(run.cases[0])
    console = Console(width=200, record=True)
    console.print(cases_table(run))
    text = " ".join(console.export_text().split())
    assert "ceiling below measured (400% comp)" in text
    assert "ceiling below measured: calibration stale or wrong: 1 figure(s) above 100%" in text
    # a case under its ceiling keeps its plain figure, and the table then has no warning
    fine = _beaten_case(median_ms=10.0)  # same cost in 10x the time: 40%
    run.cases = [fine]
    console = Console(width=200, record=True)
    console.print(cases_table(run))
    text = console.export_text()
    assert "40% comp" in text and "ceiling below measured" not in text


def test_the_report_shows_the_warning_not_a_percentage():
    from ossbench.report import render_report

    run = _cpu_run([_beaten_case(), _beaten_case("attention/full/seq_len=1024", median_ms=10.0)])
    page = render_report(run)
    cells = re.findall(r'<td class="num[^"]*" data-sort="[^"]*"[^>]*>([^<]*)</td>', page)
    assert "ceiling below measured: calibration stale or wrong (400%)" in cells
    assert "40.0%" in cells and "400.0%" not in cells
    assert "1 case(s) measured above their ceiling: ceiling below measured: calibration stale or wrong" in page
    # the roofline chart's hover text and note say it too
    assert "ceiling below measured: calibration stale or wrong (400%), compute-bound" in page
    assert "1 case(s) plot above their roof" in page


def test_compare_shows_the_warning_for_a_fraction_above_one():
    from rich.console import Console

    from ossbench.compare import compare_runs
    from ossbench.compare_table import comparison_table
    from ossbench.report import render_compare_report

    runs = [_cpu_run([_beaten_case()]), _cpu_run([_beaten_case(median_ms=10.0)])]
    runs[1].environment.device_name = "AMD EPYC 2"
    c = compare_runs(runs)
    fast, slow = c.cases[0].runs
    assert fast.compute_fraction == pytest.approx(4.0) and slow.compute_fraction == pytest.approx(0.4)
    console = Console(width=250, record=True)
    console.print(comparison_table(c))
    text = " ".join(console.export_text().split())
    assert "ceiling below measured (400%)" in text and "40.0%" in text and "400.0%" not in text
    assert "ceiling below measured: calibration stale or wrong: 1 figure(s) above 100%" in text
    page = render_compare_report(c)
    cells = re.findall(r'<td class="num[^"]*" data-sort="[^"]*"[^>]*>([^<]*)</td>', page)
    assert "ceiling below measured: calibration stale or wrong (400%)" in cells and "40.0%" in cells
    assert "1 bar(s) pass 100%" in page
