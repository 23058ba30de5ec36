"""`ossbench history`: registered on the command group by `ossbench.cli` (kept in its own module so
cli.py stays short). Parse, call `ossbench.history`, render, map the outcome to an exit code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .cli_options import Fraction, plotly_js_option
from .console import console


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="RESULTS_OR_FOLDER...", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the history page (HTML: one small chart per case, changes marked).")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the runs, changes and new regressions as JSON ('-': to stdout, instead of the table).")
@click.option("--fail-on-new", is_flag=True,
              help="Exit 1 when a case got slower in the last --recent runs and the latest run is still slower.")
@click.option("--recent", type=click.IntRange(min=1), default=3, show_default=True,
              help="A slower change starting in this many latest runs is new.")
@click.option("--confirm", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs that must show a slower change (from its first run to the latest) before it is new: 2 waits "
                   "one more run and so ignores a lone slow latest run.")
@click.option("--min-change", type=Fraction("min change"), default="5%", show_default=True,
              help="Smallest change of the median reported: 5% or 0.05.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, help="Significance level of each change's t-test on the run medians.")
@click.option("--window", type=click.IntRange(min=2), default=20, show_default=True,
              help="Runs each side of a change that its test uses (at most; up to the neighbouring change).")
@plotly_js_option
def history(paths: tuple[Path, ...], output: Path | None, json_file: Path | None, fail_on_new: bool, recent: int,
            confirm: int, min_change: float, alpha: float, window: int, plotly_js: str) -> None:
    """Change points per case over successive runs of one suite on one device (e.g. CI artefacts).

    RESULTS_OR_FOLDER: results files, or folders searched for them (every *.json below that is an ossbench
    results file; others are skipped and counted). Runs are ordered by their recorded start time; each
    change is reported with its run, time and commit (environment.git_revision), the ratio of medians
    after / before with a bootstrap CI95, and a t-test p-value. Exit 0; 1 with --fail-on-new when the
    latest runs start a regression; 2 for bad input (unreadable or foreign files, mixed suites or devices).
    See docs/history.md.
    """
    from .changepoints import require_ruptures
    from .history import HistorySettings, load_history
    from .history_console import print_history
    from .outdir import check_output_file

    require_ruptures()  # before reading any file: the optional `history` extra
    settings = HistorySettings(alpha=alpha, min_change=min_change, recent=recent, window=window, confirm=confirm)
    to_stdout = json_file is not None and str(json_file) == "-"
    for option, path in (("-o", output), ("--json", None if to_stdout else json_file)):
        if path:
            check_output_file(path, option)
    h = load_history(paths, settings)
    if to_stdout:
        click.echo(json.dumps(h.summary(), indent=1))
    else:
        print_history(h, console())
        if json_file:
            from .results import write_atomic

            write_atomic(json_file, json.dumps(h.summary(), indent=1))
    if output:
        from .report.history_html import write_history_report

        click.echo(str(write_history_report(h, output, plotly=plotly_js)), err=to_stdout)
    if fail_on_new and h.new_regressions:
        console(stderr=True).print(f"[bold red]{len(h.new_regressions)} new regression(s)[/] (--fail-on-new)")
        sys.exit(1)
