"""README and CI must not drift apart: CI runs the README's test command, the docs name real commands."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from ossbench.cli import main

ROOT = Path(__file__).parent.parent


def _fenced_commands(text: str) -> list[str]:
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]


def test_ci_runs_the_readme_test_command():
    readme = _fenced_commands((ROOT / "README.md").read_text())
    test_cmd = next(c for c in readme if "pytest" in c and c.startswith("python3 -m venv"))
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
    assert any(c.endswith("ossbench run suites/attention.yaml") and c.startswith("python3 -m venv") for c in readme)


def test_every_subcommand_in_the_readme_tour_exists():
    names = set(main.commands)
    used = {m.group(1) for m in re.finditer(r"^ossbench (\w+)", (ROOT / "README.md").read_text(), re.M)}
    assert used and used <= names, used - names
    for name in used:
        assert CliRunner().invoke(main, [name, "--help"]).exit_code == 0
