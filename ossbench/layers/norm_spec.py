"""NormSpec: what one norm layer computes, declared once (read by `Norm(spec)`, the presets and the norm
family's params model). The backend is a run choice, not part of the spec. Defaults: gpt-oss-20b's RMSNorm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .spec import spec_field, validate_spec

NORM_KINDS = ("rmsnorm", "layernorm")


@dataclass(frozen=True)
class NormSpec:
    norm: Literal["rmsnorm", "layernorm"] = spec_field(
        "rmsnorm", "gpt-oss's RMSNorm (fp32 scale) or GPT-2's LayerNorm (weight and bias)")
    hidden: int = spec_field(2880, "width of each normalised row", gt=0)
    norm_eps: float = spec_field(1e-5, gt=0.0)

    def __post_init__(self) -> None:
        validate_spec(self)
