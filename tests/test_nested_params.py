"""Nested parameters (the block family's `attention:` and `mlp:` specs): written nested or dotted in a suite,
held flat with dotted names in cases and results, errors reported at the nested node that set them."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from ossbench.errors import SuiteError
from ossbench.suite import load_suite, suite_json_schema
from ossbench.workloads.nesting import flatten, nest

TINY = """\
name: nested
family: block
dtype: float32
params:
  attn_backend: eager
  moe_backend: loop
  hidden: 32
  batch: 1
  seq_len: 8
  kv_len: 8
  attention: {n_heads: 4, n_kv_heads: 2, head_dim: 8}
  mlp: {intermediate: 16, n_experts: 4, top_k: 2}
variants:
  oss: {}
  dense:
    mlp:
      kind: dense
      activation: gelu_tanh
sweep:
  attention.window: [null, 4]
exclude:
  - {variant: dense, attention: {window: 4}}
compare:
  - {baseline: oss, candidate: dense, where: {attention.window: null}}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def test_flatten_and_nest_are_inverse():
    tree = {"mode": "prefill", "attention": {"window": 128, "sinks": True}, "mlp": {"kind": "moe"}}
    flat = flatten(tree)
    assert flat == {"mode": "prefill", "attention.window": 128, "attention.sinks": True, "mlp.kind": "moe"}
    assert nest(flat) == tree
    with pytest.raises(ValueError, match="single value"):
        nest({"attention": 3, "attention.window": 4})
    with pytest.raises(ValueError, match="group of parameters"):
        nest({"attention.window": 4, "attention": 3})


def test_nested_and_dotted_names_expand_to_flat_cases(tmp_path):
    suite = load_suite(_write(tmp_path, TINY))
    cases = suite.cases()
    assert [c.id for c in cases] == ["block/oss/attention.window=none", "block/dense/attention.window=none",
                                     "block/oss/attention.window=4"]  # the excluded dense window-4 case is gone
    oss, dense, windowed = (c.params_dict for c in cases)
    assert (oss["attention.n_heads"], oss["mlp.kind"], oss["mlp.n_experts"]) == (4, "moe", 4)
    assert windowed["attention.window"] == 4
    # the variant's nested mlp merges field by field over the suite's params; the dense MLP ignores (and does
    # not record) the MoE's fields that the shared params give it
    assert (dense["mlp.kind"], dense["mlp.activation"], dense["mlp.intermediate"]) == ("dense", "gelu_tanh", 16)
    assert "mlp.n_experts" not in dense and "mlp.top_k" not in dense


def test_a_bad_nested_value_is_reported_at_its_own_line(tmp_path):
    text = TINY.replace("      activation: gelu_tanh\n", "      activation: gelu_tanh\n      intermediate: 0\n")
    with pytest.raises(SuiteError) as e:
        load_suite(_write(tmp_path, text))
    assert e.value.line == text.splitlines().index("      intermediate: 0") + 1
    assert e.value.field == "variants.dense.mlp.intermediate"
    assert "mlp.intermediate" in str(e.value)


def test_an_unknown_nested_name_gets_a_suggestion(tmp_path):
    text = TINY.replace("  oss: {}\n", "  oss: {attention: {windw: 4}}\n")
    with pytest.raises(SuiteError, match=r"unknown parameter 'attention.windw' \(did you mean 'attention.window'"):
        load_suite(_write(tmp_path, text))


def test_a_name_set_as_a_value_and_as_a_group_is_refused(tmp_path):
    text = TINY.replace("  oss: {}\n", "  oss: {attention: 3}\n")
    with pytest.raises(SuiteError, match="attention"):
        load_suite(_write(tmp_path, text))


def test_the_editor_schema_accepts_nested_and_dotted_names_and_refuses_typos():
    schema = suite_json_schema()
    jsonschema.validate(yaml.safe_load(TINY), schema)
    bad = yaml.safe_load(TINY.replace("  oss: {}\n", "  oss: {attention: {windw: 4}}\n"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
