"""What a layer family hands the runner: a timed function, its cost, and a numerics check.

A *family* (attention, moe, ...) declares its parameters as a pydantic model and knows how to turn one
validated parameter set and a data seed into a `Workload` on a device. The runner never looks inside a
workload: it checks it once, times `fn`, and derives throughput from `cost`.

The seed decides every random value the workload holds (weights, inputs, caches, the reference's random
rows): the same parameters, dtype, device and seed give the same tensors. The runner derives it from the
case id (`case_seed`), so a case run alone, or rebuilt from its results record, sees the same data.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from pydantic import BaseModel

from .nesting import dotted_fields, flatten, nest


@dataclass(frozen=True)
class Cost:
    """Work per call of `Workload.fn`, from the family's cost model (not measured)."""

    flops: float  # floating-point operations actually computed (multiply-add = 2)
    bytes: float  # minimum bytes that must move to/from device memory
    tokens: int  # tokens processed (prefill: batch*seq_len, decode: batch)
    extra: dict[str, float] = field(default_factory=dict)  # e.g. kv_cache_bytes, params


@dataclass(frozen=True)
class Check:
    """Outcome of comparing a backend's output with the family's reference."""

    max_abs_err: float
    max_rel_err: float  # max |out - ref| / max |ref|
    tolerance: float  # allowed max_rel_err for this dtype
    reference: str  # what the output was compared against, e.g. "eager float64 on cpu"

    @property
    def ok(self) -> bool:
        return self.max_rel_err <= self.tolerance


@dataclass
class Workload:
    fn: Callable[[], Any]  # the timed call: launches only, all set-up done before
    cost: Cost
    check: Callable[[], Check]  # run once before timing; the runner fails the case when not ok
    persistent_bytes: int = 0  # weights, caches and inputs held for the whole case
    # What the workload measured of itself, e.g. {"kv_cache_bytes": ...} from its real tensors; the runner
    # records it next to the cost model's figure (memory.kv_cache_measured_bytes).
    measured: dict[str, float] = field(default_factory=dict)
    # facts about the built case that are not numbers per call: the kernel chosen automatically, the
    # routing's tokens per expert, ... (JSON-serialisable; recorded with the case)
    info: dict[str, Any] = field(default_factory=dict)
    # The random tensors the timed call reads, by name (x, dy, the decode cache's k and v, ...): what the
    # seed decided, for rebuilding a case and comparing its data. References only; nothing is copied.
    inputs: dict[str, Any] = field(default_factory=dict)
    # The torch.distributed process group `fn` runs collectives over (comm, moe-ep); None: a local call. The
    # runner then times it on every rank together (ossbench.measure.dist_timer.bench_collective).
    group: Any = None
    # Measured after timing, when the family has more to say than one time per call: e.g. moe-ep's time per
    # phase (route, dispatch, experts, combine), recorded as the case's `phases_ms`.
    breakdown: Callable[[], dict[str, float]] | None = None


@dataclass(frozen=True)
class Footprint:
    """What a case will cost before anything is built, from its parameters alone (the run planner's input,
    ossbench/plan.py): the cost model per call and the bytes the case will hold. No tensor is allocated."""

    cost: Cost  # per call of the timed function, as `Workload.cost` will be (MoE: balanced routing assumed)
    persistent_bytes: float  # weights, inputs (and dy in train), caches: what `Workload.persistent_bytes` counts
    activation_bytes: float  # transient bytes one call allocates above that (intermediates, saved tensors)
    backends: tuple[tuple[str, str], ...] = ()  # (family, backend name) of every backend the case runs


# A training step keeps the forward's intermediates for the backward and makes gradients of the same sizes:
# its transient bytes are taken as this many times one forward call's.
TRAIN_ACTIVATION_FACTOR = 3


def activation_factor(mode: str) -> int:
    return TRAIN_ACTIVATION_FACTOR if mode == "train" else 1


DEFAULT_SEED = 0  # what a Python caller of `build` gets without a seed; the runner always passes the case's


def case_seed(case_id: str) -> int:
    """The data seed of a case: a checksum of its id, so ids give stable seeds across runs and machines."""
    return zlib.crc32(case_id.encode())


@dataclass(frozen=True)
class Family:
    """One layer family: its parameter model, defaults from a model preset, and its workload builder."""

    name: str
    description: str
    params_model: type[BaseModel]  # pydantic model, extra="forbid"; includes `mode` and `backend`
    defaults: Callable[[Any], dict[str, Any]]  # ModelConfig -> default parameter values
    build: Callable[..., Workload]  # (params, torch.device, torch.dtype, *, seed: int) -> Workload
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # ready-made overrides, shown by `list`
    # (params, dtype_bytes) -> Footprint, without building anything; None: the planner cannot predict the case
    footprint: Callable[[Any, int], Footprint] | None = None
    # Its cases run on every rank of a process group together (collectives); a sharded run does not split
    # them over the ranks (ossbench.distributed), and they never run in an isolated child process.
    collective: bool = False
    # (params, torch.device, torch.dtype) -> why `build` would skip the case there (None: it would not), from
    # the parameters alone; None: only the backends the footprint names are asked (`skip_reason`)
    skip: Callable[[Any, Any, Any], str | None] | None = None

    def skip_reason(self, params: BaseModel, device: Any, dtype: Any) -> str | None:
        """Why a case would be skipped on `device` in `dtype` before anything is built (`ossbench validate
        --device`): the family's own rule, else what its backends registered (device, dtype, train)."""
        if self.skip is not None:
            return self.skip(params, device, dtype)
        if self.footprint is None:
            return None
        from ..backends import unsupported_reason

        train = getattr(params, "mode", None) == "train"
        for family, name in self.footprint(params, 2).backends:
            if reason := unsupported_reason(family, name, device, dtype, train=train):
                return reason
        return None

    # Outside the model, parameters are one flat mapping with dotted names for nested specs
    # (`attention.window`): see nesting.py.
    def validate(self, params: Mapping[str, Any], context: dict[str, Any] | None = None) -> BaseModel:
        """The validated params model of a flat mapping of parameters (dotted names nest)."""
        return self.params_model.model_validate(nest(params), context=context)

    def flat_params(self, params: BaseModel) -> dict[str, Any]:
        """A validated params model as the flat mapping that cases and results hold."""
        return flatten(params.model_dump())

    def flat_defaults(self, cfg: Any) -> dict[str, Any]:
        return flatten(self.defaults(cfg))

    def param_fields(self) -> dict[str, Any]:
        """Every parameter by dotted name, with its pydantic FieldInfo."""
        return dotted_fields(self.params_model)
