"""``bench_collective``: time a callable that every rank of a process group calls together (a collective,
an expert-parallel layer), the slowest rank's time being the sample.

``bench`` cannot time such a call: its warm-up and stopping rule follow each process's own clock, so two
ranks would decide differently and one would wait forever in a collective the other never enters. Here
every decision is taken from numbers all ranks share (all-reduced), so all ranks make the same calls:

- warm-up by time: after each call the ranks agree whether any of them is still under ``warmup_s``;
- each sample: the cold-cache flush (outside the timed region), a barrier that aligns the ranks, then the
  call timed on each rank (CUDA events around it, or ``perf_counter`` on CPU); rank skew at the start of a
  call is what the barrier removes, skew inside it is what the sample keeps;
- after each batch the per-sample times are all-reduced with MAX: sample i is the slowest rank's time of
  call i, identical on every rank, and the stopping rule (``BenchSpec``'s: min samples, min time, CI95 of
  the median, time budget, max samples) reads only those and the slowest rank's wall time.

No ossbench layers or workloads here (floor 1): the group is any ``torch.distributed`` process group.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .measurement import Measurement
from .spec import BenchSpec
from .stats import median_ci95, relative_half_width, summarize
from .timer import _resolve_device, cache_flusher

__all__ = ["bench_collective", "all_max", "aligned"]

MAX_BATCH = 256  # samples between two all-reduces (each sample already synchronises, for its barrier)


def all_max(values: list[float], device: torch.device, group: Any = None) -> list[float]:
    """Element-wise maximum of `values` over the ranks of `group` (float64; on `device` for NCCL)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t.tolist()


def aligned(device: torch.device, group: Any = None) -> None:
    """Every rank reaches this point before any goes on (a barrier, and on CUDA a synchronised stream)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier(group=group)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_collective(fn: Callable[[], object], spec: BenchSpec | None = None, *, device: Any = None,
                     group: Any = None) -> Measurement:
    """Time ``fn()``, called by every rank of ``group`` (default: the world) with the same spec; returns the
    same Measurement on every rank, its samples the slowest rank's times. See the module's docstring."""
    spec = spec or BenchSpec()
    dev = _resolve_device(device)
    if spec.cuda_graph:
        raise ValueError("bench_collective does not replay CUDA graphs (a collective's graph capture needs "
                         "NCCL's graph support and every rank capturing alike)")
    flush = cache_flusher(dev, spec.flush_bytes) if spec.cache == "cold" else None
    timer = _CudaTimer(dev) if dev.type == "cuda" else _CpuTimer()
    t_begin = time.perf_counter()

    warmup_calls = 0
    while True:  # at least one call; go on while any rank is still inside its warm-up time
        aligned(dev, group)
        fn()
        timer.sync()
        warmup_calls += 1
        if all_max([float(time.perf_counter() - t_begin < spec.warmup_s)], dev, group)[0] == 0.0:
            break

    samples: list[float] = []
    t_sampling = time.perf_counter()
    batch = max(1, min(spec.min_samples, MAX_BATCH))
    while True:
        taken = []
        for _ in range(batch):
            if flush is not None:
                flush()
            aligned(dev, group)
            taken.append(timer.time(fn))
        # the batch's samples (slowest rank each) and the slowest rank's sampling time, one all-reduce
        shared = all_max([*taken, time.perf_counter() - t_sampling], dev, group)
        samples.extend(shared[:-1])
        sampled_s, per_sample_s = shared[-1], shared[-1] / len(samples)
        median = float(np.median(samples))
        rel_ci = relative_half_width(median_ci95(samples), median)
        if len(samples) >= spec.min_samples and sampled_s >= spec.min_time_s and rel_ci <= spec.target_rel_ci:
            converged, stop_reason = True, "target reached"
            break
        if len(samples) >= spec.max_samples:
            converged = len(samples) >= spec.min_samples and rel_ci <= spec.target_rel_ci
            stop_reason = "max_samples reached" + ("" if converged else f" (CI ±{rel_ci * 100:.2g}%)")
            break
        remaining_s = spec.max_time_s - sampled_s
        if remaining_s <= 0:
            converged = False
            stop_reason = (f"max_time_s={spec.max_time_s:g} spent (n={len(samples)}, CI ±{rel_ci * 100:.2g}%, "
                           f"target ±{spec.target_rel_ci * 100:.2g}%)")
            break
        fits = int(remaining_s / max(per_sample_s, 1e-9))  # the same on every rank: shared numbers only
        batch = max(1, min(2 * batch, fits, MAX_BATCH, spec.max_samples - len(samples)))

    s = summarize(samples, spec.target_rel_ci)
    used = BenchSpec(**{**spec.to_dict(), "flush_bytes": _flush_bytes(flush)})
    return Measurement(
        samples_ms=samples, median_ms=s["median"], mean_ms=s["mean"], stdev_ms=s["stdev"], min_ms=s["min"],
        max_ms=s["max"], p10_ms=s["p10"], p90_ms=s["p90"], ci95_ms=(s["ci95_low"], s["ci95_high"]), n=s["n"],
        rel_ci=s["rel_ci"], converged=converged, device=str(dev), spec=used, warmup_calls=warmup_calls,
        total_time_s=time.perf_counter() - t_begin,
        stop_reason=f"{stop_reason}; slowest of {dist.get_world_size(group)} ranks per sample")


def _flush_bytes(flush: Callable[[], None] | None) -> int | None:
    owner = getattr(flush, "__self__", None)  # the sampler whose bound _flush it is
    return getattr(owner, "flush_bytes", None)


class _CudaTimer:
    def __init__(self, dev: torch.device) -> None:
        self.dev = dev
        self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def sync(self) -> None:
        torch.cuda.synchronize(self.dev)

    def time(self, fn: Callable[[], object]) -> float:
        self.start.record()
        fn()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end)


class _CpuTimer:
    def sync(self) -> None:
        pass

    def time(self, fn: Callable[[], object]) -> float:
        t0 = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t0) * 1e-6
