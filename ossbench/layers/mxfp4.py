"""MXFP4: the storage format of gpt-oss's expert weights (OCP Microscaling, FP4 E2M1 elements).

Along the last (input) dimension, every block of 32 values shares one scale:
- elements: 4-bit E2M1 codes, two per uint8. Bit 3 is the sign, bits 0-2 index the magnitudes
  0, 0.5, 1, 1.5, 2, 3, 4, 6. The low nibble holds the even element of a pair, the high nibble the odd
  one (as gpt-oss's checkpoint decoder reads them).
- scale: one uint8 per block (E8M0), the exponent of a power of two with bias 127:
  value = code * 2^(scale-127); the scale 255 means NaN (OCP MX spec).

A weight [..., K] is stored as `blocks` uint8 [..., K/32, 16] and `scales` uint8 [..., K/32]: 4.25 bits
per value. gpt-oss's checkpoint names them `<name>.blocks` and `<name>.scales`; `MXFP4Weight` keeps the
same buffer names so a checkpoint's packed tensors load with `load_state_dict`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

BLOCK = 32  # values per shared scale
BYTES_PER_BLOCK = BLOCK // 2
SCALE_BIAS = 127
SCALE_NAN = 255  # the E8M0 scale encoding reserved for NaN by the OCP MX spec
# code -> value; codes 8..15 are the negatives (8 is -0)
FP4_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
FP4_MAX = 6.0
# midpoints between consecutive magnitudes, for rounding to the nearest one
_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def bytes_per_value() -> float:
    """Storage per weight value: half a byte plus a 1-byte scale shared by 32 values."""
    return 0.5 + 1.0 / BLOCK


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., K] (K a multiple of 32) -> (blocks uint8 [..., K/32, 16], scales uint8 [..., K/32]).

    Each block's scale is the smallest power of two that brings its largest magnitude within 6, so no
    value saturates; each value then rounds to the nearest E2M1 magnitude (a tie goes to the smaller one).
    Used to build random weights in the real storage format, not to reproduce OpenAI's quantizer.
    """
    if w.shape[-1] % BLOCK:
        raise ValueError(f"MXFP4 needs the last dimension to be a multiple of {BLOCK}, got {w.shape[-1]}")
    *prefix, K = w.shape
    wb = w.detach().float().reshape(*prefix, K // BLOCK, BLOCK)  # [..., G, 32]
    amax = wb.abs().amax(dim=-1)  # [..., G]
    # exponent e with amax / 2^e <= 6: ceil(log2(amax / 6)), via frexp to stay exact at powers of two
    mantissa, exp = torch.frexp(amax / FP4_MAX)  # amax/6 = mantissa * 2^exp, mantissa in [0.5, 1)
    e = torch.where(mantissa == 0.5, exp - 1, exp)
    e = torch.where(amax > 0, e, torch.full_like(e, -SCALE_BIAS)).clamp(-SCALE_BIAS, SCALE_NAN - 1 - SCALE_BIAS)
    scaled = wb / torch.exp2(e.float()).unsqueeze(-1)  # [..., G, 32], |scaled| <= 6
    mag = scaled.abs()
    codes = torch.zeros(mag.shape, dtype=torch.uint8, device=w.device)
    for m in _MIDPOINTS:  # magnitude index 0..7 = midpoints strictly below |value|
        codes += mag > m
    codes |= (scaled < 0).to(torch.uint8) << 3  # sign bit; -0 becomes +0
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)  # even element in the low nibble
    return packed.contiguous(), (e + SCALE_BIAS).to(torch.uint8)


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """(blocks uint8 [..., G, 16], scales uint8 [..., G]) -> values [..., G*32] in `dtype`.

    Exact in bfloat16, float32 and float64 (every E2M1 value times a power of two in range is
    representable); float16 cannot hold most of the scale range, so it is decoded in float32 and cast.
    """
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BYTES_PER_BLOCK:
        raise ValueError(f"blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not match "
                         f"[..., G, {BYTES_PER_BLOCK}] / [..., G]")
    work = torch.float32 if dtype == torch.float16 else dtype
    table = torch.tensor(FP4_E2M1_VALUES, dtype=work, device=blocks.device)
    codes = torch.stack((blocks & 0x0F, blocks >> 4), dim=-1)  # [..., G, 16, 2]: low nibble first
    values = table[codes.long()].flatten(-2)  # [..., G, 32]
    scale = torch.exp2(scales.to(torch.float32) - SCALE_BIAS)  # [..., G], exact for 0..254
    scale = torch.where(scales == SCALE_NAN, torch.nan, scale).to(work)
    out = (values * scale.unsqueeze(-1)).flatten(-2)  # [..., G*32]
    return out.to(dtype)


class MXFP4Weight(nn.Module):
    """A weight [E, N, K] held as MXFP4 `blocks` [E, N, K/32, 16] and `scales` [E, N, K/32] buffers."""

    def __init__(self, shape: tuple[int, ...], device: Any = None) -> None:
        super().__init__()
        if shape[-1] % BLOCK:
            raise ValueError(f"MXFP4 needs the last dimension to be a multiple of {BLOCK}, got {shape[-1]}")
        *prefix, K = shape
        self.shape = tuple(shape)
        self.register_buffer("blocks", torch.zeros(*prefix, K // BLOCK, BYTES_PER_BLOCK, dtype=torch.uint8,
                                                   device=device))
        self.register_buffer("scales", torch.full((*prefix, K // BLOCK), SCALE_BIAS, dtype=torch.uint8,
                                                  device=device))

    @classmethod
    def from_dense(cls, w: torch.Tensor) -> MXFP4Weight:
        out = cls(tuple(w.shape), device=w.device)
        out.blocks, out.scales = quantize(w)
        return out

    def dequantize(self, dtype: torch.dtype, index: torch.Tensor | None = None) -> torch.Tensor:
        """The weight in `dtype`, or only `weight[index]` (experts selected along dim 0, any index shape)."""
        if index is None:
            return dequantize(self.blocks, self.scales, dtype)
        return dequantize(self.blocks[index], self.scales[index], dtype)

    @property
    def nbytes(self) -> int:
        return self.blocks.numel() + self.scales.numel()

    def extra_repr(self) -> str:
        return f"shape={self.shape}, mxfp4"
