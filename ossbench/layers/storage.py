"""Bytes a whole gpt-oss model stores, by kind of tensor: the one place these sizes are computed.

The `Model` (layers/model.py) allocates exactly these bytes (tests/test_model.py sums its tensors), the
model family's cost model reads the per-layer pieces, and `ossbench fit` (ossbench/fit.py) adds the KV cache
and a working-set estimate to them.

Storage as in OpenAI's checkpoint: expert weights (`mlp1_weight` [E, 2I, hidden], `mlp2_weight` [E, hidden,
I]) in MXFP4, i.e. `blocks` (half a byte per value) plus `scales` (one byte per 32 values), or in the
model's float dtype (`experts="dtype"`: the bf16 alternative); the RMSNorm scales in float32; everything
else (embedding, attention, sinks, router, expert biases, unembedding) in the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .config import ModelConfig
from .mxfp4 import BLOCK, BYTES_PER_BLOCK
from .params import attention_params, norm_params, router_params

Experts = Literal["mxfp4", "dtype"]
NORM_BYTES = 4  # RMSNorm scales are float32 in gpt-oss


@dataclass(frozen=True)
class LayerBytes:
    """One transformer layer's stored bytes."""

    attention: int  # qkv and out projections with biases, sinks (the model's dtype)
    router: int  # gate weight and bias
    expert_weights: int  # mlp1 + mlp2 of every expert in the dtype (0 with MXFP4)
    expert_blocks: int  # MXFP4 element bytes of mlp1 + mlp2 (0 in the dtype)
    expert_scales: int  # MXFP4 scale bytes (0 in the dtype)
    expert_biases: int  # mlp1 + mlp2 biases of every expert
    norms: int  # the two pre-norm scales (float32)

    @property
    def total(self) -> int:
        return (self.attention + self.router + self.expert_weights + self.expert_blocks + self.expert_scales
                + self.expert_biases + self.norms)


def expert_weight_values(cfg: ModelConfig) -> int:
    """Values of one expert's two weights: mlp1 (2I x hidden) + mlp2 (hidden x I)."""
    return 3 * cfg.hidden * cfg.intermediate


def one_expert_bytes(cfg: ModelConfig, experts: Experts, dtype_bytes: int) -> int:
    """One expert's stored bytes (weights in their storage, biases in the dtype)."""
    values = expert_weight_values(cfg)
    weights = values // BLOCK * (BYTES_PER_BLOCK + 1) if experts == "mxfp4" else values * dtype_bytes
    biases = (2 * cfg.intermediate + cfg.hidden) * dtype_bytes if cfg.mlp_bias else 0
    return weights + biases


def layer_bytes(cfg: ModelConfig, experts: Experts = "mxfp4", dtype_bytes: int = 2) -> LayerBytes:
    """The stored bytes of one layer of `cfg` (every layer of a gpt-oss model stores the same)."""
    if cfg.n_experts == 0 or cfg.norm != "rmsnorm":
        raise ValueError("storage is computed for gpt-oss models (MoE experts, RMSNorm)")
    if experts == "mxfp4" and (cfg.hidden % BLOCK or cfg.intermediate % BLOCK):
        raise ValueError(f"MXFP4 experts need hidden and intermediate to be multiples of {BLOCK}")
    norm = norm_params(cfg.hidden, cfg.norm)
    values = cfg.n_experts * expert_weight_values(cfg)
    mxfp4 = experts == "mxfp4"
    return LayerBytes(
        attention=(attention_params(cfg) - norm) * dtype_bytes,
        router=router_params(cfg.hidden, cfg.n_experts, cfg.router_bias) * dtype_bytes,
        expert_weights=0 if mxfp4 else values * dtype_bytes,
        expert_blocks=values // BLOCK * BYTES_PER_BLOCK if mxfp4 else 0,
        expert_scales=values // BLOCK if mxfp4 else 0,
        expert_biases=cfg.n_experts * (2 * cfg.intermediate + cfg.hidden) * dtype_bytes if cfg.mlp_bias else 0,
        norms=2 * norm * NORM_BYTES)


def weight_bytes(cfg: ModelConfig, experts: Experts = "mxfp4", dtype_bytes: int = 2,
                 layers: int | None = None) -> dict[str, int]:
    """Whole-model stored bytes by kind (the first `layers` layers; None: all), and their `total`.

    Kinds: embedding, unembedding, attention, router, expert_weights (dtype storage), expert_blocks and
    expert_scales (MXFP4), expert_biases, norms (the layers' two pre-norms and the final norm, float32).
    """
    n = cfg.n_layers if layers is None else layers
    if cfg.tie_embeddings:
        raise ValueError("gpt-oss has an untied unembedding; a tied preset is not a gpt-oss model")
    per = layer_bytes(cfg, experts, dtype_bytes)
    table = cfg.vocab * cfg.hidden * dtype_bytes
    out = {"embedding": table, "unembedding": table, "attention": n * per.attention, "router": n * per.router,
           "expert_weights": n * per.expert_weights, "expert_blocks": n * per.expert_blocks,
           "expert_scales": n * per.expert_scales, "expert_biases": n * per.expert_biases,
           "norms": n * per.norms + norm_params(cfg.hidden, cfg.norm) * NORM_BYTES}
    out["total"] = sum(out.values())
    return out
