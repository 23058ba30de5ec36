"""Run a suite's cases: build each workload, check its numerics, time it, record the result.

One failing case (an exception, an out-of-memory, a numerics mismatch) is recorded and the run goes on.
Each finished case is appended to a journal at once, so a crash loses at most the case in flight;
``results.json`` is written atomically at the end.
"""

from __future__ import annotations

import gc
import json
import re
import time
import traceback
import zlib
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .errors import SkipCase, UserError
from .isolate import IsolatedRunner, default_isolation
from .results import SCHEMA, CaseResult, Environment, RunResult, SuiteInfo, write_atomic
from .suite import Case, Suite, Timing

# `--quick`: a smoke run, not a measurement to quote (each case's CI target is loose and its budget short).
QUICK_TIMING = dict(warmup_s=0.02, min_samples=5, min_time_s=0.05, max_time_s=1.0, target_rel_ci=0.05)
JOURNAL = "journal.jsonl"
TRACES = "traces"  # under the output directory: one gzipped Chrome trace per profiled case
NCU_CALLS = 3  # calls profiled under Nsight Compute (it replays every kernel, so a few suffice)


def resolve_device(spec: str) -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; checks that an explicit CUDA device exists."""
    import torch

    if spec == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not m:
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N (got {spec!r})")
    if not torch.cuda.is_available():
        raise UserError(f"--device {spec}: no CUDA device is available to torch "
                        f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    return f"cuda:{index}"


def default_out_dir(suite: Suite, device_name: str, device: str) -> Path:
    label = "cpu" if device == "cpu" else re.sub(r"[^a-z0-9]+", "-", device_name.lower().replace("nvidia", ""))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", suite.name)
    return Path("reports") / f"{name}-{label.strip('-')}-{stamp}"


@dataclass
class MeasureOptions:
    """Measurement beyond timing (docs/measure.md). NVML readings and the roofline are always on where
    available; the profiler, Nsight Compute and strict clocks are asked for."""

    profile: bool = False  # torch.profiler breakdown and a Chrome trace per case (tries CUPTI DRAM counters)
    ncu: bool = False  # measure DRAM bytes with Nsight Compute when CUPTI gives none
    strict_clocks: bool = False  # bench discards and re-takes samples taken under throttling
    ceilings: dict | None = None  # roofline ceilings (environment.ceilings)
    out_dir: Path | None = None  # traces go to out_dir/traces
    suite_path: str | None = None  # for the Nsight Compute child process
    suite_profile: str = "full"
    nvml_device: Any = None  # an open ossbench.measure.nvml.NvmlDevice while the run lasts


@dataclass
class RunPlan:
    """Everything decided before the first case runs."""

    suite: Suite
    device: str
    profile: str  # "full" or "cpu"
    cases: list[Case]
    timing: Timing
    out_dir: Path
    environment: dict  # captured once while planning; start_time is reset when the run starts
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    isolate: bool = False  # each case in a child process with a timeout (ossbench/isolate.py)


def plan_run(suite: Suite, *, device: str = "auto", out_dir: str | Path | None = None,
             filter_text: str | None = None, quick: bool = False, profile: bool = False, ncu: bool = False,
             strict_clocks: bool = False, isolate: bool | None = None) -> RunPlan:
    from .env import capture
    from .suite import filter_cases

    dev = resolve_device(device)
    suite_profile = suite.profile_for("cpu" if dev == "cpu" else "cuda")
    cases = filter_cases(suite.cases(suite_profile), filter_text)
    if not cases:
        raise UserError(f"--filter {filter_text!r} matches none of the suite's cases")
    timing = suite.timing(suite_profile)
    if quick:
        timing = timing.model_copy(update=QUICK_TIMING)
    env = capture(dev)
    out = Path(out_dir) if out_dir else default_out_dir(suite, env["device_name"], dev)
    measure = MeasureOptions(profile=profile or suite.spec.profile, ncu=ncu, strict_clocks=strict_clocks,
                             out_dir=out, suite_path=suite.path, suite_profile=suite_profile)
    env.update(_measure_environment(dev, env, measure))
    measure.ceilings = env["ceilings"]
    isolate = default_isolation(dev, len(cases)) if isolate is None else isolate
    return RunPlan(suite=suite, device=dev, profile=suite_profile, cases=cases, timing=timing, out_dir=out,
                   environment=env, measure=measure, isolate=isolate)


def _measure_environment(device: str, env: dict, measure: MeasureOptions) -> dict:
    """NVML's availability, the roofline ceilings (calibrated or datasheet) and the depth asked for."""
    from .measure import nvml
    from .measure.calibrate import load_calibration
    from .measure.roofline import resolve_ceilings

    calibration = load_calibration(env["device_name"], env["device_type"])
    return {"nvml": nvml.status(device), "ceilings": resolve_ceilings(env.get("peak"), calibration),
            "measure": {"profile": measure.profile, "ncu": measure.ncu, "strict_clocks": measure.strict_clocks}}


def run_plan(plan: RunPlan, on_case: Callable[[Case, CaseResult | None], None] | None = None) -> RunResult:
    """Run every case of the plan. `on_case(case, None)` before a case starts, `(case, result)` after."""
    suite = plan.suite
    run = RunResult(
        schema=SCHEMA,
        suite=SuiteInfo(name=suite.name, description=suite.spec.description, path=suite.path,
                        sha256=suite.sha256, family=suite.spec.family, preset=suite.spec.preset,
                        profile=plan.profile, compare=[p.model_dump() for p in suite.spec.compare],
                        gate=suite.spec.gate.model_dump(exclude_defaults=True)),
        environment=Environment.model_validate({**plan.environment, "start_time": _now(), "isolated": plan.isolate}),
        timing=plan.timing.model_dump(),
    )
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    journal = plan.out_dir / JOURNAL
    measure = replace(plan.measure, nvml_device=_open_nvml(plan))
    try:
        isolated = IsolatedRunner(run_case, plan.device, plan.timing, measure) if plan.isolate else nullcontext()
        with journal.open("w", encoding="utf-8") as j, isolated:
            _journal_line(j, {"journal": SCHEMA, **json.loads(run.to_json())})
            lost: str | None = None  # set once the CUDA context is unusable: later cases cannot run
            for case in plan.cases:
                if on_case:
                    on_case(case, None)
                if lost:
                    result = CaseResult(id=case.id, family=case.family, variant=case.variant, axes=case.axes_dict,
                                        params=case.params_dict, dtype=case.dtype, status="failed", error=lost)
                elif plan.isolate:  # a lost context dies with its child: the next case gets a fresh one
                    result = isolated.run(case)
                else:
                    result = run_case(case, plan.device, plan.timing, measure)
                    if result.status == "failed" and _context_lost(result.error):
                        lost = (f"not run: the CUDA context was lost in {case.id} ({result.error}); "
                                f"every later kernel would fail too. Rerun with --filter to resume")
                run.cases.append(result)
                _journal_line(j, {"case": json.loads(result.model_dump_json())})
                if on_case:
                    on_case(case, result)
    finally:
        if measure.nvml_device is not None:
            measure.nvml_device.close()
    run.environment.end_time = _now()
    run.save(plan.out_dir / "results.json")
    journal.unlink()  # results.json now holds everything the journal did
    return run


def _open_nvml(plan: RunPlan):
    if not (plan.environment.get("nvml") or {}).get("available"):
        return None  # the reason is in environment.nvml; the CLI has said it once
    from .measure.nvml import NvmlUnavailable, open_device

    try:
        return open_device(int(plan.device.partition(":")[2] or 0))
    except NvmlUnavailable:
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _journal_line(f, obj: dict) -> None:
    f.write(json.dumps(obj) + "\n")
    f.flush()


def run_case(case: Case, device: str, timing: Timing, measure: MeasureOptions | None = None) -> CaseResult:
    """Build, check, time and record one case. Never raises for a failure of the case itself."""
    import torch

    from .measure.memory import MemoryWatch
    from .measure.nvml import NvmlSampler
    from .measure.timer import bench, cache_flusher
    from .workloads import get_family

    measure = measure or MeasureOptions()

    family = get_family(case.family)
    record = CaseResult(id=case.id, family=case.family, variant=case.variant, axes=case.axes_dict,
                        params=case.params_dict, dtype=case.dtype, status="ok")
    started = time.perf_counter()
    torch.manual_seed(zlib.crc32(case.id.encode()))  # fresh random data per case, reproducible per id
    watch = MemoryWatch("cuda" if device.startswith("cuda") else "cpu")
    workload = None
    try:
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        watch.start()
        params = family.params_model.model_validate(case.params_dict)
        workload = family.build(params, torch.device(device), getattr(torch, case.dtype))
        watch.mark_built()
        record.flops, record.bytes, record.tokens = (workload.cost.flops, workload.cost.bytes,
                                                     workload.cost.tokens)
        record.cost_extra = dict(workload.cost.extra)
        record.info = dict(workload.info)
        check = workload.check()
        record.numerics = {"max_abs_err": check.max_abs_err, "max_rel_err": check.max_rel_err,
                           "tolerance": check.tolerance, "reference": check.reference, "ok": check.ok}
        if not check.ok:
            raise _NumericsMismatch(f"output differs from the reference ({check.reference}): max relative "
                                    f"error {check.max_rel_err:.3g} > tolerance {check.tolerance:.3g}")
        if timing.cache == "cold" and device == "cpu":
            cache_flusher(device)  # allocate bench's process-wide flush buffer now, outside the timed peak
        watch.mark_timing()
        sampler = NvmlSampler(measure.nvml_device) if measure.nvml_device is not None else None
        with sampler or nullcontext():
            m = bench(workload.fn, device=device, monitor=sampler, strict_clocks=measure.strict_clocks,
                      **timing.model_dump(exclude={"case_timeout_s"}))  # the runner's limit, not bench's
        record.samples_ms = list(m.samples_ms)
        record.stats = m.stats()
        record.timing = m.settings()
        record.memory = _memory_detail(watch.read(), workload, m)
        if m.clock_batches:
            record.clocks, record.throttled = m.clock_report(), m.throttled
        if sampler is not None:
            record.power = sampler.summary(tokens_per_call=record.tokens)
        _derive(record)
        record.roofline = _roofline(record, device, measure.ceilings)
        if measure.profile:
            record.profile = _profile(case, workload, device, m, measure)
        record.counters = _counters_in_process(workload, device, record, measure)
    except SkipCase as e:
        record.status, record.error = "skipped", str(e)
    except Exception as e:  # noqa: BLE001 - one case's failure must not stop the run
        record.status = "oom" if _is_oom(e) else "failed"
        record.error = _describe(e)
    finally:
        workload = None
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    if (measure.ncu and device.startswith("cuda") and record.status == "ok" and record.counters
            and not record.counters.get("available")):
        record.counters = _counters_ncu(case, device, record, measure)  # the workload is freed by now
    record.duration_s = time.perf_counter() - started
    return record


# ---------------------------------------------------------------------------------- measurement depth


def _memory_detail(read: dict, workload, m) -> dict:
    mem = {**read, "persistent_bytes": workload.persistent_bytes,
           "kv_cache_model_bytes": workload.cost.extra.get("kv_cache_bytes"),
           "kv_cache_measured_bytes": getattr(workload, "measured", {}).get("kv_cache_bytes")}
    if mem.get("timed_peak_bytes") is not None:
        # On CUDA bench allocates its cold-cache flush buffer inside the timed phase; it is not the workload's.
        flush = m.flush_bytes if read["kind"] == "cuda" and m.flush_bytes else 0
        mem["transient_peak_bytes"] = max(0, mem["timed_peak_bytes"] - flush)
    return mem


def _roofline(record: CaseResult, device: str, ceilings: dict | None) -> dict:
    import torch

    from .measure.roofline import dtype_key, roofline

    tf32 = device.startswith("cuda") and torch.backends.cuda.matmul.allow_tf32
    return roofline(record.flops, record.bytes, record.stats.median if record.stats else None,
                    dtype_key(record.dtype, tf32=tf32), ceilings)


def _profile(case: Case, workload, device: str, m, measure: MeasureOptions) -> dict:
    """torch.profiler breakdown after timing; a profiler failure is recorded, never fails the case."""
    from .measure.profile import profile_calls, trace_file_name
    from .measure.timer import cache_flusher

    trace = Path(TRACES) / trace_file_name(case.id)
    try:
        flush = cache_flusher(device, m.flush_bytes) if m.cache == "cold" else None
        rec = profile_calls(workload.fn, device, flush=flush,
                            trace_path=measure.out_dir / trace if measure.out_dir else None)
    except Exception as e:  # noqa: BLE001
        return {"available": False, "reason": _describe(e)}
    if rec.get("trace"):
        rec["trace"] = trace.as_posix()  # relative to the results file's directory
    return rec


def _counters_in_process(workload, device: str, record: CaseResult, measure: MeasureOptions) -> dict:
    """DRAM bytes through CUPTI when this torch supports it; else why not (the ncu pass may follow)."""
    from .measure.counters import cupti_dram_bytes, cupti_supported, dram_record, unavailable

    if not device.startswith("cuda"):
        return unavailable("CPU run: no DRAM hardware counters")
    if not (measure.profile or measure.ncu):
        return unavailable("not requested: `ossbench run --profile` tries CUPTI, `--ncu` Nsight Compute")
    try:
        ok, why = cupti_supported()
    except Exception as e:  # noqa: BLE001 - a broken probe loses the counters, not the case
        ok, why = False, _describe(e)
    if ok:
        try:
            raw = cupti_dram_bytes(workload.fn)
        except Exception as e:  # noqa: BLE001
            raw = {"available": False, "reason": _describe(e)}
        if "read" in raw:
            return dram_record(raw["read"], raw["write"], raw["calls"], "cupti",
                               median_ms=record.stats.median, model_bytes=record.bytes)
        why = raw["reason"]
    hint = "" if measure.ncu else "; `--ncu` measures them with Nsight Compute"
    return unavailable(f"CUPTI: {why}{hint}")


def _counters_ncu(case: Case, device: str, record: CaseResult, measure: MeasureOptions) -> dict:
    import sys

    from .measure.counters import child_env, run_ncu, unavailable

    if measure.suite_path is None:
        return unavailable("--ncu needs the suite file to re-run the case")
    code = (f"from ossbench.runner import replay_case; replay_case({measure.suite_path!r}, {case.id!r}, "
            f"{measure.suite_profile!r}, {device!r}, {NCU_CALLS})")
    rec = run_ncu([sys.executable, "-c", code], NCU_CALLS, env=child_env(), median_ms=record.stats.median,
                  model_bytes=record.bytes)
    if not rec.get("available"):
        rec["reason"] = f"{record.counters['reason']}; ncu: {rec['reason']}"
    return rec


def replay_case(suite_path: str, case_id: str, suite_profile: str, device: str, calls: int) -> None:
    """The `--ncu` child process: rebuild one case, warm it up, make `calls` calls between
    cudaProfilerStart and cudaProfilerStop (ncu runs with --profile-from-start off)."""
    import torch

    from .suite import load_suite
    from .workloads import get_family

    case = next(c for c in load_suite(suite_path).cases(suite_profile) if c.id == case_id)  # type: ignore[arg-type]
    torch.manual_seed(zlib.crc32(case.id.encode()))
    torch.cuda.set_device(torch.device(device))
    family = get_family(case.family)
    workload = family.build(family.params_model.model_validate(case.params_dict), torch.device(device),
                            getattr(torch, case.dtype))
    for _ in range(2):  # compilation and autotuning stay outside the profiled range
        workload.fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for _ in range(calls):
        workload.fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


# CUDA errors after which the process's context is unusable (every later launch fails with the same error)
_FATAL_CUDA = ("illegal memory access", "device-side assert", "unspecified launch failure",
               "misaligned address", "illegal instruction")


def _context_lost(error: str | None) -> bool:
    return bool(error) and any(text in error.lower() for text in _FATAL_CUDA)


class _NumericsMismatch(Exception):
    pass


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(e).lower()


def _describe(e: BaseException) -> str:
    if isinstance(e, _NumericsMismatch):
        return str(e)
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(e).__name__}: {e}{where}"


def _derive(record: CaseResult) -> None:
    if not record.stats or record.stats.median <= 0:
        return
    seconds = record.stats.median / 1e3
    d = record.derived
    d.tokens_per_s = record.tokens / seconds if record.tokens else None
    d.tflops = record.flops / seconds / 1e12 if record.flops else None
    d.gbps = record.bytes / seconds / 1e9 if record.bytes else None
