"""Checks shared by the CPU and Triton tests of the batch-invariant ops: a row's (a query's)
result must be equal bit for bit however the batch around it, or its chunk, is made up."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tests.kernels.attention.paged_batch import make_paged_batch, relative_error

Linear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def check_linear_rows(linear: Linear, device: str, dtype: torch.dtype, k: int, n: int) -> None:
    """Rows of x @ w.T + b are the same alone, at any place of any number of rows, and close to
    F.linear."""
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(70, k, generator=gen, device=device).to(dtype)
    w = torch.randn(n, k, generator=gen, device=device).to(dtype)
    b = torch.randn(n, generator=gen, device=device).to(dtype)
    full = linear(x, w, b)
    assert relative_error(full, torch.nn.functional.linear(x.float(), w.float(), b.float())) < 2e-2
    for m in (1, 2, 5, 16, 17, 33, 64, 70):
        assert torch.equal(linear(x[:m], w, b), full[:m]), m
    assert torch.equal(linear(x[40:41], w, b), full[40:41])
    assert torch.equal(linear(x[3:50], w, None), linear(x, w, None)[3:50])


Extend = Callable[..., torch.Tensor]
Decode = Callable[..., torch.Tensor]


def check_attention_chunks(
    extend: Extend,
    device: str,
    dtype: torch.dtype,
    seq: int = 75,
    heads: tuple[int, int, int] = (2, 4, 16),
    chunks: tuple[tuple[int, int], ...] = ((0, 1), (0, 33), (33, 34), (34, 70), (70, 75), (74, 75)),
) -> None:
    """One request of seq tokens (heads: kv heads, q heads, head dim): each query's output is the
    same computed in one pass and in chunks [lo, hi) over its cached prefix."""
    kv_heads, q_heads, head_dim = heads
    batch = make_paged_batch(
        [0], [seq], 4, kv_heads, q_heads, head_dim, dtype=dtype, device=device, seed=1
    )
    whole = extend(batch.q, batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens,
                   batch.query_start, seq, batch.scale)  # fmt: skip
    for lo, hi in chunks:
        lens = torch.tensor([hi], dtype=torch.int32, device=device)
        starts = torch.tensor([0, hi - lo], dtype=torch.int32, device=device)
        part = extend(batch.q[lo:hi].contiguous(), batch.k_cache, batch.v_cache,
                      batch.block_tables, lens, starts, hi - lo, batch.scale)  # fmt: skip
        assert torch.equal(part, whole[lo:hi]), (lo, hi)


def check_decode_batches(
    decode: Decode, device: str, dtype: torch.dtype, sizes: tuple[int, ...] = (2, 8, 41)
) -> None:
    """Request 0's decode output is the same alone and in batches of the given sizes."""
    prefix = ([50, 3, 90, 17, 1, 64, 120, 8] * 6)[: max(sizes)]
    batch = make_paged_batch(prefix, [1] * len(prefix), 4, 2, 4, 16, dtype, device, seed=2)
    args = (batch.k_cache, batch.v_cache)
    alone = decode(batch.q[:1], *args, batch.block_tables[:1], batch.seq_lens[:1], batch.scale)
    for n in sizes:
        found = decode(batch.q[:n], *args, batch.block_tables[:n], batch.seq_lens[:n], batch.scale)
        assert torch.equal(found[:1], alone), n
