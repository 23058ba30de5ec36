"""The model family: a whole gpt-oss model (layers/model.py) from a preset, in prefill or decode.

Parameters: the run axes (mode, backends, batch, seq_len, kv_len), `layers` (null: all of the preset's),
`experts` (mxfp4: the checkpoint's storage; dtype: bf16 on a GPU), `cuda_graph` (decode replayed from a
captured CUDA graph), then the preset's shape (the ModelConfig fields a gpt-oss model varies: hidden,
heads, window, experts, YaRN, ...). GPT-2's fields (LayerNorm, learned positions, tied embedding) are not
parameters: the family builds gpt-oss models.

Modes:
- prefill: time to first token: the embedding, every block over batch x seq_len prompt tokens (filling
  the KV caches), the final norm and the unembedding of the last position;
- decode:  one token per sequence at position kv_len against KV caches holding kv_len random keys/values
  (a windowed layer: a ring of its window), down to the logits; every call rewrites the same slot.

Cost model (per call; docs/model.md): the block family's cost of each layer (its routing's touched
experts, its own window) plus the embedding rows and the head (final norm, unembedding, logits). In decode
the bytes are the speed-of-light bytes of a step: every layer's attention weights and the KV it attends
to, the router, the experts the batch touched, the unembedding; a step cannot take less than bytes / HBM
bandwidth, so the report's bandwidth fraction is how close a decode step comes.

Numerics: blocks are checked one by one, each on the input it receives in the model, against the block
family's float64 references (all blocks of a model of up to CHECK_ALL_LAYERS layers, else the first
windowed, the first full and the last), then the head against float64, then the timed call's logits
against the chained pieces.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, create_model, model_validator

from ..backends import unsupported_reason as backend_unsupported_reason
from ..errors import SkipCase
from ..layers.attention import KVCache, unsupported_reason
from ..layers.config import ModelConfig
from ..layers.model import Model
from ..layers.storage import expert_weight_values, layer_bytes, weight_bytes
from .attention import attention_pairs, kv_bytes
from .base import DEFAULT_SEED, Check, Cost, Family, Footprint, Workload
from .block import TOLERANCE, BlockParams, block_cost, check_block
from .checks import errors, require_checked_dtype
from .fields import backend_of, fits_memory
from .moe import available_bytes, balanced_tokens_per_expert, gather_skip_reason

CHECK_ALL_LAYERS = 4
# the stored weights by kind (layers/storage.py) as each case records them (cost_extra.stored_<group>_bytes)
STORED_GROUPS = {"experts": ("expert_weights", "expert_blocks", "expert_scales", "expert_biases"),
                 "attention": ("attention", "norms"), "router": ("router",),
                 "embeddings": ("embedding", "unembedding")}
MEMORY_FRACTION = 0.95  # a case whose weights and caches need more of the device's free memory is skipped
# The ModelConfig fields a gpt-oss model varies; the rest stay gpt-oss's (RMSNorm, YaRN, biases, untied).
CONFIG_FIELDS = ("hidden", "n_layers", "vocab", "max_position", "norm_eps", "n_heads", "n_kv_heads", "head_dim",
                 "window", "window_every", "sinks", "rope_theta", "yarn_factor", "yarn_beta_slow", "yarn_beta_fast",
                 "yarn_original_context", "n_experts", "top_k", "intermediate", "swiglu_alpha", "swiglu_limit")
BOUNDS = {"rope_theta": {"gt": 1.0}, "yarn_factor": {"ge": 1.0}}  # the others: > 0 (ModelConfig's rules)
_HELP = {"n_layers": "the preset's layers (`layers` builds the first of them)",
         "window": "sliding window of the windowed layers; null: full attention everywhere",
         "window_every": "layer i is windowed iff i % window_every == 0 (gpt-oss: 2, starting with layer 0)",
         "n_kv_heads": "= n_heads: the MHA equivalent", "intermediate": "width of one expert"}


class ModelAxes(BaseModel):
    """The run axes of a model case; ModelParams adds the preset's shape fields."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    mode: Literal["prefill", "decode"]
    attn_backend: backend_of("attention")
    moe_backend: backend_of("moe")
    batch: PositiveInt
    seq_len: PositiveInt = Field(description="prompt tokens per sequence in prefill (unused in decode)")
    kv_len: PositiveInt = Field(description="cached tokens before the decoded one (unused in prefill)")
    layers: PositiveInt | None = Field(None, description="blocks built: the first `layers` of the preset; null: all")
    experts: Literal["mxfp4", "dtype"] = Field(description="expert weights as MXFP4 blocks + scales (the "
                                                           "checkpoint's), or in the case's dtype (bf16)")
    cuda_graph: bool = Field(False, description="decode: capture the step in a CUDA graph and time its replay")

    @property
    def config(self) -> ModelConfig:
        return ModelConfig(**{name: getattr(self, name) for name in CONFIG_FIELDS})

    @property
    def n_blocks(self) -> int:
        return self.layers if self.layers is not None else self.n_layers  # type: ignore[attr-defined]

    @property
    def tokens(self) -> int:
        return self.batch if self.mode == "decode" else self.batch * self.seq_len

    def block_params(self, layer: int) -> BlockParams:
        """Layer `layer` as a block-family case (its window, the model's backends and shapes)."""
        cfg = self.config
        drop = ("hidden", "norm", "norm_eps", "causal", "attn_dropout")
        attn = {k: v for k, v in dataclasses.asdict(cfg.attention_spec(layer)).items() if k not in drop}
        mlp = {k: v for k, v in dataclasses.asdict(cfg.moe_spec()).items() if k not in drop}
        return BlockParams(mode=self.mode, attn_backend=self.attn_backend, moe_backend=self.moe_backend,
                           batch=self.batch, seq_len=self.seq_len, kv_len=self.kv_len, hidden=cfg.hidden,
                           norm="rmsnorm", norm_eps=cfg.norm_eps, dropout=0.0, attention=attn,
                           mlp={"kind": "moe", **mlp, "weights": self.experts})


def _config_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(ModelConfig)
    defaults = ModelConfig()
    out = {}
    for name in CONFIG_FIELDS:
        hint = int if name == "intermediate" else hints[name]  # gpt-oss gives it; null (ffn_mult) is GPT-2's
        bounds = BOUNDS.get(name, {"gt": 0} if hint in (int, float, int | None) else {})
        out[name] = (hint, Field(getattr(defaults, name), description=_HELP.get(name), **bounds))
    return out


def _valid(self: Any) -> Any:
    try:
        cfg = self.config
        cfg.moe_spec()
    except ValueError as e:
        raise ValueError(str(e)) from None
    if self.layers is not None and self.layers > cfg.n_layers:
        raise ValueError(f"layers ({self.layers}) cannot exceed n_layers ({cfg.n_layers})")
    if self.cuda_graph and self.mode != "decode":
        raise ValueError("cuda_graph: true is for decode steps (a prefill is one long launch sequence)")
    for layer in sorted({0, min(1, self.n_blocks - 1)}):  # a windowed and a full layer: every rule of a block
        self.block_params(layer)
    return self


def stored_estimate(p: Any, dtype_bytes: int) -> float:
    """Weights and KV caches the case holds (what the memory limit and the device check compare)."""
    cfg = p.config
    kv_tokens = p.kv_len + 1 if p.mode == "decode" else p.seq_len
    n = p.n_blocks
    kv = sum(kv_bytes(cfg.attention_spec(i).layer_mask.cache_slots(kv_tokens), cfg.n_kv_heads, cfg.head_dim,
                      p.batch, dtype_bytes) for i in range(n))
    return float(weight_bytes(cfg, p.experts, dtype_bytes, n)["total"] + kv)


ModelParams = create_model(
    "ModelParams", __base__=ModelAxes, __module__=__name__, **_config_fields(),
    __validators__={"_valid": model_validator(mode="after")(_valid),
                    "_memory": model_validator(mode="after")(fits_memory(stored_estimate))})
ModelParams.__doc__ = "One model case: the run axes, then the preset's shape (ModelConfig's gpt-oss fields)."


def defaults(cfg: ModelConfig) -> dict[str, Any]:
    """The preset's whole model in prefill over 4096 tokens, eager attention (sinks on every device),
    grouped MoE, MXFP4 experts."""
    context = min(4096, cfg.max_position)
    shape = {name: getattr(cfg, name) for name in CONFIG_FIELDS}
    return dict(mode="prefill", attn_backend="eager", moe_backend="grouped", batch=1, seq_len=context,
                kv_len=context, layers=None, experts="mxfp4", cuda_graph=False, **shape)


VARIANTS: dict[str, dict[str, Any]] = {
    "mxfp4": {"experts": "mxfp4"},
    "bf16": {"experts": "dtype"},
    "all-full": {"window": None},
    "mha": {"n_kv_heads": 64},
}


# --- cost model
def activation_bytes(cfg: ModelConfig, experts: str, context: int, batch: int, mode: str, *,
                     attn_backend: str = "flex", moe_backend: str = "grouped", dtype_bytes: int = 2) -> dict[str, int]:
    """The working set of one layer's forward step (the largest part of a step; layers run one after
    another, so one layer's is live at a time), by part. Decode: `batch` tokens against `context` cached
    ones; prefill: batch x context tokens in one pass. An estimate of the big buffers, not an allocator
    trace (docs/model.md); `ossbench fit` adds it to the weights and caches."""
    H, I, k = cfg.hidden, cfg.intermediate, cfg.top_k
    queries = 1 if mode == "decode" else context
    T = batch * queries  # tokens in the step
    residual = 3 * T * H * dtype_bytes  # the layer's input, the mid-layer residual, its output
    qkv = 2 * T * cfg.qkv_width * dtype_bytes  # the fused projection and q, k after RoPE
    if attn_backend == "eager":  # scores and probabilities in float32, [B, Hq, S, keys]
        attention = 2 * batch * cfg.n_heads * queries * context * 4
    else:  # fused kernels: the output and a float32 log-sum-exp per query and head
        attention = T * cfg.q_width * dtype_bytes + batch * cfg.n_heads * queries * 4
    slots = T * k
    moe = slots * (H + 2 * I + I + H) * dtype_bytes  # grouped rows: input, mlp1 out, SwiGLU out, mlp2 out
    touched = min(cfg.n_experts, slots)
    one_expert = expert_weight_values(cfg) * dtype_bytes
    if moe_backend == "triton":
        decoded = 0  # its GEMMs read the experts as stored (MXFP4 decoded in registers)
    elif moe_backend == "gather":
        decoded = slots * one_expert  # every token slot's expert weights gathered
    elif experts == "mxfp4":  # the touched experts decoded to the dtype (values, then scaled)
        decoded = (1 if moe_backend == "loop" else touched) * one_expert * 2
    else:
        decoded = 0 if moe_backend == "grouped" else (one_expert if moe_backend == "loop" else touched * one_expert)
    logits = batch * cfg.vocab * dtype_bytes  # the last position's logits only (time to first token)
    out = {"residual": residual, "qkv": qkv, "attention": attention, "moe": moe, "expert_decode": decoded,
           "logits": logits}
    out["total"] = sum(out.values())
    return out


def model_cost(p: Any, dtype_bytes: int, tokens_per_expert: list[list[int]]) -> Cost:
    """The blocks' costs (tokens_per_expert: each layer's routing) plus the embedding and the head."""
    cfg, n = p.config, p.n_blocks
    flops = nbytes = 0.0
    extra = dict.fromkeys(("matmul_flops", "attn_flops", "kv_cache_bytes", "kv_read_bytes", "expert_bytes_touched",
                           "experts_touched", "attention_weight_bytes"), 0.0)
    per = layer_bytes(cfg, p.experts, dtype_bytes)
    for i in range(n):
        bp = p.block_params(i)
        c = block_cost(bp, dtype_bytes, tokens_per_expert[i])
        flops, nbytes = flops + c.flops, nbytes + c.bytes
        for key in ("matmul_flops", "attn_flops", "kv_cache_bytes", "expert_bytes_touched", "experts_touched"):
            extra[key] += c.extra.get(key, 0.0)
        extra["attention_weight_bytes"] += per.attention + per.norms // 2
        if p.mode == "decode":
            extra["kv_read_bytes"] += kv_bytes(attention_pairs(bp.attention_params()), cfg.n_kv_heads,
                                               cfg.head_dim, p.batch, dtype_bytes)
    table = cfg.vocab * cfg.hidden * dtype_bytes
    embedding_bytes = 2 * p.tokens * cfg.hidden * dtype_bytes  # the rows read, the hidden states written
    head_flops = 2.0 * p.batch * cfg.hidden * cfg.vocab  # the last position of each sequence
    head_bytes = table + 4 * cfg.hidden + p.batch * cfg.vocab * dtype_bytes  # unembedding, norm, logits
    stored = weight_bytes(cfg, p.experts, dtype_bytes, n)
    context = p.kv_len + 1 if p.mode == "decode" else p.seq_len
    extra.update(matmul_flops=extra["matmul_flops"] + head_flops, unembedding_bytes=float(table),
                 weights_stored_bytes=float(stored["total"]), layers=float(n),
                 activation_bytes_estimate=float(activation_bytes(
                     cfg, p.experts, context, p.batch, p.mode, attn_backend=p.attn_backend,
                     moe_backend=p.moe_backend, dtype_bytes=dtype_bytes)["total"]),
                 **{f"stored_{group}_bytes": float(sum(stored[k] for k in kinds))
                    for group, kinds in STORED_GROUPS.items()})
    return Cost(flops=flops + head_flops, bytes=nbytes + embedding_bytes + head_bytes, tokens=p.tokens, extra=extra)


# --- building
def skip_reason(p: Any, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the case cannot run here: a backend that cannot express it, or weights and caches beyond the
    device's free memory (ossbench fit prints the plan)."""
    bp = p.block_params(0)
    if reason := unsupported_reason(p.attn_backend, sinks=p.sinks, device=device, dtype=dtype,
                                    mask=bp.attention_params().layer_mask):
        return reason
    if reason := backend_unsupported_reason("moe", p.moe_backend, device, dtype, train=False):
        return reason
    dtype_bytes = torch.finfo(dtype).bits // 8
    if p.moe_backend == "gather" and (reason := gather_skip_reason(bp.mlp_params(), device, dtype_bytes)):
        return reason
    if p.cuda_graph and device.type != "cuda":
        return "cuda_graph: true needs a CUDA device"
    need, free = stored_estimate(p, dtype_bytes), available_bytes(device)
    if need > MEMORY_FRACTION * free:
        return (f"weights and KV caches need {need / 1e9:.1f} GB, {device} has {free / 1e9:.1f} GB free "
                f"(`ossbench fit` shows the plan)")
    return None


def build(params: Any, device: Any, dtype: torch.dtype, *, seed: int = DEFAULT_SEED) -> Workload:
    p, device = params, torch.device(device)
    require_checked_dtype("model", TOLERANCE, dtype)
    if reason := skip_reason(p, device, dtype):
        raise SkipCase(reason)
    cfg, n = p.config, p.n_blocks
    generator = torch.Generator(device=device).manual_seed(seed)
    model = Model(cfg, layers=n, experts=p.experts, attn_backend=p.attn_backend, moe_backend=p.moe_backend,
                  device=device, dtype=dtype, generator=generator).eval().requires_grad_(False)
    if p.mode == "decode":
        tokens = torch.randint(cfg.vocab, (p.batch, 1), generator=generator, device=device)
        caches, start = model.new_caches(p.batch, p.kv_len + 1), p.kv_len
        for c in caches:  # the kv_len earlier tokens' keys and values: random, never zeros
            c.k.normal_(generator=generator)
            c.v.normal_(generator=generator)
    else:
        tokens = torch.randint(cfg.vocab, (p.batch, p.seq_len), generator=generator, device=device)
        caches, start = model.new_caches(p.batch, p.seq_len), 0
    checked = set(range(n)) if n <= CHECK_ALL_LAYERS else {0, 1, n - 1}
    inputs, counts, final = chain(model, tokens, caches, start, checked)
    step = lambda: model(tokens, caches, start)  # noqa: E731
    fn, info = step, {"tokens_per_expert": counts, "checked_layers": sorted(checked)}
    if p.moe_backend == "grouped":
        info["grouped_impl"] = model.block[0].mlp.resolved_grouped_impl(device, dtype, False)
    if p.cuda_graph:
        fn = capture_graph(step, device)
    dtype_bytes = torch.finfo(dtype).bits // 8
    cache_bytes = sum(c.nbytes for c in caches)
    return Workload(fn=fn, cost=model_cost(p, dtype_bytes, counts),
                    check=lambda: check_model(model, p, inputs, caches, start, final, tokens, step, seed),
                    persistent_bytes=model.stored_bytes() + cache_bytes,
                    measured={"kv_cache_bytes": float(cache_bytes), "weight_bytes": float(model.stored_bytes())},
                    info=info, inputs={"tokens": tokens, **cache_inputs(caches, p.mode)})


def cache_inputs(caches: list[KVCache], mode: str) -> dict[str, torch.Tensor]:
    """Decode's random cache contents by name (a prefill's caches are written by the timed call)."""
    if mode != "decode":
        return {}
    return {f"cache{i}.{kv}": getattr(c, kv) for i, c in enumerate(caches) for kv in ("k", "v")}


@torch.no_grad()
def chain(model: Model, tokens: torch.Tensor, caches: list[KVCache], start: int,
          keep: set[int]) -> tuple[dict[int, torch.Tensor], list[list[int]], torch.Tensor]:
    """The model's forward piece by piece: the inputs of the blocks in `keep`, each layer's tokens per
    expert (for the cost model) and the last hidden state."""
    h = model.embedding(tokens)
    inputs, counts = {}, []
    for i, (blk, cache) in enumerate(zip(model.block, caches)):
        if i in keep:
            inputs[i] = h
        a = h + blk.attn.update(h, cache, start)
        t = blk.mlp.norm(a).reshape(-1, a.shape[-1])
        counts.append(blk.mlp.route(t).tokens_per_expert(blk.mlp.n_experts).tolist())
        h = a + blk.mlp.update(a)
    return inputs, counts, h


def capture_graph(step: Any, device: torch.device) -> Any:
    """The decode step captured in a CUDA graph (replayed by the timed call); a step that syncs with the
    host (MXFP4 or padded MoE paths read expert counts back) cannot be captured and is skipped with why."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(2):  # warm-up outside the graph: lazy inits, autotuning, allocator growth
            step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph), torch.no_grad():
            step()
    except Exception as e:  # noqa: BLE001 - a capture failure means: this path cannot be graphed
        raise SkipCase(f"the decode step cannot be captured in a CUDA graph: {str(e).splitlines()[0][:200]}") from None
    return graph.replay


# --- numerics check
def check_model(model: Model, p: Any, inputs: dict[int, torch.Tensor], caches: list[KVCache], start: int,
                final: torch.Tensor, tokens: torch.Tensor, step: Any, seed: int) -> Check:
    tol = TOLERANCE[final.dtype]
    parts = []
    for i, x in sorted(inputs.items()):
        cache = caches[i] if p.mode == "decode" else None
        c = check_block(model.block[i], p.block_params(i), x, cache, None, seed)
        parts.append((f"block {i}", c.max_abs_err, c.max_rel_err))
    with torch.no_grad():
        last = final[:, -1:]
        got = model.head(last)
        x = last.double()
        normed = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + model.norm.eps) * model.norm.scale.double()
        parts.append(("head", *errors(got, normed @ model.unembedding.weight.double().T)))
        parts.append(("composition", *errors(step(), got.double())))
    worst = max(parts, key=lambda t: t[2])
    return Check(max_abs_err=max(t[1] for t in parts), max_rel_err=worst[2], tolerance=tol,
                 reference=f"float64 per block ({', '.join(f'{n}: {r:.2g}' for n, _, r in parts)}) on "
                           f"{final.device.type}; each block against the block family's references")


def footprint(p: Any, dtype_bytes: int) -> Footprint:
    """The case before it is built (ossbench/plan.py): the weights and caches it holds (`stored_estimate`)
    and one layer's working set (`activation_bytes`, what `ossbench fit` adds); balanced routing."""
    cfg = p.config
    tokens = p.batch if p.mode == "decode" else p.batch * p.seq_len
    balanced = balanced_tokens_per_expert(types.SimpleNamespace(tokens=tokens, top_k=cfg.top_k,
                                                                 n_experts=cfg.n_experts))
    context = p.kv_len + 1 if p.mode == "decode" else p.seq_len
    act = activation_bytes(cfg, p.experts, context, p.batch, p.mode, attn_backend=p.attn_backend,
                           moe_backend=p.moe_backend, dtype_bytes=dtype_bytes)["total"]
    return Footprint(cost=model_cost(p, dtype_bytes, [balanced] * p.n_blocks),
                     persistent_bytes=stored_estimate(p, dtype_bytes), activation_bytes=float(act),
                     backends=(("attention", p.attn_backend), ("moe", p.moe_backend)))


FAMILY = Family(
    name="model",
    description="a whole gpt-oss model from a preset (embedding, alternating window-128/full blocks with sinks, "
                "MoE with MXFP4 or bf16 experts, final norm, unembedding): prefill (time to first token) or "
                "decode (one step against a KV cache)",
    params_model=ModelParams,
    defaults=defaults,
    build=build,
    variants=VARIANTS,
    footprint=footprint,
    skip=skip_reason,
)
