"""The results file: schema ``ossbench.results/1``, atomic save, validated load, a DataFrame view.

Every timed sample is kept, so any statistic (or a later statistical test) can be recomputed.
"""

from __future__ import annotations

import gc
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ResultsError
from .records import (Ceilings, ComparePairRecord, CountersRecord, GateSettings, PeakRow, PowerRecord,
                      PredictedRecord, ProfileRecord, RooflineRecord)
from .text import printable

SCHEMA = "ossbench.results/1"
Status = Literal["ok", "failed", "oom", "skipped"]


class _Model(BaseModel):
    # Extra keys are kept, not rejected: later versions add fields within the same schema.
    model_config = ConfigDict(extra="allow", validate_assignment=True)


class Stats(_Model):
    """Statistics of the timed samples, in milliseconds."""

    n: int
    median: float
    mean: float
    stdev: float
    min: float
    max: float
    p10: float
    p90: float
    ci95_low: float  # distribution-free 95% confidence interval of the median
    ci95_high: float
    rel_ci: float  # (ci95_high - ci95_low) / 2 / median
    converged: bool  # rel_ci reached the target before the time budget ran out


class Derived(_Model):
    tokens_per_s: float | None = None
    tflops: float | None = None  # achieved, from the cost model's FLOPs
    gbps: float | None = None  # achieved, from the cost model's minimum bytes (a floor, not a measurement)
    busbw_gbps: float | None = None  # comm family: nccl-tests' bus bandwidth, cost_extra.bus_bytes / time


class Memory(_Model):
    # cuda: the caching allocator's peak; cpu_alloc: the case's tensors through torch's CPU allocator
    # (profiler memory events); rss: growth of the process's peak RSS (older files, or no profiler)
    kind: Literal["cuda", "cpu_alloc", "rss"]
    peak_bytes: int | None = None  # peak during the case (cuda: max_memory_allocated)
    persistent_bytes: int | None = None  # weights, caches, inputs held for the whole case
    reserved_bytes: int | None = None
    # Memory detail (docs/results.md): measured persistent level, the timed phase's own peak, and the KV cache.
    persistent_measured_bytes: int | None = None  # growth from the case's start to "workload built"
    timed_peak_bytes: int | None = None  # peak while timing, above the level just before timing
    transient_peak_bytes: int | None = None  # timed_peak_bytes less bench's cache-flush buffer
    allocated_bytes: int | None = None  # cuda: still allocated at the end of the case, above its start
    rss_growth_bytes: int | None = None  # cpu: RSS at the end of the case minus at its start
    rss_peak_bytes: int | None = None  # cpu: growth of the process's peak RSS over the case (warm-up included)
    kv_cache_model_bytes: float | None = None  # the cost model's KV-cache bytes (cost_extra)
    kv_cache_measured_bytes: float | None = None  # the workload's own measurement of its KV cache


class Numerics(_Model):
    max_abs_err: float
    max_rel_err: float
    tolerance: float
    reference: str
    ok: bool


class CaseResult(_Model):
    id: str
    family: str
    variant: str
    axes: dict[str, Any] = Field(default_factory=dict)  # this case's point in the sweep
    params: dict[str, Any] = Field(default_factory=dict)  # every effective parameter
    dtype: str
    # the data seed the workload was built with (weights, inputs, caches): `family.build(..., seed=seed)`
    # rebuilds the same tensors; derived from the id (`ossbench.workloads.case_seed`). Absent in older files.
    seed: int | None = None
    status: Status
    error: str | None = None
    samples_ms: list[float] = Field(default_factory=list)
    stats: Stats | None = None
    timing: dict[str, Any] = Field(default_factory=dict)  # Measurement.settings(): the BenchSpec used and its end
    flops: float | None = None
    bytes: float | None = None
    tokens: int | None = None
    cost_extra: dict[str, float] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)  # what the workload chose, e.g. the grouped-GEMM kernel
    derived: Derived = Field(default_factory=Derived)
    memory: Memory | None = None
    numerics: Numerics | None = None
    duration_s: float | None = None  # wall time spent on the case, set-up included
    predicted: PredictedRecord | None = None  # the run planner's time and peak memory for it (ossbench/plan.py)
    # Measurement depth (docs/results.md, docs/measure.md); absent or null when not measured.
    power: PowerRecord | None = None  # NVML readings during timing: power, energy per call/token, clocks, ...
    clocks: dict[str, Any] | None = None  # bench's per-batch SM clock and throttle record (strict_clocks)
    throttled: bool | None = None  # NVML saw power/thermal throttling while kept samples were taken
    roofline: RooflineRecord | None = None  # intensity, bound, floor time and fraction of the ceiling
    profile: ProfileRecord | None = None  # torch.profiler breakdown (--profile): top kernels, launches, trace
    counters: CountersRecord | None = None  # measured DRAM bytes (CUPTI / ncu), or why unavailable
    # Multi-rank runs (docs/distributed.md): the rank that recorded the case and its device ("cpu", "cuda:N")
    rank: int | None = None
    device: str | None = None
    phases_ms: dict[str, float] | None = None  # Workload.breakdown: e.g. moe-ep's route/dispatch/experts/combine


class SuiteInfo(_Model):
    name: str
    description: str = ""
    path: str
    sha256: str
    family: str
    preset: str
    # the suite profile that ran: "full" (the suite itself), "cpu" (its `cpu:` section, applied automatically
    # on CPU) or a named one from its `profiles:` (`run --suite-profile NAME`)
    profile: str = "full"
    compare: list[ComparePairRecord] = Field(default_factory=list)
    gate: GateSettings = Field(default_factory=dict)  # the suite's `gate:` thresholds (docs/gate.md)


class Environment(_Model):
    device_type: str
    device_name: str
    gpu_count: int = 0
    driver: str | None = None
    cuda: str | None = None
    torch: str | None = None
    triton: str | None = None
    python: str
    platform: str
    host: str
    cpu: str | None = None
    ossbench_version: str
    git_revision: str | None = None
    start_time: str
    end_time: str | None = None
    resumed_at: list[str] | None = None  # when `ossbench run --resume` continued the run (UTC, ISO 8601)
    l2_cache_bytes: int | None = None
    sm_count: int | None = None
    peak: PeakRow | None = None  # datasheet peak table row for this device, if known
    ceilings: Ceilings | None = None  # the roofline ceilings used (calibrated or datasheet, per value)
    nvml: dict[str, Any] | None = None  # {"available": bool, "device" or "reason"}
    measure: dict[str, Any] | None = None  # what was asked for: profile, ncu, strict_clocks
    isolated: bool | None = None  # each case ran in its own child process (docs/isolation.md)
    # what else the machine was doing when the run was planned: loadavg, cpu_count, threads (CPU runs),
    # gpu_other_processes (CUDA runs)
    load: dict[str, Any] | None = None
    # A run over several ranks (torchrun): how many, and each rank's host and device
    # ({"rank", "local_rank", "host", "device", "device_name"}), in rank order
    world_size: int | None = None
    devices: list[dict[str, Any]] | None = None


class RunOptions(_Model):
    """How the run was asked for: what `ossbench run --resume` re-plans from."""

    suite_file: str  # absolute path of the suite file
    device: str  # as resolved: cpu, cuda:N
    filter: str | None = None
    suite_profile: str | None = None  # --suite-profile NAME; None: the default for the device
    quick: bool = False
    profile: bool = False
    ncu: bool = False
    strict_clocks: bool = False
    isolate: bool | None = None  # --isolate / --no-isolate; None: the default for the device
    max_minutes: float | None = None  # --max-minutes: the run budget (a resumed run gets it afresh)


class RunResult(_Model):
    schema_: str = Field(SCHEMA, alias="schema")
    suite: SuiteInfo
    environment: Environment
    timing: dict[str, Any] = Field(default_factory=dict)  # the suite's Timing the run asked for (a BenchSpec)
    cases: list[CaseResult] = Field(default_factory=list)
    options: RunOptions | None = None  # absent in files written before `--resume` existed

    model_config = ConfigDict(extra="allow", populate_by_name=True, validate_assignment=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=1)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a crash mid-write never leaves a truncated results file."""
        return write_atomic(Path(path), self.to_json())

    def case(self, case_id: str) -> CaseResult:
        for c in self.cases:
            if c.id == case_id:
                return c
        raise KeyError(case_id)

    def to_dataframe(self):
        """One row per case: id, family, variant, status, the sweep axes, params, stats, cost and derived,
        peak memory, duration and the run planner's predicted time and peak."""
        import pandas as pd

        rows = []
        for c in self.cases:
            row: dict[str, Any] = {"id": c.id, "family": c.family, "variant": c.variant,
                                   "status": c.status, "dtype": c.dtype, "seed": c.seed, "error": c.error}
            row.update({f"param.{k}": v for k, v in c.params.items()})
            row.update(c.axes)
            stats = c.stats.model_dump() if c.stats else {}
            row.update({f"{k}_ms" if k not in ("n", "rel_ci", "converged") else k: v
                        for k, v in stats.items()})
            row.update(flops=c.flops, bytes=c.bytes, tokens=c.tokens, **c.derived.model_dump())
            row["peak_bytes"] = c.memory.peak_bytes if c.memory else None
            row["duration_s"] = c.duration_s
            predicted = c.predicted or {}  # the run planner's figures beside the actual ones (docs/run.md)
            row["predicted_time_s"], row["predicted_peak_bytes"] = predicted.get("time_s"), predicted.get("peak_bytes")
            rows.append(row)
        df = pd.DataFrame(rows)
        # A column of integers with a gap (a failed case has no params; decode has no seq_len) would become
        # float64 (seq_len 256.0 in a CSV): pandas' nullable Int64 keeps them integers, the gap missing.
        for col in df.columns:
            values = [row[col] for row in rows if row.get(col) is not None]
            if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                df[col] = pd.array([row.get(col) for row in rows], dtype="Int64")
        return df


def _from_journal(text: str, path: str) -> dict:
    """The run a journal holds: its header line with the cases of the ``{"case": ...}`` lines after it."""
    raw = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    try:  # the last line may be cut short by the crash that left the journal behind
        json.loads(raw[-1][1]) if raw else None
    except json.JSONDecodeError:
        raw = raw[:-1]
    lines = []
    for n, line in raw:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ResultsError(f"line {n}: not valid JSON (column {e.colno}: {e.msg})", path=path) from None
        if not isinstance(obj, dict):
            raise ResultsError(f"line {n}: a journal line must be a JSON object, got {type(obj).__name__}",
                               path=path)
        if n != raw[0][0] and "case" in obj and not isinstance(obj["case"], dict):
            raise ResultsError(f"line {n}: 'case' must be a JSON object, got {type(obj['case']).__name__}",
                               path=path)
        lines.append(obj)
    if not lines or "journal" not in lines[0]:
        return {}
    head = {k: v for k, v in lines[0].items() if k != "journal"}
    head["cases"] = [line["case"] for line in lines[1:] if "case" in line]
    return head


def write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; results are meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def gc_paused():
    """Pause the cyclic garbage collector while building many objects that all stay alive (a results file's
    cases, a report's rows): each collection would rescan every one of them, which made loading and
    rendering a 20k-case file several times slower. Reference counting still frees what is dropped."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_results(path: str | os.PathLike) -> RunResult:
    """Load and validate a results file; a missing, corrupt or foreign file raises ResultsError.

    A run's journal (``journal.jsonl``, left behind when a run was interrupted) loads too: it holds the
    run's header and every case that finished. Beyond the schema, every case id must be unique and every
    timed sample a finite, non-negative number, not all of a case's samples zero (see `check_cases`).
    """
    with gc_paused():
        return _load(Path(path))


def _load(p: Path) -> RunResult:
    try:
        text = p.read_text(encoding="utf-8")
        data = _from_journal(text, str(p)) if p.suffix == ".jsonl" else json.loads(text)
    except FileNotFoundError:
        raise ResultsError("no such file", path=str(p)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"cannot read: {e}", path=str(p)) from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", path=str(p)) from None
    except RecursionError:  # json's decoder recurses once per nesting level
        raise ResultsError("JSON nested too deeply to be a results file", path=str(p)) from None
    try:
        where = _lone_surrogate(data) if _SURROGATE_ESCAPE.search(text) else None
    except RecursionError:
        raise ResultsError("JSON nested too deeply to be a results file", path=str(p)) from None
    if where is not None:
        # Legal as a JSON escape, but no UTF-8 file (report, export, JUnit) can hold it.
        raise ResultsError(f"{printable(where)} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
                           "escape), which is not text", path=str(p))
    if not isinstance(data, dict) or "schema" not in data:
        raise ResultsError(f"not an ossbench results file (no 'schema' field; expected {SCHEMA!r})", path=str(p))
    if data["schema"] != SCHEMA:
        raise ResultsError(f"unsupported schema {data['schema']!r} (this ossbench reads {SCHEMA!r})", path=str(p))
    try:
        run = RunResult.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        raise ResultsError(f"invalid results file at {_where(first['loc'], data)}: {first['msg']} "
                           f"({e.error_count()} error(s))", path=str(p)) from None
    except RecursionError:
        raise ResultsError("JSON nested too deeply to be a results file", path=str(p)) from None
    check_cases(run, str(p))
    return run


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a cheap first look; `_lone_surrogate` decides


def _lone_surrogate(obj: Any, where: str = "") -> str | None:
    """The dotted path of the first string (key or value) holding a lone surrogate, else None."""
    def bad(text: str) -> bool:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    if isinstance(obj, str):
        return (where or "the file") if bad(obj) else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        path = f"{where}.{key}" if where else str(key)
        if isinstance(key, str) and bad(key):
            return path
        found = _lone_surrogate(value, path)
        if found is not None:
            return found
    return None


def _where(loc: tuple, data: dict) -> str:
    """A validation error's location, naming the case by id: "cases[3] (id 'a/b').samples_ms.2"."""
    dotted = ".".join(str(x) for x in loc)
    cases = data.get("cases")
    if len(loc) >= 2 and loc[0] == "cases" and isinstance(loc[1], int) and isinstance(cases, list):
        case = cases[loc[1]] if loc[1] < len(cases) else None
        case_id = case.get("id") if isinstance(case, dict) else None
        if isinstance(case_id, str):
            rest = ".".join(str(x) for x in loc[2:])
            return f"case {case_id!r} (cases.{loc[1]})" + (f" field {rest}" if rest else "")
    return dotted


def check_cases(run: RunResult, path: str | None = None) -> None:
    """What the schema cannot say: unique case ids, and timed samples that are real durations.

    A NaN sample makes a rank test's p-value NaN (so any slowdown reads "unchanged"), an infinite or
    negative one is no duration, and all-zero samples mean the timer measured nothing; each is refused
    (ResultsError naming the case and field) rather than gated, compared or plotted.
    """
    seen: set[str] = set()
    for k, c in enumerate(run.cases):
        if c.id in seen:
            raise ResultsError(f"case id {c.id!r} appears more than once (cases.{k} repeats it)", path=path)
        seen.add(c.id)
        if not c.samples_ms:
            continue
        x = np.asarray(c.samples_ms, dtype=float)
        bad = np.flatnonzero(~np.isfinite(x) | (x < 0))
        if bad.size:
            i = int(bad[0])
            raise ResultsError(f"case {c.id!r} field samples_ms.{i}: {float(x[i])!r} is not a duration (samples must be "
                               f"finite and >= 0; {bad.size} bad sample(s))", path=path)
        if not x.any():
            raise ResultsError(f"case {c.id!r} field samples_ms: all {x.size} samples are zero (the timer "
                               "measured nothing)", path=path)
