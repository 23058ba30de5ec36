"""The model family's charts: where a whole model's memory goes, and decode tokens/s against the bandwidth bound.

- memory breakdown: a stacked bar per case (variant and sweep point) of the weights by kind (experts,
  attention with norms, router, embedding + unembedding), the KV cache and the activation/workspace
  estimate, all from the case's cost model (cost_extra), with the measured peak as a marker where recorded;
- decode rate, a chart per batch size: tokens per second against the cached context (kv_len), a line per
  variant and dashed, in the same colour, its bandwidth bound: tokens / (bytes a step must read / the run's bandwidth
  ceiling), the rate a step would reach moving its minimum bytes at the ceiling.

Both are empty for a run without model cases; the bound is left out (and the note says so) when the run
has no bandwidth ceiling (a CPU, or a GPU outside the peak table and uncalibrated).
"""

from __future__ import annotations

from typing import Any

from ..analysis import RunAnalysis, bandwidth_ceiling
from ..results import CaseResult, RunResult
from .page import Chart, ChartIds, chart, plot_text
from .plots import axis_type, layout

STACK = (("stored_experts_bytes", "experts", "#1f77b4"), ("stored_attention_bytes", "attention + norms", "#ff7f0e"),
         ("stored_router_bytes", "router", "#9467bd"), ("stored_embeddings_bytes", "embedding + unembedding", "#8c564b"),
         ("kv_cache_bytes", "KV cache", "#2ca02c"), ("activation_bytes_estimate", "activations (estimate)", "#d62728"))


def model_cases(run: RunResult) -> list[CaseResult]:
    return [c for c in run.cases if c.family == "model" and c.status == "ok" and c.cost_extra]


def _label(case: CaseResult) -> str:
    axes = ",".join(f"{k}={v}" for k, v in case.axes.items() if k != "mode")  # one chart per mode
    return f"{case.variant} {axes}" if axes else case.variant


def memory_breakdown_charts(run: RunResult, ids: ChartIds) -> list[Chart]:
    """A stacked bar per model case and mode: weights by kind, KV cache, activations; measured peak marked."""
    import plotly.graph_objects as go

    charts = []
    for mode in ("decode", "prefill"):
        cases = [c for c in model_cases(run) if c.params.get("mode") == mode]
        if not cases:
            continue
        labels = [plot_text(_label(c)) for c in cases]
        fig = go.Figure()
        for key, name, colour in STACK:
            fig.add_trace(go.Bar(x=labels, y=[c.cost_extra.get(key, 0.0) / 1e9 for c in cases], name=name,
                                 marker_color=colour, hovertemplate="%{x}: %{y:.3g} GB<extra>" + name + "</extra>"))
        peaks = [(lab, c.memory.peak_bytes / 1e9) for lab, c in zip(labels, cases)
                 if c.memory is not None and c.memory.peak_bytes]
        if peaks:
            fig.add_trace(go.Scatter(x=[p[0] for p in peaks], y=[p[1] for p in peaks], mode="markers",
                                     name="measured peak", marker=dict(symbol="line-ew-open", size=18, color="#000")))
        fig.update_layout(**layout(title=f"Memory of the whole model, {mode}", x_title="case", y_title="GB",
                                   x_type="category"), barmode="stack")
        charts.append(chart(ids, fig, "Stacked bars: the bytes the case holds, from its cost model (weights by "
                                      "storage, exactly what the model allocates; KV cache for its context; "
                                      "activations an estimate of one layer's step). Marker: the measured peak "
                                      "(CUDA allocator above the case's start; on CPU the coarse RSS growth)."))
    return charts


def decode_rate_charts(run: RunResult, analysis: RunAnalysis, ids: ChartIds, colours: dict[str, str]) -> list[Chart]:
    """Per decode batch size: tokens/s against kv_len, a line per variant, with its bandwidth bound dashed."""
    import plotly.graph_objects as go

    cases = [c for c in model_cases(run) if c.params.get("mode") == "decode" and c.derived.tokens_per_s
             and isinstance(c.params.get("kv_len"), int)]
    bandwidth = bandwidth_ceiling(analysis.ceilings)  # GB/s
    note = ("Solid: measured tokens per second (batch / median step time). Dashed, same colour: the bound a step "
            f"reaches reading its minimum bytes (every layer's attention weights and attended KV, the router, the "
            f"experts the batch touched, the unembedding) at {bandwidth:g} GB/s, the run's bandwidth ceiling; "
            "the solid line over the dashed one is the bandwidth fraction." if bandwidth else
            "No bandwidth ceiling for this device (no peak-table row and no calibration): the bound is not drawn.")
    by_batch: dict[Any, dict[str, list[CaseResult]]] = {}
    for c in cases:
        by_batch.setdefault(c.params.get("batch"), {}).setdefault(c.variant, []).append(c)
    charts = []
    for batch, lines in by_batch.items():
        fig = go.Figure()
        for variant, points in lines.items():
            points.sort(key=lambda c: c.params["kv_len"])
            name, colour = plot_text(variant), colours.get(variant)
            xs = [c.params["kv_len"] for c in points]
            fig.add_trace(go.Scatter(x=xs, y=[c.derived.tokens_per_s for c in points], mode="lines+markers",
                                     name=name, line=dict(color=colour), hovertext=[plot_text(c.id) for c in points]))
            if bandwidth:
                bound = [c.tokens / (c.bytes / (bandwidth * 1e9)) if c.bytes else None for c in points]
                fig.add_trace(go.Scatter(x=xs, y=bound, mode="lines", name=f"{name}: bandwidth bound",
                                         line=dict(color=colour, dash="dash")))
        points = [c for pts in lines.values() for c in pts]
        fig.update_layout(**layout(title=f"Decode tokens/s vs context, batch {batch}", x_title="kv_len (cached tokens)",
                                   y_title="tokens/s", x_type=axis_type([c.params["kv_len"] for c in points]),
                                   y_type=axis_type([c.derived.tokens_per_s for c in points])))
        charts.append(chart(ids, fig, note))
    return charts
