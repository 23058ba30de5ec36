"""FlashAttention-2-style attention for gpt-oss in Triton: causal full or sliding-window, learned sinks,
native GQA, a query offset, forward and backward (docs/kernels-prefill.md).

`flash_attention(q [B, Hq, S, D], k, v [B, Hkv, T, D], sinks [Hq] | None, ...) -> o [B, Hq, S, D]`, where
the S queries sit at positions q_start..q_start+S-1 (default T - S: the last S of the T keys' positions,
so a chunk of a prefill or a prefill after a cache attends to every cached key it may see).

Tiling. A program owns BLOCK_M rows of one KV head's query group: row r is query i = r // G of group head
j = r % G (head kv_head * G + j, gpt-oss's head order), so the G heads that share a KV head are in one
tile and each K/V block is loaded once for all of them (no repeat_interleave). The rows of a block span
only BLOCK_M / G query positions, which keeps the key range of a windowed block tight: the key loop runs
from the block's first position minus the window (rounded down to BLOCK_N) to its last position, so a
windowed layer reads about (W + BLOCK_M / G) keys per block: cost grows with N*W. Bounds are positions
(q_start + i), never block indices, so a query block that starts after position 0 still reads the cached
keys before it. Only the tiles at the window's edge and on the diagonal are masked, and their loads are
limited to the block's exact key range, so no K or V element outside it is read (stale or NaN memory
outside the window cannot leak in through 0 * NaN); the tiles between run without masks.

Numerics. Scores and the softmax in float32 with exp2 (scale * log2(e) folded into the scores); the sink
logit starts the running max and the running sum (m = sink, l = 1), so it is the extra softmax column
that is dropped at the end. fp16/bf16 go to tl.dot as they are; float32 goes with input_precision "ieee"
(no TF32), so a float32 result matches float64 to float32 accuracy. The forward keeps the row's
log-sum-exp (log2 units, the sink included) for the backward.

Backward (FA2): delta = rowsum(dO * O); one kernel per KV block accumulates dK and dV over every query row
of the group that sees it (the group's sum, natively), one kernel per query block accumulates dQ; the
sink gradient is -sum over rows of p_sink * delta (the sink column's value is zero), in torch.

The forward is autotuned over FORWARD_CONFIGS keyed by (head_dim, window, dtype, group, query-count
bucket); under TRITON_INTERPRET=1 (CPU tests) it runs one fixed small tile, since autotuning times kernels
on a GPU.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
HEAD_DIMS = (16, 32, 64, 128)  # powers of two (tl.arange), at least 16 (tl.dot)

# (BLOCK_M, BLOCK_N, num_warps, num_stages): a small set around FA2's usual tiles for head_dim 64/128
FORWARD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in ((128, 64, 8, 3), (128, 32, 8, 2), (64, 64, 4, 3), (64, 32, 4, 2))
]
# head_dim -> (BLOCK_M, BLOCK_N) of both backward kernels: the largest tiles ptxas (sm_90) keeps free of spills
BACKWARD_BLOCKS = {16: (64, 64), 32: (64, 64), 64: (64, 32), 128: (32, 32)}
INTERPRET_BLOCKS = (32, 16)  # the interpreter's fixed tile (tiny test shapes; tl.dot needs >= 16)


def _interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1; `knobs` from Triton 3.4)."""
    if hasattr(triton, "knobs"):
        return bool(triton.knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _fwd_tiles(acc, m_i, l_i, q, k_base, v_base, sks, svs, pos, row_ok, start, end, first, hi, scale_log2,
               HEAD_DIM: tl.constexpr, WINDOW: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
               BLOCK_N: tl.constexpr, MASKED: tl.constexpr):
    """The online softmax over key tiles start, start + BLOCK_N, ... < end. MASKED: tiles at the window's
    edge or the diagonal, masked per (row, key), their loads limited to keys first..hi-1 (no K or V element
    outside the tile's key range is read); else tiles that every row sees whole."""
    d = tl.arange(0, HEAD_DIM)
    for start_n in range(start, end, BLOCK_N):
        n = start_n + tl.arange(0, BLOCK_N)
        # int32 offsets within one (sequence, KV head): the base pointers carry the int64 part
        k_ptrs = k_base + (n[None, :] * sks + d[:, None])  # [D, BN]
        v_ptrs = v_base + (n[:, None] * svs + d[None, :])  # [BN, D]
        if MASKED:
            n_ok = (n >= first) & (n < hi)
            k = tl.load(k_ptrs, mask=n_ok[None, :], other=0.0)
        else:
            k = tl.load(k_ptrs)
        s = tl.dot(q, k, input_precision=PREC) * scale_log2  # [BM, BN], log2 units
        if MASKED:
            ok = row_ok[:, None] & n_ok[None, :]
            if CAUSAL:
                ok = ok & (n[None, :] <= pos[:, None])
            if WINDOW > 0:
                ok = ok & (n[None, :] > pos[:, None] - WINDOW)
            s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing seen yet: no NaN
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs, mask=n_ok[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _key_range(pid_m, Q_START, S, T, GROUP: tl.constexpr, WINDOW: tl.constexpr, CAUSAL: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The positions of a query block's first and last rows, the first key any row sees, the first key tile
    and the end of the keys (the forward and dq kernels walk the same range). From positions, not block
    indices: the known chunked-prefill bug is a lower bound counted from query index 0, which skips cached
    keys when the block starts after position 0."""
    pos_lo = Q_START + (pid_m * BLOCK_M) // GROUP
    pos_hi = Q_START + tl.minimum((pid_m * BLOCK_M + BLOCK_M - 1) // GROUP, S - 1)
    hi = T
    if CAUSAL:
        hi = tl.minimum(pos_hi + 1, T)
    first = 0
    if WINDOW > 0:
        first = tl.maximum(pos_lo - WINDOW + 1, 0)
    lo = (first // BLOCK_N) * BLOCK_N
    return pos_lo, pos_hi, first, lo, hi


@triton.jit
def _fwd_kernel(Q, K, V, Sinks, O, LSE,
                sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos,
                S, T, Q_START, H_KV, scale_log2, S_BUCKET,
                GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, WINDOW: tl.constexpr, CAUSAL: tl.constexpr,
                HAS_SINKS: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H_KV
    kvh = pid_bh % H_KV
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # row r: query r // GROUP of group head r % GROUP
    qi = rows // GROUP
    head = kvh * GROUP + rows % GROUP
    row_ok = qi < S
    pos = Q_START + qi  # absolute query positions
    d = tl.arange(0, HEAD_DIM)
    q_off = b.to(tl.int64) * sqb + head.to(tl.int64) * sqh + qi.to(tl.int64) * sqs
    q = tl.load(Q + q_off[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)  # [BM, D]
    k_base = K + b.to(tl.int64) * skb + kvh.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + kvh.to(tl.int64) * svh

    if HAS_SINKS:  # the sink column starts the running max and sum: m = sink, l = e^(sink - m) = 1
        m_i = tl.load(Sinks + head, mask=row_ok, other=0.0).to(tl.float32) * 1.4426950408889634
        l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    pos_lo, pos_hi, first, lo, hi = _key_range(pid_m, Q_START, S, T, GROUP, WINDOW, CAUSAL, BLOCK_M, BLOCK_N)
    # Tiles where every row sees every key need no mask: [mid_lo, mid_hi), keys at or after the last row's
    # first key and at or before the first row's position. The masked tiles are the window's edge
    # [lo, mid_lo) and the diagonal [mid_hi, hi).
    mid_lo = lo
    if WINDOW > 0:
        mid_lo = tl.minimum(tl.cdiv(tl.maximum(pos_hi - WINDOW + 1, 0), BLOCK_N) * BLOCK_N, hi)
    if CAUSAL:
        mid_hi = ((pos_lo + 1) // BLOCK_N) * BLOCK_N
    else:
        mid_hi = (T // BLOCK_N) * BLOCK_N
    mid_hi = tl.maximum(tl.minimum(mid_hi, hi), mid_lo)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, k_base, v_base, sks, svs, pos, row_ok, lo, mid_lo, first, hi,
                               scale_log2, HEAD_DIM, WINDOW, CAUSAL, PREC, BLOCK_N, True)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, k_base, v_base, sks, svs, pos, row_ok, mid_lo, mid_hi, first,
                               hi, scale_log2, HEAD_DIM, WINDOW, CAUSAL, PREC, BLOCK_N, False)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, k_base, v_base, sks, svs, pos, row_ok, mid_hi, hi, first, hi,
                               scale_log2, HEAD_DIM, WINDOW, CAUSAL, PREC, BLOCK_N, True)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    o_off = b.to(tl.int64) * sob + head.to(tl.int64) * soh + qi.to(tl.int64) * sos
    tl.store(O + o_off[:, None] + d[None, :], o.to(O.dtype.element_ty), mask=row_ok[:, None])
    lse_off = (b.to(tl.int64) * H_KV * GROUP + head) * S + qi  # LSE [B, Hq, S], contiguous
    tl.store(LSE + lse_off, m_i + tl.log2(l_safe), mask=row_ok)


# Tuned once per (head_dim, window, dtype) - the autotuner adds the tensors' dtypes to the key - and per
# query group size (it sets how many positions a BLOCK_M tile spans: GQA 8 vs MHA) and power-of-two bucket
# of the query count (S_BUCKET, unused by the kernel: a decode step's one query and a 32k prefill want
# different tiles, while a sweep's lengths 1k..32k tune once each).
_fwd_tuned = triton.autotune(configs=FORWARD_CONFIGS,
                             key=["HEAD_DIM", "WINDOW", "GROUP", "S_BUCKET"])(_fwd_kernel)


@triton.jit
def _bwd_probs(s, lse, row_ok, n_ok, n, pos, WINDOW: tl.constexpr, CAUSAL: tl.constexpr):
    """The forward's probabilities of a tile again, from the saved log-sum-exp (base 2), and which of its
    entries are allowed (the dkdv and dq kernels recompute the same tile)."""
    ok = row_ok[:, None] & n_ok[None, :]
    if CAUSAL:
        ok = ok & (n[None, :] <= pos[:, None])
    if WINDOW > 0:
        ok = ok & (n[None, :] > pos[:, None] - WINDOW)
    return ok, tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV,
                     sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sdb, sdh, sds,
                     S, T, Q_START, H_KV, scale_log2, scale,
                     GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, WINDOW: tl.constexpr, CAUSAL: tl.constexpr,
                     PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK, dV of one KV block [BN, D], summed over every row of the group that sees it. DK/DV are
    contiguous [B, Hkv, T, D]; DO has its own strides (sd*)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H_KV
    kvh = pid_bh % H_KV
    d = tl.arange(0, HEAD_DIM)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < T
    k_off = b.to(tl.int64) * skb + kvh.to(tl.int64) * skh + n.to(tl.int64) * sks
    v_off = b.to(tl.int64) * svb + kvh.to(tl.int64) * svh + n.to(tl.int64) * svs
    k = tl.load(K + k_off[:, None] + d[None, :], mask=n_ok[:, None], other=0.0)  # [BN, D]
    v = tl.load(V + v_off[:, None] + d[None, :], mask=n_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    # the queries that may see keys n0..n1: position >= n0 (causal) and <= n1 + W - 1 (window)
    n0 = pid_n * BLOCK_N
    n1 = tl.minimum(n0 + BLOCK_N, T) - 1
    i_lo = 0
    if CAUSAL:
        i_lo = tl.maximum(n0 - Q_START, 0)
    i_hi = S - 1
    if WINDOW > 0:
        i_hi = tl.minimum(n1 + WINDOW - 1 - Q_START, S - 1)
    q_base = Q + b.to(tl.int64) * sqb
    do_base = DO + b.to(tl.int64) * sdb
    r_lo = ((i_lo * GROUP) // BLOCK_M) * BLOCK_M
    r_hi = (i_hi + 1) * GROUP
    for start_m in range(r_lo, r_hi, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        qi = rows // GROUP
        head = kvh * GROUP + rows % GROUP
        row_ok = qi < S
        pos = Q_START + qi
        q_off = head * sqh + qi * sqs  # int32 within one sequence: the base pointers carry the int64 part
        do_off = head * sdh + qi * sds
        q = tl.load(q_base + q_off[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)  # [BM, D]
        do = tl.load(do_base + do_off[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)
        row_off = (b.to(tl.int64) * H_KV * GROUP + head) * S + qi
        lse = tl.load(LSE + row_off, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + row_off, mask=row_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale_log2  # [BM, BN]
        ok, p = _bwd_probs(s, lse, row_ok, n_ok, n, pos, WINDOW, CAUSAL)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)  # [BM, BN]
        ds = tl.where(ok, p * (dp - delta[:, None]), 0.0)  # d loss / d logit (0 * NaN kept out)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    out = (b.to(tl.int64) * H_KV + kvh) * T * HEAD_DIM + n.to(tl.int64)[:, None] * HEAD_DIM + d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=n_ok[:, None])
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=n_ok[:, None])


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ,
                   sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sdb, sdh, sds,
                   S, T, Q_START, H_KV, scale_log2, scale,
                   GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, WINDOW: tl.constexpr, CAUSAL: tl.constexpr,
                   PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ of one query block (the forward's tiling and key range). DQ is contiguous [B, Hq, S, D]."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H_KV
    kvh = pid_bh % H_KV
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qi = rows // GROUP
    head = kvh * GROUP + rows % GROUP
    row_ok = qi < S
    pos = Q_START + qi
    d = tl.arange(0, HEAD_DIM)
    q_off = b.to(tl.int64) * sqb + head.to(tl.int64) * sqh + qi.to(tl.int64) * sqs
    do_off = b.to(tl.int64) * sdb + head.to(tl.int64) * sdh + qi.to(tl.int64) * sds
    q = tl.load(Q + q_off[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + do_off[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)
    row_off = (b.to(tl.int64) * H_KV * GROUP + head) * S + qi
    lse = tl.load(LSE + row_off, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + row_off, mask=row_ok, other=0.0)
    k_base = K + b.to(tl.int64) * skb + kvh.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + kvh.to(tl.int64) * svh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    pos_lo, pos_hi, first, lo, hi = _key_range(pid_m, Q_START, S, T, GROUP, WINDOW, CAUSAL, BLOCK_M, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        n = start_n + tl.arange(0, BLOCK_N)
        n_ok = (n >= first) & (n < hi)  # no K or V element outside the block's key range is loaded
        k = tl.load(k_base + (n[:, None] * sks + d[None, :]), mask=n_ok[:, None], other=0.0)  # [BN, D]
        v = tl.load(v_base + (n[:, None] * svs + d[None, :]), mask=n_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale_log2  # [BM, BN]
        ok, p = _bwd_probs(s, lse, row_ok, n_ok, n, pos, WINDOW, CAUSAL)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = tl.where(ok, p * (dp - delta[:, None]), 0.0)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    out = row_off * HEAD_DIM  # DQ [B, Hq, S, D] contiguous: the row's offset times D
    tl.store(DQ + out[:, None] + d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


# --- the torch wrapper
def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # tf32 only matters for fp32 inputs: never used


def _checked(q, k, v, sinks, causal: bool, window: int | None, q_start: int | None) -> int:
    """Validate shapes and options (ValueError naming the problem); the query offset to use."""
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"flash_attention takes q [B, Hq, S, D] and k, v [B, Hkv, T, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    (B, Hq, S, D), (Bk, Hkv, T, Dk) = q.shape, k.shape
    if B != Bk or D != Dk or Hq % Hkv:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)}: batch and head_dim must match and Hq must "
                         f"be a multiple of Hkv")
    if D not in HEAD_DIMS:
        raise ValueError(f"head_dim {D}: the kernel takes {', '.join(map(str, HEAD_DIMS))}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k, v must share one of float16, bfloat16, float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if sinks is not None and tuple(sinks.shape) != (Hq,):
        raise ValueError(f"sinks must be [Hq] = [{Hq}], got {tuple(sinks.shape)}")
    if window is not None and (not causal or window < 1):
        raise ValueError(f"window {window}: a sliding window is a positive int on causal attention")
    q_start = T - S if q_start is None else q_start
    if causal and not 0 <= q_start <= T - S:
        raise ValueError(f"q_start {q_start}: the {S} queries must sit among the {T} key positions "
                         f"(0 <= q_start <= {T - S})")
    return q_start


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _forward(q, k, v, sinks, scale: float, causal: bool, window: int | None, q_start: int):
    B, Hq, S, D = q.shape
    Hkv, T, G = k.shape[1], k.shape[2], q.shape[1] // k.shape[1]
    # o in [B, S, Hq, D] memory, seen as [B, Hq, S, D]: the layer's transpose + reshape is then free
    o = torch.empty((B, S, Hq, D), device=q.device, dtype=q.dtype).transpose(1, 2)
    lse = torch.empty((B, Hq, S), device=q.device, dtype=torch.float32)  # log2 units, sink included
    args = (q, k, v, sinks if sinks is not None else q, o, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            *o.stride()[:3], S, T, q_start, Hkv, scale * LOG2E, triton.next_power_of_2(S))
    meta = dict(GROUP=G, HEAD_DIM=D, WINDOW=window or 0, CAUSAL=causal, HAS_SINKS=sinks is not None,
                PREC=_precision(q.dtype))
    if _interpreting():
        bm, bn = INTERPRET_BLOCKS
        _fwd_kernel[(triton.cdiv(S * G, bm), B * Hkv)](*args, **meta, BLOCK_M=bm, BLOCK_N=bn)
    else:
        _fwd_tuned[lambda cfg: (triton.cdiv(S * G, cfg["BLOCK_M"]), B * Hkv)](*args, **meta)
    return o, lse


def _backward(do, q, k, v, o, lse, sinks, scale: float, causal: bool, window: int | None, q_start: int):
    B, Hq, S, D = q.shape
    Hkv, T, G = k.shape[1], k.shape[2], q.shape[1] // k.shape[1]
    do = _unit_stride(do)
    delta = (do.float() * o.float()).sum(-1).contiguous()  # [B, Hq, S]: rowsum(dO * O)
    dq = torch.empty((B, Hq, S, D), device=q.device, dtype=q.dtype)
    dk = torch.empty((B, Hkv, T, D), device=k.device, dtype=k.dtype)
    dv = torch.empty((B, Hkv, T, D), device=v.device, dtype=v.dtype)
    bm, bn = INTERPRET_BLOCKS if _interpreting() else BACKWARD_BLOCKS[D]
    args = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], S, T, q_start, Hkv,
            scale * LOG2E, scale)
    meta = dict(GROUP=G, HEAD_DIM=D, WINDOW=window or 0, CAUSAL=causal, PREC=_precision(q.dtype),
                BLOCK_M=bm, BLOCK_N=bn)
    _bwd_dkdv_kernel[(triton.cdiv(T, bn), B * Hkv)](q, k, v, do, lse, delta, dk, dv, *args, **meta)
    _bwd_dq_kernel[(triton.cdiv(S * G, bm), B * Hkv)](q, k, v, do, lse, delta, dq, *args, **meta)
    dsinks = None
    if sinks is not None:  # d loss / d sink = -sum over rows of p_sink * delta (the sink's value is zero)
        p_sink = torch.exp2(sinks.float()[None, :, None] * LOG2E - lse)  # [B, Hq, S]
        dsinks = -(p_sink * delta).sum(dim=(0, 2)).to(sinks.dtype)
    return dq, dk, dv, dsinks


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, sinks, scale, causal, window, q_start):
        o, lse = _forward(q, k, v, sinks, scale, causal, window, q_start)
        ctx.save_for_backward(q, k, v, o, lse, *([sinks] if sinks is not None else []))
        ctx.options = (scale, causal, window, q_start)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, *rest = ctx.saved_tensors
        dq, dk, dv, dsinks = _backward(do, q, k, v, o, lse, rest[0] if rest else None, *ctx.options)
        return dq, dk, dv, dsinks, None, None, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor | None = None, *,
                    scale: float | None = None, causal: bool = True, window: int | None = None,
                    q_start: int | None = None) -> torch.Tensor:
    """Attention of q [B, Hq, S, D] over k, v [B, Hkv, T, D] -> [B, Hq, S, D] (differentiable, sinks too).

    Query i sits at position q_start + i (default T - S) and, when causal, sees the keys at positions
    <= its own, and with a window W only the last W of them (itself included: gpt-oss's window 128 is
    FlashAttention's window_size=(127, 0)). sinks: one logit per query head, an extra softmax column that
    is dropped. Heads are grouped as gpt-oss orders them: query head h uses KV head h // (Hq // Hkv).
    """
    q, k, v = _unit_stride(q), _unit_stride(k), _unit_stride(v)
    q_start = _checked(q, k, v, sinks, causal, window, q_start)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _FlashAttention.apply(q, k, v, sinks.contiguous() if sinks is not None else None, scale, causal,
                                 window, q_start)
