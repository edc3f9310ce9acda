"""The inner pieces of paged decode attention in Triton, shared by the split-K decode kernel
(triton_decode.py) and the cascade prefix kernel (triton_cascade.py): the online softmax of a
query tile over a range of one block table row's keys, and the fold of one normalized partial
into another by log-sum-exp.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def attend_range(
    q_tile,
    k_cache,
    v_cache,
    table_row,
    start,
    end,
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
    TILE_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    # Online softmax of q_tile [TILE_M, D] over key positions [start, end) of one block table
    # row; returns the normalized partial output [TILE_M, D] and its lse (log2; -inf if no keys).
    # K/V tiles are converted to q's dtype; an fp8 pool's per-key scales multiply the scores
    # (q . k * s_k) and the probabilities (p * s_v) instead of every loaded element.
    # HAS_SCALE (triton_common.FP8_DECODE_MATH) over an fp8 pool: 1 dots in q's dtype, the scales
    # on the scores and probabilities; 2 the same in fp16. (Scaling the K/V tiles as they load
    # instead, in fp16 or fp32, measured 1.2-1.7x slower on the H200: NOTES.md.)
    if HAS_SCALE == 2:
        q_tile = q_tile.to(tl.float16)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([TILE_M], float("-inf"), tl.float32)
    l_i = tl.zeros([TILE_M], tl.float32)
    acc = tl.zeros([TILE_M, HEAD_DIM], tl.float32)
    for tile_start in range(start, end, BLOCK_N):
        pos = tile_start + offs_n  # token positions [BLOCK_N]
        valid = pos < end
        block = tl.load(table_row + pos // block_size, mask=valid, other=0).to(tl.int64)
        row = block * stride_cache_block + (pos % block_size) * stride_cache_token
        kv_off = row[:, None] + kv_head * stride_cache_head + offs_d[None, :]  # [BLOCK_N, D]
        k_tile = tl.load(k_cache + kv_off, mask=valid[:, None], other=0.0)
        v_tile = tl.load(v_cache + kv_off, mask=valid[:, None], other=0.0)
        if HAS_SCALE:  # scales [blocks, kv_heads, block_size]: a block's run is contiguous
            scale_off = block * stride_scale_block + kv_head * stride_scale_head + pos % block_size
            s_k = tl.load(k_scale + scale_off, mask=valid, other=0.0)  # [BLOCK_N]
            s_v = tl.load(v_scale + scale_off, mask=valid, other=0.0)
        k_tile, v_tile = k_tile.to(q_tile.dtype), v_tile.to(q_tile.dtype)
        scores = tl.dot(q_tile, tl.trans(k_tile)) * qk_scale  # [TILE_M, BLOCK_N], log2 units
        if HAS_SCALE:
            scores = scores * s_k[None, :]
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if HAS_SCALE:
            p = p * s_v[None, :]
        acc = acc * alpha[:, None] + tl.dot(p.to(q_tile.dtype), v_tile)
        m_i = m_new
    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    return out, lse


@triton.jit
def fold_partial(out, lse, out_s, lse_s):
    # Two normalized partials of the same rows (out [M, D], lse [M] in log2 units, -inf for a
    # partial over no keys) -> their merge over both key sets; two empty ones stay empty.
    m = tl.maximum(lse, lse_s)
    m = tl.where(m > float("-inf"), m, 0.0)
    w, w_s = tl.exp2(lse - m), tl.exp2(lse_s - m)
    total = w + w_s
    norm = tl.where(total > 0.0, total, 1.0)
    merged = (out * w[:, None] + out_s * w_s[:, None]) / norm[:, None]
    return merged, tl.where(total > 0.0, m + tl.log2(norm), float("-inf"))
