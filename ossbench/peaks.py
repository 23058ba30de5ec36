"""The datasheet peak table (dense, no sparsity) and the lookup from a torch/NVML device name to its row.

On the ground floor (imports nothing from ossbench): `hardware.Device` records its row, `env` shows it,
`measure.roofline` and `measure.calibration_checks` judge against it. Torch-free, so `ossbench env` and
report rendering stay cheap to import.
"""

from __future__ import annotations

import re
from typing import Any

# Datasheet values, dense (no 2:4 sparsity). TFLOP/s for tensor-core math; fp16 equals bf16 on every device
# here. None where NVIDIA's datasheet gives no dense figure we trust (tf32/fp32 on L4 and RTX 4090).
PEAK_TABLE: dict[str, dict[str, float | None]] = {
    "H100 SXM": dict(bf16_tflops=989, tf32_tflops=495, fp32_tflops=67, hbm_gbps=3350, memory_gb=80),
    "H100 PCIe": dict(bf16_tflops=756, tf32_tflops=378, fp32_tflops=51, hbm_gbps=2000, memory_gb=80),
    "H200": dict(bf16_tflops=989, tf32_tflops=495, fp32_tflops=67, hbm_gbps=4800, memory_gb=141),
    "A100 SXM 80GB": dict(bf16_tflops=312, tf32_tflops=156, fp32_tflops=19.5, hbm_gbps=2039, memory_gb=80),
    "A100 40GB": dict(bf16_tflops=312, tf32_tflops=156, fp32_tflops=19.5, hbm_gbps=1555, memory_gb=40),
    "L40S": dict(bf16_tflops=362, tf32_tflops=183, fp32_tflops=91.6, hbm_gbps=864, memory_gb=48),
    "L4": dict(bf16_tflops=121, tf32_tflops=None, fp32_tflops=None, hbm_gbps=300, memory_gb=24),
    "RTX 4090": dict(bf16_tflops=165, tf32_tflops=None, fp32_tflops=None, hbm_gbps=1008, memory_gb=24),
}

# How device names map to rows: a name matches a row when its words include all `required` words and
# nothing beyond `required | optional`. Any unexpected word means a different product (H100 NVL, H200 NVL,
# A100 80GB PCIe, RTX 4090 D, a MIG slice ...) whose ceilings differ from the row, so we return no row
# rather than a wrong one.
_NAME_RULES: list[tuple[str, frozenset[str], frozenset[str]]] = [
    ("H100 SXM", frozenset({"H100"}), frozenset({"SXM", "SXM5", "80GB", "HBM3"})),
    ("H100 PCIe", frozenset({"H100", "PCIE"}), frozenset({"80GB"})),
    ("H200", frozenset({"H200"}), frozenset({"SXM", "141GB", "HBM3E"})),
    ("A100 SXM 80GB", frozenset({"A100", "80GB"}), frozenset({"SXM", "SXM4"})),
    ("A100 40GB", frozenset({"A100", "40GB"}), frozenset({"SXM", "SXM4", "PCIE"})),
    ("L40S", frozenset({"L40S"}), frozenset()),
    ("L4", frozenset({"L4"}), frozenset()),
    ("RTX 4090", frozenset({"RTX", "4090"}), frozenset()),
]
_VENDOR_WORDS = frozenset({"NVIDIA", "GEFORCE", "TESLA"})


def _name_words(device_name: str) -> frozenset[str]:
    # "NVIDIA A100-SXM4-80GB" -> {"A100", "SXM4", "80GB"}
    words = re.split(r"[\s\-_]+", device_name.strip().upper())
    return frozenset(w for w in words if w) - _VENDOR_WORDS


def peak_row_name(device_name: str) -> str | None:
    """The peak-table row for a torch/NVML device name, or None when the device is not in the table."""
    words = _name_words(device_name)
    for row, required, optional in _NAME_RULES:
        if required <= words <= required | optional:
            return row
    return None


def peak_for(device_name: str) -> dict[str, Any] | None:
    """Datasheet ceilings for a device, e.g. ``peak_for("NVIDIA H100 80GB HBM3")["bf16_tflops"] == 989``.

    Returns a fresh dict with ``name`` (the table row), ``source`` ("datasheet"), ``bf16_tflops``,
    ``fp16_tflops`` (= bf16), ``tf32_tflops``, ``fp32_tflops``, ``hbm_gbps`` and ``memory_gb``;
    None for a device not in the table.
    """
    row = peak_row_name(device_name)
    return None if row is None else peak_row(row)


def peak_row(row: str) -> dict[str, Any]:
    """The table's row `row` ("H100 SXM") as a fresh dict; the fields are those of `peak_for`."""
    values = PEAK_TABLE[row]
    return {"name": row, "source": "datasheet", "bf16_tflops": values["bf16_tflops"],
            "fp16_tflops": values["bf16_tflops"], "tf32_tflops": values["tf32_tflops"],
            "fp32_tflops": values["fp32_tflops"], "hbm_gbps": values["hbm_gbps"],
            "memory_gb": values["memory_gb"]}
