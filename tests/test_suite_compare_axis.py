"""docs/suites.md, "Comparing values of a swept axis": the values as variants give compare pairs, and a
window longer than the sequence runs as full attention inside a sweep."""

from __future__ import annotations

import pytest

from ossbench.expectations import evaluate
from ossbench.runner import plan_run, run_plan
from ossbench.suite import parse_suite
from ossbench.workloads.attention import AttentionParams, attention_cost

HEAD = """
name: axis
family: attention
preset: gpt-oss-20b
dtype: float32
mode: prefill
params: {hidden: 64, n_heads: 4, n_kv_heads: 2, head_dim: 16, batch: 1, backend: eager}
timing: {cache: hot, warmup_s: 0.0, min_samples: 5, min_time_s: 0.0, max_time_s: 0.2, target_rel_ci: 0.5}
"""

WINDOWS = HEAD + """
variants:
  window8: {window: 8}
  window32: {window: 32}
sweep: {seq_len: [16, 48]}
compare:
  - {baseline: window32, candidate: window8, expect: {speedup_min: 0.01}}
"""

SIZES = HEAD + """
variants:
  s16: {seq_len: 16}
  s48: {seq_len: 48}
sweep: {mode: [prefill, train]}
compare:
  - {baseline: s16, candidate: s48, expect: {speedup_min: 0.01, relative_to: flops}}
"""


def _pairs(text, tmp_path):
    run = run_plan(plan_run(parse_suite(text, "axis.yaml"), device="cpu", out_dir=tmp_path))
    assert all(c.status == "ok" for c in run.cases), [(c.id, c.error) for c in run.cases]
    (report,) = evaluate(run)
    return run, report


def test_axis_values_as_variants_are_compared_at_every_point(tmp_path):
    run, report = _pairs(WINDOWS, tmp_path)
    by_id = {c.id: c for c in run.cases}
    assert [(o.baseline_id, o.candidate_id) for o in report.outcomes] == [
        ("attention/window32/seq_len=16", "attention/window8/seq_len=16"),
        ("attention/window32/seq_len=48", "attention/window8/seq_len=48")]
    short, long = report.outcomes
    # at seq_len 16 a 32-token window is full causal attention, costed as window: null
    w32 = by_id["attention/window32/seq_len=16"]
    full = AttentionParams(**{**w32.params, "window": None})
    assert w32.flops == attention_cost(full, 4).flops and w32.bytes == attention_cost(full, 4).bytes
    assert long.flops_ratio > short.flops_ratio > 1  # the window saves more the longer the sequence
    assert all(o.met is not None for o in report.outcomes)


def test_sizes_as_variants_give_a_scaling_check(tmp_path):
    run, report = _pairs(SIZES, tmp_path)
    assert [o.axes for o in report.outcomes] == [{"mode": "prefill"}, {"mode": "train"}]
    for o in report.outcomes:
        assert o.flops_ratio < 1 and o.speedup is not None  # the longer case does more work
        assert o.flops_ratio == pytest.approx(run.case(o.baseline_id).flops / run.case(o.candidate_id).flops)
        assert o.bound == "speedup >= 0.01 x flops ratio"
