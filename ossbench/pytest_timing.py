"""``GpuBench``: the object the ``gpu_bench`` fixture hands a test, and its bridge to pytest-benchmark.

``gpu_bench(fn, *args, **kwargs)`` times ``fn(*args, **kwargs)`` with ``ossbench.bench`` (CUDA events, a
cold L2, adaptive stopping; ``time.perf_counter_ns`` and a cold last-level cache on a CPU), then calls it
once more and returns that result, as pytest-benchmark's ``benchmark`` fixture does.

When pytest-benchmark is active, the samples go into its own session as one more benchmark (its
``Metadata``, filled with ossbench's samples in seconds), so its table, ``--benchmark-json``,
``--benchmark-autosave``/``--benchmark-save`` and ``pytest-benchmark compare`` see them like any other.
See docs/pytest.md.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from .export import pytest_benchmark_options
from .measure.spec import BenchSpec


class GpuBench:
    """Times one callable per test. Set ``spec`` (a ``BenchSpec``), ``device`` ("auto": the device of the
    first tensor argument, else a GPU when torch sees one; "cpu", "cuda:N"),
    ``flops``/``bytes``/``tokens`` (the work per call: results files then derive TFLOP/s, GB/s, tokens/s)
    or ``extra_info`` before or after the call; ``measurement`` holds the ``Measurement`` afterwards."""

    def __init__(self, node: pytest.Item, spec: BenchSpec, device: str, pytest_benchmark: Any = None) -> None:
        self.node = node
        self.spec = spec
        self.device = device
        self.flops: float | None = None
        self.bytes: float | None = None
        self.tokens: int | None = None
        # pytest-benchmark's fixture for this test when that plugin is active: its extra_info is ours, so
        # what a test adds lands in pytest-benchmark's JSON too
        self._pb = pytest_benchmark
        self.extra_info: dict[str, Any] = pytest_benchmark.extra_info if pytest_benchmark is not None else {}
        self.measurement = None  # an ossbench Measurement once called
        self.disabled = bool(pytest_benchmark is not None and pytest_benchmark.disabled)  # --benchmark-disable
        self._used = False

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._used:
            raise RuntimeError("gpu_bench times one callable per test (as pytest-benchmark's benchmark does); "
                               "parametrize the test to time several")
        if self._pb is not None and getattr(self._pb, "_mode", None):
            raise RuntimeError("this test already used pytest-benchmark's `benchmark` fixture; use one of the two")
        self._used = True
        if self._pb is not None:
            self._pb._mode = "gpu_bench(...)"  # so that a later benchmark(...) in this test refuses too
        if self.disabled:  # pytest-benchmark's --benchmark-disable: run the function once, time nothing
            return fn(*args, **kwargs)
        from .measure.timer import bench

        def call() -> None:
            fn(*args, **kwargs)

        device = _device_of(args, kwargs) if self.device == "auto" else self.device
        try:
            self.measurement = bench(call, spec=self.spec, device=device)
        except Exception:
            if self._pb is not None:
                self._pb.has_error = True  # pytest-benchmark leaves a benchmark that raised out of its files
            raise
        if self._pb is not None:
            m = self.measurement
            feed_pytest_benchmark(self._pb, m.samples_ms, m.settings(),
                                  {"median_ms": m.median_ms, "ci95_ms": list(m.ci95_ms), "n": m.n,
                                   "converged": m.converged})
        return fn(*args, **kwargs)


def _device_of(args: tuple, kwargs: dict) -> str | None:
    """For device "auto": where the first tensor argument lives (CPU work timed with CUDA events would read
    as ~0 ms), else None (bench's default: a GPU when torch sees one)."""
    import torch

    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return str(value.device) if value.device.type in ("cpu", "cuda") else None
    return None


def feed_pytest_benchmark(fixture: Any, samples_ms: list[float], settings: dict[str, Any],
                          summary: dict[str, Any]) -> None:
    """Add samples to pytest-benchmark's session as `fixture`'s benchmark: a ``Metadata`` (its statistics
    computed by pytest-benchmark itself) holding every sample, one call each, in seconds. `settings` is
    ``Measurement.settings()`` (a case's ``timing``); `summary` lands in ``extra_info["ossbench"]``."""
    from pytest_benchmark.stats import Metadata

    device_type = "cuda" if str(settings.get("device", "")).startswith("cuda") else "cpu"
    options = pytest_benchmark_options(settings, device_type)
    meta = Metadata(fixture, iterations=1, options=options)
    for sample_ms in samples_ms:
        meta.stats.update(sample_ms / 1e3)
    fixture.extra_info.setdefault("ossbench", {}).update(summary, device=settings.get("device"),
                                                         stop_reason=settings.get("stop_reason"))
    fixture.stats = meta
    fixture._add_stats(meta)  # pytest-benchmark's session list (`BenchmarkSession.benchmarks.append`)
