"""Suite loading, validation (bad suites -> exit 2 with file, line, field) and expansion into cases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ossbench.cli import main
from ossbench.errors import SuiteError
from ossbench.suite import case_identifier, filter_cases, load_suite, parse_suite

HERE = Path(__file__).parent
BAD = HERE / "bad_suites"

# file -> (fragment of the message, field path or None, line or None)
BAD_SUITES = {
    "malformed_yaml.yaml": ("invalid YAML", None, 5),
    "not_a_mapping.yaml": ("must be a YAML mapping", None, 1),
    "unknown_top_level_key.yaml": ("unknown field 'varaints'", "varaints", 3),
    "missing_family.yaml": ("missing required field 'family'", "family", None),
    "unknown_family.yaml": ("unknown family 'attn'", "family", 2),
    "unknown_preset.yaml": ("unknown preset 'gpt-oss-7b'", "preset", 3),
    "unknown_dtype.yaml": ("float8", "dtype", 3),
    "unknown_variant_field.yaml": ("unknown parameter 'windw'", "variants.windowed.windw", 6),
    "wrong_type.yaml": ("seq_len", "params.seq_len", 4),
    "negative_batch.yaml": ("batch", "variants.full.batch", 4),
    "zero_in_sweep.yaml": ("seq_len", "sweep.seq_len", 6),
    "window_not_causal.yaml": ("defined only for causal attention", "variants.bidirectional.causal", 4),
    "heads_not_divisible.yaml": ("n_kv_heads", "variants.gqa7.n_kv_heads", 4),
    "unknown_backend.yaml": ("cudnn", "variants.full.backend", 4),
    "compare_unknown_variant.yaml": ("unknown variant 'window128'", "compare[0].candidate", 7),
    "duplicate_key.yaml": ("duplicate key 'full'", "variants.full", 5),
    "empty_axis.yaml": ("sweep axis 'seq_len' has no values", "sweep", 5),
    "unknown_sweep_axis.yaml": ("unknown parameter 'sequence_length'", "sweep.sequence_length", 6),
    "cpu_unknown_variant.yaml": ("unknown variant 'window128'", "cpu.variants[1]", 6),
    "unknown_mode.yaml": ("inference", "mode", 3),
    "impossible_timing.yaml": ("target_rel_ci", "timing.target_rel_ci", 6),
    "no_variants.yaml": ("variants", "variants", 3),
    "excluded_everything.yaml": ("no cases", "exclude", 5),
    "compare_where_matches_nothing.yaml": ("matches no case", "compare[0].where", 9),
    "moe_topk_gt_experts.yaml": ("top_k (64) cannot exceed n_experts (32)", "variants.top64.top_k", 5),
    # hostile inputs (more of them, generated, in test_suite_hostile.py)
    "infinite_warmup.yaml": ("finite number", "timing.warmup_s", 6),
    "max_samples_below_min.yaml": ("max_samples (5) must be at least min_samples (10)", "timing.max_samples", 7),
    "bool_for_int.yaml": ("valid integer", "timing.min_samples", 6),
    "rope_theta_one.yaml": ("rope_theta: Input should be greater than 1", "variants.base1.rope_theta", 5),
    "sweep_value_not_scalar.yaml": ("must be a single value", "sweep.seq_len[2]", 6),
    "absurd_seq_len.yaml": ("limits.max_case_memory_gb", "sweep.seq_len", 6),
    "too_many_cases.yaml": ("more than limits.max_cases (4)", "sweep", 6),
    "recursive_alias.yaml": ("recursive alias", None, 3),
}


def test_every_bad_suite_file_is_covered():
    assert sorted(p.name for p in BAD.glob("*.yaml")) == sorted(BAD_SUITES)
    assert len(BAD_SUITES) >= 12


@pytest.mark.parametrize("name", sorted(BAD_SUITES))
def test_bad_suite_is_rejected_with_file_line_and_field(name):
    fragment, field, line = BAD_SUITES[name]
    with pytest.raises(SuiteError) as info:
        load_suite(BAD / name)
    err = info.value
    assert err.path == str(BAD / name)
    assert fragment in str(err), str(err)
    if field is not None:
        assert err.field == field, str(err)
    if line is not None:
        assert err.line == line, str(err)


@pytest.mark.parametrize("name", sorted(BAD_SUITES))
def test_validate_command_exits_2_without_traceback(name):
    result = CliRunner().invoke(main, ["validate", str(BAD / name)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert name in result.output and BAD_SUITES[name][0].split("'")[0] in result.output


def test_run_on_a_bad_suite_exits_2_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "ossbench", "run", str(BAD / "heads_not_divisible.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "heads_not_divisible.yaml:4: [variants.gqa7.n_kv_heads]" in proc.stderr


def test_missing_suite_file_is_a_clear_error():
    result = CliRunner().invoke(main, ["validate", "no/such/suite.yaml"])
    assert result.exit_code == 2 and "no such file" in result.output


def test_validate_accepts_good_suites():
    suites = [HERE / "suites" / "tiny.yaml", *sorted((HERE.parent / "suites").glob("*.yaml"))]
    result = CliRunner().invoke(main, ["validate", *map(str, suites)])
    assert result.exit_code == 0, result.output
    assert result.output.count("ok ") == len(suites)


def test_expansion_order_ids_and_effective_params():
    suite = load_suite(HERE / "suites" / "tiny.yaml")
    cases = suite.cases("full")
    assert [c.id for c in cases] == [
        "attention/full/mode=prefill,seq_len=32", "attention/window8/mode=prefill,seq_len=32",
        "attention/full/mode=prefill,seq_len=64", "attention/window8/mode=prefill,seq_len=64",
        "attention/full/mode=decode,kv_len=64", "attention/window8/mode=decode,kv_len=64",
    ]
    window = cases[1].params_dict
    # suite params, the variant's override and the sweep point all land in the effective parameters
    assert (window["hidden"], window["n_heads"], window["window"], window["seq_len"]) == (64, 4, 8, 32)
    assert cases[0].params_dict["window"] is None
    assert len({c for c in cases}) == len(cases)  # frozen, hashable identity


def test_filter_selects_by_substring():
    cases = load_suite(HERE / "suites" / "tiny.yaml").cases()
    assert [c.variant for c in filter_cases(cases, "window8")] == ["window8"] * 3
    assert len(filter_cases(cases, "mode=decode")) == 2
    assert filter_cases(cases, None) == cases


def test_exclude_and_cpu_profile():
    text = (HERE / "suites" / "tiny.yaml").read_text() + """
exclude:
  - {variant: window8, seq_len: 64}
cpu:
  dtype: float64
  variants: [full]
  sweep: {seq_len: [16]}
  timing: {max_time_s: 0.25}
"""
    suite = parse_suite(text, "inline.yaml")
    assert "attention/window8/mode=prefill,seq_len=64" not in [c.id for c in suite.cases("full")]
    assert suite.profile_for("cpu") == "cpu" and suite.profile_for("cuda") == "full"
    cpu = suite.cases("cpu")
    assert [c.id for c in cpu] == ["attention/full/seq_len=16"]
    assert cpu[0].dtype == "float64" and suite.timing("cpu").max_time_s == 0.25
    assert suite.timing("cpu").min_samples == 5  # merged over the main timing


def test_case_identifier_formats_values():
    assert case_identifier("attention", "full", {}) == "attention/full"
    assert case_identifier("attention", "w", {"window": None, "sinks": True, "seq_len": 4096}) == \
        "attention/w/window=none,sinks=true,seq_len=4096"


def test_schema_command_prints_json_schema_with_family_parameters():
    import json

    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert "variants" in schema["properties"]
    assert "window" in schema["properties"]["variants"]["additionalProperties"]["properties"]
    assert "attention" in schema["properties"]["family"]["enum"]


@pytest.mark.parametrize("path", sorted((HERE.parent / "suites").glob("*.yaml")) + [HERE / "suites" / "tiny.yaml"],
                         ids=lambda p: p.name)
def test_shipped_suites_satisfy_the_editor_schema(path):
    """What editors check against (`ossbench schema`) must accept every suite that `validate` accepts."""
    import jsonschema
    import yaml

    from ossbench.suite import suite_json_schema

    jsonschema.validate(yaml.safe_load(path.read_text()), suite_json_schema())


def test_editor_schema_rejects_an_unknown_parameter():
    import jsonschema

    from ossbench.suite import suite_json_schema

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x", "family": "attention", "variants": {"v": {"windw": 128}}},
                            suite_json_schema())


# ----------------------------------------------------------------------------------------------- timing


def test_timing_is_the_timers_bench_spec_plus_the_case_limit():
    from ossbench.measure.spec import BenchSpec
    from ossbench.suite import Timing

    assert issubclass(Timing, BenchSpec)
    assert list(Timing.model_fields) == [*BenchSpec.model_fields, "case_timeout_s"]
    assert Timing().to_dict() == BenchSpec().to_dict()  # the same defaults, declared once
    timing = load_suite(HERE / "suites" / "tiny.yaml").timing()
    assert isinstance(timing, BenchSpec)
    assert (timing.cache, timing.min_samples, timing.max_samples) == ("hot", 5, 20_000)


def test_a_suite_may_set_every_bench_setting_and_a_bad_one_names_its_line(tmp_path):
    base = (HERE / "suites" / "tiny.yaml").read_text().replace("target_rel_ci: 0.2}",
                                                               "target_rel_ci: 0.2, flush_bytes: 1048576}")
    assert parse_suite(base, "t.yaml").timing().flush_bytes == 2**20
    with pytest.raises(SuiteError) as e:
        parse_suite(base.replace("flush_bytes: 1048576", "graph_calls: 0"), "t.yaml")
    assert (e.value.field, e.value.line) == ("timing.graph_calls", 15) and "greater than 0" in str(e.value)


def test_quick_is_the_suite_timings_quick_delta(tmp_path):
    from ossbench.runner import plan_run

    text = (HERE / "suites" / "tiny.yaml").read_text().replace("target_rel_ci: 0.2}",
                                                               "target_rel_ci: 0.2, case_timeout_s: 30}")
    suite = parse_suite(text, str(tmp_path / "t.yaml"))
    plan = plan_run(suite, device="cpu", out_dir=tmp_path / "out", quick=True)
    assert plan.timing == suite.timing(suite.profile_for("cpu")).quick()
    own = suite.timing(suite.profile_for("cpu")).max_time_s
    assert (plan.timing.max_time_s, plan.timing.cache, plan.timing.case_timeout_s) == (min(1.0, own), "hot", 30)
