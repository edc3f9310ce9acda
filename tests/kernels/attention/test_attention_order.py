"""Decode attention with an order (rows longest first, chunked by the longest row's split)
against the torch reference: interpreter (fp32, fp16), CUDA (bf16; graph replays with an order:
test_attention_triton.py).

Interpreter cases run in a child pytest with TRITON_INTERPRET=1, for the reason given in
test_attention_triton.py's docstring; the parent never imports a kernel module without CUDA.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests.kernels.attention.paged_batch import PagedBatch, make_paged_batch, relative_error
from tests.kernels.triton_modes import gpu_only, interpreter_only
from yaie.kernels.attention import decode_attention

EXPECTED_CHILD_TESTS = 19
ORDERS = ("longest_first", "shortest_first", "shuffled")


def _order(batch: PagedBatch, kind: str, seed: int = 0) -> torch.Tensor:
    """A permutation of the rows: the builder's (longest first) or any other (still correct)."""
    lens = batch.seq_lens
    if kind == "longest_first":
        order = torch.argsort(lens, descending=True, stable=True)
    elif kind == "shortest_first":
        order = torch.argsort(lens, stable=True)
    else:
        order = torch.randperm(lens.shape[0], generator=torch.Generator().manual_seed(seed))
    return order.to(device=lens.device, dtype=torch.int32)


def _ordered(batch: PagedBatch, order: torch.Tensor, **launch) -> torch.Tensor:
    from yaie.kernels.attention.triton_decode import decode_attention_triton

    out = torch.full_like(batch.q, float("nan"))  # poison: every row must be written
    return decode_attention_triton(*batch.decode_args(), out=out, order=order, **launch)


def _ragged(seed: int, batch: int, longest: int, **kw) -> PagedBatch:
    """Contexts of 1 .. longest tokens (one row at the longest, one of a single token)."""
    rng = random.Random(seed)
    contexts = [longest, 1] + [rng.randint(1, longest) for _ in range(batch - 2)]
    rng.shuffle(contexts)
    return make_paged_batch([c - 1 for c in contexts], [1] * batch, **kw)


def test_ordered_decode_matches_reference_under_triton_interpreter(interpreter_child) -> None:
    """The interpreter cases of this file all pass in a child with TRITON_INTERPRET=1."""
    interpreter_child(__file__, EXPECTED_CHILD_TESTS, select="interpreter")


# (block_size, gqa, head_dim, dtype, splits, block_n): None = the default split count
INTERP_CASES = [
    (16, 2, 64, torch.float32, 2, 16),
    (1, 4, 64, torch.float16, 3, 16),
    (16, 8, 128, torch.float16, None, 32),
    (4, 1, 64, torch.float32, 7, 16),
]


@interpreter_only
@pytest.mark.parametrize("kind", ORDERS)
@pytest.mark.parametrize(
    ("block_size", "gqa", "head_dim", "dtype", "splits", "block_n"), INTERP_CASES
)
def test_interpreter_ordered_decode_matches_reference(
    kind, block_size, gqa, head_dim, dtype, splits, block_n
):
    """Every row is right whatever the permutation: rows of one chunk (written by the split
    kernel) and rows of several (merged by the reduce), the 1-token and the longest row."""
    kv_heads = 2 if gqa < 8 else 1
    heads = dict(kv_heads=kv_heads, q_heads=kv_heads * gqa, head_dim=head_dim, dtype=dtype)
    if kind == ORDERS[0] and splits == 2:  # only some rows longer than one chunk
        batch = _ragged(block_size, 6, 150, block_size=block_size, **heads)
    else:
        batch = _ragged(block_size + gqa, 5, 120, block_size=block_size, **heads)
    out = _ordered(batch, _order(batch, kind, seed=gqa), num_splits=splits, block_n=block_n)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert relative_error(out, decode_attention(*batch.decode_args(), backend="torch")) < tol


@interpreter_only
@pytest.mark.parametrize("splits", [4, 1])
def test_interpreter_ordered_decode_of_empty_request_is_zero_and_others_unaffected(splits):
    batch = make_paged_batch([0, 40, 7], [1, 1, 1], 16, 1, 2, 64)
    batch.seq_lens[0] = 0  # a padded CUDA-graph slot
    out = _ordered(batch, _order(batch, "longest_first"), num_splits=splits, block_n=16)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert (
        relative_error(out[1:], decode_attention(*batch.decode_args(), backend="torch")[1:]) < 1e-5
    )


@interpreter_only
def test_interpreter_ordered_one_split_equals_the_plain_one_split_bit_for_bit():
    """With one split the order only reschedules the programs: each row's arithmetic is the
    plain kernel's."""
    from yaie.kernels.attention.triton_decode import decode_attention_triton

    batch = _ragged(3, 5, 90, block_size=16, kv_heads=2, q_heads=4, head_dim=64)
    plain = decode_attention_triton(*batch.decode_args(), num_splits=1, block_n=16)
    ordered = _ordered(batch, _order(batch, "shuffled"), num_splits=1, block_n=16)
    assert torch.equal(plain, ordered)


@interpreter_only
def test_interpreter_ordered_decode_over_an_fp8_pool_equals_the_plain_kernels():
    """The order changes the schedule, not the fp8 dequantization: one split bit for bit, three
    within rounding of the plain kernel's one split."""
    from yaie.kernels.attention.triton_decode import decode_attention_triton

    batch = _ragged(9, 10, 300, block_size=16, kv_heads=2, q_heads=8, head_dim=64)
    batch = batch.to_fp8()
    plain = decode_attention_triton(*batch.decode_args(), num_splits=1, **batch.scales())
    order = _order(batch, "longest_first")
    one = _ordered(batch, order, num_splits=1, **batch.scales())
    three = _ordered(batch, order, num_splits=3, **batch.scales())
    assert torch.equal(one, plain)
    assert relative_error(three, plain) < 1e-4


@interpreter_only
def test_interpreter_order_rejects_a_start_and_a_missing_output_with_value_error():
    from yaie.kernels.attention.triton_common import scale_args
    from yaie.kernels.attention.triton_decode import launch_decode_splits, split_partials

    batch = make_paged_batch([5, 9], [1, 1], 16, 1, 2, 64)
    q, k_cache, v_cache, tables, seq_lens, scale = batch.decode_args()
    mid_out, mid_lse = split_partials(q, 2)
    args = (q, k_cache, v_cache, tables, seq_lens)
    launch = (mid_out, mid_lse, 2, scale, 16, 4, 2, scale_args(k_cache, None, None))
    order = _order(batch, "longest_first")
    with pytest.raises(ValueError, match="order"):
        launch_decode_splits(*args, None, *launch, order=order)  # no output to write
    with pytest.raises(ValueError, match="order"):
        launch_decode_splits(*args, seq_lens - 1, *launch, merge_into=q.clone(), order=order)


@gpu_only
@pytest.mark.parametrize(
    ("batch_size", "longest"), [(138, 2048), (64, 4096), (16, 1000), (300, 600)]
)
def test_gpu_ordered_decode_bf16_matches_fp32_reference(batch_size, longest):
    batch = _ragged(
        batch_size, batch_size, longest, block_size=16, kv_heads=8, q_heads=16, head_dim=128,
        dtype=torch.bfloat16, device="cuda",
    )  # fmt: skip
    ref = decode_attention(*batch.upcast().decode_args(), backend="torch")
    for kind in ORDERS:
        out = decode_attention(*batch.decode_args(), backend="triton", order=_order(batch, kind))
        assert relative_error(out, ref) <= 1e-2, kind


@interpreter_only
def test_interpreter_default_splits_with_an_order_are_two_to_eight_and_never_fewer():
    from yaie.kernels.attention.triton_decode import default_num_splits

    cpu = torch.device("cpu")
    for batch in (1, 8, 16, 64, 138, 256, 512, 4096):
        plain = default_num_splits(batch, 8, 40960, cpu)
        ordered = default_num_splits(batch, 8, 40960, cpu, ordered=True)
        assert ordered >= plain and (ordered >= 2 and (ordered <= 8 or ordered == plain))
    assert default_num_splits(64, 8, 256, cpu, ordered=True) == 1  # contexts of one chunk


@interpreter_only
def test_interpreter_decode_attention_drops_the_order_for_small_batches_and_invariant_mode():
    """decode_attention passes the order from DECODE_ORDER_MIN_BATCH rows and never in the batch-
    invariant mode: below it, and in that mode, the output is the plain kernel's bit for bit."""
    from yaie.kernels.attention import DECODE_ORDER_MIN_BATCH as ORDER_MIN_BATCH
    from yaie.kernels.attention.triton_decode import decode_attention_triton
    from yaie.kernels.batch_invariant import batch_invariant_mode

    small = _ragged(4, ORDER_MIN_BATCH - 1, 200, block_size=16, kv_heads=2, q_heads=4, head_dim=64)
    order = _order(small, "shortest_first")
    plain = decode_attention_triton(*small.decode_args())
    assert torch.equal(decode_attention(*small.decode_args(), backend="triton", order=order), plain)
    big = _ragged(5, ORDER_MIN_BATCH + 1, 200, block_size=16, kv_heads=2, q_heads=4, head_dim=64)
    order = _order(big, "longest_first")
    ref = decode_attention(*big.decode_args(), backend="torch")
    with batch_invariant_mode(True):
        invariant = decode_attention(*big.decode_args(), backend="triton")
        assert torch.equal(
            decode_attention(*big.decode_args(), backend="triton", order=order), invariant
        )
    ordered = decode_attention(*big.decode_args(), backend="triton", order=order)
    assert relative_error(ordered, ref) < 1e-5
