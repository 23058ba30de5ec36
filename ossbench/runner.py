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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .errors import SkipCase, UserError
from .results import SCHEMA, CaseResult, Environment, RunResult, SuiteInfo, write_atomic
from .suite import Case, Suite, Timing

# `--quick`: a smoke run, not a measurement to quote (each case's CI target is loose and its budget short).
QUICK_TIMING = dict(warmup_s=0.02, min_samples=5, min_time_s=0.05, max_time_s=1.0, target_rel_ci=0.05)
JOURNAL = "journal.jsonl"


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
class RunPlan:
    """Everything decided before the first case runs."""

    suite: Suite
    device: str
    profile: str  # "full" or "cpu"
    cases: list[Case]
    timing: Timing
    out_dir: Path
    environment: dict  # captured once while planning; start_time is reset when the run starts


def plan_run(suite: Suite, *, device: str = "auto", out_dir: str | Path | None = None,
             filter_text: str | None = None, quick: bool = False) -> RunPlan:
    from .env import capture
    from .suite import filter_cases

    dev = resolve_device(device)
    profile = suite.profile_for("cpu" if dev == "cpu" else "cuda")
    cases = filter_cases(suite.cases(profile), filter_text)
    if not cases:
        raise UserError(f"--filter {filter_text!r} matches none of the suite's cases")
    timing = suite.timing(profile)
    if quick:
        timing = timing.model_copy(update=QUICK_TIMING)
    env = capture(dev)
    out = Path(out_dir) if out_dir else default_out_dir(suite, env["device_name"], dev)
    return RunPlan(suite=suite, device=dev, profile=profile, cases=cases, timing=timing, out_dir=out,
                   environment=env)


def run_plan(plan: RunPlan, on_case: Callable[[Case, CaseResult | None], None] | None = None) -> RunResult:
    """Run every case of the plan. `on_case(case, None)` before a case starts, `(case, result)` after."""
    suite = plan.suite
    run = RunResult(
        schema=SCHEMA,
        suite=SuiteInfo(name=suite.name, description=suite.spec.description, path=suite.path,
                        sha256=suite.sha256, family=suite.spec.family, preset=suite.spec.preset,
                        profile=plan.profile, compare=[p.model_dump() for p in suite.spec.compare]),
        environment=Environment.model_validate({**plan.environment, "start_time": _now()}),
        timing=plan.timing.model_dump(),
    )
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    journal = plan.out_dir / JOURNAL
    with journal.open("w", encoding="utf-8") as j:
        _journal_line(j, {"journal": SCHEMA, **json.loads(run.to_json())})
        for case in plan.cases:
            if on_case:
                on_case(case, None)
            result = run_case(case, plan.device, plan.timing)
            run.cases.append(result)
            _journal_line(j, {"case": json.loads(result.model_dump_json())})
            if on_case:
                on_case(case, result)
    run.environment.end_time = _now()
    run.save(plan.out_dir / "results.json")
    journal.unlink()  # results.json now holds everything the journal did
    return run


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _journal_line(f, obj: dict) -> None:
    f.write(json.dumps(obj) + "\n")
    f.flush()


def run_case(case: Case, device: str, timing: Timing) -> CaseResult:
    """Build, check, time and record one case. Never raises for a failure of the case itself."""
    import torch

    from .measure.memory import MemoryWatch
    from .measure.timer import bench
    from .workloads import get_family

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
        record.flops, record.bytes, record.tokens = (workload.cost.flops, workload.cost.bytes,
                                                     workload.cost.tokens)
        record.cost_extra = dict(workload.cost.extra)
        check = workload.check()
        record.numerics = {"max_abs_err": check.max_abs_err, "max_rel_err": check.max_rel_err,
                           "tolerance": check.tolerance, "reference": check.reference, "ok": check.ok}
        if not check.ok:
            raise _NumericsMismatch(f"output differs from the reference ({check.reference}): max relative "
                                    f"error {check.max_rel_err:.3g} > tolerance {check.tolerance:.3g}")
        m = bench(workload.fn, device=device, **timing.model_dump())
        record.samples_ms = list(m.samples_ms)
        record.stats = m.stats()
        record.timing = m.settings()
        record.memory = {**watch.read(), "persistent_bytes": workload.persistent_bytes}
        _derive(record)
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
    record.duration_s = time.perf_counter() - started
    return record


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
