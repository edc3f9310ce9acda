"""Triton pieces of the sampler's row passes: hashed Gumbel noise, pass A (max, min, count, mass,
unfiltered winner), the final draws (over the row or over the compacted copy) and the lane-maxima
bounds that let a filter start from a small copy. Used by sampling_triton._sample_kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice

from yaie.kernels.sampling_search import NEG_INF, POS_INF, load_tile, tile_offsets


@triton.jit
def _mix32(x):
    # lowbias32 on uint32 (multiplies wrap mod 2^32), same as sampling_params.mix32
    x = x ^ (x >> 16)
    x = x * 0x21F0AAAD
    x = x ^ (x >> 15)
    x = x * 0x735A2D97
    return x ^ (x >> 15)


@triton.jit
def gumbel(key, idx, FAST_LOG: tl.constexpr):
    bits = _mix32(_mix32(idx.to(tl.uint32)) ^ key) >> 9
    u = (bits.to(tl.float32) + 0.5) * (1.0 / 8388608.0)
    if FAST_LOG:  # lg2.approx: ~2^-22 relative error, a third of the instructions of logf
        return -libdevice.fast_logf(-libdevice.fast_logf(u))
    else:
        return -tl.log(-tl.log(u))


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
    if tl.max(tl.max(s, axis=1), axis=0) >= tau:  # most tiles hold no kept token under top-k
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
    SLOTS: tl.constexpr,
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
    if SLOTS == 8:
        t4 = load_tile(row_ptr, 4 * T + offs, V)
        t5 = load_tile(row_ptr, 5 * T + offs, V)
        t6 = load_tile(row_ptr, 6 * T + offs, V)
        t7 = load_tile(row_ptr, 7 * T + offs, V)
    for start in range(SLOTS * T, V + SLOTS * T, SLOTS * T):
        idx = start - SLOTS * T + offs
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
        if SLOTS == 8:
            s = t4.to(tl.float32) * inv_t
            t4 = load_tile(row_ptr, start + 4 * T + offs, V)
            best, best_i = _draw_tile(s, idx + 4 * T, V, key, tau, best, best_i, FAST_LOG)
            s = t5.to(tl.float32) * inv_t
            t5 = load_tile(row_ptr, start + 5 * T + offs, V)
            best, best_i = _draw_tile(s, idx + 5 * T, V, key, tau, best, best_i, FAST_LOG)
            s = t6.to(tl.float32) * inv_t
            t6 = load_tile(row_ptr, start + 6 * T + offs, V)
            best, best_i = _draw_tile(s, idx + 6 * T, V, key, tau, best, best_i, FAST_LOG)
            s = t7.to(tl.float32) * inv_t
            t7 = load_tile(row_ptr, start + 7 * T + offs, V)
            best, best_i = _draw_tile(s, idx + 7 * T, V, key, tau, best, best_i, FAST_LOG)
    top = tl.max(best, axis=0)
    return tl.min(tl.where(best == top, best_i, V), axis=0)


@triton.jit
def draw_copy(buf_ptr, ibuf_ptr, n, V, key, tau, BLOCK: tl.constexpr, FAST_LOG: tl.constexpr):
    """The same draw over the compacted copy: values buf[:n] with token ids ibuf[:n] in any
    order, holding every s >= tau; ties go to the smaller id explicitly."""
    offs = tl.arange(0, BLOCK)
    best = tl.full([BLOCK], NEG_INF, tl.float32)
    best_i = tl.full([BLOCK], 2147483647, tl.int32)
    for start in range(0, n, BLOCK):
        o = start + offs
        s = tl.load(buf_ptr + o, mask=o < n, other=NEG_INF)
        idx = tl.load(ibuf_ptr + o, mask=o < n, other=0)
        k = tl.where((o < n) & (s >= tau), s + gumbel(key, idx, FAST_LOG), NEG_INF)
        upd = (k > best) | ((k == best) & (k > NEG_INF) & (idx < best_i))
        best = tl.where(upd, k, best)
        best_i = tl.where(upd, idx, best_i)
    top = tl.max(best, axis=0)
    return tl.min(tl.where(best == top, best_i, V), axis=0)


@triton.jit
def _scan_tile(
    s, idx, V, key, noisy, vmax, vmin, nfin, best, best_i, best_s, need_z, ref, zl,
    FAST_LOG: tl.constexpr,
):  # fmt: skip
    """Pass A on one tile: per-lane max, min of finite values, finite count, best key and (if
    need_z) the mass sum(exp(s - ref))."""
    fin = s > NEG_INF
    vmax = tl.maximum(vmax, tl.max(s, axis=0))
    vmin = tl.minimum(vmin, tl.min(tl.where(fin, s, POS_INF), axis=0))
    nfin += tl.sum(fin.to(tl.int32), axis=0)
    if need_z:
        zl += tl.sum(tl.exp(s - ref), axis=0)
    k = s
    if noisy:
        k = s + gumbel(key, idx, FAST_LOG)
    k = tl.where(idx < V, k, NEG_INF)
    best, best_i, best_s = _merge_best(k, s, idx, best, best_i, best_s, V)
    return vmax, vmin, nfin, best, best_i, best_s, zl


@triton.jit
def scan_pass(
    row_ptr,
    V,
    inv_t,
    key,
    noisy,
    need_z,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    FAST_LOG: tl.constexpr,
    SLOTS: tl.constexpr,
):
    """Pass A over s = row * inv_t. Returns per-lane [BLOCK] max, min of finite values, finite
    count, best key (s + noise if noisy, else s), its index and s there, and, if need_z, the
    mass sum(exp(s - ref)) with ref = the max of the first tiles and ref itself (the mass is
    inf when some s exceeds ref by ~88: the caller then does without it)."""
    offs = tile_offsets(BLOCK, ROWS)
    T: tl.constexpr = ROWS * BLOCK
    vmax = tl.full([BLOCK], NEG_INF, tl.float32)
    vmin = tl.full([BLOCK], POS_INF, tl.float32)
    nfin = tl.zeros([BLOCK], tl.int32)
    best = tl.full([BLOCK], NEG_INF, tl.float32)
    best_i = tl.arange(0, BLOCK)
    best_s = tl.full([BLOCK], NEG_INF, tl.float32)
    zl = tl.zeros([BLOCK], tl.float32)
    t0 = load_tile(row_ptr, offs, V)
    t1 = load_tile(row_ptr, T + offs, V)
    t2 = load_tile(row_ptr, 2 * T + offs, V)
    t3 = load_tile(row_ptr, 3 * T + offs, V)
    ref = tl.max(tl.max(tl.maximum(tl.maximum(t0, t1), tl.maximum(t2, t3)), axis=1), axis=0)
    ref = ref.to(tl.float32) * inv_t
    ref = tl.where(ref > NEG_INF, ref, 0.0)  # a start of -inf only: any finite reference
    if SLOTS == 8:
        t4 = load_tile(row_ptr, 4 * T + offs, V)
        t5 = load_tile(row_ptr, 5 * T + offs, V)
        t6 = load_tile(row_ptr, 6 * T + offs, V)
        t7 = load_tile(row_ptr, 7 * T + offs, V)
    for start in range(SLOTS * T, V + SLOTS * T, SLOTS * T):
        idx = start - SLOTS * T + offs
        s = t0.to(tl.float32) * inv_t
        t0 = load_tile(row_ptr, start + offs, V)
        vmax, vmin, nfin, best, best_i, best_s, zl = _scan_tile(
            s, idx, V, key, noisy, vmax, vmin, nfin, best, best_i, best_s, need_z, ref, zl,
            FAST_LOG,
        )  # fmt: skip
        s = t1.to(tl.float32) * inv_t
        t1 = load_tile(row_ptr, start + T + offs, V)
        vmax, vmin, nfin, best, best_i, best_s, zl = _scan_tile(
            s, idx + T, V, key, noisy, vmax, vmin, nfin, best, best_i, best_s, need_z, ref, zl,
            FAST_LOG,
        )  # fmt: skip
        s = t2.to(tl.float32) * inv_t
        t2 = load_tile(row_ptr, start + 2 * T + offs, V)
        vmax, vmin, nfin, best, best_i, best_s, zl = _scan_tile(
            s, idx + 2 * T, V, key, noisy, vmax, vmin, nfin, best, best_i, best_s, need_z, ref,
            zl, FAST_LOG,
        )  # fmt: skip
        s = t3.to(tl.float32) * inv_t
        t3 = load_tile(row_ptr, start + 3 * T + offs, V)
        vmax, vmin, nfin, best, best_i, best_s, zl = _scan_tile(
            s, idx + 3 * T, V, key, noisy, vmax, vmin, nfin, best, best_i, best_s, need_z, ref,
            zl, FAST_LOG,
        )  # fmt: skip
        if SLOTS == 8:
            s = t4.to(tl.float32) * inv_t
            t4 = load_tile(row_ptr, start + 4 * T + offs, V)
            vmax, vmin, nfin, best, best_i, best_s, zl = _scan_tile(
                s, idx + 4 * T, V, key, noisy, vmax, vmin, nfin, best, best_i, best_s, need_z,
                ref, zl, FAST_LOG,
            )  # fmt: skip
            s = t5.to(tl.float32) * inv_t
            t5 = load_tile(row_ptr, start + 5 * T + offs, V)
            vmax, vmin, nfin, best, best_i, best_s, zl = _scan_tile(
                s, idx + 5 * T, V, key, noisy, vmax, vmin, nfin, best, best_i, best_s, need_z,
                ref, zl, FAST_LOG,
            )  # fmt: skip
            s = t6.to(tl.float32) * inv_t
            t6 = load_tile(row_ptr, start + 6 * T + offs, V)
            vmax, vmin, nfin, best, best_i, best_s, zl = _scan_tile(
                s, idx + 6 * T, V, key, noisy, vmax, vmin, nfin, best, best_i, best_s, need_z,
                ref, zl, FAST_LOG,
            )  # fmt: skip
            s = t7.to(tl.float32) * inv_t
            t7 = load_tile(row_ptr, start + 7 * T + offs, V)
            vmax, vmin, nfin, best, best_i, best_s, zl = _scan_tile(
                s, idx + 7 * T, V, key, noisy, vmax, vmin, nfin, best, best_i, best_s, need_z,
                ref, zl, FAST_LOG,
            )  # fmt: skip
    return vmax, vmin, nfin, best, best_i, best_s, zl, ref


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
