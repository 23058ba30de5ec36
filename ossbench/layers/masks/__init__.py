"""Attention masks (attention-gym style): one small file per pattern, combinators, and this catalogue.

A `Mask` owns its dense grid (`allowed`), its FlexAttention `mask_mod` and `block_mask`, its pair count
(`pairs`, the cost model) and its decode retention (`keep`, `cache_slots`: the KV-cache ring). Masks name
themselves (`sliding_window(128).name == "window128"`) and `parse(name)` reads a name back, so a suite can
say `mask: window128` and a result labels itself. See docs/masks.md for adding a pattern.
"""

from __future__ import annotations

import re
from typing import Callable

from .base import Mask
from .causal import Causal, causal
from .chunked import Chunked, chunked
from .combine import AndMasks, OrMasks, and_masks, or_masks
from .full import Full, full
from .window import SlidingWindow, sliding_window

# name prefix -> builder; a builder with a parameter takes one positive int, written after the prefix
PATTERNS: dict[str, Callable[..., Mask]] = {
    "causal": causal,
    "full": full,
    "window": sliding_window,
    "chunk": chunked,
}
COMBINATORS: dict[str, Callable[..., Mask]] = {"and": and_masks, "or": or_masks}


def parse(name: str) -> Mask:
    """The mask a name describes: `causal`, `window128`, `and(causal,window128)` (the inverse of .name)."""
    text = name.replace(" ", "")
    combo = re.fullmatch(r"([a-z]+)\((.*)\)", text)
    if combo and combo.group(1) in COMBINATORS:
        return COMBINATORS[combo.group(1)](*(parse(part) for part in _split_arguments(combo.group(2), name)))
    simple = re.fullmatch(r"([a-z_]+?)(\d*)", text)
    builder = PATTERNS.get(simple.group(1)) if simple else None
    if builder is None:
        raise ValueError(f"unknown mask {name!r}; known patterns: {', '.join(PATTERNS)} (a parameter follows "
                         f"the name, e.g. window128), combined with {', '.join(f'{c}(a,b)' for c in COMBINATORS)}")
    try:
        return builder(int(simple.group(2))) if simple.group(2) else builder()
    except TypeError:
        needs = "takes no number" if simple.group(2) else "needs a number after its name (e.g. window128)"
        raise ValueError(f"mask {name!r}: pattern {simple.group(1)!r} {needs}") from None


def _split_arguments(text: str, name: str) -> list[str]:
    """Split `a,b(c,d),e` at the commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            break
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"mask {name!r}: unbalanced parentheses")
    return [*parts, text[start:]]


def layer_mask(*, causal: bool = True, window: int | None = None, mask: Mask | None = None) -> Mask:
    """The mask of an attention layer from its arguments: `mask` if given, else `window` (a convenience for
    sliding_window(window)), else causal or full. A window and a mask together are refused: combine them
    explicitly with and_masks."""
    if mask is not None:
        if window is not None:
            raise ValueError(f"give a window or a mask, not both (window {window} is the mask window{window}; "
                             f"combine patterns with and_masks)")
        if mask.causal != causal:
            raise ValueError(f"mask {mask.name} is {'' if mask.causal else 'not '}causal but causal is {causal}")
        return mask
    if window is not None:
        if not causal:
            raise ValueError("a sliding window is defined here only for causal attention")
        return sliding_window(window)
    return Causal() if causal else Full()  # (`causal` the builder is shadowed by the keyword here)

__all__ = [
    "Mask", "PATTERNS", "COMBINATORS", "parse", "layer_mask",
    "Causal", "causal", "Full", "full", "SlidingWindow", "sliding_window", "Chunked", "chunked",
    "AndMasks", "OrMasks", "and_masks", "or_masks",
]
