"""Dense feed-forward layers: GPT-2's GELU FFN and a dense version of gpt-oss's clamped SwiGLU expert.

`DenseFFN(FFNSpec(hidden, intermediate, activation))` (layers/ffn_spec.py) computes `fc2(act(fc1(x)))`:
- "gelu_tanh": GPT-2's FFN, fc1 hidden -> intermediate (4 x hidden in GPT-2), GELU with the tanh
  approximation, fc2 back to hidden; both with biases.
- "swiglu": gpt-oss's expert as one dense layer: fc1 hidden -> 2 x intermediate whose even columns are
  the gate and odd columns the linear half (interleaved, as in gpt-oss's mlp1), `clamped_swiglu`, fc2.

With the spec's `norm="rmsnorm"` (or "layernorm") and `residual=True` it becomes a whole pre-norm MLP block,
`x + fc2(act(fc1(norm(x))))`, the same shape of computation as gpt-oss's MLPBlock (see `moe.MoE`), so a
dense FFN and an MoE can be compared block for block.

`matched_ffn_intermediate` sizes a dense FFN to hold as many parameters as an MoE's active experts
(router + top_k experts) or all of its experts (router + every expert).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
from torch import nn

from .activation import clamped_swiglu, gelu_tanh  # re-exported: moe and tests import them from here
from .config import ModelConfig
from .ffn_spec import FFNSpec
from .norm import RMSNorm
from .params import fc1_width, matched_intermediate, moe_params


def matched_ffn_intermediate(match: Literal["active", "total"], hidden: int, expert_intermediate: int,
                             n_experts: int, top_k: int, *, activation: str = "swiglu", bias: bool = True,
                             router_bias: bool = True, expert_activation: str = "swiglu") -> int:
    """Width of a dense FFN with the parameters of an MoE's router + top_k experts ("active") or router
    + all experts ("total"); norms are left out on both sides (each block has the same one)."""
    counts = moe_params(hidden, expert_intermediate, n_experts, top_k, activation=expert_activation,
                        bias=bias, router_bias=router_bias)
    return matched_intermediate(counts[match], hidden, activation, bias)


class DenseFFN(nn.Module):
    """The FFN `spec` describes; `residual=True` adds x back (a whole block, when the spec has a norm)."""

    def __init__(self, spec: FFNSpec | None = None, *, residual: bool = False, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        spec = spec if spec is not None else FFNSpec()  # the spec validated itself when built
        self.spec, self.residual = spec, residual
        hidden, intermediate, activation = spec.hidden, spec.intermediate, spec.activation
        self.hidden, self.intermediate, self.activation = hidden, intermediate, activation
        self.swiglu_alpha, self.swiglu_limit = spec.swiglu_alpha, spec.swiglu_limit
        if spec.norm == "rmsnorm":
            self.norm = RMSNorm(hidden, spec.norm_eps, device=device)
        elif spec.norm == "layernorm":
            self.norm = nn.LayerNorm(hidden, eps=spec.norm_eps, device=device, dtype=dtype)
        else:
            self.norm = None
        self.fc1 = nn.Linear(hidden, fc1_width(intermediate, activation), bias=spec.bias, device=device,
                             dtype=dtype)
        self.fc2 = nn.Linear(intermediate, hidden, bias=spec.bias, device=device, dtype=dtype)

    @classmethod
    def from_config(cls, cfg: ModelConfig, *, residual: bool = False, device: Any = None, dtype: Any = None,
                    **spec_changes: Any) -> DenseFFN:
        """The dense FFN of a preset (GPT-2: 4 x hidden, GELU tanh), by default without norm or residual."""
        spec = cfg.ffn_spec()
        return cls(replace(spec, **spec_changes) if spec_changes else spec, residual=residual, device=device,
                   dtype=dtype)

    def act(self, h: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            return clamped_swiglu(h, self.swiglu_alpha, self.swiglu_limit)
        return gelu_tanh(h)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., hidden] -> fc2(act(fc1(norm(x)))) [..., hidden], without the residual."""
        t = self.norm(x) if self.norm is not None else x
        return self.fc2(self.act(self.fc1(t)))  # [..., hidden]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.update(x)
        return x + y if self.residual else y
