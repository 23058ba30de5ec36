"""Full (bidirectional, non-causal) attention: every query sees every key. No decode against a cache."""

from __future__ import annotations

from dataclasses import dataclass

from .base import IntOrTensor, Mask


@dataclass(frozen=True)
class Full(Mask):
    causal = False

    @property
    def name(self) -> str:
        return "full"

    def first_key(self, q: IntOrTensor) -> IntOrTensor:
        return q * 0

    def pairs(self, q_len: int, kv_len: int, q_offset: int = 0) -> int:
        return q_len * kv_len

    def cache_slots(self, max_tokens: int) -> int:
        return max_tokens  # every key stays needed (though the layer refuses decoding against a cache)


def full() -> Full:
    return Full()
