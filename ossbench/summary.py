"""Terminal tables for a run: one row per case, and the suite's compare pairs."""

from __future__ import annotations

from rich.table import Table

from .expectations import PairReport
from .results import RunResult
from .text import term_text

STATUS_STYLE = {"ok": "green", "failed": "red", "oom": "red", "skipped": "yellow"}


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    # four significant figures: more would claim a precision the CI rarely supports
    return f"{ms * 1e3:.4g} µs" if ms < 1 else f"{ms:.4g} ms"


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def speed_of_light(c) -> str:
    """'43% mem' / '71% comp' (achieved fraction of the binding roofline ceiling), or '-'."""
    r = c.roofline or {}
    if not r.get("available"):
        return "-"
    return f"{r['speed_of_light'] * 100:.0f}% {'mem' if r['bound'] == 'memory' else 'comp'}"


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
    t = Table(title=term_text(f"{run.suite.name} on {run.environment.device_name}"), title_justify="left")
    with_energy = any((c.power or {}).get("energy", {}).get("available") for c in run.cases)
    with_dram = any((c.counters or {}).get("available") for c in run.cases)
    columns = [("case", "left"), ("median", "right"), ("± CI95", "right"), ("n", "right"), ("TFLOP/s", "right"),
               ("GB/s", "right")] + ([("DRAM GB/s", "right")] if with_dram else []) + [("SoL", "right")] + (
               [("energy/token", "right")] if with_energy else []) + [("memory", "right"), ("status", "left")]
    for col, justify in columns:
        # ids and errors fold; figures never break across lines
        wraps = col in ("case", "status")
        t.add_column(col, justify=justify, overflow="fold", no_wrap=not wraps,
                     min_width=24 if col == "case" else None)
    for c in run.cases:
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
                  *([measured_gbps(c)] if with_dram else []), speed_of_light(c),
                  *([energy_per_token(c)] if with_energy else []),
                  fmt_bytes(c.memory.peak_bytes if c.memory else None), status)
    return t


def pairs_table(reports: list[PairReport]) -> Table:
    t = Table(title="compare pairs (speedup = baseline median / candidate median)", title_justify="left")
    for col in ("baseline -> candidate", "at", "speedup", "FLOP ratio", "bytes ratio", "expectation"):
        t.add_column(col, overflow="fold")
    for r in reports:
        for o in r.outcomes:
            verdict = {True: "[green]met[/]", False: "[red]not met[/]", None: "-"}[o.met]
            at = ",".join(f"{k}={v}" for k, v in o.axes.items())
            t.add_row(term_text(f"{r.baseline} -> {r.candidate}"), term_text(at), _num(o.speedup), _num(o.flops_ratio),
                      _num(o.bytes_ratio), f"{o.bound} {verdict}" if o.bound else verdict)
    return t
