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
class Fastest:
    """At the largest point of one mode: each backend's fastest case, fastest first."""

    mode: str | None
    axes: dict[str, Any]  # the point (the mode's largest), as the cases' axes
    by_backend: list[BackendBest]

    @property
    def winner(self) -> BackendBest:
        return self.by_backend[0]


def fastest_by_mode(run: RunResult) -> list[Fastest]:
    """Per mode: the largest point that some case ran (ok) at, and there each backend's fastest case."""
    by_mode: dict[str | None, list[CaseResult]] = {}
    for c in run.cases:
        if c.status == "ok" and c.stats is not None:
            by_mode.setdefault(mode_of(c.axes, c.params), []).append(c)
    out = []
    for mode, cases in by_mode.items():
        top = max(cases, key=lambda c: size_of(c.axes)).axes  # the first case at the largest size: its point
        at_top = [c for c in cases if c.axes == top]
        best: dict[str, CaseResult] = {}
        for c in at_top:
            backend = str(c.params.get("backend") or DEFAULT_BACKEND)
            if backend not in best or c.stats.median < best[backend].stats.median:
                best[backend] = c
        ranked = sorted((BackendBest(b, c) for b, c in best.items()), key=lambda b: b.median_ms)
        out.append(Fastest(mode, dict(ranked[0].case.axes), ranked))
    return out
