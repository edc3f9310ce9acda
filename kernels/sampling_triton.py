"""Triton sampler: the thresholds of sampling.filter_thresholds without sorting the vocabulary.

One program per row streams the row a few times. Pass A: max, min, the unfiltered Gumbel-max
candidate. Then a multi-pivot search for the top-k value (counts) and the top-p crossing (mass):
each pass counts (and weighs) the row at NPIV pivots between a feasible `lo` and an infeasible
`hi` and keeps the sub-bracket; it stops when one element (or one float) is left, so
`s >= lo` is the exact kept set. Last, the candidate is kept if it passes the threshold (it is then
also the argmax over the kept set), else one more pass draws over the kept set.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

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
def _gumbel(key, idx):
    bits = _mix32(_mix32(idx.to(tl.uint32)) ^ key) >> 9
    u = (bits.to(tl.float32) + 0.5) * (1.0 / 8388608.0)
    return -tl.log(-tl.log(u))


@triton.jit
def _pivot_pass(
    row_ptr, V, inv_t, m, lo, piv, BLOCK: tl.constexpr, NPIV: tl.constexpr, WITH_MASS: tl.constexpr
):
    """Counts [NPIV] of s >= piv; with WITH_MASS the masses sum(exp(s - m)) over s >= piv and
    over s >= lo."""
    offs = tl.arange(0, BLOCK)
    cnt = tl.zeros([NPIV], tl.float32)
    mass = tl.zeros([NPIV], tl.float32)
    mass_lo = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        idx = start + offs
        s = tl.load(row_ptr + idx, mask=idx < V, other=NEG_INF).to(tl.float32) * inv_t
        ge = s[None, :] >= piv[:, None]  # [NPIV, BLOCK]
        cnt += tl.sum(ge.to(tl.float32), axis=1)
        if WITH_MASS:
            w = tl.exp(s - m)
            mass += tl.sum(tl.where(ge, w[None, :], 0.0), axis=1)
            mass_lo += tl.where(s >= lo, w, 0.0)
    return cnt, mass, tl.sum(mass_lo, axis=0)


@triton.jit
def _search(
    row_ptr,
    V,
    inv_t,
    m,
    lo,
    c_lo,
    goal,
    BLOCK: tl.constexpr,
    NPIV: tl.constexpr,
    IS_MASS: tl.constexpr,
    MAX_PASSES: tl.constexpr,
):
    """Largest lo (a data value or just below one) with F(lo) >= target, F = count or mass of
    s >= v. target = goal (a count) or goal * F(lo at entry) (a fraction of the mass)."""
    i = tl.arange(0, NPIV).to(tl.float32)
    hi = m
    c_hi = c_lo * 0.0  # count above hi; the first pass tests hi = m itself
    target = goal * 1.0
    first = tl.full([], 1, tl.int32)
    moving = tl.full([], 1, tl.int32)
    passes = tl.full([], 0, tl.int32)
    while (c_lo - c_hi > 1.5) & (moving != 0) & (passes < MAX_PASSES):
        denom = NPIV + 1 - first
        piv = lo + (hi - lo) * ((i + 1.0) / denom)
        piv = tl.where((i == NPIV - 1) & (first != 0), hi, piv)
        cnt, mass, mass_lo = _pivot_pass(row_ptr, V, inv_t, m, lo, piv, BLOCK, NPIV, IS_MASS)
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
        lo = new_lo
        hi = new_hi
        first = 0
        passes += 1
    return lo, c_lo


@triton.jit
def _draw_kept(row_ptr, V, inv_t, key, tau, BLOCK: tl.constexpr):
    """argmax over s >= tau of s + Gumbel noise (first index among equal keys)."""
    offs = tl.arange(0, BLOCK)
    best = tl.full([BLOCK], NEG_INF, tl.float32)
    best_i = offs
    for start in range(0, V, BLOCK):
        idx = start + offs
        s = tl.load(row_ptr + idx, mask=idx < V, other=NEG_INF).to(tl.float32) * inv_t
        k = tl.where((idx < V) & (s >= tau), s + _gumbel(key, idx), NEG_INF)
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
    BLOCK: tl.constexpr,
    NPIV: tl.constexpr,
    HAS_TOP_K: tl.constexpr,
    HAS_TOP_P: tl.constexpr,
    HAS_MIN_P: tl.constexpr,
    MAX_PASSES: tl.constexpr,
):
    row = tl.program_id(0)
    row_ptr = s_ptr + row.to(tl.int64) * stride
    inv_t = tl.load(inv_t_ptr + row)
    sampled = tl.load(greedy_ptr + row).to(tl.int32) == 0
    noise_on = sampled.to(tl.float32)
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
        k = tl.where(inb, s + _gumbel(key, idx) * noise_on, NEG_INF)
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
    if HAS_TOP_K:
        k_row = tl.load(top_k_ptr + row).to(tl.float32)
        if sampled & (k_row < c_k):
            tau_k, c_k = _search(
                row_ptr, V, inv_t, m, tau_k, c_k, k_row, BLOCK, NPIV, False, MAX_PASSES
            )
            tau = tau_k
    if HAS_TOP_P:
        p_row = tl.load(top_p_ptr + row)
        if sampled & (p_row < 1.0):
            tau_p, c_p = _search(
                row_ptr, V, inv_t, m, tau_k, c_k, p_row, BLOCK, NPIV, True, MAX_PASSES
            )
            tau = tl.maximum(tau, tau_p)
    if HAS_MIN_P:
        tau = tl.maximum(tau, tl.max(vmax, axis=0) + tl.log(tl.load(min_p_ptr + row)))
    token = cand
    if sampled & (cand_s < tau):
        # the unfiltered winner was cut; otherwise it is also the winner of the kept set
        token = _draw_kept(row_ptr, V, inv_t, key, tau, BLOCK)
    tl.store(out_ptr + row, tl.minimum(token, V - 1).to(tl.int64))
    tl.store(tau_ptr + row, tau)


def draw_triton(
    work: torch.Tensor,
    batch: SamplingBatch,
    block: int = 1024,
    num_pivots: int = 16,
    num_warps: int = 8,
    thresholds: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B] int64 tokens from processed logits work [B, V] (fp32, bf16 or fp16, read as fp32); as
    sampling.draw_reference (up to float summation order at a top-p boundary).

    thresholds, if given ([B] fp32), receives each sampled row's tau: it keeps s >= tau.
    """
    assert work.dtype in (torch.float32, torch.bfloat16, torch.float16), work.dtype
    assert work.dim() == 2 and work.stride(1) == 1, "rows of contiguous logits"
    rows, vocab = work.shape
    out = torch.empty(rows, dtype=torch.int64, device=work.device)
    if thresholds is None:
        thresholds = torch.empty(rows, dtype=torch.float32, device=work.device)
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
        BLOCK=block,
        NPIV=num_pivots,
        HAS_TOP_K=batch.any_top_k,
        HAS_TOP_P=batch.any_top_p,
        HAS_MIN_P=batch.any_min_p,
        MAX_PASSES=32,
        num_warps=num_warps,
    )
    return out
