"""Keep torch.profiler's own chatter off the terminal: what it prints to stderr around a session.

Two sources, both written by C++ straight to file descriptor 2 (so `contextlib.redirect_stderr` misses them):
kineto's `profiler_start` / `profiler_stop` lines (two per session: about 50 in a `--profile` run) and the
CPU allocator's warning, once per process, when a block allocated before a memory-profiling session is
freed inside it. `quiet_profiler` runs before a process's first session: it sets `KINETO_LOG_LEVEL` above
kineto's highest level (kineto reads it once, when it first starts; a value the user set wins), then runs
one empty session inside `filtered_stderr`, so that kineto's start-up and the allocator's one warning
happen there. Real sessions are not filtered: a case that hangs inside one must still leave its stack dump
(faulthandler, written to stderr) for the isolation's report.
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


_primed = False


def quiet_kineto() -> None:
    """Ask kineto to print nothing; must run before the process's first profiler session to take effect."""
    os.environ.setdefault("KINETO_LOG_LEVEL", KINETO_QUIET_LEVEL)


def quiet_profiler() -> None:
    """Call before opening a torch.profiler session (once per process does the work; then it returns)."""
    global _primed
    if _primed:
        return
    _primed = True
    quiet_kineto()
    import torch
    from torch.profiler import ProfilerActivity, profile

    held = [torch.empty(1)]
    with filtered_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True):
        held.clear()  # a block from before the session freed inside it: the allocator's one warning, here


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
