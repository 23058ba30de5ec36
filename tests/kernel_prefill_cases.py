"""The cases of tests/test_kernel_attention_prefill.py, run in a child process under Triton's interpreter.

`python tests/kernel_prefill_cases.py` (with TRITON_INTERPRET=1 in its environment, set by the test before
the child imports triton) runs every case and prints one JSON object: case name -> what it measured
(relative errors against the float64 reference, flags) or {"error": text}. The test asserts on it, one
test per case. Why a child: Triton reads TRITON_INTERPRET when a function is decorated with @triton.jit,
and triton.language's own helpers (tl.max, tl.sum, tl.zeros, ...) are decorated when triton is first
imported; in a pytest process that already imported triton (torch.compile does) they stay compiled-mode
functions, which an interpreted kernel cannot call.
"""

from __future__ import annotations

import json
import math
import traceback

import torch

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3}  # max|err| / max|ref|: fp16 is ~4 unit roundoffs


# --- the float64 reference: explicit mask grid, sink column, softmax, drop the column
def reference(q, k, v, sinks, *, causal=True, window=None, q_start=None):
    B, Hq, S, D = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    q_start = T - S if q_start is None else q_start
    kk = k.double().repeat_interleave(Hq // Hkv, dim=1)  # query head h uses KV head h // G
    vv = v.double().repeat_interleave(Hq // Hkv, dim=1)
    scores = q.double() @ kk.transpose(-1, -2) / math.sqrt(D)  # [B, Hq, S, T]
    qpos, kpos = q_start + torch.arange(S)[:, None], torch.arange(T)[None, :]
    seen = torch.ones(S, T, dtype=torch.bool)
    if causal:
        seen &= kpos <= qpos
    if window is not None:
        seen &= kpos > qpos - window
    scores = scores.masked_fill(~seen, float("-inf"))
    if sinks is None:
        return torch.softmax(scores, -1) @ vv
    column = sinks.double().view(1, Hq, 1, 1).expand(B, Hq, S, 1)
    return torch.softmax(torch.cat([scores, column], -1), -1)[..., :T] @ vv


def rel_err(got, ref) -> float:
    return ((got.double() - ref).abs().max() / ref.abs().max()).item()


def inputs(B, Hq, Hkv, S, T, D, dtype, sinks, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, S, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, T, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, T, D, generator=g).to(dtype)
    s = torch.randn(Hq, generator=g).to(dtype) if sinks else None
    return q, k, v, s


# (B, Hq, Hkv, S, T, D, window, sinks, dtype): GQA 8 and 1, windows shorter than the sequence, sinks on and
# off, queries after cached keys (T > S), head_dim 64 and 128, float32 and float16
FORWARD = {
    "gqa8-causal-sinks": (1, 8, 1, 40, 40, 16, None, True, torch.float32),
    "mha-window7-sinks": (2, 2, 2, 37, 37, 16, 7, True, torch.float32),
    "gqa8-window9-fp16-d64": (1, 8, 1, 20, 20, 64, 9, False, torch.float16),
    "gqa4-offset-causal": (1, 8, 2, 12, 45, 16, None, True, torch.float32),  # 33 cached keys before
    "gqa2-offset-window30": (2, 4, 2, 14, 50, 16, 30, False, torch.float32),  # the window reaches the cache
    "decode-gqa8-sinks": (2, 8, 1, 1, 37, 16, None, True, torch.float32),
    # 4 positions a tile: unmasked tiles inside the window between its masked edge and the diagonal
    "gqa8-window40-interior": (1, 8, 1, 64, 64, 16, 40, True, torch.float32),
    "gqa2-window8-d128": (1, 4, 2, 20, 20, 128, 8, True, torch.float32),
}
# the same for the backward: dq, dk, dv and the sink gradient
BACKWARD = {
    "gqa8-offset-window-sinks": (1, 8, 1, 20, 33, 16, 9, True, torch.float32),
    "mha-causal": (2, 2, 2, 30, 30, 16, None, False, torch.float32),
    "gqa8-window-sinks-fp16-d64": (1, 8, 1, 18, 18, 64, 6, True, torch.float16),
}
FAMILY_MODES = ("prefill", "decode", "train")
# the attention family's small gpt-oss block: YaRN RoPE, sinks, window 8, GQA 8
FAMILY_SMALL = dict(batch=2, hidden=64, n_heads=8, n_kv_heads=1, head_dim=16, seq_len=24, kv_len=23, window=8)


def forward_case(flash_attention, B, Hq, Hkv, S, T, D, window, sinks, dtype) -> dict:
    q, k, v, s = inputs(B, Hq, Hkv, S, T, D, dtype, sinks)
    got = flash_attention(q, k, v, s, window=window)
    return {"out": rel_err(got, reference(q, k, v, s, window=window)), "tolerance": TOLERANCE[dtype],
            "shape_ok": got.shape == q.shape and got.dtype == dtype}


def backward_case(flash_attention, B, Hq, Hkv, S, T, D, window, sinks, dtype) -> dict:
    tensors = [t for t in inputs(B, Hq, Hkv, S, T, D, dtype, sinks) if t is not None]
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    out = flash_attention(*leaves[:3], leaves[3] if sinks else None, window=window)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = torch.autograd.grad(out, leaves, dout)
    refs = [t.double().requires_grad_(True) for t in tensors]
    ref_grads = torch.autograd.grad(reference(*refs[:3], refs[3] if sinks else None, window=window), refs,
                                    dout.double())
    result = {"tolerance": 2 * TOLERANCE[dtype], "shape_ok": all(
        g.shape == r.shape and g.dtype == dtype for g, r in zip(grads, ref_grads))}
    for name, got, want in zip(("dq", "dk", "dv", "dsinks"), grads, ref_grads):
        result[name] = rel_err(got, want)
    return result


def special_cases(flash_attention) -> dict:
    out = {}
    q, k, v, s = inputs(1, 8, 2, 24, 24, 16, torch.float32, True)
    out["full-non-causal"] = {"out": rel_err(flash_attention(q, k, v, s, causal=False),
                                             reference(q, k, v, s, causal=False))}
    # the second half of a prefill alone against the cached first half's keys = the whole prefill's rows
    # (the chunked-prefill lower-bound bug would drop cached keys)
    q, k, v, s = inputs(1, 8, 1, 48, 48, 16, torch.float32, True)
    whole = flash_attention(q, k, v, s, window=20)
    second = flash_attention(q[:, :, 24:], k, v, s, window=20, q_start=24)
    out["chunked-prefill"] = {"max_diff": (second - whole[:, :, 24:]).abs().max().item()}
    # NaN in every key and value no query may see: 24 rows (one query block), positions 48..59 need 44..59
    q, k, v, s = inputs(1, 4, 2, 12, 60, 16, torch.float32, True)
    ref = reference(q, k, v, s, window=5)
    k[:, :, :44], v[:, :, :44] = float("nan"), float("nan")
    got = flash_attention(q, k, v, s, window=5)
    out["nan-outside-window"] = {"finite": bool(torch.isfinite(got).all()), "out": rel_err(got, ref)}
    return out


def family_case(mode: str) -> dict:
    from ossbench.layers.config import get_preset
    from ossbench.workloads.attention import FAMILY, AttentionParams, defaults

    p = AttentionParams(**{**defaults(get_preset("gpt-oss-20b")), **FAMILY_SMALL, "mode": mode,
                           "backend": "triton"})
    w = FAMILY.build(p, "cpu", torch.float32)
    check = w.check()
    w.fn()
    return {"ok": check.ok, "max_rel_err": check.max_rel_err, "reference": check.reference}


def run_all() -> dict:
    from ossbench.kernels.attention_prefill import flash_attention

    results: dict = {}

    def record(name, fn, *args):
        try:
            results[name] = fn(*args)
        except Exception:  # noqa: BLE001 - the test shows which case broke and how
            results[name] = {"error": traceback.format_exc()}

    for name, case in FORWARD.items():
        record(f"forward/{name}", forward_case, flash_attention, *case)
    for name, case in BACKWARD.items():
        record(f"backward/{name}", backward_case, flash_attention, *case)
    try:
        results.update({f"special/{k}": v for k, v in special_cases(flash_attention).items()})
    except Exception:  # noqa: BLE001
        results["special/error"] = {"error": traceback.format_exc()}
    for mode in FAMILY_MODES:
        record(f"family/{mode}", family_case, mode)
    return results


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps(run_all()))
