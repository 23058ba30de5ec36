"""A suite's history: results files of successive runs (one suite, one device) in time order, and for each
case the changes of level in its median (`ossbench.changepoints`): when, at which commit, by how much,
how sure, and whether the latest runs start a regression (`ossbench history --fail-on-new`).

Runs are ordered by ``environment.start_time`` (ISO 8601, as `ossbench run` records it); the commit of a
run is ``environment.git_revision``, the ossbench checkout the run was made from (absent for an installed
copy: shown as "-"). Only a case's ``ok`` runs give points; a run where it failed or was absent leaves a gap.
The decision is a `History`; `ossbench.history_console` and `ossbench.report.history_html` render it.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from .changepoints import DEFAULT_ALPHA, DEFAULT_WINDOW, Detected, find_changes
from .errors import ResultsError, UserError
from .gate import DEFAULT_MAX_SLOWDOWN
from .results import SCHEMA, gc_paused, load_results

DEFAULT_RECENT = 3  # runs: a change starting this close to the latest run is "new"
_SCHEMA_HEAD = re.compile(r'^\s*\{\s*"schema"\s*:\s*"ossbench\.results/')
_PEEK_BYTES = 256


@dataclass(frozen=True)
class HistorySettings:
    alpha: float = DEFAULT_ALPHA  # significance level of each change's t-test
    min_change: float = DEFAULT_MAX_SLOWDOWN  # smallest change of the median reported (0.05 = 5%)
    recent: int = DEFAULT_RECENT  # a slower change starting in the last `recent` runs is new
    window: int = DEFAULT_WINDOW  # runs each side of a change that its test uses
    confirm: int = 1  # ok runs of the case from the change on (the latest included) before it counts as new

    def __post_init__(self) -> None:
        if self.confirm > self.recent:
            raise UserError(f"--confirm {self.confirm} is more than --recent {self.recent}: no change could be "
                            "new (a new change starts in the last --recent runs)")


@dataclass(frozen=True)
class RunInfo:
    index: int  # position in time order, 0 = oldest
    path: str
    start_time: str
    git_revision: str | None
    status_counts: dict[str, int]

    @property
    def commit(self) -> str:
        return self.git_revision[:12] if self.git_revision else "-"


@dataclass(frozen=True)
class Point:
    run: int  # RunInfo.index
    median_ms: float
    ci95_ms: tuple[float, float] | None  # the run's own CI95 of the median


@dataclass(frozen=True)
class Change:
    case_id: str
    run: RunInfo  # the first run of the new level
    before_ms: float  # median of the run medians before and after (the tested windows)
    after_ms: float
    figures: Detected

    @property
    def ratio(self) -> float:
        return self.figures.ratio

    @property
    def slower(self) -> bool:
        return self.figures.ratio > 1.0

    @property
    def direction(self) -> str:
        return "slower" if self.slower else "faster"

    def describe(self) -> str:
        f = self.figures
        ci = f" (CI95 {f.ci95[0]:.3f}x to {f.ci95[1]:.3f}x)" if f.ci95 else ""
        return (f"{self.case_id}: {(f.ratio - 1) * 100:+.1f}% {self.direction}{ci} from run {self.run.index} "
                f"({self.run.start_time}, commit {self.run.commit}), p={f.p_value:.2g}, "
                f"{f.n_before} run(s) before / {f.n_after} after")


@dataclass(frozen=True)
class CaseHistory:
    id: str
    variant: str
    points: list[Point]
    changes: list[Change]
    not_ok: list[tuple[int, str]]  # (run index, status) where the case ran but not ok
    new_regression: Change | None  # a slower change in the recent runs that the latest level still shows


@dataclass
class History:
    suite: str
    device: str
    runs: list[RunInfo]
    cases: list[CaseHistory]
    settings: HistorySettings
    skipped_files: list[str] = field(default_factory=list)  # JSON files in a folder that are not results

    @property
    def changes(self) -> list[Change]:
        return [c for case in self.cases for c in case.changes]

    @property
    def new_regressions(self) -> list[Change]:
        return [case.new_regression for case in self.cases if case.new_regression is not None]

    def summary(self) -> dict:
        """The figures as plain JSON data (`ossbench history --json`)."""
        new = self.new_regressions
        return {
            "suite": self.suite, "device": self.device, "settings": asdict(self.settings),
            "runs": [{"index": r.index, "start_time": r.start_time, "git_revision": r.git_revision,
                      "path": r.path, "status_counts": r.status_counts} for r in self.runs],
            "changes": [{"case": c.case_id, "run": c.run.index, "start_time": c.run.start_time,
                         "git_revision": c.run.git_revision, "before_ms": c.before_ms, "after_ms": c.after_ms,
                         "ratio": c.ratio, "ci95": list(c.figures.ci95) if c.figures.ci95 else None,
                         "p_value": c.figures.p_value, "runs_before": c.figures.n_before,
                         "runs_after": c.figures.n_after, "direction": c.direction, "new": c in new}
                        for c in self.changes],
            "new_regressions": [c.case_id for c in new],
            "cases_without_change": [c.id for c in self.cases if not c.changes],
            "skipped_files": self.skipped_files,
        }


def collect_files(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """The results files named or found in folders (every ``*.json`` below a folder whose text starts as a
    results file does), and the JSON files of those folders that are not results (gate output, exports)."""
    files: list[Path] = []
    skipped: list[str] = []
    for given in map(Path, paths):
        if given.is_dir():
            for p in sorted(given.rglob("*.json")):
                if _looks_like_results(p):
                    files.append(p)
                else:
                    skipped.append(str(p))
        elif given.exists():
            files.append(given)
        else:
            raise ResultsError("no such file or folder", path=str(given))
    unique: dict[Path, Path] = {}  # resolved -> as given: a file named twice (or inside a named folder) counts once
    for p in files:
        unique.setdefault(p.resolve(), p)
    files = list(unique.values())
    if not files:
        raise UserError("no results files found in " + ", ".join(map(str, paths))
                        + f" (a folder is searched for *.json files of schema {SCHEMA!r})")
    return files, skipped


def _looks_like_results(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(_PEEK_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return True  # let load_results name the problem
    return bool(_SCHEMA_HEAD.match(head))


@dataclass(frozen=True)
class _Digest:
    """What a history keeps of one results file: a run's samples are dropped once read (hundreds of runs)."""

    path: Path
    series: tuple[str, str, str, str]  # suite name, suite profile, device type, device name
    time: datetime
    start_time: str
    git_revision: str | None
    cases: list[tuple[str, str, str, float | None, tuple[float, float] | None]]  # id, variant, status, median, CI

    @property
    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, _, status, _, _ in self.cases:
            counts[status] = counts.get(status, 0) + 1
        return counts


def digest(path: Path) -> _Digest:
    run = load_results(path)
    env = run.environment
    cases = [(c.id, c.variant, c.status, c.stats.median if c.stats else None,
              (c.stats.ci95_low, c.stats.ci95_high) if c.stats else None) for c in run.cases]
    return _Digest(path, (run.suite.name, run.suite.profile, env.device_type, env.device_name),
                   parse_time(env.start_time, str(path)), env.start_time, env.git_revision, cases)


def parse_time(text: str, path: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ResultsError(f"environment.start_time {text!r} is not an ISO 8601 time", path=path) from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def check_one_series(runs: list[_Digest]) -> tuple[str, str]:
    """(suite, device) shared by every run; a mixed history raises UserError naming each series' files."""
    groups: dict[tuple[str, str, str, str], list[str]] = {}
    for run in runs:
        groups.setdefault(run.series, []).append(str(run.path))
    if len(groups) > 1:
        parts = []
        for (suite, profile, dtype, dname), files in sorted(groups.items(), key=lambda g: -len(g[1])):
            shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            parts.append(f"{len(files)} file(s) of suite {suite!r} ({profile} profile) on {dname!r} ({dtype}): {shown}")
        raise UserError("a history is one suite on one device, these files mix " + str(len(groups))
                        + " series: " + "; ".join(parts))
    suite, _, dtype, dname = runs[0].series
    return suite, f"{dname} ({dtype})"


def load_history(paths: Iterable[str | os.PathLike], settings: HistorySettings = HistorySettings()) -> History:
    """Load, check and order the runs (by start time; ties keep the order given), then find each case's changes."""
    files, skipped = collect_files(list(paths))
    with gc_paused():
        digests = [digest(p) for p in files]
    suite, device = check_one_series(digests)
    ordered = [d for _, d in sorted(enumerate(digests), key=lambda kd: (kd[1].time, kd[0]))]
    runs = [RunInfo(index=i, path=str(d.path), start_time=d.start_time, git_revision=d.git_revision,
                    status_counts=d.status_counts) for i, d in enumerate(ordered)]
    return History(suite=suite, device=device, runs=runs, cases=build_cases(ordered, runs, settings),
                   settings=settings, skipped_files=skipped)


def build_cases(ordered: list[_Digest], runs: list[RunInfo], settings: HistorySettings) -> list[CaseHistory]:
    """Every case id seen in any run (first-seen order), with its points and changes."""
    points: dict[str, list[Point]] = {}
    not_ok: dict[str, list[tuple[int, str]]] = {}
    variants: dict[str, str] = {}
    for index, run in enumerate(ordered):
        for case_id, variant, status, median, ci in run.cases:
            variants.setdefault(case_id, variant)
            points.setdefault(case_id, [])
            not_ok.setdefault(case_id, [])
            if status == "ok" and median is not None:
                points[case_id].append(Point(index, median, ci))
            elif status != "skipped":
                not_ok[case_id].append((index, status))
    return [case_history(cid, variants[cid], points[cid], not_ok[cid], runs, settings) for cid in points]


def case_history(case_id: str, variant: str, points: list[Point], not_ok: list[tuple[int, str]],
                 runs: list[RunInfo], settings: HistorySettings) -> CaseHistory:
    medians = [p.median_ms for p in points]
    found = find_changes(medians, alpha=settings.alpha, min_change=settings.min_change, window=settings.window)
    changes = []
    for d in found:
        k = d.index
        before = sorted(medians[k - d.n_before:k])
        after = sorted(medians[k:k + d.n_after])
        changes.append(Change(case_id, runs[points[k].run], _median(before), _median(after), d))
    return CaseHistory(case_id, variant, points, changes, not_ok, _new_regression(changes, medians, points,
                                                                                  len(runs), settings))


def _median(values: list[float]) -> float:
    import numpy as np

    return float(np.median(values))


def _new_regression(changes: list[Change], medians: list[float], points: list[Point], n_runs: int,
                    settings: HistorySettings) -> Change | None:
    """The earliest slower change starting in the last `recent` runs, seen in at least `confirm` runs, when
    the latest run still shows it: its median is nearer the slower level than the level before (a slowdown
    undone by the latest run is not new)."""
    if not points or points[-1].run != n_runs - 1:
        return None  # the case did not run ok in the latest run: nothing of it is new
    slower = [c for c in changes if c.run.index >= n_runs - settings.recent and c.slower]
    if not slower:
        return None
    first = slower[0]
    if sum(p.run >= first.run.index for p in points) < settings.confirm:
        return None  # not yet seen in enough runs (--confirm)
    return first if medians[-1] >= (first.before_ms + first.after_ms) / 2 else None
