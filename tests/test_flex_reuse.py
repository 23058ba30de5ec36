"""Flex is compiled with dynamic shapes (FLEX_DYNAMIC): a new sequence length reuses the compiled kernel
instead of compiling another (docs/attention.md)."""

from __future__ import annotations

import pytest
import torch

from ossbench.layers import attention as attention_module
from ossbench.layers.attention import Attention
from ossbench.layers.attention_spec import AttentionSpec


@pytest.mark.slow  # one flex compile: 10-40 s on 2 CPU cores
def test_a_new_sequence_length_reuses_the_compiled_flex_kernel():
    from torch._dynamo.utils import counters

    assert attention_module.FLEX_DYNAMIC is True
    torch.manual_seed(0)
    outputs = []
    graphs = []
    # 2, 3 and 4 key blocks of 128 (a single block is a size dynamo specialises), a new block each time as
    # each case of a suite builds its own; dynamo compiles once more at the second length (it then makes
    # the changed sizes symbolic), and from the third on reuses the kernel
    for seq in (200, 300, 400):
        block = Attention(AttentionSpec(64, 4, 2, 16, sinks=False), backend="flex")
        x = torch.randn(1, seq, 64)
        with torch.no_grad():
            outputs.append((block, x, block(x)))
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[2] == graphs[1] <= graphs[0] + 1, f"graphs compiled after each length: {graphs}"
    for block, x, got in outputs:  # and the reused kernel is right at every length
        with torch.no_grad():
            ref = block(x, backend="eager")
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4)
