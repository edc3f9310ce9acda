"""Triton sampler: the thresholds of reference.filter_thresholds without sorting the vocabulary.

One program per row streams the row a few times. Pass A: max, min, the unfiltered Gumbel-max
candidate; for top-p without top-k also the first pass of its search, at pivots estimated from a
2,048-token sample taken before it. A top-k filter (k <= BLOCK) starts from a bound read off the
per-lane maxima: one pass copies every s >= bound with its token id, and the search and the draw
read only that copy. Otherwise a multi-pivot search: each pass counts (and weighs) the row at
NPIV pivots between a feasible `lo` and an infeasible `hi` and keeps the sub-bracket; once the
bracket is small it is copied (for top-p with the best noisy key above it), later passes read the
copy; it stops when one element, one value or one float is left, so `s >= lo` is the exact kept
set. Last, the candidate is kept if it passes the threshold (it is then also the argmax over the
kept set), else the draw comes from the copy (and the key above it), or from one more row pass.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from yaie.kernels.sampling.batch import SamplingBatch
from yaie.kernels.sampling.triton_draw import (
    draw_copy,
    draw_kept,
    lane_bound,
    sample_pivots,
    scan_pass,
)
from yaie.kernels.sampling.triton_search import (
    NEG_INF,
    POS_INF,
    better,
    copy_pass,
    threshold_search,
)


@triton.jit
def _now():
    return tl.inline_asm_elementwise(
        "mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1
    )


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
    prof_ptr,
    buf_base,
    ibuf_base,
    cap,
    min_recopy,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    NPIV: tl.constexpr,
    HAS_TOP_K: tl.constexpr,
    HAS_TOP_P: tl.constexpr,
    HAS_MIN_P: tl.constexpr,
    MAX_PASSES: tl.constexpr,
    FAST_LOG: tl.constexpr,
    BOUNDS: tl.constexpr,
    MASS_BOUND: tl.constexpr,
    COMPACT: tl.constexpr,
    SAMPLE: tl.constexpr,
    FUSE: tl.constexpr,
    PROFILE: tl.constexpr,
):
    row = tl.program_id(0)
    prof_ptr += row * 8  # PROFILE: [B, 8] int64 timestamps (ns) and pass counts, see draw_triton
    if PROFILE:
        tl.store(prof_ptr, _now())
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
    piv0 = tl.zeros([NPIV], tl.float32)
    tally = noisy_a & (noisy_a == 0)  # top-p without top-k: its first pass fused into pass A
    if SAMPLE and FUSE and HAS_TOP_P:
        if noisy_a & (p_row < 1.0):
            piv0, tally = sample_pivots(row_ptr, V, inv_t, POS_INF, NEG_INF, p_row, NPIV, 2048, 64)
            need_z = need_z | tally
    vmax, vmin, nfin, best, best_i, best_s, zl, ref, cnt0, mass0 = scan_pass(
        row_ptr, V, inv_t, key, noisy_a, need_z, tally, piv0, BLOCK, ROWS, NPIV, FAST_LOG
    )
    if PROFILE:
        tl.store(prof_ptr + 1, _now())
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
            n, _, _ = copy_pass(
                row_ptr, V, inv_t, x, POS_INF, buf_ptr, ibuf_ptr, cap, key, 0, BLOCK, ROWS,
                FAST_LOG,
            )  # fmt: skip
            if n <= cap:
                copied, n_buf, full_lo, lo, c_lo = n * 0 + 1, n, x, x, n.to(tl.float32)
    nz_top, nzk, nzi = m * 0.0 + POS_INF, m * 0.0 + NEG_INF, cand  # see threshold_search
    need_from = tl.where(noisy_a, cand_s, POS_INF)  # the unfiltered winner's s, if drawn
    passes = tl.full([], 0, tl.int32)
    if PROFILE:
        tl.store(prof_ptr + 2, _now())
    if HAS_TOP_K:
        if sampled & (k_row < c_k):
            tau_k, c_k, copied, n_buf, full_lo, nz_top, nzk, nzi, passes = threshold_search(
                row_ptr, buf_ptr, ibuf_ptr, cap, V, inv_t, m, lo, c_lo, k_row, 0.0, copied,
                n_buf, full_lo, piv0, 0, key, need_from, 0, cnt0, mass0, m, min_recopy, BLOCK,
                ROWS, NPIV, False, MAX_PASSES, COMPACT, FAST_LOG,
            )  # fmt: skip
            tau = tau_k
            lo, c_lo = tau_k, c_k
    if PROFILE:
        tl.store(prof_ptr + 3, _now())
        tl.store(prof_ptr + 4, _now())  # rows with a top-p search overwrite it
    if HAS_TOP_P:
        if sampled & (p_row < 1.0):
            use0 = tl.full([], 0, tl.int32)
            pre = use0
            z = tl.sum(zl, axis=0) * tl.exp(ref - m)  # sum exp(s - m), if need_z
            mass0 = mass0 * tl.exp(ref - m)
            if tally & (copied == 0):  # the first pass was fused into pass A (pivots: piv0)
                i = tl.arange(0, NPIV)
                top_ok = tl.sum(tl.where(i == NPIV - 2, mass0, 0.0), axis=0) < p_row * z
                # its last pivot was +inf; if the one below is feasible, or the masses overflowed,
                # a normal first pass (same pivots, last = m) runs instead
                pre = (top_ok & (z > 0.0) & (z < POS_INF)).to(tl.int32)
                piv0 = tl.where(i == NPIV - 1, tl.where(pre != 0, POS_INF, m), piv0)
                use0 = pre * 0 + 1
            elif SAMPLE:  # a search over the row: first pivots estimated from a sample of it
                if copied == 0:
                    piv0, ok = sample_pivots(row_ptr, V, inv_t, m, lo, p_row, NPIV, 2048, 64)
                    use0 = ok.to(tl.int32)
            if PROFILE:
                tl.store(prof_ptr + 4, _now())
            # target: p * Z when starting from a mass bound, else 0: p * mass(s >= lo), found
            # by the search's first pass (the top-k set)
            target = tl.where(copied != 0, target, 0.0)
            tau_p, c_p, copied, n_buf, full_lo, nz_top, nzk, nzi, passes_p = threshold_search(
                row_ptr, buf_ptr, ibuf_ptr, cap, V, inv_t, m, lo, c_lo, p_row, target, copied,
                n_buf, full_lo, piv0, use0, key, need_from, pre, cnt0, mass0, z, min_recopy,
                BLOCK, ROWS, NPIV, True, MAX_PASSES, COMPACT, FAST_LOG,
            )  # fmt: skip
            tau = tl.maximum(tau, tau_p)
            passes += 1000 * passes_p
    if PROFILE:
        tl.store(prof_ptr + 5, _now())
    if HAS_MIN_P:
        tau = tl.maximum(tau, tl.max(vmax, axis=0) + tl.log(tl.load(min_p_ptr + row)))
    token = cand
    if sampled & ((cand_s < tau) | (noisy_a == 0)):
        # no draw yet, or the unfiltered winner was cut; a kept winner also wins the kept set
        if (copied != 0) & (tau >= full_lo):  # the copy holds every kept token
            _, token = draw_copy(buf_ptr, ibuf_ptr, n_buf, key, tau, BLOCK, FAST_LOG)
        elif (copied != 0) & (nz_top < POS_INF) & (tau <= nz_top):  # it holds [tau, nz_top)
            ck, ci = draw_copy(buf_ptr, ibuf_ptr, n_buf, key, tau, BLOCK, FAST_LOG)
            token = tl.where(better(nzk, nzi, ck, ci), nzi, ci)
        else:
            token = draw_kept(row_ptr, V, inv_t, key, tau, BLOCK, ROWS, FAST_LOG)
    tl.store(out_ptr + row, tl.minimum(token, V - 1).to(tl.int64))
    tl.store(tau_ptr + row, tau)
    if PROFILE:
        tl.store(prof_ptr + 6, _now())
        tl.store(prof_ptr + 7, passes.to(tl.int64))


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
    bounds: bool = True,
    mass_bound: bool = False,
    compact: bool = True,
    sample_pivots: bool = True,
    fuse: bool = True,
    min_recopy: int = 0,
    profile: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B] int64 tokens from processed logits work [B, V] (fp32, bf16 or fp16, read as fp32); as
    reference.draw_reference (up to float summation order at a top-p boundary).

    Each loop reads [rows_per_tile, block] tiles, 4 of them in flight; num_pivots (>= 3) is the
    search's fan-out per pass; max_registers (per thread) keeps two programs of 8 warps on an SM
    (65,536 registers); bounds: start top-k from the lane-maxima bound; mass_bound: top-p too
    (it costs an exp per token in pass A, and gains only when a few tokens hold the mass);
    compact: shrink the search's copy in place as its bracket shrinks to a quarter of it, if it
    holds more than min_recopy values; sample_pivots: a top-p
    search over the row takes its first pivots from a 2,048-token sample of it (its first pass
    then leaves a bracket of a few % of the row, not ~40%); fuse: with sample_pivots, a top-p
    search without top-k samples before pass A and its first pass is fused into pass A. See
    benchmarks/NOTES.md, Sampling.
    thresholds, if given ([B] fp32), receives each sampled row's tau: it keeps s >= tau.
    fast_log (default: on, except under TRITON_INTERPRET, which lacks it) takes the noise's logs
    with lg2.approx; the draws then differ from the reference only where two keys tie to ~1e-6.
    profile (CUDA only), if given ([B, 8] int64), receives per row the global timer (ns) at the
    start, after pass A, before the searches, after top-k, after the sample, after top-p and at
    the end, and 1000 * (top-p passes) + (top-k passes).
    """
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    fast_log = not interpreted if fast_log is None else fast_log
    options = {"maxnreg": max_registers} if max_registers and not interpreted else {}
    assert work.dtype in (torch.float32, torch.bfloat16, torch.float16), work.dtype
    assert work.dim() == 2 and work.stride(1) == 1, "rows of contiguous logits"
    assert num_pivots >= 3, num_pivots
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
    prof = thresholds if profile is None else profile
    args += (batch.top_p, batch.min_p, batch.row_keys, out, thresholds, prof, scratch, ids, cap)
    args += (min_recopy,)
    meta = dict(BLOCK=block, ROWS=rows_per_tile, NPIV=num_pivots, HAS_TOP_K=batch.any_top_k)
    meta.update(HAS_TOP_P=batch.any_top_p, HAS_MIN_P=batch.any_min_p, MAX_PASSES=32)
    meta.update(FAST_LOG=fast_log, BOUNDS=bounds, MASS_BOUND=mass_bound, COMPACT=compact)
    meta.update(SAMPLE=sample_pivots, FUSE=fuse, PROFILE=profile is not None)
    meta.update(num_warps=num_warps)
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
