"""The pytest plugin (ossbench/pytest_plugin.py, docs/pytest.md), run on small test files with `pytester`.

The plugin is enabled with `-p ossbench.pytest_plugin` (which works with or without the installed entry
point), except in the tests of the switch itself: those put a stand-in `pytest11` entry point named
`ossbench` on sys.path, so they behave the same in a source checkout and in an installed ossbench.

Runs are in-process (a subprocess would import torch again: ~10 s a run on the loaded 2-core machine).
pytester restores sys.modules after each run, dropping what the run imported; a second import of a torch
or triton module that registers native state then fails ("Only a single TORCH_LIBRARY ...") or aborts the
process. `keep_imported_modules` keeps every module except the test files pytester wrote.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import _pytest.pytester
import pytest
from click.testing import CliRunner

from ossbench.cli import main
from ossbench.results import load_results

pytest_plugins = ["pytester"]

# (pytest warns that a -p module imported before the run cannot be assertion-rewritten: true, and harmless)
PLUGIN = ["-p", "ossbench.pytest_plugin", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning"]
SUITE = Path(__file__).parent / "suites" / "tiny.yaml"
# A short budget: these tests check what is stored, not how well it is measured.
QUICK = 'BenchSpec(cache="hot", warmup_s=0, min_samples=3, min_time_s=0, max_time_s=0.5, target_rel_ci=0.5)'

MATMUL_TESTS = f'''
import pytest, torch
from ossbench import BenchSpec

def mm(x, y):
    return x @ y

@pytest.mark.parametrize("n", [8, 16])
def test_matmul(gpu_bench, n):
    a = torch.randn(n, n)
    gpu_bench.spec = {QUICK}
    gpu_bench.flops = 2 * n ** 3
    gpu_bench.extra_info["note"] = "square"
    out = gpu_bench(mm, a, y=a)  # positional and keyword arguments reach the function
    torch.testing.assert_close(out, a @ a)
'''


@pytest.fixture(autouse=True)
def keep_imported_modules(monkeypatch, tmp_path_factory):
    """pytester's sys.modules snapshots (one per run, one per test) keep all but the modules of its files."""
    base = str(tmp_path_factory.getbasetemp())
    snapshot = _pytest.pytester.SysModulesSnapshot

    def keeping(preserve=None):
        def keep(name: str) -> bool:
            file = getattr(sys.modules.get(name), "__file__", None) or ""
            return bool(preserve and preserve(name)) or not file.startswith(base)
        return snapshot(preserve=keep)

    monkeypatch.setattr(_pytest.pytester, "SysModulesSnapshot", keeping)


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess(*PLUGIN, *args)


def test_gpu_bench_returns_the_result_and_writes_pytest_benchmark_json(pytester):
    pytester.makepyfile(test_mm=MATMUL_TESTS)
    result = _run(pytester, "--benchmark-json", "bench.json", "--ossbench-out", "out")
    result.assert_outcomes(passed=2)
    data = json.loads((pytester.path / "bench.json").read_text())
    benches = {b["fullname"]: b for b in data["benchmarks"]}
    assert set(benches) == {"test_mm.py::test_matmul[8]", "test_mm.py::test_matmul[16]"}
    run = load_results(pytester.path / "out" / "results.json")
    for b in benches.values():
        case = next(c for c in run.cases if c.info["pytest"]["nodeid"] == b["fullname"])
        # the very samples ossbench took, in seconds, one call each; statistics by pytest-benchmark
        assert b["stats"]["data"] == pytest.approx([s / 1e3 for s in case.samples_ms], rel=1e-12)
        assert b["stats"]["rounds"] == case.stats.n >= 3 and b["stats"]["iterations"] == 1
        assert b["stats"]["median"] == pytest.approx(case.stats.median / 1e3)
        assert b["params"] == {"n": case.params["n"]} and b["param"] == str(case.params["n"])
        assert b["options"]["timer"] == "time.perf_counter" and b["options"]["cache"] == "hot"
        assert b["extra_info"]["note"] == "square" and b["extra_info"]["ossbench"]["n"] == case.stats.n
    result.stdout.fnmatch_lines(["*= ossbench =*", "*pytest/test_mm.py::test_matmul/n=8: * ± *(median, CI95, n=*, hot, cpu)*",
                                 "results: out*results.json*"])


def test_ossbench_out_loads_and_renders(pytester, tmp_path):
    pytester.makepyfile(test_mm=MATMUL_TESTS)
    _run(pytester, "--ossbench-out", "out", "--ossbench-name", "matmuls").assert_outcomes(passed=2)
    path = pytester.path / "out" / "results.json"
    run = load_results(path)
    assert run.suite.name == "matmuls" and run.suite.family == "pytest" and len(run.suite.sha256) == 64
    assert [c.id for c in run.cases] == ["pytest/test_mm.py::test_matmul/n=8", "pytest/test_mm.py::test_matmul/n=16"]
    for c, n in zip(run.cases, (8, 16)):
        assert c.family == "pytest" and c.variant == "test_mm.py::test_matmul" and c.status == "ok"
        assert c.axes == c.params == {"n": n} and c.flops == 2 * n ** 3
        assert c.derived.tflops == pytest.approx(c.flops / (c.stats.median / 1e3) / 1e12)
        assert c.timing["cache"] == "hot" and c.timing["device"] == "cpu" and c.info["extra_info"]["note"] == "square"
    assert run.environment.device_type == "cpu" and run.environment.start_time
    df = run.to_dataframe()
    assert list(df["param.n"]) == [8, 16]
    out = CliRunner().invoke(main, ["report", str(path), "-o", str(tmp_path / "report.html")])
    assert out.exit_code == 0, out.output
    html = (tmp_path / "report.html").read_text()
    assert "pytest/test_mm.py::test_matmul/n=16" in html and "matmuls" in html
    gated = CliRunner().invoke(main, ["gate", "--baseline", str(path), str(path)])
    assert gated.exit_code == 0, gated.output  # a run against itself is no regression
    exported = CliRunner().invoke(main, ["export", str(path), "--format", "pytest-benchmark",
                                         "-o", str(tmp_path / "export.json")])
    assert exported.exit_code == 0, exported.output
    names = {b["fullname"] for b in json.loads((tmp_path / "export.json").read_text())["benchmarks"]}
    assert names == {"test_mm.py::test_matmul[8]", "test_mm.py::test_matmul[16]"}  # named as pytest-benchmark does


def test_pytest_benchmark_compare_reads_autosaved_gpu_bench_runs(pytester):
    pytester.makepyfile(test_mm=MATMUL_TESTS)
    storage = pytester.path / "storage"
    for _ in range(2):
        _run(pytester, "--benchmark-autosave", f"--benchmark-storage=file://{storage}").assert_outcomes(passed=2)
    saved = sorted(storage.rglob("*.json"))
    assert [p.name[:4] for p in saved] == ["0001", "0002"]
    table = pytester.path / "compare"
    proc = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", *map(str, saved),
                           "--columns", "min,median,max", f"--csv={table}"],
                          capture_output=True, text=True, cwd=pytester.path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "test_matmul[16]" in proc.stdout and "0001" in proc.stdout and "0002" in proc.stdout, proc.stdout
    with open(f"{table}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # pytest-benchmark's own reading of both saved runs: every benchmark, with the median of its samples
    saved_medians = sorted((b["fullname"], b["stats"]["median"]) for p in saved
                           for b in json.loads(p.read_text())["benchmarks"])
    read = sorted((r["name"], float(r["median"])) for r in rows)
    assert [name for name, _ in read] == [name for name, _ in saved_medians] and len(read) == 4
    assert [m for _, m in read] == pytest.approx([m for _, m in saved_medians], rel=1e-6)
    # and a later session compares its gpu_bench samples against the saved ones by pytest-benchmark's rules
    later = _run(pytester, f"--benchmark-storage=file://{storage}", "--benchmark-compare=0001",
                 "--benchmark-compare-fail=min:100000%")
    later.assert_outcomes(passed=2)
    # both rows present; pytest-benchmark sorts the rows by their times, so their order is not fixed
    later.stdout.fnmatch_lines(["*test_matmul[[]16[]] (0001*"])
    later.stdout.fnmatch_lines(["*test_matmul[[]16[]] (NOW)*"])


def test_benchmark_skip_and_disable_apply_to_gpu_bench(pytester):
    pytester.makepyfile(test_mm=MATMUL_TESTS, test_plain="def test_plain():\n    pass\n")
    _run(pytester, "--benchmark-skip").assert_outcomes(passed=1, skipped=2)
    _run(pytester, "--benchmark-only").assert_outcomes(passed=2, skipped=1)
    result = _run(pytester, "--benchmark-disable", "--ossbench-out", "out")
    result.assert_outcomes(passed=3)  # the function ran once, untimed: nothing recorded
    assert not (pytester.path / "out").exists()
    result.stdout.fnmatch_lines(["ossbench: no test was timed, so out/results.json was not written"])


def test_gpu_bench_works_without_pytest_benchmark(pytester):
    pytester.makepyfile(test_mm=MATMUL_TESTS)
    _run(pytester, "-p", "no:benchmark", "--ossbench-out", "out").assert_outcomes(passed=2)
    assert [c.status for c in load_results(pytester.path / "out" / "results.json").cases] == ["ok", "ok"]


def test_a_test_failing_after_timing_is_a_failed_case(pytester):
    pytester.makepyfile(test_bad=f'''
import torch
from ossbench import BenchSpec

def test_wrong(gpu_bench):
    gpu_bench.spec = {QUICK}
    out = gpu_bench(torch.ones, 3)
    assert out.sum() == 4, "off by one"
''')
    _run(pytester, "--ossbench-out", "out").assert_outcomes(failed=1)
    (case,) = load_results(pytester.path / "out" / "results.json").cases
    assert case.status == "failed" and "off by one" in case.error and case.stats.n >= 3


def test_gpu_bench_is_once_per_test_and_quick_shortens_its_spec(pytester):
    pytester.makepyfile(test_twice=f'''
import pytest
from ossbench import BenchSpec

def test_twice(gpu_bench):
    gpu_bench.spec = {QUICK}
    gpu_bench(abs, -1)
    with pytest.raises(RuntimeError, match="one callable per test"):
        gpu_bench(abs, -2)

def test_quick(gpu_bench):
    assert gpu_bench.spec == BenchSpec().quick()

def test_both(gpu_bench, benchmark):
    benchmark(abs, -1)
    with pytest.raises(RuntimeError, match="already used pytest-benchmark"):
        gpu_bench(abs, -1)
''')
    _run(pytester, "--ossbench-quick").assert_outcomes(passed=3)


def test_ossbench_case_mark_runs_a_small_cpu_case(pytester):
    pytester.makepyfile(test_case=f'''
import pytest

@pytest.mark.ossbench_case(suite={str(SUITE)!r}, case="window8/mode=prefill,seq_len=32")
def test_window(ossbench_case):
    assert ossbench_case.numerics.ok and ossbench_case.stats.n >= 1

@pytest.mark.ossbench_case(suite={str(SUITE)!r}, case="attention/full/mode=decode,kv_len=64")
def test_mark_alone():
    pass

@pytest.mark.ossbench_case(suite={str(SUITE)!r}, case="window9")
def test_unknown(ossbench_case):
    pass

@pytest.mark.ossbench_case(suite="no/such.yaml", case="x")
def test_no_suite():
    pass
''')
    result = _run(pytester, "--ossbench-out", "out", "--benchmark-json", "bench.json")
    result.assert_outcomes(passed=2, errors=2)  # (the fixture fails in set-up: pytest counts an error)
    result.stdout.fnmatch_lines(["*tiny.yaml: no case 'window9'*", "*no/such.yaml*"])
    assert "Traceback" not in result.stdout.str() and "During handling" not in result.stdout.str()
    run = load_results(pytester.path / "out" / "results.json")
    assert [c.id for c in run.cases] == ["attention/window8/mode=prefill,seq_len=32",
                                         "attention/full/mode=decode,kv_len=64"]
    assert all(c.status == "ok" and c.numerics.ok and c.flops for c in run.cases)
    benches = {b["name"]: b for b in json.loads((pytester.path / "bench.json").read_text())["benchmarks"]}
    assert set(benches) == {"test_window", "test_mark_alone"}
    assert benches["test_window"]["extra_info"]["case"] == run.cases[0].id
    assert benches["test_window"]["stats"]["rounds"] == run.cases[0].stats.n


def test_bad_options_are_usage_errors(pytester):
    pytester.makepyfile(test_mm=MATMUL_TESTS)
    (pytester.path / "afile").write_text("x")
    result = _run(pytester, "--ossbench-out", "afile")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ossbench-out afile: exists and is not a folder*"])
    result = _run(pytester, "--ossbench-device", "tpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ossbench-device:*tpu*"])


# ------------------------------------------------------------------------- the entry point's switch


@pytest.fixture
def entry_point(pytester):
    """A distribution on sys.path whose `pytest11` entry point `ossbench` names the switch, as
    pyproject.toml declares it (an installed ossbench has the same one: pytest loads either, once)."""
    dist = pytester.mkdir("site") / "ossbench_switch_stand_in-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ossbench-switch-stand-in\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\nossbench = ossbench.pytest_shim\n")
    pytester.syspathinsert(pytester.path / "site")
    pytester.makepyfile(test_mm=MATMUL_TESTS)


def test_the_entry_point_leaves_pytest_alone_unless_asked(pytester, entry_point):
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*fixture 'gpu_bench' not found*"])
    assert pytester.runpytest_inprocess("--ossbench-out", "out").ret == pytest.ExitCode.USAGE_ERROR
    help_text = pytester.runpytest_inprocess("--help").stdout.str()
    assert "--ossbench" not in help_text and "ossbench_case" not in pytester.runpytest_inprocess(
        "--markers").stdout.str()
    plugins = pytester.runpytest_inprocess("--trace-config", "--co").stdout.str()
    assert "ossbench.pytest_shim" in plugins  # the switch is loaded (so the stand-in works) but inert


def test_dash_p_ossbench_turns_it_on(pytester, entry_point):
    _run_on = pytester.runpytest_inprocess("-p", "ossbench", "--ossbench-out", "out")
    _run_on.assert_outcomes(passed=2)
    assert len(load_results(pytester.path / "out" / "results.json").cases) == 2
    # -p no:ossbench blocks the name: the switch does not even load
    blocked = pytester.runpytest_inprocess("-p", "no:ossbench", "--trace-config", "--co")
    assert "ossbench.pytest_shim" not in blocked.stdout.str()


def test_dash_p_ossbench_works_with_autoloading_disabled(pytester, entry_point, monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # pytest-benchmark is not loaded either
    pytester.runpytest_inprocess("-p", "ossbench", "--ossbench-out", "out").assert_outcomes(passed=2)
    monkeypatch.setenv("PYTEST_PLUGINS", "ossbench")
    pytester.runpytest_inprocess().assert_outcomes(passed=2)


def test_a_conftest_turns_it_on(pytester, entry_point):
    pytester.makeconftest('pytest_plugins = ["ossbench.pytest_plugin"]\n')
    pytester.runpytest_inprocess("--ossbench-out", "out").assert_outcomes(passed=2)
    # and together with -p ossbench it is loaded once
    pytester.runpytest_inprocess("-p", "ossbench").assert_outcomes(passed=2)


@pytest.mark.gpu
def test_gpu_bench_on_cuda_times_with_cuda_events(pytester):
    pytester.makepyfile(test_cuda='''
import torch

def test_matmul(gpu_bench):
    a = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    out = gpu_bench(torch.matmul, a, a)
    assert out.is_cuda and out.shape == (2048, 2048)
''')
    result = _run(pytester, "--benchmark-json", "bench.json", "--ossbench-out", "out")
    result.assert_outcomes(passed=1)
    (b,) = json.loads((pytester.path / "bench.json").read_text())["benchmarks"]
    assert b["options"]["timer"] == "cuda events" and b["options"]["cache"] == "cold"
    (case,) = load_results(pytester.path / "out" / "results.json").cases
    assert case.timing["device"].startswith("cuda:") and case.stats.n >= 10
    assert b["stats"]["data"] == pytest.approx([s / 1e3 for s in case.samples_ms], rel=1e-12)


def test_the_switch_reads_dash_p_and_pytest_plugins():
    from ossbench.pytest_shim import asked_for

    assert asked_for(["ossbench"], None) and asked_for([" ossbench "], None) and asked_for([], "x, ossbench")
    assert asked_for(["ossbench.pytest_shim"], None)
    assert not asked_for([], None) and not asked_for(["no:ossbench", "ossbench_other"], "ossbench.x")


def test_auto_device_follows_the_first_tensor_argument():
    import torch

    from ossbench.pytest_timing import _device_of

    assert _device_of((1, torch.ones(1)), {}) == "cpu" and _device_of((), {"x": torch.ones(1)}) == "cpu"
    assert _device_of((1, "a"), {}) is None


def test_docs_name_exactly_the_plugins_options(pytester):
    import re

    help_text = _run(pytester, "--help").stdout.str()
    offered = set(re.findall(r"(--ossbench-[a-z-]+)", help_text))
    documented = set(re.findall(r"(--ossbench-[a-z-]+)", (Path(__file__).parent.parent / "docs" / "pytest.md").read_text()))
    assert offered and offered == documented


def test_parametrize_values_become_results_scalars():
    import numpy as np
    import torch

    from ossbench.pytest_results import _scalar

    assert [_scalar(v) for v in (8, np.int64(8), 0.5, np.float32(0.5), True, "x", None)] == [8, 8, 0.5, 0.5, True, "x", None]
    assert type(_scalar(np.int64(8))) is int and _scalar(torch.bfloat16) == "bfloat16"
    assert _scalar(float("nan")) == "nan" and _scalar(len) == str(len)
