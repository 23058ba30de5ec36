"""``Measurement``: what ``bench`` returns, every raw sample with the statistics computed from them.

No torch here: a Measurement is plain data (its settings are a ``BenchSpec``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .spec import BenchSpec, Cache
from .stats import summarize

FLUSH_DOMINATES = 0.5  # the flush took more than this share of the sampling time: bench says so


def flush_share(flush_ms: float | None, median_ms: float) -> float | None:
    """Share of the sampling time spent flushing, flush / (flush + call); None when the flush was not timed."""
    return None if flush_ms is None else flush_ms / max(flush_ms + median_ms, 1e-12)


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
    device: str  # "cpu" or "cuda:N"
    # The settings in effect: the spec asked for, with the choices bench made filled in (graph_calls and
    # flush_bytes resolved, None where unused; min_time_s lowered to a shorter max_time_s given alone).
    spec: BenchSpec
    warmup_calls: int
    total_time_s: float  # wall time of the whole bench() call: warm-up, capture and sampling
    stop_reason: str = ""
    # With a clock monitor (NVML): one record per batch of kept samples, in order, each with `first_sample`,
    # `n`, `sm_clock_mhz_min/max`, `clock_events` (bitmask) and `throttled`; discarded batches have
    # `discarded: True` and no `first_sample`.
    clock_batches: list[dict] = field(default_factory=list)
    strict_clocks: bool = False
    discarded_samples: int = 0  # samples taken under throttling and re-taken (strict_clocks)
    # CPU cold mode: median time of one cache flush (measured in warm-up; it precedes every sample, outside
    # the timed region but inside the sampling budget). None when hot and on CUDA (an asynchronous zeroing).
    flush_ms: float | None = None

    # How the samples were taken, which tools reproducing the conditions (the profiler, memory) read.
    @property
    def cache(self) -> Cache:
        return self.spec.cache

    @property
    def flush_bytes(self) -> int | None:
        """Size of the buffer overwritten before each sample (None when hot)."""
        return self.spec.flush_bytes

    @property
    def flush_share(self) -> float | None:
        """Share of the sampling time spent flushing (flush / (flush + median call)); None when not timed."""
        return flush_share(self.flush_ms, self.median_ms)

    @property
    def cuda_graph(self) -> bool:
        return self.spec.cuda_graph

    @property
    def graph_calls(self) -> int | None:
        """Calls captured per graph replay (each sample is a replay / graph_calls); None outside graph mode."""
        return self.spec.graph_calls

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
        s = summarize(self.samples_ms, self.spec.target_rel_ci)
        s["converged"] = self.converged
        return s

    def settings(self) -> dict:
        """The spec this measurement ran with and how it ended (stored as a case's ``timing`` in results)."""
        return {**self.spec.to_dict(), "stop_reason": self.stop_reason, "device": self.device,
                "warmup_calls": self.warmup_calls, "flush_ms": self.flush_ms}

    def __str__(self) -> str:
        mode = f"{self.cache}, cuda-graph x{self.graph_calls}" if self.cuda_graph else self.cache
        text = (f"{_fmt_ms(self.median_ms)} ms ± {self.rel_ci * 100:.2g}% "
                f"(median, CI95, n={self.n}, {mode}, {self.device})")
        if not self.converged:
            text += f" [not converged: {self.stop_reason}]"
        share = self.flush_share
        if share is not None and share > FLUSH_DOMINATES and "flush" not in self.stop_reason:
            text += f" [cold flush {share:.0%} of the sampling time]"
        return text

    __repr__ = __str__


def _fmt_ms(ms: float) -> str:
    return f"{ms:.0f}" if ms >= 1000 else f"{ms:.4g}"
