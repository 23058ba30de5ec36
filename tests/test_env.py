"""Environment capture and the datasheet peak table."""

from __future__ import annotations

import subprocess
import sys
import types
from datetime import datetime
from pathlib import Path

import pytest

from ossbench import env as ossenv
from ossbench.errors import UserError
from ossbench.hardware import Device
from ossbench.peaks import PEAK_TABLE, peak_for
from ossbench.results import Environment


@pytest.mark.parametrize("name, row", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
    ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
    ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA L4", "L4"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"),
])
def test_peak_for_known_devices(name: str, row: str) -> None:
    peak = peak_for(name)
    assert peak is not None and peak["name"] == row
    assert peak["source"] == "datasheet"
    assert peak["fp16_tflops"] == peak["bf16_tflops"]


@pytest.mark.parametrize("name", [
    "NVIDIA H200 NVL",  # lower clocks and power than the H200 SXM row
    "NVIDIA H100 NVL",  # 94 GB, 3.9 TB/s: not the SXM or PCIe row
    "NVIDIA A100 80GB PCIe",  # 1935 GB/s: neither A100 row
    "NVIDIA GH200 480GB",
    "NVIDIA L40",
    "NVIDIA A10",
    "NVIDIA GeForce RTX 4090 D",
    "NVIDIA H100 80GB HBM3 MIG 1g.10gb",  # a slice has a fraction of the ceilings
    "AMD EPYC 7763 64-Core Processor",
    "",
])
def test_peak_for_unknown_devices(name: str) -> None:
    assert peak_for(name) is None


def test_peak_values_follow_the_brief() -> None:
    h100 = peak_for("NVIDIA H100 80GB HBM3")
    assert (h100["bf16_tflops"], h100["tf32_tflops"], h100["fp32_tflops"], h100["hbm_gbps"], h100["memory_gb"]) \
        == (989, 495, 67, 3350, 80)
    h200 = peak_for("NVIDIA H200")
    assert (h200["hbm_gbps"], h200["memory_gb"]) == (4800, 141)
    l4 = peak_for("NVIDIA L4")
    assert l4["tf32_tflops"] is None and l4["fp32_tflops"] is None and l4["hbm_gbps"] == 300
    assert len(PEAK_TABLE) == 8
    # Callers get a copy: editing it must not change the table.
    h100["bf16_tflops"] = 1
    assert peak_for("NVIDIA H100 80GB HBM3")["bf16_tflops"] == 989


def test_importing_env_does_not_import_torch() -> None:
    code = "import sys, ossbench.env; assert 'torch' not in sys.modules, 'torch imported'"
    # Run from the repository root so the source tree is importable even when ossbench is not installed.
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_capture_cpu_fills_the_environment_model() -> None:
    env = ossenv.capture("cpu")
    model = Environment(**env)  # every required field present, right types
    assert set(env) <= set(Environment.model_fields)
    assert model.device_type == "cpu" and model.device_name
    assert model.peak is None and model.sm_count is None
    import torch

    assert model.torch == torch.__version__ and model.cuda == torch.version.cuda
    assert datetime.fromisoformat(model.start_time).utcoffset().total_seconds() == 0
    assert model.ossbench_version


def test_capture_takes_the_resolved_device_as_it_is(monkeypatch) -> None:
    """The GPU fields come from the Device resolved once per run: capture asks torch nothing about it."""
    import torch

    def asked(*args):
        raise AssertionError("capture re-queried the device")

    monkeypatch.setattr(torch.cuda, "get_device_properties", asked)
    monkeypatch.setattr(torch.cuda, "get_device_name", asked)
    gpu = Device(type="cuda", index=0, name="NVIDIA H100 80GB HBM3", cpu_model="Some CPU", sm_count=132,
                 l2_cache_bytes=50 * 2**20, peak_row="H100 SXM")
    env = Environment(**ossenv.capture(gpu))  # the same fields as ever: the results schema is unchanged
    assert (env.device_type, env.device_name, env.sm_count, env.l2_cache_bytes) == \
        ("cuda", "NVIDIA H100 80GB HBM3", 132, 50 * 2**20)
    assert env.peak == peak_for("NVIDIA H100 80GB HBM3") and env.cpu.startswith("Some CPU (")


def test_capture_rejects_cuda_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(UserError, match="CUDA is not available"):
        ossenv.capture("cuda")
    with pytest.raises(UserError):
        ossenv.capture("tpu")


def _fake_pynvml(init_error: Exception | None) -> types.ModuleType:
    fake = types.ModuleType("pynvml")

    def init() -> None:
        if init_error is not None:
            raise init_error

    fake.nvmlInit = init
    fake.nvmlShutdown = lambda: None
    fake.nvmlSystemGetDriverVersion = lambda: "550.54.15"
    fake.nvmlDeviceGetCount = lambda: 2
    return fake


def test_nvml_status_and_driver_when_available(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(None))
    assert ossenv.nvml_status() == "available: driver 550.54.15, 2 GPUs"
    assert ossenv.capture("cpu")["driver"] == "550.54.15"


@pytest.mark.parametrize("module", [_fake_pynvml(RuntimeError("Driver Not Loaded")), None])
def test_nvml_missing_never_crashes(monkeypatch, module) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", module)  # None: `import pynvml` raises ImportError
    status = ossenv.nvml_status()
    assert status.startswith("unavailable: ")
    assert ("Driver Not Loaded" in status) if module else ("not installed" in status)
    assert ossenv.capture("cpu")["driver"] is None


def test_git_revision_of_a_checkout(tmp_path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    assert ossenv.git_revision(tmp_path) is None  # not a repository
    git("init", "-q")
    assert ossenv.git_revision(tmp_path) is None  # no commit yet
    (tmp_path / "a.txt").write_text("a")
    git("add", "a.txt")
    git("commit", "-q", "-m", "a")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert ossenv.git_revision(tmp_path) == head
    (tmp_path / "a.txt").write_text("b")
    assert ossenv.git_revision(tmp_path) == f"{head}-dirty"


def test_describe_rows() -> None:
    env = ossenv.capture("cpu")
    rows = dict(ossenv.describe(env, nvml="unavailable: test"))
    for label in ("device", "driver", "CUDA", "torch", "triton", "NVML", "peak"):
        assert label in rows
    assert rows["NVML"] == "unavailable: test"
    assert all(isinstance(v, str) for v in rows.values())
    gpu = dict(env, device_type="cuda", device_name="NVIDIA H100 80GB HBM3",
               peak=peak_for("NVIDIA H100 80GB HBM3"), sm_count=132, l2_cache_bytes=50 * 2**20)
    peak_line = dict(ossenv.describe(gpu, nvml="x"))["peak"]
    assert "H100 SXM" in peak_line and "989 TFLOP/s" in peak_line and "3350 GB/s" in peak_line
    unknown = dict(ossenv.describe(dict(gpu, peak=None), nvml="x"))["peak"]
    assert "not in the datasheet table" in unknown


@pytest.mark.gpu
def test_capture_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    env = Environment(**ossenv.capture("cuda"))
    assert env.device_type == "cuda" and env.device_name == torch.cuda.get_device_name(0)
    assert env.gpu_count >= 1 and env.sm_count > 0 and env.l2_cache_bytes > 0
    assert env.cuda == torch.version.cuda
    assert env.driver  # NVML works wherever CUDA does on Linux
    if "H100" in env.device_name and "PCIe" not in env.device_name and "NVL" not in env.device_name:
        assert env.peak["name"] == "H100 SXM"
    assert ossenv.nvml_status().startswith("available: driver ")
