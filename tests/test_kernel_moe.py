"""The triton moe backend (ossbench/kernels/moe_grouped.py via layers/moe_triton.py) on the CPU, under
Triton's interpreter, against a float64 reference written here.

Triton reads TRITON_INTERPRET when `@triton.jit` decorates a kernel, that is when the kernel module is
imported. The `kernel` fixture therefore sets the variable for one test and imports
ossbench.kernels.moe_grouped afresh; at the end it drops the interpreted module again, so that no other
test sees it or the variable. The interpreter has no bfloat16: float32 and float16 here; the bf16 and
autotuned paths run in the gpu-marked tests (tests/test_moe_numerics.py and the end of this file).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ossbench.errors import SkipCase
from ossbench.layers.config import get_preset
from ossbench.layers.moe import MoE, Routing
from ossbench.layers.moe_spec import MoESpec
from ossbench.layers.mxfp4 import MXFP4Weight
from ossbench.workloads.moe import FAMILY, MoEParams

KERNEL = "ossbench.kernels.moe_grouped"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}  # max error over max |reference| (workloads/ffn.TOLERANCE)


@pytest.fixture
def kernel():
    """The kernel module, decorated under the interpreter, for one test (the gpu test below needs it
    compiled, in the same module). triton.language is imported before the variable
    is set: imported with it set, triton's own @jit library functions (tl.cdiv, tl.zeros, ...) would stay
    interpreted for the rest of the process and break any real compile after this module's tests."""
    import triton.language  # noqa: F401 - see above

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        saved = sys.modules.pop(KERNEL, None)
        module = importlib.import_module(KERNEL)
        yield module
    package = sys.modules["ossbench.kernels"]
    sys.modules.pop(KERNEL, None)
    vars(package).pop("moe_grouped", None)  # `from ossbench.kernels import moe_grouped` reads this first
    if saved is not None:
        sys.modules[KERNEL] = package.moe_grouped = saved


def make_moe(dtype, weights="dtype", hidden=40, intermediate=24, n_experts=6, top_k=2, bias=True, seed=0):
    if weights == "mxfp4":
        hidden, intermediate = 64, 32  # MXFP4 packs 32 values along the input dimension
    spec = MoESpec(hidden=hidden, intermediate=intermediate, n_experts=n_experts, top_k=top_k, weights=weights,
                   expert_bias=bias)
    return MoE(spec, backend="triton", dtype=dtype, generator=torch.Generator().manual_seed(seed))


def few_experts_routing(T, k, used, dtype, seed=0):
    """Every token picks k distinct experts among `used` (the others get no token); used[0] always."""
    g = torch.Generator().manual_seed(seed)
    used = torch.tensor(used)
    rest = torch.stack([used[1:][torch.randperm(len(used) - 1, generator=g)] for _ in range(T)])
    indices = torch.cat([used[:1].expand(T, 1), rest[:, :k - 1]], dim=1)
    weights = torch.softmax(torch.randn(T, k, generator=g), dim=-1).to(dtype)
    return Routing(indices, weights)


@torch.no_grad()
def reference(m: MoE, t: torch.Tensor, r: Routing) -> torch.Tensor:
    """float64 sum over each token's k slots of weight * expert(t), from the layer's (decoded) weights."""
    t64, out = t.double(), torch.zeros(t.shape, dtype=torch.float64)
    for e in r.indices.unique().tolist():
        rows, slots = (r.indices == e).nonzero(as_tuple=True)
        w1, w2 = m.expert_weights(torch.float64, e)  # MXFP4: the layer's own decoder
        h = t64[rows] @ w1.T + (m.mlp1_bias[e].double() if m.mlp1_bias is not None else 0)
        g = h[:, 0::2].clamp(max=m.swiglu_limit)
        lin = h[:, 1::2].clamp(-m.swiglu_limit, m.swiglu_limit)
        y = (g * torch.sigmoid(m.swiglu_alpha * g) * (lin + 1)) @ w2.T
        y = y + (m.mlp2_bias[e].double() if m.mlp2_bias is not None else 0)
        out.index_add_(0, rows, y * r.weights[rows, slots].double().unsqueeze(1))
    return out


def rel_err(got, ref):
    return float((got.double() - ref).abs().max() / ref.abs().max())


def run(m, t, r):
    with torch.no_grad():
        return m.experts(t, r, "triton")


@pytest.mark.parametrize("weights", ["dtype", "mxfp4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("top_k", [2, 4])
def test_few_experts_some_empty_match_float64(kernel, weights, dtype, top_k):
    # experts 1 and 4 get no token; expert 0 gets all 37 (three M tiles of 16 or two of 32)
    m = make_moe(dtype, weights, top_k=top_k)
    t = torch.randn(37, m.hidden, generator=torch.Generator().manual_seed(1)).to(dtype)
    r = few_experts_routing(37, top_k, [0, 2, 3, 5], dtype)
    assert r.tokens_per_expert(6)[[1, 4]].tolist() == [0, 0]
    got = run(m, t, r)
    assert got.shape == t.shape and got.dtype == dtype
    assert rel_err(got, reference(m, t, r)) < TOL[dtype]


@pytest.mark.parametrize("weights", ["dtype", "mxfp4"])
def test_partial_k_tiles_and_many_n_tiles(kernel, weights):
    """BLOCK_K 64 over K = 96 and 32 (MXFP4: a partial tile of packed blocks; dtype: 40 and 24), BLOCK_N 16
    (several N tiles per GROUP_M group), as GPU configs do it; the default interpreter tiles divide K."""
    hidden, intermediate = (96, 32) if weights == "mxfp4" else (40, 24)
    m = MoE(MoESpec(hidden=hidden, intermediate=intermediate, n_experts=5, top_k=2, weights=weights),
            backend="triton", generator=torch.Generator().manual_seed(6))
    t = torch.randn(80, hidden, generator=torch.Generator().manual_seed(7))  # 10 M tiles: 2 groups
    r = few_experts_routing(80, 2, [4, 0, 2], torch.float32)
    order, _, counts, _ = m._sorted_slots(r)
    w1 = kernel.Packed(m.mlp1_weight.blocks, m.mlp1_weight.scales) if weights == "mxfp4" else m.mlp1_weight.detach()
    w2 = kernel.Packed(m.mlp2_weight.blocks, m.mlp2_weight.scales) if weights == "mxfp4" else m.mlp2_weight.detach()
    got = kernel.moe_grouped(t, order, counts, r.weights, w1, m.mlp1_bias.detach(), w2, m.mlp2_bias.detach(),
                             config={"BLOCK_N": 16, "BLOCK_K": 64})
    assert rel_err(got, reference(m, t, r)) < TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_swiglu_clamps_bite(kernel, dtype):
    # mlp1 scaled so that many gate and linear pre-activations pass +-7: the clamps decide the output
    m = make_moe(dtype, n_experts=4, top_k=2)
    with torch.no_grad():
        m.mlp1_weight.mul_(12)
    t = torch.randn(16, m.hidden, generator=torch.Generator().manual_seed(5)).to(dtype)
    r = few_experts_routing(16, 2, [0, 1, 2, 3], dtype)
    h = t.double() @ m.mlp1_weight[0].detach().double().T  # expert 0 sees every token
    assert (h[:, 0::2] > 7).float().mean() > 0.1 and (h[:, 1::2] < -7).float().mean() > 0.1
    assert rel_err(run(m, t, r), reference(m, t, r)) < TOL[dtype]


@pytest.mark.parametrize("tokens", [1, 3])
def test_decode_batches_through_the_router_without_biases(kernel, tokens):
    m = make_moe(torch.float32, n_experts=8, top_k=4, bias=False)
    x = torch.randn(tokens, m.hidden, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        t = m.norm(x)
        r = m.route(t)
    assert rel_err(run(m, t, r), reference(m, t, r)) < TOL[torch.float32]
    with torch.no_grad():  # the whole block (residual form) agrees with the grouped backend
        assert torch.allclose(m(x), m(x, backend="grouped"), rtol=1e-5, atol=1e-5)


def test_mxfp4_in_kernel_decode_equals_the_layer_decode(kernel):
    """Random bytes (every E2M1 code in both nibbles) and scales over 2^-9..2^3: the kernel on packed
    weights equals the kernel on the layer's decoded weights, and both match float64."""
    m = make_moe(torch.float32, "mxfp4", n_experts=4, top_k=2)
    g = torch.Generator().manual_seed(3)
    for w in (m.mlp1_weight, m.mlp2_weight):
        w.blocks.copy_(torch.randint(0, 256, w.blocks.shape, generator=g, dtype=torch.uint8))
        w.scales.copy_(torch.randint(118, 131, w.scales.shape, generator=g, dtype=torch.uint8))
    t = torch.randn(20, m.hidden, generator=g) * 0.1
    r = few_experts_routing(20, 2, [0, 1, 3], torch.float32)
    packed = run(m, t, r)
    dense = m.expert_weights(torch.float32)  # what the other backends use
    b1, b2 = m.mlp1_bias.detach(), m.mlp2_bias.detach()
    order, _, counts, _ = m._sorted_slots(r)
    unpacked = kernel.moe_grouped(t, order, counts, r.weights, dense[0], b1, dense[1], b2)
    assert torch.allclose(packed, unpacked, rtol=1e-6, atol=1e-6)
    assert rel_err(packed, reference(m, t, r)) < TOL[torch.float32]


def test_nan_scale_poisons_only_its_expert(kernel):
    m = make_moe(torch.float32, "mxfp4", n_experts=4, top_k=1)
    m.mlp2_weight.scales[2, :, 0] = 255  # the E8M0 NaN encoding
    t = torch.randn(12, m.hidden, generator=torch.Generator().manual_seed(4))
    r = Routing(torch.arange(12).remainder(4).unsqueeze(1), torch.ones(12, 1))
    got = run(m, t, r)
    assert got[2::4].isnan().all() and not got[r.indices[:, 0] != 2].isnan().any()


def test_tile_table_covers_each_row_once(kernel):
    counts = torch.tensor([0, 17, 0, 1, 32, 0, 5])
    for bm in (16, 32):
        grid, expert, first, end = kernel._tile_table(counts, bm, int(counts.sum()))
        rows = torch.cat([torch.arange(int(f), min(int(f) + bm, int(n))) for e, f, n in zip(expert, first, end)
                          if e >= 0])
        assert torch.equal(rows, torch.arange(int(counts.sum())))
        owner = torch.repeat_interleave(torch.arange(7), counts)
        assert all((owner[int(f):int(n)] == int(e)).all() for e, f, n in zip(expert, first, end) if e >= 0)
        assert grid >= int(((counts + bm - 1) // bm).sum())


def test_the_family_runs_and_checks_the_triton_backend(kernel):
    base = {**FAMILY.defaults(get_preset("gpt-oss-20b")), "hidden": 64, "intermediate": 32, "n_experts": 8,
            "tokens": 24, "backend": "triton"}
    for over in ({}, {"weights": "mxfp4"}, {"mode": "decode", "tokens": 2}):
        w = FAMILY.build(MoEParams.model_validate({**base, **over}), "cpu", torch.float32)
        assert w.check().ok, over
    with pytest.raises(SkipCase, match="^triton is forward only: its Triton kernels have no backward pass$"):
        FAMILY.build(MoEParams.model_validate({**base, "mode": "train"}), "cpu", torch.float32)


def test_a_backward_is_refused_not_faked(kernel):
    m = make_moe(torch.float32)
    x = torch.randn(4, m.hidden, requires_grad=True)
    with pytest.raises(RuntimeError, match="forward only"):
        m(x)


def test_without_the_interpreter_the_cpu_is_refused_with_the_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    base = {**FAMILY.defaults(get_preset("gpt-oss-20b")), "hidden": 64, "intermediate": 32, "n_experts": 8,
            "tokens": 8, "backend": "triton"}
    with pytest.raises(SkipCase, match=r"runs on CPU only under Triton's interpreter \(TRITON_INTERPRET=1\)"):
        FAMILY.build(MoEParams.model_validate(base), "cpu", torch.float32)


def test_mxfp4_weights_are_never_decoded_to_a_dense_copy(kernel, monkeypatch):
    m = make_moe(torch.float32, "mxfp4")
    monkeypatch.setattr(MXFP4Weight, "dequantize", lambda *a, **k: pytest.fail("decoded outside the kernel"))
    t = torch.randn(5, m.hidden)
    with torch.no_grad():
        assert run(m, t, m.route(t)).isfinite().all()


COMPILE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from ossbench.kernels import moe_grouped as mg

if "nvidia" not in getattr(triton.backends, "backends", {}):
    raise SystemExit("skip: this triton has no NVIDIA backend")
floats = {"x_ptr", "h_ptr", "y_ptr", "b_ptr", "rw_ptr"}
for mxfp4 in (False, True):
    for fn in (mg._up_swiglu_kernel, mg._down_weighted_kernel):
        consts = {"HAS_BIAS": True, "MXFP4": mxfp4, "IEEE": False, "BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64,
                  "GROUP_M": 8}
        sig = {}
        for name in fn.arg_names:  # a bf16 launch: pointers, int32 sizes and strides, fp32 alpha / limit
            if name in consts:
                sig[name] = "constexpr"
            elif name in ("w_ptr", "ws_ptr"):
                sig[name] = "*u8" if mxfp4 else "*bf16"
            elif name.endswith("_ptr"):
                sig[name] = "*bf16" if name in floats else "*i64" if name == "slot_ptr" else "*i32"
            else:
                sig[name] = "fp32" if name in ("alpha", "limit") else "i32"
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": 4, "num_stages": 3})
        assert k.asm["cubin"] and k.metadata.shared < 228 * 1024, (fn, mxfp4, k.metadata.shared)
print("compiled")
"""


INTERPRET_FIRST = r"""
import sys, torch
sys.path.insert(0, %r)
import test_kernel_moe as T
fixture = T.kernel.__wrapped__()
next(fixture)
m = T.make_moe(torch.float32)
T.run(m, torch.randn(4, m.hidden), T.Routing(torch.tensor([[0, 1]] * 4), torch.ones(4, 2)))
next(fixture, None)
"""


def test_the_kernels_compile_for_sm90_without_a_gpu(tmp_path):
    """The interpreter runs the kernels as Python; this compiles them as a GPU run would (Triton's front end,
    the NVIDIA passes and ptxas, for an H100/H200 target), bf16 and MXFP4, in a fresh process after one
    interpreted call through the `kernel` fixture (as in a test session: the fixture must not leave Triton
    unable to compile)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1]), TRITON_CACHE_DIR=str(tmp_path))
    script = INTERPRET_FIRST % str(Path(__file__).resolve().parent) + COMPILE_SCRIPT
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode and "skip:" in done.stderr:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("weights", ["dtype", "mxfp4"])
@pytest.mark.parametrize("tokens", [1, 32, 256, 4096])
def test_bfloat16_on_gpu_at_gpt_oss_shapes(weights, tokens):
    """gpt-oss-20b's expert shapes in bf16 (real autotuning), decode to prefill, against float64."""
    spec = MoESpec(weights=weights)
    m = MoE(spec, backend="triton", device="cuda", dtype=torch.bfloat16, generator=torch.Generator("cuda").manual_seed(0))
    x = torch.randn(tokens, spec.hidden, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        t = m.norm(x)
        r = m.route(t)
        got = m.experts(t, r).cpu()
    rows = slice(0, min(tokens, 64))  # the float64 reference on the CPU: a few tokens
    m = m.cpu()
    r = Routing(r.indices[rows].cpu(), r.weights[rows].cpu())
    assert rel_err(got[rows], reference(m, t[rows].cpu(), r)) < 2e-2
