"""What every layer spec shares: a flat frozen dataclass whose fields carry their own bounds and rules.

A spec field is declared once, with `spec_field(default, doc, gt=..., check=...)`: its type annotation, its
bounds and its cross-field rule are read both by `validate_spec` (the spec's `__post_init__`, so a layer
built from Python is checked) and by the workloads that turn a spec into a pydantic params model (so a
suite's error names the field, file and line). No pydantic here: layers stay plain torch + dataclasses.

A rule (`check`) sees its field's value and the fields declared before it (`needs` names the ones it
reads); it returns the value (possibly normalised, e.g. a mask's canonical name) or raises `SpecError`.
"""

from __future__ import annotations

import dataclasses
import types
from functools import cache
from typing import Any, Callable, Literal, Mapping, Union, get_args, get_origin, get_type_hints

Check = Callable[[Any, Mapping[str, Any]], Any]


class SpecError(ValueError):
    """A rule over one or several fields; `fields` are the ones the user may change to satisfy it."""

    def __init__(self, message: str, fields: tuple[str, ...]) -> None:
        super().__init__(message)
        self.fields = fields


def spec_field(default: Any, doc: str = "", *, gt: float | None = None, ge: float | None = None,
               lt: float | None = None, check: Check | None = None, needs: tuple[str, ...] = ()) -> Any:
    """A dataclass field with its documentation, bounds and rule (see the module docstring)."""
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt)) if v is not None}
    return dataclasses.field(default=default, metadata={"doc": doc, "bounds": bounds, "check": check,
                                                         "needs": needs})


@cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a spec class (the modules use `from __future__ import annotations`)."""
    return get_type_hints(cls)


_BOUND_TEXT = {"gt": ">", "ge": ">=", "lt": "<"}
_BOUND_OK = {"gt": lambda v, b: v > b, "ge": lambda v, b: v >= b, "lt": lambda v, b: v < b}


def validate_spec(spec: Any) -> None:
    """Check every field of `spec` in declaration order: type, bounds, rule (a rule may normalise)."""
    hints = field_types(type(spec))
    seen: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if not _has_type(value, hints[f.name]):
            choices = _choices(hints[f.name])
            wanted = f"one of {choices}" if choices else _type_name(hints[f.name])
            raise SpecError(f"{f.name} must be {wanted}, got {value!r}", (f.name,))
        if value is not None:
            for kind, bound in f.metadata.get("bounds", {}).items():
                if not _BOUND_OK[kind](value, bound):
                    raise SpecError(f"{f.name} must be {_BOUND_TEXT[kind]} {bound}, got {value}", (f.name,))
        if f.metadata.get("check") is not None:
            normalised = f.metadata["check"](value, seen)
            if normalised != value:
                object.__setattr__(spec, f.name, normalised)  # frozen: written once, here
                value = normalised
        seen[f.name] = value


def _has_type(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if origin is Literal:
        return value in get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_has_type(value, arg) for arg in get_args(hint))
    if hint is type(None):
        return value is None
    if hint in (int, float):  # a bool is not a size; an int is a fine float
        allowed = (int,) if hint is int else (int, float)
        return isinstance(value, allowed) and not isinstance(value, bool)
    return isinstance(value, hint)


def _choices(hint: Any) -> tuple[Any, ...] | None:
    if get_origin(hint) is Literal:
        return get_args(hint)
    return None


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
