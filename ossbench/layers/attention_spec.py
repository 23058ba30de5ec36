"""AttentionSpec: everything that decides what one attention block computes, declared once.

The module (`Attention(spec)`), the presets (`ModelConfig.attention_spec(layer)`) and the attention
family's params model (ossbench/workloads/attention.py, generated from these fields) all read it. The
backend is not part of the spec: every backend computes the same function, so it is a run choice.
Defaults: a full-attention layer of gpt-oss-20b (its odd layers), with YaRN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

from . import masks
from .rope import RopeSpec, yarn_ramp_bounds
from .spec import SpecError, spec_field, validate_spec

RAMP_FIELDS = ("head_dim", "rope_theta", "yarn_beta_slow", "yarn_beta_fast", "yarn_original_context", "positions")


def _divides_heads(v: int, d: Mapping[str, Any]) -> int:
    if d["n_heads"] % v:
        raise SpecError(f"n_kv_heads ({v}) must divide n_heads ({d['n_heads']})", ("n_heads", "n_kv_heads"))
    return v


def _even_head_dim(v: str, d: Mapping[str, Any]) -> str:
    if v != "none" and d["head_dim"] % 2:
        raise SpecError(f"rotary positions need an even head_dim, got {d['head_dim']}", ("head_dim", "positions"))
    return v


def _causal_needed(v: bool, d: Mapping[str, Any]) -> bool:
    if not v and d["window"] is not None:
        raise SpecError("causal: false with a window: the sliding window is defined only for causal attention "
                        "(a query sees itself and earlier tokens)", ("causal",))
    return v


def betas_ordered(v: float, d: Mapping[str, Any]) -> float:
    if not d["yarn_beta_slow"] < v:
        raise SpecError(f"yarn_beta_fast ({v}) must be greater than yarn_beta_slow ({d['yarn_beta_slow']})",
                        ("yarn_beta_slow", "yarn_beta_fast"))
    return v


def check_yarn_ramp(head_dim: int, rope: RopeSpec) -> None:
    """YaRN's ramp between beta_fast and beta_slow must fall inside the head's rotation pairs (also the
    rule of the positions and block families' YaRN fields)."""
    try:
        yarn_ramp_bounds(head_dim, rope)
    except ValueError as e:
        raise SpecError(f"{e}; these come from head_dim, rope_theta, yarn_beta_slow, yarn_beta_fast and "
                        f"yarn_original_context", RAMP_FIELDS) from None


def _yarn_ramp_fits(v: int, d: Mapping[str, Any]) -> int:
    rope = RopeSpec(d["rope_theta"], d["yarn_factor"], d["yarn_beta_slow"], d["yarn_beta_fast"], v)
    if d["positions"] == "yarn" and rope.scaled:
        check_yarn_ramp(d["head_dim"], rope)
    return v


def _mask_known(v: str | None, d: Mapping[str, Any]) -> str | None:
    """A mask name that parses and agrees with causal/window; stored in its canonical spelling."""
    if v is None:
        return v
    try:
        mask = masks.parse(v)
        masks.layer_mask(causal=d["causal"], window=d["window"], mask=mask)
    except ValueError as e:
        raise SpecError(str(e), ("mask",)) from None
    return mask.name


@dataclass(frozen=True)
class AttentionSpec:
    hidden: int = spec_field(2880, gt=0)
    n_heads: int = spec_field(64, gt=0)
    n_kv_heads: int = spec_field(8, "= n_heads: MHA, 1: MQA", gt=0, check=_divides_heads, needs=("n_heads",))
    head_dim: int = spec_field(64, "q width n_heads * head_dim (4096 for gpt-oss) need not equal hidden", gt=0)
    window: int | None = spec_field(None, "None: full attention; W: a query sees itself and W-1 earlier tokens",
                                    gt=0)
    sinks: bool = spec_field(True, "one learned logit per head: an extra softmax column, then dropped")
    positions: Literal["none", "rope", "yarn"] = spec_field(
        "yarn", "rope: plain RoPE (no scaling); none: no positions in the block (GPT-2 adds them at the embedding)",
        check=_even_head_dim, needs=("head_dim",))
    bias: bool = spec_field(True, "biases of the qkv and out projections")
    causal: bool = spec_field(True, check=_causal_needed, needs=("window",))
    rope_theta: float = spec_field(150000.0, "RoPE base: pair i turns at rope_theta^(-2i/head_dim)", gt=1.0)
    yarn_factor: float = spec_field(32.0, "1: no YaRN scaling (used only with positions=yarn)", ge=1.0)
    yarn_beta_slow: float = spec_field(1.0, gt=0.0)
    yarn_beta_fast: float = spec_field(32.0, gt=0.0, check=betas_ordered, needs=("yarn_beta_slow",))
    yarn_original_context: int = spec_field(4096, gt=0, check=_yarn_ramp_fits, needs=RAMP_FIELDS[:-2] + (
        "positions", "yarn_factor"))
    norm: Literal["rmsnorm", "layernorm", "none"] = spec_field("rmsnorm", "pre-norm inside the block")
    norm_eps: float = spec_field(1e-5, gt=0.0)
    mask: str | None = spec_field(None, "an attention mask by name (ossbench.layers.masks), e.g. window128 or "
                                        "and(chunk8192,window128); null: causal, or `window` when set (window "
                                        "and mask are exclusive)", check=_mask_known, needs=("causal", "window"))
    attn_dropout: float = spec_field(0.0, "GPT-2's attn_pdrop: dropout on the attention probabilities, train "
                                          "mode only", ge=0.0, lt=1.0)

    def __post_init__(self) -> None:
        validate_spec(self)

    @property
    def layer_mask(self) -> masks.Mask:
        """The mask object the layer, the cost model and the reference all use."""
        return masks.layer_mask(causal=self.causal, window=self.window,
                                mask=masks.parse(self.mask) if self.mask is not None else None)

    @property
    def rope(self) -> RopeSpec | None:
        """The rotary settings (None without positions); positions=rope is plain, unscaled RoPE."""
        if self.positions == "none":
            return None
        if self.positions == "rope":
            return RopeSpec(theta=self.rope_theta)
        return RopeSpec(self.rope_theta, self.yarn_factor, self.yarn_beta_slow, self.yarn_beta_fast,
                        self.yarn_original_context)

    @property
    def q_width(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_width(self) -> int:  # width of K (and of V)
        return self.n_kv_heads * self.head_dim
