"""MoESpec: one frozen description of gpt-oss's MoE block, read by the layer, the presets and the moe
family's params model (generated from it), with one set of rules and messages for all three."""

import dataclasses

import pytest
from pydantic import ValidationError

from ossbench.layers.config import get_preset
from ossbench.layers.moe import MoE
from ossbench.layers.moe_spec import MoESpec
from ossbench.workloads.moe import MoEParams, defaults

SMALL = dict(hidden=64, intermediate=32, n_experts=8, top_k=2)
AXES = dict(mode="prefill", backend="loop", grouped_impl="auto", tokens=16)
TAIL = dict(skew=0.0, dense="none")


def test_defaults_are_gpt_oss_20b_and_frozen():
    spec = MoESpec()
    assert (spec.hidden, spec.intermediate, spec.n_experts, spec.top_k) == (2880, 2880, 32, 4)
    assert spec == get_preset("gpt-oss-20b").moe_spec()
    assert get_preset("gpt-oss-120b").moe_spec().n_experts == 128
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.top_k = 8
    with pytest.raises(ValueError, match="dense FFN"):
        get_preset("gpt2-small").moe_spec()


@pytest.mark.parametrize("changes, message", [
    (dict(top_k=9), "top_k (9) cannot exceed n_experts (8): a token picks top_k distinct experts"),
    (dict(weights="mxfp4", hidden=48), "hidden (48) must be a multiple of 32"),
])
def test_a_rule_says_the_same_from_python_and_from_a_suite(changes, message):
    with pytest.raises(ValueError) as from_python:
        MoESpec(**{**SMALL, **changes})
    assert message in str(from_python.value)
    with pytest.raises(ValidationError) as from_suite:
        MoEParams(**{**AXES, **SMALL, **TAIL, **changes})
    assert str(from_python.value) in from_suite.value.errors()[0]["msg"]


@pytest.mark.parametrize("changes, message", [
    (dict(n_experts=0), "n_experts must be > 0, got 0"),
    (dict(weights="fp8"), "weights must be one of ('dtype', 'mxfp4'), got 'fp8'"),
    (dict(router_bias=1), "router_bias must be bool, got 1"),
])
def test_types_and_bounds_are_checked_when_the_spec_is_built(changes, message):
    with pytest.raises(ValueError) as err:
        MoESpec(**{**SMALL, **changes})
    assert str(err.value) == message


def test_the_params_model_is_the_axes_the_spec_fields_then_skew_and_dense():
    spec_fields = [f.name for f in dataclasses.fields(MoESpec)]
    assert list(MoEParams.model_fields) == list(AXES) + spec_fields + list(TAIL)
    p = MoEParams(**{**AXES, **SMALL, **TAIL})
    assert p.spec == MoESpec(**SMALL)
    cfg = get_preset("gpt-oss-120b")
    assert MoEParams(**defaults(cfg)).spec == cfg.moe_spec()
    assert MoE.from_config(cfg, device="meta").spec == cfg.moe_spec()


# --- FFNSpec, the dense FFN's spec (the ffn family's params are generated from it the same way)
def test_ffn_spec_defaults_presets_and_params():
    from ossbench.layers.ffn import DenseFFN
    from ossbench.layers.ffn_spec import FFNSpec
    from ossbench.workloads.ffn import FFNParams
    from ossbench.workloads.ffn import defaults as ffn_defaults

    assert FFNSpec() == get_preset("gpt2-small").ffn_spec()  # GPT-2 small's FFN: 768 -> 3072, GELU tanh
    with pytest.raises(ValueError) as err:
        FFNSpec(activation="relu")
    assert str(err.value) == "activation must be one of ('swiglu', 'gelu_tanh'), got 'relu'"
    names = [f.name for f in dataclasses.fields(FFNSpec)]
    assert list(FFNParams.model_fields) == ["mode", "tokens"] + names + ["n_experts", "top_k",
                                                                        "expert_intermediate", "match"]
    cfg = get_preset("gpt-oss-20b")
    assert FFNParams(**ffn_defaults(cfg)).spec == cfg.ffn_spec()
    matched = FFNParams(**{**ffn_defaults(cfg), "match": "active"})
    assert matched.spec.intermediate == matched.intermediate != cfg.intermediate  # the matched width
    ffn = DenseFFN.from_config(get_preset("gpt2-small"), norm="layernorm", device="meta")
    assert ffn.spec.norm == "layernorm" and ffn.norm is not None and not ffn.residual
