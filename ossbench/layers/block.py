"""One transformer layer: GPT-2's block or gpt-oss's block, built from the attention and MLP modules.

    h = x + dropout(attn.update(x))      attn: pre-norm, qkv, positions, attention, out projection
    y = h + dropout(mlp.update(h))       mlp:  pre-norm, FFN (GPT-2) or MoE (gpt-oss)

- GPT-2: LayerNorm with bias, multi-head attention with biases (positions are learned and added once at the
  embedding, so the block applies none), a 4x GELU-tanh FFN with biases, dropout 0.1.
- gpt-oss: RMSNorm with an fp32 scale, GQA (64 query / 8 KV heads) with sinks, full or 128-window attention
  on alternating layers, YaRN RoPE, a top-4 MoE with clamped-SwiGLU experts, no dropout.

Dropout: GPT-2 drops out the attention probabilities (attn_pdrop), the attention output after its
projection and the MLP output (resid_pdrop), all at 0.1; so does this block (the probabilities through the
attention module's `attn_dropout`, which the eager and sdpa backends apply; flex cannot, and skips a
training case that needs it). Dropout acts only in train mode (`block.train()`); `dropout=0` builds no
dropout op at all.

Submodule names are gpt-oss's (`attn.*`, `mlp.*`), so a gpt-oss checkpoint block's tensors load with
`load_state_dict` (MoE weights decoded to a float dtype, or MXFP4 with weights="mxfp4").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .attention import Attention, KVCache
from .config import ModelConfig
from .ffn import DenseFFN
from .moe import MoE


class Block(nn.Module):
    def __init__(self, attn: Attention, mlp: MoE | DenseFFN, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if isinstance(mlp, DenseFFN) and mlp.residual:
            raise ValueError("the block adds the residual itself: build the DenseFFN with residual=False")
        self.attn, self.mlp, self.dropout = attn, mlp, dropout
        # p = 0: no module at all, so a no-dropout block runs no dropout op even in train mode
        self.attn_resid_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.mlp_resid_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @classmethod
    def from_config(cls, cfg: ModelConfig, layer_idx: int = 0, *, attn_backend: str = "eager",
                    moe_backend: str = "grouped", dropout: float | None = None, device: Any = None,
                    dtype: Any = None) -> Block:
        """Layer `layer_idx` of a preset (gpt-oss: windowed on even layers) with the preset's dropout."""
        p = cfg.dropout if dropout is None else dropout
        attn = Attention.from_config(cfg, layer_idx, backend=attn_backend, attn_dropout=p, device=device,
                                     dtype=dtype)
        if cfg.n_experts:
            mlp: MoE | DenseFFN = MoE.from_config(cfg, backend=moe_backend, device=device, dtype=dtype)
        else:
            mlp = DenseFFN.from_config(cfg, norm=cfg.norm, residual=False, device=device, dtype=dtype)
        return cls(attn, mlp, p)

    def new_cache(self, batch: int, max_tokens: int, device: Any = None, dtype: Any = None) -> KVCache:
        return self.attn.new_cache(batch, max_tokens, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        """x [B, S, hidden] -> [B, S, hidden]. With a cache: S = 1 decodes the token at start_pos."""
        h = x + self.attn_resid_dropout(self.attn.update(x, cache, start_pos))
        return h + self.mlp_resid_dropout(self.mlp.update(h))

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}"
