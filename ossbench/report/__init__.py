"""HTML reports: one run (``render_report`` / ``write_report``) and a cross-run comparison
(``render_compare_report`` / ``write_compare_report``, in `compare_html`). Self-contained pages: plotly.js is
inlined once and nothing is fetched when the page is viewed; every user-provided string is shown as text."""

from __future__ import annotations

from .html import render_report, write_report

__all__ = ["render_report", "write_report", "render_compare_report", "write_compare_report"]


def __getattr__(name: str):
    # The compare page needs ossbench.compare (numpy, scipy); load it only when asked for.
    if name in ("render_compare_report", "write_compare_report"):
        from . import compare_html

        return getattr(compare_html, name)
    raise AttributeError(name)
