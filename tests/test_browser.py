"""report.html and compare.html in a real browser: headless Chromium (Debian's package) driven by Playwright.

Each page must load with no script error and no network request (only the file itself), draw every chart
the report meant to draw, have one table row per case with working sort and filter, and show hostile
suite, variant and run names as inert text: no dialog may ever open.

The runs are real: tiny suites run through the runner on the CPU. Without /usr/bin/chromium or the
playwright package the tests skip on a developer machine, but fail in CI (CI=true), where .ci/run installs
the browser and the test extra installs playwright. Never `playwright install`: the browser is Debian's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from ossbench.analysis import analyze_run
from ossbench.compare import compare_runs
from ossbench.expectations import evaluate
from ossbench.report import write_compare_report, write_report
from ossbench.report.html import report_charts
from ossbench.results import RunResult
from ossbench.runner import plan_run, run_plan
from ossbench.suite import load_suite

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
TINY = Path(__file__).parent / "suites" / "tiny.yaml"
PAYLOADS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "\"'><svg onload=alert(1)>"]
ALL_PLOTS_DRAWN = "() => [...document.querySelectorAll('div.plot')].every(d => d.querySelector('.main-svg'))"
SETTLE_MS = 300  # after load: time for any injected handler (onerror, onload) to have fired


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module", autouse=True)
def browser():
    # Autouse, so it runs (and skips or fails) before the suites are run for nothing.
    missing = _browser_missing()
    if missing:
        if IN_CI:
            pytest.fail(f"browser tests cannot run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


# ----------------------------------------------------------------------------------------------- runs


def _run_suite(path: Path, out: Path) -> RunResult:
    return run_plan(plan_run(load_suite(path), device="cpu", out_dir=out))


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> tuple[RunResult, RunResult]:
    """The tiny suite run twice: a report, and an A/A pair to compare."""
    root = tmp_path_factory.mktemp("tiny")
    return _run_suite(TINY, root / "a"), _run_suite(TINY, root / "b")


@pytest.fixture(scope="module")
def xss_run(tmp_path_factory) -> RunResult:
    """A suite whose name, description, variant names and claim are HTML/script payloads."""
    root = tmp_path_factory.mktemp("xss")
    spec = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    spec.update(
        name=PAYLOADS[0], description=" ".join(PAYLOADS),
        variants={PAYLOADS[0]: {}, PAYLOADS[1]: {"window": 8}, PAYLOADS[2]: {"n_kv_heads": 1}},
        sweep=[{"mode": ["prefill"], "seq_len": [32, 64]}],
        compare=[{"baseline": PAYLOADS[0], "candidate": PAYLOADS[1], "claim": PAYLOADS[2],
                  "expect": {"speedup_min": 0.01}}],
    )
    path = root / "xss.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    run = _run_suite(path, root / "out")
    assert {c.variant for c in run.cases} == set(PAYLOADS)
    return run


@pytest.fixture(scope="module")
def tiny_report(tiny_runs, tmp_path_factory) -> Path:
    return write_report(tiny_runs[0], tmp_path_factory.mktemp("report") / "report.html")


# ---------------------------------------------------------------------------------------------- pages


@dataclass
class Visit:
    """A page opened in the browser, with everything it did that a report must never do."""

    page: Any
    url: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    @property
    def foreign_requests(self) -> list[str]:
        return [u for u in self.requests if u != self.url and not u.startswith(("about:blank", "data:"))]

    def assert_clean(self) -> None:
        assert self.errors == []
        assert self.foreign_requests == []
        assert self.dialogs == []


def _visit(browser, path: Path) -> Visit:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    visit = Visit(page, path.resolve().as_uri())
    page.on("pageerror", lambda e: visit.errors.append(f"page error: {e}"))
    page.on("console", lambda m: visit.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("request", lambda r: visit.requests.append(r.url))

    def on_dialog(dialog) -> None:
        visit.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(visit.url, wait_until="load")
    page.wait_for_function(ALL_PLOTS_DRAWN, timeout=30_000)
    page.wait_for_timeout(SETTLE_MS)
    return visit


@pytest.fixture
def visit(browser):
    pages = []

    def open_page(path: Path) -> Visit:
        pages.append(_visit(browser, path))
        return pages[-1]

    yield open_page
    for v in pages:
        v.page.close()


def _drawn_plots(page) -> dict[str, int]:
    """Plot div id -> number of traces plotly drew in it."""
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('div.plot')].map(d =>
        [d.id, d.querySelector('.main-svg') ? d.querySelectorAll('g.trace, g.shape-group path').length : -1]))""")


def _column(page, table: str, header: str) -> list[str]:
    """The data-sort values (or text) of one column, visible rows only, in display order."""
    return page.evaluate("""([table, header]) => {
        const t = document.getElementById(table);
        const i = [...t.tHead.rows[0].cells].findIndex(th => th.textContent.trim() === header);
        if (i < 0) throw new Error('no column ' + header);
        return [...t.tBodies[0].rows].filter(r => !r.hidden).map(r => {
            const c = r.cells[i];
            return c.hasAttribute('data-sort') ? c.getAttribute('data-sort') : c.textContent.trim();
        });
    }""", [table, header])


def _sorted_with_blanks_last(values: list[str], descending: bool) -> list[str]:
    numbers = sorted((v for v in values if v), key=float, reverse=descending)
    return numbers + [v for v in values if not v]


# ---------------------------------------------------------------------------------------------- tests


def test_report_renders_offline_with_every_chart(tiny_runs, tiny_report, visit) -> None:
    run = tiny_runs[0]
    pairs = evaluate(run)
    expected = {s: [c.id for c in charts] for s, charts in report_charts(run, analyze_run(run)).items()}
    # The tiny suite has a numeric axis, a compare pair and a cost model: these sections must have charts.
    assert expected["latency"] and expected["speedup"] and expected["roofline"] and expected["memory"]
    v = visit(tiny_report)
    v.assert_clean()
    drawn = _drawn_plots(v.page)
    assert sorted(drawn) == sorted(i for ids in expected.values() for i in ids)
    assert all(n > 0 for n in drawn.values()), drawn
    assert v.page.locator("#case-table tbody tr").count() == len(run.cases)
    assert v.page.locator("#expectations tr.pair-point").count() == sum(len(p.outcomes) for p in pairs)


def test_report_table_sorts_and_filters(tiny_runs, tiny_report, visit) -> None:
    run = tiny_runs[0]
    v = visit(tiny_report)
    page = v.page
    unsorted = _column(page, "case-table", "median")
    page.click("#case-table th:text-is('median')")
    assert _column(page, "case-table", "median") == _sorted_with_blanks_last(unsorted, descending=False)
    page.click("#case-table th:text-is('median')")
    assert _column(page, "case-table", "median") == _sorted_with_blanks_last(unsorted, descending=True)
    page.click("#case-table th:text-is('case')")
    assert _column(page, "case-table", "case") == sorted(c.id for c in run.cases)

    box = page.locator("input.table-filter[data-table='case-table']")
    box.fill("window8")
    window8 = [c.id for c in run.cases if c.variant == "window8"]
    assert sorted(_column(page, "case-table", "case")) == sorted(window8)
    counter = page.locator(".table-count[data-table='case-table']").inner_text()
    assert counter == f"{len(window8)} of {len(run.cases)} rows"
    box.fill("WINDOW8 decode")  # every word must match, case-insensitively
    assert _column(page, "case-table", "case") == [i for i in sorted(window8) if "decode" in i]
    box.fill("")
    assert len(_column(page, "case-table", "case")) == len(run.cases)
    v.assert_clean()


def test_hostile_names_render_as_inert_text(xss_run, visit, tmp_path) -> None:
    v = visit(write_report(xss_run, tmp_path / "report.html"))
    page = v.page
    v.assert_clean()  # no dialog fired, no request for "x", no script error
    text = page.inner_text("body")
    for payload in PAYLOADS:
        assert payload in text  # visible, as text
    assert page.inner_text("h1") == f"ossbench report: {PAYLOADS[0]}"
    assert page.evaluate("document.scripts.length") == 3  # the table script, plotly.js, the charts
    assert page.evaluate("document.querySelectorAll('img, iframe, object, embed').length") == 0
    assert page.evaluate("""[...document.querySelectorAll('*')].filter(e =>
        [...e.attributes].some(a => a.name.startsWith('on'))).length""") == 0
    legend = page.eval_on_selector_all(".legendtext", "els => els.map(e => e.textContent)")
    for payload in PAYLOADS:
        assert any(payload in entry for entry in legend), (payload, legend)
    assert page.locator("#case-table tbody tr").count() == len(xss_run.cases)


def test_compare_renders_offline(tiny_runs, xss_run, visit, tmp_path) -> None:
    a, b = tiny_runs
    dropped = b.cases[0].id
    b = b.model_copy(update={"cases": b.cases[1:]})  # one case only the reference has
    comparison = compare_runs([a, b], labels=[PAYLOADS[1], PAYLOADS[2]])
    v = visit(write_compare_report(comparison, tmp_path / "compare.html"))
    page = v.page
    v.assert_clean()
    drawn = _drawn_plots(page)
    # A latency chart per variant with two matched seq_len points (the dropped case leaves "full" one),
    # the speedups; no ceilings on a CPU, so no fraction chart.
    seq_lens = {v: {c.axes["seq_len"] for c in comparison.cases if c.variant == v and "seq_len" in c.axes}
                for v in {c.variant for c in comparison.cases}}
    assert len(drawn) == sum(len(s) > 1 for s in seq_lens.values()) + 1 == 2
    assert all(n > 0 for n in drawn.values()), drawn
    assert page.locator("#compare-table tbody tr").count() == len(comparison.cases) == len(a.cases) - 1
    assert dropped in page.inner_text("#unmatched")
    text = page.inner_text("body")
    assert PAYLOADS[1] in text and PAYLOADS[2] in text
    page.locator("input.table-filter[data-table='compare-table']").fill("decode")
    assert page.locator("#compare-table tbody tr:not([hidden])").count() == sum(
        "decode" in c.id for c in comparison.cases)


def test_report_opens_with_the_answer_and_fits_the_page(tiny_runs, tiny_report, visit, browser) -> None:
    """The answer comes before the run's details; no table pushes the page wider than the window."""
    v = visit(tiny_report)
    v.assert_clean()
    page = v.page
    top = {sel: page.locator(sel).bounding_box()["y"] for sel in ("#answer", "dl.meta", "#expectations")}
    assert top["#answer"] < top["dl.meta"] < top["#expectations"]
    answer = page.inner_text("#answer")
    for pair in evaluate(tiny_runs[0]):
        assert f"{pair.candidate} vs {pair.baseline}" in answer
    assert "fastest backend" in answer
    for width in (1280, 800):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(500)  # plotly's responsive charts relayout after the resize
        wide = page.evaluate("""() => [...document.querySelectorAll('body *')].filter(e =>
            e.getBoundingClientRect().right > document.documentElement.clientWidth + 1 && !e.closest('.table-wrap'))
            .map(e => e.tagName + '.' + e.className).slice(0, 5)""")
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth"), (
            width, wide)


def test_shared_plotly_file_draws_every_chart(tiny_runs, visit, tmp_path) -> None:
    """--plotly-js FILE: the page loads plotly.js from the shared copy by a relative path, nothing else."""
    shared = tmp_path / "assets" / "plotly.min.js"
    path = write_report(tiny_runs[0], tmp_path / "runs" / "a" / "report.html", plotly=shared)
    v = visit(path)
    assert v.errors == [] and v.dialogs == []
    assert v.foreign_requests == [shared.resolve().as_uri()]
    drawn = _drawn_plots(v.page)
    assert drawn and all(n > 0 for n in drawn.values()), drawn
