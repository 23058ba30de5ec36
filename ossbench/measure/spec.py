"""``BenchSpec``: the timer's settings, declared, defaulted and validated in this one place.

``bench(fn, spec=...)`` takes one (its keyword arguments build one), a suite's ``timing:`` block is one
(``ossbench.suite.Timing`` adds only the runner's per-case time limit), ``--quick`` is a delta applied to
one (``BenchSpec.quick``) and every results file stores one (a case's ``timing``). See docs/bench.md.

No torch here: suites are validated, and results read, without it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, ValidationInfo, \
    field_validator
from pydantic_core import PydanticCustomError

Cache = Literal["cold", "hot"]
_Spec = TypeVar("_Spec", bound="BenchSpec")  # a method of a subclass (the suite's Timing) returns that subclass

# `--quick`: a smoke run, not a measurement to quote (a loose CI target and a short budget).
# Quick's bounds: each budget is at most this (a spec already shorter keeps its own), the CI target at least.
QUICK_CHANGES: dict[str, Any] = dict(warmup_s=0.02, min_samples=5, min_time_s=0.05, max_time_s=1.0,
                                     target_rel_ci=0.05)


def _not_below(low: str, what: str):
    """A rule for a field that must be at least the earlier field `low`; the error names both fields (in
    `ctx["fields"]`, so that a suite's error can point at whichever of the two the user wrote)."""
    def check(cls: type, v: float, info: ValidationInfo) -> float:
        floor = info.data.get(low)
        if floor is not None and v < floor:
            raise PydanticCustomError("order", f"{info.field_name} ({v}) must be at least {low} ({floor}): {what}",
                                      {"fields": (low, info.field_name)})
        return v
    return check


class BenchSpec(BaseModel):
    """How ``bench`` measures: warm-up, the adaptive stopping rule, cache mode and CUDA-graph replay.

    Frozen and hashable, so it can key a table or a cache. Invalid values raise ``ValueError`` (a pydantic
    ``ValidationError``) naming the field. The defaults are close to nvbench's (min 10 samples, 0.5 s min
    time, 15 s timeout); its 0.5% noise target is loosened to 1%, which keeps a suite's run time sane on
    noisy machines while staying well below the effects ossbench sets out to show.
    """

    # strict: a quoted "10" or a `true` for a count is a mistake, not a number; no inf/nan: an infinite
    # time budget never ends and a NaN bound compares false with everything
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    cache: Cache = "cold"  # cold: overwrite a buffer larger than the cache before every sample
    warmup_s: NonNegativeFloat = 0.1  # call fn until this much time has passed (and at least once)
    min_samples: PositiveInt = 10
    min_time_s: NonNegativeFloat = 0.5  # the samples must span at least this much wall-clock time
    max_time_s: PositiveFloat = 15.0  # the sampling budget
    target_rel_ci: float = Field(0.01, gt=0, lt=1)  # stop when the CI95 of the median is within ±1% of it
    cuda_graph: bool = False
    graph_calls: PositiveInt | None = None  # calls per graph replay; None: about 1 ms of GPU time, from warm-up
    flush_bytes: Annotated[int, Field(ge=4)] | None = None  # None: 2 x L2 (>= 64 MiB) on CUDA, 1 x LLC on CPU
    # Keeps results files small: a 1 µs kernel would give ~500k samples in 0.5 s.
    max_samples: PositiveInt = 20_000

    _max_time = field_validator("max_time_s")(_not_below("min_time_s", "the sampling budget must cover the minimum"))
    _max_samples = field_validator("max_samples")(_not_below("min_samples", "the cap must allow the minimum"))

    def to_dict(self) -> dict[str, Any]:
        """The timer's settings as plain values (a subclass's own fields, such as the suite's
        ``case_timeout_s``, left out): what results files store as a case's ``timing``."""
        return self.model_dump(include=set(BenchSpec.model_fields))

    @classmethod
    def from_dict(cls: type[_Spec], data: dict[str, Any]) -> _Spec:
        """The spec of ``data`` (e.g. a results file's ``timing``), validated; missing keys take the defaults."""
        return cls.model_validate(data)

    def replace(self: _Spec, **changes: Any) -> _Spec:
        """A copy with ``changes``, validated again (``model_copy(update=...)`` would not check them)."""
        return self.model_validate({**self.model_dump(), **changes})

    def quick(self: _Spec) -> _Spec:
        """This spec as a smoke run (``ossbench run --quick``), never longer than the spec itself: each budget
        of ``QUICK_CHANGES`` (warm-up, min/max time, min samples) only lowers this spec's, and its CI target
        only loosens it; ``min_samples`` never exceeds ``max_samples``."""
        shorter = {k: min(v, getattr(self, k)) for k, v in QUICK_CHANGES.items() if k != "target_rel_ci"}
        shorter["min_samples"] = min(shorter["min_samples"], self.max_samples)
        return self.replace(**shorter, target_rel_ci=max(QUICK_CHANGES["target_rel_ci"], self.target_rel_ci))
