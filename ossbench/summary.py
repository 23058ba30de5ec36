"""Terminal tables for a run: one row per case, the suite's compare pairs, a calibration; the number
formats the other terminal views share. Figures beyond the recorded ones come from `ossbench.analysis`."""

from __future__ import annotations

from rich.table import Table

from .analysis import HOT_CACHE_SHORT, Ceilings, Placement, place, place_cases
from .expectations import PairOutcome, PairReport
from .measure.roofline import CEILING_BELOW_MEASURED_SHORT, CEILING_BELOW_MEASURED_TEXT
from .results import RunResult
from .text import term_text
from .units import fmt_bytes, fmt_ms

STATUS_STYLE = {"ok": "green", "failed": "red", "oom": "red", "skipped": "yellow"}


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def beaten_ceiling_cell(figure: str) -> str:
    """A fraction above 100% in a terminal table: the warning, the figure only in brackets (rich markup)."""
    return f"[bold red]{CEILING_BELOW_MEASURED_SHORT}[/] ({figure})"


def beaten_ceiling_caption(count: int) -> str | None:
    """The caption of a table with `count` fractions above 100%: the whole warning and what to do."""
    if not count:
        return None
    return (f"[bold red]{CEILING_BELOW_MEASURED_TEXT}[/]: {count} figure(s) above 100% of their ceiling, "
            "which no case can beat. Rerun `ossbench calibrate` on a quiet machine (docs/measure.md).")


def sol_cell(p: Placement) -> str:
    """'43% mem' / '71% comp' (achieved fraction of the binding roofline ceiling), or '-'; above 100% the
    warning instead, with the figure in brackets (rich markup)."""
    if p.fraction is None:
        return "-"
    figure = f"{p.fraction * 100:.0f}% {'mem' if p.bound == 'memory' else 'comp'}"
    if p.hot_cache:  # against DRAM, which a cache-resident working set does not need
        return f"[dim]{HOT_CACHE_SHORT} ({figure} of DRAM)[/]"
    return beaten_ceiling_cell(figure) if p.over_ceiling else figure


def speed_of_light(case, ceilings: Ceilings | None = None) -> str:
    """`sol_cell` of a case: its recorded roofline, else computed against `ceilings` when given."""
    return sol_cell(place(case, ceilings))


def energy_per_token(c) -> str:
    """Energy per token from NVML's counter, in mJ, or '-'."""
    e = (c.power or {}).get("energy") or {}
    j = e.get("per_token_j")
    return "-" if j is None else f"{j * 1e3:.3g} mJ"


def measured_gbps(c) -> str:
    """DRAM GB/s from hardware counters (the model's GB/s is a floor), or '-'."""
    r = c.counters or {}
    return _num(r.get("gbps"), 1) if r.get("available") else "-"


def cases_table(run: RunResult) -> Table:
    placements = place_cases(run)
    beaten = sum(p.over_ceiling for p in placements)
    t = Table(title=term_text(f"{run.suite.name} on {run.environment.device_name}"), title_justify="left",
              caption=beaten_ceiling_caption(beaten), caption_justify="left")
    with_energy = any((c.power or {}).get("energy", {}).get("available") for c in run.cases)
    with_dram = any((c.counters or {}).get("available") for c in run.cases)
    kinds = {c.memory.kind for c in run.cases if c.memory}
    memory = "peak RSS growth" if kinds == {"rss"} else "memory"  # on CPU: the process's, not the case's
    with_busbw = any(c.derived.busbw_gbps is not None for c in run.cases)  # comm: GB/s is algbw, busbw beside it
    columns = [("case", "left"), ("median", "right"), ("± CI95", "right"), ("n", "right"), ("TFLOP/s", "right"),
               ("GB/s", "right")] + ([("busbw GB/s", "right")] if with_busbw else []) + (
               [("DRAM GB/s", "right")] if with_dram else []) + [("SoL", "right")] + (
               [("energy/token", "right")] if with_energy else []) + [(memory, "right"), ("status", "left")]
    for col, justify in columns:
        # ids and errors fold; figures never break across lines
        wraps = col in ("case", "status")
        t.add_column(col, justify=justify, overflow="fold", no_wrap=not wraps,
                     min_width=24 if col == "case" else None)
    for c, placement in zip(run.cases, placements):
        s = c.stats
        status = f"[{STATUS_STYLE[c.status]}]{c.status}[/]"
        if c.status == "ok" and s and not s.converged:
            status += " [yellow](CI target missed)[/]"
        elif c.error:
            status += f" {term_text(c.error[:160])}"
        if c.throttled:
            status += " [red](throttled)[/]"
        t.add_row(term_text(c.id), fmt_ms(s.median if s else None), f"{s.rel_ci * 100:.1f}%" if s else "-",
                  str(s.n) if s else "-", _num(c.derived.tflops, 3), _num(c.derived.gbps, 1),
                  *([_num(c.derived.busbw_gbps, 2)] if with_busbw else []), *([measured_gbps(c)] if with_dram else []), sol_cell(placement),
                  *([energy_per_token(c)] if with_energy else []),
                  fmt_bytes(c.memory.peak_bytes if c.memory else None), status)
    return t


def too_few_text(n: int | None) -> str:
    """What stands where a CI95 cannot be computed (a case with one sample)."""
    return f"too few samples (n={n})"


def pair_ci_cell(o: PairOutcome) -> str:
    """The speedup's CI95 in a terminal cell; "too few samples (n=1)" where a case has one sample."""
    if o.too_few_samples:
        return f"[dim]{too_few_text(o.n)}[/]"
    return "-" if o.speedup_ci95 is None else f"{o.speedup_ci95[0]:.2f} to {o.speedup_ci95[1]:.2f}"


def pairs_table(reports: list[PairReport]) -> Table:
    t = Table(title="compare pairs (speedup = baseline median / candidate median)", title_justify="left")
    for col in ("baseline -> candidate", "at", "speedup", "CI95", "FLOP ratio", "bytes ratio", "expectation"):
        t.add_column(col, overflow="fold")
    for r in reports:
        for o in r.outcomes:
            verdict = {True: "[green]met[/]", False: "[red]not met[/]", None: "-"}[o.met]
            if o.too_few_samples and o.met is not None:  # one number decided it: greyed, not green/red
                verdict = f"[dim]{'met' if o.met else 'not met'} (too few samples)[/]"
            at = ",".join(f"{k}={v}" for k, v in o.axes.items())
            t.add_row(term_text(f"{r.baseline} -> {r.candidate}"), term_text(at), _num(o.speedup), pair_ci_cell(o),
                      _num(o.flops_ratio), _num(o.bytes_ratio), f"{o.bound} {verdict}" if o.bound else verdict)
    return t


def calibration_table(record: dict) -> Table:
    """`ossbench calibrate`'s figures: each ceiling's median repeat, its spread, and the datasheet's value;
    a figure that failed its check in red."""
    from .measure.calibration_checks import ceilings_of, value_of
    from .measure.roofline import peak_for

    sheet = peak_for(record["device_name"]) or {}
    failed = {(p["ceiling"], p["check"]) for p in record.get("checks", {}).get("problems", [])}
    threads = f", {record['threads']} threads" if record.get("threads") else ""
    t = Table(title=term_text(f"{record['device_name']} ({record['device_type']}{threads})"), title_justify="left")
    for col in ("ceiling", "unit", "measured", "spread", "datasheet", "ratio", "detail"):
        t.add_column(col, justify="left" if col in ("ceiling", "unit", "detail") else "right")

    def red_if(text: str, label: str, check: str) -> str:
        return f"[bold red]{text}[/]" if (label, check) in failed else text

    for label, unit, sheet_key, entry in ceilings_of(record):
        value, datasheet, repeats = value_of(entry), sheet.get(sheet_key), entry.get("repeats") or []
        spread = entry.get("spread")
        size = f"n={entry['n']}" if "n" in entry else fmt_bytes(entry.get("bytes"))
        detail = (term_text(entry["skipped"]) if value is None else
                  f"{size}, median of {len(repeats)}: {min(repeats):.4g} to {max(repeats):.4g}" if repeats else size)
        t.add_row(label, unit, "-" if value is None else f"{value:.4g}",
                  "-" if spread is None else red_if(f"{spread:.1%}", label, "spread"),
                  "-" if datasheet is None else f"{datasheet:g}",
                  red_if(f"{value / datasheet:.0%}", label, "datasheet") if value and datasheet else "-", detail)
    return t


def save_calibration_verdict(record: dict, err, *, force: bool, save: bool):
    """What `ossbench calibrate` says after the table: machine-load warnings and failed checks on `err`;
    then saves the record unless a check failed without `force`. Returns the saved path, None when not
    asked to save, False when refused (the command exits 1)."""
    from .measure.calibrate import CalibrationRefused, save_calibration

    for line in record["load"]["warnings"]:
        err.print(f"[yellow]machine loaded: {term_text(line)}; ceilings measured under load read low.[/]")
    problems = record["checks"]["problems"]
    for p in problems:
        err.print(f"[bold red]check failed:[/] {term_text(p['message'])}")
    if problems and not force:
        what = "not saved" if save else "nothing saved"
        err.print(f"[bold red]calibration refused ({what}):[/] rerun on a quiet machine, or pass --force to save "
                  "it anyway (recorded as forced).")
        return False
    if not save:
        return None
    try:
        path = save_calibration(record, force=force)
    except CalibrationRefused as e:  # checks recomputed differently than shown: should not happen
        err.print(f"[bold red]{term_text(str(e))}[/]")
        return False
    if problems:
        err.print("[yellow]saved despite the failed checks (--force): the file records forced: true.[/]")
    return path
