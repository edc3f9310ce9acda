"""The CPU fast path of paged attention: gathers each request's blocks and calls torch's fused
scaled_dot_product_attention (GQA in the call, no repeated K/V, no host loop per decode row).

Same contract and results (to float rounding) as reference.py, which stays the specification;
an fp8 pool is dequantized (values * scales) into q's dtype as it is gathered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from yaie.kernels.attention.reference import gather_kv


def extend_attention_sdpa(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """See yaie.kernels.attention.extend_attention (one fused call per request)."""
    out = torch.empty_like(q) if out is None else out
    starts = query_start.tolist()
    for b, seq_len in enumerate(seq_lens.tolist()):
        lo, hi = starts[b], starts[b + 1]
        n = hi - lo
        if n == 0:
            continue
        k = gather_kv(k_cache, block_tables[b], seq_len, k_scale).transpose(0, 1).to(q.dtype)[None]
        v = gather_kv(v_cache, block_tables[b], seq_len, v_scale).transpose(0, 1).to(q.dtype)[None]
        # k, v: [1, kv_heads, seq_len, D]
        mask = None
        if 1 < n < seq_len:  # queries sit at positions seq_len - n .. seq_len - 1
            q_pos = torch.arange(seq_len - n, seq_len, device=q.device)[:, None]
            mask = torch.arange(seq_len, device=q.device)[None, :] <= q_pos  # [n, S]
        result = F.scaled_dot_product_attention(
            q[lo:hi].transpose(0, 1)[None],  # [1, Hq, n, D]
            k,
            v,
            attn_mask=mask,
            is_causal=n == seq_len and n > 1,
            scale=scale,
            enable_gqa=True,
        )
        out[lo:hi] = result[0].transpose(0, 1)
    return out


def decode_attention_sdpa(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """See yaie.kernels.attention.decode_attention: every row at once over its block row padded
    to the longest, keys past its seq_len zeroed and masked out (whatever the pool holds there:
    NaN in a slot not yet written would survive a mask, so the gathered copy's padding rows are
    zeroed in place; a torch.where over the whole copy cost most of batch 8's step).
    A row of seq_len 0 (a padded slot) reads nothing and yields zeros."""
    batch, num_q_heads, head_dim = q.shape
    block_size = k_cache.shape[1]
    num_blocks = (int(seq_lens.max()) + block_size - 1) // block_size if batch else 0
    if num_blocks == 0:
        result = torch.zeros_like(q)
        return result if out is None else out.copy_(result)
    if batch == 1:  # one request (the CPU's common case): its exact rows, nothing to mask
        table, seq_len = block_tables[0], int(seq_lens[0])
        k = gather_kv(k_cache, table, seq_len, k_scale).transpose(0, 1).to(q.dtype)
        v = gather_kv(v_cache, table, seq_len, v_scale).transpose(0, 1)  # [kv_heads, S, D]
        result = F.scaled_dot_product_attention(
            q[:, :, None, :], k[None], v.to(q.dtype)[None], scale=scale, enable_gqa=True
        )
        result = result.view(q.shape)
        return result if out is None else out.copy_(result)
    ids = block_tables[:, :num_blocks].long().flatten()
    padded = num_blocks * block_size
    invalid = torch.arange(padded, device=q.device)[None, :] >= seq_lens[:, None]  # [batch, S]
    pad_rows = invalid.flatten().nonzero()[:, 0]

    def gather(cache: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
        rows = cache.index_select(0, ids)  # a fresh copy [batch * blocks, bs, kv_heads, D]: ours
        if scales is not None:  # an fp8 pool: dequantized in q's dtype
            factors = scales.index_select(0, ids).transpose(1, 2)  # [.., bs, kv_heads]
            rows = rows.to(q.dtype) * factors[..., None].to(q.dtype)
        rows = rows.view(batch * padded, -1)
        if pad_rows.numel():  # only the padding is written, not the whole copy
            rows.index_fill_(0, pad_rows, 0.0)
        return rows.view(batch, padded, *cache.shape[2:]).transpose(1, 2).to(q.dtype)

    result = F.scaled_dot_product_attention(
        q[:, :, None, :],
        gather(k_cache, k_scale),
        gather(v_cache, v_scale),
        attn_mask=~invalid[:, None, None, :],  # [batch, 1, 1, S]
        scale=scale,
        enable_gqa=True,
    )
    result = result.view(batch, num_q_heads, head_dim)
    result = torch.where((seq_lens > 0)[:, None, None], result, 0.0)  # all-masked rows are NaN
    return result if out is None else out.copy_(result)
