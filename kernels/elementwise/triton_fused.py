"""Triton kernels for the decoder's elementwise work on CUDA (reference.py is the specification):
residual add + RMSNorm, q/k RMSNorm + rotary embedding in place, SiLU-and-multiply.

Each kernel rounds to the activation dtype wherever transformers' torch code does, so results
match the torch path up to the order of one reduction. One launch replaces 5-10 small kernels.
qk_norm_rope_triton computes what rms_norm_reference of each q and k head (Qwen3) then
apply_rotary with the rotary_tables of its positions compute.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(
    x,
    residual,
    out,
    weight,
    stride_x,
    stride_r,
    stride_o,
    n_cols,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    h = tl.load(x + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:  # residual <- x + residual, rounded like a torch add
        r = tl.load(residual + row * stride_r + cols, mask=mask, other=0.0)
        h = (h.to(tl.float32) + r.to(tl.float32)).to(residual.dtype.element_ty)
        tl.store(residual + row * stride_r + cols, h, mask=mask)
    hf = h.to(tl.float32)
    inv_rms = 1.0 / tl.sqrt(tl.sum(hf * hf, axis=0) / n_cols + eps)
    normed = (hf * inv_rms).to(out.dtype.element_ty).to(tl.float32)
    w = tl.load(weight + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out + row * stride_o + cols, (w * normed).to(out.dtype.element_ty), mask=mask)


def add_rms_norm_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """RMSNorm of x [T, H] (of x + residual, stored into residual, when residual is given)."""
    out = torch.empty_like(x)
    num_rows, n_cols = x.shape
    if num_rows == 0:
        return out
    res = residual if residual is not None else x
    _add_rms_norm_kernel[(num_rows,)](
        x,
        res,
        out,
        weight,
        x.stride(0),
        res.stride(0),
        out.stride(0),
        n_cols,
        eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK=triton.next_power_of_2(n_cols),
    )
    return out


@triton.jit
def _qk_norm_rope_kernel(
    qkv,
    positions,
    inv_freq,
    q_weight,
    k_weight,
    stride_t,
    num_q_heads,
    eps,
    scaling,
    HAS_NORM: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    # Program (token t, head h): h < num_q_heads is a q head, the next num_kv_heads are k heads.
    t = tl.program_id(0)
    head = tl.program_id(1)
    dtype = qkv.dtype.element_ty
    half: tl.constexpr = HEAD_DIM // 2
    offs = tl.arange(0, HEAD_DIM)
    rot = (offs + half) % HEAD_DIM  # rotate_half(x)[i] = -x[i + half] (i < half), x[i - half]
    base = qkv + t * stride_t + head * HEAD_DIM
    x = tl.load(base + offs).to(tl.float32)
    x_rot = tl.load(base + rot).to(tl.float32)
    if HAS_NORM:  # Qwen3: per-head RMSNorm before the rotation
        is_q = head < num_q_heads
        w = tl.where(is_q, tl.load(q_weight + offs), tl.load(k_weight + offs)).to(tl.float32)
        w_rot = tl.where(is_q, tl.load(q_weight + rot), tl.load(k_weight + rot)).to(tl.float32)
        inv_rms = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / HEAD_DIM + eps)
        x = (w * (x * inv_rms).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
        x_rot = (w_rot * (x_rot * inv_rms).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    x_rot = tl.where(offs < half, -x_rot, x_rot)
    angle = tl.load(positions + t).to(tl.float32) * tl.load(inv_freq + offs % half)
    cos = (tl.cos(angle) * scaling).to(dtype).to(tl.float32)
    sin = (tl.sin(angle) * scaling).to(dtype).to(tl.float32)
    a = (x * cos).to(dtype).to(tl.float32)
    b = (x_rot * sin).to(dtype).to(tl.float32)
    tl.store(base + offs, (a + b).to(dtype))


def qk_norm_rope_triton(
    qkv: torch.Tensor,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    attention_scaling: float,
    q_weight: torch.Tensor | None = None,
    k_weight: torch.Tensor | None = None,
    eps: float = 0.0,
) -> None:
    """In place on qkv [T, (q_heads + 2 kv_heads) * head_dim]: optional per-head RMSNorm of the
    q and k heads, then the rotary embedding at positions [T] (v untouched)."""
    num_tokens = qkv.shape[0]
    if num_tokens == 0:
        return
    assert qkv.stride(1) == 1 and inv_freq.dtype == torch.float32
    has_norm = q_weight is not None
    _qk_norm_rope_kernel[(num_tokens, num_q_heads + num_kv_heads)](
        qkv,
        positions,
        inv_freq,
        q_weight if has_norm else inv_freq,
        k_weight if has_norm else inv_freq,
        qkv.stride(0),
        num_q_heads,
        eps,
        attention_scaling,
        HAS_NORM=has_norm,
        HEAD_DIM=head_dim,
    )


@triton.jit
def _silu_mul_kernel(gate_up, out, stride_in, stride_out, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dtype = out.dtype.element_ty
    gate = tl.load(gate_up + row * stride_in + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up + row * stride_in + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    tl.store(out + row * stride_out + cols, (act * up).to(dtype), mask=mask)


def silu_and_mul_triton(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up [T, 2 * I] (gate first) -> [T, I]."""
    num_rows, n_cols = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((num_rows, n_cols), dtype=gate_up.dtype, device=gate_up.device)
    if num_rows == 0:
        return out
    block = min(1024, triton.next_power_of_2(n_cols))
    grid = (num_rows, triton.cdiv(n_cols, block))
    _silu_mul_kernel[grid](gate_up, out, gate_up.stride(0), out.stride(0), n_cols, BLOCK=block)
    return out
