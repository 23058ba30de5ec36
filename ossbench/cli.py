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

from .cli_options import (DEVICE_OPTION, FILTER_OPTION, MAX_MINUTES_OPTION, QUICK_OPTION, SUITE_PROFILE_OPTION,
                          Fraction, plotly_js_option)
from .console import console as _console
from .errors import UserError


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
      ossbench plan suites/attention.yaml    each case's predicted time and memory, before running
      ossbench validate suites/*.yaml        check suites without running them
      ossbench list                          layer families, parameters, modes and backends
      ossbench env                           device, driver, CUDA, torch, triton, peak table row
      ossbench calibrate                     measure this device's matmul and copy ceilings
      ossbench history runs/                 change points per case over successive CI runs
    """



@main.command()
@click.argument("suite_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@DEVICE_OPTION
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory [default: reports/<suite>-<device>-<timestamp>/].")
@FILTER_OPTION
@SUITE_PROFILE_OPTION
@QUICK_OPTION
@MAX_MINUTES_OPTION
@click.option("--plan", "show_plan", is_flag=True,
              help="Print the run plan (each case's predicted time and peak memory, totals) and exit: `ossbench plan`.")
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
@plotly_js_option
@click.option("--nproc", type=click.IntRange(min=1), metavar="N",
              help="Run on N local ranks under torchrun, one GPU each: the cases are shared out (collective "
                   "families run on all ranks together), rank 0 writes one results.json (docs/distributed.md).")
def run(suite_file: Path | None, device: str, out_dir: Path | None, filter_text: str | None,
        suite_profile: str | None, quick: bool, max_minutes: float | None, show_plan: bool, profile_kernels: bool,
        ncu: bool, strict_clocks: bool, resume_dir: Path | None, force: bool, isolate: bool | None,
        plotly_js: str, nproc: int | None) -> None:
    """Run SUITE_FILE's cases; write results.json and report.html.

    Exit 0 when every case ran (ok or skipped), 1 when some failed or ran out of memory, or the report
    could not be rendered (results.json is written in every case), 2 for a bad suite or option or an output
    folder that cannot be written (or is in use by another run). SIGINT (Ctrl-C) or SIGTERM stop the run
    after the case in flight: the rest are recorded as skipped, results and report written, exit 130 / 143;
    `--resume DIR` then runs the rest. Under torchrun (or with --nproc) each rank runs its share; only rank 0
    reports, and its exit status covers every rank's cases.
    """
    from .distributed import join_shard, rank_from_env, start_torchrun

    rank = rank_from_env()
    if nproc or (rank and resume_dir):
        sys.exit(start_torchrun(nproc, rank, resume_dir, sys.argv[1:]))  # torchrun runs this once per rank
    from .report.plotly_js import PlotlyJs
    from .run_console import NOTHING_TO_RESUME, execute, exit_code, notices, start_lines
    from .runner import plan_run
    from .suite import load_suite

    out, err = _console(), _console(stderr=True)
    plotly, resumed, shard = PlotlyJs.parse(plotly_js), None, None
    if resume_dir:
        from .resume import plan_resume

        given = [name for name, v in (("--out", out_dir), ("--filter", filter_text), ("--quick", quick),
                                      ("--suite-profile", suite_profile),
                                      ("--profile", profile_kernels), ("--ncu", ncu),
                                      ("--strict-clocks", strict_clocks), ("--device", device != "auto"),
                                      ("--isolate/--no-isolate", isolate is not None)) if v]
        if given:
            raise UserError(f"--resume continues with the options the run was started with; drop {', '.join(given)}")
        plan, resumed = plan_resume(resume_dir, suite_file=suite_file, force=force, max_minutes=max_minutes)
    elif suite_file is None or force:
        raise click.UsageError("give SUITE_FILE, or --resume DIR" if suite_file is None else "--force needs --resume")
    else:
        suite = load_suite(suite_file)
        shard = join_shard(rank, device) if rank else None  # this rank's device and share of the cases
        plan = plan_run(suite, device=str(shard.device) if shard else device, out_dir=out_dir,
                        filter_text=filter_text, quick=quick, profile=profile_kernels, ncu=ncu,
                        strict_clocks=strict_clocks, isolate=isolate, max_minutes=max_minutes,
                        suite_profile=suite_profile)
        plan = shard.adapt(plan) if shard else plan
    todo = resumed.ids_to_run(plan) if resumed else [c.id for c in plan.cases]
    if show_plan:
        from .run_console import print_plan

        print_plan(plan, set(todo), out)
        return
    for line in start_lines(plan, len(todo), resumed):
        err.print(line)
    if resumed and resumed.nothing_to_do(plan):
        err.print(NOTHING_TO_RESUME)
        sys.exit(exit_code(resumed.previous.cases))
    for line in notices(plan):
        err.print(line)
    sys.exit(execute(plan, resumed, len(todo), out, err, plotly=plotly, shard=shard))


@main.command()
@click.argument("suite_file", type=click.Path(dir_okay=False, path_type=Path))
@DEVICE_OPTION
@FILTER_OPTION
@SUITE_PROFILE_OPTION
@QUICK_OPTION
@MAX_MINUTES_OPTION
def plan(suite_file: Path, device: str, filter_text: str | None, suite_profile: str | None, quick: bool,
         max_minutes: float | None) -> None:
    """Print the cases `ossbench run SUITE_FILE` would execute, in run order, with each one's predicted time
    (set-up, compile, numerics check, warm-up, sampling) and peak memory, and the totals; builds nothing.

    A case predicted not to fit in the device's free memory is marked (a run skips it with that reason);
    with --max-minutes, so are the cases the budget would leave. Same as `ossbench run --plan`.
    """
    from .run_console import print_plan
    from .runner import plan_run
    from .suite import load_suite

    print_plan(plan_run(load_suite(suite_file), device=device, filter_text=filter_text, quick=quick,
                         max_minutes=max_minutes, suite_profile=suite_profile), None, _console())


@main.command()
@click.argument("suite_files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--device", default=None, metavar="DEVICE",
              help="Also warn about the cases a run on DEVICE (cpu, cuda, cuda:N) would skip, and why.")
def validate(suite_files: tuple[Path, ...], device: str | None) -> None:
    """Check suites without running them (every case of every profile is expanded and validated); every
    error found is reported with its file, line and field. Exit 2 when a suite is invalid (skips: exit 0)."""
    from .validate_console import validate_lines

    out, err = _console(), _console(stderr=True)
    bad = 0
    for path in suite_files:
        ok, lines, problems = validate_lines(path, device)
        bad += not ok
        for line in lines:
            out.print(line, soft_wrap=True)
        for line in problems:
            err.print(line, soft_wrap=True)
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

    from .text import term_text
    from .workloads import describe_backends, describe_families

    out = _console()
    for fam in describe_families():
        # every text through term_text: descriptions hold brackets ("over [tokens, width]") that rich would
        # take for markup tags and drop, and a plugin's text is not ours to trust
        t = Table(title=term_text(f"{fam['name']}: {fam['description']}"), title_justify="left")
        for col in ("parameter", "type / choices", "gpt-oss-20b default", "meaning"):
            t.add_column(col, overflow="fold")
        for p in fam["params"]:
            t.add_row(*(term_text(p[k]) for k in ("name", "type", "default", "help")))
        out.print(t)
        if fam["variants"]:
            made = "; ".join(f"{k} = {v}" for k, v in fam["variants"].items())
            out.print(term_text(f"  ready-made variants: {made}"))
    t = Table(title="backends (ossbench.backends; plugins from the `ossbench.backends` entry-point group)",
              title_justify="left")
    for col in ("family", "backend", "from", "limits", "what it is"):
        t.add_column(col, overflow="fold")
    for b in describe_backends():
        t.add_row(*(term_text(b[k]) for k in ("family", "name", "origin", "limits", "description")))
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
@plotly_js_option
def report(results_file: Path, output: Path | None, plotly_js: str) -> None:
    """Render the HTML report of RESULTS_FILE (a results.json, or the journal.jsonl of an interrupted run)."""
    from .outdir import check_output_file
    from .report import write_report
    from .results import load_results

    target = check_output_file(output or results_file.with_name("report.html"), "-o" if output else "report")
    run_result = load_results(results_file)
    path = write_report(run_result, target, plotly=plotly_js)
    click.echo(str(path))


@main.command()
@click.argument("results_files", nargs=-1, metavar="A.json B.json [C.json ...]",
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the comparison as a self-contained HTML file.")
@click.option("--label", "labels", multiple=True, metavar="NAME",
              help="Name a run (once per file, in order) [default: the device, with the run's folder if needed].")
@plotly_js_option
def compare(results_files: tuple[Path, ...], output: Path | None, labels: tuple[str, ...], plotly_js: str) -> None:
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
    if labels and len(labels) != len(results_files):
        raise UserError(f"--label: give one per results file ({len(results_files)}), got {len(labels)}")
    runs = [load_results(p) for p in results_files]
    paths = [str(p) for p in results_files]
    comparison = compare_runs(runs, list(labels) or run_labels(runs, paths), sources=paths)
    print_comparison(comparison, _console())
    if output:
        from .report.compare_html import write_compare_report

        click.echo(str(write_compare_report(comparison, output, plotly=plotly_js)))


@main.command()
@click.option("--baseline", "baseline_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The stored baseline results file.")
@click.argument("current_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--max-slowdown", type=Fraction(),
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
    from .measure.calibrate import calibrate as measure_ceilings
    from .runner import resolve_device
    from .summary import calibration_table, save_calibration_verdict

    dev = resolve_device(device)
    err = _console(stderr=True)
    err.print(f"calibrating {dev} ...")
    record = measure_ceilings(dev, quick=quick, repeats=repeats, max_spread=max_spread / 100)
    _console().print(calibration_table(record))
    saved = save_calibration_verdict(record, err, force=force, save=not no_save)
    if saved is False:
        sys.exit(1)
    if saved:
        click.echo(f"saved: {saved}")


from .cli_fit import fit  # noqa: E402 - commands kept in their own modules (cli.py stays short)
from .cli_history import history  # noqa: E402

main.add_command(fit)
main.add_command(history)

if __name__ == "__main__":
    main()
