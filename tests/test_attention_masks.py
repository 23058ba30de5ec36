"""Attention layers driven by mask objects: decode retention, cache sizes against the cost model, and the
two defects an independent float64 check found (YaRN's default factor; a window dropped by a large cache).

The references are the loop-based float64 block of tests/test_attention_numerics.py and the loop-defined
patterns of tests/test_masks.py; neither uses the package's mask rules.
"""

import pytest
import torch
from pydantic import ValidationError
from test_attention_numerics import (B, HEAD_DIM, HEADS, HIDDEN, REL_TOL, S, WINDOW, YARN, make_block,
                                     ref_inv_freq, reference_for, rel_err)
from test_masks import CASES

from ossbench.errors import SkipCase
from ossbench.layers.attention import Attention, KVCache
from ossbench.layers.attention_spec import AttentionSpec
from ossbench.layers.masks import parse
from ossbench.layers.rope import inv_freq_and_concentration
from ossbench.workloads.attention import (FAMILY, AttentionParams, attention_cost, attention_pairs, defaults,
                                          fill_decode_cache, make_module, param_count)
from ossbench.layers.config import get_preset

N_KV = 2
SMALL = dict(batch=B, hidden=HIDDEN, n_heads=HEADS, n_kv_heads=N_KV, head_dim=HEAD_DIM, seq_len=S, kv_len=S - 1)
_REFS: dict = {}


def masked_reference(name, sinks):
    """Block, input and the loop reference for the mask `name` (shared by the tests of one module run)."""
    key = (name, sinks)
    if key not in _REFS:
        block = make_block(N_KV, None, sinks, mask=parse(name).name)
        x = torch.randn(B, S, HIDDEN, generator=torch.Generator().manual_seed(7))
        _REFS[key] = (block, x, reference_for(block, x, sees=CASES[name][1]))
    return _REFS[key]


def spy_on_keys(block, backend, monkeypatch):
    """Record the key count each call of the backend receives."""
    seen, real = [], getattr(block, f"_{backend}")

    def spy(q, k, v, mask):
        seen.append(k.shape[2])
        return real(q, k, v, mask)

    monkeypatch.setattr(block, f"_{backend}", spy)
    return seen


# --- defect 1: positions="yarn" without a rope spec
def test_yarn_without_a_rope_spec_is_gpt_oss_yarn():
    block = Attention(AttentionSpec(HIDDEN, HEADS, N_KV, HEAD_DIM, positions="yarn", sinks=False), dtype=torch.float32)
    inv_freq, concentration = inv_freq_and_concentration(HEAD_DIM, block.rope.spec)
    ref, ref_conc = ref_inv_freq(HEAD_DIM, **YARN)
    assert torch.allclose(inv_freq, ref, rtol=1e-12, atol=0) and concentration == pytest.approx(ref_conc)
    assert ref_conc > 1.3  # really scaled: 0.1 ln 32 + 1
    # and the whole block agrees with the float64 reference at YaRN factor 32
    weighted = make_block(N_KV, WINDOW, False)
    block = Attention(AttentionSpec(HIDDEN, HEADS, N_KV, HEAD_DIM, window=WINDOW, positions="yarn", sinks=False),
                      dtype=torch.float32).requires_grad_(False)
    block.load_state_dict(weighted.state_dict())
    x = torch.randn(B, S, HIDDEN, generator=torch.Generator().manual_seed(8))
    assert rel_err(block.update(x), reference_for(weighted, x)) < REL_TOL
    plain = Attention(AttentionSpec(HIDDEN, HEADS, N_KV, HEAD_DIM, positions="rope"))
    freq, conc = inv_freq_and_concentration(HEAD_DIM, plain.rope.spec)
    assert torch.allclose(freq, ref_inv_freq(HEAD_DIM, **dict(YARN, factor=1.0))[0]) and conc == 1.0


# --- defect 2: a windowed layer given a cache with more slots than its window
@pytest.mark.parametrize("backend, slots", [("eager", S), ("eager", 12), ("sdpa", S), ("sdpa", 12), ("flex", S)])
def test_window_survives_a_larger_cache(backend, slots, monkeypatch):
    """`slots` S: one slot per position, as a full layer's cache; 12: a ring longer than the window."""
    sinks = backend == "eager"
    block = make_block(N_KV, WINDOW, sinks)
    x = torch.randn(B, S, HIDDEN, generator=torch.Generator().manual_seed(9))
    ref = reference_for(block, x)
    shape = (B, N_KV, slots, HEAD_DIM)  # e.g. a full layer's cache: one slot per position
    cache = KVCache(torch.zeros(shape), torch.zeros(shape))
    block.update(x[:, :30], cache=cache, backend="eager")
    seen = spy_on_keys(block, backend, monkeypatch)
    for pos in range(30, S):
        got = block.update(x[:, pos:pos + 1], cache=cache, start_pos=pos, backend=backend)
        assert rel_err(got[:, 0], ref[:, pos]) < REL_TOL, pos
    assert seen == [WINDOW] * (S - 30)  # the window decides, not the slot count


# --- retention: decode after many steps against the full-recompute reference
@pytest.mark.parametrize("name, backend", [(n, b) for n in ("and(causal,window5)", "or(window3,window9)", "chunk16",
                                                              "and(chunk16,window5)") for b in ("eager", "sdpa")]
                         + [("chunk16", "flex")])
def test_decode_steps_follow_the_mask(name, backend, monkeypatch):
    """Decode positions 25..39 after a 25-token prefill: chunk16 crosses its chunk boundary at 32."""
    sinks = backend == "eager"
    block, x, ref = masked_reference(name, sinks)
    cache = block.new_cache(B, S)
    assert cache.capacity == block.mask.cache_slots(S)
    block.update(x[:, :25], cache=cache, backend="eager")
    seen = spy_on_keys(block, backend, monkeypatch)
    for pos in range(25, S):
        got = block.update(x[:, pos:pos + 1], cache=cache, start_pos=pos, backend=backend)
        assert rel_err(got[:, 0], ref[:, pos]) < REL_TOL, pos
    assert seen == [len(block.mask.keep(p)) for p in range(25, S)]


@pytest.mark.parametrize("name", ["and(causal,window5)", "or(window3,window9)", "chunk16", "and(chunk16,window5)"])
def test_prefill_follows_the_mask(name):
    block, x, ref = masked_reference(name, True)
    assert rel_err(block.update(x, backend="eager"), ref) < REL_TOL
    block, x, ref = masked_reference(name, False)
    assert rel_err(block.update(x, backend="sdpa"), ref) < REL_TOL


def test_chunked_prefill_on_flex():
    block, x, ref = masked_reference("chunk16", False)
    assert rel_err(block.update(x, backend="flex"), ref) < REL_TOL


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_chunked_training_gradient(backend):
    """The input gradient of a chunked block against autograd through the float64 loop reference."""
    block, x, _ = masked_reference("chunk16", backend == "eager")
    dy = torch.randn(B, S, HIDDEN, generator=torch.Generator().manual_seed(10))
    x32 = x.clone().requires_grad_(True)
    (dx,) = torch.autograd.grad(block.update(x32, backend=backend), x32, dy)
    x64 = x.double().requires_grad_(True)
    (dx_ref,) = torch.autograd.grad(reference_for(block, x64, sees=CASES["chunk16"][1]), x64, dy.double())
    assert rel_err(dx, dx_ref) < REL_TOL
    if not block.has_sinks:  # flex on CPU refuses training, and says why
        with pytest.raises(SkipCase, match="flex_attention has no backward pass on CPU"):
            block.update(x32, backend="flex")


# --- the cost model's cache and the real cache
def params(**overrides) -> AttentionParams:
    return AttentionParams(**{**defaults(get_preset("gpt-oss-20b")), **SMALL, **overrides})


@pytest.mark.parametrize("mask", [None, "window8", "and(causal,window5)", "or(window3,window9)", "chunk16"])
@pytest.mark.parametrize("kv_len", [3, 20, 39])
def test_cache_bytes_and_keys_read_match_the_cost_model(mask, kv_len, monkeypatch):
    p = params(mode="decode", backend="eager", kv_len=kv_len, mask=mask)
    g = torch.Generator().manual_seed(0)
    module = make_module(p, "cpu", torch.float32, g).requires_grad_(False)
    cache = fill_decode_cache(module, p, g, "cpu", torch.float32)
    cost = attention_cost(p, 4)
    assert cache.nbytes == cost.extra["kv_cache_bytes"]  # what the cache really holds
    seen = spy_on_keys(module, "eager", monkeypatch)
    module(torch.randn(B, 1, HIDDEN), cache=cache, start_pos=kv_len)
    assert seen == [attention_pairs(p)]  # the keys decode reads are the ones the cost model counts
    per_token = 2 * N_KV * HEAD_DIM * 4
    assert cost.bytes == param_count(p) * 4 + 2 * B * HIDDEN * 4 + B * seen[0] * per_token


def test_chunked_cache_at_gpt_oss_scale():
    """The issue's case: decode at 131072 tokens with 8192-token chunks reads one key (2 KiB) but the
    cache holds a ring of 8192 slots (16 MiB); the cost model must say both."""
    p = AttentionParams(**{**defaults(get_preset("gpt-oss-20b")), "mode": "decode", "backend": "eager",
                           "kv_len": 131072, "mask": "chunk8192"})
    g = torch.Generator().manual_seed(0)
    cache = fill_decode_cache(make_module(p, "meta", torch.bfloat16, g), p, g, "meta", torch.bfloat16)
    cost = attention_cost(p, 2)
    assert cache.nbytes == cost.extra["kv_cache_bytes"] == 8192 * 2048
    assert attention_pairs(p) == 1 and cost.extra["attn_pairs"] == 1


# --- the workload's mask parameter
@pytest.mark.parametrize("mask", ["and(causal, window5)", "chunk16"])
def test_mask_parameter_builds_checks_and_names_itself(mask):
    for mode in ("prefill", "decode", "train"):
        p = params(mode=mode, backend="eager", mask=mask)
        assert p.mask == mask.replace(" ", "") and p.layer_mask == parse(mask)
        w = FAMILY.build(p, "cpu", torch.float32)
        check = w.check()
        assert check.ok and check.max_rel_err < 1e-5, check
    with pytest.raises(SkipCase, match="no backward"):
        FAMILY.build(params(mode="train", backend="flex", sinks=False, mask=mask), "cpu", torch.float32)


@pytest.mark.parametrize("overrides, message", [
    (dict(mask="chunky"), "unknown mask 'chunky'"),
    (dict(mask="window8", window=8), "not both"),
    (dict(mask="window8", causal=False), "mask window8 is causal but causal is False"),
    (dict(mask="full"), "mask full is not causal"),
])
def test_bad_masks_name_the_field(overrides, message):
    with pytest.raises(ValidationError) as err:
        params(**overrides)
    assert err.value.errors()[0]["loc"] == ("mask",) and message in err.value.errors()[0]["msg"]


def test_a_mask_that_is_plain_causal_here_skips_with_a_reason():
    with pytest.raises(SkipCase, match="mask window40 allows every causal pair at seq_len 40"):
        FAMILY.build(params(mode="prefill", backend="eager", mask="window40"), "cpu", torch.float32)


# --- on a GPU (pytest -m gpu): chunked attention at gpt-oss shapes in bf16, sinks through flex's lse
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["prefill", "decode", "train"])
@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex"])
def test_gpu_chunked_workloads_pass_their_checks(backend, mode):
    # chunks of 256 over 1000 tokens: partial flex blocks; decode at 1000 reads 1000 % 256 + 1 = 233 keys
    p = AttentionParams(**{**defaults(get_preset("gpt-oss-20b")), "mode": mode, "backend": backend,
                           "mask": "chunk256", "sinks": backend != "sdpa", "seq_len": 1000, "kv_len": 1000})
    w = FAMILY.build(p, "cuda", torch.bfloat16)
    check = w.check()
    assert check.ok, check
    w.fn()
    torch.cuda.synchronize()
