"""Suites: the YAML format, its validation, and expansion into Cases.

A suite names a layer family, a model preset, a dtype and a mode; a list of named variants (parameter
overrides); sweep axes whose cartesian product gives the points to run; optional exclusions; an optional
reduced `cpu:` profile used automatically on CPU; and optional `compare` pairs with expectations.

Every case's effective parameters are (lowest to highest priority): the family's defaults for the preset,
the suite's `params` (and `mode`), the variant's overrides, the sweep point. All cases of both profiles are
validated when the suite loads, so a mistake is reported before anything runs, with the file, the line and
the field path that supplied the bad value.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt,
                      ValidationError, field_validator)

from .errors import SuiteError

DTYPES = ("float32", "float16", "bfloat16", "float64")
Scalar = Union[bool, int, float, str, None]
YamlPath = tuple[Union[str, int], ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Timing(_Strict):
    """Settings handed to `ossbench.bench` for every case (see docs/bench.md)."""

    cache: Literal["cold", "hot"] = "cold"
    warmup_s: NonNegativeFloat = 0.1
    min_samples: PositiveInt = 10
    min_time_s: NonNegativeFloat = 0.5
    max_time_s: PositiveFloat = 15.0
    target_rel_ci: float = Field(0.01, gt=0, lt=1)
    max_samples: PositiveInt = 20_000
    cuda_graph: bool = False
    # Wall-clock limit of one case when cases run isolated (docs/isolation.md); None: 10 x max_time_s + 120 s.
    # Strict: a quoted "30" or `true` is a mistake in the suite, not a number of seconds.
    case_timeout_s: Annotated[float, Field(gt=0, strict=True, allow_inf_nan=False)] | None = None


class Expect(_Strict):
    """Bounds on the speedup baseline_median / candidate_median.

    With `relative_to: flops` (or `bytes`) the bounds are fractions of the cost model's ratio, e.g.
    `speedup_min: 0.5, relative_to: flops` = "reaches at least half the speedup the FLOP count predicts".
    """

    speedup_min: PositiveFloat | None = None
    speedup_max: PositiveFloat | None = None
    relative_to: Literal["none", "flops", "bytes"] = "none"


class ComparePair(_Strict):
    baseline: str
    candidate: str
    where: dict[str, Scalar] = Field(default_factory=dict)  # restrict to cases with these parameter values
    expect: Expect | None = None
    claim: str = ""  # the claim being checked, shown in the report


class GateSpec(_Strict):
    """Thresholds for `ossbench gate` (docs/gate.md): the largest tolerated slowdown of the median, as a
    fraction (0.05 = 5%), and per-case overrides keyed by a substring of the case id (longest match wins)."""

    max_slowdown: PositiveFloat | None = None
    cases: dict[str, PositiveFloat] = Field(default_factory=dict)


SweepBlock = dict[str, list[Scalar]]


def _check_sweep(v: SweepBlock | list[SweepBlock]) -> list[SweepBlock]:
    blocks = v if isinstance(v, list) else [v]
    for block in blocks:
        for axis, values in block.items():
            if not values:
                raise ValueError(f"sweep axis {axis!r} has no values")
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"sweep axis {axis!r} repeats a value")
    return blocks


class CpuProfile(_Strict):
    """A reduced profile applied automatically when running on CPU: given keys replace the main ones
    (`params` and `timing` are merged over the main ones; `variants` keeps only the named variants)."""

    dtype: Literal[DTYPES] | None = None  # type: ignore[valid-type]
    params: dict[str, Scalar] = Field(default_factory=dict)
    variants: list[str] | None = None
    sweep: Union[SweepBlock, list[SweepBlock], None] = None
    exclude: list[dict[str, Scalar]] | None = None
    timing: dict[str, Any] = Field(default_factory=dict)

    _sweep = field_validator("sweep")(lambda cls, v: None if v is None else _check_sweep(v))


class SuiteSpec(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    family: str
    preset: str = "gpt-oss-20b"
    dtype: Literal[DTYPES] = "bfloat16"  # type: ignore[valid-type]
    mode: str | None = None
    params: dict[str, Scalar] = Field(default_factory=dict)
    variants: dict[str, dict[str, Scalar]] = Field(min_length=1)
    sweep: Union[SweepBlock, list[SweepBlock]] = Field(default_factory=dict)
    exclude: list[dict[str, Scalar]] = Field(default_factory=list)
    timing: Timing = Field(default_factory=Timing)
    compare: list[ComparePair] = Field(default_factory=list)
    gate: GateSpec = Field(default_factory=GateSpec)
    profile: bool = False  # also run every case under torch.profiler (as `ossbench run --profile`)
    cpu: CpuProfile | None = None

    _sweep = field_validator("sweep")(lambda cls, v: _check_sweep(v))

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict[str, dict[str, Scalar]]) -> dict[str, dict[str, Scalar]]:
        for name in v:
            if not name.strip() or any(ch in name for ch in "\n\r\t"):
                raise ValueError(f"variant name {name!r} must be non-empty text on one line")
        return v


@dataclass(frozen=True)
class Case:
    """One benchmark point: its identity is this frozen spec (hashable, groupable)."""

    id: str
    family: str
    variant: str
    axes: tuple[tuple[str, Scalar], ...]  # the sweep point, in declared axis order
    params: tuple[tuple[str, Scalar], ...]  # every effective parameter, validated
    dtype: str
    preset: str

    @property
    def axes_dict(self) -> dict[str, Scalar]:
        return dict(self.axes)

    @property
    def params_dict(self) -> dict[str, Scalar]:
        return dict(self.params)


@dataclass
class Suite:
    """A loaded, validated suite file."""

    spec: SuiteSpec
    path: str
    sha256: str
    lines: dict[YamlPath, int] = field(default_factory=dict)  # YAML path -> 1-based line

    @property
    def name(self) -> str:
        return self.spec.name

    def profile_for(self, device_type: str) -> Literal["full", "cpu"]:
        return "cpu" if device_type == "cpu" and self.spec.cpu is not None else "full"

    def cases(self, profile: Literal["full", "cpu"] = "full") -> list[Case]:
        return _expand(self, profile)

    def timing(self, profile: Literal["full", "cpu"] = "full") -> Timing:
        if profile == "cpu" and self.spec.cpu and self.spec.cpu.timing:
            return Timing.model_validate({**self.spec.timing.model_dump(), **self.spec.cpu.timing})
        return self.spec.timing

    def dtype(self, profile: Literal["full", "cpu"] = "full") -> str:
        if profile == "cpu" and self.spec.cpu and self.spec.cpu.dtype:
            return self.spec.cpu.dtype
        return self.spec.dtype

    def error(self, message: str, path: YamlPath) -> SuiteError:
        """A SuiteError pointing at the YAML node `path` (or its nearest ancestor that has a line)."""
        line = None
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                line = self.lines[path[:n]]
                break
        return SuiteError(message, path=self.path, line=line, field=_dotted(path) or None)


# ---------------------------------------------------------------------------------------------- loading


def load_suite(path: str | Path) -> Suite:
    """Read, parse and validate a suite, expanding every case of every profile to check it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError("no such file", path=str(p)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SuiteError(f"cannot read: {e}", path=str(p)) from None
    return parse_suite(text, str(p))


def parse_suite(text: str, path: str = "<suite>") -> Suite:
    data, lines = _parse_yaml(text, path)
    if not isinstance(data, dict):
        raise SuiteError("a suite must be a YAML mapping (name:, family:, variants:, ...)", path=path, line=1)
    probe = Suite(spec=SuiteSpec.model_construct(), path=path, sha256="", lines=lines)
    try:
        spec = SuiteSpec.model_validate(data)
    except ValidationError as e:
        raise _first_error(probe, e, ()) from None
    suite = Suite(spec=spec, path=path, sha256=hashlib.sha256(text.encode()).hexdigest(), lines=lines)
    _check_references(suite)
    ids: set[str] = set()
    cases: list[Case] = []
    for profile in ("full", "cpu") if spec.cpu else ("full",):
        cases += _expand(suite, profile)  # validates every case
    ids.update(c.id for c in cases)
    for i, pair in enumerate(spec.compare):  # a `where` that selects nothing is a typo, not a no-op
        if pair.where and not any(all(c.params_dict.get(k) == v for k, v in pair.where.items()) for c in cases):
            raise suite.error(f"compare where {pair.where} matches no case", ("compare", i, "where"))
    for key in spec.gate.cases:  # an override that selects nothing is a typo, not a no-op
        if not any(key in case_id for case_id in ids):
            raise suite.error(f"gate override {key!r} matches no case id", ("gate", "cases", key))
    return suite


def _parse_yaml(text: str, path: str) -> tuple[Any, dict[YamlPath, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise SuiteError(f"invalid YAML: {problem}", path=path,
                         line=mark.line + 1 if mark else None) from None
    lines: dict[YamlPath, int] = {}
    if node is not None:
        _index_lines(node, (), lines, path)
    return data, lines


def _index_lines(node: yaml.Node, at: YamlPath, lines: dict[YamlPath, int], path: str) -> None:
    lines.setdefault(at, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise SuiteError(f"duplicate key {key!r}", path=path, line=key_node.start_mark.line + 1,
                                 field=_dotted(at + (key,)))
            seen.add(key)
            lines[at + (key,)] = key_node.start_mark.line + 1
            _index_lines(value_node, at + (key,), lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[at + (i,)] = item.start_mark.line + 1
            _index_lines(item, at + (i,), lines, path)


def _dotted(path: YamlPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# An unknown key usually explains a "missing" one (a typo), so it is reported first.
_ERROR_ORDER = {"extra_forbidden": 0, "missing": 2}


def _first_error(suite: Suite, e: ValidationError, prefix: YamlPath, context: str = "") -> SuiteError:
    err = min(e.errors(), key=lambda x: _ERROR_ORDER.get(x["type"], 1))
    loc = prefix + tuple(err["loc"])
    msg = _message(err)
    if err["type"] == "extra_forbidden":
        msg = f"unknown field {loc[-1]!r}" + _did_you_mean(str(loc[-1]), _known_keys(loc[:-1]))
    elif err["type"] == "missing":
        msg = f"missing required field {loc[-1]!r}"
    elif "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    more = f" (and {e.error_count() - 1} more error(s))" if e.error_count() > 1 else ""
    return suite.error(msg + context + more, loc)


def _message(err: dict) -> str:
    # pydantic prefixes messages raised by validators with "Value error, "; the user needs only the reason
    return err["msg"].removeprefix("Value error, ")


def _known_keys(at: YamlPath) -> list[str]:
    """The field names allowed at a YAML path of the suite format (for "did you mean")."""
    model: Any = SuiteSpec
    for part in at:
        if isinstance(part, int) or model is None:
            continue
        info = model.model_fields.get(part)
        model = next((a for a in getattr(info.annotation, "__args__", (info.annotation,))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None) if info else None
    return list(model.model_fields) if model else []


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ----------------------------------------------------------------------------------------- references


def _family(suite: Suite):
    from .workloads import family_names, get_family

    if suite.spec.family not in family_names():
        raise suite.error(f"unknown family {suite.spec.family!r}; known: {', '.join(family_names())}",
                          ("family",))
    return get_family(suite.spec.family)


def _preset(suite: Suite):
    from .layers.config import PRESETS, get_preset

    if suite.spec.preset not in PRESETS:
        raise suite.error(f"unknown preset {suite.spec.preset!r}; known: {', '.join(PRESETS)}", ("preset",))
    return get_preset(suite.spec.preset)


def _check_references(suite: Suite) -> None:
    """Names used in one part of the suite must exist in another: variants, axes, parameters."""
    spec = suite.spec
    fields = set(_family(suite).params_model.model_fields)
    variants = set(spec.variants)

    def known_field(key: str, at: YamlPath, extra: tuple[str, ...] = ()) -> None:
        if key not in fields and key not in extra:
            hint = _did_you_mean(key, sorted(fields)) or f"; known: {', '.join(sorted(fields))}"
            raise suite.error(f"unknown parameter {key!r} for family {spec.family!r}{hint}", at)

    def known_variant(name: Any, at: YamlPath) -> None:
        if name not in variants:
            raise suite.error(f"unknown variant {name!r}; the suite defines: {', '.join(spec.variants)}", at)

    sweep_blocks = [("sweep",), ("cpu", "sweep")]
    for base, blocks in zip(sweep_blocks, [spec.sweep, spec.cpu.sweep if spec.cpu else None]):
        for i, block in enumerate(blocks or []):
            at = base + ((i,) if base + (0,) in suite.lines else ())
            for axis in block:
                known_field(axis, at + (axis,))
    for base, rules in ((("exclude",), spec.exclude), (("cpu", "exclude"), spec.cpu and spec.cpu.exclude)):
        for i, rule in enumerate(rules or []):
            for key, value in rule.items():
                known_field(key, base + (i, key), extra=("variant",))
                if key == "variant":
                    known_variant(value, base + (i, key))
    if spec.cpu and spec.cpu.variants is not None:
        for i, name in enumerate(spec.cpu.variants):
            known_variant(name, ("cpu", "variants", i))
    for i, pair in enumerate(spec.compare):
        known_variant(pair.baseline, ("compare", i, "baseline"))
        known_variant(pair.candidate, ("compare", i, "candidate"))
        for key in pair.where:
            known_field(key, ("compare", i, "where", key))
    _preset(suite)
    if spec.cpu:
        try:
            suite.timing("cpu")
        except ValidationError as e:
            raise _first_error(suite, e, ("cpu", "timing")) from None


# ------------------------------------------------------------------------------------------ expansion


def _expand(suite: Suite, profile: Literal["full", "cpu"]) -> list[Case]:
    spec, family, preset = suite.spec, _family(suite), _preset(suite)
    cpu = spec.cpu if profile == "cpu" else None
    sweep_at: YamlPath = ("cpu", "sweep") if cpu and cpu.sweep is not None else ("sweep",)
    blocks = (cpu.sweep if cpu and cpu.sweep is not None else spec.sweep) or [{}]
    blocks_are_list = sweep_at + (0,) in suite.lines
    excludes = cpu.exclude if cpu and cpu.exclude is not None else spec.exclude
    variant_names = cpu.variants if cpu and cpu.variants is not None else list(spec.variants)

    # Where each parameter's value came from, so a bad value is reported at the line that set it.
    base: dict[str, Scalar] = dict(family.defaults(preset))
    origin: dict[str, YamlPath] = {k: ("preset",) for k in base}
    layers: list[tuple[dict[str, Scalar], YamlPath]] = [(spec.params, ("params",))]
    if spec.mode is not None:
        layers.append(({"mode": spec.mode}, ()))
    if cpu:
        layers.append((cpu.params, ("cpu", "params")))
    for values, at in layers:
        for k, v in values.items():
            base[k] = v
            origin[k] = at + (k,)

    cases: list[Case] = []
    seen: dict[str, YamlPath] = {}
    for bi, block in enumerate(blocks):
        block_at = sweep_at + ((bi,) if blocks_are_list else ())
        axes = list(block)
        for point in itertools.product(*(block[a] for a in axes)):
            point_d = dict(zip(axes, point))
            for variant in variant_names:
                params, where = dict(base), dict(origin)
                for k, v in spec.variants[variant].items():
                    params[k], where[k] = v, ("variants", variant, k)
                for k, v in point_d.items():
                    params[k], where[k] = v, block_at + (k,)
                if any(_matches(rule, variant, params) for rule in excludes):
                    continue
                case_id = case_identifier(spec.family, variant, point_d)
                if case_id in seen:
                    raise suite.error(f"case {case_id} is produced twice (sweep blocks overlap)", block_at)
                seen[case_id] = block_at
                try:
                    validated = family.params_model.model_validate(params)
                except ValidationError as e:
                    key = e.errors()[0]["loc"][0] if e.errors()[0]["loc"] else None
                    at = where.get(key, ("variants", variant)) if isinstance(key, str) else ("variants", variant)
                    raise _reanchor(suite, e, at, f" in case {case_id}") from None
                cases.append(Case(id=case_id, family=spec.family, variant=variant, axes=tuple(point_d.items()),
                                  params=tuple(validated.model_dump().items()), dtype=suite.dtype(profile),
                                  preset=spec.preset))
    if not cases:
        raise suite.error("the suite expands to no cases (everything is excluded)", ("exclude",))
    return cases


def _reanchor(suite: Suite, e: ValidationError, at: YamlPath, context: str) -> SuiteError:
    """A family validation error, reported at the YAML node that supplied the offending value."""
    err = e.errors()[0]
    key = err["loc"][0] if err["loc"] else None
    if err["type"] == "extra_forbidden":
        fields = list(_family(suite).params_model.model_fields)
        msg = f"unknown parameter {key!r}" + _did_you_mean(str(key), fields)
    else:
        msg = f"{key}: {_message(err)}"
    if err["type"] != "extra_forbidden" and "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return suite.error(msg + context, at)


def _matches(rule: dict[str, Scalar], variant: str, params: dict[str, Scalar]) -> bool:
    return all((variant == v) if k == "variant" else (params.get(k) == v) for k, v in rule.items())


def case_identifier(family: str, variant: str, point: dict[str, Scalar]) -> str:
    """Stable, readable id: ``family/variant/axis=value,axis=value`` (axes in declared order)."""
    if not point:
        return f"{family}/{variant}"
    return f"{family}/{variant}/" + ",".join(f"{k}={_fmt(v)}" for k, v in point.items())


def _fmt(v: Scalar) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return str(int(v))
    return str(v)


def filter_cases(cases: list[Case], text: str | None) -> list[Case]:
    """Select cases whose id contains `text` (case-sensitive substring), e.g. ``window128`` or ``seq_len=4096``."""
    return cases if not text else [c for c in cases if text in c.id]


def suite_json_schema() -> dict[str, Any]:
    """JSON Schema of the suite format (for editor completion), parameters of every family included."""
    from .workloads import all_families

    schema = SuiteSpec.model_json_schema()
    # A parameter name shared by families (backend, mode, ...) accepts the union of their choices.
    choices: dict[str, list[Any]] = {}
    for fam in all_families():
        for key, prop in fam.params_model.model_json_schema().get("properties", {}).items():
            prop = {k: v for k, v in prop.items() if k not in ("title", "default")}
            if prop not in choices.setdefault(key, []):
                choices[key].append(prop)
    names = {key: alts[0] if len(alts) == 1 else {"anyOf": alts} for key, alts in choices.items()}
    overrides = {"type": "object", "properties": names, "additionalProperties": False}
    props = schema["properties"]
    props["params"] = overrides
    props["variants"] = {"type": "object", "additionalProperties": overrides, "minProperties": 1}
    props["family"] = {"type": "string", "enum": [f.name for f in all_families()]}
    schema["title"] = "ossbench suite"
    return schema

