"""The `triton` attention backend: ossbench's own FlashAttention-2-style kernel (ossbench/kernels/
attention_prefill.py) for causal full and sliding-window attention with learned sinks and native GQA,
forward and backward. Registered from the end of ossbench/layers/attention.py, like the built-ins.

What it expresses: sinks, plain causal, full (non-causal) and sliding-window masks; other masks (chunked,
combinations) are refused with a reason when the layer calls it (the registry's `masks` feature does not
tell a window from a chunk). No attention dropout. Devices: CUDA, and the CPU only under TRITON_INTERPRET=1
(Triton's interpreter, for numerics tests: slow). Dtypes: float16, bfloat16 and float32 (float32 through
tl.dot in IEEE precision, no TF32, so it matches the reference to float32 accuracy). The kernel module is
imported on the first call, so listing backends never imports Triton.

Decode (one query against the keys the cache kept): ossbench/kernels/attention_decode.py's split-KV
`flash_decode`, reading the kept slots in place (without that module, the prefill kernel with the one
query at the last key position: correct, not fast).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import torch

from ..backends import Supports, register_backend
from ..errors import SkipCase
from .masks import Causal, Full, Mask, SlidingWindow

DECODE_MODULE = "ossbench.kernels.attention_decode"
HEAD_DIMS = (16, 32, 64, 128)  # the kernel's (ossbench.kernels.attention_prefill.HEAD_DIMS), without importing triton


def available(device: str) -> str | None:
    """Why the kernel cannot run on a device type (None when it can)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "triton kernels run on CUDA; on the CPU only under TRITON_INTERPRET=1 (the interpreter, for tests)"
    return None


def _mask_options(mask: Mask | None, T: int) -> tuple[bool, int | None]:
    """(causal, window) for the kernel, or SkipCase for a pattern it has no loop bounds for."""
    if mask is None or isinstance(mask, Full):
        return False, None  # every given key may be seen
    if isinstance(mask, Causal):
        return True, None
    if isinstance(mask, SlidingWindow):
        return True, mask.window if mask.window < T else None  # a window as long as the keys is causal
    raise SkipCase(f"triton attention computes causal, full and sliding-window masks, not {mask.name}: its key "
                   f"loop is bounded by one window; use flex or eager")


@functools.cache
def _has_decode_kernel() -> bool:
    return importlib.util.find_spec(DECODE_MODULE) is not None


def attend(layer: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask | None) -> torch.Tensor:
    """The attention family's build hook: q [B, Hq, S, D], k, v [B, Hkv, T, D] -> [B, Hq, S, D]."""
    S, T, D = q.shape[2], k.shape[2], q.shape[3]
    if D not in HEAD_DIMS:
        raise SkipCase(f"triton attention takes head_dim {', '.join(map(str, HEAD_DIMS))}, not {D}")
    from ..kernels.attention_prefill import flash_attention

    if S == 1 and mask is None:  # decode: the cache already kept only the keys this query may see
        if _has_decode_kernel():
            from ..kernels.attention_decode import flash_decode
            # the keys are already the ones to read (window=None, every slot valid); the kernel takes any
            # strides, so a slice of the cache is read in place, never copied
            lengths = torch.full((q.shape[0],), T, dtype=torch.int32, device=q.device)
            o = flash_decode(q[:, :, 0], k, v, lengths, sinks=layer.sinks, window=None, scale=layer.scale)
            return o.unsqueeze(2)  # [B, Hq, 1, D]
        # Until the split-KV decode kernel lands: the prefill kernel, one query at the last position (causal
        # over T keys = every key). Correct, not fast: one program per KV head reads the whole cache.
        return flash_attention(q, k, v, layer.sinks, scale=layer.scale, causal=True, q_start=T - 1)
    causal, window = _mask_options(mask, T)
    return flash_attention(q, k, v, layer.sinks, scale=layer.scale, causal=causal, window=window,
                           q_start=T - S if causal else 0)


register_backend(
    "attention", "triton", attend, available=available,
    description="ossbench's FlashAttention-2-style Triton kernel: sinks, windows, native GQA, backward "
                "(CUDA; the CPU only under TRITON_INTERPRET=1)",
    supports=Supports(devices=frozenset({"cuda", "cpu"}), dtypes=frozenset({"float16", "bfloat16", "float32"}),
                      dropout=False, reasons={
                          "dropout": "triton attention cannot drop out attention probabilities (GPT-2's "
                                     "attn_pdrop); use eager or sdpa",
                          "devices": "triton attention runs on CUDA (or the CPU under TRITON_INTERPRET=1), "
                                     "not {device}",
                          "dtypes": "triton attention runs in float16, bfloat16 or float32 (tl.dot has no "
                                    "float64)"}))
