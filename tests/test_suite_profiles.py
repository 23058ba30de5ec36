"""Named suite profiles (`profiles: {NAME: ...}`, `run --suite-profile NAME`) beside the automatic `cpu:` one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ossbench.cli import main
from ossbench.errors import SuiteError, UserError
from ossbench.suite import load_suite, parse_suite

HERE = Path(__file__).parent
TINY = (HERE / "suites" / "tiny.yaml").read_text()
SHIPPED = sorted((HERE.parent / "suites").glob("*.yaml"))
PROFILES = """
cpu:
  sweep: {seq_len: [16]}
profiles:
  gpu-smoke:
    description: two cases
    dtype: float64
    params: {n_heads: 8}
    variants: [window8]
    sweep: {mode: [prefill, decode], seq_len: [32], kv_len: [64]}
    timing: {max_time_s: 0.25}
"""


def test_named_profile_expands_with_its_overrides():
    suite = parse_suite(TINY + PROFILES, "inline.yaml")
    assert suite.profile_names() == ["full", "cpu", "gpu-smoke"]
    cases = suite.cases("gpu-smoke")
    assert [c.id for c in cases] == ["attention/window8/mode=prefill,seq_len=32,kv_len=64",
                                     "attention/window8/mode=decode,seq_len=32,kv_len=64"]
    assert {c.dtype for c in cases} == {"float64"} and cases[0].params_dict["n_heads"] == 8
    assert suite.timing("gpu-smoke").max_time_s == 0.25 and suite.timing("gpu-smoke").min_samples == 5
    assert suite.dtype("gpu-smoke") == "float64" and suite.dtype("full") == "float32"
    # the cpu profile stays automatic on a CPU; a named one only when asked for, on any device
    assert suite.profile_for("cpu") == "cpu" and suite.profile_for("cuda") == "full"
    assert suite.profile_for("cpu", "gpu-smoke") == "gpu-smoke" == suite.profile_for("cuda", "gpu-smoke")
    assert suite.profile_for("cpu", "full") == "full" and suite.profile_for("cuda", "cpu") == "cpu"
    with pytest.raises(UserError, match="no suite profile 'nope'; it has: full, cpu, gpu-smoke"):
        suite.profile_for("cuda", "nope")


@pytest.mark.parametrize("extra, fragment, field", [
    ("profiles:\n  cpu: {}\n", "reserved", "profiles"),
    ("profiles:\n  full: {}\n", "reserved", "profiles"),
    ("profiles:\n  GPU_smoke: {}\n", "lowercase letters, digits and '-'", "profiles"),
    ("profiles:\n  smoke:\n    variants: [full, window128]\n", "unknown variant 'window128'",
     "profiles.smoke.variants[1]"),
    ("profiles:\n  smoke:\n    sweeep: {seq_len: [8]}\n", "unknown field 'sweeep'", "profiles.smoke.sweeep"),
    ("profiles:\n  smoke:\n    sweep: {seq_length: [8]}\n", "unknown parameter 'seq_length'",
     "profiles.smoke.sweep.seq_length"),
    ("profiles:\n  smoke:\n    params: {n_kv_heads: 3}\n", "n_kv_heads", "profiles.smoke.params.n_kv_heads"),
    ("profiles:\n  smoke:\n    timing: {max_time_s: 0.001}\n", "max_time_s", "profiles.smoke.timing.max_time_s"),
    ("profiles:\n  smoke:\n    timing: {max_tim_s: 1}\n", "unknown field 'max_tim_s'", "profiles.smoke.timing.max_tim_s"),
    ("profiles:\n  smoke:\n    exclude: [{variant: nope}]\n", "unknown variant 'nope'",
     "profiles.smoke.exclude[0].variant"),
])
def test_bad_profile_is_reported_at_its_field_and_line(extra, fragment, field):
    text = TINY + extra
    with pytest.raises(SuiteError) as info:
        parse_suite(text, "inline.yaml")
    err = info.value
    assert fragment in str(err) and err.field == field, str(err)
    assert err.line is not None and err.line > TINY.count("\n"), str(err)  # in the appended part


def test_suggests_the_profile_field_names():
    with pytest.raises(SuiteError, match="did you mean 'variants'"):
        parse_suite(TINY + "profiles:\n  smoke:\n    variant: [full]\n", "inline.yaml")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_suite_has_a_gpu_smoke_profile_covering_its_backends_and_modes(path):
    suite = load_suite(path)
    full, smoke = suite.cases("full"), suite.cases("gpu-smoke")
    assert 4 <= len(smoke) <= 16

    def covered(cases):
        return {(k, v) for c in cases for k, v in c.params if k == "mode" or "backend" in k
                or k in ("grouped_impl", "weights", "dense")}
    assert covered(full) <= covered(smoke), covered(full) - covered(smoke)
    assert suite.timing("gpu-smoke").max_time_s <= 1


def test_run_records_the_profile_and_refuses_an_unknown_one(tmp_path):
    smoke = HERE / "suites" / "smoke.yaml"
    r = CliRunner().invoke(main, ["run", str(smoke), "--device", "cpu", "--suite-profile", "gpu-smoke",
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["suite"]["profile"] == "gpu-smoke" and results["options"]["suite_profile"] == "gpu-smoke"
    assert len(results["cases"]) == 2
    assert "gpu-smoke" in (tmp_path / "o" / "report.html").read_text()
    r = CliRunner().invoke(main, ["run", str(smoke), "--device", "cpu", "--suite-profile", "nope",
                                  "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "no suite profile 'nope'" in r.output


def test_validate_counts_every_profile():
    r = CliRunner().invoke(main, ["validate", str(HERE / "suites" / "smoke.yaml")])
    assert r.exit_code == 0 and "4 case(s), 2 in profile gpu-smoke" in r.output


def test_schema_describes_profiles():
    schema = json.loads(CliRunner().invoke(main, ["schema"]).output)
    assert "profiles" in schema["properties"] and "Profile" in json.dumps(schema["$defs"])


def test_resume_keeps_the_suite_profile(tmp_path):
    from ossbench.resume import plan_resume

    smoke = HERE / "suites" / "smoke.yaml"
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["run", str(smoke), "--device", "cpu", "--suite-profile", "gpu-smoke",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    plan, resumed = plan_resume(out)
    assert plan.profile == "gpu-smoke" and [c.id for c in plan.cases] == list(resumed.kept)
    r = CliRunner().invoke(main, ["run", "--resume", str(out), "--suite-profile", "full"])
    assert r.exit_code == 2 and "--suite-profile" in r.output
