"""The profiler on CPU ops, the kernel attribution rules on synthetic GPU events, and the runner/CLI
integration of the measurement depth (profile traces, memory detail, roofline, NVML power, throttle flag),
with a small matmul family registered for the test so nothing here depends on other families."""

from __future__ import annotations

import gzip
import json
import time
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict

import ossbench.workloads as workloads
from ossbench.cli import main
from ossbench.measure.nvml import open_device
from ossbench.measure.profile import CALL, WINDOW, profile_calls, summarize_events, trace_file_name
from ossbench.results import load_results
from ossbench.runner import MeasureOptions, plan_run, run_case, run_plan
from ossbench.suite import Timing
from ossbench.summary import cases_table
from ossbench.workloads.base import Check, Cost, Family, Workload
from test_nvml import fake_nvml

TINY = Path(__file__).parent / "suites" / "tiny.yaml"


def load_chrome_trace(path: Path) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        trace = json.load(f)
    assert isinstance(trace["traceEvents"], list) and trace["traceEvents"]
    assert all("ph" in e for e in trace["traceEvents"])  # every Chrome trace event has a phase
    return trace


# ------------------------------------------------------------------------------------- profiler on CPU


def test_profile_cpu_ops_and_trace(tmp_path):
    a, b = torch.randn(128, 128), torch.randn(128, 128)
    rec = profile_calls(lambda: torch.relu(a @ b).sum(), "cpu", calls=4, trace_path=tmp_path / "t.json.gz")
    names = [r["name"] for r in rec["top"]]
    assert rec["available"] and rec["calls"] == 4 and rec["activities"] == ["cpu"]
    assert "aten::mm" in names and CALL not in names and WINDOW not in names
    mm = next(r for r in rec["top"] if r["name"] == "aten::mm")
    assert mm["calls"] == 4 and mm["mean_ms"] == pytest.approx(mm["total_ms"] / 4) and 0 < mm["share"] <= 1
    assert sum(r["share"] for r in rec["top"]) <= 1.0 + 1e-9
    assert rec["host_ms_per_call"] > 0 and rec["ops_per_call"] >= 3 and rec["launch_bound"] is None
    assert rec["cache"] == "hot" and rec["trace"] == str(tmp_path / "t.json.gz")
    trace = load_chrome_trace(tmp_path / "t.json.gz")
    assert any(e.get("name") == "aten::mm" for e in trace["traceEvents"])


def test_trace_file_names():
    import hashlib

    name = trace_file_name("attention/full/mode=prefill,seq_len=64")
    digest = hashlib.sha256(b"attention/full/mode=prefill,seq_len=64").hexdigest()[:12]
    assert name == f"attention_full_mode=prefill_seq_len=64-{digest}.json.gz"
    assert trace_file_name("moe/a b/k=2").startswith("moe_a_b_k=2-")
    # ids that read alike still get their own file; long ids stay within file-name limits
    ids = ["p/q", "p_q", "p q", "p//q", "p/q/", "\x1b", "\x1c", "a" * 400, "a" * 401]
    names = [trace_file_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert all(len(n) < 160 and "/" not in n for n in names)


def _ev(name, start, end, device="CPU", self_us=None, annotation=False):
    return types.SimpleNamespace(name=name, device_type=types.SimpleNamespace(name=device),
                                 time_range=types.SimpleNamespace(start=start, end=end),
                                 self_cpu_time_total=self_us if self_us is not None else end - start,
                                 is_user_annotation=annotation)


def test_gpu_kernels_are_attributed_to_their_calls():
    """Two calls of two kernels each, with a cache flush before each call (times in µs)."""
    events = []
    for base in (0, 200):
        events += [
            _ev(WINDOW, base, base + 100, annotation=True), _ev(CALL, base, base + 30, annotation=True),
            _ev("cudaLaunchKernel", base + 5, base + 8), _ev("cudaLaunchKernel", base + 10, base + 12),
            _ev("flush_memset", base - 20, base - 10, device="CUDA"),  # before the window: the flush
            _ev(CALL, base + 40, base + 70, device="CUDA", annotation=True),  # the GPU-side annotation
            _ev("gemm_kernel", base + 40, base + 60, device="CUDA"),
            _ev("softmax_kernel", base + 65, base + 70, device="CUDA"),
        ]
    rec = summarize_events(events, calls=2, is_cuda=True)
    assert [r["name"] for r in rec["top"]] == ["gemm_kernel", "softmax_kernel"]
    gemm = rec["top"][0]
    assert gemm["calls"] == 2 and gemm["total_ms"] == pytest.approx(0.040) and gemm["share"] == pytest.approx(0.8)
    assert rec["kernels_per_call"] == 2 and rec["launches_per_call"] == 2
    assert rec["host_ms_per_call"] == pytest.approx(0.030)
    assert rec["device_ms_per_call"] == pytest.approx(0.025)  # 20 + 5 µs busy per call
    assert rec["device_span_ms_per_call"] == pytest.approx(0.030)
    assert rec["device_idle_fraction"] == pytest.approx(1 / 6)
    assert rec["launch_bound"] is True  # issuing took 30 µs, running 25 µs


def test_overlapping_kernels_count_once_in_busy_time():
    events = [_ev(WINDOW, 0, 100), _ev(CALL, 0, 5), _ev("a", 10, 50, device="CUDA"),
              _ev("b", 30, 70, device="CUDA")]
    rec = summarize_events(events, calls=1, is_cuda=True)
    assert rec["device_ms_per_call"] == pytest.approx(0.060) and rec["launch_bound"] is False


# ------------------------------------------------------------------------- a small family for the runner


class MatmulParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = 64
    backend: str = "eager"


def build_matmul(p, device, dtype, *, seed=0):
    a = torch.randn(p.n, p.n, device=device, dtype=dtype)
    b = torch.randn(p.n, p.n, device=device, dtype=dtype)
    c = torch.empty(p.n, p.n, device=device, dtype=dtype)

    def check():
        ref = a.double() @ b.double()
        err = ((a @ b).double() - ref).abs().max().item()
        return Check(err, err / ref.abs().max().item(), 1e-4, "float64 matmul")

    nbytes = 3 * p.n * p.n * a.element_size()
    return Workload(fn=lambda: torch.mm(a, b, out=c), check=check, persistent_bytes=nbytes,
                    cost=Cost(2 * p.n**3, nbytes, p.n, {"kv_cache_bytes": 2.0 * p.n * p.n}),
                    measured={"kv_cache_bytes": 2.0 * p.n * p.n + 64})


MATMUL = Family(name="matmul", description="n x n matmul", params_model=MatmulParams, defaults=lambda cfg: {},
                build=build_matmul)
SUITE = """
name: mm
family: matmul
dtype: float32
params: {n: 64}
variants: {small: {}, big: {n: 96}}
timing: {cache: cold, warmup_s: 0.01, min_samples: 5, min_time_s: 0.02, max_time_s: 0.3, target_rel_ci: 0.2}
"""


@pytest.fixture
def matmul_suite(monkeypatch, tmp_path):
    monkeypatch.setattr(workloads, "get_family", lambda name: MATMUL)
    monkeypatch.setattr(workloads, "family_names", lambda: ["matmul"])
    monkeypatch.setenv("OSSBENCH_CALIBRATION_DIR", str(tmp_path / "no-calibration"))
    path = tmp_path / "mm.yaml"
    path.write_text(SUITE)
    return path


def test_run_profile_writes_valid_traces(matmul_suite, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(matmul_suite), "--device", "cpu", "--out", str(out), "--profile"])
    assert result.exit_code == 0, result.output
    assert "NVML unavailable" in result.output and "traces:" in result.output
    run = load_results(out / "results.json")
    assert run.environment.measure == {"profile": True, "ncu": False, "strict_clocks": False}
    assert run.environment.nvml == {"available": False, "reason": "CPU run: no GPU to sample"}
    for c in run.cases:
        assert c.profile["available"] and c.profile["cache"] == "cold"  # profiled as it was timed
        assert c.profile["top"][0]["name"] == "aten::mm"
        assert c.profile["trace"] == f"traces/{trace_file_name(c.id)}"
        load_chrome_trace(out / c.profile["trace"])
        assert c.counters == {"available": False, "reason": "CPU run: no DRAM hardware counters"}
        assert c.power is None and c.throttled is None
        assert not c.roofline["available"] and c.roofline["reason"].startswith("no ceiling")


def test_suite_profile_option(matmul_suite, tmp_path):
    matmul_suite.write_text(SUITE + "profile: true\n")
    from ossbench.suite import load_suite

    plan = plan_run(load_suite(matmul_suite), device="cpu", out_dir=tmp_path / "p", filter_text="small")
    assert plan.measure.profile
    run = run_plan(plan)
    assert (tmp_path / "p" / run.cases[0].profile["trace"]).exists()


def test_memory_detail_and_calibrated_roofline(matmul_suite, tmp_path, monkeypatch):
    from ossbench.measure.calibrate import save_calibration
    from ossbench.suite import load_suite

    cal = tmp_path / "cal"
    monkeypatch.setenv("OSSBENCH_CALIBRATION_DIR", str(cal))
    from ossbench.env import cpu_model

    save_calibration({"schema": "ossbench.calibration/1", "device_type": "cpu", "device_name": cpu_model(),
                      "threads": torch.get_num_threads(), "ceilings": {"fp32_tflops": 0.05, "copy_gbps": 10.0}}, cal)
    run = run_plan(plan_run(load_suite(matmul_suite), device="cpu", out_dir=tmp_path / "r"))
    assert run.environment.ceilings["sources"] == {"fp32": "calibrated", "bandwidth": "calibrated"}
    for c in run.cases:
        n = c.params["n"]
        r = c.roofline
        assert r["available"] and r["dtype_key"] == "fp32" and r["compute_source"] == "calibrated"
        assert r["intensity"] == pytest.approx(2 * n**3 / (3 * n * n * 4))
        assert r["speed_of_light"] == pytest.approx(r["floor_ms"] / c.stats.median)
        m = c.memory
        assert m.kv_cache_model_bytes == 2.0 * n * n and m.kv_cache_measured_bytes == 2.0 * n * n + 64
        # counted through torch's CPU allocator: the build's three tensors, and mm(out=c) allocates nothing
        assert m.kind == "cpu_alloc" and m.persistent_bytes == 3 * n * n * 4
        assert m.persistent_measured_bytes == m.persistent_bytes and m.transient_peak_bytes == 0
        assert m.peak_bytes == m.persistent_bytes
        assert m.timed_peak_bytes is not None and m.rss_growth_bytes is not None and m.rss_peak_bytes is not None
    assert "SoL" in cases_table(run).columns[6].header


class WallClock:
    @property
    def t(self) -> float:
        return time.perf_counter()


def test_run_case_records_power_energy_and_throttling_with_nvml(matmul_suite):
    from ossbench.suite import load_suite

    case = load_suite(matmul_suite).cases()[0]
    n = fake_nvml(WallClock(), power_w=200.0, reasons=0x4)  # the power cap is holding the clocks down
    device = open_device(0, nvml=n)
    timing = Timing(cache="hot", warmup_s=0.01, min_samples=5, min_time_s=0.2, max_time_s=0.5, target_rel_ci=0.5)
    rec = run_case(case, "cpu", timing, MeasureOptions(nvml_device=device, strict_clocks=False))
    device.close()
    assert rec.status == "ok", rec.error
    e = rec.power["energy"]
    assert e["available"] and e["calls"] >= rec.stats.n
    assert e["window_j"] == pytest.approx(200.0 * e["window_s"], rel=0.05)
    assert e["per_token_j"] == pytest.approx(e["per_call_j"] / 64)
    assert rec.throttled is True and rec.clocks["throttled_samples"] == rec.stats.n
    assert rec.power["clock_events"]["reasons"] == ["sw_power_cap"]
    from ossbench.results import RunResult

    table = cases_table(RunResult.model_validate({
        "schema": "ossbench.results/1", "cases": [rec.model_dump()],
        "suite": {"name": "mm", "path": "x", "sha256": "0", "family": "matmul", "preset": "gpt-oss-20b"},
        "environment": {"device_type": "cpu", "device_name": "cpu", "python": "3", "platform": "p", "host": "h",
                        "ossbench_version": "0", "start_time": "now"}}))
    assert "energy/token" in [c.header for c in table.columns]
    assert any("(throttled)" in cell for cell in table.columns[-1].cells)


def test_profiling_prints_no_profiler_start_stop_lines():
    """Kineto's profiler_start/stop lines (two per session) stay off stderr: in a fresh process (the
    environment variable) and in this one, where kineto may have started already (the filter)."""
    import subprocess
    import sys

    from ossbench.measure.counters import child_env

    code = ("import torch\nfrom ossbench.measure.profile import profile_calls\nx = torch.randn(64, 64)\n"
            "for _ in range(3):\n    profile_calls(lambda: x @ x, 'cpu', calls=2)\nprint('ok')\n")
    env = {k: v for k, v in child_env().items() if k != "KINETO_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert "profiler_st" not in done.stderr and "USDT" not in done.stderr, done.stderr


def test_the_stderr_filter_drops_only_profiler_noise(capfd):
    import os

    from ossbench.measure.quiet import filtered_stderr

    with filtered_stderr():
        os.write(2, b"USDT:2026-12-02 04:56:22 1:1 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(2, b"a real warning\n")
        os.write(2, b"[W1202 CPUAllocator.cpp:245] Memory block of unknown size was allocated before the "
                    b"profiling started, profiler results will not include the deallocation event\n")
    assert capfd.readouterr().err == "a real warning\n"


def test_tiny_suite_with_profile_on_cpu(tmp_path):
    """The attention suite from the issue's must-show, when the attention family is present."""
    pytest.importorskip("ossbench.workloads.attention")
    out = tmp_path / "x"
    result = CliRunner().invoke(main, ["run", "--profile", str(TINY), "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    run = load_results(out / "results.json")
    traces = sorted((out / "traces").glob("*.json.gz"))
    assert len(traces) == len(run.cases) == 6
    for path in traces:
        load_chrome_trace(path)


# --------------------------------------------------------------------------------------------- the GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_profiler_kernel_time_agrees_with_bench():
    from ossbench.measure.timer import bench

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    c = torch.empty_like(a)

    def fn():
        return torch.matmul(a, b, out=c)

    m = bench(fn, cache="hot", max_time_s=3.0)
    rec = profile_calls(fn, "cuda:0", calls=10)
    top = rec["top"][0]
    print(f"\n[profile] bench median {m.median_ms:.4f} ms; profiler: {top['name'][:80]} mean {top['mean_ms']:.4f} ms, "
          f"{rec['kernels_per_call']} kernel(s)/call, {rec['launches_per_call']} launch(es)/call, host "
          f"{rec['host_ms_per_call']:.4f} ms vs device {rec['device_ms_per_call']:.4f} ms per call")
    assert rec["kernels_per_call"] == pytest.approx(1.0)
    assert top["mean_ms"] == pytest.approx(m.median_ms, rel=0.10)
    assert rec["launch_bound"] is False
