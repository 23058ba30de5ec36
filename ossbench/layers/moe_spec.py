"""MoESpec: everything that decides what one gpt-oss MoE MLP block computes and stores, declared once.

Read by the module (`MoE(spec)`), the presets (`ModelConfig.moe_spec()`) and the moe family's params model
(generated from these fields). How the experts run (`backend`, `grouped_impl`) is a run choice, not part
of the spec. Defaults: gpt-oss-20b's block (32 experts, top-4, clamped SwiGLU, biases).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

from .mxfp4 import BLOCK
from .spec import SpecError, spec_field, validate_spec


def top_k_fits(v: int, d: Mapping[str, Any]) -> int:
    if v > d["n_experts"]:
        raise SpecError(f"top_k ({v}) cannot exceed n_experts ({d['n_experts']}): a token picks top_k distinct "
                        f"experts", ("n_experts", "top_k"))
    return v


def _mxfp4_fits(v: str, d: Mapping[str, Any]) -> str:
    if v == "mxfp4":
        for name in ("hidden", "intermediate"):
            if d[name] % BLOCK:
                raise SpecError(f"weights: mxfp4 packs blocks of {BLOCK} along the input dimension: {name} "
                                f"({d[name]}) must be a multiple of {BLOCK}", ("weights",))
    return v


@dataclass(frozen=True)
class MoESpec:
    hidden: int = spec_field(2880, gt=0)
    intermediate: int = spec_field(2880, "width of one expert (its mlp1 has 2x this many outputs)", gt=0)
    n_experts: int = spec_field(32, gt=0)
    top_k: int = spec_field(4, "experts per token", gt=0, check=top_k_fits, needs=("n_experts",))
    swiglu_alpha: float = spec_field(1.702, gt=0.0)
    swiglu_limit: float = spec_field(7.0, gt=0.0)
    norm_eps: float = spec_field(1e-5, gt=0.0)
    router_bias: bool = spec_field(True)
    expert_bias: bool = spec_field(True)
    weights: Literal["dtype", "mxfp4"] = spec_field(
        "dtype", "expert weights in the case's dtype, or packed MXFP4 decoded on the fly", check=_mxfp4_fits,
        needs=("hidden", "intermediate"))

    def __post_init__(self) -> None:
        validate_spec(self)
