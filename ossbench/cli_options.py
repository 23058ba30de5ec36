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


# options of both `ossbench run` and `ossbench plan`
DEVICE_OPTION = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
FILTER_OPTION = click.option("--filter", "filter_text", metavar="TEXT", help="Run only cases whose id contains TEXT.")
SUITE_PROFILE_OPTION = click.option(
    "--suite-profile", "suite_profile", metavar="NAME",
    help="Run the suite's profile NAME (e.g. gpu-smoke; `ossbench validate` lists them) instead of the default: "
         "the `cpu:` profile on a CPU, the full suite elsewhere. `full` runs the full suite.")
QUICK_OPTION = click.option("--quick", is_flag=True, help="Smoke run: short time budget, loose CI target (not for quoting).")
MAX_MINUTES_OPTION = click.option(
    "--max-minutes", type=click.FloatRange(min=0, min_open=True), metavar="M",
    help="Run budget: start no case whose predicted time would take the run past M minutes; the rest are "
         "skipped (\"run budget\"), results and report written, exit 0; `--resume` runs them (with M again, "
         "or the --max-minutes given with it). Cases run one point of every variant first.")
