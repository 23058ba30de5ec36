"""An attention backend for ossbench from outside the project: torch SDPA, without sinks.

`register()` is this package's `ossbench.backends` entry point. It registers `example-sdpa`, which a suite
then selects with `backend: example-sdpa`; ossbench checks its output against the float64 reference and
times it like a built-in. It declares what it cannot express (attention sinks, attention dropout), so such
cases are skipped with its own reason instead of computing something else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ossbench.backends import Supports, register_backend


def attend(layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
    """The attention family's build hook: q [B, Hq, S, D], k/v [B, Hkv, T, D] -> o [B, Hq, S, D].

    `layer` is the ossbench Attention module (its `scale`, `sinks`, ...); `mask` is its mask object over
    the [S, T] query/key grid, or None when every key may be seen (a decode step: the cache already kept
    only the keys the mask allows).
    """
    grid = None
    if mask is not None:
        # built on every call to keep the example short; a real kernel would build its mask once per shape
        grid = mask.allowed(torch.arange(q.shape[2], device=q.device), torch.arange(k.shape[2], device=q.device))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=grid, scale=layer.scale,
                                          enable_gqa=q.shape[1] != k.shape[1])  # [B, Hq, S, D]


def register() -> None:
    register_backend(
        "attention", "example-sdpa", attend,
        description="example plugin: torch SDPA with a boolean mask grid",
        supports=Supports(sinks=False, dropout=False, reasons={
            "sinks": "example-sdpa cannot express attention sinks (SDPA has no extra softmax column)",
        }))
