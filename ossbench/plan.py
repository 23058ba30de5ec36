"""Run plans: what each case of a run will cost before it runs (`ossbench plan`, `ossbench run --plan`), the
run budget (`--max-minutes`) and the order that makes a cut-short run useful. See docs/run.md.

A case's prediction comes from its family's `Footprint` (the cost model's FLOPs and bytes per call, the
bytes the case will hold, one call's transient bytes) and the device's ceilings: calibrated, else the
datasheet's, else (a CPU without a calibration) `CPU_DEFAULT_CEILINGS`. Nothing is built: planning a
hundred GPU cases takes well under a second. The model of a case's wall time follows what the runner does:

    set-up (random weights and inputs)  persistent_bytes / INIT_GBPS
    compile                             COMPILE_S per compiling backend (torch.compile, flex), x2 in train
    numerics check                      one call + the float64 reference (the forward's FLOPs at fp64 speed)
    warm-up                             warmup_s + one call
    sampling                            n x (call + cache flush), at least min_time_s, at most max_time_s
                                        (at least one sample); n: min_samples, or the samples the CI
                                        target takes at the assumed noise NOISE_CV if more

with one call = max(FLOPs / compute ceiling, bytes / bandwidth ceiling) / EFFICIENCY + CALL_OVERHEAD_S.
The constants are rough on purpose; every run records the prediction next to what happened
(`predicted` beside `duration_s` and `memory.peak_bytes`), so the estimator can be judged and tuned.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from .hardware import Device
from .measure.roofline import dtype_key
from .measure.spec import BenchSpec
from .suite_cases import DTYPE_BYTES, Case

GIB = 2**30
# A CPU with no calibration: deliberately low figures (two cores of a small VM reach more), so that a budget
# planned from them is not overrun. `ossbench calibrate --device cpu` replaces them with measured ones.
CPU_DEFAULT_CEILINGS: dict[str, Any] = {"compute_tflops": {"fp32": 0.02, "bf16": 0.002, "fp16": 0.002},
                                        "bandwidth_gbps": 5.0, "sources": {}}
EFFICIENCY = 0.5  # the fraction of the binding ceiling a case's call is assumed to reach
CALL_OVERHEAD_S = {"cuda": 20e-6, "cpu": 100e-6}  # launches and Python per call, beyond the roofline time
INIT_GBPS = {"cuda": 20.0, "cpu": 0.5}  # drawing the random weights and inputs of the case
COMPILE_S = {"cuda": 30.0, "cpu": 15.0}  # a torch.compile'd backend's first call on a new shape (estimate)
CASE_OVERHEAD_S = 0.1  # validation, garbage collection, recording
# The samples' assumed coefficient of variation, which sets how many samples the CI target takes: the CI95
# of a median spans about 1.96 x 1.2533 x cv / sqrt(n) either side, relative to it. A shared 2-core VM is
# far noisier than a GPU (cases there often spend the whole max_time_s).
NOISE_CV = {"cuda": 0.03, "cpu": 0.25}
MEDIAN_CI_FACTOR = 1.96 * 1.2533
DEFAULT_FLUSH_BYTES = 64 * 2**20  # the cold-cache flush buffer when the L2 size is not known
# Peak ratios only for cases predicted to peak above this: on CPU the measured peak is the growth of the
# process's peak RSS, which the allocator's reuse of freed memory makes meaningless for small cases.
MIN_PEAK_FOR_RATIO = 64 * 2**20
BUDGET = "run budget"  # how the error of a case the budget left unstarted begins
NO_FIT = "does not fit"  # how the error of a case predicted not to fit in free memory begins


@dataclass(frozen=True)
class Prediction:
    """One case before it runs: its wall time by phase and its peak memory."""

    time_s: float  # the case's whole wall time (what `duration_s` will measure)
    peak_bytes: float  # persistent + transient + (CUDA, cold cache) the flush buffer
    call_s: float  # one call of the timed function
    phases: dict[str, float]  # setup, compile, check, warmup, sampling, overhead (seconds)
    persistent_bytes: float
    activation_bytes: float
    basis: str  # where the ceilings came from: calibrated, datasheet, default
    fit_reason: str | None = None  # set when the case is predicted not to fit in free memory

    @property
    def fits(self) -> bool:
        return self.fit_reason is None

    def record(self) -> dict[str, Any]:
        """What results.json stores as a case's `predicted` (docs/results.md)."""
        return {"time_s": self.time_s, "peak_bytes": self.peak_bytes, "call_ms": self.call_s * 1e3,
                "phases": dict(self.phases), "persistent_bytes": self.persistent_bytes,
                "activation_bytes": self.activation_bytes, "basis": self.basis, "fits": self.fits}


def planning_ceilings(ceilings: dict[str, Any] | None, device: Device) -> tuple[dict[str, Any], str]:
    """The ceilings predictions use and where they came from: the run's own (calibrated or datasheet), else
    the CPU default (a GPU missing from the table gets an H100's datasheet row: a guess, named as such)."""
    if ceilings and ceilings.get("bandwidth_gbps") and ceilings.get("compute_tflops"):
        sources = set((ceilings.get("sources") or {}).values())
        return ceilings, "calibrated" if sources == {"calibrated"} else (
            "datasheet" if sources == {"datasheet"} else "calibrated+datasheet")
    if device.is_cuda:
        from .peaks import peak_row

        row = peak_row("H100 SXM")
        return ({"compute_tflops": {k: row[f"{k}_tflops"] for k in ("bf16", "tf32", "fp32") if row.get(f"{k}_tflops")},
                 "bandwidth_gbps": row["hbm_gbps"]}, "default (H100 SXM datasheet)")
    return CPU_DEFAULT_CEILINGS, "default"


def predict_case(case: Case, timing: BenchSpec, ceilings: dict[str, Any], basis: str, device: Device, *,
                 l2_bytes: int | None = None, free_bytes: float | None = None) -> Prediction:
    """Predict `case` on `device` from its family's footprint; `free_bytes` None: memory not checked."""
    from .workloads import get_family

    family = get_family(case.family)
    if family.footprint is None:
        raise ValueError(f"family {case.family!r} declares no footprint: its cases cannot be planned")
    fp = family.footprint(family.validate(case.params_dict), DTYPE_BYTES[case.dtype])
    kind = "cuda" if device.is_cuda else "cpu"
    compute = ceilings["compute_tflops"]
    key = dtype_key(case.dtype)
    flops_rate = (compute.get(key) or compute.get("fp32") or min(compute.values())) * 1e12 * EFFICIENCY
    fp64_rate = (compute.get("fp64") or (compute.get("fp32") or min(compute.values())) / 2) * 1e12 * EFFICIENCY
    bw = ceilings["bandwidth_gbps"] * 1e9 * EFFICIENCY
    call_s = max(fp.cost.flops / flops_rate, fp.cost.bytes / bw) + CALL_OVERHEAD_S[kind]

    flush = 0.0
    if timing.cache == "cold":
        flush = float(timing.flush_bytes or (max(2 * l2_bytes, DEFAULT_FLUSH_BYTES) if l2_bytes and device.is_cuda
                                             else DEFAULT_FLUSH_BYTES))
    sample_s = call_s + 2 * flush / bw  # the flush writes its buffer (and reads it) before every sample
    samples = max(timing.min_samples, math.ceil((MEDIAN_CI_FACTOR * NOISE_CV[kind] / timing.target_rel_ci) ** 2))
    if sample_s >= timing.max_time_s:
        sampling = sample_s  # one sample
    else:
        sampling = min(timing.max_time_s, max(timing.min_time_s, min(samples, timing.max_samples) * sample_s))
    train = bool(dict(case.params).get("mode") == "train")
    compiles = _compiles(fp.backends)
    forward_flops = fp.cost.flops / 3 if train else fp.cost.flops
    phases = {
        "setup": fp.persistent_bytes / (INIT_GBPS[kind] * 1e9),
        "compile": COMPILE_S[kind] * compiles * (2 if train else 1),
        "check": call_s + forward_flops / fp64_rate,
        "warmup": timing.warmup_s + call_s,
        "sampling": sampling,
        "overhead": CASE_OVERHEAD_S,
    }
    peak = fp.persistent_bytes + fp.activation_bytes + (flush if device.is_cuda else 0.0)
    reason = None
    if free_bytes is not None and peak > free_bytes:
        reason = f"{NO_FIT}: predicted {peak / GIB:.2f} GiB > free {free_bytes / GIB:.2f} GiB on {device}"
    return Prediction(time_s=sum(phases.values()), peak_bytes=peak, call_s=call_s, phases=phases,
                      persistent_bytes=fp.persistent_bytes, activation_bytes=fp.activation_bytes, basis=basis,
                      fit_reason=reason)


def _compiles(backends: Iterable[tuple[str, str]]) -> int:
    from .backends import get_backend

    return sum(1 for family, name in backends if get_backend(family, name).compiles)


def predict_cases(cases: Sequence[Case], timing: BenchSpec, ceilings: dict[str, Any] | None, device: Device, *,
                  l2_bytes: int | None = None, free_bytes: float | None = None) -> dict[str, Prediction]:
    """Each case's prediction by id; a case of a family without a footprint gets none (it runs unplanned)."""
    from .workloads import get_family

    usable, basis = planning_ceilings(ceilings, device)
    return {c.id: predict_case(c, timing, usable, basis, device, l2_bytes=l2_bytes, free_bytes=free_bytes)
            for c in cases if get_family(c.family).footprint is not None}


def free_memory_bytes(device: Device) -> int | None:
    """What the device has free now: the GPU's free memory from NVML (`torch.cuda.mem_get_info` without
    NVML, which creates a CUDA context here: with --isolate the run's parent otherwise holds none), the
    host's MemAvailable on CPU; None when unknown (then nothing is skipped for memory)."""
    if device.is_cuda:
        from .measure.nvml import free_memory_bytes as nvml_free

        free = nvml_free(device.index)
        if free is not None:
            return free
        import torch

        return int(torch.cuda.mem_get_info(device.torch_device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_order(cases: Sequence[Case]) -> list[Case]:
    """The order cases run in, so that a run cut short by its budget is still useful: round by round, the
    next sweep point of every variant in every mode (round 1: the first prefill point of each variant, the
    first decode point of each, ...; round 2: the second of each, ...). Groups come in suite order and
    points keep their sweep order within a group. Results keep the suite's order whatever the run order."""
    groups: dict[tuple[str, Any], list[Case]] = defaultdict(list)
    for c in cases:
        groups[(c.variant, dict(c.params).get("mode"))].append(c)
    modes = list(dict.fromkeys(mode for _, mode in groups))
    ordered = sorted(groups.items(), key=lambda kv: modes.index(kv[0][1]))  # stable: variants in suite order
    rounds = max((len(g) for g in groups.values()), default=0)
    return [group[i] for i in range(rounds) for _, group in ordered if i < len(group)]


@dataclass
class Budget:
    """`--max-minutes`: once the elapsed time plus the next case's prediction would pass the budget, no new
    case starts (the rest are recorded as skipped with `reason`). The clock starts with the first case."""

    minutes: float
    started: float | None = None
    reached: bool = False
    _clock: Any = field(default=time.monotonic, repr=False)

    @property
    def reason(self) -> str:
        return f"{BUDGET} ({self.minutes:g} min) reached"

    def elapsed_s(self) -> float:
        if self.started is None:
            self.started = self._clock()
        return self._clock() - self.started

    def allows(self, predicted_s: float) -> bool:
        """Whether a case predicted to take `predicted_s` may start now; once refused, every later one is."""
        if not self.reached and self.elapsed_s() + predicted_s > self.minutes * 60:
            self.reached = True
        return not self.reached


def predicted_totals(predictions: Iterable[Prediction]) -> dict[str, float]:
    """Sum of the predicted times of the cases that fit, the largest predicted peak, and the counts."""
    preds = list(predictions)
    fitting = [p for p in preds if p.fits]
    return {"cases": len(preds), "fitting": len(fitting), "time_s": sum(p.time_s for p in fitting),
            "max_peak_bytes": max((p.peak_bytes for p in preds), default=0.0)}


def ratio_spread(cases: Iterable[Any]) -> dict[str, dict[str, float] | None]:
    """actual / predicted for the cases that ran (`ok`) with a prediction: time (`duration_s`) and peak
    memory (`memory.peak_bytes`, for predicted peaks of at least MIN_PEAK_FOR_RATIO), each as
    {n, min, median, max}, or None when no case has both."""
    import statistics

    times, peaks = [], []
    for c in cases:
        pred = getattr(c, "predicted", None)
        if c.status != "ok" or not pred:
            continue
        pred = pred if isinstance(pred, dict) else pred.model_dump()
        if c.duration_s and pred.get("time_s"):
            times.append(c.duration_s / pred["time_s"])
        peak = c.memory.peak_bytes if c.memory else None
        if peak and (pred.get("peak_bytes") or 0) >= MIN_PEAK_FOR_RATIO:
            peaks.append(peak / pred["peak_bytes"])

    def spread(values: list[float]) -> dict[str, float] | None:
        values = [v for v in values if math.isfinite(v)]
        if not values:
            return None
        return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values)}

    return {"time": spread(times), "peak": spread(peaks)}


def predicted_skips(cases: Sequence[Case], device: Device) -> list[tuple[Case, str]]:
    """The cases a run would skip on `device`, each with the reason its family gives, from the parameters
    alone (`Family.skip_reason`: the backend registry's limits and the family's own rules; no tensors)."""
    import torch

    from .workloads import get_family

    where = torch.device(str(device))
    skipped = []
    for case in cases:
        family = get_family(case.family)
        if reason := family.skip_reason(family.validate(case.params_dict), where, getattr(torch, case.dtype)):
            skipped.append((case, reason))
    return skipped
