"""Click option types and options shared by several `ossbench` commands (kept out of cli.py, which holds
the commands). Imports nothing heavy: `ossbench --help` stays fast."""

from __future__ import annotations

import click

from .errors import UserError

PLOTLY_JS_HELP = ("How the HTML page gets plotly.js: inline (self-contained, offline; the default), cdn "
                  "(plotly's CDN: a small page that needs the network to draw), or FILE: one shared copy, written "
                  "when missing and referred to by a relative path (a CI that keeps many reports stores it once).")


def plotly_js_option(fn):
    """``--plotly-js inline|cdn|FILE`` (the value as given; `ossbench.report.plotly_js.PlotlyJs.parse` reads it)."""
    return click.option("--plotly-js", "plotly_js", default="inline", show_default=True,
                        metavar="inline|cdn|FILE", help=PLOTLY_JS_HELP)(fn)


class Fraction(click.ParamType):
    """5%, 0.05 (see `ossbench.gate.parse_fraction`); `what` names the value in an error."""

    name = "FRACTION"

    def __init__(self, what: str | None = None) -> None:
        self.what = what

    def convert(self, value, param, ctx):
        from .gate import parse_fraction

        try:
            return parse_fraction(value, **({"what": self.what} if self.what else {}))
        except UserError as e:
            self.fail(str(e), param, ctx)
