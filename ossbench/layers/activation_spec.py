"""ActivationSpec: which activation function a layer applies, declared once (read by `Activation(spec)`,
the presets and the activation family's params model). The backend is a run choice, not part of the spec.
Defaults: gpt-oss's clamped SwiGLU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .spec import spec_field, validate_spec

ACTIVATIONS = ("gelu_erf", "gelu_tanh", "silu", "swiglu")


@dataclass(frozen=True)
class ActivationSpec:
    activation: Literal["gelu_erf", "gelu_tanh", "silu", "swiglu"] = spec_field(
        "swiglu", "gelu_erf: exact GELU; gelu_tanh: GPT-2; silu: Swish; swiglu: gpt-oss's clamped SwiGLU")
    swiglu_alpha: float = spec_field(1.702, "swiglu: x * sigmoid(alpha x) on the gate", gt=0.0)
    swiglu_limit: float = spec_field(7.0, "swiglu: gate clamped above, linear part to +-limit", gt=0.0)

    def __post_init__(self) -> None:
        validate_spec(self)
