"""Output paths checked before any work, the output folder's lock, and a full disk during a run."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ossbench.cli import main
from ossbench.outdir import OutputError, check_output_file, claim_out_dir
from ossbench.runner import plan_run, run_plan
from ossbench.suite import load_suite

HERE = Path(__file__).parent
ROOT = HERE.parent
TINY = HERE / "suites" / "tiny.yaml"


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_out_under_a_file_fails_before_any_case_runs(tmp_path):
    (tmp_path / "a-file").write_text("x")
    result = run_cli("run", str(TINY), "--device", "cpu", "--out", str(tmp_path / "a-file" / "run"))
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'a-file'} is a file, not a directory" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback


def test_results_json_being_a_directory_fails_before_any_case_runs(tmp_path):
    (tmp_path / "results.json").mkdir()
    result = run_cli("run", str(TINY), "--device", "cpu", "--out", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'results.json'}: is a directory" in result.output
    assert not (tmp_path / "journal.jsonl").exists()  # not one case ran


def test_output_file_checks(tmp_path):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    with pytest.raises(OutputError, match="--junit .*a-dir: is a directory"):
        check_output_file(tmp_path / "a-dir", "--junit")
    with pytest.raises(OutputError, match="a-file is a file, not a directory"):
        check_output_file(tmp_path / "a-file" / "deeper" / "gate.md", "--markdown")
    assert check_output_file(tmp_path / "new" / "sub" / "r.html", "-o") == tmp_path / "new" / "sub" / "r.html"
    assert not (tmp_path / "new").exists()  # the check creates nothing


@pytest.mark.parametrize("command", [
    ["report", "{results}", "-o", "{out}"],
    ["compare", "{results}", "{results}", "-o", "{out}"],
    ["gate", "--baseline", "{results}", "{results}", "--junit", "{out}"],
    ["gate", "--baseline", "{results}", "{results}", "--markdown", "{out}"],
    ["export", "{results}", "--format", "csv", "-o", "{out}"],
])
def test_unwritable_outputs_of_report_compare_gate_export_exit_2_before_reading(tmp_path, command):
    (tmp_path / "a-file").write_text("x")
    # The results file does not exist: a message about it would mean the output was checked too late.
    paths = {"results": str(tmp_path / "missing.json"), "out": str(tmp_path / "a-file" / "out.txt")}
    result = run_cli(*[arg.format(**paths) for arg in command])
    assert result.exit_code == 2, result.output
    assert "missing.json" not in result.output
    assert f"{command[-2]} {paths['out']}: cannot create it, {tmp_path / 'a-file'} is a file" in result.output


def test_an_unwritable_github_step_summary_is_exit_2_before_reading(tmp_path):
    (tmp_path / "a-file").write_text("x")
    summary = tmp_path / "a-file" / "summary.md"
    result = CliRunner().invoke(main, ["gate", "--baseline", str(tmp_path / "missing.json"), str(tmp_path / "b.json")],
                                env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.exit_code == 2, result.output
    assert f"$GITHUB_STEP_SUMMARY {summary}: cannot create it" in result.output and "missing.json" not in result.output


def test_claims_nest_within_a_process(tmp_path):
    with claim_out_dir(tmp_path):
        with claim_out_dir(tmp_path):  # the CLI holds the folder and the runner claims it again
            assert (tmp_path / ".ossbench.owner").read_text().startswith(f"pid {os.getpid()} ")
        assert (tmp_path / ".ossbench.owner").exists()  # still held by the outer claim
    assert not (tmp_path / ".ossbench.owner").exists()


def test_a_second_run_into_a_locked_folder_exits_2_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    code = (f"import sys, time\nfrom ossbench.outdir import claim_out_dir\nwith claim_out_dir({str(out)!r}):\n"
            f"    print('held', flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        result = run_cli("run", str(TINY), "--device", "cpu", "--out", str(out))
        assert result.exit_code == 2, result.output
        assert f"another ossbench run is writing there (pid {holder.pid} on " in result.output
        assert time.monotonic() - started < 60  # refused at once, not after waiting for the lock
        assert not (out / "journal.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone (killed: its lock went with it); the folder can be claimed again.
    with claim_out_dir(out):
        pass


def fail_journal_writes_after(monkeypatch, good_lines: int) -> None:
    """os.write to journal.jsonl: `good_lines` case lines go through, the next is cut halfway by ENOSPC."""
    real_write = os.write
    state = {"lines": 0, "cut": False}

    def write(fd, data):
        if not os.readlink(f"/proc/self/fd/{fd}").endswith("journal.jsonl"):
            return real_write(fd, data)
        if state["lines"] < good_lines:
            state["lines"] += 1
            return real_write(fd, data)
        if not state["cut"]:  # the disk takes half of the line, then is full
            state["cut"] = True
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to find the journal's fd")
def test_a_full_disk_ends_the_run_cleanly_and_leaves_the_journal_valid(monkeypatch, tmp_path):
    fail_journal_writes_after(monkeypatch, good_lines=1)
    result = run_cli("run", str(TINY), "--device", "cpu", "--out", str(tmp_path), "--filter", "mode=prefill")
    assert result.exit_code == 2, result.output
    assert "cannot write the run's journal (No space left on device)" in result.output
    assert f"ossbench run --resume {tmp_path}" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is complete JSON
    assert "journal" in records[0] and [("case" in r) for r in records[1:]] == [True]
    assert not (tmp_path / "results.json").exists()


def test_results_json_that_cannot_be_written_keeps_the_journal(monkeypatch, tmp_path):
    from ossbench.results import RunResult

    def full_disk(self, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(RunResult, "save", full_disk)
    plan = plan_run(load_suite(TINY), device="cpu", out_dir=tmp_path, filter_text="seq_len=32")
    with pytest.raises(OutputError, match=r"results.json: cannot write the results \(No space left on device\)"):
        run_plan(plan)
    assert [json.loads(line).get("case", {}).get("id") for line in
            (tmp_path / "journal.jsonl").read_text().splitlines()][1:] == [c.id for c in plan.cases]


def _private_tmpfs_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _private_tmpfs_works(), reason="needs root and `unshare -m` to mount a private tmpfs")
@pytest.mark.parametrize("mount_options, message", [
    ("ro,size=1m", "cannot create the output directory (Read-only file system)"),
    # Two pages: the lock's owner file takes one, the journal's header the other; the first case's line
    # (about 3 KiB) needs a third.
    ("size=8k", "cannot write the run's journal (No space left on device)"),
])
def test_real_read_only_and_full_filesystems(tmp_path, mount_options, message):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o {mount_options} tmpfs {mnt} && cd {tmp_path} && "
              f"{sys.executable} -m ossbench run {TINY} --device cpu --out {mnt / 'run'}; "
              f"echo rc=$?; cat {mnt / 'run' / 'journal.jsonl'} 2>/dev/null | {sys.executable} -c "
              f"\"import json, sys; [json.loads(line) for line in sys.stdin]; print('journal valid')\"")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"})
    output = proc.stdout + proc.stderr
    assert "rc=2" in output, output
    assert message in output and "Traceback" not in output
    assert "journal valid" in output
