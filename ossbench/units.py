"""How times and byte counts are written for a reader, in every view (terminal, markdown, JUnit). Kept
free of rich so the analysis modules (`gate`'s verdict lines) can use them without a renderer."""

from __future__ import annotations


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    # four significant figures: more would claim a precision the CI rarely supports
    return f"{ms * 1e3:.4g} µs" if ms < 1 else f"{ms:.4g} ms"
