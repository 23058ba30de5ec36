"""scripts/gpu-check on a machine without CUDA (docs/ci.md): the GPU steps skip, the smoke profiles run on
the CPU, the summary comes last; carried wheels go into the output folder's private target only."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu-check"
SMOKE = Path(__file__).parent / "suites" / "smoke.yaml"


def _script():
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass looks its module up there
    loader.exec_module(module)
    return module


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **extra}
    env.pop("PYTHONPATH", None)  # the script puts the repository on it itself
    return env


def test_runs_on_cpu_with_gpu_steps_skipped(tmp_path):
    out = tmp_path / "check"
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--suite", str(SMOKE)],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status == {"env": "ok", "calibrate": "skipped", "pytest-gpu": "skipped", "smoke-smoke": "ok",
                      "run-attention": "skipped", "run-moe": "skipped", "figures": "ok"}
    figures = (out / "figures.md").read_text()  # from the smoke results; no CUDA for do_bench
    assert "smoke/smoke/results.json" in figures and "skipped: no CUDA device" in figures
    notes = {s["name"]: s["note"] for s in summary["steps"]}
    assert "no CUDA device" in notes["calibrate"] and "no CUDA device" in notes["run-moe"]
    # the smoke run wrote its results under the output folder, recording which profile ran
    results = json.loads((out / "smoke" / "smoke" / "results.json").read_text())
    assert results["suite"]["profile"] == "gpu-smoke"
    assert [c["id"] for c in results["cases"]] == ["attention/full/mode=prefill,seq_len=32",
                                                   "attention/window8/mode=prefill,seq_len=32"]
    assert (out / "smoke" / "smoke" / "report.html").is_file()
    log = (out / "logs" / "smoke-smoke.log").read_text()
    help_text = subprocess.run([sys.executable, "-m", "ossbench", "run", "--help"], cwd=ROOT, capture_output=True,
                               text=True, env=_env(PYTHONPATH=str(ROOT))).stdout
    assert ("--max-minutes" in log) == ("--max-minutes" in help_text)  # passed where this ossbench has it
    assert "ossbench" in (out / "logs" / "env.log").read_text()
    # the summary is printed last, one line per step, and written as markdown too
    tail = r.stdout.strip().splitlines()
    assert tail[-1].split()[0] == "total" and "smoke-smoke" in r.stdout.split("gpu-check summary")[-1]
    assert "| smoke-smoke | ok |" in (out / "summary.md").read_text()


def test_bad_options_exit_2(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "o"), "--suite", "nope.yaml"],
                       env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "nope.yaml" in r.stderr
    r = subprocess.run([sys.executable, str(SCRIPT), "--wheels", str(tmp_path / "absent")],
                       env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a folder" in r.stderr


def _fake_wheel(folder: Path, name: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal pure-Python wheel that pip installs offline."""
    dist = f"{name}-1.0.dist-info"
    path = folder / f"{name}-1.0-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {f"{name}/__init__.py": "VALUE = 1\n", f"{dist}/METADATA": meta,
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def test_wheels_install_only_the_missing_and_what_they_need_into_the_private_target(tmp_path, monkeypatch):
    gpu_check = _script()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    # a needs b (which needs click, installed already) and, only for an extra, c (which has no wheel)
    _fake_wheel(wheels, "ossbench_fake_a", ("ossbench-fake-b>=1", 'ossbench-fake-c; extra == "more"'))
    _fake_wheel(wheels, "ossbench_fake_b", ("click",))
    monkeypatch.setattr(gpu_check, "_dist_names", lambda: ["click", "ossbench_fake_a", "ossbench-absent-dep"])
    target = tmp_path / "out" / "site"
    status, note = gpu_check._install_missing(wheels, target, tmp_path / "out" / "wheels.log")
    log = (tmp_path / "out" / "wheels.log").read_text()
    assert "missing: ossbench_fake_a ossbench-absent-dep\n" in log  # click is installed: not asked for
    assert "needed by those: ossbench-fake-b\n" in log
    assert (target / "ossbench_fake_a" / "__init__.py").is_file() and (target / "ossbench_fake_b").is_dir()
    assert not list(target.glob("click*"))  # an installed package is never installed again
    assert status == "failed" and "no wheel" in note and "ossbench-absent-dep" in note, note
    assert "ossbench-fake-c" not in log
    assert gpu_check._missing(["ossbench_fake_a", "ossbench-fake-b"], target) == []  # found in the target now


def test_nothing_missing_installs_nothing(tmp_path, monkeypatch):
    gpu_check = _script()
    monkeypatch.setattr(gpu_check, "_dist_names", lambda: ["click", "pydantic", "numpy"])
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    assert gpu_check._install_missing(wheels, tmp_path / "site", tmp_path / "log") == \
        ("ok", "every dependency is installed already")


def test_reads_the_dependencies_from_pyproject():
    names = _script()._dist_names()
    assert {"pydantic", "plotly", "filelock", "click", "torch"} <= set(names)


def test_conftest_timeout_without_pytest_timeout(tmp_path):
    if importlib.util.find_spec("pytest_timeout") is not None:
        pytest.skip("pytest-timeout is installed: the script uses its --timeout")
    (tmp_path / "conftest.py").write_text((Path(__file__).parent / "conftest.py").read_text())
    (tmp_path / "test_sleep.py").write_text("import time\n\ndef test_sleeps():\n    time.sleep(30)\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                       cwd=tmp_path, env=_env(OSSBENCH_TEST_TIMEOUT_S="1"), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "timed out after 1 s" in r.stdout


def test_gpu_figures_from_results_files(tmp_path):
    """Energy vs power x time and profiler vs median read from the results, the window speedup next to its
    FLOP ratio, and the A/A gate; missing data is said, not made up."""
    from ossbench.results import load_results

    run = load_results(ROOT / "reports" / "example" / "cpu" / "attention" / "results.json")
    for c in run.cases:  # what NVML and --profile would have recorded: exactly consistent figures
        if c.stats:
            c.power = {"available": True, "power_w": {"mean": 100.0},
                       "energy": {"available": True, "per_call_j": 100.0 * c.stats.median / 1e3}}
            c.profile = {"available": True, "device_ms_per_call": c.stats.median * 0.9}
    made = tmp_path / "gpu" / "results.json"
    made.parent.mkdir()
    run.save(made)
    plain = ROOT / "reports" / "example" / "cpu" / "attention" / "results.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu-figures"), str(made), str(plain), "--aa",
                        str(plain), str(plain)], cwd=tmp_path, env=_env(PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {line.split("|")[1].strip(): line for line in r.stdout.splitlines() if line.startswith("| /")}
    assert "| 1.000 | 0.900 |" in rows[str(made)] and "| no data | no data |" in rows[str(plain)]
    assert "window-128 speedup" in r.stdout and "FLOP ratio" in r.stdout
    assert "A/A gate: 0 false alarm(s)" in r.stdout
