"""The attention family: how one attention block is benchmarked, checked and costed.

Modes:
- prefill: one forward pass over batch x seq_len tokens (no KV cache written).
- decode:  one new token per sequence at position kv_len against a cache pre-filled with kv_len random
           keys/values; every call rewrites the same slot, so the cache never grows and calls repeat.
- train:   forward + backward (gradients of the input and all parameters via autograd.grad).

Cost model (per call of `fn`; see docs/attention.md):
- pairs P: query/key pairs computed per sequence per head, counted by the layer's mask (Mask.pairs).
  Prefill/train causal: S(S+1)/2, or with a window W: W(W+1)/2 + (S-W)W; non-causal: S^2. Decode: the
  keys the mask keeps for position kv_len (min(kv_len+1, W) for a window). A window at least as long as
  the case (W >= S, or W > kv_len in decode) is full causal attention there, and costs the same.
- FLOPs = matmuls only, 2 per multiply-add: projections 2*T*hidden*(qkv_width + q_width) for T query
  tokens, attention 2 matmuls (QK^T, PV) = 4*B*n_heads*P*head_dim. Train = 3x forward (each matmul's
  backward is two matmuls of the same size; no recomputation counted). Softmax, RoPE, norm, bias and
  the residual add are not counted.
- bytes = the minimum that must move: weights once, input read, output written; decode adds the keys and
  values it attends over (P tokens of K and V: P-1 read, 1 written); train adds weight gradients written,
  output gradient read and input gradient written.
- kv_cache_bytes: what the layer's cache holds, Mask.cache_slots tokens (a ring of W for a window).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationInfo, field_validator, model_validator

from ..errors import SkipCase
from ..layers import masks
from ..layers.attention import Attention, KVCache, unsupported_reason
from ..layers.attention_spec import AttentionSpec
from ..layers.config import ModelConfig
from .base import DEFAULT_SEED, Check, Cost, Family, Footprint, Workload, activation_factor
from .building import randn, timed_call
from .attention_reference import FULL_REFERENCE_SCORES, reference_decode, reference_prefill, reference_rows
from .checks import combined_check, errors, require_checked_dtype
from .fields import backend_of, fits_memory
from .spec_params import spec_of, spec_params_model

WEIGHT_STD = 0.02  # the usual init scale of transformer linears; the residual stream stays O(1)
# Allowed max|out - ref| / max|ref| per dtype. A block chains about five roundings (input cast, qkv
# output, scores/probabilities, attention output, out projection), each at most the unit roundoff u
# (bf16 2^-8, fp16 2^-11): 2e-2 and 2e-3 are ~5u. fp32 leaves room for accumulation over 2880-long
# dot products (sqrt(2880) * 2^-24 ~ 3e-6) at 1e-5.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


class AttentionAxes(BaseModel):
    """The run axes of an attention case; AttentionParams adds every AttentionSpec field after them."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    mode: Literal["prefill", "decode", "train"]
    backend: backend_of("attention")
    batch: PositiveInt
    seq_len: PositiveInt = Field(description="tokens per sequence in prefill/train (unused in decode)")
    kv_len: PositiveInt = Field(description="cached tokens before the decoded one (unused in prefill/train)")

    @property
    def spec(self) -> AttentionSpec:
        return spec_of(self, AttentionSpec)

    @property
    def layer_mask(self) -> masks.Mask:
        """The mask object the layer, the cost model and the reference all use."""
        return self.spec.layer_mask


def _causal_decode(cls: type, v: bool, info: ValidationInfo) -> bool:
    if not v and info.data.get("mode") == "decode":
        raise ValueError("causal: false in decode mode: decoding one token against a cache is causal")
    return v


# The attention family times the block as it is used for inference (and its gradient); dropout on the
# probabilities is the block family's (GPT-2's attn_pdrop there), so attn_dropout stays at 0 here.
AttentionParams = spec_params_model("AttentionParams", AttentionAxes, AttentionSpec, exclude=("attn_dropout",),
                                    validators={
    "_causal_decode": field_validator("causal")(classmethod(_causal_decode)),
    "_memory": model_validator(mode="after")(fits_memory(lambda p, dtype_bytes: attention_cost(p, dtype_bytes).bytes)),
})
AttentionParams.__doc__ = "One attention case: the run axes, then the AttentionSpec fields (ossbench/layers)."


def defaults(cfg: ModelConfig) -> dict[str, Any]:
    """A full-attention (not windowed) layer with the preset's heads, in prefill over 4096 tokens."""
    context = min(4096, cfg.max_position)
    spec = dataclasses.asdict(cfg.attention_spec(0))
    spec.pop("attn_dropout")
    # flex: the one backend that expresses every gpt-oss variant (sinks through the log-sum-exp) on a GPU
    return dict(mode="prefill", backend="flex", batch=1, seq_len=context, kv_len=context, **{**spec, "window": None})


VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "window128": {"window": 128},
    "mha": {"n_kv_heads": 64},  # gpt-oss's 64 query heads, each with its own K/V
    "mqa": {"n_kv_heads": 1},
    "no-sinks": {"sinks": False},
    "rope": {"positions": "rope"},
    "no-positions": {"positions": "none"},
}


# --- cost model
def attention_pairs(p: AttentionParams) -> int:
    """Query/key pairs computed per sequence and head."""
    if p.mode == "decode":  # the token at position kv_len over the cached keys and its own
        return p.layer_mask.pairs(1, p.kv_len + 1, q_offset=p.kv_len)
    return p.layer_mask.pairs(p.seq_len, p.seq_len)


def cache_tokens(p: AttentionParams) -> int:
    """Tokens (slots) the layer's KV cache holds in this case; prefill: what a cache of its tokens holds."""
    return p.layer_mask.cache_slots(p.kv_len + 1 if p.mode == "decode" else p.seq_len)


def query_tokens(p: AttentionParams) -> int:
    return p.batch if p.mode == "decode" else p.batch * p.seq_len


def forward_flops(p: AttentionParams, pairs: int) -> tuple[float, float]:
    """(projection FLOPs, attention FLOPs) of one forward pass with `pairs` pairs per sequence and head."""
    q_width, kv_width = p.n_heads * p.head_dim, p.n_kv_heads * p.head_dim
    tokens = query_tokens(p)
    projections = 2 * tokens * p.hidden * (q_width + 2 * kv_width) + 2 * tokens * q_width * p.hidden
    attention = 2 * 2 * p.batch * p.n_heads * pairs * p.head_dim  # QK^T and PV
    return float(projections), float(attention)


def param_count(p: AttentionParams) -> int:
    q_width, kv_width = p.n_heads * p.head_dim, p.n_kv_heads * p.head_dim
    qkv_width = q_width + 2 * kv_width
    n = p.hidden * qkv_width + q_width * p.hidden
    n += (qkv_width + p.hidden) if p.bias else 0
    n += p.n_heads if p.sinks else 0
    n += {"rmsnorm": p.hidden, "layernorm": 2 * p.hidden, "none": 0}[p.norm]
    return n


def layer_kv_cache_bytes(n_tokens: int, n_kv_heads: int, head_dim: int, window: int | None = None,
                         batch: int = 1, dtype_bytes: int = 2, *, mask: masks.Mask | None = None) -> int:
    """K and V of one layer's cache for positions 0..n_tokens-1: the slots its mask needs (a window W:
    min(n_tokens, W)). `window` is a convenience for mask=sliding_window(window)."""
    kept = masks.layer_mask(window=window, mask=mask).cache_slots(n_tokens)
    return kv_bytes(kept, n_kv_heads, head_dim, batch, dtype_bytes)


def kv_bytes(tokens: int, n_kv_heads: int, head_dim: int, batch: int = 1, dtype_bytes: int = 2) -> int:
    """K and V of `tokens` tokens (2 KiB per token for 8 KV heads of 64 in bf16)."""
    return batch * tokens * 2 * n_kv_heads * head_dim * dtype_bytes


def kv_cache_bytes(cfg: ModelConfig, n_tokens: int, *, batch: int = 1, dtype_bytes: int = 2,
                   windows: bool = True, mha: bool = False) -> int:
    """Whole-model KV cache after `n_tokens` tokens.

    windows=False treats every layer as full attention; mha=True gives every query head its own K/V.
    gpt-oss-20b at 131072 tokens in bf16: 3.22 GB (alternating 128-windows), 6.44 GB (all full),
    51.5 GB (MHA, all full).
    """
    kv_heads = cfg.n_heads if mha else cfg.n_kv_heads
    return sum(layer_kv_cache_bytes(n_tokens, kv_heads, cfg.head_dim, cfg.layer_window(i) if windows else None,
                                    batch, dtype_bytes)
               for i in range(cfg.n_layers))


def attention_cost(p: AttentionParams, dtype_bytes: int) -> Cost:
    pairs = attention_pairs(p)
    proj_flops, attn_flops = forward_flops(p, pairs)
    tokens = query_tokens(p)
    n_params = param_count(p)
    fp32_params = p.hidden if p.norm == "rmsnorm" else 0  # gpt-oss keeps the RMSNorm scale in fp32
    weight_bytes = (n_params - fp32_params) * dtype_bytes + fp32_params * 4
    activation_bytes = tokens * p.hidden * dtype_bytes  # one [tokens, hidden] tensor
    # the cache the layer holds (its mask's slots) and, in decode, the keys one step reads: the same for a
    # full or windowed layer, not for a chunked one (a ring of C slots, of which position p reads p % C + 1)
    cache_bytes = kv_bytes(cache_tokens(p), p.n_kv_heads, p.head_dim, p.batch, dtype_bytes)
    attended_bytes = kv_bytes(pairs, p.n_kv_heads, p.head_dim, p.batch, dtype_bytes)
    if p.mode == "prefill":
        flops, nbytes = proj_flops + attn_flops, weight_bytes + 2 * activation_bytes
    elif p.mode == "decode":
        flops, nbytes = proj_flops + attn_flops, weight_bytes + 2 * activation_bytes + attended_bytes
    else:  # train: weights read + gradients written; x, y, dy, dx
        flops, nbytes = 3 * (proj_flops + attn_flops), 2 * weight_bytes + 4 * activation_bytes
    return Cost(flops=flops, bytes=float(nbytes), tokens=tokens, extra={
        "kv_cache_bytes": float(cache_bytes),  # this layer's cache for this case (prefill: what it would hold)
        "attn_pairs": float(p.batch * pairs),  # query/key pairs per head, summed over the batch
        "attn_flops": attn_flops * (3 if p.mode == "train" else 1),
        "proj_flops": proj_flops * (3 if p.mode == "train" else 1),
        "params": float(n_params),
    })


def footprint(p: AttentionParams, dtype_bytes: int) -> Footprint:
    """The case before it is built (ossbench/plan.py): its cost, the bytes `build` holds and one call's own."""
    cost = attention_cost(p, dtype_bytes)
    tokens = query_tokens(p)
    q_width, kv_width = p.n_heads * p.head_dim, p.n_kv_heads * p.head_dim
    x_bytes = tokens * p.hidden * dtype_bytes
    held = cost.extra["params"] * dtype_bytes + x_bytes * (2 if p.mode == "train" else 1)  # x (and dy)
    if p.mode == "decode":
        held += cost.extra["kv_cache_bytes"]
    # one call: the norm's output, qkv and the rotated q, k, the attention output, the out projection
    act = tokens * (2 * p.hidden + 2 * (q_width + 2 * kv_width) + q_width) * dtype_bytes
    keys = cache_tokens(p) if p.mode == "decode" else p.seq_len
    queries = 1 if p.mode == "decode" else p.seq_len
    if p.backend == "eager":  # the dense score matrix and its fp32 softmax
        act += 2 * 4 * p.batch * p.n_heads * queries * keys
    elif p.backend == "sdpa" and p.mask is None and p.window is not None:  # the window as a dense mask
        act += queries * keys * dtype_bytes
    act *= activation_factor(p.mode)
    # the float64 check: the weights and (decode) the cached keys and values cast to float64, q, k, v of
    # every token and the scores of the rows it compares
    rows = queries if p.batch * p.n_heads * queries * queries <= FULL_REFERENCE_SCORES else 40
    cached = cost.extra["kv_cache_bytes"] / dtype_bytes if p.mode == "decode" else 0
    check = 8 * (cost.extra["params"] + cached + tokens * (p.hidden + q_width + 2 * kv_width)
                 + 2 * p.batch * p.n_heads * rows * keys)
    return Footprint(cost=cost, persistent_bytes=float(held), activation_bytes=float(max(act, check)),
                     backends=(("attention", p.backend),))


# --- building
def make_module(p: AttentionParams, device: Any, dtype: torch.dtype, generator: torch.Generator, *,
                attn_dropout: float = 0.0) -> Attention:
    """The block with fresh random weights (never zeros: zero weights make kernels take shortcuts)."""
    spec = dataclasses.replace(p.spec, attn_dropout=attn_dropout) if attn_dropout else p.spec
    module = Attention(spec, backend=p.backend, device=device, dtype=dtype)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator, device=param.device, dtype=torch.float32)
            if name.startswith("norm."):
                value = 1.0 + 0.1 * noise if name != "norm.bias" else 0.1 * noise
            elif name == "sinks":
                value = noise  # logits of order one, like the trained ones
            else:
                value = WEIGHT_STD * noise
            param.copy_(value)
    return module


def fill_decode_cache(module: Attention, p: AttentionParams, generator: torch.Generator,
                      device: Any, dtype: torch.dtype) -> KVCache:
    """A cache for positions 0..kv_len holding random keys/values (as many slots as the mask keeps)."""
    cache = module.new_cache(p.batch, p.kv_len + 1, device=device, dtype=dtype)
    cache.k.normal_(generator=generator)
    cache.v.normal_(generator=generator)
    return cache


def skip_reason(p: AttentionParams, device: Any, dtype: torch.dtype) -> str | None:
    """Why `build` skips the case on `device` (None: it runs): what the backend cannot express, or a mask
    that changes nothing at this length."""
    reason = unsupported_reason(p.backend, sinks=p.sinks, device=torch.device(device), training=p.mode == "train",
                                dtype=dtype, mask=p.layer_mask)
    if reason:
        return reason
    if p.mask is not None and attention_pairs(p) == attention_pairs(p.model_copy(update={"mask": None})):
        length = f"kv_len {p.kv_len}" if p.mode == "decode" else f"seq_len {p.seq_len}"
        return f"mask {p.mask} allows every causal pair at {length}: the case would repeat plain causal attention"
    return None


def build(params: AttentionParams, device: Any, dtype: torch.dtype, *, seed: int = DEFAULT_SEED) -> Workload:
    p = params
    device = torch.device(device)
    require_checked_dtype("attention", TOLERANCE, dtype)
    training = p.mode == "train"
    if reason := skip_reason(p, device, dtype):
        raise SkipCase(reason)
    generator = torch.Generator(device=device).manual_seed(seed)
    module = make_module(p, device, dtype, generator)
    module.requires_grad_(training)

    cache, dy = None, None
    if p.mode == "decode":
        x = randn((p.batch, 1, p.hidden), generator, device, dtype)  # [B, 1, hidden]
        cache = fill_decode_cache(module, p, generator, device, dtype)
        fn = lambda: module(x, cache=cache, start_pos=p.kv_len)  # noqa: E731
    else:
        x = randn((p.batch, p.seq_len, p.hidden), generator, device, dtype)  # [B, S, hidden]
        dy = randn((p.batch, p.seq_len, p.hidden), generator, device, dtype) if training else None
        fn = timed_call(lambda: module(x), dy, [x], [x, *module.parameters()])

    held = sum(t.numel() * t.element_size() for t in module.parameters()) + x.numel() * x.element_size()
    held += cache.nbytes if cache is not None else 0
    held += dy.numel() * dy.element_size() if training else 0
    inputs = {"x": x, "cache.k": cache.k, "cache.v": cache.v} if cache is not None else {"x": x}
    if dy is not None:
        inputs["dy"] = dy
    return Workload(fn=fn, cost=attention_cost(p, torch.finfo(dtype).bits // 8),
                    check=lambda: check_against_reference(module, p, x, cache, dy, seed=seed),
                    persistent_bytes=held, inputs=inputs)


# --- numerics check
def check_against_reference(module: Attention, p: AttentionParams, x: torch.Tensor, cache: KVCache | None,
                            dy: torch.Tensor | None, *, seed: int) -> Check:
    """Compare the backend's block update (without the residual, which would hide attention errors
    behind x) with a float64 reference on a set of query rows."""
    # Run the backend in the same grad mode as `fn`: compiled flex guards on it, and a different mode
    # would compile a second kernel. In inference modes nothing requires grad, so no graph is built.
    if p.mode == "decode":
        got = module.update(x, cache=cache, start_pos=p.kv_len).double()  # [B, 1, hidden]
        ref = reference_decode(module, x, cache, p.kv_len)
        errs = [errors(got, ref)]
        what = f"one token against {attention_pairs(p) - 1} cached keys"
    else:
        rows = reference_rows(p, seed)
        got = module.update(x.detach())[:, rows].detach().double()  # [B, R, hidden]
        with torch.no_grad():
            ref = reference_prefill(module, x.detach(), rows)
        errs = [errors(got, ref)]
        what = f"{len(rows)} of {p.seq_len} query rows"
        if dy is not None and len(rows) == p.seq_len:  # gradients too, when the full reference is cheap
            x_got = x.detach().requires_grad_(True)
            (dx,) = torch.autograd.grad(module.update(x_got), x_got, dy)
            x64 = x.detach().double().requires_grad_(True)
            (dx_ref,) = torch.autograd.grad(reference_prefill(module, x64, rows), x64, dy.double())
            errs.append(errors(dx.double(), dx_ref))
            what += " and the input gradient"
    return combined_check(errs, TOLERANCE[x.dtype], f"float64 einsum attention on {x.device.type}, {what}")


FAMILY = Family(
    name="attention",
    description="one attention block (pre-norm, qkv, RoPE/YaRN, causal/windowed attention with sinks, out, "
                "residual) in prefill, decode or train",
    params_model=AttentionParams,
    defaults=defaults,
    build=build,
    variants=VARIANTS,
    footprint=footprint,
    skip=skip_reason,
)
