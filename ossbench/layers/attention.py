"""gpt-oss attention block (and its MHA/MQA/full/no-sink/GPT-2 relatives) with its backends.

One `Attention(spec)` module (the spec: layers/attention_spec.py) covers: query and KV head counts (MHA, GQA, MQA), head_dim, an attention mask
(causal, sliding window, ... from ossbench.layers.masks), learned attention sinks, RoPE/YaRN or no
positions, projection biases and the pre-norm.
Parameter names follow gpt-oss's checkpoint (`norm.scale`, `qkv.weight/bias`, `sinks`, `out.weight/bias`)
so a block's `attn.*` tensors load with `load_state_dict`.

Like gpt-oss's AttentionBlock, `forward(x)` returns `x + out(attend(rope(qkv(norm(x)))))`: the residual
add is part of the block. `update(x)` is the same without the residual add.

The mask object decides which keys each query sees everywhere: the dense grid for eager and SDPA, the
block mask for flex, and which cached keys a decode step reads (its retention rule sizes the KV cache).

Backends (all compute the same function), registered at the end of this file with what each can express
(ossbench.backends; `unsupported_reason` gives a backend's own refusal):
- "eager": explicit matmul, mask, fp32 softmax with the sink column, matmul: the reference math.
- "sdpa":  torch.nn.functional.scaled_dot_product_attention. It cannot express sinks (no extra softmax
           column, no log-sum-exp returned), so sinks are refused rather than dropped.
- "flex":  torch.compile'd flex_attention with a block mask, so blocks outside the mask cost
           nothing; sinks through the log-sum-exp it returns (not available on CPU in torch 2.13). On CPU
           the keys are padded to whole 128-token blocks (masked out) to avoid a torch 2.13 CPU kernel bug.
- "triton": ossbench's own Triton kernel (sinks, windows, native GQA, backward), registered by
           layers/attention_triton.py, imported at the end of this file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backends import Supports, get_backend, layer_method, register_backend
from ..backends import unsupported_reason as backend_unsupported_reason
from ..errors import SkipCase
from .attention_spec import AttentionSpec
from .config import ModelConfig
from .masks import Mask, full, layer_mask
from .masks.blocks import FLEX_BLOCK
from .norm import RMSNorm
from .rope import RotaryEmbedding

_TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
_SDPA_HAS_GQA = _TORCH_VERSION >= (2, 5)  # enable_gqa appeared in torch 2.5


def unsupported_reason(backend: str, *, sinks: bool, device: Any, training: bool = False,
                       attn_dropout: float = 0.0, dtype: Any = None, mask: Mask | None = None) -> str | None:
    """Why `backend` cannot compute a block with/without sinks (and with `mask`) on `device` (None when it
    can): the backend's own reason, from what it registered (ossbench.backends)."""
    return backend_unsupported_reason("attention", backend, torch.device(device), dtype, train=training,
                                      sinks=sinks, dropout=training and attn_dropout > 0,
                                      masked=mask is not None and mask.name not in ("causal", "full"))


@dataclass
class KVCache:
    """Keys (after RoPE) and values of one layer in a ring of C slots: position p lives in slot p % C.

    The layer's mask sizes it (`Mask.cache_slots`: a full layer one slot per position, a window W a ring of
    W, a chunk C a ring of C) and decides which slots a decode step reads (`Mask.keep`), whatever the
    number of slots: a cache with spare slots never widens what a query sees.
    """

    k: torch.Tensor  # [B, Hkv, C, D]
    v: torch.Tensor  # [B, Hkv, C, D]

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class Attention(nn.Module):
    """One attention block computing `spec` (its shape, mask, sinks, positions, norm) with `backend`."""

    def __init__(self, spec: AttentionSpec | None = None, *, backend: str = "eager", device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        spec = spec if spec is not None else AttentionSpec()  # the spec validated itself when built
        get_backend("attention", backend)  # ValueError naming the registered backends
        self.spec, self.backend = spec, backend
        self.mask = spec.layer_mask
        self.hidden, self.n_heads, self.n_kv_heads, self.head_dim = spec.hidden, spec.n_heads, spec.n_kv_heads, \
            spec.head_dim
        self.causal, self.positions = self.mask.causal, spec.positions
        # GPT-2's attn_pdrop, active only in train mode; an attribute so a block can set its own dropout
        self.attn_dropout = spec.attn_dropout
        self.scale = 1.0 / math.sqrt(spec.head_dim)  # 1/8 for head_dim 64
        self.split = (spec.q_width, spec.kv_width, spec.kv_width)

        if spec.norm == "rmsnorm":
            self.norm = RMSNorm(spec.hidden, spec.norm_eps, device=device)
        elif spec.norm == "layernorm":  # GPT-2
            self.norm = nn.LayerNorm(spec.hidden, eps=spec.norm_eps, device=device, dtype=dtype)
        else:
            self.norm = None
        self.qkv = nn.Linear(spec.hidden, spec.q_width + 2 * spec.kv_width, bias=spec.bias, device=device,
                             dtype=dtype)
        # sinks: one logit per query head, in head order h = kv_head * (n_heads // n_kv_heads) + j
        self.sinks = nn.Parameter(torch.zeros(spec.n_heads, device=device, dtype=dtype)) if spec.sinks else None
        self.out = nn.Linear(spec.q_width, spec.hidden, bias=spec.bias, device=device, dtype=dtype)
        self.rope = RotaryEmbedding(spec.head_dim, spec.rope) if spec.rope is not None else None
        self._masks: dict[tuple, Any] = {}  # per-shape masks, built once outside the timed calls

    @classmethod
    def from_config(cls, cfg: ModelConfig, layer_idx: int = 0, *, backend: str = "eager", device: Any = None,
                    dtype: Any = None, **spec_changes: Any) -> Attention:
        """The attention block of layer `layer_idx` of a preset (windowed on even gpt-oss layers)."""
        spec = cfg.attention_spec(layer_idx)
        return cls(replace(spec, **spec_changes) if spec_changes else spec, backend=backend, device=device,
                   dtype=dtype)

    @property
    def window(self) -> int | None:
        """The window of a plain sliding-window mask (None for any other mask)."""
        return getattr(self.mask, "window", None)

    @property
    def has_sinks(self) -> bool:
        return self.sinks is not None

    def unsupported_reason(self, backend: str | None = None, device: Any = None,
                           training: bool = False) -> str | None:
        """Why `backend` cannot compute this block on `device` (None when it can)."""
        device = device if device is not None else self.qkv.weight.device
        backend, dropout = backend or self.backend, self.attn_dropout if self.training else 0.0
        key = ("reason", backend, device, training, dropout)  # asked on every call: answered once
        if key not in self._masks:
            self._masks[key] = unsupported_reason(backend, sinks=self.has_sinks, device=device, training=training,
                                                  attn_dropout=dropout, dtype=self.qkv.weight.dtype, mask=self.mask)
        return self._masks[key]

    # --- caches
    def new_cache(self, batch: int, max_tokens: int, device: Any = None, dtype: Any = None) -> KVCache:
        """An empty cache for positions 0..max_tokens-1, with as many slots as the mask needs (a window or
        a chunk: at most that many)."""
        device = device if device is not None else self.qkv.weight.device
        dtype = dtype if dtype is not None else self.qkv.weight.dtype
        shape = (batch, self.n_kv_heads, self.mask.cache_slots(max_tokens), self.head_dim)  # [B, Hkv, C, D]
        return KVCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def _cache_write_read(self, cache: KVCache, k: torch.Tensor, v: torch.Tensor,
                          start_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, Hkv, S, D] of positions start_pos.. and return the keys/values to attend to."""
        S, C = k.shape[2], cache.capacity
        if S == 1:  # decode: one new token against the keys its mask keeps
            keep = self.mask.keep(start_pos)  # positions keep.start..start_pos
            if keep.start <= start_pos - C:
                raise ValueError(f"position {start_pos} does not fit a cache of {C} slots: mask {self.mask} "
                                 f"needs the keys from position {keep.start}")
            slot = start_pos % C
            cache.k[:, :, slot:slot + 1].copy_(k)
            cache.v[:, :, slot:slot + 1].copy_(v)
            # Slots may be out of position order; that is fine: RoPE is already applied and a decode query
            # sees every key it is given.
            first = keep.start % C
            if len(keep) == C:
                return cache.k, cache.v
            if first <= slot:  # one run of slots
                return cache.k[:, :, first:slot + 1], cache.v[:, :, first:slot + 1]  # [B, Hkv, len(keep), D]
            idx = torch.arange(keep.start, start_pos + 1, device=k.device) % C  # the run wraps the ring
            return cache.k.index_select(2, idx), cache.v.index_select(2, idx)
        if start_pos != 0:
            raise ValueError("a KV cache takes a prefill from position 0 or single-token decode steps")
        if self.mask.cache_slots(S) > C:
            raise ValueError(f"{S} tokens do not fit a cache of {C} slots (mask {self.mask})")
        if S <= C:
            cache.k[:, :, :S].copy_(k)
            cache.v[:, :, :S].copy_(v)
        else:  # keep the last C positions, each at slot position % C
            slots = torch.arange(S - C, S, device=k.device) % C
            cache.k[:, :, slots] = k[:, :, S - C:]
            cache.v[:, :, slots] = v[:, :, S - C:]
        return k, v  # the prefill attends over its own tokens

    # --- forward
    def forward(self, x: torch.Tensor, cache: KVCache | None = None, start_pos: int = 0,
                backend: str | None = None) -> torch.Tensor:
        """x [B, S, hidden] -> [B, S, hidden]: x + the attention update (gpt-oss's residual form)."""
        return x + self.update(x, cache, start_pos, backend)

    def update(self, x: torch.Tensor, cache: KVCache | None = None, start_pos: int = 0,
               backend: str | None = None) -> torch.Tensor:
        """The block without its residual add: out(attend(rope(qkv(norm(x))))), [B, S, hidden]."""
        backend = backend or self.backend
        attend = get_backend("attention", backend).build  # (layer, q, k, v, mask) -> o
        reason = self.unsupported_reason(backend, x.device, training=torch.is_grad_enabled() and (
            x.requires_grad or self.qkv.weight.requires_grad))
        if reason:
            raise SkipCase(reason)
        B, S, _ = x.shape
        h = self.norm(x) if self.norm is not None else x
        q, k, v = self.qkv(h).split(self.split, dim=-1)  # [B, S, Hq*D], [B, S, Hkv*D] x2
        q = q.view(B, S, self.n_heads, self.head_dim).transpose(1, 2)  # [B, Hq, S, D]
        k = k.view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, S, D]
        v = v.view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, S, D]
        if self.rope is not None:
            q, k = self.rope(q, start_pos), self.rope(k, start_pos)
        if cache is not None:
            if not self.causal:
                raise ValueError("a KV cache needs causal attention")
            k, v = self._cache_write_read(cache, k, v, start_pos)
        elif start_pos != 0 and S > 1:
            raise ValueError("without a cache, tokens start at position 0 (start_pos only shifts RoPE for S=1)")
        # With more than one query the queries are the keys' own tokens, so the mask applies over [S, S];
        # a single query (decode) sees every key it was given (the cache chose them by the mask).
        mask = self.mask if S > 1 else None
        o = attend(self, q, k, v, mask)  # [B, Hq, S, D]
        return self.out(o.transpose(1, 2).reshape(B, S, self.n_heads * self.head_dim))

    # --- backends: q [B, Hq, S, D], k/v [B, Hkv, T, D], mask over [S, T] or None -> [B, Hq, S, D]
    def _mask_kind(self, mask: Mask | None, S: int, T: int) -> str:
        """"none" (every pair allowed), "causal" (exactly the causal pairs) or "dense" (any other pattern)."""
        if mask is None:
            return "none"
        key = ("kind", mask, S, T)
        if key not in self._masks:
            pairs = mask.pairs(S, T)
            self._masks[key] = ("none" if pairs == S * T else
                                "causal" if S == T and mask.causal and pairs == S * (S + 1) // 2 else "dense")
        return self._masks[key]

    def _allowed(self, mask: Mask, S: int, device: torch.device) -> torch.Tensor:
        """[S, S] bool: query i may see key j (the mask's dense grid), built once per shape."""
        key = ("allowed", mask, S, device)
        if key not in self._masks:
            positions = torch.arange(S, device=device)
            self._masks[key] = mask.allowed(positions, positions)
        return self._masks[key]

    def _eager(self, q, k, v, mask: Mask | None) -> torch.Tensor:
        B, Hq, S, D = q.shape
        Hkv, T = k.shape[1], k.shape[2]
        group = Hq // Hkv
        # query head h = kv_head * group + j, so the heads of one KV group are contiguous
        qg = q.reshape(B, Hkv, group * S, D)  # [B, Hkv, G*S, D]
        scores = torch.matmul(qg, k.transpose(-1, -2)).view(B, Hkv, group, S, T)  # [B, Hkv, G, S, T]
        acc = torch.promote_types(scores.dtype, torch.float32)  # softmax in fp32 (fp64 stays fp64)
        scores = scores.to(acc) * self.scale
        if self._mask_kind(mask, S, T) != "none":
            scores = scores.masked_fill(~self._allowed(mask, S, q.device), float("-inf"))
        if self.sinks is not None:
            sink = self.sinks.to(acc).view(1, Hkv, group, 1, 1).expand(B, Hkv, group, S, 1)
            probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :T]  # drop the sink column
        else:
            probs = torch.softmax(scores, dim=-1)
        if self.training and self.attn_dropout > 0:
            probs = F.dropout(probs, self.attn_dropout)
        o = torch.matmul(probs.to(v.dtype).view(B, Hkv, group * S, T), v)  # [B, Hkv, G*S, D]
        return o.view(B, Hq, S, D)

    def _sdpa(self, q, k, v, mask: Mask | None) -> torch.Tensor:
        Hq, Hkv, S = q.shape[1], k.shape[1], q.shape[2]
        kind = self._mask_kind(mask, S, k.shape[2])
        is_causal, attn_mask = kind == "causal", None
        if kind == "dense":
            key = ("sdpa", mask, S, q.device, q.dtype)
            if key not in self._masks:  # additive mask in the compute dtype: no per-call conversion
                self._masks[key] = torch.zeros(S, S, device=q.device, dtype=q.dtype).masked_fill(
                    ~self._allowed(mask, S, q.device), float("-inf"))
            attn_mask = self._masks[key]
        if Hq != Hkv and (not _SDPA_HAS_GQA or self._sdpa_expand_kv(q, k, attn_mask, is_causal)):
            k, v = k.repeat_interleave(Hq // Hkv, dim=1), v.repeat_interleave(Hq // Hkv, dim=1)
        gqa = {"enable_gqa": True} if _SDPA_HAS_GQA and k.shape[1] != Hq else {}
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale,
                                              dropout_p=self.attn_dropout if self.training else 0.0, **gqa)

    def _sdpa_expand_kv(self, q, k, mask, is_causal: bool) -> bool:
        """True when native GQA would fall back to SDPA's math kernel but expanded K/V would not.

        On CUDA the fused kernel that takes a mask (memory-efficient) does not take grouped heads, and the
        math fallback materialises [B, Hq, S, S] scores. Decided once per shape, outside the timed calls.
        """
        key = ("sdpa_expand", tuple(q.shape), tuple(k.shape), mask is not None, is_causal, q.device, q.dtype)
        if key not in self._masks:
            expand = False
            if q.device.type == "cuda":
                try:
                    native = torch._fused_sdp_choice(q, k, k, attn_mask=mask, is_causal=is_causal,
                                                     scale=self.scale, enable_gqa=True)
                    expand = int(native) == 0  # SDPBackend.MATH
                except (AttributeError, RuntimeError, TypeError):
                    expand = mask is not None  # private probe unavailable: assume the documented limits
            self._masks[key] = expand
        return self._masks[key]

    def _flex(self, q, k, v, mask: Mask | None) -> torch.Tensor:
        S, T = q.shape[2], k.shape[2]
        # torch 2.13's compiled CPU kernel reads past a partial last key block (wrong outputs or NaNs at
        # lengths such as 40 on AVX2 machines); whole key blocks, the padding masked out, avoid it.
        pad = -T % FLEX_BLOCK if q.device.type == "cpu" else 0
        if pad:
            k, v = F.pad(k, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))  # [B, Hkv, T + pad, D]
        if self._mask_kind(mask, S, T) == "none":
            mask = full() if pad else None  # decode or full attention: only the padding is masked
        block_mask = self._flex_block_mask(mask, S, T, pad, q.device) if mask is not None else None
        kwargs: dict[str, Any] = dict(block_mask=block_mask, scale=self.scale,
                                      enable_gqa=q.shape[1] != k.shape[1])
        if self.sinks is None:
            return _compiled_flex()(q, k, v, **kwargs)
        o, lse = _flex_with_lse(q, k, v, kwargs)  # lse [B, Hq, S], natural log, float32
        return apply_sinks_from_lse(o, lse, self.sinks)

    def _flex_block_mask(self, mask: Mask, S: int, T: int, pad: int, device: torch.device):
        key = ("flex", mask, S, T, pad, device)
        if key not in self._masks:
            self._masks[key] = mask.block_mask(S, T + pad, valid_keys=T, device=device)
        return self._masks[key]

    def extra_repr(self) -> str:
        return (f"hidden={self.hidden}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, mask={self.mask}, sinks={self.has_sinks}, "
                f"positions={self.positions}, causal={self.causal}, backend={self.backend}")


def apply_sinks_from_lse(o: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Turn softmax-without-sink outputs into softmax-with-sink outputs.

    With the sink column every weight is divided by (sum_j e^s_j + e^sink) instead of sum_j e^s_j, i.e.
    multiplied by e^lse / (e^lse + e^sink) = sigmoid(lse - sink).
    o [B, Hq, S, D], lse [B, Hq, S], sinks [Hq].
    """
    acc = torch.promote_types(lse.dtype, torch.float32)
    factor = torch.sigmoid(lse.to(acc) - sinks.to(acc)[None, :, None])  # [B, Hq, S]
    return o * factor.unsqueeze(-1).to(o.dtype)


# --- flex_attention plumbing
_FLEX = None
# Compiled with dynamic shapes: one kernel per mask pattern, GQA flag and sink/no-sink call serves every
# sequence length, head count and batch of a sweep, instead of a compile per shape. On the 2-core CPU VM a
# 16-shape sweep (scripts/flex-compile-cost.py, cold compile cache) spent 45 s compiling with dynamic=True
# against 117 s with dynamic=False (111 s vs 398 s under a heavier load), the calls themselves no slower
# beyond that machine's noise (docs/attention.md). Not yet measured on a GPU. Sizes 0 and 1 are still
# specialised by dynamo, so decode (one query) compiles its own kernel.
FLEX_DYNAMIC = True


def _compiled_flex():
    """flex_attention compiled once per process (FLEX_DYNAMIC: shapes are symbolic, so kernels are reused).

    A shape or mask the compiled kernels do not cover is a recompilation of the same function; dynamo's
    default limit of 8 per function would silently drop a long sweep to the unfused eager path, so the
    limit is raised here.
    """
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention
        import torch._dynamo.config as dynamo_config
        for name, floor in (("recompile_limit", 512), ("accumulated_recompile_limit", 4096)):
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(getattr(dynamo_config, name), floor))
        _FLEX = torch.compile(flex_attention, dynamic=FLEX_DYNAMIC)
    return _FLEX


def _flex_with_lse(q, k, v, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """flex_attention's output and log-sum-exp; `return_aux` (newer torch) or `return_lse` (older)."""
    from torch.nn.attention import flex_attention as flex_module
    if hasattr(flex_module, "AuxRequest"):
        o, aux = _compiled_flex()(q, k, v, return_aux=flex_module.AuxRequest(lse=True), **kwargs)
        return o, aux.lse
    return _compiled_flex()(q, k, v, return_lse=True, **kwargs)


# --- the built-in backends: the layer calls build(layer, q, k, v, mask) -> o (see Attention._eager); the
# built-ins are the layer's methods, looked up on the instance (a subclass or a test may override one)
register_backend("attention", "eager", layer_method("_eager"),
                 description="explicit matmuls, mask, fp32 softmax with the sink column: the reference math")
register_backend("attention", "sdpa", layer_method("_sdpa"), description="torch scaled_dot_product_attention",
                 supports=Supports(sinks=False, reasons={"sinks": (
                     "sdpa cannot express attention sinks: scaled_dot_product_attention has no extra softmax "
                     "column and does not return the log-sum-exp needed to add one exactly")}))
register_backend("attention", "flex", layer_method("_flex"),
                 description="torch.compile'd flex_attention with a block mask; sinks through its log-sum-exp",
                 compiles=True,
                 supports=Supports(devices=frozenset({"cuda", "cpu"}), dropout=False, sinks=frozenset({"cuda"}),
                                   train=frozenset({"cuda"}), reasons={
                     "dropout": "flex_attention cannot drop out attention probabilities (GPT-2's attn_pdrop); "
                                "use eager or sdpa",
                     "devices": "flex_attention runs on CUDA or CPU, not {device}",
                     "sinks": f"flex on CPU cannot express attention sinks: the sink correction needs the "
                              f"log-sum-exp, which compiled flex_attention cannot return on CPU (torch "
                              f"{torch.__version__})",
                     "train": f"flex_attention has no backward pass on CPU (torch {torch.__version__})"}))


def causal_window_block_mask(S: int, window: int | None, device: Any, block: int = FLEX_BLOCK):
    """A flex BlockMask for causal attention over S tokens with an optional window."""
    return layer_mask(window=window).block_mask(S, S, device=device, block=block)


from . import attention_triton  # noqa: E402,F401 - registers the "triton" backend after the built-ins
