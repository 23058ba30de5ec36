"""Compile time of flex_attention over a sweep of 16 shapes (prefill 256-1024 tokens, causal and window-128,
8 and 64 KV heads of 64 for 64 query heads), compiled with static or dynamic shapes (docs/attention.md).

    python scripts/flex-compile-cost.py false|true|none    # torch.compile(flex_attention, dynamic=...)

Prints, per shape, the first call (compile + run) and the best of 3 further calls, then the sums. Point
TORCHINDUCTOR_CACHE_DIR (and TRITON_CACHE_DIR) at an empty folder for a cold compile cache; a second run
with the same folder measures a warm one.
"""
import sys, time, torch
from torch.nn.attention.flex_attention import flex_attention, create_block_mask
mode = {"false": False, "true": True, "none": None}[sys.argv[1]]
import torch._dynamo.config as dc
dc.recompile_limit = 512
f = torch.compile(flex_attention, dynamic=mode)
torch.manual_seed(0)
def causal(b, h, q, k): return q >= k
def win(b, h, q, k): return (q >= k) & (q - k < 128)
rows = []
for name, mm in (("causal", causal), ("window", win)):
    for S in (256, 512, 768, 1024):
        for hkv in (8, 64):
            q = torch.randn(1, 64, S, 64); k = torch.randn(1, hkv, S, 64); v = torch.randn(1, hkv, S, 64)
            bm = create_block_mask(mm, None, None, S, S, device="cpu")
            t0 = time.perf_counter(); f(q, k, v, block_mask=bm, enable_gqa=hkv != 64); t1 = time.perf_counter()
            ts = []
            for _ in range(3):
                a = time.perf_counter(); f(q, k, v, block_mask=bm, enable_gqa=hkv != 64); ts.append(time.perf_counter() - a)
            rows.append((name, S, hkv, t1 - t0, min(ts)))
            print(f"{sys.argv[1]} {name} S={S} hkv={hkv} first={t1-t0:.2f}s steady={min(ts)*1e3:.1f}ms", flush=True)
print(f"TOTAL {sys.argv[1]} first-call sum {sum(r[3] for r in rows):.1f}s steady sum {sum(r[4] for r in rows)*1e3:.0f}ms")
