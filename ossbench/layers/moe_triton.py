"""The moe family's `triton` backend: ossbench's own grouped-GEMM kernels (ossbench/kernels/moe_grouped.py).

Token slots are sorted by expert with the layer's own `_sorted_slots` (the grouped and loop backends use
the same), then two Triton kernels run the experts: mlp1 with the clamped SwiGLU in its epilogue, mlp2 with
the routing weights in its epilogue. The backend returns the combined [T, hidden] output, so the layer skips
its own weighted combine (see MoE.experts). MXFP4 experts are decoded inside the kernels from their packed
blocks and scales: no decoded copy of the experts is made.

Forward only (no backward kernels): train cases are refused with that reason. Runs on CUDA, or on the CPU
under Triton's interpreter (TRITON_INTERPRET=1, for numerics tests: slow, float32 / float16 only). The
kernel module is imported on the first call, not here: Triton reads TRITON_INTERPRET when it decorates a
kernel, and importing ossbench must not import triton.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

from ..backends import Supports, register_backend
from .mxfp4 import MXFP4Weight

NO_BACKWARD = "{name} is forward only: its Triton kernels have no backward pass"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def available(device: str) -> str | None:
    """Why the triton backend cannot run on `device` (None when it can)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device == "cpu":
        return None if _interpreting() else \
            "the triton moe backend runs on CPU only under Triton's interpreter (TRITON_INTERPRET=1)"
    if device == "cuda" and not torch.cuda.is_available():
        return "the triton moe backend needs a CUDA device (none is available)"
    return None


def _weight(w: Any) -> Any:
    from ..kernels.moe_grouped import Packed

    return Packed(w.blocks, w.scales) if isinstance(w, MXFP4Weight) else w.detach()


def triton_experts(layer: Any, t: torch.Tensor, routing: Any) -> torch.Tensor:
    """build(layer, t [T, hidden], routing) -> the combined expert outputs [T, hidden]."""
    from ..kernels.moe_grouped import moe_grouped

    if layer._needs_backward(t):
        raise RuntimeError(NO_BACKWARD.format(name="the triton moe backend"))
    order, _, counts, _ = layer._sorted_slots(routing)
    b1 = layer.mlp1_bias.detach() if layer.mlp1_bias is not None else None
    b2 = layer.mlp2_bias.detach() if layer.mlp2_bias is not None else None
    return moe_grouped(t, order, counts, routing.weights, _weight(layer.mlp1_weight), b1, _weight(layer.mlp2_weight),
                       b2, alpha=layer.swiglu_alpha, limit=layer.swiglu_limit)


register_backend(
    "moe", "triton", triton_experts, available=available,
    supports=Supports(devices={"cuda", "cpu"}, dtypes={"float16", "bfloat16", "float32"}, train=False,
                      reasons={"train": NO_BACKWARD}),
    description="ossbench's Triton grouped GEMMs: slots sorted by expert, SwiGLU and routing weights fused in the "
                "epilogues, MXFP4 decoded in the kernel")
