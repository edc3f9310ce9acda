"""Triton kernel that writes new tokens' K and V into the paged pool at their slots; into an fp8
pool it writes each (token, head) vector quantized by its own absolute maximum and that scale."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from yaie.kernels.attention.triton_common import (
    check_index,
    check_pool,
    check_tokens,
    next_power_of_2,
    scale_args,
)


@triton.jit
def round_to_e4m3(x):
    # x fp32 with |x| <= 448 -> the nearest e4m3 value (ties to even), still fp32, so that the
    # cast to fp8 after it is exact: the interpreter's own fp32 -> fp8 cast rounds wrongly when
    # the mantissa carries into the exponent. Normal range (|x| >= 2^-6): keep 3 mantissa bits.
    bits = x.to(tl.int32, bitcast=True)
    negative = bits < 0  # the sign bit: true for -0.0 too
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -0x100000).to(tl.float32, bitcast=True)
    # Subnormals are multiples of 2^-9: adding 2^14 (whose ulp is 2^-9) rounds |x| to one; the
    # sign comes back from the bits, so -0.0 stays -0.0 as in torch's cast.
    magnitude = (tl.abs(x) + 16384.0) - 16384.0
    subnormal = tl.where(negative, -magnitude, magnitude)
    rounded = tl.where(tl.abs(x) < 0.015625, subnormal, normal)
    return tl.minimum(tl.maximum(rounded, -448.0), 448.0)


@triton.jit
def slot_destinations(
    slot,
    head_ids,
    offs_d,
    stride_cache_block,
    stride_cache_token,
    stride_cache_head,
    stride_scale_block,
    stride_scale_head,
    block_size,
):
    # Offsets of one slot's head vectors in the pool ([H, D]) and of their scales ([H]; scales
    # [blocks, heads, block_size]) for head_ids [H].
    block = slot // block_size
    dst = block * stride_cache_block + (slot % block_size) * stride_cache_token
    dst += head_ids[:, None] * stride_cache_head + offs_d[None, :]
    scale_dst = block * stride_scale_block + head_ids * stride_scale_head + slot % block_size
    return dst, scale_dst


@triton.jit
def _store_rows(cache, scales, dst, scale_dst, rows, heads, HAS_SCALE: tl.constexpr):
    # rows [HEADS_PAD, D] -> cache at dst (rows where heads [HEADS_PAD] is true); fp8: each
    # head's scale amax / 448 (1 for zeros) to scales at scale_dst, as quantize_fp8.
    if HAS_SCALE:
        rows = rows.to(tl.float32)
        amax = tl.max(tl.abs(rows), axis=1)
        scale = tl.where(amax > 0.0, amax / 448.0, 1.0)
        rows = round_to_e4m3(rows / scale[:, None])
        tl.store(scales + scale_dst, scale, mask=heads)
    tl.store(cache + dst, rows.to(cache.dtype.element_ty), mask=heads[:, None])


@triton.jit(do_not_specialize=["num_tokens"])  # varies per step: no compile per value class
def _store_kv_kernel(
    k_cache,
    v_cache,
    k,
    v,
    slots,
    k_scale,
    v_scale,
    stride_cache_block,
    stride_cache_token,
    stride_cache_head,
    stride_k_token,
    stride_k_head,
    stride_v_token,
    stride_v_head,
    stride_scale_block,
    stride_scale_head,
    num_tokens,
    block_size: tl.constexpr,
    num_heads: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    TOKENS_PER_PROGRAM: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    # One program copies TOKENS_PER_PROGRAM tokens, each [num_heads, HEAD_DIM] for K and for V.
    offs_h = tl.arange(0, HEADS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    heads = offs_h < num_heads
    for i in range(TOKENS_PER_PROGRAM):
        token = tl.program_id(0) * TOKENS_PER_PROGRAM + i
        if token < num_tokens:
            dst, scale_dst = slot_destinations(
                tl.load(slots + token), offs_h, offs_d, stride_cache_block, stride_cache_token,
                stride_cache_head, stride_scale_block, stride_scale_head, block_size,
            )  # fmt: skip
            src_k = token * stride_k_token + offs_h[:, None] * stride_k_head + offs_d[None, :]
            src_v = token * stride_v_token + offs_h[:, None] * stride_v_head + offs_d[None, :]
            k_row = tl.load(k + src_k, mask=heads[:, None], other=0.0)
            v_row = tl.load(v + src_v, mask=heads[:, None], other=0.0)
            _store_rows(k_cache, k_scale, dst, scale_dst, k_row, heads, HAS_SCALE)
            _store_rows(v_cache, v_scale, dst, scale_dst, v_row, heads, HAS_SCALE)


def store_kv_triton(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slots: torch.Tensor,
    tokens_per_program: int = 1,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """k_cache[slot] = k (and V likewise); k, v [num_tokens, kv_heads, head_dim], slots int64.
    An fp8 pool takes k_scale / v_scale [num_blocks, kv_heads, block_size] float32."""
    _, _, kv_heads, head_dim = check_pool(k_cache, v_cache)
    check_tokens("k", k, kv_heads, head_dim, k_cache.device)
    check_tokens("v", v, kv_heads, head_dim, k_cache.device)
    check_index("slots", slots, 1, torch.int64, k_cache.device)
    num_tokens = slots.shape[0]
    if k.shape[0] != num_tokens or v.shape[0] != num_tokens:
        raise ValueError(
            f"k {tuple(k.shape)}, v {tuple(v.shape)} and slots "
            f"{tuple(slots.shape)} disagree on the number of tokens"
        )
    k_scale, v_scale, stride_scale_block, stride_scale_head, has_scale = scale_args(
        k_cache, k_scale, v_scale
    )
    if num_tokens == 0:
        return
    grid = (triton.cdiv(num_tokens, tokens_per_program),)
    _store_kv_kernel[grid](
        k_cache,
        v_cache,
        k,
        v,
        slots,
        k_scale,
        v_scale,
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        stride_scale_block,
        stride_scale_head,
        num_tokens,
        block_size=k_cache.shape[1],
        num_heads=kv_heads,
        HEADS_PAD=next_power_of_2(kv_heads),
        HEAD_DIM=head_dim,
        TOKENS_PER_PROGRAM=tokens_per_program,
        HAS_SCALE=has_scale,
    )
