"""What `ossbench run` tells its user, and its exit decision, as library functions of the plan and the
result (so a Python caller gets the same lines and the same exit code as the command line).

Lines are rich markup with every user-provided name escaped (`term_text`); the tables are `summary`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from .expectations import evaluate
from .plan import BUDGET
from .plan_table import plan_notes, plan_table, prediction_line
from .summary import STATUS_STYLE, cases_table, pairs_table
from .text import term_text

if TYPE_CHECKING:  # the runner pulls in torch; these are only annotations
    from .resume import Resumed
    from .results import CaseResult, RunResult
    from .runner import RunPlan
    from .stopping import StopRequest
    from .suite_cases import Case


def exit_code(cases: list[CaseResult], *, report_written: bool = True, stop: StopRequest | None = None) -> int:
    """The run's exit status (docs/run.md): the signal's 130 / 143 when a stop was requested, else 1 when a
    case failed or ran out of memory or the report could not be written, else 0."""
    if stop is not None and stop.requested:
        return stop.exit_code
    return 1 if any(c.status in ("failed", "oom") for c in cases) or not report_written else 0


def start_lines(plan: RunPlan, todo: int, resumed: Resumed | None) -> list[str]:
    """What the run is about to do: the suite, the case count, the device, the output folder; what a resume kept."""
    lines = [f"[bold]{term_text(plan.suite.name)}[/]: {todo} case(s) on {plan.device}, "
             f"dtype {plan.suite.dtype(plan.profile)} -> {plan.out_dir}"
             + (", each case in a child process (--isolate)" if plan.isolate else "")
             + _ranks_text(plan)]
    if resumed:
        lines.append(f"resuming: {len(resumed.kept)} finished case(s) kept from {resumed.source}"
                     + (f"; {len(resumed.dropped)} dropped by the re-plan" if resumed.dropped else ""))
    return lines


def _ranks_text(plan: RunPlan) -> str:
    """A multi-rank run (docs/distributed.md): how this rank's cases relate to the others'."""
    env = plan.environment
    if not env.get("world_size"):
        return ""
    from .workloads import get_family

    together = get_family(plan.suite.spec.family).collective
    return (f"; every case on all {env['world_size']} ranks together" if together
            else f"; shared out over {env['world_size']} ranks")


NOTHING_TO_RESUME = "nothing to resume: every case is in results.json already"


def load_notices(load: dict | None) -> list[str]:
    """Why the timings of a run planned on a machine this busy will read high (empty when it was quiet).

    CPU: a 1-minute load average at least one task above the cores the run's torch threads leave free. Each
    torch parallel region then waits for a descheduled thread: on 2 cores at a load of 5-6 a ~1 ms case
    took 80-180 ms. GPU: another process holding a compute context.
    """
    load = load or {}
    avg, cpus, threads = (load.get("loadavg") or [None])[0], load.get("cpu_count"), load.get("threads")
    lines = []
    if avg is not None and cpus and threads and avg >= max(cpus - threads, 0) + 1:
        lines.append(f"1-minute load average {avg:.1f} on {cpus} CPUs, with {threads} torch thread(s) for the run: "
                     f"other work competes for the cores and CPU timings will read high")
    if load.get("gpu_other_processes"):
        lines.append(f"{load['gpu_other_processes']} other process(es) hold a compute context on the GPU")
    return lines


def notices(plan: RunPlan) -> list[str]:
    """The caveats of this run, said once before it starts: a busy machine, a reduced CPU profile, --quick,
    and what it cannot measure here (NVML, ceilings, ncu)."""
    lines = [f"[yellow]machine loaded: {term_text(why)}.[/]" for why in load_notices(plan.environment.get("load"))]
    if plan.profile == "cpu":
        lines.append("[yellow]Running the suite's reduced CPU profile (its `cpu:` section): smaller shapes, "
                     "recorded as profile=cpu in the results. Use a GPU for the full suite.[/]")
    elif plan.profile != "full":
        about = plan.suite.profile_spec(plan.profile).description  # type: ignore[union-attr]
        lines.append(f"[yellow]Running the suite profile {term_text(plan.profile)!r}"
                     + (f" ({term_text(about)})" if about else "")
                     + f", recorded as profile={term_text(plan.profile)} in the results: not the full suite.[/]")
    if plan.options and plan.options.quick:
        lines.append("[yellow]--quick: short time budget and a 5% CI target; numbers are a smoke test.[/]")
    nvml = plan.environment.get("nvml") or {}
    if not nvml.get("available"):
        lines.append(f"[dim]NVML unavailable ({term_text(nvml.get('reason', 'unknown'))}): no power, energy, "
                     "clock or throttling readings.[/]")
    if plan.environment.get("ceilings") is None:
        lines.append("[dim]No roofline ceilings for this device (not in the datasheet table, not calibrated): "
                     "`ossbench calibrate` measures them.[/]")
    if plan.measure.ncu:
        from .measure.counters import ncu_path

        if not plan.device.is_cuda or ncu_path() is None:
            lines.append("[yellow]--ncu: " + ("a CPU run has no DRAM counters" if not plan.device.is_cuda
                                              else "ncu is not on the PATH") + "; counters will be unavailable.[/]")
    return lines


def execute(plan: RunPlan, resumed: Resumed | None, todo: int, out: Console, err: Console, *,
            plotly: Any = None, shard: Any = None) -> int:
    """Run the plan as `ossbench run` does: a progress bar and one line per case on `err`, SIGINT/SIGTERM
    stopping after the case in flight, results and report written (`plotly`: how the report gets
    plotly.js, `PlotlyJs`), the summary on `out`; the exit code. `shard`: this rank's part of a multi-rank
    run (ossbench.distributed): rank 0 reports every rank's cases, the other ranks only run theirs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .outdir import claim_out_dir
    from .report import write_report
    from .runner import run_plan
    from .stopping import stop_on_signals

    shared_out = shard is not None and not shard.collective  # this rank runs a share it cannot know ahead
    eta = Eta(plan, kept=resumed.kept if resumed else (), enabled=not shared_out)
    with claim_out_dir(plan.out_dir), Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                               TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), console=err,
                                               transient=True) as progress:
        task = progress.add_task("starting", total=None if shared_out else todo, eta="")

        def on_case(case, result) -> None:
            if result is None:  # the case in flight, and the time the rest should take
                progress.update(task, description=term_text(case.id), eta=eta.text())
                return
            eta.finished(case.id, timed=result.stats is not None)
            progress.advance(task)
            progress.console.print(case_line(case, result), soft_wrap=True)

        with stop_on_signals(lambda request: progress.console.print(stopping_line(request))) as stop:
            quiet = shard and shard.rank and shard.collective  # rank 0 prints the same cases
            result = run_plan(plan, None if quiet else on_case, stop=stop, resume=resumed, shard=shard)
        if shard:
            shard.close()
            if shard.rank:  # rank 0 reports every rank's cases; a failure here is rank 0's exit status
                return stop.exit_code if stop.requested else 0
        try:
            report_path = write_report(result, plan.out_dir / "report.html", plotly=plotly)
        except Exception as e:  # noqa: BLE001 - the results are saved; a report bug must not hide them
            report_path = None
            err.print(report_failed_line(e), soft_wrap=True)
    print_summary(result, plan, report_path, out)
    if stop.requested:
        err.print(stopped_line(stop, plan.out_dir), soft_wrap=True)
    elif any(c.status == "skipped" and (c.error or "").startswith(BUDGET) for c in result.cases):
        err.print(budget_line(plan), soft_wrap=True)
    return exit_code(result.cases, report_written=report_path is not None, stop=stop)


class Eta:
    """The run's time left, from the plan's predicted time of the cases not yet finished, scaled by how the
    finished ones compared with their predictions (a loaded machine runs slower than planned)."""

    def __init__(self, plan: RunPlan, kept: Any = (), clock: Any = None, enabled: bool = True) -> None:
        import time

        self.clock = clock or time.monotonic
        self.start = self.clock()
        self.left = {cid: p.time_s for cid, p in plan.predictions.items() if p.fits and cid not in kept} \
            if enabled else {}
        self.done_predicted = 0.0

    def finished(self, case_id: str, timed: bool = True) -> None:
        """A case ended; one recorded without timing (skipped, not started) took about none of its time."""
        predicted = self.left.pop(case_id, 0.0)
        if timed:
            self.done_predicted += predicted

    def seconds(self) -> float | None:
        if not self.left:
            return None
        elapsed = self.clock() - self.start
        scale = elapsed / self.done_predicted if self.done_predicted > 0 and elapsed > 0 else 1.0
        return sum(self.left.values()) * scale

    def text(self) -> str:
        s = self.seconds()
        if s is None:
            return ""
        minutes, secs = divmod(int(round(s)), 60)
        return f"~{minutes}m{secs:02d}s left" if minutes else f"~{secs}s left"


def budget_line(plan: RunPlan) -> str:
    return (f"[yellow]run budget ({plan.max_minutes:g} min) reached: the cases not started are recorded as "
            f"skipped; to run them: ossbench run --resume {term_text(str(plan.out_dir))}[/]")


def case_line(case: Case, result: CaseResult) -> str:
    """One finished case: its status, id and median."""
    return (f"  [{STATUS_STYLE[result.status]}]{result.status:>7}[/] {term_text(case.id)}"
            + (f"  {result.stats.median:.4g} ms" if result.stats else ""))


def stopping_line(stop: StopRequest) -> str:
    return (f"[yellow]{stop.name}: stopping after the case in flight (again: stop at once; finished cases stay "
            f"in the journal)[/]")


def report_failed_line(e: Exception) -> str:
    return (f"[red]could not write the report ({term_text(type(e).__name__)}: {term_text(str(e))}); the results "
            f"are saved, retry with `ossbench report`[/]")


def stopped_line(stop: StopRequest, out_dir: Path) -> str:
    return (f"[yellow]{stop.name}: the cases not started are recorded as skipped; to run them: "
            f"ossbench run --resume {term_text(str(out_dir))}[/]")


def print_summary(result: RunResult, plan: RunPlan, report_path: Path | None, console: Console) -> None:
    """The end of a run: the cases table, the compare pairs, unavailable counters, where traces, results and
    report are."""
    console.print(cases_table(result))
    pairs = [r for r in evaluate(result) if r.outcomes]
    if pairs:
        console.print(pairs_table(pairs))
    counts = {s: sum(c.status == s for c in result.cases) for s in STATUS_STYLE}
    if plan.measure.profile or plan.measure.ncu:
        reasons = sorted({c.counters["reason"] for c in result.cases if c.counters and not c.counters["available"]})
        for reason in reasons:
            console.print(f"DRAM counters unavailable: {term_text(reason)}")
    if plan.measure.profile:
        console.print(f"traces:  {plan.out_dir / 'traces'} (gzipped Chrome traces: open in https://ui.perfetto.dev)")
    line = prediction_line(result)
    if line:
        console.print(line)
    console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n) +
                  f"\nresults: {plan.out_dir / 'results.json'}\nreport:  {report_path or 'not written'}")


def print_plan(plan: RunPlan, ids: set[str] | None, out: Console) -> None:
    """The plan table, then its notes (cases that do not fit, the budget, a loaded machine), on `out`."""
    out.print(plan_table(plan, ids))
    for line in plan_notes(plan, ids) + [f"[yellow]machine loaded: {w}; CPU cases will take longer than "
                                         f"predicted.[/]" for w in load_notices(plan.environment.get("load"))]:
        out.print(line, soft_wrap=True)
