"""Peak memory of one case: the CUDA caching allocator's peak on GPU, torch's CPU allocator on CPU.

On CPU torch exposes no allocator statistics, so the case's own tensors are counted from torch.profiler's
memory events (`CpuAllocations`: every allocation and free through torch's CPU allocator while a session
is open; frees of blocks allocated before it are not reported). Two short sessions per case: the build,
and one extra call of the timed function after timing. Process warm-up (libraries paged in, malloc
arenas grown and kept, bench's flush buffer, thread pools) is not a tensor and is not counted, which the
process RSS did count: the first case of a process used to show several hundred MiB its twin did not.
The RSS figures are still recorded beside it (`rss_peak_bytes`, `timed_peak_bytes`, `rss_growth_bytes`).

On Linux the process's peak RSS (VmHWM) can be reset by writing "5" to /proc/self/clear_refs, so each case
gets its own peak instead of the process's all-time high.

The runner marks two points of a case: after the workload is built (what it holds from then on is its
persistent memory: weights, caches, inputs) and just before timing (the peak above that level while
timing is the transient memory of the timed call: activations, workspace).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .quiet import quiet_profiler

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int | None:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    try:  # not Linux: the all-time peak is the best we have (ru_maxrss is KiB on Linux, bytes on macOS)
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except (ImportError, OSError):
        return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class CpuAllocations:
    """Bytes through torch's CPU allocator while open: `live_bytes` (allocated less freed) at the end and
    `peak_bytes` (the most live at any point), both above the level at the start. From torch.profiler's
    memory events; `error` says why not when the profiler could not run (then both are None)."""

    def __init__(self) -> None:
        self.live_bytes: int | None = None
        self.peak_bytes: int | None = None
        self.error: str | None = None
        self._prof = None

    def start(self) -> "CpuAllocations":
        try:
            quiet_profiler()
            from torch.profiler import ProfilerActivity, profile

            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._prof.__enter__()
        except Exception as e:  # noqa: BLE001 - e.g. a profiler already running: the RSS figures remain
            self._prof, self.error = None, f"{type(e).__name__}: {e}"
        return self

    def stop(self) -> "CpuAllocations":
        if self._prof is None:
            return self
        try:
            self._prof.__exit__(None, None, None)
            events = [e for e in self._prof.profiler.kineto_results.events() if e.name() == "[memory]"]
            live = peak = 0
            for e in sorted(events, key=lambda e: e.start_ns()):
                if e.device_type().name == "CPU":
                    live += e.nbytes()
                    peak = max(peak, live)
            self.live_bytes, self.peak_bytes = live, peak
        except Exception as e:  # noqa: BLE001 - private profiler API changed: say so, keep the RSS figures
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self._prof = None
        return self

    def __enter__(self) -> "CpuAllocations":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def cpu_call_allocations(fn: Callable[[], object]) -> CpuAllocations:
    """Torch CPU allocator bytes of one call of fn (its result dropped inside the session)."""
    with CpuAllocations() as alloc:
        fn()
    return alloc


@dataclass
class MemoryWatch:
    """Start before a case, read after it: `peak_bytes` is the growth over the starting point."""

    device_type: str
    start_bytes: int = 0
    resettable: bool = True
    built_bytes: int | None = None  # level after the workload was built
    timing_start_bytes: int | None = None  # level just before timing
    setup_peak_bytes: int | None = None  # cuda: peak allocated before timing (build and check)
    setup_reserved_bytes: int | None = None
    build_alloc: CpuAllocations | None = field(default=None, repr=False)  # cpu: the build's tensors

    def start(self) -> "MemoryWatch":
        if self.device_type == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_bytes = torch.cuda.memory_allocated()
        else:
            self.resettable = reset_peak_rss()
            self.start_bytes = rss_bytes() or 0
            self.build_alloc = CpuAllocations().start()
        return self

    def _level(self) -> int | None:
        if self.device_type == "cuda":
            import torch

            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        return rss_bytes()

    def mark_built(self) -> None:
        """The workload is built: what it holds from here on is persistent."""
        if self.build_alloc is not None:
            self.build_alloc.stop()
        self.built_bytes = self._level()

    def mark_timing(self) -> None:
        """Timing starts now: restart the peak so that the timed phase gets its own."""
        if self.device_type == "cuda":
            import torch

            self.timing_start_bytes = self._level()
            self.setup_peak_bytes = torch.cuda.max_memory_allocated()
            self.setup_reserved_bytes = torch.cuda.max_memory_reserved()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.setup_peak_bytes = peak_rss_bytes()
            self.resettable = reset_peak_rss() and self.resettable
            self.timing_start_bytes = rss_bytes()

    def close(self) -> None:
        """End the build's allocation session if the build failed before `mark_built` (idempotent)."""
        if self.build_alloc is not None:
            self.build_alloc.stop()

    def read(self, call: CpuAllocations | None = None) -> dict:
        """Memory fields of a CaseResult (see ossbench.results.Memory). On CPU, `call` is one timed call's
        allocations (`cpu_call_allocations(fn)`); with it and the build's, the case is counted in tensors."""
        built = None if self.built_bytes is None else self.built_bytes - self.start_bytes
        if self.device_type == "cuda":
            import torch

            torch.cuda.synchronize()
            peak = max(torch.cuda.max_memory_allocated(), self.setup_peak_bytes or 0)
            out = {"kind": "cuda", "peak_bytes": peak - self.start_bytes,
                   "reserved_bytes": max(torch.cuda.max_memory_reserved(), self.setup_reserved_bytes or 0),
                   "allocated_bytes": torch.cuda.memory_allocated() - self.start_bytes,
                   "persistent_measured_bytes": built}
            if self.timing_start_bytes is not None:
                out["timed_peak_bytes"] = torch.cuda.max_memory_allocated() - self.timing_start_bytes
            return out
        peak = peak_rss_bytes()
        overall = None if peak is None else max(peak, self.setup_peak_bytes or 0)
        growth = None if overall is None or not self.resettable else max(0, overall - self.start_bytes)
        now = rss_bytes()
        out = {"kind": "rss", "peak_bytes": growth, "persistent_measured_bytes": built,
               "rss_growth_bytes": None if now is None else now - self.start_bytes, "rss_peak_bytes": growth}
        if self.timing_start_bytes is not None and peak is not None and self.resettable:
            out["timed_peak_bytes"] = max(0, peak - self.timing_start_bytes)
        b = self.build_alloc
        if b is not None and b.live_bytes is not None and call is not None and call.peak_bytes is not None:
            # The case's own tensors: what the build left plus one call's peak over it, or the build's
            # own peak (temporaries while building) where that is higher. The float64 check is not counted.
            out.update(kind="cpu_alloc", persistent_measured_bytes=b.live_bytes,
                       transient_peak_bytes=call.peak_bytes,
                       peak_bytes=max(b.peak_bytes, b.live_bytes + call.peak_bytes))
        return out
