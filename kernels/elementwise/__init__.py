"""The decoder layer's elementwise work: RMSNorm (with the residual add), the rotary embedding and
SiLU-and-multiply. The torch reference (reference.py) is the specification; the Triton kernels
(triton_fused.py) do each in one launch on CUDA, where the torch path runs 5-10 small kernels.

One public function per operation, with the backend choice of yaie.kernels.attention ("auto":
Triton for CUDA tensors when Triton imports). The rotary embedding has no such function: its
torch path builds cos/sin tables once per forward pass (rotary_tables) for every layer to apply
(apply_rotary), while its Triton kernel (triton_fused.qk_norm_rope_triton) computes them in place
of the tables and fuses Qwen3's q/k norm; the model chooses one path per forward pass.
"""

from __future__ import annotations

import torch

from yaie.kernels.attention import resolve_backend
from yaie.kernels.elementwise.reference import (
    add_rms_norm_reference,
    apply_rotary,
    rms_norm_reference,
    rotary_tables,
    silu_and_mul_reference,
)

__all__ = ["add_rms_norm", "apply_rotary", "rms_norm", "rotary_tables", "silu_and_mul"]


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, backend: str = "auto"
) -> torch.Tensor:
    """RMSNorm of x [..., H] times weight [H]. The Triton kernel takes rows x [T, H]; other shapes
    (the q/k heads [T, heads, D] of Qwen3) use the reference."""
    if x.dim() == 2 and resolve_backend(backend, x.is_cuda) == "triton":
        from yaie.kernels.elementwise.triton_fused import add_rms_norm_triton

        return add_rms_norm_triton(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual) for x, residual [T, H]; the Triton kernel stores
    the sum into residual (and returns it), the reference returns a new tensor."""
    if resolve_backend(backend, x.is_cuda) == "triton":
        from yaie.kernels.elementwise.triton_fused import add_rms_norm_triton

        return add_rms_norm_triton(x, weight, eps, residual), residual
    return add_rms_norm_reference(x, residual, weight, eps)


def silu_and_mul(gate_up: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """silu(gate) * up for gate_up [T, 2 * I] (gate first) -> [T, I]."""
    if resolve_backend(backend, gate_up.is_cuda) == "triton":
        from yaie.kernels.elementwise.triton_fused import silu_and_mul_triton

        return silu_and_mul_triton(gate_up)
    return silu_and_mul_reference(gate_up)
