"""The cross-run report (``ossbench compare ... -o FILE``): ``render_compare_report(comparison) -> str`` and
``write_compare_report(comparison, path)``.

Renders an `ossbench.compare.Comparison` (cases matched by id; the first run is the reference) with the
same page frame, styles and table script as the run report: the runs, latency per variant across runs,
each run's speedup over the reference with its bootstrap CI95 against the devices' ceiling ratios, the
achieved fraction of each device's ceilings side by side, a table of every matched case, the unmatched
cases, and the cases that did not run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..compare import CaseComparison, CaseRun, Comparison, VsReference
from ..headline import mode_of
from ..measure.roofline import CEILING_BELOW_MEASURED_TEXT, over_ceiling
from .ceilings import describe_ceilings
from .page import Chart, ChartIds, chart, plot_text, render_page, write_page
from .plotly_js import PlotlyJs
from .plots import CHART_HEIGHT, add_band_line, axis_type, dash_for, layout, lines_along, numeric_keys, palette

ROW_HEIGHT = 24  # px per case in the horizontal per-case charts


@dataclass(frozen=True)
class Point:
    """One case as one run measured it, for the per-variant charts."""

    case: CaseComparison
    run: int  # index into Comparison.runs
    cell: CaseRun


@dataclass(frozen=True)
class PairRow:
    """A row of the table: a case in one run against the same case in the reference run."""

    case: CaseComparison
    label: str
    reference: CaseRun | None
    other: CaseRun | None
    vs: VsReference | None

    @property
    def status(self) -> str:
        cells = [c for c in (self.reference, self.other) if c is not None]
        bad = [c.status for c in cells if c.status != "ok"]
        if len(cells) < 2:
            return "absent"
        return bad[0] if bad else "ok"


def render_compare_report(comparison: Comparison, title: str | None = None, *, plotly: PlotlyJs | str | None = None,
                          page_dir: str | os.PathLike | None = None) -> str:
    """The comparison page as a string; ``plotly`` and ``page_dir`` as for `ossbench.report.render_report`."""
    ids = ChartIds()
    colours = palette(r.label for r in comparison.runs)
    sections = {
        "latency": variant_charts(comparison, ids, colours),
        "speedup": speedup_chart(comparison, ids, colours),
        "ceilings": ceiling_charts(comparison, ids, colours),
    }
    labels = [r.label for r in comparison.runs]
    rows = [PairRow(case, comparison.runs[k].label, case.runs[0], case.runs[k], case.vs_reference[k])
            for case in comparison.cases for k in range(1, len(comparison.runs))]
    not_run = [(case, comparison.runs[k].label, cell) for case in comparison.cases
               for k, cell in enumerate(case.runs) if cell is not None and cell.status != "ok"]
    return render_page(
        "compare.html.j2", [c for charts in sections.values() for c in charts], plotly=plotly, page_dir=page_dir,
        title=title or f"ossbench compare: {comparison.reference.suite}: {' vs '.join(labels)}",
        comparison=comparison,
        # the ceilings the fractions divide by (calibrated or datasheet), described as the run report does
        ceilings=[describe_ceilings(r.ceilings, r.device_type) for r in comparison.runs],
        summaries=[s for s in comparison.summaries if s is not None],
        bandwidth_name=comparison.bandwidth_name,
        has_bandwidth=any(cell and cell.bandwidth_fraction is not None for c in comparison.cases for cell in c.runs),
        sections=sections,
        rows=rows,
        not_run=not_run,
    )


def write_compare_report(comparison: Comparison, path: str | os.PathLike, *,
                         plotly: PlotlyJs | str | None = None) -> Path:
    """Render and write atomically (and the shared plotly.js file, with ``plotly=PATH``)."""
    plotly = PlotlyJs.parse(plotly)
    return write_page(render_compare_report(comparison, plotly=plotly, page_dir=Path(path).parent), path, plotly)


def variant_charts(comparison: Comparison, ids: ChartIds, colours: dict[str, str]) -> list[Chart]:
    """Per variant and numeric sweep axis: median latency against the axis, one line per run, CI95 bands."""
    import plotly.graph_objects as go

    points = [Point(case, k, cell) for case in comparison.cases for k, cell in enumerate(case.runs)
              if cell is not None and cell.median_ms is not None]
    charts = []
    groups: dict[tuple[str, str | None], list[Point]] = {}
    for p in points:  # per variant and mode: modes never share an axis
        groups.setdefault((p.case.variant, mode_of(p.case.axes)), []).append(p)
    for (variant, mode), mine in groups.items():
        for axis in numeric_keys(_without_mode(p.case.axes) for p in mine):
            lines = lines_along(mine, axis, lambda p: _without_mode(p.case.axes),
                                lambda p: comparison.runs[p.run].label)
            dashes = dash_for(lines)
            fig = go.Figure()
            for line in lines:
                add_band_line(fig, x=[p.case.axes[axis] for p in line.points],
                              y=[p.cell.median_ms for p in line.points],
                              low=[p.cell.ci95_ms[0] if p.cell.ci95_ms else None for p in line.points],
                              high=[p.cell.ci95_ms[1] if p.cell.ci95_ms else None for p in line.points],
                              name=line.label, colour=colours[line.key], dash=dashes[line.others],
                              hover=[f"{p.case.id} ({line.key})" for p in line.points], unit=" ms")
            drawn = [p for line in lines for p in line.points]
            title = f"{variant}: median latency vs {axis}" + (f" ({mode})" if mode else "")
            fig.update_layout(**layout(title=title, x_title=axis,
                                       y_title="median latency (ms)",
                                       x_type=axis_type([p.case.axes[axis] for p in drawn]),
                                       y_type=axis_type([p.cell.median_ms for p in drawn])))
            charts.append(chart(ids, fig, "One line per run; filled bands: CI95 of each median."))
    return charts


def speedup_chart(comparison: Comparison, ids: ChartIds, colours: dict[str, str]) -> list[Chart]:
    """Each run's speedup over the reference per case (reference median / run median) with its bootstrap
    CI95, and the ratios of the devices' compute and bandwidth ceilings as vertical reference lines."""
    import plotly.graph_objects as go

    cases = [c for c in comparison.cases if any(v is not None for v in c.vs_reference)]
    if not cases:
        return []
    fig = go.Figure()
    names = [plot_text(c.id) for c in cases]
    ref = comparison.reference.label
    for k in range(1, len(comparison.runs)):
        label = comparison.runs[k].label
        vs = [c.vs_reference[k] for c in cases]
        fig.add_trace(go.Scatter(
            y=names, x=[v.speedup if v else None for v in vs], mode="markers", name=plot_text(label),
            marker=dict(color=colours[label], size=9),
            error_x=dict(type="data", symmetric=False,
                         array=[v.speedup_ci95[1] - v.speedup if v and v.speedup_ci95 else None for v in vs],
                         arrayminus=[v.speedup - v.speedup_ci95[0] if v and v.speedup_ci95 else None for v in vs]),
            text=[plot_text(f"{label}: follows {v.follows}") if v else "" for v in vs],
            hovertemplate="%{y}<br>speedup %{x:.3g}x<br>%{text}<extra></extra>"))
        for what, dash in (("compute", "dash"), ("bandwidth", "dot")):
            # A vertical line per distinct ceiling ratio (one per dtype at most), with a legend entry.
            for ratio in sorted({getattr(v, f"{what}_ratio") for v in vs if v and getattr(v, f"{what}_ratio")}):
                _vertical(fig, ratio, plot_text(f"{label}: {what} ceiling ratio {ratio:.3g}x"),
                          dict(color=colours[label], dash=dash, width=1.5))
    _vertical(fig, 1.0, "no difference", dict(color="#999999", width=1))
    speeds = [v.speedup for c in cases for v in c.vs_reference if v]
    fig.update_layout(**layout(title=f"Speedup over {ref} (reference median / run median; right of 1 is faster)",
                               x_title="speedup (x)", y_title="", x_type=axis_type(speeds + [1.0]),
                               y_type="category", height=_rows_height(len(cases))))
    _every_label(fig, names)
    note = ("Error bars: percentile bootstrap CI95 of the ratio of medians, from the samples. Dashed lines: the "
            "ratio of the devices' compute ceilings for the cases' dtype; dotted: of their memory bandwidth. "
            "A speedup on a dotted line follows bandwidth, on a dashed line compute.")
    return [chart(ids, fig, note)]


def ceiling_charts(comparison: Comparison, ids: ChartIds, colours: dict[str, str]) -> list[Chart]:
    """Achieved fraction of each run's own device ceilings, per case, runs side by side: compute on the
    left, memory bandwidth on the right."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cases = comparison.cases
    known = [cell for c in cases for cell in c.runs
             if cell and (cell.compute_fraction is not None or cell.bandwidth_fraction is not None)]
    if not known:
        return []
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("% of peak compute (dtype's ceiling)",
                                        f"% of peak {comparison.bandwidth_name} bandwidth"
                                        if comparison.bandwidth_name == "HBM" else "% of peak memory bandwidth"))
    names = [plot_text(c.id) for c in cases]
    for k, run in enumerate(comparison.runs):
        cells = [c.runs[k] for c in cases]
        for col, attr in ((1, "compute_fraction"), (2, "bandwidth_fraction")):
            values = [getattr(cell, attr) * 100 if cell and getattr(cell, attr) is not None else None
                      for cell in cells]
            fig.add_trace(go.Bar(y=names, x=values, orientation="h", name=plot_text(run.label),
                                 legendgroup=plot_text(run.label), showlegend=col == 1,
                                 marker=dict(color=colours[run.label]),
                                 hovertemplate="%{y}<br>%{x:.3g}%<extra>" + plot_text(run.label) + "</extra>"),
                          row=1, col=col)
    fig.update_layout(**_bare_layout("Achieved fraction of each device's ceilings", _rows_height(len(cases))),
                      barmode="group")
    _every_label(fig, names)
    fig.update_xaxes(title_text="%", ticksuffix="%")
    note = ("Each run against its own device's ceilings (the ones in the runs table: calibrated, else the "
            "datasheet's): achieved TFLOP/s over the dtype's compute peak, and GB/s (from the cost model's "
            "minimum bytes) over the memory bandwidth peak. Runs without known ceilings have no bars, nor "
            "have memory-bound cases timed with a hot cache that fit in it (DRAM is not their ceiling).")
    above = sum(over_ceiling(f) for cell in known for f in (cell.compute_fraction, cell.bandwidth_fraction))
    if above:
        note += (f" {above} bar(s) pass 100%: {CEILING_BELOW_MEASURED_TEXT} (rerun `ossbench calibrate` on a "
                 "quiet machine for that run's device).")
    return [chart(ids, fig, note)]


def _without_mode(axes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in axes.items() if k != "mode"}


def _vertical(fig: Any, x: float, name: str, line: dict[str, Any]) -> None:
    # A shape in data x (plotly takes shape coordinates as data values, also on log axes) spanning the plot.
    fig.add_shape(type="line", x0=x, x1=x, y0=0, y1=1, xref="x", yref="paper", line=line, name=name,
                  showlegend=True)


def _bare_layout(title: str, height: int) -> dict[str, Any]:
    return dict(title=dict(text=plot_text(title)), template="plotly_white", height=height,
                margin=dict(l=70, r=20, t=80, b=55), legend=dict(font=dict(size=11)))


def _rows_height(n: int) -> int:
    return max(CHART_HEIGHT, 160 + ROW_HEIGHT * n)


def _every_label(fig: Any, names: list[str]) -> None:
    """Name every case on the category axis (plotly otherwise drops labels it finds too dense); the
    chart's height grows with the case count (`_rows_height`) so that they fit."""
    fig.update_yaxes(autorange="reversed", automargin=True, tickmode="array", tickvals=names, ticktext=names,
                     tickfont=dict(size=11))
