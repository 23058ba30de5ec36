"""NVML's view of one GPU: opening and closing NVML, the device handle, and its readings (power, energy,
clocks, utilisation, temperature, memory, clock-event reasons).

`NvmlDevice` wraps one GPU's NVML handle. Each reading (power, SM clock, ...) is tried once per device; a
reading the driver or the bindings refuse (an old driver, a missing function, `NotSupported`) is dropped
and its reason kept, so one missing feature never costs the others. The background sampler that polls it
around a timed region is `measure/nvml_sampler.py`.

Without NVML (no `pynvml`, no driver, a CPU run) `open_device` raises `NvmlUnavailable` with one readable
reason; callers record it and go on. pynvml is imported inside functions (and can be injected as `nvml=`
for tests), so importing this module costs nothing. Every NVML user in ossbench (the sampler, `status`,
`driver_info` for `ossbench env`, calibration's process count) opens and closes NVML through `_init` and
`_shutdown` here, and nowhere else.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..hardware import Device

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


def free_memory_bytes(torch_index: int, *, nvml: Any | None = None) -> int | None:
    """The GPU's free memory as NVML counts it (every process's use taken off), read without creating a
    CUDA context in this process; None when NVML cannot say."""
    try:
        dev = open_device(torch_index, nvml=nvml)
    except NvmlUnavailable:
        return None
    try:
        info = dev.nvml.nvmlDeviceGetMemoryInfo(dev.handle)
        free = getattr(info, "free", None)
        return int(free if free is not None else info.total - info.used)
    except Exception:  # noqa: BLE001 - not supported: the caller falls back
        return None
    finally:
        dev.close()


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
