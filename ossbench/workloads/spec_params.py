"""A family's params model generated from its layer's spec: the run axes (mode, backend, shapes) declared
by the family, then every field of the spec with the type, bounds, description and rule the spec declares.

So a spec field is written once (ossbench/layers/*_spec.py) and a suite still gets pydantic's errors at the
field: a rule over several fields raises a cross-field error naming them, which the suite loader reports at
the one the user set (see fields.cross_field_error).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from pydantic import BaseModel, Field, ValidationInfo, create_model, field_validator

from ..layers.spec import SpecError, field_types
from .fields import cross_field_error


def spec_params_model(name: str, axes: type[BaseModel], spec_cls: type, *, exclude: tuple[str, ...] = (),
                      after: dict[str, Any] | None = None, validators: dict[str, Any] | None = None,
                      nullable: dict[str, str] | None = None) -> type[BaseModel]:
    """The model `name`: `axes`' fields (and its config, properties and validators), then `spec_cls`'s fields
    except `exclude` (held at the spec's default), each with its rule as a field validator, then the
    `after` fields (`name: (type, FieldInfo)`, axes whose rules read spec fields). A `nullable` field also
    accepts null, which a model validator of `name` must resolve; its text says what null means."""
    nullable = nullable or {}
    hints = field_types(spec_cls)
    fields: dict[str, Any] = {}
    rules: dict[str, Any] = {}
    for f in dataclasses.fields(spec_cls):
        if f.name in exclude:
            continue
        meta = f.metadata
        doc = "; ".join(t for t in (meta.get("doc"), nullable.get(f.name) and f"null: {nullable[f.name]}") if t)
        hint = hints[f.name] | None if f.name in nullable else hints[f.name]
        # validate_default: a rule over several fields must also run when its own field is left at its default
        fields[f.name] = (hint, Field(f.default, description=doc or None, validate_default=True,
                                      **meta.get("bounds", {})))
        if meta.get("check") is not None:
            rules[f"_spec_rule_{f.name}"] = field_validator(f.name)(_rule(meta["check"], meta.get("needs", ())))
    return create_model(name, __base__=axes, __validators__={**rules, **(validators or {})},
                        __module__=axes.__module__, **fields, **(after or {}))


def _rule(check: Callable[[Any, Any], Any], needs: tuple[str, ...]) -> Callable[..., Any]:
    """The spec's rule as a pydantic field validator; skipped while a field it reads has failed (pydantic
    reports that one)."""
    def validate(cls: type, v: Any, info: ValidationInfo) -> Any:
        if any(n not in info.data for n in needs):
            return v
        try:
            return check(v, info.data)
        except SpecError as e:
            if len(e.fields) > 1:
                raise cross_field_error(str(e), *e.fields) from None
            raise ValueError(str(e)) from None
    return classmethod(validate)  # type: ignore[arg-type]


def spec_of(params: BaseModel, spec_cls: type) -> Any:
    """The spec a validated params model describes (its excluded fields at their defaults)."""
    names = {f.name for f in dataclasses.fields(spec_cls)}
    return spec_cls(**{k: v for k, v in params.model_dump().items() if k in names})
