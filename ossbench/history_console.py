"""The terminal view of a `History` (`ossbench history`): the series, one table row per change, the new
regressions. Every figure is the History's; nothing here computes one."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .history import Change, History
from .text import term_text
from .units import fmt_ms


def header_lines(h: History) -> list[str]:
    first, last = h.runs[0], h.runs[-1]
    s = h.settings
    lines = [term_text(f"{h.suite} on {h.device}: {len(h.runs)} run(s) from {first.start_time} to "
                       f"{last.start_time}, {len(h.cases)} case(s)"),
             f"[dim]a change: p < {s.alpha:g} (t-test on run medians) and at least {s.min_change * 100:g}% "
             f"(ratio of medians); new: slower, starts in the last {s.recent} run(s)"
             + (f", seen in {s.confirm} or more" if s.confirm > 1 else "") + "[/]"]
    if len(h.runs) < 3:
        lines.append(f"[yellow]{len(h.runs)} run(s): a change needs at least 3 runs to be found[/]")
    if h.skipped_files:
        lines.append(f"[dim]skipped {len(h.skipped_files)} JSON file(s) that are not ossbench results[/]")
    few = sum(len(c.points) < 3 for c in h.cases)
    if few:
        lines.append(f"[yellow]{few} case(s) have fewer than 3 ok runs: no change can be found in them[/]")
    return lines


def _ci(c: Change) -> str:
    ci = c.figures.ci95
    return f"{ci[0]:.3f}x-{ci[1]:.3f}x" if ci else "[dim]one run[/]"


def changes_table(h: History) -> Table:
    new = {id(c) for c in h.new_regressions}
    t = Table(title=term_text(f"{h.suite}: changes of the median over {len(h.runs)} runs (ratio after / before; "
                              "> 1 is slower)"), title_justify="left")
    for col, justify in (("case", "left"), ("run", "right"), ("time", "left"), ("commit", "left"),
                         ("before", "right"), ("after", "right"), ("change", "right"), ("ratio CI95", "right"),
                         ("p", "right"), ("runs b/a", "right"), ("", "left")):
        t.add_column(col, justify=justify, overflow="fold")
    for c in sorted(h.changes, key=lambda c: (c.case_id, c.run.index)):
        style = "red" if c.slower else "green"
        flag = "[bold red]NEW[/]" if id(c) in new else ""
        t.add_row(term_text(c.case_id), str(c.run.index), term_text(c.run.start_time), term_text(c.run.commit),
                  fmt_ms(c.before_ms), fmt_ms(c.after_ms), f"[{style}]{(c.ratio - 1) * 100:+.1f}%[/]", _ci(c),
                  f"{c.figures.p_value:.2g}", f"{c.figures.n_before}/{c.figures.n_after}", flag)
    return t


def print_history(h: History, console: Console) -> None:
    for line in header_lines(h):
        console.print(line, soft_wrap=True)
    if h.changes:
        console.print(changes_table(h))
    unchanged = sum(not c.changes for c in h.cases)
    console.print(f"{len(h.changes)} change(s) in {len(h.cases) - unchanged} case(s); {unchanged} case(s) without "
                  "a change")
    for c in h.new_regressions:
        console.print(f"[bold red]new regression:[/] {term_text(c.describe())}", soft_wrap=True)
