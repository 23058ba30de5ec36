"""The results file: atomic save, validated load, journal recovery, DataFrame view."""

from __future__ import annotations

import json

import pytest

from ossbench.errors import ResultsError
from ossbench.results import SCHEMA, CaseResult, Environment, RunResult, SuiteInfo, load_results


def make_run(n_cases: int = 2) -> RunResult:
    run = RunResult(
        suite=SuiteInfo(name="s", path="s.yaml", sha256="0" * 64, family="attention", preset="gpt-oss-20b"),
        environment=Environment(device_type="cpu", device_name="cpu", python="3.11", platform="linux",
                                host="h", ossbench_version="0.1.0", start_time="2026-01-01T00:00:00+00:00"),
    )
    for i in range(n_cases):
        samples = [1.0 + 0.01 * k for k in range(10)]
        run.cases.append(CaseResult(
            id=f"attention/v{i}/seq_len={128 * (i + 1)}", family="attention", variant=f"v{i}",
            axes={"seq_len": 128 * (i + 1)}, params={"seq_len": 128 * (i + 1), "window": None},
            dtype="float32", status="ok", samples_ms=samples, flops=1e9, bytes=1e6, tokens=128,
            stats=dict(n=10, median=1.045, mean=1.045, stdev=0.03, min=1.0, max=1.09, p10=1.009, p90=1.081,
                       ci95_low=1.02, ci95_high=1.07, rel_ci=0.024, converged=False)))
    return run


def test_round_trip_keeps_every_sample(tmp_path):
    run = make_run()
    path = run.save(tmp_path / "out" / "results.json")
    loaded = load_results(path)
    assert loaded.cases[1].samples_ms == run.cases[1].samples_ms
    assert json.loads(path.read_text())["schema"] == SCHEMA
    assert not list(path.parent.glob(".*tmp"))  # no temporary file left behind


def test_dataframe_has_one_row_per_case(tmp_path):
    df = load_results(make_run(3).save(tmp_path / "r.json")).to_dataframe()
    assert len(df) == 3
    assert list(df["seq_len"]) == [128, 256, 384]
    assert {"median_ms", "ci95_low_ms", "n", "param.window", "tflops", "status"} <= set(df.columns)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"benchmarks": []}', "not an ossbench results file"),
    ('{"schema": "ossbench.results/99"}', "unsupported schema"),
    ('{"schema": "ossbench.results/1", "suite": {}}', "invalid results file at suite"),
    ("[1, 2]", "not an ossbench results file"),
])
def test_foreign_or_corrupt_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ResultsError, match=message):
        load_results(path)


def test_missing_file(tmp_path):
    with pytest.raises(ResultsError, match="no such file"):
        load_results(tmp_path / "nope.json")


def test_journal_with_a_truncated_last_line_loads(tmp_path):
    run = make_run(2)
    head = {"journal": SCHEMA, **json.loads(run.model_copy(update={"cases": []}).to_json())}
    lines = [json.dumps(head)] + [json.dumps({"case": json.loads(c.model_dump_json())}) for c in run.cases]
    path = tmp_path / "journal.jsonl"
    path.write_text("\n".join(lines) + '\n{"case": {"id": "attention/cut')
    loaded = load_results(path)
    assert [c.id for c in loaded.cases] == [c.id for c in run.cases]


def test_saved_files_are_readable_by_others_under_the_usual_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = make_run().save(tmp_path / "results.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
