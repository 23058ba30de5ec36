"""What every HTML page of ossbench shares: the jinja2 environment, number formats, plotly.js and charts.

Every string from a suite or a results file (names, descriptions, ids, errors, labels) is user input. The
jinja2 environment autoescapes; chart JSON goes through jinja's ``tojson`` (which escapes ``<``, ``>``,
``&`` and ``'``); and every label handed to plotly is HTML-escaped first (see `plot_text`), because plotly
renders a subset of HTML in titles, legends and hover text.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from ..measure.roofline import fraction_text, over_ceiling
from ..results import write_atomic
from ..text import printable
from .plotly_js import PlotlyJs, bundle

TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class Chart:
    """One plotly figure on a page: ``figure`` is plain JSON data (``{"data": [...], "layout": {...}}``)."""

    id: str
    figure: dict[str, Any]
    note: str = ""  # shown under the chart, as text


@dataclass
class ChartIds:
    """Hands out unique div ids (``plot-0``, ``plot-1``, ...) for the charts of one page."""

    issued: list[str] = field(default_factory=list)

    def __call__(self) -> str:
        self.issued.append(f"plot-{len(self.issued)}")
        return self.issued[-1]


def chart(ids: ChartIds, fig: Any, note: str = "") -> Chart:
    """A plotly ``go.Figure`` as a Chart; plotly's own encoder turns numpy values into plain JSON."""
    return Chart(id=ids(), figure=json.loads(fig.to_json()), note=note)


def plot_text(value: Any) -> str:
    """A user string as plotly shows it: with ``&``, ``<`` and ``>`` escaped no tag can form, so plotly
    displays it instead of parsing it (no live link, no style). Quotes stay as they are: plotly decodes only
    a few named entities (not ``&quot;``) and would show the entity itself. Control characters are shown as
    escapes first, as in the terminal (`ossbench.text.printable`). Every user string in a figure (trace
    names, legend groups, hover text, titles, axis labels) goes through here."""
    return html.escape(printable(value), quote=False)


def render_page(template: str, charts: list[Chart], *, plotly: PlotlyJs | str | None = None,
                page_dir: str | os.PathLike | None = None, **context: Any) -> str:
    """Render ``template`` with ``charts`` (each needs a ``<div id=...>`` in the page, see base.html.j2).
    ``plotly``: how the page gets plotly.js (`PlotlyJs`; default inline); ``page_dir``: where the page
    will be written, for a shared file's relative path."""
    return _environment().get_template(template).render(
        charts=charts,
        # 4.8 MB of JavaScript when inlined: only worth carrying when there is something to plot.
        plotly_script=PlotlyJs.parse(plotly).script_tag(page_dir) if charts else None,
        **context,
    )


def write_page(text: str, path: str | os.PathLike, plotly: PlotlyJs | str | None = None) -> Path:
    """Write atomically: a crash mid-write never leaves a half-written report. With a shared plotly.js
    file, that file is written too (when missing or from another plotly version)."""
    PlotlyJs.parse(plotly).ensure_copy()
    return write_atomic(Path(path), text)


def plotly_js() -> Markup:
    """The plotly.js bundle the pages inline (see `ossbench.report.plotly_js`)."""
    return bundle()


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ms=format_ms, bytes=format_bytes, num=format_number, pct=format_percent,
                       ceiling_pct=format_ceiling_fraction, ratio=format_ratio, sortkey=sort_key)
    env.tests.update(over_ceiling=over_ceiling)
    env.globals.update(num_cell=num_cell, ceiling_cell=ceiling_cell, status_badge=status_badge)
    return env


def num_cell(value: float | None, shown: Any) -> Markup:
    """A numeric table cell: the shown text, and the raw value for sorting (``data-sort``)."""
    # sort_key gives a float's repr or "": nothing to escape. (Markup.format is several times slower.)
    return Markup(f'<td class="num" data-sort="{sort_key(value)}">{escape(shown)}</td>')


def ceiling_cell(fraction: float | None) -> Markup:
    """A fraction of a ceiling: above 100% the warning that the ceiling is wrong, never a plain percentage."""
    if not over_ceiling(fraction):
        return num_cell(fraction, format_percent(fraction))
    return Markup(f'<td class="num warn" data-sort="{sort_key(fraction)}" title="faster than the ceiling allows: '
                  f'rerun `ossbench calibrate` on a quiet machine">{escape(format_ceiling_fraction(fraction))}</td>')


def status_badge(status: str) -> Markup:
    s = escape(status)
    return Markup(f'<span class="status-{s}">{s}</span>')


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


def format_percent(fraction: float | None) -> str:
    return "" if fraction is None else f"{fraction * 100:.1f}%"


def format_ceiling_fraction(fraction: float | None) -> str:
    """A fraction of a ceiling: '42.0%', or above 100% 'ceiling below measured: calibration stale or wrong (454%)'."""
    return "" if fraction is None else fraction_text(fraction)


def format_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}x"


def sort_key(value: float | None) -> str:
    """The ``data-sort`` value of a numeric table cell: the number in full, empty when missing."""
    return "" if value is None else repr(float(value))
