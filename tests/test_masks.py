"""Mask objects against definitions written here: loops over positions, never the package's own rule.

Each pattern is defined below as a predicate `sees(i, j)` (query position i, key position j) that works
on ints (for the loops) and on tensors (as a mask_mod for create_block_mask). Every fact a mask owns is
checked against it: the dense grid, the pair count, the flex block mask and the decode retention.
"""

import pytest
import torch

from ossbench.layers import masks
from ossbench.layers.masks import and_masks, causal, chunked, full, layer_mask, or_masks, parse, sliding_window


def causal_sees(i, j):
    return j <= i


def full_sees(i, j):
    return j >= 0


def window_sees(w):
    return lambda i, j: (j <= i) & (i - j < w)


def chunk_sees(c):  # Llama 4: same chunk of c tokens, and not in the future
    return lambda i, j: (j <= i) & (i // c == j // c)


def all_of(*preds):
    def sees(i, j):
        out = preds[0](i, j)
        for p in preds[1:]:
            out = out & p(i, j)
        return out
    return sees


def any_of(*preds):
    def sees(i, j):
        out = preds[0](i, j)
        for p in preds[1:]:
            out = out | p(i, j)
        return out
    return sees


CASES = {  # mask, its independent definition, whether it is causal
    "causal": (causal(), causal_sees, True),
    "full": (full(), full_sees, False),
    "window8": (sliding_window(8), window_sees(8), True),
    "window1": (sliding_window(1), window_sees(1), True),
    "and(causal,window5)": (and_masks(causal(), sliding_window(5)), all_of(causal_sees, window_sees(5)), True),
    "or(window3,window9)": (or_masks(sliding_window(3), sliding_window(9)), any_of(window_sees(3), window_sees(9)),
                            True),
    "and(full,window6)": (and_masks(full(), sliding_window(6)), window_sees(6), True),
    "or(full,window6)": (or_masks(full(), sliding_window(6)), full_sees, False),
    "chunk8": (chunked(8), chunk_sees(8), True),
    "chunk16": (chunked(16), chunk_sees(16), True),
    "chunk128": (chunked(128), chunk_sees(128), True),
    "and(chunk16,window5)": (and_masks(chunked(16), sliding_window(5)), all_of(chunk_sees(16), window_sees(5)),
                             True),
    "or(chunk8,window3)": (or_masks(chunked(8), sliding_window(3)), any_of(chunk_sees(8), window_sees(3)), True),
}


def loop_grid(sees, q_positions, kv_len):
    return torch.tensor([[bool(sees(i, j)) for j in range(kv_len)] for i in q_positions])


@pytest.mark.parametrize("name", list(CASES))
def test_name_round_trips_and_causality(name):
    mask, _, is_causal = CASES[name]
    assert mask.name == name
    assert parse(name) == mask and parse(name.replace(",", ", ")) == mask
    assert mask.causal is is_causal


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("q_len, kv_len, offset", [(40, 40, 0), (1, 40, 39), (10, 50, 30), (7, 5, 0),
                                                   (40, 100, 0), (1, 1, 0), (25, 30, 5)])
def test_grid_and_pairs_match_the_loop_definition(name, q_len, kv_len, offset):
    mask, sees, _ = CASES[name]
    q_pos = list(range(offset, offset + q_len))
    expected = loop_grid(sees, q_pos, kv_len)
    grid = mask.allowed(torch.tensor(q_pos), torch.arange(kv_len))
    assert torch.equal(grid, expected)
    assert mask.pairs(q_len, kv_len, offset) == int(expected.sum())


def test_pairs_at_long_context_without_a_grid():
    # closed forms (no S x S evaluation) against hand sums: 131072 tokens, window 128
    S, W = 131072, 128
    assert causal().pairs(S, S) == S * (S + 1) // 2
    assert sliding_window(W).pairs(S, S) == W * (W + 1) // 2 + (S - W) * W
    assert sliding_window(W).pairs(1, S, S - 1) == W  # one decode step
    assert and_masks(causal(), sliding_window(W)).pairs(S, S) == sliding_window(W).pairs(S, S)  # row sums
    assert full().pairs(3, S) == 3 * S
    C = 8192  # 16 whole chunks, each C(C+1)/2 pairs; a decode step at a chunk start sees only itself
    assert chunked(C).pairs(S, S) == 16 * C * (C + 1) // 2
    assert chunked(C).pairs(1, S + 1, S) == 1 and chunked(C).pairs(1, S, S - 1) == C


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("q_len, kv_len, valid, offset", [(300, 300, 300, 0), (130, 256, 200, 0),
                                                          (40, 128, 40, 0), (1, 256, 200, 199), (100, 384, 300, 200)])
def test_block_mask_matches_create_block_mask(name, q_len, kv_len, valid, offset):
    from torch.nn.attention.flex_attention import create_block_mask
    mask, sees, _ = CASES[name]

    def mask_mod(b, h, q, k):
        return (k < valid) & sees(q + offset, k)

    ours = mask.block_mask(q_len, kv_len, valid_keys=valid, q_offset=offset, device="cpu")
    theirs = create_block_mask(mask_mod, None, None, q_len, kv_len, device="cpu")
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    assert torch.equal(ours.kv_num_blocks, theirs.kv_num_blocks)
    assert torch.equal(ours.full_kv_num_blocks, theirs.full_kv_num_blocks)
    # the mask_mod the block mask carries is the same rule
    q, k = torch.meshgrid(torch.arange(q_len), torch.arange(kv_len), indexing="ij")
    assert torch.equal(ours.mask_mod(0, 0, q, k), mask_mod(0, 0, q, k))


@pytest.mark.parametrize("name", [n for n, (_, _, c) in CASES.items() if c])
def test_retention_keeps_exactly_the_keys_decode_needs(name):
    mask, sees, _ = CASES[name]
    n = 50
    for p in range(n):
        needed = [j for j in range(p + 1) if sees(p, j)]
        assert list(mask.keep(p)) == needed, p  # one run of positions ending at p
        later = [j for q in range(p, n) for j in range(q + 1) if sees(q, j)]
        assert min(later) == mask.keep(p).start  # no later step needs a key before keep(p)
    for max_tokens in (1, 7, 8, 9, 50):
        assert mask.cache_slots(max_tokens) == max(len(mask.keep(p)) for p in range(max_tokens))


def test_cache_sizes_of_the_patterns():
    assert causal().cache_slots(131072) == 131072
    assert sliding_window(128).cache_slots(131072) == 128 and sliding_window(128).cache_slots(5) == 5
    assert chunked(8192).cache_slots(131072) == 8192 and chunked(8192).cache_slots(100) == 100
    assert list(chunked(8).keep(17)) == [16, 17]  # the chunk that starts at 16
    with pytest.raises(ValueError, match="not causal"):
        full().keep(3)


@pytest.mark.parametrize("name, message", [
    ("chunky", "unknown mask 'chunky'; known patterns: causal, full, window, chunk"),
    ("chunk0", "positive"),
    ("window", "needs a number"),
    ("causal5", "takes no number"),
    ("window0", "positive"),
    ("and(causal", "unknown mask"),
    ("and(causal,window4))", "unbalanced"),
    ("and(causal)", "at least two"),
])
def test_bad_names_say_what_is_wrong(name, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(name)


def test_layer_mask_from_arguments():
    assert layer_mask() == causal() and layer_mask(causal=False) == full()
    assert layer_mask(window=128) == sliding_window(128) and layer_mask(window=128).name == "window128"
    assert layer_mask(mask=sliding_window(4)) == sliding_window(4)
    with pytest.raises(ValueError, match="not both"):
        layer_mask(window=128, mask=sliding_window(128))
    with pytest.raises(ValueError, match="only for causal"):
        layer_mask(causal=False, window=8)
    with pytest.raises(ValueError, match="mask full is not causal"):
        layer_mask(mask=full())
    with pytest.raises(ValueError, match="mask causal is causal but causal is False"):
        layer_mask(causal=False, mask=causal())


def test_the_catalogue_lists_every_pattern_module():
    # the package __init__ is the catalogue: each builder there is reachable by its name prefix
    for prefix, builder in masks.PATTERNS.items():
        m = builder(4) if prefix not in ("causal", "full") else builder()
        assert m.name.startswith(prefix) and parse(m.name) == m
