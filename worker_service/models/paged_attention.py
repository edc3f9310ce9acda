"""Which attention kernel a batch's rows take, over the paged pool (the K/V already stored).

A decode batch whose rows share cached prefix blocks takes grouped attention; a plain decode
batch decode attention; a mixed batch decode attention for its single-token rows (first) and
extend attention for the rest; a prefill batch extend attention. Shared by the model's layers
and by the prefill graphs (step/prefill_graphs.py), which run it between their graph pieces.
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
    if batch.prefix_groups is not None:  # decode rows sharing cached prefix blocks
        return decode_attention_grouped(q, *paged, scale, batch.prefix_groups, **pool, out=out)
    if batch.is_decode:
        return decode_attention(q, *paged, scale, **pool, out=out, order=batch.decode_order)
    if not batch.num_single:
        return extend_attention(
            q, *paged, batch.query_start, batch.max_query_len, scale, **pool, out=out
        )
    # mixed: single-token requests first, through the decode kernel
    d = batch.num_single
    out = torch.empty_like(q) if out is None else out
    decode_attention(
        q[:d],
        k_cache,
        v_cache,
        batch.block_tables[:d],
        batch.seq_lens[:d],
        scale,
        **pool,
        out=out[:d],
    )
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
