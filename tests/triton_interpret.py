"""Run Triton kernels under the interpreter (TRITON_INTERPRET=1) in a child process, for CPU-only tests.

Why a child process: triton reads TRITON_INTERPRET when `@triton.jit` decorates a function, and that
includes triton's own library functions (tl.cdiv, tl.max, tl.sum are jit functions decorated when
`triton.language` is first imported). In a test session triton is usually imported long before a kernel
test runs (torch probes it; the layers import the kernels), so setting the variable in-process is too late
and would also turn later kernels interpreted. The child starts with the variable set, runs a batch of
calls and hands the outputs back through a file.

    outputs = run_interpreted("ossbench.kernels.attention_decode:flash_decode", {"name": (args, kwargs)}, tmp)

Each output is the function's result, or a string with the exception the call raised. Arguments and results
are tensors, numbers, strings, None and tuples/lists/dicts of them (torch.save / torch.load weights_only).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

TIMEOUT_S = 300  # the interpreter is slow on a loaded 2-core machine; a hang still ends


def run_interpreted(target: str, calls: dict[str, tuple[tuple, dict]], folder: Path) -> dict[str, Any]:
    """Call `target` ("module:function") on each (args, kwargs) of `calls` in one interpreted child process."""
    folder.mkdir(parents=True, exist_ok=True)
    calls_file, out_file = folder / "calls.pt", folder / "outputs.pt"
    torch.save(calls, calls_file)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, __file__, target, str(calls_file), str(out_file)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"the interpreted child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return torch.load(out_file, weights_only=True)


def _main(target: str, calls_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    outputs: dict[str, Any] = {}
    for name, (args, kwargs) in torch.load(calls_file, weights_only=True).items():
        try:
            outputs[name] = function(*args, **kwargs)
        except Exception as error:  # handed back to the test, which reports it
            outputs[name] = f"{type(error).__name__}: {error}"
    torch.save(outputs, out_file)


if __name__ == "__main__":
    _main(*sys.argv[1:4])
