"""How a case's failure is classified (failed / oom / a lost CUDA context) and described in one line."""

from __future__ import annotations

import traceback
from pathlib import Path

# CUDA errors after which the process's context is unusable (every later launch fails with the same error)
_FATAL_CUDA = ("illegal memory access", "device-side assert", "unspecified launch failure",
               "misaligned address", "illegal instruction")

# What an exhausted allocator says: CUDA's "out of memory", and the CPU allocator's RuntimeError
# ("DefaultCPUAllocator: not enough memory: you tried to allocate ...").
_OOM_TEXT = ("out of memory", "not enough memory")


class NumericsMismatch(Exception):
    """A backend's output differs from its reference beyond the tolerance."""


def context_lost(error: str | None) -> bool:
    return bool(error) and any(text in error.lower() for text in _FATAL_CUDA)


def is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(e).lower()
    return any(t in text for t in _OOM_TEXT)


def describe(e: BaseException) -> str:
    """`Type: message (at file.py:line)`; a numerics mismatch is its own message."""
    if isinstance(e, NumericsMismatch):
        return str(e)
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(e).__name__}: {e}{where}"
