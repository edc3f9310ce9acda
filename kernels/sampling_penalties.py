"""Triton repetition / frequency / presence penalties: one program per row, one launch.

Same function as sampling.apply_penalties (the specification): for every distinct token of the
row's prompt + output, HF repetition penalty, then minus frequency * (count in the output) and
presence * (present in the output). The torch version is ~25 small launches, which on a GPU
costs more host time than the work itself.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from yaie.kernels.sampling_params import SamplingBatch


@triton.jit
def _penalty_kernel(
    work_ptr,
    work_stride,
    tok_ptr,
    L,
    out_ptr,
    Lo,
    V,
    rep_ptr,
    freq_ptr,
    pres_ptr,
    tmp_ptr,
    BLOCK_E: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    row = tl.program_id(0)
    work_row = work_ptr + row.to(tl.int64) * work_stride
    tok_row = tok_ptr + row.to(tl.int64) * L  # [L] prompt + output tokens, -1 = padding
    out_row = out_ptr + row.to(tl.int64) * Lo  # [Lo] output tokens, -1 = padding
    tmp_row = tmp_ptr + row.to(tl.int64) * L
    rep = tl.load(rep_ptr + row)
    freq = tl.load(freq_ptr + row)
    pres = tl.load(pres_ptr + row)
    e_offs = tl.arange(0, BLOCK_E)
    o_offs = tl.arange(0, BLOCK_O)
    # phase 1: every new value from the unmodified logits (duplicates compute the same value)
    for e0 in range(0, L, BLOCK_E):
        tok = tl.load(tok_row + e0 + e_offs, mask=e0 + e_offs < L, other=-1)
        valid = (tok >= 0) & (tok < V)
        old = tl.load(work_row + tok, mask=valid, other=0.0)
        count = tl.zeros([BLOCK_E], tl.float32)
        for o0 in range(0, Lo, BLOCK_O):
            out = tl.load(out_row + o0 + o_offs, mask=o0 + o_offs < Lo, other=-1)
            same = (tok[:, None] == out[None, :]) & (out[None, :] >= 0)
            count += tl.sum(same.to(tl.float32), axis=1)
        new = tl.where(old > 0, old / rep, old * rep)
        new = new - freq * count - pres * (count > 0).to(tl.float32)
        tl.store(tmp_row + e0 + e_offs, new, mask=valid)
    tl.debug_barrier()  # all reads of the row happen before any write
    # phase 2: write them back
    for e0 in range(0, L, BLOCK_E):
        tok = tl.load(tok_row + e0 + e_offs, mask=e0 + e_offs < L, other=-1)
        valid = (tok >= 0) & (tok < V)
        new = tl.load(tmp_row + e0 + e_offs, mask=valid, other=0.0)
        tl.store(work_row + tok, new, mask=valid)


def apply_penalties_triton(work: torch.Tensor, batch: SamplingBatch) -> None:
    """In place on fp32 work [B, V]; what sampling.apply_penalties does, in one launch."""
    assert work.dtype == torch.float32 and work.stride(1) == 1
    rows, vocab = work.shape
    parts = [t for t in (batch.prompt_tokens, batch.output_tokens) if t is not None]
    tokens = (torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]).contiguous()
    output = batch.output_tokens
    if output is None:  # no output tokens: counts are 0 (a width-1 row of padding)
        output = torch.full((rows, 1), -1, dtype=torch.int64, device=work.device)
    output = output.contiguous()
    scratch = torch.empty(tokens.shape, dtype=torch.float32, device=work.device)
    _penalty_kernel[(rows,)](
        work, work.stride(0), tokens, tokens.shape[1], output, output.shape[1], vocab,
        batch.repetition_penalty, batch.frequency_penalty, batch.presence_penalty, scratch,
        BLOCK_E=128, BLOCK_O=64, num_warps=4,
    )  # fmt: skip
