"""The catalogue of layer families. Adding a family: write its workload module, add one line here."""

from __future__ import annotations

import importlib

from .base import DEFAULT_SEED, Cost, Check, Family, Footprint, Workload, case_seed
from .nesting import override_properties

# family name -> module exposing FAMILY; imported on first use (they import torch)
_MODULES = {
    "attention": "ossbench.workloads.attention",
    "moe": "ossbench.workloads.moe",
    "ffn": "ossbench.workloads.ffn",
    "activation": "ossbench.workloads.activation",
    "norm": "ossbench.workloads.norm",
    "positions": "ossbench.workloads.positions",
    "block": "ossbench.workloads.block",
    "comm": "ossbench.workloads.comm",
    "moe-ep": "ossbench.workloads.moe_ep",
    "model": "ossbench.workloads.model",
}

__all__ = ["Cost", "Check", "Family", "Footprint", "Workload", "DEFAULT_SEED", "case_seed", "family_names", "get_family",
           "all_families", "describe_families", "describe_backends"]


def family_names() -> list[str]:
    return list(_MODULES)


def get_family(name: str) -> Family:
    if name not in _MODULES:
        raise KeyError(name)
    return importlib.import_module(_MODULES[name]).FAMILY


def all_families() -> list[Family]:
    return [get_family(n) for n in _MODULES]


def describe_families(preset: str = "gpt-oss-20b") -> list[dict]:
    """For `ossbench list`: each family's parameters with type/choices, the preset's default and help."""
    from ..layers.config import get_preset

    cfg = get_preset(preset)
    out = []
    for fam in all_families():
        defaults = fam.flat_defaults(cfg)
        params = []
        props = override_properties(fam.params_model)
        for name, info in fam.param_fields().items():
            prop = props.get(name, {})
            params.append({"name": name, "type": _type_text(prop), "default": repr(defaults.get(name, info.default)),
                           "help": info.description or ""})
        out.append({"name": fam.name, "description": fam.description, "params": params,
                    "variants": fam.variants})
    return out


def describe_backends() -> list[dict]:
    """For `ossbench list`: every registered backend (plugins' included), with where it comes from and
    what it cannot express."""
    from .. import backends

    all_families()  # importing the families imports their layers, which register the built-in backends
    registered = backends.families()
    order = [f for f in _MODULES if f in registered] + [f for f in registered if f not in _MODULES]
    return [{"family": b.family, "name": b.name, "origin": b.origin, "description": b.description,
             "limits": "; ".join(b.supports.limits()) or "-"}
            for family in order for b in backends.backends(family)]


def _type_text(prop: dict) -> str:
    if "enum" in prop:
        return " | ".join(map(str, prop["enum"]))
    if "anyOf" in prop:
        return " | ".join(_type_text(p) for p in prop["anyOf"])
    if "const" in prop:
        return repr(prop["const"])
    return prop.get("type", "any")
