"""Measurement beyond timing for one case: memory detail, roofline, profiler breakdown, DRAM counters.

Each step records why it is unavailable instead of failing the case; `replay_case` is the `--ncu` child.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .failures import describe
from .results import CaseResult
from .suite import Case

if TYPE_CHECKING:
    from .runner import MeasureOptions

TRACES = "traces"  # under the output directory: one gzipped Chrome trace per profiled case
NCU_CALLS = 3  # calls profiled under Nsight Compute (it replays every kernel, so a few suffice)


def memory_detail(watch, workload, m) -> dict:
    """The case's memory record from its MemoryWatch; on CPU after one more call of the timed function,
    counted through torch's CPU allocator (ossbench.measure.memory)."""
    from .measure.memory import cpu_call_allocations

    read = watch.read(cpu_call_allocations(workload.fn) if watch.device_type != "cuda" else None)
    mem = {**read, "persistent_bytes": workload.persistent_bytes,
           "kv_cache_model_bytes": workload.cost.extra.get("kv_cache_bytes"),
           "kv_cache_measured_bytes": getattr(workload, "measured", {}).get("kv_cache_bytes")}
    if mem.get("timed_peak_bytes") is not None and mem.get("transient_peak_bytes") is None:
        # On CUDA bench allocates its cold-cache flush buffer inside the timed phase; it is not the workload's.
        flush = m.flush_bytes if read["kind"] == "cuda" and m.flush_bytes else 0
        mem["transient_peak_bytes"] = max(0, mem["timed_peak_bytes"] - flush)
    return mem


def roofline_record(record: CaseResult, device: str, ceilings: dict | None) -> dict:
    import torch

    from .measure.roofline import dtype_key, roofline

    tf32 = device.startswith("cuda") and torch.backends.cuda.matmul.allow_tf32
    return roofline(record.flops, record.bytes, record.stats.median if record.stats else None,
                    dtype_key(record.dtype, tf32=tf32), ceilings)


def profile_record(case: Case, workload, device: str, m, measure: MeasureOptions) -> dict:
    """torch.profiler breakdown after timing; a profiler failure is recorded, never fails the case."""
    from .measure.profile import profile_calls, trace_file_name
    from .measure.timer import cache_flusher

    trace = Path(TRACES) / trace_file_name(case.id)
    try:
        flush = cache_flusher(device, m.flush_bytes) if m.cache == "cold" else None
        rec = profile_calls(workload.fn, device, flush=flush,
                            trace_path=measure.out_dir / trace if measure.out_dir else None)
    except Exception as e:  # noqa: BLE001
        return {"available": False, "reason": describe(e)}
    if rec.get("trace"):
        rec["trace"] = trace.as_posix()  # relative to the results file's directory
    return rec


def counters_in_process(workload, device: str, record: CaseResult, measure: MeasureOptions) -> dict:
    """DRAM bytes through CUPTI when this torch supports it; else why not (the ncu pass may follow)."""
    from .measure.counters import cupti_dram_bytes, cupti_supported, dram_record, unavailable

    if not device.startswith("cuda"):
        return unavailable("CPU run: no DRAM hardware counters")
    if not (measure.profile or measure.ncu):
        return unavailable("not requested: `ossbench run --profile` tries CUPTI, `--ncu` Nsight Compute")
    try:
        ok, why = cupti_supported()
    except Exception as e:  # noqa: BLE001 - a broken probe loses the counters, not the case
        ok, why = False, describe(e)
    if ok:
        try:
            raw = cupti_dram_bytes(workload.fn)
        except Exception as e:  # noqa: BLE001
            raw = {"available": False, "reason": describe(e)}
        if "read" in raw:
            return dram_record(raw["read"], raw["write"], raw["calls"], "cupti",
                               median_ms=record.stats.median, model_bytes=record.bytes)
        why = raw["reason"]
    hint = "" if measure.ncu else "; `--ncu` measures them with Nsight Compute"
    return unavailable(f"CUPTI: {why}{hint}")


def counters_ncu(case: Case, device: str, record: CaseResult, measure: MeasureOptions) -> dict:
    import sys

    from .measure.counters import child_env, run_ncu, unavailable

    if measure.suite_path is None:
        return unavailable("--ncu needs the suite file to re-run the case")
    code = (f"from ossbench.depth import replay_case; replay_case({measure.suite_path!r}, {case.id!r}, "
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
    from .workloads import case_seed, get_family

    case = next(c for c in load_suite(suite_path).cases(suite_profile) if c.id == case_id)  # type: ignore[arg-type]
    seed = case_seed(case.id)  # the same data as the case's own run (runner.run_case)
    torch.manual_seed(seed)
    torch.cuda.set_device(torch.device(device))
    family = get_family(case.family)
    workload = family.build(family.validate(case.params_dict), torch.device(device),
                            getattr(torch, case.dtype), seed=seed)
    for _ in range(2):  # compilation and autotuning stay outside the profiled range
        workload.fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for _ in range(calls):
        workload.fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
