"""Triton kernel for paged extend (prefill) attention: new tokens over their cached prefix and
themselves, causal, ragged batch. Program (query head, request, query tile) streams the request's
K/V through its block table: unmasked tiles first (keys every query of the tile sees), then the
few tiles on the causal diagonal with the mask.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from yaie.kernels.attention.triton_common import (
    LOG2E,
    check_index,
    check_out,
    check_paged_batch,
    check_tile,
    fp8_math,
    scale_args,
)


@triton.jit
def _attend_tile(
    acc,
    m_i,
    l_i,
    q_tile,
    q_pos,
    k_cache,
    v_cache,
    table_row,
    lo,
    hi,
    seq_len,
    kv_head,
    stride_cache_block,
    stride_cache_token,
    stride_cache_head,
    k_scale,
    v_scale,
    stride_scale_block,
    stride_scale_head,
    qk_scale,
    block_size: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    # Online softmax of q_tile [BLOCK_M, D] over key positions lo..hi (lo a multiple of BLOCK_N).
    # K/V are converted to q's dtype; fp8 scales fold into scores and p (see attend_range).
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for tile_start in range(lo, hi, BLOCK_N):
        pos = tile_start + offs_n
        if CAUSAL:  # the diagonal tiles may run past seq_len
            in_seq = pos < seq_len
            block = tl.load(table_row + pos // block_size, mask=in_seq, other=0).to(tl.int64)
        else:  # every key of these tiles is below the tile's first query, so < seq_len
            block = tl.load(table_row + pos // block_size).to(tl.int64)
        row = block * stride_cache_block + (pos % block_size) * stride_cache_token
        kv_off = row[:, None] + kv_head * stride_cache_head + offs_d[None, :]  # [BLOCK_N, D]
        scale_off = block * stride_scale_block + kv_head * stride_scale_head + pos % block_size
        if CAUSAL:
            k_tile = tl.load(k_cache + kv_off, mask=in_seq[:, None], other=0.0)
            v_tile = tl.load(v_cache + kv_off, mask=in_seq[:, None], other=0.0)
            if HAS_SCALE:
                s_k = tl.load(k_scale + scale_off, mask=in_seq, other=0.0)
                s_v = tl.load(v_scale + scale_off, mask=in_seq, other=0.0)
        else:
            k_tile = tl.load(k_cache + kv_off)
            v_tile = tl.load(v_cache + kv_off)
            if HAS_SCALE:
                s_k = tl.load(k_scale + scale_off)
                s_v = tl.load(v_scale + scale_off)
        if HAS_SCALE == 3:  # the tiles scaled as they load (triton_common.FP8_EXTEND_MATH)
            k_tile = (k_tile.to(tl.float32) * s_k[:, None]).to(q_tile.dtype)
            v_tile = (v_tile.to(tl.float32) * s_v[:, None]).to(q_tile.dtype)
        else:
            k_tile, v_tile = k_tile.to(q_tile.dtype), v_tile.to(q_tile.dtype)
        scores = tl.dot(q_tile, tl.trans(k_tile)) * qk_scale  # [BLOCK_M, BLOCK_N], log2 units
        if HAS_SCALE == 1 or HAS_SCALE == 2:
            scores = scores * s_k[None, :]
        if CAUSAL:
            visible = (pos[None, :] <= q_pos[:, None]) & in_seq[None, :]
            scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if HAS_SCALE == 1 or HAS_SCALE == 2:
            p = p * s_v[None, :]
        acc = acc * alpha[:, None] + tl.dot(p.to(q_tile.dtype), v_tile)
        m_i = m_new
    return acc, m_i, l_i


# Per-step values are not specialized (Triton compiles a variant per value class, and per 16-byte
# alignment of a pointer): the widest block table (stride_table), and the per-request arrays,
# which a mixed step passes as row slices (batch.seq_lens[d:]) at any alignment. They are read
# one scalar per program, so the specialization would buy nothing; a compile stalls a step ~1 s.
@triton.jit(do_not_specialize=["block_tables", "seq_lens", "query_start", "stride_table"])
def _extend_kernel(
    q,
    out,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    query_start,
    stride_q_token,
    stride_q_head,
    stride_out_token,
    stride_out_head,
    stride_cache_block,
    stride_cache_token,
    stride_cache_head,
    stride_table,
    k_scale,
    v_scale,
    stride_scale_block,
    stride_scale_head,
    qk_scale,
    group: tl.constexpr,
    block_size: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    INVARIANT: tl.constexpr,
):
    head = tl.program_id(0)
    b = tl.program_id(1)
    # Tiles run last-first: later tiles see more keys, so the long programs start early.
    tile = tl.num_programs(2) - 1 - tl.program_id(2)
    q_lo = tl.load(query_start + b)
    num_new = tl.load(query_start + b + 1) - q_lo
    if tile * BLOCK_M >= num_new:
        return
    seq_len = tl.load(seq_lens + b)
    prefix_len = seq_len - num_new
    kv_head = head // group

    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # index among the request's new tokens
    offs_d = tl.arange(0, HEAD_DIM)
    row_mask = offs_m < num_new
    q_pos = prefix_len + offs_m  # absolute positions; rows past num_new are padding
    tokens = (q_lo + offs_m).to(tl.int64)
    q_ptrs = q + tokens[:, None] * stride_q_token + head * stride_q_head + offs_d[None, :]
    q_tile = tl.load(q_ptrs, mask=row_mask[:, None], other=0.0)
    if HAS_SCALE >= 2:  # an fp8 pool, fp16 math (triton_common.FP8_EXTEND_MATH)
        q_tile = q_tile.to(tl.float16)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    table_row = block_tables + b * stride_table
    # Keys 0..first_pos are visible to every row of the tile: whole tiles below that need no mask.
    # Batch-invariant mode walks every tile through the masked loop: the two loops compile to
    # different code that rounds differently (a chunked prompt's outputs differed from the whole
    # prompt's on the H200), and where a query's tiles switch loops depends on its chunk's start.
    first_pos = prefix_len + tile * BLOCK_M
    if INVARIANT:
        unmasked_end = first_pos * 0
    else:
        unmasked_end = ((first_pos + 1) // BLOCK_N) * BLOCK_N
    last_pos = tl.minimum(first_pos + BLOCK_M, seq_len)  # one past the tile's last key
    # fmt: off
    acc, m_i, l_i = _attend_tile(  # keys [0, unmasked_end): no mask
        acc, m_i, l_i, q_tile, q_pos, k_cache, v_cache, table_row, 0, unmasked_end, seq_len,
        kv_head, stride_cache_block, stride_cache_token, stride_cache_head,
        k_scale, v_scale, stride_scale_block, stride_scale_head, qk_scale,
        block_size, HEAD_DIM, BLOCK_N, False, HAS_SCALE)
    acc, m_i, l_i = _attend_tile(  # keys [unmasked_end, last_pos): the causal diagonal
        acc, m_i, l_i, q_tile, q_pos, k_cache, v_cache, table_row, unmasked_end, last_pos,
        seq_len, kv_head, stride_cache_block, stride_cache_token, stride_cache_head,
        k_scale, v_scale, stride_scale_block, stride_scale_head, qk_scale,
        block_size, HEAD_DIM, BLOCK_N, True, HAS_SCALE)
    # fmt: on

    result = acc / l_i[:, None]
    out_ptrs = out + tokens[:, None] * stride_out_token + head * stride_out_head + offs_d[None, :]
    tl.store(out_ptrs, result.to(out.dtype.element_ty), mask=row_mask[:, None])


def extend_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start: torch.Tensor,
    max_query_len: int,
    scale: float,
    block_m: int = 128,
    block_n: int = 32,
    num_warps: int = 8,
    num_stages: int = 2,
    out: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    invariant: bool = False,
) -> torch.Tensor:
    """See yaie.kernels.attention.extend_attention; q [num_tokens, q_heads, head_dim] -> same.

    max_query_len must be >= every request's new-token count (it sizes the grid; no host sync).
    invariant (batch-invariant mode): each query's result the same bit for bit however its
    request was chunked (one code path for every key tile; slower on long prompts).
    Default tiles are the fastest measured on an H100 at head_dim 128 (benchmarks/NOTES.md).
    """
    block_size, _, head_dim, group = check_paged_batch(q, k_cache, v_cache, block_tables, seq_lens)
    check_index("query_start", query_start, 1, torch.int32, q.device)
    batch = seq_lens.shape[0]
    if query_start.shape[0] != batch + 1:
        raise ValueError(
            f"query_start must be [batch + 1] = [{batch + 1}], got {tuple(query_start.shape)}"
        )
    check_tile("block_m", block_m)
    check_tile("block_n", block_n)
    k_scale, v_scale, stride_scale_block, stride_scale_head, has_scale = scale_args(
        k_cache, k_scale, v_scale
    )
    out = check_out(out, q)
    if batch == 0 or q.shape[0] == 0 or max_query_len <= 0:
        return out
    grid = (q.shape[1], batch, triton.cdiv(max_query_len, block_m))
    _extend_kernel[grid](
        q,
        out,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        query_start,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        k_scale,
        v_scale,
        stride_scale_block,
        stride_scale_head,
        scale * LOG2E,
        group=group,
        block_size=block_size,
        HEAD_DIM=head_dim,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        HAS_SCALE=fp8_math(has_scale, q.dtype, extend=True),
        INVARIANT=invariant,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out
