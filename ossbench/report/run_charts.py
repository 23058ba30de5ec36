"""The charts of one run's report: latency, speedup of the compare pairs, roofline, memory, energy.

Each function returns a list of Charts (empty when the run has nothing to show) and never raises for
missing data: a run without a field simply gets no chart for it.
"""

from __future__ import annotations

from typing import Any, Callable

from ..analysis import HOT_CACHE_TEXT, Placement, RunAnalysis, bandwidth_ceiling, compute_ceiling
from ..expectations import PairOutcome, PairReport
from ..headline import mode_of, shape_text
from ..measure.roofline import CEILING_BELOW_MEASURED_TEXT, fraction_text
from ..results import CaseResult, RunResult
from .extras import energy_per_token_j
from .page import Chart, ChartIds, chart, plot_text
from .plots import add_band_line, axis_type, dash_for, layout, lines_along, numeric_keys, palette

ROOF_COLOUR = "#444444"
MODE_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "x", "star")
REFERENCE_COLOUR = "#888888"


def variant_colours(run: RunResult) -> dict[str, str]:
    key_of = series_keys(run)
    return palette(key_of(c) for c in run.cases)


def series_keys(run: RunResult) -> Callable[[CaseResult], str]:
    """What a line stands for: the variant, prefixed by the family when the run mixes families. (Whether it
    does is decided once per run: asking per case made a 20k-case report quadratic.)"""
    if len({c.family for c in run.cases}) > 1:
        return lambda case: f"{case.family}/{case.variant}"
    return lambda case: case.variant


def measured(run: RunResult) -> list[CaseResult]:
    return [c for c in run.cases if c.status == "ok" and c.stats is not None]


def by_mode(cases: list[Any], axes_of: Callable[[Any], dict[str, Any]],
            params_of: Callable[[Any], dict[str, Any]] = lambda _: {}) -> dict[str | None, list[Any]]:
    """Group items by mode (prefill, decode, train ...), in the order the run has them: a chart never puts
    two modes on one axis (their sizes mean different things, their times differ by orders of magnitude)."""
    groups: dict[str | None, list[Any]] = {}
    for item in cases:
        groups.setdefault(mode_of(axes_of(item), params_of(item)), []).append(item)
    return groups


def _without_mode(axes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in axes.items() if k != "mode"}


def _titled(title: str, mode: str | None) -> str:
    return f"{title} ({mode})" if mode else title


def metric_charts(run: RunResult, ids: ChartIds, colours: dict[str, str], *, value: Callable[[CaseResult], Any],
                  band: Callable[[CaseResult], tuple[Any, Any]] | None, title: str, y_title: str,
                  unit: str = "", note: str = "") -> list[Chart]:
    """One chart per mode and numeric sweep axis: ``value`` of each measured case against the axis, a line
    per variant (and per combination of the other axes), with a filled band from ``band`` when given."""
    import plotly.graph_objects as go

    key_of = series_keys(run)
    charts = []
    for mode, cases in by_mode(measured(run), lambda c: c.axes, lambda c: c.params).items():
        cases = [c for c in cases if value(c) is not None]
        axes = numeric_keys(_without_mode(c.axes) for c in cases)
        if not axes and cases:  # a mode measured at one size: bars per variant instead of lines
            charts.append(_bars(run, ids, colours, cases, value, band, title, mode, y_title, note))
        for axis in axes:
            lines = lines_along(cases, axis, lambda c: _without_mode(c.axes), key_of)
            if not lines:
                continue
            dashes = dash_for(lines)
            fig = go.Figure()
            for line in lines:
                bands = [band(c) for c in line.points] if band else None
                add_band_line(fig, x=[c.axes[axis] for c in line.points], y=[value(c) for c in line.points],
                              low=[b[0] for b in bands] if bands else None,
                              high=[b[1] for b in bands] if bands else None,
                              name=line.label, colour=colours[line.key], dash=dashes[line.others],
                              hover=[c.id for c in line.points], unit=unit)
            xs = [c.axes[axis] for line in lines for c in line.points]
            ys = [value(c) for line in lines for c in line.points]
            fig.update_layout(**layout(title=_titled(f"{title} vs {axis}", mode), x_title=axis, y_title=y_title,
                                       x_type=axis_type(xs), y_type=axis_type(ys)))
            charts.append(chart(ids, fig, note))
    return charts


def _bars(run: RunResult, ids: ChartIds, colours: dict[str, str], cases: list[CaseResult],
          value: Callable[[CaseResult], Any], band: Callable[[CaseResult], tuple[Any, Any]] | None,
          title: str, mode: str | None, y_title: str, note: str) -> Chart:
    """One bar per case (x: its variant, colour: its series; a group per sweep point), with `band` as
    error bars: for a mode whose cases have no numeric axis to draw a line along."""
    import plotly.graph_objects as go

    key_of = series_keys(run)
    points = list(dict.fromkeys(shape_text(c.axes) for c in cases))
    fig = go.Figure()
    for key in dict.fromkeys(key_of(c) for c in cases):
        mine = [c for c in cases if key_of(c) == key]
        errors = None
        if band:
            b = [band(c) for c in mine]
            errors = dict(type="data", symmetric=False, array=[hi - value(c) for c, (_, hi) in zip(mine, b)],
                          arrayminus=[value(c) - lo for c, (lo, _) in zip(mine, b)])
        fig.add_trace(go.Bar(x=[plot_text(shape_text(c.axes) or "-") for c in mine], y=[value(c) for c in mine],
                             name=plot_text(key), marker=dict(color=colours[key]), error_y=errors,
                             hovertext=[plot_text(c.id) for c in mine],
                             hovertemplate="%{hovertext}<br>%{y:.4g}<extra></extra>"))
    at = points[0] if len(points) == 1 else "each sweep point"
    fig.update_layout(**layout(title=_titled(f"{title} at {at}" if at else title, mode), x_title="sweep point",
                               x_type="category", y_title=y_title, y_type=axis_type([value(c) for c in cases])),
                      barmode="group")
    return chart(ids, fig, note)


def latency_charts(run: RunResult, ids: ChartIds, colours: dict[str, str]) -> list[Chart]:
    return metric_charts(
        run, ids, colours, value=lambda c: c.stats.median, band=lambda c: (c.stats.ci95_low, c.stats.ci95_high),
        title="Median latency", y_title="median latency (ms)", unit=" ms",
        note="Filled bands (error bars on a bar chart): the 95% confidence interval of each median "
             "(distribution-free, from the samples).")


def speedup_charts(reports: list[PairReport], ids: ChartIds) -> list[Chart]:
    """Per compare pair and mode: measured speedup (baseline median / candidate median) and, dashed, the
    cost-model ratio the pair is judged on (bytes for an expectation relative to bytes, else FLOPs), against
    each numeric axis of the pair's points (a bar chart when the points have no numeric axis)."""
    import plotly.graph_objects as go

    charts = []
    for report in reports:
        judged = "bytes" if report.relative_to == "bytes" else "FLOP"
        note = ("Speedup = baseline median / candidate median (above 1: the candidate is faster). Band: "
                f"percentile bootstrap CI95 of that ratio, from the samples. Dashed: the {judged} ratio the cost "
                f"model predicts (baseline {judged}s / candidate {judged}s)"
                + (", the ratio this pair's expectation is relative to." if report.relative_to != "none" else "."))
        modes = by_mode([o for o in report.outcomes if o.speedup is not None], lambda o: o.axes)
        for mode, outcomes in modes.items():
            base = f"Speedup of {report.candidate} over {report.baseline}"
            axes = numeric_keys(_without_mode(o.axes) for o in outcomes)
            if not axes:
                fig = go.Figure()
                labels = [plot_text(shape_text(o.axes) or o.baseline_id) for o in outcomes]
                fig.add_trace(go.Bar(x=labels, y=[o.speedup for o in outcomes], name="measured speedup",
                                     error_y=_bar_errors(outcomes)))
                fig.add_trace(go.Scatter(x=labels, y=[o.judged_ratio for o in outcomes], mode="markers",
                                         name=f"{judged} ratio", marker=dict(symbol="line-ew-open", size=30,
                                                                             color=REFERENCE_COLOUR)))
                fig.update_layout(**layout(title=_titled(base, mode), x_title="sweep point", x_type="category",
                                           y_title="speedup (x)"))
                charts.append(chart(ids, fig, note))
                continue
            for axis in axes:
                lines = lines_along(outcomes, axis, lambda o: _without_mode(o.axes), lambda o: "measured")
                dashes = dash_for(lines)
                fig = go.Figure()
                for line in lines:
                    x = [o.axes[axis] for o in line.points]
                    ci = [_ci_of(o) for o in line.points]
                    add_band_line(fig, x=x, y=[o.speedup for o in line.points], low=[c[0] for c in ci],
                                  high=[c[1] for c in ci],
                                  name=f"speedup ({line.others})" if line.others else "speedup",
                                  colour="#1f77b4", dash=dashes[line.others],
                                  hover=[f"{o.candidate_id} vs {o.baseline_id}" for o in line.points], unit="x")
                    fig.add_trace(go.Scatter(
                        x=x, y=[o.judged_ratio for o in line.points], mode="lines",
                        name=plot_text(f"{judged} ratio ({line.others})" if line.others else f"{judged} ratio"),
                        line=dict(color=REFERENCE_COLOUR, dash="dash"),
                        hovertemplate=f"{judged} ratio %{{y:.3g}}x<extra></extra>"))
                on_axis = [o for line in lines for o in line.points]  # sweep blocks may lack this axis
                xs = [o.axes[axis] for o in on_axis]
                ys = [v for o in on_axis for v in (o.speedup, o.judged_ratio) if v]
                fig.add_hline(y=1.0, line=dict(color="#bbbbbb", width=1))
                fig.update_layout(**layout(title=_titled(f"{base} vs {axis}", mode), x_title=axis,
                                           y_title="speedup (x)",
                                           x_type=axis_type(xs), y_type=axis_type(ys)))
                charts.append(chart(ids, fig, note))
    return charts


def roofline_chart(run: RunResult, analysis: RunAnalysis, ids: ChartIds, colours: dict[str, str]) -> list[Chart]:
    """Arithmetic intensity (cost-model FLOPs / minimum bytes) against achieved TFLOP/s, log-log, with the
    run's memory roof and the compute roof of each dtype in the run, when the run has ceilings."""
    import plotly.graph_objects as go

    ceilings = analysis.ceilings
    points = [(c, p) for c, p in zip(run.cases, analysis.placements)
              if c.status == "ok" and c.stats is not None and p.intensity and c.derived.tflops]
    if not points:
        return []
    fig = go.Figure()
    key_of = series_keys(run)
    # Colour: the variant; symbol: the mode (a legend entry per mode, in grey); hover: the shape.
    symbols = {m: MODE_SYMBOLS[k % len(MODE_SYMBOLS)]
               for k, m in enumerate(by_mode(points, lambda cp: cp[0].axes, lambda cp: cp[0].params))}
    for key in colours:
        mine = [(c, p) for c, p in points if key_of(c) == key]
        if not mine:
            continue
        fig.add_trace(go.Scatter(
            x=[p.intensity for _, p in mine], y=[c.derived.tflops for c, _ in mine], mode="markers",
            name=plot_text(key), legendgroup="variants",
            marker=dict(color=colours[key], size=9, symbol=[symbols[mode_of(c.axes, c.params)] for c, _ in mine]),
            text=[plot_text(f"{c.variant}, {_shape(c)}: {_fraction_text(p)}") for c, p in mine],
            hovertemplate="%{text}<br>%{x:.3g} FLOP/B, %{y:.4g} TFLOP/s<extra></extra>"))
    if len(symbols) > 1 or None not in symbols:
        for mode, symbol in symbols.items():  # legend-only markers that name the symbols
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=plot_text(mode or "no mode"),
                                     legendgroup="modes", marker=dict(color="#777777", size=9, symbol=symbol),
                                     hoverinfo="skip"))
    lo = min(p.intensity for _, p in points) / 4
    hi = max(p.intensity for _, p in points) * 4
    notes = _add_roofs(fig, ceilings, sorted({p.key for _, p in points}), lo, hi)
    above = sum(p.over_ceiling for _, p in points)
    hot = sum(p.hot_cache and p.fraction is not None for _, p in points)
    if hot:
        notes.insert(0, f"{hot} memory-bound case(s) were timed with a hot cache and fit in it: "
                        f"{HOT_CACHE_TEXT}, so they may plot above the bandwidth roof.")
    if above:
        notes.insert(0, f"{above} case(s) plot above their roof: {CEILING_BELOW_MEASURED_TEXT} "
                        "(rerun `ossbench calibrate` on a quiet machine).")
    fig.update_layout(**layout(title="Roofline (colour: variant; symbol: mode)",
                               x_title="arithmetic intensity (FLOP per byte, cost model)",
                               y_title="achieved TFLOP/s", x_type="log", y_type="log"))
    fig.update_yaxes(exponentformat="power")
    return [chart(ids, fig, " ".join(notes))]


def _add_roofs(fig: Any, ceilings: dict[str, Any] | None, keys: list[str], lo: float, hi: float) -> list[str]:
    """Draw min(compute roof, intensity x bandwidth) for each compute ceiling key of the run's cases;
    return what was drawn and what was left out, in words."""
    import plotly.graph_objects as go

    if not ceilings:
        return ["No ceilings are recorded for this run (a CPU, or a GPU neither in the datasheet table nor "
                "calibrated with `ossbench calibrate`): the roofs are omitted."]
    bandwidth = bandwidth_ceiling(ceilings)
    sources = ceilings.get("sources", {})
    tb_per_s = bandwidth / 1e3 if bandwidth else None  # FLOP/B x TB/s = TFLOP/s
    notes = []
    drawn = False
    for key in keys:
        compute = compute_ceiling(ceilings, key)
        if compute is None:
            notes.append(f"No {key} compute ceiling for this device: that roof is omitted.")
            continue
        drawn = True
        ridge = compute / tb_per_s if tb_per_s else None
        # Always show the ridge and a stretch of both roofs, so the reader sees which side a case is on.
        xs = sorted({min(lo, ridge / 4) if ridge else lo, max(hi, ridge * 4) if ridge else hi,
                     *([ridge] if ridge else [])})
        ys = [min(compute, x * tb_per_s) if tb_per_s else compute for x in xs]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines",
                                 name=plot_text(f"{key} roof ({compute:g} TFLOP/s, {sources.get(key, '?')})"),
                                 line=dict(color=ROOF_COLOUR, width=2),
                                 hovertemplate="roof %{y:.4g} TFLOP/s at %{x:.3g} FLOP/B<extra></extra>"))
        notes.append(f"{key} roof: {compute:g} TFLOP/s ({sources.get(key, '?')}).")
    if tb_per_s:
        notes.append(f"Slope: memory bandwidth {bandwidth:g} GB/s ({sources.get('bandwidth', '?')}).")
        if not drawn:
            fig.add_trace(go.Scatter(x=[lo, hi], y=[lo * tb_per_s, hi * tb_per_s], mode="lines",
                                     name=f"bandwidth roof ({bandwidth:g} GB/s)", line=dict(color=ROOF_COLOUR)))
    else:
        notes.append("No memory bandwidth ceiling for this device: the bandwidth roof is omitted.")
    return notes


# memory kinds that measure the case's own allocations (rss does not: see memory_charts)
MEASURED_KINDS = ("cuda", "cpu_alloc")
MEMORY_KIND_TEXT = {"cuda": "CUDA allocator", "cpu_alloc": "torch CPU allocator (tensors)",
                    "rss": "process peak RSS growth"}


def memory_charts(run: RunResult, ids: ChartIds, colours: dict[str, str]) -> list[Chart]:
    """What each case holds, per mode and numeric axis, and the cost model's KV cache where the family
    reports one. Measured where the allocator is watched: on CUDA the caching allocator's peak above the
    case's start, on CPU torch's CPU allocator through profiler memory events (`cpu_alloc`). Older CPU
    results hold only the process's peak RSS growth, which is not the case's (freed memory is reused without
    growing it; the first case of a process counts the warm-up): for them the chart shows the workload's own
    count of the tensors it holds instead, and the RSS stays in the table, labelled as what it is."""
    measured = [c for c in run.cases if c.memory and c.memory.kind in MEASURED_KINDS]
    if measured:
        charts = metric_charts(
            run, ids, colours, value=lambda c: _mib(c.memory.peak_bytes if c.memory and c.memory.kind in
                                                   MEASURED_KINDS else None), band=None,
            title="Peak memory", y_title="peak allocated (MiB)", unit=" MiB",
            note="The allocator's peak allocated bytes during the case, above its start (CUDA: the caching "
                 "allocator; CPU: torch's CPU allocator, tensors only).")
    else:
        charts = metric_charts(
            run, ids, colours, value=lambda c: _mib(c.memory.persistent_bytes if c.memory else None), band=None,
            title="Memory held by the case", y_title="held (MiB, workload's tensor count)", unit=" MiB",
            note="The bytes of the weights, caches and inputs the workload holds for the whole case, counted "
                 "from its tensors (exact, not measured). The process's peak RSS growth is in the table below; "
                 "it is not plotted, as it does not measure the case on a CPU.")
    charts += metric_charts(
        run, ids, colours, value=lambda c: _mib(kv_cache_bytes(c)), band=None,
        title="KV cache", y_title="KV cache (MiB)", unit=" MiB",
        note="From the family's cost model (cost_extra.kv_cache_bytes): the keys and values the layer keeps.")
    return charts


def energy_charts(run: RunResult, ids: ChartIds, colours: dict[str, str]) -> list[Chart]:
    return metric_charts(
        run, ids, colours, value=lambda c: _mj(energy_per_token_j(c)), band=None, title="Energy per token",
        y_title="energy per token (mJ)", unit=" mJ",
        note="GPU energy over the timed samples (NVML) divided by the tokens they processed.")


def kv_cache_bytes(case: CaseResult) -> float | None:
    """The cost model's KV cache of a case (recorded in memory detail, or in cost_extra by older runs)."""
    recorded = case.memory.kv_cache_model_bytes if case.memory else None
    return recorded if recorded is not None else case.cost_extra.get("kv_cache_bytes")


def _mib(n: float | None) -> float | None:
    return None if n is None else n / 2**20


def _mj(joules: float | None) -> float | None:
    return None if joules is None else joules * 1e3


def _ci_of(o: PairOutcome) -> tuple[float | None, float | None]:
    return o.speedup_ci95 or (None, None)


def _bar_errors(outcomes: list[PairOutcome]) -> dict[str, Any] | None:
    ci = [_ci_of(o) for o in outcomes]
    if any(lo is None for lo, _ in ci):
        return None
    return dict(type="data", symmetric=False, array=[hi - o.speedup for o, (_, hi) in zip(outcomes, ci)],
                arrayminus=[o.speedup - lo for o, (lo, _) in zip(outcomes, ci)])


def _shape(c: CaseResult) -> str:
    mode = mode_of(c.axes, c.params)
    return ", ".join(x for x in (mode, shape_text(c.axes)) if x)


def _fraction_text(p: Placement) -> str:
    if p.fraction is None:
        return "speed of light not known" + (f" ({p.reason})" if p.reason else "")
    if p.hot_cache:
        return f"{HOT_CACHE_TEXT} ({p.fraction * 100:.0f}% of the DRAM roof)"
    if p.over_ceiling:
        return f"{fraction_text(p.fraction)}, {p.bound}-bound"
    return f"{p.fraction * 100:.1f}% of speed of light, {p.bound}-bound"
