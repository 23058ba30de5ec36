"""The report of one run: ``render_report(run) -> str`` and ``write_report(run, path)``.

One self-contained HTML file (plotly.js inlined once, nothing fetched at view time), sections in this
order: header, expectations, latency, speedups, roofline, memory, energy, kernels, the table of cases, and
the failed or skipped cases. A section whose data the run did not record is left out or says so.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis import HOT_CACHE_TEXT, Placement, RunAnalysis, analyze_run
from ..headline import fastest_by_mode, pair_answers, shape_text
from ..measure.roofline import CEILING_BELOW_MEASURED_TEXT
from ..results import CaseResult, RunResult, gc_paused
from . import extras
from .ceilings import describe_ceilings, shown_path
from .model_charts import decode_rate_charts, memory_breakdown_charts
from .page import Chart, ChartIds, render_page, write_page
from .plotly_js import PlotlyJs
from .run_charts import (MEMORY_KIND_TEXT, energy_charts, kv_cache_bytes, latency_charts, memory_charts, roofline_chart,
                         speedup_charts, variant_colours)


@dataclass(frozen=True)
class CaseRow:
    """A case with the figures the table shows beside its own fields."""

    case: CaseResult
    placement: Placement
    energy_per_token_j: float | None
    mean_power_w: float | None
    throttled: bool
    dram_over_model: float | None
    kv_cache_bytes: float | None
    memory: dict[str, Any]  # the case's memory record as a dict ({} when not recorded)


def report_charts(run: RunResult, analysis: RunAnalysis) -> dict[str, list[Chart]]:
    """The charts of each section, in page order (a section without data has none)."""
    ids, colours = ChartIds(), variant_colours(run)
    return {
        "latency": latency_charts(run, ids, colours) + decode_rate_charts(run, analysis, ids, colours),
        "speedup": speedup_charts(analysis.pairs, ids),
        "roofline": roofline_chart(run, analysis, ids, colours),
        "memory": memory_charts(run, ids, colours) + memory_breakdown_charts(run, ids),
        "energy": energy_charts(run, ids, colours),
    }


def render_report(run: RunResult, title: str | None = None, *, plotly: PlotlyJs | str | None = None,
                  page_dir: str | os.PathLike | None = None) -> str:
    """The HTML report of one run, as a string. ``plotly``: inline (default), "cdn" or a shared file
    (`ossbench.report.plotly_js`); ``page_dir``: the folder the page goes to (for relative links)."""
    with gc_paused():
        return _render(run, title, plotly, page_dir)


def _render(run: RunResult, title: str | None, plotly: PlotlyJs | str | None,
            page_dir: str | os.PathLike | None) -> str:
    analysis = analyze_run(run)
    sections = report_charts(run, analysis)
    rows = [CaseRow(c, p, extras.energy_per_token_j(c), extras.mean_power_w(c), extras.throttled(c),
                    extras.dram_over_model(c), kv_cache_bytes(c), c.memory.model_dump() if c.memory else {})
            for c, p in zip(run.cases, analysis.placements)]
    memory_kinds = {r.memory.get("kind") for r in rows if r.memory}
    return render_page(
        "report.html.j2", [c for charts in sections.values() for c in charts], plotly=plotly, page_dir=page_dir,
        title=title or f"ossbench report: {run.suite.name}",
        suite=run.suite,
        suite_path=shown_path(run.suite.path),
        env=run.environment,
        ceilings=describe_ceilings(analysis.ceilings, run.environment.device_type),
        counts=dict(Counter(c.status for c in run.cases)),
        pairs=analysis.pairs,
        answers=pair_answers(analysis.pairs),
        fastest=fastest_by_mode(run),
        shape_text=shape_text,
        sections=sections,
        rows=rows,
        has_memory=any(c.memory for c in run.cases) or any(r.kv_cache_bytes for r in rows),
        # What "peak memory" is: on CPU the process's peak RSS growth, not what the case allocates.
        peak_label="process peak RSS growth" if memory_kinds == {"rss"} else "peak memory",
        memory_kind_text=MEMORY_KIND_TEXT,
        has_energy=any(r.energy_per_token_j is not None for r in rows),
        has_power=any(r.mean_power_w is not None for r in rows),
        has_sol=any(r.placement.fraction is not None for r in rows),
        cases_over_ceiling=sum(r.placement.over_ceiling for r in rows),
        cases_hot_cache=sum(r.placement.hot_cache and r.placement.fraction is not None for r in rows),
        ceiling_warning=CEILING_BELOW_MEASURED_TEXT,
        hot_cache_text=HOT_CACHE_TEXT,
        has_dram=any(r.dram_over_model is not None for r in rows),
        has_busbw=any(c.derived.busbw_gbps is not None for c in run.cases),  # comm: nccl-tests' bus bandwidth
        has_phases=any(c.phases_ms for c in run.cases),  # moe-ep: time per phase
        kernels=[(c, k) for c in run.cases if (k := extras.kernel_breakdown(c, page_dir)) is not None],
        kernel_tables=extras.kernel_tables(run.cases),
        problems=[c for c in run.cases if c.status != "ok"],
    )


def write_report(run: RunResult, path: str | os.PathLike, *, plotly: PlotlyJs | str | None = None) -> Path:
    """Render and write atomically: a crash mid-write never leaves a half-written report. With a shared
    plotly.js file (``plotly=PATH``) the page refers to it by a relative path and the file is written too."""
    plotly = PlotlyJs.parse(plotly)
    return write_page(render_report(run, plotly=plotly, page_dir=Path(path).parent), path, plotly)
