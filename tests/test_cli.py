"""The command line: start-up time, exit codes, run end to end on a tiny suite."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from ossbench.cli import main
from ossbench.results import load_results

HERE = Path(__file__).parent
TINY = HERE / "suites" / "tiny.yaml"


def _best_wall_s(args: list[str], runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):  # best of several: the first start may pay for a cold disk cache
        start = time.perf_counter()
        subprocess.run(args, capture_output=True, text=True, check=True)
        best = min(best, time.perf_counter() - start)
    return best


def test_help_is_fast_and_does_not_import_torch():
    code = "import sys, ossbench.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    proc = subprocess.run([sys.executable, "-m", "ossbench", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "run" in proc.stdout
    # Against the interpreter starting with click, measured side by side, so a loaded machine slows both:
    # on a loaded 2-core machine --help took 0.11-0.12 s against 0.09-0.11 s, and `import torch` 3.5 s.
    click_s = _best_wall_s([sys.executable, "-c", "import click"])
    help_s = _best_wall_s([sys.executable, "-m", "ossbench", "--help"])
    assert help_s < 4 * click_s + 0.1, f"ossbench --help took {help_s:.3f} s, python -c 'import click' {click_s:.3f} s"


def test_run_tiny_suite_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(TINY), "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    run = load_results(out / "results.json")
    assert [c.status for c in run.cases] == ["ok"] * 6
    assert run.suite.name == "tiny" and run.suite.profile == "full"
    assert all(c.numerics and c.numerics.ok for c in run.cases)
    assert all(c.stats.n >= 5 and len(c.samples_ms) == c.stats.n for c in run.cases)
    assert all(c.derived.tflops and c.derived.gbps for c in run.cases)
    assert (out / "report.html").stat().st_size > 10_000
    assert not (out / "journal.jsonl").exists()
    assert "compare pairs" in result.output


def test_run_filter_and_bad_options(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(TINY), "--device", "cpu", "--out", str(tmp_path / "f"),
                                  "--filter", "mode=decode"])
    assert result.exit_code == 0, result.output
    assert len(load_results(tmp_path / "f" / "results.json").cases) == 2
    nothing = runner.invoke(main, ["run", str(TINY), "--device", "cpu", "--filter", "no-such-case"])
    assert nothing.exit_code == 2 and "matches none" in nothing.output
    bad_device = runner.invoke(main, ["run", str(TINY), "--device", "tpu"])
    assert bad_device.exit_code == 2 and "--device" in bad_device.output


def test_report_command_and_foreign_file(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["run", str(TINY), "--device", "cpu", "--out", str(tmp_path),
                                "--filter", "seq_len=32"]).exit_code == 0
    out = tmp_path / "again.html"
    result = runner.invoke(main, ["report", str(tmp_path / "results.json"), "-o", str(out)])
    assert result.exit_code == 0 and out.exists()
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"benchmarks": []}))
    bad = runner.invoke(main, ["report", str(foreign)])
    assert bad.exit_code == 2 and "not an ossbench results file" in bad.output


def test_list_and_env():
    runner = CliRunner()
    listing = runner.invoke(main, ["list"])
    assert listing.exit_code == 0
    for word in ("attention", "n_kv_heads", "window", "backend", "eager", "sdpa", "flex", "prefill", "decode"):
        assert word in listing.output
    env = runner.invoke(main, ["env", "--device", "cpu"])
    assert env.exit_code == 0 and "torch" in env.output


def test_list_prints_every_family_description_whole():
    """Brackets in a description ("over [tokens, width]") are text, not rich markup to drop."""
    from ossbench.workloads import describe_families

    listing = CliRunner().invoke(main, ["list"], env={"COLUMNS": "1000"})
    assert listing.exit_code == 0
    out = " ".join(listing.output.split())  # one line, single spaces (rich pads titles)
    for fam in describe_families():
        assert " ".join(f"{fam['name']}: {fam['description']}".split()) in out
        for p in fam["params"]:
            assert " ".join(p["help"].split()) in out or len(p["help"]) > 200  # a long one is folded
    assert "over [tokens, width]" in out and "over ," not in out


def test_the_run_exit_decision_is_a_library_function():
    """`ossbench run`'s exit status comes from `run_console.exit_code`, which a Python caller can use too."""
    import signal

    from ossbench.results import CaseResult
    from ossbench.run_console import exit_code
    from ossbench.stopping import StopRequest

    def cases(*statuses):
        return [CaseResult(id=f"f/v/{k}", family="f", variant="v", dtype="float32", status=s)
                for k, s in enumerate(statuses)]

    assert exit_code(cases("ok", "skipped")) == 0
    assert exit_code(cases("ok", "failed")) == 1 and exit_code(cases("oom")) == 1
    assert exit_code(cases("ok"), report_written=False) == 1
    assert exit_code(cases("ok"), stop=StopRequest()) == 0  # a stop that was never requested
    assert exit_code(cases("failed"), stop=StopRequest(signal.SIGINT)) == 130
    assert exit_code(cases("ok"), stop=StopRequest(signal.SIGTERM)) == 143
