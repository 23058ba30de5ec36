"""The `ossbench` command line: parse, call the library, map errors to exit codes.

Exit codes: 0 success; 1 some cases failed (run); 2 bad input (suite, results file, option).
Heavy modules (torch, pandas, plotly) are imported inside the commands so `ossbench --help` starts fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import UserError


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


class _Group(click.Group):
    """Turns user errors into one message and exit code 2 (never a traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            from rich.markup import escape

            _console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}")
            sys.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ossbench", message="ossbench %(version)s")
def main() -> None:
    """Benchmark the architectural choices of MoE transformers (gpt-oss as the reference) on your GPU.

    \b
      ossbench run suites/attention.yaml     sweep variants, write results.json + report.html
      ossbench validate suites/*.yaml        check suites without running them
      ossbench list                          layer families, parameters, modes and backends
      ossbench env                           device, driver, CUDA, torch, triton, peak table row
    """


@main.command()
@click.argument("suite_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory [default: reports/<suite>-<device>-<timestamp>/].")
@click.option("--filter", "filter_text", metavar="TEXT", help="Run only cases whose id contains TEXT.")
@click.option("--quick", is_flag=True, help="Smoke run: short time budget, loose CI target (not for quoting).")
def run(suite_file: Path, device: str, out_dir: Path | None, filter_text: str | None, quick: bool) -> None:
    """Run SUITE_FILE's cases; write results.json and report.html.

    Exit 0 when every case ran (ok or skipped), 1 when some failed or ran out of memory (results are
    still written), 2 for a bad suite or option.
    """
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .expectations import evaluate
    from .report import write_report
    from .runner import plan_run, run_plan
    from .suite import load_suite
    from .summary import STATUS_STYLE, cases_table, pairs_table

    out, err = _console(), _console(stderr=True)
    suite = load_suite(suite_file)
    plan = plan_run(suite, device=device, out_dir=out_dir, filter_text=filter_text, quick=quick)
    err.print(f"[bold]{escape(suite.name)}[/]: {len(plan.cases)} case(s) on {plan.device}, "
              f"dtype {suite.dtype(plan.profile)} -> {plan.out_dir}")
    if plan.profile == "cpu":
        err.print("[yellow]Running the suite's reduced CPU profile (its `cpu:` section): smaller shapes, "
                  "recorded as profile=cpu in the results. Use a GPU for the full suite.[/]")
    if quick:
        err.print("[yellow]--quick: short time budget and a 5% CI target; numbers are a smoke test.[/]")

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task("starting", total=len(plan.cases))

        def on_case(case, result) -> None:
            if result is None:
                progress.update(task, description=escape(case.id))
                return
            progress.advance(task)
            progress.console.print(f"  [{STATUS_STYLE[result.status]}]{result.status:>7}[/] {escape(case.id)}"
                                   + (f"  {result.stats.median:.4g} ms" if result.stats else ""))

        result = run_plan(plan, on_case)

    report_path = write_report(result, plan.out_dir / "report.html")
    out.print(cases_table(result))
    pairs = [r for r in evaluate(result) if r.outcomes]
    if pairs:
        out.print(pairs_table(pairs))
    counts = {s: sum(c.status == s for c in result.cases) for s in STATUS_STYLE}
    out.print(", ".join(f"{n} {s}" for s, n in counts.items() if n) +
              f"\nresults: {plan.out_dir / 'results.json'}\nreport:  {report_path}")
    sys.exit(1 if counts["failed"] or counts["oom"] else 0)


@main.command()
@click.argument("suite_files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def validate(suite_files: tuple[Path, ...]) -> None:
    """Check suites without running them (every case of every profile is expanded and validated)."""
    from rich.markup import escape

    from .errors import SuiteError
    from .suite import load_suite

    out, err = _console(), _console(stderr=True)
    bad = 0
    for path in suite_files:
        try:
            suite = load_suite(path)
        except SuiteError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}")
            bad += 1
            continue
        cpu = f", {len(suite.cases('cpu'))} in its CPU profile" if suite.spec.cpu else ""
        out.print(f"[green]ok[/] {escape(str(path))}: {len(suite.cases('full'))} case(s){cpu}")
    sys.exit(2 if bad else 0)


@main.command()
def schema() -> None:
    """Print the suite format's JSON Schema (point your editor's YAML plugin at it for completion)."""
    import json

    from .suite import suite_json_schema

    click.echo(json.dumps(suite_json_schema(), indent=2))


@main.command(name="list")
def list_() -> None:
    """Layer families, their parameters (with defaults for gpt-oss-20b), modes and backends."""
    from rich.table import Table

    from .workloads import describe_families

    out = _console()
    for fam in describe_families():
        t = Table(title=f"{fam['name']}: {fam['description']}", title_justify="left")
        for col in ("parameter", "type / choices", "gpt-oss-20b default", "meaning"):
            t.add_column(col, overflow="fold")
        for p in fam["params"]:
            t.add_row(p["name"], p["type"], p["default"], p["help"])
        out.print(t)
        if fam["variants"]:
            out.print("  ready-made variants: " + "; ".join(f"{k} = {v}" for k, v in fam["variants"].items()))


@main.command()
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def env(device: str) -> None:
    """Device, driver, CUDA, torch, triton, NVML status and the device's peak table row."""
    from rich.table import Table

    from .env import capture, describe
    from .runner import resolve_device

    t = Table(show_header=False)
    for key, value in describe(capture(resolve_device(device))):
        t.add_row(key, value)
    _console().print(t)


@main.command()
@click.argument("results_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write [default: report.html beside RESULTS_FILE].")
def report(results_file: Path, output: Path | None) -> None:
    """Render the HTML report of RESULTS_FILE (a results.json, or the journal.jsonl of an interrupted run)."""
    from .report import write_report
    from .results import load_results

    run_result = load_results(results_file)
    path = write_report(run_result, output or results_file.with_name("report.html"))
    click.echo(str(path))


if __name__ == "__main__":
    main()
