"""How a token's position enters the model: GPT-2's learned absolute positions, or RoPE/YaRN on q and k.

- "learned" (GPT-2): a [max_position, hidden] table `weight` (GPT-2's `wpe`); the embedding of the tokens at
  positions start..start+S-1 gets rows start..start+S-1 added, once, before the first block. GPT-2's code
  looks the rows up with an `arange` and an embedding call; a slice of the table is the same rows without
  the index tensor, so that is what runs here (the minimum work for the scheme).
- "rope" / "yarn": rotate-half rotation of every query and key head inside every attention layer
  (rope.RotaryEmbedding; YaRN differs only in the frequencies and the concentration folded into cos/sin).
  `table="cached"` slices a cos/sin table built once (as layers.attention does); `table="per_call"` builds
  cos/sin for the positions in every call, in float32 (float64 for float64 inputs), as gpt-oss's reference
  RotaryEmbedding does (that is where YaRN's extra arithmetic shows). float32 angles are off by up to half
  an ulp of the position (~4e-3 rad at 131071); the cached table forms its angles in float64.

Both modules take `backend="compile"` to run their arithmetic through torch.compile (eager RoPE is six
elementwise ops and a concatenation per tensor; compiled, one kernel). The backends are registered at the
end of this file (ossbench.backends).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..backends import get_backend, register_backend
from .activation import compile_fn
from .rope import RopeSpec, RotaryEmbedding, apply_rotary, inv_freq_and_concentration

POSITION_KINDS = ("learned", "rope", "yarn")
TABLES = ("cached", "per_call")


def add_positions(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x [B, S, hidden] + rows [S, hidden] (broadcast over the batch)."""
    return x + rows


def rotate_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
              sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE of q [B, Hq, S, D] and k [B, Hkv, S, D] by cos/sin [S, D/2]."""
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def cos_sin_per_call(start_pos: int, length: int, head_dim: int, spec: RopeSpec, device: Any,
                     dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [length, head_dim/2] of positions start_pos.., formed in `dtype` (gpt-oss's reference:
    float32) as the reference does on every forward: frequencies, angles, cos/sin, times the concentration."""
    inv_freq, concentration = inv_freq_and_concentration(head_dim, spec, dtype=dtype, device=device)
    positions = torch.arange(start_pos, start_pos + length, dtype=dtype, device=device)
    angles = positions[:, None] * inv_freq[None, :]  # [S, D/2]
    return angles.cos() * concentration, angles.sin() * concentration


def rotate_qk_per_call(q: torch.Tensor, k: torch.Tensor, start_pos: int, head_dim: int,
                       spec: RopeSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """rotate_qk with cos/sin built for this call's positions, in float32 (float64 for float64 q)."""
    compute = torch.promote_types(q.dtype, torch.float32)
    cos, sin = cos_sin_per_call(start_pos, q.shape[-2], head_dim, spec, q.device, compute)
    return rotate_qk(q, k, cos.to(q.dtype), sin.to(q.dtype))


class LearnedPositions(nn.Module):
    """GPT-2's learned absolute positions: x [B, S, hidden] -> x + weight[start_pos:start_pos + S]."""

    def __init__(self, max_position: int, hidden: int, *, backend: str = "eager", device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        build = get_backend("positions", backend).build  # ValueError naming the registered backends
        self.max_position, self.hidden, self.backend = max_position, hidden, backend
        self.weight = nn.Parameter(torch.empty(max_position, hidden, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=0.01)  # GPT-2's initial scale for wpe
        self._add = build(add_positions)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        S = x.shape[-2]
        if start_pos + S > self.max_position:
            raise ValueError(f"positions {start_pos}..{start_pos + S - 1} exceed the table of {self.max_position}")
        return self._add(x, self.weight[start_pos:start_pos + S])  # a view of the table: no copy


class RotaryPositions(nn.Module):
    """RoPE or YaRN applied to q [B, Hq, S, D] and k [B, Hkv, S, D] whose first token is at start_pos."""

    def __init__(self, head_dim: int, spec: RopeSpec, *, table: str = "cached", backend: str = "eager") -> None:
        super().__init__()
        build = get_backend("positions", backend).build
        if table not in TABLES:
            raise ValueError(f"table must be one of {TABLES}, got {table!r}")
        self.head_dim, self.spec, self.table, self.backend = head_dim, spec, table, backend
        self.rotary = RotaryEmbedding(head_dim, spec)  # holds the cached table
        fn = rotate_qk if table == "cached" else rotate_qk_per_call
        self._rotate = build(fn)

    def forward(self, q: torch.Tensor, k: torch.Tensor, start_pos: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        if self.table == "per_call":
            return self._rotate(q, k, start_pos, self.head_dim, self.spec)
        cos, sin = self.rotary.cos_sin(start_pos, q.shape[-2], q.device, q.dtype)  # [S, D/2] views
        return self._rotate(q, k, cos, sin)


# --- the built-in backends: a module calls build(fn) once with its arithmetic (add_positions, rotate_qk or
# rotate_qk_per_call) and runs what it returns (same signature)
register_backend("positions", "eager", lambda fn: fn, description="op by op")
register_backend("positions", "compile", compile_fn, description="through torch.compile", compiles=True)
