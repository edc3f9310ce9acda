"""Paged attention whose result for a query depends only on that query, its position and the
keys up to it: not on the other queries of its chunk, the chunk's length, the batch or the
path (extend or decode). The CPU backends' fused calls do not promise that (torch's CPU flash
attention blocks keys by the sequence's length; the padded decode batch by its longest row).

Keys go in blocks of KEY_BLOCK aligned to absolute positions (0, KEY_BLOCK, ...), each through
one online-softmax step, and every reduction runs over the last dimension at a fixed length
(head_dim or KEY_BLOCK); blocks wholly after a query are exact no-ops for it (p = 0, alpha = 1).
Same contract as yaie.kernels.attention.extend_attention / decode_attention.
"""

from __future__ import annotations

import torch

from yaie.kernels.attention.reference import gather_kv

KEY_BLOCK = 32
QUERY_CHUNK = 64  # queries per pass (memory only: queries never mix)


def _attend(q: torch.Tensor, q_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """q [n, Hq, D] at positions q_pos [n] over k, v: [S, Hq, D] shared by the queries, or
    [n, S, Hq, D] one row each (positions 0..S-1, S a multiple of KEY_BLOCK, keys past a
    query's position unused) -> [n, Hq, D] float32."""
    n, heads, dim = q.shape
    per_row = k.dim() == 4
    qf = q.float()[:, :, None, :]  # [n, Hq, 1, D]
    m = torch.full((n, heads), float("-inf"))
    denom = torch.zeros(n, heads)
    acc = torch.zeros(n, heads, dim)
    last = int(q_pos.max()) + 1
    for lo in range(0, last, KEY_BLOCK):
        kb = k[..., lo : lo + KEY_BLOCK, :, :].transpose(-3, -2).contiguous()  # [.., Hq, KB, D]
        vb = v[..., lo : lo + KEY_BLOCK, :, :].permute(*range(k.dim() - 3), -2, -1, -3)
        vb = vb.contiguous()  # [.., Hq, D, KB]
        if not per_row:
            kb, vb = kb[None], vb[None]
        scores = (qf * kb).sum(-1) * scale  # [n, Hq, KB]
        visible = torch.arange(lo, lo + KEY_BLOCK)[None, :] <= q_pos[:, None]  # [n, KB]
        scores = scores.masked_fill(~visible[:, None, :], float("-inf"))
        m_new = torch.maximum(m, scores.amax(-1))
        alpha = torch.exp(m - m_new)
        p = torch.exp(scores - m_new[..., None])  # [n, Hq, KB]
        denom = denom * alpha + p.sum(-1)
        acc = acc * alpha[..., None] + (p[:, :, None, :] * vb).sum(-1)
        m = m_new
    return acc / denom[..., None]


def _request_kv(cache: torch.Tensor, table: torch.Tensor, seq_len: int, group: int, scales=None):
    """[S_pad, Hq, D]: the request's keys (or values) zero-padded to a KEY_BLOCK multiple, each
    kv head repeated for its group of query heads (an fp8 pool dequantized by its scales)."""
    kv = gather_kv(cache, table, seq_len, scales)
    padded = -(-seq_len // KEY_BLOCK) * KEY_BLOCK
    if padded > seq_len:
        kv = torch.cat([kv, kv.new_zeros(padded - seq_len, *kv.shape[1:])])
    return kv.repeat_interleave(group, dim=1)


def extend_attention_invariant(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    query_start,
    scale: float,
    out=None,
    k_scale=None,
    v_scale=None,
) -> torch.Tensor:
    """See yaie.kernels.attention.extend_attention."""
    out = torch.empty_like(q) if out is None else out
    group = q.shape[1] // k_cache.shape[2]
    starts = query_start.tolist()
    for b, seq_len in enumerate(seq_lens.tolist()):
        lo, hi = starts[b], starts[b + 1]
        if hi == lo:
            continue
        k = _request_kv(k_cache, block_tables[b], seq_len, group, k_scale)
        v = _request_kv(v_cache, block_tables[b], seq_len, group, v_scale)
        positions = torch.arange(seq_len - (hi - lo), seq_len)
        for c in range(lo, hi, QUERY_CHUNK):
            e = min(c + QUERY_CHUNK, hi)
            out[c:e] = _attend(q[c:e], positions[c - lo : e - lo], k, v, scale).to(q.dtype)
    return out


def decode_attention_invariant(
    q, k_cache, v_cache, block_tables, seq_lens, scale: float, out=None, k_scale=None, v_scale=None
) -> torch.Tensor:
    """See yaie.kernels.attention.decode_attention (a row of seq_len 0 yields zeros). Every row
    in one pass: rows shorter than the longest meet key blocks wholly past them, no-ops."""
    out = torch.empty_like(q) if out is None else out
    group = q.shape[1] // k_cache.shape[2]
    lens = seq_lens.tolist()
    rows = [b for b, n in enumerate(lens) if n > 0]
    out[[b for b, n in enumerate(lens) if n == 0]] = 0
    if not rows:
        return out
    padded = -(-max(lens) // KEY_BLOCK) * KEY_BLOCK

    def gather(cache: torch.Tensor, scales) -> torch.Tensor:  # [rows, padded, Hq, D]
        kv = [_request_kv(cache, block_tables[b], lens[b], group, scales) for b in rows]
        return torch.stack([torch.cat([x, x.new_zeros(padded - len(x), *x.shape[1:])]) for x in kv])

    positions = torch.tensor([lens[b] - 1 for b in rows])
    result = _attend(q[rows], positions, gather(k_cache, k_scale), gather(v_cache, v_scale), scale)
    out[rows] = result.to(q.dtype)
    return out
