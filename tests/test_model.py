"""The model family: a reduced gpt-oss model's stored bytes and KV caches against `layers/storage.py` and
`ossbench fit` (exact), decode against prefill in float64, the per-block numerics check (and that it can
fail), the cost model against FlopCounterMode, and the params' rules."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch.utils.flop_counter import FlopCounterMode

from ossbench.errors import SkipCase
from ossbench.fit import memory_plan
from ossbench.layers.config import get_preset
from ossbench.layers.model import Model
from ossbench.layers.storage import weight_bytes
from ossbench.workloads import get_family
from ossbench.workloads.attention import kv_cache_bytes

FAMILY = get_family("model")
TOY = dict(hidden=64, n_layers=4, vocab=256, n_heads=4, n_kv_heads=2, head_dim=16, window=8, n_experts=8, top_k=2,
           intermediate=64)
KIND = {"unembedding": "unembedding", "embedding": "embedding", "norm.scale": "norms", "gate.": "router",
        "mlp1_bias": "expert_biases", "mlp2_bias": "expert_biases", ".blocks": "expert_blocks",
        ".scales": "expert_scales", "mlp1_weight": "expert_weights", "mlp2_weight": "expert_weights",
        "attn.": "attention"}


def toy(**changes):
    return get_preset("gpt-oss-20b", **{**TOY, **changes})


def params(**changes):
    flat = {**FAMILY.flat_defaults(get_preset("gpt-oss-20b")), **TOY, "batch": 2, "seq_len": 24, "kv_len": 24,
            **changes}
    return FAMILY.validate(flat)


def kind_of(name: str) -> str:
    return next(kind for key, kind in KIND.items() if key in name)


@pytest.mark.parametrize("experts", ["mxfp4", "dtype"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layers", [None, 3])
def test_stored_bytes_are_the_storage_plan(experts, dtype, layers):
    cfg = toy()
    model = Model(cfg, layers=layers, experts=experts, dtype=dtype, generator=torch.Generator().manual_seed(0))
    by_kind: dict[str, int] = {}
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0) + t.numel() * t.element_size()
    plan = weight_bytes(cfg, experts, dtype.itemsize, layers)
    assert {k: v for k, v in plan.items() if v and k != "total"} == by_kind
    assert plan["total"] == model.stored_bytes()
    fit = memory_plan(cfg, experts, 100, 3, layers=layers, dtype_bytes=dtype.itemsize)
    assert fit.weights["total"] == model.stored_bytes()
    if experts == "mxfp4":  # never a float copy of the experts
        assert not any("mlp1_weight" in n or "mlp2_weight" in n for n, _ in model.named_parameters())


def test_case_plan_is_what_the_case_holds():
    from ossbench.fit import case_plan

    for mode in ("prefill", "decode"):
        p = params(mode=mode, layers=3)
        w = FAMILY.build(p, "cpu", torch.float32)
        plan = case_plan(p, dtype_bytes=4)
        assert plan.weights["total"] + plan.kv_cache == w.persistent_bytes
        assert plan.kv_cache == w.measured["kv_cache_bytes"]
        assert plan.activations["total"] == w.cost.extra["activation_bytes_estimate"]


@pytest.mark.parametrize("window", [8, None])
@pytest.mark.parametrize("tokens", [5, 100])
def test_kv_caches_are_the_plan(window, tokens):
    cfg = toy(window=window)
    model = Model(cfg, generator=torch.Generator().manual_seed(0))
    caches = model.new_caches(3, tokens, dtype=torch.bfloat16)
    allocated = sum(c.nbytes for c in caches)
    assert allocated == kv_cache_bytes(cfg, tokens, batch=3) == memory_plan(cfg, "mxfp4", tokens, 3).kv_cache
    # windowed layers (0, 2) keep min(tokens, 8) slots, full ones every token
    assert [c.capacity for c in caches] == ([min(tokens, 8), tokens] * 2 if window else [tokens] * 4)


def test_layers_alternate_window_and_full():
    model = Model(toy(), generator=torch.Generator().manual_seed(0))
    assert [b.attn.window for b in model.block] == [8, None, 8, None]
    assert all(b.attn.has_sinks for b in model.block)


@pytest.mark.parametrize("experts", ["mxfp4", "dtype"])
def test_decode_continues_the_prefill(experts):
    """float64: prefill S tokens into the caches, decode token S: its logits equal a prefill of S + 1."""
    cfg, S = toy(), 20
    model = Model(cfg, experts=experts, moe_backend="loop", dtype=torch.float64,
                  generator=torch.Generator().manual_seed(0)).eval()
    tokens = torch.randint(cfg.vocab, (2, S + 1), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        caches = model.new_caches(2, S + 1)
        model(tokens[:, :S], caches)
        step = model(tokens[:, S:], caches, start_pos=S)
        whole = model(tokens)
    torch.testing.assert_close(step, whole, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["prefill", "decode"])
@pytest.mark.parametrize("experts", ["mxfp4", "dtype"])
def test_two_layer_toy_matches_float64_block_by_block(mode, experts):
    p = params(mode=mode, experts=experts, n_layers=2)
    w = FAMILY.build(p, "cpu", torch.float32)
    check = w.check()
    assert check.ok, check.reference
    assert "block 0" in check.reference and "block 1" in check.reference and "head" in check.reference
    assert w.info["checked_layers"] == [0, 1] and len(w.info["tokens_per_expert"]) == 2
    assert w.fn().shape == (2, 1, TOY["vocab"])
    assert w.measured["kv_cache_bytes"] == w.cost.extra["kv_cache_bytes"]
    assert w.measured["weight_bytes"] == w.cost.extra["weights_stored_bytes"]


def test_check_catches_a_wrong_block(monkeypatch):
    from ossbench.layers.attention import Attention

    w = FAMILY.build(params(mode="prefill", n_layers=2), "cpu", torch.float32)
    right = Attention._eager
    monkeypatch.setattr(Attention, "_eager", lambda self, q, k, v, mask: 1.05 * right(self, q, k, v, mask))
    check = w.check()  # the eager backend 5% off: its float64 reference is not
    assert not check.ok and check.max_rel_err > check.tolerance


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_decode_flops_match_the_counter():
    """Decode: eager attention computes exactly the kept pairs, the loop MoE only the chosen experts."""
    p = params(mode="decode", moe_backend="loop")
    w = FAMILY.build(p, "cpu", torch.float32)
    assert counted(w.fn) == pytest.approx(w.cost.extra["matmul_flops"], rel=0.01)


def test_decode_bytes_are_the_speed_of_light_parts():
    cost = {e: FAMILY.build(params(mode="decode", experts=e), "cpu", torch.float32).cost for e in ("mxfp4", "dtype")}
    for c in cost.values():
        parts = (c.extra["attention_weight_bytes"] + c.extra["kv_read_bytes"] + c.extra["expert_bytes_touched"]
                 + c.extra["unembedding_bytes"])
        assert parts <= c.bytes <= 1.1 * parts  # the rest: router, norms, a few activations
    assert cost["mxfp4"].extra["expert_bytes_touched"] < 0.25 * cost["dtype"].extra["expert_bytes_touched"]
    assert cost["mxfp4"].extra["experts_touched"] == cost["dtype"].extra["experts_touched"]


def test_windows_halve_the_kv_read_at_long_context():
    windowed = FAMILY.build(params(mode="decode", kv_len=200, batch=1), "cpu", torch.float32).cost.extra
    full = FAMILY.build(params(mode="decode", kv_len=200, batch=1, window=None), "cpu", torch.float32).cost.extra
    assert 0.5 < windowed["kv_read_bytes"] / full["kv_read_bytes"] < 0.55


@pytest.mark.parametrize("changes, text", [
    ({"layers": 5}, "cannot exceed n_layers"),
    ({"mode": "prefill", "cuda_graph": True}, "cuda_graph"),
    ({"n_kv_heads": 3}, "n_kv_heads"),
    ({"top_k": 9}, "top_k"),
    ({"hidden": 0}, "greater than 0"),
    ({"window": 0}, "greater than 0"),
])
def test_params_rules(changes, text):
    with pytest.raises(ValidationError, match=text):
        params(**changes)


def test_cuda_graph_needs_cuda():
    with pytest.raises(SkipCase, match="CUDA"):
        FAMILY.build(params(mode="decode", cuda_graph=True), "cpu", torch.float32)


def test_a_case_beyond_free_memory_is_skipped_with_the_plan(monkeypatch):
    import ossbench.workloads.model as model_workload
    monkeypatch.setattr(model_workload, "available_bytes", lambda device: 10_000)
    with pytest.raises(SkipCase, match="ossbench fit"):
        FAMILY.build(params(mode="decode"), "cpu", torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("experts", ["dtype", "mxfp4"])
def test_cuda_graph_decode_replays_the_step(experts):
    p = params(mode="decode", cuda_graph=True, experts=experts, attn_backend="eager")
    try:
        w = FAMILY.build(p, "cuda", torch.bfloat16)
    except SkipCase as e:  # a path that syncs with the host cannot be captured: said so
        assert "CUDA graph" in str(e)
        return
    assert w.check().ok
    w.fn()
    torch.cuda.synchronize()


@pytest.mark.gpu
def test_planned_memory_against_the_allocator():
    """On a GPU: what the built case holds covers the planned weights + caches (exact for those; the rest is
    its inputs), and the step's transient peak stays within the plan's activation estimate + 20%."""
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    p = params(mode="decode", attn_backend="flex", n_layers=4, batch=8, kv_len=512)
    w = FAMILY.build(p, "cuda", torch.bfloat16)
    w.fn()
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - base
    plan = memory_plan(p.config, p.experts, 513, 8, dtype_bytes=2)
    assert plan.weights["total"] + plan.kv_cache <= held <= plan.weights["total"] + plan.kv_cache + (1 << 20)
    torch.cuda.reset_peak_memory_stats()
    w.fn()
    torch.cuda.synchronize()
    transient = torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()
    assert transient <= 1.2 * plan.activations["total"] + (8 << 20)


def test_a_model_suite_runs_end_to_end(tmp_path):
    from pathlib import Path

    from ossbench.report import render_report
    from ossbench.runner import plan_run, run_plan
    from ossbench.suite import load_suite

    suite = load_suite(Path(__file__).parent / "suites" / "tiny_model.yaml")
    result = run_plan(plan_run(suite, device="cpu", out_dir=tmp_path))
    assert [c.status for c in result.cases] == ["ok"] * 4, [c.error for c in result.cases]
    for c in result.cases:
        assert c.numerics.ok and "block 0" in c.numerics.reference
        assert c.cost_extra["stored_experts_bytes"] > 0 and c.derived.tokens_per_s > 0
        assert c.memory.kv_cache_measured_bytes == c.cost_extra["kv_cache_bytes"]
    assert "Memory of the whole model, decode" in render_report(result)
