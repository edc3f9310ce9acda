"""y = x @ w.T + b whose every output row is computed the same way whatever the number of rows.

torch's CPU GEMM picks its kernel by M (one row takes a GEMV, and the blocking changes with M),
so the CPU path runs fixed chunks of CPU_ROWS rows (the last one zero-padded): every chunk is the
same GEMM shape, and a row's result does not depend on its place in the chunk
(tests/kernels/batch_invariant). cuBLAS picks tiles and split-K by M as well: on CUDA the Triton
kernel of triton_matmul.py, whose tiles are fixed and whose K loop has one order, runs instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CPU_ROWS = 16


def linear_invariant(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """F.linear(x, weight, bias), batch-invariant: x [..., K], weight [N, K] -> [..., N]."""
    lead = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1])
    if x.is_cuda:
        from yaie.kernels.batch_invariant.triton_matmul import matmul_triton

        out = matmul_triton(rows, weight, bias)
    else:
        out = _linear_cpu(rows, weight, bias)
    return out.view(*lead, weight.shape[0])


def _linear_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    m = x.shape[0]
    out = torch.empty(m, weight.shape[0], dtype=x.dtype, device=x.device)
    for lo in range(0, m, CPU_ROWS):
        chunk = x[lo : lo + CPU_ROWS]
        n = chunk.shape[0]
        if n < CPU_ROWS:
            chunk = torch.cat([chunk, chunk.new_zeros(CPU_ROWS - n, x.shape[1])])
        out[lo : lo + n] = F.linear(chunk, weight, bias)[:n]
    return out
