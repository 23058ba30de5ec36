"""``bench``: time a callable on CUDA or CPU, stopping when the median is known well enough.

A better-measured stand-in for ``triton.testing.do_bench``: warm-up by time, a cold L2 (or CPU last-level
cache) before every sample by default, one sample per call, adaptive stopping on the CI95 of the median
with a time budget, optional CUDA-graph replay for tiny kernels, and every raw sample kept.

Only users of ``bench`` import this module, so torch is imported at the top (``ossbench`` itself stays
torch-free).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..hardware import Device
from .measurement import FLUSH_DOMINATES, Measurement, flush_share
from .spec import BenchSpec, Cache
from .stats import median_ci95, relative_half_width, summarize

__all__ = ["BenchSpec", "Measurement", "bench", "cache_flusher", "cpu_last_level_cache_bytes"]

MIN_CUDA_FLUSH_BYTES = 64 * 2**20
CPU_LLC_FALLBACK_BYTES = 32 * 2**20
# CPU cold flush = this many LLCs. One suffices: on the 2-core VM (480 MiB L3, a sweep of 960 MiB costs
# 60-90 ms) a working set read after a 1 x LLC sweep was within a few % of as slow as after a 2 x sweep,
# at half the cost (docs/bench.md, "Cold vs hot"). Smaller sweeps evict only part of a small working set.
CPU_FLUSH_LLC_MULTIPLE = 1
GRAPH_TARGET_MS = 1.0  # default graph_calls: enough back-to-back calls to fill about this much GPU time
MAX_GRAPH_CALLS = 1000  # a capture of more calls costs memory and capture time for no better figure
MAX_BATCH = 8192  # samples recorded between two synchronisations / stopping checks
MONITOR_BATCH_S = 0.1  # with a clock monitor, batches last at most ~this long: clocks are known per batch
MAX_DISCARDED_BATCHES = 20  # strict_clocks: after this many throttled batches, keep samples (and say so)


def bench(
    fn: Callable[[], object],
    spec: BenchSpec | None = None,
    *,
    device: str | torch.device | None = None,
    monitor=None,
    strict_clocks: bool = False,
    **settings: Any,
) -> Measurement:
    """Time ``fn()`` (no arguments; its result is ignored) and return a Measurement. See docs/bench.md.

    The settings are a ``BenchSpec`` (``bench(fn, spec=BenchSpec(cache="hot"))``) or, as a convenience,
    its fields as keyword arguments (``bench(fn, cache="hot")``), not both. A bad value raises ValueError
    naming the field. Given alone, ``max_time_s`` below the default ``min_time_s`` lowers ``min_time_s`` to it.

    Stopping rule: sample until n >= min_samples, the samples span >= min_time_s of wall time and the CI95
    of the median is within ±target_rel_ci, or until max_time_s of sampling is spent (converged=False), or
    until max_samples samples are kept (converged when the CI target and min_samples are met).
    The budget covers sampling only (a slow first call or a long compile in warm-up does not eat it), and
    at least one sample is always taken: a call longer than the budget gives one warm-up call and one sample.

    ``monitor`` (e.g. an ``ossbench.measure.nvml_sampler.NvmlSampler``) is told when sampling starts and ends and
    reports the SM clock and clock-event reasons of each batch (batches then last at most ~0.1 s). With
    ``strict_clocks=True`` a batch taken while the monitor saw power/thermal throttling is discarded and
    re-taken, at most 20 times; the time budget still applies. Without a monitor strict_clocks does nothing.
    """
    spec = _spec_of(spec, settings)
    dev = _resolve_device(device)
    if spec.cuda_graph and dev.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device, got {dev}")
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            sampler = _CudaSampler(fn, dev, spec.cache, spec.flush_bytes)
            return _run(sampler, spec, monitor, strict_clocks)
    sampler = _CpuSampler(fn, spec.cache, spec.flush_bytes)
    return _run(sampler, spec, monitor, strict_clocks)


def _spec_of(spec: BenchSpec | None, settings: dict[str, Any]) -> BenchSpec:
    """bench's settings as one BenchSpec: the one given, or one built from the keyword arguments."""
    if spec is None:
        # A short budget asked for explicitly wins over the default minimum time (else it could never
        # converge). A BenchSpec is built field by field, so there both are the caller's and must agree.
        budget = settings.get("max_time_s")
        if "min_time_s" not in settings and isinstance(budget, (int, float)) and not isinstance(budget, bool):
            settings["min_time_s"] = min(BenchSpec().min_time_s, budget)
        return BenchSpec(**settings)
    if not isinstance(spec, BenchSpec):
        raise TypeError(f"spec must be an ossbench BenchSpec, got {type(spec).__name__}")
    if settings:
        raise ValueError(f"bench takes spec= or settings as keyword arguments, not both "
                         f"(got spec and {', '.join(sorted(settings))})")
    return spec


# ---------------------------------------------------------------------------------------------- the loop


def _run(sampler, spec: BenchSpec, monitor=None, strict_clocks: bool = False) -> Measurement:
    min_samples, max_samples, target_rel_ci = spec.min_samples, spec.max_samples, spec.target_rel_ci
    min_time_s, max_time_s, graph_calls = spec.min_time_s, spec.max_time_s, spec.graph_calls
    t_begin = time.perf_counter()

    # Warm-up by time, at least one call: compilation, autotuning and allocator growth happen here.
    warmup_calls, call_wall_s, call_ms = 0, [], []
    while warmup_calls == 0 or time.perf_counter() - t_begin < spec.warmup_s:
        wall_s, ms = sampler.warmup_call()
        call_wall_s.append(wall_s)
        call_ms.append(ms)
        warmup_calls += 1
    recent = slice(-5, None)  # the last calls are the warm ones
    per_sample_wall_s = float(np.median(call_wall_s[recent]))

    if spec.cuda_graph:
        if graph_calls is None:
            per_call_ms = max(float(np.median(call_ms[recent])), 1e-4)
            graph_calls = int(min(MAX_GRAPH_CALLS, max(1, round(GRAPH_TARGET_MS / per_call_ms))))
        sampler.capture_graph(graph_calls)
        per_sample_wall_s *= graph_calls

    samples: list[float] = []
    clock_batches: list[dict] = []
    discarded = discarded_batches = calls_made = 0
    timed_ms = 0.0
    if monitor is not None:
        monitor.sampling_started()
    t_sampling = time.perf_counter()
    batch = max(1, min(min_samples, int(max_time_s / max(per_sample_wall_s, 1e-9))))
    if monitor is not None:
        batch = max(1, min(batch, int(MONITOR_BATCH_S / max(per_sample_wall_s, 1e-9))))
    while True:
        t_batch = time.perf_counter()
        taken = sampler.take(batch)
        now = time.perf_counter()
        per_sample_wall_s = (now - t_batch) / batch
        sampled_s = now - t_sampling
        clock = None
        if monitor is not None:
            calls_made += batch * sampler.calls_per_sample
            timed_ms += sum(taken) * sampler.calls_per_sample
            clock = monitor.batch_done(t_batch, now)
        discard = bool(strict_clocks and clock is not None and clock.get("throttled")
                       and discarded_batches < MAX_DISCARDED_BATCHES and (samples or sampled_s < max_time_s))
        if clock is not None:
            clock_batches.append({**clock, "discarded": True} if discard
                                 else {**clock, "first_sample": len(samples), "n": len(taken)})
        if discard:
            discarded += len(taken)
            discarded_batches += 1
            if sampled_s < max_time_s:
                continue  # re-take: the stopping rule only looks at kept samples
        else:
            samples.extend(taken)

        median = float(np.median(samples))
        rel_ci = relative_half_width(median_ci95(samples), median)
        if len(samples) >= min_samples and sampled_s >= min_time_s and rel_ci <= target_rel_ci:
            converged, stop_reason = True, "target reached"
            break
        if len(samples) >= max_samples:
            converged = len(samples) >= min_samples and rel_ci <= target_rel_ci
            stop_reason = "max_samples reached" + ("" if converged else f" (CI ±{rel_ci * 100:.2g}%)")
            break
        remaining_s = max_time_s - sampled_s
        if remaining_s <= 0:
            converged = False
            stop_reason = _why_not(len(samples), min_samples, rel_ci, target_rel_ci, max_time_s)
            share = flush_share(sampler.flush_ms, float(np.median(samples)))
            if share is not None and share > FLUSH_DOMINATES:
                stop_reason += (f"; the cold-cache flush took {share:.0%} of the sampling time "
                                f"({sampler.flush_ms:.3g} ms per sample)")
            break
        # Double the batch (fewer synchronisations and checks), but never plan past the budget.
        fits = int(remaining_s / max(per_sample_wall_s, 1e-9))
        if monitor is not None:
            fits = min(fits, int(MONITOR_BATCH_S / max(per_sample_wall_s, 1e-9)))
        batch = max(1, min(2 * batch, fits, MAX_BATCH, max_samples - len(samples)))

    if monitor is not None:
        monitor.sampling_ended(calls_made, timed_ms / 1e3)
    if discarded:
        stop_reason += f"; {discarded} throttled sample(s) discarded"
        if discarded_batches >= MAX_DISCARDED_BATCHES:
            stop_reason += f" (limit of {MAX_DISCARDED_BATCHES} batches reached: later throttled ones kept)"
    s = summarize(samples, target_rel_ci)
    # The settings in effect: bench's own choices (calls per graph, flush size) filled in.
    used = BenchSpec(**{**spec.to_dict(), "graph_calls": graph_calls if spec.cuda_graph else None,
                        "flush_bytes": sampler.flush_bytes})
    return Measurement(
        samples_ms=samples, median_ms=s["median"], mean_ms=s["mean"], stdev_ms=s["stdev"], min_ms=s["min"],
        max_ms=s["max"], p10_ms=s["p10"], p90_ms=s["p90"], ci95_ms=(s["ci95_low"], s["ci95_high"]),
        n=s["n"], rel_ci=s["rel_ci"], converged=converged, device=sampler.device_name, spec=used,
        warmup_calls=warmup_calls, total_time_s=time.perf_counter() - t_begin, stop_reason=stop_reason,
        clock_batches=clock_batches, strict_clocks=strict_clocks, discarded_samples=discarded,
        flush_ms=sampler.flush_ms,
    )


def _why_not(n, min_samples, rel_ci, target_rel_ci, max_time_s) -> str:
    missing = []
    if rel_ci > target_rel_ci:
        missing.append(f"CI ±{rel_ci * 100:.2g}% > target ±{target_rel_ci * 100:.2g}%")
    if n < min_samples:
        missing.append(f"n={n} < min_samples={min_samples}")
    return f"max_time_s={max_time_s:g} spent ({'; '.join(missing) or 'min_time_s not reached'})"


# ------------------------------------------------------------------------------------------ the samplers


class _CudaSampler:
    """One pair of CUDA events per sample, around one call (or one graph replay); one sync per batch."""

    def __init__(self, fn, dev: torch.device, cache: Cache, flush_bytes: int | None) -> None:
        self.fn, self.cache = fn, cache
        self.device_name = f"cuda:{dev.index}"
        self.flush_bytes = None
        self._flush_buf = None
        if cache == "cold":
            l2 = torch.cuda.get_device_properties(dev).L2_cache_size
            self.flush_bytes = int(flush_bytes or max(2 * l2, MIN_CUDA_FLUSH_BYTES))
            self._flush_buf = torch.empty(self.flush_bytes // 4, dtype=torch.int32, device=dev)
        self._call = fn
        self.calls_per_sample = 1
        self.flush_ms = None  # the zeroing is asynchronous: not timed on the host
        self._starts: list[torch.cuda.Event] = []
        self._ends: list[torch.cuda.Event] = []

    def _flush(self) -> None:
        if self._flush_buf is not None:
            self._flush_buf.zero_()  # writes every L2 line's worth, evicting fn's data

    def warmup_call(self) -> tuple[float, float]:
        """One synchronised call; returns (wall s including the flush, GPU ms of the call alone)."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        self._flush()
        start.record()
        self.fn()
        end.record()
        torch.cuda.synchronize()
        return time.perf_counter() - t0, start.elapsed_time(end)

    def capture_graph(self, calls: int) -> None:
        # Warm up on a side stream first, as torch.cuda.graphs asks (lazy init, cuBLAS workspaces).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                self.fn()
        graph.replay()  # the first replay uploads the graph; keep that out of the samples
        torch.cuda.synchronize()
        self._graph = graph  # hold it: the graph's memory pool lives as long as the graph
        self._call, self.calls_per_sample = graph.replay, calls

    def take(self, k: int) -> list[float]:
        while len(self._starts) < k:
            self._starts.append(torch.cuda.Event(enable_timing=True))
            self._ends.append(torch.cuda.Event(enable_timing=True))
        call, flush = self._call, self._flush
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for i in range(k):
                flush()  # outside the timed region: before the start event
                self._starts[i].record()
                call()
                self._ends[i].record()
            torch.cuda.synchronize()
        finally:
            if gc_was_enabled:
                gc.enable()
        per = self.calls_per_sample
        return [self._starts[i].elapsed_time(self._ends[i]) / per for i in range(k)]


class _CpuSampler:
    """``time.perf_counter_ns`` around each call; cold mode sweeps a buffer the size of the LLC first."""

    device_name = "cpu"
    calls_per_sample = 1

    def __init__(self, fn, cache: Cache, flush_bytes: int | None) -> None:
        self.fn, self.cache = fn, cache
        self.flush_bytes = None
        self._flush_buf = None
        self._flush_ms: list[float] = []
        if cache == "cold":
            self.flush_bytes = int(flush_bytes or CPU_FLUSH_LLC_MULTIPLE * cpu_last_level_cache_bytes())
            self._flush_buf = _cpu_flush_buffer(self.flush_bytes)

    @property
    def flush_ms(self) -> float | None:
        """Median time of one flush over the last warm-up calls; None when hot."""
        return float(np.median(self._flush_ms[-5:])) if self._flush_ms else None

    def _flush(self) -> None:
        if self._flush_buf is not None:
            # Read-modify-write, not a fill: large memsets use non-temporal stores that bypass the cache
            # and would leave fn's data in place.
            np.add(self._flush_buf, 1, out=self._flush_buf)

    def warmup_call(self) -> tuple[float, float]:
        t0 = time.perf_counter_ns()
        self._flush()
        t1 = time.perf_counter_ns()
        self.fn()
        t2 = time.perf_counter_ns()
        if self._flush_buf is not None:
            self._flush_ms.append((t1 - t0) * 1e-6)
        return (t2 - t0) * 1e-9, (t2 - t1) * 1e-6

    def take(self, k: int) -> list[float]:
        fn, flush, clock = self.fn, self._flush, time.perf_counter_ns
        out = [0.0] * k
        gc_was_enabled = gc.isenabled()
        gc.disable()  # a collection inside a sample would be timed as fn's
        try:
            for i in range(k):
                flush()
                t0 = clock()
                fn()
                out[i] = (clock() - t0) * 1e-6
        finally:
            if gc_was_enabled:
                gc.enable()
        return out


def cache_flusher(device: str | torch.device | Device | None, flush_bytes: int | None = None) -> Callable[[], None]:
    """The cold-cache flush bench runs before each sample, for tools that must reproduce its conditions
    (the profiler). Same default size as bench; on CPU the process-wide buffer bench uses is shared."""
    dev = _resolve_device(device)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            return _CudaSampler(None, dev, "cold", flush_bytes)._flush
    return _CpuSampler(None, "cold", flush_bytes)._flush


_CPU_FLUSH_BUFFERS: dict[int, np.ndarray] = {}


def _cpu_flush_buffer(nbytes: int) -> np.ndarray:
    """One buffer per size for the whole process: first-touching tens of MiB costs far more than a sweep."""
    buf = _CPU_FLUSH_BUFFERS.get(nbytes)
    if buf is None:
        buf = np.zeros(max(1, nbytes // 8), dtype=np.int64)
        np.add(buf, 1, out=buf)  # fault the pages in now
        _CPU_FLUSH_BUFFERS.clear()  # keep at most one
        _CPU_FLUSH_BUFFERS[nbytes] = buf
    return buf


def cpu_last_level_cache_bytes() -> int:
    """Size of CPU 0's level-3 cache (else its highest level) from sysfs; 32 MiB when unknown."""
    sizes: dict[int, int] = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((index / "level").read_text())
            size = _parse_cache_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        sizes[level] = max(sizes.get(level, 0), size)
    if not sizes:
        return CPU_LLC_FALLBACK_BYTES
    return sizes.get(3) or sizes[max(sizes)]


def _parse_cache_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


# --------------------------------------------------------------------------------------- argument checks


def _resolve_device(device: str | torch.device | Device | None) -> torch.device:
    if isinstance(device, Device):  # resolved and checked once per run (ossbench.hardware)
        return device.torch_device
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"bad device {device!r}: {e}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ValueError(f"bench supports 'cpu' and 'cuda[:N]' devices, got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if not 0 <= index < torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)

