"""Split-K (flash-decoding) Triton kernels for paged decode attention, CUDA-graph capturable.

Pass 1: program (request, kv head, split) attends all query heads of the GQA group to its chunk of
the request's tokens (K/V loaded once per group) and writes a partial output and log-sum-exp.
Pass 2: program (request, query head) merges the splits; with one split, pass 1 writes the output
itself and there is no pass 2. The grid depends on shapes only; chunk bounds come from seq_lens on
the device, so replaying a graph with new lengths stays correct.

With an order (the rows longest first, from the batch builder) the programs take the rows in that
order and every row is cut into chunks of the longest row's split, so the programs of a ragged
batch hold about equal work and the last wave is short (1.06-1.4x on the H200 at 16-512 rows of
100-2,048 tokens: benchmarks/NOTES.md, session 14); a row of one chunk writes its output itself.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from yaie.kernels.attention.triton_attend import attend_range, fold_partial
from yaie.kernels.attention.triton_common import (
    LOG2E,
    check_out,
    check_paged_batch,
    check_tile,
    fp8_math,
    next_power_of_2,
    scale_args,
)
from yaie.kernels.attention.triton_reduce import launch_decode_reduce, ordered_chunks


# Runtime ints that vary per step are not specialized (Triton would compile a variant per value
# class: == 1, multiple of 16, other), so a new batch composition never stalls on a compile.
@triton.jit(
    do_not_specialize=[
        "block_tables",
        "seq_lens",
        "kv_start",
        "stride_table",
        "order",
        "num_splits",
        "num_slots",
    ]
)
def _decode_split_kernel(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    kv_start,
    order,
    mid_out,
    mid_lse,
    final,
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
    stride_out_batch,
    stride_out_head,
    qk_scale,
    num_splits,
    num_slots,
    group: tl.constexpr,
    block_size: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_START: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    MERGE: tl.constexpr,
    ORDERED: tl.constexpr,
):
    if ORDERED:  # kv heads fastest, rows longest first: order[i] is the i-th longest row
        kv_head = tl.program_id(0)
        b = tl.load(order + tl.program_id(1))
        num_q_heads = tl.num_programs(0) * group
    else:
        b = tl.program_id(0)
        kv_head = tl.program_id(1)
        num_q_heads = tl.num_programs(1) * group
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens + b)
    # The splits cover [first, seq_len): first = kv_start[b] (tokens before it are attended by
    # the cascade prefix kernel) or 0.
    first = 0
    if HAS_START:
        first = tl.load(kv_start + b)
    # Chunks are whole BLOCK_N tiles; splits past seq_len get an empty range and write lse=-inf.
    tiles_per_split = tl.cdiv(tl.cdiv(seq_len - first, BLOCK_N), num_splits)
    row_splits = num_splits
    if ORDERED:  # chunks of one size for every row (the longest row's split): see ordered_chunks
        tiles_per_split, row_splits = ordered_chunks(seq_lens, order, seq_len, num_splits, BLOCK_N)
    start = first + split * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, seq_len)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    heads = kv_head * group + offs_g  # query heads of this group: [GROUP_PAD]
    group_mask = offs_g < group
    q_ptrs = q + b * stride_q_batch + heads[:, None] * stride_q_head + offs_d[None, :]
    q_tile = tl.load(q_ptrs, mask=group_mask[:, None], other=0.0)  # [GROUP_PAD, D]
    # fmt: off
    out, lse = attend_range(
        q_tile, k_cache, v_cache, block_tables + b * stride_table, start, end, kv_head,
        stride_cache_block, stride_cache_token, stride_cache_head,
        k_scale, v_scale, stride_scale_block, stride_scale_head, qk_scale,
        block_size, GROUP_PAD, HEAD_DIM, BLOCK_N, HAS_SCALE,
    )
    # fmt: on
    # mid_out [batch, q_heads, num_slots, D] fp32; mid_lse [batch, q_heads, num_slots] fp32.
    mid_row = (b * num_q_heads + heads) * num_slots  # slot 0 of each head's row: [GROUP_PAD]
    if MERGE:
        # One split, and the cascade prefix kernel ran first: its partials of a row in a group
        # (first > 0) fill all num_slots slots; fold them into this range's result and write
        # the final output (no reduce pass). A row in no group has none.
        if first > 0:
            for slot in range(0, num_slots):
                lse_s = tl.load(mid_lse + mid_row + slot, mask=group_mask, other=float("-inf"))
                out_s = tl.load(
                    mid_out + (mid_row + slot)[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=group_mask[:, None],
                    other=0.0,
                )
                out, lse = fold_partial(out, lse, out_s, lse_s)
        _store_final(final, mid_lse, mid_row, out, lse, b, heads, group_mask, offs_d,
                     stride_out_batch, stride_out_head)  # fmt: skip
    elif ORDERED:
        if row_splits <= 1:  # the row's one chunk (split 0; the others' ranges are empty)
            if split == 0:  # writes the row's output, as MERGE does
                _store_final(final, mid_lse, mid_row, out, lse, b, heads, group_mask, offs_d,
                             stride_out_batch, stride_out_head)  # fmt: skip
        elif split < row_splits:  # one of the row's chunks: a partial, for the reduce
            _store_partial(mid_out, mid_lse, mid_row + split, out, lse, group_mask, offs_d,
                           HEAD_DIM)  # fmt: skip
    else:
        # Slots [0, num_splits) are this kernel's, any further ones the cascade prefix kernel's.
        _store_partial(mid_out, mid_lse, mid_row + split, out, lse, group_mask, offs_d, HEAD_DIM)


@triton.jit
def _store_final(
    final, mid_lse, mid_row, out, lse, b, heads, group_mask, offs_d, stride_batch, stride_head
):
    row_ptrs = final + b * stride_batch + heads * stride_head  # [GROUP_PAD]
    tl.store(row_ptrs[:, None] + offs_d[None, :], out.to(final.dtype.element_ty),
             mask=group_mask[:, None])  # fmt: skip
    # The row's lse into its slot 0 (read by nobody): the first version, a bf16 store of the
    # output alone, ran 1.15-1.3x slower on the H200 at 128-256 rows with its loop's SASS
    # unchanged; with this store (or with an fp32 output) it runs at the partials' speed. Cause
    # not found (benchmarks/NOTES.md, session 13, call 5).
    tl.store(mid_lse + mid_row, lse, mask=group_mask)


@triton.jit
def _store_partial(mid_out, mid_lse, rows, out, lse, group_mask, offs_d, HEAD_DIM: tl.constexpr):
    tl.store(mid_out + rows[:, None] * HEAD_DIM + offs_d[None, :], out, mask=group_mask[:, None])
    tl.store(mid_lse + rows, lse, mask=group_mask)


@functools.cache
def _num_sms(device: torch.device) -> int:
    """The device's SM count (an H100's 132 off CUDA), looked up once: the launch path asks for
    it per layer and per step."""
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_num_splits(
    batch: int, kv_heads: int, max_context: int, device: torch.device, ordered: bool = False
) -> int:
    """Enough (request, kv head, split) programs to fill the GPU about twice, >= 256 tokens each.

    ordered (rows longest first, chunks of the longest row's split): at least ~15.5 programs
    per SM (2,048 on 132), and 2 to 8 splits. On the H200 (benchmarks/NOTES.md, session 14) one
    split wins for ragged batches from 256 rows but ran 12% slower than the plain kernel on
    uniform ones on one of two machines (a tie on the other; cause not found); two splits cost
    2-4% there and keep most of the ragged gain."""
    rows = max(1, batch * kv_heads)
    wanted = triton.cdiv(2 * _num_sms(device), rows)
    if ordered:
        wanted = max(wanted, min(triton.cdiv(_num_sms(device) * 2048 // 132, rows), 8), 2)
    return max(1, min(wanted, triton.cdiv(max_context, 256), 64))


def launch_decode_splits(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    kv_start: torch.Tensor | None,
    mid_out: torch.Tensor,
    mid_lse: torch.Tensor,
    num_splits: int,
    scale: float,
    block_n: int,
    num_warps: int,
    num_stages: int,
    scales: tuple,
    merge_into: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
) -> None:
    """Pass 1 into slots [0, num_splits) of mid_out [batch, q_heads, slots, D] / mid_lse; each
    request's splits cover [kv_start[b], seq_lens[b]) ([0, ...) when kv_start is None).
    scales: scale_args(k_cache, k_scale, v_scale).

    merge_into (out [batch, q_heads, D], with one split): the split writes out itself, so no
    reduce pass follows; with kv_start, every slot of mid_out / mid_lse holds the cascade
    prefix kernel's partials of a row in a group (kv_start > 0), merged in first (a row in no
    group, or every row without kv_start, reads nothing there). Slot 0 of mid_lse gets the
    row's final lse (mid_lse needs one slot at least; mid_out is not read without kv_start).

    order (a permutation of the rows, longest first; with merge_into, without kv_start): the
    programs run kv heads fastest and the longest rows first, each row cut into chunks of the
    longest row's 1/num_splits; a row of one chunk writes merge_into itself, the others their
    partials into slots [0, chunks) for launch_decode_reduce with the same order."""
    if order is not None and (merge_into is None or kv_start is not None):
        raise ValueError("order takes merge_into and no kv_start")
    if merge_into is not None and num_splits != 1 and order is None:
        raise ValueError("merge_into takes one split")
    _, block_size, kv_heads, head_dim = k_cache.shape
    batch, num_q_heads, _ = q.shape
    group = num_q_heads // kv_heads
    k_scale, v_scale, stride_scale_block, stride_scale_head, has_scale = scales
    grid = (batch, kv_heads, num_splits) if order is None else (kv_heads, batch, num_splits)
    _decode_split_kernel[grid](
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        seq_lens if kv_start is None else kv_start,  # not read without a start
        seq_lens if order is None else order,  # not read without an order
        mid_out,
        mid_lse,
        mid_out if merge_into is None else merge_into,  # not written without a merge
        k_scale,
        v_scale,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        stride_scale_block,
        stride_scale_head,
        0 if merge_into is None else merge_into.stride(0),
        0 if merge_into is None else merge_into.stride(1),
        scale * LOG2E,
        num_splits,
        mid_lse.shape[2],
        group=group,
        block_size=block_size,
        GROUP_PAD=max(16, next_power_of_2(group)),
        HEAD_DIM=head_dim,
        BLOCK_N=block_n,
        HAS_START=kv_start is not None,
        HAS_SCALE=fp8_math(has_scale, q.dtype),
        MERGE=merge_into is not None and num_splits == 1,
        ORDERED=order is not None,
        num_warps=num_warps,
        num_stages=num_stages,
    )


def check_decode_batch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    block_n: int,
) -> tuple[int, int]:
    """check_paged_batch for one query per request, and the key tile; returns (kv_heads, GQA
    group)."""
    _, kv_heads, _, group = check_paged_batch(q, k_cache, v_cache, block_tables, seq_lens)
    if q.shape[0] != seq_lens.shape[0]:
        raise ValueError(f"q batch {q.shape[0]} != seq_lens batch {seq_lens.shape[0]}")
    check_tile("block_n", block_n)
    return kv_heads, group


def max_context(k_cache: torch.Tensor, block_tables: torch.Tensor) -> int:
    """Tokens a block table row can address (what the default split counts are derived from)."""
    return block_tables.shape[1] * k_cache.shape[1]


def split_partials(q: torch.Tensor, num_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty pass-1 outputs for q [batch, q_heads, D]: mid_out [batch, q_heads, slots, D] and
    mid_lse [batch, q_heads, slots], fp32."""
    batch, num_q_heads, head_dim = q.shape
    mid_out = torch.empty(
        batch, num_q_heads, num_slots, head_dim, dtype=torch.float32, device=q.device
    )
    mid_lse = torch.empty(batch, num_q_heads, num_slots, dtype=torch.float32, device=q.device)
    return mid_out, mid_lse


def decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
    block_n: int = 32,
    num_warps: int = 4,
    num_stages: int = 2,
    out: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """See yaie.kernels.attention.decode_attention; q [batch, q_heads, head_dim] -> same.

    num_splits defaults to a value derived from shapes only (batch, kv_heads, block_tables width).
    Default tiles are the fastest measured on an H100 at head_dim 128 (benchmarks/NOTES.md).
    order: the rows longest first (launch_decode_splits), for a ragged batch's balance.
    """
    kv_heads, _ = check_decode_batch(q, k_cache, v_cache, block_tables, seq_lens, block_n)
    scales = scale_args(k_cache, k_scale, v_scale)
    batch = q.shape[0]
    if num_splits is None:
        context = max_context(k_cache, block_tables)
        num_splits = default_num_splits(batch, kv_heads, context, q.device, order is not None)
    out = check_out(out, q)
    if batch == 0:
        return out
    split_args = (scale, block_n, num_warps, num_stages, scales)
    if num_splits == 1:  # the split writes out: no partials, no reduce pass (out's values equal)
        lse = torch.empty(batch, q.shape[1], 1, dtype=torch.float32, device=q.device)
        launch_decode_splits(
            q, k_cache, v_cache, block_tables, seq_lens, None, lse, lse, 1, *split_args,
            merge_into=out, order=order,
        )  # fmt: skip
        return out
    mid_out, mid_lse = split_partials(q, num_splits)
    launch_decode_splits(
        q, k_cache, v_cache, block_tables, seq_lens, None, mid_out, mid_lse, num_splits,
        *split_args, merge_into=None if order is None else out, order=order,
    )  # fmt: skip
    ordered = None if order is None else (seq_lens, order, block_n)
    launch_decode_reduce(mid_out, mid_lse, out, ordered=ordered)
    return out
