"""Torch reference for paged radix attention: the specification the Triton kernels must match.

Plain gathers and a dense softmax per request, computed in float32; slow but obviously right.
An fp8 pool (float8_e4m3fn) carries a float32 scale per slot and KV head beside it
(k_scale, v_scale [num_blocks, kv_heads, block_size]: a block's scales of one head are adjacent,
so a kernel reads them in whole sectors): store quantizes each token's head vector by its own
absolute maximum, gathers dequantize (value * scale) before any arithmetic.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # e4m3's largest finite value


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (e4m3 values [..., D], float32 scales [...]) with x ~= values * scale.

    scale = amax / 448 over D (1 for an all-zero vector), values = x / scale rounded to nearest
    even; the store kernels do exactly this arithmetic in float32."""
    x = x.float()
    amax = x.abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / FP8_MAX, 1.0)
    return (x / scale[..., None]).to(FP8_DTYPE), scale


def quantize_fp8_pool(cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole pool [num_blocks, block_size, kv_heads, D] as store_kv would write it: (values,
    scales [num_blocks, kv_heads, block_size])."""
    values, scales = quantize_fp8(cache)
    return values, scales.transpose(1, 2).contiguous()


def store_kv_reference(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slots: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """k_cache[slot] = k per token (the pool viewed as [num_blocks * block_size, kv_heads, D]);
    an fp8 pool gets quantize_fp8(k), its scales k_scale[block, :, offset] (V likewise)."""
    num_slots, block_size = k_cache.shape[0] * k_cache.shape[1], k_cache.shape[1]
    for cache, scales, x in ((k_cache, k_scale, k), (v_cache, v_scale, v)):
        rows = cache.view(num_slots, *cache.shape[2:])
        if cache.dtype == FP8_DTYPE:
            rows[slots], scales[slots // block_size, :, slots % block_size] = quantize_fp8(x)
        else:
            rows[slots] = x.to(cache.dtype)


def gather_kv(
    cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_len: int,
    scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """Request's first seq_len tokens of K or V: [seq_len, kv_heads, D] (float32), times their
    scales [num_blocks, kv_heads, block_size] for an fp8 pool."""
    block_size = cache.shape[1]
    num_blocks = (seq_len + block_size - 1) // block_size
    ids = block_table[:num_blocks].long()
    blocks = cache.index_select(0, ids)  # [nb, block_size, kv_heads, D]
    values = blocks.reshape(-1, *cache.shape[2:])[:seq_len].float()
    if scales is None:
        return values
    factors = scales.index_select(0, ids).transpose(1, 2).reshape(-1, cache.shape[2])
    return values * factors[:seq_len, :, None]


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, first_pos: int, scale: float
) -> torch.Tensor:
    """q [n, Hq, D] at positions first_pos.. over k, v [S, Hkv, D], causal -> [n, Hq, D] fp32."""
    n, num_q_heads, _ = q.shape
    group = num_q_heads // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # [S, Hq, D]
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale  # [Hq, n, S]
    q_pos = torch.arange(first_pos, first_pos + n, device=q.device)[:, None]
    k_pos = torch.arange(k.shape[0], device=q.device)[None, :]
    scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v)


def extend_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start: torch.Tensor,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """See yaie.kernels.attention.extend_attention."""
    out = torch.empty_like(q)
    starts = query_start.tolist()
    for b, seq_len in enumerate(seq_lens.tolist()):
        lo, hi = starts[b], starts[b + 1]
        if hi == lo:
            continue
        k = gather_kv(k_cache, block_tables[b], seq_len, k_scale)
        v = gather_kv(v_cache, block_tables[b], seq_len, v_scale)
        out[lo:hi] = _attend(q[lo:hi], k, v, seq_len - (hi - lo), scale).to(q.dtype)
    return out


def decode_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """See yaie.kernels.attention.decode_attention."""
    batch = q.shape[0]
    query_start = torch.arange(batch + 1, dtype=torch.int32, device=q.device)
    return extend_attention_reference(
        q, k_cache, v_cache, block_tables, seq_lens, query_start, scale, k_scale, v_scale
    )
