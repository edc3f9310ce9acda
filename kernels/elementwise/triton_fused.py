"""Triton kernels for the decoder's elementwise work on CUDA (reference.py is the specification):
residual add + RMSNorm, q/k RMSNorm + rotary embedding in place (and, fused, the new tokens' K/V
written into the paged pool, as kernels/attention's store_kv does), SiLU-and-multiply.

Each kernel rounds to the activation dtype wherever transformers' torch code does, so results
match the torch path up to the order of one reduction. One launch replaces 5-10 small kernels.
qk_norm_rope_triton computes what rms_norm_reference of each q and k head (Qwen3) then
apply_rotary with the rotary_tables of its positions compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from yaie.kernels.attention.triton_common import check_index, check_pool, scale_args
from yaie.kernels.attention.triton_store import _store_rows, slot_destinations


@dataclass(frozen=True)
class KVStore:
    """Where qk_norm_rope_triton also writes k and v: the paged pool (k_cache, v_cache
    [num_blocks, block_size, kv_heads, head_dim]), each token's slot (int64 [T]) and, for an fp8
    pool, the scales [num_blocks, kv_heads, block_size]: store_kv's arguments."""

    k_cache: torch.Tensor
    v_cache: torch.Tensor
    slots: torch.Tensor
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None

    def check(self, num_tokens: int, kv_heads: int, head_dim: int, device) -> None:
        _, _, pool_heads, pool_dim = check_pool(self.k_cache, self.v_cache)
        if (pool_heads, pool_dim) != (kv_heads, head_dim):
            raise ValueError(
                f"pool heads x dim {pool_heads} x {pool_dim}, qkv's k {kv_heads} x {head_dim}"
            )
        check_index("slots", self.slots, 1, torch.int64, device)
        if self.slots.shape[0] != num_tokens:
            raise ValueError(f"{self.slots.shape[0]} slots for {num_tokens} tokens")


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
    num_kv_heads,
    eps,
    scaling,
    k_cache,
    v_cache,
    slots,
    k_scale,
    v_scale,
    stride_cache_block,
    stride_cache_token,
    stride_cache_head,
    stride_scale_block,
    stride_scale_head,
    HAS_NORM: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    STORE: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    block_size: tl.constexpr,
):
    # Program (token t, head h): h < num_q_heads is a q head, the next num_kv_heads are k heads,
    # and with STORE the last num_kv_heads are v heads, which only copy v into the pool.
    t = tl.program_id(0)
    head = tl.program_id(1)
    dtype = qkv.dtype.element_ty
    half: tl.constexpr = HEAD_DIM // 2
    offs = tl.arange(0, HEAD_DIM)
    base = qkv + t * stride_t + head * HEAD_DIM
    if head < num_q_heads + num_kv_heads:
        rot = (offs + half) % HEAD_DIM  # rotate_half(x)[i] = -x[i + half] (i < half), x[i - half]
        x = tl.load(base + offs).to(tl.float32)
        x_rot = tl.load(base + rot).to(tl.float32)
        if HAS_NORM:  # Qwen3: per-head RMSNorm before the rotation
            is_q = head < num_q_heads
            w = tl.where(is_q, tl.load(q_weight + offs), tl.load(k_weight + offs)).to(tl.float32)
            w_rot = tl.where(is_q, tl.load(q_weight + rot), tl.load(k_weight + rot))
            inv_rms = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / HEAD_DIM + eps)
            x = (w * (x * inv_rms).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
            x_rot = (w_rot.to(tl.float32) * (x_rot * inv_rms).to(dtype).to(tl.float32)).to(dtype)
            x_rot = x_rot.to(tl.float32)
        x_rot = tl.where(offs < half, -x_rot, x_rot)
        angle = tl.load(positions + t).to(tl.float32) * tl.load(inv_freq + offs % half)
        cos = (tl.cos(angle) * scaling).to(dtype).to(tl.float32)
        sin = (tl.sin(angle) * scaling).to(dtype).to(tl.float32)
        a = (x * cos).to(dtype).to(tl.float32)
        b = (x_rot * sin).to(dtype).to(tl.float32)
        out = (a + b).to(dtype)
        tl.store(base + offs, out)
        if STORE:
            if head >= num_q_heads:  # the rotated k into the pool at this token's slot
                _store_head(k_cache, k_scale, slots, t, head - num_q_heads, out,
                            stride_cache_block, stride_cache_token, stride_cache_head,
                            stride_scale_block, stride_scale_head, block_size, HEAD_DIM,
                            HAS_SCALE)  # fmt: skip
    else:
        if STORE:
            _store_head(v_cache, v_scale, slots, t, head - num_q_heads - num_kv_heads,
                        tl.load(base + offs), stride_cache_block, stride_cache_token,
                        stride_cache_head, stride_scale_block, stride_scale_head, block_size,
                        HEAD_DIM, HAS_SCALE)  # fmt: skip


@triton.jit
def _store_head(
    cache,
    scales,
    slots,
    t,
    kv_head,
    row,
    stride_cache_block,
    stride_cache_token,
    stride_cache_head,
    stride_scale_block,
    stride_scale_head,
    block_size: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    # One (token, kv head) vector [D] into the pool, as store_kv's kernel writes it.
    dst, scale_dst = slot_destinations(
        tl.load(slots + t), kv_head + tl.zeros([1], tl.int32), tl.arange(0, HEAD_DIM),
        stride_cache_block, stride_cache_token, stride_cache_head, stride_scale_block,
        stride_scale_head, block_size,
    )  # fmt: skip
    _store_rows(cache, scales, dst, scale_dst, row[None, :], tl.full([1], 1, tl.int1), HAS_SCALE)


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
    store: KVStore | None = None,
) -> None:
    """In place on qkv [T, (q_heads + 2 kv_heads) * head_dim]: optional per-head RMSNorm of the
    q and k heads, then the rotary embedding at positions [T] (v untouched). With store, the
    same launch writes the rotated k and the v of each token into the paged pool at its slot,
    exactly as store_kv would (an fp8 pool: quantized, with its per-vector scales)."""
    num_tokens = qkv.shape[0]
    if store is not None:
        store.check(num_tokens, num_kv_heads, head_dim, qkv.device)
    if num_tokens == 0:
        return
    assert qkv.stride(1) == 1 and inv_freq.dtype == torch.float32
    has_norm = q_weight is not None
    if store is None:
        cache = (inv_freq, inv_freq, positions, inv_freq, inv_freq, 0, 0, 0, 0, 0)
        has_scale, block_size = False, 1
    else:
        k_scale, v_scale, stride_scale_block, stride_scale_head, has_scale = scale_args(
            store.k_cache, store.k_scale, store.v_scale
        )
        k_cache = store.k_cache
        cache = (k_cache, store.v_cache, store.slots, k_scale, v_scale, *k_cache.stride()[:3],
                 stride_scale_block, stride_scale_head)  # fmt: skip
        block_size = k_cache.shape[1]
    heads = num_q_heads + num_kv_heads * (2 if store is not None else 1)
    _qk_norm_rope_kernel[(num_tokens, heads)](
        qkv,
        positions,
        inv_freq,
        q_weight if has_norm else inv_freq,
        k_weight if has_norm else inv_freq,
        qkv.stride(0),
        num_q_heads,
        num_kv_heads,
        eps,
        attention_scaling,
        *cache,
        HAS_NORM=has_norm,
        HEAD_DIM=head_dim,
        STORE=store is not None,
        HAS_SCALE=has_scale,
        block_size=block_size,
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
