"""Hostile results files through every command that reads them (report, compare, gate, export): each is
refused with exit code 2 and one message naming the file and the field, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ossbench.cli import main
from ossbench.errors import ResultsError
from ossbench.results import CaseResult, Environment, RunResult, SuiteInfo, load_results


def make_run(n_cases: int = 3) -> RunResult:
    run = RunResult(
        suite=SuiteInfo(name="s", path="s.yaml", sha256="0" * 64, family="attention", preset="gpt-oss-20b"),
        environment=Environment(device_type="cpu", device_name="cpu", python="3.11", platform="linux",
                                host="h", ossbench_version="0.1.0", start_time="2026-01-01T00:00:00+00:00"))
    for i in range(n_cases):
        samples = [1.0 + 0.01 * k for k in range(10)]
        run.cases.append(CaseResult(
            id=f"attention/v{i}/seq_len={128 * (i + 1)}", family="attention", variant=f"v{i}",
            axes={"seq_len": 128 * (i + 1)}, dtype="float32", status="ok", samples_ms=samples,
            stats=dict(n=10, median=1.045, mean=1.045, stdev=0.03, min=1.0, max=1.09, p10=1.009, p90=1.081,
                       ci95_low=1.02, ci95_high=1.07, rel_ci=0.024, converged=True)))
    return run


def run_dict() -> dict:
    return json.loads(make_run().to_json())


def with_samples(samples: list) -> dict:
    data = run_dict()
    data["cases"][1]["samples_ms"] = samples
    return data


def invoke(command: str, bad: Path, tmp_path: Path):
    good = str(make_run().save(tmp_path / "good.json"))
    args = {
        "report": ["report", str(bad), "-o", str(tmp_path / "r.html")],
        "compare": ["compare", good, str(bad)],
        "gate": ["gate", "--baseline", good, str(bad)],
        "export": ["export", str(bad), "--format", "csv", "-o", str(tmp_path / "r.csv")],
    }[command]
    return CliRunner().invoke(main, args, env={"COLUMNS": "250"})


def assert_refused(out, bad: Path, *fragments: str) -> None:
    assert out.exit_code == 2, out.output
    assert isinstance(out.exception, SystemExit), out.exception  # not an uncaught exception
    assert "Traceback" not in out.output
    text = " ".join(out.output.split())  # rich may fold a long message
    assert bad.name in text
    for fragment in fragments:
        assert fragment in text, text


def write(tmp_path: Path, data: dict | str, name: str = "bad.json") -> Path:
    path = tmp_path / name
    # json.dumps writes NaN and Infinity as bare tokens, which Python's json (and so a results file) reads.
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def with_record(field: str, value) -> dict:
    data = run_dict()
    data["cases"][0][field] = value
    return data


def _deep(depth: int) -> dict:
    data = run_dict()
    data["cases"][0]["params"] = {"x": json.loads("[" * depth + "]" * depth)}
    return data


HOSTILE = {
    # name: (file contents, fragments the message must hold)
    "nan sample": (with_samples([1.0, float("nan"), 1.2]), ["attention/v1/seq_len=256", "samples_ms.1", "nan"]),
    "inf sample": (with_samples([1.0, float("inf")]), ["attention/v1/seq_len=256", "samples_ms.1", "inf"]),
    "negative sample": (with_samples([1.0, -0.5]), ["attention/v1/seq_len=256", "samples_ms.1"]),
    "all-zero samples": (with_samples([0.0, 0.0, 0.0]), ["attention/v1/seq_len=256", "samples_ms", "zero"]),
    "string sample": (with_samples([1.0, "fast"]), ["attention/v1/seq_len=256", "samples_ms.1"]),
    "deep json": ('{"schema": "ossbench.results/1", "suite": ' + "[" * 200_000 + "]" * 200_000 + "}",
                  ["nested too deeply"]),
    "peak of the wrong type": ({**run_dict(), "environment": {**run_dict()["environment"], "peak": "fast"}},
                               ["environment.peak"]),
    "peak value of the wrong type": (
        {**run_dict(), "environment": {**run_dict()["environment"], "peak": {"bf16_tflops": "lots"}}},
        ["environment.peak.bf16_tflops"]),
    "ceilings of the wrong type": (
        {**run_dict(), "environment": {**run_dict()["environment"], "ceilings": {"compute_tflops": [989]}}},
        ["environment.ceilings.compute_tflops"]),
    "negative ceiling": (
        {**run_dict(), "environment": {**run_dict()["environment"], "ceilings": {"bandwidth_gbps": -1}}},
        ["environment.ceilings.bandwidth_gbps"]),
    "ceiling sources of the wrong type": (
        {**run_dict(), "environment": {**run_dict()["environment"], "ceilings": {"sources": ["a"]}}},
        ["environment.ceilings.sources"]),
    "gate of the wrong type": ({**run_dict(), "suite": {**run_dict()["suite"], "gate": {"max_slowdown": "5%"}}},
                               ["suite.gate.max_slowdown"]),
    "gate overrides of the wrong type": (
        {**run_dict(), "suite": {**run_dict()["suite"], "gate": {"cases": ["attention"]}}}, ["suite.gate.cases"]),
    "lone surrogate in an id": ({**run_dict(), "cases": [{**run_dict()["cases"][0], "id": "a/\ud800/b"}]},
                                ["cases.0.id", "surrogate"]),
    "lone surrogate in a key": ({**run_dict(), "suite": {**run_dict()["suite"], "gate": {"cases": {"\udc00": 1}}}},
                                ["suite.gate.cases.\\udc00", "surrogate"]),
    # Measurement records the report reads key by key (found by fuzzing every command with odd values).
    "roofline of the wrong type": (with_record("roofline", {"available": True, "speed_of_light": "x"}),
                                   ["attention/v0/seq_len=128", "field roofline.speed_of_light"]),
    "energy of the wrong type": (with_record("power", {"energy": {"available": True, "per_token_j": "x"}}),
                                 ["attention/v0/seq_len=128", "field power.energy.per_token_j"]),
    "power of the wrong type": (with_record("power", {"power_w": {"mean": "x"}}), ["field power.power_w.mean"]),
    "profile of the wrong type": (with_record("profile", {"top": [{"name": "k", "calls": "x"}]}),
                                  ["field profile.top.0.calls"]),
    "counters of the wrong type": (with_record("counters", {"available": True, "gbps": "x"}),
                                   ["field counters.gbps"]),
    "compare pair of the wrong type": (
        {**run_dict(), "suite": {**run_dict()["suite"], "compare": [{"baseline": 3, "candidate": "v1"}]}},
        ["suite.compare.0.baseline"]),
}


@pytest.mark.parametrize("command", ["report", "compare", "gate", "export"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_file_is_refused_by_every_command(tmp_path, command, name):
    contents, fragments = HOSTILE[name]
    bad = write(tmp_path, contents)
    assert_refused(invoke(command, bad, tmp_path), bad, *fragments)


@pytest.mark.parametrize("command", ["report", "compare", "gate", "export"])
def test_duplicate_case_ids_are_refused(tmp_path, command):
    data = run_dict()
    data["cases"][2]["id"] = data["cases"][0]["id"]
    bad = write(tmp_path, data)
    assert_refused(invoke(command, bad, tmp_path), bad, "attention/v0/seq_len=128", "more than once", "cases.2")


def test_deep_json_within_the_parser_limit_loads_or_is_refused_cleanly(tmp_path):
    # Deep enough to stress every recursive step after parsing, shallow enough for json.loads itself.
    bad = write(tmp_path, _deep(900))
    for command in ("report", "compare", "gate", "export"):
        out = invoke(command, bad, tmp_path)
        assert out.exit_code in (0, 2), (command, out.output)
        assert out.exit_code == 0 or isinstance(out.exception, SystemExit), (command, out.exception)


def _journal(tmp_path: Path, middle: str) -> Path:
    run = make_run(2)
    head = {"journal": "ossbench.results/1", **json.loads(run.model_copy(update={"cases": []}).to_json())}
    case = json.dumps({"case": json.loads(run.cases[0].model_dump_json())})
    return write(tmp_path, "\n".join([json.dumps(head), case, middle, case.replace("v0", "v1")]) + "\n",
                 "journal.jsonl")


@pytest.mark.parametrize("line, fragment", [("[1, 2]", "must be a JSON object, got list"),
                                            ('"text"', "must be a JSON object, got str"),
                                            ('{"case": [1]}', "'case' must be a JSON object"),
                                            ("{broken", "not valid JSON")])
@pytest.mark.parametrize("command", ["report", "gate"])
def test_a_bad_journal_line_is_refused_naming_its_line(tmp_path, line, fragment, command):
    bad = _journal(tmp_path, line)
    assert_refused(invoke(command, bad, tmp_path), bad, "line 3", fragment)


def test_deep_json_with_a_surrogate_escape_is_refused_cleanly(tmp_path):
    data = _deep(900)
    data["cases"][0]["params"]["y"] = "\ud800"
    bad = write(tmp_path, data)
    with pytest.raises(ResultsError, match="surrogate|nested too deeply"):
        load_results(bad)
    message = str(pytest.raises(ResultsError, load_results, bad).value)
    message.encode("utf-8")  # the message itself is printable text


def test_a_good_journal_still_loads(tmp_path):
    path = _journal(tmp_path, "")
    assert [c.id for c in load_results(path).cases] == ["attention/v0/seq_len=128", "attention/v1/seq_len=128"]


def test_valid_records_keep_their_extra_keys(tmp_path):
    data = run_dict()
    data["environment"]["peak"] = {"name": "H100 SXM", "bf16_tflops": 989, "hbm_gbps": 3350, "future": 1}
    data["suite"]["gate"] = {"max_slowdown": 0.1, "cases": {"v1": 0.2}}
    run = load_results(write(tmp_path, data))
    assert run.environment.peak == {"name": "H100 SXM", "bf16_tflops": 989.0, "hbm_gbps": 3350.0, "future": 1}
    assert run.suite.gate == {"max_slowdown": 0.1, "cases": {"v1": 0.2}}


def test_library_load_raises_results_error_for_nan(tmp_path):
    with pytest.raises(ResultsError, match=r"samples_ms\.1"):
        load_results(write(tmp_path, with_samples([1.0, float("nan")])))
