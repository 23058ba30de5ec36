"""Will a gpt-oss model fit on a card? The memory plan of one configuration, computed (not measured).

`memory_plan(cfg, experts, context, batch, ...)` adds up, in bytes:
- weights by storage (ossbench/layers/storage.py): MXFP4 expert blocks and scales, or bf16 experts; the
  bf16 rest (embedding, attention, router, expert biases, unembedding) and the float32 norm scales;
- the KV cache for `context` tokens per sequence (ossbench/workloads/attention.py's `kv_cache_bytes`: a
  windowed layer keeps its last `window` tokens, a full layer every token);
- activations and workspace of one forward step with the chosen backends (an estimate, the model family's
  `activation_bytes`, which its cases record too): one layer's working set is live at a time;
and compares the total with the card's memory. `ossbench fit` prints it; the run planner can call it.

Not counted: the CUDA context and kernels (a few hundred MB outside torch's allocator) and allocator
fragmentation; the verdict keeps `MIN_HEADROOM` of the card free for them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .errors import UserError
from .layers.config import ModelConfig
from .layers.mxfp4 import BLOCK
from .layers.storage import Experts, weight_bytes
from .peaks import PEAK_TABLE
from .workloads.attention import kv_cache_bytes
from .workloads.model import activation_bytes

MIN_HEADROOM = 0.05  # of the card's memory, left for the CUDA context, kernels and fragmentation
CARDS_GB = (16, 24, 80, 141)  # the common sizes of `fit --table`: consumer 16/24 GB, H100 80 GB, H200 141 GB
TABLE_CONTEXTS = (4096, 32768, 131072)
TABLE_PRESETS = ("gpt-oss-20b", "gpt-oss-120b")
# `--device NAME`: short names for the peak table's rows (ossbench/peaks.py holds their memory)
DEVICES = {"h100": "H100 SXM", "h100-pcie": "H100 PCIe", "h200": "H200", "a100": "A100 SXM 80GB",
           "a100-40gb": "A100 40GB", "l40s": "L40S", "l4": "L4", "rtx4090": "RTX 4090"}
Mode = Literal["decode", "prefill"]


@dataclass(frozen=True)
class MemoryPlan:
    preset: str
    experts: Experts  # "mxfp4" or "dtype" (bf16)
    context: int
    batch: int
    mode: Mode
    weights: dict[str, int]  # by kind, with "total"
    kv_cache: int
    kv_cache_all_full: int  # the same cache with every layer full attention (what the windows save)
    activations: dict[str, int]  # by part, with "total"
    capacity: int | None = None  # the card's bytes, None when no card was given
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.weights["total"] + self.kv_cache + self.activations["total"]

    @property
    def headroom(self) -> int | None:
        return None if self.capacity is None else self.capacity - self.total

    @property
    def fits(self) -> bool | None:
        return None if self.capacity is None else self.total <= (1 - MIN_HEADROOM) * self.capacity


def memory_plan(cfg: ModelConfig, experts: Experts, context: int, batch: int = 1, *, mode: Mode = "decode",
                capacity: int | None = None, attn_backend: str = "flex", moe_backend: str = "grouped",
                layers: int | None = None, preset: str = "", dtype_bytes: int = 2) -> MemoryPlan:
    """The memory of `cfg` (its first `layers` layers) serving `batch` sequences of `context` tokens."""
    if context < 1 or batch < 1:
        raise ValueError(f"context and batch must be >= 1, got {context} and {batch}")
    if layers is not None:
        cfg = replace(cfg, n_layers=layers)
    weights = weight_bytes(cfg, experts, dtype_bytes)
    kv = kv_cache_bytes(cfg, context, batch=batch, dtype_bytes=dtype_bytes)
    kv_full = kv_cache_bytes(cfg, context, batch=batch, dtype_bytes=dtype_bytes, windows=False)
    notes = []
    if experts == "mxfp4":
        notes.append(f"MXFP4: {BLOCK} FP4 values share one uint8 scale, 4.25 bits per expert weight")
    if context > cfg.max_position:
        notes.append(f"context {context} is longer than the preset's {cfg.max_position} positions")
    return MemoryPlan(preset=preset, experts=experts, context=context, batch=batch, mode=mode, weights=weights,
                      kv_cache=kv, kv_cache_all_full=kv_full,
                      activations=activation_bytes(cfg, experts, context, batch, mode, attn_backend=attn_backend,
                                                   moe_backend=moe_backend, dtype_bytes=dtype_bytes),
                      capacity=capacity, notes=notes)


def case_plan(params: Any, dtype_bytes: int = 2, capacity: int | None = None) -> MemoryPlan:
    """The plan of a validated model-family case (ModelParams): its blocks, storage, context, batch, mode and
    backends; decode holds kv_len + 1 positions, prefill seq_len. For the run planner."""
    context = params.kv_len + 1 if params.mode == "decode" else params.seq_len
    return memory_plan(params.config, params.experts, context, params.batch, mode=params.mode, capacity=capacity,
                       attn_backend=params.attn_backend, moe_backend=params.moe_backend, layers=params.n_blocks,
                       dtype_bytes=dtype_bytes)


def parse_memory(text: str) -> int:
    """'80GB' (10^9 bytes), '80GiB' (2^30), '80' (GB) -> bytes; a bad string is a UserError naming --memory."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(gb|gib|g|tb|tib|mb|mib)?\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"--memory: expected a size such as 80GB or 16GiB, got {text!r}")
    scale = {None: 1e9, "g": 1e9, "gb": 1e9, "gib": 2**30, "tb": 1e12, "tib": 2**40, "mb": 1e6, "mib": 2**20}
    return int(float(m.group(1)) * scale[m.group(2)])


def device_memory(name: str) -> tuple[str, int]:
    """A --device short name (h100, h200, ...) or a peak-table row name -> (row, bytes)."""
    row = DEVICES.get(name.lower(), name)
    if row not in PEAK_TABLE:
        raise UserError(f"--device: unknown device {name!r}; known: {', '.join(DEVICES)}")
    return row, int(PEAK_TABLE[row]["memory_gb"] * 1e9)


def fit_table(presets: tuple[str, ...] = TABLE_PRESETS, contexts: tuple[int, ...] = TABLE_CONTEXTS,
              batch: int = 1, mode: Mode = "decode") -> list[MemoryPlan]:
    """The plans of every preset x storage x context (no card: the renderer compares with CARDS_GB)."""
    from .layers.config import get_preset

    return [memory_plan(get_preset(name), experts, context, batch, mode=mode, preset=name)
            for name in presets for experts in ("mxfp4", "dtype") for context in contexts]


def fits_card(plan: MemoryPlan, card_gb: float) -> bool:
    return plan.total <= (1 - MIN_HEADROOM) * card_gb * 1e9
