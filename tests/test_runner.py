"""The runner: one failing case never stops the run, failures are classified, the journal survives a crash."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest

import ossbench.workloads as workloads
from ossbench.results import load_results
from ossbench.runner import plan_run, run_plan
from ossbench.suite import load_suite
from ossbench.workloads.base import Check

TINY = Path(__file__).parent / "suites" / "tiny.yaml"


def patch_build(monkeypatch, wrap):
    """Route the attention family's build through `wrap(real_build, params, device, dtype)` (real_build
    already holds the case's seed)."""
    real = workloads.get_family("attention")
    fake = dataclasses.replace(real, build=lambda p, d, t, seed: wrap(functools.partial(real.build, seed=seed),
                                                                      p, d, t))
    monkeypatch.setattr(workloads, "get_family", lambda name: fake)


def test_failures_are_recorded_and_the_run_goes_on(monkeypatch, tmp_path):
    import torch

    def wrap(build, params, device, dtype):
        if params.seq_len == 32 and params.mode == "prefill" and params.window:
            raise RuntimeError("boom")
        if params.mode == "decode" and params.window:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")
        if params.mode == "decode":
            w = build(params, device, dtype)
            return dataclasses.replace(w, check=lambda: Check(1.0, 0.5, 1e-5, "a deliberately wrong output"))
        return build(params, device, dtype)

    patch_build(monkeypatch, wrap)
    run = run_plan(plan_run(load_suite(TINY), device="cpu", out_dir=tmp_path))
    status = {c.id: (c.status, c.error) for c in run.cases}
    assert status["attention/window8/mode=prefill,seq_len=32"][0] == "failed"
    assert "RuntimeError: boom" in status["attention/window8/mode=prefill,seq_len=32"][1]
    assert status["attention/window8/mode=decode,kv_len=64"][0] == "oom"
    assert status["attention/full/mode=decode,kv_len=64"][0] == "failed"
    assert "max relative error 0.5 > tolerance 1e-05" in status["attention/full/mode=decode,kv_len=64"][1]
    assert [s for s, _ in status.values()].count("ok") == 3
    assert load_results(tmp_path / "results.json").cases[0].status == "ok"


def test_skip_is_recorded_with_reason(monkeypatch, tmp_path):
    from ossbench.errors import SkipCase

    def wrap(build, params, device, dtype):
        if params.window:
            raise SkipCase("this backend cannot express a sliding window")
        return build(params, device, dtype)

    patch_build(monkeypatch, wrap)
    run = run_plan(plan_run(load_suite(TINY), device="cpu", out_dir=tmp_path, filter_text="mode=prefill"))
    skipped = [c for c in run.cases if c.status == "skipped"]
    assert len(skipped) == 2 and all("sliding window" in c.error for c in skipped)


def test_a_crash_mid_run_leaves_a_journal_of_finished_cases(tmp_path):
    finished = []

    def on_case(case, result):
        if result is not None:
            finished.append(case.id)
            if len(finished) == 2:
                raise KeyboardInterrupt  # the user pressed Ctrl-C after the second case

    with pytest.raises(KeyboardInterrupt):
        run_plan(plan_run(load_suite(TINY), device="cpu", out_dir=tmp_path), on_case)
    assert not (tmp_path / "results.json").exists()
    recovered = load_results(tmp_path / "journal.jsonl")
    assert [c.id for c in recovered.cases] == finished
    assert recovered.suite.name == "tiny"


def test_memory_and_cost_are_recorded(tmp_path):
    run = run_plan(plan_run(load_suite(TINY), device="cpu", out_dir=tmp_path, filter_text="seq_len=64"))
    for c in run.cases:
        assert c.memory.kind == "cpu_alloc" and c.memory.persistent_bytes > 0
        assert c.flops > 0 and c.bytes > 0 and c.tokens == 64
        assert c.derived.tokens_per_s == pytest.approx(64 / (c.stats.median / 1e3))
    full, window = run.cases
    assert window.flops < full.flops  # the window computes fewer query/key pairs


def test_a_lost_cuda_context_stops_running_later_cases(monkeypatch, tmp_path):
    calls = []

    def wrap(build, params, device, dtype):
        calls.append(params.seq_len)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    patch_build(monkeypatch, wrap)
    run = run_plan(plan_run(load_suite(TINY), device="cpu", out_dir=tmp_path, filter_text="mode=prefill"))
    assert len(calls) == 1  # the first failure poisons the context: nothing else is attempted
    assert [c.status for c in run.cases] == ["failed"] * 4
    assert all("CUDA context was lost in attention/full/mode=prefill,seq_len=32" in c.error for c in run.cases[1:])


def test_cpu_out_of_memory_is_recorded_as_oom(monkeypatch, tmp_path):
    def cpu_allocator_fails():
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                           "you tried to allocate 1099511627776 bytes.")

    def wrap(build, params, device, dtype):
        if params.window:
            raise MemoryError()
        return dataclasses.replace(build(params, device, dtype), fn=cpu_allocator_fails)

    patch_build(monkeypatch, wrap)
    run = run_plan(plan_run(load_suite(TINY), device="cpu", out_dir=tmp_path, filter_text="seq_len=32"))
    assert [c.status for c in run.cases] == ["oom", "oom"]
    assert "DefaultCPUAllocator: not enough memory" in run.cases[0].error
    assert run.cases[1].error.startswith("MemoryError")


def test_an_ordinary_runtime_error_is_not_called_oom():
    from ossbench.failures import is_oom

    assert not is_oom(RuntimeError("shape mismatch: [4, 8] vs [4, 9]"))
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))


def test_quick_respects_a_suite_max_samples_below_its_min_samples(tmp_path):
    """--quick asks for at most 5 samples; a suite capping cases at 3 (and asking for 2) keeps its own."""
    text = (Path(__file__).parent / "suites" / "tiny.yaml").read_text()
    text = text.replace("target_rel_ci: 0.2}", "target_rel_ci: 0.2, min_samples: 2, max_samples: 3}").replace(
        "min_samples: 5, ", "")
    suite_file = tmp_path / "capped.yaml"
    suite_file.write_text(text)
    plan = plan_run(load_suite(suite_file), device="cpu", out_dir=tmp_path / "out", quick=True,
                    filter_text="mode=decode")
    assert (plan.timing.min_samples, plan.timing.max_samples) == (2, 3)
    run = run_plan(plan)
    assert [c.status for c in run.cases] == ["ok"] * len(plan.cases) and all(2 <= c.stats.n <= 3 for c in run.cases)


@pytest.mark.parametrize("extra, warned", [(8.0, True), (None, False)])
def test_a_run_planned_on_a_loaded_machine_says_so_and_records_the_load(monkeypatch, tmp_path, extra, warned):
    import os

    from ossbench.run_console import notices

    loadavg = 0.0 if extra is None else os.cpu_count() + extra  # 8 more runnable tasks than cores, or none
    monkeypatch.setattr(os, "getloadavg", lambda: (loadavg, loadavg, loadavg))
    plan = plan_run(load_suite(Path(__file__).parent / "suites" / "tiny.yaml"), device="cpu", out_dir=tmp_path)
    load = plan.environment["load"]
    assert load["loadavg"][0] == loadavg and load["cpu_count"] == os.cpu_count() and load["threads"] >= 1
    loaded = [n for n in notices(plan) if "machine loaded" in n]
    assert bool(loaded) == (loadavg >= os.cpu_count() - load["threads"] + 1) == warned
    if warned:
        assert f"load average {loadavg:.1f}" in loaded[0] and "CPU timings will read high" in loaded[0]
