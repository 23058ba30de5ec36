"""`NvmlSampler`: NVML readings polled around a timed region, and bench's monitor hooks.

The sampler polls an `NvmlDevice` (measure/nvml.py) from a background thread every 10-20 ms into a bounded
ring buffer plus running totals (exact means over any window, however long), and implements the monitor
hooks `ossbench.bench` calls around its sampling phase: the energy counter is read at the start and end of
that phase, and every batch of samples gets the SM clock and clock-event reasons seen while it ran.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable

from .nvml import NvmlDevice, is_throttling, reason_names

DEFAULT_PERIOD_S = 0.015
RING_CAPACITY = 4096  # ~60 s of readings at 15 ms; older ones drop off, the running totals keep counting
PCIE_EVERY = 8  # PCIe throughput is read every 8th tick: the driver takes ~20 ms to answer that query
ENERGY_WRAP = 2**64  # nvmlDeviceGetTotalEnergyConsumption is an unsigned 64-bit count of mJ
MAX_PLAUSIBLE_POWER_W = 5000.0  # a "wrapped" delta implying more than this is a counter reset, not a wrap


def energy_delta_mj(start_mj: int, end_mj: int, window_s: float) -> tuple[int | None, str]:
    """Energy between two counter readings, handling a 64-bit wrap; (None, why) for a reset counter."""
    if end_mj >= start_mj:
        return end_mj - start_mj, ""
    wrapped = end_mj + ENERGY_WRAP - start_mj
    if wrapped <= MAX_PLAUSIBLE_POWER_W * max(window_s, 1e-3) * 1e3:
        return wrapped, "counter wrapped"
    return None, f"energy counter went backwards ({start_mj} -> {end_mj} mJ): reset by the driver?"


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
