"""Chunked attention (Llama 4's local-attention layers): a query sees the earlier keys of its own chunk.

Positions 0..C-1 form chunk 0, C..2C-1 chunk 1, and so on; query q sees keys (q // C) * C .. q. Unlike a
sliding window the visible span restarts at every chunk boundary: the first token of a chunk sees only
itself. A decode step at position p needs only the keys of p's chunk, so the cache is a ring of C slots
in which p's chunk occupies slots 0..p % C.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import IntOrTensor, Mask, causal_pairs


@dataclass(frozen=True)
class Chunked(Mask):
    chunk: int

    def __post_init__(self) -> None:
        if not isinstance(self.chunk, int) or self.chunk <= 0:
            raise ValueError(f"chunk must be a positive int, got {self.chunk!r}")

    @property
    def name(self) -> str:
        return f"chunk{self.chunk}"

    def first_key(self, q: IntOrTensor) -> IntOrTensor:
        return (q // self.chunk) * self.chunk

    def edges(self, length: int) -> list[int]:
        starts = {self.chunk, 2 * self.chunk, (length - 1) // self.chunk * self.chunk}  # first chunks, the last
        return sorted(e for e in starts if 0 < e < length)

    def pairs(self, q_len: int, kv_len: int, q_offset: int = 0) -> int:
        if kv_len < q_offset + q_len:
            return super().pairs(q_len, kv_len, q_offset)
        C = self.chunk

        def rows_before(n: int) -> int:  # pairs of rows 0..n-1: row q sees q % C + 1 keys
            return (n // C) * causal_pairs(C) + causal_pairs(n % C)

        return rows_before(q_offset + q_len) - rows_before(q_offset)

    def cache_slots(self, max_tokens: int) -> int:
        return min(self.chunk, max_tokens)


def chunked(chunk: int) -> Chunked:
    return Chunked(chunk)
