"""PositionsSpec: which position scheme a layer applies and its constants, declared once (read by the
presets and the positions family's params model; the modules take its parts: `LearnedPositions(max_position,
hidden)`, `RotaryPositions(head_dim, spec.rope)`). How many heads are rotated, and whether cos/sin come from
a cached table, are run choices of the family, not part of the spec. Defaults: gpt-oss's YaRN."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

from .attention_spec import betas_ordered, check_yarn_ramp
from .rope import RopeSpec
from .spec import SpecError, spec_field, validate_spec


def _even_head_dim(v: int, d: Mapping[str, Any]) -> int:
    if d["positions"] != "learned" and v % 2:
        raise SpecError(f"rotary positions need an even head_dim, got {v}", ("positions", "head_dim"))
    return v


def _yarn_valid(v: int, d: Mapping[str, Any]) -> int:
    if d["positions"] != "yarn":
        return v
    if not d["yarn_factor"] > 1:
        raise SpecError("positions: yarn needs yarn_factor > 1 (1 is plain RoPE: use positions: rope)",
                        ("positions", "yarn_factor"))
    check_yarn_ramp(d["head_dim"], RopeSpec(d["rope_theta"], d["yarn_factor"], d["yarn_beta_slow"],
                                            d["yarn_beta_fast"], v))
    return v


@dataclass(frozen=True)
class PositionsSpec:
    positions: Literal["learned", "rope", "yarn"] = spec_field(
        "yarn", "learned: GPT-2's table added to the embeddings; rope: plain RoPE; yarn: gpt-oss's scaled RoPE")
    hidden: int = spec_field(2880, "learned: width of the embeddings the positions are added to", gt=0)
    max_position: int = spec_field(131072, "learned: rows of the position table (GPT-2: 1024)", gt=0)
    head_dim: int = spec_field(64, "rope/yarn: width of each rotated head", gt=0, check=_even_head_dim,
                               needs=("positions",))
    rope_theta: float = spec_field(150000.0, "RoPE base: pair i turns at rope_theta^(-2i/head_dim)", gt=1.0)
    yarn_factor: float = spec_field(32.0, "yarn: context extension factor", ge=1.0)
    yarn_beta_slow: float = spec_field(1.0, gt=0.0)
    yarn_beta_fast: float = spec_field(32.0, gt=0.0, check=betas_ordered, needs=("yarn_beta_slow",))
    yarn_original_context: int = spec_field(4096, gt=0, check=_yarn_valid, needs=(
        "positions", "head_dim", "rope_theta", "yarn_factor", "yarn_beta_slow", "yarn_beta_fast"))

    def __post_init__(self) -> None:
        validate_spec(self)

    @property
    def rope(self) -> RopeSpec:
        """The rotary settings: yarn's scaling, or plain RoPE at the same base."""
        if self.positions == "yarn":
            return RopeSpec(self.rope_theta, self.yarn_factor, self.yarn_beta_slow, self.yarn_beta_fast,
                            self.yarn_original_context)
        return RopeSpec(theta=self.rope_theta)
