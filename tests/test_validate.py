"""`ossbench validate`: every error of a suite at once (file, line, field), and with --device the cases a
run there would skip, with the backend's own reason."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from ossbench.cli import main

BASE = """\
name: v
family: attention
dtype: float32
params: {hidden: 64, n_heads: 4, n_kv_heads: 2, head_dim: 16, seq_len: 32, kv_len: 32}
variants:
"""


def _validate(tmp_path: Path, variants: str, *args: str, extra: str = ""):
    path = tmp_path / "suite.yaml"
    path.write_text(BASE + variants + extra)
    result = CliRunner().invoke(main, ["validate", str(path), *args])
    assert "Traceback" not in result.output
    return path, result


def test_every_case_error_is_reported_at_its_own_line(tmp_path):
    path, result = _validate(tmp_path, "  a: {window: 0}\n  b: {backend: nope}\n  c: {n_kv_heads: 3}\n",
                             extra="sweep: {mode: [prefill, decode]}\n")
    assert result.exit_code == 2
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert [e.split(" ", 2)[1] for e in errors] == [f"{path}:6:", f"{path}:7:", f"{path}:8:"]
    assert "[variants.a.window]" in errors[0] and "(and 1 more case(s))" in errors[0]
    assert "[variants.b.backend]" in errors[1] and "[variants.c.n_kv_heads]" in errors[2]


def test_every_format_error_is_reported(tmp_path):
    _, result = _validate(tmp_path, "  a: {}\n", extra="timing: {warmup_s: -1, bogus: 3}\n")
    assert result.exit_code == 2
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2 and any("timing.bogus" in e for e in errors) and any("timing.warmup_s" in e for e in errors)


def test_device_warns_about_cases_a_run_there_would_skip(tmp_path):
    _, result = _validate(tmp_path, "  flex: {backend: flex}\n  eager: {backend: eager}\n", "--device", "cpu",
                          extra="sweep: {mode: [prefill, train]}\n")
    assert result.exit_code == 0  # a skip is not an error
    warnings = [ln for ln in result.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "2 of 4 case(s)" in warnings[0] and "skipped on cpu" in warnings[0]
    assert "flex" in warnings[0] and "sinks" in warnings[0]  # the backend's own reason
    assert "attention/flex/mode=prefill" in warnings[0] and "eager" not in warnings[0].split("(")[-1]


def test_no_warning_when_every_case_runs(tmp_path):
    _, result = _validate(tmp_path, "  eager: {backend: eager}\n", "--device", "cpu")
    assert result.exit_code == 0 and "warning:" not in result.output and result.output.startswith("ok ")


def test_the_first_error_alone_is_still_what_a_run_reports(tmp_path):
    path, _ = _validate(tmp_path, "  a: {window: 0}\n  c: {n_kv_heads: 3}\n")
    result = CliRunner().invoke(main, ["run", str(path), "--device", "cpu", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert sum(ln.startswith("error:") for ln in result.output.splitlines()) == 1



def test_a_case_error_is_reported_once_over_every_profile(tmp_path):
    profiles = ("cpu:\n  params: {seq_len: 16}\nprofiles:\n  smoke:\n    params: {seq_len: 8}\n")
    path, result = _validate(tmp_path, "  a: {n_kv_heads: 3}\n", extra="sweep: {mode: [prefill, decode]}\n" + profiles)
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert "(and 5 more case(s))" in errors[0]  # 2 cases in each of the 3 profiles
