"""Keep torch.profiler's own chatter off the terminal: what it prints to stderr around a session.

Two sources, both written by C++ straight to file descriptor 2 (so `contextlib.redirect_stderr` misses them):
kineto's `profiler_start` / `profiler_stop` lines (two per session: about 50 in a `--profile` run) and the
CPU allocator's warning when a block allocated before the session is freed inside it. Kineto reads
`KINETO_LOG_LEVEL` once, when it first starts in a process: `quiet_kineto` sets it above kineto's highest
level (unless the user set it). `filtered_stderr` catches what is printed anyway (kineto started before, or
the allocator warning) and passes every other line through unchanged, after the session.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

KINETO_QUIET_LEVEL = "6"  # kineto's levels run VERBOSE=0 .. USDT=5: 6 prints none of them
NOISE = re.compile(r"^(USDT|STAGE|INFO|WARNING):.*(ActivityProfiler|profiler_st|Profiler)"
                   r"|Memory block of unknown size was allocated before the profiling started")


def quiet_kineto() -> None:
    """Ask kineto to print nothing; must run before the process's first profiler session to take effect."""
    os.environ.setdefault("KINETO_LOG_LEVEL", KINETO_QUIET_LEVEL)


@contextmanager
def filtered_stderr() -> Iterator[None]:
    """Hold what is written to fd 2 inside the block; afterwards write it back without the profiler's noise.

    File descriptor 2 itself, whatever `sys.stderr` is (pytest, a notebook and rich replace it)."""
    fd = 2
    try:
        sys.stderr.flush()
        saved = os.dup(fd)
    except (OSError, ValueError):  # no fd 2 (an embedding): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), fd)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, fd)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True)
                    if not NOISE.search(line.decode("utf-8", "replace"))]
            out = memoryview(b"".join(kept))
            while out:
                out = out[os.write(fd, out):]
