"""Nested parameters as dotted names: `attention: {window: 128}` is the parameter `attention.window`.

A family whose params model nests sub-models (the block family's `attention:` and `mlp:` specs) is still
handled as one flat mapping of names to single values everywhere outside its model: the suite's params,
variants, sweep axes, exclusions and `where`, case ids, results and reports. `nest` turns such a mapping
into the model's input and `flatten` turns the validated model back, so a flat family is unaffected.
"""

from __future__ import annotations

import types
from typing import Any, Mapping, Union, get_args, get_origin

from pydantic import BaseModel


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"attention": {"window": 128}} -> {"attention.window": 128}; single values are kept as they are."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"attention.window": 128} -> {"attention": {"window": 128}}; a name given both as a value and as a
    group ("attention" and "attention.window") is an error."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        *groups, leaf = str(name).split(".")
        node = out
        for i, group in enumerate(groups):
            node = node.setdefault(group, {})
            if not isinstance(node, dict):
                raise ValueError(f"{'.'.join(groups[:i + 1])} is a single value, so {name} cannot be set")
        if isinstance(node.get(leaf), dict):
            raise ValueError(f"{name} is a group of parameters ({', '.join(flatten(node[leaf], f'{name}.'))}), "
                             f"not a single value")
        node[leaf] = value
    return out


def sub_models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field holds: itself, or the members of a union of models."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (Union, types.UnionType):
        return [m for arg in get_args(annotation) for m in sub_models(arg)]
    return []


def dotted_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every leaf parameter of `model` by dotted name, with its FieldInfo (a field of several sub-models,
    e.g. `mlp.intermediate` of both the dense and the MoE MLP, appears once: the first)."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        models = sub_models(info.annotation)
        if not models:
            out.setdefault(prefix + name, info)
        for sub in models:
            for key, sub_info in dotted_fields(sub, f"{prefix}{name}.").items():
                out.setdefault(key, sub_info)
    return out


def error_name(loc: tuple[Any, ...], model: type[BaseModel]) -> str:
    """The dotted parameter name of a pydantic error location, without the tag pydantic inserts for a
    member of a discriminated union (("mlp", "moe", "top_k") -> "mlp.top_k"); a name the model does not
    know (an extra field) is kept."""
    parts: list[str] = []
    current: list[type[BaseModel]] = [model]
    for part in loc:
        if not isinstance(part, str):
            continue
        owners = [m for m in current if part in m.model_fields]
        tagged = [m for m in current if any(part in get_args(f.annotation) for f in m.model_fields.values())]
        if not owners and len(current) > 1 and tagged:
            current = tagged  # the union member pydantic validated against
            continue
        parts.append(part)
        current = [s for m in owners for s in sub_models(m.model_fields[part].annotation)]
    return ".".join(parts)


def override_properties(model: type[BaseModel]) -> dict[str, Any]:
    """A family's parameters as a suite may set them: any subset (nothing required), a nested spec as a
    mapping of its own fields (a union of specs: the union of their fields) and each field also by its dotted
    name (`attention.window`)."""
    model_schema = model.model_json_schema()
    defs = model_schema.get("$defs", {})

    def resolve(prop: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in prop:
            return resolve(defs[prop["$ref"].rsplit("/", 1)[1]])
        members = prop.get("oneOf") or prop.get("anyOf") or []
        objects = [resolve(m) for m in members]
        if objects and all(m.get("type") == "object" for m in objects):
            merged: dict[str, Any] = {}
            for m in objects:
                for key, sub in m["properties"].items():
                    if key in merged and merged[key] != sub:
                        merged[key] = {"anyOf": [merged[key], sub]}
                    else:
                        merged.setdefault(key, sub)
            prop = {"type": "object", "properties": merged}
        if prop.get("type") == "object" and "properties" in prop:
            return {"type": "object", "additionalProperties": False,
                    "properties": {k: resolve(v) for k, v in prop["properties"].items()}}
        return {k: v for k, v in prop.items() if k not in ("title", "default")}

    out: dict[str, Any] = {}
    for key, prop in model_schema.get("properties", {}).items():
        out[key] = resolve(prop)
        for sub_key, sub in out[key].get("properties", {}).items():
            out[f"{key}.{sub_key}"] = sub
    return out
