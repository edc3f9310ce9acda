"""Torch reference for the decoder layer's elementwise work: the specification the Triton kernels
(triton_fused.py) must match, each computing exactly what transformers' torch layers compute.

RMSNorm with and without the residual add, the rotary embedding (its cos/sin tables and the
rotate-half product) and SiLU-and-multiply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., H] / rms(x) in float32, cast back to x's dtype, then times weight [H]."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm_reference(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual) for x, residual [T, H]."""
    summed = x + residual
    return rms_norm_reference(summed, weight, eps), summed


def rotary_tables(
    positions: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [T, 1, head_dim] in dtype for positions [T] and inv_freq [head_dim / 2]."""
    freqs = positions[:, None].float() * inv_freq[None, :].float()  # [T, D / 2]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = (emb.cos() * attention_scaling).to(dtype)[:, None, :]
    sin = (emb.sin() * attention_scaling).to(dtype)[:, None, :]
    return cos, sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, head_dim] rotated by position (the rotate-half convention of transformers)."""
    return x * cos + _rotate_half(x) * sin


def silu_and_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up [T, 2 * I] (gate first) -> [T, I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
