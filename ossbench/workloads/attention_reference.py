"""The attention family's float64 reference: the block recomputed with einsums on chosen query rows.

It uses the module's own weights and its mask object (the same `Mask` the backends read), so a backend
that ignores the mask or a cache that keeps the wrong keys disagrees with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..layers.attention import Attention, KVCache
from ..layers.rope import apply_rotary, rotary_cos_sin

if TYPE_CHECKING:
    from .attention import AttentionParams

FULL_REFERENCE_SCORES = 1 << 24  # up to this many scores, the reference covers every query row
REFERENCE_CHUNK_SCORES = 1 << 25  # scores per reference chunk (256 MB in float64)


def reference_rows(p: AttentionParams, seed: int) -> list[int]:
    """Every row when the score matrix is small; else the start, the mask's edges and flex block boundaries,
    the middle, the end and a few random rows drawn with the case's data seed (so each case probes its own
    rows, and the same case always the same ones)."""
    S = p.seq_len
    if p.batch * p.n_heads * S * S <= FULL_REFERENCE_SCORES:
        return list(range(S))
    picks = {0, 1, 2, 127, 128, 129, S // 2 - 1, S // 2, S - 2, S - 1}
    for edge in p.layer_mask.edges(S):  # where the mask changes (a window's end, chunk starts)
        picks |= {edge - 2, edge - 1, edge, edge + 1}
    g = torch.Generator().manual_seed(seed)
    picks |= set(torch.randint(0, S, (16,), generator=g).tolist())
    return sorted(r for r in picks if 0 <= r < S)


def _reference_qkv(module: Attention, x: torch.Tensor, positions: torch.Tensor | None):
    """float64 q, k, v [B, H, T, D] of the tokens x [B, T, hidden] at `positions` (RoPE applied)."""
    x = x.double()
    if isinstance(module.norm, torch.nn.LayerNorm):
        h = torch.nn.functional.layer_norm(x, (module.hidden,), module.norm.weight.double(),
                                           module.norm.bias.double(), module.norm.eps)
    elif module.norm is not None:
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.norm.eps) * module.norm.scale.double()
    else:
        h = x
    w = module.qkv.weight.double()
    qkv = torch.einsum("btc,oc->bto", h, w)
    if module.qkv.bias is not None:
        qkv = qkv + module.qkv.bias.double()
    q, k, v = qkv.split(module.split, dim=-1)
    B, T, D = x.shape[0], x.shape[1], module.head_dim
    q = q.reshape(B, T, module.n_heads, D).transpose(1, 2)
    k = k.reshape(B, T, module.n_kv_heads, D).transpose(1, 2)
    v = v.reshape(B, T, module.n_kv_heads, D).transpose(1, 2)
    if module.rope is not None:
        cos, sin = rotary_cos_sin(positions, D, module.rope.spec)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    return q, k, v


def _reference_attend(module: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      allowed: torch.Tensor | None) -> torch.Tensor:
    """q [B, Hq, R, D], k/v [B, Hkv, T, D], allowed [R, T] -> out-projected update [B, R, hidden]."""
    B, Hq, R, D = q.shape
    group = Hq // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # [B, Hq, T, D]
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("bhrd,bhtd->bhrt", q, k) * module.scale
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    if module.sinks is not None:
        sink = module.sinks.double().view(1, Hq, 1, 1).expand(B, Hq, R, 1)
        weights = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        weights = torch.softmax(scores, dim=-1)
    o = torch.einsum("bhrt,bhtd->brhd", weights, v).reshape(B, R, Hq * D)
    y = torch.einsum("brc,oc->bro", o, module.out.weight.double())
    return y + module.out.bias.double() if module.out.bias is not None else y


def reference_prefill(module: Attention, x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """float64 block update at query `rows` of x [B, S, hidden] -> [B, len(rows), hidden]."""
    S = x.shape[1]
    last = max(rows) + 1 if module.causal else S  # keys beyond the last row are never seen causally
    positions = torch.arange(last, device=x.device)
    _, k, v = _reference_qkv(module, x[:, :last], positions)
    row_t = torch.tensor(rows, device=x.device)
    chunk = max(1, REFERENCE_CHUNK_SCORES // (x.shape[0] * module.n_heads * last))
    outs = []
    for start in range(0, len(rows), chunk):
        r = row_t[start:start + chunk]
        q, _, _ = _reference_qkv(module, x[:, r], r)
        allowed = module.mask.allowed(r, positions)  # [R, T]
        outs.append(_reference_attend(module, q, k, v, allowed))
    return torch.cat(outs, dim=1)


def reference_decode(module: Attention, x: torch.Tensor, cache: KVCache, position: int) -> torch.Tensor:
    """float64 update of one token x [B, 1, hidden] at `position` against the cached keys before it: the
    positions its mask keeps, each read from slot position % capacity."""
    q, k_new, v_new = _reference_qkv(module, x, torch.tensor([position], device=x.device))
    earlier = [pos % cache.capacity for pos in module.mask.keep(position) if pos != position]
    idx = torch.tensor(earlier, device=x.device, dtype=torch.long)
    k = torch.cat([cache.k.index_select(2, idx).double(), k_new], dim=2)  # [B, Hkv, n_valid, D]
    v = torch.cat([cache.v.index_select(2, idx).double(), v_new], dim=2)
    return _reference_attend(module, q, k, v, None)
