"""Which attention kernel a batch's rows take, over the paged pool (the K/V already stored).

A decode batch takes decode attention, grouped (cascade) where its rows share cached prefix
blocks; a mixed batch decode attention for its single-token rows (first; grouped too when they
share) and extend attention for the rest; a prefill batch extend attention. Shared by the
model's layers and by the prefill graphs (step/prefill_graphs.py), which run it between their
graph pieces.
"""

from __future__ import annotations

import torch

from yaie.kernels.attention import decode_attention, decode_attention_grouped, extend_attention
from yaie.worker_service.forward_batch import ForwardBatch


def paged_attention(
    q: torch.Tensor,
    batch: ForwardBatch,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float,
    backend: str,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [T, heads, D] -> [T, heads, D] (into out when given). q may have more rows than the
    batch's tokens (a graph bucket's padding): rows past them are not written."""
    pool = {"backend": backend, "k_scale": k_scale, "v_scale": v_scale}
    paged = (k_cache, v_cache, batch.block_tables, batch.seq_lens)
    groups = batch.prefix_groups  # decode rows sharing cached prefix blocks
    if batch.is_decode:
        if groups is not None:
            return decode_attention_grouped(q, *paged, scale, groups, **pool, out=out)
        return decode_attention(q, *paged, scale, **pool, out=out, order=batch.decode_order)
    if not batch.num_single:
        return extend_attention(
            q, *paged, batch.query_start, batch.max_query_len, scale, **pool, out=out
        )
    # mixed: single-token requests first, through the decode kernel
    d = batch.num_single
    out = torch.empty_like(q) if out is None else out
    single = (q[:d], k_cache, v_cache, batch.block_tables[:d], batch.seq_lens[:d], scale)
    if groups is not None:
        decode_attention_grouped(*single, groups, **pool, out=out[:d])
    else:
        decode_attention(*single, **pool, out=out[:d])
    extend_attention(
        q[d:],
        k_cache,
        v_cache,
        batch.block_tables[d:],
        batch.seq_lens[d:],
        batch.extend_query_start,
        batch.max_query_len,
        scale,
        **pool,
        out=out[d:],
    )
    return out
