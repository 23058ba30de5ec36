"""The HTML reports, as HTML and chart data (the browser tests in test_browser.py render them for real).

Runs here are built directly from known samples, so every figure the report shows can be checked against
a value computed independently in the test.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from plotly.offline import get_plotlyjs

from ossbench.analysis import analyze_run
from ossbench.compare import compare_runs
from ossbench.expectations import evaluate
from ossbench.measure.roofline import peak_for
from ossbench.measure.stats import summarize
from ossbench.report import render_compare_report, render_report, write_compare_report, write_report
from ossbench.report.html import report_charts
from ossbench.results import CaseResult, Derived, Environment, Memory, RunResult, Stats, SuiteInfo

XSS_SUITE = "<script>alert(1)</script>"
XSS_VARIANT = "</script><script>alert(2)</script>"
XSS_ERROR = '<img src=x onerror="alert(3)">'
H100 = "NVIDIA H100 80GB HBM3"


def _case(variant: str, seq_len: int, base_ms: float, rng: np.random.Generator, *, dtype: str = "bfloat16",
          extra: dict | None = None) -> CaseResult:
    # Skewed samples like real timings: a floor plus an exponential tail.
    samples = (base_ms * (1 + rng.exponential(0.02, size=40))).tolist()
    flops = 4.0 * seq_len * seq_len * 64 * (0.25 if variant != "full" else 1.0)
    nbytes = 2.0 * seq_len * 4096
    median = float(np.median(samples))
    return CaseResult(
        id=f"attention/{variant}/seq_len={seq_len}", family="attention", variant=variant,
        axes={"seq_len": seq_len}, params={"seq_len": seq_len, "heads": 8}, dtype=dtype, status="ok",
        samples_ms=samples, stats=Stats(**summarize(samples)), flops=flops, bytes=nbytes, tokens=seq_len,
        cost_extra={"kv_cache_bytes": 2048.0 * seq_len},
        derived=Derived(tflops=flops / median / 1e9, gbps=nbytes / median / 1e6, tokens_per_s=seq_len / median * 1e3),
        memory=Memory(kind="cuda", peak_bytes=3 * 2**20 * seq_len // 128), **(extra or {}),
    )


def _env(device: str = H100, **kw) -> Environment:
    gpu = device != "AMD EPYC"
    return Environment(device_type="cuda" if gpu else "cpu", device_name=device, python="3.11.7",
                       platform="Linux", host="ci", ossbench_version="0.1.0", git_revision="abc123-dirty",
                       start_time="2025-01-01T00:00:00+00:00", torch="2.11.0", cuda="12.8" if gpu else None,
                       driver="570.1" if gpu else None, peak=peak_for(device) if gpu else None, **kw)


def _run(variants=(("full", 0.5), (XSS_VARIANT, 0.2)), seq_lens=(128, 512, 2048), env: Environment | None = None,
         extra: dict | None = None, seed: int = 0, scale: float = 1.0) -> RunResult:
    rng = np.random.default_rng(seed)
    cases = [_case(v, n, scale * base * n / 128, rng, extra=extra) for v, base in variants for n in seq_lens]
    cases.append(CaseResult(id="attention/full/seq_len=8192", family="attention", variant="full",
                            axes={"seq_len": 8192}, dtype="bfloat16", status="failed",
                            error=f"RuntimeError: boom {XSS_ERROR}"))
    cases.append(CaseResult(id="attention/flex/seq_len=128", family="attention", variant="flex",
                            axes={"seq_len": 128}, dtype="bfloat16", status="skipped",
                            error="flex attention needs CUDA"))
    suite = SuiteInfo(name=XSS_SUITE, description="Sliding window vs full <b>attention</b>",
                      path="suites/attention.yaml", sha256="0" * 64, family="attention", preset="gpt-oss-20b",
                      compare=[{"baseline": "full", "candidate": variants[1][0], "claim": "<i>faster</i>",
                                "expect": {"speedup_min": 2.0}},
                               {"baseline": "full", "candidate": variants[1][0],
                                "expect": {"speedup_min": 100.0}}])
    return RunResult(suite=suite, environment=env or _env(), cases=cases)


@pytest.fixture(scope="module")
def run() -> RunResult:
    return _run()


@pytest.fixture(scope="module")
def page(run: RunResult) -> str:
    return render_report(run)


def _charts(run: RunResult) -> dict:
    return report_charts(run, analyze_run(run))


def test_plotly_inlined_once_and_nothing_fetched(page: str) -> None:
    assert page.count(get_plotlyjs()) == 1
    lower = page.lower()
    assert not re.search(r"<script[^>]*\ssrc\s*=", lower)
    assert not re.search(r"<link[^>]*\shref\s*=", lower)
    assert not re.search(r"<(img|iframe|source|video|audio)[^>]*\ssrc\s*=", lower)
    assert "@import" not in lower
    assert "url(http" not in lower.replace(" ", "")


def test_one_table_row_per_case(run: RunResult, page: str) -> None:
    assert page.count('<tr class="case">') == len(run.cases)
    for case in run.cases:
        if "<" not in case.id:
            assert f"<code>{case.id}</code>" in page


def test_user_strings_are_escaped(page: str) -> None:
    assert XSS_SUITE not in page
    assert XSS_VARIANT not in page
    assert "<script>alert" not in page
    assert XSS_ERROR not in page
    assert "<b>attention</b>" not in page and "<i>faster</i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown as text in the header
    assert "&lt;/script&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in page  # and in the table
    # Script tags: exactly the three ossbench writes (table script, plotly.js, the charts); nothing injected.
    assert page.count("<script") == 3
    assert page.count("</script>") == 3


def test_latency_chart_has_ci_bands_per_variant(run: RunResult) -> None:
    (latency,) = _charts(run)["latency"]
    traces = latency.figure["data"]
    bands = [t for t in traces if t.get("fill") == "toself"]
    lines = [t for t in traces if t.get("mode") == "lines+markers"]
    assert len(bands) == len(lines) == 2  # one per variant with ok cases
    for band, line in zip(bands, lines):
        assert line["x"] == [128, 512, 2048]
        cases = [run.case(f"attention/{_unescape(line['name'])}/seq_len={n}") for n in line["x"]]
        assert line["y"] == pytest.approx([c.stats.median for c in cases])
        # The band goes out along the upper CI bounds and back along the lower ones.
        assert band["y"] == pytest.approx([c.stats.ci95_high for c in cases] + [c.stats.ci95_low for c in cases][::-1])
    assert latency.figure["layout"]["xaxis"]["type"] == "log"  # 128..2048 spans more than 10x


def _unescape(text: str) -> str:
    import html

    return html.unescape(text)


def test_speedup_chart_against_flop_ratio(run: RunResult) -> None:
    charts = _charts(run)["speedup"]
    assert len(charts) == 2  # one per compare pair
    traces = charts[0].figure["data"]
    measured = next(t for t in traces if t.get("mode") == "lines+markers")
    reference = next(t for t in traces if "FLOP ratio" in t["name"])
    band = next(t for t in traces if t.get("fill") == "toself")
    expected = [run.case(f"attention/full/seq_len={n}").stats.median /
                run.case(f"attention/{XSS_VARIANT}/seq_len={n}").stats.median for n in (128, 512, 2048)]
    assert measured["y"] == pytest.approx(expected)
    assert reference["y"] == pytest.approx([4.0] * 3)  # the candidate computes a quarter of the FLOPs
    highs, lows = band["y"][:3], band["y"][3:][::-1]
    assert all(lo <= s <= hi for lo, s, hi in zip(lows, expected, highs))


def test_expectations_met_and_not_met_with_measured_values(run: RunResult, page: str) -> None:
    pairs = evaluate(run)
    assert [p.met for p in pairs] == [True, False]  # ~2.5x measured: above 2, far below 100
    section = page[page.index('id="expectations"'):page.index('id="latency"')]
    assert section.count('<tr class="pair-point">') == 6
    assert '<span class="met">met</span>' in section and '<span class="not-met">not met</span>' in section
    for o in pairs[0].outcomes:
        assert f"{o.speedup:.3g}x" in section
    assert "&lt;i&gt;faster&lt;/i&gt;" in section


def test_speedup_bars_when_the_pair_has_no_numeric_axis() -> None:
    one_point = _run(seq_lens=(512,))
    (bars,) = _charts(one_point)["speedup"][:1]
    measured = next(t for t in bars.figure["data"] if t["type"] == "bar")
    full, fast = (one_point.case(f"attention/{v}/seq_len=512") for v in ("full", XSS_VARIANT))
    assert measured["y"] == pytest.approx([full.stats.median / fast.stats.median])
    assert measured["x"] == ["seq_len=512"]
    assert measured["error_y"]["array"][0] > 0 and measured["error_y"]["arrayminus"][0] > 0


def test_roofline_uses_the_dtype_roof_and_records_speed_of_light(run: RunResult, page: str) -> None:
    (roof,) = _charts(run)["roofline"]
    roofs = [t for t in roof.figure["data"] if t["name"].startswith("bf16 roof")]
    assert len(roofs) == 1
    x, y = roofs[0]["x"], roofs[0]["y"]
    assert max(y) == pytest.approx(989.0)  # H100 SXM datasheet bf16
    assert y[0] == pytest.approx(x[0] * 3.35)  # left of the ridge: intensity x 3350 GB/s
    assert roof.figure["layout"]["xaxis"]["type"] == roof.figure["layout"]["yaxis"]["type"] == "log"
    # % of speed of light in the table: floor time (here memory-bound) / median.
    c = run.case("attention/full/seq_len=2048")
    floor_s = max(c.flops / 989e12, c.bytes / 3350e9)
    assert f"{floor_s / (c.stats.median / 1e3) * 100:.1f}%" in page
    assert "bf16 989 TFLOP/s (datasheet)" in page  # ceilings used, in the header


def test_roofline_without_ceilings_says_so() -> None:
    cpu = _run(env=_env("AMD EPYC"))
    (roof,) = _charts(cpu)["roofline"]
    assert not [t for t in roof.figure["data"] if "roof" in t["name"]]
    assert "roofs are omitted" in roof.note
    page = render_report(cpu)
    assert "% speed of light" not in page  # the column is left out when no case has a ceiling


def test_memory_section_with_kv_cache(run: RunResult, page: str) -> None:
    charts = _charts(run)["memory"]
    titles = [c.figure["layout"]["title"]["text"] for c in charts]
    assert titles == ["Peak memory vs seq_len", "KV cache vs seq_len"]
    kv = next(t for t in charts[1].figure["data"] if t["name"] == "full")
    assert kv["y"] == pytest.approx([2048 * n / 2**20 for n in (128, 512, 2048)])
    assert '<section id="memory">' in page and "4 MiB" in page  # 2048 B x 2048 tokens


def test_energy_kernels_and_throttling_only_when_recorded(page: str) -> None:
    assert 'id="energy"' not in page and 'id="kernels"' not in page and "(throttled)" not in page
    extra = {
        "power": {"available": True, "power_w": {"mean": 612.0},
                  "energy": {"available": True, "per_call_j": 0.5, "per_token_j": 0.004}},
        "profile": {"available": True, "calls": 5, "kernels_per_call": 3.0, "launch_bound": False,
                    "top": [{"name": "flash_fwd<script>", "calls": 5, "total_ms": 2.5, "share": 0.8}]},
        "clocks": {"throttled": True},
    }
    page = render_report(_run(extra=extra))
    assert '<section id="energy">' in page and "4 mJ" in page and "612 W" in page
    assert '<section id="kernels">' in page and "flash_fwd&lt;script&gt;" in page
    assert "500 µs" in page  # 2.5 ms over 5 profiled calls
    assert "(throttled)" in page
    (energy,) = _charts(_run(extra=extra))["energy"]
    assert energy.figure["data"][0]["y"] == pytest.approx([4.0] * 3)  # mJ per token


def test_failed_and_skipped_cases_listed(page: str) -> None:
    problems = page[page.index('id="problems"'):]
    assert "flex attention needs CUDA" in problems
    assert "RuntimeError: boom &lt;img src=x onerror=&#34;alert(3)&#34;&gt;" in problems


def test_no_plotly_without_charts(run: RunResult) -> None:
    only_failed = run.model_copy(update={"cases": [c for c in run.cases if c.status != "ok"]})
    page = render_report(only_failed, title="t")
    assert "Plotly.newPlot" not in page and get_plotlyjs() not in page
    assert page.count('<tr class="case">') == 2


def test_write_report_is_atomic(run: RunResult, tmp_path, monkeypatch) -> None:
    target = tmp_path / "out" / "report.html"
    assert write_report(run, target) == target
    assert target.read_text(encoding="utf-8") == render_report(run)
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]

    # A failure before the final rename leaves the previous report intact and no temporary file behind.
    target.write_text("previous", encoding="utf-8")

    def fail_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError):
        write_report(run, target)
    assert target.read_text(encoding="utf-8") == "previous"
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]


# ------------------------------------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def comparison():
    h100 = _run()
    h200 = _run(env=_env("NVIDIA H200"), seed=1, scale=0.7)
    h200.cases = [c for c in h200.cases if c.axes["seq_len"] != 2048] + [
        CaseResult(id="attention/new/seq_len=1", family="attention", variant="new", axes={"seq_len": 1},
                   dtype="bfloat16", status="skipped", error="new in this run")]
    return compare_runs([h100, h200], labels=["H100 <b>ref</b>", "H200"])


def test_compare_report(comparison, tmp_path) -> None:
    page = render_compare_report(comparison)
    assert page.count(get_plotlyjs()) == 1
    assert page.count("<script") == 3 and "<b>ref</b>" not in page and "H100 &lt;b&gt;ref&lt;/b&gt;" in page
    assert XSS_VARIANT not in page and XSS_SUITE not in page
    # One row per matched case and compared run; the reference is not compared with itself.
    assert page.count('<tr class="case">') == len(comparison.cases) == 6
    unmatched = page[page.index('id="unmatched"'):]
    assert "attention/new/seq_len=1" in unmatched and "attention/full/seq_len=2048" in unmatched
    for case in comparison.cases:
        vs = case.vs_reference[1]
        if vs is not None:
            assert f"{vs.speedup:.3g}x" in page
            assert f"{vs.speedup_ci95[0]:.3g}x to {vs.speedup_ci95[1]:.3g}x" in page
    # Latency per variant (both variants have 2 matched points), speedups, fraction of ceilings.
    assert page.count('class="plot"') == 4
    # The ceilings the fractions divide by, described as the run report does (here the datasheet rows).
    assert "from datasheet row H100 SXM" in page and "from datasheet row H200" in page
    target = write_compare_report(comparison, tmp_path / "c.html")
    assert target.read_text(encoding="utf-8") == page


def test_compare_charts_carry_the_ratios(comparison) -> None:
    from ossbench.report.compare_html import ceiling_charts, speedup_chart
    from ossbench.report.page import ChartIds

    colours = {r.label: "#123456" for r in comparison.runs}
    (speed,) = speedup_chart(comparison, ChartIds(), colours)
    marks = next(t for t in speed.figure["data"] if t.get("mode") == "markers")
    compared = [c for c in comparison.cases if c.vs_reference[1] is not None]  # both sides ran
    assert len(compared) == 4
    assert marks["x"] == pytest.approx([c.vs_reference[1].speedup for c in compared])
    legends = [s.get("name", "") for s in speed.figure["layout"]["shapes"]]
    assert any("bandwidth ceiling ratio 1.43x" in n for n in legends)  # 4800 / 3350 GB/s
    (fractions,) = ceiling_charts(comparison, ChartIds(), colours)
    bars = [t for t in fractions.figure["data"] if t["type"] == "bar"]
    assert len(bars) == 4  # compute and bandwidth, per run
    ref_compute = bars[0]["x"]
    assert ref_compute[0] == pytest.approx(comparison.cases[0].runs[0].compute_fraction * 100)


def test_ceiling_sources_and_names_are_text_in_every_chart() -> None:
    """Markup in environment.ceilings.sources (or any name) must not become a live link or style in a legend."""
    import json

    link, style = "<a href='https://evil.example'>click</a>", "<b style='font-size:90px'>big</b>"
    ceilings = {"compute_tflops": {"bf16": 989.0}, "bandwidth_gbps": 3350.0,
                "sources": {"bf16": link, "bandwidth": style}}
    run = _run(variants=(("full", 0.5), ("<i>w</i>\x1b[31m", 0.2)), env=_env(ceilings=ceilings))
    charts = [c for cs in _charts(run).values() for c in cs]
    (roof,) = [c for c in charts if c.figure["layout"]["title"]["text"].startswith("Roofline")]
    (bf16,) = [t for t in roof.figure["data"] if t["name"].startswith("bf16 roof")]
    assert bf16["name"] == "bf16 roof (989 TFLOP/s, &lt;a href='https://evil.example'&gt;click&lt;/a&gt;)"
    figures = json.dumps([c.figure for c in charts])
    # No tag can form anywhere in the chart data (names, groups, hover text, titles), and no raw ESC.
    assert "<a " not in figures and "<b " not in figures and "<i>" not in figures and "\\u001b" not in figures
    assert "&lt;i&gt;w&lt;/i&gt;\\\\x1b[31m" in figures  # the variant, escaped the same way in legends
    page = render_report(run)
    assert link not in page and style not in page and "&lt;a href=" in page


def test_pair_speedup_cis_are_the_pairs_own_in_table_and_chart(run: RunResult, page: str) -> None:
    """The CI95 of each compare-pair speedup is computed once, by `evaluate`, from the samples; the page's
    table and the speedup chart's band show exactly those figures."""
    from ossbench.bootstrap import speedup_ci

    pairs = evaluate(run)
    rng = np.random.default_rng(0)  # evaluate's seed and order: one stream over every outcome
    for o in (o for p in pairs for o in p.outcomes):
        expected = speedup_ci(run.case(o.baseline_id).samples_ms, run.case(o.candidate_id).samples_ms, rng)
        assert o.speedup_ci95 == expected and expected[0] < o.speedup < expected[1]
    section = page[page.index('id="expectations"'):page.index('id="latency"')]
    for o in pairs[0].outcomes:
        assert f"{o.speedup_ci95[0]:.3g}x to {o.speedup_ci95[1]:.3g}x" in section
    band = next(t for t in _charts(run)["speedup"][0].figure["data"] if t.get("fill") == "toself")
    highs, lows = band["y"][:3], band["y"][3:][::-1]
    assert highs == pytest.approx([o.speedup_ci95[1] for o in pairs[0].outcomes])
    assert lows == pytest.approx([o.speedup_ci95[0] for o in pairs[0].outcomes])


def test_terminal_table_and_report_place_cases_alike(run: RunResult, page: str) -> None:
    """A results file without recorded rooflines: the terminal table and the report both place each case
    against the run's datasheet ceilings (one `analysis.place`), so their speed-of-light figures agree."""
    from rich.console import Console

    from ossbench.analysis import place_cases
    from ossbench.summary import cases_table

    assert all(c.roofline is None for c in run.cases)
    console = Console(width=250, record=True)
    console.print(cases_table(run))
    text = console.export_text()
    placed = [(c, p) for c, p in zip(run.cases, place_cases(run)) if p.fraction is not None]
    assert len(placed) == 6 and all(p.bound == "memory" for _, p in placed)
    for c, p in placed:
        row = next(line for line in text.splitlines() if c.id in line)
        assert f"{p.fraction * 100:.0f}% mem" in row
        assert f"{p.fraction * 100:.1f}%" in page
