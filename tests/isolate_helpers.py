"""A test-only layer family, `probe`, whose cases misbehave on request, for tests/test_isolate.py.

Isolated cases run in a spawned child, which sees only what it imports: `run_case` here registers the
family in the child and then runs the real `ossbench.runner.run_case`. The test hands this `run_case`
to the runner (monkeypatch), and multiprocessing pickles it by reference to this module, which the child
imports from the same sys.path as the test (pytest puts tests/ on it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict

import ossbench.workloads as workloads
from ossbench.runner import run_case as real_run_case  # bound now, before a test replaces runner.run_case
from ossbench.workloads.base import Check, Cost, Family, Workload

Action = Literal["ok", "hang", "segfault", "memory_error", "exit", "cuda_lost", "device_assert"]


class ProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Action = "ok"
    size: int = 16


def build(params: ProbeParams, device, dtype, *, seed: int = 0) -> Workload:  # the probe's data never matters
    import torch

    print(f"probe: building {params.action}", file=sys.stderr, flush=True)
    if params.action == "hang":
        sleeper = subprocess.Popen(["sleep", "3600"])  # must die with the worker's process group
        print(f"probe: grandchild pid {sleeper.pid}", file=sys.stderr, flush=True)
        time.sleep(3600)
    elif params.action == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif params.action == "memory_error":
        raise MemoryError("probe asked for more memory than there is")
    elif params.action == "exit":
        os._exit(3)
    elif params.action == "cuda_lost":
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    elif params.action == "device_assert":  # a real lost context (GPU only): an out-of-range index
        torch.zeros(4, device=device)[torch.tensor([10], device=device)].cpu()
    x = torch.randn(params.size, params.size, device=device, dtype=dtype)
    n = params.size
    return Workload(fn=lambda: x @ x, cost=Cost(flops=2 * n**3, bytes=3 * n * n * 4, tokens=n),
                    check=lambda: Check(0.0, 0.0, 1e-6, "itself"), info={"pid": os.getpid()})


FAMILY = Family(name="probe", description="test cases that crash, hang or run on request",
                params_model=ProbeParams, defaults=lambda preset: {}, build=build)


def register() -> None:
    """Make `probe` a known family (in the test process through monkeypatch, in a child through run_case)."""
    workloads._MODULES.setdefault("probe", __name__)


def run_case(case, device, timing, measure=None):
    register()
    return real_run_case(case, device, timing, measure)
