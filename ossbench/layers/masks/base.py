"""The Mask value: which keys each query may see, and every fact that follows from that.

Every pattern in this package is a *suffix rule*: query position q sees the keys from `first_key(q)` up to
q itself (causal patterns) or up to the last key (the non-causal `full`), where

- first_key(q) <= q (a query always sees itself) and
- first_key is non-decreasing in q (a later query never needs a key that an earlier one dropped).

From that one function follow the dense grid (eager, SDPA, the float64 reference), the FlexAttention
mask_mod and its block mask (see blocks.py), the number of allowed pairs (the cost model) and which keys a
decode step must keep (the KV-cache ring and its size). A pattern may override `pairs` and `cache_slots`
with a closed form; the generic versions below are exact for any suffix rule and cost O(rows).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

IntOrTensor = Any  # a python int or an int64 tensor of positions (flex passes 0-d tensors)


class Mask(ABC):
    """Base class of the patterns; concrete ones are frozen dataclasses, so equal masks compare equal."""

    causal: bool = True  # False only for `full`: a query also sees the keys after it

    @property
    @abstractmethod
    def name(self) -> str:
        """The self-describing label (`causal`, `window128`, `and(window128,chunk8192)`); parse() reads it back."""

    @abstractmethod
    def first_key(self, q: IntOrTensor) -> IntOrTensor:
        """The earliest key position query position `q` sees (may be negative: then every key from 0)."""

    def edges(self, length: int) -> list[int]:
        """A few query positions below `length` where the pattern changes (numerics checks probe them)."""
        return []

    # --- the rule itself
    def rule(self, q: IntOrTensor, k: IntOrTensor) -> IntOrTensor:
        """Elementwise: may query position q see key position k? Traceable by torch.compile (flex)."""
        seen = k >= self.first_key(q)
        return seen & (k <= q) if self.causal else seen

    def allowed(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """The dense grid [len(q_pos), len(k_pos)] of booleans (eager, SDPA, float64 references)."""
        return self.rule(q_pos[:, None], k_pos[None, :])

    def mask_mod(self, b, h, q_idx, kv_idx):
        """FlexAttention's mask_mod signature (queries and keys both counted from position 0)."""
        return self.rule(q_idx, kv_idx)

    def block_mask(self, q_len: int, kv_len: int, *, device: Any, valid_keys: int | None = None,
                   q_offset: int = 0, block: int | None = None):
        """A flex BlockMask built per block from first_key (never all q_len*kv_len pairs); see blocks.py."""
        from .blocks import FLEX_BLOCK, suffix_block_mask
        return suffix_block_mask(self, q_len, kv_len, device=device, valid_keys=valid_keys, q_offset=q_offset,
                                 block=block or FLEX_BLOCK)

    # --- the cost model
    def pairs(self, q_len: int, kv_len: int, q_offset: int = 0) -> int:
        """Allowed (query, key) pairs for queries at positions q_offset.. over keys at positions 0..kv_len-1."""
        q = torch.arange(q_offset, q_offset + q_len, dtype=torch.int64)
        first = torch.as_tensor(self.first_key(q)).clamp(min=0)
        last = q.clamp(max=kv_len - 1) if self.causal else torch.full_like(q, kv_len - 1)
        return int((last - first + 1).clamp(min=0).sum())

    # --- decode retention: the KV cache
    def keep(self, p: int) -> range:
        """Key positions a decode step at position p attends to; no later step needs an earlier key, so a
        cache may drop everything before them."""
        self._require_causal()
        return range(max(int(self.first_key(p)), 0), p + 1)

    def cache_slots(self, max_tokens: int) -> int:
        """Slots of a ring cache (position p in slot p % slots) that serves every position < max_tokens."""
        self._require_causal()
        p = torch.arange(max_tokens, dtype=torch.int64)
        return int((p - torch.as_tensor(self.first_key(p)).clamp(min=0) + 1).max())

    def _require_causal(self) -> None:
        if not self.causal:
            raise ValueError(f"mask {self.name} is not causal: a KV cache needs causal attention")

    def __str__(self) -> str:
        return self.name


def causal_pairs(q_len: int, q_offset: int = 0) -> int:
    """Pairs of plain causal attention when the keys cover every query: rows see q+1 keys."""
    end = q_offset + q_len
    return end * (end + 1) // 2 - q_offset * (q_offset + 1) // 2
