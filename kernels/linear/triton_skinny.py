"""A Triton matmul for the few rows of a decode step: out [M, N] = x [M, K] @ w [N, K]^T (+ b),
M <= 64. Each program owns BLOCK_N output columns for every row and streams its slice of the
weight once, so the step reads the weight at the copy rate however few rows there are (cuBLAS's
tiles for one row read a Qwen3-0.6B layer at ~45% of it: benchmarks/NOTES.md). GATED computes
silu(x w_gate^T) * (x w_up^T) for w = [gate; up] ([2N, K]) in the same pass: the gated MLP's
intermediate is written once, already activated, and SiLU-and-multiply needs no launch.

Rounding matches the unfused torch path (F.linear's output in the activation dtype, then
silu_and_mul's casts) up to the order of the K reduction.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_ROWS = 64  # the kernel's limit (one BLOCK_M tile of rows)
# Where the dispatch (kernels/linear) takes it over cuBLAS: from the H200 sweep, it wins at 1-16
# rows on weights with K >= 2,048 (Qwen3-0.6B's o and down: 12.6 -> 5.2 us and 7.4 -> 6.6 us at
# one row; every Llama-3.1-8B layer by 4-15%), ties or loses at 32-64 rows and at K = 1,024.
DISPATCH_ROWS = 16
DISPATCH_MIN_K = 2048


@triton.jit
def _dot_columns(acc, x, w, offs_m, offs_n, m_mask, n_mask, K, stride_xm, stride_wn, BLOCK_K):
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_mask = k < K
        x_tile = tl.load(
            x + offs_m[:, None] * stride_xm + k[None, :],
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        )  # [BLOCK_M, BLOCK_K]
        w_tile = tl.load(
            w + offs_n[None, :].to(tl.int64) * stride_wn + k[:, None],
            mask=n_mask[None, :] & k_mask[:, None],
            other=0.0,
        )  # [BLOCK_K, BLOCK_N]
        acc = tl.dot(x_tile, w_tile, acc)
    return acc


@triton.jit(do_not_specialize=["M"])
def _skinny_kernel(
    x,
    w,
    b,
    out,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_om,
    HAS_BIAS: tl.constexpr,
    GATED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    dtype = out.dtype.element_ty
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc = _dot_columns(acc, x, w, offs_m, offs_n, m_mask, n_mask, K, stride_xm, stride_wn, BLOCK_K)
    if HAS_BIAS:
        acc += tl.load(b + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if GATED:  # the up half: rows N + n of w
        up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        up = _dot_columns(
            up, x, w + N * stride_wn, offs_m, offs_n, m_mask, n_mask, K, stride_xm, stride_wn,
            BLOCK_K,
        )  # fmt: skip
        if HAS_BIAS:
            up += tl.load(b + N + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        gate = acc.to(dtype).to(tl.float32)  # F.linear's output, rounded
        act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        acc = act * up.to(dtype).to(tl.float32)
    out_ptrs = out + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(dtype), mask=m_mask[:, None] & n_mask[None, :])


def default_config(n: int, k: int, gated: bool = False) -> tuple[int, int, int, int]:
    """(block_n, block_k, num_warps, num_stages) for n output columns over k: the winners of
    bench_linear.py's sweep on the H200 (benchmarks/NOTES.md, session 11) at 1 and 16 rows.
    Column tiles as narrow as leave every SM a tile (16 up to 2,048 columns), long K tiles
    with one more stage in flight: a layer this small is bound by its memory latency."""
    block_n = 16 if n <= 2048 else 32 if n <= 4096 else 64
    block_k = 512 if block_n <= 32 else 128 if gated else 256
    return block_n, block_k, 4, 3 if block_n == 16 else 4


def skinny_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    gated: bool = False,
    config: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """x [M, K] (M <= MAX_ROWS) @ weight [N, K]^T (+ bias [N]) -> [M, N]; gated: weight [2I, K]
    holds gate then up rows, -> silu(gate) * up [M, I]. config overrides default_config."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x [M, K] and weight [N, K] expected, got {x.shape}, {weight.shape}")
    if x.shape[0] > MAX_ROWS:
        raise ValueError(f"at most {MAX_ROWS} rows, got {x.shape[0]}")
    if x.dtype != weight.dtype:
        raise ValueError(f"x is {x.dtype}, weight {weight.dtype}")
    if gated and weight.shape[0] % 2:
        raise ValueError(f"a gated weight has 2I rows, got {weight.shape[0]}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    x = x if x.stride(1) == 1 else x.contiguous()
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    (m, k), n = x.shape, weight.shape[0] // (2 if gated else 1)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    block_n, block_k, num_warps, num_stages = config or default_config(n, k, gated)
    _skinny_kernel[(triton.cdiv(n, block_n),)](
        x,
        weight,
        bias if bias is not None else weight,
        out,
        m,
        n,
        k,
        x.stride(0),
        weight.stride(0),
        out.stride(0),
        HAS_BIAS=bias is not None,
        GATED=gated,
        BLOCK_M=max(16, triton.next_power_of_2(m)),
        BLOCK_N=block_n,
        BLOCK_K=min(block_k, max(16, triton.next_power_of_2(k))),
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out
