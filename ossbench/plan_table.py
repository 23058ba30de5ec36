"""`ossbench plan` / `ossbench run --plan`: the run plan as a terminal table (every case in run order with its
predicted time and peak memory, what would be skipped, the totals), and the closing line of a run that
compares the predictions with what happened. Functions of the plan and the results only (ossbench/plan.py
predicts)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from .plan import predicted_totals, ratio_spread, run_order
from .text import term_text
from .units import fmt_bytes

if TYPE_CHECKING:
    from .results import RunResult
    from .runner import RunPlan

OVER_BUDGET = "over budget"
UNPLANNED = "no footprint"  # a family that declares no footprint: its cases run unpredicted
NO_FIT_MARK = "no fit"


def fmt_s(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.3g} s"


def plan_rows(plan: RunPlan, ids: set[str] | None = None) -> list[dict]:
    """The cases the run would execute (`ids`: only these, e.g. what a resume has left), in run order, each
    with its prediction, the cumulative predicted time of the cases that fit, and what would become of it:
    run, skipped as not fitting, or (with a budget, assuming the predictions hold) left by the budget."""
    rows, elapsed, over = [], 0.0, False
    for case in run_order([c for c in plan.cases if ids is None or c.id in ids]):
        p = plan.predictions.get(case.id)
        fate = "run"
        if p is None:
            fate = UNPLANNED
        elif not p.fits:
            fate = NO_FIT_MARK
        elif plan.max_minutes is not None and (over or elapsed + p.time_s > plan.max_minutes * 60):
            fate, over = OVER_BUDGET, True
        else:
            elapsed += p.time_s
        rows.append({"case": case, "prediction": p, "fate": fate, "cumulative_s": elapsed})
    return rows


def plan_table(plan: RunPlan, ids: set[str] | None = None) -> Table:
    rows = plan_rows(plan, ids)
    preds = [r["prediction"] for r in rows if r["prediction"] is not None]
    totals = predicted_totals(preds)
    basis = preds[0].basis if preds else "-"
    free = fmt_bytes(plan.free_bytes) if plan.free_bytes is not None else "unknown"
    title = (f"{term_text(plan.suite.name)}: run plan on {plan.device} ({len(rows)} case(s), in run order; "
             f"ceilings: {basis}; free memory {free}"
             + (f"; budget {plan.max_minutes:g} min" if plan.max_minutes is not None else "") + ")")
    t = Table(title=title, title_justify="left", show_footer=True)
    t.add_column("#", justify="right", footer="")
    t.add_column("case", overflow="fold", footer="total")
    t.add_column("time", justify="right", footer=fmt_s(totals["time_s"]))
    t.add_column("of which compile + check", justify="right",
                 footer=fmt_s(sum(p.phases["compile"] + p.phases["check"] for p in preds if p.fits)))
    t.add_column("call", justify="right", footer="")
    t.add_column("cumulative", justify="right", footer="")
    t.add_column("peak memory", justify="right", footer=f"max {fmt_bytes(totals['max_peak_bytes'])}")
    t.add_column("", footer=f"{totals['fitting']} fit" if totals["fitting"] < totals["cases"] else "")
    for i, r in enumerate(rows, 1):
        p = r["prediction"]
        if p is None:
            t.add_row(str(i), term_text(r["case"].id), "-", "-", "-", "-", "-", f"[dim]{UNPLANNED}[/]")
            continue
        mark = {"run": "", NO_FIT_MARK: f"[red]{NO_FIT_MARK}[/]", OVER_BUDGET: f"[yellow]{OVER_BUDGET}[/]"}[r["fate"]]
        call = p.call_s * 1e3
        t.add_row(str(i), term_text(r["case"].id), fmt_s(p.time_s), fmt_s(p.phases["compile"] + p.phases["check"]),
                  f"{call:.3g} ms", fmt_s(r["cumulative_s"]) if r["fate"] == "run" else "-",
                  fmt_bytes(p.peak_bytes), mark)
    return t


def plan_notes(plan: RunPlan, ids: set[str] | None = None) -> list[str]:
    """What the table's marks mean, said once under it."""
    rows = plan_rows(plan, ids)
    lines = []
    for r in rows:
        if r["fate"] == NO_FIT_MARK:
            lines.append(f"[red]{term_text(r['case'].id)}[/]: {term_text(r['prediction'].fit_reason or '')}")
    cut = sum(r["fate"] == OVER_BUDGET for r in rows)
    if cut:
        lines.append(f"[yellow]{cut} case(s) would be left by the {plan.max_minutes:g}-minute budget if the "
                     f"predictions hold (`--resume` runs them later)[/]")
    lines.append("[dim]Predictions: the cost model over the ceilings with the rough constants of ossbench/plan.py "
                 "(docs/run.md); every run records them beside what happened.[/]")
    return lines


def prediction_line(result: RunResult) -> str | None:
    """actual / predicted over the cases that ran: time and peak memory, min / median / max."""
    spread = ratio_spread(result.cases)
    parts = [f"{what} {s['min']:.2g} / {s['median']:.2g} / {s['max']:.2g}"
             for what, s in (("time", spread["time"]), ("peak memory", spread["peak"])) if s]
    if not parts:
        return None
    return "actual / predicted (min / median / max): " + "; ".join(parts)
