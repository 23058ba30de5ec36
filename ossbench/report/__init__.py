"""HTML reports of benchmark runs: ``render_report(run) -> str`` and ``write_report(run, path)``."""

from __future__ import annotations

from .html import render_report, write_report

__all__ = ["render_report", "write_report"]
