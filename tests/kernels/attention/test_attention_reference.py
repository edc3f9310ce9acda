"""The torch attention reference (the specification) against dense causal attention in float64."""

from __future__ import annotations

import random

import pytest
import torch

from tests.kernels.attention.paged_batch import (
    PagedBatch,
    make_paged_batch,
    random_ragged_lengths,
    relative_error,
)
from yaie.kernels.attention import decode_attention, extend_attention, store_kv

BLOCK_SIZES = (1, 16, 64, 256)
GQA_RATIOS = (1, 2, 4, 8)


def dense_causal_attention(batch: PagedBatch) -> torch.Tensor:
    """sdpa in float64 on each request's unpaged K/V, with a bottom-right-aligned causal mask."""
    starts = batch.query_start.tolist()
    out = torch.empty(batch.q.shape, dtype=torch.float64)
    for b, (keys, values) in enumerate(zip(batch.keys, batch.values, strict=True)):
        q = batch.q[starts[b] : starts[b + 1]].double().transpose(0, 1)  # [Hq, n, D]
        group = q.shape[0] // keys.shape[1]
        k = keys.double().repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, S, D]
        v = values.double().repeat_interleave(group, dim=1).transpose(0, 1)
        n, seq_len = q.shape[1], k.shape[1]
        mask = torch.ones(n, seq_len, dtype=torch.bool).tril(diagonal=seq_len - n)
        attn = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=batch.scale
        )
        out[starts[b] : starts[b + 1]] = attn.transpose(0, 1)
    return out


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("gqa", GQA_RATIOS)
def test_reference_extend_matches_dense_causal_attention(block_size: int, gqa: int) -> None:
    prefix, new = random_ragged_lengths(block_size * 10 + gqa, 4, max_prefix=300, max_new=40)
    kv_heads = 2 if gqa <= 4 else 1
    batch = make_paged_batch(prefix, new, block_size, kv_heads, kv_heads * gqa, 16, seed=gqa)
    out = extend_attention(*batch.extend_args(), backend="torch")
    assert relative_error(out, dense_causal_attention(batch)) < 1e-5


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_reference_decode_matches_dense_attention(block_size: int) -> None:
    rng = random.Random(block_size)
    seq_lens = [1] + [rng.randint(1, 600) for _ in range(5)]
    batch = make_paged_batch([s - 1 for s in seq_lens], [1] * 6, block_size, 2, 8, 32, seed=3)
    out = decode_attention(*batch.decode_args(), backend="torch")
    assert relative_error(out, dense_causal_attention(batch)) < 1e-5


def test_reference_decode_of_empty_request_is_zero() -> None:
    """A padded batch slot (seq_len 0, as in a CUDA graph bucket) reads nothing and yields zeros."""
    batch = make_paged_batch([0, 5], [1, 1], 16, 1, 2, 16)
    seq_lens = batch.seq_lens.clone()
    seq_lens[0] = 0
    out = decode_attention(
        batch.q, batch.k_cache, batch.v_cache, batch.block_tables, seq_lens, 0.25, backend="torch"
    )
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.isfinite(out).all()


def test_reference_store_kv_writes_exactly_the_given_slots() -> None:
    k_cache = torch.randn(6, 4, 2, 16)
    v_cache = torch.randn(6, 4, 2, 16)
    before_k, before_v = k_cache.clone(), v_cache.clone()
    slots = torch.tensor([5, 0, 23, 9], dtype=torch.int64)
    k = torch.randn(4, 2, 16, dtype=torch.float64)  # a wider dtype is cast to the pool's
    v = torch.randn(4, 2, 16, dtype=torch.float64)
    store_kv(k_cache, v_cache, k, v, slots, backend="torch")
    for cache, before, new in ((k_cache, before_k, k), (v_cache, before_v, v)):
        flat, flat_before = cache.view(24, 2, 16), before.view(24, 2, 16)
        assert torch.equal(flat[slots], new.float())
        untouched = torch.ones(24, dtype=torch.bool)
        untouched[slots] = False
        assert torch.equal(flat[untouched], flat_before[untouched])


def test_unknown_backend_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown attention backend"):
        store_kv(*[torch.zeros(1)] * 4, torch.zeros(1, dtype=torch.int64), backend="cuda")
