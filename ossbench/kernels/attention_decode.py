"""Split-KV flash-decoding: one new query token per sequence against a long KV cache, in two Triton kernels.

What it computes, per sequence b and query head h (kv head h // group, the layer's head order), with L the
sequence's valid slots and W the window:

    o[b, h] = sum_j softmax([s_j..., sink_h])_j * v[b, kv, j]   over slots j in [max(0, L - W), L)  (no W: [0, L))
    s_j = scale * q[b, h] . k[b, kv, j]

the sink an extra softmax column that is then dropped (gpt-oss's learned sinks), exactly as the eager backend
(ossbench/layers/attention.py `_eager`) computes a decode step. The cache is the layer's KVCache as it is:
position p in slot p % C. A decode step at position p attends to min(p + 1, C) slots, always slots
0..min(p + 1, C) - 1 (a full layer: the prefix; a window W: the ring of C = W slots, every slot once the ring
has wrapped), so `lengths` = min(p + 1, C) and order within the ring does not matter: the decoded token sees
every key it is given, RoPE already applied. With a window and a linear cache longer than W, the kernel
reads the last W valid slots; with the ring (L <= W) that is every valid slot.

Kernel 1, `_split_kernel`, grid (B, Hkv, num_splits): each program reads one KV head once for all `group`
query heads of that head (native GQA: the group's queries are the M dimension of a tl.dot against each K
block, padded to 16 rows), over its share of the sequence's keys: the sequence's own keys cut into
`num_splits` runs of whole BLOCK_N blocks, so a short sequence in a long batch gets short splits (and
a length-1 sequence one non-empty split). It keeps an online softmax in base 2 (scores times
scale * log2 e) and writes the unnormalised partial output with its running max and sum (float32).
Kernel 2, `_merge_kernel`, grid (B, Hq): the log-sum-exp merge of the splits, with the sink added once here
(as one more term of the denominator), then the division and the cast to q's dtype. With one split (a
window ring, a short cache) kernel 1 does that itself and kernel 2 is not launched.

The wrapper does not read `lengths` on the host (that would synchronise every call): a length above the
cache's slots is read as the slots, a length of 0 gives a zero output.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2 e)
_LOG2E = tl.constexpr(LOG2E)  # the same, readable inside a kernel (a plain global is not)
BLOCK_N = 64  # keys per block: a [64, D] K/V tile of 8 KiB at D=64 in bf16
MIN_ROWS = 16  # tl.dot needs M >= 16: a group of fewer query heads is padded with masked rows
SPLIT_WARPS, MERGE_WARPS = 4, 2
# num_splits heuristic (choose_num_splits): enough programs to keep every SM busy with loads in flight,
# without splits so short that the merge's traffic matters
PROGRAMS_PER_SM = 4
MIN_KEYS_PER_SPLIT = 256  # 4 blocks of 64: partials ~6% of the split's K/V at the shortest (G 8, D 64, bf16)
MAX_SPLITS = 64
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _split_kernel(Q, K, V, LENGTHS, O_PART, M_PART, L_PART, SINKS, OUT,
                  stride_qb, stride_qh, stride_qd,
                  stride_kb, stride_kh, stride_kn, stride_kd,
                  stride_vb, stride_vh, stride_vn, stride_vd,
                  stride_ob, stride_oh, stride_od,
                  n_slots, window, qk_scale,
                  GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr, N_HEADS: tl.constexpr,
                  WINDOWED: tl.constexpr, HAS_SINKS: tl.constexpr,
                  BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)  # int64 offsets: b * stride_kb passes 2^31 at batch 32 of 128k slots
    kv_head = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)

    length = tl.minimum(tl.maximum(tl.load(LENGTHS + b).to(tl.int32), 0), n_slots)
    first = 0
    if WINDOWED:
        first = tl.maximum(length - window, 0)
    # this sequence's keys [first, length) in NUM_SPLITS runs of whole blocks; the last runs may be empty
    chunk = tl.cdiv(tl.cdiv(length - first, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = first + split * chunk
    hi = tl.minimum(lo + chunk, length)

    offs_g = tl.arange(0, BLOCK_G)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    heads = kv_head * GROUP + offs_g  # query head h = kv_head * GROUP + j
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :] * stride_qd,
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_G, BLOCK_D]

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)  # running max of the base-2 scores
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)  # running sum of exp2(score - m_i)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    k_base = K + b * stride_kb + kv_head * stride_kh
    v_base = V + b * stride_vb + kv_head * stride_vh
    for start in range(lo, hi, BLOCK_N):
        n = start + offs_n
        n_mask = n < hi
        k_t = tl.load(k_base + n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                      mask=d_mask[:, None] & n_mask[None, :], other=0.0)  # [BLOCK_D, BLOCK_N]
        s = tl.dot(q, k_t, input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_G, BLOCK_N], base 2
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every block holds at least one valid key
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    if NUM_SPLITS == 1:  # one split: finish here (the merge's sum over one split), one launch instead of two
        denom = l_i
        if HAS_SINKS:
            sink = tl.load(SINKS + heads, mask=g_mask, other=0.0).to(tl.float32) * _LOG2E  # [BLOCK_G]
            m_all = tl.maximum(m_i, sink)  # finite: the sink is
            w = tl.exp2(m_i - m_all)  # 0 when the sequence has no key (m_i = -inf)
            denom = l_i * w + tl.exp2(sink - m_all)
            acc = acc * w[:, None]
        o = tl.where(denom[:, None] > 0, acc / tl.where(denom > 0, denom, 1.0)[:, None], 0.0)
        tl.store(OUT + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :] * stride_od,
                 o.to(OUT.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])
    else:
        # partials [B, Hq, NUM_SPLITS, (D)], contiguous; an empty split writes m = -inf, l = 0, acc = 0
        row = (b * N_HEADS + heads) * NUM_SPLITS + split  # [BLOCK_G]
        tl.store(M_PART + row, m_i, mask=g_mask)
        tl.store(L_PART + row, l_i, mask=g_mask)
        tl.store(O_PART + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=g_mask[:, None] & d_mask[None, :])


@triton.jit
def _merge_kernel(O_PART, M_PART, L_PART, SINKS, OUT,
                  stride_ob, stride_oh, stride_od,
                  HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr, N_HEADS: tl.constexpr,
                  HAS_SINKS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < NUM_SPLITS
    d_mask = offs_d < HEAD_DIM
    row = (b * N_HEADS + h) * NUM_SPLITS + offs_s  # [BLOCK_S]
    m = tl.load(M_PART + row, mask=s_mask, other=float("-inf"))
    l_s = tl.load(L_PART + row, mask=s_mask, other=0.0)
    m_all = tl.max(m, 0)
    if HAS_SINKS:
        sink = tl.load(SINKS + h).to(tl.float32) * _LOG2E  # the sink logit in the scores' base-2 units
        m_all = tl.maximum(m_all, sink)
    m_all = tl.where(m_all == float("-inf"), 0.0, m_all)  # no key and no sink: every weight below is 0
    w = tl.exp2(m - m_all)  # [BLOCK_S]; an empty split (m = -inf) weighs 0
    denom = tl.sum(l_s * w, 0)
    if HAS_SINKS:
        denom += tl.exp2(sink - m_all)  # the sink column, added once for the whole sequence
    acc = tl.load(O_PART + row[:, None] * HEAD_DIM + offs_d[None, :], mask=s_mask[:, None] & d_mask[None, :],
                  other=0.0)  # [BLOCK_S, BLOCK_D]
    o = tl.sum(acc * w[:, None], 0)  # [BLOCK_D]
    o = tl.where(denom > 0, o / tl.where(denom > 0, denom, 1.0), 0.0)
    tl.store(OUT + b * stride_ob + h * stride_oh + offs_d * stride_od, o.to(OUT.dtype.element_ty), mask=d_mask)


# --- host side
def interpreted() -> bool:
    """True when these kernels were decorated under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    return type(_split_kernel).__name__ == "InterpretedFunction"


def unavailable_reason(device: torch.device | str) -> str | None:
    """Why flash_decode cannot run on `device` (None when it can): CUDA, or CPU under the interpreter."""
    device = torch.device(device)
    if interpreted():
        return None if device.type == "cpu" else (
            f"the decode kernel was loaded under TRITON_INTERPRET=1, which runs on CPU tensors, not {device}")
    if device.type == "cuda" and torch.cuda.is_available():
        return None
    return f"the Triton decode kernel needs a CUDA device (or TRITON_INTERPRET=1 on CPU), not {device}"


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def choose_num_splits(batch: int, n_kv_heads: int, keys: int, sm_count: int) -> int:
    """Splits per (sequence, KV head): about PROGRAMS_PER_SM programs per SM over the B * Hkv groups, but
    no split shorter than MIN_KEYS_PER_SPLIT of the `keys` a sequence reads at most, and at most MAX_SPLITS.

    Decode is bound by reading K/V: with B * Hkv programs alone (64 for batch 8 of gpt-oss's 8 KV heads) most
    of an H100's 132 SMs would idle; splitting the keys fills them. E.g. 132 SMs, batch 8, 8 KV heads, 32k
    keys: 9 splits (576 programs); batch 1: 64 splits of 512 keys; a 128-slot window ring: 1 split.
    """
    if min(batch, n_kv_heads, sm_count) < 1 or keys < 0:
        raise ValueError(f"choose_num_splits: batch {batch}, n_kv_heads {n_kv_heads} and sm_count {sm_count} "
                         f"must be positive and keys {keys} not negative")
    wanted = -(-PROGRAMS_PER_SM * sm_count // (batch * n_kv_heads))
    return max(1, min(wanted, keys // MIN_KEYS_PER_SPLIT, MAX_SPLITS))


def _check(q, k_cache, v_cache, lengths, sinks, window, num_splits) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"flash_decode takes q [B, Hq, D] and k_cache, v_cache [B, Hkv, S, D] of one shape; got "
                         f"q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}")
    B, Hq, D = q.shape
    Bk, Hkv, _, Dk = k_cache.shape
    if Bk != B or Dk != D or Hkv == 0 or Hq % Hkv:
        raise ValueError(f"flash_decode: q {tuple(q.shape)} does not fit the cache {tuple(k_cache.shape)} (same "
                         f"batch and head_dim, query heads a multiple of KV heads)")
    if q.dtype not in DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"flash_decode takes q, k_cache, v_cache of one dtype among float16, bfloat16, float32; "
                         f"got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if lengths.shape != (B,) or lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"flash_decode: lengths must be [B] = [{B}] int32 (valid slots per sequence); got "
                         f"{tuple(lengths.shape)} {lengths.dtype}")
    if sinks is not None and (sinks.shape != (Hq,) or not sinks.is_floating_point()):
        raise ValueError(f"flash_decode: sinks must be [Hq] = [{Hq}] floats or None; got {tuple(sinks.shape)} "
                         f"{sinks.dtype}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"flash_decode: window must be a positive int or None; got {window!r}")
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int)
                                   or not 1 <= num_splits <= MAX_SPLITS):
        raise ValueError(f"flash_decode: num_splits must be an int in 1..{MAX_SPLITS} or None; got {num_splits!r}")
    tensors = [q, k_cache, v_cache, lengths] + ([sinks] if sinks is not None else [])
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"flash_decode: every tensor on one device; got {sorted({str(t.device) for t in tensors})}")
    reason = unavailable_reason(q.device)
    if reason:
        raise RuntimeError(reason)


def flash_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                 sinks: torch.Tensor | None, window: int | None, scale: float,
                 num_splits: int | None = None) -> torch.Tensor:
    """One decode step of attention: q [B, Hq, D] against k_cache, v_cache [B, Hkv, S, D] -> [B, Hq, D] in q's
    dtype (softmax and accumulation in float32).

    lengths [B] (int32): valid slots per sequence, slots 0..lengths[b]-1 (a KVCache at position p:
    min(p + 1, S)). sinks [Hq] or None: one logit per query head. window: a sliding-window layer's W (its
    cache is the ring of W slots; a linear cache is read over its last W valid slots). scale: the score
    scale (1/sqrt(D)). num_splits: splits of each sequence's keys; None chooses them (choose_num_splits).
    Any strides; the cache is read in place (no copy, no expansion to the query heads).
    """
    _check(q, k_cache, v_cache, lengths, sinks, window, num_splits)
    B, Hq, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    group = Hq // Hkv
    keys = min(S, window) if window is not None else S  # the most keys one sequence reads
    out = torch.empty((B, Hq, D), device=q.device, dtype=q.dtype)
    if B == 0 or Hq == 0 or D == 0:
        return out
    if num_splits is None:
        sms = _sm_count(q.device.index if q.device.index is not None else torch.cuda.current_device()) \
            if q.device.type == "cuda" else 1
        num_splits = choose_num_splits(B, Hkv, keys, sms)
    if num_splits > 1:  # float32 partials for the merge; one split writes `out` directly
        o_part = torch.empty((B, Hq, num_splits, D), device=q.device, dtype=torch.float32)
        m_part = torch.empty((B, Hq, num_splits), device=q.device, dtype=torch.float32)
        l_part = torch.empty_like(m_part)
    else:
        o_part = m_part = l_part = out  # not touched
    sinks_arg = sinks if sinks is not None else out  # not read without sinks
    block_d = max(MIN_ROWS, triton.next_power_of_2(D))
    with torch.cuda.device(q.device) if q.device.type == "cuda" else contextlib.nullcontext():
        _split_kernel[(B, Hkv, num_splits)](
            q, k_cache, v_cache, lengths, o_part, m_part, l_part, sinks_arg, out,
            *q.stride(), *k_cache.stride(), *v_cache.stride(), *out.stride(),
            S, window if window is not None else S, float(scale) * LOG2E,
            GROUP=group, HEAD_DIM=D, NUM_SPLITS=num_splits, N_HEADS=Hq, WINDOWED=window is not None,
            HAS_SINKS=sinks is not None, BLOCK_G=max(MIN_ROWS, triton.next_power_of_2(group)), BLOCK_N=BLOCK_N,
            BLOCK_D=block_d, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=SPLIT_WARPS)
        if num_splits > 1:
            _merge_kernel[(B, Hq)](
                o_part, m_part, l_part, sinks_arg, out, *out.stride(),
                HEAD_DIM=D, NUM_SPLITS=num_splits, N_HEADS=Hq, HAS_SINKS=sinks is not None,
                BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_D=block_d, num_warps=MERGE_WARPS)
    return out


# --- bytes moved
def _lengths_list(lengths: Sequence[int] | torch.Tensor) -> list[int]:
    return [int(n) for n in (lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths)]


def kv_read_bytes(lengths: Sequence[int] | torch.Tensor, n_kv_heads: int, head_dim: int, dtype_bytes: int,
                  window: int | None = None) -> int:
    """K and V bytes one flash_decode call reads: each sequence's keys (min(length, W) with a window), once
    per KV head, whatever the number of query heads (native GQA)."""
    keys = sum(min(n, window) if window is not None else n for n in _lengths_list(lengths))
    return keys * 2 * n_kv_heads * head_dim * dtype_bytes


def flash_decode_bytes(lengths: Sequence[int] | torch.Tensor, n_heads: int, n_kv_heads: int, head_dim: int,
                       dtype_bytes: int, window: int | None = None) -> int:
    """The minimum bytes one flash_decode call moves: K and V of the valid slots, q read and the output
    written. Left out: the split partials (split_workspace_bytes), the sinks (Hq values) and lengths."""
    batch = len(_lengths_list(lengths))
    return kv_read_bytes(lengths, n_kv_heads, head_dim, dtype_bytes, window) + 2 * batch * n_heads * head_dim * \
        dtype_bytes


def split_workspace_bytes(batch: int, n_heads: int, head_dim: int, num_splits: int) -> int:
    """The float32 partials the split kernel writes and the merge reads: per head and split, D + 2 values
    (none with one split: the split kernel then writes the output itself)."""
    return 2 * batch * n_heads * num_splits * (head_dim + 2) * 4 if num_splits > 1 else 0
