"""Every attention backend against an independent float64 reference written here from the facts.

The reference below shares no code with ossbench.layers: its own RMSNorm, YaRN frequencies, rotation,
causal/window mask and sink column, with explicit loops over heads. Shapes are small (hidden 64, 8 query
heads, head_dim 16, 40 tokens, window 8) so compiled flex kernels stay cheap on the CPU; the flex kernels
are compiled once per shape and shared by the tests that use that shape.
"""

import math
import warnings

import pytest
import torch

from ossbench.errors import SkipCase
from ossbench.layers import attention as attention_module
from ossbench.layers.attention import Attention, causal_window_block_mask
from ossbench.layers.attention_spec import AttentionSpec
from ossbench.layers.masks import layer_mask
from ossbench.layers.config import get_preset
from ossbench.layers.rope import RopeSpec, RotaryEmbedding, inv_freq_and_concentration

B, S, HIDDEN, HEADS, HEAD_DIM, WINDOW = 2, 40, 64, 8, 16, 8
YARN = dict(theta=150000.0, factor=32.0, beta_slow=1.0, beta_fast=32.0, original_context=4096)
SPEC_YARN = dict(rope_theta=YARN["theta"], yarn_factor=YARN["factor"], yarn_beta_slow=YARN["beta_slow"],
                 yarn_beta_fast=YARN["beta_fast"], yarn_original_context=YARN["original_context"])
REL_TOL = 1e-5  # float32


# --- the independent reference (float64)
def ref_inv_freq(head_dim, theta, factor, beta_slow, beta_fast, original_context):
    """Per-pair frequency and the cos/sin multiplier, straight from the YaRN description."""
    half = head_dim // 2
    freqs = [theta ** (-2.0 * i / head_dim) for i in range(half)]
    if factor <= 1.0:
        return torch.tensor(freqs, dtype=torch.float64), 1.0

    def pair_where_turns_equal(turns):  # solve original_context * freq_i / (2 pi) == turns for i
        return half * math.log(original_context / (2 * math.pi * turns)) / math.log(theta)

    fast_end, slow_start = pair_where_turns_equal(beta_fast), pair_where_turns_equal(beta_slow)
    out = []
    for i, f in enumerate(freqs):
        blend = min(1.0, max(0.0, (i - fast_end) / (slow_start - fast_end)))  # 0: keep f, 1: f / factor
        out.append(f * (1 - blend) + f / factor * blend)
    return torch.tensor(out, dtype=torch.float64), 1.0 + 0.1 * math.log(factor)


def ref_rotate(x, positions, rope):
    """x [T, D] float64 at integer `positions`: pair (i, i + D/2) rotated by position * freq_i."""
    if rope is None:
        return x
    freqs, scale = ref_inv_freq(x.shape[-1], **rope)
    half = x.shape[-1] // 2
    out = torch.empty_like(x)
    for t, pos in enumerate(positions):
        ang = pos * freqs
        c, s = torch.cos(ang) * scale, torch.sin(ang) * scale
        a, b = x[t, :half], x[t, half:]
        out[t, :half] = a * c - b * s
        out[t, half:] = b * c + a * s
    return out


def ref_update(sd, x, *, n_heads, n_kv_heads, head_dim, window, causal, rope, norm="rmsnorm", eps=1e-5,
               sees=None):
    """The block's update (no residual) for x [B, T, hidden] at positions 0..T-1, in float64.

    `sees(i, j)`, when given, says whether query i sees key j (instead of causal/window)."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    Bx, T, _ = x.shape
    if norm == "rmsnorm":
        h = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * sd["norm.scale"]
    elif norm == "layernorm":
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        h = (x - mu) / torch.sqrt(var + eps) * sd["norm.weight"] + sd["norm.bias"]
    else:
        h = x
    qkv = h @ sd["qkv.weight"].T + sd.get("qkv.bias", 0.0)
    qw, kw = n_heads * head_dim, n_kv_heads * head_dim
    group = n_heads // n_kv_heads
    out = torch.zeros(Bx, T, qw, dtype=torch.float64)
    positions = list(range(T))
    for b in range(Bx):
        for hq in range(n_heads):
            hk = hq // group
            q = ref_rotate(qkv[b, :, hq * head_dim:(hq + 1) * head_dim], positions, rope)
            k = ref_rotate(qkv[b, :, qw + hk * head_dim:qw + (hk + 1) * head_dim], positions, rope)
            v = qkv[b, :, qw + kw + hk * head_dim:qw + kw + (hk + 1) * head_dim]
            for i in range(T):
                if sees is not None:
                    seen = [j for j in range(T) if sees(i, j)]
                else:
                    seen = [j for j in range(T) if not causal or (j <= i and (window is None or i - j < window))]
                logits = (k[seen] @ q[i]) / math.sqrt(head_dim)
                if "sinks" in sd:
                    logits = torch.cat([logits, sd["sinks"][hq:hq + 1]])
                w = torch.softmax(logits, dim=0)[:len(seen)]  # the sink column takes weight, adds nothing
                out[b, i, hq * head_dim:(hq + 1) * head_dim] = w @ v[seen]
    return out @ sd["out.weight"].T + sd.get("out.bias", 0.0)


# --- helpers
def make_block(n_kv_heads, window, sinks, *, positions="yarn", bias=True, causal=True, norm="rmsnorm", seed=0,
               mask=None):
    torch.manual_seed(seed)
    block = Attention(AttentionSpec(HIDDEN, HEADS, n_kv_heads, HEAD_DIM, window=window, mask=mask, sinks=sinks,
                                    positions=positions, bias=bias, causal=causal, norm=norm, **SPEC_YARN),
                      dtype=torch.float32)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name in ("norm.scale", "norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name == "sinks":
                p.copy_(torch.randn_like(p))
            else:  # 0.15 keeps the scores O(1): a softmax neither uniform nor one-hot
                p.copy_(0.15 * torch.randn_like(p))
    return block.requires_grad_(False)


def reference_for(block, x, sees=None):
    rope = None
    if block.positions == "yarn":
        rope = YARN
    elif block.positions == "rope":
        rope = dict(YARN, factor=1.0)
    return ref_update(block.state_dict(), x, n_heads=block.n_heads, n_kv_heads=block.n_kv_heads,
                      head_dim=block.head_dim, window=block.window, causal=block.causal, rope=rope, sees=sees,
                      norm="none" if block.norm is None else (
                          "layernorm" if isinstance(block.norm, torch.nn.LayerNorm) else "rmsnorm"))


def rel_err(got, ref):
    return ((got.double() - ref).abs().max() / ref.abs().max()).item()


_REF_CACHE: dict = {}


def cached_reference(n_kv_heads, window, sinks):
    """Block, input and reference per variant (the loop reference is shared by every backend)."""
    key = (n_kv_heads, window, sinks)
    if key not in _REF_CACHE:
        block = make_block(n_kv_heads, window, sinks)
        x = torch.randn(B, S, HIDDEN, generator=torch.Generator().manual_seed(1))
        _REF_CACHE[key] = (block, x, reference_for(block, x))
    return _REF_CACHE[key]


KV_HEADS = {"mha": HEADS, "gqa": 2, "mqa": 1}


# --- the matrix: backend x {full, window} x {MHA, GQA, MQA} x {sinks off, on} x {prefill, decode}
def _flex_slow(backend, heads):
    # Every head layout is its own compiled flex kernel (~5 s each on 2 CPU cores); gpt-oss's GQA layout
    # runs by default, MHA and MQA are marked slow (CI still runs them).
    marks = [pytest.mark.slow] if backend == "flex" and heads != "gqa" else []
    return pytest.param(backend, heads, marks=marks, id=f"{backend}-{heads}")


@pytest.mark.parametrize("mode", ["prefill", "decode"])
@pytest.mark.parametrize("sinks", [False, True], ids=["nosink", "sinks"])
@pytest.mark.parametrize("window", [None, WINDOW], ids=["full", "window"])
@pytest.mark.parametrize("backend, heads", [_flex_slow(b, h) for b in ("eager", "sdpa", "flex") for h in KV_HEADS])
def test_backend_matches_reference(backend, window, heads, sinks, mode, monkeypatch):
    block, x, ref = cached_reference(KV_HEADS[heads], window, sinks)
    reason = block.unsupported_reason(backend, "cpu")
    if reason is not None:
        # Only sinks are refused on this CPU (sdpa always, flex for lack of a CPU log-sum-exp) ...
        assert sinks and backend in ("sdpa", "flex")
        assert "cannot express attention sinks" in reason
        # ... and refusing means raising, never computing something else.
        with pytest.raises(SkipCase, match="cannot express attention sinks"):
            block.update(x, backend=backend)
        return
    if mode == "prefill":
        got = block.update(x, backend=backend)
        assert rel_err(got, ref) < REL_TOL
        assert torch.equal(block(x, backend=backend), x + got)  # the block adds its residual
        return
    # decode: prefill the tokens before `pos` into a cache, then decode token `pos`; it must equal the
    # last row of a prefill over tokens 0..pos (row `pos` of the causal reference).
    pos = S - 1
    if backend == "flex" and window is None:
        # Each key count is its own compiled flex kernel (~4 s on 2 CPU cores); decoding at position
        # WINDOW-1 reads WINDOW keys, the same kernel as the windowed decode.
        pos = WINDOW - 1
    cache = block.new_cache(B, pos + 1)  # exactly the slots needed: contiguous keys, like the workload's
    block.update(x[:, :pos], cache=cache, backend="eager")
    seen_keys = []
    real = getattr(block, f"_{backend}")

    def spy(q, k, v, mask):
        seen_keys.append(k.shape[2])
        return real(q, k, v, mask)

    monkeypatch.setattr(block, f"_{backend}", spy)
    got = block.update(x[:, pos:pos + 1], cache=cache, start_pos=pos, backend=backend)  # [B, 1, hidden]
    assert rel_err(got[:, 0], ref[:, pos]) < REL_TOL
    expected_keys = pos + 1 if window is None else window
    assert seen_keys == [expected_keys]  # a windowed decode reads only the last `window` keys
    assert cache.capacity == (pos + 1 if window is None else window)


@pytest.mark.parametrize("backend, window", [("eager", None), ("eager", WINDOW), ("sdpa", None),
                                             ("sdpa", WINDOW), ("flex", WINDOW)])
def test_decode_steps_wrap_the_window_ring(backend, window):
    """Ten decode steps after a 30-token prefill; the windowed cache's ring wraps around."""
    block, x, ref = cached_reference(2, window, backend == "eager")
    cache = block.new_cache(B, S)
    block.update(x[:, :30], cache=cache, backend="eager")
    for pos in range(30, S):
        got = block.update(x[:, pos:pos + 1], cache=cache, start_pos=pos, backend=backend)
        assert rel_err(got[:, 0], ref[:, pos]) < REL_TOL, pos


def test_prefill_into_window_cache_keeps_last_tokens():
    block, x, _ = cached_reference(2, WINDOW, True)
    cache = block.new_cache(B, 1000)
    assert cache.capacity == WINDOW  # memory bounded by the window, not by max_tokens
    block.update(x, cache=cache)
    _, k, v = block.qkv(block.norm(x)).split(block.split, dim=-1)
    k = block.rope(k.view(B, S, 2, HEAD_DIM).transpose(1, 2))  # [B, Hkv, S, D]
    v = v.view(B, S, 2, HEAD_DIM).transpose(1, 2)
    for pos in range(S - WINDOW, S):  # position p lives in slot p % window
        assert torch.equal(cache.k[:, :, pos % WINDOW], k[:, :, pos])
        assert torch.equal(cache.v[:, :, pos % WINDOW], v[:, :, pos])


# --- positions, norms, bias, causality
@pytest.mark.parametrize("positions", ["none", "rope", "yarn"])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_positions(positions, backend):
    block = make_block(2, WINDOW, False, positions=positions)
    x = torch.randn(B, S, HIDDEN, generator=torch.Generator().manual_seed(2))
    assert rel_err(block.update(x, backend=backend), reference_for(block, x)) < REL_TOL


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_non_causal_no_bias_layernorm_and_no_norm(backend):
    x = torch.randn(B, S, HIDDEN, generator=torch.Generator().manual_seed(3))
    for kwargs in (dict(causal=False), dict(bias=False), dict(norm="layernorm"), dict(norm="none")):
        block = make_block(2, None, backend == "eager", **kwargs)
        assert rel_err(block.update(x, backend=backend), reference_for(block, x)) < REL_TOL, kwargs


def test_yarn_frequencies_of_gpt_oss():
    spec = RopeSpec(150000.0, 32.0, 1.0, 32.0, 4096)
    inv_freq, concentration = inv_freq_and_concentration(64, spec)
    ref, ref_conc = ref_inv_freq(64, **YARN)
    assert torch.allclose(inv_freq, ref, rtol=1e-12, atol=0)
    assert concentration == pytest.approx(0.1 * math.log(32) + 1) == pytest.approx(ref_conc)
    base = 150000.0 ** (-torch.arange(32, dtype=torch.float64) / 32)
    # the ramp runs from pair ~8.09 (32 turns) to ~17.40 (1 turn): fast pairs keep, slow pairs divide by 32
    assert torch.allclose(inv_freq[:9], base[:9]) and torch.allclose(inv_freq[18:], base[18:] / 32)
    assert (inv_freq[9:18] < base[9:18]).all() and (inv_freq[9:18] > base[9:18] / 32).all()


def test_rotary_far_beyond_the_original_context():
    rope = RotaryEmbedding(HEAD_DIM, RopeSpec(**{("yarn_factor" if k == "factor" else k): v
                                                 for k, v in YARN.items()}))
    x = torch.randn(1, 3, 5, HEAD_DIM, dtype=torch.float64)  # [B, H, S, D]
    got = rope(x, start_pos=100_000)
    for h in range(3):
        ref = ref_rotate(x[0, h], range(100_000, 100_005), YARN)
        assert torch.allclose(got[0, h], ref, rtol=0, atol=1e-9)


# --- checkpoint layout
def test_loads_a_checkpoint_style_block():
    """Tensor names and shape pattern of a gpt-oss block (`block.N.attn.*`) at a small size."""
    g = torch.Generator().manual_seed(4)
    n_kv = 2
    qkv_out = (HEADS + 2 * n_kv) * HEAD_DIM
    ckpt = {  # bf16 like the checkpoint, except the fp32 norm scale
        "block.3.attn.norm.scale": 1 + 0.1 * torch.randn(HIDDEN, generator=g),
        "block.3.attn.qkv.weight": (0.15 * torch.randn(qkv_out, HIDDEN, generator=g)).bfloat16(),
        "block.3.attn.qkv.bias": (0.1 * torch.randn(qkv_out, generator=g)).bfloat16(),
        "block.3.attn.sinks": torch.randn(HEADS, generator=g).bfloat16(),
        "block.3.attn.out.weight": (0.15 * torch.randn(HIDDEN, HEADS * HEAD_DIM, generator=g)).bfloat16(),
        "block.3.attn.out.bias": (0.1 * torch.randn(HIDDEN, generator=g)).bfloat16(),
    }
    state = {k.removeprefix("block.3.attn."): v for k, v in ckpt.items()}
    block = Attention(AttentionSpec(HIDDEN, HEADS, n_kv, HEAD_DIM, window=WINDOW, sinks=True, positions="yarn",
                                    **SPEC_YARN), dtype=torch.float32)
    block.load_state_dict(state, strict=True)
    assert block.norm.scale.dtype == torch.float32
    x = torch.randn(B, S, HIDDEN, generator=g)
    ref = ref_update(state, x, n_heads=HEADS, n_kv_heads=n_kv, head_dim=HEAD_DIM, window=WINDOW, causal=True,
                     rope=YARN)
    with torch.no_grad():
        assert rel_err(block.update(x), ref) < REL_TOL


def test_gpt_oss_parameter_names_and_shapes():
    block = Attention.from_config(get_preset("gpt-oss-20b"), layer_idx=0, device="meta")
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in block.state_dict().items()}
    assert shapes == {
        "norm.scale": ((2880,), torch.float32),
        "qkv.weight": ((5120, 2880), torch.float32), "qkv.bias": ((5120,), torch.float32),
        "sinks": ((64,), torch.float32),
        "out.weight": ((2880, 4096), torch.float32), "out.bias": ((2880,), torch.float32),
    }
    assert block.window == 128 and block.scale == 1 / 8
    assert Attention.from_config(get_preset("gpt-oss-20b"), layer_idx=1, device="meta").window is None
    gpt2 = Attention.from_config(get_preset("gpt2-small"), device="meta")
    assert set(gpt2.state_dict()) == {"norm.weight", "norm.bias", "qkv.weight", "qkv.bias", "out.weight",
                                      "out.bias"}
    assert gpt2.rope is None and gpt2.window is None


# --- flex pieces that the CPU cannot compile: the sink correction and the block mask
def test_flex_sink_correction_through_lse(monkeypatch):
    """The lse-based sink path (used on CUDA) run with uncompiled flex_attention on the CPU."""
    from torch.nn.attention.flex_attention import flex_attention
    monkeypatch.setattr(attention_module, "_compiled_flex", lambda: flex_attention)
    block, x, _ = cached_reference(2, WINDOW, True)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(B, n, S, HEAD_DIM, generator=g) for n in (HEADS, 2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        for mask in (layer_mask(window=WINDOW), layer_mask(), None):
            got = block._flex(q, k, v, mask)
            ref = block._eager(q, k, v, mask)
            assert rel_err(got, ref.double()) < REL_TOL


@pytest.mark.parametrize("seq, window", [(300, 128), (300, 50), (300, None), (256, 128), (S, WINDOW), (1, None)])
def test_block_mask_matches_create_block_mask(seq, window):
    from torch.nn.attention.flex_attention import create_block_mask
    w = window or seq

    def causal_window(b, h, q, k):
        return (k <= q) & (q - k < w)

    ours = causal_window_block_mask(seq, window, "cpu")
    theirs = create_block_mask(causal_window, None, None, seq, seq, device="cpu")
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    assert torch.equal(ours.kv_num_blocks, theirs.kv_num_blocks)
    assert torch.equal(ours.full_kv_num_blocks, theirs.full_kv_num_blocks)


@pytest.mark.parametrize("q_len, kv_len, valid, causal, window",
                         [(40, 128, 40, True, None), (40, 128, 40, True, 8), (1, 256, 200, False, None),
                          (300, 384, 300, True, 50), (130, 256, 256, False, None)])
def test_padded_block_mask_matches_create_block_mask(q_len, kv_len, valid, causal, window):
    """The rectangular masks the CPU flex path uses: keys past `valid` are padding and never allowed."""
    from torch.nn.attention.flex_attention import create_block_mask
    w = window or kv_len

    def mask(b, h, q, k):
        return (k < valid) & (((k <= q) & (q - k < w)) if causal else True)

    ours = layer_mask(causal=causal, window=window).block_mask(q_len, kv_len, valid_keys=valid, device="cpu")
    theirs = create_block_mask(mask, None, None, q_len, kv_len, device="cpu")
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    assert torch.equal(ours.kv_num_blocks, theirs.kv_num_blocks)
    assert torch.equal(ours.full_kv_num_blocks, theirs.full_kv_num_blocks)


# --- refusals
def test_invalid_combinations_are_refused():
    with pytest.raises(ValueError, match="only for causal"):
        AttentionSpec(HIDDEN, HEADS, 2, HEAD_DIM, window=8, causal=False)
    with pytest.raises(ValueError, match=r"n_kv_heads \(3\) must divide n_heads \(8\)"):
        AttentionSpec(HIDDEN, HEADS, 3, HEAD_DIM)
    with pytest.raises(ValueError, match="backend"):
        Attention(AttentionSpec(HIDDEN, HEADS, 2, HEAD_DIM), backend="xformers")
    block, x, _ = cached_reference(2, None, False)
    cache = block.new_cache(B, S)
    block.update(x[:, :10], cache=cache)
    with pytest.raises(ValueError, match="prefill from position 0"):
        block.update(x[:, 10:20], cache=cache, start_pos=10)
    small = block.new_cache(B, 4)
    with pytest.raises(ValueError, match="does not fit"):
        block.update(x[:, :1], cache=small, start_pos=4)
    reason = block.unsupported_reason("flex", "cpu", training=True)
    assert reason and "no backward" in reason


# --- on a GPU (pytest -m gpu): every backend at gpt-oss shapes in bf16, sinks through flex's lse
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["prefill", "decode", "train"])
@pytest.mark.parametrize("sinks", [False, True], ids=["nosink", "sinks"])
@pytest.mark.parametrize("window", [None, 128], ids=["full", "window128"])
@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex"])
def test_gpu_workloads_pass_their_checks(backend, window, sinks, mode):
    from ossbench.workloads.attention import FAMILY, AttentionParams, defaults
    p = AttentionParams(**{**defaults(get_preset("gpt-oss-20b")), "mode": mode, "backend": backend,
                           "window": window, "sinks": sinks, "seq_len": 1000, "kv_len": 1000})
    if backend == "sdpa" and sinks:
        with pytest.raises(SkipCase, match="cannot express attention sinks"):
            FAMILY.build(p, "cuda", torch.bfloat16)
        return
    w = FAMILY.build(p, "cuda", torch.bfloat16)
    check = w.check()
    assert check.ok, check
    w.fn()
    torch.cuda.synchronize()
