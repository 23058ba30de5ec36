"""The attention family's cost model, KV-cache sizes, parameter validation and workload checks.

FLOPs are compared with torch's FlopCounterMode on the eager backend, where the counter sees exactly the
matmuls that run. Eager computes every score and masks afterwards, so for causal prefill the counter's
figure is the dense S^2 count; there the test compares against the model evaluated at S^2 pairs and
checks the model's pair count against the mask separately.
"""

import pytest
import torch
from pydantic import ValidationError
from torch.utils.flop_counter import FlopCounterMode

from ossbench.errors import SkipCase
from ossbench.layers.attention import Attention
from ossbench.layers.config import PRESETS, get_preset
from ossbench.layers.masks import layer_mask
from ossbench.workloads import attention as wl
from ossbench.workloads.attention import (FAMILY, AttentionParams, attention_cost, attention_pairs, defaults,
                                          fill_decode_cache, forward_flops, kv_cache_bytes, layer_kv_cache_bytes,
                                          make_module)

GPT_OSS = defaults(get_preset("gpt-oss-20b"))
# Same shapes as tests/test_attention_numerics.py, so compiled flex kernels are shared within a run.
SMALL = dict(batch=2, hidden=64, n_heads=8, n_kv_heads=2, head_dim=16, seq_len=40, kv_len=39)


def params(**overrides) -> AttentionParams:
    return AttentionParams(**{**GPT_OSS, **SMALL, **overrides})


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# --- FLOPs
def test_flops_match_the_counter_without_masking():
    p = params(mode="prefill", backend="eager", causal=False)
    w = FAMILY.build(p, "cpu", torch.float32)
    assert counted_flops(w.fn) == pytest.approx(w.cost.flops, rel=1e-6)
    assert attention_pairs(p) == p.seq_len ** 2


def test_train_flops_are_three_forwards():
    # FlopCounterMode's module tracker cannot follow autograd.grad (the train fn), so the same
    # forward + backward, with gradients for the input and every parameter, runs through .backward().
    p = params(mode="train", backend="eager", causal=False)
    g = torch.Generator().manual_seed(0)
    module = make_module(p, "cpu", torch.float32, g)
    x = torch.randn(p.batch, p.seq_len, p.hidden, requires_grad=True)
    dy = torch.randn(p.batch, p.seq_len, p.hidden)
    assert counted_flops(lambda: module(x).backward(dy)) == pytest.approx(attention_cost(p, 4).flops, rel=1e-6)
    assert attention_cost(p, 4).flops == 3 * sum(forward_flops(p, p.seq_len ** 2))


@pytest.mark.parametrize("window", [None, 8])
def test_causal_pairs_are_the_masked_ones(window):
    p = params(mode="prefill", backend="eager", window=window)
    w = FAMILY.build(p, "cpu", torch.float32)
    # eager computes the dense S x S scores and masks them: the counter sees S^2 pairs ...
    assert counted_flops(w.fn) == pytest.approx(sum(forward_flops(p, p.seq_len ** 2)), rel=1e-6)
    # ... while the model counts only the pairs a query may see, as the mask has them.
    S, W = p.seq_len, window or p.seq_len
    visible = sum(1 for i in range(S) for j in range(S) if j <= i and i - j < W)
    assert attention_pairs(p) == visible
    proj, attn = forward_flops(p, visible)
    assert w.cost.flops == proj + attn
    assert w.cost.extra["attn_pairs"] == p.batch * visible


@pytest.mark.parametrize("window", [None, 8])
def test_decode_flops_match_the_counter(window):
    p = params(mode="decode", backend="eager", window=window)
    w = FAMILY.build(p, "cpu", torch.float32)
    assert counted_flops(w.fn) == pytest.approx(w.cost.flops, rel=1e-6)
    assert attention_pairs(p) == (window or p.kv_len + 1)


def test_decode_flops_at_gpt_oss_shapes():
    p = AttentionParams(**{**GPT_OSS, "mode": "decode", "backend": "eager", "kv_len": 1024, "window": 128})
    w = FAMILY.build(p, "cpu", torch.float32)
    assert counted_flops(w.fn) == pytest.approx(w.cost.flops, rel=1e-6)
    # projections dominate one decoded token: 2 * (2880*5120 + 4096*2880) per token
    assert forward_flops(p, 128)[0] == 2 * (2880 * 5120 + 4096 * 2880)


def test_window_flop_ratio_at_long_context():
    full = params(mode="prefill", hidden=2880, n_heads=64, n_kv_heads=8, head_dim=64, batch=1, seq_len=32768)
    windowed = full.model_copy(update={"window": 128})
    assert attention_pairs(full) / attention_pairs(windowed) == pytest.approx(32768 * 32769 / 2 / (
        128 * 129 / 2 + (32768 - 128) * 128))
    assert attention_cost(full, 2).extra["attn_flops"] / attention_cost(windowed, 2).extra["attn_flops"] > 100


# --- bytes and KV cache
def test_kv_cache_of_the_brief():
    cfg = get_preset("gpt-oss-20b")
    assert layer_kv_cache_bytes(1, 8, 64) == 2048  # 2 KiB per token per layer in bf16
    assert round(kv_cache_bytes(cfg, 131072) / 1e9, 2) == 3.22
    assert round(kv_cache_bytes(cfg, 131072, windows=False) / 1e9, 2) == 6.44
    assert round(kv_cache_bytes(cfg, 131072, windows=False, mha=True) / 1e9, 1) == 51.5


def test_kv_cache_formula_matches_the_module_caches():
    cfg = get_preset("gpt-oss-20b")
    caches = [Attention.from_config(cfg, i, device="meta").new_cache(1, 131072, dtype=torch.bfloat16)
              for i in range(cfg.n_layers)]
    assert sum(c.nbytes for c in caches) == kv_cache_bytes(cfg, 131072)


@pytest.mark.parametrize("window", [None, 128])
def test_decode_workload_cache_bytes(window):
    measured = {}
    for kv_len in (1024, 4096):
        p = AttentionParams(**{**GPT_OSS, "mode": "decode", "kv_len": kv_len, "window": window})
        g = torch.Generator().manual_seed(0)
        cache = fill_decode_cache(make_module(p, "cpu", torch.bfloat16, g), p, g, "cpu", torch.bfloat16)
        cost = attention_cost(p, 2)
        assert cache.nbytes == cost.extra["kv_cache_bytes"] == layer_kv_cache_bytes(
            kv_len + 1, 8, 64, window)
        measured[kv_len] = cache.nbytes
    if window:  # bounded by the window, whatever the context
        assert measured[1024] == measured[4096] == 128 * 2048
    else:
        assert measured[4096] == 4097 * 2048


def test_minimum_bytes():
    p = params(mode="decode", backend="eager", window=8)
    cost = attention_cost(p, 4)
    weights = wl.param_count(p) * 4
    assert cost.bytes == weights + 2 * p.batch * p.hidden * 4 + p.batch * 8 * 2 * 2 * 16 * 4
    assert cost.tokens == p.batch
    train = attention_cost(params(mode="train"), 2)
    assert train.tokens == 2 * 40 and train.flops == 3 * attention_cost(params(), 2).flops


# --- parameters
def test_defaults_validate_for_every_preset():
    for name in PRESETS:
        p = AttentionParams(**defaults(get_preset(name)))
        assert p.window is None and p.mode == "prefill" and p.backend == "flex"
    assert AttentionParams(**GPT_OSS).n_kv_heads == 8
    assert list(AttentionParams.model_fields)[:5] == ["mode", "backend", "batch", "seq_len", "kv_len"]


@pytest.mark.parametrize("mode", ["prefill", "decode", "train"])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_a_window_longer_than_the_case_is_full_attention(backend, mode):
    """seq_len 40 (decode: kv_len 39, so 40 positions): window 40 and window 64 keep every causal pair.
    Such a case runs, passes its float64 check, computes what full attention computes (same weights and
    inputs from the same seed) and costs exactly what full attention costs at that shape."""
    def build(window):
        p = params(mode=mode, backend=backend, window=window, sinks=backend == "eager")  # sdpa has no sinks
        return p, FAMILY.build(p, "cpu", torch.float32, seed=5)

    p_full, full = build(None)
    want = full.fn()
    for window in (40, 64):
        p, w = build(window)
        check = w.check()
        assert check.ok, check
        got = w.fn()
        for a, b in zip(*(x if isinstance(x, tuple) else (x,) for x in (got, want)), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert attention_cost(p, 4) == attention_cost(p_full, 4)
        assert w.cost == full.cost and w.persistent_bytes == full.persistent_bytes


@pytest.mark.parametrize("overrides, field, message", [
    (dict(n_kv_heads=3), "n_kv_heads", "must divide n_heads"),
    (dict(window=8, causal=False), "causal", "only for causal"),
    (dict(mode="decode", causal=False), "causal", "decode"),
    (dict(batch=0), "batch", "greater than 0"),
    (dict(seq_len="40"), "seq_len", "valid integer"),
    (dict(sinks="yes"), "sinks", "valid boolean"),
    (dict(backend="xformers"), "backend", "eager"),
    (dict(head_dim=15, positions="rope"), "positions", "even head_dim"),
    (dict(yarn_beta_fast=0.5), "yarn_beta_fast", "greater than yarn_beta_slow"),
    (dict(head_dim=4), "yarn_original_context", "YaRN ramp"),
    (dict(flash=True), "flash", "Extra inputs"),
])
def test_invalid_params_name_the_field(overrides, field, message):
    with pytest.raises(ValidationError) as err:
        params(**overrides)
    errors = err.value.errors()
    assert errors[0]["loc"] == (field,)
    assert message in errors[0]["msg"]


# --- workloads
@pytest.mark.parametrize("mode", ["prefill", "decode", "train"])
@pytest.mark.parametrize("window", [None, 8])
@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex"])
def test_workload_checks_pass(backend, window, mode):
    # decode reads 8 keys in both cases (full: kv_len 7), so flex reuses one compiled kernel
    p = params(mode=mode, backend=backend, window=window, sinks=backend == "eager",
               kv_len=7 if window is None else 39)
    if backend == "flex" and mode == "train":
        with pytest.raises(SkipCase, match="no backward"):
            FAMILY.build(p, "cpu", torch.float32)
        return
    w = FAMILY.build(p, "cpu", torch.float32)
    check = w.check()
    assert check.ok, check
    assert check.max_rel_err < 1e-5 and check.tolerance == 1e-5
    w.fn()
    assert w.persistent_bytes > 0


def test_bfloat16_check_passes():
    w = FAMILY.build(params(mode="prefill", backend="eager", window=8), "cpu", torch.bfloat16)
    check = w.check()
    assert check.ok and check.tolerance == 2e-2 and check.max_rel_err > 1e-4  # bf16 really rounds


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_unexpressible_sinks_skip_with_a_reason(backend):
    with pytest.raises(SkipCase, match="cannot express attention sinks"):
        FAMILY.build(params(backend=backend, sinks=True), "cpu", torch.float32)


def test_decode_calls_repeat_without_growing_the_cache():
    p = params(mode="decode", backend="sdpa", window=8, sinks=False)
    g = torch.Generator().manual_seed(0)
    module = make_module(p, "cpu", torch.float32, g).requires_grad_(False)
    cache = fill_decode_cache(module, p, g, "cpu", torch.float32)
    x = torch.randn(p.batch, 1, p.hidden)
    first = module(x, cache=cache, start_pos=p.kv_len)
    k_after_first = cache.k.clone()
    second = module(x, cache=cache, start_pos=p.kv_len)
    assert torch.equal(first, second) and torch.equal(cache.k, k_after_first)
    assert cache.capacity == 8


def test_check_catches_a_backend_that_ignores_the_window(monkeypatch):
    p = params(mode="prefill", backend="sdpa", window=8, sinks=False)
    w = FAMILY.build(p, "cpu", torch.float32)
    real = Attention._sdpa
    # the window dropped: plain causal attention instead of the layer's mask
    monkeypatch.setattr(Attention, "_sdpa", lambda self, q, k, v, mask: real(self, q, k, v, layer_mask()))
    check = w.check()
    assert not check.ok and check.max_rel_err > 1e-2


def test_reference_rows_cover_boundaries_at_long_context():
    p = AttentionParams(**{**GPT_OSS, "seq_len": 32768, "window": 128})
    rows = wl.reference_rows(p, seed=0)
    assert {0, 126, 127, 128, 129, 16383, 16384, 32766, 32767} <= set(rows)
    assert len(rows) < 40
    assert wl.reference_rows(params(), seed=0) == list(range(40))  # small: every row
