"""Triton pieces of the sampler's row passes: hashed Gumbel noise, pass A (max, min, count, mass,
unfiltered winner), the final draws (over the row or over the compacted copy) and the lane-maxima
bounds that let a filter start from a small copy. Used by triton_sample._sample_kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from yaie.kernels.sampling.triton_search import (
    NEG_INF,
    NO_ID,
    POS_INF,
    better,
    gumbel,
    load_tile,
    tile_offsets,
)


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
def _draw_tile(s, idx, V, key, tau, best, best_i, FAST_LOG: tl.constexpr):
    # no block-wide "any kept token?" test per tile: its barrier cost more than the noise it
    # saved (a min-p row's draw pass took 2x its pass A on an H100)
    k = tl.where((idx < V) & (s >= tau), s + gumbel(key, idx, FAST_LOG), NEG_INF)
    best, best_i, _ = _merge_best(k, s, idx, best, best_i, best, V)
    return best, best_i


@triton.jit
def draw_kept(
    row_ptr,
    V,
    inv_t,
    key,
    tau,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    FAST_LOG: tl.constexpr,
):
    """argmax over s >= tau of s + Gumbel noise (first index among equal keys), over the row."""
    offs = tile_offsets(BLOCK, ROWS)
    T: tl.constexpr = ROWS * BLOCK
    best = tl.full([BLOCK], NEG_INF, tl.float32)
    best_i = tl.arange(0, BLOCK)
    t0 = load_tile(row_ptr, offs, V)
    t1 = load_tile(row_ptr, T + offs, V)
    t2 = load_tile(row_ptr, 2 * T + offs, V)
    t3 = load_tile(row_ptr, 3 * T + offs, V)
    for start in range(4 * T, V + 4 * T, 4 * T):
        idx = start - 4 * T + offs
        s = t0.to(tl.float32) * inv_t
        t0 = load_tile(row_ptr, start + offs, V)
        best, best_i = _draw_tile(s, idx, V, key, tau, best, best_i, FAST_LOG)
        s = t1.to(tl.float32) * inv_t
        t1 = load_tile(row_ptr, start + T + offs, V)
        best, best_i = _draw_tile(s, idx + T, V, key, tau, best, best_i, FAST_LOG)
        s = t2.to(tl.float32) * inv_t
        t2 = load_tile(row_ptr, start + 2 * T + offs, V)
        best, best_i = _draw_tile(s, idx + 2 * T, V, key, tau, best, best_i, FAST_LOG)
        s = t3.to(tl.float32) * inv_t
        t3 = load_tile(row_ptr, start + 3 * T + offs, V)
        best, best_i = _draw_tile(s, idx + 3 * T, V, key, tau, best, best_i, FAST_LOG)
    top = tl.max(best, axis=0)
    return tl.min(tl.where(best == top, best_i, V), axis=0)


@triton.jit
def draw_copy(buf_ptr, ibuf_ptr, n, key, tau, BLOCK: tl.constexpr, FAST_LOG: tl.constexpr):
    """The same draw over the copy: values buf[:n] with token ids ibuf[:n] in any order; ties go
    to the smaller id explicitly. Returns the best key over s >= tau and its token (-inf, NO_ID
    if none): the draw itself when the copy holds every s >= tau."""
    offs = tl.arange(0, BLOCK)
    best = tl.full([BLOCK], NEG_INF, tl.float32)
    best_i = tl.full([BLOCK], NO_ID, tl.int32)
    for start in range(0, n, BLOCK):
        o = start + offs
        s = tl.load(buf_ptr + o, mask=o < n, other=NEG_INF)
        idx = tl.load(ibuf_ptr + o, mask=o < n, other=0)
        k = tl.where((o < n) & (s >= tau), s + gumbel(key, idx, FAST_LOG), NEG_INF)
        upd = better(k, idx, best, best_i)
        best = tl.where(upd, k, best)
        best_i = tl.where(upd, idx, best_i)
    top = tl.max(best, axis=0)
    return top, tl.min(tl.where(best == top, best_i, NO_ID), axis=0)


@triton.jit
def _scan_tile(
    s, idx, V, key, noisy, vmax, vmin, nfin, best, best_i, best_s, need_z, ref, zl, tally, piv,
    cnt, mass, FAST_LOG: tl.constexpr,
):  # fmt: skip
    """Pass A on one tile: per-lane max, min of finite values, finite count, best key, (if
    need_z) the mass sum(exp(s - ref)) and (if tally) the counts and masses at the pivots."""
    fin = s > NEG_INF
    vmax = tl.maximum(vmax, tl.max(s, axis=0))
    vmin = tl.minimum(vmin, tl.min(tl.where(fin, s, POS_INF), axis=0))
    nfin += tl.sum(fin.to(tl.int32), axis=0)
    if need_z:
        w = tl.exp(s - ref)
        zl += tl.sum(w, axis=0)
        if tally:  # the first pass of a top-p search, fused in
            ge = s[None, :, :] >= piv[:, None, None]  # [NPIV, ROWS, BLOCK]
            cnt += tl.sum(ge.to(tl.float32), axis=1)
            mass += tl.sum(tl.where(ge, w[None, :, :], 0.0), axis=1)
    k = s
    if noisy:
        k = s + gumbel(key, idx, FAST_LOG)
    k = tl.where(idx < V, k, NEG_INF)
    best, best_i, best_s = _merge_best(k, s, idx, best, best_i, best_s, V)
    return vmax, vmin, nfin, best, best_i, best_s, zl, cnt, mass


@triton.jit
def scan_pass(
    row_ptr, V, inv_t, key, noisy, need_z, tally, piv,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, NPIV: tl.constexpr, FAST_LOG: tl.constexpr,
):  # fmt: skip
    """Pass A over s = row * inv_t. Returns per-lane [BLOCK] max, min of finite values, finite
    count, best key (s + noise if noisy, else s), its index and s there; if need_z, the mass
    sum(exp(s - ref)) with ref = the max of the first tiles and ref itself (the mass is inf when
    some s exceeds ref by ~88: the caller then does without it); if need_z and tally, the count
    and mass (same reference) of s >= piv ([NPIV, BLOCK] per lane): a top-p search's first pass."""
    offs = tile_offsets(BLOCK, ROWS)
    T: tl.constexpr = ROWS * BLOCK
    vmax = tl.full([BLOCK], NEG_INF, tl.float32)
    vmin = tl.full([BLOCK], POS_INF, tl.float32)
    nfin = tl.zeros([BLOCK], tl.int32)
    best = tl.full([BLOCK], NEG_INF, tl.float32)
    best_i = tl.arange(0, BLOCK)
    best_s = tl.full([BLOCK], NEG_INF, tl.float32)
    zl = tl.zeros([BLOCK], tl.float32)
    cnt = tl.zeros([NPIV, BLOCK], tl.float32)
    mass = tl.zeros([NPIV, BLOCK], tl.float32)
    t0 = load_tile(row_ptr, offs, V)
    t1 = load_tile(row_ptr, T + offs, V)
    t2 = load_tile(row_ptr, 2 * T + offs, V)
    t3 = load_tile(row_ptr, 3 * T + offs, V)
    ref = tl.max(tl.max(tl.maximum(tl.maximum(t0, t1), tl.maximum(t2, t3)), axis=1), axis=0)
    ref = ref.to(tl.float32) * inv_t
    ref = tl.where(ref > NEG_INF, ref, 0.0)  # a start of -inf only: any finite reference
    for start in range(4 * T, V + 4 * T, 4 * T):
        idx = start - 4 * T + offs
        s = t0.to(tl.float32) * inv_t
        t0 = load_tile(row_ptr, start + offs, V)
        vmax, vmin, nfin, best, best_i, best_s, zl, cnt, mass = _scan_tile(
            s, idx, V, key, noisy, vmax, vmin, nfin, best, best_i, best_s, need_z, ref, zl,
            tally, piv, cnt, mass, FAST_LOG,
        )  # fmt: skip
        s = t1.to(tl.float32) * inv_t
        t1 = load_tile(row_ptr, start + T + offs, V)
        vmax, vmin, nfin, best, best_i, best_s, zl, cnt, mass = _scan_tile(
            s, idx + T, V, key, noisy, vmax, vmin, nfin, best, best_i, best_s, need_z, ref, zl,
            tally, piv, cnt, mass, FAST_LOG,
        )  # fmt: skip
        s = t2.to(tl.float32) * inv_t
        t2 = load_tile(row_ptr, start + 2 * T + offs, V)
        vmax, vmin, nfin, best, best_i, best_s, zl, cnt, mass = _scan_tile(
            s, idx + 2 * T, V, key, noisy, vmax, vmin, nfin, best, best_i, best_s, need_z, ref,
            zl, tally, piv, cnt, mass, FAST_LOG,
        )  # fmt: skip
        s = t3.to(tl.float32) * inv_t
        t3 = load_tile(row_ptr, start + 3 * T + offs, V)
        vmax, vmin, nfin, best, best_i, best_s, zl, cnt, mass = _scan_tile(
            s, idx + 3 * T, V, key, noisy, vmax, vmin, nfin, best, best_i, best_s, need_z, ref,
            zl, tally, piv, cnt, mass, FAST_LOG,
        )  # fmt: skip
    return vmax, vmin, nfin, best, best_i, best_s, zl, ref, tl.sum(cnt, 1), tl.sum(mass, 1)


@triton.jit
def lane_bound(vmax, m, k, target, IS_MASS: tl.constexpr, STEPS: tl.constexpr = 24):
    """A feasible start for a filter from the per-lane maxima vmax [BLOCK] (distinct tokens), by
    bisection between the smallest and the largest finite lane max. Counts: an x with >= k lane
    maxima >= x (then >= k tokens are >= x), near the k-th largest lane max. Masses: an x whose
    lane maxima >= x weigh sum exp(. - m) >= target (then the tokens >= x weigh at least that),
    near the largest such. Returns x, or -inf when even the smallest lane max is not feasible."""
    fin = vmax > NEG_INF
    lo = tl.min(tl.where(fin, vmax, POS_INF), axis=0)
    hi = tl.max(vmax, axis=0)
    if IS_MASS:
        w = tl.where(fin, tl.exp(vmax - m), 0.0)
        ok = tl.sum(w, axis=0) >= target
    else:
        w = fin.to(tl.float32)
        ok = tl.sum(w, axis=0) >= k
    for _ in range(STEPS):  # invariant: lo feasible (when ok)
        mid = lo + (hi - lo) * 0.5
        if IS_MASS:
            good = tl.sum(tl.where(vmax >= mid, w, 0.0), axis=0) >= target
        else:
            good = tl.sum(tl.where(vmax >= mid, w, 0.0), axis=0) >= k
        lo = tl.where(good, mid, lo)
        hi = tl.where(good, hi, mid)
    return tl.where(ok & (lo < POS_INF) & (target < POS_INF), lo, NEG_INF)


@triton.jit
def sample_pivots(
    row_ptr, V, inv_t, top, lo, p,
    NPIV: tl.constexpr, NSAMP: tl.constexpr, CHUNK: tl.constexpr, STEPS: tl.constexpr = 16,
):  # fmt: skip
    """First-pass pivots [NPIV] for a top-p search over s >= lo from a sample of the row:
    NSAMP // CHUNK runs of CHUNK tokens spread evenly over it. Pivot j (< NPIV - 1) estimates
    the value above which the sample's mass fraction is p + d_j, d_j a ladder of multiples of
    the estimate's standard error (from the sample's effective size), found by bisection; the
    last is top (m: a search's first pass must test it; +inf when fused into pass A, which does
    not know m yet). Returns the pivots and whether the sample weighs anything (else the
    search's uniform pivots do). Only a guess: the pass checks it."""
    j = tl.arange(0, NSAMP)
    pos = (j // CHUNK) * (V // (NSAMP // CHUNK)) + j % CHUNK
    x = tl.load(row_ptr + pos, mask=pos < V, other=NEG_INF).to(tl.float32) * inv_t
    x = tl.where(x >= lo, x, NEG_INF)
    xmax = tl.max(x, axis=0)
    w = tl.exp(x - tl.where(xmax > NEG_INF, xmax, 0.0))
    total = tl.sum(w, axis=0)
    n_eff = total * total / tl.maximum(tl.sum(w * w, axis=0), 1e-30)
    sd = 1.5 * tl.sqrt(p * (1.0 - p) / tl.maximum(n_eff, 1.0)) + 0.002
    i = tl.arange(0, NPIV).to(tl.float32)
    t = (i - (NPIV - 2) * 0.5) / ((NPIV - 2) * 0.5)  # -1 .. 1 over the first NPIV - 1
    frac = tl.minimum(tl.maximum(p - 4.0 * t * tl.abs(t) * sd, 0.0), 1.0)
    a = tl.zeros([NPIV], tl.float32) + tl.min(tl.where(w > 0.0, x, POS_INF), axis=0)
    b = tl.zeros([NPIV], tl.float32) + xmax
    for _ in range(STEPS):  # invariant: the sample's mass above a reaches frac * total
        mid = a + (b - a) * 0.5
        above = tl.sum(tl.where(x[None, :] >= mid[:, None], w[None, :], 0.0), axis=1)
        ok = above >= frac * total
        a = tl.where(ok, mid, a)
        b = tl.where(ok, b, mid)
    return tl.where(i == NPIV - 1, top, tl.maximum(a, lo)), total > 0.0
