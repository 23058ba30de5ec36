"""Activation functions of GPT-2, gpt-oss and their relatives, eager or torch.compile'd.

- "gelu_erf":  x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))             (BERT, the exact GELU)
- "gelu_tanh": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))      (GPT-2)
- "silu":      x * sigmoid(x), also called Swish
- "swiglu":    gpt-oss's clamped SwiGLU on interleaved columns (`clamped_swiglu`): input [..., 2W],
               output [..., W]

An activation's *width* is its output width: the FFN's intermediate size. SwiGLU reads twice that.

`Activation(spec, backend="eager"|"compile")` (spec: `ActivationSpec`, layers/activation_spec.py):
"eager" runs torch's op (F.gelu, F.silu: one kernel each) or, for SwiGLU, gpt-oss's expression op by op;
"compile" runs the same function through torch.compile (both
registered at the end of this file, ossbench.backends).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..backends import get_backend, register_backend
from .activation_spec import ACTIVATIONS, ActivationSpec
# A sweep compiles one kernel per shape; dynamo's default of 8 recompilations per function would silently
# fall back to eager after the 8th, so the limits are raised when something is compiled here.
RECOMPILE_LIMITS = (("recompile_limit", 512), ("accumulated_recompile_limit", 4096))


def compile_fn(fn: Callable) -> Callable:
    """`fn` through torch.compile with static shapes (each shape its own specialised kernel)."""
    import torch._dynamo.config as dynamo_config

    for name, floor in RECOMPILE_LIMITS:
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), floor))
    return torch.compile(fn, dynamic=False)


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    """The exact GELU, x * Phi(x)."""
    return F.gelu(x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return F.gelu(x, approximate="tanh")


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU / Swish: x * sigmoid(x)."""
    return F.silu(x)


def clamped_swiglu(x: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """gpt-oss's SwiGLU on interleaved columns: x [..., 2W] -> [..., W].

    The gate g = x[..., 0::2] is clamped above at `limit`, the linear half l = x[..., 1::2] to
    [-limit, limit]; out = g * sigmoid(alpha * g) * (l + 1). The +1 is gpt-oss's: an extra bias on the
    linear half.
    """
    g = x[..., 0::2].clamp(max=limit)
    lin = x[..., 1::2].clamp(min=-limit, max=limit)
    return g * torch.sigmoid(alpha * g) * (lin + 1)


def input_width(name: str, width: int) -> int:
    """Width of the activation's input for an output of `width`: gated SwiGLU reads two halves."""
    return 2 * width if name == "swiglu" else width


def activation_fn(name: str, *, swiglu_alpha: float = 1.702, swiglu_limit: float = 7.0) -> Callable:
    if name == "swiglu":
        return functools.partial(clamped_swiglu, alpha=swiglu_alpha, limit=swiglu_limit)
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
    return {"gelu_erf": gelu_erf, "gelu_tanh": gelu_tanh, "silu": silu}[name]


class Activation(nn.Module):
    """One activation function as a module (no parameters)."""

    def __init__(self, spec: ActivationSpec, backend: str = "eager") -> None:
        super().__init__()
        build = get_backend("activation", backend).build  # ValueError naming the registered backends
        self.spec, self.name, self.backend = spec, spec.activation, backend
        self._fn = build(activation_fn(spec.activation, swiglu_alpha=spec.swiglu_alpha,
                                       swiglu_limit=spec.swiglu_limit))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., input_width] -> [..., width]."""
        return self._fn(x)

    def extra_repr(self) -> str:
        return f"{self.name}, backend={self.backend}"


# --- the built-in backends: the layer calls build(fn) once with the activation function and runs what it
# returns (same signature)
register_backend("activation", "eager", lambda fn: fn, description="torch's op, or gpt-oss's expression op by op")
register_backend("activation", "compile", compile_fn, description="the same function through torch.compile",
                 compiles=True)
