"""A whole gpt-oss model: token embedding, a stack of blocks, the final norm and the untied unembedding.

    h = embedding[tokens]                       [B, S, hidden]
    h = block_i(h)   for i in 0..layers-1      windowed (128) on even layers, full on odd ones, sinks
    logits = unembedding(norm(h))               [B, S', vocab], S' = 1 when only the last position is asked

Built from a ModelConfig; `layers` (default all) keeps the first layers, so a reduced model still alternates
as gpt-oss does. Storage is the checkpoint's: bf16 (the model's dtype) everywhere except the float32 norm
scales and the expert weights, which are MXFP4 blocks + scales (`experts="mxfp4"`) or the dtype
(`experts="dtype"`). MXFP4 experts are drawn and quantized a few at a time on the device (MoE.reset_parameters):
no full-precision copy of them is ever held. `layers/storage.py` computes the same bytes without building.

Submodule names follow gpt-oss's checkpoint (`embedding`, `block.N.attn.*`, `block.N.mlp.*`, `norm`,
`unembedding`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .attention import Attention, KVCache
from .block import Block
from .config import ModelConfig
from .moe import MoE
from .norm import RMSNorm
from .storage import Experts

WEIGHT_STD = 0.02  # embedding, attention and unembedding init: the usual transformer scale


class Model(nn.Module):
    def __init__(self, cfg: ModelConfig, *, layers: int | None = None, experts: Experts = "mxfp4",
                 attn_backend: str = "eager", moe_backend: str = "grouped", device: Any = None, dtype: Any = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        n = cfg.n_layers if layers is None else layers
        if not 1 <= n <= cfg.n_layers:
            raise ValueError(f"layers must be in 1..{cfg.n_layers}, got {n}")
        if cfg.n_experts == 0 or cfg.positions == "learned" or cfg.tie_embeddings:
            raise ValueError("Model builds gpt-oss models (MoE, rotary positions, untied unembedding)")
        self.cfg, self.n_layers, self.experts = cfg, n, experts
        self.embedding = nn.Embedding(cfg.vocab, cfg.hidden, device=device, dtype=dtype)
        moe_spec = cfg.moe_spec()
        blocks = []
        for i in range(n):
            attn = Attention.from_config(cfg, i, backend=attn_backend, device=device, dtype=dtype)
            mlp = MoE(replace(moe_spec, weights=experts), backend=moe_backend, device=device, dtype=dtype,
                      generator=generator)
            blocks.append(Block(attn, mlp))
        self.block = nn.ModuleList(blocks)
        self.norm = RMSNorm(cfg.hidden, cfg.norm_eps, device=device)
        self.unembedding = nn.Linear(cfg.hidden, cfg.vocab, bias=False, device=device, dtype=dtype)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random weights for everything but the experts (MoE draws its own when built): never zeros,
        which let kernels take shortcuts; norm scales near 1, sinks of order one."""
        for name, p in self.named_parameters():
            if ".mlp." in name:
                continue
            if name.endswith("norm.scale"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator, device=p.device))
            elif name.endswith("sinks"):
                p.normal_(0.0, 1.0, generator=generator)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1 * WEIGHT_STD, generator=generator)
            else:
                p.normal_(0.0, WEIGHT_STD, generator=generator)
        for blk in self.block:  # the MoE's own norm scale, off exactly 1 as the others
            blk.mlp.norm.scale.add_(0.1 * torch.randn(blk.mlp.norm.scale.shape, generator=generator,
                                                      device=blk.mlp.norm.scale.device))

    def new_caches(self, batch: int, max_tokens: int, device: Any = None, dtype: Any = None) -> list[KVCache]:
        """One KV cache per layer for positions 0..max_tokens-1 (a windowed layer: a ring of its window)."""
        return [blk.new_cache(batch, max_tokens, device=device, dtype=dtype) for blk in self.block]

    def forward(self, tokens: torch.Tensor, caches: list[KVCache] | None = None, start_pos: int = 0,
                last_only: bool = True) -> torch.Tensor:
        """tokens [B, S] int64 -> logits [B, 1, vocab] (last position) or [B, S, vocab].

        With caches: a prefill from position 0 fills them; S = 1 decodes the token at start_pos."""
        h = self.embedding(tokens)  # [B, S, hidden]
        for i, blk in enumerate(self.block):
            h = blk(h, caches[i] if caches is not None else None, start_pos)
        return self.head(h[:, -1:] if last_only else h)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The final norm and the unembedding: h [B, S, hidden] -> logits [B, S, vocab]."""
        return self.unembedding(self.norm(h))

    def stored_bytes(self) -> int:
        """Bytes of every parameter and buffer (MXFP4 blocks and scales included)."""
        return sum(t.numel() * t.element_size() for t in (*self.parameters(), *self.buffers()))

