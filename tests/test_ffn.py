"""Dense FFN: GELU-tanh and clamped SwiGLU against their textbook formulas, and FFN widths matched to an
MoE's active and total parameters."""

from __future__ import annotations

import math

import pytest
import torch

from ossbench.layers.config import get_preset
from ossbench.layers.ffn import DenseFFN, clamped_swiglu, gelu_tanh, matched_ffn_intermediate
from ossbench.layers.ffn_spec import FFNSpec
from ossbench.layers.params import ffn_params, moe_params
from ossbench.workloads import get_family

FFN = get_family("ffn")


def test_gelu_tanh_is_the_gpt2_formula():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    want = torch.tensor([0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
                         for v in x.tolist()], dtype=torch.float64)
    assert torch.allclose(gelu_tanh(x), want, rtol=1e-12, atol=1e-12)


def test_clamped_swiglu_is_gpt_oss_formula_on_interleaved_columns():
    x = torch.linspace(-12, 12, 96, dtype=torch.float64).reshape(2, 48)  # reaches past both clamps
    got = clamped_swiglu(x)
    assert got.shape == (2, 24)
    for r in range(2):
        for j in range(24):
            g, lin = float(x[r, 2 * j]), float(x[r, 2 * j + 1])
            g, lin = min(g, 7.0), min(max(lin, -7.0), 7.0)
            want = g / (1 + math.exp(-1.702 * g)) * (lin + 1)
            assert float(got[r, j]) == pytest.approx(want, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("activation", ["gelu_tanh", "swiglu"])
def test_dense_ffn_block_matches_float64_formula(activation):
    torch.manual_seed(0)
    ffn = DenseFFN(FFNSpec(32, 48, activation, norm="rmsnorm"), residual=True, dtype=torch.float64)
    x = torch.randn(5, 32, dtype=torch.float64) * 3
    t = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * ffn.norm.scale.double()
    h = t @ ffn.fc1.weight.T + ffn.fc1.bias
    a = clamped_swiglu(h) if activation == "swiglu" else gelu_tanh(h)
    # the RMSNorm computes in float32 (as gpt-oss's does), hence float32-level agreement
    assert torch.allclose(ffn(x), x + a @ ffn.fc2.weight.T + ffn.fc2.bias, rtol=1e-6, atol=1e-6)
    plain = DenseFFN(FFNSpec(32, 48, activation), dtype=torch.float64)  # no norm: float64 throughout
    a = clamped_swiglu(x @ plain.fc1.weight.T + plain.fc1.bias) if activation == "swiglu" else \
        gelu_tanh(x @ plain.fc1.weight.T + plain.fc1.bias)
    assert torch.allclose(plain(x), a @ plain.fc2.weight.T + plain.fc2.bias, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("preset", ["gpt-oss-20b", "gpt-oss-120b"])
@pytest.mark.parametrize("match", ["active", "total"])
def test_matched_widths_give_the_moe_parameter_counts(preset, match):
    cfg = get_preset(preset)
    target = moe_params(cfg.hidden, cfg.intermediate, cfg.n_experts, cfg.top_k)[match]
    p = FFN.params_model.model_validate({**FFN.defaults(cfg), "match": match})
    assert p.intermediate % 16 == 0
    per_column = 3 * cfg.hidden + 2
    got = ffn_params(cfg.hidden, p.intermediate, "swiglu")
    assert abs(got - target) <= 8 * per_column  # within half the 16-column rounding step
    assert got == pytest.approx(target, rel=1e-3)
    assert p.intermediate == matched_ffn_intermediate(match, cfg.hidden, cfg.intermediate, cfg.n_experts, cfg.top_k)


def test_gpt_oss_20b_matched_widths_are_about_4_and_32_experts():
    cfg = get_preset("gpt-oss-20b")
    active = matched_ffn_intermediate("active", cfg.hidden, cfg.intermediate, 32, 4)
    total = matched_ffn_intermediate("total", cfg.hidden, cfg.intermediate, 32, 4)
    assert 4 * 2880 <= active < 4 * 2880 + 64  # four experts' width plus the router's share
    assert 32 * 2880 - 64 < total < 32 * 2880 + 64
    gelu = matched_ffn_intermediate("active", cfg.hidden, cfg.intermediate, 32, 4, activation="gelu_tanh")
    assert gelu == pytest.approx(1.5 * active, rel=1e-3)  # no gate half: 2 matrices instead of 3


def test_match_needs_an_moe():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs n_experts"):
        FFN.params_model.model_validate({**FFN.defaults(get_preset("gpt2-small")), "match": "active"})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["prefill", "decode", "train"])
def test_ffn_workload_checks_pass(mode, dtype):
    for activation in ("gelu_tanh", "swiglu"):
        p = FFN.params_model.model_validate({**FFN.defaults(get_preset("gpt2-small")), "hidden": 64,
                                             "intermediate": 128, "activation": activation, "mode": mode,
                                             "tokens": 100 if mode != "decode" else None, "norm": "layernorm"})
        w = FFN.build(p, "cpu", dtype)
        c = w.check()
        assert c.ok, c
        w.fn()
        assert w.cost.tokens == p.tokens and w.cost.bytes > 0 and w.persistent_bytes > 0


def test_broken_ffn_is_caught_by_the_check():
    p = FFN.params_model.model_validate({**FFN.defaults(get_preset("gpt2-small")), "hidden": 32,
                                         "intermediate": 64, "tokens": 8})
    w = FFN.build(p, "cpu", torch.float32)
    assert w.check().ok
    real_act = DenseFFN.act
    try:
        DenseFFN.act = lambda self, h: torch.relu(h)  # a wrong activation must fail the check
        assert not w.check().ok
    finally:
        DenseFFN.act = real_act
