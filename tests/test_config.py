"""Model presets carry the values of the design brief (§4), and invalid configs are refused."""

import math

import pytest

from ossbench.layers.config import PRESETS, ModelConfig, get_preset


def test_defaults_are_gpt_oss_20b():
    cfg = ModelConfig()
    assert cfg == get_preset("gpt-oss-20b")
    assert (cfg.hidden, cfg.n_layers, cfg.n_experts, cfg.top_k, cfg.intermediate) == (2880, 24, 32, 4, 2880)
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (64, 8, 64)
    assert cfg.q_width == 4096 != cfg.hidden
    assert cfg.qkv_width == 5120  # fused qkv: 2880 -> 5120
    assert cfg.q_per_kv == 8
    assert (cfg.vocab, cfg.tie_embeddings) == (201088, False)
    assert (cfg.norm, cfg.norm_eps) == ("rmsnorm", 1e-5)
    assert (cfg.window, cfg.sinks, cfg.qkv_bias, cfg.out_bias) == (128, True, True, True)
    assert cfg.positions == "yarn"
    assert (cfg.rope_theta, cfg.yarn_factor, cfg.yarn_beta_slow, cfg.yarn_beta_fast) == (150000.0, 32.0, 1.0, 32.0)
    assert cfg.yarn_original_context == 4096
    assert cfg.max_position == 4096 * 32
    assert (cfg.activation, cfg.swiglu_limit, cfg.swiglu_alpha) == ("swiglu", 7.0, 1.702)
    assert cfg.dropout == 0.0


def test_gpt_oss_120b_is_a_delta():
    big, small = get_preset("gpt-oss-120b"), get_preset("gpt-oss-20b")
    assert (big.n_layers, big.n_experts, big.top_k) == (36, 128, 4)
    differing = {f for f in small.__dataclass_fields__ if getattr(big, f) != getattr(small, f)}
    assert differing == {"n_layers", "n_experts"}


def test_sliding_window_on_even_layers_from_zero():
    cfg = get_preset("gpt-oss-20b")
    assert [cfg.layer_window(i) for i in range(4)] == [128, None, 128, None]
    assert cfg.windowed_layers == 12
    assert get_preset("gpt-oss-120b").windowed_layers == 18
    assert get_preset("gpt-oss-20b", window=None).windowed_layers == 0
    with pytest.raises(IndexError):
        cfg.layer_window(24)


def _total_and_active_params(cfg: ModelConfig) -> tuple[int, int]:
    """gpt-oss parameter count from the config alone (a cross-check of the preset values)."""
    H = cfg.hidden
    attn = H * cfg.qkv_width + cfg.qkv_width + cfg.q_width * H + H + cfg.n_heads + H  # + sinks + norm
    router = H * cfg.n_experts + cfg.n_experts + H  # gate and the MLP norm
    expert = H * 2 * cfg.intermediate + 2 * cfg.intermediate + cfg.intermediate * H + H
    embed = cfg.vocab * H
    total = cfg.n_layers * (attn + router + cfg.n_experts * expert) + 2 * embed + H
    active = cfg.n_layers * (attn + router + cfg.top_k * expert) + embed + H  # unembedding, no embedding lookup
    return total, active


@pytest.mark.parametrize("name, total_b, active_b, expert_share", [
    ("gpt-oss-20b", 20.91, 3.61, 0.914), ("gpt-oss-120b", 116.83, 5.13, 0.982)])
def test_preset_parameter_counts_match_the_brief(name, total_b, active_b, expert_share):
    cfg = get_preset(name)
    total, active = _total_and_active_params(cfg)
    assert round(total / 1e9, 2) == total_b
    assert round(active / 1e9, 2) == active_b
    H = cfg.hidden
    experts = cfg.n_layers * cfg.n_experts * (3 * H * cfg.intermediate + 2 * cfg.intermediate + H)
    assert round(experts / total, 3) == expert_share


@pytest.mark.parametrize("name, hidden, layers, heads", [
    ("gpt2-small", 768, 12, 12), ("gpt2-medium", 1024, 24, 16),
    ("gpt2-large", 1280, 36, 20), ("gpt2-xl", 1600, 48, 25)])
def test_gpt2_presets(name, hidden, layers, heads):
    cfg = get_preset(name)
    assert (cfg.hidden, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads) == (hidden, layers, heads, heads)
    assert cfg.head_dim * cfg.n_heads == hidden
    assert cfg.intermediate == 4 * hidden
    assert (cfg.activation, cfg.norm, cfg.positions) == ("gelu_tanh", "layernorm", "learned")
    assert (cfg.max_position, cfg.dropout, cfg.vocab, cfg.tie_embeddings) == (1024, 0.1, 50257, True)
    assert (cfg.window, cfg.sinks, cfg.n_experts) == (None, False, 0)
    assert cfg.windowed_layers == 0


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(KeyError) as err:
        get_preset("gpt-oss-7b")
    for name in PRESETS:
        assert name in str(err.value)


def test_overrides_are_validated():
    assert get_preset("gpt-oss-20b", n_kv_heads=1).q_per_kv == 64
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        get_preset("gpt-oss-20b", n_kv_heads=7)
    with pytest.raises(ValueError, match="top_k"):
        get_preset("gpt-oss-20b", top_k=33)
    with pytest.raises(ValueError, match="norm"):
        ModelConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="even head_dim"):
        ModelConfig(head_dim=63)
    with pytest.raises(ValueError, match="disagrees"):
        ModelConfig(intermediate=1000, ffn_mult=4)
    with pytest.raises(ValueError, match="window"):
        ModelConfig(window=0)
    assert math.isclose(ModelConfig(intermediate=None, ffn_mult=4).intermediate, 4 * 2880)
