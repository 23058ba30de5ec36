"""The run journal, ``journal.jsonl``: a header line (the run without its cases), then one line per case run.

A run can be killed at any moment (SIGKILL, preemption, power loss), so each line goes out whole in one
write and is fsynced before the next case starts: every line but the last is then complete, and
`load_results` drops a cut last line. A write that fails (a full disk) is cut back to the line before it,
so the journal stays valid and `ossbench run --resume` can finish the run once there is space.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from .outdir import OutputError
from .results import SCHEMA, write_atomic

JOURNAL = "journal.jsonl"


class Journal:
    """Append-only case log. Opening writes the header and any cases already known (a resumed run's)."""

    def __init__(self, path: Path, header: dict, cases: Iterable[dict] = ()) -> None:
        self.path = path
        lines = [{"journal": SCHEMA, **header}, *({"case": c} for c in cases)]
        try:  # atomically: a resumed run's old journal stays intact until the new one is complete
            write_atomic(path, "".join(json.dumps(line) + "\n" for line in lines))
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise self._error(e) from None

    def append_case(self, record: dict) -> None:
        data = memoryview((json.dumps({"case": record}) + "\n").encode())
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            while data:  # one write call unless the kernel takes only part of the line
                data = data[os.write(self._fd, data):]
            os.fsync(self._fd)
        except OSError as e:
            try:
                os.ftruncate(self._fd, start)  # drop the partial line: shrinking a file needs no space
            except OSError:
                pass  # the reader drops a cut last line anyway
            raise self._error(e) from None

    def close(self) -> None:
        os.close(self._fd)

    def _error(self, e: OSError) -> OutputError:
        return OutputError(f"{self.path}: cannot write the run's journal ({e.strerror or e}); the cases it "
                           f"already holds are kept: free some space, then `ossbench run --resume "
                           f"{self.path.parent}` runs the rest")

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
