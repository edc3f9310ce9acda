"""Triton kernel that writes new tokens' K and V into the paged pool at their slots."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from yaie.kernels.attention.triton_common import (
    check_index,
    check_pool,
    check_tokens,
    next_power_of_2,
)


@triton.jit(do_not_specialize=["num_tokens"])  # varies per step: no compile per value class
def _store_kv_kernel(
    k_cache,
    v_cache,
    k,
    v,
    slots,
    stride_cache_block,
    stride_cache_token,
    stride_cache_head,
    stride_k_token,
    stride_k_head,
    stride_v_token,
    stride_v_head,
    num_tokens,
    block_size: tl.constexpr,
    num_heads: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    TOKENS_PER_PROGRAM: tl.constexpr,
):
    # One program copies TOKENS_PER_PROGRAM tokens, each [num_heads, HEAD_DIM] for K and for V.
    offs_h = tl.arange(0, HEADS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    head_mask = offs_h[:, None] < num_heads
    for i in range(TOKENS_PER_PROGRAM):
        token = tl.program_id(0) * TOKENS_PER_PROGRAM + i
        if token < num_tokens:
            slot = tl.load(slots + token)
            block = slot // block_size
            dst = block * stride_cache_block + (slot % block_size) * stride_cache_token
            dst += offs_h[:, None] * stride_cache_head + offs_d[None, :]
            src_k = token * stride_k_token + offs_h[:, None] * stride_k_head + offs_d[None, :]
            src_v = token * stride_v_token + offs_h[:, None] * stride_v_head + offs_d[None, :]
            k_row = tl.load(k + src_k, mask=head_mask)
            v_row = tl.load(v + src_v, mask=head_mask)
            tl.store(k_cache + dst, k_row.to(k_cache.dtype.element_ty), mask=head_mask)
            tl.store(v_cache + dst, v_row.to(v_cache.dtype.element_ty), mask=head_mask)


def store_kv_triton(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slots: torch.Tensor,
    tokens_per_program: int = 1,
) -> None:
    """k_cache[slot] = k (and V likewise); k, v [num_tokens, kv_heads, head_dim], slots int64."""
    _, _, kv_heads, head_dim = check_pool(k_cache, v_cache)
    check_tokens("k", k, kv_heads, head_dim, None, k_cache.device)
    check_tokens("v", v, kv_heads, head_dim, None, k_cache.device)
    check_index("slots", slots, 1, torch.int64, k_cache.device)
    num_tokens = slots.shape[0]
    if k.shape[0] != num_tokens or v.shape[0] != num_tokens:
        raise ValueError(
            f"k {tuple(k.shape)}, v {tuple(v.shape)} and slots "
            f"{tuple(slots.shape)} disagree on the number of tokens"
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
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        num_tokens,
        block_size=k_cache.shape[1],
        num_heads=kv_heads,
        HEADS_PAD=next_power_of_2(kv_heads),
        HEAD_DIM=head_dim,
        TOKENS_PER_PROGRAM=tokens_per_program,
    )
