"""The CPU fast path (backend "sdpa") computes what the torch reference computes, on fresh ragged
batches whose unused pool blocks and table entries hold NaN (a read past a request poisons it)."""

from __future__ import annotations

import random

import pytest
import torch

from tests.kernels.attention.paged_batch import (
    make_paged_batch,
    random_ragged_lengths,
    relative_error,
)
from yaie.kernels.attention import decode_attention, extend_attention, resolve_backend


@pytest.mark.parametrize("block_size", (1, 16, 64))
@pytest.mark.parametrize("gqa", (1, 3, 4))
def test_sdpa_extend_equals_reference(block_size: int, gqa: int) -> None:
    prefix, new = random_ragged_lengths(block_size * 7 + gqa, 5, max_prefix=200, max_new=30)
    new[0], prefix[1] = 1, 0  # a one-token chunk over a prefix, and a prompt with no prefix
    batch = make_paged_batch(prefix, new, block_size, 3, 3 * gqa, 16, seed=block_size + gqa)
    ref = extend_attention(*batch.extend_args(), backend="torch")
    out = extend_attention(*batch.extend_args(), backend="sdpa")
    assert relative_error(out, ref) < 1e-5


@pytest.mark.parametrize("block_size", (1, 16, 64))
def test_sdpa_decode_equals_reference(block_size: int) -> None:
    rng = random.Random(block_size)
    seq_lens = [1] + [rng.randint(1, 500) for _ in range(6)]
    batch = make_paged_batch([s - 1 for s in seq_lens], [1] * 7, block_size, 2, 6, 32, seed=5)
    ref = decode_attention(*batch.decode_args(), backend="torch")
    out = torch.full_like(ref, float("nan"))
    decode_attention(*batch.decode_args(), backend="sdpa", out=out)
    assert torch.isfinite(out).all()
    assert relative_error(out, ref) < 1e-5


@pytest.mark.parametrize("seq_len", (1, 17, 300))
def test_sdpa_decode_of_one_request_equals_reference(seq_len: int) -> None:
    """A batch of one takes its own path (its exact rows, no mask)."""
    batch = make_paged_batch([seq_len - 1], [1], 16, 3, 9, 64, seed=seq_len)
    ref = decode_attention(*batch.decode_args(), backend="torch")
    out = torch.full_like(ref, float("nan"))
    decode_attention(*batch.decode_args(), backend="sdpa", out=out)
    assert relative_error(out, ref) < 1e-5


def test_sdpa_decode_of_empty_request_is_zero() -> None:
    """A padded slot (seq_len 0) reads nothing and yields zeros, as the reference does."""
    batch = make_paged_batch([0, 5], [1, 1], 16, 1, 2, 16)
    seq_lens = batch.seq_lens.clone()
    seq_lens[0] = 0
    args = (batch.q, batch.k_cache, batch.v_cache, batch.block_tables, seq_lens, 0.25)
    out = decode_attention(*args, backend="sdpa")
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert relative_error(out, decode_attention(*args, backend="torch")) < 1e-5


def test_auto_is_sdpa_on_cpu_tensors() -> None:
    assert resolve_backend("auto", is_cuda=False) == "sdpa"
