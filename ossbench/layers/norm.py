"""Normalisation layers: gpt-oss's RMSNorm and GPT-2's LayerNorm, as written-out formulas and as torch's ops.

Both normalise over the last dimension and compute in `compute_dtype(x)` = promote_types(x.dtype, float32):
float32 for 16-bit and float32 inputs (as gpt-oss's RMSNorm does), float64 for float64 inputs (so a float64
run is a float64 reference, not float32 in disguise). The result is cast back to x's dtype.

- rms_norm(x, scale, eps)         = x / sqrt(mean(x^2) + eps) * scale        (no mean, no bias)
- layer_norm(x, weight, bias, eps) = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias   (biased variance)

`RMSNorm` is the module every gpt-oss block uses: one fp32 parameter `scale`, the checkpoint's name
(`attn.norm.scale`, `mlp.norm.scale`), so checkpoint state dicts load. GPT-2's LayerNorm is torch's
`nn.LayerNorm` (parameters `weight`, `bias` in the model's dtype).

`Norm(spec, backend=...)` (spec: `NormSpec`, layers/norm_spec.py) is the benchmarked layer of the norm family,
with three backends that compute
the same function (registered at the end of this file, ossbench.backends):
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

from ..backends import get_backend, register_backend
from .activation import compile_fn
from .norm_spec import NormSpec


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

    def __init__(self, spec: NormSpec, *, backend: str = "eager", device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        build = get_backend("norm", backend).build  # ValueError naming the registered backends
        self.spec, self.backend = spec, backend
        kind, dim = spec.norm, spec.hidden
        self.kind, self.dim, self.eps = kind, dim, spec.norm_eps  # read by the forward and extra_repr
        if kind == "rmsnorm":
            # torch's fused kernel takes the scale only in the input's dtype (module docstring)
            scale_dtype = dtype if backend == "fused" else torch.float32
            self.scale = nn.Parameter(torch.ones(dim, device=device, dtype=scale_dtype))
        else:
            self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))
        self._formula = build(kind)  # called as rms_norm(x, scale, eps) or layer_norm(x, weight, bias, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rmsnorm":
            return self._formula(x, self.scale, self.eps)
        return self._formula(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.kind}, dim={self.dim}, eps={self.eps}, backend={self.backend}"


# --- the built-in backends: the layer calls build(kind) once and gets the function it runs, with the
# signature of rms_norm (x, scale, eps) or layer_norm (x, weight, bias, eps) for that kind
FORMULAS = {"rmsnorm": rms_norm, "layernorm": layer_norm}


def _fused(kind: str):
    if kind == "layernorm":
        return lambda x, weight, bias, eps: F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    if not fused_rms_norm_available():
        raise ValueError(f"torch {torch.__version__} has no F.rms_norm (added in torch 2.4)")
    return lambda x, scale, eps: F.rms_norm(x, x.shape[-1:], scale, eps)


register_backend("norm", "eager", lambda kind: FORMULAS[kind],
                 description="the formulas op by op (gpt-oss's reference)")
register_backend("norm", "compile", lambda kind: compile_fn(FORMULAS[kind]),
                 description="the same formulas through torch.compile", compiles=True)
register_backend("norm", "fused", _fused, description="torch's F.layer_norm / F.rms_norm")
