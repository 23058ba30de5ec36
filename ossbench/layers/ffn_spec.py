"""FFNSpec: everything that decides what one dense FFN (or pre-norm FFN block) computes, declared once.

Read by the module (`DenseFFN(spec)`), the presets (`ModelConfig.ffn_spec()`) and the ffn family's params
model (generated from these fields). Whether the module adds the residual itself is wiring (the block
adds it), so it is the module's `residual` argument, not part of the spec. Defaults: GPT-2 small's FFN
(768 -> 3072, GELU tanh, biases), without a norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .spec import spec_field, validate_spec


@dataclass(frozen=True)
class FFNSpec:
    hidden: int = spec_field(768, gt=0)
    intermediate: int = spec_field(3072, "FFN width (replaced by the matched width when match is set)", gt=0)
    activation: Literal["swiglu", "gelu_tanh"] = spec_field(
        "gelu_tanh", "swiglu: gpt-oss's clamped SwiGLU on interleaved columns; gelu_tanh: GPT-2")
    bias: bool = spec_field(True)
    swiglu_alpha: float = spec_field(1.702, gt=0.0)
    swiglu_limit: float = spec_field(7.0, gt=0.0)
    norm: Literal["none", "rmsnorm", "layernorm"] = spec_field(
        "none", "none: the FFN alone; else a pre-norm block with residual add")
    norm_eps: float = spec_field(1e-5, gt=0.0)

    def __post_init__(self) -> None:
        validate_spec(self)
