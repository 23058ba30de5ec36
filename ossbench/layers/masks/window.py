"""Causal sliding window (gpt-oss, Mistral): a query sees itself and the window-1 keys before it.

gpt-oss's 128-token window is FlashAttention's window_size=(127, 0). A decode step at position p needs
keys p-W+1..p, so the cache is a ring of W slots.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import IntOrTensor, Mask, causal_pairs


@dataclass(frozen=True)
class SlidingWindow(Mask):
    window: int

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window <= 0:
            raise ValueError(f"window must be a positive int, got {self.window!r}")

    @property
    def name(self) -> str:
        return f"window{self.window}"

    def first_key(self, q: IntOrTensor) -> IntOrTensor:
        return q - (self.window - 1)

    def edges(self, length: int) -> list[int]:
        return [self.window] if self.window < length else []  # the first row that no longer sees key 0

    def pairs(self, q_len: int, kv_len: int, q_offset: int = 0) -> int:
        if kv_len < q_offset + q_len:
            return super().pairs(q_len, kv_len, q_offset)
        W = self.window

        def rows_before(n: int) -> int:  # pairs of rows 0..n-1: row q sees min(q + 1, W) keys
            return causal_pairs(n) if n <= W else causal_pairs(W) + (n - W) * W

        return rows_before(q_offset + q_len) - rows_before(q_offset)

    def cache_slots(self, max_tokens: int) -> int:
        return min(self.window, max_tokens)


def sliding_window(window: int) -> SlidingWindow:
    return SlidingWindow(window)
