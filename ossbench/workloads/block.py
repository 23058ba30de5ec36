"""The block family: one whole transformer layer, GPT-2's or gpt-oss's (layers/block.py), or a mix.

The parameters nest: the block-wide `hidden`, `norm` (layernorm | rmsnorm), `norm_eps` and `dropout`, then
an `attention:` group (the AttentionSpec fields) and an `mlp:` group (`kind: dense` with the FFNSpec fields,
or `kind: moe` with the MoESpec fields); outside the model they are dotted names (workloads/nesting.py).
- GPT-2:   norm layernorm, attention: n_kv_heads = n_heads, no window, no sinks, positions none (learned,
           added at the embedding); mlp: dense, gelu_tanh, intermediate 4 x hidden; dropout 0.1;
- gpt-oss: norm rmsnorm, attention: 64 / 8 heads, window null or 128, sinks, positions yarn; mlp: moe (32 or
           128 experts, top-4, clamped SwiGLU); dropout 0.
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
import dataclasses
from typing import Annotated, Any, Iterator, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from ..backends import unsupported_reason as backend_unsupported_reason
from ..errors import SkipCase
from ..layers.attention import KVCache, unsupported_reason
from ..layers.attention_spec import AttentionSpec
from ..layers.block import Block
from ..layers.config import ModelConfig
from ..layers.ffn_spec import FFNSpec
from ..layers.moe import MoE
from ..layers.moe_spec import MoESpec
from .attention import AttentionParams, attention_cost, check_against_reference, fill_decode_cache, make_module
from .attention import footprint as attention_footprint
from .attention import TOLERANCE as ATTENTION_TOLERANCE
from .base import DEFAULT_SEED, Check, Cost, Family, Footprint, Workload
from .building import randn, timed_call
from .checks import require_checked_dtype
from .fields import backend_of, fits_memory
from .ffn import TOLERANCE as FFN_TOLERANCE
from .ffn import FFNParams, check_ffn, ffn_cost, make_ffn
from .ffn import footprint as ffn_footprint
from .moe import MoEParams, balanced_tokens_per_expert, check_moe, gather_skip_reason, make_moe, moe_cost
from .moe import footprint as moe_footprint
from .spec_params import spec_params_model

# A block is an attention layer and an FFN/MoE layer, each checked against its own float64 reference:
# the looser of the two families' tolerances per dtype.
TOLERANCE = {d: max(ATTENTION_TOLERANCE[d], FFN_TOLERANCE[d]) for d in ATTENTION_TOLERANCE}
DROPOUT_FLOPS = 1  # per element of a dropout's output, per direction: the multiply by mask / (1 - p)


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class _DenseKind(_Group):
    kind: Literal["dense"] = Field(description="dense: GPT-2's FFN; moe: gpt-oss's MoE")


class _MoEKind(_Group):
    kind: Literal["moe"] = Field(description="dense: GPT-2's FFN; moe: gpt-oss's MoE")


# Set once for the whole block, so not part of its `attention:` and `mlp:` groups: the residual width, both
# pre-norms (the MoE's is RMSNorm), whether attention is causal (always, in a decoder block) and dropout.
BLOCK_WIDE = ("hidden", "norm", "norm_eps", "causal", "attn_dropout")


def _ignore_other_kind(own: tuple[str, ...], other: tuple[str, ...]) -> Any:
    """Drop the fields only the other kind of MLP has, so one profile can size both kinds (n_experts for
    the MoE variants, activation for the dense ones) and a case records only what it uses."""
    foreign = set(other) - set(own)

    def drop(cls: type, data: Any) -> Any:
        return {k: v for k, v in data.items() if k not in foreign} if isinstance(data, dict) else data
    return model_validator(mode="before")(classmethod(drop))  # type: ignore[arg-type]


_DENSE_FIELDS = tuple(f.name for f in dataclasses.fields(FFNSpec))
_MOE_FIELDS = tuple(f.name for f in dataclasses.fields(MoESpec))
BlockAttention = spec_params_model("BlockAttention", _Group, AttentionSpec, exclude=BLOCK_WIDE, nullable={
    "n_heads": "hidden / head_dim (GPT-2's 64-wide heads)", "n_kv_heads": "n_heads (multi-head attention)"})
BlockAttention.__doc__ = "The block's attention: the AttentionSpec fields less the block-wide ones."
BlockDense = spec_params_model("BlockDense", _DenseKind, FFNSpec, exclude=BLOCK_WIDE, validators={
    "_other_kind": _ignore_other_kind(_DENSE_FIELDS, _MOE_FIELDS)}, nullable={"intermediate": "4 x hidden (GPT-2)"})
BlockDense.__doc__ = "The block's MLP as GPT-2's dense FFN: the FFNSpec fields less the block-wide ones."
BlockMoE = spec_params_model("BlockMoE", _MoEKind, MoESpec, exclude=BLOCK_WIDE, validators={
    "_other_kind": _ignore_other_kind(_MOE_FIELDS, _DENSE_FIELDS)}, nullable={"intermediate": "hidden (gpt-oss)"})
BlockMoE.__doc__ = "The block's MLP as gpt-oss's MoE: the MoESpec fields less the block-wide ones."


class BlockParams(BaseModel):
    """One block case: the run axes, the block-wide fields, then the `attention:` and `mlp:` groups, each
    its layer's spec (validated again whole by its own family's model, so every rule applies)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    mode: Literal["prefill", "decode", "train"]
    attn_backend: backend_of("attention")
    moe_backend: backend_of("moe") = Field(description="mlp.kind: moe only")
    batch: PositiveInt
    seq_len: PositiveInt = Field(description="tokens per sequence in prefill/train (unused in decode)")
    kv_len: PositiveInt = Field(description="cached tokens before the decoded one (unused in prefill/train)")
    hidden: PositiveInt
    norm: Literal["rmsnorm", "layernorm"] = Field(description="both pre-norms: gpt-oss's RMSNorm or GPT-2's "
                                                              "LayerNorm")
    norm_eps: PositiveFloat
    dropout: float = Field(ge=0.0, lt=1.0, description="GPT-2's dropout on the attention probabilities and "
                                                       "after attention and the MLP; train mode only")
    attention: BlockAttention = Field(  # type: ignore[valid-type]
        description="the attention half: AttentionSpec's fields")
    mlp: Annotated[Union[BlockDense, BlockMoE], Field(discriminator="kind")] = Field(  # type: ignore[valid-type]
        description="the MLP half: FFNSpec's fields (kind: dense) or MoESpec's (kind: moe)")

    @model_validator(mode="before")
    @classmethod
    def _derived_sizes(cls, data: Any) -> Any:
        """Resolve the null sizes, so that a suite can say "GPT-2's shape at this hidden size" once for any
        preset or CPU profile; the recorded parameters hold the resolved values."""
        if not isinstance(data, dict):
            return data
        d = dict(data)
        hidden = d.get("hidden")
        if isinstance(d.get("attention"), dict):
            a = d["attention"] = dict(d["attention"])
            head_dim = a.get("head_dim")
            if "n_heads" in a and a["n_heads"] is None and isinstance(hidden, int) and isinstance(head_dim, int):
                if head_dim <= 0 or hidden % head_dim:
                    raise ValueError(f"attention.n_heads: null means hidden / head_dim, but head_dim {head_dim} "
                                     f"does not divide hidden {hidden}")
                a["n_heads"] = hidden // head_dim
            if "n_kv_heads" in a and a["n_kv_heads"] is None:
                a["n_kv_heads"] = a.get("n_heads")
        if isinstance(d.get("mlp"), dict):
            m = d["mlp"] = dict(d["mlp"])
            if "intermediate" in m and m["intermediate"] is None and isinstance(hidden, int):
                m["intermediate"] = 4 * hidden if m.get("kind") == "dense" else hidden
        return d

    @model_validator(mode="after")
    def _halves_valid(self) -> BlockParams:
        if self.mlp.kind == "moe" and self.norm != "rmsnorm":
            raise ValueError("mlp.kind: moe is gpt-oss's MLP block, whose pre-norm is RMSNorm: set norm: rmsnorm")
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
        p, dtype_bytes, [1] * p.mlp.n_experts if p.mlp.kind == "moe" else None).bytes))

    @property
    def tokens(self) -> int:
        return self.batch if self.mode == "decode" else self.batch * self.seq_len

    def attention_params(self) -> AttentionParams:
        return AttentionParams(
            mode=self.mode, backend=self.attn_backend, batch=self.batch, seq_len=self.seq_len, kv_len=self.kv_len,
            hidden=self.hidden, norm=self.norm, norm_eps=self.norm_eps, causal=True, **self.attention.model_dump())

    def mlp_params(self) -> MoEParams | FFNParams:
        fields = self.mlp.model_dump(exclude={"kind"})
        if self.mlp.kind == "moe":
            return MoEParams(mode=self.mode, backend=self.moe_backend, grouped_impl="auto", tokens=self.tokens,
                             hidden=self.hidden, norm_eps=self.norm_eps, skew=0.0, dense="none", **fields)
        return FFNParams(mode=self.mode, tokens=self.tokens, hidden=self.hidden, norm=self.norm,
                         norm_eps=self.norm_eps, n_experts=0, top_k=0, expert_intermediate=None, match="none",
                         **fields)


def _spec_values(spec: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(spec).items() if k not in BLOCK_WIDE}


def defaults(cfg: ModelConfig) -> dict[str, Any]:
    """The preset's block: a full-attention layer (gpt-oss's odd layers) over 4096 tokens (GPT-2: 1024),
    eager attention (every feature on every device), grouped MoE, the preset's dropout. `mlp` holds the
    preset's dense FFN and MoE fields both (the kind not chosen ignores the other's)."""
    context = min(4096, cfg.max_position)
    mlp = {**_spec_values(cfg.ffn_spec()), **(_spec_values(cfg.moe_spec()) if cfg.n_experts else {})}
    return dict(mode="prefill", attn_backend="eager", moe_backend="grouped", batch=1, seq_len=context,
                kv_len=context, hidden=cfg.hidden, norm=cfg.norm, norm_eps=cfg.norm_eps, dropout=cfg.dropout,
                attention={**_spec_values(cfg.attention_spec(0)), "window": None},
                mlp={"kind": "moe" if cfg.n_experts else "dense", **mlp})


VARIANTS: dict[str, dict[str, Any]] = {
    "preset": {},
    "window128": {"attention.window": 128},
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
        mlp = ffn_cost(p.mode, p.tokens, p.hidden, p.mlp.intermediate, p.mlp.activation, p.mlp.bias, p.norm,
                       dtype_bytes)
        mlp_total = mlp_active = mlp.extra["params"]
    train = p.mode == "train"
    residual_bytes = (4 if train else 2) * p.tokens * p.hidden * dtype_bytes
    # two residual sites [tokens, hidden] and the attention probabilities [heads, pairs], forward + backward
    dropped = 2 * p.tokens * p.hidden + p.attention.n_heads * attn.extra["attn_pairs"]
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


def skip_reason(p: BlockParams, device: Any, dtype: torch.dtype) -> str | None:
    """Why `build` skips the case on `device` (None: it runs): what either half's backend cannot express."""
    device, training = torch.device(device), p.mode == "train"
    if reason := unsupported_reason(p.attn_backend, sinks=p.attention.sinks, device=device, training=training,
                                    attn_dropout=p.dropout, dtype=dtype, mask=p.attention_params().layer_mask):
        return reason
    mp = p.mlp_params()
    if isinstance(mp, MoEParams):
        if reason := backend_unsupported_reason("moe", mp.backend, device, dtype, train=training):
            return reason
        if mp.backend == "gather":
            return gather_skip_reason(mp, device, torch.finfo(dtype).bits // 8)
    return None


def build(params: BlockParams, device: Any, dtype: torch.dtype, *, seed: int = DEFAULT_SEED) -> Workload:
    p = params
    device = torch.device(device)
    require_checked_dtype("block", TOLERANCE, dtype)
    training = p.mode == "train"
    dtype_bytes = torch.finfo(dtype).bits // 8
    if reason := skip_reason(p, device, dtype):
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
            counts = block.mlp.route(block.mlp.norm(h)).tokens_per_expert(p.mlp.n_experts).tolist()
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
    skip=skip_reason,
)
