"""Render a RunResult as one self-contained HTML file: plotly.js inlined once, nothing fetched at view time.

Every string that comes from a suite or a results file (names, descriptions, ids, errors) is user input:
the jinja2 environment autoescapes, figure JSON goes through jinja's ``tojson`` (which escapes ``<``, ``>``
and ``&``), and labels handed to plotly are HTML-escaped because plotly renders a subset of HTML in them.
"""

from __future__ import annotations

import html
import json
import os
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from ..env import describe_peak
from ..results import CaseResult, RunResult, write_atomic

TEMPLATES = Path(__file__).parent / "templates"
LOG_AXIS_SPAN = 10.0  # use a log axis when the values span more than this factor


def render_report(run: RunResult, title: str | None = None) -> str:
    """The HTML report of one run, as a string."""
    figures = latency_figures(run)
    counts: dict[str, int] = defaultdict(int)
    for case in run.cases:
        counts[case.status] += 1
    return _templates().get_template("report.html.j2").render(
        title=title or f"ossbench report: {run.suite.name}",
        suite=run.suite,
        env=run.environment,
        peak=describe_peak(run.environment.peak, run.environment.device_type),
        cases=run.cases,
        counts=dict(counts),
        problems=[c for c in run.cases if c.status != "ok"],
        figures=figures,
        # 4.8 MB of JavaScript: only worth inlining when there is something to plot.
        plotly_js=_plotly_js() if figures else None,
    )


def write_report(run: RunResult, path: str | os.PathLike) -> Path:
    """Render and write atomically: a crash mid-write never leaves a half-written report."""
    return write_atomic(Path(path), render_report(run))


def latency_figures(run: RunResult) -> list[dict[str, Any]]:
    """For each numeric sweep axis: median latency vs the axis, one line per variant, CI95 error bars.

    Each item is ``{"id": <div id>, "axis": <axis name>, "figure": <plotly figure as plain JSON data>}``.
    Cases that differ in other axes get separate lines, labelled with those axes' values.
    """
    import plotly.graph_objects as go  # slow to import; only needed when rendering

    measured = [c for c in run.cases if c.status == "ok" and c.stats is not None]
    several_families = len({c.family for c in run.cases}) > 1
    figures = []
    for axis in numeric_axes(run.cases):
        lines: dict[str, list[CaseResult]] = defaultdict(list)
        for case in measured:
            if axis in case.axes:
                lines[_line_label(case, axis, several_families)].append(case)
        if not lines:
            continue
        fig = go.Figure()
        for label, cases in lines.items():
            cases.sort(key=lambda c: c.axes[axis])
            median = [c.stats.median for c in cases]
            fig.add_trace(go.Scatter(
                x=[c.axes[axis] for c in cases], y=median, mode="lines+markers", name=html.escape(label),
                error_y=dict(type="data", symmetric=False,
                             array=[c.stats.ci95_high - m for c, m in zip(cases, median)],
                             arrayminus=[m - c.stats.ci95_low for c, m in zip(cases, median)]),
                text=[html.escape(c.id) for c in cases],
                hovertemplate="%{text}<br>median %{y:.4g} ms<extra></extra>",
            ))
        all_x = [c.axes[axis] for cs in lines.values() for c in cs]
        all_y = [c.stats.median for cs in lines.values() for c in cs]
        fig.update_layout(
            title=f"Median latency vs {html.escape(axis)} (bars: CI95 of the median)",
            xaxis=dict(title=html.escape(axis), type="log" if _spans_decade(all_x) else "linear"),
            yaxis=dict(title="median latency (ms)", type="log" if _spans_decade(all_y) else "linear"),
            template="plotly_white", height=440, margin=dict(l=60, r=20, t=60, b=50),
        )
        # Round-trip through plotly's encoder: plain JSON data that jinja's tojson can embed safely.
        figures.append({"id": f"plot-{len(figures)}", "axis": axis, "figure": json.loads(fig.to_json())})
    return figures


def numeric_axes(cases: list[CaseResult]) -> list[str]:
    """Sweep axes (in first-seen order) whose values are all numbers and take at least two values."""
    values: dict[str, list[Any]] = defaultdict(list)
    for case in cases:
        for name, value in case.axes.items():
            values[name].append(value)
    return [name for name, vs in values.items()
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vs) and len(set(vs)) > 1]


def _line_label(case: CaseResult, axis: str, with_family: bool) -> str:
    others = ", ".join(f"{k}={v}" for k, v in case.axes.items() if k != axis)
    label = f"{case.family}/{case.variant}" if with_family else case.variant
    return f"{label} ({others})" if others else label


def _spans_decade(values: list[float]) -> bool:
    return bool(values) and min(values) > 0 and max(values) / min(values) > LOG_AXIS_SPAN


@lru_cache(maxsize=1)
def _plotly_js() -> Markup:
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    # Inlined as raw script text, so a "</script" inside would end the tag early and break the page.
    if "</script" in js.lower():
        raise RuntimeError("this plotly.js bundle contains '</script' and cannot be inlined")
    return Markup(js)


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ms=format_ms, bytes=format_bytes, num=format_number)
    return env


def format_ms(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) < 1.0:
        return f"{value * 1e3:.4g} µs"
    return f"{value:.4g} ms" if value < 1e4 else f"{value / 1e3:.4g} s"


def format_bytes(value: float | None) -> str:
    if value is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} TiB"


def format_number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
