"""ossbench: profile and benchmark the architectural choices of MoE transformers, gpt-oss as the reference.

Python API (imported lazily so `import ossbench` and the CLI start without torch):

    ossbench.bench(fn, ...)          -> Measurement   (a better-measured triton.testing.do_bench)
    ossbench.BenchSpec(...)          -> its settings  (bench(fn, spec=...); a suite's `timing:`)
    ossbench.load_results(path)      -> RunResult     (.to_dataframe(): one row per case)
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["bench", "BenchSpec", "Measurement", "load_results", "RunResult", "__version__"]

_LAZY = {
    "bench": "ossbench.measure.timer",
    "BenchSpec": "ossbench.measure.spec",
    "Measurement": "ossbench.measure.measurement",
    "load_results": "ossbench.results",
    "RunResult": "ossbench.results",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ossbench' has no attribute {name!r}")
