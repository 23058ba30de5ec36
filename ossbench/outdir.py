"""Where ossbench writes: paths checked before any work, and a run's output folder locked while it runs.

A run can take hours; finding only at the end that `results.json` cannot be written (a read-only
filesystem, a directory of that name, a file where a folder should be) would lose all of it. So every
path is checked first, with a real write. Two runs into one folder would overwrite each other's journal
and results, so a run holds a lock file in its folder (`filelock`: flock on POSIX) for as long as it runs.
"""

from __future__ import annotations

import os
import socket
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from .errors import UserError

RUN_FILES = ("results.json", "report.html", "journal.jsonl")  # what a run writes into its folder
LOCK = ".ossbench.lock"  # held (flock) while a run uses the folder
OWNER = ".ossbench.owner"  # who holds the lock: "pid P on HOST since TIME", for the refusal message


class OutputError(UserError):
    """A path ossbench must write to but cannot (exit code 2): named, with the reason."""


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """Fail now, not after the work, when `path` (the value of `option`, e.g. ``--junit``) cannot be written."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{option} {p}: is a directory, not a file")
    _probe_dir(_nearest_existing(p.parent), p, option)
    return p


def check_out_dir(out: str | os.PathLike) -> Path:
    """Create the output folder and prove a file can be written in it; its run files must not be folders."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"--out {out}: exists and is not a directory") from None
    except NotADirectoryError:
        raise OutputError(f"--out {out}: cannot create the output directory, {_nearest_existing(out)} is a "
                          f"file, not a directory") from None
    except OSError as e:  # read-only filesystem, no permission
        raise OutputError(f"--out {out}: cannot create the output directory ({_reason(e)})") from None
    for name in RUN_FILES:
        if (out / name).is_dir():
            raise OutputError(f"{out / name}: is a directory, and the run writes its {name} there; "
                              f"remove it or choose another --out")
    _probe_dir(out, out, "--out")
    return out


_held: dict[str, int] = {}  # folders this process has claimed, and how many times (claims nest)


@contextmanager
def claim_out_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Check the folder and hold its lock while the block runs; another process's claim fails at once.

    Claims nest within one process (the CLI holds the folder over run and report; the runner claims too).
    """
    from filelock import FileLock, Timeout

    out = Path(out)
    key = str(out.resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield out
        finally:
            _held[key] -= 1
        return
    check_out_dir(out)
    lock = FileLock(str(out / LOCK))
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise OutputError(f"--out {out}: another ossbench run is writing there ({_holder(out)}); wait for it "
                          f"to finish or choose another --out") from None
    owner = out / OWNER
    try:
        owner.write_text(f"pid {os.getpid()} on {socket.gethostname()} since "
                         f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n", encoding="utf-8")
    except OSError:
        pass  # only the refusal message of a second run needs it
    _held[key] = 1
    try:
        yield out
    finally:
        del _held[key]
        owner.unlink(missing_ok=True)
        lock.release()


def _holder(out: Path) -> str:
    try:
        return out.joinpath(OWNER).read_text(encoding="utf-8").strip() or "pid unknown"
    except OSError:
        return "pid unknown"  # it has the lock but has not written its owner file yet


def _nearest_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_dir(directory: Path, target: Path, option: str) -> None:
    """Write, fsync and remove a small file in `directory`: a read-only or full filesystem fails here."""
    if not directory.is_dir():
        raise OutputError(f"{option} {target}: cannot create it, {directory} is a file, not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".ossbench-probe-") as f:
            f.write(b"ossbench\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OutputError(f"{option} {target}: cannot write in {directory} ({_reason(e)})") from None


def _reason(e: OSError) -> str:
    return e.strerror or str(e)
