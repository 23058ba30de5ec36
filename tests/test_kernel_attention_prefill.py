"""The Triton attention kernel (ossbench/kernels/attention_prefill.py) and the `triton` attention backend,
against a float64 reference, on the CPU under Triton's interpreter.

How the interpreter is switched on: Triton reads TRITON_INTERPRET when `@triton.jit` decorates a function,
and triton.language's own helpers (tl.max, tl.sum, tl.zeros) are decorated when triton is first imported.
A pytest process has often imported triton already (torch.compile does), so setting the variable here
would be too late. The `interpreted` fixture therefore runs every numerics case once, in one child
process started with TRITON_INTERPRET=1 (tests/kernel_prefill_cases.py: the cases and the reference),
and each test below asserts on its case's figures. The interpreter has no bfloat16: float32 and float16;
bf16, real autotuning and the compiled kernels are the GPU test at the end (`pytest -m gpu`).

Shapes are tiny (head_dim 16, 64 or 128, at most 64 tokens): the child took 4.5-14 s on the 2-core VM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

import kernel_prefill_cases as cases  # noqa: E402  (tests/ is on sys.path under pytest)
from ossbench import backends  # noqa: E402
from ossbench.errors import SkipCase  # noqa: E402
from ossbench.layers import attention_triton  # noqa: E402
from ossbench.layers.masks import chunked  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def interpreted() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, str(Path(cases.__file__))], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def result(interpreted: dict, name: str) -> dict:
    got = interpreted[name]
    assert "error" not in got, got["error"]
    return got


@pytest.mark.parametrize("case", list(cases.FORWARD))
def test_forward_matches_float64(interpreted, case):
    got = result(interpreted, f"forward/{case}")
    assert got["shape_ok"]
    assert got["out"] < got["tolerance"]


@pytest.mark.parametrize("case", list(cases.BACKWARD))
def test_backward_matches_float64_autograd(interpreted, case):
    """dq, dk, dv and the sink gradient against float64 autograd through the reference."""
    got = result(interpreted, f"backward/{case}")
    assert got["shape_ok"]
    for name in ("dq", "dk", "dv") + (("dsinks",) if cases.BACKWARD[case][7] else ()):
        assert got[name] < got["tolerance"], name


def test_full_non_causal_attention(interpreted):
    assert result(interpreted, "special/full-non-causal")["out"] < 1e-5


def test_a_chunked_prefill_equals_the_whole(interpreted):
    """The second half of a prefill, run alone at q_start 24 against all 48 keys, gives the whole
    prefill's rows: the key loop's lower bound keeps the cached keys its window reaches."""
    assert result(interpreted, "special/chunked-prefill")["max_diff"] < 1e-5


def test_keys_outside_the_window_are_never_read(interpreted):
    """NaN in every key and value no query may see: the output stays finite and exact."""
    got = result(interpreted, "special/nan-outside-window")
    assert got["finite"] and got["out"] < 1e-5


@pytest.mark.parametrize("mode", cases.FAMILY_MODES)
def test_the_attention_family_runs_on_the_triton_backend(interpreted, mode):
    """A gpt-oss block (YaRN RoPE, sinks, window 8, GQA 8) built by the workload with backend triton passes
    its float64 check; in train the check covers the input gradient through the kernel's backward."""
    got = result(interpreted, f"family/{mode}")
    assert got["ok"], got
    if mode == "train":
        assert "input gradient" in got["reference"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(shape_q=(1, 6, 8, 16), shape_k=(1, 4, 8, 16)), "multiple of Hkv"),
    (dict(shape_q=(1, 2, 8, 48), shape_k=(1, 2, 8, 48)), "head_dim 48"),
    (dict(causal=False, window=4), "causal"),
    (dict(q_start=3), "q_start 3"),
])
def test_bad_arguments_are_refused(kwargs, message):
    from ossbench.kernels.attention_prefill import flash_attention  # checks run before any launch
    shape_q, shape_k = kwargs.pop("shape_q", (1, 2, 8, 16)), kwargs.pop("shape_k", (1, 2, 8, 16))
    with pytest.raises(ValueError, match=message):
        flash_attention(torch.zeros(shape_q), torch.zeros(shape_k), torch.zeros(shape_k), **kwargs)


# --- the backend's registration
def test_the_backend_is_unavailable_on_the_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in backends.unsupported_reason("attention", "triton", "cpu", torch.float32)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backends.unsupported_reason("attention", "triton", "cpu", torch.float32, sinks=True, masked=True,
                                       train=True) is None
    assert "float64" in backends.unsupported_reason("attention", "triton", "cpu", torch.float64)
    assert "drop out" in backends.unsupported_reason("attention", "triton", "cuda", dropout=True)


def test_a_cpu_case_without_the_interpreter_skips_with_the_backends_reason(monkeypatch):
    from ossbench.layers.config import get_preset
    from ossbench.workloads.attention import FAMILY, AttentionParams, defaults
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    p = AttentionParams(**{**defaults(get_preset("gpt-oss-20b")), **cases.FAMILY_SMALL, "mode": "prefill",
                           "backend": "triton"})
    with pytest.raises(SkipCase, match="TRITON_INTERPRET=1"):
        FAMILY.build(p, "cpu", torch.float32)


def test_decode_calls_the_split_kv_kernel_when_it_exists(monkeypatch):
    """With ossbench/kernels/attention_decode.py present, a decode step goes to its flash_decode with the
    query [B, Hq, D], the kept keys read in place (a strided slice of the cache, not a copy), every slot
    valid and no window."""
    import types
    calls = []

    def flash_decode(q, k_cache, v_cache, lengths, sinks=None, window=None, scale=None):
        calls.append((q.shape, k_cache.shape, k_cache.data_ptr(), lengths.tolist(), sinks, window, scale))
        return torch.zeros(q.shape)

    monkeypatch.setitem(sys.modules, attention_triton.DECODE_MODULE,
                        types.SimpleNamespace(flash_decode=flash_decode))
    monkeypatch.setattr(attention_triton, "_has_decode_kernel", lambda: True)
    layer = types.SimpleNamespace(sinks=torch.ones(8), scale=0.25)
    cache = torch.randn(2, 2, 40, 16)
    out = attention_triton.attend(layer, torch.randn(2, 8, 1, 16), cache[:, :, 3:20], cache[:, :, 3:20], None)
    assert out.shape == (2, 8, 1, 16)
    kept = cache[:, :, 3:20]
    assert calls == [((2, 8, 16), (2, 2, 17, 16), kept.data_ptr(), [17, 17], layer.sinks, None, 0.25)]


def test_a_chunked_mask_is_refused_with_a_reason():
    with pytest.raises(SkipCase, match="not chunk8"):
        attention_triton._mask_options(chunked(8), 40)


POINTERS = {"Q", "K", "V", "Sinks", "O", "DO", "DK", "DV", "DQ"}  # the kernels' tensor arguments (+ LSE, DELTA)


# --- the compiled path without a GPU: Triton's CUDA backend (and the ptxas it ships) compiles for sm_90
@pytest.mark.slow
@pytest.mark.parametrize("dtype, head_dim, window, sinks, group",
                         [("fp16", 64, 128, True, 8), ("bf16", 128, 0, False, 1)])
def test_the_kernels_compile_for_sm90(dtype, head_dim, window, sinks, group):
    """Every kernel goes through ttir -> ttgir -> llir -> ptx -> cubin for an H100/H200 target, so a typing or
    lowering error in the compiled path (which the interpreter does not see) fails here, on a CPU."""
    compiler = pytest.importorskip("triton.compiler")
    target_module = pytest.importorskip("triton.backends.compiler")
    from ossbench.kernels import attention_prefill as ap
    if not hasattr(ap._fwd_kernel, "arg_names") or os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the kernels were decorated for the interpreter")
    target = target_module.GPUTarget("cuda", 90, 32)
    bm, bn = ap.BACKWARD_BLOCKS[head_dim]
    common = dict(GROUP=group, HEAD_DIM=head_dim, WINDOW=window, CAUSAL=True, PREC="tf32")
    kernels = [(ap._fwd_kernel, {**common, "HAS_SINKS": sinks, "BLOCK_M": 128, "BLOCK_N": 64}, 8, 3),
               (ap._bwd_dkdv_kernel, {**common, "BLOCK_M": bm, "BLOCK_N": bn}, 4, 2),
               (ap._bwd_dq_kernel, {**common, "BLOCK_M": bm, "BLOCK_N": bn}, 4, 2)]
    for fn, consts, warps, stages in kernels:
        signature = {name: "constexpr" if name in consts else "*fp32" if name in ("LSE", "DELTA") else
                     f"*{dtype}" if name in POINTERS else "fp32" if name.startswith("scale") else "i32"
                     for name in fn.arg_names}
        try:
            compiled = compiler.compile(compiler.ASTSource(fn, signature, consts), target=target,
                                        options={"num_warps": warps, "num_stages": stages})
        except RuntimeError as e:
            if "ptxas" in str(e).lower() and "not found" in str(e).lower():
                pytest.skip(f"no ptxas: {e}")
            raise
        assert compiled.asm.get("cubin"), fn.__name__


# --- on a GPU: bf16, the autotuned forward, the compiled backward, the backend (run with `pytest -m gpu`)
def _needs_cuda() -> None:
    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("needs CUDA without the interpreter")


@pytest.mark.gpu
@pytest.mark.parametrize("window", [None, 128])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gpu_bfloat16_matches_float64(window, head_dim):
    _needs_cuda()
    from ossbench.kernels.attention_prefill import flash_attention
    q, k, v, s = (t.cuda() for t in cases.inputs(1, 64, 8, 512, 512, head_dim, torch.bfloat16, True))
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, s)]
    out = flash_attention(*leaves, window=window)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dout)
    refs = [t.detach().cpu().double().requires_grad_(True) for t in (q, k, v, s)]
    ref_out = cases.reference(*refs, window=window)
    ref_grads = torch.autograd.grad(ref_out, refs, dout.cpu().double())
    assert cases.rel_err(out.cpu(), ref_out.detach()) < 2e-2
    for name, got, want in zip(("dq", "dk", "dv", "dsinks"), grads, ref_grads):
        assert cases.rel_err(got.cpu(), want) < 4e-2, name


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["prefill", "decode", "train"])
def test_gpu_attention_family_on_the_triton_backend(mode):
    _needs_cuda()
    from ossbench.layers.config import get_preset
    from ossbench.workloads.attention import FAMILY, AttentionParams, defaults
    p = AttentionParams(**{**defaults(get_preset("gpt-oss-20b")), "mode": mode, "backend": "triton",
                           "window": 128, "seq_len": 1024, "kv_len": 1024})
    check = FAMILY.build(p, "cuda", torch.bfloat16).check()
    assert check.ok, check
