"""Scale: `report` of a 20k-case results file and `compare` of two runs with 2M samples per case, timed
through the CLI on synthetic files. The target is well under 30 s each; the bounds here are doubled so a
loaded CI machine does not fail them. Run with `-s` to see the figures (docs/report.md quotes them)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ossbench.cli import main
from ossbench.measure.roofline import peak_for
from ossbench.measure.stats import summarize

BOUND_S = 60.0  # twice the 30 s target


def header(name: str) -> dict:
    device = "NVIDIA H100 80GB HBM3"
    return {"schema": "ossbench.results/1",
            "suite": {"name": name, "path": "s.yaml", "sha256": "0" * 64, "family": "attention",
                      "preset": "gpt-oss-20b",
                      "compare": [{"baseline": "v0", "candidate": "v1", "expect": {"speedup_min": 1.0}}]},
            "environment": {"device_type": "cuda", "device_name": device, "python": "3.11", "platform": "linux",
                            "host": "h", "ossbench_version": "0.1.0", "start_time": "2026-01-01T00:00:00+00:00",
                            "peak": peak_for(device)},
            "cases": []}


def case(variant: str, seq_len: int, samples: np.ndarray) -> dict:
    stats = summarize(samples)
    flops, nbytes = 4.0 * seq_len * seq_len * 64, 2.0 * seq_len * 4096
    return {"id": f"attention/{variant}/seq_len={seq_len}", "family": "attention", "variant": variant,
            "axes": {"seq_len": seq_len}, "params": {"seq_len": seq_len}, "dtype": "bfloat16", "status": "ok",
            "samples_ms": samples.tolist(), "stats": stats, "flops": flops, "bytes": nbytes, "tokens": seq_len,
            "derived": {"tflops": flops / stats["median"] / 1e9, "gbps": nbytes / stats["median"] / 1e6},
            "memory": {"kind": "cuda", "peak_bytes": 1000 * seq_len}}


def timed(*args: str) -> tuple[float, object]:
    start = time.perf_counter()
    out = CliRunner().invoke(main, list(args), env={"COLUMNS": "200"})
    return time.perf_counter() - start, out


@pytest.mark.slow
def test_report_of_20k_cases(tmp_path: Path) -> None:
    """20 variants x 1000 sequence lengths, 50 samples each, one compare pair (1000 bootstrap CIs)."""
    rng = np.random.default_rng(0)
    run = header("big")
    noise = rng.lognormal(0.0, 0.05, (20, 50))  # one noise pattern per variant keeps the build quick
    for v in range(20):
        for k in range(1000):
            seq_len = 128 + 16 * k
            run["cases"].append(case(f"v{v}", seq_len, (0.01 + 1e-6 * seq_len * (v + 1)) * noise[v]))
    path = tmp_path / "results.json"
    path.write_text(json.dumps(run))
    elapsed, out = timed("report", str(path), "-o", str(tmp_path / "report.html"))
    assert out.exit_code == 0, out.output
    page = (tmp_path / "report.html").read_text()
    assert page.count('<tr class="case">') == 20_000
    print(f"\nreport of 20000 cases: {elapsed:.1f} s")
    assert elapsed < BOUND_S


@pytest.mark.slow
def test_compare_of_two_million_samples_per_case(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    paths = []
    for name, scale in (("a", 1.0), ("b", 1.1)):
        run = header("big-samples")
        for k in range(2):
            run["cases"].append(case(f"v{k}", 1024, scale * (k + 1) * rng.lognormal(0.0, 0.05, 2_000_000)))
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(run))
    elapsed, out = timed("compare", *map(str, paths))
    assert out.exit_code == 0, out.output
    assert "0.91 [0.91, 0.91]" in out.output  # 1 / 1.1, a tight CI from 2M samples a side
    print(f"\ncompare of 2 runs x 2 cases x 2,000,000 samples: {elapsed:.1f} s")
    assert elapsed < BOUND_S
