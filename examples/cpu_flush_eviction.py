"""How large must bench's CPU cold flush be? Time a call right after sweeps of several sizes.

For each flush size F (MiB): sweep a buffer of F MiB with the read-modify-write bench uses, then time one
single-threaded call (a read of 1 MiB, a read of 8 MiB, a 512^2 fp32 matmul). Conditions are interleaved
and each figure is the median of ROUNDS rounds. "share" is (t_F - t_hot) / (t_max - t_hot): how much of the
largest sweep's slowdown a sweep of F gives. The table in docs/bench.md ("On a CPU") came from this script.

    python examples/cpu_flush_eviction.py [ROUNDS]
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from ossbench.measure.timer import cpu_last_level_cache_bytes

MiB = 2**20


def main(rounds: int = 15) -> None:
    torch.set_num_threads(1)
    llc = cpu_last_level_cache_bytes() // MiB
    sizes = [0, 32, 64, 128, llc // 2, llc, 2 * llc]
    bufs = {}
    for f in sizes[1:]:
        bufs[f] = np.zeros(f * MiB // 8, dtype=np.int64)
        np.add(bufs[f], 1, out=bufs[f])  # fault the pages in
    a, b, c = torch.randn(512, 512), torch.randn(512, 512), torch.empty(512, 512)
    small, large = np.random.rand(MiB // 8), np.random.rand(8 * MiB // 8)
    works = {"read 1 MiB": small.sum, "read 8 MiB": large.sum, "matmul 512^2": lambda: torch.matmul(a, b, out=c)}
    flush_ms: dict[int, list[float]] = {f: [] for f in sizes}
    call_ms = {(w, f): [] for w in works for f in sizes}
    for _ in range(rounds):
        for f in sizes:
            for w, fn in works.items():
                fn()  # its data cached
                t0 = time.perf_counter_ns()
                if f:
                    np.add(bufs[f], 1, out=bufs[f])
                t1 = time.perf_counter_ns()
                fn()
                t2 = time.perf_counter_ns()
                flush_ms[f].append((t1 - t0) * 1e-6)
                call_ms[(w, f)].append((t2 - t1) * 1e-6)
    print(f"LLC {llc} MiB; load average {os.getloadavg()[0]:.1f}; median of {rounds} rounds")
    print(f"{'flush MiB':>14} " + " ".join(f"{f:>7d}" for f in sizes))
    print(f"{'flush ms':>14} " + " ".join(f"{np.median(flush_ms[f]):7.2f}" for f in sizes))
    for w in works:
        med = [float(np.median(call_ms[(w, f)])) for f in sizes]
        print(f"{w + ' ms':>14} " + " ".join(f"{m:7.3f}" for m in med))
        print(f"{'share':>14} " + " ".join(f"{(m - med[0]) / (med[-1] - med[0]):7.2f}" for m in med))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
