"""The Device value: resolved once from "auto"/"cpu"/"cuda"/"cuda:N", its fields, its errors, and that it
travels (pickle, bench, run_case) without being parsed again. CUDA is faked through monkeypatch."""

from __future__ import annotations

import pickle
import types

import pytest
import torch

from ossbench import hardware
from ossbench.errors import UserError
from ossbench.hardware import Device, cpu_model, resolve_device

H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_h100s(monkeypatch):
    """torch sees two H100s: the calls resolve_device makes, answered as a real one would."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: H100)
    props = types.SimpleNamespace(multi_processor_count=132, L2_cache_size=50 * 2**20)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)


def test_cpu_device_fields():
    dev = resolve_device("cpu")
    assert dev == Device(type="cpu", index=None, name=cpu_model(), cpu_model=cpu_model())
    assert dev.sm_count is None and dev.l2_cache_bytes is None and dev.peak_row is None and dev.peak is None
    assert str(dev) == "cpu" and not dev.is_cuda and dev.torch_device == torch.device("cpu")


def test_auto_without_cuda_is_the_cpu(no_cuda):
    assert resolve_device("auto") == resolve_device("cpu")


def test_a_device_passes_through_unchanged():
    dev = Device(type="cuda", index=3, name=H100)  # no GPU here: a resolved Device is not checked again
    assert resolve_device(dev) is dev


@pytest.mark.parametrize("spec", ["tpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "cuda:0 ", "gpu", "", "mps"])
def test_malformed_specs_are_a_user_error(spec):
    with pytest.raises(UserError, match=r"--device must be auto, cpu, cuda or cuda:N \(got "):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_is_a_user_error(no_cuda, spec):
    with pytest.raises(UserError, match=f"--device {spec}: CUDA is not available to torch"):
        resolve_device(spec)


def test_cuda_device_fields_from_torch(two_h100s, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_model", lambda: "Some CPU")
    dev = resolve_device("cuda:1")
    assert dev == Device(type="cuda", index=1, name=H100, cpu_model="Some CPU", sm_count=132,
                         l2_cache_bytes=50 * 2**20, peak_row="H100 SXM")
    assert str(dev) == "cuda:1" and dev.is_cuda and dev.torch_device == torch.device("cuda", 1)
    assert dev.peak["name"] == "H100 SXM" and dev.peak["bf16_tflops"] == 989 and dev.peak["hbm_gbps"] == 3350
    dev.peak["bf16_tflops"] = 1  # a fresh dict each time: the table is not edited through it
    assert dev.peak["bf16_tflops"] == 989


def test_cuda_defaults_to_the_first_gpu_and_auto_picks_it(two_h100s):
    assert resolve_device("cuda").index == 0
    assert resolve_device("auto") == resolve_device("cuda:0")


def test_a_gpu_index_past_the_count_is_a_user_error(two_h100s):
    with pytest.raises(UserError, match=r"--device cuda:2: only 2 CUDA device\(s\) present"):
        resolve_device("cuda:2")


def test_an_unlisted_gpu_has_no_peak_row(two_h100s, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA H100 NVL")
    dev = resolve_device("cuda:0")
    assert dev.peak_row is None and dev.peak is None and dev.sm_count == 132


def test_device_is_a_frozen_plain_value():
    dev = Device(type="cuda", index=0, name=H100, sm_count=132, peak_row="H100 SXM")
    assert pickle.loads(pickle.dumps(dev)) == dev  # how it reaches an isolated case's child process
    assert len({dev, Device(type="cuda", index=0, name=H100, sm_count=132, peak_row="H100 SXM")}) == 1
    with pytest.raises(AttributeError):
        dev.index = 1  # type: ignore[misc]


@pytest.mark.parametrize("kwargs", [dict(type="tpu"), dict(type="cuda"), dict(type="cpu", index=0)])
def test_inconsistent_devices_are_refused(kwargs):
    with pytest.raises(ValueError):
        Device(**kwargs)


def test_bench_takes_a_device():
    from ossbench import bench

    m = bench(lambda: None, device=resolve_device("cpu"), cache="hot", warmup_s=0.0, min_samples=3,
              min_time_s=0.0, max_time_s=0.2)
    assert m.device == "cpu" and m.n >= 3


def test_importing_hardware_does_not_import_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, ossbench.hardware; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
