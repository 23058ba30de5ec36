"""Run a suite's cases: build each workload, check its numerics, time it, record the result.

One failing case (an exception, an out-of-memory, a numerics mismatch) is recorded and the run goes on.
Each finished case is appended to a journal at once (ossbench.journal), so a crash loses at most the case
in flight and `ossbench run --resume` (ossbench.resume) continues from it; ``results.json`` is written
atomically at the end. SIGINT/SIGTERM stop the run between cases (ossbench.stopping).
"""

from __future__ import annotations

import gc
import json
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .depth import counters_in_process, counters_ncu, memory_detail, profile_record, roofline_record
from .errors import SkipCase, UserError
from .failures import NumericsMismatch, context_lost, describe, is_oom
from .hardware import Device, resolve_device  # resolve_device: re-exported for the CLI and Python callers
from .journal import JOURNAL, Journal
from .outdir import OutputError, claim_out_dir
from .plan import BUDGET, Budget, Prediction, free_memory_bytes, predict_cases, run_order
from .results import SCHEMA, CaseResult, Environment, RunOptions, RunResult, SuiteInfo
from .stopping import INTERRUPTED, StopRequest
from .isolate import IsolatedRunner, default_isolation
from .suite import Case, Suite, Timing

if TYPE_CHECKING:
    from .distributed import Shard
    from .resume import Resumed

NOT_RUN = "not run:"  # how the error of a case left unrun after a lost CUDA context begins


def default_out_dir(suite: Suite, device: Device) -> Path:
    label = "cpu" if not device.is_cuda else re.sub(r"[^a-z0-9]+", "-", device.name.lower().replace("nvidia", ""))
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
    device: Device  # resolved once, passed to every case, NVML and the environment
    profile: str  # the suite profile: "full", "cpu" or a named one (Suite.profile_for)
    cases: list[Case]
    timing: Timing
    out_dir: Path
    environment: dict  # captured once while planning; start_time is reset when the run starts
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    options: RunOptions | None = None  # how it was asked for, recorded for `--resume`
    isolate: bool = False  # each case in a child process with a timeout (ossbench/isolate.py)
    # ossbench/plan.py: each case's predicted time and peak memory (a case predicted not to fit in free_bytes
    # is skipped with that reason), and the run budget in minutes (None: no budget)
    predictions: dict[str, Prediction] = field(default_factory=dict)
    free_bytes: int | None = None
    max_minutes: float | None = None


def plan_run(suite: Suite, *, device: str | Device = "auto", out_dir: str | Path | None = None,
             filter_text: str | None = None, quick: bool = False, profile: bool = False, ncu: bool = False,
             strict_clocks: bool = False, isolate: bool | None = None, max_minutes: float | None = None,
             suite_profile: str | None = None) -> RunPlan:
    """Decide everything before the first case: device, suite profile (`suite_profile`, else the device's
    default: "cpu" on a CPU when the suite has one), cases, timing, output folder, environment."""
    from .env import capture
    from .suite import filter_cases

    dev = resolve_device(device)
    asked = suite_profile
    suite_profile = suite.profile_for(dev.type, suite_profile)
    cases = filter_cases(suite.cases(suite_profile), filter_text)
    if not cases:
        raise UserError(f"--filter {filter_text!r} matches none of the suite's cases")
    timing = suite.timing(suite_profile)
    if quick:  # a smoke run, not a measurement to quote (BenchSpec.quick)
        timing = timing.quick()
    env = capture(dev)
    out = Path(out_dir) if out_dir else default_out_dir(suite, dev)
    measure = MeasureOptions(profile=profile or suite.spec.profile, ncu=ncu, strict_clocks=strict_clocks,
                             out_dir=out, suite_path=suite.path, suite_profile=suite_profile)
    env.update(_measure_environment(dev, env, measure))
    measure.ceilings = env["ceilings"]
    options = RunOptions(suite_file=str(Path(suite.path).resolve()), device=str(dev), filter=filter_text,
                         suite_profile=asked, quick=quick, profile=profile, ncu=ncu, strict_clocks=strict_clocks,
                         isolate=isolate, max_minutes=max_minutes)
    isolate = default_isolation(dev, len(cases)) if isolate is None else isolate
    free = free_memory_bytes(dev)
    predictions = predict_cases(cases, timing, env["ceilings"], dev, l2_bytes=env.get("l2_cache_bytes"),
                                free_bytes=free)
    return RunPlan(suite=suite, device=dev, profile=suite_profile, cases=cases, timing=timing, out_dir=out,
                   environment=env, measure=measure, options=options, isolate=isolate, predictions=predictions,
                   free_bytes=free, max_minutes=max_minutes)


def _measure_environment(device: Device, env: dict, measure: MeasureOptions) -> dict:
    """NVML's availability, the roofline ceilings (calibrated or datasheet), the machine's load and the depth
    asked for."""
    import torch

    from .measure import nvml
    from .measure.calibrate import load_calibration
    from .measure.calibration_checks import machine_load
    from .measure.roofline import resolve_ceilings

    calibration = load_calibration(env["device_name"], env["device_type"])
    load = machine_load(device)
    if not device.is_cuda:
        load["threads"] = torch.get_num_threads()
    return {"nvml": nvml.status(device), "ceilings": resolve_ceilings(env.get("peak"), calibration), "load": load,
            "measure": {"profile": measure.profile, "ncu": measure.ncu, "strict_clocks": measure.strict_clocks}}


def run_plan(plan: RunPlan, on_case: Callable[[Case, CaseResult | None], None] | None = None, *,
             stop: StopRequest | None = None, resume: Resumed | None = None, shard: Shard | None = None) -> RunResult:
    """Run every case of the plan. `on_case(case, None)` before a case starts, `(case, result)` after.

    `stop`: once it is requested, the cases not yet started are recorded as skipped ("interrupted ...").
    `resume`: a run being continued (ossbench.resume): its finished cases are kept as recorded, not rerun.
    Cases run in `plan.run_order` (a point of every variant first); a case predicted not to fit in free
    memory is skipped with that reason, and once `plan.max_minutes` would be passed the rest are skipped
    ("run budget ..."; not journaled, so `--resume` runs them). The output folder is checked and locked
    first (ossbench.outdir); results.json is written in plan (suite) order.
    `shard`: this rank's part of a multi-rank run (ossbench.distributed): it hands out the cases this rank
    runs (in the run order), hears of each result, and on rank 0 gathers every rank's into the results.
    """
    kept = resume.kept if resume else {}
    with claim_out_dir(plan.out_dir):
        run = _new_run(plan, resume)
        header = json.loads(run.to_json())
        del header["cases"]
        measure = replace(plan.measure, nvml_device=_open_nvml(plan))
        unrun = 0  # cases recorded without running (interrupted, CUDA context lost): the journal stays for them
        try:
            isolated = IsolatedRunner(run_case, plan.device, plan.timing, measure) if plan.isolate else nullcontext()
            with Journal(plan.out_dir / JOURNAL, header,
                         [_record(kept[c.id]) for c in plan.cases if c.id in kept]) as journal, isolated:
                lost: str | None = None  # set once the CUDA context is unusable: later cases cannot run
                budget = Budget(plan.max_minutes) if plan.max_minutes is not None else None
                done: dict[str, CaseResult] = {}
                order = run_order(plan.cases)
                for case in (shard.cases(order) if shard else order):
                    if case.id in kept:
                        done[case.id] = kept[case.id]
                        if shard:
                            shard.publish(kept[case.id])  # rank 0 gathers it with the rest
                        continue
                    if on_case:
                        on_case(case, None)
                    predicted = plan.predictions.get(case.id)
                    not_started = _not_started(lost, stop, predicted, budget)
                    if shard and shard.collective and not shard.agree(not_started is None) and not not_started:
                        # every rank runs a collective case or none does: one rank alone would wait in it
                        not_started = ("skipped", f"{NOT_RUN} another rank did not start this collective case",
                                       False)
                    journaled = True  # a case recorded without running is not: `--resume` runs it
                    if not_started:
                        status, error, journaled = not_started
                        result = _unrun(case, status, error)
                    elif plan.isolate:  # a lost context dies with its child: the next case gets a fresh one
                        result = isolated.run(case)
                    else:
                        result = run_case(case, plan.device, plan.timing, measure)
                        if result.status == "failed" and context_lost(result.error):
                            lost = (f"{NOT_RUN} the CUDA context was lost in {case.id} ({result.error}); "
                                    f"every later kernel would fail too. `ossbench run --resume "
                                    f"{plan.out_dir}` runs them in a fresh process")
                    if predicted is not None:
                        result.predicted = predicted.record()
                    if journaled:
                        journal.append_case(_record(result))
                    else:
                        unrun += 1
                    if shard:
                        shard.publish(result)
                        if lost:
                            shard.leave()  # the other ranks take the rest
                    done[case.id] = result
                    if on_case:
                        on_case(case, result)
                if shard:
                    run.cases = shard.gather(list(done.values()), plan.cases)
                    for r in run.cases:  # rank 0: the other ranks' cases, so that `--resume` keeps them too
                        if r.id not in done and not shard.collective:
                            if _journaled(r):
                                journal.append_case(_record(r))
                            else:
                                unrun += 1
                else:
                    run.cases = [done[c.id] for c in plan.cases]
        finally:
            if measure.nvml_device is not None:
                measure.nvml_device.close()
        run.environment.end_time = _now()
        results = plan.out_dir / "results.json"
        try:
            run.save(results)
        except OSError as e:
            raise OutputError(f"{results}: cannot write the results ({e.strerror or e}); the journal keeps "
                              f"every finished case: `ossbench run --resume {plan.out_dir}` writes them") from None
        if not unrun:
            (plan.out_dir / JOURNAL).unlink()  # results.json now holds everything the journal did
    return run


def _not_started(lost: str | None, stop: StopRequest | None, predicted: Any,
                 budget: Budget | None) -> tuple[str, str, bool] | None:
    """Why the next case is recorded without running, as (status, error, journaled), or None to run it."""
    if lost:
        return "failed", lost, False
    if stop and stop.requested:
        return "skipped", stop.reason, False
    if predicted is not None and not predicted.fits:  # a verdict for this device: journaled
        return "skipped", predicted.fit_reason or "", True
    if budget is not None and not budget.allows(predicted.time_s if predicted else 0.0):
        return "skipped", budget.reason, False
    return None


def _journaled(result: CaseResult) -> bool:
    """Whether a rank journaled this result (not: left unrun by a lost context, a stop or the budget)."""
    error = result.error or ""
    return not (error.startswith(NOT_RUN) or error.startswith(INTERRUPTED) or error.startswith(BUDGET))


def _unrun(case: Case, status: str, error: str) -> CaseResult:
    """A case recorded without running; not journaled, so `--resume` runs it."""
    return CaseResult(id=case.id, family=case.family, variant=case.variant, axes=case.axes_dict,
                      params=case.params_dict, dtype=case.dtype, status=status, error=error)


def _record(result: CaseResult) -> dict:
    return json.loads(result.model_dump_json())  # exactly what results.json will hold for the case


def _new_run(plan: RunPlan, resume: Resumed | None) -> RunResult:
    """The run's record before any case: a resumed run keeps its first start's environment."""
    suite = plan.suite
    if resume:
        env = resume.previous.environment.model_copy(
            update={"end_time": None, "resumed_at": [*(resume.previous.environment.resumed_at or []), _now()]})
    else:
        env = Environment.model_validate({**plan.environment, "start_time": _now()})
    env = env.model_copy(update={"isolated": plan.isolate})
    return RunResult(
        schema=SCHEMA,
        suite=SuiteInfo(name=suite.name, description=suite.spec.description, path=suite.path,
                        sha256=suite.sha256, family=suite.spec.family, preset=suite.spec.preset,
                        profile=plan.profile, compare=[p.model_dump() for p in suite.spec.compare],
                        gate=suite.spec.gate.model_dump(exclude_defaults=True)),
        environment=env,
        timing=plan.timing.model_dump(),
        options=plan.options,
    )


def _open_nvml(plan: RunPlan):
    if not (plan.environment.get("nvml") or {}).get("available"):
        return None  # the reason is in environment.nvml; the CLI has said it once
    from .measure.nvml import NvmlUnavailable, open_device

    try:
        return open_device(plan.device.index)
    except NvmlUnavailable:
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_case(case: Case, device: Device | str, timing: Timing, measure: MeasureOptions | None = None) -> CaseResult:
    """Build, check, time and record one case. Never raises for a failure of the case itself.

    `device`: the run's Device; a spec string ("cpu", "cuda:0") is resolved here, for callers outside a run.
    """
    import torch

    from .measure.memory import MemoryWatch
    from .measure.nvml_sampler import NvmlSampler
    from .measure.timer import bench, cache_flusher
    from .workloads import case_seed, get_family

    measure = measure or MeasureOptions()
    device = resolve_device(device)

    family = get_family(case.family)
    seed = case_seed(case.id)  # fresh random data per case, the same whenever this case runs
    record = CaseResult(id=case.id, family=case.family, variant=case.variant, axes=case.axes_dict,
                        params=case.params_dict, dtype=case.dtype, status="ok", seed=seed,
                        device=str(device), rank=_rank())
    started = time.perf_counter()
    torch.manual_seed(seed)  # torch's global generator too: what draws outside the workload's (dropout masks)
    watch = MemoryWatch(device.type)
    workload = None
    try:
        if device.is_cuda:
            torch.cuda.set_device(device.torch_device)
        watch.start()
        params = family.validate(case.params_dict)
        workload = family.build(params, device.torch_device, getattr(torch, case.dtype), seed=seed)
        watch.mark_built()
        record.flops, record.bytes, record.tokens = (workload.cost.flops, workload.cost.bytes,
                                                     workload.cost.tokens)
        record.cost_extra = dict(workload.cost.extra)
        record.info = dict(workload.info)
        check = workload.check()
        record.numerics = {"max_abs_err": check.max_abs_err, "max_rel_err": check.max_rel_err,
                           "tolerance": check.tolerance, "reference": check.reference, "ok": check.ok}
        if not check.ok:
            raise NumericsMismatch(f"output differs from the reference ({check.reference}): max relative "
                                   f"error {check.max_rel_err:.3g} > tolerance {check.tolerance:.3g}")
        if timing.cache == "cold" and not device.is_cuda:
            cache_flusher(device)  # allocate bench's process-wide flush buffer now, outside the timed peak
        watch.mark_timing()
        sampler = NvmlSampler(measure.nvml_device) if measure.nvml_device is not None else None
        with sampler or nullcontext():
            if workload.group is not None:  # a collective: every rank times it together, slowest rank's time
                from .measure.dist_timer import bench_collective

                m = bench_collective(workload.fn, timing, device=device, group=workload.group)
            else:
                m = bench(workload.fn, spec=timing, device=device, monitor=sampler,
                          strict_clocks=measure.strict_clocks)
        record.samples_ms = list(m.samples_ms)
        record.stats = m.stats()
        record.timing = m.settings()
        record.memory = memory_detail(watch, workload, m)
        if workload.breakdown is not None:
            record.phases_ms = workload.breakdown()
        if m.clock_batches:
            record.clocks, record.throttled = m.clock_report(), m.throttled
        if sampler is not None:
            record.power = sampler.summary(tokens_per_call=record.tokens)
        _derive(record)
        record.roofline = roofline_record(record, str(device), measure.ceilings)
        if measure.profile:
            record.profile = profile_record(case, workload, str(device), m, measure)
        record.counters = counters_in_process(workload, str(device), record, measure)
    except SkipCase as e:
        record.status, record.error = "skipped", str(e)
    except Exception as e:  # noqa: BLE001 - one case's failure must not stop the run
        record.status = "oom" if is_oom(e) else "failed"
        record.error = describe(e)
    finally:
        watch.close()
        workload = None
        gc.collect()
        if device.is_cuda:
            torch.cuda.empty_cache()
    if (measure.ncu and device.is_cuda and record.status == "ok" and record.counters
            and not record.counters.get("available")):
        record.counters = counters_ncu(case, str(device), record, measure)  # the workload is freed by now
    record.duration_s = time.perf_counter() - started
    return record


def _derive(record: CaseResult) -> None:
    if not record.stats or record.stats.median <= 0:
        return
    seconds = record.stats.median / 1e3
    d = record.derived
    d.tokens_per_s = record.tokens / seconds if record.tokens else None
    d.tflops = record.flops / seconds / 1e12 if record.flops else None
    d.gbps = record.bytes / seconds / 1e9 if record.bytes else None
    if record.cost_extra.get("bus_bytes"):
        d.busbw_gbps = record.cost_extra["bus_bytes"] / seconds / 1e9


def _rank() -> int | None:
    """This process's rank when a torch.distributed process group is up (a multi-rank run), else None."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else None
