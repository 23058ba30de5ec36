"""FlexAttention block masks for suffix rules, built per 128x128 block without evaluating every pair.

create_block_mask evaluates the mask on all q_len*kv_len pairs (17 GB of booleans at 131072 tokens). For
a suffix rule, row q sees the keys lo(q)..hi(q) with lo and hi non-decreasing, so per block pair:
- some pair is allowed iff the rows whose lo <= the block's last key (a prefix of the rows, found by
  searchsorted) meet the rows whose hi >= its first key (a suffix) inside the query block;
- every pair is allowed iff the block's last row starts at or before its first key and its first row
  reaches its last key (and both blocks are whole: a truncated last block is never "full").
That is O(rows + blocks^2) work. The mask_mod captures the valid length as a tensor, so masks of one
shape and pattern share one compiled kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # only for annotations: base.py imports this module when a block mask is asked for
    from .base import Mask

FLEX_BLOCK = 128  # flex_attention's default sparse block size


def suffix_block_mask(mask: Mask, q_len: int, kv_len: int, *, device: Any, valid_keys: int | None = None,
                      q_offset: int = 0, block: int = FLEX_BLOCK):
    """BlockMask for queries at positions q_offset.. over keys 0..kv_len-1, keys >= valid_keys being padding."""
    from torch.nn.attention.flex_attention import BlockMask
    valid = kv_len if valid_keys is None else valid_keys
    q = torch.arange(q_len, device=device) + q_offset  # query positions
    lo = torch.as_tensor(mask.first_key(q), device=device).clamp(min=0)  # [q_len] first key each row sees
    hi = q.clamp(max=valid - 1) if mask.causal else torch.full_like(q, valid - 1)  # [q_len] last key
    if not ((lo <= hi).all() and (lo[1:] >= lo[:-1]).all() and (hi[1:] >= hi[:-1]).all()):
        raise ValueError(f"mask {mask.name} is not a suffix rule over these {q_len} queries and {valid} keys "
                         f"(empty or non-monotone rows)")

    def bounds(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        start = torch.arange(-(-n // block), device=device) * block
        end = torch.clamp(start + block, max=n) - 1  # last index in each block
        return start, end, (end - start + 1) == block

    qs, qe, q_whole = bounds(q_len)
    ks, ke, k_whole = bounds(kv_len)
    last_row_starting = torch.searchsorted(lo, ke, right=True) - 1  # [nk] last row with lo <= block's last key
    first_row_reaching = torch.searchsorted(hi, ks)  # [nk] first row with hi >= block's first key
    any_allowed = (torch.maximum(first_row_reaching[None, :], qs[:, None])
                   <= torch.minimum(last_row_starting[None, :], qe[:, None]))  # [nq, nk]
    all_allowed = ((lo[qe][:, None] <= ks[None, :]) & (hi[qs][:, None] >= ke[None, :])
                   & q_whole[:, None] & k_whole[None, :])
    partial = any_allowed & ~all_allowed

    valid_t = torch.tensor(valid, device=device)

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx < valid_t) & mask.rule(q_idx + q_offset, kv_idx)

    kv_num, kv_idx = _ordered(partial)
    full_num, full_idx = _ordered(all_allowed)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(q_len, kv_len))


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[nq, nk] bool -> per-row count and the indices of the set blocks first, as [1, 1, ...] int32."""
    counts = blocks.sum(dim=-1, dtype=torch.int32)
    indices = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts[None, None].contiguous(), indices[None, None].contiguous()
