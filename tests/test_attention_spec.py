"""AttentionSpec: one frozen description of an attention block, read by the layer, the presets and the
attention family's params model (generated from it), with one set of rules and messages for all three."""

import dataclasses

import pytest
from pydantic import ValidationError

from ossbench.layers.attention import Attention
from ossbench.layers.attention_spec import AttentionSpec
from ossbench.layers.config import PRESETS, get_preset
from ossbench.workloads.attention import AttentionParams, defaults

SMALL = dict(hidden=64, n_heads=8, n_kv_heads=2, head_dim=16)
AXES = dict(mode="prefill", backend="eager", batch=1, seq_len=40, kv_len=39)


def test_defaults_are_a_full_gpt_oss_layer_with_yarn():
    spec = AttentionSpec()
    assert (spec.hidden, spec.n_heads, spec.n_kv_heads, spec.head_dim) == (2880, 64, 8, 64)
    assert spec.window is None and spec.sinks and spec.bias and spec.norm == "rmsnorm"
    assert spec.rope.yarn_factor == 32.0 and spec.rope.theta == 150000.0
    assert AttentionSpec(positions="rope").rope.yarn_factor == 1.0  # plain RoPE
    assert AttentionSpec(positions="none").rope is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.hidden = 64


@pytest.mark.parametrize("changes, message", [
    (dict(n_kv_heads=3), "n_kv_heads (3) must divide n_heads (8)"),
    (dict(head_dim=15, positions="rope"), "rotary positions need an even head_dim, got 15"),
    (dict(yarn_beta_fast=0.5), "yarn_beta_fast (0.5) must be greater than yarn_beta_slow (1.0)"),
    (dict(head_dim=4), "YaRN ramp bounds"),
    (dict(window=8, causal=False), "only for causal"),
    (dict(mask="chunky"), "unknown mask 'chunky'"),
    (dict(mask="window8", window=8), "not both"),
])
def test_a_rule_says_the_same_from_python_and_from_a_suite(changes, message):
    with pytest.raises(ValueError) as from_python:
        AttentionSpec(**{**SMALL, **changes})
    assert message in str(from_python.value)
    with pytest.raises(ValidationError) as from_suite:
        AttentionParams(**{**AXES, **SMALL, **changes})
    assert str(from_python.value) in from_suite.value.errors()[0]["msg"]


@pytest.mark.parametrize("changes, message", [
    (dict(hidden=0), "hidden must be > 0, got 0"),
    (dict(rope_theta=1.0), "rope_theta must be > 1.0"),
    (dict(attn_dropout=1.0), "attn_dropout must be < 1.0"),
    (dict(norm="batchnorm"), "norm must be one of ('rmsnorm', 'layernorm', 'none'), got 'batchnorm'"),
    (dict(sinks="yes"), "sinks must be bool, got 'yes'"),
    (dict(n_heads=8.0), "n_heads must be int, got 8.0"),
])
def test_types_and_bounds_are_checked_when_the_spec_is_built(changes, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        AttentionSpec(**{**SMALL, **changes})


def test_a_mask_name_is_stored_in_its_canonical_spelling():
    spec = AttentionSpec(**SMALL, mask="and( chunk32 , window8 )")
    assert spec.mask == "and(chunk32,window8)" and spec.layer_mask.name == spec.mask


def test_the_params_model_is_the_run_axes_then_the_spec_fields():
    spec_fields = [f.name for f in dataclasses.fields(AttentionSpec) if f.name != "attn_dropout"]
    assert list(AttentionParams.model_fields) == list(AXES) + spec_fields
    window = AttentionParams.model_fields["window"]
    assert window.description == dataclasses.fields(AttentionSpec)[4].metadata["doc"]
    with pytest.raises(ValidationError) as err:
        AttentionParams(**{**AXES, **SMALL, "window": 0})
    assert err.value.errors()[0]["loc"] == ("window",) and "greater than 0" in err.value.errors()[0]["msg"]
    p = AttentionParams(**{**AXES, **SMALL, "window": 8, "mask": None})
    assert p.spec == AttentionSpec(**SMALL, window=8)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_produce_the_specs_the_family_runs(preset):
    cfg = get_preset(preset)
    expected = dataclasses.replace(cfg.attention_spec(0), window=None, attn_dropout=0.0)
    assert AttentionParams(**defaults(cfg)).spec == expected
    assert Attention.from_config(cfg, 1, device="meta").spec == cfg.attention_spec(1)
    if cfg.window is not None:
        assert cfg.attention_spec(0).window == cfg.window and cfg.attention_spec(1).window is None
