"""The split-KV decode kernel (ossbench/kernels/attention_decode.py) against a float64 reference written here,
against the attention layer's own eager decode path (so the KVCache layout it assumes is tested), and its
byte count against the attention family's cost model.

How the kernels run without a GPU: under TRITON_INTERPRET=1 in one child process for the whole module
(tests/triton_interpret.py says why not in this process: triton reads the variable when it decorates a
function, its own tl.max/tl.sum/tl.cdiv included, at its first import). The `outputs` fixture builds every
kernel call of this module up front (`calls()`), runs them in the child and hands each test its outputs; the
references and the comparisons run here. The interpreter has no bfloat16: float32 and float16 here; bf16,
the compiled kernels and the heuristic split count run in the `gpu` test.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import triton

from ossbench.kernels import attention_decode as kernel
from ossbench.layers.attention import Attention
from ossbench.layers.attention_spec import AttentionSpec
from ossbench.layers.config import get_preset
from ossbench.workloads.attention import AttentionParams, attention_cost, attention_pairs, defaults, kv_bytes

from triton_interpret import run_interpreted

TARGET = "ossbench.kernels.attention_decode:flash_decode"
# max|out - ref| / max|ref|: fp32 accumulates in fp32 (at most 5e-7 seen here); fp16 rounds the
# probabilities before P @ V and the output (q/k/v roundings are shared with the reference), each 2^-11
# (at most 3.5e-4 seen): 2e-3 is ~4 units
TOLERANCE = {torch.float32: 5e-6, torch.float16: 2e-3}


def reference(q, k, v, lengths, sinks, window, scale) -> torch.Tensor:
    """float64: each sequence's slots [max(0, L - W), L) (all [0, L) without a window), the sink column."""
    Hq, Hkv = q.shape[1], k.shape[1]
    out = []
    for b, n in enumerate(lengths.tolist()):
        lo = max(0, n - window) if window is not None else 0
        kb = k[b, :, lo:n].double().repeat_interleave(Hq // Hkv, dim=0)  # [Hq, n - lo, D]
        vb = v[b, :, lo:n].double().repeat_interleave(Hq // Hkv, dim=0)
        scores = torch.einsum("hd,htd->ht", q[b].double(), kb) * scale
        if sinks is not None:
            scores = torch.cat([scores, sinks.double()[:, None]], dim=1)
        probs = torch.softmax(scores, dim=1)[:, :n - lo]
        out.append(torch.einsum("ht,htd->hd", probs, vb))
    return torch.stack(out)  # [B, Hq, D]


def inputs(batch, n_heads, n_kv_heads, slots, head_dim, lengths, dtype, sinks=True, seed=0):
    """Random q, k, v, sinks; the slots past each sequence's length hold NaN, so a kernel that reads (and
    does not just mask) a slot it should not see returns NaN."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n_heads, head_dim, generator=g).to(dtype)
    k = torch.randn(batch, n_kv_heads, slots, head_dim, generator=g).to(dtype)
    v = torch.randn(batch, n_kv_heads, slots, head_dim, generator=g).to(dtype)
    for b, n in enumerate(lengths):
        k[b, :, n:] = v[b, :, n:] = float("nan")
    s = torch.randn(n_heads, generator=g) if sinks else None
    return q, k, v, torch.tensor(lengths, dtype=torch.int32), s


def rel_error(got, ref) -> float:
    assert isinstance(got, torch.Tensor), got  # else the exception the interpreted call raised
    return ((got.double() - ref).abs().max() / ref.abs().max()).item()


# (name, heads, kv heads, head_dim, slots, lengths, window, sinks, splits): lengths include 1 and values that
# are not multiples of the 64-key block; the windowed case is the layer's ring (slots = W) with one full
# ring (one split: kernel 1 finishes alone; two: through the merge); head_dim 64 as gpt-oss (one of them
# MQA: 64 query heads, the M tile at 64 rows) and 48 (padded to 64)
CASES = [
    ("gqa8-sinks", 8, 1, 16, 130, [1, 37, 130], None, True, 3),
    ("gqa1-no-sinks", 2, 2, 16, 100, [100, 65, 1], None, False, 1),
    ("window-ring-gqa4", 8, 2, 16, 48, [48, 20, 1], 48, True, 1),
    ("window-ring-split", 8, 2, 16, 48, [48, 20, 1], 48, True, 2),
    ("mqa64-d64", 64, 1, 64, 129, [129, 64], None, True, 2),
    ("d48-gqa2", 4, 2, 48, 70, [70, 3], None, True, 2),
]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
SCALE = 0.25


def case_args(case, dtype) -> tuple:
    _, hq, hkv, head_dim, slots, lengths, window, sinks, splits = case
    q, k, v, n, s = inputs(len(lengths), hq, hkv, slots, head_dim, lengths, dtype, sinks)
    return (q, k, v, n, s, window, SCALE, splits)


def split_args(splits) -> tuple:
    """1, 2 and 5 splits (5: more splits than blocks for the shorter sequence, so some splits are empty), and
    None (the wrapper's choice)."""
    return (*inputs(2, 8, 1, 200, 16, [200, 70], torch.float32), None, SCALE, splits)


def linear_window_args() -> tuple:
    """A window over a linear cache (slots in position order, longer than W): the last W valid slots (the
    ones before them hold NaN too)."""
    q, k, v, n, s = inputs(2, 4, 2, 150, 16, [150, 30], torch.float32)
    k[0, :, :100] = v[0, :, :100] = float("nan")
    return (q, k, v, n, s, 50, SCALE, 2)


def zero_length_args(sinks: bool, splits: int) -> tuple:
    """q as the layer hands it (non-contiguous strides); a sequence with no valid slot gives zeros."""
    q, k, v, n, s = inputs(2, 4, 2, 40, 16, [0, 40], torch.float32, sinks)
    q = q.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    return (q, k, v, n, s, None, SCALE, splits)


def layer_decode(window: int | None):
    """The layer's own decode: a prefill of 12 tokens into its KVCache, then decode steps at positions
    12..14 on the eager backend. A window-8 layer's cache is a ring of 8 slots that has already wrapped
    (position p in slot p % 8). Returns [(kernel call args, the eager update [B, 1, hidden])] and the layer;
    the same on every call (seeded; the global RNG is restored afterwards)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _layer_decode(window)


def _layer_decode(window: int | None):
    module = Attention(AttentionSpec(hidden=64, n_heads=8, n_kv_heads=2, head_dim=16, window=window))
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(torch.randn_like(param) * (1.0 if name == "sinks" else 0.1) + (1.0 if "norm" in name else 0))
    captured = {}
    eager = module._eager

    def spy(q, k, v, mask):  # the eager backend, keeping the query the layer hands a backend
        captured["q"] = q
        return eager(q, k, v, mask)

    module._eager = spy  # looked up per call (backends.layer_method)
    B, prefill, steps = 2, 12, 3
    cache = module.new_cache(B, prefill + steps)
    assert cache.capacity == (8 if window else prefill + steps)
    steps_out = []
    with torch.no_grad():
        module.update(torch.randn(B, prefill, 64), cache, 0)
        for pos in range(prefill, prefill + steps):
            want = module.update(torch.randn(B, 1, 64), cache, pos)  # writes slot pos % C, then attends
            lengths = torch.full((B,), min(pos + 1, cache.capacity), dtype=torch.int32)
            args = (captured["q"][:, :, 0].clone(), cache.k.clone(), cache.v.clone(), lengths,
                    module.sinks.detach().clone(), module.window, module.scale, 2)
            steps_out.append((args, want))
    return steps_out, module


LAYER_WINDOWS = {"full": None, "window8": 8}


def calls() -> dict[str, tuple[tuple, dict]]:
    """Every interpreted kernel call of this module, by name."""
    out = {f"case/{case[0]}/{d}": (case_args(case, dtype), {}) for case in CASES for d, dtype in DTYPES.items()}
    out |= {f"splits/{n}": (split_args(n), {}) for n in (1, 2, 5)}
    out["splits/default"] = (split_args(None)[:7], {})  # num_splits left out: the wrapper chooses
    out["linear-window"] = (linear_window_args(), {})
    out |= {f"zero-length/{sinks}/{n}": (zero_length_args(sinks, n), {}) for sinks in (True, False) for n in (1, 2)}
    for label, window in LAYER_WINDOWS.items():
        for i, (args, _) in enumerate(layer_decode(window)[0]):
            out[f"layer/{label}/{i}"] = (args, {})
    return out


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return run_interpreted(TARGET, calls(), tmp_path_factory.mktemp("interpreted-decode"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_float64(outputs, case, dtype):
    args = case_args(case, DTYPES[dtype])
    got = outputs[f"case/{case[0]}/{dtype}"]
    assert isinstance(got, torch.Tensor), got
    assert got.dtype == DTYPES[dtype] and got.shape == args[0].shape
    assert rel_error(got, reference(*args[:7])) < TOLERANCE[DTYPES[dtype]]


def test_split_counts_agree(outputs):
    ref = reference(*split_args(1)[:7])
    outs = [outputs[f"splits/{n}"] for n in (1, 2, 5, "default")]
    for out in outs:
        assert rel_error(out, ref) < TOLERANCE[torch.float32]
    for out in outs[1:]:
        assert torch.allclose(outs[0], out, rtol=0, atol=1e-6)


def test_window_over_a_linear_cache_reads_the_last_w_slots(outputs):
    assert rel_error(outputs["linear-window"], reference(*linear_window_args()[:7])) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("splits", [1, 2])
@pytest.mark.parametrize("sinks", [True, False], ids=["sinks", "no-sinks"])
def test_strided_query_and_length_zero(outputs, sinks, splits):
    q, k, v, n, s = zero_length_args(sinks, splits)[:5]
    got = outputs[f"zero-length/{sinks}/{splits}"]
    assert isinstance(got, torch.Tensor), got
    assert torch.equal(got[0], torch.zeros_like(got[0]))
    assert rel_error(got[1:], reference(q[1:], k[1:], v[1:], n[1:], s, None, SCALE)) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("label", LAYER_WINDOWS)
def test_matches_the_layers_eager_decode(outputs, label):
    steps, module = layer_decode(LAYER_WINDOWS[label])
    for i, (args, want) in enumerate(steps):
        o = outputs[f"layer/{label}/{i}"]  # [B, Hq, D]
        assert isinstance(o, torch.Tensor), o
        with torch.no_grad():
            got = module.out(o.reshape(o.shape[0], 1, -1))  # the layer's out projection, as after any backend
        assert rel_error(got, want.double()) < TOLERANCE[torch.float32], f"decode step {i}"


def test_choose_num_splits():
    choose = kernel.choose_num_splits
    assert choose(8, 8, 32768, 132) == 9  # 64 groups -> 576 programs on 132 SMs
    assert choose(1, 8, 32768, 132) == kernel.MAX_SPLITS
    assert choose(8, 8, 128, 132) == 1  # a 128-slot window ring: too short to split
    assert choose(1, 1, 1000, 132) == 1000 // kernel.MIN_KEYS_PER_SPLIT
    assert choose(64, 8, 131072, 132) == 2
    with pytest.raises(ValueError, match="batch"):
        choose(0, 8, 10, 132)


@pytest.mark.parametrize("window,kv_len", [(None, 1000), (None, 1), (128, 1000), (128, 128)])
def test_bytes_match_the_cost_model(window, kv_len):
    """The keys a decode step at position kv_len reads (kv_len + 1 slots, a window's ring at most W) are the
    bytes the attention family's decode cost model counts for K and V."""
    p = AttentionParams(**{**defaults(get_preset("gpt-oss-20b")), "mode": "decode", "backend": "eager",
                           "batch": 4, "kv_len": kv_len, "window": window})
    cost = attention_cost(p, 2)
    lengths = [p.layer_mask.cache_slots(kv_len + 1)] * p.batch  # slots a layer's KVCache holds at kv_len
    kv = kernel.kv_read_bytes(lengths, p.n_kv_heads, p.head_dim, 2, window)
    assert kv == cost.extra["kv_cache_bytes"] == kv_bytes(attention_pairs(p), p.n_kv_heads, p.head_dim, p.batch, 2)
    q_and_out = 2 * p.batch * p.n_heads * p.head_dim * 2
    assert kernel.flash_decode_bytes(lengths, p.n_heads, p.n_kv_heads, p.head_dim, 2, window) == kv + q_and_out


def test_bad_arguments_are_refused():
    """Checked on the host before any launch (so here, without the interpreter)."""
    q, k, v, n, s = inputs(2, 4, 2, 40, 16, [5, 40], torch.float32)
    bad = [((q[:, :3], k, v, n, s), "multiple of KV heads"), ((q, k, v[..., :8], n, s), "one shape"),
           ((q.half(), k, v, n, s), "one dtype"), ((q, k, v, n.float(), s), "lengths"),
           ((q, k, v, n, s[:2]), "sinks")]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            kernel.flash_decode(*args, None, SCALE)
    with pytest.raises(ValueError, match="window"):
        kernel.flash_decode(q, k, v, n, s, 0, SCALE)
    with pytest.raises(ValueError, match="num_splits"):
        kernel.flash_decode(q, k, v, n, s, None, SCALE, num_splits=0)


def test_cpu_without_the_interpreter_is_unavailable():
    if kernel.interpreted():
        pytest.skip("this process imported the kernels under TRITON_INTERPRET=1")
    assert "CUDA" in kernel.unavailable_reason("cpu")
    q, k, v, n, s = inputs(1, 2, 1, 8, 16, [8], torch.float32)
    with pytest.raises(RuntimeError, match="CUDA"):
        kernel.flash_decode(q, k, v, n, s, None, SCALE)


def _compile(fn, types: dict[str, str], constexprs: dict, target, num_warps: int):
    """Compile `fn` as a launch on contiguous tensors would: pointer and scalar types by argument name, "i32"
    for the rest (strides, sizes), unit strides as constants and the other ints and pointers divisible by 16
    (what triton's launcher specialises on, so the K/V loads take the vectorised, pipelined path)."""
    from triton.compiler import ASTSource
    constexprs = {**{name: 1 for name in fn.arg_names if name.startswith("stride_") and name.endswith("d")},
                  **constexprs}
    signature = {name: "constexpr" if name in constexprs else types.get(name, "i32") for name in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if signature[name].startswith("*") or signature[name] == "i32"}
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                          options=dict(num_warps=num_warps))


@pytest.mark.parametrize("arch", [80, 90], ids=["sm80", "sm90"])
def test_compiles_for_cuda_without_a_gpu(arch):
    """The interpreter runs the kernels as Python and would accept what the compiler refuses (a plain global,
    a badly typed branch); compiling them ahead of time for a CUDA target (ptxas ships with triton) needs
    no GPU: the split kernel in bf16 with one split (finishing alone, windowed) and nine, in fp32 (IEEE dot),
and the merge with sinks."""
    compiler = pytest.importorskip("triton.compiler")
    from triton.backends.compiler import GPUTarget
    if kernel.interpreted() or "constexprs" not in inspect.signature(compiler.ASTSource).parameters:
        pytest.skip("needs the compiled (not interpreted) kernels and triton's ASTSource(fn, signature, constexprs)")
    target = GPUTarget("cuda", arch, 32)
    for dtype, windowed, splits in (("bf16", True, 1), ("bf16", False, 9), ("fp32", False, 9)):
        consts = dict(GROUP=8, HEAD_DIM=64, NUM_SPLITS=splits, N_HEADS=64, WINDOWED=windowed, HAS_SINKS=True,
                      BLOCK_G=16, BLOCK_N=kernel.BLOCK_N, BLOCK_D=64, DOT_PRECISION="ieee" if dtype == "fp32" else "tf32")
        types = {"Q": f"*{dtype}", "K": f"*{dtype}", "V": f"*{dtype}", "LENGTHS": "*i32", "O_PART": "*fp32",
                 "M_PART": "*fp32", "L_PART": "*fp32", "SINKS": "*bf16", "OUT": f"*{dtype}", "qk_scale": "fp32"}
        assert _compile(kernel._split_kernel, types, consts, target, kernel.SPLIT_WARPS).asm["cubin"]
    consts = dict(HEAD_DIM=64, NUM_SPLITS=9, N_HEADS=64, HAS_SINKS=True, BLOCK_S=16, BLOCK_D=64)
    types = {"O_PART": "*fp32", "M_PART": "*fp32", "L_PART": "*fp32", "SINKS": "*bf16", "OUT": "*bf16"}
    assert _compile(kernel._merge_kernel, types, consts, target, kernel.MERGE_WARPS).asm["cubin"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_gpu_gpt_oss_shapes(dtype):
    """gpt-oss's 64 query / 8 KV heads of 64, batch 8, ragged lengths up to 8k, the heuristic split count, and a
    128-slot window ring; compiled kernels (real bf16)."""
    lengths = [8192, 1, 4097, 63, 8000, 129, 2048, 7777]
    q, k, v, n, s = (t.cuda() for t in inputs(8, 64, 8, 8192, 64, lengths, dtype))
    tol = {torch.bfloat16: 2e-2, **TOLERANCE}[dtype]  # bf16: ~5 units of 2^-8
    for window in (None, 128):
        kk, vv = (k, v) if window is None else (k[:, :, :128], v[:, :, :128])
        nn = n if window is None else n.clamp(max=128)
        got = kernel.flash_decode(q, kk, vv, nn, s, window, 0.125)
        assert rel_error(got.cpu(), reference(q.cpu(), kk.cpu(), vv.cpu(), nn.cpu(), s.cpu(), window, 0.125)) < tol
