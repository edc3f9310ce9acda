"""The decoder's linear layers: F.linear (cuBLAS, oneDNN, MKL) everywhere, except the few rows of
a decode step on CUDA over a long reduction (K >= 2,048), where a Triton kernel that streams each
weight once in narrow column tiles (triton_skinny.py) beats cuBLAS's small-M choices (split-K
and its reduce for Qwen3-0.6B's o_proj), and fuses the gated MLP's SiLU-and-multiply.

Batch-invariant mode (kernels/batch_invariant) keeps F.linear for every row count: its mode
routes F.linear to the fixed-tile matmul, and a kernel chosen by row count would make a request's
result depend on the batch it ran in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from yaie.kernels.attention import resolve_backend
from yaie.kernels.batch_invariant.mode import is_active as invariant_mode
from yaie.kernels.elementwise import silu_and_mul

__all__ = ["linear", "silu_gated_linear", "skinny_applies"]

_DTYPES = (torch.bfloat16, torch.float16)


def skinny_applies(x: torch.Tensor, backend: str = "auto") -> bool:
    """Whether x's rows take the skinny Triton kernel (triton_skinny.DISPATCH_*: where the H200
    measured it faster than cuBLAS)."""
    from yaie.kernels.linear import triton_skinny as skinny

    return (
        x.dim() == 2
        and x.shape[0] <= skinny.DISPATCH_ROWS
        and x.shape[1] >= skinny.DISPATCH_MIN_K
        and x.dtype in _DTYPES
        and resolve_backend(backend, x.is_cuda) == "triton"
        and not invariant_mode()
    )


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "auto"
) -> torch.Tensor:
    """x [T, K] @ weight [N, K]^T (+ bias) -> [T, N]."""
    if skinny_applies(x, backend):
        from yaie.kernels.linear.triton_skinny import skinny_linear_triton

        return skinny_linear_triton(x, weight, bias)
    return F.linear(x, weight, bias)


def silu_gated_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "auto"
) -> torch.Tensor:
    """silu(x gate^T) * (x up^T) -> [T, I] for weight [2I, K] = [gate; up] (bias likewise)."""
    if skinny_applies(x, backend):
        from yaie.kernels.linear.triton_skinny import skinny_linear_triton

        return skinny_linear_triton(x, weight, bias, gated=True)
    return silu_and_mul(F.linear(x, weight, bias), backend)
