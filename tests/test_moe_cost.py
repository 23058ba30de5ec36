"""MoE and FFN cost models: FLOPs against torch's FlopCounterMode, bytes from the routing, validation."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch.utils.flop_counter import FlopCounterMode

from ossbench.layers.config import get_preset
from ossbench.workloads import get_family
from ossbench.layers.ffn import DenseFFN
from ossbench.layers.ffn_spec import FFNSpec
from ossbench.workloads.moe import MoEParams, make_moe

MOE = get_family("moe")
SMALL = {"hidden": 64, "intermediate": 32, "n_experts": 8, "top_k": 2}


def params(**over) -> MoEParams:
    return MoEParams.model_validate({**MOE.defaults(get_preset("gpt-oss-20b")), **SMALL, **over})


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("backend", ["loop", "gather"])
@pytest.mark.parametrize("mode,tokens", [("prefill", 48), ("decode", 3)])
def test_moe_matmul_flops_match_flop_counter(backend, mode, tokens):
    w = MOE.build(params(backend=backend, mode=mode, tokens=tokens), "cpu", torch.float32)
    measured = counted_flops(w.fn)
    # the counter sees the matmuls only: router, both expert projections and the weighted combine
    assert measured == pytest.approx(w.cost.extra["matmul_flops"], rel=0.01)
    assert w.cost.flops == pytest.approx(w.cost.extra["matmul_flops"] + w.cost.extra["activation_flops"])


@pytest.mark.parametrize("backend", ["loop", "gather"])
def test_moe_train_flops_match_flop_counter(backend):
    # FlopCounterMode's module tracker cannot follow autograd.grad (the train fn), so the same forward +
    # backward, with gradients for the input and every parameter, runs through .backward() here.
    p = params(backend=backend, mode="train", tokens=24)
    w = MOE.build(p, "cpu", torch.float32)
    module = make_moe(p, "cpu", torch.float32, torch.Generator().manual_seed(0))
    x = torch.randn(p.tokens, p.hidden, requires_grad=True)
    dy = torch.randn(p.tokens, p.hidden)
    assert counted_flops(lambda: module(x).backward(dy)) == pytest.approx(w.cost.extra["matmul_flops"], rel=0.01)
    forward = MOE.build(params(backend=backend, mode="prefill", tokens=24), "cpu", torch.float32)
    assert w.cost.flops == pytest.approx(3 * forward.cost.flops)


@pytest.mark.parametrize("dense", ["active", "total"])
@pytest.mark.parametrize("mode", ["prefill", "train"])
def test_dense_matmul_flops_match_flop_counter(dense, mode):
    w = MOE.build(params(dense=dense, mode=mode, tokens=16), "cpu", torch.float32)
    if mode == "prefill":
        assert counted_flops(w.fn) == pytest.approx(w.cost.extra["matmul_flops"], rel=0.01)
        return
    module = DenseFFN(FFNSpec(64, w.info["dense_intermediate"], "swiglu", norm="rmsnorm"), residual=True)
    x = torch.randn(16, 64, requires_grad=True)
    dy = torch.randn(16, 64)
    assert counted_flops(lambda: module(x).backward(dy)) == pytest.approx(w.cost.extra["matmul_flops"], rel=0.01)


def test_ffn_family_flops_match_flop_counter():
    ffn = get_family("ffn")
    for activation in ("gelu_tanh", "swiglu"):
        p = ffn.params_model.model_validate({**ffn.defaults(get_preset("gpt2-small")), "hidden": 48,
                                             "intermediate": 96, "activation": activation, "tokens": 10})
        w = ffn.build(p, "cpu", torch.float32)
        assert counted_flops(w.fn) == pytest.approx(w.cost.extra["matmul_flops"], rel=0.01)


def test_decode_bytes_follow_the_experts_touched():
    one = MOE.build(params(mode="decode", tokens=1), "cpu", torch.float32)
    many = MOE.build(params(mode="prefill", tokens=256), "cpu", torch.float32)
    assert one.cost.extra["experts_touched"] == 2  # one token, top-2
    assert many.cost.extra["experts_touched"] == 8  # 512 slots reach every expert
    per_expert = one.cost.extra["expert_bytes_touched"] / 2
    assert many.cost.extra["expert_bytes_touched"] == pytest.approx(8 * per_expert)
    assert sum(1 for n in one.info["tokens_per_expert"] if n) == 2
    # FLOPs follow the tokens, not the experts touched
    assert many.cost.extra["expert_flops"] == pytest.approx(256 * one.cost.extra["expert_flops"])


def test_mxfp4_moves_about_a_quarter_of_the_bf16_expert_bytes():
    bf16 = MOE.build(params(mode="decode", tokens=4), "cpu", torch.bfloat16)
    fp4 = MOE.build(params(mode="decode", tokens=4, weights="mxfp4"), "cpu", torch.bfloat16)
    assert bf16.info["tokens_per_expert"] == fp4.info["tokens_per_expert"]  # same routing
    ratio = fp4.cost.extra["expert_bytes_touched"] / bf16.cost.extra["expert_bytes_touched"]
    assert 0.25 < ratio < 0.30  # 4.25 of 16 bits for the weights, biases stay bf16
    assert fp4.cost.flops == bf16.cost.flops


def test_parameter_counts_of_the_case():
    w = MOE.build(params(), "cpu", torch.float32)
    H, I, E, k = 64, 32, 8, 2
    expert = 3 * H * I + 2 * I + H
    assert w.cost.extra["params_total"] == H + H * E + E + E * expert
    assert w.cost.extra["params_active"] == H + H * E + E + k * expert


def test_grouped_backend_records_its_kernel():
    auto = MOE.build(params(backend="grouped"), "cpu", torch.float32)
    assert auto.info["grouped_impl"] in ("grouped_mm", "padded_bmm")
    forced = MOE.build(params(backend="grouped", grouped_impl="padded_bmm"), "cpu", torch.float32)
    assert forced.info["grouped_impl"] == "padded_bmm"


@pytest.mark.parametrize("over,field,fragment", [
    ({"top_k": 9}, "top_k", "cannot exceed n_experts (8)"),
    ({"top_k": 0}, "top_k", "greater than 0"),
    ({"n_experts": 0}, "n_experts", "greater than 0"),
    ({"tokens": 0}, "tokens", "greater than 0"),
    ({"skew": -0.5}, "skew", "greater than or equal to 0"),
    ({"router_bias": False, "skew": 1.0}, "skew", "router_bias"),
    ({"weights": "mxfp4", "hidden": 48}, "weights", "multiple of 32"),
    ({"weights": "mxfp4", "mode": "train"}, "weights", "train"),
    ({"backend": "cublas"}, "backend", "gather"),
    ({"dense": "half"}, "dense", "active"),
])
def test_impossible_values_are_rejected_at_the_field(over, field, fragment):
    with pytest.raises(ValidationError) as info:
        params(**over)
    err = info.value.errors()[0]
    assert err["loc"][0] == field and fragment in err["msg"], err


def test_tokens_default_by_mode():
    assert params(mode="prefill").tokens == 4096
    assert params(mode="decode").tokens == 1
    assert params(mode="decode", tokens=64).tokens == 64
    p = params(mode="decode")
    assert MoEParams.model_validate(p.model_dump()) == p  # recorded parameters re-validate unchanged
