"""Causal attention: a query sees itself and every earlier key."""

from __future__ import annotations

from dataclasses import dataclass

from .base import IntOrTensor, Mask, causal_pairs


@dataclass(frozen=True)
class Causal(Mask):
    @property
    def name(self) -> str:
        return "causal"

    def first_key(self, q: IntOrTensor) -> IntOrTensor:
        return q * 0  # key 0; `q * 0` keeps a tensor a tensor (flex traces this)

    def pairs(self, q_len: int, kv_len: int, q_offset: int = 0) -> int:
        if kv_len < q_offset + q_len:  # keys stop before the last query: count row by row
            return super().pairs(q_len, kv_len, q_offset)
        return causal_pairs(q_len, q_offset)

    def cache_slots(self, max_tokens: int) -> int:
        return max_tokens  # every key stays needed


def causal() -> Causal:
    return Causal()
