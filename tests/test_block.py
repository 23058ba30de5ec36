"""Blocks: GPT-2's and gpt-oss's layer against straightforward float64 compositions written here, decode
against prefill, dropout in train mode only, and the block family's cost model against FlopCounterMode."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch.utils.flop_counter import FlopCounterMode

from ossbench.layers.block import Block
from ossbench.layers.config import get_preset
from ossbench.layers.params import attention_params, mlp_params
from ossbench.layers.rope import RopeSpec, inv_freq_and_concentration
from ossbench.workloads import get_family
from ossbench.workloads.attention import forward_flops
from ossbench.workloads.block import BlockParams, block_cost, make_block

FAMILY = get_family("block")
TINY_OSS = dict(hidden=32, n_heads=4, n_kv_heads=2, head_dim=8, n_experts=4, top_k=2, intermediate=16, window=4)
TINY_GPT2 = dict(hidden=32, n_heads=4, n_kv_heads=4, head_dim=8)
# gpt-oss's block runs the eager attention backend (the only one with sinks on CPU), GPT-2's sdpa; both
# compute float64 throughout for float64 inputs (softmaxes and norms promote to at least float32).
BACKEND = {"gpt2": "sdpa", "gpt-oss": "eager"}
FLOAT64_AGREEMENT = {"gpt2": 1e-12, "gpt-oss": 1e-12}


def tiny_block(arch: str, dropout: float | None = None) -> Block:
    cfg = get_preset("gpt-oss-20b", **TINY_OSS) if arch == "gpt-oss" else get_preset("gpt2-small", **TINY_GPT2)
    torch.manual_seed(0)
    block = Block.from_config(cfg, layer_idx=0, attn_backend=BACKEND[arch], moe_backend="loop", dropout=dropout,
                              dtype=torch.float64)
    with torch.no_grad():  # no trivial values: norm scales near one, biases and sinks non-zero
        for name, p in block.named_parameters():
            if name.endswith(("norm.scale", "norm.weight")):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return block


# --- the float64 compositions, written out from the papers' formulas
def layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps) * w + b


def rms_norm(x, scale, eps=1e-5):
    return x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + eps) * scale


def rotate(x, spec: RopeSpec):
    """[B, H, S, D]: pair (x[i], x[i + D/2]) as a complex number times c e^(1j pos w_i)."""
    D, S = x.shape[-1], x.shape[-2]
    w, c = inv_freq_and_concentration(D, spec)
    z = torch.complex(x[..., : D // 2], x[..., D // 2:])
    angle = torch.arange(S, dtype=torch.float64)[:, None] * w[None, :]
    z = z * c * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], dim=-1)


def attention(attn, t, window=None, sinks=None, spec=None):
    """Causal (optionally windowed) attention with optional sinks; t [B, S, hidden] already normed."""
    B, S, _ = t.shape
    hq, hkv, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
    qkv = t @ attn.qkv.weight.T + attn.qkv.bias
    q = qkv[..., : hq * d].reshape(B, S, hq, d).transpose(1, 2)
    k = qkv[..., hq * d: (hq + hkv) * d].reshape(B, S, hkv, d).transpose(1, 2)
    v = qkv[..., (hq + hkv) * d:].reshape(B, S, hkv, d).transpose(1, 2)
    if spec is not None:
        q, k = rotate(q, spec), rotate(k, spec)
    k, v = k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # [B, H, S, S]
    i, j = torch.arange(S)[:, None], torch.arange(S)[None, :]
    allowed = (j <= i) & ((i - j < window) if window else True)
    scores = scores.masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        column = sinks.view(1, hq, 1, 1).expand(B, hq, S, 1)
        probs = torch.softmax(torch.cat([scores, column], dim=-1), dim=-1)[..., :S]
    else:
        probs = torch.softmax(scores, dim=-1)
    o = (probs @ v).transpose(1, 2).reshape(B, S, hq * d)
    return o @ attn.out.weight.T + attn.out.bias


def gpt2_reference(block, x):
    a, f = block.attn, block.mlp
    h = x + attention(a, layer_norm(x, a.norm.weight, a.norm.bias))
    z = layer_norm(h, f.norm.weight, f.norm.bias) @ f.fc1.weight.T + f.fc1.bias
    gelu = 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))
    return h + gelu @ f.fc2.weight.T + f.fc2.bias


def gpt_oss_reference(block, x):
    a, m = block.attn, block.mlp
    spec = RopeSpec(150000.0, 32.0, 1.0, 32.0, 4096)
    h = x + attention(a, rms_norm(x, a.norm.scale), window=a.window, sinks=a.sinks, spec=spec)
    t = rms_norm(h, m.norm.scale).reshape(-1, h.shape[-1])
    logits = t @ m.gate.weight.T + m.gate.bias
    top, chosen = logits.topk(m.top_k, dim=-1)
    weights = torch.softmax(top, dim=-1)
    out = torch.zeros_like(t)
    for n in range(t.shape[0]):
        for slot in range(m.top_k):
            e = int(chosen[n, slot])
            z = m.mlp1_weight[e] @ t[n] + m.mlp1_bias[e]
            g, lin = z[0::2].clamp(max=7.0), z[1::2].clamp(-7.0, 7.0)
            y = m.mlp2_weight[e] @ (g * torch.sigmoid(1.702 * g) * (lin + 1)) + m.mlp2_bias[e]
            out[n] += weights[n, slot] * y
    return h + out.view_as(h)


@pytest.mark.parametrize("arch", ["gpt2", "gpt-oss"])
def test_block_matches_float64_composition(arch):
    block = tiny_block(arch).eval()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    ref = gpt2_reference(block, x) if arch == "gpt2" else gpt_oss_reference(block, x)
    with torch.no_grad():
        got = block(x)
    assert ((got - ref).abs().max() / (ref - x).abs().max()).item() < FLOAT64_AGREEMENT[arch]


def test_gpt_oss_block_state_dict_has_checkpoint_names():
    names = set(tiny_block("gpt-oss").state_dict())
    assert names == {"attn.norm.scale", "attn.qkv.weight", "attn.qkv.bias", "attn.sinks", "attn.out.weight",
                     "attn.out.bias", "mlp.norm.scale", "mlp.gate.weight", "mlp.gate.bias", "mlp.mlp1_weight",
                     "mlp.mlp1_bias", "mlp.mlp2_weight", "mlp.mlp2_bias"}
    assert tiny_block("gpt-oss").attn.norm.scale.dtype == torch.float32  # fp32 scale, as in the checkpoint


@pytest.mark.parametrize("arch", ["gpt2", "gpt-oss"])
def test_decode_against_a_cache_equals_prefill(arch):
    block = tiny_block(arch).eval()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    with torch.no_grad():
        full = block(x)
        cache = block.new_cache(2, 11, dtype=torch.float64)  # gpt-oss layer 0: a ring of window 4 slots
        block(x[:, :10], cache, 0)
        last = block(x[:, 10:], cache, 10)
    assert torch.allclose(last, full[:, 10:], rtol=FLOAT64_AGREEMENT[arch], atol=FLOAT64_AGREEMENT[arch])


def test_dropout_acts_in_train_mode_only_and_on_both_residual_branches():
    block = tiny_block("gpt2", dropout=0.5)
    x = torch.randn(4, 8, 32, dtype=torch.float64)
    seen = []
    for d in (block.attn_resid_dropout, block.mlp_resid_dropout):
        d.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].detach(), out.detach())))
    with torch.no_grad():
        y = block.train()(x)
        (u1, d1), (u2, d2) = seen
        # each dropout zeroes elements and scales the rest by 1 / (1 - p)
        for u, d in ((u1, d1), (u2, d2)):
            kept = d != 0
            assert 0.4 < kept.double().mean().item() < 0.6
            assert torch.allclose(d[kept], u[kept] / 0.5) and (d[~kept] == 0).all()
        # the output is the float64 composition with those masks (u1: the attention's own output, which
        # has its probabilities dropped out too, so it is taken from the hook rather than recomputed)
        h = x + (d1 != 0) * u1 / 0.5
        assert torch.allclose(y, h + (d2 != 0) * block.mlp.update(h) / 0.5, rtol=1e-12, atol=1e-12)
        seen.clear()
        assert torch.allclose(block.eval()(x), gpt2_reference(block, x), rtol=1e-12, atol=1e-12)
    no_dropout = tiny_block("gpt2", dropout=0.0)
    assert not any(isinstance(m, torch.nn.Dropout) for m in no_dropout.modules())
    with torch.no_grad():
        assert torch.equal(no_dropout.train()(x), no_dropout.eval()(x))


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_attention_probabilities_drop_out_in_train_mode_only(backend):
    block = tiny_block("gpt2", dropout=0.5)
    block.attn.backend = backend
    x = torch.randn(2, 8, 32, dtype=torch.float64)
    with torch.no_grad():
        block.train()
        torch.manual_seed(0)
        first = block.attn.update(x)
        torch.manual_seed(1)
        assert not torch.allclose(first, block.attn.update(x))  # a fresh mask on every call
        block.eval()
        assert torch.equal(block.attn.update(x), block.attn.update(x))
        block.attn.attn_dropout = 0.0
        block.train()
        assert torch.equal(block.attn.update(x), block.eval().attn.update(x))


def test_flex_refuses_probability_dropout_in_training():
    from ossbench.layers.attention import unsupported_reason

    reason = unsupported_reason("flex", sinks=False, device="cuda", training=True, attn_dropout=0.1)
    assert reason and "attn_pdrop" in reason
    assert unsupported_reason("flex", sinks=False, device="cuda", training=False, attn_dropout=0.1) is None


# --- the family
# a preset's field -> the block parameter it sets (the block nests its attention and MLP specs)
BLOCK_NAME = {"hidden": "hidden", "n_heads": "attention.n_heads", "n_kv_heads": "attention.n_kv_heads",
              "head_dim": "attention.head_dim", "window": "attention.window", "n_experts": "mlp.n_experts",
              "top_k": "mlp.top_k", "intermediate": "mlp.intermediate"}


def block_names(preset_fields: dict) -> dict:
    return {BLOCK_NAME[k]: v for k, v in preset_fields.items()}


def params(arch: str, **over) -> BlockParams:
    """A tiny block case; `over` by dotted name, written with `__` (attention__window=4)."""
    if arch == "gpt2":
        base = {**FAMILY.flat_defaults(get_preset("gpt2-small")), **block_names(TINY_GPT2), "mlp.intermediate": 128}
    else:
        base = {**FAMILY.flat_defaults(get_preset("gpt-oss-20b")), **block_names(TINY_OSS)}
    return FAMILY.validate({**base, "batch": 2, "seq_len": 12, "kv_len": 20, "moe_backend": "loop",
                            **{k.replace("__", "."): v for k, v in over.items()}})


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def eager_scores_correction(p: BlockParams) -> float:
    """Eager attention computes all S^2 scores and masks them; the model counts the causal (windowed) pairs."""
    ap = p.attention_params()
    from ossbench.workloads.attention import attention_pairs
    return forward_flops(ap, p.seq_len ** 2)[1] - forward_flops(ap, attention_pairs(ap))[1]


@pytest.mark.parametrize("arch", ["gpt2", "gpt-oss"])
@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_matmul_flops_match_the_counter(arch, mode):
    p = params(arch, mode=mode)
    w = FAMILY.build(p, "cpu", torch.float32)
    want = w.cost.extra["matmul_flops"] + (eager_scores_correction(p) if mode == "prefill" else 0)
    assert counted(w.fn) == pytest.approx(want, rel=0.01)


@pytest.mark.parametrize("arch", ["gpt2", "gpt-oss"])
def test_train_flops_match_the_counter(arch):
    # FlopCounterMode cannot follow autograd.grad (the train fn): the same forward + backward via .backward()
    p = params(arch, mode="train", dropout=0.1)
    w = FAMILY.build(p, "cpu", torch.float32)
    block = make_block(p, "cpu", torch.float32, torch.Generator().manual_seed(0)).train()
    x = torch.randn(p.batch, p.seq_len, p.hidden, requires_grad=True)
    dy = torch.randn(p.batch, p.seq_len, p.hidden)
    want = w.cost.extra["matmul_flops"] + 3 * eager_scores_correction(p)
    assert counted(lambda: block(x).backward(dy)) == pytest.approx(want, rel=0.01)
    # dropout: one multiply per element of each of its three outputs, forward and backward
    assert w.cost.extra["dropout_flops"] == 2 * (2 * 24 * 32 + p.attention.n_heads * w.cost.extra["attn_pairs"])
    assert w.cost.flops == pytest.approx(w.cost.extra["matmul_flops"] + w.cost.extra["activation_flops"]
                                         + w.cost.extra["dropout_flops"])


def test_bytes_and_params_by_hand_for_a_gpt2_block():
    p = params("gpt2", mode="prefill")
    H, I, T = 32, 128, 24
    n = (2 * H + H * 3 * H + 3 * H + H * H + H) + (2 * H + H * I + I + I * H + H)  # attention + MLP, biases, LNs
    cost = block_cost(p, 2, None)
    assert cost.extra["params"] == n
    assert cost.bytes == n * 2 + 2 * T * H * 2  # weights once, x read, y written
    built = make_block(p, "cpu", torch.float32, torch.Generator().manual_seed(0))
    assert sum(t.numel() for t in built.parameters()) == n
    train = block_cost(params("gpt2", mode="train"), 2, None)
    assert train.bytes == 2 * n * 2 + 4 * T * H * 2  # weights read + gradients written; x, y, dy, dx


@pytest.mark.parametrize("preset", ["gpt-oss-20b", "gpt-oss-120b", "gpt2-xl"])
def test_full_size_param_counts_match_the_preset(preset):
    cfg = get_preset(preset)
    p = FAMILY.validate(FAMILY.flat_defaults(cfg))
    cost = block_cost(p, 2, [1] * cfg.n_experts)
    assert cost.extra["params"] == attention_params(cfg) + mlp_params(cfg)["total"]
    assert cost.extra["params_active"] == attention_params(cfg) + mlp_params(cfg)["active"]


@pytest.mark.parametrize("arch", ["gpt2", "gpt-oss"])
@pytest.mark.parametrize("mode", ["prefill", "decode", "train"])
def test_family_check_passes(arch, mode):
    w = FAMILY.build(params(arch, mode=mode, dropout=0.1 if arch == "gpt2" else 0.0), "cpu", torch.float32)
    w.fn()
    check = w.check()
    assert check.ok and check.max_rel_err < 1e-5, check
    if arch == "gpt-oss":
        assert sum(w.info["tokens_per_expert"]) == 2 * (1 if mode == "decode" else 12) * 2  # token slots: top-2


def test_validation_names_the_half_at_fault():
    with pytest.raises(ValidationError, match="norm: rmsnorm"):
        params("gpt-oss", norm="layernorm")
    with pytest.raises(ValidationError, match="n_kv_heads"):
        params("gpt-oss", attention__n_kv_heads=3)  # does not divide the 4 heads
    with pytest.raises(ValidationError, match="top_k"):
        params("gpt-oss", mlp__top_k=5)
    with pytest.raises(ValidationError, match="dropout"):
        params("gpt2", dropout=1.0)
    # null sizes resolve to GPT-2's rules at the case's hidden size, and are recorded resolved
    gpt2_shape = params("gpt-oss", norm="layernorm", attention__n_heads=None, attention__n_kv_heads=None,
                        attention__window=None, attention__sinks=False, attention__positions="none",
                        mlp__kind="dense", mlp__activation="gelu_tanh", mlp__intermediate=None)
    a, m = gpt2_shape.attention, gpt2_shape.mlp
    assert (a.n_heads, a.n_kv_heads, m.intermediate) == (4, 4, 128)
    assert BlockParams.model_validate(gpt2_shape.model_dump()) == gpt2_shape
    # the MoE's fields are ignored by the dense MLP (one profile sizes both kinds) and not recorded
    assert "mlp.n_experts" not in FAMILY.flat_params(gpt2_shape)
    assert FAMILY.flat_params(gpt2_shape)["mlp.kind"] == "dense"
    assert params("gpt-oss", mlp__intermediate=None).mlp.intermediate == 32  # an expert as wide as hidden
    with pytest.raises(ValidationError, match="does not divide"):
        params("gpt-oss", attention__n_heads=None, attention__head_dim=12)
    with pytest.raises(ValidationError, match="extra"):  # a typo inside a group is refused, not ignored
        params("gpt-oss", attention__windw=4)
    gpt2 = FAMILY.flat_defaults(get_preset("gpt2-xl"))
    assert (gpt2["mlp.kind"], gpt2["norm"], gpt2["attention.positions"], gpt2["dropout"],
            gpt2["mlp.intermediate"]) == ("dense", "layernorm", "none", 0.1, 6400)
