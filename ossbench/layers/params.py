"""Parameter counts of the layers and of whole models built from a preset.

Convention (it reproduces OpenAI's published gpt-oss figures: 20b 20.91B total / 3.61B active, 120b
116.83B / 5.13B):
- total  = every stored parameter: token embedding, learned position embedding (GPT-2), per layer the
           attention block (pre-norm, qkv and out projections with biases, sinks) and the MLP block
           (pre-norm, router, every expert with its biases; or the dense FFN), the final norm, and the
           unembedding unless it is tied to the embedding.
- active = the parameters one token computes with: everything above except the lookup tables (token and
           position embeddings), and with only `top_k` of the experts. The unembedding counts as active
           (a tied one counts once, as the unembedding).
The gpt-oss model card's "active" figures exclude the embedding and include the unembedding; counting
both or neither misses them by 16% (3.03B / 4.19B for the 20b).

All counts are plain arithmetic on a ModelConfig; `count_params` of a built model is checked against
`sum(p.numel())` of the modules in the tests.
"""

from __future__ import annotations

from .config import ModelConfig


def fc1_width(intermediate: int, activation: str) -> int:
    """Output width of the first FFN projection: a gated activation (SwiGLU) needs two halves."""
    return 2 * intermediate if activation == "swiglu" else intermediate


def ffn_params(hidden: int, intermediate: int, activation: str = "swiglu", bias: bool = True) -> int:
    """One two-layer FFN (also one expert): fc1 hidden -> fc1_width, fc2 intermediate -> hidden."""
    width = fc1_width(intermediate, activation)
    n = hidden * width + intermediate * hidden
    return n + (width + hidden if bias else 0)


def router_params(hidden: int, n_experts: int, bias: bool = True) -> int:
    return hidden * n_experts + (n_experts if bias else 0)


def moe_params(hidden: int, intermediate: int, n_experts: int, top_k: int, *, activation: str = "swiglu",
               bias: bool = True, router_bias: bool = True) -> dict[str, int]:
    """Router + experts of one MoE layer (no norm): total, active (router + top_k experts), experts."""
    expert = ffn_params(hidden, intermediate, activation, bias)
    router = router_params(hidden, n_experts, router_bias)
    return {"total": router + n_experts * expert, "active": router + top_k * expert,
            "experts": n_experts * expert, "router": router, "per_expert": expert}


def matched_intermediate(target: int, hidden: int, activation: str = "swiglu", bias: bool = True,
                         multiple: int = 16) -> int:
    """The dense FFN width whose parameter count is closest to `target`, rounded to `multiple`.

    Rounding to a multiple of 16 keeps every row of the weights 32-byte aligned in 16-bit dtypes, so the
    dense GEMMs are not slowed by odd leading dimensions; the count then differs from `target` by less
    than multiple/2 columns' worth of parameters (the exact count is recorded with every case).
    """
    per_column = hidden * (fc1_width(1, activation) + 1) + (fc1_width(1, activation) if bias else 0)
    fixed = hidden if bias else 0  # fc2's bias does not grow with the width
    exact = (target - fixed) / per_column
    return max(multiple, multiple * round(exact / multiple))


def norm_params(hidden: int, norm: str) -> int:
    return {"rmsnorm": hidden, "layernorm": 2 * hidden, "none": 0}[norm]


def attention_params(cfg: ModelConfig) -> int:
    """Attention block of one layer: pre-norm, fused qkv and out projections (with biases), sinks."""
    n = norm_params(cfg.hidden, cfg.norm)
    n += cfg.hidden * cfg.qkv_width + (cfg.qkv_width if cfg.qkv_bias else 0)
    n += cfg.q_width * cfg.hidden + (cfg.hidden if cfg.out_bias else 0)
    return n + (cfg.n_heads if cfg.sinks else 0)


def mlp_params(cfg: ModelConfig) -> dict[str, int]:
    """MLP block of one layer (pre-norm + MoE or dense FFN): total, active, experts."""
    norm = norm_params(cfg.hidden, cfg.norm)
    if cfg.n_experts == 0:
        n = norm + ffn_params(cfg.hidden, cfg.intermediate, cfg.activation, cfg.mlp_bias)
        return {"total": n, "active": n, "experts": 0}
    moe = moe_params(cfg.hidden, cfg.intermediate, cfg.n_experts, cfg.top_k, activation=cfg.activation,
                     bias=cfg.mlp_bias, router_bias=cfg.router_bias)
    return {"total": norm + moe["total"], "active": norm + moe["active"], "experts": moe["experts"]}


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Whole-model parameter counts (see the module docstring for what `active` includes).

    Keys: total, active, embedding, positions, unembedding (0 when tied), attention, mlp (all layers),
    experts (expert weights and biases, all layers), final_norm.
    """
    embedding = cfg.vocab * cfg.hidden
    positions = cfg.max_position * cfg.hidden if cfg.positions == "learned" else 0
    unembedding = 0 if cfg.tie_embeddings else cfg.vocab * cfg.hidden
    final_norm = norm_params(cfg.hidden, cfg.norm)
    attention = cfg.n_layers * attention_params(cfg)
    mlp = mlp_params(cfg)
    total = embedding + positions + unembedding + final_norm + attention + cfg.n_layers * mlp["total"]
    # a tied unembedding is the embedding matrix used as a matmul: active once
    active = (embedding if cfg.tie_embeddings else unembedding) + final_norm + attention \
        + cfg.n_layers * mlp["active"]
    return {"total": total, "active": active, "embedding": embedding, "positions": positions,
            "unembedding": unembedding, "attention": attention, "mlp": cfg.n_layers * mlp["total"],
            "experts": cfg.n_layers * mlp["experts"], "final_norm": final_norm}
