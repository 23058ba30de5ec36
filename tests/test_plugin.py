"""The example plugin (examples/ossbench-example-plugin) installed as a package, and a suite run through it.

The plugin is pip-installed in editable mode into a throwaway prefix (never into the interpreter's own
site-packages, never with network access), and the ossbench processes that use it add that prefix as a
site directory: importlib.metadata then finds its `ossbench.backends` entry point as it would for any
installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "ossbench-example-plugin"

SUITE = """\
name: plugin
family: attention
preset: gpt-oss-20b
dtype: float32
params:
  backend: example-sdpa
  batch: 1
  hidden: 64
  n_heads: 4
  n_kv_heads: 2
  head_dim: 16
  sinks: false
variants:
  full: {}
  window8: {window: 8}
  sinks: {sinks: true}
sweep:
  - mode: [prefill]
    seq_len: [32]
  - mode: [decode]
    kv_len: [32]
timing:
  min_samples: 3
  min_time_s: 0
  max_time_s: 0.5
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The site-packages folder of a prefix holding the example plugin, installed with `pip install -e`."""
    base = tmp_path_factory.mktemp("plugin")
    source = base / "src"  # a copy: building never writes into the repository
    shutil.copytree(PLUGIN, source)
    prefix = base / "prefix"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--no-cache-dir", "--disable-pip-version-check", "-q", "-e", str(source), "--prefix", str(prefix)],
                   check=True, env=_env(), timeout=300)
    dist_info = next(prefix.rglob("ossbench_example_plugin-*.dist-info"))
    return dist_info.parent


def _env() -> dict[str, str]:
    # HOME and the caches already point into a temporary folder (conftest.py); the children inherit them
    env = dict(os.environ, PIP_NO_INPUT="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _python(site_dir: Path, code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that sees `site_dir` as a site directory (its .pth files processed)."""
    prelude = f"import site, sys; site.addsitedir({str(site_dir)!r}); "
    return subprocess.run([sys.executable, "-c", prelude + code, *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_plugin_backend_runs_a_suite_from_the_installed_package(plugin_site, tmp_path):
    suite = tmp_path / "plugin.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    run = _python(plugin_site, "from ossbench.cli import main; sys.argv[0] = 'ossbench'; main()",
                  "run", str(suite), "--device", "cpu", "--quick", "--no-isolate", "--out", str(out), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    cases = {c["id"]: c for c in json.loads((out / "results.json").read_text())["cases"]}
    ran = [c for c in cases.values() if c["variant"] != "sinks"]
    assert len(ran) == 4  # full and window8, prefill and decode
    for case in ran:
        assert case["params"]["backend"] == "example-sdpa"
        assert case["status"] == "ok", case["error"]
        # checked against the float64 reference before it was timed
        assert case["numerics"]["ok"] and case["numerics"]["max_rel_err"] <= case["numerics"]["tolerance"]
        assert "float64" in case["numerics"]["reference"]
        assert case["samples_ms"]
    # the plugin declares it cannot express sinks: skipped with its own reason, not computed
    skipped = [c for c in cases.values() if c["variant"] == "sinks"]
    assert len(skipped) == 2
    for case in skipped:
        assert case["status"] == "skipped"
        assert case["error"].startswith("example-sdpa cannot express attention sinks")


@pytest.mark.slow
def test_plugin_backend_is_listed_and_in_the_schema(plugin_site, tmp_path):
    code = ("import json; from ossbench.workloads import describe_backends; "
            "from ossbench.suite import suite_json_schema; "
            "print(json.dumps({'backends': describe_backends(), 'schema': suite_json_schema()}))")
    done = _python(plugin_site, code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    [plugin] = [b for b in data["backends"] if b["name"] == "example-sdpa"]
    assert plugin["family"] == "attention" and plugin["origin"] == "ossbench-example-plugin"
    assert "no sinks" in plugin["limits"]
    backend = data["schema"]["properties"]["params"]["properties"]["backend"]
    choices = [c for alt in backend.get("anyOf", [backend]) for c in alt["enum"]]
    assert "example-sdpa" in choices and "sdpa" in choices and "grouped" in choices


def test_without_the_plugin_its_backend_is_unknown(tmp_path):
    """The same suite in a process that does not see the plugin: a validation error naming the registered
    backends, exit code 2."""
    from importlib.metadata import entry_points

    if any(ep.name == "example-sdpa" for ep in entry_points(group="ossbench.backends")):
        pytest.skip("the example plugin is installed in this environment")
    from click.testing import CliRunner

    from ossbench.cli import main

    suite = tmp_path / "plugin.yaml"
    suite.write_text(SUITE)
    done = CliRunner().invoke(main, ["validate", str(suite)])
    assert done.exit_code == 2
    assert "not a registered attention backend; registered: eager, sdpa, flex" in done.output
    assert done.exception is None or isinstance(done.exception, SystemExit)  # a message, not a traceback
