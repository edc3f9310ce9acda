"""Torch reference for paged radix attention: the specification the Triton kernels must match.

Plain gathers and a dense softmax per request, computed in float32; slow but obviously right.
"""

from __future__ import annotations

import torch


def store_kv_reference(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """k_cache[slot] = k per token (the pool viewed as [num_blocks * block_size, kv_heads, D])."""
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    k_cache.view(num_slots, *k_cache.shape[2:])[slots] = k.to(k_cache.dtype)
    v_cache.view(num_slots, *v_cache.shape[2:])[slots] = v.to(v_cache.dtype)


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Request's first seq_len tokens of K or V: [seq_len, kv_heads, D] (float32)."""
    block_size = cache.shape[1]
    num_blocks = (seq_len + block_size - 1) // block_size
    blocks = cache.index_select(0, block_table[:num_blocks].long())  # [nb, block_size, kv_heads, D]
    return blocks.reshape(-1, *cache.shape[2:])[:seq_len].float()


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
) -> torch.Tensor:
    """See yaie.kernels.attention.extend_attention."""
    out = torch.empty_like(q)
    starts = query_start.tolist()
    for b, seq_len in enumerate(seq_lens.tolist()):
        lo, hi = starts[b], starts[b + 1]
        if hi == lo:
            continue
        k = gather_kv(k_cache, block_tables[b], seq_len)
        v = gather_kv(v_cache, block_tables[b], seq_len)
        out[lo:hi] = _attend(q[lo:hi], k, v, seq_len - (hi - lo), scale).to(q.dtype)
    return out


def decode_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """See yaie.kernels.attention.decode_attention."""
    batch = q.shape[0]
    query_start = torch.arange(batch + 1, dtype=torch.int32, device=q.device)
    return extend_attention_reference(
        q, k_cache, v_cache, block_tables, seq_lens, query_start, scale
    )
