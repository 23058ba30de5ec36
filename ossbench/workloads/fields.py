"""Field rules that several families' parameter models share, written once so that the same field means
and reports the same thing in every family (used as `field_validator("name")(rule)`)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationInfo

from ..layers.rope import RopeSpec

DEFAULT_TOKENS = {"prefill": 4096, "decode": 1, "train": 4096}


def default_tokens(cls: type, v: int | None, info: ValidationInfo) -> int | None:
    """`tokens: null` means the mode's default (prefill/train 4096, decode 1)."""
    if v is None and info.data.get("mode") is not None:
        return DEFAULT_TOKENS[info.data["mode"]]
    return v


def top_k_fits(cls: type, v: int, info: ValidationInfo) -> int:
    """A token picks top_k distinct experts out of n_experts. n_experts 0 (a preset without experts, for
    the ffn family's `match`) leaves top_k unchecked."""
    n = info.data.get("n_experts")
    if n and v > n:
        raise ValueError(f"top_k ({v}) cannot exceed n_experts ({n}): a token picks top_k distinct experts")
    if n and v < 1:
        raise ValueError(f"top_k ({v}) must be between 1 and n_experts ({n})")
    return v


YARN_FIELDS = ("positions", "head_dim", "rope_theta", "yarn_factor", "yarn_beta_slow", "yarn_beta_fast")


def yarn_spec(data: dict[str, Any], original_context: int) -> RopeSpec | None:
    """The YaRN spec that the fields validated so far describe, for a validator of yarn_original_context (the
    last of them); None when positions is not yarn or an earlier field failed (pydantic reports that one)."""
    if not all(k in data for k in YARN_FIELDS) or data["positions"] != "yarn":
        return None
    return RopeSpec(data["rope_theta"], data["yarn_factor"], data["yarn_beta_slow"], data["yarn_beta_fast"],
                    original_context)
