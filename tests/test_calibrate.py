"""`ossbench calibrate`: measured ceilings on CPU, saved and found again by runs; on a GPU, next to the datasheet."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from ossbench.cli import main
from ossbench.measure.calibrate import (SCHEMA, calibrate, calibration_dir, device_slug, load_calibration,
                                        save_calibration)
from ossbench.measure.roofline import peak_for, resolve_ceilings, roofline


@pytest.fixture
def cal_dir(tmp_path, monkeypatch):
    d = tmp_path / "calibration"
    monkeypatch.setenv("OSSBENCH_CALIBRATION_DIR", str(d))
    return d


@pytest.fixture(scope="module")
def cpu_record():
    # Small sizes: a rough but real calibration in about a second.
    return calibrate("cpu", quick=True, matmul_n=128, copy_bytes=16 * 2**20)


def test_cpu_calibration_measures_matmul_and_copy(cpu_record):
    r = cpu_record
    assert r["schema"] == SCHEMA and r["device_type"] == "cpu" and r["threads"] == torch.get_num_threads()
    fp32 = r["matmul"]["fp32"]
    assert fp32["n"] == 128 and fp32["tflops"] > 0 and fp32["samples"] >= 5
    assert fp32["tflops"] == pytest.approx(2 * 128**3 / (fp32["median_ms"] / 1e3) / 1e12)
    assert "bf16" in r["matmul"]  # measured, or skipped with the reason when the CPU has no fast path
    assert r["matmul"]["bf16"].get("tflops") or r["matmul"]["bf16"].get("skipped")
    assert r["copy"]["gbps"] == pytest.approx(2 * 16 * 2**20 / (r["copy"]["median_ms"] / 1e3) / 1e9)
    assert r["ceilings"]["fp32_tflops"] == fp32["tflops"] and r["ceilings"]["copy_gbps"] == r["copy"]["gbps"]


def test_save_and_load_round_trip(cpu_record, cal_dir):
    path = save_calibration(cpu_record)
    assert path.parent == cal_dir == calibration_dir()
    assert path.name == device_slug(cpu_record["device_name"], "cpu", cpu_record["threads"]) + ".json"
    loaded = load_calibration(cpu_record["device_name"], "cpu", cpu_record["threads"])
    assert loaded["ceilings"] == cpu_record["ceilings"] and loaded["path"] == str(path)
    # Another thread count is another calibration: CPU matmul speed depends on it.
    assert load_calibration(cpu_record["device_name"], "cpu", cpu_record["threads"] + 7) is None


def test_corrupt_or_foreign_files_are_ignored(cal_dir):
    cal_dir.mkdir(parents=True)
    (cal_dir / "nvidia-h100-80gb-hbm3.json").write_text("{not json")
    assert load_calibration("NVIDIA H100 80GB HBM3", "cuda") is None
    (cal_dir / "nvidia-h100-80gb-hbm3.json").write_text(json.dumps({"schema": "other/1", "ceilings": {}}))
    assert load_calibration("NVIDIA H100 80GB HBM3", "cuda") is None


def test_default_directory_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("OSSBENCH_CALIBRATION_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert calibration_dir() == tmp_path / "ossbench" / "calibration"


def test_slugs():
    assert device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
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
    result = CliRunner().invoke(main, ["calibrate", "--device", "cpu", "--quick"])
    assert result.exit_code == 0, result.output
    assert "fp32 matmul" in result.output and "copy (read+write)" in result.output
    saved = list(cal_dir.glob("cpu-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["schema"] == SCHEMA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_calibration_next_to_the_datasheet(tmp_path):
    r = calibrate("cuda:0")
    save_calibration(r, tmp_path)
    sheet = peak_for(r["device_name"]) or {}
    print(f"\n[calibrate] {r['device_name']}")
    for key, m in r["matmul"].items():
        ds = sheet.get(f"{key}_tflops")
        ratio = f"{m['tflops'] / ds:.0%}" if ds and m.get("tflops") else "-"
        print(f"  {key:5s} matmul {m.get('tflops') or 0:8.1f} TFLOP/s  datasheet {ds}  ({ratio})")
    print(f"  copy {r['copy']['gbps']:8.0f} GB/s  datasheet HBM {sheet.get('hbm_gbps')}")
    assert r["matmul"]["bf16"]["tflops"] > 0 and r["copy"]["gbps"] > 0
    if sheet:  # nothing reaches the datasheet peak; a healthy GPU gets well over half of it
        assert 0.5 < r["matmul"]["bf16"]["tflops"] / sheet["bf16_tflops"] < 1.05
        assert 0.5 < r["copy"]["gbps"] / sheet["hbm_gbps"] < 1.05
