"""`ossbench run --resume DIR`: finish a run that was killed or interrupted, from what DIR recorded.

The run is re-planned from its suite with the options it was started with (recorded in the journal's
header and in results.json as `options`). Finished cases are kept exactly as recorded; the rest run. The
suite must be unchanged (same sha256) unless `force`, which re-plans from the changed suite and keeps the
finished cases whose id, parameters and dtype it still has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .journal import JOURNAL
from .results import CaseResult, RunResult, load_results
from .runner import NOT_RUN, RunPlan, plan_run
from .plan import BUDGET
from .stopping import INTERRUPTED


@dataclass
class Resumed:
    source: Path  # the file the finished cases came from: DIR/journal.jsonl, else DIR/results.json
    previous: RunResult  # what that file holds (its environment is the first start's)
    kept: dict[str, CaseResult]  # finished cases the new plan still has, by id
    dropped: list[str] = field(default_factory=list)  # finished cases a --force re-plan no longer has

    def ids_to_run(self, plan: RunPlan) -> list[str]:
        return [c.id for c in plan.cases if c.id not in self.kept]

    def nothing_to_do(self, plan: RunPlan) -> bool:
        """A finished run resumed with its suite unchanged: every case is in its results.json already."""
        return (self.source.name != JOURNAL and not self.ids_to_run(plan)
                and plan.suite.sha256 == self.previous.suite.sha256)


def plan_resume(out_dir: str | Path, *, suite_file: str | Path | None = None, force: bool = False,
                max_minutes: float | None = None) -> tuple[RunPlan, Resumed]:
    """Re-plan the run recorded in `out_dir`; `suite_file` overrides the recorded suite path. The run's
    budget (`--max-minutes`) applies afresh to the resumed run; `max_minutes` replaces it."""
    from .suite import load_suite

    out = Path(out_dir)
    source = next((p for p in (out / JOURNAL, out / "results.json") if p.is_file()), None)
    if source is None:
        raise UserError(f"--resume {out}: no {JOURNAL} or results.json there, nothing to resume")
    previous = load_results(source)
    options = previous.options
    if options is None:
        raise UserError(f"--resume {source}: it does not record the options the run was started with (written "
                        f"by an older ossbench); start the run again")
    path = Path(suite_file) if suite_file else Path(options.suite_file)
    if not path.is_file():
        raise UserError(f"--resume {out}: the run's suite file {path} is not there; give its new path: "
                        f"ossbench run SUITE.yaml --resume {out}")
    suite = load_suite(path)
    if suite.sha256 != previous.suite.sha256 and not force:
        raise UserError(f"--resume {out}: the suite {path} changed since the run started (sha256 "
                        f"{previous.suite.sha256[:12]} then, {suite.sha256[:12]} now); --resume --force "
                        f"re-plans from the changed suite, keeping the finished cases it still has")
    plan = plan_run(suite, device=options.device, out_dir=out, filter_text=options.filter, quick=options.quick,
                    profile=options.profile, ncu=options.ncu, strict_clocks=options.strict_clocks,
                    isolate=options.isolate, suite_profile=options.suite_profile,
                    max_minutes=options.max_minutes if max_minutes is None else max_minutes)
    then, now = previous.environment.device_name, plan.environment["device_name"]
    if then != now and not force:
        raise UserError(f"--resume {out}: the run started on {then} and this machine has {now}; its results "
                        f"would mix two devices (--resume --force mixes them anyway)")
    planned = {c.id: c for c in plan.cases}
    kept: dict[str, CaseResult] = {}
    dropped: list[str] = []
    for c in previous.cases:
        if _never_ran(c):
            continue
        case = planned.get(c.id)
        if case is not None and c.params == case.params_dict and c.dtype == case.dtype:
            kept[c.id] = c
        else:
            dropped.append(c.id)
    return plan, Resumed(source=source, previous=previous, kept=kept, dropped=dropped)


def _never_ran(c: CaseResult) -> bool:
    """Recorded without running: interrupted before it started, left by the run budget, or not run after a
    lost CUDA context."""
    error = c.error or ""
    return ((c.status == "skipped" and error.startswith((INTERRUPTED, BUDGET)))
            or (c.status == "failed" and error.startswith(NOT_RUN)))
