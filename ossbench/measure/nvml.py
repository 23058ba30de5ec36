"""NVML readings around a timed region: power, energy, clocks, utilisation, temperature, memory, throttling.

`NvmlDevice` wraps one GPU's NVML handle. Each reading (power, SM clock, ...) is tried once per device; a
reading the driver or the bindings refuse (an old driver, a missing function, `NotSupported`) is dropped
and its reason kept, so one missing feature never costs the others. `NvmlSampler` polls the device from a
background thread every 10-20 ms into a bounded ring buffer plus running totals (exact means over any
window, however long), and implements the monitor hooks `ossbench.bench` calls around its sampling phase:
the energy counter is read at the start and end of that phase, and every batch of samples gets the SM clock
and clock-event reasons seen while it ran.

Without NVML (no `pynvml`, no driver, a CPU run) `open_device` raises `NvmlUnavailable` with one readable
reason; callers record it and go on. pynvml is imported inside functions (and can be injected as `nvml=`
for tests), so importing this module costs nothing. Every NVML user in ossbench (the sampler, `status`,
`driver_info` for `ossbench env`, calibration's process count) opens and closes NVML through `_init` and
`_shutdown` here, and nowhere else.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..hardware import Device

DEFAULT_PERIOD_S = 0.015
RING_CAPACITY = 4096  # ~60 s of readings at 15 ms; older ones drop off, the running totals keep counting
PCIE_EVERY = 8  # PCIe throughput is read every 8th tick: the driver takes ~20 ms to answer that query
ENERGY_WRAP = 2**64  # nvmlDeviceGetTotalEnergyConsumption is an unsigned 64-bit count of mJ
MAX_PLAUSIBLE_POWER_W = 5000.0  # a "wrapped" delta implying more than this is a counter reset, not a wrap

# Clock-event ("throttle") reason bits from nvml.h; the old and new API names share the values.
CLOCK_EVENT_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# Reasons that mean a power or thermal limit is holding the clocks down (idle, sync boost and clock
# settings are not throttling: the first is no work, the others are configuration).
THROTTLING_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here; the message says why in one line."""


def reason_names(mask: int) -> list[str]:
    return [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]


def is_throttling(mask: int | None) -> bool:
    return bool(mask) and bool(mask & THROTTLING_MASK)


def energy_delta_mj(start_mj: int, end_mj: int, window_s: float) -> tuple[int | None, str]:
    """Energy between two counter readings, handling a 64-bit wrap; (None, why) for a reset counter."""
    if end_mj >= start_mj:
        return end_mj - start_mj, ""
    wrapped = end_mj + ENERGY_WRAP - start_mj
    if wrapped <= MAX_PLAUSIBLE_POWER_W * max(window_s, 1e-3) * 1e3:
        return wrapped, "counter wrapped"
    return None, f"energy counter went backwards ({start_mj} -> {end_mj} mJ): reset by the driver?"


def _import_nvml(nvml: Any | None):
    if nvml is not None:
        return nvml
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable("pynvml not installed (pip install nvidia-ml-py)") from None
    return pynvml


def _describe(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _init(n: Any) -> None:
    try:
        n.nvmlInit()
    except Exception as e:  # noqa: BLE001 - LibraryNotFound, DriverNotLoaded, ... depending on the machine
        raise NvmlUnavailable(f"nvmlInit failed: {_describe(e)}") from None


def _shutdown(n: Any) -> None:
    try:
        n.nvmlShutdown()
    except Exception:  # noqa: BLE001 - nothing useful to do about a failed shutdown
        pass


@contextmanager
def session(*, nvml: Any | None = None) -> Iterator[Any]:
    """NVML initialised for the block and shut down after it; yields the bindings module."""
    n = _import_nvml(nvml)
    _init(n)
    try:
        yield n
    finally:
        _shutdown(n)


def driver_info(*, nvml: Any | None = None) -> tuple[str, int]:
    """(driver version, GPU count) as NVML reports them; raises NvmlUnavailable with the reason."""
    with session(nvml=nvml) as n:
        try:
            driver, count = n.nvmlSystemGetDriverVersion(), n.nvmlDeviceGetCount()
        except Exception as e:  # noqa: BLE001
            raise NvmlUnavailable(_describe(e)) from None
    if isinstance(driver, bytes):  # older bindings return bytes
        driver = driver.decode()
    return str(driver), int(count)


def _torch_identity(torch_index: int) -> tuple[str | None, str | None]:
    """(UUID, PCI bus id) of torch's cuda:N, so NVML picks the same GPU whatever CUDA_VISIBLE_DEVICES says."""
    try:
        import torch

        props = torch.cuda.get_device_properties(torch_index)
    except Exception:  # noqa: BLE001 - no torch / no CUDA: fall back to the index
        return None, None
    uuid = getattr(props, "uuid", None)
    uuid = f"GPU-{uuid}" if uuid is not None and not str(uuid).startswith("GPU-") else uuid
    bus = None
    if all(hasattr(props, a) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
        bus = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
    return (str(uuid) if uuid is not None else None), bus


def _visible_index(torch_index: int) -> int:
    """NVML index of torch's cuda:N when CUDA_VISIBLE_DEVICES lists plain indices; N otherwise."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    parts = [p.strip() for p in visible.split(",") if p.strip()]
    if torch_index < len(parts) and parts[torch_index].isdigit():
        return int(parts[torch_index])
    return torch_index


class NvmlDevice:
    """One GPU seen through NVML. Create with `open_device`; `close()` when done."""

    def __init__(self, nvml: Any, handle: Any, name: str) -> None:
        self.nvml, self.handle, self.name = nvml, handle, name
        self.unsupported: dict[str, str] = {}  # reading -> why it is missing
        self._readings: dict[str, Callable[[], Any]] = self._reading_functions()
        self._lock = threading.Lock()
        self._closed = False

    def _reading_functions(self) -> dict[str, Callable[[], Any]]:
        n, h = self.nvml, self.handle

        def get(fn_name: str, *args):
            fn = getattr(n, fn_name, None)
            if fn is None:
                return None
            return lambda: fn(h, *args)

        def const(name: str, fallback: int) -> int:
            return getattr(n, name, fallback)

        util = get("nvmlDeviceGetUtilizationRates")
        memory = get("nvmlDeviceGetMemoryInfo")
        power = get("nvmlDeviceGetPowerUsage")
        # The newer name first. Recent bindings define it whatever the driver, and a driver before 535 then
        # answers FunctionNotFound: so the choice is made by calling it once, not by the binding's names.
        reasons = get("nvmlDeviceGetCurrentClocksEventReasons")
        older = get("nvmlDeviceGetCurrentClocksThrottleReasons")
        if reasons is not None and older is not None:
            try:
                reasons()
            except Exception:  # noqa: BLE001 - FunctionNotFound on an older driver: use the older name
                reasons = older
        reasons = reasons or older
        readings = {
            "power_w": power and (lambda: power() / 1e3),  # mW
            "sm_clock_mhz": get("nvmlDeviceGetClockInfo", const("NVML_CLOCK_SM", 1)),
            "mem_clock_mhz": get("nvmlDeviceGetClockInfo", const("NVML_CLOCK_MEM", 2)),
            "gpu_util_pct": util and (lambda: util().gpu),
            "mem_util_pct": util and (lambda: util().memory),
            "temperature_c": get("nvmlDeviceGetTemperature", const("NVML_TEMPERATURE_GPU", 0)),
            "memory_used_bytes": memory and (lambda: memory().used),
            "clock_events": reasons,
        }
        for name, fn in list(readings.items()):
            if fn is None:
                self.unsupported[name] = "function not in these NVML bindings"
                del readings[name]
        energy = get("nvmlDeviceGetTotalEnergyConsumption")
        if energy is None:
            self.unsupported["energy"] = "nvmlDeviceGetTotalEnergyConsumption not in these NVML bindings"
        self._energy = energy
        tx = get("nvmlDeviceGetPcieThroughput", const("NVML_PCIE_UTIL_TX_BYTES", 0))
        rx = get("nvmlDeviceGetPcieThroughput", const("NVML_PCIE_UTIL_RX_BYTES", 1))
        self._pcie = (tx, rx) if tx and rx else None
        if self._pcie is None:
            self.unsupported["pcie"] = "nvmlDeviceGetPcieThroughput not in these NVML bindings"
        return readings

    def _try(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - NVMLError_NotSupported, FunctionNotFound, NoPermission, ...
            self.unsupported[name] = _describe(e)
            return None

    # NVML itself is thread-safe; the lock only guards this object's state, never an NVML call, so the
    # main thread's energy reading never waits behind the sampler's slow PCIe query.

    def read(self) -> dict[str, float]:
        """One reading of everything still supported (a refused reading is dropped for good)."""
        with self._lock:
            if self._closed:
                return {}
            readings = list(self._readings.items())
        out: dict[str, float] = {}
        for name, fn in readings:
            value = self._try(name, fn)
            if value is None:
                with self._lock:
                    self._readings.pop(name, None)
            else:
                out[name] = value
        return out

    def energy_mj(self) -> int | None:
        """The total-energy counter (mJ since the driver loaded), or None when unsupported."""
        with self._lock:
            fn = None if self._closed else self._energy
        if fn is None:
            return None
        value = self._try("energy", fn)
        if value is None:
            with self._lock:
                self._energy = None
            return None
        return int(value)

    def pcie_kbps(self) -> tuple[float, float] | None:
        """(tx, rx) PCIe throughput in KB/s; each query blocks ~20 ms in the driver, which counts bytes."""
        with self._lock:
            fns = None if self._closed else self._pcie
        if fns is None:
            return None
        tx = self._try("pcie", fns[0])
        rx = self._try("pcie", fns[1]) if tx is not None else None
        if tx is None or rx is None:
            with self._lock:
                self._pcie = None
            return None
        return float(tx), float(rx)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _shutdown(self.nvml)


def open_device(torch_index: int = 0, *, nvml: Any | None = None) -> NvmlDevice:
    """NVML's view of torch's cuda:`torch_index`; raises NvmlUnavailable with the reason."""
    n = _import_nvml(nvml)
    _init(n)
    try:
        handle = _handle_for(n, torch_index)
        name = n.nvmlDeviceGetName(handle) if hasattr(n, "nvmlDeviceGetName") else "unknown GPU"
    except Exception as e:  # noqa: BLE001
        _shutdown(n)
        raise NvmlUnavailable(f"no NVML handle for cuda:{torch_index}: {_describe(e)}") from None
    if isinstance(name, bytes):  # older bindings return bytes
        name = name.decode()
    return NvmlDevice(n, handle, str(name))


def _handle_for(n: Any, torch_index: int):
    uuid, bus = _torch_identity(torch_index)
    for fn_name, key in (("nvmlDeviceGetHandleByUUID", uuid), ("nvmlDeviceGetHandleByPciBusId", bus)):
        fn = getattr(n, fn_name, None)
        if key and fn:
            try:
                return fn(key)
            except Exception:  # noqa: BLE001 - try the next way of finding it
                pass
    return n.nvmlDeviceGetHandleByIndex(_visible_index(torch_index))


def status(device: Device, *, nvml: Any | None = None) -> dict[str, Any]:
    """NVML's availability for a run on `device`: {"available": True, "device": name} or {..False, "reason"}."""
    if not device.is_cuda:
        return {"available": False, "reason": "CPU run: no GPU to sample"}
    try:
        dev = open_device(device.index, nvml=nvml)
    except NvmlUnavailable as e:
        return {"available": False, "reason": str(e)}
    try:
        return {"available": True, "device": dev.name}
    finally:
        dev.close()


# ------------------------------------------------------------------------------------------- the sampler


class _Running:
    """Count, sum, min and max of each reading: exact over a window however many readings it holds."""

    def __init__(self) -> None:
        self.n: dict[str, int] = {}
        self.sum: dict[str, float] = {}
        self.min: dict[str, float] = {}
        self.max: dict[str, float] = {}
        self.clock_events_mask = 0
        self.throttled_readings = 0
        self.readings = 0

    def add(self, reading: dict[str, float]) -> None:
        self.readings += 1
        for key, value in reading.items():
            if key in ("t", "clock_events"):
                continue
            self.n[key] = self.n.get(key, 0) + 1
            self.sum[key] = self.sum.get(key, 0.0) + value
            self.min[key] = min(self.min.get(key, value), value)
            self.max[key] = max(self.max.get(key, value), value)
        mask = int(reading.get("clock_events", 0))
        self.clock_events_mask |= mask
        self.throttled_readings += is_throttling(mask)

    def stats(self, key: str) -> dict[str, float] | None:
        if not self.n.get(key):
            return None
        return {"mean": self.sum[key] / self.n[key], "min": self.min[key], "max": self.max[key]}


class NvmlSampler:
    """Poll an NvmlDevice every `period_s` in a background thread; bench's monitor hooks mark its window.

    Use as a context manager around `bench(..., monitor=sampler)`; then `summary(tokens_per_call)`.
    """

    def __init__(self, device: NvmlDevice, *, period_s: float = DEFAULT_PERIOD_S,
                 capacity: int = RING_CAPACITY, clock: Callable[[], float] = time.perf_counter) -> None:
        if not 0.001 <= period_s <= 1.0:
            raise ValueError(f"period_s must be within [0.001, 1] s, got {period_s}")
        self.device, self.period_s, self.clock = device, period_s, clock
        self.ring: deque[dict[str, float]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._all, self._window = _Running(), _Running()
        self._in_window = False
        self._ticks = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._energy_start: int | None = None
        self._t_start = self._t_end = None
        self._calls = 0
        self._timed_s = 0.0
        self._energy: dict[str, Any] = {"available": False, "reason": "the timed region was not marked"}

    # -------------------------------------------------------------- thread

    def __enter__(self) -> "NvmlSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "NvmlSampler":
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="ossbench-nvml", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5.0)
            self._thread = None

    def _loop(self) -> None:
        while True:
            self.tick()
            if self._stop.wait(self.period_s):
                return

    def tick(self) -> dict[str, float]:
        """Take one reading now (the thread calls this; tests may call it directly)."""
        reading = self.device.read()
        reading["t"] = self.clock()  # before the PCIe query, which takes ~20 ms per direction
        if self._ticks % PCIE_EVERY == 0:
            pcie = self.device.pcie_kbps()
            if pcie is not None:
                reading["pcie_tx_kbps"], reading["pcie_rx_kbps"] = pcie
        self._ticks += 1
        with self._lock:
            self.ring.append(reading)
            self._all.add(reading)
            if self._in_window:
                self._window.add(reading)
        return reading

    # -------------------------------------------------------------- bench's monitor hooks

    def sampling_started(self) -> None:
        """bench: the first timed batch is about to start (the device is idle: warm-up ended in a sync)."""
        self._energy_start = self.device.energy_mj()
        with self._lock:
            self._window = _Running()
            self._in_window = True
        self._t_start = self.clock()

    def batch_done(self, t0: float, t1: float) -> dict[str, Any] | None:
        """bench: a batch ran between t0 and t1 (its clock); the clocks and reasons seen meanwhile."""
        with self._lock:
            inside = [r for r in self.ring if t0 <= r["t"] <= t1]
            if not inside and self.ring:
                inside = [self.ring[-1]]  # a batch shorter than the period: the latest reading before it ended
        if not inside:  # no reading yet: one now (without the slow PCIe query, this is bench's thread)
            inside = [self.device.read()]
        clocks = [r["sm_clock_mhz"] for r in inside if "sm_clock_mhz" in r]
        masks = [int(r["clock_events"]) for r in inside if "clock_events" in r]
        if not clocks and not masks:
            return None
        mask = 0
        for m in masks:
            mask |= m
        return {"sm_clock_mhz_min": min(clocks) if clocks else None,
                "sm_clock_mhz_max": max(clocks) if clocks else None,
                "clock_events": mask if masks else None, "throttled": is_throttling(mask),
                "nvml_readings": len(inside)}

    def sampling_ended(self, calls: int, timed_s: float) -> None:
        """bench: sampling is over (synchronised); `calls` of fn ran in the window, `timed_s` inside events."""
        self._t_end = self.clock()
        end = self.device.energy_mj()
        with self._lock:
            self._in_window = False
        self._calls, self._timed_s = calls, timed_s
        window_s = self._t_end - self._t_start if self._t_start is not None else 0.0
        if self._energy_start is None or end is None:
            reason = self.device.unsupported.get("energy", "energy counter not readable")
            self._energy = {"available": False, "reason": reason}
            return
        delta, note = energy_delta_mj(self._energy_start, end, window_s)
        if delta is None:
            self._energy = {"available": False, "reason": note}
            return
        self._energy = {"available": True, "window_j": delta / 1e3, "calls": calls,
                        "per_call_j": delta / 1e3 / calls if calls else None, "note": note or None}

    # -------------------------------------------------------------- results

    def summary(self, tokens_per_call: int | None = None) -> dict[str, Any]:
        """What a case records (CaseResult.power); see docs/results.md."""
        with self._lock:
            w = self._window if self._window.readings else self._all
            scope = "timed" if self._window.readings else "case"
            stats = {key: w.stats(key) for key in ("power_w", "sm_clock_mhz", "mem_clock_mhz", "gpu_util_pct",
                                                   "mem_util_pct", "temperature_c", "memory_used_bytes",
                                                   "pcie_tx_kbps", "pcie_rx_kbps")}
            mask, throttled_n, readings = w.clock_events_mask, w.throttled_readings, w.readings
        window_s = (self._t_end - self._t_start) if self._t_start is not None and self._t_end is not None else None
        energy = dict(self._energy)
        if energy.get("available") and energy.get("per_call_j") is not None and tokens_per_call:
            energy["per_token_j"] = energy["per_call_j"] / tokens_per_call
        power = stats["power_w"]
        if energy.get("available") and window_s:
            energy["window_s"] = window_s
            energy["timed_fraction"] = self._timed_s / window_s
            energy["mean_power_x_window_j"] = power["mean"] * window_s if power else None
        return {
            "available": True,
            "device": self.device.name,
            "period_s": self.period_s,
            "scope": scope,  # "timed": readings inside bench's sampling phase; "case": the whole sampler run
            "readings": readings,
            **{k: v for k, v in stats.items() if v is not None},
            "energy": energy,
            "clock_events": self._clock_events(mask, throttled_n, readings),
            "unsupported": dict(self.device.unsupported),
        }

    def _clock_events(self, mask: int, throttled_n: int, readings: int) -> dict[str, Any]:
        if "clock_events" in self.device.unsupported:
            return {"available": False, "reason": self.device.unsupported["clock_events"], "throttled": None}
        return {"available": True, "mask": mask, "reasons": reason_names(mask), "throttled": is_throttling(mask),
                "throttled_readings": throttled_n,
                "throttled_fraction": throttled_n / readings if readings else 0.0}
