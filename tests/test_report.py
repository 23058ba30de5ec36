"""The HTML report: self-contained, escaped, one row per case, a latency plot per numeric axis."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from plotly.offline import get_plotlyjs

from ossbench.measure.stats import summarize
from ossbench.report import render_report, write_report
from ossbench.report.html import latency_figures, numeric_axes
from ossbench.results import CaseResult, Derived, Environment, Memory, RunResult, Stats, SuiteInfo

XSS_SUITE = "<script>alert(1)</script>"
XSS_VARIANT = "</script><script>alert(2)</script>"
XSS_ERROR = '<img src=x onerror="alert(3)">'


def _case(variant: str, seq_len: int, base_ms: float, rng: np.random.Generator) -> CaseResult:
    # Skewed samples like real timings: a floor plus an exponential tail.
    samples = (base_ms * (1 + rng.exponential(0.02, size=40))).tolist()
    flops = 4.0 * seq_len * seq_len * 64
    median = float(np.median(samples))
    return CaseResult(
        id=f"attention/{variant}/seq_len={seq_len}", family="attention", variant=variant,
        axes={"seq_len": seq_len}, params={"seq_len": seq_len, "heads": 8}, dtype="float32", status="ok",
        samples_ms=samples, stats=Stats(**summarize(samples)), flops=flops, bytes=1e6, tokens=seq_len,
        derived=Derived(tflops=flops / median / 1e9, gbps=1e6 / median / 1e6, tokens_per_s=seq_len / median * 1e3),
        memory=Memory(kind="rss", peak_bytes=3 * 2**20),
    )


@pytest.fixture(scope="module")
def run() -> RunResult:
    rng = np.random.default_rng(0)
    cases = [_case(variant, n, base * n / 128, rng)
             for variant, base in (("full", 0.5), (XSS_VARIANT, 0.2)) for n in (128, 512, 2048)]
    cases.append(CaseResult(id="attention/full/seq_len=8192", family="attention", variant="full",
                            axes={"seq_len": 8192}, dtype="float32", status="failed",
                            error=f"RuntimeError: boom {XSS_ERROR}"))
    cases.append(CaseResult(id="attention/flex/seq_len=128", family="attention", variant="flex",
                            axes={"seq_len": 128}, dtype="float32", status="skipped",
                            error="flex attention needs CUDA"))
    env = Environment(device_type="cpu", device_name="AMD EPYC", python="3.11.7", platform="Linux",
                      host="ci", ossbench_version="0.1.0", git_revision="abc123-dirty",
                      start_time="2025-01-01T00:00:00+00:00", torch="2.13.0+cpu")
    suite = SuiteInfo(name=XSS_SUITE, description="Sliding window vs full <b>attention</b>",
                      path="suites/attention.yaml", sha256="0" * 64, family="attention", preset="gpt-oss-20b",
                      profile="cpu")
    return RunResult(suite=suite, environment=env, cases=cases)


@pytest.fixture(scope="module")
def page(run: RunResult) -> str:
    return render_report(run)


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
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown as text in the header
    assert "&lt;/script&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in page  # and in the table
    assert "<b>attention</b>" not in page
    # Script tags: exactly the two ossbench writes (plotly.js, then the figures); nothing injected.
    assert page.count("<script") == 2
    assert page.count("</script>") == 2


def test_plot_per_numeric_axis(run: RunResult, page: str) -> None:
    assert numeric_axes(run.cases) == ["seq_len"]
    figures = latency_figures(run)
    assert len(figures) == 1
    fig = figures[0]["figure"]
    assert len(fig["data"]) == 2  # one line per variant with ok cases
    for trace in fig["data"]:
        assert trace["x"] == [128, 512, 2048]
        assert len(trace["error_y"]["array"]) == 3
        assert all(v >= 0 for v in trace["error_y"]["array"] + trace["error_y"]["arrayminus"])
    assert fig["layout"]["xaxis"]["type"] == "log"  # 128..2048 spans more than 10x
    assert '<div id="plot-0" class="plot"></div>' in page
    assert 'Plotly.newPlot("plot-0"' in page


def test_header_and_failed_cases(page: str) -> None:
    assert "Reduced CPU profile" in page
    assert "abc123-dirty" in page and "AMD EPYC" in page and "2.13.0+cpu" in page
    assert "Failed and skipped cases" in page
    assert "flex attention needs CUDA" in page
    assert "RuntimeError: boom" in page


def test_no_plot_and_no_plotly_without_numeric_axis(run: RunResult) -> None:
    only_failed = run.model_copy(update={"cases": [c for c in run.cases if c.status != "ok"]})
    page = render_report(only_failed, title="t")
    assert "Plotly.newPlot" not in page and "<script" not in page
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
