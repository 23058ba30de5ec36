"""Measured DRAM bytes: the ncu CSV parser on a realistic sample, the unavailable paths (this CPU machine),
the CUPTI trace reader; and on a GPU, measured bytes of a copy against the modelled minimum."""

from __future__ import annotations

import pytest
import torch

from ossbench.measure import counters
from ossbench.measure.counters import (DRAM_METRICS, dram_from_ncu, dram_record, metrics_from_trace, ncu_command,
                                       parse_ncu_csv, run_ncu)

COPY_KERNEL = "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, " \
              "at::detail::Array<char *, 3>>(int, T2, T3)"
NCU_STDOUT = f'''==PROF== Connected to process 48213 (/usr/bin/python3.12)
case rebuilt: attention/full/seq_len=4096
==PROF== Profiling "vectorized_elementwise_kernel" - 0: 0%....50%....100% - 1 pass
==PROF== Profiling "vectorized_elementwise_kernel" - 1: 0%....50%....100% - 1 pass
==PROF== Profiling "gemv2T_kernel_val" - 2: 0%....50%....100% - 1 pass
==PROF== Disconnected from process 48213
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","48213","python3.12","127.0.0.1","{COPY_KERNEL}","1","7","(128, 1, 1)","(65536, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","67,174,400"
"0","48213","python3.12","127.0.0.1","{COPY_KERNEL}","1","7","(128, 1, 1)","(65536, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","33,554,432"
"1","48213","python3.12","127.0.0.1","{COPY_KERNEL}","1","7","(128, 1, 1)","(65536, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","Mbyte","67.17"
"1","48213","python3.12","127.0.0.1","{COPY_KERNEL}","1","7","(128, 1, 1)","(65536, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","Mbyte","33.55"
"2","48213","python3.12","127.0.0.1","gemv2T_kernel_val","1","7","(128, 1, 1)","(8, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","Kbyte","4.10"
"2","48213","python3.12","127.0.0.1","gemv2T_kernel_val","1","7","(128, 1, 1)","(8, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","n/a"
'''


def test_parse_ncu_csv_skips_prof_lines_and_scales_units():
    rows = parse_ncu_csv(NCU_STDOUT)
    assert len(rows) == 5  # the "n/a" value is dropped
    first = rows[0]
    assert first["id"] == "0" and first["kernel"] == COPY_KERNEL and first["metric"] == "dram__bytes_read.sum"
    assert first["value"] == 67_174_400 and first["unit"] == "byte"  # thousands separators removed
    assert rows[2]["value"] == pytest.approx(67.17e6)  # Mbyte is 10^6 bytes in Nsight Compute
    assert rows[4]["value"] == pytest.approx(4100.0)


def test_dram_bytes_per_call_from_ncu_rows():
    rec = dram_from_ncu(parse_ncu_csv(NCU_STDOUT), calls=2, median_ms=0.05, model_bytes=50e6)
    read = 67_174_400 + 67.17e6 + 4100
    write = 33_554_432 + 33.55e6
    assert rec["available"] and rec["source"] == "ncu" and rec["kernels_profiled"] == 3
    assert rec["read_bytes"] == pytest.approx(read / 2) and rec["write_bytes"] == pytest.approx(write / 2)
    assert rec["bytes"] == pytest.approx((read + write) / 2)
    assert rec["gbps"] == pytest.approx((read + write) / 2 / 0.05e-3 / 1e9)
    assert rec["measured_over_model"] == pytest.approx((read + write) / 2 / 50e6)
    assert rec["top_kernels"][0]["kernel"] == COPY_KERNEL[:200]


def test_parse_ncu_output_without_a_table():
    assert parse_ncu_csv("==PROF== ERROR: Failed to initialize the profiler\n") == []
    assert not dram_from_ncu([], calls=1)["available"]


def test_ncu_command_profiles_only_the_marked_range():
    cmd = ncu_command(["python", "-c", "pass"], ncu="/opt/ncu")
    assert cmd[:3] == ["/opt/ncu", "--metrics", ",".join(DRAM_METRICS)]
    assert "--csv" in cmd and cmd[cmd.index("--profile-from-start") + 1] == "off"
    assert cmd[cmd.index("--print-units") + 1] == "base" and cmd[-3:] == ["python", "-c", "pass"]


def test_no_ncu_on_the_path_is_said_plainly(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    rec = run_ncu(["python", "-c", "pass"], calls=1)
    assert rec == {"available": False, "reason": "ncu (Nsight Compute) is not on the PATH"}


def test_ncu_failure_is_reported(monkeypatch, tmp_path):
    fake = tmp_path / "ncu"  # an ncu that cannot read the counters, as seen on some sandboxes
    fake.write_text("#!/bin/sh\necho '==PROF== ERROR: Failed to initialize the profiler: LibraryNotLoaded'\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    rec = run_ncu(["python", "-c", "pass"], calls=1)
    assert not rec["available"] and "LibraryNotLoaded" in rec["reason"] and "exited 1" in rec["reason"]


def test_metrics_from_a_range_profiler_trace():
    trace = {"traceEvents": [
        {"name": "kernel", "args": {}},
        {"cat": "cuda_profiler_range", "name": "range0",
         "args": {"dram__bytes_read.sum": 1000.0, "dram__bytes_write.sum": 500}},
        {"cat": "cuda_profiler_range", "name": "range1", "args": {"dram__bytes_read.sum": 24.0}},
    ]}
    assert metrics_from_trace(trace) == {"dram__bytes_read.sum": 1024.0, "dram__bytes_write.sum": 500.0}


def test_dram_record_without_timing():
    rec = dram_record(3e6, 1e6, calls=2, source="cupti")
    assert rec == {"available": True, "source": "cupti", "calls": 2, "read_bytes": 1.5e6, "write_bytes": 0.5e6,
                   "bytes": 2e6}


def test_summary_shows_measured_gbps_next_to_the_model():
    from ossbench.results import CaseResult, RunResult
    from ossbench.summary import cases_table

    case = CaseResult(id="a", family="f", variant="v", dtype="bfloat16", status="ok",
                      counters=dram_record(3e6, 1e6, calls=1, source="ncu", median_ms=0.001))
    run = RunResult.model_validate({
        "schema": "ossbench.results/1", "cases": [case.model_dump()],
        "suite": {"name": "s", "path": "x", "sha256": "0", "family": "f", "preset": "gpt-oss-20b"},
        "environment": {"device_type": "cuda", "device_name": "gpu", "python": "3", "platform": "p", "host": "h",
                        "ossbench_version": "0", "start_time": "now"}})
    column = next(c for c in cases_table(run).columns if c.header == "DRAM GB/s")
    assert list(column.cells) == ["4000.0"]  # 4 MB in 1 µs


# --------------------------------------------------------------------------------------------- the GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_measured_dram_bytes_of_a_copy_vs_the_model(tmp_path):
    """A 256 MiB copy must read and write at least 256 MiB each; prints what CUPTI or ncu measured."""
    nbytes = 256 * 2**20
    ok, why = counters.cupti_supported()
    if ok:
        src = torch.randn(nbytes // 4, device="cuda")
        dst = torch.empty_like(src)
        raw = counters.cupti_dram_bytes(lambda: dst.copy_(src), calls=3)
        rec = dram_record(raw["read"], raw["write"], raw["calls"], "cupti", model_bytes=2 * nbytes)
    else:
        script = tmp_path / "copy.py"
        script.write_text(
            "import torch\n"
            f"src = torch.randn({nbytes // 4}, device='cuda'); dst = torch.empty_like(src)\n"
            "dst.copy_(src); torch.cuda.synchronize()\n"
            "torch.cuda.profiler.start()\n"
            "for _ in range(3):\n    dst.copy_(src)\n"
            "torch.cuda.synchronize(); torch.cuda.profiler.stop()\n")
        import sys

        rec = run_ncu([sys.executable, str(script)], calls=3, model_bytes=2 * nbytes)
    print(f"\n[dram] CUPTI via torch: {'yes' if ok else why}; record: {rec}")
    if not rec["available"]:
        pytest.skip(f"no hardware counters here: {rec['reason']}")
    assert rec["read_bytes"] >= 0.95 * nbytes and rec["write_bytes"] >= 0.95 * nbytes
    assert rec["measured_over_model"] == pytest.approx(1.0, abs=0.15)
