"""and_masks / or_masks: compose patterns; the result is again a suffix rule (see base.py).

For suffix rules the key sets [first_key(q), q] (or [first_key(q), end) when not causal) intersect to
[max of the first keys, ...] and unite to [min of the first keys, ...]; every derived fact (grid, block
mask, pairs, cache) then follows from the generic code in base.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import torch

from .base import IntOrTensor, Mask


def _reduce(parts: tuple[Mask, ...], q: IntOrTensor, pick) -> IntOrTensor:
    values = [m.first_key(q) for m in parts]
    if isinstance(q, torch.Tensor):
        return reduce(torch.maximum if pick is max else torch.minimum, values)
    return pick(values)


@dataclass(frozen=True)
class AndMasks(Mask):
    parts: tuple[Mask, ...]

    @property
    def name(self) -> str:
        return "and(" + ",".join(m.name for m in self.parts) + ")"

    @property
    def causal(self) -> bool:  # one causal part excludes the future keys
        return any(m.causal for m in self.parts)

    def first_key(self, q: IntOrTensor) -> IntOrTensor:
        return _reduce(self.parts, q, max)

    def edges(self, length: int) -> list[int]:
        return sorted({e for m in self.parts for e in m.edges(length)})


@dataclass(frozen=True)
class OrMasks(AndMasks):
    @property
    def name(self) -> str:
        return "or(" + ",".join(m.name for m in self.parts) + ")"

    @property
    def causal(self) -> bool:  # the future keys stay excluded only if every part excludes them
        return all(m.causal for m in self.parts)

    def first_key(self, q: IntOrTensor) -> IntOrTensor:
        return _reduce(self.parts, q, min)


def and_masks(*masks: Mask) -> AndMasks:
    """Pairs every mask allows, e.g. and_masks(chunked(8192), sliding_window(128))."""
    if len(masks) < 2:
        raise ValueError("and_masks needs at least two masks")
    return AndMasks(tuple(masks))


def or_masks(*masks: Mask) -> OrMasks:
    """Pairs any mask allows."""
    if len(masks) < 2:
        raise ValueError("or_masks needs at least two masks")
    return OrMasks(tuple(masks))
