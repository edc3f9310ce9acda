"""Pass 2 of split-K decode attention in Triton: program (request, query head) merges the
partials of a request's splits by log-sum-exp into its output. Also the chunk rule of a split
pass launched with an order (rows longest first), which both passes apply.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from yaie.kernels.attention.triton_common import next_power_of_2


@triton.jit
def ordered_chunks(seq_lens, order, seq_len, num_splits, BLOCK_N: tl.constexpr):
    # ORDERED chunking: every row is cut into chunks of the longest row's split (seq_lens of
    # order[0], in num_splits chunks), so a short row runs as one program and writes its output
    # itself while a long one is spread over up to num_splits programs: the programs of a
    # ragged batch hold about equal work. A row longer than order[0]'s (an order that is not
    # longest first) takes its own split: any permutation stays correct. Returns (tiles per
    # chunk, the row's chunk count <= num_splits).
    longest = tl.maximum(tl.load(seq_lens + tl.load(order)), seq_len)
    tiles = tl.maximum(tl.cdiv(tl.cdiv(longest, BLOCK_N), num_splits), 1)
    return tiles, tl.cdiv(tl.cdiv(seq_len, BLOCK_N), tiles)


@triton.jit(do_not_specialize=["seq_lens", "order", "num_slots"])
def _decode_reduce_kernel(
    mid_out,
    mid_lse,
    out,
    seq_lens,
    order,
    stride_out_batch,
    stride_out_head,
    num_slots,
    HEAD_DIM: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    ORDERED: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    used = num_slots
    if ORDERED:  # the row's chunks only; a row of one chunk was written by the split kernel
        _, used = ordered_chunks(seq_lens, order, tl.load(seq_lens + b), num_slots, BLOCK_N)
    if used > 1 or not ORDERED:
        row = (b * tl.num_programs(1) + head) * num_slots
        lse = tl.load(mid_lse + row + offs_s, mask=offs_s < used, other=float("-inf"))
        has_keys = lse > float("-inf")
        m = tl.max(tl.where(has_keys, lse, -1e30), axis=0)
        weight = tl.where(has_keys, tl.exp2(lse - m), 0.0)  # [SPLITS_PAD]
        part = tl.load(
            mid_out + (row + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
            mask=has_keys[:, None],
            other=0.0,
        )  # [SPLITS_PAD, D]
        total = tl.sum(weight, axis=0)
        # A request with no tokens (a padded CUDA-graph slot) gets zeros, as the reference does.
        result = tl.sum(part * weight[:, None], axis=0) / tl.where(total > 0.0, total, 1.0)
        out_ptrs = out + b * stride_out_batch + head * stride_out_head + offs_d
        tl.store(out_ptrs, result.to(out.dtype.element_ty))


def launch_decode_reduce(
    mid_out: torch.Tensor,
    mid_lse: torch.Tensor,
    out: torch.Tensor,
    min_pad: int = 1,
    ordered: tuple[torch.Tensor, torch.Tensor, int] | None = None,
) -> None:
    """Pass 2: merges every slot of mid_out / mid_lse [batch, q_heads, slots(, D)] into out.

    min_pad: a floor on the padded slot count, so a slot count that varies per step (cascade)
    does not compile a variant per power of two. ordered (seq_lens, order, block_n) of a split
    pass launched with that order: each row's chunks only, rows of one chunk left as written."""
    batch, num_q_heads, num_slots = mid_lse.shape
    seq_lens, order, block_n = (mid_lse, mid_lse, 16) if ordered is None else ordered
    _decode_reduce_kernel[(batch, num_q_heads)](
        mid_out,
        mid_lse,
        out,
        seq_lens,
        order,
        out.stride(0),
        out.stride(1),
        num_slots,
        HEAD_DIM=mid_out.shape[3],
        SPLITS_PAD=max(min_pad, next_power_of_2(num_slots)),
        ORDERED=ordered is not None,
        BLOCK_N=block_n,
        num_warps=4,
    )
