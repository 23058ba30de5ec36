"""Plot building blocks shared by the run and compare reports: colours, log-or-linear axes, lines with
filled confidence bands, and grouping cases into lines along a sweep axis."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..results import CaseResult
from .page import plot_text

LOG_AXIS_SPAN = 10.0  # use a log axis when the values span more than this factor
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
BAND_ALPHA = 0.18
CHART_HEIGHT = 440


def palette(keys: Iterable[str]) -> dict[str, str]:
    """A colour per key (in first-seen order), so a variant keeps its colour across every chart."""
    from plotly.colors import qualitative

    colours = qualitative.Plotly + qualitative.D3
    out: dict[str, str] = {}
    for key in keys:
        if key not in out:
            out[key] = colours[len(out) % len(colours)]
    return out


def rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def axis_type(values: Sequence[float]) -> str:
    """"log" when every value is positive and they span more than LOG_AXIS_SPAN, else "linear"."""
    vals = [v for v in values if v is not None]
    if vals and min(vals) > 0 and max(vals) / min(vals) > LOG_AXIS_SPAN:
        return "log"
    return "linear"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_keys(axes_list: Iterable[dict[str, Any]]) -> list[str]:
    """Keys (in first-seen order) whose values are all numbers and take at least two values."""
    values: dict[str, list[Any]] = defaultdict(list)
    for axes in axes_list:
        for name, value in axes.items():
            values[name].append(value)
    return [name for name, vs in values.items() if all(map(is_number, vs)) and len(set(vs)) > 1]


def numeric_axes(cases: Iterable[CaseResult]) -> list[str]:
    """Sweep axes of ``cases`` that can be an x axis: numbers only, at least two values."""
    return numeric_keys(c.axes for c in cases)


@dataclass
class Line:
    """Points of one series along an axis: ``key`` picks the colour, ``others`` the dash (other axes' values)."""

    key: str
    others: str
    points: list[Any]  # whatever the caller groups (cases, pair outcomes ...), sorted by the axis

    @property
    def label(self) -> str:
        return f"{self.key} ({self.others})" if self.others else self.key


def lines_along(items: Iterable[Any], axis: str, axes_of: Callable[[Any], dict[str, Any]],
                key_of: Callable[[Any], str]) -> list[Line]:
    """Group items that have ``axis`` into lines: one per (key, values of the other axes), sorted by ``axis``."""
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for item in items:
        axes = axes_of(item)
        if axis in axes and is_number(axes[axis]):
            others = ", ".join(f"{k}={v}" for k, v in axes.items() if k != axis)
            groups[(key_of(item), others)].append(item)
    lines = [Line(key, others, sorted(pts, key=lambda p: axes_of(p)[axis])) for (key, others), pts in groups.items()]
    return lines


def dash_for(lines: list[Line]) -> dict[str, str]:
    """A dash style per value of the other axes, the same across keys (solid for the first)."""
    styles: dict[str, str] = {}
    for line in lines:
        if line.others not in styles:
            styles[line.others] = DASHES[len(styles) % len(DASHES)]
    return styles


def add_band_line(fig: Any, *, x: list[float], y: list[float | None], low: list[float | None] | None,
                  high: list[float | None] | None, name: str, colour: str, dash: str = "solid",
                  hover: list[str] | None = None, y_format: str = ".4g", unit: str = "",
                  group: str | None = None) -> None:
    """A line with markers and, when ``low``/``high`` are given, a filled band between them.

    ``name`` and ``hover`` are user text: escaped here. The band is one closed polygon drawn before the
    line, in the same legend group, so clicking the legend entry hides both.
    """
    import plotly.graph_objects as go

    group = group or name
    if low is not None and high is not None:
        pts = [(a, lo, hi) for a, lo, hi in zip(x, low, high) if lo is not None and hi is not None]
        if pts:
            bx = [p[0] for p in pts]
            fig.add_trace(go.Scatter(
                x=bx + bx[::-1], y=[p[2] for p in pts] + [p[1] for p in pts][::-1], mode="lines",
                fill="toself", fillcolor=rgba(colour, BAND_ALPHA), line=dict(width=0), hoverinfo="skip",
                showlegend=False, legendgroup=plot_text(group), name=plot_text(f"{name} CI95"),
            ))
    fig.add_trace(go.Scatter(
        x=x, y=y, mode="lines+markers", name=plot_text(name), legendgroup=plot_text(group),
        line=dict(color=colour, dash=dash), marker=dict(color=colour, size=7),
        text=[plot_text(h) for h in hover] if hover else None,
        hovertemplate=("%{text}<br>" if hover else "") + f"%{{y:{y_format}}}{unit}<extra></extra>",
    ))


def layout(*, title: str, x_title: str, y_title: str, x_type: str = "linear", y_type: str = "linear",
           height: int = CHART_HEIGHT, **extra: Any) -> dict[str, Any]:
    """Common layout; ``title``/``x_title``/``y_title`` may hold user text and are escaped here."""
    return dict(
        title=dict(text=plot_text(title)),
        xaxis=dict(title=dict(text=plot_text(x_title)), type=x_type),
        yaxis=dict(title=dict(text=plot_text(y_title)), type=y_type),
        template="plotly_white", height=height, margin=dict(l=70, r=20, t=60, b=55),
        legend=dict(font=dict(size=11)), **extra,
    )
