"""The block family: one whole transformer layer, GPT-2's or gpt-oss's (layers/block.py), or a mix.

`norm` (layernorm | rmsnorm) and `mlp` (dense | moe) pick the structure, the attention fields its shape:
- GPT-2:   norm layernorm, n_kv_heads = n_heads, no window, no sinks, positions none (learned, added at the
           embedding), mlp dense, activation gelu_tanh, intermediate 4 x hidden, dropout 0.1;
- gpt-oss: norm rmsnorm, 64 / 8 heads, window null or 128, sinks, positions yarn, mlp moe (32 or 128
           experts, top-4, clamped SwiGLU), dropout 0.
Backends pass through: `attn_backend` (eager | sdpa | flex, see the attention family) and `moe_backend`
(gather | loop | grouped, see the moe family; its grouped kernel is chosen automatically and recorded).

Modes:
- prefill: one forward pass over batch x seq_len tokens, dropout off (eval);
- decode:  one token per sequence at position kv_len against a KV cache pre-filled with kv_len random
           keys/values (the attention family's decode path), then the FFN/MoE for that token; every call
           rewrites the same cache slot, so calls repeat;
- train:   forward + backward (gradients of the input and every parameter) with the block in train mode,
           so dropout > 0 is active: "dropout 0.1 vs 0" is a pair of train cases.

Cost model (per call; docs/layers.md): the attention family's cost plus the ffn or moe family's cost for
the block's tokens, with two changes. Bytes: the residual stream between the two halves (written by the
attention, read by the MLP; in train also its gradient) is counted once by each half's cost and is not part
of the block's minimum, so it is taken out again. FLOPs: dropout adds one multiply per element of each of
its three outputs (the attention probabilities, [heads, query/key pairs], and the two residual branches,
[tokens, hidden]) in the forward pass and one in the backward pass (train only; the random mask itself is
not arithmetic). `matmul_flops` is what FlopCounterMode sees on the eager and loop backends.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError, \
    field_validator, model_validator

from ..backends import unsupported_reason as backend_unsupported_reason
from ..errors import SkipCase
from ..layers.attention import KVCache, unsupported_reason
from ..layers.block import Block
from ..layers.config import ModelConfig
from ..layers.moe import MoE
from .attention import AttentionParams, attention_cost, check_against_reference, fill_decode_cache, make_module
from .attention import footprint as attention_footprint
from .attention import TOLERANCE as ATTENTION_TOLERANCE
from .base import DEFAULT_SEED, Check, Cost, Family, Footprint, Workload
from .building import randn, timed_call
from .checks import require_checked_dtype
from .fields import backend_of, fits_memory, yarn_ramp_fits
from .ffn import TOLERANCE as FFN_TOLERANCE
from .ffn import FFNParams, check_ffn, ffn_cost, make_ffn
from .ffn import footprint as ffn_footprint
from .moe import MoEParams, balanced_tokens_per_expert, check_moe, gather_skip_reason, make_moe, moe_cost
from .moe import footprint as moe_footprint

# A block is an attention layer and an FFN/MoE layer, each checked against its own float64 reference:
# the looser of the two families' tolerances per dtype.
TOLERANCE = {d: max(ATTENTION_TOLERANCE[d], FFN_TOLERANCE[d]) for d in ATTENTION_TOLERANCE}
DROPOUT_FLOPS = 1  # per element of a dropout's output, per direction: the multiply by mask / (1 - p)


class BlockParams(BaseModel):
    """One block case. The attention and MLP halves are validated by their own families' models."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    mode: Literal["prefill", "decode", "train"]
    attn_backend: backend_of("attention")
    moe_backend: backend_of("moe") = Field(description="mlp: moe only")
    batch: PositiveInt
    seq_len: PositiveInt = Field(description="tokens per sequence in prefill/train (unused in decode)")
    kv_len: PositiveInt = Field(description="cached tokens before the decoded one (unused in prefill/train)")
    hidden: PositiveInt
    norm: Literal["rmsnorm", "layernorm"] = Field(description="both pre-norms: gpt-oss's RMSNorm or GPT-2's "
                                                              "LayerNorm")
    norm_eps: PositiveFloat
    n_heads: PositiveInt | None = Field(description="null: hidden / head_dim (GPT-2's rule: 64-wide heads)")
    n_kv_heads: PositiveInt | None = Field(description="null: n_heads (multi-head attention)")
    head_dim: PositiveInt
    window: PositiveInt | None = Field(description="None: full attention; W: a query sees itself and W-1 "
                                                   "earlier tokens")
    sinks: bool
    positions: Literal["none", "rope", "yarn"] = Field(description="inside attention; none for GPT-2, whose "
                                                                   "learned positions are added at the embedding")
    rope_theta: float = Field(gt=1.0, description="RoPE base: pair i turns at rope_theta^(-2i/head_dim)")
    yarn_factor: float = Field(ge=1.0)
    yarn_beta_slow: PositiveFloat
    yarn_beta_fast: PositiveFloat
    yarn_original_context: PositiveInt
    attn_bias: bool = Field(description="biases of the qkv and out projections")
    mlp: Literal["dense", "moe"]
    activation: Literal["gelu_tanh", "swiglu"] = Field(description="dense FFN's activation (moe: swiglu)")
    intermediate: PositiveInt | None = Field(description="dense: FFN width, moe: one expert's width; null: "
                                                         "dense 4 x hidden (GPT-2), moe hidden (gpt-oss)")
    mlp_bias: bool = Field(description="FFN biases; moe: router and expert biases")
    n_experts: NonNegativeInt = Field(description="mlp: moe only")
    top_k: NonNegativeInt = Field(description="mlp: moe only")
    swiglu_alpha: PositiveFloat
    swiglu_limit: PositiveFloat
    dropout: float = Field(ge=0.0, lt=1.0, description="GPT-2's dropout on the attention probabilities and "
                                                       "after attention and the MLP; train mode only")

    # checked here too (the attention half checks it again), so that the error names the field
    _yarn = field_validator("yarn_original_context")(yarn_ramp_fits)

    @model_validator(mode="before")
    @classmethod
    def _derived_sizes(cls, data: Any) -> Any:
        """Resolve the null sizes, so that a suite can say "GPT-2's shape at this hidden size" once for any
        preset or CPU profile; the recorded parameters hold the resolved values."""
        if not isinstance(data, dict):
            return data
        d = dict(data)
        hidden, head_dim = d.get("hidden"), d.get("head_dim")
        if "n_heads" in d and d["n_heads"] is None and isinstance(hidden, int) and isinstance(head_dim, int):
            if head_dim <= 0 or hidden % head_dim:
                raise ValueError(f"n_heads: null means hidden / head_dim, but head_dim {head_dim} does not divide "
                                 f"hidden {hidden}")
            d["n_heads"] = hidden // head_dim
        if "n_kv_heads" in d and d["n_kv_heads"] is None:
            d["n_kv_heads"] = d.get("n_heads")
        if "intermediate" in d and d["intermediate"] is None and isinstance(hidden, int):
            d["intermediate"] = 4 * hidden if d.get("mlp") == "dense" else hidden
        return d

    @model_validator(mode="after")
    def _halves_valid(self) -> BlockParams:
        if self.mlp == "moe":
            if self.norm != "rmsnorm":
                raise ValueError("mlp: moe is gpt-oss's MLP block, whose pre-norm is RMSNorm: set norm: rmsnorm")
            if self.activation != "swiglu":
                raise ValueError("mlp: moe has clamped-SwiGLU experts: set activation: swiglu")
            if not 1 <= self.top_k <= self.n_experts:
                raise ValueError(f"mlp: moe needs 1 <= top_k <= n_experts, got top_k {self.top_k}, "
                                 f"n_experts {self.n_experts}")
        for half, make in (("attention", self.attention_params), ("mlp", self.mlp_params)):
            try:
                make()
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(map(str, err["loc"]))
                raise ValueError(f"{half}: {where + ': ' if where else ''}{err['msg']}") from None
        return self

    # every expert is held in memory, so all of them count (the cost model's bytes count those touched)
    _memory = model_validator(mode="after")(fits_memory(lambda p, dtype_bytes: block_cost(
        p, dtype_bytes, [1] * p.n_experts if p.mlp == "moe" else None).bytes))

    @property
    def tokens(self) -> int:
        return self.batch if self.mode == "decode" else self.batch * self.seq_len

    def attention_params(self) -> AttentionParams:
        return AttentionParams(
            mode=self.mode, backend=self.attn_backend, batch=self.batch, seq_len=self.seq_len, kv_len=self.kv_len,
            hidden=self.hidden, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim,
            window=self.window, sinks=self.sinks, positions=self.positions, bias=self.attn_bias, causal=True,
            rope_theta=self.rope_theta, yarn_factor=self.yarn_factor, yarn_beta_slow=self.yarn_beta_slow,
            yarn_beta_fast=self.yarn_beta_fast, yarn_original_context=self.yarn_original_context,
            norm=self.norm, norm_eps=self.norm_eps)

    def mlp_params(self) -> MoEParams | FFNParams:
        if self.mlp == "moe":
            return MoEParams(
                mode=self.mode, backend=self.moe_backend, grouped_impl="auto", tokens=self.tokens,
                hidden=self.hidden, intermediate=self.intermediate, n_experts=self.n_experts, top_k=self.top_k,
                swiglu_alpha=self.swiglu_alpha, swiglu_limit=self.swiglu_limit, norm_eps=self.norm_eps,
                router_bias=self.mlp_bias, expert_bias=self.mlp_bias, weights="dtype", skew=0.0, dense="none")
        return FFNParams(
            mode=self.mode, tokens=self.tokens, hidden=self.hidden, activation=self.activation,
            intermediate=self.intermediate, bias=self.mlp_bias, swiglu_alpha=self.swiglu_alpha,
            swiglu_limit=self.swiglu_limit, norm=self.norm, norm_eps=self.norm_eps, n_experts=0, top_k=0,
            expert_intermediate=None, match="none")


def defaults(cfg: ModelConfig) -> dict[str, Any]:
    """The preset's block: a full-attention layer (gpt-oss's odd layers) over 4096 tokens (GPT-2: 1024),
    eager attention (every feature on every device), grouped MoE, the preset's dropout."""
    context = min(4096, cfg.max_position)
    return dict(
        mode="prefill", attn_backend="eager", moe_backend="grouped", batch=1, seq_len=context, kv_len=context,
        hidden=cfg.hidden, norm=cfg.norm, norm_eps=cfg.norm_eps, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, window=None, sinks=cfg.sinks,
        positions=cfg.positions if cfg.positions in ("rope", "yarn") else "none",  # learned: at the embedding
        rope_theta=cfg.rope_theta, yarn_factor=cfg.yarn_factor, yarn_beta_slow=cfg.yarn_beta_slow,
        yarn_beta_fast=cfg.yarn_beta_fast, yarn_original_context=cfg.yarn_original_context,
        attn_bias=cfg.qkv_bias, mlp="moe" if cfg.n_experts else "dense", activation=cfg.activation,
        intermediate=cfg.intermediate, mlp_bias=cfg.mlp_bias, n_experts=cfg.n_experts, top_k=cfg.top_k,
        swiglu_alpha=cfg.swiglu_alpha, swiglu_limit=cfg.swiglu_limit, dropout=cfg.dropout)


VARIANTS: dict[str, dict[str, Any]] = {
    "preset": {},
    "window128": {"window": 128},
    "dropout": {"dropout": 0.1},
    "no-dropout": {"dropout": 0.0},
    "flex": {"attn_backend": "flex"},
}


# --- cost model
def block_cost(p: BlockParams, dtype_bytes: int, tokens_per_expert: list[int] | None) -> Cost:
    """The attention and MLP costs summed, without the residual stream between them (see module docstring)."""
    attn = attention_cost(p.attention_params(), dtype_bytes)
    mp = p.mlp_params()
    if isinstance(mp, MoEParams):
        mlp = moe_cost(mp, dtype_bytes, tokens_per_expert or [])
        mlp_total, mlp_active = mlp.extra["params_total"], mlp.extra["params_active"]
    else:
        mlp = ffn_cost(p.mode, p.tokens, p.hidden, p.intermediate, p.activation, p.mlp_bias, p.norm, dtype_bytes)
        mlp_total = mlp_active = mlp.extra["params"]
    train = p.mode == "train"
    residual_bytes = (4 if train else 2) * p.tokens * p.hidden * dtype_bytes
    # two residual sites [tokens, hidden] and the attention probabilities [heads, pairs], forward + backward
    dropped = 2 * p.tokens * p.hidden + p.n_heads * attn.extra["attn_pairs"]
    dropout = 2 * DROPOUT_FLOPS * dropped if train and p.dropout > 0 else 0
    extra = {
        "matmul_flops": attn.flops + mlp.extra["matmul_flops"],
        "attn_flops": attn.extra["attn_flops"],
        "proj_flops": attn.extra["proj_flops"],
        "mlp_matmul_flops": mlp.extra["matmul_flops"],
        "activation_flops": mlp.extra["activation_flops"],
        "dropout_flops": float(dropout),
        "attn_pairs": attn.extra["attn_pairs"],
        "kv_cache_bytes": attn.extra["kv_cache_bytes"],
        "attn_bytes": attn.bytes,
        "mlp_bytes": mlp.bytes,
        "params": attn.extra["params"] + mlp_total,
        "params_active": attn.extra["params"] + mlp_active,
    }
    for key in ("experts_touched", "expert_bytes_touched", "load_max_over_mean"):
        if key in mlp.extra:
            extra[key] = mlp.extra[key]
    return Cost(flops=attn.flops + mlp.flops + dropout, bytes=attn.bytes + mlp.bytes - residual_bytes,
                tokens=p.tokens, extra=extra)


def footprint(p: BlockParams, dtype_bytes: int) -> Footprint:
    """The case before it is built (ossbench/plan.py): the two halves' footprints, x held once, both halves'
    transient bytes together (a training step keeps both for the backward); balanced routing."""
    mp = p.mlp_params()
    attn = attention_footprint(p.attention_params(), dtype_bytes)
    if isinstance(mp, MoEParams):
        mlp, counts = moe_footprint(mp, dtype_bytes), balanced_tokens_per_expert(mp)
    else:
        mlp, counts = ffn_footprint(mp, dtype_bytes), None
    x_bytes = p.tokens * p.hidden * dtype_bytes * (2 if p.mode == "train" else 1)
    return Footprint(cost=block_cost(p, dtype_bytes, counts),
                     persistent_bytes=attn.persistent_bytes + mlp.persistent_bytes - x_bytes,
                     activation_bytes=attn.activation_bytes + mlp.activation_bytes,
                     backends=attn.backends + mlp.backends)


# --- building
def make_block(p: BlockParams, device: Any, dtype: torch.dtype, generator: torch.Generator) -> Block:
    """The block with the attention and moe/ffn families' random weights."""
    # GPT-2's attn_pdrop; the attention family itself never drops out
    attn = make_module(p.attention_params(), device, dtype, generator, attn_dropout=p.dropout)
    mp = p.mlp_params()
    if isinstance(mp, MoEParams):
        mlp = make_moe(mp, device, dtype, generator)
    else:
        mlp = make_ffn(mp, device, dtype, generator, residual=False)
    return Block(attn, mlp, p.dropout)


def build(params: BlockParams, device: Any, dtype: torch.dtype, *, seed: int = DEFAULT_SEED) -> Workload:
    p = params
    device = torch.device(device)
    require_checked_dtype("block", TOLERANCE, dtype)
    training = p.mode == "train"
    dtype_bytes = torch.finfo(dtype).bits // 8
    if reason := unsupported_reason(p.attn_backend, sinks=p.sinks, device=device, training=training, dtype=dtype,
                                    mask=p.attention_params().layer_mask):
        raise SkipCase(reason)
    mp = p.mlp_params()
    if isinstance(mp, MoEParams) and (reason := backend_unsupported_reason("moe", mp.backend, device, dtype,
                                                                           train=training)):
        raise SkipCase(reason)
    if isinstance(mp, MoEParams) and mp.backend == "gather" and (reason := gather_skip_reason(mp, device,
                                                                                               dtype_bytes)):
        raise SkipCase(reason)
    generator = torch.Generator(device=device).manual_seed(seed)
    block = make_block(p, device, dtype, generator)
    block.train(training)  # dropout acts in train mode only

    cache, start = None, 0
    if p.mode == "decode":
        x = randn((p.batch, 1, p.hidden), generator, device, dtype)  # [B, 1, hidden]
        cache, start = fill_decode_cache(block.attn, p.attention_params(), generator, device, dtype), p.kv_len
    else:
        x = randn((p.batch, p.seq_len, p.hidden), generator, device, dtype)  # [B, S, hidden]

    info: dict[str, Any] = {}
    counts = None
    if isinstance(block.mlp, MoE):
        with torch.no_grad():  # the routing of the MLP's actual inputs: experts touched, for the cost model
            h = (x + block.attn.update(x, cache, start)).reshape(-1, p.hidden)
            counts = block.mlp.route(block.mlp.norm(h)).tokens_per_expert(p.n_experts).tolist()
        info["tokens_per_expert"] = counts
        if p.moe_backend == "grouped":
            info["grouped_impl"] = block.mlp.resolved_grouped_impl(device, dtype, training)

    block.requires_grad_(training)
    dy = randn(tuple(x.shape), generator, device, dtype) if training else None
    fn = timed_call(lambda: block(x, cache, start), dy, [x], [x, *block.parameters()])  # train: no cache

    held = sum(t.numel() * t.element_size() for t in (*block.parameters(), *block.buffers()))
    held += x.numel() * x.element_size() * (2 if training else 1)
    held += cache.nbytes if cache is not None else 0
    inputs = {"x": x, "cache.k": cache.k, "cache.v": cache.v} if cache is not None else {"x": x}
    if dy is not None:
        inputs["dy"] = dy
    return Workload(fn=fn, cost=block_cost(p, dtype_bytes, counts),
                    check=lambda: check_block(block, p, x, cache, dy, seed), persistent_bytes=held, info=info,
                    inputs=inputs)


# --- numerics check
@contextmanager
def dropout_off(block: Block) -> Iterator[None]:
    """The block in eval mode (no dropout) for a deterministic comparison, then back to its mode."""
    was_training = block.training
    block.eval()
    try:
        yield
    finally:
        block.train(was_training)


def check_block(block: Block, p: BlockParams, x: torch.Tensor, cache: KVCache | None,
                dy: torch.Tensor | None, seed: int) -> Check:
    """Each half against its own family's float64 reference, on the inputs it receives in the block (the
    attention on x, the MLP on the backend's h = x + attention), then the block's output against the sum
    of the two halves. Dropout is off for the check (its random mask is tested in tests/test_block.py);
    in train mode the halves' input gradients are compared too where their families do so (few tokens)."""
    start = p.kv_len if p.mode == "decode" else 0
    with dropout_off(block):
        parts = [("attention", check_against_reference(block.attn, p.attention_params(), x, cache, dy,
                                                           seed=seed))]
        with torch.no_grad():
            h = x.detach() + block.attn.update(x.detach(), cache, start)  # [B, S, hidden]
        h_tokens = h.reshape(-1, p.hidden)
        dy_tokens = dy.reshape(-1, p.hidden) if dy is not None else None
        mlp_check = check_moe if isinstance(block.mlp, MoE) else check_ffn
        parts.append(("mlp", mlp_check(block.mlp, h_tokens, dy_tokens)))
        with torch.no_grad():  # the wiring: the same ops outside the block give the same result
            y = block(x.detach(), cache, start).double()
            summed = (h + block.mlp.update(h)).double()
        abs_err = (y - summed).abs().max().item()
        rel_err = abs_err / max((summed - x.detach().double()).abs().max().item(), 1e-300)  # of the update
    parts.append(("composition", Check(abs_err, rel_err, TOLERANCE[x.dtype], "the block's output against "
                                                                            "h + mlp(h)")))
    return Check(max_abs_err=max(c.max_abs_err for _, c in parts), max_rel_err=max(c.max_rel_err for _, c in parts),
                 tolerance=TOLERANCE[x.dtype],
                 reference="; ".join(f"{name}: {c.reference} (rel err {c.max_rel_err:.2g})" for name, c in parts)
                 + "; dropout off")


FAMILY = Family(
    name="block",
    description="one transformer layer: GPT-2's (LayerNorm, MHA, GELU FFN, dropout) or gpt-oss's (RMSNorm, "
                "GQA + window/full + sinks, MoE), with attention and MoE backends, in prefill, decode or train",
    params_model=BlockParams,
    defaults=defaults,
    build=build,
    variants=VARIANTS,
    footprint=footprint,
)
