"""Cross-run comparison: ratio of medians with a bootstrap CI, matching, ceilings, classification, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ossbench.cli import main
from ossbench.bootstrap import ratio_of_medians_ci
from ossbench.compare import classify, compare_runs
from ossbench.compare_table import comparison_table, unmatched_lines
from ossbench.measure.stats import summarize
from ossbench.results import CaseResult, Derived, Environment, RunResult, SuiteInfo

# Two made-up devices: the fast one has 2x the compute and 1.5x the bandwidth of the slow one.
SLOW_GPU = dict(name="slow", source="test", bf16_tflops=400.0, fp16_tflops=400.0, tf32_tflops=200.0,
                fp32_tflops=50.0, hbm_gbps=1000.0)
FAST_GPU = dict(name="fast", source="test", bf16_tflops=800.0, fp16_tflops=800.0, tf32_tflops=400.0,
                fp32_tflops=100.0, hbm_gbps=1500.0)


def make_run(rng, device: str, peak: dict | None, cases: dict[str, float], *, flops=1e12, nbytes=1e9,
             n: int = 60) -> RunResult:
    """`cases`: id -> true median in ms; samples carry 3% lognormal noise."""
    run = RunResult(
        suite=SuiteInfo(name="attention", path="a.yaml", sha256="0" * 64, family="attention", preset="gpt-oss-20b"),
        environment=Environment(device_type="cuda", device_name=device, python="3.11", platform="linux", host="h",
                                ossbench_version="0.1.0", start_time="2026-01-01T00:00:00+00:00", peak=peak))
    for case_id, median_ms in cases.items():
        samples = median_ms * rng.lognormal(0.0, 0.03, n)
        stats = summarize(samples)
        run.cases.append(CaseResult(
            id=case_id, family="attention", variant=case_id.split("/")[1], dtype="bfloat16", status="ok",
            samples_ms=samples.tolist(), stats=stats, flops=flops, bytes=nbytes,
            derived=Derived(tflops=flops / (stats["median"] / 1e3) / 1e12,
                            gbps=nbytes / (stats["median"] / 1e3) / 1e9)))
    return run


def test_known_two_x_difference_has_a_ci_containing_two_and_excluding_one():
    rng = np.random.default_rng(0)
    ref = make_run(rng, "slow", SLOW_GPU, {"attention/a/s=1": 4.0, "attention/b/s=1": 1.0})
    other = make_run(rng, "fast", FAST_GPU, {"attention/a/s=1": 2.0, "attention/b/s=1": 1.0})
    c = compare_runs([ref, other])
    assert [r.label for r in c.runs] == ["slow", "fast"]
    halved = c.cases[0].vs_reference[1]
    assert halved.ratio_ci95[0] < 0.5 < halved.ratio_ci95[1] and halved.ratio_ci95[1] < 1
    assert halved.speedup_ci95[0] < 2 < halved.speedup_ci95[1]
    assert halved.speedup == pytest.approx(2, rel=0.05)
    same = c.cases[1].vs_reference[1]
    assert same.ratio_ci95[0] < 1 < same.ratio_ci95[1]
    assert c.cases[0].vs_reference[0] is None  # the reference against itself is not computed


def test_bootstrap_is_seeded_and_reproducible():
    rng = np.random.default_rng(1)
    runs = [make_run(rng, d, SLOW_GPU, {"attention/a/s=1": m}) for d, m in (("x", 1.0), ("y", 1.3))]
    a, b = compare_runs(runs), compare_runs(runs)
    assert a.cases[0].vs_reference[1].ratio_ci95 == b.cases[0].vs_reference[1].ratio_ci95


def test_unmatched_and_failed_cases_are_listed():
    rng = np.random.default_rng(2)
    ref = make_run(rng, "A", SLOW_GPU, {"attention/a/s=1": 1.0, "attention/a/s=2": 2.0, "attention/only-ref/s=1": 1.0})
    other = make_run(rng, "B", SLOW_GPU, {"attention/a/s=1": 1.0, "attention/a/s=2": 2.0, "attention/only-b/s=1": 1.0})
    other.cases[1].status, other.cases[1].error, other.cases[1].stats = "oom", "CUDA out of memory", None
    c = compare_runs([ref, other])
    assert [case.id for case in c.cases] == ["attention/a/s=1", "attention/a/s=2"]
    assert c.runs[0].unmatched == ["attention/only-ref/s=1"] and c.runs[1].unmatched == ["attention/only-b/s=1"]
    oom = c.cases[1]
    assert oom.runs[1].status == "oom" and oom.runs[1].error == "CUDA out of memory"
    assert oom.vs_reference[1] is None
    lines = unmatched_lines(c)
    assert any("only-ref" in line for line in lines) and any("only-b" in line for line in lines)


def test_three_runs_with_a_case_absent_from_one():
    rng = np.random.default_rng(3)
    a = make_run(rng, "A", SLOW_GPU, {"attention/a/s=1": 1.0, "attention/a/s=2": 2.0})
    b = make_run(rng, "B", SLOW_GPU, {"attention/a/s=1": 1.0})
    cc = make_run(rng, "C", SLOW_GPU, {"attention/a/s=1": 1.0, "attention/a/s=2": 2.0})
    c = compare_runs([a, b, cc])
    assert c.cases[1].runs[1] is None and c.cases[1].vs_reference[1] is None
    assert c.cases[1].vs_reference[2] is not None


def test_ceiling_fractions_and_what_a_difference_follows():
    rng = np.random.default_rng(4)
    ids = {"attention/compute-bound/s=1": 4.0, "attention/memory-bound/s=1": 3.0, "attention/other/s=1": 3.0}
    ref = make_run(rng, "slow", SLOW_GPU, ids)
    # on the fast GPU: 2x faster (its compute ratio), 1.5x (its bandwidth ratio), 1.1x (neither)
    other = make_run(rng, "fast", FAST_GPU, {"attention/compute-bound/s=1": 2.0,
                                             "attention/memory-bound/s=1": 2.0, "attention/other/s=1": 3.0 / 1.1})
    c = compare_runs([ref, other])
    follows = {case.id.split("/")[1]: case.vs_reference[1].follows for case in c.cases}
    assert follows == {"compute-bound": "compute", "memory-bound": "bandwidth", "other": "neither"}
    vs = c.cases[0].vs_reference[1]
    assert vs.compute_ratio == 2.0 and vs.bandwidth_ratio == 1.5
    cell = c.cases[0].runs[0]  # 1 TFLOP in ~4 ms = ~250 TFLOP/s of a 400 TFLOP/s peak
    assert cell.compute_key == "bf16"
    assert cell.compute_fraction == pytest.approx(250 / 400, rel=0.05)
    assert cell.bandwidth_fraction == pytest.approx(250 / 1000, rel=0.05)
    # the same device on both sides, or one without a peak row
    assert classify(1.3, 1.0, 1.02) == "same ceilings"
    assert classify(1.3, None, 1.5) == "unknown"
    assert classify(1.45, 1.5, 1.45) == "compute and bandwidth"


def test_float32_uses_fp32_peak_unless_tf32_is_on():
    rng = np.random.default_rng(5)
    runs = [make_run(rng, d, p, {"attention/a/s=1": 1.0}) for d, p in (("slow", SLOW_GPU), ("fast", FAST_GPU))]
    for run in runs:
        run.cases[0].dtype = "float32"
    assert compare_runs(runs).cases[0].runs[0].compute_key == "fp32"
    for run in runs:
        run.cases[0].params = {"allow_tf32": True}
    assert compare_runs(runs).cases[0].runs[0].compute_key == "tf32"


def test_terminal_table_names_every_case_and_run():
    rng = np.random.default_rng(6)
    ref = make_run(rng, "slow", SLOW_GPU, {"attention/a/s=1": 2.0, "attention/b/s=1": 1.0})
    other = make_run(rng, "fast", FAST_GPU, {"attention/a/s=1": 1.0, "attention/b/s=1": 1.0})
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(comparison_table(compare_runs([ref, other])))
    text = console.export_text()
    assert "attention/a/s=1" in text and "attention/b/s=1" in text and "fast" in text and "ref" in text


def save(tmp_path: Path, *runs: RunResult) -> list[str]:
    return [str(run.save(tmp_path / f"r{k}.json")) for k, run in enumerate(runs)]


def test_cli_prints_the_comparison(tmp_path):
    rng = np.random.default_rng(7)
    files = save(tmp_path, make_run(rng, "slow", SLOW_GPU, {"attention/a/s=1": 2.0, "attention/x/s=1": 1.0}),
                 make_run(rng, "fast", FAST_GPU, {"attention/a/s=1": 1.0}))
    out = CliRunner().invoke(main, ["compare", *files], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "attention/a/s=1" in out.output and "compute" in out.output
    assert "attention/x/s=1" in out.output and "in no other run" in out.output


def test_cli_labels_runs_by_path_when_devices_repeat(tmp_path):
    rng = np.random.default_rng(8)
    files = save(tmp_path, *(make_run(rng, "same", SLOW_GPU, {"attention/a/s=1": 1.0}) for _ in range(2)))
    out = CliRunner().invoke(main, ["compare", *files], env={"COLUMNS": "300"})
    assert out.exit_code == 0 and "r1.json" in out.output and "same ceilings" in out.output


def test_cli_writes_html_with_o(tmp_path):
    pytest.importorskip("ossbench.report.compare_html")
    rng = np.random.default_rng(9)
    files = save(tmp_path, *(make_run(rng, d, p, {"attention/a/s=1": 1.0}) for d, p in
                             (("slow", SLOW_GPU), ("fast", FAST_GPU))))
    out = CliRunner().invoke(main, ["compare", *files, "-o", str(tmp_path / "compare.html")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "compare.html").stat().st_size > 0


def test_cli_bad_input_exits_2(tmp_path):
    rng = np.random.default_rng(10)
    (good,) = save(tmp_path, make_run(rng, "slow", SLOW_GPU, {"attention/a/s=1": 1.0}))
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"benchmarks": []}')
    for args, message in (([good], "at least two"), ([good, str(foreign)], "not an ossbench results file"),
                          ([good, str(tmp_path / "nope.json")], "no such file")):
        out = CliRunner().invoke(main, ["compare", *args], env={"COLUMNS": "200"})
        assert out.exit_code == 2 and message in out.output, out.output
        assert "Traceback" not in out.output


def test_calibrated_ceilings_take_precedence_over_the_datasheet():
    """compare uses the same ceilings as the run's roofline: calibrated values where the run measured them."""
    from ossbench.measure.roofline import resolve_ceilings

    rng = np.random.default_rng(5)
    runs = [make_run(rng, d, SLOW_GPU, {"attention/a/s=1": 1.0}) for d in ("x", "y")]
    runs[1].environment.ceilings = resolve_ceilings(SLOW_GPU, {"ceilings": {"bf16_tflops": 200.0}})
    c = compare_runs(runs)
    datasheet, calibrated = c.cases[0].runs
    assert datasheet.compute_fraction == pytest.approx(runs[0].cases[0].derived.tflops / 400.0)
    assert calibrated.compute_fraction == pytest.approx(runs[1].cases[0].derived.tflops / 200.0)
    assert calibrated.bandwidth_fraction == pytest.approx(runs[1].cases[0].derived.gbps / 1000.0)  # datasheet


def test_the_same_file_twice_is_an_a_a_look(tmp_path):
    rng = np.random.default_rng(6)
    path = make_run(rng, "A", SLOW_GPU, {"attention/a/s=1": 1.0}).save(tmp_path / "r.json")
    result = CliRunner().invoke(main, ["compare", str(path), str(path)], env={"COLUMNS": "400"})  # no wrapped labels
    assert result.exit_code == 0, result.output
    assert "A test_the_same_file_twice_is_an0/r.json #2" in result.output  # short: device + folder/file, numbered
    assert str(path) not in result.output


def test_runs_sharing_no_case_are_bad_input_naming_both_files(tmp_path):
    rng = np.random.default_rng(30)
    a = make_run(rng, "slow", SLOW_GPU, {"attention/a/s=1": 1.0, "attention/b/s=1": 1.0})
    b = make_run(rng, "fast", FAST_GPU, {"moe/x/t=1": 1.0})
    b.suite.name = "moe"
    pa, pb = str(a.save(tmp_path / "attention.json")), str(b.save(tmp_path / "moe.json"))
    out = CliRunner().invoke(main, ["compare", pa, pb], env={"COLUMNS": "250"})
    assert out.exit_code == 2, out.output
    text = " ".join(out.output.split())
    assert "Traceback" not in text and "shares no case id" in text
    assert pa in text and pb in text and "'attention'" in text and "'moe'" in text
    with pytest.raises(Exception, match="shares no case id"):
        compare_runs([a, b])


def test_control_characters_in_names_reach_the_terminal_escaped(tmp_path):
    rng = np.random.default_rng(31)
    evil = "attention/\x1b[31mred\x1b[0m\x9b2J/s=1"
    a = make_run(rng, "slow\x1b]0;title\x07", SLOW_GPU, {evil: 1.0, "attention/\x1b[1mref-only/s=1": 1.0})
    b = make_run(rng, "fast", FAST_GPU, {evil: 1.0})
    pa, pb = str(a.save(tmp_path / "a.json")), str(b.save(tmp_path / "b.json"))
    out = CliRunner().invoke(main, ["compare", pa, pb], env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    assert "\x1b" not in out.output and "\x9b" not in out.output and "\x07" not in out.output
    assert "\\x1b[31mred\\x1b[0m\\x9b2J" in out.output  # shown, as visible escapes
    assert "\\x1b[1mref-only" in out.output  # in the unmatched list too


@pytest.mark.parametrize("n", [2, 3, 7, 8, 41])
def test_bootstrap_medians_have_the_distribution_of_real_resamples(n):
    """The order-statistic shortcut draws the same bootstrap distribution of the median as building the
    resamples (np.median of n draws with replacement), ties and even n included."""
    from ossbench.bootstrap import bootstrap_medians

    rng = np.random.default_rng(n)
    x = rng.lognormal(0.0, 0.1, n)
    x[: n // 3] = x[0]  # some tied timer ticks
    draws = 100_000
    fast = bootstrap_medians(x, draws, rng)
    brute = np.median(x[rng.integers(0, n, (draws, n))], axis=1)
    values = np.union1d(fast, brute)
    p_fast = np.array([(fast == v).mean() for v in values])
    p_brute = np.array([(brute == v).mean() for v in values])
    # Each probability is estimated from 100k draws: its standard error is below 0.0016.
    assert np.abs(p_fast - p_brute).max() < 0.008


def test_ratio_ci_of_two_million_samples_is_fast_and_tight():
    import time

    rng = np.random.default_rng(5)
    ref, other = rng.lognormal(0.0, 0.05, 2_000_000), 1.1 * rng.lognormal(0.0, 0.05, 2_000_000)
    start = time.perf_counter()
    ratio, (lo, hi) = ratio_of_medians_ci(ref, other, rng)
    elapsed = time.perf_counter() - start
    assert lo < ratio < hi and lo == pytest.approx(1.1, rel=1e-3) and hi == pytest.approx(1.1, rel=1e-3)
    assert elapsed < 20  # two sorts of 2M values; resampling them 2000 times would take minutes


def test_run_labels_name_the_devices_else_the_files():
    from ossbench.compare import run_labels

    rng = np.random.default_rng(40)
    slow, fast, slow_again = (make_run(rng, d, SLOW_GPU, {"attention/a/s=1": 1.0}) for d in ("slow", "fast", "slow"))
    assert run_labels([slow, fast], ["a.json", "b.json"]) == ["slow", "fast"]
    assert run_labels([slow, slow_again], ["a.json", "b.json"]) == ["slow a.json", "slow b.json"]
    assert run_labels([slow, slow_again], ["a.json", "a.json"]) == ["slow a.json #1", "slow a.json #2"]
    # what `ossbench run` writes: DIR/results.json is named by its folder, never by the full path
    assert run_labels([slow, slow_again], ["/home/u/reports/attention-cpu-1/results.json",
                                           "/home/u/reports/attention-cpu-2/results.json"]) == [
        "slow attention-cpu-1", "slow attention-cpu-2"]
    assert run_labels([slow, slow_again]) == ["slow #1", "slow #2"]  # no files: the repeated name, numbered
    assert [r.label for r in compare_runs([slow, slow_again]).runs] == ["slow #1", "slow #2"]


def test_compare_fractions_use_the_same_ceilings_as_the_report():
    """A run with recorded ceilings and one with only a datasheet row: compare's fractions divide by
    `analysis.run_ceilings`, the ceilings the report's roofline uses."""
    from ossbench.analysis import compute_ceiling, run_ceilings
    from ossbench.measure.roofline import resolve_ceilings

    rng = np.random.default_rng(41)
    runs = [make_run(rng, d, SLOW_GPU, {"attention/a/s=1": 1.0}) for d in ("x", "y")]
    runs[1].environment.ceilings = resolve_ceilings(SLOW_GPU, {"ceilings": {"bf16_tflops": 100.0, "copy_gbps": 500.0}})
    c = compare_runs(runs)
    for run, cell in zip(runs, c.cases[0].runs):
        ceilings = run_ceilings(run.environment)
        assert cell.compute_key == "bf16"
        assert cell.compute_fraction == pytest.approx(run.cases[0].derived.tflops / compute_ceiling(ceilings, "bf16"))
        assert cell.bandwidth_fraction == pytest.approx(run.cases[0].derived.gbps / ceilings["bandwidth_gbps"])
    vs = c.cases[0].vs_reference[1]
    assert vs.compute_ratio == pytest.approx(100.0 / 400.0) and vs.bandwidth_ratio == pytest.approx(500.0 / 1000.0)


def test_the_analysis_modules_import_no_renderer():
    """compare, gate, analysis and the pairs compute; the terminal, markdown, JUnit and HTML views import
    them, never the other way round (a fresh interpreter, so other tests' imports do not count)."""
    import subprocess
    import sys

    code = ("import sys, ossbench.analysis, ossbench.compare, ossbench.gate, ossbench.expectations; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich' or m in "
            "('ossbench.summary', 'ossbench.compare_table', 'ossbench.gate_outputs', 'ossbench.report')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
