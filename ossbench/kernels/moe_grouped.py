"""Grouped-GEMM MoE experts in Triton: gpt-oss's two expert projections over token slots sorted by expert.

`moe_grouped(t, order, counts, weights, w1, b1, w2, b2, ...)` computes, for every token, the routing-weighted
sum of its k experts' outputs, with two kernels:

1. `_up_swiglu_kernel`: h = clamped_swiglu(t[token] @ W1[e].T + b1[e]) for every sorted row (one row per
   token slot). The program owning activation columns j reads W1's rows 2j (gate) and 2j + 1 (linear):
   gpt-oss interleaves them, so the SwiGLU is finished in the epilogue, in fp32, and only h [R, I] is
   written. The token rows are gathered from t through their token index (no sorted copy of t).
2. `_down_weighted_kernel`: y = (h @ W2[e].T + b2[e]) * routing weight, written to the row's own slot of a
   [T * k, hidden] buffer; a sum over k (torch) then gives [T, hidden]. Every slot is written exactly once:
   no atomics (bf16 atomics are slow or missing), no zero fill, and a re-run (autotuning) is harmless.

Program map (both kernels): M tiles expert by expert (an expert with c rows owns ceil(c / BLOCK_M) tiles,
one with no rows owns none) times N tiles, on a 1-D grid that takes GROUP_M M tiles across all N tiles at a
time (their weight and token tiles stay in L2). The tile -> (expert, first row, end row) table is built
with torch on the device from the per-expert counts (no host sync); the grid is sized by the bound
R // BLOCK_M + min(E, R) and the programs past the last tile return at once.
BLOCK_M follows the mean rows per expert (16 in decode, up to 128 in prefill); BLOCK_N / BLOCK_K and the
warps / stages are autotuned on CUDA (key: N, K, BLOCK_M, MXFP4) and fixed under TRITON_INTERPRET=1.

Weights are a float tensor [E, N, K] or `Packed(blocks, scales)`: MXFP4 as ossbench/layers/mxfp4.py
stores it (blocks uint8 [E, N, K/32, 16], the even element of a pair in the low nibble; scales uint8
[E, N, K/32], E8M0 with bias 127, 255 = NaN). Each K tile is decoded in registers (E2M1 code -> value,
times 2^(scale - 127) built from its fp32 bit pattern: exact), cast to the activation dtype and fed to
tl.dot: no decoded copy of the experts exists in memory. Accumulation is fp32; float32 inputs use
input_precision="ieee" (no TF32). The kernels call only Triton builtins and their own helpers, none of
triton.language's @jit functions (tl.cdiv, tl.zeros, ...): those are interpreted only when triton was
first imported with TRITON_INTERPRET=1, and a test may set it after something imported triton.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Union

import torch
import triton
import triton.language as tl

MXFP4_BLOCK = 32  # values per scale (layers/mxfp4.py's BLOCK; checked against the blocks' shape below)
INTERPRET_CONFIG = {"BLOCK_N": 32, "BLOCK_K": 32}  # under the interpreter: small tiles, no autotuning
GROUP_M = 8  # M tiles walked together across the N tiles (L2 reuse), see _program_tiles
# (BLOCK_N, BLOCK_K, num_warps, num_stages): BLOCK_K is a multiple of the MXFP4 block in every config
TUNE_SPACE = ((64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 4), (64, 128, 4, 3), (128, 128, 8, 3),
              (32, 128, 4, 4))


class Packed(NamedTuple):
    """MXFP4 expert weights [E, N, K]: blocks uint8 [E, N, K/32, 16], scales uint8 [E, N, K/32]."""

    blocks: torch.Tensor
    scales: torch.Tensor


Weight = Union[torch.Tensor, Packed]


def interpreting() -> bool:
    """Whether TRITON_INTERPRET asks for Triton's CPU interpreter (Triton reads it when it decorates a kernel)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


INTERPRETED = interpreting()  # how this module's kernels were decorated (below, at import)


def block_m(rows: int, n_experts: int) -> int:
    """M tile for a mean of rows / n_experts rows per expert: small tiles in decode, 128 in prefill."""
    mean = rows / max(n_experts, 1)
    return next((m for m in (16, 32, 64) if mean <= m), 128)


@triton.jit
def _weight_tile(w_ptr, s_ptr, e, n, kk, mask, stride_we, stride_wn, stride_wk, stride_se, stride_sn,
                 MXFP4: tl.constexpr, DTYPE: tl.constexpr):
    """W[e, n, kk] as a [BLOCK_K, BLOCK_N] tile in DTYPE (kk along rows, n along columns)."""
    if MXFP4:
        # w_ptr: blocks viewed as [E, N, K/2] bytes; the element kk sits in byte kk // 2, low nibble if even
        byte = tl.load(w_ptr + e * stride_we + n[None, :] * stride_wn + (kk // 2)[:, None], mask=mask, other=0)
        code = (byte.to(tl.int32) >> ((kk % 2) * 4)[:, None]) & 0xF
        exp_bits = (code >> 1) & 3
        mant = (code & 1).to(tl.float32)
        # E2M1: exponent 0 is subnormal (0 or 0.5), else (1 + m/2) * 2^(exp - 1): 1, 1.5, 2, 3, 4, 6
        mag = tl.where(exp_bits == 0, 0.5 * mant, (1.0 + 0.5 * mant) * ((1 << exp_bits).to(tl.float32) * 0.5))
        val = tl.where((code & 8) != 0, -mag, mag)
        s = tl.load(s_ptr + e * stride_se + n[None, :] * stride_sn + (kk // 32)[:, None], mask=mask,
                    other=127).to(tl.int32)
        # 2^(s - 127) is the fp32 with exponent field s (fp32's bias is also 127); s = 0 is the subnormal
        # 2^-127, s = 255 NaN
        bits = tl.where(s == 0, 0x400000, s << 23)
        bits = tl.where(s == 255, 0x7FC00000, bits)
        return (val * bits.to(tl.float32, bitcast=True)).to(DTYPE)
    else:
        return tl.load(w_ptr + e * stride_we + n[None, :] * stride_wn + kk[:, None] * stride_wk, mask=mask,
                       other=0.0).to(DTYPE)


@triton.jit
def _program_tiles(grid_m, N, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(M tile, N tile) of this program: the 1-D grid walks GROUP_M consecutive M tiles (mostly one
    expert's) across every N tile before the next group, so their weight and token tiles are reused from L2."""
    pid = tl.program_id(0)
    n_tiles = (N + BLOCK_N - 1) // BLOCK_N
    in_group = GROUP_M * n_tiles
    first_m = (pid // in_group) * GROUP_M
    size = tl.minimum(grid_m - first_m, GROUP_M)
    return first_m + (pid % in_group) % size, (pid % in_group) // size


@triton.jit
def _tile(tile_expert_ptr, tile_row_ptr, tile_end_ptr, pid_m, BLOCK_M: tl.constexpr):
    """(expert, sorted rows [BLOCK_M], row mask) of M tile pid_m; expert < 0 past the last tile."""
    e = tl.load(tile_expert_ptr + pid_m)
    rows = tl.load(tile_row_ptr + pid_m) + tl.arange(0, BLOCK_M)
    return e, rows, rows < tl.load(tile_end_ptr + pid_m)


@triton.jit
def _up_swiglu_kernel(x_ptr, tok_ptr, w_ptr, ws_ptr, b_ptr, h_ptr, tile_expert_ptr, tile_row_ptr, tile_end_ptr,
                      grid_m, N, K, stride_xm, stride_we, stride_wn, stride_wk, stride_se, stride_sn, stride_be,
                      stride_hm, alpha, limit, HAS_BIAS: tl.constexpr, MXFP4: tl.constexpr, IEEE: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """h[rows, cols] = clamped SwiGLU of x[tok[rows]] @ W1[e].T + b1[e]; N = I (activation width), K = hidden."""
    pid_m, pid_n = _program_tiles(grid_m, N, BLOCK_N, GROUP_M)
    e, rows, row_ok = _tile(tile_expert_ptr, tile_row_ptr, tile_end_ptr, pid_m, BLOCK_M)
    if e < 0:
        return
    e = e.to(tl.int64)  # e * stride_we exceeds int32 for 128 experts of 5760 x 2880
    tok = tl.load(tok_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # activation columns j
    col_ok = cols < N
    gate, lin = 2 * cols, 2 * cols + 1  # interleaved: W1 row 2j is j's gate, 2j + 1 its linear half
    dtype = x_ptr.dtype.element_ty
    acc_g = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    acc_l = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < K
        a = tl.load(x_ptr + tok[:, None] * stride_xm + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & col_ok[None, :]
        wg = _weight_tile(w_ptr, ws_ptr, e, gate, kk, w_mask, stride_we, stride_wn, stride_wk, stride_se, stride_sn,
                          MXFP4, dtype)
        wl = _weight_tile(w_ptr, ws_ptr, e, lin, kk, w_mask, stride_we, stride_wn, stride_wk, stride_se, stride_sn,
                          MXFP4, dtype)
        if IEEE:
            acc_g = tl.dot(a, wg, acc_g, input_precision="ieee")
            acc_l = tl.dot(a, wl, acc_l, input_precision="ieee")
        else:
            acc_g = tl.dot(a, wg, acc_g)
            acc_l = tl.dot(a, wl, acc_l)
    if HAS_BIAS:
        acc_g += tl.load(b_ptr + e * stride_be + gate, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        acc_l += tl.load(b_ptr + e * stride_be + lin, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    g = tl.minimum(acc_g, limit)  # gate clamped above only
    lin_v = tl.minimum(tl.maximum(acc_l, -limit), limit)
    out = g / (1.0 + tl.exp(-alpha * g)) * (lin_v + 1.0)  # g * sigmoid(alpha g) * (l + 1)
    tl.store(h_ptr + rows.to(tl.int64)[:, None] * stride_hm + cols[None, :], out.to(h_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _down_weighted_kernel(h_ptr, w_ptr, ws_ptr, b_ptr, slot_ptr, rw_ptr, y_ptr, tile_expert_ptr, tile_row_ptr,
                          tile_end_ptr, grid_m, N, K, stride_hm, stride_we, stride_wn, stride_wk, stride_se,
                          stride_sn, stride_be, stride_ym, HAS_BIAS: tl.constexpr, MXFP4: tl.constexpr,
                          IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          GROUP_M: tl.constexpr):
    """y[slot[rows], cols] = (h[rows] @ W2[e].T + b2[e]) * routing weight of the slot; N = hidden, K = I."""
    pid_m, pid_n = _program_tiles(grid_m, N, BLOCK_N, GROUP_M)
    e, rows, row_ok = _tile(tile_expert_ptr, tile_row_ptr, tile_end_ptr, pid_m, BLOCK_M)
    if e < 0:
        return
    e = e.to(tl.int64)
    rows64 = rows.to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    dtype = h_ptr.dtype.element_ty
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < K
        a = tl.load(h_ptr + rows64[:, None] * stride_hm + kk[None, :], mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0)
        w = _weight_tile(w_ptr, ws_ptr, e, cols, kk, k_ok[:, None] & col_ok[None, :], stride_we, stride_wn,
                         stride_wk, stride_se, stride_sn, MXFP4, dtype)
        if IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + e * stride_be + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    slot = tl.load(slot_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    acc = acc * tl.load(rw_ptr + slot, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    tl.store(y_ptr + slot[:, None] * stride_ym + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


_TUNE_CONFIGS = [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s) for n, k, w, s in TUNE_SPACE]
_TUNE_KEY = ["N", "K", "BLOCK_M", "MXFP4"]
_up_tuned = triton.autotune(_TUNE_CONFIGS, key=_TUNE_KEY)(_up_swiglu_kernel)
_down_tuned = triton.autotune(_TUNE_CONFIGS, key=_TUNE_KEY)(_down_weighted_kernel)


def _weight_args(w: Weight, n_experts: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, tuple, bool]:
    """(data, scales, (stride_we, stride_wn, stride_wk, stride_se, stride_sn), is MXFP4) for a weight [E, n, k]."""
    if isinstance(w, Packed):
        if k % MXFP4_BLOCK or tuple(w.blocks.shape) != (n_experts, n, k // MXFP4_BLOCK, MXFP4_BLOCK // 2) \
                or tuple(w.scales.shape) != (n_experts, n, k // MXFP4_BLOCK):
            raise ValueError(f"MXFP4 weight [{n_experts}, {n}, {k}]: blocks {tuple(w.blocks.shape)}, scales "
                             f"{tuple(w.scales.shape)} do not match [E, N, K/32, 16] / [E, N, K/32]")
        blocks = w.blocks.reshape(n_experts, n, k // 2)  # a view of contiguous blocks: one row's bytes in a line
        if blocks.stride(2) != 1:
            blocks = blocks.contiguous()
        if w.scales.stride(2) != 1:
            raise ValueError("MXFP4 scales must be contiguous along K")
        return blocks, w.scales, (blocks.stride(0), blocks.stride(1), 1, w.scales.stride(0), w.scales.stride(1)), True
    if tuple(w.shape) != (n_experts, n, k):
        raise ValueError(f"expert weight {tuple(w.shape)} is not [{n_experts}, {n}, {k}]")
    return w, w, (w.stride(0), w.stride(1), w.stride(2), 0, 0), False


def _tile_table(counts: torch.Tensor, bm: int, rows: int) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(M tiles G, expert [G] (-1 past the last tile), first sorted row [G], end row [G]) of each M tile."""
    E = counts.numel()
    grid = rows // bm + min(E, rows)  # sum over experts of ceil(c_e / bm) never exceeds this
    counts = counts.to(torch.int64)
    starts = counts.cumsum(0) - counts  # first sorted row of each expert
    tiles = (counts + bm - 1) // bm
    tile_end = tiles.cumsum(0)  # [E]: tiles of experts 0..e
    tid = torch.arange(grid, device=counts.device)
    expert = torch.searchsorted(tile_end, tid, right=True)  # owner of tile tid; E past the last tile
    owner = expert.clamp(max=E - 1)
    first = starts[owner] + (tid - (tile_end - tiles)[owner]) * bm
    end = starts[owner] + counts[owner]
    expert = torch.where(expert < E, expert, -1)
    return grid, expert.to(torch.int32), first.to(torch.int32), end.to(torch.int32)


def moe_grouped(t: torch.Tensor, order: torch.Tensor, counts: torch.Tensor, weights: torch.Tensor, w1: Weight,
                b1: torch.Tensor | None, w2: Weight, b2: torch.Tensor | None, *, alpha: float = 1.702,
                limit: float = 7.0, config: dict[str, int] | None = None) -> torch.Tensor:
    """The combined expert outputs [T, hidden] of normed tokens t [T, hidden].

    order [T*k]: token slots (token * k + j) sorted by expert, counts [E]: slots per expert, weights [T, k]:
    routing weights; w1 [E, 2I, hidden] (gate/linear rows interleaved), w2 [E, hidden, I], float or Packed
    MXFP4; b1 [E, 2I], b2 [E, hidden] or None. Computes in t's dtype with fp32 accumulation. `config`
    ({"BLOCK_N": .., "BLOCK_K": ..}) replaces INTERPRET_CONFIG under the interpreter (tests of partial tiles).
    """
    T, H = t.shape
    k = weights.shape[1]
    E, R = counts.numel(), order.numel()
    if R == 0:
        return t.new_zeros(T, H)
    I2 = (w1.blocks if isinstance(w1, Packed) else w1).shape[1]
    if I2 % 2:
        raise ValueError(f"mlp1 has {I2} outputs: the interleaved gate/linear halves need an even number")
    I = I2 // 2
    w1d, w1s, w1_strides, mx1 = _weight_args(w1, E, I2, H)
    w2d, w2s, w2_strides, mx2 = _weight_args(w2, E, H, I)
    if mx1 != mx2:
        raise ValueError("mlp1 and mlp2 must both be MXFP4 or both float")
    if (b1 is None) != (b2 is None):
        raise ValueError("b1 and b2 must both be given or both be None")
    t = t.contiguous()
    order = order.contiguous()
    token_of_row = (order // k).to(torch.int32)  # [R] the token each sorted row reads
    rw = weights.contiguous().view(-1)  # [T*k] routing weight by slot
    bm = block_m(R, E)
    grid_m, tile_expert, tile_row, tile_end = _tile_table(counts, bm, R)
    h = t.new_empty(R, I)  # activations of the sorted rows
    y = t.new_empty(T * k, H)  # weighted expert output of each slot
    no_bias = t  # any pointer: never read when HAS_BIAS is False
    common = dict(HAS_BIAS=b1 is not None, MXFP4=mx1, IEEE=t.dtype == torch.float32, BLOCK_M=bm, GROUP_M=GROUP_M)
    up, down = (_up_swiglu_kernel, _down_weighted_kernel) if INTERPRETED else (_up_tuned, _down_tuned)
    fixed = (config or INTERPRET_CONFIG) if INTERPRETED else {}

    up[lambda meta: (grid_m * triton.cdiv(I, meta["BLOCK_N"]),)](
        t, token_of_row, w1d, w1s, b1 if b1 is not None else no_bias, h, tile_expert, tile_row, tile_end,
        grid_m, I, H, t.stride(0), *w1_strides, b1.stride(0) if b1 is not None else 0, h.stride(0),
        float(alpha), float(limit), **common, **fixed)
    down[lambda meta: (grid_m * triton.cdiv(H, meta["BLOCK_N"]),)](
        h, w2d, w2s, b2 if b2 is not None else no_bias, order, rw, y, tile_expert, tile_row, tile_end,
        grid_m, H, I, h.stride(0), *w2_strides, b2.stride(0) if b2 is not None else 0, y.stride(0), **common,
        **fixed)
    return y.view(T, k, H).sum(1)  # [T, hidden]; torch sums 16-bit values in fp32
