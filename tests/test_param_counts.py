"""Whole-model parameter counts reproduce the published gpt-oss (and GPT-2) figures; layer counts match
the modules' own parameters."""

from __future__ import annotations

import pytest
import torch

from ossbench.layers.config import get_preset
from ossbench.layers.ffn import DenseFFN
from ossbench.layers.moe import MoE
from ossbench.layers.ffn_spec import FFNSpec
from ossbench.layers.moe_spec import MoESpec
from ossbench.layers.params import count_params, ffn_params, moe_params


@pytest.mark.parametrize("preset,total,active,expert_share", [
    ("gpt-oss-20b", 20.91e9, 3.61e9, 0.914),
    ("gpt-oss-120b", 116.83e9, 5.13e9, 0.982),
])
def test_gpt_oss_published_counts(preset, total, active, expert_share):
    c = count_params(get_preset(preset))
    assert c["total"] == pytest.approx(total, rel=1e-3)
    assert c["active"] == pytest.approx(active, rel=1e-3)
    assert c["experts"] / c["total"] == pytest.approx(expert_share, abs=5e-4)
    # the convention: active leaves out the embedding lookup table and keeps the unembedding
    parts = c["embedding"] + c["unembedding"] + c["attention"] + c["mlp"] + c["final_norm"]
    assert parts == c["total"]


def test_gpt2_small_count_and_tied_unembedding():
    c = count_params(get_preset("gpt2-small"))
    assert c["total"] == 124_439_808  # the well-known GPT-2 small count, position embeddings included
    assert c["unembedding"] == 0  # tied: the embedding matrix serves as the unembedding
    assert c["active"] == c["total"] - c["positions"]  # lookups out; the tied matrix counts once


def test_layer_counts_match_the_modules():
    moe = MoE(MoESpec(64, 32, 8, 2))
    n_moe = sum(p.numel() for p in moe.parameters())
    assert n_moe == moe_params(64, 32, 8, 2)["total"] + 64  # + the norm scale
    assert sum(p.numel() for p in MoE(MoESpec(64, 32, 8, 2, expert_bias=False, router_bias=False)).parameters()) == \
        moe_params(64, 32, 8, 2, bias=False, router_bias=False)["total"] + 64
    for activation in ("swiglu", "gelu_tanh"):
        for bias in (True, False):
            ffn = DenseFFN(FFNSpec(48, 80, activation, bias=bias))
            assert sum(p.numel() for p in ffn.parameters()) == ffn_params(48, 80, activation, bias)


def test_attention_count_matches_the_attention_module():
    from ossbench.layers.attention import Attention
    from ossbench.layers.params import attention_params

    cfg = get_preset("gpt-oss-20b", hidden=96, n_heads=4, n_kv_heads=2, head_dim=16)
    module = Attention.from_config(cfg)
    assert sum(p.numel() for p in module.parameters()) == attention_params(cfg)
    gpt2 = get_preset("gpt2-small", hidden=96, n_heads=4, n_kv_heads=4, head_dim=24)
    assert sum(p.numel() for p in Attention.from_config(gpt2).parameters()) == attention_params(gpt2)


def test_mxfp4_module_stores_4_25_bits_per_expert_weight():
    moe = MoE(MoESpec(64, 32, 8, 2, weights="mxfp4"), dtype=torch.bfloat16)
    weights = 8 * 3 * 64 * 32
    stored = moe.mlp1_weight.nbytes + moe.mlp2_weight.nbytes
    assert stored == weights * 4.25 / 8


def test_mlp_counts_match_modules_built_from_presets():
    from ossbench.layers.params import mlp_params

    moe_cfg = get_preset("gpt-oss-120b", hidden=64, intermediate=32, n_experts=6, top_k=2)
    moe = MoE.from_config(moe_cfg)
    assert (moe.n_experts, moe.top_k, moe.swiglu_limit) == (6, 2, 7.0)
    assert sum(p.numel() for p in moe.parameters()) == mlp_params(moe_cfg)["total"]
    gpt2 = get_preset("gpt2-small", hidden=48, n_heads=4, n_kv_heads=4, head_dim=12)
    ffn = DenseFFN.from_config(gpt2, norm="layernorm")  # GPT-2: 4 x hidden, GELU tanh, ln_2 before it
    assert (ffn.intermediate, ffn.activation) == (192, "gelu_tanh")
    assert sum(p.numel() for p in ffn.parameters()) == mlp_params(gpt2)["total"]
    with pytest.raises(ValueError, match="dense FFN"):
        MoE.from_config(gpt2)
