"""The `ossbench` command line: parse, call the library, map errors to exit codes.

Exit codes: 0 success; 1 some cases failed (run); 2 bad input (suite, results file, option, an output
path that cannot be written); 130 / 143 a run stopped by SIGINT / SIGTERM (docs/run.md).
Heavy modules (torch, pandas, plotly) are imported inside the commands so `ossbench --help` starts fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .errors import UserError


def _console(stderr: bool = False):
    import os

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped to a file or CI log: rich would assume 80 columns and fold every case id; logs read better wide.
    width = None if stream.isatty() or "COLUMNS" in os.environ else 160
    return Console(stderr=stderr, highlight=False, width=width)


class _Group(click.Group):
    """Turns user errors into one message and exit code 2 (never a traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            from .text import term_text

            _console(stderr=True).print(f"[bold red]error:[/] {term_text(e)}", soft_wrap=True)
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
      ossbench calibrate                     measure this device's matmul and copy ceilings
    """


@main.command()
@click.argument("suite_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory [default: reports/<suite>-<device>-<timestamp>/].")
@click.option("--filter", "filter_text", metavar="TEXT", help="Run only cases whose id contains TEXT.")
@click.option("--quick", is_flag=True, help="Smoke run: short time budget, loose CI target (not for quoting).")
@click.option("--profile", "profile_kernels", is_flag=True,
              help="Also run each case under torch.profiler: top kernels, launches, a Chrome trace per case.")
@click.option("--ncu", is_flag=True, help="Measure DRAM bytes per case with Nsight Compute (ncu on the PATH).")
@click.option("--strict-clocks", is_flag=True,
              help="Discard and re-take samples taken while NVML reports power/thermal throttling.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Continue the run in DIR (killed or interrupted) with the options it was started with: "
                   "finished cases are kept, the rest run. SUITE_FILE is optional (default: the recorded path).")
@click.option("--force", is_flag=True, help="With --resume: re-plan from a suite changed since the run started, "
                                            "keeping the finished cases whose id and parameters it still has.")
@click.option("--isolate/--no-isolate", default=None,
              help="Run each case in a child process with a timeout (timing.case_timeout_s): a crash, hang or "
                   "lost CUDA context fails only that case [default: on for CUDA with more than one case].")
def run(suite_file: Path | None, device: str, out_dir: Path | None, filter_text: str | None, quick: bool,
        profile_kernels: bool, ncu: bool, strict_clocks: bool, resume_dir: Path | None, force: bool,
        isolate: bool | None) -> None:
    """Run SUITE_FILE's cases; write results.json and report.html.

    Exit 0 when every case ran (ok or skipped), 1 when some failed or ran out of memory, or the report
    could not be rendered (results.json is written in every case), 2 for a bad suite or option or an output
    folder that cannot be written (or is in use by another run). SIGINT (Ctrl-C) or SIGTERM stop the run
    after the case in flight: the rest are recorded as skipped, results and report written, exit 130 / 143;
    `--resume DIR` then runs the rest.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .outdir import claim_out_dir
    from .report import write_report
    from .run_console import (NOTHING_TO_RESUME, case_line, exit_code, notices, print_summary,
                              report_failed_line, start_lines, stopped_line, stopping_line)
    from .runner import plan_run, run_plan
    from .stopping import stop_on_signals
    from .suite import load_suite
    from .text import term_text

    out, err = _console(), _console(stderr=True)
    resumed = None
    if resume_dir:
        from .resume import plan_resume

        given = [name for name, v in (("--out", out_dir), ("--filter", filter_text), ("--quick", quick),
                                      ("--profile", profile_kernels), ("--ncu", ncu),
                                      ("--strict-clocks", strict_clocks), ("--device", device != "auto"),
                                      ("--isolate/--no-isolate", isolate is not None)) if v]
        if given:
            raise UserError(f"--resume continues with the options the run was started with; drop {', '.join(given)}")
        plan, resumed = plan_resume(resume_dir, suite_file=suite_file, force=force)
    elif suite_file is None or force:
        raise click.UsageError("give SUITE_FILE, or --resume DIR" if suite_file is None else "--force needs --resume")
    else:
        plan = plan_run(load_suite(suite_file), device=device, out_dir=out_dir, filter_text=filter_text,
                        quick=quick, profile=profile_kernels, ncu=ncu, strict_clocks=strict_clocks,
                        isolate=isolate)
    todo = resumed.ids_to_run(plan) if resumed else [c.id for c in plan.cases]
    for line in start_lines(plan, len(todo), resumed):
        err.print(line)
    if resumed and resumed.nothing_to_do(plan):
        err.print(NOTHING_TO_RESUME)
        sys.exit(exit_code(resumed.previous.cases))
    for line in notices(plan):
        err.print(line)

    with claim_out_dir(plan.out_dir), Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                               TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task("starting", total=len(todo))

        def on_case(case, result) -> None:
            if result is None:
                progress.update(task, description=term_text(case.id))
                return
            progress.advance(task)
            progress.console.print(case_line(case, result), soft_wrap=True)

        with stop_on_signals(lambda request: progress.console.print(stopping_line(request))) as stop:
            result = run_plan(plan, on_case, stop=stop, resume=resumed)
        try:
            report_path = write_report(result, plan.out_dir / "report.html")
        except Exception as e:  # noqa: BLE001 - the results are saved; a report bug must not hide them
            report_path = None
            err.print(report_failed_line(e), soft_wrap=True)
    print_summary(result, plan, report_path, out)
    if stop.requested:
        err.print(stopped_line(stop, plan.out_dir), soft_wrap=True)
    sys.exit(exit_code(result.cases, report_written=report_path is not None, stop=stop))


@main.command()
@click.argument("suite_files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def validate(suite_files: tuple[Path, ...]) -> None:
    """Check suites without running them (every case of every profile is expanded and validated)."""
    from .text import term_text as escape  # markup escaped and control characters shown

    from .errors import SuiteError
    from .suite import load_suite

    out, err = _console(), _console(stderr=True)
    bad = 0
    for path in suite_files:
        try:
            suite = load_suite(path)
        except SuiteError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
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
    """Layer families, their parameters (with defaults for gpt-oss-20b), modes, and the registered backends
    (plugins' included) with what each cannot express."""
    from rich.table import Table

    from .workloads import describe_backends, describe_families

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
    t = Table(title="backends (ossbench.backends; plugins from the `ossbench.backends` entry-point group)",
              title_justify="left")
    for col in ("family", "backend", "from", "limits", "what it is"):
        t.add_column(col, overflow="fold")
    for b in describe_backends():
        t.add_row(b["family"], b["name"], b["origin"], b["limits"], b["description"])
    out.print(t)


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
    from .outdir import check_output_file
    from .report import write_report
    from .results import load_results

    target = check_output_file(output or results_file.with_name("report.html"), "-o" if output else "report")
    run_result = load_results(results_file)
    path = write_report(run_result, target)
    click.echo(str(path))


@main.command()
@click.argument("results_files", nargs=-1, metavar="A.json B.json [C.json ...]",
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the comparison as a self-contained HTML file.")
def compare(results_files: tuple[Path, ...], output: Path | None) -> None:
    """Compare runs case by case (other GPUs, versions, commits); the first file is the reference.

    Per case: the speedup over the reference with a bootstrap CI95, and each run's fraction of its device's
    peak compute and HBM bandwidth, so you can see whether a difference follows compute, bandwidth or neither.
    """
    from .compare import compare_runs, run_labels
    from .compare_table import print_comparison
    from .results import load_results

    if len(results_files) < 2:
        raise UserError(f"compare needs at least two results files (got {len(results_files)})")
    if output:
        from .outdir import check_output_file

        check_output_file(output, "-o")
    runs = [load_results(p) for p in results_files]
    paths = [str(p) for p in results_files]
    comparison = compare_runs(runs, run_labels(runs, paths), sources=paths)
    print_comparison(comparison, _console())
    if output:
        from .report.compare_html import write_compare_report

        click.echo(str(write_compare_report(comparison, output)))


class _Fraction(click.ParamType):
    name = "FRACTION"

    def convert(self, value, param, ctx):
        from .gate import parse_fraction

        try:
            return parse_fraction(value)
        except UserError as e:
            self.fail(str(e), param, ctx)


@main.command()
@click.option("--baseline", "baseline_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The stored baseline results file.")
@click.argument("current_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--max-slowdown", type=_Fraction(),
              help="Largest tolerated slowdown of a median: 5% or 0.05 [default: the suite's gate.max_slowdown, "
                   "else 5%].")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, help="Significance level of the one-sided Mann-Whitney U test.")
@click.option("--allow-hardware-mismatch", is_flag=True, help="Gate runs from different GPU models anyway.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML here.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a markdown summary here. The same markdown is always appended to $GITHUB_STEP_SUMMARY when that is set.")
def gate(baseline_file: Path, current_file: Path, max_slowdown: float | None, alpha: float,
         allow_hardware_mismatch: bool, junit: Path | None, markdown: Path | None) -> None:
    """Regression gate: compare CURRENT_FILE with --baseline case by case.

    A case regresses when its samples are significantly slower (one-sided Mann-Whitney U, p < alpha) AND
    its median is slower by more than the threshold (when the sample counts cannot reach alpha at all,
    the threshold alone decides, and the verdict says so); a case that ran in the baseline and fails now,
    or is missing from the current run, also fails the gate. Exit 0 pass, 1 regression, newly failing or
    missing case, 2 bad input. See docs/gate.md.
    """
    from .gate import gate as run_gate
    from .gate_outputs import print_gate, write_outputs
    from .outdir import check_output_file
    from .results import load_results

    summary = os.environ.get("GITHUB_STEP_SUMMARY")  # appended to as well (write_outputs)
    for option, path in (("--junit", junit), ("--markdown", markdown), ("$GITHUB_STEP_SUMMARY", summary)):
        if path:
            check_output_file(path, option)
    baseline, current = load_results(baseline_file), load_results(current_file)
    result = run_gate(baseline, current, max_slowdown=max_slowdown, alpha=alpha,
                      allow_hardware_mismatch=allow_hardware_mismatch)
    write_outputs(result, markdown=markdown, junit=junit)
    print_gate(result, _console())
    sys.exit(0 if result.passed else 1)


@main.command(name="export")
@click.argument("results_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "pytest-benchmark"]), required=True,
              help="csv / parquet: one row per case; pytest-benchmark: a saved run `pytest-benchmark compare` reads.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="File to write [default: beside RESULTS_FILE, e.g. results.csv].")
def export_(results_file: Path, fmt: str, output: Path | None) -> None:
    """Export RESULTS_FILE as CSV, Parquet or a pytest-benchmark saved run (times in seconds)."""
    from .export import default_path, export
    from .outdir import check_output_file
    from .results import load_results

    target = check_output_file(output or default_path(results_file, fmt), "-o")  # type: ignore[arg-type]
    run_result = load_results(results_file)
    click.echo(str(export(run_result, fmt, target)))


@main.command()
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--quick", is_flag=True, help="Small budgets and 3 repeats: a rough, faster calibration.")
@click.option("--repeats", type=click.IntRange(min=2), help="Measurements of each ceiling, whose median is "
              "the ceiling [default: 5; 3 with --quick].")
@click.option("--max-spread", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              metavar="PERCENT", help="Refuse to save when a ceiling's repeats spread more (max/min - 1), in %.")
@click.option("--force", is_flag=True, help="Save even when a check fails; the file then records forced: true.")
@click.option("--no-save", is_flag=True, help="Print the figures without saving them.")
def calibrate(device: str, quick: bool, repeats: int | None, max_spread: float, force: bool, no_save: bool) -> None:
    """Measure this device's matmul TFLOP/s per dtype and copy bandwidth; save them for runs' rooflines.

    Each ceiling is measured several times. Exit 1 and nothing saved (unless --force) when a ceiling's
    repeats spread over --max-spread, or it is below 50% or above 110% of the device's datasheet row, or
    (x86 CPU) bf16 outruns fp32 beyond what the CPU's bf16 instructions allow. Saved to
    $OSSBENCH_CALIBRATION_DIR, else $XDG_CACHE_HOME/ossbench/calibration (~/.cache/...), one JSON per
    device; `ossbench run` then uses the calibrated ceilings (recorded in results as their source).
    """
    from rich.markup import escape

    from .measure.calibrate import CalibrationRefused, save_calibration
    from .measure.calibrate import calibrate as measure_ceilings
    from .runner import resolve_device
    from .summary import calibration_table

    dev = resolve_device(device)
    err = _console(stderr=True)
    err.print(f"calibrating {dev} ...")
    record = measure_ceilings(dev, quick=quick, repeats=repeats, max_spread=max_spread / 100)
    _console().print(calibration_table(record))
    for line in record["load"]["warnings"]:
        err.print(f"[yellow]machine loaded: {escape(line)}; ceilings measured under load read low.[/]")
    problems = record["checks"]["problems"]
    for p in problems:
        err.print(f"[bold red]check failed:[/] {escape(p['message'])}")
    if problems and not force:
        what = "nothing saved" if no_save else "not saved"
        err.print(f"[bold red]calibration refused ({what}):[/] rerun on a quiet machine, or pass --force to save "
                  "it anyway (recorded as forced).")
        sys.exit(1)
    if not no_save:
        try:
            path = save_calibration(record, force=force)
        except CalibrationRefused as e:  # checks recomputed differently than shown: should not happen
            err.print(f"[bold red]{escape(str(e))}[/]")
            sys.exit(1)
        if problems:
            err.print("[yellow]saved despite the failed checks (--force): the file records forced: true.[/]")
        click.echo(f"saved: {path}")


from .cli_fit import fit  # noqa: E402 - a command kept in its own module (cli.py stays short)

main.add_command(fit)

if __name__ == "__main__":
    main()
