"""Suites: the YAML format and its validation (reading the file: suite_yaml.py; expansion: suite_cases.py).

A suite names a layer family, a model preset, a dtype and a mode; a list of named variants (parameter
overrides); sweep axes whose cartesian product gives the points to run; optional exclusions; an optional
reduced `cpu:` profile used automatically on CPU; optional named `profiles:` (e.g. `gpu-smoke`) chosen with
`ossbench run --suite-profile NAME`; and optional `compare` pairs with expectations.

Every case's effective parameters are (lowest to highest priority): the family's defaults for the preset,
the suite's `params` (and `mode`), the profile's `params`, the variant's overrides, the sweep point. All
cases of every profile are validated when the suite loads, so a mistake is reported before anything runs,
with the file, the line and the field path that supplied the bad value.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PositiveFloat, PositiveInt, TypeAdapter,
                      ValidationError, WithJsonSchema, field_validator)

from .errors import SuiteError, SuiteErrors, UserError
from .measure.spec import BenchSpec
from .suite_cases import (DTYPE_BYTES, Case, CaseErrors, Params, Scalar, case_identifier, check_case_count, expand,
                          family_of, filter_cases, preset_of)
from .suite_errors import all_errors, did_you_mean, first_error, got, message
from .suite_yaml import YamlPath, dotted, load_yaml, read_suite_text

__all__ = ["Case", "FULL", "Profile", "Suite", "SuiteSpec", "Timing", "case_identifier", "filter_cases",
           "load_suite", "parse_suite", "suite_json_schema"]

DTYPES = tuple(DTYPE_BYTES)
FULL = "full"  # the name of the suite's main profile (its top-level sweep, variants, timing)
CPU = "cpu"  # the profile declared with `cpu:`, applied automatically on CPU
# a named profile: lowercase words joined by '-' (it appears in results, reports and command lines)
PROFILE_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


class _Strict(BaseModel):
    # strict: YAML already gives numbers and booleans their types, so "10" or true for a count is a mistake;
    # no inf/nan: an infinite time budget never ends and a NaN bound compares false with everything
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Timing(BenchSpec):
    """A suite's `timing:` block: the `ossbench.bench` settings of every case (`BenchSpec`, whose fields,
    defaults and rules it inherits: docs/bench.md, docs/suites.md), plus the runner's per-case time limit."""

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
    where: Params = Field(default_factory=dict)  # restrict to cases with these parameter values
    expect: Expect | None = None
    claim: str = ""  # the claim being checked, shown in the report


class GateSpec(_Strict):
    """Thresholds for `ossbench gate` (docs/gate.md): the largest tolerated slowdown of the median, as a
    fraction (0.05 = 5%), and per-case overrides keyed by a substring of the case id (longest match wins)."""

    max_slowdown: PositiveFloat | None = None
    cases: dict[str, PositiveFloat] = Field(default_factory=dict)


class Limits(_Strict):
    """Guards against a typo that would ask for more than any machine can do; raise them if you mean it."""

    # cases per profile (sweep points x variants), counted before expanding: each case takes at least
    # min_time_s plus warm-up, so 10,000 of them are hours of device time, and validating them ~10 s
    max_cases: PositiveInt = 10_000
    # a case whose cost-model bytes (weights, activations, cache) exceed this is refused: 16 TB is far more
    # than any GPU (hundreds of GB) holds, so such a size is a typo
    max_case_memory_gb: PositiveFloat = 16_000


SweepBlock = dict[str, list[Scalar]]
# One product, or a list of products (their union); always held as a list. The mapping is wrapped before
# validation so that errors point at the user's path rather than at a member of a union.
def _as_blocks(v: Any) -> list[Any]:
    if isinstance(v, dict):
        return [v]
    if isinstance(v, list):
        return v
    raise ValueError("a sweep is a mapping of axis -> list of values, or a list of such mappings")


Sweep = Annotated[list[SweepBlock], BeforeValidator(_as_blocks),
                  WithJsonSchema(TypeAdapter(Union[SweepBlock, list[SweepBlock]]).json_schema())]


def _check_sweep(blocks: list[SweepBlock]) -> list[SweepBlock]:
    for block in blocks:
        for axis, values in block.items():
            if not values:
                raise ValueError(f"sweep axis {axis!r} has no values")
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"sweep axis {axis!r} repeats a value")
    return blocks


class Profile(_Strict):
    """A reduced profile: given keys replace the main ones (`params` and `timing` are merged over the main
    ones; `variants` keeps only the named variants). The `cpu:` profile is applied automatically on CPU; a
    named one (`profiles: {gpu-smoke: ...}`) when `ossbench run --suite-profile NAME` asks for it."""

    description: str = ""  # what the profile is for, shown when it runs

    dtype: Literal[DTYPES] | None = None  # type: ignore[valid-type]
    params: Params = Field(default_factory=dict)
    variants: list[str] | None = None
    sweep: Sweep | None = None
    exclude: list[Params] | None = None
    timing: dict[str, Any] = Field(default_factory=dict)

    _sweep = field_validator("sweep")(lambda cls, v: None if v is None else _check_sweep(v))


CpuProfile = Profile  # the name this class had when `cpu:` was the only profile


class SuiteSpec(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    family: str
    preset: str = "gpt-oss-20b"
    dtype: Literal[DTYPES] = "bfloat16"  # type: ignore[valid-type]
    mode: str | None = None
    params: Params = Field(default_factory=dict)
    variants: dict[str, Params] = Field(min_length=1)
    sweep: Sweep = Field(default_factory=list)
    exclude: list[Params] = Field(default_factory=list)
    timing: Timing = Field(default_factory=Timing)
    compare: list[ComparePair] = Field(default_factory=list)
    gate: GateSpec = Field(default_factory=GateSpec)
    profile: bool = False  # also run every case under torch.profiler (as `ossbench run --profile`)
    cpu: Profile | None = None
    profiles: dict[str, Profile] = Field(default_factory=dict)  # named profiles: `run --suite-profile NAME`
    limits: Limits = Field(default_factory=Limits)

    _sweep = field_validator("sweep")(lambda cls, v: _check_sweep(v))

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name in v:
            if not name.strip() or any(ch in name for ch in "\n\r\t"):
                raise ValueError(f"variant name {name!r} must be non-empty text on one line")
        return v

    @field_validator("profiles")
    @classmethod
    def _profile_names(cls, v: dict[str, Profile]) -> dict[str, Profile]:
        for name in v:
            if name in (FULL, CPU):
                why = ("the full profile is the suite itself" if name == FULL
                       else "declare the CPU profile with the top-level `cpu:` key")
                raise ValueError(f"profile name {name!r} is reserved: {why}")
            if not PROFILE_NAME.fullmatch(name):
                raise ValueError(f"profile name {name!r}: use lowercase letters, digits and '-' (e.g. gpu-smoke)")
        return v


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

    def profile_names(self) -> list[str]:
        """Every profile of the suite: "full" (the suite itself), "cpu" if declared, then the named ones."""
        return [FULL] + ([CPU] if self.spec.cpu is not None else []) + list(self.spec.profiles)

    def profile_spec(self, profile: str) -> Profile | None:
        """The profile's overrides (None for "full"); a name the suite does not declare is a UserError."""
        if profile == FULL:
            return None
        spec = self.spec.cpu if profile == CPU else self.spec.profiles.get(profile)
        if spec is None:
            raise UserError(f"{self.path}: no suite profile {profile!r}; it has: {', '.join(self.profile_names())}")
        return spec

    def profile_at(self, profile: str) -> YamlPath:
        """Where the profile's overrides are in the YAML: ("cpu",) or ("profiles", NAME); () for "full"."""
        return () if profile == FULL else (CPU,) if profile == CPU else ("profiles", profile)

    def profile_for(self, device_type: str, requested: str | None = None) -> str:
        """The profile a run uses: the one asked for, else "cpu" on a CPU when the suite has one, else "full"."""
        if requested is not None:
            self.profile_spec(requested)  # a name the suite lacks is refused here, before anything runs
            return requested
        return CPU if device_type == "cpu" and self.spec.cpu is not None else FULL

    def cases(self, profile: str = FULL) -> list[Case]:
        return expand(self, profile)

    def timing(self, profile: str = FULL) -> Timing:
        spec = self.profile_spec(profile)
        if spec and spec.timing:
            return Timing.model_validate({**self.spec.timing.model_dump(), **spec.timing})
        return self.spec.timing

    def dtype(self, profile: str = FULL) -> str:
        spec = self.profile_spec(profile)
        return spec.dtype if spec and spec.dtype else self.spec.dtype

    def error(self, message: str, path: YamlPath) -> SuiteError:
        """A SuiteError pointing at the YAML node `path` (or its nearest ancestor that has a line)."""
        # a dotted parameter name may have been written nested (`attention: {window: 1}`): try that node too
        nested = tuple(p for part in path for p in (part.split(".") if isinstance(part, str) else (part,)))
        found = max((self._line_of(p) for p in (path, nested)), key=lambda depth_line: depth_line[0])
        return SuiteError(message, path=self.path, line=found[1], field=dotted(path) or None)

    def _line_of(self, path: YamlPath) -> tuple[int, int | None]:
        """The line of `path`'s deepest node that has one, and that node's depth."""
        for n in range(len(path), -1, -1):
            # the line index holds mapping keys as written (text); a key YAML read as a number is tried so too
            for at in (path[:n], path[:n - 1] + (str(path[n - 1]),) if n else ()):
                if at in self.lines:
                    return n, self.lines[at]
        return -1, None


# ---------------------------------------------------------------------------------------------- loading


def load_suite(path: str | Path, *, every_error: bool = False) -> Suite:
    """Read, parse and validate a suite, expanding every case of every profile to check it. The first error
    is raised (a SuiteError); with `every_error`, all that can be found (a SuiteErrors, `ossbench validate`)."""
    return parse_suite(read_suite_text(path), str(path), every_error=every_error)


def parse_suite(text: str, path: str = "<suite>", *, every_error: bool = False) -> Suite:
    data, lines = load_yaml(text, path)
    if not isinstance(data, dict):
        raise SuiteError("a suite must be a YAML mapping (name:, family:, variants:, ...)", path=path, line=1)
    probe = Suite(spec=SuiteSpec.model_construct(), path=path, sha256="", lines=lines)
    try:
        spec = SuiteSpec.model_validate(data)
    except ValidationError as e:
        if every_error:
            raise SuiteErrors(all_errors(probe, e, data, known_keys=_known_keys)) from None
        raise first_error(probe, e, data, known_keys=_known_keys) from None
    suite = Suite(spec=spec, path=path, sha256=hashlib.sha256(text.encode()).hexdigest(), lines=lines)
    profiles = suite.profile_names()
    for profile in profiles:  # counted before anything is expanded (or torch imported for the family)
        check_case_count(suite, profile)
    _check_references(suite)
    found = CaseErrors() if every_error else None
    cases = [case for profile in profiles for case in expand(suite, profile, found)]  # validates every case
    if found:
        raise SuiteErrors(found.errors())
    ids = {c.id for c in cases}
    for i, pair in enumerate(spec.compare):  # a `where` that selects nothing is a typo, not a no-op
        if pair.where and not any(all(c.params_dict.get(k) == v for k, v in pair.where.items()) for c in cases):
            raise suite.error(f"compare where {pair.where} matches no case", ("compare", i, "where"))
    for key in spec.gate.cases:  # an override that selects nothing is a typo, not a no-op
        if not any(key in case_id for case_id in ids):
            raise suite.error(f"gate override {key!r} matches no case id", ("gate", "cases", key))
    return suite


def _known_keys(at: YamlPath) -> list[str]:
    """The field names allowed at a YAML path of the suite format (for "did you mean")."""
    model: Any = SuiteSpec
    name_next = False  # the part after a mapping of named entries (profiles:) is a name, not a field
    for part in at:
        if isinstance(part, int) or model is None or name_next:
            name_next = False
            continue
        info = model.model_fields.get(part)
        name_next = bool(info) and get_origin(info.annotation) is dict
        args = get_args(info.annotation) if info else ()
        model = next((a for a in args or (info.annotation,) if isinstance(a, type) and issubclass(a, BaseModel)),
                     None) if info else None
    return list(model.model_fields) if model else []


# ----------------------------------------------------------------------------------------- references


def _check_references(suite: Suite) -> None:
    """Names used in one part of the suite must exist in another: variants, axes, parameters."""
    spec = suite.spec
    fields = set(family_of(suite).param_fields())
    variants = set(spec.variants)

    def known_field(key: str, at: YamlPath, extra: tuple[str, ...] = ()) -> None:
        if key not in fields and key not in extra:
            hint = did_you_mean(key, sorted(fields)) or f"; known: {', '.join(sorted(fields))}"
            raise suite.error(f"unknown parameter {key!r} for family {spec.family!r}{hint}", at)

    def known_variant(name: Any, at: YamlPath) -> None:
        if name not in variants:
            raise suite.error(f"unknown variant {name!r}; the suite defines: {', '.join(spec.variants)}", at)

    named = [(suite.profile_at(name), suite.profile_spec(name)) for name in suite.profile_names()[1:]]
    for base, blocks in [(("sweep",), spec.sweep)] + [(at + ("sweep",), p.sweep) for at, p in named]:
        for i, block in enumerate(blocks or []):
            at = base + ((i,) if base + (0,) in suite.lines else ())
            for axis in block:
                known_field(axis, at + (axis,))
    for base, rules in [(("exclude",), spec.exclude)] + [(at + ("exclude",), p.exclude) for at, p in named]:
        for i, rule in enumerate(rules or []):
            for key, value in rule.items():
                known_field(key, base + (i, key), extra=("variant",))
                if key == "variant":
                    known_variant(value, base + (i, key))
    for at, profile in named:
        for i, name in enumerate(profile.variants or []):
            known_variant(name, at + ("variants", i))
    for i, pair in enumerate(spec.compare):
        known_variant(pair.baseline, ("compare", i, "baseline"))
        known_variant(pair.candidate, ("compare", i, "candidate"))
        for key in pair.where:
            known_field(key, ("compare", i, "where", key))
    preset_of(suite)
    for name in suite.profile_names()[1:]:
        try:
            suite.timing(name)
        except ValidationError as e:
            raise _profile_timing_error(suite, name, e) from None


def _profile_timing_error(suite: Suite, name: str, e: ValidationError) -> SuiteError:
    """An error in a profile's timing, which is validated merged over the main timing: reported at the
    value that supplied it (the override where it set one of the fields involved, else the main one)."""
    err = e.errors()[0]
    at_profile = suite.profile_at(name)
    override = suite.profile_spec(name).timing  # type: ignore[union-attr]
    key = str(err["loc"][0]) if err["loc"] else ""
    if err["type"] == "extra_forbidden":
        return suite.error(f"unknown field {key!r}" + did_you_mean(key, list(Timing.model_fields)),
                           at_profile + ("timing", key))
    involved = (err.get("ctx") or {}).get("fields", (key,))
    blame = next((f for f in reversed(involved) if f in override), key)
    at = at_profile + ("timing", blame) if blame in override else ("timing", blame)
    return suite.error(message(err) + (got(err) if blame == key else ""), at)


def suite_json_schema() -> dict[str, Any]:
    """JSON Schema of the suite format (for editor completion), parameters of every family included."""
    from .workloads import all_families
    from .workloads.nesting import override_properties

    schema = SuiteSpec.model_json_schema()
    # A parameter name shared by families (backend, mode, ...) accepts the union of their choices.
    choices: dict[str, list[Any]] = {}
    for fam in all_families():
        for key, prop in override_properties(fam.params_model).items():
            if prop not in choices.setdefault(key, []):
                choices[key].append(prop)
    names = {key: alts[0] if len(alts) == 1 else {"anyOf": alts} for key, alts in choices.items()}
    overrides = {"type": "object", "properties": names, "additionalProperties": False}
    props = schema["properties"]
    props["params"] = overrides
    props["variants"] = {"type": "object", "additionalProperties": overrides, "minProperties": 1}
    rule = {**overrides, "properties": {**names, "variant": {"type": "string"}}}  # an exclusion may name a variant
    props["exclude"] = {"type": "array", "items": rule}
    profile = schema["$defs"]["Profile"]["properties"]  # cpu: and every named profile
    profile["params"] = overrides
    profile["exclude"] = {"anyOf": [{"type": "array", "items": rule}, {"type": "null"}]}
    schema["$defs"]["ComparePair"]["properties"]["where"] = overrides
    props["family"] = {"type": "string", "enum": [f.name for f in all_families()]}
    schema["title"] = "ossbench suite"
    return schema

