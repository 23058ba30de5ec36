"""MoE numerics on the CPU: every backend against an independent float64 reference written here, a
checkpoint-style state dict, MXFP4 decoding against a reference decoder, and routing skew."""

from __future__ import annotations

import math

import pytest
import torch

from ossbench.layers.moe import MoE, Routing, load_max_over_mean
from ossbench.layers.moe_spec import MoESpec
from ossbench.layers.mxfp4 import MXFP4Weight, dequantize, quantize

H, I, E, K, T = 64, 32, 8, 2, 40  # small: hidden, expert width, experts, top-k, tokens
IMPLS = [("gather", "auto"), ("loop", "auto"), ("grouped", "grouped_mm"), ("grouped", "padded_bmm")]


# --- independent references -----------------------------------------------------------------------------
def ref_swiglu(h: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    out = torch.empty(h.shape[0] // 2, dtype=h.dtype)
    for j in range(h.shape[0] // 2):
        g, lin = float(h[2 * j]), float(h[2 * j + 1])
        g, lin = min(g, limit), max(-limit, min(lin, limit))
        out[j] = g / (1 + math.exp(-alpha * g)) * (lin + 1)
    return out


def ref_moe(sd: dict[str, torch.Tensor], x: torch.Tensor, top_k: int, eps: float = 1e-5) -> torch.Tensor:
    """gpt-oss MLPBlock in float64, token by token: x + sum_j w_j (W2 swiglu(W1 t + b1) + b2)."""
    sd = {k: v.double() for k, v in sd.items()}
    out = x.double().clone()
    for i, row in enumerate(x.double()):
        t = row / torch.sqrt((row * row).mean() + eps) * sd["norm.scale"]
        logits = sd["gate.weight"] @ t + sd["gate.bias"]
        chosen = sorted(range(len(logits)), key=lambda e: -float(logits[e]))[:top_k]
        z = torch.stack([logits[e] for e in chosen])
        weights = torch.exp(z - z.max()) / torch.exp(z - z.max()).sum()
        for w, e in zip(weights, chosen):
            h = sd["mlp1_weight"][e] @ t + sd["mlp1_bias"][e]
            y = sd["mlp2_weight"][e] @ ref_swiglu(h) + sd["mlp2_bias"][e]
            out[i] += w * y
    return out


FP4 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def ref_decode_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Byte by byte: low nibble = even element, bit 3 = sign, value * 2^(scale - 127)."""
    *prefix, G, nb = blocks.shape
    flat_b, flat_s = blocks.reshape(-1, G, nb).tolist(), scales.reshape(-1, G).tolist()
    rows = []
    for row_b, row_s in zip(flat_b, flat_s):
        vals = []
        for block, scale in zip(row_b, row_s):
            for byte in block:
                for nibble in (byte & 0xF, byte >> 4):
                    mag = FP4[nibble & 7] * 2.0 ** (scale - 127)
                    vals.append(-mag if nibble & 8 else mag)
        rows.append(vals)
    return torch.tensor(rows, dtype=torch.float64).reshape(*prefix, G * nb * 2)


# --- helpers -------------------------------------------------------------------------------------------
def checkpoint_state(g: torch.Generator, n_experts: int = E, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Tensors named and shaped like a gpt-oss block's `mlp.*` (after MXFP4 decoding)."""
    def r(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(shape, generator=g) * std
    return {
        "norm.scale": 1 + 0.1 * r(H),
        "gate.weight": r(n_experts, H, std=1 / math.sqrt(H)),
        "gate.bias": r(n_experts, std=0.1),
        # std 3/sqrt(H): pre-activations of a few units, so the +-7 clamps are exercised
        "mlp1_weight": r(n_experts, 2 * I, H, std=scale * 3 / math.sqrt(H)),
        "mlp1_bias": r(n_experts, 2 * I, std=0.5),
        "mlp2_weight": r(n_experts, H, I, std=1 / math.sqrt(I)),
        "mlp2_bias": r(n_experts, H, std=0.1),
    }


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.detach().double() - ref).abs().max() / ref.abs().max())


def moe_from_state(sd: dict[str, torch.Tensor], top_k: int, **kwargs) -> MoE:
    m = MoE(MoESpec(H, I, sd["gate.weight"].shape[0], top_k), dtype=torch.float32, **kwargs)
    m.load_state_dict(sd, strict=True)
    return m.requires_grad_(False)


# --- tests ---------------------------------------------------------------------------------------------
def test_checkpoint_state_dict_loads_and_every_backend_matches_the_reference():
    g = torch.Generator().manual_seed(0)
    sd = checkpoint_state(g)
    x = torch.randn(T, H, generator=g)
    ref = ref_moe(sd, x, K)
    moe = moe_from_state(sd, K)
    h = x @ sd["mlp1_weight"][0].T  # the clamps are really exercised at this scale
    assert (h.abs() > 7).any()
    for backend, impl in IMPLS:
        moe.grouped_impl = impl
        out = moe(x, backend=backend)
        assert out.shape == x.shape
        assert rel_err(out - x, ref - x.double()) < 1e-5, (backend, impl)


@pytest.mark.parametrize("n_experts,top_k", [(1, 1), (5, 5), (7, 3), (16, 1)])
def test_any_number_of_experts_and_top_k(n_experts, top_k):
    g = torch.Generator().manual_seed(n_experts * 10 + top_k)
    sd = checkpoint_state(g, n_experts)
    x = torch.randn(3, 5, H, generator=g)  # leading dims are flattened and restored
    ref = ref_moe(sd, x.reshape(-1, H), top_k).reshape(x.shape)
    moe = moe_from_state(sd, top_k)
    for backend, impl in IMPLS:
        moe.grouped_impl = impl
        assert rel_err(moe(x, backend=backend) - x, ref - x.double()) < 1e-5, (backend, impl)


def test_backends_agree_on_gradients():
    g = torch.Generator().manual_seed(1)
    sd = checkpoint_state(g)
    x0 = torch.randn(T, H, generator=g)
    dy = torch.randn(T, H, generator=g)
    grads = {}
    for backend, impl in IMPLS[:2] + [("grouped", "padded_bmm")]:
        moe = moe_from_state(sd, K, grouped_impl=impl).requires_grad_(True)
        x = x0.clone().requires_grad_(True)
        grads[backend, impl] = torch.autograd.grad(moe(x, backend=backend), [x, *moe.parameters()], dy)
    first, *rest = grads.values()
    for other in rest:
        for a, b in zip(first, other):
            assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max()) + 1e-12


def test_mxfp4_decoding_matches_a_reference_decoder():
    g = torch.Generator().manual_seed(2)
    blocks = torch.randint(0, 256, (3, 4, 2, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(100, 150, (3, 4, 2), generator=g, dtype=torch.uint8)
    scales[0, 0, 0], scales[0, 0, 1] = 0, 254  # the extremes of the exponent range stay exact
    scales[2, 3, 1] = 255  # E8M0's NaN
    ref = ref_decode_mxfp4(blocks, scales)
    ref[2, 3, 32:] = math.nan
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        got = dequantize(blocks, scales, dtype)
        assert got.shape == (3, 4, 64) and got.dtype == dtype
        # every value is exact in the dtype; beyond its range (6 * 2^127 in float32) it overflows to inf
        want = ref.to(dtype).double()
        assert torch.equal(got.double().nan_to_num(7.0), want.nan_to_num(7.0)), dtype


def test_mxfp4_quantize_roundtrips_and_stays_within_one_step():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 96, generator=g) * torch.logspace(-4, 4, 6).unsqueeze(1)
    w[0, :32] = 0.0  # an all-zero block
    blocks, scales = quantize(w)
    assert blocks.dtype == scales.dtype == torch.uint8 and blocks.shape == (6, 3, 16) and scales.shape == (6, 3)
    dq = dequantize(blocks, scales, torch.float64)
    step = torch.exp2(scales.double() - 127).repeat_interleave(32, dim=-1)  # half the widest gap (4 -> 6)
    assert torch.all((dq - w.double()).abs() <= step)
    assert torch.equal(dq[0, :32], torch.zeros(32, dtype=torch.float64))
    assert torch.equal(dequantize(*quantize(dq), torch.float64), dq)  # representable values are kept


def test_mxfp4_checkpoint_tensors_load_and_every_backend_matches_the_reference():
    g = torch.Generator().manual_seed(4)
    sd = checkpoint_state(g, scale=0.3)
    packed = {}
    for name in ("mlp1_weight", "mlp2_weight"):
        packed[f"{name}.blocks"], packed[f"{name}.scales"] = quantize(sd.pop(name))
    moe = MoE(MoESpec(H, I, E, K, weights="mxfp4"), dtype=torch.float32)
    moe.load_state_dict({**sd, **packed}, strict=True)
    assert isinstance(moe.mlp1_weight, MXFP4Weight)
    for name in ("mlp1_weight", "mlp2_weight"):  # decoded with the test's own decoder
        sd[name] = ref_decode_mxfp4(packed[f"{name}.blocks"], packed[f"{name}.scales"])
    x = torch.randn(T, H, generator=g)
    ref = ref_moe(sd, x, K)
    for backend, impl in IMPLS:
        moe.grouped_impl = impl
        assert rel_err(moe(x, backend=backend) - x, ref - x.double()) < 1e-5, (backend, impl)


def test_routing_weights_are_a_softmax_over_the_top_k_logits():
    moe = MoE(MoESpec(H, I, E, 3), dtype=torch.float64)
    t = torch.randn(10, H, dtype=torch.float64)
    r = moe.route(t)
    logits = moe.gate(t)
    top = logits.sort(dim=-1, descending=True)
    assert torch.equal(r.indices, top.indices[:, :3])
    assert torch.allclose(r.weights, torch.softmax(top.values[:, :3], dim=-1))
    counts = r.tokens_per_expert(E)
    assert int(counts.sum()) == 30 and counts.shape == (E,)


def test_skew_makes_expert_load_imbalanced():
    from ossbench.layers.config import get_preset
    from ossbench.workloads.moe import FAMILY, MoEParams

    base = {**FAMILY.defaults(get_preset("gpt-oss-20b")), "hidden": 64, "intermediate": 32, "n_experts": 16,
            "mode": "prefill", "tokens": 512}
    ratios = []
    for skew in (0.0, 0.5, 1.0, 2.0):
        w = FAMILY.build(MoEParams.model_validate({**base, "skew": skew}), "cpu", torch.float32)
        counts = w.info["tokens_per_expert"]
        assert sum(counts) == 512 * 4
        assert w.cost.extra["load_max_over_mean"] == pytest.approx(load_max_over_mean(counts))
        ratios.append(w.cost.extra["load_max_over_mean"])
        if skew >= 1.0:
            assert counts[0] == max(counts)  # expert 0 is the most popular under Zipf
    assert ratios == sorted(ratios) and ratios[-1] > 1.5 * ratios[0], ratios
    assert ratios[0] < 1.6  # the random router alone is roughly balanced


def test_load_max_over_mean():
    assert load_max_over_mean([4, 4, 4, 4]) == 1.0
    assert load_max_over_mean([16, 0, 0, 0]) == 4.0
    r = Routing(torch.tensor([[0, 1], [0, 2]]), torch.ones(2, 2))
    assert r.tokens_per_expert(4).tolist() == [2, 1, 1, 0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_every_backend_passes_the_workload_check_on_gpu(dtype):
    from ossbench.layers.config import get_preset
    from ossbench.workloads.moe import FAMILY, MoEParams

    base = {**FAMILY.defaults(get_preset("gpt-oss-20b")), "hidden": 256, "intermediate": 256, "tokens": 300}
    for over in ({"backend": "gather"}, {"backend": "loop"}, {"backend": "grouped"},
                 {"backend": "grouped", "grouped_impl": "padded_bmm"}, {"weights": "mxfp4"}, {"skew": 1.0},
                 {"mode": "train"}, {"mode": "decode", "tokens": 4}, {"backend": "triton"},
                 {"backend": "triton", "weights": "mxfp4"}, {"backend": "triton", "mode": "decode", "tokens": 4}):
        w = FAMILY.build(MoEParams.model_validate({**base, **over}), "cuda", dtype)
        c = w.check()
        assert c.ok, (over, c)
        w.fn()
        torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_workload_check_passes_for_every_backend_and_catches_a_wrong_expert(dtype):
    from ossbench.layers.config import get_preset
    from ossbench.workloads.moe import FAMILY, MoEParams

    base = {**FAMILY.defaults(get_preset("gpt-oss-20b")), "hidden": 64, "intermediate": 32, "n_experts": 8,
            "tokens": 100}
    for over in ({"backend": "gather"}, {"backend": "loop"}, {"backend": "grouped"},
                 {"grouped_impl": "padded_bmm"}, {"weights": "mxfp4"}, {"mode": "train", "tokens": 20}):
        w = FAMILY.build(MoEParams.model_validate({**base, **over}), "cpu", dtype)
        assert w.check().ok, over
    real_act = MoE.act
    try:  # swapped gate and linear halves: a plausible bug that must fail the check
        MoE.act = lambda self, h: real_act(self, torch.stack((h[..., 1::2], h[..., 0::2]), -1).flatten(-2))
        assert not FAMILY.build(MoEParams.model_validate(base), "cpu", dtype).check().ok
    finally:
        MoE.act = real_act
