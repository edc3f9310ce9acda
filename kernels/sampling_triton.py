"""Triton sampler: the thresholds of sampling.filter_thresholds without sorting the vocabulary.

One program per row streams the row a few times. Pass A: max, min, the unfiltered Gumbel-max
candidate (and, for top-p without top-k, the row's mass). A filter then starts from a bound read
off the per-lane maxima when there is one (top-k with k <= BLOCK; top-p whose mass sits in the
lane maxima): one pass copies every s >= bound with its token id, and the search and the draw read
only that copy. Otherwise a multi-pivot search over the row: each pass counts (and weighs) the row
at NPIV pivots between a feasible `lo` and an infeasible `hi` and keeps the sub-bracket; it stops
when one element (or one float) is left, so `s >= lo` is the exact kept set. Last, the candidate
is kept if it passes the threshold (it is then also the argmax over the kept set), else one more
pass (over the copy when it holds the kept set) draws over the kept set.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from yaie.kernels.sampling_draw import draw_copy, draw_kept, lane_bound, scan_pass
from yaie.kernels.sampling_params import SamplingBatch
from yaie.kernels.sampling_search import NEG_INF, POS_INF, copy_pass, threshold_search


@triton.jit
def _sample_kernel(
    s_ptr,
    stride,
    V,
    inv_t_ptr,
    greedy_ptr,
    top_k_ptr,
    top_p_ptr,
    min_p_ptr,
    key_ptr,
    out_ptr,
    tau_ptr,
    buf_base,
    ibuf_base,
    cap,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    NPIV: tl.constexpr,
    HAS_TOP_K: tl.constexpr,
    HAS_TOP_P: tl.constexpr,
    HAS_MIN_P: tl.constexpr,
    MAX_PASSES: tl.constexpr,
    FAST_LOG: tl.constexpr,
    SLOTS: tl.constexpr,
    BOUNDS: tl.constexpr,
    MASS_BOUND: tl.constexpr,
    COMPACT: tl.constexpr,
):
    row = tl.program_id(0)
    row_ptr = s_ptr + row.to(tl.int64) * stride
    buf_ptr = buf_base + row.to(tl.int64) * cap  # this row's scratch: values of the copy
    ibuf_ptr = ibuf_base + row.to(tl.int64) * cap  # and their token ids
    inv_t = tl.load(inv_t_ptr + row)
    sampled = tl.load(greedy_ptr + row).to(tl.int32) == 0
    k_row = tl.load(top_k_ptr + row).to(tl.float32)  # 2^31 - 1 where top-k is off
    p_row = tl.load(top_p_ptr + row)
    # Under a top-k the unfiltered winner is almost never kept: draw only in the last pass.
    noisy_a = sampled & (k_row >= V)
    need_z = noisy_a & (p_row < 1.0)  # top-p over the whole row: its mass helps find a bound
    if not (MASS_BOUND and HAS_TOP_P):
        need_z = noisy_a & (p_row > 1.0)
    key = tl.load(key_ptr + row).to(tl.uint32)
    vmax, vmin, nfin, best, best_i, best_s, zl, ref = scan_pass(
        row_ptr, V, inv_t, key, noisy_a, need_z, BLOCK, ROWS, FAST_LOG, SLOTS
    )
    m = tl.max(vmax, axis=0)
    m = tl.where(m > NEG_INF, m, 0.0)  # an all -inf row: keep exp() finite
    top = tl.max(best, axis=0)
    cand = tl.min(tl.where(best == top, best_i, V), axis=0)
    cand_s = tl.max(tl.where(best_i == cand, best_s, NEG_INF), axis=0)
    tau_k = tl.min(vmin, axis=0)  # top-k off: everything finite is kept
    c_k = tl.sum(nfin, axis=0).to(tl.float32)
    tau = tau_k
    copied = tl.full([], 0, tl.int32)  # whether buf holds a copy (n_buf values)
    n_buf = tl.full([], 0, tl.int32)
    full_lo = m * 0.0 + POS_INF  # buf holds every s >= full_lo
    lo, c_lo, target = tau_k, c_k, m * 0.0  # where the searches start
    if BOUNDS:  # a start from the lane maxima: top-k (k <= BLOCK), or top-p without top-k
        x = m * 0.0 + NEG_INF
        if HAS_TOP_K:
            if sampled & (k_row < c_k) & (k_row <= BLOCK):
                x = lane_bound(vmax, m, k_row, 0.0, False)
        if HAS_TOP_P and MASS_BOUND:
            if need_z:
                target = p_row * tl.sum(zl, axis=0) * tl.exp(ref - m)  # p * sum exp(s - m)
                x = lane_bound(vmax, m, 0.0, target, True)
        if x > NEG_INF:  # copy s >= x with ids; the search and the draw then read the copy
            n = copy_pass(row_ptr, V, inv_t, x, POS_INF, buf_ptr, ibuf_ptr, cap, BLOCK, ROWS, SLOTS)
            if n <= cap:
                copied, n_buf, full_lo, lo, c_lo = n * 0 + 1, n, x, x, n.to(tl.float32)
    if HAS_TOP_K:
        if sampled & (k_row < c_k):
            tau_k, c_k, copied, n_buf, full_lo = threshold_search(
                row_ptr, buf_ptr, ibuf_ptr, cap, V, inv_t, m, lo, c_lo, k_row, 0.0, copied,
                n_buf, full_lo, BLOCK, ROWS, NPIV, False, MAX_PASSES, SLOTS, COMPACT,
            )  # fmt: skip
            tau = tau_k
            lo, c_lo = tau_k, c_k
    if HAS_TOP_P:
        if sampled & (p_row < 1.0):
            # target: p * Z when starting from a mass bound, else 0: p * mass(s >= lo), found
            # by the search's first pass (the top-k set)
            target = tl.where(copied != 0, target, 0.0)
            tau_p, c_p, copied, n_buf, full_lo = threshold_search(
                row_ptr, buf_ptr, ibuf_ptr, cap, V, inv_t, m, lo, c_lo, p_row, target, copied,
                n_buf, full_lo, BLOCK, ROWS, NPIV, True, MAX_PASSES, SLOTS, COMPACT,
            )  # fmt: skip
            tau = tl.maximum(tau, tau_p)
    if HAS_MIN_P:
        tau = tl.maximum(tau, tl.max(vmax, axis=0) + tl.log(tl.load(min_p_ptr + row)))
    token = cand
    if sampled & ((cand_s < tau) | (noisy_a == 0)):
        # no draw yet, or the unfiltered winner was cut; a kept winner also wins the kept set
        if (copied != 0) & (tau >= full_lo):
            token = draw_copy(buf_ptr, ibuf_ptr, n_buf, V, key, tau, BLOCK, FAST_LOG)
        else:
            token = draw_kept(row_ptr, V, inv_t, key, tau, BLOCK, ROWS, FAST_LOG, SLOTS)
    tl.store(out_ptr + row, tl.minimum(token, V - 1).to(tl.int64))
    tl.store(tau_ptr + row, tau)


def draw_triton(
    work: torch.Tensor,
    batch: SamplingBatch,
    block: int = 512,
    rows_per_tile: int = 1,
    num_pivots: int = 8,
    num_warps: int = 8,
    thresholds: torch.Tensor | None = None,
    fast_log: bool | None = None,
    max_registers: int | None = 128,
    slots: int = 4,
    bounds: bool = True,
    mass_bound: bool = False,
    compact: bool = False,
) -> torch.Tensor:
    """[B] int64 tokens from processed logits work [B, V] (fp32, bf16 or fp16, read as fp32); as
    sampling.draw_reference (up to float summation order at a top-p boundary).

    Each loop reads [rows_per_tile, block] tiles, slots (4 or 8) of them in flight; num_pivots is
    the search's fan-out per pass; max_registers (per thread) keeps two programs of 8 warps on an
    SM (65,536 registers); bounds: start top-k from the lane-maxima bound; mass_bound: top-p too
    (it costs an exp per token in pass A, and gains only when a few tokens hold the mass);
    compact: shrink the search's copy in place as its bracket shrinks (off by default: exact
    under the interpreter, not yet run on a GPU; see benchmarks/NOTES.md, Sampling).
    thresholds, if given ([B] fp32), receives each sampled row's tau: it keeps s >= tau.
    fast_log (default: on, except under TRITON_INTERPRET, which lacks it) takes the noise's logs
    with lg2.approx; the draws then differ from the reference only where two keys tie to ~1e-6.
    """
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    fast_log = not interpreted if fast_log is None else fast_log
    options = {"maxnreg": max_registers} if max_registers and not interpreted else {}
    assert work.dtype in (torch.float32, torch.bfloat16, torch.float16), work.dtype
    assert work.dim() == 2 and work.stride(1) == 1, "rows of contiguous logits"
    assert slots in (4, 8), slots
    rows, vocab = work.shape
    out = torch.empty(rows, dtype=torch.int64, device=work.device)
    if thresholds is None:
        thresholds = torch.empty(rows, dtype=torch.float32, device=work.device)
    searching = batch.any_top_k or batch.any_top_p
    cap = vocab // 2 + 1  # a copy is made once at most half the row is in play
    size = rows * cap if searching else 1
    scratch = torch.empty(size, dtype=torch.float32, device=work.device)
    ids = torch.empty(size, dtype=torch.int32, device=work.device)
    args = (work, work.stride(0), vocab, batch.inv_temperature, batch.greedy, batch.top_k)
    args += (batch.top_p, batch.min_p, batch.row_keys, out, thresholds, scratch, ids, cap)
    meta = dict(BLOCK=block, ROWS=rows_per_tile, NPIV=num_pivots, HAS_TOP_K=batch.any_top_k)
    meta.update(HAS_TOP_P=batch.any_top_p, HAS_MIN_P=batch.any_min_p, MAX_PASSES=32)
    meta.update(FAST_LOG=fast_log, SLOTS=slots, BOUNDS=bounds, MASS_BOUND=mass_bound)
    meta.update(COMPACT=compact, num_warps=num_warps)
    try:
        _sample_kernel[(rows,)](*args, **meta, **options)
    except KeyError as exc:  # a Triton without the maxnreg option: run uncapped
        if "maxnreg" not in str(exc):
            raise
        _sample_kernel[(rows,)](*args, **meta)
    return out


@triton.jit
def _lse_tile(x, vmax, total):
    new_max = tl.maximum(vmax, x)
    safe = tl.where(new_max > NEG_INF, new_max, 0.0)  # lanes that saw only -inf so far
    return new_max, total * tl.exp(vmax - safe) + tl.exp(x - safe)


@triton.jit
def _logsumexp_kernel(x_ptr, stride, V, out_ptr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    row_ptr = x_ptr + row.to(tl.int64) * stride
    offs = tl.arange(0, BLOCK)
    vmax = tl.full([BLOCK], NEG_INF, tl.float32)
    total = tl.zeros([BLOCK], tl.float32)
    t0 = tl.load(row_ptr + offs, mask=offs < V, other=NEG_INF)
    t1 = tl.load(row_ptr + BLOCK + offs, mask=BLOCK + offs < V, other=NEG_INF)
    t2 = tl.load(row_ptr + 2 * BLOCK + offs, mask=2 * BLOCK + offs < V, other=NEG_INF)
    t3 = tl.load(row_ptr + 3 * BLOCK + offs, mask=3 * BLOCK + offs < V, other=NEG_INF)
    for start in range(4 * BLOCK, V + 4 * BLOCK, 4 * BLOCK):  # four tiles in flight
        idx = start + offs
        vmax, total = _lse_tile(t0.to(tl.float32), vmax, total)
        t0 = tl.load(row_ptr + idx, mask=idx < V, other=NEG_INF)
        vmax, total = _lse_tile(t1.to(tl.float32), vmax, total)
        t1 = tl.load(row_ptr + idx + BLOCK, mask=idx + BLOCK < V, other=NEG_INF)
        vmax, total = _lse_tile(t2.to(tl.float32), vmax, total)
        t2 = tl.load(row_ptr + idx + 2 * BLOCK, mask=idx + 2 * BLOCK < V, other=NEG_INF)
        vmax, total = _lse_tile(t3.to(tl.float32), vmax, total)
        t3 = tl.load(row_ptr + idx + 3 * BLOCK, mask=idx + 3 * BLOCK < V, other=NEG_INF)
    m = tl.max(vmax, axis=0)
    safe_m = tl.where(m > NEG_INF, m, 0.0)
    lane = tl.where(vmax > NEG_INF, vmax, 0.0)
    tl.store(out_ptr + row, safe_m + tl.log(tl.sum(total * tl.exp(lane - safe_m), axis=0)))


def row_logsumexp(x: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """[B] fp32 logsumexp of each row of x [B, V] (any float dtype) in one online pass."""
    assert x.dim() == 2 and x.stride(1) == 1, "rows of contiguous logits"
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    _logsumexp_kernel[(x.shape[0],)](x, x.stride(0), x.shape[1], out, BLOCK=block, num_warps=8)
    return out
