"""Synthetic run histories written as results files (the ossbench.results/1 schema), for the history tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from ossbench.measure.stats import summarize
from ossbench.results import CaseResult, Environment, RunResult, SuiteInfo

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
RUN_SIGMA, SAMPLE_SIGMA, N_SAMPLES = 0.02, 0.05, 30  # run-to-run 2%, within a run 5% per sample


def commit(i: int) -> str:
    return f"{i + 1:07d}".ljust(40, "a")


def make_run(i: int, levels: dict[str, float], rng: np.random.Generator, *, suite: str = "attention",
             device: str = "NVIDIA H100 80GB HBM3", status: dict[str, str] | None = None) -> RunResult:
    """Run i (start time T0 + i hours, commit `commit(i)`): case id -> true median in ms this run."""
    run = RunResult(
        suite=SuiteInfo(name=suite, path=f"suites/{suite}.yaml", sha256="0" * 64, family="attention",
                        preset="gpt-oss-20b"),
        environment=Environment(device_type="cuda", device_name=device, python="3.11", platform="linux",
                                host="ci", ossbench_version="0.1.0", git_revision=commit(i),
                                start_time=(T0 + timedelta(hours=i)).isoformat(timespec="seconds")))
    for case_id, level in levels.items():
        st = (status or {}).get(case_id, "ok")
        if st != "ok":
            run.cases.append(CaseResult(id=case_id, family="attention", variant=case_id.split("/")[1],
                                        dtype="bfloat16", status=st, error="boom"))
            continue
        samples = level * rng.lognormal(0.0, RUN_SIGMA) * rng.lognormal(0.0, SAMPLE_SIGMA, N_SAMPLES)
        run.cases.append(CaseResult(id=case_id, family="attention", variant=case_id.split("/")[1],
                                    dtype="bfloat16", status="ok", samples_ms=samples.tolist(),
                                    stats=summarize(samples)))
    return run


def write_history(folder: Path, series: dict[str, list[float]], seed: int = 0, **kwargs) -> list[Path]:
    """One results file per run (folder/run-XXX/results.json), written in shuffled order."""
    rng = np.random.default_rng(seed)
    n = len(next(iter(series.values())))
    paths = []
    for i in rng.permutation(n):
        run = make_run(int(i), {cid: levels[i] for cid, levels in series.items()}, rng, **kwargs)
        paths.append(run.save(folder / f"run-{i:03d}" / "results.json"))
    return paths


def flat(n: int, level: float = 1.0) -> list[float]:
    return [level] * n


def step(n: int, at: int, ratio: float, level: float = 1.0) -> list[float]:
    return [level * (ratio if i >= at else 1.0) for i in range(n)]
