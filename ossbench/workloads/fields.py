"""Field rules that several families' parameter models share, written once so that the same field means
and reports the same thing in every family (used as `field_validator("name")(rule)`)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Callable

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationInfo
from pydantic_core import PydanticCustomError, core_schema

from ..backends import backend_names, unknown_backend_hint
from ..layers import moe_spec
from ..layers.spec import SpecError

DEFAULT_TOKENS = {"prefill": 4096, "decode": 1, "train": 4096}


def default_tokens(cls: type, v: int | None, info: ValidationInfo) -> int | None:
    """`tokens: null` means the mode's default (prefill/train 4096, decode 1)."""
    if v is None and info.data.get("mode") is not None:
        return DEFAULT_TOKENS[info.data["mode"]]
    return v


def top_k_fits(cls: type, v: int, info: ValidationInfo) -> int:
    """MoESpec's rule (a token picks top_k distinct experts out of n_experts) for a model with an optional
    MoE: n_experts 0 (a preset without experts, for the ffn family's `match`) leaves top_k unchecked."""
    n = info.data.get("n_experts")
    if not n:
        return v
    if v < 1:
        raise cross_field_error(f"top_k ({v}) must be between 1 and n_experts ({n})", "n_experts", "top_k")
    try:
        return moe_spec.top_k_fits(v, info.data)
    except SpecError as e:
        raise cross_field_error(str(e), *e.fields) from None


def cross_field_error(text: str, *fields: str) -> PydanticCustomError:
    """An error of a rule over several fields. `fields` travels in the error's context, so that the suite
    loader can report it at the one of them the user set (ossbench/suite_cases.py), not at whichever
    field happens to run the check."""
    return PydanticCustomError("cross_field", text.replace("{", "{{").replace("}", "}}"), {"fields": fields})


# --- backends: a field whose choices are the registry's (plugins included), read when validating and when
# writing the JSON Schema, not fixed when the model class is defined


class _RegisteredBackend:
    def __init__(self, family: str) -> None:
        self.family = family

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return {"type": "string", "enum": backend_names(self.family)}

    def _check(self, name: str) -> str:
        if name not in backend_names(self.family):
            hint = unknown_backend_hint(self.family, name).replace("{", "{{").replace("}", "}}")
            raise PydanticCustomError("unknown_backend", f"not a registered {self.family} backend; {hint}", {})
        return name


def backend_of(family: str) -> Any:
    """The type of a params model's backend field: the name of a registered backend of `family`."""
    return Annotated[str, _RegisteredBackend(family)]


# --- memory: refuse a case no device could hold before anything is built


def fits_memory(estimate: Callable[[Any, int], float]) -> Callable[[Any, ValidationInfo], Any]:
    """A model validator (mode="after") refusing a case whose `estimate(params, dtype_bytes)` bytes, from
    the family's cost model, exceed the caller's limit. It runs only when the caller validates with
    `context={"max_case_bytes": ..., "dtype_bytes": ...}`, as the suite loader does (its `limits:`)."""
    def check(self: Any, info: ValidationInfo) -> Any:
        ctx = info.context or {}
        if "max_case_bytes" not in ctx:
            return self
        try:
            need = float(estimate(self, ctx["dtype_bytes"]))
        except OverflowError:  # sizes beyond a float's range
            need = math.inf
        if need > ctx["max_case_bytes"]:
            raise PydanticCustomError("case_memory", f"the case needs at least {_size(need)} (its cost model's "
                                      f"weights, activations and caches), more than the "
                                      f"{_size(ctx['max_case_bytes'])} limit", {})
        return self
    return check


def _size(n: float) -> str:
    if not math.isfinite(n):
        return "more bytes than a float can count"
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n / 1e6:.3g} MB"
