"""`ossbench run --resume` after a real SIGKILL, and SIGINT / SIGTERM stopping a real run between cases.

The slow tests drive `python -m ossbench run` in a subprocess on tests/suites/steps.yaml (six CPU cases of
about 0.3 s each), so the timeouts are generous: the machine may be loaded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ossbench.errors import UserError
from ossbench.resume import plan_resume
from ossbench.runner import plan_run, run_plan
from ossbench.stopping import StopRequest
from ossbench.suite import load_suite

HERE = Path(__file__).parent
ROOT = HERE.parent
STEPS = HERE / "suites" / "steps.yaml"
TINY = HERE / "suites" / "tiny.yaml"


def ossbench(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    log = (cwd / "log.txt").open("a")
    return subprocess.Popen([sys.executable, "-m", "ossbench", *args], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True, **kw)


def finish(*args: str, cwd: Path) -> tuple[int, str]:
    before = (cwd / "log.txt").read_text() if (cwd / "log.txt").exists() else ""
    proc = ossbench(*args, cwd=cwd)
    rc = proc.wait(timeout=600)
    return rc, (cwd / "log.txt").read_text()[len(before):]


def journal_cases(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    complete = []
    for k, line in enumerate(lines):
        try:
            complete.append(json.loads(line))
        except json.JSONDecodeError:
            assert k == len(lines) - 1, f"line {k + 1} of {len(lines)} is cut: only the last may be"
    return [line["case"] for line in complete if "case" in line]


def wait_for_cases(proc: subprocess.Popen, journal: Path, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal.exists() and len(journal_cases(journal)) >= n:
            return
        assert proc.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {n} case(s) in {journal} after {timeout} s")


def planned_ids() -> list[str]:
    suite = load_suite(STEPS)
    return [c.id for c in suite.cases(suite.profile_for("cpu"))]


@pytest.mark.slow
def test_resume_after_sigkill_keeps_finished_cases_and_runs_the_rest(tmp_path):
    out = tmp_path / "run"
    proc = ossbench("run", str(STEPS), "--device", "cpu", "--out", str(out), cwd=tmp_path)
    wait_for_cases(proc, out / "journal.jsonl", 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "results.json").exists()
    header = json.loads((out / "journal.jsonl").read_text().splitlines()[0])
    finished = journal_cases(out / "journal.jsonl")
    assert 2 <= len(finished) < len(planned_ids())

    rc, log = finish("run", "--resume", str(out), cwd=tmp_path)
    assert rc == 0, log
    assert f"{len(finished)} finished case(s) kept" in log
    results = json.loads((out / "results.json").read_text())
    assert [c["id"] for c in results["cases"]] == planned_ids()  # suite order, as an uninterrupted run
    by_id = {c["id"]: c for c in results["cases"]}
    for record in finished:
        assert by_id[record["id"]] == record  # kept exactly as recorded, not rerun
    assert all(c["status"] == "ok" for c in results["cases"])
    env = results["environment"]
    assert env["start_time"] == header["environment"]["start_time"]  # the first start's environment
    assert len(env["resumed_at"]) == 1 and env["end_time"] >= env["resumed_at"][0]
    assert results["options"]["device"] == "cpu" and results["options"]["filter"] is None
    assert not (out / "journal.jsonl").exists()  # every case ran: results.json holds it all
    assert (out / "report.html").exists()

    rc, log = finish("run", "--resume", str(out), cwd=tmp_path)  # a finished run: nothing reruns
    assert rc == 0 and "nothing to resume" in log, log
    assert json.loads((out / "results.json").read_text()) == results


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_finishes_the_case_in_flight_and_records_the_rest_as_skipped(tmp_path, sig, code):
    out = tmp_path / "run"
    proc = ossbench("run", str(STEPS), "--device", "cpu", "--out", str(out), cwd=tmp_path)
    wait_for_cases(proc, out / "journal.jsonl", 1)
    proc.send_signal(sig)
    assert proc.wait(timeout=300) == code
    log = (tmp_path / "log.txt").read_text()
    assert "Traceback" not in log
    assert f"ossbench run --resume {out}" in log
    results = json.loads((out / "results.json").read_text())
    assert (out / "report.html").stat().st_size > 10_000
    statuses = [c["status"] for c in results["cases"]]
    assert [c["id"] for c in results["cases"]] == planned_ids()
    ran = statuses.count("ok")
    assert ran >= 1 and statuses == ["ok"] * ran + ["skipped"] * (len(statuses) - ran)
    assert ran < len(statuses), "the run finished before the signal stopped it"
    signame = signal.Signals(sig).name
    assert all(c["error"] == f"interrupted ({signame}) before this case started"
               for c in results["cases"][ran:])
    assert len(journal_cases(out / "journal.jsonl")) == ran  # kept for --resume: only cases that ran

    rc, log = finish("run", "--resume", str(out), cwd=tmp_path)
    assert rc == 0, log
    resumed = json.loads((out / "results.json").read_text())
    assert [c["status"] for c in resumed["cases"]] == ["ok"] * len(statuses)
    assert resumed["cases"][:ran] == results["cases"][:ran]


def interrupted_run(suite_path: Path, out: Path, after: int):
    """Run in this process, stopping as SIGINT would once `after` cases finished."""
    stop, finished = StopRequest(), []

    def on_case(case, result):
        if result is not None and not stop.requested:
            finished.append(case.id)
            if len(finished) == after:
                stop.signum = signal.SIGINT

    return run_plan(plan_run(load_suite(suite_path), device="cpu", out_dir=out), on_case, stop=stop)


def test_a_changed_suite_is_refused_unless_forced_and_force_keeps_unchanged_cases(tmp_path):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY.read_text())
    out = tmp_path / "run"
    first = interrupted_run(suite, out, after=3)
    # run order (ossbench.plan.run_order): each variant's first prefill point, then its first decode point
    assert [c.status for c in first.cases] == ["ok", "ok", "skipped", "skipped", "ok", "skipped"]
    # window8 gets a wider window: its finished case must rerun, full's are kept; a new variant is added.
    suite.write_text(TINY.read_text().replace("window8: {window: 8}", "window8: {window: 16}\n  wide: {window: 4}"))
    with pytest.raises(UserError, match="the suite .*tiny.yaml changed since the run started"):
        plan_resume(out)
    plan, resumed = plan_resume(out, force=True)
    assert sorted(resumed.kept) == ["attention/full/mode=decode,kv_len=64", "attention/full/mode=prefill,seq_len=32"]
    assert resumed.dropped == ["attention/window8/mode=prefill,seq_len=32"]
    run = run_plan(plan, resume=resumed)
    assert [c.id for c in run.cases] == [c.id for c in plan.cases] and len(run.cases) == 9
    assert all(c.status == "ok" for c in run.cases)
    kept_id = "attention/full/mode=prefill,seq_len=32"
    assert run.case(kept_id) == first.case(kept_id)  # kept, not rerun: the very same samples
    assert run.case("attention/window8/mode=prefill,seq_len=32").params["window"] == 16
    assert run.suite.sha256 == plan.suite.sha256 != first.suite.sha256
    assert run.environment.start_time == first.environment.start_time and len(run.environment.resumed_at) == 1

    # A results file from before --resume existed records no options: refused with a clear message.
    results = json.loads((out / "results.json").read_text())
    del results["options"]
    (out / "results.json").write_text(json.dumps(results))
    with pytest.raises(UserError, match="does not record the options the run was started with"):
        plan_resume(out)


def test_resume_refuses_new_options_and_an_empty_folder(tmp_path):
    from click.testing import CliRunner

    from ossbench.cli import main

    result = CliRunner().invoke(main, ["run", "--resume", str(tmp_path), "--filter", "x", "--quick"])
    assert result.exit_code == 2 and "drop --filter, --quick" in result.output
    assert CliRunner().invoke(main, ["run"]).exit_code == 2  # neither a suite nor --resume
    assert CliRunner().invoke(main, ["run", str(TINY), "--force"]).exit_code == 2  # --force needs --resume
    nothing = CliRunner().invoke(main, ["run", "--resume", str(tmp_path)])
    assert nothing.exit_code == 2 and "nothing to resume" in nothing.output
