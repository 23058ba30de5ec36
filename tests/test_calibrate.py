"""`ossbench calibrate`: measured ceilings on CPU, their repeats, spread and checks, saved (or refused) and
found again by runs; on a GPU, next to the datasheet.

Refusal tests replace `bench` with a fake whose medians are chosen, so the spread or the implausibility is
known exactly; the rest of calibrate (buffers, the CPU bf16 probe, repeats, checks, saving) runs for real.
"""

from __future__ import annotations

import json
import os
import types

import pytest
import torch
from click.testing import CliRunner

from ossbench.cli import main
from ossbench.hardware import Device
from ossbench.measure import calibration_checks as checks
from ossbench.measure import timer
from ossbench.measure.calibrate import (SCHEMA, CalibrationRefused, calibrate, calibration_dir, device_slug,
                                        load_calibration, save_calibration)
from ossbench.measure.calibration_checks import (check_calibration, cpu_bf16_support, load_warnings,
                                                 other_gpu_processes)
from ossbench.measure.roofline import peak_for, resolve_ceilings, roofline

H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def cal_dir(tmp_path, monkeypatch):
    d = tmp_path / "calibration"
    monkeypatch.setenv("OSSBENCH_CALIBRATION_DIR", str(d))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # never the user's ~/.cache
    return d


@pytest.fixture(scope="module")
def cpu_record():
    # Small sizes: a rough but real calibration in a few seconds (its checks may fail on a busy machine).
    return calibrate("cpu", quick=True, matmul_n=128, copy_bytes=16 * 2**20)


def fake_bench(monkeypatch, medians_ms: list[float]) -> list[float]:
    """Replace bench: the k-th measurement of each ceiling has median `medians_ms[k]` (cycling), so every
    ceiling sees the same sequence; returns the medians handed out, in call order."""
    calls: list[float] = []
    seen: dict[object, int] = {}  # keyed by the function itself: holding it keeps its id from being reused

    def bench(fn, **kw):
        fn()  # the real call once, so a broken timed function still fails
        k = seen[fn] = seen.get(fn, -1) + 1
        calls.append(medians_ms[k % len(medians_ms)])
        return types.SimpleNamespace(median_ms=calls[-1], rel_ci=0.001, n=10, converged=True)

    monkeypatch.setattr(timer, "bench", bench)
    return calls


def test_cpu_calibration_measures_each_ceiling_several_times(cpu_record):
    r = cpu_record
    assert r["schema"] == SCHEMA and r["device_type"] == "cpu" and r["threads"] == torch.get_num_threads()
    assert r["repeats"] == 3  # --quick
    fp32 = r["matmul"]["fp32"]
    assert fp32["n"] == 128 and fp32["tflops"] > 0 and len(fp32["repeats"]) == len(fp32["runs"]) == 3
    assert all(run["samples"] >= 5 for run in fp32["runs"])
    # the ceiling is the median repeat, and the spread is max/min - 1 of the repeats
    assert fp32["tflops"] == pytest.approx(2 * 128**3 / (fp32["median_ms"] / 1e3) / 1e12)
    assert fp32["tflops"] == pytest.approx(sorted(fp32["repeats"])[1])
    assert fp32["spread"] == pytest.approx(max(fp32["repeats"]) / min(fp32["repeats"]) - 1)
    assert "bf16" in r["matmul"]  # measured, or skipped with the reason when the CPU has no fast path
    assert r["matmul"]["bf16"].get("tflops") or r["matmul"]["bf16"].get("skipped")
    assert r["copy"]["gbps"] == pytest.approx(2 * 16 * 2**20 / (r["copy"]["median_ms"] / 1e3) / 1e9)
    assert r["ceilings"]["fp32_tflops"] == fp32["tflops"] and r["ceilings"]["copy_gbps"] == r["copy"]["gbps"]
    # the load it saw, and checks whose verdict matches their problems
    assert len(r["load"]["before"]["loadavg"]) == 3 and r["load"]["before"]["cpu_count"] == os.cpu_count()
    assert r["load"]["loaded"] == bool(r["load"]["warnings"])
    assert r["checks"]["ok"] == (not r["checks"]["problems"]) and r["checks"]["spread_metric"] == "max/min - 1"


def test_repeats_are_interleaved_and_the_median_is_the_ceiling(monkeypatch):
    calls = fake_bench(monkeypatch, [1.0, 1.02, 0.99])
    r = calibrate("cpu", repeats=3, matmul_n=64, copy_bytes=2**20)
    measured = [m for m in ("fp32", "bf16") if r["matmul"][m]["tflops"] is not None]
    # one round over every ceiling, then the next: round k hands each ceiling its k-th median
    per_round = len(measured) + 1
    assert calls == [1.0] * per_round + [1.02] * per_round + [0.99] * per_round
    fp32 = r["matmul"]["fp32"]
    assert fp32["median_ms"] == 1.0 and fp32["spread"] == pytest.approx(1.02 / 0.99 - 1)
    assert r["checks"]["problems"] == []  # 3% spread, no datasheet row, bf16 as fast as fp32


def test_a_wide_spread_is_refused_and_nothing_saved(monkeypatch, cal_dir):
    fake_bench(monkeypatch, [1.0, 1.5])  # every ceiling's repeats alternate: 50% spread
    result = CliRunner().invoke(main, ["calibrate", "--device", "cpu", "--quick"], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "check failed: fp32 matmul: repeats spread 50.0% (max/min - 1 over 3:" in out
    assert "over the 10% threshold" in out and "calibration refused (not saved)" in out and "--force" in out
    assert not cal_dir.exists() or not list(cal_dir.iterdir())
    # the threshold is an option: at 60% the same measurement is accepted and saved
    result = CliRunner().invoke(main, ["calibrate", "--device", "cpu", "--quick", "--max-spread", "60"])
    assert result.exit_code == 0, result.output
    saved = json.loads(next(cal_dir.glob("cpu-*.json")).read_text())
    assert saved["forced"] is False and saved["checks"]["ok"] and saved["checks"]["max_spread"] == 0.6


def test_force_saves_a_refused_calibration_and_records_it(monkeypatch, cal_dir):
    fake_bench(monkeypatch, [1.0, 1.5])
    result = CliRunner().invoke(main, ["calibrate", "--device", "cpu", "--quick", "--force"])
    assert result.exit_code == 0, result.output
    assert "saved despite the failed checks (--force)" in " ".join(result.output.split())
    saved = json.loads(next(cal_dir.glob("cpu-*.json")).read_text())
    assert saved["forced"] is True and not saved["checks"]["ok"]
    assert {p["check"] for p in saved["checks"]["problems"]} == {"spread"}
    # a run using it says so in its ceilings (and the report's "ceilings used" line)
    from ossbench.report.ceilings import describe_ceilings

    loaded = load_calibration(saved["device_name"], "cpu", saved["threads"])
    ceilings = resolve_ceilings(None, loaded)
    assert ceilings["calibration_forced"] is True
    assert "saved with --force despite failed checks" in describe_ceilings(ceilings, "cpu")


def test_implausible_against_the_datasheet_row_is_refused(monkeypatch, cal_dir):
    # A device named like an H100 (so the datasheet row exists) that measures 1 ms per call: far below it.
    import ossbench.hardware

    monkeypatch.setattr(ossbench.hardware, "cpu_model", lambda: H100)
    fake_bench(monkeypatch, [1.0])  # no spread at all
    result = CliRunner().invoke(main, ["calibrate", "--device", "cpu", "--quick"], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    fp32 = 2 * 512**3 / 1e-3 / 1e12
    assert (f"fp32 matmul: {fp32:.4g} TFLOP/s is {fp32 / 67:.0%} of the datasheet's 67 (H100 SXM); "
            "plausible is 50% to 110%") in out
    assert "copy (read+write):" in out and "datasheet's 3350" in out and "repeats spread" not in out
    assert not cal_dir.exists() or not list(cal_dir.iterdir())


def test_datasheet_plausibility_both_ways():
    sheet = peak_for(H100)

    def record(bf16, gbps):
        return {"device_type": "cuda", "device_name": H100, "matmul": {"bf16": {"tflops": bf16, "spread": 0.01,
                                                                                  "repeats": [bf16] * 5}},
                "copy": {"gbps": gbps, "spread": 0.01, "repeats": [gbps] * 5}}

    healthy = check_calibration(record(800.0, 3000.0))  # what an H100 SXM reaches: 81% and 90%
    assert healthy["ok"] and healthy["datasheet"] == "H100 SXM"
    too_high = check_calibration(record(1.2 * sheet["bf16_tflops"], 3000.0))
    assert [p["ceiling"] for p in too_high["problems"]] == ["bf16 matmul"] and "120%" in too_high["problems"][0]["message"]
    too_low = check_calibration(record(800.0, 0.4 * sheet["hbm_gbps"]))
    assert [p["check"] for p in too_low["problems"]] == ["datasheet"] and "40%" in too_low["problems"][0]["message"]
    # and the library refuses to save it unless forced
    with pytest.raises(CalibrationRefused, match="copy"):
        save_calibration({**record(800.0, 1000.0), "checks": too_low}, directory=None)


def test_cpu_bf16_faster_than_its_instructions_allow_is_refused():
    # The calibration: bf16 0.78 TFLOP/s beside fp32 0.013 (60x) on a busy CPU.
    rec = {"device_type": "cpu", "device_name": "AMD EPYC",
           "matmul": {"fp32": {"tflops": 0.013}, "bf16": {"tflops": 0.78}}, "copy": {"gbps": 3.3}}
    for support in ("none", "avx512_bf16", "amx_bf16"):
        problems = check_calibration(rec, bf16_support=support)["problems"]
        assert [p["check"] for p in problems] == ["consistency"], support
        assert "60.0x the fp32" in problems[0]["message"]
    assert check_calibration(rec, bf16_support=None)["ok"]  # not x86: no rule, the spread has to do
    amx = {**rec, "matmul": {"fp32": {"tflops": 0.05}, "bf16": {"tflops": 0.78}}}  # 15.6x: AMX can
    assert check_calibration(amx, bf16_support="amx_bf16")["ok"]
    assert not check_calibration(amx, bf16_support="avx512_bf16")["ok"]


def test_cpu_bf16_support_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert cpu_bf16_support(info) == "amx_bf16"
    info.write_text("flags\t\t: fpu sse avx2 fma avx512f avx512_bf16\n")
    assert cpu_bf16_support(info) == "avx512_bf16"
    info.write_text("flags\t\t: fpu sse avx2 fma\n")
    assert cpu_bf16_support(info) == "none"
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # an ARM: unknown, no rule
    assert cpu_bf16_support(info) is None
    assert cpu_bf16_support(tmp_path / "missing") is None


def test_load_warnings():
    quiet = {"loadavg": [0.3, 0.2, 0.1], "cpu_count": 16}
    assert load_warnings(quiet, quiet, threads=16) == []
    busy = {"loadavg": [3.3, 2.2, 1.4], "cpu_count": 2}
    (line,) = load_warnings(busy, busy, threads=2)
    assert "1-minute load average 3.30 before measuring, on 2 CPUs with 2 calibration threads" in line
    # other work on cores the calibration leaves free does not count
    assert load_warnings({"loadavg": [3.3, 2.0, 1.0], "cpu_count": 16}, quiet, threads=8) == []
    gpu = {"loadavg": [0.1, 0.1, 0.1], "cpu_count": 16, "gpu_other_processes": 0}
    assert load_warnings(gpu, {**gpu, "gpu_other_processes": 2}, threads=None) == [
        "2 other process(es) held a compute context on the GPU (NVML)"]


def _nvml_with_processes(pids: list[int] | None):
    n = types.SimpleNamespace(nvmlInit=lambda: None, nvmlShutdown=lambda: None,
                              nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}", nvmlDeviceGetName=lambda h: H100)
    if pids is not None:
        n.nvmlDeviceGetComputeRunningProcesses = lambda h: [types.SimpleNamespace(pid=p, usedGpuMemory=1)
                                                            for p in pids]
    return n


def test_other_gpu_processes_through_nvml():
    me = os.getpid()
    gpu = Device(type="cuda", index=0, name=H100)
    assert other_gpu_processes(gpu, nvml=_nvml_with_processes([me, 4242])) == (1, "")
    assert other_gpu_processes(gpu, nvml=_nvml_with_processes([me])) == (0, "")
    # in a container NVML shows host PIDs: one of those listed is this process
    count, note = other_gpu_processes(gpu, nvml=_nvml_with_processes([91, 92]))
    assert count == 1 and "container" in note
    count, note = other_gpu_processes(gpu, nvml=_nvml_with_processes(None))
    assert count is None and "nvmlDeviceGetComputeRunningProcesses" in note
    load = checks.machine_load(gpu, nvml=_nvml_with_processes([me, 1, 2]))
    assert load["gpu_other_processes"] == 2 and len(load["loadavg"]) == 3


def test_save_and_load_round_trip(cpu_record, cal_dir):
    path = save_calibration(cpu_record, force=True)  # force: on a busy test machine its checks may fail
    assert path.parent == cal_dir == calibration_dir()
    assert path.name == device_slug(cpu_record["device_name"], "cpu", cpu_record["threads"]) + ".json"
    loaded = load_calibration(cpu_record["device_name"], "cpu", cpu_record["threads"])
    assert loaded["ceilings"] == cpu_record["ceilings"] and loaded["path"] == str(path)
    assert loaded["forced"] == (not cpu_record["checks"]["ok"])
    # Another thread count is another calibration: CPU matmul speed depends on it.
    assert load_calibration(cpu_record["device_name"], "cpu", cpu_record["threads"] + 7) is None


def test_corrupt_or_foreign_files_are_ignored(cal_dir):
    cal_dir.mkdir(parents=True)
    (cal_dir / "nvidia-h100-80gb-hbm3.json").write_text("{not json")
    assert load_calibration(H100, "cuda") is None
    (cal_dir / "nvidia-h100-80gb-hbm3.json").write_text(json.dumps({"schema": "other/1", "ceilings": {}}))
    assert load_calibration(H100, "cuda") is None


def test_default_directory_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("OSSBENCH_CALIBRATION_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert calibration_dir() == tmp_path / "ossbench" / "calibration"


def test_slugs():
    assert device_slug(H100) == "nvidia-h100-80gb-hbm3"
    assert device_slug("AMD EPYC 7763 64-Core Processor", "cpu", 2) == "cpu-amd-epyc-7763-64-core-processor-2t"


def test_calibrated_cpu_ceilings_give_a_cpu_roofline(cpu_record):
    ceilings = resolve_ceilings(None, cpu_record)
    peak_flops = cpu_record["ceilings"]["fp32_tflops"] * 1e12
    ridge = peak_flops / (cpu_record["ceilings"]["copy_gbps"] * 1e9)
    flops = 1e9
    # Ten times the ridge's intensity: compute-bound; running exactly at the peak is 100% of the ceiling.
    r = roofline(flops, flops / (10 * ridge), flops / peak_flops * 1e3, "fp32", ceilings)
    assert r["available"] and r["compute_source"] == "calibrated" and r["bandwidth_source"] == "calibrated"
    assert r["bound"] == "compute" and r["speed_of_light"] == pytest.approx(1.0)
    # A tenth of it: memory-bound, and twice the floor time is 50%.
    r = roofline(flops, flops / (ridge / 10), 2 * flops / (ridge / 10) / (cpu_record["ceilings"]["copy_gbps"] * 1e9) * 1e3,
                 "fp32", ceilings)
    assert r["bound"] == "memory" and r["speed_of_light"] == pytest.approx(0.5)


def test_calibrate_command_on_cpu(cal_dir):
    # Real measurements; --force because this shared test machine may be busy (then the checks fail).
    result = CliRunner().invoke(main, ["calibrate", "--device", "cpu", "--quick", "--repeats", "2", "--force"])
    assert result.exit_code == 0, result.output
    assert "fp32 matmul" in result.output and "copy (read+write)" in result.output and "spread" in result.output
    saved = list(cal_dir.glob("cpu-*.json"))
    assert len(saved) == 1
    record = json.loads(saved[0].read_text())
    assert record["schema"] == SCHEMA and record["repeats"] == 2 and record["forced"] == (not record["checks"]["ok"])


def test_repeats_below_two_are_a_usage_error(cal_dir):
    result = CliRunner().invoke(main, ["calibrate", "--device", "cpu", "--repeats", "1"])
    assert result.exit_code == 2 and "--repeats" in result.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_calibration_next_to_the_datasheet(tmp_path):
    r = calibrate("cuda:0")
    sheet = peak_for(r["device_name"]) or {}
    print(f"\n[calibrate] {r['device_name']}, load {r['load']}")
    for key, m in r["matmul"].items():
        ds = sheet.get(f"{key}_tflops")
        ratio = f"{m['tflops'] / ds:.0%}" if ds and m.get("tflops") else "-"
        print(f"  {key:5s} matmul {m.get('tflops') or 0:8.1f} TFLOP/s  spread {m.get('spread', 0):.1%}  "
              f"datasheet {ds}  ({ratio})")
    print(f"  copy {r['copy']['gbps']:8.0f} GB/s  spread {r['copy']['spread']:.1%}  datasheet HBM {sheet.get('hbm_gbps')}")
    print(f"  checks: {r['checks']['problems'] or 'ok'}")
    assert r["matmul"]["bf16"]["tflops"] > 0 and r["copy"]["gbps"] > 0
    if sheet:  # a healthy GPU passes the plausibility check against its own datasheet row
        assert not [p for p in r["checks"]["problems"] if p["check"] == "datasheet"], r["checks"]["problems"]
    save_calibration(r, tmp_path, force=True)
