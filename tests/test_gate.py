"""The regression gate: A/A passes, a real slowdown fails naming exactly its case, the effect-size threshold,
new failures, hardware refusal, suite overrides, every output, CLI exit codes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import mannwhitneyu

from ossbench.cli import main
from ossbench.errors import SuiteError, UserError
from ossbench.gate import gate, parse_fraction, threshold_for
from ossbench.gate_outputs import gate_junit, gate_markdown
from ossbench.measure.stats import summarize
from ossbench.results import CaseResult, Environment, RunResult, SuiteInfo
from ossbench.suite import parse_suite

TINY = Path(__file__).parent / "suites" / "tiny.yaml"
N_CASES, N_SAMPLES, SIGMA = 30, 50, 0.05  # lognormal noise of about 5% per sample


def case_id(i: int) -> str:
    return f"attention/v{i % 3}/seq_len={128 * (i + 1)}"


def make_run(rng: np.random.Generator, *, device: str = "NVIDIA H100 80GB HBM3", slow: dict[int, float] | None = None,
             n_cases: int = N_CASES, gate_section: dict | None = None) -> RunResult:
    """A run whose case i has true median 0.1 * (i + 1) ms, times `slow[i]`, with fresh lognormal noise."""
    slow = slow or {}
    run = RunResult(
        suite=SuiteInfo(name="attention", path="suites/attention.yaml", sha256="0" * 64, family="attention",
                        preset="gpt-oss-20b", gate=gate_section or {}),
        environment=Environment(device_type="cuda", device_name=device, python="3.11", platform="linux",
                                host="h", ossbench_version="0.1.0", start_time="2026-01-01T00:00:00+00:00"))
    for i in range(n_cases):
        samples = 0.1 * (i + 1) * slow.get(i, 1.0) * rng.lognormal(0.0, SIGMA, N_SAMPLES)
        run.cases.append(CaseResult(id=case_id(i), family="attention", variant=f"v{i % 3}",
                                    axes={"seq_len": 128 * (i + 1)}, dtype="bfloat16", status="ok",
                                    samples_ms=samples.tolist(), stats=summarize(samples)))
    return run


def save_pair(tmp_path: Path, baseline: RunResult, current: RunResult) -> tuple[str, str]:
    return str(baseline.save(tmp_path / "base.json")), str(current.save(tmp_path / "cur.json"))


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env={"COLUMNS": "250", **(env or {})})


def test_a_a_pair_passes_with_no_regression(tmp_path):
    rng = np.random.default_rng(1)
    result = gate(make_run(rng), make_run(rng))
    assert result.passed
    assert result.counts() == {"unchanged": N_CASES}
    base, cur = save_pair(tmp_path, make_run(rng), make_run(rng))
    out = invoke("gate", "--baseline", base, cur)
    assert out.exit_code == 0, out.output
    assert "PASSED" in out.output and "regression " not in out.output


def test_twenty_percent_slowdown_fails_naming_exactly_that_case(tmp_path):
    rng = np.random.default_rng(2)
    baseline = make_run(rng)
    current = make_run(rng, slow={7: 1.2})
    slowed = case_id(7)
    result = gate(baseline, current)
    assert not result.passed
    assert [v.id for v in result.having("regression")] == [slowed]
    assert result.having("new failure") == []

    md, xml = tmp_path / "gate.md", tmp_path / "gate.xml"
    base, cur = save_pair(tmp_path, baseline, current)
    out = invoke("gate", "--baseline", base, cur, "--markdown", str(md), "--junit", str(xml))
    assert out.exit_code == 1, out.output
    # terminal table: exactly one row says regression, and it is the slowed case
    rows = [line for line in out.output.splitlines() if "regression" in line and "│" in line]
    assert len(rows) == 1 and slowed in rows[0]
    # markdown: verdict line first, one bold regression row naming the case
    text = md.read_text()
    assert text.startswith("❌ **ossbench gate FAILED: 1 regression(s)")
    md_rows = [line for line in text.splitlines() if line.startswith("| ") and "**regression**" in line]
    assert len(md_rows) == 1 and slowed in md_rows[0]
    # JUnit: one testcase per case, exactly one <failure>, on that case, with the figures
    root = ET.parse(xml).getroot()
    cases = root.iter("testcase")
    failures = [(tc.get("name"), f) for tc in root.iter("testcase") for f in tc.iter("failure")]
    assert len(list(cases)) == N_CASES
    assert len(failures) == 1 and failures[0][0] == slowed
    message, ratio = failures[0][1].get("message"), result.having("regression")[0].ratio
    assert f"{(ratio - 1) * 100:+.1f}%" in message and "Mann-Whitney" in message and 1.1 < ratio < 1.3
    assert root.find("testsuite").get("failures") == "1"


def test_two_percent_slowdown_is_significant_but_under_the_threshold(tmp_path):
    rng = np.random.default_rng(3)
    baseline = make_run(rng, n_cases=4)
    current = make_run(rng, n_cases=4, slow={i: 1.02 for i in range(4)})
    # with 2000 samples a 2% shift is highly significant ...
    for run in (baseline, current):
        for c in run.cases:
            c.samples_ms = (np.median(c.samples_ms) * rng.lognormal(0, SIGMA, 2000)).tolist()
    result = gate(baseline, current)
    assert all(v.p_slower < 1e-6 for v in result.cases), [v.p_slower for v in result.cases]
    # ... and still passes: the median moved less than 5%
    assert result.passed and result.counts() == {"unchanged": 4}
    # the same data fails with a 1% threshold
    assert len(gate(baseline, current, max_slowdown=0.01).having("regression")) == 4


def test_improvements_are_reported_not_failed():
    rng = np.random.default_rng(4)
    result = gate(make_run(rng), make_run(rng, slow={3: 0.7}))
    assert result.passed
    assert [v.id for v in result.having("improvement")] == [case_id(3)]


def test_newly_failing_and_missing_cases_fail_the_gate(tmp_path):
    rng = np.random.default_rng(5)
    baseline, current = make_run(rng), make_run(rng)
    broken = current.cases[4]
    broken.status, broken.error, broken.samples_ms, broken.stats = "oom", "CUDA out of memory", [], None
    gone = current.cases.pop(10)
    current.cases.append(CaseResult(id="attention/v9/seq_len=1", family="attention", variant="v9",
                                    dtype="bfloat16", status="skipped", error="backend cannot express it"))
    result = gate(baseline, current)
    assert not result.passed
    assert [v.id for v in result.having("new failure")] == [broken.id]
    assert [v.id for v in result.having("missing")] == [gone.id]
    assert [v.id for v in result.having("new")] == ["attention/v9/seq_len=1"]
    xml = ET.fromstring(gate_junit(result).split("\n", 1)[1])
    failures = [tc.get("name") for tc in xml.iter("testcase") if tc.find("failure") is not None]
    skipped = {tc.get("name") for tc in xml.iter("testcase") if tc.find("skipped") is not None}
    assert failures == [broken.id, gone.id] and skipped == {"attention/v9/seq_len=1"}
    assert "new failure" in gate_markdown(result)

    base, cur = save_pair(tmp_path, baseline, current)
    assert invoke("gate", "--baseline", base, cur).exit_code == 1


def test_case_failing_in_both_runs_does_not_fail_the_gate():
    rng = np.random.default_rng(6)
    baseline, current = make_run(rng, n_cases=3), make_run(rng, n_cases=3)
    for run in (baseline, current):
        run.cases[0].status, run.cases[0].error = "failed", "numerics mismatch"
    result = gate(baseline, current)
    assert result.passed and [v.verdict for v in result.cases][0] == "still failing"


def test_different_gpu_models_are_refused_unless_allowed(tmp_path):
    rng = np.random.default_rng(7)
    baseline, current = make_run(rng), make_run(rng, device="NVIDIA H200")
    with pytest.raises(UserError, match="H100.*H200"):
        gate(baseline, current)
    base, cur = save_pair(tmp_path, baseline, current)
    out = invoke("gate", "--baseline", base, cur)
    assert out.exit_code == 2
    assert "NVIDIA H100 80GB HBM3" in out.output and "NVIDIA H200" in out.output and "Traceback" not in out.output
    out = invoke("gate", "--baseline", base, cur, "--allow-hardware-mismatch")
    assert out.exit_code == 0, out.output
    assert "hardware mismatch allowed" in out.output


def test_a_baseline_sharing_no_case_is_refused(tmp_path):
    rng = np.random.default_rng(14)
    baseline, current = make_run(rng, n_cases=3), make_run(rng, n_cases=3)
    for c in current.cases:
        c.id = c.id.replace("attention/", "moe/")
    base, cur = save_pair(tmp_path, baseline, current)
    out = invoke("gate", "--baseline", base, cur)
    assert out.exit_code == 2 and "right baseline file" in out.output


def test_suite_gate_section_overrides_the_threshold():
    rng = np.random.default_rng(8)
    baseline = make_run(rng)
    current = make_run(rng, slow={7: 1.2}, gate_section={"cases": {"seq_len=1024": 0.30}})
    assert case_id(7).endswith("seq_len=1024")
    result = gate(baseline, current)
    assert result.passed, result.summary()
    assert result.cases[7].threshold == 0.30 and result.cases[0].threshold == 0.05
    # the suite-wide default applies too, and an explicit argument beats it
    current.suite.gate = {"max_slowdown": 0.5}
    assert gate(baseline, current).passed
    assert not gate(baseline, current, max_slowdown=0.05).passed


def test_longest_matching_override_wins():
    overrides = {"v1": 0.2, "v1/seq_len=128": 0.4}
    assert threshold_for("attention/v1/seq_len=128", 0.05, overrides) == 0.4
    assert threshold_for("attention/v1/seq_len=256", 0.05, overrides) == 0.2
    assert threshold_for("attention/v2/seq_len=256", 0.05, overrides) == 0.05


def test_suite_gate_section_is_validated_and_recorded():
    text = TINY.read_text()
    suite = parse_suite(text + "gate: {max_slowdown: 0.1, cases: {window8: 0.2}}\n", "t.yaml")
    assert suite.spec.gate.max_slowdown == 0.1 and suite.spec.gate.cases == {"window8": 0.2}
    for bad, message in (("gate: {max_slowdown: 0}", "greater than 0"),
                         ("gate: {cases: {window8: -1}}", "greater than 0"),
                         ("gate: {max_slowdwn: 0.1}", "unknown field 'max_slowdwn'"),
                         ("gate: {cases: {window9: 0.2}}", "matches no case")):
        with pytest.raises(SuiteError, match=message) as info:
            parse_suite(text + bad + "\n", "t.yaml")
        assert info.value.line == len(text.splitlines()) + 1 and info.value.field.startswith("gate")


def test_runner_copies_the_gate_section(tmp_path):
    from ossbench.runner import plan_run, run_plan

    suite = parse_suite(TINY.read_text() + "gate: {cases: {window8: 0.2}}\n", str(TINY))
    plan = plan_run(suite, device="cpu", out_dir=tmp_path, filter_text="seq_len=32", quick=True)
    plan.cases[:] = plan.cases[:1]
    assert run_plan(plan).suite.gate == {"cases": {"window8": 0.2}}


def test_step_summary_is_appended(tmp_path):
    rng = np.random.default_rng(9)
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    base, cur = save_pair(tmp_path, make_run(rng), make_run(rng, slow={2: 1.3}))
    out = invoke("gate", "--baseline", base, cur, env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert out.exit_code == 1
    text = summary.read_text()
    assert text.startswith("earlier step\n❌ **ossbench gate FAILED") and case_id(2) in text


def test_markdown_cells_cannot_break_the_table_or_inject_html():
    rng = np.random.default_rng(10)
    baseline, current = make_run(rng, n_cases=1), make_run(rng, n_cases=1)
    for run in (baseline, current):
        run.cases[0].id = "attention/<script>x|y</script>"
    row = [line for line in gate_markdown(gate(baseline, current)).splitlines() if "script" in line][0]
    assert "<script>" not in row and "&lt;script&gt;x\\|y" in row


@pytest.mark.parametrize("args, message", [
    (["{cur}"], "Missing option '--baseline'"),
    (["--baseline", "{base}"], "Missing argument 'CURRENT_FILE'"),
    (["--baseline", "nope.json", "nope2.json"], "no such file"),
    (["--baseline", "{base}", "{cur}", "--max-slowdown", "5"], "ambiguous"),
    (["--baseline", "{base}", "{cur}", "--max-slowdown", "-1%"], "must be > 0"),
    (["--baseline", "{base}", "{cur}", "--alpha", "1.5"], "alpha"),
    (["--baseline", "{base}", "{base}.txt"], "no such file"),
])
def test_bad_input_exits_2(tmp_path, args, message):
    rng = np.random.default_rng(11)
    base, cur = save_pair(tmp_path, make_run(rng, n_cases=2), make_run(rng, n_cases=2))
    out = invoke("gate", *[a.format(base=base, cur=cur) for a in args])
    assert out.exit_code == 2 and message in out.output, out.output


def test_max_slowdown_option_accepts_percent_and_fraction(tmp_path):
    assert parse_fraction("5%") == parse_fraction("0.05") == 0.05
    assert parse_fraction("150%") == 1.5
    rng = np.random.default_rng(12)
    base, cur = save_pair(tmp_path, make_run(rng, n_cases=3), make_run(rng, n_cases=3, slow={1: 1.2}))
    assert invoke("gate", "--baseline", base, cur, "--max-slowdown", "5%").exit_code == 1
    assert invoke("gate", "--baseline", base, cur, "--max-slowdown", "0.3").exit_code == 0


def test_a_a_false_alarm_rate():
    """200 A/A case pairs with a run-to-run drift of about 1% (clocks, thermals): the test alone flags many
    of them; the gate, which also asks for a 5% effect, flags none."""
    rng = np.random.default_rng(13)
    pairs, test_only = 200, 0
    baseline, current = make_run(rng, n_cases=0), make_run(rng, n_cases=0)
    for i in range(pairs):
        true_ms = rng.uniform(0.01, 10.0)
        for run, drift in ((baseline, 1.0), (current, rng.lognormal(0.0, 0.01))):
            samples = true_ms * drift * rng.lognormal(0.0, SIGMA, N_SAMPLES)
            run.cases.append(CaseResult(id=f"aa/{i}", family="attention", variant="v", dtype="bfloat16",
                                        status="ok", samples_ms=samples.tolist()))
        p = mannwhitneyu(current.cases[-1].samples_ms, baseline.cases[-1].samples_ms, alternative="greater").pvalue
        test_only += p < 0.01
    result = gate(baseline, current)
    gated = len(result.having("regression"))
    print(f"\nA/A false alarms over {pairs} case pairs: Mann-Whitney alone {test_only}, gate {gated}")
    assert gated == 0
    assert result.passed


# ----------------------------------------------------------- hostile inputs: the gate never passes a failure


def test_a_current_run_with_no_cases_fails_listing_every_case(tmp_path):
    """The journal of a run killed before its first case finished: every baseline case is missing."""
    import json

    rng = np.random.default_rng(20)
    baseline = make_run(rng, n_cases=4)
    base = str(baseline.save(tmp_path / "base.json"))
    empty = make_run(rng, n_cases=0)
    journal = tmp_path / "journal.jsonl"
    journal.write_text(json.dumps({"journal": "ossbench.results/1", **json.loads(empty.to_json())}) + "\n")
    for current in (journal, empty.save(tmp_path / "empty.json")):
        md = tmp_path / "gate.md"
        out = invoke("gate", "--baseline", base, str(current), "--markdown", str(md))
        assert out.exit_code == 1, out.output
        assert "FAILED" in out.output and "Traceback" not in out.output
        assert "4 missing" in out.output and "no cases" in out.output
        for i in range(4):  # listed per case, in the table and in the failing lines
            assert f"missing: {case_id(i)}: in the baseline (ok) but missing from the current run" in out.output
            assert case_id(i) in md.read_text()


def test_a_baseline_with_no_cases_is_bad_input(tmp_path):
    rng = np.random.default_rng(21)
    base, cur = save_pair(tmp_path, make_run(rng, n_cases=0), make_run(rng, n_cases=3))
    out = invoke("gate", "--baseline", base, cur)
    assert out.exit_code == 2 and "baseline" in out.output and "no cases" in out.output, out.output


def test_a_nan_sample_in_a_5x_slower_run_is_bad_input_not_a_pass(tmp_path):
    import json

    rng = np.random.default_rng(22)
    baseline, current = make_run(rng, n_cases=3), make_run(rng, n_cases=3, slow={1: 5.0})
    base, cur = save_pair(tmp_path, baseline, current)
    data = json.loads(Path(cur).read_text())
    data["cases"][1]["samples_ms"][3] = float("nan")
    Path(cur).write_text(json.dumps(data))
    out = invoke("gate", "--baseline", base, cur)
    assert out.exit_code == 2, out.output
    text = " ".join(out.output.split())
    assert "cur.json" in text and case_id(1) in text and "samples_ms.3" in text and "Traceback" not in text


@pytest.mark.parametrize("n", [2, 3, 4])
def test_too_few_samples_fall_back_to_the_medians_threshold(tmp_path, n):
    """With 2-4 samples a side the one-sided test cannot reach alpha 0.01 (at best 1/C(2n, n)): a 2x
    slowdown must still fail, and the verdict must say it was judged on the medians."""
    from ossbench.gate import smallest_p

    rng = np.random.default_rng(23)
    baseline, current = make_run(rng, n_cases=3), make_run(rng, n_cases=3)
    for run, slow in ((baseline, [1.0, 1.0, 1.0]), (current, [1.0, 2.0, 1.02])):
        for c, factor in zip(run.cases, slow):
            c.samples_ms = [factor * t for t in [1.0, 1.01, 0.99, 1.02][:n]]
            c.stats = summarize(c.samples_ms)
    assert smallest_p(n, n) >= 0.01  # the premise: no outcome of the test reaches alpha
    result = gate(baseline, current)
    slowed = result.cases[1]
    assert slowed.verdict == "regression" and slowed.on_medians and not result.passed
    assert result.cases[2].verdict == "unchanged" and result.cases[2].on_medians  # 2% is within 5%
    base, cur = save_pair(tmp_path, baseline, current)
    out = invoke("gate", "--baseline", base, cur)
    assert out.exit_code == 1, out.output
    assert "too few samples for significance: judged on the medians' threshold" in " ".join(out.output.split())


def test_enough_samples_still_need_significance():
    """Five samples a side can reach alpha 0.01 (1/252), so the usual rule applies: a threshold-sized
    shift of the medians that the samples do not support is not a regression."""
    from ossbench.gate import smallest_p

    assert smallest_p(5, 5) == pytest.approx(1 / 252) and smallest_p(4, 4) == pytest.approx(1 / 70)
    assert smallest_p(3, 30) == pytest.approx(1 / 5456)
    assert smallest_p(2_000_000, 2_000_000) == 0.0  # no overflow, no million-digit integer
    base = [1.0, 1.3, 1.0, 1.3, 1.0]
    cur = [1.1, 1.35, 1.05, 1.25, 1.1]  # median 1.10 vs 1.00, interleaved samples: p far above 0.01
    rng = np.random.default_rng(24)
    baseline, current = make_run(rng, n_cases=1), make_run(rng, n_cases=1)
    baseline.cases[0].samples_ms, current.cases[0].samples_ms = base, cur
    v = gate(baseline, current).cases[0]
    assert v.ratio > 1.05 and v.p_slower > 0.01 and not v.on_medians and v.verdict == "unchanged"


def test_control_characters_in_ids_reach_no_output_raw(tmp_path):
    rng = np.random.default_rng(25)
    baseline, current = make_run(rng, n_cases=2), make_run(rng, n_cases=2, slow={0: 1.5})
    evil = "attention/\x1b]8;;http://x\x07link\x1b]8;;\x07\x1b[2J\x00\x0b\u202e/seq_len=1"
    for run in (baseline, current):
        run.cases[0].id = evil
    base, cur = save_pair(tmp_path, baseline, current)
    junit, md = tmp_path / "gate.xml", tmp_path / "gate.md"
    out = invoke("gate", "--baseline", base, cur, "--junit", str(junit), "--markdown", str(md))
    assert out.exit_code == 1, out.output
    assert "\x1b" not in out.output and "\x07" not in out.output and "\\x1b]8;;http://x\\x07link" in out.output
    root = ET.parse(junit).getroot()  # valid XML 1.0: the parser accepts it
    names = [tc.get("name") for tc in root.iter("testcase")]
    assert names[0] == "attention/\\x1b]8;;http://x\\x07link\\x1b]8;;\\x07\\x1b[2J\\x00\\x0b\\u202e/seq_len=1"
    assert "\x1b" not in md.read_text()
