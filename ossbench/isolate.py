"""Per-case process isolation (`ossbench run --isolate`, docs/isolation.md).

Each case runs in a child process under a wall-clock timeout, so a case that crashes the interpreter,
hangs, or leaves the CUDA context unusable costs only itself: it is recorded as `failed` with the reason
and the tail of the child's output, and the next case runs in a fresh child.

One worker process is reused while its cases end `ok` or `skipped` (so torch is imported once, not once
per case); after any other outcome it is stopped and the next case gets a new one, leaving behind whatever
the failure broke (a lost CUDA context, a fragmented allocator, a stuck thread). A worker is a fresh
interpreter (`python -c`), never a fork (CUDA cannot be used in a forked child), and unlike multiprocessing's
"spawn" it does not re-run the caller's main script, so a script without an `if __name__ == "__main__"`
guard works too. Cases and results travel pickled over two pipes; the worker's stdout and stderr go to a log
file. Each worker leads its own process group, so a timeout also kills the processes it started.

This module never imports the runner: the function that runs one case is handed in (the runner hands in
`run_case`), which keeps the import direction runner -> isolate.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from .hardware import Device, resolve_device
from .results import CaseResult
from .suite import Case, Timing
from .workloads import case_seed

RunCase = Callable[[Case, Device, Timing, Any], CaseResult]  # run_case(case, device, timing, measure)

COMPILE_ALLOWANCE_S = 120.0  # default timeout = 10 x max_time_s + this (warm-up, torch.compile, autotuning)
STARTUP_TIMEOUT_S = 300.0  # spawn + `import torch` on a cold, loaded machine; not charged to any case
TAIL_LINES = 20  # lines of the child's output attached to a case that killed or hung its worker
STACK_LINES = 40  # lines of a hung child's Python stacks (innermost frames first) attached to its case
_STACK_WAIT_S = 1.0  # how long a hung child gets to write its stacks before it is killed
_REAP_WAIT_S = 10.0  # how long to wait for a killed worker to be reaped
_EXIT_WAIT_S = 5.0  # a child whose pipe closed gets this long to finish exiting (its exit status says why)
_POLL_S = 0.25  # how often a wait checks that the worker is still alive (a forked grandchild can hold its pipe)


def default_isolation(device: Device, n_cases: int) -> bool:
    """Isolation is on by default where a crash is likeliest to poison later cases: CUDA, several cases."""
    return device.is_cuda and n_cases > 1


def case_timeout(timing: Timing) -> float:
    """`timing.case_timeout_s`, else 10 x the timer's budget plus a compile allowance."""
    if timing.case_timeout_s is not None:
        return timing.case_timeout_s
    return 10 * timing.max_time_s + COMPILE_ALLOWANCE_S


class IsolatedRunner:
    """Runs cases one at a time in a child process. Use as a context manager: the last worker is stopped
    on exit (also on Ctrl-C, which reaches only this process since the worker has its own session)."""

    def __init__(self, run_case: RunCase, device: Device | str, timing: Timing, measure: Any) -> None:
        self.timeout_s = case_timeout(timing)
        # An open NVML handle cannot cross processes: the worker opens its own for the same GPU. The Device
        # itself is plain data and travels to the worker as it is.
        device = resolve_device(device)
        nvml_index = device.index if getattr(measure, "nvml_device", None) is not None else None
        if measure is not None:
            measure = replace(measure, nvml_device=None)
        self._args = (run_case, device, timing, measure, nvml_index)
        self._logs = tempfile.TemporaryDirectory(prefix="ossbench-isolate-")
        self._worker: _Worker | None = None
        self._count = 0  # workers started so far (names their log files)

    def __enter__(self) -> IsolatedRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._retire()
        self._logs.cleanup()

    def run(self, case: Case) -> CaseResult:
        """Run one case in the worker (starting one if needed). Never raises for a failure of the case."""
        started = time.perf_counter()
        if self._worker is None:
            self._count += 1
            self._worker = _Worker(self._args, Path(self._logs.name) / f"worker-{self._count}.log")
            problem = self._worker.wait_ready(STARTUP_TIMEOUT_S)
            if problem:
                return self._give_up(case, f"the isolated worker did not start: {problem}", 0, started)
        worker = self._worker
        offset, started = worker.log_size(), time.perf_counter()  # the worker's start-up is not the case's
        kind, payload = worker.run(case, self.timeout_s)
        if kind == "result":
            result = CaseResult.model_validate(payload)
            if result.status not in ("ok", "skipped"):
                self._retire()  # whatever broke stays with this process; the next case gets a fresh one
            return result
        if kind == "error":  # run_case itself raised (it should not): the worker's own failure
            text, is_oom = payload
            return self._give_up(case, f"isolated worker: {text}", offset, started, "oom" if is_oom else "failed")
        if kind == "timeout":
            stacks = worker.dump_stacks()
            return self._give_up(case, f"timed out after {self.timeout_s:g} s (timing.case_timeout_s); "
                                       f"the child was killed", offset, started, stacks=stacks)
        return self._give_up(case, payload, offset, started)  # "died": payload says how

    def _give_up(self, case: Case, reason: str, offset: int, started: float, status: str = "failed",
                 stacks: int | None = None) -> CaseResult:
        """Record the case as failed by its worker, with the tail of what the worker wrote since `offset`
        (and, for a hung one, the stacks it wrote from log offset `stacks` on); retire the worker."""
        worker = self._worker
        error = reason
        if worker is not None:
            worker.kill()
            # faulthandler's one-line list of extension modules after a crash says nothing about the case
            tail = [line for line in worker.log_lines(offset, stacks)
                    if not line.startswith("Extension modules: ")][-TAIL_LINES:]
            if tail:
                error += "\n--- last lines of the child's output ---\n" + "\n".join(tail)
            where = worker.log_lines(stacks)[:STACK_LINES] if stacks is not None else []
            if where:
                error += "\n--- the child's Python stacks when it was killed ---\n" + "\n".join(where)
            self._worker = None
        return CaseResult(id=case.id, family=case.family, variant=case.variant, axes=case.axes_dict,
                          params=case.params_dict, dtype=case.dtype, seed=case_seed(case.id), status=status,
                          error=error, duration_s=time.perf_counter() - started)  # the seed the child used

    def _retire(self) -> None:
        if self._worker is not None:
            self._worker.kill()  # nothing in it is worth a graceful exit (which costs seconds with torch loaded)
            self._worker = None


class _Worker:
    """One child interpreter, the parent's ends of its two pipes, and its log file."""

    def __init__(self, args: tuple, log_path: Path) -> None:
        self.log_path = log_path
        requests_r, requests_w = os.pipe()
        results_r, results_w = os.pipe()
        # The child imports what this process can: ossbench, and the run function's own module.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if isinstance(p, str) and p)}
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from ossbench.isolate import child_main; "
                 "child_main(int(sys.argv[1]), int(sys.argv[2]))", str(requests_r), str(results_w)],
                pass_fds=(requests_r, results_w), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=env, start_new_session=True)  # its own process group, killed as one; Ctrl-C stays ours
        os.close(requests_r)
        os.close(results_w)  # only the child writes results now, so its death reads as end of file
        self._requests = os.fdopen(requests_w, "wb")
        self._results = os.fdopen(results_r, "rb", buffering=0)  # unbuffered: select() sees every byte
        self._reaped = False
        self._send(args)

    def wait_ready(self, timeout_s: float) -> str | None:
        """None once the child has imported what it needs, else what went wrong."""
        kind, payload = self._receive(timeout_s)
        if kind == "ready":
            return None
        if kind == "timeout":
            return f"no sign of life after {timeout_s:g} s"
        return str(payload)

    def run(self, case: Case, timeout_s: float) -> tuple[str, Any]:
        """("result", CaseResult dict) | ("error", (text, is_oom)) | ("timeout", None) | ("died", why)."""
        if not self._send(case):
            return "died", self._death()  # it died between cases
        return self._receive(timeout_s)

    def _send(self, obj: Any) -> bool:
        try:
            pickle.dump(obj, self._requests, protocol=pickle.HIGHEST_PROTOCOL)
            self._requests.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def _receive(self, timeout_s: float) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if select.select([self._results], [], [], max(0.0, min(_POLL_S, left)))[0]:
                try:
                    return pickle.load(self._results)
                except (EOFError, pickle.UnpicklingError, OSError):
                    return "died", self._death()  # its end closed: it exited, or died mid-message
            if self._exited():
                return "died", self._death()
            if left <= 0:
                return "timeout", None

    def _exited(self) -> bool:
        """Whether the child has exited, without reaping it (so its pid stays its process group's id)."""
        if not hasattr(os, "waitid"):
            return self.process.poll() is not None
        try:
            return os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _death(self) -> str:
        deadline = time.monotonic() + _EXIT_WAIT_S
        while not self._exited() and time.monotonic() < deadline:
            time.sleep(0.05)  # its pipe closes a moment before it exits: killing it now would hide why
        self.kill()  # what it started may outlive it; this reaps it too
        code = self.process.returncode
        if code is None:
            return "the child closed its pipe but did not exit"
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (killed from outside, e.g. by the kernel's out-of-memory killer)" if name == "SIGKILL" else ""
            return f"child died (signal {name}){hint}"
        return f"child exited with code {code}"

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_lines(self, start: int, end: int | None = None) -> list[str]:
        """The lines the child wrote between two byte offsets of its log (to the end without `end`)."""
        with self.log_path.open("rb") as f:
            f.seek(start)
            text = f.read(-1 if end is None else max(0, end - start)).decode("utf-8", errors="replace")
        return text.rstrip().splitlines()

    def dump_stacks(self) -> int | None:
        """Ask a hung child to write its Python stacks to its log (faulthandler, on SIGUSR1); the log
        offset where they start, or None where this platform has no SIGUSR1."""
        if not hasattr(signal, "SIGUSR1"):
            return None
        start = self.log_size()
        try:
            os.kill(self.process.pid, signal.SIGUSR1)
        except ProcessLookupError:
            return None
        time.sleep(_STACK_WAIT_S)  # written from the signal handler, even while Python waits in C code
        return start

    def kill(self) -> None:
        """Kill the child and its process group (a no-op once it has been reaped), then reap it."""
        if not self._reaped:
            # Until the child is reaped (only `_reap` does that) its pid is its process group's id and
            # cannot belong to anyone else; the group holds whatever the case started.
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, AttributeError):
                self.process.kill()  # no process groups on this platform
        self._reap()
        for pipe in (self._requests, self._results):
            try:
                pipe.close()
            except OSError:
                pass  # a request the dead child never read

    def _reap(self) -> None:
        try:
            self.process.wait(_REAP_WAIT_S)
        except subprocess.TimeoutExpired:
            return
        self._reaped = True


def child_main(requests_fd: int, results_fd: int) -> None:
    """The worker (started by `_Worker`): run each case it receives until the pipe closes."""
    import faulthandler

    faulthandler.enable()  # a segfault writes the Python stack to the log before the process dies
    if hasattr(faulthandler, "register") and hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1)  # a timeout first asks for the stacks: where did it hang?
    requests, results = os.fdopen(requests_fd, "rb"), os.fdopen(results_fd, "wb")

    def send(message: tuple) -> None:
        pickle.dump(message, results, protocol=pickle.HIGHEST_PROTOCOL)
        results.flush()

    run_case, device, timing, measure, nvml_index = pickle.load(requests)  # imports run_case's module

    # What every case needs, imported once here so that no case's timeout pays for it.
    import torch  # noqa: F401

    from . import workloads  # noqa: F401
    from .measure import memory, timer  # noqa: F401

    if nvml_index is not None:
        measure = replace(measure, nvml_device=_open_nvml(nvml_index))
    send(("ready", None))
    while True:
        try:
            case = pickle.load(requests)
        except EOFError:
            return  # the parent is done (or gone)
        try:
            result = run_case(case, device, timing, measure)
            send(("result", result.model_dump()))
        except BaseException as e:  # noqa: BLE001 - run_case never raises for a case: this is the worker's failure
            send(("error", (f"{type(e).__name__}: {e}", isinstance(e, MemoryError))))
            return


def _open_nvml(index: int):
    from .measure.nvml import NvmlUnavailable, open_device

    try:
        return open_device(index)
    except NvmlUnavailable:
        return None
