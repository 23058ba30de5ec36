"""``bench``: time a callable on CUDA or CPU, stopping when the median is known well enough.

A better-measured stand-in for ``triton.testing.do_bench``: warm-up by time, a cold L2 (or CPU last-level
cache) before every sample by default, one sample per call, adaptive stopping on the CI95 of the median
with a time budget, optional CUDA-graph replay for tiny kernels, and every raw sample kept.

Only users of ``bench`` import this module, so torch is imported at the top (``ossbench`` itself stays
torch-free).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..hardware import Device
from .stats import (
    DEFAULT_TARGET_REL_CI,
    MAX_TIME_S,
    MIN_SAMPLES,
    MIN_TIME_S,
    WARMUP_S,
    median_ci95,
    relative_half_width,
    summarize,
)

Cache = Literal["cold", "hot"]

MIN_CUDA_FLUSH_BYTES = 64 * 2**20
CPU_LLC_FALLBACK_BYTES = 32 * 2**20
GRAPH_TARGET_MS = 1.0  # default graph_calls: enough back-to-back calls to fill about this much GPU time
MAX_GRAPH_CALLS = 1000  # a capture of more calls costs memory and capture time for no better figure
MAX_SAMPLES = 20_000  # keeps results files small: a 1 µs kernel would give ~500k samples in 0.5 s
MAX_BATCH = 8192  # samples recorded between two synchronisations / stopping checks
MONITOR_BATCH_S = 0.1  # with a clock monitor, batches last at most ~this long: clocks are known per batch
MAX_DISCARDED_BATCHES = 20  # strict_clocks: after this many throttled batches, keep samples (and say so)


@dataclass
class Measurement:
    """The result of ``bench``: every sample (ms, in order), its statistics, and the settings used."""

    samples_ms: list[float]
    median_ms: float
    mean_ms: float
    stdev_ms: float
    min_ms: float
    max_ms: float
    p10_ms: float
    p90_ms: float
    ci95_ms: tuple[float, float]  # distribution-free CI95 of the median
    n: int
    rel_ci: float  # (ci95 high - low) / 2 / median
    converged: bool  # min_samples, min_time_s and target_rel_ci all met before max_time_s ran out
    target_rel_ci: float
    device: str  # "cpu" or "cuda:N"
    cache: Cache
    cuda_graph: bool
    graph_calls: int | None  # calls captured per graph replay (each sample is a replay / graph_calls)
    warmup_calls: int
    total_time_s: float  # wall time of the whole bench() call: warm-up, capture and sampling
    stop_reason: str = ""
    warmup_s: float = WARMUP_S
    min_samples: int = MIN_SAMPLES
    min_time_s: float = MIN_TIME_S
    max_time_s: float = MAX_TIME_S
    flush_bytes: int | None = None  # size of the buffer overwritten before each sample (None when hot)
    max_samples: int = MAX_SAMPLES
    # With a clock monitor (NVML): one record per batch of kept samples, in order, each with `first_sample`,
    # `n`, `sm_clock_mhz_min/max`, `clock_events` (bitmask) and `throttled`; discarded batches have
    # `discarded: True` and no `first_sample`.
    clock_batches: list[dict] = field(default_factory=list)
    strict_clocks: bool = False
    discarded_samples: int = 0  # samples taken under throttling and re-taken (strict_clocks)

    @property
    def throttled(self) -> bool | None:
        """Some kept sample was taken while NVML reported power/thermal throttling; None without a monitor."""
        kept = [b for b in self.clock_batches if not b.get("discarded")]
        if not kept:
            return None
        return any(b.get("throttled") for b in kept)

    def sample_sm_clock_mhz(self) -> list[float | None]:
        """The SM clock for each sample: the lowest NVML reading while its batch ran (None when unknown)."""
        out: list[float | None] = [None] * self.n
        for b in self.clock_batches:
            if b.get("discarded") or b.get("first_sample") is None:
                continue
            out[b["first_sample"]:b["first_sample"] + b["n"]] = [b.get("sm_clock_mhz_min")] * b["n"]
        return out

    def clock_report(self) -> dict:
        """Clock monitoring of this measurement (stored as a case's ``clocks`` in results files)."""
        kept = [b for b in self.clock_batches if not b.get("discarded")]
        clocks = [b["sm_clock_mhz_min"] for b in kept if b.get("sm_clock_mhz_min") is not None]
        return {
            "monitored": bool(self.clock_batches),
            "strict_clocks": self.strict_clocks,
            "discarded_samples": self.discarded_samples,
            "throttled": self.throttled,
            "throttled_samples": sum(b["n"] for b in kept if b.get("throttled")),
            "sm_clock_mhz_min": min(clocks) if clocks else None,
            "sm_clock_mhz_max": max(b["sm_clock_mhz_max"] for b in kept
                                    if b.get("sm_clock_mhz_max") is not None) if clocks else None,
            "batches": self.clock_batches,
        }

    def stats(self) -> dict:
        """The ``ossbench.results.Stats`` fields; ``converged`` is the timer's full stopping verdict."""
        s = summarize(self.samples_ms, self.target_rel_ci)
        s["converged"] = self.converged
        return s

    def settings(self) -> dict:
        """The knobs this measurement ran with (stored as a case's ``timing`` in results files)."""
        return {
            "cache": self.cache,
            "warmup_s": self.warmup_s,
            "min_samples": self.min_samples,
            "min_time_s": self.min_time_s,
            "max_time_s": self.max_time_s,
            "target_rel_ci": self.target_rel_ci,
            "cuda_graph": self.cuda_graph,
            "graph_calls": self.graph_calls,
            "flush_bytes": self.flush_bytes,
            "max_samples": self.max_samples,
            "stop_reason": self.stop_reason,
            "device": self.device,
            "warmup_calls": self.warmup_calls,
        }

    def __str__(self) -> str:
        mode = f"{self.cache}, cuda-graph x{self.graph_calls}" if self.cuda_graph else self.cache
        text = (f"{_fmt_ms(self.median_ms)} ms ± {self.rel_ci * 100:.2g}% "
                f"(median, CI95, n={self.n}, {mode}, {self.device})")
        if not self.converged:
            text += f" [not converged: {self.stop_reason}]"
        return text

    __repr__ = __str__


def bench(
    fn: Callable[[], object],
    *,
    device: str | torch.device | None = None,
    cache: Cache = "cold",
    warmup_s: float = WARMUP_S,
    min_samples: int = MIN_SAMPLES,
    min_time_s: float = MIN_TIME_S,
    max_time_s: float = MAX_TIME_S,
    target_rel_ci: float = DEFAULT_TARGET_REL_CI,
    cuda_graph: bool = False,
    graph_calls: int | None = None,
    flush_bytes: int | None = None,
    max_samples: int = MAX_SAMPLES,
    monitor=None,
    strict_clocks: bool = False,
) -> Measurement:
    """Time ``fn()`` (no arguments; its result is ignored) and return a Measurement. See docs/bench.md.

    Stopping rule: sample until n >= min_samples, the samples span >= min_time_s of wall time and the CI95
    of the median is within ±target_rel_ci, or until max_time_s of sampling is spent (converged=False), or
    until max_samples samples are kept (converged when the CI target and min_samples are met).
    The budget covers sampling only (a slow first call or a long compile in warm-up does not eat it), and
    at least one sample is always taken: a call longer than the budget gives one warm-up call and one sample.
    A min_time_s above max_time_s is lowered to max_time_s.

    ``monitor`` (e.g. an ``ossbench.measure.nvml_sampler.NvmlSampler``) is told when sampling starts and ends and
    reports the SM clock and clock-event reasons of each batch (batches then last at most ~0.1 s). With
    ``strict_clocks=True`` a batch taken while the monitor saw power/thermal throttling is discarded and
    re-taken, at most 20 times; the time budget still applies. Without a monitor strict_clocks does nothing.
    """
    _check_knobs(cache, warmup_s, min_samples, min_time_s, max_time_s, target_rel_ci, graph_calls, flush_bytes)
    if max_samples < max(1, min_samples):
        raise ValueError(f"max_samples ({max_samples}) must be >= min_samples ({min_samples})")
    # A short budget asked for explicitly wins over the default minimum time (else it could never converge).
    min_time_s = min(min_time_s, max_time_s)
    dev = _resolve_device(device)
    if cuda_graph and dev.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device, got {dev}")
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            sampler = _CudaSampler(fn, dev, cache, flush_bytes)
            return _run(sampler, warmup_s, min_samples, min_time_s, max_time_s, target_rel_ci, cuda_graph,
                        graph_calls, max_samples, monitor, strict_clocks)
    sampler = _CpuSampler(fn, cache, flush_bytes)
    return _run(sampler, warmup_s, min_samples, min_time_s, max_time_s, target_rel_ci, False, None, max_samples,
                monitor, strict_clocks)


# ---------------------------------------------------------------------------------------------- the loop


def _run(sampler, warmup_s, min_samples, min_time_s, max_time_s, target_rel_ci, cuda_graph, graph_calls,
         max_samples, monitor=None, strict_clocks=False):
    t_begin = time.perf_counter()

    # Warm-up by time, at least one call: compilation, autotuning and allocator growth happen here.
    warmup_calls, call_wall_s, call_ms = 0, [], []
    while warmup_calls == 0 or time.perf_counter() - t_begin < warmup_s:
        wall_s, ms = sampler.warmup_call()
        call_wall_s.append(wall_s)
        call_ms.append(ms)
        warmup_calls += 1
    recent = slice(-5, None)  # the last calls are the warm ones
    per_sample_wall_s = float(np.median(call_wall_s[recent]))

    if cuda_graph:
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
    return Measurement(
        samples_ms=samples, median_ms=s["median"], mean_ms=s["mean"], stdev_ms=s["stdev"], min_ms=s["min"],
        max_ms=s["max"], p10_ms=s["p10"], p90_ms=s["p90"], ci95_ms=(s["ci95_low"], s["ci95_high"]),
        n=s["n"], rel_ci=s["rel_ci"], converged=converged, target_rel_ci=target_rel_ci,
        device=sampler.device_name, cache=sampler.cache, cuda_graph=cuda_graph,
        graph_calls=graph_calls if cuda_graph else None, warmup_calls=warmup_calls,
        total_time_s=time.perf_counter() - t_begin, stop_reason=stop_reason, warmup_s=warmup_s,
        min_samples=min_samples, min_time_s=min_time_s, max_time_s=max_time_s,
        flush_bytes=sampler.flush_bytes, max_samples=max_samples, clock_batches=clock_batches,
        strict_clocks=strict_clocks, discarded_samples=discarded,
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
    """``time.perf_counter_ns`` around each call; cold mode sweeps a buffer larger than the LLC first."""

    device_name = "cpu"
    calls_per_sample = 1

    def __init__(self, fn, cache: Cache, flush_bytes: int | None) -> None:
        self.fn, self.cache = fn, cache
        self.flush_bytes = None
        self._flush_buf = None
        if cache == "cold":
            self.flush_bytes = int(flush_bytes or 2 * cpu_last_level_cache_bytes())
            self._flush_buf = _cpu_flush_buffer(self.flush_bytes)

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


def _check_knobs(cache, warmup_s, min_samples, min_time_s, max_time_s, target_rel_ci, graph_calls,
                 flush_bytes) -> None:
    if cache not in ("cold", "hot"):
        raise ValueError(f"cache must be 'cold' or 'hot', got {cache!r}")
    if warmup_s < 0 or min_time_s < 0:
        raise ValueError("warmup_s and min_time_s must be >= 0")
    if not (isinstance(min_samples, int) and min_samples >= 1):
        raise ValueError(f"min_samples must be an int >= 1, got {min_samples!r}")
    if not max_time_s > 0:
        raise ValueError(f"max_time_s must be > 0, got {max_time_s!r}")
    if not (target_rel_ci > 0 and math.isfinite(target_rel_ci)):
        raise ValueError(f"target_rel_ci must be a positive number, got {target_rel_ci!r}")
    if graph_calls is not None and not (isinstance(graph_calls, int) and graph_calls >= 1):
        raise ValueError(f"graph_calls must be an int >= 1, got {graph_calls!r}")
    if flush_bytes is not None and not (isinstance(flush_bytes, int) and flush_bytes >= 4):
        raise ValueError(f"flush_bytes must be an int >= 4, got {flush_bytes!r}")


def _fmt_ms(ms: float) -> str:
    return f"{ms:.0f}" if ms >= 1000 else f"{ms:.4g}"
