"""The small layers' specs (NormSpec, ActivationSpec, PositionsSpec): validated when built from Python, the
families' params models generated from them (run axes first, then the spec's fields), presets producing them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ossbench.layers.activation import Activation
from ossbench.layers.activation_spec import ActivationSpec
from ossbench.layers.config import get_preset
from ossbench.layers.norm import Norm
from ossbench.layers.norm_spec import NormSpec
from ossbench.layers.positions_spec import PositionsSpec
from ossbench.layers.spec import SpecError
from ossbench.workloads import get_family


@pytest.mark.parametrize("make, message", [
    (lambda: NormSpec(norm="batchnorm"), "norm must be one of"),
    (lambda: NormSpec(hidden=0), "hidden must be > 0"),
    (lambda: ActivationSpec(activation="relu"), "activation must be one of"),
    (lambda: ActivationSpec(swiglu_limit=0.0), "swiglu_limit must be > 0"),
    (lambda: PositionsSpec(positions="rope", head_dim=63), "even head_dim"),
    (lambda: PositionsSpec(positions="yarn", yarn_factor=1.0), "yarn_factor > 1"),
    (lambda: PositionsSpec(yarn_beta_fast=0.5), "greater than yarn_beta_slow"),
    (lambda: PositionsSpec(head_dim=4), "YaRN ramp bounds"),
])
def test_a_spec_built_from_python_is_validated(make, message):
    with pytest.raises(SpecError, match=message):
        make()


def test_learned_positions_need_no_even_head_dim():
    assert PositionsSpec(positions="learned", head_dim=63).head_dim == 63


@pytest.mark.parametrize("family, spec_cls, axes", [
    ("norm", NormSpec, ["mode", "backend", "tokens"]),
    ("activation", ActivationSpec, ["mode", "backend", "tokens", "width"]),
    ("positions", PositionsSpec, ["mode", "backend", "batch", "seq_len", "kv_len", "n_heads", "n_kv_heads"]),
])
def test_the_params_model_is_the_run_axes_then_the_spec_fields(family, spec_cls, axes):
    fields = list(get_family(family).params_model.model_fields)
    spec_fields = [f.name for f in dataclasses.fields(spec_cls)]
    assert fields[:len(axes)] == axes
    assert fields[len(axes):len(axes) + len(spec_fields)] == spec_fields


@pytest.mark.parametrize("preset", ["gpt-oss-20b", "gpt2-small"])
def test_presets_produce_the_specs_the_families_default_to(preset):
    cfg = get_preset(preset)
    for family, spec in (("norm", cfg.norm_spec()), ("activation", cfg.activation_spec()),
                         ("positions", cfg.positions_spec())):
        p = get_family(family).validate(get_family(family).flat_defaults(cfg))
        assert p.spec == spec
    assert (cfg.norm_spec().norm, cfg.positions_spec().positions) == (
        ("rmsnorm", "yarn") if preset.startswith("gpt-oss") else ("layernorm", "learned"))


def test_the_modules_take_their_spec_whole():
    norm = Norm(NormSpec("layernorm", 8, 1e-6), dtype=torch.float32)
    assert (norm.kind, norm.dim, norm.eps, norm.weight.shape) == ("layernorm", 8, 1e-6, (8,))
    act = Activation(ActivationSpec("swiglu", swiglu_limit=1.0))
    x = torch.full((1, 2), 5.0)  # gate and linear both past the limit: clamped to 1 each
    assert act(x).item() == pytest.approx(1.0 * torch.sigmoid(torch.tensor(1.702)).item() * 2.0)
