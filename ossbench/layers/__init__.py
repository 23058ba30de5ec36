"""Pure nn.Modules faithful to gpt-oss and GPT-2, and the model presets they are built from.

No benchmarking code here: layers never import ossbench.measure or ossbench.report.
"""

from .attention import (Attention, KVCache, RMSNorm, apply_sinks_from_lse, causal_window_block_mask,
                        unsupported_reason)
from .attention_spec import AttentionSpec
from .config import PRESETS, ModelConfig, get_preset
from .ffn_spec import FFNSpec
from .moe_spec import MoESpec
from .rope import RopeSpec, RotaryEmbedding, apply_rotary, inv_freq_and_concentration, rotary_cos_sin

__all__ = [
    "Attention", "AttentionSpec", "KVCache", "RMSNorm", "apply_sinks_from_lse", "causal_window_block_mask",
    "unsupported_reason",
    "PRESETS", "ModelConfig", "get_preset", "FFNSpec", "MoESpec",
    "RopeSpec", "RotaryEmbedding", "apply_rotary", "inv_freq_and_concentration", "rotary_cos_sin",
]
