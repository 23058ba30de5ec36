"""Per-case isolation: a case that hangs, segfaults, exits or runs out of memory fails alone, in its child.

The misbehaving cases come from the test-only `probe` family (tests/isolate_helpers.py). Timeouts are
generous (this runs on loaded machines): every `ok` probe finishes in well under a second.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import isolate_helpers
import ossbench.runner as runner
import ossbench.workloads as workloads
from ossbench.cli import main
from ossbench.errors import SuiteError
from ossbench.hardware import Device
from ossbench.isolate import COMPILE_ALLOWANCE_S, IsolatedRunner, case_timeout, default_isolation
from ossbench.results import load_results
from ossbench.runner import plan_run, run_plan
from ossbench.suite import Timing, load_suite, parse_suite

TINY = Path(__file__).parent / "suites" / "tiny.yaml"
TIMEOUT_S = 15

PROBES = f"""\
name: probes
family: probe
dtype: float32
variants:
  first: {{}}
  second: {{}}
  hang: {{action: hang}}
  after_hang: {{}}
  segfault: {{action: segfault}}
  memory: {{action: memory_error}}
  exit: {{action: exit}}
  cuda_lost: {{action: cuda_lost}}
  last: {{}}
timing: {{cache: hot, warmup_s: 0.0, min_samples: 3, min_time_s: 0.0, max_time_s: 0.2, target_rel_ci: 0.5,
          case_timeout_s: {TIMEOUT_S}}}
"""


@pytest.fixture
def probes(monkeypatch, tmp_path):
    """The probe suite's path, with `probe` known here and in every child (through runner.run_case)."""
    monkeypatch.setitem(workloads._MODULES, "probe", isolate_helpers.__name__)
    monkeypatch.setattr(runner, "run_case", isolate_helpers.run_case)
    path = tmp_path / "probes.yaml"
    path.write_text(PROBES)
    return path


def _process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # killed but not reaped by a PID 1 that does not reap


@pytest.mark.slow  # starts fresh interpreters that import torch
def test_misbehaving_cases_fail_alone_and_the_run_goes_on(probes, tmp_path):
    run = run_plan(plan_run(load_suite(probes), device="cpu", out_dir=tmp_path / "out", isolate=True))
    by_variant = {c.variant: c for c in run.cases}
    status = {v: c.status for v, c in by_variant.items()}
    assert status == {"first": "ok", "second": "ok", "hang": "failed", "after_hang": "ok", "segfault": "failed",
                      "memory": "oom", "exit": "failed", "cuda_lost": "failed", "last": "ok"}

    hang = by_variant["hang"].error
    assert hang.startswith(f"timed out after {TIMEOUT_S} s") and "probe: building hang" in hang
    stacks = hang.split("--- the child's Python stacks when it was killed ---\n")[1].splitlines()
    innermost = stacks[next(i for i, line in enumerate(stacks) if line.startswith("Current thread")) + 1]
    assert "isolate_helpers.py" in innermost and innermost.endswith("in build")  # where it hung
    grandchild = int(re.search(r"grandchild pid (\d+)", hang).group(1))
    deadline = time.monotonic() + 10
    while not _process_gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _process_gone(grandchild), "the hung case's own child outlived the timeout"

    segfault = by_variant["segfault"].error
    assert segfault.startswith("child died (signal SIGSEGV)")
    assert "probe: building segfault" in segfault and "Fatal Python error" in segfault  # faulthandler's stack
    assert "MemoryError: probe asked for more memory" in by_variant["memory"].error
    assert by_variant["exit"].error.startswith("child exited with code 3")
    assert "illegal memory access" in by_variant["cuda_lost"].error

    pids = {v: c.info["pid"] for v, c in by_variant.items() if c.status == "ok"}
    assert os.getpid() not in pids.values()
    assert pids["first"] == pids["second"]  # a worker is reused while its cases succeed
    assert pids["after_hang"] != pids["first"]  # and replaced after a case that killed it
    assert pids["last"] != pids["after_hang"]
    assert all(c.duration_s is not None and c.duration_s > 0 for c in run.cases)
    saved = load_results(tmp_path / "out" / "results.json")
    assert saved.environment.isolated is True
    assert [c.status for c in saved.cases] == [c.status for c in run.cases]


def test_a_lost_cuda_context_stops_an_unisolated_run(probes, tmp_path):
    """The behaviour isolation replaces: isolated, `last` runs in a fresh child (the test above)."""
    suite = load_suite(probes)
    plan = plan_run(suite, device="cpu", out_dir=tmp_path / "b", isolate=False)
    plan.cases = [c for c in plan.cases if c.variant in ("cuda_lost", "last")]
    stopped = run_plan(plan)
    assert stopped.environment.isolated is False
    assert [c.status for c in stopped.cases] == ["failed", "failed"]
    assert stopped.cases[1].error.startswith("not run: the CUDA context was lost")


@pytest.mark.slow  # starts a fresh interpreter that imports torch
def test_ctrl_c_kills_the_worker_and_keeps_the_journal(probes, tmp_path):
    pids = []

    def on_case(case, result):
        if result is not None:
            pids.append(result.info["pid"])
            raise KeyboardInterrupt  # the user pressed Ctrl-C after the first case

    plan = plan_run(load_suite(probes), device="cpu", out_dir=tmp_path, filter_text="/first", isolate=True)
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan, on_case)
    assert pids and _process_gone(pids[0])
    assert [c.variant for c in load_results(tmp_path / "journal.jsonl").cases] == ["first"]


def test_a_worker_that_cannot_start_fails_its_case_with_the_reason(monkeypatch, tmp_path):
    (tmp_path / "vanishing_module.py").write_text("def run_case(case, device, timing, measure):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from vanishing_module import run_case as unreachable  # importable here, not in the child

    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    case = load_suite(TINY).cases()[0]
    with IsolatedRunner(unreachable, "cpu", Timing(), None) as isolated:
        result = isolated.run(case)
    assert result.status == "failed" and result.id == case.id
    assert result.error.startswith("the isolated worker did not start: child exited with code 1")
    assert "No module named 'vanishing_module'" in result.error


@pytest.mark.gpu
def test_a_real_device_side_assert_costs_only_its_case(probes, tmp_path):
    """Only isolated: the same case unisolated would leave this test process's CUDA context unusable."""
    plan = plan_run(load_suite(probes), device="cuda", out_dir=tmp_path, isolate=True)
    plan.cases = [c for c in plan.cases if c.variant in ("first", "last")]
    plan.cases.insert(1, dataclasses.replace(plan.cases[0], id="probe/device_assert", variant="device_assert",
                                             params=(("action", "device_assert"), ("size", 16))))
    run = run_plan(plan)
    assert [c.status for c in run.cases] == ["ok", "failed", "ok"], [c.error for c in run.cases]
    assert "device-side assert" in run.cases[1].error
    assert run.cases[0].info["pid"] != run.cases[2].info["pid"]


@pytest.mark.slow  # starts fresh interpreters that import torch
def test_isolated_results_match_an_unisolated_run(tmp_path):
    suite = load_suite(TINY)
    inline = run_plan(plan_run(suite, device="cpu", out_dir=tmp_path / "a", filter_text="seq_len=32"))
    isolated = run_plan(plan_run(suite, device="cpu", out_dir=tmp_path / "b", filter_text="seq_len=32",
                                 isolate=True))
    assert [(c.id, c.status) for c in isolated.cases] == [(c.id, c.status) for c in inline.cases]
    assert [c.status for c in inline.cases] == ["ok", "ok"]
    for a, b in zip(inline.cases, isolated.cases):
        assert (a.params, a.flops, a.bytes, a.tokens, a.numerics) == (b.params, b.flops, b.bytes, b.tokens, b.numerics)
        assert b.stats is not None and len(b.samples_ms) == b.stats.n >= 5
        assert set(b.model_dump()) == set(a.model_dump())


def test_isolation_defaults_to_cuda_with_several_cases():
    gpu0, gpu1 = Device(type="cuda", index=0), Device(type="cuda", index=1)
    assert default_isolation(gpu0, 2) and default_isolation(gpu1, 10)
    assert not default_isolation(gpu0, 1)
    assert not default_isolation(Device(type="cpu"), 5)
    plan = plan_run(load_suite(TINY), device="cpu", out_dir="unused")
    assert plan.isolate is False
    assert plan_run(load_suite(TINY), device="cpu", out_dir="unused", isolate=True).isolate is True


def test_case_timeout_default_and_override():
    assert case_timeout(Timing()) == 10 * 15.0 + COMPILE_ALLOWANCE_S
    assert case_timeout(Timing(max_time_s=2)) == 20 + COMPILE_ALLOWANCE_S
    assert case_timeout(Timing(case_timeout_s=30)) == 30


@pytest.mark.parametrize("value, message", [('"30"', "valid number"), ("true", "valid number"),
                                            ("0", "greater than 0"), ("-5", "greater than 0"),
                                            (".inf", "finite number")])
def test_case_timeout_must_be_a_positive_finite_number(value, message):
    text = TINY.read_text().replace("target_rel_ci: 0.2}", f"target_rel_ci: 0.2,\n         case_timeout_s: {value}}}")
    with pytest.raises(SuiteError) as e:
        parse_suite(text, "t.yaml")
    assert e.value.field == "timing.case_timeout_s" and e.value.line == 16
    assert message in str(e.value)


def test_case_timeout_accepts_seconds():
    text = TINY.read_text().replace("target_rel_ci: 0.2}", "target_rel_ci: 0.2, case_timeout_s: 45}")
    assert parse_suite(text, "t.yaml").timing().case_timeout_s == 45.0


@pytest.mark.slow  # starts fresh interpreters that import torch
def test_cli_isolate_flags(probes, tmp_path):
    help_text = CliRunner().invoke(main, ["run", "--help"]).output
    assert "--isolate / --no-isolate" in help_text and "timing.case_timeout_s" in help_text
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["run", str(probes), "--device", "cpu", "--out", str(out), "--isolate",
                                       "--filter", "/segfault"])
    assert result.exit_code == 1, result.output  # the one case failed; the results are still written
    saved = load_results(out / "results.json")
    assert saved.environment.isolated is True and saved.cases[0].error.startswith("child died (signal SIGSEGV)")
    result = CliRunner().invoke(main, ["run", str(probes), "--device", "cpu", "--out", str(out), "--no-isolate",
                                       "--filter", "/first"])
    assert result.exit_code == 0, result.output
    saved = load_results(out / "results.json")
    assert saved.environment.isolated is False and saved.cases[0].info["pid"] == os.getpid()
