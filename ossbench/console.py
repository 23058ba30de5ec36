"""The rich consoles the command line prints to (shared by `cli` and the commands registered from their
own modules, such as `cli_history`)."""

from __future__ import annotations

import os
import sys


def console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped to a file or CI log: rich would assume 80 columns and fold every case id; logs read better wide.
    width = None if stream.isatty() or "COLUMNS" in os.environ else 160
    return Console(stderr=stderr, highlight=False, width=width)
