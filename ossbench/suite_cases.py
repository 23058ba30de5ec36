"""Expanding a validated suite into Cases: sweep points x variants minus exclusions, each validated by its
family's parameter model, with bad values reported at the YAML node that supplied them.

The sweep product is counted before anything is expanded (a typo can ask for millions of cases), and each
case's memory is estimated from its family's cost model, so that a size no device holds is refused here
rather than failing at run time. Both limits are the suite's `limits:` block (docs/suites.md).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import BeforeValidator, PlainValidator, ValidationError

from .errors import SuiteError
from .suite_errors import did_you_mean, got, message
from .suite_yaml import YamlPath

if TYPE_CHECKING:
    from .suite import Suite

_ScalarTypes = Union[bool, int, float, str, None]


def _single_value(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ValueError(f"must be a single value (a number, text, true/false or null), not a "
                     f"{'mapping' if isinstance(v, dict) else 'list' if isinstance(v, list) else type(v).__name__}")


# A parameter value as YAML gives it. One validator instead of a union of five, so that a wrong value gets
# one message rather than one per member of the union.
Scalar = Annotated[_ScalarTypes, PlainValidator(_single_value, json_schema_input_type=_ScalarTypes)]


def _dotted_names(v: Any) -> Any:
    """A nested mapping of parameters (`attention: {window: 128}`) as dotted names (`attention.window`)."""
    from .workloads.nesting import flatten

    return flatten(v) if isinstance(v, dict) else v


# Parameter values by name, as the suite's params, variants, exclusions and `where` give them: single
# values, nested groups allowed (held flat, with dotted names).
Params = Annotated[dict[str, Scalar], BeforeValidator(_dotted_names)]
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
# Where a parameter's value can come from, lowest priority first; a cross-field error is reported at the
# highest-priority place the user set one of the fields involved (what they most likely just changed).
_SOURCES = ("preset", "params", "mode", "profile.params", "variants", "sweep")


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


def family_of(suite: Suite) -> Any:
    from .workloads import family_names, get_family

    if suite.spec.family not in family_names():
        raise suite.error(f"unknown family {suite.spec.family!r}; known: {', '.join(family_names())}",
                          ("family",))
    return get_family(suite.spec.family)


def preset_of(suite: Suite) -> Any:
    from .layers.config import PRESETS, get_preset

    if suite.spec.preset not in PRESETS:
        raise suite.error(f"unknown preset {suite.spec.preset!r}; known: {', '.join(PRESETS)}", ("preset",))
    return get_preset(suite.spec.preset)


@dataclass(frozen=True)
class _Plan:
    """What one profile expands: the sweep blocks (and where they are), variants and exclusions."""

    sweep_at: YamlPath
    blocks: list[dict[str, list[Scalar]]]
    blocks_are_list: bool
    variants: list[str]
    excludes: list[dict[str, Scalar]]

    def block_at(self, i: int) -> YamlPath:
        return self.sweep_at + ((i,) if self.blocks_are_list else ())


def _plan(suite: Suite, profile: str) -> _Plan:
    spec = suite.spec
    over = suite.profile_spec(profile)  # None for the main profile
    sweep_at: YamlPath = suite.profile_at(profile) + ("sweep",) if over and over.sweep is not None else ("sweep",)
    return _Plan(sweep_at=sweep_at,
                 blocks=(over.sweep if over and over.sweep is not None else spec.sweep) or [{}],
                 blocks_are_list=sweep_at + (0,) in suite.lines,
                 variants=over.variants if over and over.variants is not None else list(spec.variants),
                 excludes=over.exclude if over and over.exclude is not None else spec.exclude)


def check_case_count(suite: Suite, profile: str) -> None:
    """Refuse a sweep whose product is above `limits.max_cases`, counted without expanding it."""
    plan, limit = _plan(suite, profile), suite.spec.limits.max_cases
    points = sum(math.prod(len(values) for values in block.values()) for block in plan.blocks)
    total = points * len(plan.variants)
    if total > limit:
        raise suite.error(f"the sweep gives {total:,} cases ({points:,} points x {len(plan.variants)} variants, "
                          f"before exclusions), more than limits.max_cases ({limit:,}); set "
                          f"`limits: {{max_cases: {total}}}` if you mean it", plan.sweep_at)


class CaseErrors:
    """Case errors collected over the expansion of every profile (`ossbench validate`): one per place in the
    file, with how many cases it hit."""

    def __init__(self) -> None:
        self._first: dict[tuple[int | None, str | None], SuiteError] = {}
        self._hits: dict[tuple[int | None, str | None], int] = {}

    def add(self, e: SuiteError) -> None:
        place = (e.line, e.field)
        self._hits[place] = self._hits.get(place, 0) + 1
        self._first.setdefault(place, e)

    def __bool__(self) -> bool:
        return bool(self._first)

    def errors(self) -> list[SuiteError]:
        found = [SuiteError(e.message + (f" (and {self._hits[p] - 1} more case(s))" if self._hits[p] > 1 else ""),
                            path=e.path, line=e.line, field=e.field) for p, e in self._first.items()]
        return sorted(found, key=lambda x: (x.line is None, x.line or 0))


def expand(suite: Suite, profile: str, errors: CaseErrors | None = None) -> list[Case]:
    """The profile's cases, each validated. With `errors`, a case that fails validation is left out and its
    error added there instead of raised."""
    spec, family, preset = suite.spec, family_of(suite), preset_of(suite)
    plan = _plan(suite, profile)
    over = suite.profile_spec(profile)
    dtype = suite.dtype(profile)
    context = {"max_case_bytes": spec.limits.max_case_memory_gb * 1e9, "dtype_bytes": DTYPE_BYTES[dtype]}

    # Where each parameter's value came from, so a bad value is reported at the line that set it.
    defaults: dict[str, Scalar] = family.flat_defaults(preset)
    base = dict(defaults)
    origin: dict[str, YamlPath] = {k: ("preset",) for k in base}
    layers: list[tuple[dict[str, Scalar], YamlPath]] = [(spec.params, ("params",))]
    if spec.mode is not None:
        layers.append(({"mode": spec.mode}, ()))
    if over:
        layers.append((over.params, suite.profile_at(profile) + ("params",)))
    for values, at in layers:
        for k, v in values.items():
            base[k] = v
            origin[k] = at + (k,)

    cases: list[Case] = []
    seen: set[str] = set()
    failed = False  # some case failed (with `errors`)
    for bi, block in enumerate(plan.blocks):
        block_at = plan.block_at(bi)
        axes = list(block)
        for point in itertools.product(*(block[a] for a in axes)):
            point_d = dict(zip(axes, point))
            for variant in plan.variants:
                params, where = dict(base), dict(origin)
                for k, v in spec.variants[variant].items():
                    params[k], where[k] = v, ("variants", variant, k)
                for k, v in point_d.items():
                    params[k], where[k] = v, block_at + (k,)
                if any(_matches(rule, variant, params) for rule in plan.excludes):
                    continue
                case_id = case_identifier(spec.family, variant, point_d)
                if case_id in seen:
                    raise suite.error(f"case {case_id} is produced twice (sweep blocks overlap)", block_at)
                seen.add(case_id)
                try:
                    try:
                        validated = family.validate(params, context=context)
                    except ValidationError as e:
                        raise _reanchor(suite, e, where, variant, params, defaults, f" in case {case_id}") from None
                    except ValueError as e:  # a name set both as a value and as a group (nesting.nest)
                        raise suite.error(f"{e} in case {case_id}", ("variants", variant)) from None
                except SuiteError as e:
                    if errors is None:
                        raise
                    errors.add(e)
                    failed = True
                    continue
                cases.append(Case(id=case_id, family=spec.family, variant=variant, axes=tuple(point_d.items()),
                                  params=tuple(family.flat_params(validated).items()), dtype=dtype,
                                  preset=spec.preset))
    if failed:
        return cases
    if not cases:
        raise suite.error("the suite expands to no cases (everything is excluded)", ("exclude",))
    return cases


def _rank(path: YamlPath) -> int:
    if not path:
        return _SOURCES.index("mode")
    if path[0] in ("cpu", "profiles"):  # ("cpu", key, ...) or ("profiles", name, key, ...)
        key = path[1] if path[0] == "cpu" else path[2]
        return _SOURCES.index("sweep" if key == "sweep" else "profile.params")
    return _SOURCES.index(str(path[0]))


def _reanchor(suite: Suite, e: ValidationError, where: dict[str, YamlPath], variant: str,
              params: dict[str, Scalar], defaults: dict[str, Scalar], context: str) -> SuiteError:
    """A family validation error, reported at the YAML node that supplied the offending value."""
    from .workloads.nesting import error_name

    err = e.errors()[0]
    family = family_of(suite)
    key: str | None = error_name(err["loc"], family.params_model) or None
    ctx = err.get("ctx") or {}
    if err["type"] == "extra_forbidden":
        fields = list(family.param_fields())
        return suite.error(f"unknown parameter {key!r}" + did_you_mean(str(key), fields) + context,
                           where.get(str(key), ("variants", variant)))
    checked = key
    # a rule inside a nested spec names its fields within that spec: prefix them with its group
    group = key.rsplit(".", 1)[0] + "." if key and "." in key else ""
    involved = [group + f if group + f in params else f for f in ctx.get("fields", ())]
    user_set = [f for f in involved if where.get(f, ("preset",)) != ("preset",)]
    if user_set and where.get(str(key), ("preset",)) == ("preset",):
        # a rule over several fields, run by one the user did not set (a preset default): blame the
        # involved field the user set most specifically, where they can change it
        key = max(user_set, key=lambda f: _rank(where[f]))
    elif err["type"] == "case_memory":
        key = _largest_size(params, defaults, where) or key
        context += (f"; raise limits.max_case_memory_gb (now {suite.spec.limits.max_case_memory_gb:g}) "
                    f"if a device really holds it")
    at = where.get(key, ("variants", variant)) if isinstance(key, str) else ("variants", variant)
    prefix = f"{key}: " if isinstance(key, str) else ""
    return suite.error(prefix + message(err) + (got(err) if key == checked else "") + context, at)


def _largest_size(params: dict[str, Scalar], defaults: dict[str, Scalar],
                  where: dict[str, YamlPath]) -> str | None:
    """The user-set size that grew most over the preset's default: the likely cause of an absurd case."""
    def growth(name: str) -> float:  # in logs: math.log takes integers of any size, a division would overflow
        base = defaults.get(name)
        return math.log(params[name]) - (math.log(base) if isinstance(base, int) and base > 0 else 0.0)  # type: ignore

    sizes = [k for k, v in params.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0
             and where.get(k, ("preset",)) != ("preset",)]
    return max(sizes, key=growth) if sizes else None


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
