"""What bench itself costs per sample, measured with pytest-benchmark on a no-op fn (CPU, hot)."""

from __future__ import annotations

import time

from ossbench.measure.timer import bench

# A target this loose is met by the first batch, so every call takes exactly SAMPLES samples and one
# stopping check: what is timed is bench's bookkeeping, not its stopping rule.
SAMPLES = 2000
FIXED = dict(device="cpu", cache="hot", warmup_s=0.0, min_samples=SAMPLES, min_time_s=0.0, max_time_s=10.0,
             target_rel_ci=0.99)  # as loose as a BenchSpec allows (below ±100%)


def noop() -> None:
    pass


def test_bench_overhead_per_sample(benchmark):
    walls = []

    def run():
        t0 = time.perf_counter()
        m = bench(noop, **FIXED)
        walls.append(time.perf_counter() - t0)
        return m

    m = benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)
    assert m.n == SAMPLES and m.converged

    # Wall time of a whole bench() call (warm-up call, samples, statistics) divided by the sample count.
    per_sample_us = min(walls) / SAMPLES * 1e6
    # What lands inside the timed region besides fn: two clock reads and the call.
    in_region_us = m.median_ms * 1e3
    # The same with the default stopping rule at work (doubling batches, a CI check after each).
    t0 = time.perf_counter()
    adaptive = bench(noop, device="cpu", cache="hot", warmup_s=0.0, min_time_s=0.1, max_time_s=2.0)
    adaptive_us = (time.perf_counter() - t0) / adaptive.n * 1e6
    benchmark.extra_info.update(per_sample_overhead_us=per_sample_us, in_region_overhead_us=in_region_us,
                                adaptive_per_sample_overhead_us=adaptive_us, samples_per_call=SAMPLES)
    print(f"\n[bench overhead, cpu hot no-op] {per_sample_us:.2f} us per sample (whole call / n, fixed n), "
          f"{adaptive_us:.2f} us per sample with the adaptive rule (n={adaptive.n}), "
          f"{in_region_us:.3f} us inside the timed region (median sample)")
    assert per_sample_us < 200
    assert adaptive_us < 200
    assert in_region_us < 20
