"""The views of a `GateResult`: the terminal table and verdict lines, GitHub markdown and JUnit XML, and
writing them where CI reads them. Every figure is the GateResult's; nothing here tests or computes one."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .gate import TOO_FEW, CaseVerdict, GateResult
from .results import write_atomic
from .text import printable, term_text
from .units import fmt_ms as _ms

_STYLE = {"regression": "bold red", "new failure": "bold red", "improvement": "green", "fixed": "green",
          "unchanged": "", "still failing": "yellow", "skipped": "yellow", "missing": "bold red", "new": "cyan"}


def _ratio(v: CaseVerdict) -> str:
    return "-" if v.ratio is None else f"{v.ratio:.3f} ({(v.ratio - 1) * 100:+.1f}%)"


def _p(v: CaseVerdict) -> str:
    return "-" if v.p_value is None else f"{v.p_value:.2g}"


def _verdict_text(v: CaseVerdict) -> str:
    if v.verdict in ("new failure", "still failing", "skipped") and v.current_status:
        return f"{v.verdict} ({v.current_status})"
    if v.on_medians:
        return f"{v.verdict} ({TOO_FEW})"
    return v.verdict


def gate_table(result: GateResult) -> Table:
    t = Table(title=term_text(f"gate: {result.suite} on {result.current_device} — {result.summary()}"),
              title_justify="left")
    for col, justify in (("case", "left"), ("baseline", "right"), ("current", "right"),
                         ("ratio", "right"), ("p", "right"), ("limit", "right"), ("verdict", "left")):
        t.add_column(col, justify=justify, overflow="fold")
    for v in result.cases:
        style = _STYLE[v.verdict]
        verdict = f"[{style}]{term_text(_verdict_text(v))}[/]" if style else term_text(_verdict_text(v))
        t.add_row(term_text(v.id), _ms(v.baseline_median_ms), _ms(v.current_median_ms), _ratio(v), _p(v),
                  f"{v.threshold * 100:g}%", verdict)
    return t


def _md(text: str) -> str:
    """Text for a GitHub markdown table cell: no table breaks, no live HTML, no control characters."""
    return (printable(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
            .replace("\n", " "))


def gate_markdown(result: GateResult) -> str:
    """GitHub-flavoured markdown: a one-line verdict, the failing cases, then a table of every case."""
    mark = "✅" if result.passed else "❌"
    lines = [f"{mark} **ossbench gate {_md(result.summary())}**", ""]
    failing = [v for v in result.cases if v.failing]
    for v in failing:
        lines.append(f"- **{v.verdict}**: {_md(v.describe())}")
    for note in result.notes:
        lines.append(f"- note: {_md(note)}")
    if failing or result.notes:
        lines.append("")
    lines += ["| case | baseline | current | ratio | p | limit | verdict |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for v in result.cases:
        verdict = f"**{v.verdict}**" if v.failing else _md(_verdict_text(v))
        lines.append(f"| {_md(v.id)} | {_md(_ms(v.baseline_median_ms))} | {_md(_ms(v.current_median_ms))} | "
                     f"{_md(_ratio(v))} | {_p(v)} | {v.threshold * 100:g}% | {verdict} |")
    return "\n".join(lines) + "\n"


def gate_junit(result: GateResult) -> str:
    """JUnit XML: one testcase per case; regressions, new failures and missing cases as <failure>, cases
    that were not compared (new, skipped, failing in both runs) as <skipped>."""
    not_compared = ("new", "skipped", "still failing")
    x = printable  # XML 1.0 forbids most control characters even as character references: escape them
    suite = ET.Element("testsuite", name=x(f"ossbench gate: {result.suite}"), tests=str(len(result.cases)),
                       failures=str(sum(v.failing for v in result.cases)), errors="0",
                       skipped=str(sum(v.verdict in not_compared for v in result.cases)))
    props = ET.SubElement(suite, "properties")
    for name, value in (("baseline_device", result.baseline_device), ("current_device", result.current_device),
                        ("max_slowdown", f"{result.max_slowdown:g}"), ("alpha", f"{result.alpha:g}")):
        ET.SubElement(props, "property", name=name, value=x(value))
    for v in result.cases:
        tc = ET.SubElement(suite, "testcase", classname=x(f"ossbench.{result.suite}"), name=x(v.id))
        if v.failing:
            ET.SubElement(tc, "failure", type=v.verdict, message=x(v.describe())).text = x(v.describe())
        elif v.verdict in not_compared:
            reason = {"new": "new case: no baseline",
                      "skipped": f"skipped: {v.error or 'not compared'}",
                      "still failing": f"failing in baseline and current run: {v.error or ''}"}[v.verdict]
            ET.SubElement(tc, "skipped", message=x(reason))
        else:
            ET.SubElement(tc, "system-out").text = x(f"{v.verdict}: {v.describe()}")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_outputs(result: GateResult, *, markdown: Path | None = None, junit: Path | None = None,
                  step_summary: str | None = None) -> None:
    """Write the markdown and JUnit files; append the markdown to `step_summary` (default:
    $GITHUB_STEP_SUMMARY, which GitHub Actions sets to the job summary file)."""
    md = gate_markdown(result)
    if markdown:
        write_atomic(Path(markdown), md)
    if junit:
        write_atomic(Path(junit), gate_junit(result))
    step_summary = step_summary if step_summary is not None else os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as f:
            f.write(md + "\n")


def print_gate(result: GateResult, console: Console) -> None:
    """`ossbench gate`'s terminal output: the table, the notes, PASSED or FAILED, then each failing case."""
    console.print(gate_table(result))
    for note in result.notes:
        console.print(f"note: {printable(note)}", markup=False)
    style = "bold green" if result.passed else "bold red"
    console.print(f"[{style}]{'PASSED' if result.passed else 'FAILED'}[/]")
    for v in result.cases:
        if v.failing:
            console.print(f"  {v.verdict}: {printable(v.describe())}", markup=False)
