"""Cascade (shared-prefix) decode attention in Triton: a group of rows reads its common prefix once.

Prefix kernel: program (group, kv head, prefix split) streams its split of the group's prefix
K/V through its first row's block table against the queries of the group's rows, a tile of rows
at a time, and writes partials into extra slots of the split-K decode's mid buffers. The split
kernel covers each row's own tokens [kv_start, seq_len); the reduce merges all slots by
log-sum-exp. When the own tokens take one split (every step from a few dozen rows), the prefix
kernel runs first and the split kernel merges its partials itself: no reduce pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from yaie.kernels.attention.prefix_groups import PrefixGroups
from yaie.kernels.attention.triton_attend import attend_range
from yaie.kernels.attention.triton_common import (
    LOG2E,
    check_index,
    check_out,
    check_tile,
    fp8_math,
    next_power_of_2,
    scale_args,
)
from yaie.kernels.attention.triton_decode import (
    check_decode_batch,
    decode_attention_triton,
    default_num_splits,
    launch_decode_reduce,
    launch_decode_splits,
    max_context,
    split_partials,
)

MAX_PREFIX_SPLITS = 8  # default cap: with one suffix split the reduce's slot tile stays at 16


# Per-step values (group layout, table width, slot counts) are not specialized: a compile while
# serving stalls a step ~1 s (see triton_decode.py).
@triton.jit(
    do_not_specialize=[
        "block_tables",
        "rows",
        "starts",
        "prefix_lens",
        "stride_table",
        "first_slot",
        "num_slots",
    ]
)
def _prefix_kernel(
    q,
    k_cache,
    v_cache,
    block_tables,
    rows,
    starts,
    prefix_lens,
    mid_out,
    mid_lse,
    k_scale,
    v_scale,
    stride_q_batch,
    stride_q_head,
    stride_cache_block,
    stride_cache_token,
    stride_cache_head,
    stride_table,
    stride_scale_block,
    stride_scale_head,
    qk_scale,
    first_slot,
    num_slots,
    group: tl.constexpr,
    block_size: tl.constexpr,
    ROWS: tl.constexpr,
    TILE_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    g = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    lo = tl.load(starts + g)
    num_rows = tl.load(starts + g + 1) - lo  # 0 for a padding group slot: the loop runs no chunk
    # Splits of the prefix are whole BLOCK_N tiles, the same for every chunk of the group's rows.
    prefix_len = tl.load(prefix_lens + g)
    tiles_per_split = tl.cdiv(tl.cdiv(prefix_len, BLOCK_N), tl.num_programs(2))
    start = split * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, prefix_len)
    first_row = tl.load(rows + lo, mask=num_rows > 0, other=0)
    table_row = block_tables + first_row * stride_table  # the group's first row's table
    num_q_heads = tl.num_programs(1) * group
    offs_m = tl.arange(0, TILE_M)
    offs_d = tl.arange(0, HEAD_DIM)
    heads = kv_head * group + offs_m % group
    # Chunks of ROWS rows, one tile each (a group larger than a tile reads its split again, from
    # L2); a loop rather than a grid axis, so that the grid depends on shapes only and the step
    # can be captured in a CUDA graph.
    for chunk in range(0, tl.cdiv(num_rows, ROWS)):
        # Tile row i is (member chunk * ROWS + i // group, query head kv_head * group + i % group).
        member = chunk * ROWS + offs_m // group  # [TILE_M] index within the group
        live = (offs_m < ROWS * group) & (member < num_rows)
        b = tl.load(rows + lo + member, mask=live, other=0)  # batch rows [TILE_M]
        q_ptrs = q + b[:, None] * stride_q_batch + heads[:, None] * stride_q_head + offs_d[None, :]
        q_tile = tl.load(q_ptrs, mask=live[:, None], other=0.0)  # [TILE_M, D]
        # fmt: off
        out, lse = attend_range(
            q_tile, k_cache, v_cache, table_row, start, end, kv_head,
            stride_cache_block, stride_cache_token, stride_cache_head,
            k_scale, v_scale, stride_scale_block, stride_scale_head, qk_scale,
            block_size, TILE_M, HEAD_DIM, BLOCK_N, HAS_SCALE,
        )
        # fmt: on
        # mid_out [batch, q_heads, num_slots, D], mid_lse [batch, q_heads, num_slots]: slot
        # first_slot + split of each (row, head) of the tile.
        mid_row = (b * num_q_heads + heads) * num_slots + first_slot + split  # [TILE_M]
        tl.store(mid_out + mid_row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=live[:, None])
        tl.store(mid_lse + mid_row, lse, mask=live)


def check_groups(groups: PrefixGroups, batch: int, device: torch.device) -> None:
    """Shapes, dtypes and devices of the group tensors (their contents are the caller's word)."""
    num_groups = groups.prefix_lens.shape[0]
    check_index("groups.rows", groups.rows, 1, torch.int32, device)
    check_index("groups.starts", groups.starts, 1, torch.int32, device)
    check_index("groups.prefix_lens", groups.prefix_lens, 1, torch.int32, device)
    check_index("groups.kv_start", groups.kv_start, 1, torch.int32, device)
    if groups.starts.shape[0] != num_groups + 1:
        raise ValueError(f"groups.starts must be [{num_groups + 1}], got {groups.starts.shape}")
    if groups.kv_start.shape[0] != batch:
        raise ValueError(f"groups.kv_start must be [{batch}], got {groups.kv_start.shape}")
    if groups.rows.shape[0] > batch:
        raise ValueError(f"groups.rows must hold at most {batch} rows, got {groups.rows.shape}")


def launch_prefix(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    groups: PrefixGroups,
    mid_out: torch.Tensor,
    mid_lse: torch.Tensor,
    first_slot: int,
    num_prefix_splits: int,
    scale: float,
    block_m: int,
    prefix_block_n: int,
    num_warps: int,
    scales: tuple,
) -> None:
    """The prefix kernel into slots [first_slot, first_slot + num_prefix_splits) of mid_out /
    mid_lse, for the rows of each group (rows in no group are not written)."""
    kv_heads = k_cache.shape[2]
    group = q.shape[1] // kv_heads
    rows_per_chunk = max(1, block_m // group)
    _prefix_kernel[(groups.prefix_lens.shape[0], kv_heads, num_prefix_splits)](
        q,
        k_cache,
        v_cache,
        block_tables,
        groups.rows,
        groups.starts,
        groups.prefix_lens,
        mid_out,
        mid_lse,
        scales[0],
        scales[1],
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        scales[2],
        scales[3],
        scale * LOG2E,
        first_slot,
        mid_lse.shape[2],
        group=group,
        block_size=k_cache.shape[1],
        ROWS=rows_per_chunk,
        TILE_M=max(16, next_power_of_2(rows_per_chunk * group)),
        HEAD_DIM=q.shape[2],
        BLOCK_N=prefix_block_n,
        HAS_SCALE=fp8_math(scales[4], q.dtype),
        num_warps=num_warps,
        num_stages=2,
    )


def decode_attention_grouped_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    groups: PrefixGroups,
    num_splits: int | None = None,
    num_prefix_splits: int | None = None,
    block_m: int = 64,
    block_n: int = 32,
    prefix_block_n: int = 64,
    num_warps: int = 4,
    out: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    merge: bool | None = None,
) -> torch.Tensor:
    """See yaie.kernels.attention.decode_attention_grouped; q [batch, q_heads, D] -> same.

    A prefix program (group, kv head, prefix split) takes up to block_m // gqa rows of its group
    at a time (tile rows = rows x gqa, padded to a power of two >= 16). The grid and the split
    counts derive from shapes only (group slots, not their contents), so a step with a fixed
    number of group slots can be captured in a CUDA graph: a padding slot (starts[g + 1] ==
    starts[g]) does nothing.

    merge (default: when each row's own tokens take one split): the prefix kernel runs first and
    the split kernel folds its partials into the row's result (2 launches a layer instead of 4:
    no reduce pass, no partials of the own tokens); otherwise the reduce merges all slots.
    """
    kv_heads, group = check_decode_batch(q, k_cache, v_cache, block_tables, seq_lens, block_n)
    check_tile("prefix_block_n", prefix_block_n)
    scales = scale_args(k_cache, k_scale, v_scale)
    batch = q.shape[0]
    check_groups(groups, batch, q.device)
    num_groups = groups.prefix_lens.shape[0]
    context = max_context(k_cache, block_tables)
    if num_splits is None:
        num_splits = default_num_splits(batch, kv_heads, context, q.device)
    if num_prefix_splits is None:
        # A power of two: on the H200 at 16 groups x 16 rows (2,048 shared tokens), 2 splits
        # ran 136 us, 3 (what the fill rule asks for) 150, 4 145 (benchmarks/NOTES.md).
        wanted = default_num_splits(num_groups, kv_heads, context, q.device)
        num_prefix_splits = min(1 << (wanted.bit_length() - 1), MAX_PREFIX_SPLITS)
    if num_groups == 0:
        num_prefix_splits = 0  # nothing shared: the plain split-K decode
    if merge is None:
        merge = num_splits == 1 and num_prefix_splits > 0
    elif merge and (num_splits != 1 or num_prefix_splits == 0):
        raise ValueError("merge takes one split of the own tokens and at least one group")
    if num_prefix_splits == 0:  # (one split: its output written directly, no reduce)
        return decode_attention_triton(
            q, k_cache, v_cache, block_tables, seq_lens, scale, num_splits, block_n, num_warps,
            2, out, k_scale, v_scale,
        )  # fmt: skip
    out = check_out(out, q)
    if batch == 0:
        return out
    prefix_args = (scale, block_m, prefix_block_n, num_warps, scales)
    split_args = (scale, block_n, num_warps, 2, scales)
    if merge:
        mid_out, mid_lse = split_partials(q, num_prefix_splits)
        launch_prefix(
            q, k_cache, v_cache, block_tables, groups, mid_out, mid_lse, 0, num_prefix_splits,
            *prefix_args,
        )  # fmt: skip
        launch_decode_splits(
            q, k_cache, v_cache, block_tables, seq_lens, groups.kv_start, mid_out, mid_lse, 1,
            *split_args, merge_into=out,
        )  # fmt: skip
        return out
    mid_out, mid_lse = split_partials(q, num_splits + num_prefix_splits)
    launch_decode_splits(
        q, k_cache, v_cache, block_tables, seq_lens, groups.kv_start, mid_out, mid_lse,
        num_splits, *split_args,
    )  # fmt: skip
    mid_lse[:, :, num_splits:].fill_(float("-inf"))  # rows in no group: no prefix partial
    launch_prefix(
        q, k_cache, v_cache, block_tables, groups, mid_out, mid_lse, num_splits,
        num_prefix_splits, *prefix_args,
    )  # fmt: skip
    launch_decode_reduce(mid_out, mid_lse, out, min_pad=16)
    return out
