"""The answer a reader of a run wants first, before the detail: for each compare pair its claim, the
measured speedup (with its CI95) at the largest size of each mode and whether the expectation is met; and
for each mode, which backend ran fastest at the largest size.

Pure functions of a run and its evaluated pairs (`ossbench.expectations`); the HTML report renders them
at the top of the page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .expectations import PairOutcome, PairReport
from .results import CaseResult, RunResult

DEFAULT_BACKEND = "default"  # a case whose params name no backend


def mode_of(axes: dict[str, Any], params: dict[str, Any] | None = None) -> str | None:
    """The case's mode (prefill, decode, train ...), from its sweep axes or its parameters; None when it has none."""
    mode = axes.get("mode", (params or {}).get("mode"))
    return None if mode is None else str(mode)


def size_of(axes: dict[str, Any]) -> float:
    """How large a sweep point is: the product of its numeric axis values (1 when it has none)."""
    return math.prod(float(v) for v in axes.values() if isinstance(v, (int, float)) and not isinstance(v, bool))


def shape_text(axes: dict[str, Any], *, skip: tuple[str, ...] = ("mode",)) -> str:
    """'seq_len=512' / 'batch=1, kv_len=4096': the point's axes in words, without the mode."""
    return ", ".join(f"{k}={v}" for k, v in axes.items() if k not in skip)


@dataclass(frozen=True)
class PairAnswer:
    """One compare pair, answered: its verdict over every point, and its largest point in each mode."""

    pair: PairReport
    points: list[PairOutcome]  # one per mode (in the order the run has them), the largest that ran

    @property
    def met(self) -> bool | None:
        return self.pair.met

    @property
    def too_few_samples(self) -> bool:
        """Some point's verdict rests on a case with a single sample."""
        return any(o.too_few_samples for o in self.pair.outcomes if o.met is not None)


def pair_answers(pairs: list[PairReport]) -> list[PairAnswer]:
    answers = []
    for pair in pairs:
        largest: dict[str | None, PairOutcome] = {}
        for o in pair.outcomes:
            if o.speedup is None:
                continue
            mode = mode_of(o.axes)
            if mode not in largest or size_of(o.axes) > size_of(largest[mode].axes):
                largest[mode] = o
        answers.append(PairAnswer(pair, list(largest.values())))
    return answers


@dataclass(frozen=True)
class BackendBest:
    backend: str
    case: CaseResult  # its fastest case at the point

    @property
    def median_ms(self) -> float:
        return self.case.stats.median


@dataclass(frozen=True)
class Race:
    """Backends that ran the same work (every parameter but the backend equal), fastest first; or, when no
    work ran on two backends, each backend's fastest case whatever its work (``like_for_like`` False)."""

    by_backend: list[BackendBest]
    like_for_like: bool

    @property
    def winner(self) -> BackendBest:
        return self.by_backend[0]


@dataclass(frozen=True)
class Fastest:
    """At the largest point of one mode: which backend is fastest."""

    mode: str | None
    axes: dict[str, Any]  # the point (the mode's largest), as the cases' axes
    races: list[Race]


def fastest_by_mode(run: RunResult) -> list[Fastest]:
    """Per mode, at the largest point some case ran (ok) at: for each work that ran on several backends,
    the backends ranked; when none did, each backend's fastest case (different work, said so)."""
    by_mode: dict[str | None, list[CaseResult]] = {}
    for c in run.cases:
        if c.status == "ok" and c.stats is not None:
            by_mode.setdefault(mode_of(c.axes, c.params), []).append(c)
    out = []
    for mode, cases in by_mode.items():
        top = max(cases, key=lambda c: size_of(c.axes)).axes  # the first case at the largest size: its point
        at_top = [c for c in cases if c.axes == top]
        works: dict[tuple, list[CaseResult]] = {}
        for c in at_top:
            works.setdefault(_work(c), []).append(c)
        races = [Race(_ranked(group), True) for group in works.values() if len({_backend(c) for c in group}) > 1]
        out.append(Fastest(mode, dict(top), races or [Race(_ranked(at_top), False)]))
    return out


def _backend(case: CaseResult) -> str:
    return str(case.params.get("backend") or DEFAULT_BACKEND)


def _work(case: CaseResult) -> tuple:
    """What a case computes: its family and every parameter but the backend."""
    return (case.family, tuple(sorted((k, repr(v)) for k, v in case.params.items() if k != "backend")))


def _ranked(cases: list[CaseResult]) -> list[BackendBest]:
    best: dict[str, CaseResult] = {}
    for c in cases:
        if _backend(c) not in best or c.stats.median < best[_backend(c)].stats.median:
            best[_backend(c)] = c
    return sorted((BackendBest(b, c) for b, c in best.items()), key=lambda b: b.median_ms)
