"""Typed records inside a results file that other code reads key by key (``environment.peak``,
``environment.ceilings``, ``suite.gate``, ``suite.compare``, and a case's ``roofline``, ``power``, ``profile``
and ``counters``).

They stay plain dicts, but typed, so a hostile or hand-edited file fails at load with the field's path
instead of with a traceback deep inside report, compare or gate. Extra keys are kept (later versions add
fields within the same schema).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict  # pydantic needs typing_extensions' TypedDict before Python 3.12

# What the run's configuration says: finite, and ceilings and thresholds > 0.
_Record = with_config(ConfigDict(extra="allow", allow_inf_nan=False))
Ceiling = Annotated[float, Field(gt=0, allow_inf_nan=False)]


@_Record
class PeakRow(TypedDict, total=False):
    """A datasheet peak-table row (measure.roofline.peak_for): ``name`` and ``*_tflops``, ``hbm_gbps``, ``memory_gb``."""

    name: str
    source: str
    bf16_tflops: Ceiling | None
    fp16_tflops: Ceiling | None
    tf32_tflops: Ceiling | None
    fp32_tflops: Ceiling | None
    fp64_tflops: Ceiling | None
    hbm_gbps: Ceiling | None
    memory_gb: Ceiling | None


@_Record
class Ceilings(TypedDict, total=False):
    """The roofline ceilings a run used (measure.roofline.resolve_ceilings)."""

    compute_tflops: dict[str, Ceiling]
    bandwidth_gbps: Ceiling | None
    sources: dict[str, str]
    datasheet: str | None
    calibration: str | None
    calibrated_values: dict[str, Any] | None


@_Record
class GateSettings(TypedDict, total=False):
    """The suite's `gate:` section as recorded in the run (suite.GateSpec)."""

    max_slowdown: Ceiling | None
    cases: dict[str, Ceiling]


@_Record
class Expectation(TypedDict, total=False):
    speedup_min: float | None
    speedup_max: float | None
    relative_to: Literal["none", "flops", "bytes"]


@_Record
class ComparePairRecord(TypedDict, total=False):
    """A suite `compare` pair as recorded in the run (suite.ComparePair)."""

    baseline: str
    candidate: str
    where: dict[str, Any]
    expect: Expectation | None
    claim: str


# The measurement records below are written by the runner as it goes (assignment is validated), so they
# accept NaN and inf like any float: only a value of the wrong type is refused.
_Measured = with_config(ConfigDict(extra="allow"))
Number = float


@_Measured
class PredictedRecord(TypedDict, total=False):
    """What the run planner predicted for a case before it ran (ossbench/plan.py, docs/results.md):
    compare ``time_s`` with the case's ``duration_s`` and ``peak_bytes`` with its ``memory.peak_bytes``."""

    time_s: Number
    peak_bytes: Number
    call_ms: Number
    phases: dict[str, Number]  # setup, compile, check, warmup, sampling, overhead (seconds)
    persistent_bytes: Number
    activation_bytes: Number
    basis: str  # the ceilings used: calibrated, datasheet, default
    fits: bool


@_Measured
class RooflineRecord(TypedDict, total=False):
    """A case's place under the roofline (measure.roofline.roofline); the report reads these keys."""

    available: bool
    reason: str | None
    dtype_key: str
    intensity: Number | None
    ridge: Number | None
    bound: Literal["compute", "memory"] | None
    floor_ms: Number | None
    speed_of_light: Number | None


@_Measured
class Energy(TypedDict, total=False):
    available: bool
    per_token_j: Number | None
    per_call_j: Number | None


@_Measured
class Reading(TypedDict, total=False):
    mean: Number | None
    min: Number | None
    max: Number | None


@_Measured
class PowerRecord(TypedDict, total=False):
    """NVML readings during timing (measure.nvml)."""

    available: bool
    energy: Energy | None
    power_w: Reading | None


@_Measured
class KernelRecord(TypedDict, total=False):
    name: str
    calls: Number | None
    total_ms: Number | None
    share: Number | None


@_Measured
class ProfileRecord(TypedDict, total=False):
    """The torch.profiler breakdown (measure.profile)."""

    available: bool
    calls: Number | None
    top: list[KernelRecord]
    kernels_per_call: Number | None
    launches_per_call: Number | None
    ops_per_call: Number | None
    host_ms_per_call: Number | None
    device_ms_per_call: Number | None
    launch_bound: bool | None
    trace: str | None


@_Measured
class CountersRecord(TypedDict, total=False):
    """Measured DRAM bytes (measure.counters)."""

    available: bool
    reason: str | None
    gbps: Number | None
    measured_over_model: Number | None
