"""Argument checks shared by the Triton attention launchers: shapes, dtypes, devices and strides.

Every check raises ValueError with the offending name, so a bad call never reaches a kernel.
"""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
POOL_DTYPES = (*SUPPORTED_DTYPES, torch.float8_e4m3fn)  # fp8 comes with per-slot scales
LOG2E = 1.4426950408889634  # the kernels take exp2: scores are scaled by scale * LOG2E


def _fail(message: str) -> None:
    raise ValueError(message)


def check_pool(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[int, int, int, int]:
    """Checks the K/V pool pair; returns (num_blocks, block_size, kv_heads, head_dim)."""
    if k_cache.dim() != 4:
        _fail(f"k_cache must be [num_blocks, block_size, kv_heads, head_dim], got {k_cache.shape}")
    if v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride():
        _fail(f"v_cache {v_cache.shape} must match k_cache {k_cache.shape} in shape and strides")
    if v_cache.dtype != k_cache.dtype or k_cache.dtype not in POOL_DTYPES:
        _fail(f"k_cache/v_cache dtypes {k_cache.dtype}/{v_cache.dtype}: one of {POOL_DTYPES}")
    if v_cache.device != k_cache.device:
        _fail("k_cache and v_cache must be on one device")
    if k_cache.stride(3) != 1:
        _fail("k_cache/v_cache need a contiguous last (head_dim) dimension")
    head_dim = k_cache.shape[3]
    if head_dim < 16 or head_dim & (head_dim - 1):
        _fail(f"head_dim must be a power of two >= 16 (64 and 128 are tested), got {head_dim}")
    return tuple(k_cache.shape)  # type: ignore[return-value]


def check_scales(
    k_cache: torch.Tensor, k_scale: torch.Tensor | None, v_scale: torch.Tensor | None
) -> bool:
    """The scales of an fp8 pool: both [num_blocks, kv_heads, block_size] float32 with one
    stride set and a contiguous last dim; no scales for any other pool. True for an fp8 pool."""
    is_fp8 = k_cache.dtype == torch.float8_e4m3fn
    if not is_fp8:
        if k_scale is not None or v_scale is not None:
            _fail(f"a {k_cache.dtype} pool takes no k_scale / v_scale")
        return False
    if k_scale is None or v_scale is None:
        _fail("an fp8 pool needs k_scale and v_scale")
    for name, x in (("k_scale", k_scale), ("v_scale", v_scale)):
        shape = (k_cache.shape[0], k_cache.shape[2], k_cache.shape[1])
        if x.shape != shape or x.dtype != torch.float32:
            _fail(f"{name} must be float32 {shape}, got {x.dtype} {tuple(x.shape)}")
        contiguous = x.shape[2] == 1 or x.stride(2) == 1  # the kernels step 1 per token
        if x.device != k_cache.device or x.stride() != k_scale.stride() or not contiguous:
            _fail(f"{name}: on the pool's device, k_scale's strides, contiguous last dim")
    return True


# Attention math over an fp8 pool (HAS_SCALE of the decode, grouped and extend kernels): 1
# converts K/V to q's dtype (bf16: e4m3 -> f16 -> f32 -> bf16 per pair of values), 2 runs the dots
# in fp16 (one e4m3x2 -> f16x2 conversion per pair; q rounds to fp16 once per program): decode
# 8-13% faster on the H200 (benchmarks/NOTES.md, "Session 7", calls 2-3) and more precise than
# bf16; a query element past fp16's range (65504) would overflow, far beyond what a projection of
# a normed hidden state gives.
FP8_DECODE_MATH = 2


# Extend attention's mode: 3 scales the K/V tiles as they load (fp32, then fp16) and drops the
# per-key multiplies of the [BLOCK_M, BLOCK_N] scores and probabilities, a tile being shared by
# BLOCK_M queries here. On the H200 (benchmarks/NOTES.md, "Session 8", call 3) mode 3 is 6-9%
# faster than 2 (which is 5% faster than 1), within the same error of mode 1's output, and still
# 2.1-2.4x slower than a bf16 pool (`bench_fp8_kv.py --stages kernels` times modes 1-3).
FP8_EXTEND_MATH = 3


def fp8_math(has_scale: bool, q_dtype: torch.dtype, extend: bool = False) -> int:
    """The kernels' HAS_SCALE constant: 0 (no scales), else FP8_DECODE_MATH (FP8_EXTEND_MATH for
    extend) for 16-bit queries; fp32 queries keep fp32 math (1)."""
    if not has_scale:
        return 0
    if q_dtype == torch.float32:
        return 1
    return FP8_EXTEND_MATH if extend else FP8_DECODE_MATH


def scale_args(
    k_cache: torch.Tensor, k_scale: torch.Tensor | None, v_scale: torch.Tensor | None
) -> tuple:
    """Checks the scales (check_scales) and returns the kernels' scale arguments: (k_scale,
    v_scale, stride per block, stride per head, HAS_SCALE); without scales the pointers are
    k_cache (never read) and the strides 0."""
    if not check_scales(k_cache, k_scale, v_scale):
        return k_cache, k_cache, 0, 0, False
    return k_scale, v_scale, k_scale.stride(0), k_scale.stride(1), True


def check_tokens(
    name: str,
    x: torch.Tensor,
    num_heads: int | None,
    head_dim: int,
    device: torch.device,
) -> None:
    """x must be [num_tokens, num_heads, head_dim] on `device`, last dim contiguous."""
    if (
        x.dim() != 3
        or x.shape[2] != head_dim
        or (num_heads is not None and x.shape[1] != num_heads)
    ):
        heads = "heads" if num_heads is None else num_heads
        _fail(f"{name} must be [num_tokens, {heads}, {head_dim}], got {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        _fail(f"{name} dtype {x.dtype} not in {SUPPORTED_DTYPES}")
    if x.device != device:
        _fail(f"{name} is on {x.device}, the pool on {device}")
    if x.shape[0] > 0 and x.stride(2) != 1:
        _fail(f"{name} needs a contiguous last (head_dim) dimension")


def check_index(
    name: str, x: torch.Tensor, ndim: int, dtype: torch.dtype, device: torch.device
) -> None:
    """An index tensor: rank, dtype, device, and a contiguous last dimension."""
    if x.dim() != ndim:
        _fail(f"{name} must have {ndim} dims, got shape {tuple(x.shape)}")
    if x.dtype != dtype:
        _fail(f"{name} must be {dtype}, got {x.dtype}")
    if x.device != device:
        _fail(f"{name} is on {x.device}, the pool on {device}")
    if x.numel() > 0 and x.stride(-1) != 1:
        _fail(f"{name} needs a contiguous last dimension")


def check_paged_batch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
) -> tuple[int, ...]:
    """Common checks of extend and decode; returns (block_size, kv_heads, head_dim, group).
    q's dtype is the compute dtype: the kernels convert (fp8: dequantize) K/V to it."""
    _, block_size, kv_heads, head_dim = check_pool(k_cache, v_cache)
    check_tokens("q", q, None, head_dim, k_cache.device)
    if q.shape[1] % kv_heads:
        _fail(f"q_heads {q.shape[1]} must be a multiple of kv_heads {kv_heads}")
    check_index("block_tables", block_tables, 2, torch.int32, k_cache.device)
    check_index("seq_lens", seq_lens, 1, torch.int32, k_cache.device)
    if seq_lens.shape[0] != block_tables.shape[0]:
        _fail(
            f"seq_lens {tuple(seq_lens.shape)} and block_tables {tuple(block_tables.shape)} "
            "disagree on the batch size"
        )
    return block_size, kv_heads, head_dim, q.shape[1] // kv_heads


def check_out(out: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
    """A caller's output buffer (e.g. a CUDA graph's static one) must look like q; None: new."""
    if out is None:
        return torch.empty_like(q)
    if out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        _fail(f"out {tuple(out.shape)} {out.dtype} must match q {tuple(q.shape)} {q.dtype}")
    if out.numel() > 0 and out.stride(2) != 1:
        _fail("out needs a contiguous last (head_dim) dimension")
    return out


def check_tile(name: str, size: int) -> None:
    """A tile size (block_m, block_n, ...) must be a power of two >= 16 (tl.dot's minimum)."""
    if size < 16 or size & (size - 1):
        _fail(f"{name} must be a power of two >= 16, got {size}")


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
