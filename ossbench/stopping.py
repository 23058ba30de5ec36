"""Stop a run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's kill): finish the case in flight, then stop.

The runner checks the request between cases and records the cases it did not start as ``skipped``
("interrupted ..."); a second signal stops at once (KeyboardInterrupt), the journal keeping every finished case.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED = "interrupted"  # how the error of a case the stop left unstarted begins


@dataclass
class StopRequest:
    signum: int | None = None  # the first stop signal received

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def reason(self) -> str:
        return f"{INTERRUPTED} ({self.name}) before this case started"

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@contextmanager
def stop_on_signals(on_first: Callable[[StopRequest], None] | None = None) -> Iterator[StopRequest]:
    """While the block runs, SIGINT/SIGTERM set the request (and call `on_first` once); a second one raises
    KeyboardInterrupt. Outside the main thread signals cannot be caught, and the request stays unset."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum, frame) -> None:
        if request.requested:
            raise KeyboardInterrupt  # asked twice: stop now
        request.signum = signum
        if on_first:
            on_first(request)

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
