"""The terminal view of a `Comparison` (`ossbench compare`): one table row per case and run, and the cases
that matched nothing. Every figure is the Comparison's; nothing here computes one."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .compare import Comparison
from .measure.roofline import over_ceiling
from .summary import STATUS_STYLE, beaten_ceiling_caption, beaten_ceiling_cell, too_few_text
from .text import printable, term_text
from .units import fmt_ms


def _pct(x: float | None) -> str:
    """A fraction of a run's ceiling; above 100% the warning that the ceiling is wrong (rich markup)."""
    if x is None:
        return "-"
    return beaten_ceiling_cell(f"{x * 100:.0f}%") if over_ceiling(x) else f"{x * 100:.1f}%"


def comparison_table(c: Comparison) -> Table:
    """One row per (case, run): median ± CI, speedup vs the reference with its CI95, % of the run's ceilings."""
    ref = c.reference
    beaten = sum(over_ceiling(f) for case in c.cases for cell in case.runs if cell and cell.status == "ok"
                 for f in (cell.compute_fraction, cell.bandwidth_fraction))
    t = Table(title=term_text(f"{ref.suite}: speedup vs {ref.label} (reference median / run median; "
                           f"> 1 is faster)"), title_justify="left",
              caption=beaten_ceiling_caption(beaten), caption_justify="left")
    memory = c.bandwidth_name
    for col, justify in (("case", "left"), ("run", "left"), ("median", "right"), ("CI95", "right"),
                         ("speedup [CI95]", "right"), ("% peak compute", "right"), (f"% peak {memory}", "right"),
                         ("follows", "left")):
        t.add_column(col, justify=justify, overflow="fold")
    for case in c.cases:
        for k, (info, cell, vs) in enumerate(zip(c.runs, case.runs, case.vs_reference)):
            name = term_text(case.id) if k == 0 else ""
            if cell is None:
                t.add_row(name, term_text(info.label), "[dim]absent[/]", "", "", "", "", "", end_section=False)
                continue
            if cell.status != "ok":
                why = f"[{STATUS_STYLE[cell.status]}]{cell.status}[/]"
                if cell.error:
                    why += " " + term_text(cell.error[:100])
                t.add_row(name, term_text(info.label), why, "", "", "", "", "")
                continue
            ci = f"{cell.ci95_ms[0]:.4g}-{cell.ci95_ms[1]:.4g}" if cell.ci95_ms else "-"
            speed = ("ref" if k == 0 else "-" if vs is None else
                     f"{vs.speedup:.2f} [dim]({too_few_text(vs.n)})[/]" if vs.speedup_ci95 is None else
                     f"{vs.speedup:.2f} [{vs.speedup_ci95[0]:.2f}, {vs.speedup_ci95[1]:.2f}]")
            follows = "" if k == 0 or vs is None else vs.follows
            t.add_row(name, term_text(info.label), fmt_ms(cell.median_ms), ci, speed,
                      _pct(cell.compute_fraction), _pct(cell.bandwidth_fraction), follows)
        t.add_section()
    return t


def summary_table(c: Comparison) -> Table | None:
    """One row per run against the reference: geometric mean speedup over the shared cases, with its CI95."""
    rows = [s for s in c.summaries if s is not None]
    if not rows:
        return None
    t = Table(title=term_text(f"summary: geometric mean speedup over {c.reference.label}"), title_justify="left")
    for col in ("run", "cases", "geomean speedup", "CI95", "range"):
        t.add_column(col, justify="left" if col == "run" else "right", overflow="fold")
    for s in rows:
        few = f" [dim]({s.too_few} with one sample)[/]" if s.too_few else ""
        t.add_row(term_text(s.label), f"{s.n_cases}{few}", f"{s.geomean:.3f}",
                  f"{s.geomean_ci95[0]:.3f} to {s.geomean_ci95[1]:.3f}", f"{s.lowest:.2f} to {s.highest:.2f}")
    return t


def unmatched_lines(c: Comparison) -> list[str]:
    """Plain-text lines (controls escaped, see `printable`) listing each run's unmatched case ids (empty when
    every case matched)."""
    lines = []
    for k, info in enumerate(c.runs):
        if info.unmatched:
            where = "in no other run" if k == 0 else f"not in the reference ({c.reference.label})"
            lines.append(printable(f"{info.label}: {len(info.unmatched)} case(s) {where}: "
                                   + ", ".join(info.unmatched)))
    return lines


def print_comparison(c: Comparison, console: Console) -> None:
    """The table, then the unmatched case ids (as plain text: already printable)."""
    console.print(comparison_table(c))
    summary = summary_table(c)
    if summary is not None:
        console.print(summary)
    for line in unmatched_lines(c):
        console.print(line, markup=False)
