"""Rotary position embeddings (rotate-half), plain or with YaRN scaling as gpt-oss uses it.

YaRN (arXiv 2309.00071) as gpt-oss applies it:
- per frequency pair i (of head_dim/2), the base frequency is theta^(-2i/head_dim);
- "NTK by parts": pairs that turn more than `beta_fast` times over the original context keep their
  frequency (extrapolation), pairs that turn fewer than `beta_slow` times are divided by the scaling factor
  (interpolation), and a linear ramp over the pair index blends the two in between;
- cos and sin are both multiplied by the "concentration" 0.1*ln(factor) + 1, so q.k grows by its square
  (the reference folds YaRN's attention temperature into the rotation this way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class RopeSpec:
    theta: float = 150000.0
    yarn_factor: float = 1.0  # 1: plain RoPE, no scaling
    beta_slow: float = 1.0  # gpt-oss: ntk_alpha
    beta_fast: float = 32.0  # gpt-oss: ntk_beta
    original_context: int = 4096  # gpt-oss: initial_context_length

    @property
    def scaled(self) -> bool:
        return self.yarn_factor > 1.0


def yarn_ramp_bounds(head_dim: int, spec: RopeSpec) -> tuple[float, float]:
    """Pair indices (fractional) where the ramp starts (beta_fast) and ends (beta_slow).

    Pair i turns original_context * theta^(-2i/d) / (2 pi) times over the original context; solving
    "turns = beta" for i gives the bound.
    """
    if not spec.theta > 1:  # log(theta) is the divisor below; theta <= 1 gives no decreasing frequencies
        raise ValueError(f"YaRN needs theta > 1, got {spec.theta}")
    half = head_dim / 2
    log_theta = math.log(spec.theta)
    low = half * math.log(spec.original_context / (spec.beta_fast * 2 * math.pi)) / log_theta
    high = half * math.log(spec.original_context / (spec.beta_slow * 2 * math.pi)) / log_theta
    if not 0 < low < high < half - 1:
        raise ValueError(
            f"YaRN ramp bounds ({low:.3f}, {high:.3f}) must satisfy 0 < low < high < head_dim/2 - 1 "
            f"= {half - 1:g} (head_dim {head_dim}, theta {spec.theta}, betas {spec.beta_slow}/{spec.beta_fast}, "
            f"original context {spec.original_context})")
    return low, high


def inv_freq_and_concentration(head_dim: int, spec: RopeSpec, *, dtype: torch.dtype = torch.float64,
                               device: torch.device | str | None = None) -> tuple[torch.Tensor, float]:
    """Angular frequency of each rotation pair [head_dim/2], and the factor applied to cos and sin."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
    pair = torch.arange(head_dim // 2, dtype=dtype, device=device)  # [D/2]
    base_freq = spec.theta ** (-2.0 * pair / head_dim)  # [D/2], pair 0 turns fastest
    if not spec.scaled:
        return base_freq, 1.0
    low, high = yarn_ramp_bounds(head_dim, spec)
    # 0 for fast pairs (keep frequency), 1 for slow pairs (interpolate), linear in between.
    interpolate_weight = ((pair - low) / (high - low)).clamp(0.0, 1.0)
    inv_freq = base_freq * (1 - interpolate_weight) + (base_freq / spec.yarn_factor) * interpolate_weight
    return inv_freq, 0.1 * math.log(spec.yarn_factor) + 1.0


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, spec: RopeSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [len(positions), head_dim/2] in float64, already multiplied by the concentration.

    Angles are formed in float64: the reference forms position*frequency in float32, which is off by
    ~1e-2 rad at position 131072; the exact angle is the intended one.
    """
    inv_freq, concentration = inv_freq_and_concentration(head_dim, spec, device=positions.device)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # [S, D/2]
    return angles.cos() * concentration, angles.sin() * concentration


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half: pair (x[i], x[i + D/2]) is rotated by the angle of pair i.

    x [..., S, D]; cos, sin [S, D/2] in x's dtype.
    """
    x1, x2 = x.chunk(2, dim=-1)  # [..., S, D/2] each
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class RotaryEmbedding(nn.Module):
    """Applies RoPE/YaRN to [B, H, S, D] tensors whose first token is at `start_pos`.

    The cos/sin table is built once per (device, dtype) for the longest position seen and then sliced, so a
    timed forward pass does not rebuild it. It holds no parameters and nothing in the state dict.
    """

    def __init__(self, head_dim: int, spec: RopeSpec) -> None:
        super().__init__()
        self.head_dim, self.spec = head_dim, spec
        inv_freq_and_concentration(head_dim, spec)  # validate now, not on the first forward
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def cos_sin(self, start_pos: int, length: int, device: torch.device,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        table = self._tables.get(key)
        if table is None or table[0].shape[0] < start_pos + length:
            n = max(start_pos + length, 2 * table[0].shape[0] if table is not None else 0)
            cos, sin = rotary_cos_sin(torch.arange(n, device=device), self.head_dim, self.spec)
            # like the reference: the table is cast to the activations' dtype before rotating
            table = self._tables[key] = (cos.to(dtype), sin.to(dtype))
        cos, sin = table
        return cos[start_pos:start_pos + length], sin[start_pos:start_pos + length]  # [S, D/2]

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        cos, sin = self.cos_sin(start_pos, x.shape[-2], x.device, x.dtype)
        return apply_rotary(x, cos, sin)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, {self.spec}"
