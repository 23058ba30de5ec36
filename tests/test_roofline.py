"""Roofline arithmetic: ceilings (calibrated over datasheet, per value), intensity, bound, floor, speed of light."""

from __future__ import annotations

import pytest

from ossbench.measure.roofline import dtype_key, peak_for, resolve_ceilings, roofline
from ossbench.results import CaseResult
from ossbench.summary import speed_of_light

H100 = peak_for("NVIDIA H100 80GB HBM3")


def test_dtype_keys():
    assert dtype_key("bfloat16") == "bf16" and dtype_key("float16") == "fp16"
    assert dtype_key("float32") == "fp32" and dtype_key("float32", tf32=True) == "tf32"
    assert dtype_key("bfloat16", tf32=True) == "bf16" and dtype_key("float64") == "fp64"


def test_datasheet_ceilings():
    c = resolve_ceilings(H100, None)
    assert c["compute_tflops"] == {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0}
    assert c["bandwidth_gbps"] == 3350.0 and c["datasheet"] == "H100 SXM" and c["calibration"] is None
    assert set(c["sources"].values()) == {"datasheet"}


def test_calibrated_values_win_per_value_and_the_rest_come_from_the_datasheet():
    cal = {"path": "/x/h100.json", "ceilings": {"bf16_tflops": 798.0, "copy_gbps": 3000.0}}
    c = resolve_ceilings(H100, cal)
    assert c["compute_tflops"]["bf16"] == 798.0 and c["sources"]["bf16"] == "calibrated"
    assert c["compute_tflops"]["fp32"] == 67.0 and c["sources"]["fp32"] == "datasheet"
    assert c["bandwidth_gbps"] == 3000.0 and c["sources"]["bandwidth"] == "calibrated"
    assert c["calibration"] == "/x/h100.json" and c["calibrated_values"]["bf16_tflops"] == 798.0


def test_no_datasheet_and_no_calibration_means_no_ceiling():
    assert resolve_ceilings(None, None) is None
    r = roofline(1e9, 1e6, 1.0, "fp32", None)
    assert r["available"] is False and r["reason"].startswith("no ceiling") and r["intensity"] == 1000.0


def test_a_cpu_calibration_alone_is_enough():
    c = resolve_ceilings(None, {"ceilings": {"fp32_tflops": 0.1, "copy_gbps": 20.0}})
    assert c["compute_tflops"] == {"fp32": 0.1} and c["datasheet"] is None
    assert roofline(1e9, 1e6, 20.0, "fp32", c)["available"]
    missing = roofline(1e9, 1e6, 20.0, "bf16", c)
    assert not missing["available"] and "bf16 compute" in missing["reason"]


def test_memory_bound_case():
    # Decode-like: 2 GFLOP over 1 GB is 2 FLOP/byte, far left of the H100 bf16 ridge (989e12 / 3350e9 ~ 295).
    c = resolve_ceilings(H100, None)
    r = roofline(2e9, 1e9, 0.5, "bf16", c)
    assert r["bound"] == "memory" and r["intensity"] == 2.0
    assert r["ridge"] == pytest.approx(989e12 / 3350e9)
    floor_ms = 1e9 / 3350e9 * 1e3
    assert r["floor_ms"] == pytest.approx(floor_ms)
    assert r["speed_of_light"] == pytest.approx(floor_ms / 0.5)  # = achieved GB/s / peak GB/s
    assert r["speed_of_light"] == pytest.approx((1e9 / 0.5e-3) / 3350e9)
    assert r["compute_source"] == "datasheet" and r["bandwidth_source"] == "datasheet"


def test_compute_bound_case():
    # An 8192^3 bf16 matmul: 1.1 TFLOP over 402 MB: ~2730 FLOP/byte, right of the ridge.
    n = 8192
    flops, nbytes = 2 * n**3, 3 * n * n * 2
    c = resolve_ceilings(H100, {"ceilings": {"bf16_tflops": 800.0}})
    median_ms = flops / 798e12 * 1e3  # what the H100 in this workplace measured
    r = roofline(flops, nbytes, median_ms, "bf16", c)
    assert r["bound"] == "compute" and r["ceiling_tflops"] == 800.0 and r["compute_source"] == "calibrated"
    assert r["speed_of_light"] == pytest.approx(798 / 800)


def test_missing_cost_or_timing():
    c = resolve_ceilings(H100, None)
    assert not roofline(None, 1e6, 1.0, "bf16", c)["available"]
    assert not roofline(1e9, 0, 1.0, "bf16", c)["available"]
    assert not roofline(1e9, 1e6, None, "bf16", c)["available"]


def test_datasheet_gaps_are_not_filled_in():
    l4 = resolve_ceilings(peak_for("NVIDIA L4"), None)
    assert "fp32" not in l4["compute_tflops"]
    assert not roofline(1e9, 1e6, 1.0, "fp32", l4)["available"]


def test_summary_column():
    case = CaseResult(id="a", family="f", variant="v", dtype="bfloat16", status="ok",
                      roofline=roofline(2e9, 1e9, 0.5, "bf16", resolve_ceilings(H100, None)))
    assert speed_of_light(case) == "60% mem"
    assert speed_of_light(CaseResult(id="b", family="f", variant="v", dtype="float32", status="ok")) == "-"
