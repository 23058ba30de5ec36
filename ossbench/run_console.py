"""What `ossbench run` tells its user, and its exit decision, as library functions of the plan and the
result (so a Python caller gets the same lines and the same exit code as the command line).

Lines are rich markup with every user-provided name escaped (`term_text`); the tables are `summary`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from .expectations import evaluate
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
    console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n) +
                  f"\nresults: {plan.out_dir / 'results.json'}\nreport:  {report_path or 'not written'}")
