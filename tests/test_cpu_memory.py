"""A CPU case's memory is its own tensors (torch's CPU allocator, via profiler memory events), not the
process's warm-up: twins report the same figures whichever runs first."""

from __future__ import annotations

import pytest
import torch

from ossbench.measure.memory import CpuAllocations, cpu_call_allocations
from ossbench.runner import run_plan
from ossbench.runner import plan_run
from ossbench.suite import parse_suite

MiB = 2**20


def test_allocations_count_what_is_kept_and_what_is_transient(capfd):
    before = torch.randn(MiB // 4)  # 1 MiB allocated before the session, freed inside it: not counted
    with CpuAllocations() as alloc:
        kept = torch.empty(2 * MiB // 4)  # 2 MiB, alive at the end
        tmp = torch.empty(4 * MiB // 4)  # 4 MiB, freed inside
        del tmp, before
    assert alloc.error is None
    assert alloc.live_bytes == kept.nbytes
    assert alloc.peak_bytes == kept.nbytes + 4 * MiB
    err = capfd.readouterr().err
    assert "Memory block of unknown size" not in err and "profiler_st" not in err


def test_one_call_is_counted_with_its_result_dropped():
    x = torch.randn(256, 256)
    alloc = cpu_call_allocations(lambda: (x @ x).relu())
    assert alloc.live_bytes == 0 and alloc.peak_bytes >= 2 * x.nbytes  # the matmul's output and relu's


TWINS = """
name: twins
description: two identical cases, cold cache (the first case allocates bench's flush buffer)
family: attention
preset: gpt-oss-20b
dtype: float32
mode: prefill
params: {hidden: 64, n_heads: 4, n_kv_heads: 2, head_dim: 16, batch: 1, backend: eager, seq_len: 64}
variants:
  first: {}
  second: {}
timing: {cache: cold, warmup_s: 0.0, min_samples: 3, min_time_s: 0.0, max_time_s: 0.2, target_rel_ci: 0.5,
         flush_bytes: 67108864}
"""


def test_twin_cases_report_the_same_memory_whichever_runs_first(tmp_path):
    run = run_plan(plan_run(parse_suite(TWINS, "twins.yaml"), device="cpu", out_dir=tmp_path))
    first, second = (c.memory for c in run.cases)
    assert first.kind == second.kind == "cpu_alloc"
    assert first.peak_bytes == pytest.approx(second.peak_bytes, rel=0.05)
    assert first.transient_peak_bytes == pytest.approx(second.transient_peak_bytes, rel=0.05)
    # what the build left is what the workload says it holds (weights, inputs)
    assert first.persistent_measured_bytes == pytest.approx(first.persistent_bytes, rel=0.05)
    assert first.peak_bytes >= first.persistent_measured_bytes + first.transient_peak_bytes * 0.99
    assert first.rss_peak_bytes is not None  # the process view is kept beside it
