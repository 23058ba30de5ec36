"""NVML sampling with a fake pynvml: readings, energy deltas and wrap, missing functions, throttle flags, and
bench's clock hooks (strict_clocks). The GPU test checks the energy counter against mean power x time."""

from __future__ import annotations

import sys
import time
import types

import pytest
import torch

from ossbench.hardware import Device
from ossbench.measure import nvml
from ossbench.measure.nvml import NvmlUnavailable, driver_info, open_device
from ossbench.measure.nvml_sampler import NvmlSampler, energy_delta_mj
from ossbench.measure.timer import MAX_DISCARDED_BATCHES, bench

GPU0 = Device(type="cuda", index=0, name="NVIDIA H100 80GB HBM3", peak_row="H100 SXM")
CPU = Device(type="cpu", name="some CPU", cpu_model="some CPU")


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - the real bindings' name
    def __str__(self) -> str:
        return "Not Supported"


def fake_nvml(clock: FakeClock, *, power_w=300.0, energy_start_mj=5_000_000, reasons=0x0, sm_clock=1980,
              drop=(), raise_in=()) -> types.SimpleNamespace:
    """A pynvml stand-in whose energy counter integrates `power_w` over the fake clock."""
    state = types.SimpleNamespace(power_w=power_w, reasons=reasons, sm_clock=sm_clock, inits=0, shutdowns=0,
                                  energy_start=energy_start_mj, t0=clock.t)

    def maybe_raise(name):
        if name in raise_in:
            raise NVMLError_NotSupported()

    def energy(h):
        maybe_raise("energy")
        return (state.energy_start + int(state.power_w * (clock.t - state.t0) * 1e3)) % 2**64

    def clock_info(h, kind):
        maybe_raise("clock")
        return state.sm_clock if kind == 1 else 2619

    def reasons_fn(h):
        maybe_raise("reasons")
        return state.reasons

    n = types.SimpleNamespace(
        __name__="fake_pynvml", state=state, NVMLError=NVMLError, NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2,
        NVML_TEMPERATURE_GPU=0, NVML_PCIE_UTIL_TX_BYTES=0, NVML_PCIE_UTIL_RX_BYTES=1,
        nvmlInit=lambda: setattr(state, "inits", state.inits + 1),
        nvmlShutdown=lambda: setattr(state, "shutdowns", state.shutdowns + 1),
        nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}",
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetPowerUsage=lambda h: int(state.power_w * 1e3),
        nvmlDeviceGetTotalEnergyConsumption=energy,
        nvmlDeviceGetClockInfo=clock_info,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=97, memory=41),
        nvmlDeviceGetTemperature=lambda h, kind: 61,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=12 * 2**30, total=80 * 2**30),
        nvmlDeviceGetCurrentClocksEventReasons=reasons_fn,
        nvmlDeviceGetCurrentClocksThrottleReasons=reasons_fn,
        nvmlDeviceGetPcieThroughput=lambda h, kind: 1000 if kind == 0 else 2000,
    )
    for name in drop:
        delattr(n, name)
    return n


def sampler_for(n, clock: FakeClock, **kw) -> NvmlSampler:
    return NvmlSampler(open_device(0, nvml=n), clock=clock, **kw)


# ------------------------------------------------------------------------------------------- readings


def test_one_reading_has_every_quantity():
    clock = FakeClock()
    s = sampler_for(fake_nvml(clock), clock)
    r = s.tick()
    assert r["power_w"] == 300.0 and r["sm_clock_mhz"] == 1980 and r["mem_clock_mhz"] == 2619
    assert r["gpu_util_pct"] == 97 and r["mem_util_pct"] == 41 and r["temperature_c"] == 61
    assert r["memory_used_bytes"] == 12 * 2**30 and r["clock_events"] == 0
    assert (r["pcie_tx_kbps"], r["pcie_rx_kbps"]) == (1000.0, 2000.0)  # read on the first tick
    assert s.device.name == "NVIDIA H100 80GB HBM3"  # bytes from old bindings are decoded


def test_energy_per_call_and_per_token_over_the_timed_window():
    clock = FakeClock()
    s = sampler_for(fake_nvml(clock, power_w=250.0), clock)
    s.tick()  # warm-up reading: outside the window
    s.sampling_started()
    for _ in range(4):
        clock.t += 0.5
        s.tick()
    s.sampling_ended(calls=200, timed_s=1.5)
    out = s.summary(tokens_per_call=64)
    e = out["energy"]
    assert e["available"] and e["window_j"] == pytest.approx(500.0)  # 250 W for 2 s
    assert e["per_call_j"] == pytest.approx(2.5) and e["per_token_j"] == pytest.approx(2.5 / 64)
    assert e["window_s"] == pytest.approx(2.0) and e["timed_fraction"] == pytest.approx(0.75)
    assert e["mean_power_x_window_j"] == pytest.approx(500.0)
    assert out["scope"] == "timed" and out["readings"] == 4  # the warm-up reading is not in the window
    assert out["power_w"] == {"mean": 250.0, "min": 250.0, "max": 250.0}


def test_energy_counter_wrap_and_reset():
    assert energy_delta_mj(10, 25, 1.0) == (15, "")
    assert energy_delta_mj(2**64 - 100, 900, 1.0) == (1000, "counter wrapped")
    delta, why = energy_delta_mj(9_000_000, 1_000, 1.0)  # far more than 5 kW for 1 s: a reset, not a wrap
    assert delta is None and "backwards" in why


def test_sampler_handles_a_wrapping_counter():
    clock = FakeClock()
    s = sampler_for(fake_nvml(clock, power_w=100.0, energy_start_mj=2**64 - 50_000), clock)
    s.sampling_started()
    clock.t += 1.0  # 100 J = 100_000 mJ: the counter passes 2**64
    s.tick()
    s.sampling_ended(calls=10, timed_s=1.0)
    e = s.summary()["energy"]
    assert e["available"] and e["window_j"] == pytest.approx(100.0) and e["note"] == "counter wrapped"


def test_missing_functions_degrade_one_reading_each():
    clock = FakeClock()
    n = fake_nvml(clock, drop=("nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetCurrentClocksEventReasons",
                               "nvmlDeviceGetPcieThroughput"), raise_in=("clock",), reasons=0x20)
    s = sampler_for(n, clock)
    s.sampling_started()
    clock.t += 1.0
    r = s.tick()
    s.sampling_ended(calls=5, timed_s=1.0)
    out = s.summary()
    assert "sm_clock_mhz" not in r and r["power_w"] == 300.0  # a refused reading does not cost the others
    assert out["unsupported"]["sm_clock_mhz"] == "Not Supported"
    assert "energy" in out["unsupported"] and "pcie" in out["unsupported"]
    assert out["energy"] == {"available": False,
                             "reason": "nvmlDeviceGetTotalEnergyConsumption not in these NVML bindings"}
    # The pre-535 "throttle" name is used when the "clocks event" one is missing.
    assert out["clock_events"]["throttled"] is True and out["clock_events"]["reasons"] == ["sw_thermal_slowdown"]


def test_no_clock_event_function_at_all_says_unknown_not_false():
    clock = FakeClock()
    n = fake_nvml(clock, drop=("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"))
    s = sampler_for(n, clock)
    s.tick()
    events = s.summary()["clock_events"]
    assert events["available"] is False and events["throttled"] is None


@pytest.mark.parametrize("mask, throttled, names", [
    (0x0, False, []),
    (0x1, False, ["gpu_idle"]),
    (0x10, False, ["sync_boost"]),
    (0x4, True, ["sw_power_cap"]),
    (0x40 | 0x1, True, ["gpu_idle", "hw_thermal_slowdown"]),
    (0x80, True, ["hw_power_brake_slowdown"]),
])
def test_throttle_flags(mask, throttled, names):
    assert nvml.is_throttling(mask) is throttled
    assert nvml.reason_names(mask) == names


def test_throttling_in_the_window_is_counted():
    clock = FakeClock()
    n = fake_nvml(clock)
    s = sampler_for(n, clock)
    s.sampling_started()
    for reasons in (0x0, 0x4, 0x4, 0x0):
        n.state.reasons = reasons
        clock.t += 0.1
        s.tick()
    s.sampling_ended(calls=4, timed_s=0.4)
    events = s.summary()["clock_events"]
    assert events["throttled"] and events["throttled_readings"] == 2 and events["throttled_fraction"] == 0.5


def test_unavailable_nvml_is_one_reason_never_a_crash(monkeypatch):
    def broken_init():
        raise NVMLError("NVML Shared Library Not Found")

    n = fake_nvml(FakeClock())
    n.nvmlInit = broken_init
    with pytest.raises(NvmlUnavailable, match="Shared Library Not Found"):
        open_device(0, nvml=n)
    assert nvml.status(GPU0, nvml=n) == {"available": False,
                                         "reason": "nvmlInit failed: NVML Shared Library Not Found"}
    assert nvml.status(CPU) == {"available": False, "reason": "CPU run: no GPU to sample"}
    monkeypatch.setitem(sys.modules, "pynvml", None)  # a container without the bindings
    assert "pynvml not installed" in nvml.status(GPU0)["reason"]


def test_status_closes_what_it_opens():
    n = fake_nvml(FakeClock())
    assert nvml.status(GPU0, nvml=n) == {"available": True, "device": "NVIDIA H100 80GB HBM3"}
    assert n.state.inits == n.state.shutdowns == 1


def test_driver_info_opens_and_closes_nvml_once():
    n = fake_nvml(FakeClock())
    n.nvmlSystemGetDriverVersion = lambda: b"550.54.15"  # older bindings return bytes
    n.nvmlDeviceGetCount = lambda: 8
    assert driver_info(nvml=n) == ("550.54.15", 8)
    assert n.state.inits == n.state.shutdowns == 1


def test_driver_info_shuts_down_after_a_failed_query_and_not_after_a_failed_init():
    n = fake_nvml(FakeClock())

    def refused():
        raise NVMLError("Insufficient Permissions")

    n.nvmlSystemGetDriverVersion = refused
    n.nvmlDeviceGetCount = lambda: 1
    with pytest.raises(NvmlUnavailable, match="Insufficient Permissions"):
        driver_info(nvml=n)
    assert n.state.inits == n.state.shutdowns == 1

    def broken_init():
        raise NVMLError("Driver Not Loaded")

    n.nvmlInit = broken_init
    with pytest.raises(NvmlUnavailable, match="nvmlInit failed: Driver Not Loaded"):
        driver_info(nvml=n)
    assert n.state.shutdowns == 1  # never initialised, so nothing to shut down


def test_failed_handle_lookup_shuts_nvml_down():
    n = fake_nvml(FakeClock())
    del n.nvmlDeviceGetHandleByIndex
    with pytest.raises(NvmlUnavailable, match="no NVML handle for cuda:0"):
        open_device(0, nvml=n)
    assert n.state.inits == n.state.shutdowns == 1


def test_only_measure_nvml_calls_nvml_init_and_shutdown():
    """One NVML open/close path: every other module goes through measure/nvml.py's functions."""
    import ast
    from pathlib import Path

    package = Path(nvml.__file__).resolve().parent.parent
    callers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("nvmlInit", "nvmlShutdown"):
                callers.add(path.relative_to(package).as_posix())
    assert callers == {"measure/nvml.py"}


def test_background_thread_samples_with_bounded_memory():
    n = fake_nvml(FakeClock())
    s = NvmlSampler(open_device(0, nvml=n), period_s=0.002, capacity=8)
    with s:
        time.sleep(0.2)
    summary = s.summary()
    assert summary["readings"] >= 10, summary["readings"]  # ~100 at 2 ms; a loaded CI machine gets fewer
    assert len(s.ring) == 8  # the ring keeps the latest readings only ...
    assert summary["power_w"]["mean"] == 300.0  # ... while the running totals cover all of them
    assert s._thread is None


def test_closed_device_reads_nothing():
    n = fake_nvml(FakeClock())
    dev = open_device(0, nvml=n)
    dev.close()
    dev.close()
    assert dev.read() == {} and dev.energy_mj() is None and n.state.shutdowns == 1


# ---------------------------------------------------------------------------- bench's hooks, strict clocks


class ScriptedMonitor:
    """A monitor whose batches are throttled according to a script (True = throttled)."""

    def __init__(self, script):
        self.script, self.batches, self.calls, self.started = list(script), 0, None, False

    def sampling_started(self):
        self.started = True

    def batch_done(self, t0, t1):
        throttled = self.script[self.batches] if self.batches < len(self.script) else False
        self.batches += 1
        return {"sm_clock_mhz_min": 1200.0 if throttled else 1980.0, "sm_clock_mhz_max": 1980.0,
                "clock_events": 0x4 if throttled else 0, "throttled": throttled}

    def sampling_ended(self, calls, timed_s):
        self.calls, self.timed_s = calls, timed_s


QUICK = dict(device="cpu", cache="hot", warmup_s=0.0, min_samples=20, min_time_s=0.0, max_time_s=2.0,
             target_rel_ci=0.99)  # as loose as a BenchSpec allows (below ±100%)


def test_bench_records_clocks_per_batch_and_flags_throttling():
    mon = ScriptedMonitor([True])  # the first batch (here the only one) ran throttled
    m = bench(lambda: None, monitor=mon, **QUICK)
    assert mon.started and mon.calls == m.n  # every call in the window, none discarded
    assert not m.strict_clocks and m.discarded_samples == 0
    assert m.throttled is True
    clocks = m.sample_sm_clock_mhz()
    assert len(clocks) == m.n and None not in clocks and 1200.0 in clocks
    report = m.clock_report()
    assert report["monitored"] and report["throttled_samples"] > 0 and report["sm_clock_mhz_min"] == 1200.0


def test_strict_clocks_discards_and_retakes_throttled_batches():
    mon = ScriptedMonitor([True, True, False])
    m = bench(lambda: None, monitor=mon, strict_clocks=True, **QUICK)
    assert m.discarded_samples > 0 and m.n >= 20
    assert m.throttled is False and set(m.sample_sm_clock_mhz()) == {1980.0}
    assert mon.calls == m.n + m.discarded_samples  # discarded calls still ran inside the energy window
    assert "throttled sample(s) discarded" in m.stop_reason
    assert [b.get("discarded", False) for b in m.clock_batches][:3] == [True, True, False]


def test_strict_clocks_is_bounded_when_always_throttled():
    mon = ScriptedMonitor([True] * 1000)
    m = bench(lambda: None, monitor=mon, strict_clocks=True, **QUICK)
    assert sum(b.get("discarded", False) for b in m.clock_batches) == MAX_DISCARDED_BATCHES
    assert m.n >= 20 and m.throttled is True  # after the limit, throttled samples are kept and flagged
    assert "limit of" in m.stop_reason


def test_strict_clocks_without_a_monitor_changes_nothing():
    m = bench(lambda: None, strict_clocks=True, **QUICK)
    assert m.clock_batches == [] and m.throttled is None and m.discarded_samples == 0


def test_real_sampler_as_bench_monitor_on_cpu():
    n = fake_nvml(FakeClock())
    with NvmlSampler(open_device(0, nvml=n), period_s=0.005) as s:
        m = bench(lambda: time.sleep(0.001), monitor=s, **{**QUICK, "min_time_s": 0.05})
    assert m.clock_batches and m.throttled is False
    assert all(b["sm_clock_mhz_min"] == 1980 for b in m.clock_batches)
    assert s.summary()["scope"] == "timed"


# --------------------------------------------------------------------------------------------- the GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_energy_counter_agrees_with_mean_power_times_time():
    try:
        dev = open_device(0)
    except NvmlUnavailable as e:
        pytest.skip(f"NVML unavailable: {e}")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    c = torch.empty_like(a)
    # Long, busy window: NVML's power reading is averaged over up to a second and the counter updates
    # slowly; a 1 s warm-up lets the averaged reading settle before the window opens.
    with NvmlSampler(dev) as s:
        m = bench(lambda: torch.matmul(a, b, out=c), cache="hot", warmup_s=1.0, min_time_s=4.0, max_time_s=6.0,
                  target_rel_ci=1e-9, monitor=s)
    out = s.summary(tokens_per_call=8192)
    dev.close()
    e = out["energy"]
    print(f"\n[energy] window {e['window_s']:.2f} s, counter {e['window_j']:.1f} J, mean power "
          f"{out['power_w']['mean']:.0f} W x time = {e['mean_power_x_window_j']:.1f} J, {e['per_call_j']:.3f} J/call, "
          f"timed fraction {e['timed_fraction']:.2f}, SM clock {out['sm_clock_mhz']}, "
          f"events {out['clock_events']['reasons']}, median {m.median_ms:.3f} ms")
    assert e["available"]
    assert e["per_call_j"] == pytest.approx(e["mean_power_x_window_j"] / e["calls"], rel=0.10)


def test_an_older_driver_without_the_clocks_event_function_falls_back_to_the_throttle_one():
    """Recent bindings define the new name whatever the driver; a pre-535 driver answers FunctionNotFound."""
    clock = FakeClock()
    n = fake_nvml(clock, reasons=0x20)

    def not_in_driver(h):
        raise n.NVMLError("Function Not Found")

    n.nvmlDeviceGetCurrentClocksEventReasons = not_in_driver
    s = sampler_for(n, clock)
    s.tick()
    events = s.summary()["clock_events"]
    assert events["throttled"] is True and events["reasons"] == ["sw_thermal_slowdown"]


def test_free_memory_comes_from_nvml_without_a_cuda_context():
    from ossbench.measure.nvml import free_memory_bytes

    n = fake_nvml(FakeClock())
    assert free_memory_bytes(0, nvml=n) == 68 * 2**30  # total 80 - used 12 (bindings without `free`)
    n.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(free=5 * 2**30, used=75 * 2**30, total=80 * 2**30)
    assert free_memory_bytes(0, nvml=n) == 5 * 2**30
    assert n.state.inits == n.state.shutdowns  # every session closed
    del n.nvmlDeviceGetMemoryInfo
    assert free_memory_bytes(0, nvml=n) is None  # the planner then asks torch
