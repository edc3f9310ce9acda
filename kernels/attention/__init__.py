"""Paged radix attention: store K/V by slot, extend (prefill) and decode attention over a pool.

One public function per operation, each with a backend choice: "torch" (the reference, which is
the specification), "sdpa" (the CPU fast path: torch's fused attention over gathered blocks),
"triton" (CUDA, or the CPU under TRITON_INTERPRET=1), or "auto" (Triton on CUDA tensors when
Triton imports, else sdpa). Inside yaie.kernels.batch_invariant's mode, the torch and sdpa
backends run its batch-invariant attention and Triton decode a fixed split count.

Layouts (every operation):
  k_cache, v_cache: [num_blocks, block_size, kv_heads, head_dim]; slot = block * block_size + offset
  block_tables:     [batch, max_blocks] int32; row b lists request b's blocks in token order
  seq_lens:         [batch] int32; tokens of request b whose K/V is in the pool, new ones included
  k_scale, v_scale: [num_blocks, kv_heads, block_size] float32, for an fp8 (float8_e4m3fn) pool
                    only (None otherwise): the stored value times its slot's scale is the K/V
                    (reference.quantize_fp8 is how store_kv makes them)

The pool's dtype may differ from q's (an fp8 or bf16 pool under an fp32 model): every backend
converts what it loads to q's dtype (fp8: dequantizes) before the arithmetic.
"""

from __future__ import annotations

from yaie.kernels.attention.prefix_groups import PrefixGroups
from yaie.kernels.attention.reference import (
    FP8_DTYPE,
    decode_attention_reference,
    extend_attention_reference,
    store_kv_reference,
)
from yaie.kernels.attention.sdpa import decode_attention_sdpa, extend_attention_sdpa
from yaie.kernels.batch_invariant import INVARIANT_DECODE_SPLITS, is_active
from yaie.kernels.batch_invariant.attention import (
    decode_attention_invariant,
    extend_attention_invariant,
)

__all__ = [
    "store_kv",
    "extend_attention",
    "decode_attention",
    "decode_attention_grouped",
    "PrefixGroups",
    "resolve_backend",
    "FP8_DTYPE",
]

BACKENDS = ("auto", "torch", "sdpa", "triton")
# The smallest batch decode_attention takes an order for (the decode CUDA graphs copy the order
# only from there): batch 1 measured 1 us a layer slower with it (the order's dependent loads),
# 8 and more faster (benchmarks/NOTES.md, session 14).
DECODE_ORDER_MIN_BATCH = 8


def resolve_backend(backend: str, is_cuda: bool) -> str:
    """Maps "auto" to "triton" for CUDA tensors when Triton is importable, else "sdpa"."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    if backend != "auto":
        return backend
    if not is_cuda:
        return "sdpa"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "sdpa"
    return "triton"


def check_scales(k_cache, k_scale, v_scale) -> None:
    """An fp8 pool needs both scale tensors, any other pool neither (ValueError otherwise)."""
    is_fp8 = k_cache.dtype == FP8_DTYPE
    if is_fp8 != (k_scale is not None) or is_fp8 != (v_scale is not None):
        raise ValueError(
            f"a {k_cache.dtype} pool takes {'k_scale and v_scale' if is_fp8 else 'no scales'}"
        )


def store_kv(
    k_cache, v_cache, k, v, slots, backend: str = "auto", k_scale=None, v_scale=None
) -> None:
    """Writes k, v [num_tokens, kv_heads, head_dim] into the pool at slots [num_tokens] (int64);
    an fp8 pool stores e4m3 values and their per-slot, per-head scales."""
    check_scales(k_cache, k_scale, v_scale)
    if resolve_backend(backend, k.is_cuda) == "triton":
        from yaie.kernels.attention.triton_store import store_kv_triton

        return store_kv_triton(k_cache, v_cache, k, v, slots, k_scale=k_scale, v_scale=v_scale)
    return store_kv_reference(k_cache, v_cache, k, v, slots, k_scale, v_scale)


def extend_attention(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    query_start,
    max_query_len: int,
    scale: float,
    backend: str = "auto",
    out=None,
    k_scale=None,
    v_scale=None,
):
    """Causal attention of a ragged batch of new tokens over their cached prefix and themselves.

    q: [num_tokens, q_heads, head_dim]; request b's new tokens are rows
    query_start[b]:query_start[b+1] ([batch + 1] int32) and are the last
    n_b = query_start[b+1] - query_start[b] of its seq_lens[b] tokens, whose K/V must already be
    stored. Query i of request b sits at position seq_lens[b] - n_b + i and attends to positions
    0..that position. q_heads is a multiple of kv_heads (GQA).
    Returns [num_tokens, q_heads, head_dim] (written into out when given: a row-contiguous
    tensor of that shape, e.g. a slice of a larger output).
    """
    check_scales(k_cache, k_scale, v_scale)
    scales = {"k_scale": k_scale, "v_scale": v_scale}
    resolved = resolve_backend(backend, q.is_cuda)
    if resolved == "triton":
        from yaie.kernels.attention.triton_extend import extend_attention_triton

        return extend_attention_triton(
            q,
            k_cache,
            v_cache,
            block_tables,
            seq_lens,
            query_start,
            max_query_len,
            scale,
            out=out,
            invariant=is_active(),
            **scales,
        )
    if is_active():
        return extend_attention_invariant(
            q, k_cache, v_cache, block_tables, seq_lens, query_start, scale, out=out, **scales
        )
    if resolved == "sdpa":
        return extend_attention_sdpa(
            q, k_cache, v_cache, block_tables, seq_lens, query_start, scale, out=out, **scales
        )
    result = extend_attention_reference(
        q, k_cache, v_cache, block_tables, seq_lens, query_start, scale, **scales
    )
    return result if out is None else out.copy_(result)


def decode_attention(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    scale: float,
    backend: str = "auto",
    out=None,
    k_scale=None,
    v_scale=None,
    order=None,
):
    """One query per request over all its seq_lens[b] tokens: q [batch, q_heads, head_dim] -> same
    (written into out when given, as extend_attention).

    order: the rows by seq_len, longest first ([batch] int32, a permutation): the triton
    backend then schedules the longest first and cuts every row into chunks of the longest
    one's split, so a ragged batch's programs hold about equal work (the same result up to
    rounding; unused below DECODE_ORDER_MIN_BATCH rows, by the other backends and in the
    batch-invariant mode).
    Capturable in a CUDA graph with the triton backend (no host sync; shapes fixed by the inputs).
    """
    check_scales(k_cache, k_scale, v_scale)
    scales = {"k_scale": k_scale, "v_scale": v_scale}
    args = (q, k_cache, v_cache, block_tables, seq_lens, scale)
    resolved = resolve_backend(backend, q.is_cuda)
    if resolved == "triton":
        from yaie.kernels.attention.triton_decode import decode_attention_triton

        if is_active():  # fixed splits, each row's own: the sums do not depend on the batch
            return decode_attention_triton(
                *args, num_splits=INVARIANT_DECODE_SPLITS, out=out, **scales
            )
        if q.shape[0] < DECODE_ORDER_MIN_BATCH:
            order = None
        return decode_attention_triton(*args, out=out, order=order, **scales)
    if is_active():
        return decode_attention_invariant(*args, out=out, **scales)
    if resolved == "sdpa":
        return decode_attention_sdpa(*args, out=out, **scales)
    result = decode_attention_reference(*args, **scales)
    return result if out is None else out.copy_(result)


def decode_attention_grouped(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    scale: float,
    groups: PrefixGroups,
    backend: str = "auto",
    out=None,
    k_scale=None,
    v_scale=None,
):
    """decode_attention, with each group's shared prefix read once for all its rows (cascade).

    The result equals decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale) for
    every row PROVIDED the caller guarantees, for each group g and each of its rows r:
    block_tables[r, :prefix_lens[g] // block_size] equals that of the group's first row, and
    prefix_lens[g] < seq_lens[r]; kv_start[r] = prefix_lens[g], 0 for rows in no group. Nothing
    checks it (that would need a device sync). The torch and sdpa backends ignore groups (same
    answer).
    Capturable in a CUDA graph with the triton backend: the grid depends on the shapes only
    (the number of group slots; padding slots read nothing).
    Inside the batch-invariant mode this is plain decode_attention (grouping reorders the sum).
    """
    if resolve_backend(backend, q.is_cuda) == "triton" and not is_active():
        from yaie.kernels.attention.triton_cascade import decode_attention_grouped_triton

        check_scales(k_cache, k_scale, v_scale)
        return decode_attention_grouped_triton(
            q,
            k_cache,
            v_cache,
            block_tables,
            seq_lens,
            scale,
            groups,
            out=out,
            k_scale=k_scale,
            v_scale=v_scale,
        )
    return decode_attention(
        q, k_cache, v_cache, block_tables, seq_lens, scale, backend, out, k_scale, v_scale
    )
