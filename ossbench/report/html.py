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

from ..analysis import Placement, RunAnalysis, analyze_run
from ..measure.roofline import CEILING_BELOW_MEASURED_TEXT
from ..results import CaseResult, RunResult, gc_paused
from . import extras
from .ceilings import describe_ceilings
from .model_charts import decode_rate_charts, memory_breakdown_charts
from .page import Chart, ChartIds, render_page, write_page
from .run_charts import (energy_charts, kv_cache_bytes, latency_charts, memory_charts, roofline_chart,
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


def render_report(run: RunResult, title: str | None = None) -> str:
    """The HTML report of one run, as a string."""
    with gc_paused():
        return _render(run, title)


def _render(run: RunResult, title: str | None) -> str:
    analysis = analyze_run(run)
    sections = report_charts(run, analysis)
    rows = [CaseRow(c, p, extras.energy_per_token_j(c), extras.mean_power_w(c), extras.throttled(c),
                    extras.dram_over_model(c), kv_cache_bytes(c), c.memory.model_dump() if c.memory else {})
            for c, p in zip(run.cases, analysis.placements)]
    return render_page(
        "report.html.j2", [c for charts in sections.values() for c in charts],
        title=title or f"ossbench report: {run.suite.name}",
        suite=run.suite,
        env=run.environment,
        ceilings=describe_ceilings(analysis.ceilings, run.environment.device_type),
        counts=dict(Counter(c.status for c in run.cases)),
        pairs=analysis.pairs,
        sections=sections,
        rows=rows,
        has_memory=any(c.memory for c in run.cases) or any(r.kv_cache_bytes for r in rows),
        has_energy=any(r.energy_per_token_j is not None for r in rows),
        has_power=any(r.mean_power_w is not None for r in rows),
        has_sol=any(r.placement.fraction is not None for r in rows),
        cases_over_ceiling=sum(r.placement.over_ceiling for r in rows),
        ceiling_warning=CEILING_BELOW_MEASURED_TEXT,
        has_dram=any(r.dram_over_model is not None for r in rows),
        kernels=[(c, k) for c in run.cases if (k := extras.kernel_breakdown(c)) is not None],
        problems=[c for c in run.cases if c.status != "ok"],
    )


def write_report(run: RunResult, path: str | os.PathLike) -> Path:
    """Render and write atomically: a crash mid-write never leaves a half-written report."""
    return write_page(render_report(run), path)
