"""Triton attention kernels against the torch reference: CPU interpreter (fp32, fp16), CUDA (bf16).

Why a child process: triton.jit decides compiled-vs-interpreted when a kernel module is imported,
from TRITON_INTERPRET. Setting it in this module would leak into every test module imported after
it (and would push this file's own GPU tests into the interpreter), and unsetting it is too late
once a kernel module was imported. So the interpreter cases run in a child pytest of this same
file with TRITON_INTERPRET=1, started by test_kernels_match_reference_under_triton_interpreter;
the parent process never imports a kernel module unless it has CUDA.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch

from tests.kernels.attention.paged_batch import (
    PagedBatch,
    make_paged_batch,
    random_ragged_lengths,
    relative_error,
)
from tests.kernels.triton_modes import gpu_only, interpreter_only
from yaie.kernels.attention import decode_attention, extend_attention, store_kv

EXPECTED_CHILD_TESTS = 17
Runner = Callable[..., torch.Tensor]  # _run_extend or _run_decode: (batch, backend, **launch)


def _run_extend(batch: PagedBatch, backend: str, **kwargs) -> torch.Tensor:
    if backend == "torch":
        return extend_attention(*batch.extend_args(), backend="torch")
    from yaie.kernels.attention.triton_extend import extend_attention_triton

    out = torch.full_like(batch.q, float("nan"))  # poison: every element must be written
    return extend_attention_triton(*batch.extend_args(), out=out, **kwargs)


def _run_decode(batch: PagedBatch, backend: str, **kwargs) -> torch.Tensor:
    if backend == "torch":
        return decode_attention(*batch.decode_args(), backend="torch")
    from yaie.kernels.attention.triton_decode import decode_attention_triton

    out = torch.full_like(batch.q, float("nan"))
    return decode_attention_triton(*batch.decode_args(), out=out, **kwargs)


def _assert_interpreter_matches_reference(
    run: Runner,
    prefix: list[int],
    new: list[int],
    block_size: int,
    gqa: int,
    head_dim: int,
    dtype: torch.dtype,
    **kw: int | None,
) -> None:
    """run's Triton output (kw: its launch parameters) on a batch of 2 KV heads (1 at GQA 8),
    each shared by gqa query heads, is within the dtype's tolerance of the torch reference."""
    kv_heads = 2 if gqa < 8 else 1
    batch = make_paged_batch(prefix, new, block_size, kv_heads, kv_heads * gqa, head_dim, dtype)
    out = run(batch, "triton", **kw)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert relative_error(out, run(batch, "torch")) < tol


def _assert_gpu_bf16_matches_fp32_reference(
    run: Runner,
    prefix: list[int],
    new: list[int],
    block_size: int,
    gqa: int,
    head_dim: int,
    seed: int,
) -> None:
    """run's Triton output on a bf16 CUDA batch of 8 query heads (8 // gqa KV heads, 1 at GQA 8)
    is within 1% of the fp32 torch reference."""
    kv_heads = 8 // gqa if gqa < 8 else 1
    batch = make_paged_batch(
        prefix, new, block_size, kv_heads, kv_heads * gqa, head_dim, torch.bfloat16, "cuda", seed
    )
    out = run(batch, "triton")
    assert relative_error(out, run(batch.upcast(), "torch")) <= 1e-2


def test_kernels_match_reference_under_triton_interpreter(interpreter_child) -> None:
    """The interpreter cases of this file all pass in a child with TRITON_INTERPRET=1."""
    interpreter_child(__file__, EXPECTED_CHILD_TESTS, select="interpreter")


# (block_size, gqa, head_dim, dtype, block_m, block_n): all block sizes, GQA 1..8, both dims.
INTERP_EXTEND = [
    (1, 1, 64, torch.float32, 32, 16),
    (16, 2, 64, torch.float16, 16, 16),
    (64, 4, 128, torch.float32, 32, 16),
    (256, 8, 64, torch.float16, 128, 64),
]


@interpreter_only
@pytest.mark.parametrize(
    ("block_size", "gqa", "head_dim", "dtype", "block_m", "block_n"), INTERP_EXTEND
)
def test_interpreter_extend_matches_reference(block_size, gqa, head_dim, dtype, block_m, block_n):
    prefix, new = random_ragged_lengths(block_size + gqa, batch=3, max_prefix=90, max_new=40)
    launch = dict(block_m=block_m, block_n=block_n, num_warps=4)
    _assert_interpreter_matches_reference(
        _run_extend, prefix, new, block_size, gqa, head_dim, dtype, **launch
    )


# (block_size, gqa, head_dim, dtype, num_splits, block_n)
INTERP_DECODE = [
    (1, 1, 64, torch.float32, 3, 16),
    (16, 8, 128, torch.float16, None, 16),
    (64, 2, 64, torch.float16, 4, 32),
    (256, 4, 64, torch.float32, 2, 64),
    (4, 2, 64, torch.float32, 7, 16),  # a slot count the reduce pads (7 -> 8)
    (16, 2, 64, torch.float16, 1, 32),  # one split: the split kernel writes out, no reduce
    (1, 4, 64, torch.float32, 1, 16),
]


@interpreter_only
@pytest.mark.parametrize(
    ("block_size", "gqa", "head_dim", "dtype", "splits", "block_n"), INTERP_DECODE
)
def test_interpreter_decode_matches_reference(block_size, gqa, head_dim, dtype, splits, block_n):
    prefix, _ = random_ragged_lengths(block_size * gqa, batch=4, max_prefix=150, max_new=1)
    launch = dict(num_splits=splits, block_n=block_n)
    _assert_interpreter_matches_reference(
        _run_decode, prefix, [1] * 4, block_size, gqa, head_dim, dtype, **launch
    )


@interpreter_only
@pytest.mark.parametrize("splits", [4, 1])
def test_interpreter_decode_of_empty_request_is_zero_and_others_unaffected(splits):
    batch = make_paged_batch([0, 40, 7], [1, 1, 1], 16, 1, 2, 64)
    batch.seq_lens[0] = 0  # a padded CUDA-graph slot
    out = _run_decode(batch, "triton", num_splits=splits, block_n=16)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert relative_error(out[1:], _run_decode(batch, "torch")[1:]) < 1e-5


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_interpreter_one_split_written_directly_equals_the_reduce_of_one_slot(dtype):
    """One split writes out itself; the value is the reduce pass's over that one slot, bit for
    bit (its weight is exactly 1), so graphs and eager steps agree whichever path they take."""
    from yaie.kernels.attention.triton_common import scale_args
    from yaie.kernels.attention.triton_decode import (
        launch_decode_reduce,
        launch_decode_splits,
        split_partials,
    )

    prefix, _ = random_ragged_lengths(5, batch=4, max_prefix=150, max_new=1)
    batch = make_paged_batch(prefix, [1] * 4, 16, 2, 4, 64, dtype=dtype)
    direct = _run_decode(batch, "triton", num_splits=1, block_n=32)
    q, k_cache, v_cache, tables, seq_lens, scale = batch.decode_args()
    mid_out, mid_lse = split_partials(q, 1)
    scales = scale_args(k_cache, None, None)
    launch_decode_splits(
        q, k_cache, v_cache, tables, seq_lens, None, mid_out, mid_lse, 1, scale, 32, 4, 2, scales
    )
    reduced = torch.full_like(q, float("nan"))
    launch_decode_reduce(mid_out, mid_lse, reduced)
    assert torch.equal(direct, reduced)


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_interpreter_store_kv_matches_reference(dtype):
    """Strided (sliced) and wider-dtype inputs land exactly where the reference puts them."""
    gen = torch.Generator().manual_seed(1)
    k_cache = torch.randn(8, 16, 2, 64, generator=gen).to(dtype)
    v_cache = torch.randn(8, 16, 2, 64, generator=gen).to(dtype)
    fused = torch.randn(5, 4 * 64, generator=gen, dtype=torch.float32)  # [tokens, K|V heads]
    k, v = fused[:, :128].view(5, 2, 64), fused[:, 128:].view(5, 2, 64)
    slots = torch.randperm(128, generator=gen)[:5]
    expect_k, expect_v = k_cache.clone(), v_cache.clone()
    store_kv(expect_k, expect_v, k, v, slots, backend="torch")
    store_kv(k_cache, v_cache, k, v, slots, backend="triton")
    assert torch.equal(k_cache, expect_k) and torch.equal(v_cache, expect_v)


def _bad_extend_calls() -> list[tuple[str, PagedBatch]]:
    """(expected message, a batch with one bad argument)."""
    batch = make_paged_batch([3, 5], [2, 1], 16, 2, 4, 64)
    q = batch.q
    return [
        (
            "block_tables must be torch.int32",
            replace(batch, block_tables=batch.block_tables.long()),
        ),
        ("q dtype torch.float8_e4m3fn not in", replace(batch, q=q.to(torch.float8_e4m3fn))),
        ("multiple of kv_heads", replace(batch, q=q[:, :3])),
        (r"query_start must be \[batch \+ 1\]", replace(batch, query_start=batch.query_start[:2])),
        ("contiguous last", replace(batch, q=q.transpose(1, 2).contiguous().transpose(1, 2))),
    ]


@interpreter_only
def test_interpreter_launchers_reject_bad_arguments_with_value_error():
    from yaie.kernels.attention.triton_extend import extend_attention_triton
    from yaie.kernels.attention.triton_store import store_kv_triton

    for message, batch in _bad_extend_calls():
        with pytest.raises(ValueError, match=message):
            extend_attention_triton(*batch.extend_args())
    pool = torch.zeros(4, 16, 2, 48)
    with pytest.raises(ValueError, match="power of two"):
        store_kv_triton(pool, pool.clone(), pool[0, :2], pool[0, :2], torch.arange(2))
    pool = torch.zeros(4, 16, 2, 64)
    with pytest.raises(ValueError, match="slots must be torch.int64"):
        store_kv_triton(pool, pool.clone(), pool[0, :2], pool[0, :2], torch.arange(2).int())


# (batch, max_prefix, max_new, block_size, gqa, head_dim): batch 1-256, contexts up to 8k.
GPU_EXTEND = [
    (1, 8000, 192, 16, 8, 128),
    (16, 4096, 1024, 16, 2, 128),
    (64, 1024, 64, 64, 4, 64),
    (8, 2000, 300, 1, 1, 128),
    (4, 6000, 500, 256, 2, 64),
    (256, 300, 16, 16, 2, 128),
]


@gpu_only
@pytest.mark.parametrize(
    ("batch_size", "max_prefix", "max_new", "block_size", "gqa", "head_dim"), GPU_EXTEND
)
def test_gpu_extend_bf16_matches_fp32_reference(
    batch_size, max_prefix, max_new, block_size, gqa, head_dim
):
    prefix, new = random_ragged_lengths(batch_size + max_prefix, batch_size, max_prefix, max_new)
    _assert_gpu_bf16_matches_fp32_reference(
        _run_extend, prefix, new, block_size, gqa, head_dim, seed=batch_size
    )


# (batch, max_context, block_size, gqa, head_dim)
GPU_DECODE = [
    (256, 1024, 16, 2, 128),
    (1, 8192, 256, 8, 64),
    (32, 8192, 64, 1, 128),
    (8, 3000, 1, 4, 64),
    (128, 4096, 16, 8, 128),
]


@gpu_only
@pytest.mark.parametrize(("batch_size", "max_context", "block_size", "gqa", "head_dim"), GPU_DECODE)
def test_gpu_decode_bf16_matches_fp32_reference(batch_size, max_context, block_size, gqa, head_dim):
    rng = random.Random(batch_size)
    contexts = [max_context] + [rng.randint(1, max_context) for _ in range(batch_size - 1)]
    prefix = [c - 1 for c in contexts]
    _assert_gpu_bf16_matches_fp32_reference(
        _run_decode, prefix, [1] * batch_size, block_size, gqa, head_dim, seed=batch_size
    )


@gpu_only
@pytest.mark.parametrize("ordered", [False, True])
def test_gpu_decode_replays_in_a_cuda_graph_with_new_lengths(ordered):
    """Captured once, replayed after seq_lens, tables and q change in place (and with an order,
    the rows longest first, the order too: the longest row 3,001 tokens where it was 2,001 at
    capture): still right."""
    from yaie.kernels.attention.triton_decode import decode_attention_triton

    first = make_paged_batch([100, 2000, 5], [1] * 3, 16, 8, 16, 128, torch.bfloat16, "cuda")
    second = make_paged_batch([3000, 0, 700], [1] * 3, 16, 8, 16, 128, torch.bfloat16, "cuda", 7)
    max_blocks = second.block_tables.shape[1]
    tables = torch.zeros(3, max_blocks, dtype=torch.int32, device="cuda")
    tables[:, : first.block_tables.shape[1]] = first.block_tables
    k_cache = torch.zeros(
        max(first.k_cache.shape[0], second.k_cache.shape[0]),
        16,
        8,
        128,
        dtype=torch.bfloat16,
        device="cuda",
    )
    v_cache = torch.zeros_like(k_cache)
    k_cache[: first.k_cache.shape[0]] = first.k_cache
    v_cache[: first.v_cache.shape[0]] = first.v_cache
    q, seq_lens, out = first.q.clone(), first.seq_lens.clone(), torch.empty_like(first.q)
    args = (q, k_cache, v_cache, tables, seq_lens, first.scale)
    longest_first = lambda lens: torch.argsort(lens, descending=True).int()  # noqa: E731
    order = {"order": longest_first(seq_lens)} if ordered else {}
    decode_attention_triton(*args, out=out, **order)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_attention_triton(*args, out=out, **order)
    for batch in (first, second):
        k_cache[: batch.k_cache.shape[0]] = batch.k_cache
        v_cache[: batch.v_cache.shape[0]] = batch.v_cache
        tables.zero_()
        tables[:, : batch.block_tables.shape[1]] = batch.block_tables
        q.copy_(batch.q)
        seq_lens.copy_(batch.seq_lens)
        if ordered:
            order["order"].copy_(longest_first(seq_lens))
        out.fill_(float("nan"))
        graph.replay()
        assert relative_error(out, _run_decode(batch.upcast(), "torch")) <= 1e-2
    seq_lens[1] = 0  # a padded slot of the bucket: zeros, the others unchanged
    expected = out.clone()
    graph.replay()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(out[0::2], expected[0::2])


@gpu_only
def test_gpu_store_kv_bf16_matches_reference():
    gen = torch.Generator("cuda").manual_seed(0)
    k_cache = torch.randn(64, 16, 8, 128, device="cuda", generator=gen).bfloat16()
    v_cache = torch.randn_like(k_cache)
    k = torch.randn(300, 8, 128, device="cuda", generator=gen).bfloat16()
    v = torch.randn_like(k)
    slots = torch.randperm(64 * 16, device="cuda", generator=gen)[:300]
    expect_k, expect_v = k_cache.clone(), v_cache.clone()
    store_kv(expect_k, expect_v, k, v, slots, backend="torch")
    store_kv(k_cache, v_cache, k, v, slots, backend="triton")
    assert torch.equal(k_cache, expect_k) and torch.equal(v_cache, expect_v)
