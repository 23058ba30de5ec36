"""What a reader of a report needs first, and what must not mislead them (issue 15, item 3): the answer at
the top, "too few samples" instead of "nan", charts that never mix modes, CPU memory that is the case's own,
file names instead of local paths, shared or CDN plotly.js, hot-cache cases off the DRAM roof, the ratio a
pair is judged on, the roofline's modes and shapes, kernels side by side with linked traces.

Runs are built from known samples, so every figure can be checked against one computed here.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from plotly.offline import get_plotlyjs
from rich.console import Console

from ossbench.analysis import analyze_run, place_cases
from ossbench.cli import main
from ossbench.expectations import evaluate
from ossbench.headline import fastest_by_mode, pair_answers
from ossbench.measure.roofline import CEILING_BELOW_MEASURED_TEXT, resolve_ceilings
from ossbench.measure.stats import summarize
from ossbench.report import render_report, write_report
from ossbench.report.html import report_charts
from ossbench.results import CaseResult, Derived, Environment, Memory, RunResult, SuiteInfo
from ossbench.summary import cases_table, pairs_table

SIZES = {"prefill": ("seq_len", (128, 512)), "decode": ("kv_len", (1024, 4096))}


def _case(variant: str, mode: str, size: int, ms: float, rng: np.random.Generator, *, n: int = 30,
          backend: str = "eager", flops: float = 1e9, nbytes: float = 1e6, **extra) -> CaseResult:
    axis = SIZES[mode][0]
    axes = {"mode": mode, axis: size} if mode == "prefill" else {"mode": mode, "batch": 1, axis: size}
    samples = (ms * (1 + rng.exponential(0.02, size=n))).tolist()
    median = float(np.median(samples))
    return CaseResult(
        id=f"attention/{variant}/" + ",".join(f"{k}={v}" for k, v in axes.items()), family="attention",
        variant=variant, axes=axes, params={**axes, "backend": backend}, dtype="float32", status="ok",
        samples_ms=samples, stats=summarize(samples), flops=flops, bytes=nbytes, tokens=size,
        derived=Derived(tflops=flops / median / 1e9, gbps=nbytes / median / 1e6), **extra)


def _env(**kw) -> Environment:
    return Environment(device_type="cpu", device_name="AMD EPYC", python="3.11", platform="Linux", host="ci",
                       ossbench_version="0.1.0", start_time="2026-01-01T00:00:00+00:00", **kw)


def _run(cases: list[CaseResult], compare: list[dict] | None = None, env: Environment | None = None,
         path: str = "suites/attention.yaml") -> RunResult:
    suite = SuiteInfo(name="attention", path=path, sha256="0" * 64, family="attention", preset="gpt-oss-20b",
                      compare=compare or [])
    return RunResult(suite=suite, environment=env or _env(), cases=cases)


def _window_run(n_window: int = 30) -> RunResult:
    """full vs window over prefill and decode; the window is 2x (prefill) and 3x (decode) faster, and its
    FLOP and byte ratios differ so that a chart drawing the wrong one is caught."""
    rng = np.random.default_rng(0)
    cases = []
    for mode, (_, sizes) in SIZES.items():
        for size in sizes:
            speed = 2.0 if mode == "prefill" else 3.0
            cases.append(_case("full", mode, size, size / 100, rng, flops=8e9, nbytes=4e6))
            cases.append(_case("window", mode, size, size / 100 / speed, rng, n=n_window, flops=1e9, nbytes=2e6))
    compare = [{"baseline": "full", "candidate": "window", "where": {}, "claim": "windows are cheaper",
                "expect": {"speedup_min": 0.5, "relative_to": "bytes"}}]
    return _run(cases, compare)


# ------------------------------------------------------------------------------------------- the answer


def test_answer_gives_each_pair_its_largest_point_per_mode_before_the_detail() -> None:
    run = _window_run()
    (answer,) = pair_answers(evaluate(run))
    assert [o.axes for o in answer.points] == [{"mode": "prefill", "seq_len": 512},
                                               {"mode": "decode", "batch": 1, "kv_len": 4096}]
    by_id = {c.id: c for c in run.cases}
    for o in answer.points:
        expected = by_id[o.baseline_id].stats.median / by_id[o.candidate_id].stats.median
        assert o.speedup == pytest.approx(expected)
    assert answer.met is True
    page = render_report(run)
    top = page[page.index('id="answer"'):page.index('<dl class="meta">')]  # before the run's details
    assert page.index('id="answer"') < page.index('id="expectations"')
    for o in answer.points:
        assert f"{o.speedup:.3g}x" in top and f"{o.speedup_ci95[0]:.3g}x to {o.speedup_ci95[1]:.3g}x" in top
    assert "windows are cheaper" in top and 'class="met verdict"' in top
    assert "(bytes ratio 2x)" in top  # judged on bytes: 4e6 / 2e6


def test_fastest_backend_per_mode_on_the_same_work() -> None:
    rng = np.random.default_rng(1)
    cases = [_case(v, mode, size, ms * size / 100, rng, backend=b)
             for mode, (_, sizes) in SIZES.items() for size in sizes
             for v, b, ms in (("full", "eager", 1.0), ("full-sdpa", "sdpa", 0.5 if mode == "decode" else 2.0))]
    window = _case("window", "prefill", 512, 0.01, rng, backend="eager")  # far faster, but other work
    window.params["window"] = 8
    fastest = {f.mode: f for f in fastest_by_mode(_run(cases + [window]))}
    assert fastest["prefill"].axes["seq_len"] == 512 and fastest["decode"].axes["kv_len"] == 4096
    (prefill,), (decode,) = fastest["prefill"].races, fastest["decode"].races
    assert prefill.like_for_like and prefill.winner.backend == "eager" and prefill.winner.case.variant == "full"
    assert [b.backend for b in decode.by_backend] == ["sdpa", "eager"]
    top = render_report(_run(cases + [window]))
    top = top[top.index('id="answer"'):top.index('<dl class="meta">')]
    assert re.search(r"<strong>prefill</strong>, seq_len=512: fastest backend\s+<strong>eager</strong> on the same "
                     r"work \(full, ", top)
    assert re.search(r"<strong>decode</strong>, batch=1, kv_len=4096: fastest backend\s+<strong>sdpa</strong>", top)
    # No work on two backends: each backend's fastest case, said to be different work.
    (race,) = fastest_by_mode(_run([window, _case("full", "prefill", 512, 1.0, rng, backend="sdpa")]))[0].races
    assert not race.like_for_like and race.winner.case.variant == "window"


def test_one_sample_reads_too_few_samples_not_nan_in_page_and_terminal() -> None:
    run = _window_run(n_window=1)
    (pair,) = evaluate(run)
    assert all(o.too_few_samples and o.speedup_ci95 is None and o.n == 1 for o in pair.outcomes)
    page = render_report(run)
    assert "nanx" not in page and "nan to" not in page
    expectations = page[page.index('id="expectations"'):page.index('</section>', page.index('id="expectations"'))]
    assert expectations.count("too few samples (n=1)") == len(pair.outcomes)
    assert '<span class="met">' not in expectations  # verdicts greyed, not green
    assert 'class="too-few"' in expectations
    console = Console(record=True, width=250, color_system=None)
    console.print(pairs_table([pair]))
    text = console.export_text()
    assert text.count("too few samples (n=1)") == len(pair.outcomes) and "nan" not in text


# ------------------------------------------------------------------------------------------- the charts


def test_no_chart_mixes_modes() -> None:
    run = _window_run()
    charts = report_charts(run, analyze_run(run))
    for section in ("latency", "speedup", "memory"):
        for c in charts[section]:
            title = c.figure["layout"]["title"]["text"]
            (mode,) = [m for m in SIZES if f"({m})" in title]  # one mode per chart, named in its title
            hover = json.dumps([t.get("text") or t.get("hovertext") for t in c.figure["data"]])
            other = next(m for m in SIZES if m != mode)
            assert f"mode={other}" not in hover, title
    titles = [c.figure["layout"]["title"]["text"] for c in charts["latency"]]
    assert titles == ["Median latency vs seq_len (prefill)", "Median latency vs kv_len (decode)"]


def test_a_mode_measured_at_one_size_gets_bars_with_ci_error_bars() -> None:
    rng = np.random.default_rng(2)
    run = _run([_case(v, "prefill", 256, ms, rng) for v, ms in (("full", 2.0), ("window", 1.0))])
    (latency,) = report_charts(run, analyze_run(run))["latency"]
    assert latency.figure["layout"]["title"]["text"] == "Median latency at seq_len=256 (prefill)"
    assert latency.figure["layout"]["xaxis"]["type"] == "category"  # string x values on a linear axis draw nothing
    bars = latency.figure["data"]
    assert [b["name"] for b in bars] == ["full", "window"]
    for bar, case in zip(bars, run.cases):
        assert bar["y"] == [pytest.approx(case.stats.median)]
        assert bar["error_y"]["array"] == [pytest.approx(case.stats.ci95_high - case.stats.median)]


def test_cpu_memory_chart_plots_what_the_case_holds_not_the_process_rss() -> None:
    """On CPU the only measurement is the process's peak RSS growth (here falling as the size grows, as the
    first case of a process carries its warm-up): the chart shows the workload's count instead."""
    rng = np.random.default_rng(3)
    cases = [_case("full", "prefill", size, 1.0, rng,
                   memory=Memory(kind="rss", peak_bytes=rss, persistent_bytes=held))
             for size, rss, held in ((128, 900 * 2**20, 10 * 2**20), (512, 500 * 2**20, 40 * 2**20))]
    run = _run(cases)
    (held,) = report_charts(run, analyze_run(run))["memory"]
    assert "held by the case" in held.figure["layout"]["title"]["text"].lower()
    assert held.figure["data"][-1]["y"] == [10.0, 40.0]  # MiB, the workload's count
    assert all(900.0 not in (t.get("y") or []) for t in held.figure["data"])
    page = render_report(run)
    assert ">process peak RSS growth</th>" in page  # the cases table names what its column is
    console = Console(record=True, width=250, color_system=None)
    console.print(cases_table(run))
    assert "peak RSS growth" in console.export_text()


def test_speedup_chart_draws_the_ratio_the_pair_is_judged_on() -> None:
    run = _window_run()
    charts = report_charts(run, analyze_run(run))["speedup"]
    assert charts
    for c in charts:
        (reference,) = [t for t in c.figure["data"] if t.get("line", {}).get("dash") == "dash"]
        assert reference["name"].startswith("bytes ratio") and reference["y"] == [2.0, 2.0]  # not the FLOP ratio 8
        assert "bytes ratio" in c.note


def test_roofline_marks_mode_by_symbol_and_names_the_shape() -> None:
    run = _window_run()
    (roof,) = report_charts(run, analyze_run(run))["roofline"]
    points = [t for t in roof.figure["data"] if t.get("x") and t["x"][0] is not None]
    for trace in points:
        for symbol, text in zip(trace["marker"]["symbol"], trace["text"]):
            assert symbol == ("circle" if "prefill" in text else "diamond")
            assert re.search(r"(seq_len=\d+|kv_len=\d+)", text)
    legend = {t["name"]: t["marker"]["symbol"] for t in roof.figure["data"] if t.get("x") == [None]}
    assert legend == {"prefill": "circle", "decode": "diamond"}


# ------------------------------------------------------------------------------------ paths and plotly.js


def test_local_paths_show_as_file_names() -> None:
    rng = np.random.default_rng(4)
    cal = "/home/alice/.cache/ossbench/calibration/amd-epyc.json"
    ceilings = resolve_ceilings(None, {"ceilings": {"fp32_tflops": 1.0, "copy_gbps": 10.0}, "path": cal})
    run = _run([_case("full", "prefill", 128, 1.0, rng)], env=_env(ceilings=ceilings),
               path="/home/alice/work/suites/attention.yaml")
    page = render_report(run)
    assert "/home/alice" not in page
    assert "calibration amd-epyc.json" in page and "<code>attention.yaml</code>" in page
    assert run.environment.ceilings["calibration"] == cal  # the full path stays in the results


def test_plotly_js_inline_cdn_or_one_shared_file(tmp_path) -> None:
    from plotly.offline import get_plotlyjs_version

    run = _window_run()
    bundle = get_plotlyjs()
    assert render_report(run).count(bundle) == 1  # the default: inline, offline
    cdn = render_report(run, plotly="cdn")
    assert bundle not in cdn and f'src="https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"' in cdn
    shared = tmp_path / "assets" / "plotly.min.js"
    page = write_report(run, tmp_path / "runs" / "a" / "report.html", plotly=shared).read_text()
    assert bundle not in page and 'src="../../assets/plotly.min.js"' in page
    assert shared.read_text() == bundle
    before = shared.stat().st_mtime_ns
    write_report(run, tmp_path / "runs" / "b" / "report.html", plotly=shared)
    assert shared.stat().st_mtime_ns == before  # already this plotly's bundle: not rewritten


def test_plotly_js_option_on_report_and_compare(tmp_path) -> None:
    a = _window_run().save(tmp_path / "a" / "results.json")
    b = _window_run().save(tmp_path / "b" / "results.json")
    out = CliRunner().invoke(main, ["report", str(a), "--plotly-js", str(tmp_path / "plotly.js")])
    assert out.exit_code == 0, out.output
    assert 'src="../plotly.js"' in (tmp_path / "a" / "report.html").read_text()
    out = CliRunner().invoke(main, ["compare", str(a), str(b), "-o", str(tmp_path / "c.html"), "--plotly-js", "cdn"])
    assert out.exit_code == 0, out.output
    assert "cdn.plot.ly" in (tmp_path / "c.html").read_text()
    out = CliRunner().invoke(main, ["report", str(a), "--plotly-js", str(tmp_path)])
    assert out.exit_code == 2 and "is a directory" in out.output and "Traceback" not in out.output
    assert "--plotly-js" in CliRunner().invoke(main, ["run", "--help"]).output


# ----------------------------------------------------------------------------------------------- ceilings


def test_hot_cache_cases_are_off_the_dram_roof_not_a_stale_calibration() -> None:
    """A small memory-bound case timed hot reads from cache: 976% "of DRAM" says nothing about the
    calibration. The same figures timed cold still raise the calibration warning."""
    rng = np.random.default_rng(5)
    ceilings = resolve_ceilings(None, {"ceilings": {"fp32_tflops": 100.0, "copy_gbps": 1.0}})
    hot = _case("hot", "decode", 1024, 0.1, rng, flops=1e3, nbytes=1e6, timing={"cache": "hot"})
    cold = _case("cold", "decode", 1024, 0.1, rng, flops=1e3, nbytes=1e6, timing={"cache": "cold"})
    run = _run([hot, cold], env=_env(ceilings=ceilings))
    p_hot, p_cold = place_cases(run)
    assert p_hot.fraction > 1 and p_hot.hot_cache and not p_hot.over_ceiling
    assert p_cold.over_ceiling and not p_cold.hot_cache
    page = render_report(run)
    rows = {m.group(1): m.group(0) for m in re.finditer(r'<tr class="case">\s*<td><code>([^<]+)</code>.*?</tr>',
                                                           page, re.S)}
    assert "hot cache (" in rows[hot.id] and CEILING_BELOW_MEASURED_TEXT not in rows[hot.id]
    assert CEILING_BELOW_MEASURED_TEXT in rows[cold.id]
    assert "1 memory-bound case(s) with a hot cache" in page
    console = Console(record=True, width=250, color_system=None)
    console.print(cases_table(run))
    assert "hot cache" in console.export_text()
    # On a GPU with a known L2, a hot case larger than the L2 is judged against DRAM as usual.
    big = _case("big", "decode", 1024, 0.1, rng, flops=1e3, nbytes=1e9, timing={"cache": "hot"})
    gpu = _run([big], env=_env(ceilings=ceilings, l2_cache_bytes=50 * 2**20))
    assert not place_cases(gpu)[0].hot_cache


# ------------------------------------------------------------------------------------------------ kernels


def test_kernels_side_by_side_per_shape_and_traces_linked(tmp_path) -> None:
    rng = np.random.default_rng(6)
    (tmp_path / "traces").mkdir()
    cases = []
    for variant, ms in (("full", 2.0), ("window", 1.0)):
        trace = tmp_path / "traces" / f"{variant}.json.gz"
        trace.write_bytes(b"")
        profile = {"available": True, "calls": 2, "trace": str(trace), "host_ms_per_call": ms,
                   "top": [{"name": "aten::bmm", "calls": 4, "total_ms": 2 * ms, "share": 0.6},
                           {"name": f"aten::{variant}_only", "calls": 2, "total_ms": ms, "share": 0.3}]}
        cases.append(_case(variant, "prefill", 128, ms, rng, profile=profile))
    page = write_report(_run(cases), tmp_path / "report.html").read_text()
    section = page[page.index('id="kernels"'):]
    table = section[section.index('class="kernels kernel-compare"'):section.index("</table>")]
    assert "<th class=\"num\">full</th><th class=\"num\">window</th>" in table
    bmm = re.search(r"aten::bmm</code></td>(.*?)</tr>", table).group(1)
    assert re.findall(r'<td class="num">([^<]+)</td>', bmm) == ["2 ms", "1 ms"]  # time per call, each variant
    only = re.search(r"aten::full_only</code></td>(.*?)</tr>", table).group(1)
    assert re.findall(r'<td class="num">([^<]+)</td>', only) == ["1 ms", "-"]
    assert '<a href="traces/full.json.gz">full.json.gz</a>' in section
    assert str(tmp_path) not in page


def test_header_says_when_the_machine_was_loaded() -> None:
    rng = np.random.default_rng(7)
    cases = [_case("full", "prefill", 128, 1.0, rng)]
    busy = render_report(_run(cases, env=_env(load={"loadavg": [7.8, 6.0, 3.0], "cpu_count": 2})))
    assert "1-minute load average 7.8 on 2 CPUs" in busy and "(loaded:" in busy
    quiet = render_report(_run(cases, env=_env(load={"loadavg": [0.3, 0.2, 0.1], "cpu_count": 2})))
    assert "load average 0.3 on 2 CPUs" in quiet and "(loaded:" not in quiet


def test_run_writes_its_report_against_a_shared_plotly_js(tmp_path) -> None:
    from pathlib import Path

    suite = Path(__file__).parent / "suites" / "tiny.yaml"
    shared = tmp_path / "shared" / "plotly.min.js"
    out = CliRunner().invoke(main, ["run", str(suite), "--device", "cpu", "--out", str(tmp_path / "run"),
                                    "--filter", "window8/mode=decode", "--plotly-js", str(shared)])
    assert out.exit_code == 0, out.output
    page = (tmp_path / "run" / "report.html").read_text()
    assert 'src="../shared/plotly.min.js"' in page and get_plotlyjs() not in page
    assert shared.read_text() == get_plotlyjs()
