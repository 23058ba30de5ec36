"""Model presets: one flat config dataclass whose defaults are gpt-oss-20b, and data-only deltas.

The field names are ossbench's own; where gpt-oss's reference code uses another name the comment says so,
so a reader can check a value against the reference's `ModelConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .activation_spec import ActivationSpec
from .attention_spec import AttentionSpec
from .ffn_spec import FFNSpec
from .moe_spec import MoESpec
from .norm_spec import NormSpec
from .positions_spec import PositionsSpec

NORMS = ("rmsnorm", "layernorm")
ACTIVATIONS = ("swiglu", "gelu_tanh")
POSITIONS = ("yarn", "rope", "learned", "none")


@dataclass(frozen=True)
class ModelConfig:
    # --- trunk
    hidden: int = 2880  # hidden_size
    n_layers: int = 24  # num_hidden_layers
    vocab: int = 201088  # vocab_size
    tie_embeddings: bool = False  # gpt-oss has a separate unembedding; GPT-2 ties them
    max_position: int = 131072  # longest context: yarn_original_context * yarn_factor for gpt-oss
    dropout: float = 0.0  # gpt-oss trains without dropout; GPT-2 used 0.1

    # --- normalisation (pre-norm in both families)
    norm: str = "rmsnorm"  # RMSNorm with an fp32 scale; "layernorm" has weight and bias
    norm_eps: float = 1e-5

    # --- attention
    n_heads: int = 64  # num_attention_heads
    n_kv_heads: int = 8  # num_key_value_heads (= n_heads: MHA, 1: MQA)
    head_dim: int = 64  # q width n_heads*head_dim = 4096 differs from hidden 2880
    window: int | None = 128  # sliding_window: a query sees itself and window-1 earlier tokens
    window_every: int = 2  # layer i is windowed iff window is set and i % window_every == 0 (0, 2, 4, ...)
    sinks: bool = True  # one learned logit per head, an extra softmax column that is then dropped
    qkv_bias: bool = True
    out_bias: bool = True

    # --- positions
    positions: str = "yarn"  # "yarn" | "rope" (plain, unscaled) | "learned" (GPT-2) | "none"
    rope_theta: float = 150000.0
    yarn_factor: float = 32.0  # rope_scaling_factor
    yarn_beta_slow: float = 1.0  # rope_ntk_alpha: below this many turns over the original context, interpolate
    yarn_beta_fast: float = 32.0  # rope_ntk_beta: above this many turns, extrapolate (keep the frequency)
    yarn_original_context: int = 4096  # initial_context_length

    # --- feed-forward / mixture of experts
    n_experts: int = 32  # num_experts; 0 means a dense FFN
    top_k: int = 4  # experts_per_token
    intermediate: int | None = 2880  # intermediate_size (per expert); None: ffn_mult * hidden
    ffn_mult: float | None = None  # GPT-2: 4
    activation: str = "swiglu"  # gpt-oss's clamped SwiGLU; "gelu_tanh" for GPT-2
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    router_bias: bool = True
    mlp_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("hidden", "n_layers", "vocab", "max_position", "n_heads", "n_kv_heads", "head_dim",
                     "window_every", "yarn_original_context"):
            _require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        _require(self.n_heads % self.n_kv_heads == 0,
                 f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        _require(self.window is None or self.window > 0, f"window must be None or > 0, got {self.window}")
        _require(self.norm in NORMS, f"norm must be one of {NORMS}, got {self.norm!r}")
        _require(self.norm_eps > 0, f"norm_eps must be > 0, got {self.norm_eps}")
        _require(self.activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        _require(self.positions in POSITIONS, f"positions must be one of {POSITIONS}, got {self.positions!r}")
        _require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        if self.positions in ("rope", "yarn"):
            _require(self.head_dim % 2 == 0, f"rotary positions need an even head_dim, got {self.head_dim}")
            _require(self.rope_theta > 1.0, f"rope_theta must be > 1, got {self.rope_theta}")
        if self.positions == "yarn":
            _require(self.yarn_factor >= 1.0, f"yarn_factor must be >= 1, got {self.yarn_factor}")
            _require(0 < self.yarn_beta_slow < self.yarn_beta_fast,
                     f"need 0 < yarn_beta_slow < yarn_beta_fast, got {self.yarn_beta_slow}, {self.yarn_beta_fast}")
        _require(self.n_experts >= 0, f"n_experts must be >= 0, got {self.n_experts}")
        if self.n_experts:
            _require(0 < self.top_k <= self.n_experts,
                     f"top_k must be in 1..n_experts ({self.n_experts}), got {self.top_k}")
        if self.intermediate is None:
            _require(self.ffn_mult is not None and self.ffn_mult > 0,
                     "set intermediate or a positive ffn_mult")
            # frozen dataclass: the derived width is written once, here
            object.__setattr__(self, "intermediate", int(round(self.ffn_mult * self.hidden)))
        else:
            _require(self.intermediate > 0, f"intermediate must be > 0, got {self.intermediate}")
            _require(self.ffn_mult is None or math.isclose(self.intermediate, self.ffn_mult * self.hidden),
                     f"intermediate {self.intermediate} disagrees with ffn_mult {self.ffn_mult} * hidden {self.hidden}")

    # --- derived sizes
    @property
    def q_width(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_width(self) -> int:  # width of K (and of V)
        return self.n_kv_heads * self.head_dim

    @property
    def qkv_width(self) -> int:  # output width of the fused qkv projection: 4096 + 2*512 = 5120
        return self.q_width + 2 * self.kv_width

    @property
    def q_per_kv(self) -> int:
        return self.n_heads // self.n_kv_heads

    def layer_window(self, layer_idx: int) -> int | None:
        """The sliding window of layer `layer_idx`, None for a full-attention layer."""
        if not 0 <= layer_idx < self.n_layers:
            raise IndexError(f"layer {layer_idx} out of range 0..{self.n_layers - 1}")
        if self.window is None or layer_idx % self.window_every:
            return None
        return self.window

    def attention_spec(self, layer_idx: int = 0) -> AttentionSpec:
        """The attention block of layer `layer_idx` (windowed on even gpt-oss layers) as a spec."""
        if self.qkv_bias != self.out_bias:
            raise ValueError("Attention has one bias switch for qkv and out; the preset sets them differently")
        return AttentionSpec(
            hidden=self.hidden, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim,
            window=self.layer_window(layer_idx), sinks=self.sinks,
            positions=self.positions if self.positions in ("rope", "yarn") else "none",  # learned: at the embedding
            bias=self.qkv_bias, rope_theta=self.rope_theta, yarn_factor=self.yarn_factor,
            yarn_beta_slow=self.yarn_beta_slow, yarn_beta_fast=self.yarn_beta_fast,
            yarn_original_context=self.yarn_original_context, norm=self.norm, norm_eps=self.norm_eps,
            attn_dropout=self.dropout)

    def moe_spec(self) -> MoESpec:
        """The MLP block of a preset with experts (gpt-oss-20b: 32, gpt-oss-120b: 128) as a spec."""
        if self.n_experts == 0:
            raise ValueError("this preset has a dense FFN (n_experts = 0); use ffn.DenseFFN")
        if self.activation != "swiglu":
            raise ValueError(f"MoE experts use gpt-oss's clamped SwiGLU, the preset has {self.activation!r}")
        return MoESpec(hidden=self.hidden, intermediate=self.intermediate, n_experts=self.n_experts,
                       top_k=self.top_k, swiglu_alpha=self.swiglu_alpha, swiglu_limit=self.swiglu_limit,
                       norm_eps=self.norm_eps, router_bias=self.router_bias, expert_bias=self.mlp_bias)

    def ffn_spec(self) -> FFNSpec:
        """The preset's dense FFN (GPT-2: 4 x hidden, GELU tanh; gpt-oss: one expert's width) without a norm."""
        return FFNSpec(hidden=self.hidden, activation=self.activation, intermediate=self.intermediate,
                       bias=self.mlp_bias, swiglu_alpha=self.swiglu_alpha, swiglu_limit=self.swiglu_limit,
                       norm_eps=self.norm_eps)

    def norm_spec(self) -> NormSpec:
        """The preset's norm (gpt-oss: RMSNorm; GPT-2: LayerNorm) over its hidden size."""
        return NormSpec(norm=self.norm, hidden=self.hidden, norm_eps=self.norm_eps)

    def activation_spec(self) -> ActivationSpec:
        """The preset's FFN activation (gpt-oss: clamped SwiGLU; GPT-2: GELU tanh)."""
        return ActivationSpec(activation=self.activation, swiglu_alpha=self.swiglu_alpha,
                              swiglu_limit=self.swiglu_limit)

    def positions_spec(self) -> PositionsSpec:
        """The preset's position scheme (gpt-oss: YaRN; GPT-2: learned); a preset without one gets RoPE."""
        return PositionsSpec(positions=self.positions if self.positions != "none" else "rope", hidden=self.hidden,
                             max_position=self.max_position, head_dim=self.head_dim, rope_theta=self.rope_theta,
                             yarn_factor=self.yarn_factor, yarn_beta_slow=self.yarn_beta_slow,
                             yarn_beta_fast=self.yarn_beta_fast, yarn_original_context=self.yarn_original_context)

    @property
    def windowed_layers(self) -> int:
        return sum(self.layer_window(i) is not None for i in range(self.n_layers))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


_GPT2 = dict(
    vocab=50257, tie_embeddings=True, max_position=1024, dropout=0.1, norm="layernorm",
    window=None, sinks=False, positions="learned", n_experts=0, top_k=0,
    intermediate=None, ffn_mult=4, activation="gelu_tanh", head_dim=64,
)

# Data-only deltas from the defaults (gpt-oss-20b).
PRESETS: dict[str, dict[str, Any]] = {
    "gpt-oss-20b": {},
    "gpt-oss-120b": dict(n_layers=36, n_experts=128),
    "gpt2-small": dict(_GPT2, hidden=768, n_layers=12, n_heads=12, n_kv_heads=12),
    "gpt2-medium": dict(_GPT2, hidden=1024, n_layers=24, n_heads=16, n_kv_heads=16),
    "gpt2-large": dict(_GPT2, hidden=1280, n_layers=36, n_heads=20, n_kv_heads=20),
    "gpt2-xl": dict(_GPT2, hidden=1600, n_layers=48, n_heads=25, n_kv_heads=25),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """The preset `name` with `overrides` applied (validated like any ModelConfig)."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})

