"""Peak memory of one case: the CUDA caching allocator's peak on GPU, peak RSS growth on CPU.

On Linux the process's peak RSS (VmHWM) can be reset by writing "5" to /proc/self/clear_refs, so each case
gets its own peak instead of the process's all-time high.
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

    def read(self) -> dict:
        """Memory fields of a CaseResult (see ossbench.results.Memory)."""
        if self.device_type == "cuda":
            import torch

            torch.cuda.synchronize()
            return {"kind": "cuda", "peak_bytes": torch.cuda.max_memory_allocated() - self.start_bytes,
                    "reserved_bytes": torch.cuda.max_memory_reserved()}
        peak = peak_rss_bytes()
        growth = None if peak is None or not self.resettable else max(0, peak - self.start_bytes)
        return {"kind": "rss", "peak_bytes": growth}
