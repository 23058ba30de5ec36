"""What `ossbench validate` prints for one suite: every error found (file, line, field), or its case
counts per profile, and with a device the cases a run there would skip, grouped by reason."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .errors import SuiteError, SuiteErrors
from .text import term_text

SHOWN_IDS = 3  # case ids named per skip reason; the rest are counted


def validate_lines(path: Path, device: str | None = None) -> tuple[bool, list[str], list[str]]:
    """(valid, lines for stdout, lines for stderr) of one suite file."""
    from .suite import load_suite

    try:
        suite = load_suite(path, every_error=True)
    except SuiteError as e:
        errors = e.errors if isinstance(e, SuiteErrors) else [e]
        return False, [], [f"[bold red]error:[/] {term_text(SuiteError.__str__(x))}" for x in errors]
    cpu = f", {len(suite.cases('cpu'))} in its CPU profile" if suite.spec.cpu else ""
    named = "".join(f", {len(suite.cases(name))} in profile {term_text(name)}" for name in suite.spec.profiles)
    out = [f"[green]ok[/] {term_text(str(path))}: {len(suite.cases('full'))} case(s){cpu}{named}"]
    return True, out, skip_warnings(suite, device) if device else []


def skip_warnings(suite, device: str) -> list[str]:
    """The cases of the profile a run on `device` uses that it would skip, one warning per reason."""
    from .hardware import resolve_device
    from .plan import predicted_skips

    dev = resolve_device(device)
    profile = suite.profile_for(dev.type)
    cases = suite.cases(profile)
    by_reason: dict[str, list[str]] = defaultdict(list)
    for case, reason in predicted_skips(cases, dev):
        by_reason[reason].append(case.id)
    lines = []
    for reason, ids in by_reason.items():
        shown = ", ".join(ids[:SHOWN_IDS]) + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")
        lines.append(f"[yellow]warning:[/] {term_text(str(suite.path))}: {len(ids)} of {len(cases)} case(s) of "
                     f"profile {term_text(profile)} will be skipped on {dev}: {term_text(reason)} ({term_text(shown)})")
    return lines
