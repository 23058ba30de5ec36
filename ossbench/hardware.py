"""The device a run measures on, resolved once: `resolve_device("auto")` -> `Device`.

A `Device` is a frozen value (type, index, name, SM count, L2 size, CPU model, datasheet peak row) that the
runner, the timer, NVML and calibration take instead of re-parsing "cuda:N" strings. It holds only plain
fields, so it pickles into an isolated case's child process unchanged.

On the ground floor: imports nothing from ossbench but errors.py and peaks.py. torch is imported inside
functions, so importing this module stays cheap (`ossbench --help`, `ossbench env`).
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .errors import UserError
from .peaks import peak_row, peak_row_name

if TYPE_CHECKING:
    import torch

DEVICE_SPECS = "auto, cpu, cuda or cuda:N"
_CUDA_SPEC = re.compile(r"cuda(?::(\d+))?")


@dataclass(frozen=True)
class Device:
    """One device, as resolved at the start of a run. `str(device)` is "cpu" or "cuda:N"."""

    type: Literal["cpu", "cuda"]
    index: int | None = None  # the CUDA ordinal torch uses (after CUDA_VISIBLE_DEVICES); None on CPU
    name: str = ""  # the GPU's name ("NVIDIA H100 80GB HBM3"); on CPU the CPU model
    cpu_model: str = ""  # the host CPU, on either type
    sm_count: int | None = None  # streaming multiprocessors (CUDA only)
    l2_cache_bytes: int | None = None  # the GPU's L2 (CUDA only): what a cold-cache flush must overwrite
    peak_row: str | None = None  # the datasheet table's row ("H100 SXM"), None for a CPU or an unlisted GPU

    def __post_init__(self) -> None:
        if self.type not in ("cpu", "cuda"):
            raise ValueError(f"device type must be 'cpu' or 'cuda', got {self.type!r}")
        if (self.type == "cuda") != (self.index is not None):
            raise ValueError(f"a CUDA device needs an index and a CPU none (got {self.type} index {self.index})")

    def __str__(self) -> str:
        return "cpu" if self.type == "cpu" else f"cuda:{self.index}"

    @property
    def is_cuda(self) -> bool:
        return self.type == "cuda"

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(str(self))

    @property
    def peak(self) -> dict[str, Any] | None:
        """The datasheet row as a fresh dict (see `peaks.peak_for`), or None."""
        return peak_row(self.peak_row) if self.peak_row else None


def resolve_device(spec: str | Device) -> Device:
    """"auto" (a GPU when torch can use one, else the CPU), "cpu", "cuda" (= "cuda:0") or "cuda:N".

    A Device passes through unchanged. A malformed spec, or a CUDA device torch cannot use, raises UserError.
    """
    if isinstance(spec, Device):
        return spec
    import torch

    if spec == "auto":
        spec = "cuda:0" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        cpu = cpu_model()
        return Device(type="cpu", name=cpu, cpu_model=cpu)
    m = _CUDA_SPEC.fullmatch(spec) if isinstance(spec, str) else None
    if not m:
        raise UserError(f"--device must be {DEVICE_SPECS} (got {spec!r})")
    if not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available to torch "
                        f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    props = torch.cuda.get_device_properties(index)
    name = torch.cuda.get_device_name(index)
    return Device(type="cuda", index=index, name=name, cpu_model=cpu_model(), sm_count=props.multi_processor_count,
                  l2_cache_bytes=props.L2_cache_size, peak_row=peak_row_name(name))


def cpu_model() -> str:
    """The CPU's marketing name, e.g. "AMD EPYC 7763 64-Core Processor"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                # x86 says "model name"; some ARM kernels only give "Hardware" or "Model".
                if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
