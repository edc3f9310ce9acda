"""Triton sampler: the thresholds of sampling.filter_thresholds without sorting the vocabulary.

One program per row streams the row a few times. Pass A: max, min, the unfiltered Gumbel-max
candidate. Then a multi-pivot search for the top-k value (counts) and the top-p crossing (mass):
each pass counts (and weighs) the row at NPIV pivots between a feasible `lo` and an infeasible
`hi` and keeps the sub-bracket; it stops when one element (or one float) is left, so
`s >= lo` is the exact kept set. Last, the candidate is kept if it passes the threshold (it is then
also the argmax over the kept set), else one more pass draws over the kept set.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from yaie.kernels.sampling_params import SamplingBatch
from yaie.kernels.sampling_search import NEG_INF, POS_INF, threshold_search, tile_offsets


@triton.jit
def _mix32(x):
    # lowbias32 on uint32 (multiplies wrap mod 2^32), same as sampling_params.mix32
    x = x ^ (x >> 16)
    x = x * 0x21F0AAAD
    x = x ^ (x >> 15)
    x = x * 0x735A2D97
    return x ^ (x >> 15)


@triton.jit
def _gumbel(key, idx, FAST_LOG: tl.constexpr):
    bits = _mix32(_mix32(idx.to(tl.uint32)) ^ key) >> 9
    u = (bits.to(tl.float32) + 0.5) * (1.0 / 8388608.0)
    if FAST_LOG:  # lg2.approx: ~2^-22 relative error, a third of the instructions of logf
        return -libdevice.fast_logf(-libdevice.fast_logf(u))
    else:
        return -tl.log(-tl.log(u))


@triton.jit
def _draw_tile(s, idx, V, key, tau, best, best_i, FAST_LOG: tl.constexpr):
    if tl.max(tl.max(s, axis=1), axis=0) >= tau:  # most tiles hold no kept token under top-k
        k = tl.where((idx < V) & (s >= tau), s + _gumbel(key, idx, FAST_LOG), NEG_INF)
        best, best_i, _ = _merge_best(k, s, idx, best, best_i, best, V)
    return best, best_i


@triton.jit
def _draw_kept(
    row_ptr, V, inv_t, key, tau, BLOCK: tl.constexpr, ROWS: tl.constexpr, FAST_LOG: tl.constexpr
):
    """argmax over s >= tau of s + Gumbel noise (first index among equal keys)."""
    offs = tile_offsets(BLOCK, ROWS)
    T: tl.constexpr = ROWS * BLOCK
    best = tl.full([BLOCK], NEG_INF, tl.float32)
    best_i = tl.arange(0, BLOCK)
    t0 = tl.load(row_ptr + offs, mask=offs < V, other=NEG_INF)
    t1 = tl.load(row_ptr + T + offs, mask=T + offs < V, other=NEG_INF)
    t2 = tl.load(row_ptr + 2 * T + offs, mask=2 * T + offs < V, other=NEG_INF)
    t3 = tl.load(row_ptr + 3 * T + offs, mask=3 * T + offs < V, other=NEG_INF)
    for start in range(4 * T, V + 4 * T, 4 * T):  # four tiles in flight, as in sampling_search
        idx = start - 4 * T + offs
        s = t0.to(tl.float32) * inv_t
        t0 = tl.load(row_ptr + idx + 4 * T, mask=idx + 4 * T < V, other=NEG_INF)
        best, best_i = _draw_tile(s, idx, V, key, tau, best, best_i, FAST_LOG)
        s = t1.to(tl.float32) * inv_t
        t1 = tl.load(row_ptr + idx + 5 * T, mask=idx + 5 * T < V, other=NEG_INF)
        best, best_i = _draw_tile(s, idx + T, V, key, tau, best, best_i, FAST_LOG)
        s = t2.to(tl.float32) * inv_t
        t2 = tl.load(row_ptr + idx + 6 * T, mask=idx + 6 * T < V, other=NEG_INF)
        best, best_i = _draw_tile(s, idx + 2 * T, V, key, tau, best, best_i, FAST_LOG)
        s = t3.to(tl.float32) * inv_t
        t3 = tl.load(row_ptr + idx + 7 * T, mask=idx + 7 * T < V, other=NEG_INF)
        best, best_i = _draw_tile(s, idx + 3 * T, V, key, tau, best, best_i, FAST_LOG)
    top = tl.max(best, axis=0)
    return tl.min(tl.where(best == top, best_i, V), axis=0)


@triton.jit
def _scan_tile(
    s, idx, V, key, noisy, vmax, vmin, nfin, best, best_i, best_s, FAST_LOG: tl.constexpr
):
    """Pass A on one tile: per-lane max, min of finite values, finite count, best key."""
    fin = s > NEG_INF
    vmax = tl.maximum(vmax, tl.max(s, axis=0))
    vmin = tl.minimum(vmin, tl.min(tl.where(fin, s, POS_INF), axis=0))
    nfin += tl.sum(fin.to(tl.int32), axis=0)
    k = s
    if noisy:
        k = s + _gumbel(key, idx, FAST_LOG)
    k = tl.where(idx < V, k, NEG_INF)
    best, best_i, best_s = _merge_best(k, s, idx, best, best_i, best_s, V)
    return vmax, vmin, nfin, best, best_i, best_s


@triton.jit
def _merge_best(k, s, idx, best, best_i, best_s, V):
    """Per lane (column) of a [ROWS, BLOCK] tile: keep the larger key, the earlier index on ties
    (tiles come in index order and rows of a column increase), and s at that index."""
    k_max = tl.max(k, axis=0)
    k_idx = tl.min(tl.where(k == k_max[None, :], idx, V), axis=0)
    k_s = tl.max(tl.where(idx == k_idx[None, :], s, NEG_INF), axis=0)
    upd = k_max > best
    return tl.where(upd, k_max, best), tl.where(upd, k_idx, best_i), tl.where(upd, k_s, best_s)


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
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    NPIV: tl.constexpr,
    HAS_TOP_K: tl.constexpr,
    HAS_TOP_P: tl.constexpr,
    HAS_MIN_P: tl.constexpr,
    MAX_PASSES: tl.constexpr,
    FAST_LOG: tl.constexpr,
):
    row = tl.program_id(0)
    row_ptr = s_ptr + row.to(tl.int64) * stride
    buf_ptr = buf_base + row.to(tl.int64) * V  # this row's scratch: the bracket's values
    inv_t = tl.load(inv_t_ptr + row)
    sampled = tl.load(greedy_ptr + row).to(tl.int32) == 0
    k_row = tl.load(top_k_ptr + row).to(tl.float32)  # 2^31 - 1 where top-k is off
    # Under a top-k the unfiltered winner is almost never kept: draw only in the last pass.
    noisy_a = sampled & (k_row >= V)
    key = tl.load(key_ptr + row).to(tl.uint32)
    offs = tile_offsets(BLOCK, ROWS)
    T: tl.constexpr = ROWS * BLOCK
    # pass A, per lane: max, min of finite values, finite count, best key (s + noise) and where
    vmax = tl.full([BLOCK], NEG_INF, tl.float32)
    vmin = tl.full([BLOCK], POS_INF, tl.float32)
    nfin = tl.zeros([BLOCK], tl.int32)
    best = tl.full([BLOCK], NEG_INF, tl.float32)
    best_i = tl.arange(0, BLOCK)
    best_s = tl.full([BLOCK], NEG_INF, tl.float32)
    t0 = tl.load(row_ptr + offs, mask=offs < V, other=NEG_INF)
    t1 = tl.load(row_ptr + T + offs, mask=T + offs < V, other=NEG_INF)
    t2 = tl.load(row_ptr + 2 * T + offs, mask=2 * T + offs < V, other=NEG_INF)
    t3 = tl.load(row_ptr + 3 * T + offs, mask=3 * T + offs < V, other=NEG_INF)
    for start in range(4 * T, V + 4 * T, 4 * T):  # four tiles in flight, as in sampling_search
        idx = start - 4 * T + offs
        s = t0.to(tl.float32) * inv_t
        t0 = tl.load(row_ptr + idx + 4 * T, mask=idx + 4 * T < V, other=NEG_INF)
        vmax, vmin, nfin, best, best_i, best_s = _scan_tile(
            s, idx, V, key, noisy_a, vmax, vmin, nfin, best, best_i, best_s, FAST_LOG
        )
        s = t1.to(tl.float32) * inv_t
        t1 = tl.load(row_ptr + idx + 5 * T, mask=idx + 5 * T < V, other=NEG_INF)
        vmax, vmin, nfin, best, best_i, best_s = _scan_tile(
            s, idx + T, V, key, noisy_a, vmax, vmin, nfin, best, best_i, best_s, FAST_LOG
        )
        s = t2.to(tl.float32) * inv_t
        t2 = tl.load(row_ptr + idx + 6 * T, mask=idx + 6 * T < V, other=NEG_INF)
        vmax, vmin, nfin, best, best_i, best_s = _scan_tile(
            s, idx + 2 * T, V, key, noisy_a, vmax, vmin, nfin, best, best_i, best_s, FAST_LOG
        )
        s = t3.to(tl.float32) * inv_t
        t3 = tl.load(row_ptr + idx + 7 * T, mask=idx + 7 * T < V, other=NEG_INF)
        vmax, vmin, nfin, best, best_i, best_s = _scan_tile(
            s, idx + 3 * T, V, key, noisy_a, vmax, vmin, nfin, best, best_i, best_s, FAST_LOG
        )
    m = tl.max(vmax, axis=0)
    m = tl.where(m > NEG_INF, m, 0.0)  # an all -inf row: keep exp() finite
    top = tl.max(best, axis=0)
    cand = tl.min(tl.where(best == top, best_i, V), axis=0)
    cand_s = tl.max(tl.where(best_i == cand, best_s, NEG_INF), axis=0)
    tau_k = tl.min(vmin, axis=0)  # top-k off: everything finite is kept
    c_k = tl.sum(nfin, axis=0).to(tl.float32)
    tau = tau_k
    copied = tl.full([], 0, tl.int32)  # whether buf holds every s >= tau_k (from the top-k search)
    n_buf = tl.full([], 0, tl.int32)
    if HAS_TOP_K:
        if sampled & (k_row < c_k):
            tau_k, c_k, copied, n_buf = threshold_search(
                row_ptr,
                buf_ptr,
                V,
                inv_t,
                m,
                tau_k,
                c_k,
                k_row,
                copied,
                n_buf,
                BLOCK,
                ROWS,
                NPIV,
                False,
                MAX_PASSES,
            )
            tau = tau_k
    if HAS_TOP_P:
        p_row = tl.load(top_p_ptr + row)
        if sampled & (p_row < 1.0):
            tau_p, c_p, copied, n_buf = threshold_search(
                row_ptr,
                buf_ptr,
                V,
                inv_t,
                m,
                tau_k,
                c_k,
                p_row,
                copied,
                n_buf,
                BLOCK,
                ROWS,
                NPIV,
                True,
                MAX_PASSES,
            )
            tau = tl.maximum(tau, tau_p)
    if HAS_MIN_P:
        tau = tl.maximum(tau, tl.max(vmax, axis=0) + tl.log(tl.load(min_p_ptr + row)))
    token = cand
    if sampled & ((cand_s < tau) | (noisy_a == 0)):
        # no draw yet, or the unfiltered winner was cut; a kept winner also wins the kept set
        token = _draw_kept(row_ptr, V, inv_t, key, tau, BLOCK, ROWS, FAST_LOG)
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
) -> torch.Tensor:
    """[B] int64 tokens from processed logits work [B, V] (fp32, bf16 or fp16, read as fp32); as
    sampling.draw_reference (up to float summation order at a top-p boundary).

    Each loop reads [rows_per_tile, block] tiles; num_pivots is the search's fan-out per pass;
    max_registers (per thread) keeps two programs of 8 warps on an SM (65,536 registers).
    thresholds, if given ([B] fp32), receives each sampled row's tau: it keeps s >= tau.
    fast_log (default: on, except under TRITON_INTERPRET, which lacks it) takes the noise's logs
    with lg2.approx; the draws then differ from the reference only where two keys tie to ~1e-6.
    """
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    fast_log = not interpreted if fast_log is None else fast_log
    options = {"maxnreg": max_registers} if max_registers and not interpreted else {}
    assert work.dtype in (torch.float32, torch.bfloat16, torch.float16), work.dtype
    assert work.dim() == 2 and work.stride(1) == 1, "rows of contiguous logits"
    rows, vocab = work.shape
    out = torch.empty(rows, dtype=torch.int64, device=work.device)
    if thresholds is None:
        thresholds = torch.empty(rows, dtype=torch.float32, device=work.device)
    searching = batch.any_top_k or batch.any_top_p
    scratch = torch.empty(rows * vocab if searching else 1, dtype=torch.float32, device=work.device)
    args = (work, work.stride(0), vocab, batch.inv_temperature, batch.greedy, batch.top_k)
    args += (batch.top_p, batch.min_p, batch.row_keys, out, thresholds, scratch)
    meta = dict(BLOCK=block, ROWS=rows_per_tile, NPIV=num_pivots, HAS_TOP_K=batch.any_top_k)
    meta.update(HAS_TOP_P=batch.any_top_p, HAS_MIN_P=batch.any_min_p, MAX_PASSES=32)
    meta.update(FAST_LOG=fast_log, num_warps=num_warps)
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
