"""The history page (``ossbench history ... -o FILE``): ``render_history_report(history) -> str`` and
``write_history_report(history, path)``.

Renders an `ossbench.history.History` with the page frame, styles and table script of the other reports:
the series (suite, device, runs, the rule), the new regressions, a sortable table of every change, one
small line chart per case (median per run with the run's CI95, the level of each segment, each change
marked where it starts), cases with a new regression first, then those with changes, then the rest; and
the runs in time order. Figures are plain plotly JSON built here (hundreds of small charts: going through
``plotly.graph_objects`` would cost more than the rest of the page).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..history import CaseHistory, History
from ..units import fmt_ms
from .page import Chart, ChartIds, plot_text, render_page, write_page
from .plotly_js import PlotlyJs

SMALL_HEIGHT = 250  # px per small chart
SLOWER, FASTER, POINTS, LEVEL = "#c62828", "#2e7d32", "#1f77b4", "#888888"
_AXIS = {"gridcolor": "#ebf0f8", "zeroline": False, "linecolor": "#c8d0dc"}


def render_history_report(history: History, title: str | None = None, *, plotly: PlotlyJs | str | None = None,
                          page_dir: str | os.PathLike | None = None) -> str:
    ids = ChartIds()
    new = {c.case_id for c in history.new_regressions}
    order = sorted(history.cases, key=lambda c: (c.id not in new, not c.changes))
    charts = [Chart(ids(), case_figure(case, history)) for case in order]
    return render_page(
        "history.html.j2", charts, plotly=plotly, page_dir=page_dir,
        title=title or f"ossbench history: {history.suite} on {history.device}",
        history=history,
        settings=history.settings,
        changes=sorted(history.changes, key=lambda c: (c.case_id, c.run.index)),
        small=list(zip(order, charts)),
        fmt_ms=fmt_ms,
    )


def write_history_report(history: History, path: str | os.PathLike, *, plotly: PlotlyJs | str | None = None) -> Path:
    """Render and write atomically (`plotly`: how the page gets plotly.js, see `PlotlyJs`)."""
    plotly = PlotlyJs.parse(plotly)
    return write_page(render_history_report(history, plotly=plotly, page_dir=Path(path).parent), path, plotly)


def levels(case: CaseHistory) -> list[tuple[int, int, float]]:
    """(first run, last run, median of the run medians) of each segment between changes."""
    starts = [0] + [next(i for i, p in enumerate(case.points) if p.run == c.run.index) for c in case.changes]
    bounds = starts + [len(case.points)]
    out = []
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            pts = case.points[a:b]
            out.append((pts[0].run, pts[-1].run, float(np.median([p.median_ms for p in pts]))))
    return out


def case_figure(case: CaseHistory, history: History) -> dict[str, Any]:
    """One small chart: medians per run (error bars: the run's CI95), segment levels, changes marked."""
    runs = history.runs
    pts = case.points
    hover = [plot_text(f"run {p.run} · {runs[p.run].start_time} · commit {runs[p.run].commit}") for p in pts]
    data: list[dict[str, Any]] = [{
        "type": "scatter", "mode": "lines+markers", "name": "median", "x": [p.run for p in pts],
        "y": [p.median_ms for p in pts], "line": {"color": POINTS, "width": 1.5}, "marker": {"size": 5},
        "error_y": {"type": "data", "symmetric": False, "thickness": 1, "width": 0,
                    "array": [p.ci95_ms[1] - p.median_ms if p.ci95_ms else 0 for p in pts],
                    "arrayminus": [p.median_ms - p.ci95_ms[0] if p.ci95_ms else 0 for p in pts]},
        "text": hover, "hovertemplate": "%{text}<br>median %{y:.4g} ms<extra></extra>"}]
    lx: list[float | None] = []
    ly: list[float | None] = []
    for first, last, level in levels(case):
        lx += [first - 0.4, last + 0.4, None]
        ly += [level, level, None]
    data.append({"type": "scatter", "mode": "lines", "name": "level", "x": lx, "y": ly, "hoverinfo": "skip",
                 "line": {"color": LEVEL, "width": 2, "dash": "dash"}})
    if case.not_ok:
        low = min((p.median_ms for p in pts), default=1.0)
        data.append({"type": "scatter", "mode": "markers", "name": "not ok", "x": [r for r, _ in case.not_ok],
                     "y": [low] * len(case.not_ok), "marker": {"symbol": "x", "color": SLOWER, "size": 8},
                     "text": [plot_text(f"run {r}: {s}") for r, s in case.not_ok],
                     "hovertemplate": "%{text}<extra></extra>"})
    shapes, notes = [], []
    for c in case.changes:
        colour = SLOWER if c.slower else FASTER
        x = c.run.index - 0.5
        shapes.append({"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "xref": "x", "yref": "paper",
                       "line": {"color": colour, "width": 1.5, "dash": "dot"}})
        notes.append({"x": x, "y": 1, "xref": "x", "yref": "paper", "yanchor": "bottom", "showarrow": False,
                      "text": f"{(c.ratio - 1) * 100:+.1f}%", "font": {"color": colour, "size": 11}})
    layout = {
        "title": {"text": plot_text(case.id), "font": {"size": 12}, "x": 0.01, "xanchor": "left"},
        # plotly_white by hand: a named template is a Python-side expansion (kilobytes per chart)
        "paper_bgcolor": "white", "plot_bgcolor": "white", "height": SMALL_HEIGHT, "showlegend": False,
        "margin": {"l": 55, "r": 10, "t": 48, "b": 35}, "shapes": shapes, "annotations": notes,
        "xaxis": {"title": {"text": "run", "standoff": 2}, "range": [-0.7, len(runs) - 0.3], **_AXIS},
        "yaxis": {"title": {"text": "median (ms)", "standoff": 2}, **_AXIS},
    }
    return {"data": data, "layout": layout}
