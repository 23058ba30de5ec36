"""Normalisation layers: gpt-oss's RMSNorm and GPT-2's LayerNorm, as written-out formulas and as torch's ops.

Both normalise over the last dimension and compute in `compute_dtype(x)` = promote_types(x.dtype, float32):
float32 for 16-bit and float32 inputs (as gpt-oss's RMSNorm does), float64 for float64 inputs (so a float64
run is a float64 reference, not float32 in disguise). The result is cast back to x's dtype.

- rms_norm(x, scale, eps)         = x / sqrt(mean(x^2) + eps) * scale        (no mean, no bias)
- layer_norm(x, weight, bias, eps) = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias   (biased variance)

`RMSNorm` is the module every gpt-oss block uses: one fp32 parameter `scale`, the checkpoint's name
(`attn.norm.scale`, `mlp.norm.scale`), so checkpoint state dicts load. GPT-2's LayerNorm is torch's
`nn.LayerNorm` (parameters `weight`, `bias` in the model's dtype).

`Norm(kind, dim, backend=...)` is the benchmarked layer of the norm family, with three backends that compute
the same function:
- "eager":   the formulas above, op by op (what gpt-oss's reference RMSNorm runs);
- "compile": the same formulas through torch.compile (one fused kernel per direction);
- "fused":   torch's own F.layer_norm / F.rms_norm. torch's fused RMSNorm kernel takes its weight only in
             the input's dtype (given an fp32 scale with bf16 input it falls back to the op-by-op path), so
             with this backend the scale is stored in the module's dtype, not in fp32.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .activation import compile_fn

NORM_KINDS = ("rmsnorm", "layernorm")
NORM_BACKENDS = ("eager", "compile", "fused")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for 16-bit and float32 inputs, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., dim] -> x / sqrt(mean(x^2) + eps) * scale, in compute_dtype(x), cast back to x's dtype."""
    t = x.to(compute_dtype(x.dtype))
    t = t * torch.rsqrt(t.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (t * scale).to(x.dtype)  # an fp32 scale on float64 t promotes to float64


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., dim] -> (x - mean) / sqrt(var + eps) * weight + bias (biased variance, as nn.LayerNorm)."""
    t = x.to(compute_dtype(x.dtype))
    centred = t - t.mean(dim=-1, keepdim=True)
    t = centred * torch.rsqrt(centred.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (t * weight + bias).to(x.dtype)


def fused_rms_norm_available() -> bool:
    return hasattr(F, "rms_norm")  # torch >= 2.4


class RMSNorm(nn.Module):
    """gpt-oss's RMSNorm: statistics and the fp32 `scale` applied in float32 (float64 for float64 input)."""

    def __init__(self, dim: int, eps: float = 1e-5, device: Any = None) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim, device=device, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.scale, self.eps)


class Norm(nn.Module):
    """The norm family's layer: RMSNorm (`scale`) or LayerNorm (`weight`, `bias`) with a chosen backend.

    Parameter dtypes: RMSNorm's scale is fp32 (gpt-oss) except with the "fused" backend (the module's
    dtype, see the module docstring); LayerNorm's weight and bias are in the module's dtype (GPT-2).
    """

    def __init__(self, kind: str, dim: int, eps: float = 1e-5, *, backend: str = "eager", device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        if kind not in NORM_KINDS:
            raise ValueError(f"kind must be one of {NORM_KINDS}, got {kind!r}")
        if backend not in NORM_BACKENDS:
            raise ValueError(f"backend must be one of {NORM_BACKENDS}, got {backend!r}")
        if backend == "fused" and kind == "rmsnorm" and not fused_rms_norm_available():
            raise ValueError(f"torch {torch.__version__} has no F.rms_norm (added in torch 2.4)")
        self.kind, self.dim, self.eps, self.backend = kind, dim, eps, backend
        if kind == "rmsnorm":
            scale_dtype = dtype if backend == "fused" else torch.float32
            self.scale = nn.Parameter(torch.ones(dim, device=device, dtype=scale_dtype))
        else:
            self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))
        formula = rms_norm if kind == "rmsnorm" else layer_norm
        self._formula = compile_fn(formula) if backend == "compile" else formula

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "fused":
            if self.kind == "rmsnorm":
                return F.rms_norm(x, (self.dim,), self.scale, self.eps)
            return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)
        if self.kind == "rmsnorm":
            return self._formula(x, self.scale, self.eps)
        return self._formula(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.kind}, dim={self.dim}, eps={self.eps}, backend={self.backend}"
