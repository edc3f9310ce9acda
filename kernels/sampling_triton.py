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

NEG_INF = tl.constexpr(float("-inf"))
POS_INF = tl.constexpr(float("inf"))


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
def _pivot_pass(
    src_ptr,
    n,
    scale,
    m,
    lo,
    hi_x,
    piv,
    buf_ptr,
    write,
    BLOCK: tl.constexpr,
    NPIV: tl.constexpr,
    WITH_MASS: tl.constexpr,
):
    """Over src[:n] * scale: counts [NPIV] of s >= piv; with WITH_MASS the masses
    sum(exp(s - m)) over s >= piv and over s >= lo. With write != 0 it also copies the values in
    [lo, hi_x) to buf, in order, and returns how many it wrote.

    Partial sums stay per lane ([NPIV, SUB] registers) and are reduced across threads once at
    the end: a cross-thread reduction per chunk would cost more than the comparisons."""
    SUB: tl.constexpr = BLOCK // 4
    offs = tl.arange(0, SUB)
    cnt = tl.zeros([NPIV, SUB], tl.float32)
    mass = tl.zeros([NPIV, SUB], tl.float32)
    mass_lo = tl.zeros([SUB], tl.float32)
    written = tl.full([], 0, tl.int32)
    for start in range(0, n, BLOCK):
        for part in tl.static_range(4):
            idx = start + part * SUB + offs
            s = tl.load(src_ptr + idx, mask=idx < n, other=NEG_INF).to(tl.float32) * scale
            ge = s[None, :] >= piv[:, None]  # [NPIV, SUB]
            cnt += ge.to(tl.float32)
            if WITH_MASS:
                w = tl.exp(s - m)
                mass += tl.where(ge, w[None, :], 0.0)
                mass_lo += tl.where(s >= lo, w, 0.0)
            if write != 0:
                inside = (s >= lo) & (s < hi_x)
                pos = written + tl.cumsum(inside.to(tl.int32), axis=0) - 1
                tl.store(buf_ptr + pos, s, mask=inside)
                written += tl.sum(inside.to(tl.int32), axis=0)
    return tl.sum(cnt, axis=1), tl.sum(mass, axis=1), tl.sum(mass_lo, axis=0), written


@triton.jit
def _search(
    row_ptr,
    buf_ptr,
    V,
    inv_t,
    m,
    lo,
    c_lo,
    goal,
    copied,
    n_buf,
    BLOCK: tl.constexpr,
    NPIV: tl.constexpr,
    IS_MASS: tl.constexpr,
    MAX_PASSES: tl.constexpr,
):
    """Largest lo (a data value or just below one) with F(lo) >= target, F = count or mass of
    s >= v. target = goal (a count) or goal * F(lo at entry) (a fraction of the mass).

    Once at most half the row is left, the next full pass copies the values that matter to buf:
    all s >= lo for counts (so a top-p search after top-k reuses them: copied, n_buf in and out),
    the bracket [lo, hi) for masses. Later passes read only buf and add the count / mass above
    what was copied (base_*). Returns lo, F_count(lo), copied, n_buf."""
    i = tl.arange(0, NPIV).to(tl.float32)
    zero = c_lo * 0.0
    hi = m
    c_hi = zero  # count of s >= hi; the first pass tests hi = m itself, so nothing is above
    m_hi = zero  # mass of s >= hi
    base_c = zero
    base_m = zero
    target = goal * 1.0
    first = tl.full([], 1, tl.int32)
    moving = tl.full([], 1, tl.int32)
    passes = tl.full([], 0, tl.int32)
    while (c_lo - c_hi > 1.5) & (moving != 0) & (passes < MAX_PASSES):
        denom = NPIV + 1 - first
        piv = lo + (hi - lo) * ((i + 1.0) / denom)
        piv = tl.where((i == NPIV - 1) & (first != 0), hi, piv)
        if copied != 0:
            cnt, mass, mass_lo, n_new = _pivot_pass(
                buf_ptr,
                n_buf,
                inv_t * 0.0 + 1.0,
                m,
                lo,
                hi,
                piv,
                buf_ptr,
                0,
                BLOCK,
                NPIV,
                IS_MASS,
            )
            cnt += base_c
            mass += base_m
        else:
            write = (c_lo - c_hi <= 0.5 * V).to(tl.int32)
            if IS_MASS:
                hi_x = tl.where(first != 0, POS_INF, hi)
            else:
                hi_x = hi * 0.0 + POS_INF
            cnt, mass, mass_lo, n_new = _pivot_pass(
                row_ptr, V, inv_t, m, lo, hi_x, piv, buf_ptr, write, BLOCK, NPIV, IS_MASS
            )
            if write != 0:
                copied = write
                n_buf = n_new
                base_c = tl.where(hi_x < POS_INF, c_hi, 0.0)
                base_m = tl.where(hi_x < POS_INF, m_hi, 0.0)
        if IS_MASS:
            metric = mass
            # the first pass also weighs the whole entry set (the top-k set): target = p * Z_k
            target = tl.where(first != 0, goal * mass_lo, target)
        else:
            metric = cnt
        feasible = metric >= target
        new_lo = tl.max(tl.where(feasible, piv, lo), axis=0)
        new_hi = tl.min(tl.where(feasible, hi, piv), axis=0)
        moving = ((new_lo != lo) | (new_hi != hi)).to(tl.int32)
        c_lo = tl.min(tl.where(feasible, cnt, c_lo), axis=0)
        c_hi = tl.max(tl.where(feasible, c_hi, cnt), axis=0)
        m_hi = tl.max(tl.where(feasible, m_hi, mass), axis=0)
        lo = new_lo
        hi = new_hi
        first = 0
        passes += 1
    return lo, c_lo, copied, n_buf


@triton.jit
def _draw_kept(row_ptr, V, inv_t, key, tau, BLOCK: tl.constexpr, FAST_LOG: tl.constexpr):
    """argmax over s >= tau of s + Gumbel noise (first index among equal keys)."""
    offs = tl.arange(0, BLOCK)
    best = tl.full([BLOCK], NEG_INF, tl.float32)
    best_i = offs
    for start in range(0, V, BLOCK):
        idx = start + offs
        s = tl.load(row_ptr + idx, mask=idx < V, other=NEG_INF).to(tl.float32) * inv_t
        if tl.max(s, axis=0) >= tau:  # most chunks hold no kept token under a small top-k
            k = tl.where((idx < V) & (s >= tau), s + _gumbel(key, idx, FAST_LOG), NEG_INF)
            upd = k > best
            best = tl.where(upd, k, best)
            best_i = tl.where(upd, idx, best_i)
    top = tl.max(best, axis=0)
    return tl.min(tl.where(best == top, best_i, V), axis=0)


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
    k_row = tl.load(top_k_ptr + row).to(tl.float32)  # V where top-k is off
    # Under a top-k the unfiltered winner is almost never kept: draw only in the last pass.
    noisy_a = sampled & (k_row >= V)
    key = tl.load(key_ptr + row).to(tl.uint32)
    offs = tl.arange(0, BLOCK)
    # pass A, per lane: max, min of finite values, finite count, best key (s + noise) and where
    vmax = tl.full([BLOCK], NEG_INF, tl.float32)
    vmin = tl.full([BLOCK], POS_INF, tl.float32)
    nfin = tl.zeros([BLOCK], tl.int32)
    best = tl.full([BLOCK], NEG_INF, tl.float32)
    best_i = offs
    best_s = tl.full([BLOCK], NEG_INF, tl.float32)
    for start in range(0, V, BLOCK):
        idx = start + offs
        inb = idx < V
        s = tl.load(row_ptr + idx, mask=inb, other=NEG_INF).to(tl.float32) * inv_t
        fin = s > NEG_INF
        vmax = tl.maximum(vmax, s)
        vmin = tl.minimum(vmin, tl.where(fin, s, POS_INF))
        nfin += fin.to(tl.int32)
        k = s
        if noisy_a:
            k = s + _gumbel(key, idx, FAST_LOG)
        k = tl.where(inb, k, NEG_INF)
        upd = k > best
        best = tl.where(upd, k, best)
        best_i = tl.where(upd, idx, best_i)
        best_s = tl.where(upd, s, best_s)
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
            tau_k, c_k, copied, n_buf = _search(
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
                NPIV,
                False,
                MAX_PASSES,
            )
            tau = tau_k
    if HAS_TOP_P:
        p_row = tl.load(top_p_ptr + row)
        if sampled & (p_row < 1.0):
            tau_p, c_p, copied, n_buf = _search(
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
        token = _draw_kept(row_ptr, V, inv_t, key, tau, BLOCK, FAST_LOG)
    tl.store(out_ptr + row, tl.minimum(token, V - 1).to(tl.int64))
    tl.store(tau_ptr + row, tau)


def draw_triton(
    work: torch.Tensor,
    batch: SamplingBatch,
    block: int = 1024,
    num_pivots: int = 8,
    num_warps: int = 8,
    thresholds: torch.Tensor | None = None,
    fast_log: bool | None = None,
) -> torch.Tensor:
    """[B] int64 tokens from processed logits work [B, V] (fp32, bf16 or fp16, read as fp32); as
    sampling.draw_reference (up to float summation order at a top-p boundary).

    thresholds, if given ([B] fp32), receives each sampled row's tau: it keeps s >= tau.
    fast_log (default: on, except under TRITON_INTERPRET, which lacks it) takes the noise's logs
    with lg2.approx; the draws then differ from the reference only where two keys tie to ~1e-6.
    """
    if fast_log is None:
        fast_log = os.environ.get("TRITON_INTERPRET") != "1"
    assert work.dtype in (torch.float32, torch.bfloat16, torch.float16), work.dtype
    assert work.dim() == 2 and work.stride(1) == 1, "rows of contiguous logits"
    rows, vocab = work.shape
    out = torch.empty(rows, dtype=torch.int64, device=work.device)
    if thresholds is None:
        thresholds = torch.empty(rows, dtype=torch.float32, device=work.device)
    searching = batch.any_top_k or batch.any_top_p
    scratch = torch.empty(rows * vocab if searching else 1, dtype=torch.float32, device=work.device)
    _sample_kernel[(rows,)](
        work,
        work.stride(0),
        vocab,
        batch.inv_temperature,
        batch.greedy,
        batch.top_k,
        batch.top_p,
        batch.min_p,
        batch.row_keys,
        out,
        thresholds,
        scratch,
        BLOCK=block,
        NPIV=num_pivots,
        HAS_TOP_K=batch.any_top_k,
        HAS_TOP_P=batch.any_top_p,
        HAS_MIN_P=batch.any_min_p,
        MAX_PASSES=32,
        FAST_LOG=fast_log,
        num_warps=num_warps,
    )
    return out


@triton.jit
def _logsumexp_kernel(x_ptr, stride, V, out_ptr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    row_ptr = x_ptr + row.to(tl.int64) * stride
    offs = tl.arange(0, BLOCK)
    vmax = tl.full([BLOCK], NEG_INF, tl.float32)
    total = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        idx = start + offs
        x = tl.load(row_ptr + idx, mask=idx < V, other=NEG_INF).to(tl.float32)
        new_max = tl.maximum(vmax, x)
        safe = tl.where(new_max > NEG_INF, new_max, 0.0)  # lanes that saw only -inf so far
        total = total * tl.exp(vmax - safe) + tl.exp(x - safe)
        vmax = new_max
    m = tl.max(vmax, axis=0)
    safe_m = tl.where(m > NEG_INF, m, 0.0)
    lane = tl.where(vmax > NEG_INF, vmax, 0.0)
    tl.store(out_ptr + row, safe_m + tl.log(tl.sum(total * tl.exp(lane - safe_m), axis=0)))


def row_logsumexp(x: torch.Tensor, block: int = 2048) -> torch.Tensor:
    """[B] fp32 logsumexp of each row of x [B, V] (any float dtype) in one online pass."""
    assert x.dim() == 2 and x.stride(1) == 1, "rows of contiguous logits"
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    _logsumexp_kernel[(x.shape[0],)](x, x.stride(0), x.shape[1], out, BLOCK=block, num_warps=8)
    return out
