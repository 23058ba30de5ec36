"""Names made safe to print: control, bidi and unencodable characters become visible escapes everywhere."""

from __future__ import annotations

from rich.console import Console

from ossbench.results import CaseResult, Environment, RunResult, SuiteInfo
from ossbench.summary import cases_table, pairs_table
from ossbench.text import printable, term_text


def test_printable_escapes_controls_and_keeps_other_text():
    assert printable("a\x1b[31mb") == "a\\x1b[31mb"
    assert printable("\x00\x07\t\n\x7f\x9b") == "\\x00\\x07\\x09\\x0a\\x7f\\x9b"
    assert printable("\u202eevil\u2066\ud800") == "\\u202eevil\\u2066\\ud800"
    assert printable("attention/window128-gqa/seq_len=4096 é µs ✅") == "attention/window128-gqa/seq_len=4096 é µs ✅"
    assert printable(3) == "3"


def test_term_text_escapes_rich_markup_too():
    console = Console(record=True, width=200, force_terminal=True, color_system="truecolor")
    console.print(term_text("[red]x[/] \x1b[2J"))
    text = console.export_text()
    assert "[red]x[/] \\x1b[2J" in text


def test_summary_tables_show_escapes_not_raw_controls():
    run = RunResult(
        suite=SuiteInfo(name="s\x1b[5m", path="s.yaml", sha256="0" * 64, family="attention", preset="p"),
        environment=Environment(device_type="cpu", device_name="cpu", python="3.11", platform="linux",
                                host="h", ossbench_version="0.1.0", start_time="2026-01-01T00:00:00+00:00"))
    run.cases.append(CaseResult(id="attention/\x1b]8;;http://evil\x07x/s=1", family="attention", variant="x",
                                dtype="float32", status="failed", error="boom \x1b[2J"))
    console = Console(file=open("/dev/null", "w"), record=True, width=250)
    console.print(cases_table(run))
    out = console.export_text()
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]8;;http://evil\\x07x" in out and "boom \\x1b[2J" in out and "s\\x1b[5m" in out
    console.print(pairs_table([]))  # renders (no names to escape) without error
