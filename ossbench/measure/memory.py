"""Peak memory of one case: the CUDA caching allocator's peak on GPU, peak RSS growth on CPU.

On Linux the process's peak RSS (VmHWM) can be reset by writing "5" to /proc/self/clear_refs, so each case
gets its own peak instead of the process's all-time high.

The runner marks two points of a case: after the workload is built (what it holds from then on is its
persistent memory: weights, caches, inputs) and just before timing (the peak above that level while
timing is the transient memory of the timed call: activations, workspace).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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

    def start(self) -> "MemoryWatch":
        if self.device_type == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_bytes = torch.cuda.memory_allocated()
        else:
            self.resettable = reset_peak_rss()
            self.start_bytes = rss_bytes() or 0
        return self

    def _level(self) -> int | None:
        if self.device_type == "cuda":
            import torch

            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        return rss_bytes()

    def mark_built(self) -> None:
        """The workload is built: what it holds from here on is persistent."""
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

    def read(self) -> dict:
        """Memory fields of a CaseResult (see ossbench.results.Memory)."""
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
               "rss_growth_bytes": None if now is None else now - self.start_bytes}
        if self.timing_start_bytes is not None and peak is not None and self.resettable:
            out["timed_peak_bytes"] = max(0, peak - self.timing_start_bytes)
        return out
