"""Split-K (flash-decoding) Triton kernels for paged decode attention, CUDA-graph capturable.

Pass 1: program (request, kv head, split) attends all query heads of the GQA group to its chunk of
the request's tokens (K/V loaded once per group) and writes a partial output and log-sum-exp.
Pass 2: program (request, query head) merges the splits. The grid depends on shapes only; chunk
bounds come from seq_lens on the device, so replaying a graph with new lengths stays correct.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from yaie.kernels.attention.triton_common import check_out, check_paged_batch, next_power_of_2

LOG2E = 1.4426950408889634


# Runtime ints that vary per step are not specialized (Triton would compile a variant per value
# class: == 1, multiple of 16, other), so a new batch composition never stalls on a compile.
@triton.jit(do_not_specialize=["block_tables", "seq_lens", "stride_table", "num_splits"])
def _decode_split_kernel(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    mid_out,
    mid_lse,
    stride_q_batch,
    stride_q_head,
    stride_cache_block,
    stride_cache_token,
    stride_cache_head,
    stride_table,
    qk_scale,
    num_splits,
    group: tl.constexpr,
    block_size: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens + b)
    # Chunks are whole BLOCK_N tiles; splits past seq_len get an empty range and write lse=-inf.
    tiles_per_split = tl.cdiv(tl.cdiv(seq_len, BLOCK_N), num_splits)
    start = split * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, seq_len)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kv_head * group + offs_g  # query heads of this group: [GROUP_PAD]
    group_mask = offs_g < group
    q_ptrs = q + b * stride_q_batch + heads[:, None] * stride_q_head + offs_d[None, :]
    q_tile = tl.load(q_ptrs, mask=group_mask[:, None], other=0.0)  # [GROUP_PAD, D]

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    table_row = block_tables + b * stride_table
    for tile_start in range(start, end, BLOCK_N):
        pos = tile_start + offs_n  # token positions [BLOCK_N]
        valid = pos < end
        block = tl.load(table_row + pos // block_size, mask=valid, other=0).to(tl.int64)
        row = block * stride_cache_block + (pos % block_size) * stride_cache_token
        kv_off = row[:, None] + kv_head * stride_cache_head + offs_d[None, :]  # [BLOCK_N, D]
        k_tile = tl.load(k_cache + kv_off, mask=valid[:, None], other=0.0)
        v_tile = tl.load(v_cache + kv_off, mask=valid[:, None], other=0.0)
        scores = tl.dot(q_tile, tl.trans(k_tile)) * qk_scale  # [GROUP_PAD, BLOCK_N], log2 units
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v_tile.dtype), v_tile)
        m_i = m_new

    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    # mid_out [batch, q_heads, num_splits, D] fp32; mid_lse [batch, q_heads, num_splits] fp32.
    num_q_heads = tl.num_programs(1) * group
    mid_row = (b * num_q_heads + heads) * num_splits + split  # [GROUP_PAD]
    tl.store(mid_out + mid_row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=group_mask[:, None])
    tl.store(mid_lse + mid_row, lse, mask=group_mask)


@triton.jit(do_not_specialize=["num_splits"])
def _decode_reduce_kernel(
    mid_out,
    mid_lse,
    out,
    stride_out_batch,
    stride_out_head,
    num_splits,
    HEAD_DIM: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    b = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    row = (b * tl.num_programs(1) + head) * num_splits
    lse = tl.load(mid_lse + row + offs_s, mask=offs_s < num_splits, other=float("-inf"))
    has_keys = lse > float("-inf")
    m = tl.max(tl.where(has_keys, lse, -1e30), axis=0)
    weight = tl.where(has_keys, tl.exp2(lse - m), 0.0)  # [SPLITS_PAD]
    part = tl.load(
        mid_out + (row + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
        mask=has_keys[:, None],
        other=0.0,
    )  # [SPLITS_PAD, D]
    total = tl.sum(weight, axis=0)
    # A request with no tokens (a padded CUDA-graph slot) gets zeros, as the reference does.
    result = tl.sum(part * weight[:, None], axis=0) / tl.where(total > 0.0, total, 1.0)
    out_ptrs = out + b * stride_out_batch + head * stride_out_head + offs_d
    tl.store(out_ptrs, result.to(out.dtype.element_ty))


def default_num_splits(batch: int, kv_heads: int, max_context: int, device: torch.device) -> int:
    """Enough (request, kv head, split) programs to fill the GPU about twice, >= 256 tokens each."""
    num_sms = 132
    if device.type == "cuda":
        num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    wanted = triton.cdiv(2 * num_sms, max(1, batch * kv_heads))
    return max(1, min(wanted, triton.cdiv(max_context, 256), 64))


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
) -> torch.Tensor:
    """See yaie.kernels.attention.decode_attention; q [batch, q_heads, head_dim] -> same.

    num_splits defaults to a value derived from shapes only (batch, kv_heads, block_tables width).
    Default tiles are the fastest measured on an H100 at head_dim 128 (benchmarks/NOTES.md).
    """
    block_size, kv_heads, head_dim, group = check_paged_batch(
        q, k_cache, v_cache, block_tables, seq_lens
    )
    batch, num_q_heads, _ = q.shape
    if batch != seq_lens.shape[0]:
        raise ValueError(f"q batch {batch} != seq_lens batch {seq_lens.shape[0]}")
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")
    if num_splits is None:
        max_context = block_tables.shape[1] * block_size
        num_splits = default_num_splits(batch, kv_heads, max_context, q.device)
    out = check_out(out, q)
    if batch == 0:
        return out
    mid_out = torch.empty(
        batch, num_q_heads, num_splits, head_dim, dtype=torch.float32, device=q.device
    )
    mid_lse = torch.empty(batch, num_q_heads, num_splits, dtype=torch.float32, device=q.device)
    _decode_split_kernel[(batch, kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        mid_out,
        mid_lse,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        scale * LOG2E,
        num_splits,
        group=group,
        block_size=block_size,
        GROUP_PAD=max(16, next_power_of_2(group)),
        HEAD_DIM=head_dim,
        BLOCK_N=block_n,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    _decode_reduce_kernel[(batch, num_q_heads)](
        mid_out,
        mid_lse,
        out,
        out.stride(0),
        out.stride(1),
        num_splits,
        HEAD_DIM=head_dim,
        SPLITS_PAD=next_power_of_2(num_splits),
        num_warps=4,
    )
    return out
