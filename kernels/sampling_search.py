"""Triton helpers of the sampler: the multi-pivot threshold search (top-k counts, top-p masses).

Every loop reads [ROWS, BLOCK] tiles and keeps SLOTS (4 or 8) tiles in flight: each slot is used,
then refilled SLOTS tiles ahead. With one program per row a loop that waits on its own load each
iteration is bound by memory latency, not bandwidth (measured on an H100: ~0.8 us per dependent
load, ~120 us per pass over 256 x 151,936 fp32 with one 1024-element tile in flight).
"""

from __future__ import annotations

import triton
import triton.language as tl

NEG_INF = tl.constexpr(float("-inf"))
POS_INF = tl.constexpr(float("inf"))


@triton.jit
def tile_offsets(BLOCK: tl.constexpr, ROWS: tl.constexpr):
    """[ROWS, BLOCK] offsets of one tile: row r holds BLOCK consecutive elements."""
    return tl.arange(0, ROWS)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]


@triton.jit
def load_tile(ptr, idx, n):
    return tl.load(ptr + idx, mask=idx < n, other=NEG_INF)


@triton.jit
def _tally(s, piv, m, lo, cnt, mass, mass_lo, WITH_MASS: tl.constexpr):
    """Adds one tile s [ROWS, BLOCK] to the per-lane counts / masses at the pivots."""
    ge = s[None, :, :] >= piv[:, None, None]  # [NPIV, ROWS, BLOCK]
    cnt += tl.sum(ge.to(tl.float32), axis=1)
    if WITH_MASS:
        w = tl.exp(s - m)
        mass += tl.sum(tl.where(ge, w[None, :, :], 0.0), axis=1)
        mass_lo += tl.sum(tl.where(s >= lo, w, 0.0), axis=0)
    return cnt, mass, mass_lo


@triton.jit
def _pivot_pass(
    src_ptr,
    n,
    scale,
    m,
    lo,
    piv,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    NPIV: tl.constexpr,
    WITH_MASS: tl.constexpr,
    SLOTS: tl.constexpr,
):
    """Over s = src[:n] * scale: counts [NPIV] of s >= piv; with WITH_MASS the masses
    sum(exp(s - m)) over s >= piv and over s >= lo. Partial sums stay per lane ([NPIV, BLOCK])
    and are reduced across threads once at the end."""
    offs = tile_offsets(BLOCK, ROWS)
    T: tl.constexpr = ROWS * BLOCK
    cnt = tl.zeros([NPIV, BLOCK], tl.float32)
    mass = tl.zeros([NPIV, BLOCK], tl.float32)
    mass_lo = tl.zeros([BLOCK], tl.float32)
    t0 = load_tile(src_ptr, offs, n)
    t1 = load_tile(src_ptr, T + offs, n)
    t2 = load_tile(src_ptr, 2 * T + offs, n)
    t3 = load_tile(src_ptr, 3 * T + offs, n)
    if SLOTS == 8:
        t4 = load_tile(src_ptr, 4 * T + offs, n)
        t5 = load_tile(src_ptr, 5 * T + offs, n)
        t6 = load_tile(src_ptr, 6 * T + offs, n)
        t7 = load_tile(src_ptr, 7 * T + offs, n)
    for start in range(SLOTS * T, n + SLOTS * T, SLOTS * T):
        s = t0.to(tl.float32) * scale
        t0 = load_tile(src_ptr, start + offs, n)
        cnt, mass, mass_lo = _tally(s, piv, m, lo, cnt, mass, mass_lo, WITH_MASS)
        s = t1.to(tl.float32) * scale
        t1 = load_tile(src_ptr, start + T + offs, n)
        cnt, mass, mass_lo = _tally(s, piv, m, lo, cnt, mass, mass_lo, WITH_MASS)
        s = t2.to(tl.float32) * scale
        t2 = load_tile(src_ptr, start + 2 * T + offs, n)
        cnt, mass, mass_lo = _tally(s, piv, m, lo, cnt, mass, mass_lo, WITH_MASS)
        s = t3.to(tl.float32) * scale
        t3 = load_tile(src_ptr, start + 3 * T + offs, n)
        cnt, mass, mass_lo = _tally(s, piv, m, lo, cnt, mass, mass_lo, WITH_MASS)
        if SLOTS == 8:
            s = t4.to(tl.float32) * scale
            t4 = load_tile(src_ptr, start + 4 * T + offs, n)
            cnt, mass, mass_lo = _tally(s, piv, m, lo, cnt, mass, mass_lo, WITH_MASS)
            s = t5.to(tl.float32) * scale
            t5 = load_tile(src_ptr, start + 5 * T + offs, n)
            cnt, mass, mass_lo = _tally(s, piv, m, lo, cnt, mass, mass_lo, WITH_MASS)
            s = t6.to(tl.float32) * scale
            t6 = load_tile(src_ptr, start + 6 * T + offs, n)
            cnt, mass, mass_lo = _tally(s, piv, m, lo, cnt, mass, mass_lo, WITH_MASS)
            s = t7.to(tl.float32) * scale
            t7 = load_tile(src_ptr, start + 7 * T + offs, n)
            cnt, mass, mass_lo = _tally(s, piv, m, lo, cnt, mass, mass_lo, WITH_MASS)
    return tl.sum(cnt, axis=1), tl.sum(mass, axis=1), tl.sum(mass_lo, axis=0)


@triton.jit
def _copy_tile(s, idx, lo, hi_x, buf_ptr, ibuf_ptr, cap, written):
    """Appends the values of tile s in [lo, hi_x) to buf (and their token ids to ibuf) at
    written.. (those past cap are counted, not stored); returns the new count. Slots go in
    column-major order (any bijection will do: buf is a multiset): down a column within the
    thread, then past the earlier columns' totals."""
    inside = ((s >= lo) & (s < hi_x)).to(tl.int32)
    col_total = tl.sum(inside, axis=0)  # [BLOCK]
    if tl.sum(col_total, axis=0) > 0:  # most tiles hold nothing to copy
        before = tl.cumsum(col_total, axis=0) - col_total
        pos = written + before[None, :] + tl.cumsum(inside, axis=0) - 1
        keep = (inside != 0) & (pos < cap)
        tl.store(buf_ptr + pos, s, mask=keep)
        tl.store(ibuf_ptr + pos, idx, mask=keep)
    return written + tl.sum(col_total, axis=0)


@triton.jit
def copy_pass(
    row_ptr,
    V,
    inv_t,
    lo,
    hi_x,
    buf_ptr,
    ibuf_ptr,
    cap,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    SLOTS: tl.constexpr,
):
    """Copies the values s = row * inv_t in [lo, hi_x) and their ids to buf / ibuf (room for
    cap); returns how many there are (a copy is complete only if that is <= cap)."""
    offs = tile_offsets(BLOCK, ROWS)
    T: tl.constexpr = ROWS * BLOCK
    written = tl.full([], 0, tl.int32)
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
        written = _copy_tile(s, idx, lo, hi_x, buf_ptr, ibuf_ptr, cap, written)
        s = t1.to(tl.float32) * inv_t
        t1 = load_tile(row_ptr, start + T + offs, V)
        written = _copy_tile(s, idx + T, lo, hi_x, buf_ptr, ibuf_ptr, cap, written)
        s = t2.to(tl.float32) * inv_t
        t2 = load_tile(row_ptr, start + 2 * T + offs, V)
        written = _copy_tile(s, idx + 2 * T, lo, hi_x, buf_ptr, ibuf_ptr, cap, written)
        s = t3.to(tl.float32) * inv_t
        t3 = load_tile(row_ptr, start + 3 * T + offs, V)
        written = _copy_tile(s, idx + 3 * T, lo, hi_x, buf_ptr, ibuf_ptr, cap, written)
        if SLOTS == 8:
            s = t4.to(tl.float32) * inv_t
            t4 = load_tile(row_ptr, start + 4 * T + offs, V)
            written = _copy_tile(s, idx + 4 * T, lo, hi_x, buf_ptr, ibuf_ptr, cap, written)
            s = t5.to(tl.float32) * inv_t
            t5 = load_tile(row_ptr, start + 5 * T + offs, V)
            written = _copy_tile(s, idx + 5 * T, lo, hi_x, buf_ptr, ibuf_ptr, cap, written)
            s = t6.to(tl.float32) * inv_t
            t6 = load_tile(row_ptr, start + 6 * T + offs, V)
            written = _copy_tile(s, idx + 6 * T, lo, hi_x, buf_ptr, ibuf_ptr, cap, written)
            s = t7.to(tl.float32) * inv_t
            t7 = load_tile(row_ptr, start + 7 * T + offs, V)
            written = _copy_tile(s, idx + 7 * T, lo, hi_x, buf_ptr, ibuf_ptr, cap, written)
    tl.debug_barrier()  # the copy's stores before any thread of the block reads it
    return written


@triton.jit
def recopy_pass(
    buf_ptr,
    ibuf_ptr,
    n,
    lo,
    hi_x,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    SLOTS: tl.constexpr,
):
    """Compacts buf[:n] / ibuf[:n] in place to the values in [lo, hi_x); returns how many. Safe
    in place: a tile's values go to slots below its own end, and _copy_tile's cumsum (a block
    barrier) puts every warp's loads of the tile before any store."""
    offs = tile_offsets(BLOCK, ROWS)
    T: tl.constexpr = ROWS * BLOCK
    written = tl.full([], 0, tl.int32)
    t0 = load_tile(buf_ptr, offs, n)
    i0 = tl.load(ibuf_ptr + offs, mask=offs < n, other=0)
    t1 = load_tile(buf_ptr, T + offs, n)
    i1 = tl.load(ibuf_ptr + T + offs, mask=T + offs < n, other=0)
    for start in range(2 * T, n + 2 * T, 2 * T):
        s, idx = t0, i0
        t0 = load_tile(buf_ptr, start + offs, n)
        i0 = tl.load(ibuf_ptr + start + offs, mask=start + offs < n, other=0)
        written = _copy_tile(s, idx, lo, hi_x, buf_ptr, ibuf_ptr, n, written)
        s, idx = t1, i1
        t1 = load_tile(buf_ptr, start + T + offs, n)
        i1 = tl.load(ibuf_ptr + start + T + offs, mask=start + T + offs < n, other=0)
        written = _copy_tile(s, idx, lo, hi_x, buf_ptr, ibuf_ptr, n, written)
    tl.debug_barrier()  # the copy's stores before any thread of the block reads it
    return written


@triton.jit
def threshold_search(
    row_ptr,
    buf_ptr,
    ibuf_ptr,
    cap,
    V,
    inv_t,
    m,
    lo,
    c_lo,
    goal,
    target_in,
    copied,
    n_buf,
    full_lo,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    NPIV: tl.constexpr,
    IS_MASS: tl.constexpr,
    MAX_PASSES: tl.constexpr,
    SLOTS: tl.constexpr,
    COMPACT: tl.constexpr,
):
    """Largest lo (a data value or just below one) with F(lo) >= target, F = count or mass of
    s >= v over the row s = row * inv_t (m: its max). target = goal (a count), or target_in if
    > 0, else goal * F(lo at entry) (a fraction of the mass). Invariant: lo feasible, hi not;
    each pass tests NPIV pivots between them; it stops when [lo, hi) holds one element (or one
    float): then s >= lo is exact.

    Once at most cap (about half the row) would be copied, the next full pass copies the values
    that matter (with their ids) to buf: all s >= lo for counts (so a top-p search after top-k
    reuses them), the bracket [lo, hi) for masses (all s >= lo before the first pass). Later
    passes read only buf and add the count / mass above what was copied (base_*); once the
    bracket holds a quarter of the copy or less, the copy is compacted to it in place. copied,
    n_buf (how many in buf) and full_lo (buf holds every s >= full_lo; +inf if not) go in and
    out. Returns lo, F_count(lo), copied,
    n_buf, full_lo."""
    i = tl.arange(0, NPIV).to(tl.float32)
    zero = c_lo * 0.0
    hi = m
    c_hi = zero  # count of s >= hi; the first pass tests hi = m itself, so nothing is above
    m_hi = zero  # mass of s >= hi
    base_c = zero
    base_m = zero
    target = goal * 1.0
    if IS_MASS:
        target = target_in * 1.0
    first = tl.full([], 1, tl.int32)
    moving = tl.full([], 1, tl.int32)
    passes = tl.full([], 0, tl.int32)
    while (c_lo - c_hi > 1.5) & (moving != 0) & (passes < MAX_PASSES):
        denom = NPIV + 1 - first
        piv = lo + (hi - lo) * ((i + 1.0) / denom)
        piv = tl.where((i == NPIV - 1) & (first != 0), hi, piv)
        if IS_MASS:  # masses: the bracket, but all s >= lo before the first pass
            hi_x = tl.where(first != 0, POS_INF, hi)
        else:  # counts: all s >= lo, for a top-p search after this one
            hi_x = hi * 0.0 + POS_INF
        in_play = tl.where(hi_x < POS_INF, c_lo - c_hi, c_lo)
        if (copied == 0) & (in_play <= cap):
            # few enough left: copy them once, then every pass reads only the copy
            n_buf = copy_pass(
                row_ptr, V, inv_t, lo, hi_x, buf_ptr, ibuf_ptr, cap, BLOCK, ROWS, SLOTS
            )
            copied = tl.full([], 1, tl.int32)
            full_lo = tl.where(hi_x < POS_INF, POS_INF, lo)
            base_c = tl.where(hi_x < POS_INF, c_hi, 0.0)
            base_m = tl.where(hi_x < POS_INF, m_hi, 0.0)
        elif COMPACT:
            if (
                (copied != 0)
                & (in_play * 4.0 <= n_buf)
                & ((hi_x == POS_INF) | (full_lo == POS_INF))
            ):
                # the bracket holds a quarter of the copy or less: compact the copy to it (a copy
                # holding every s >= full_lo stays so: counts keep all s >= lo, masses skip this)
                n_buf = recopy_pass(buf_ptr, ibuf_ptr, n_buf, lo, hi_x, BLOCK, ROWS, SLOTS)
                full_lo = tl.where(hi_x < POS_INF, POS_INF, lo)
                base_c = tl.where(hi_x < POS_INF, c_hi, 0.0)
                base_m = tl.where(hi_x < POS_INF, m_hi, 0.0)
        if copied != 0:
            cnt, mass, mass_lo = _pivot_pass(
                buf_ptr, n_buf, inv_t * 0.0 + 1.0, m, lo, piv, BLOCK, ROWS, NPIV, IS_MASS, SLOTS
            )
            cnt += base_c
            mass += base_m
            mass_lo += base_m
        else:
            cnt, mass, mass_lo = _pivot_pass(
                row_ptr, V, inv_t, m, lo, piv, BLOCK, ROWS, NPIV, IS_MASS, SLOTS
            )
        if IS_MASS:
            metric = mass
            # without target_in, the first pass weighs the entry set (the top-k set): p * Z_k
            target = tl.where((first != 0) & (target_in <= 0.0), goal * mass_lo, target)
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
    return lo, c_lo, copied, n_buf, full_lo


__all__ = [
    "threshold_search",
    "copy_pass",
    "recopy_pass",
    "tile_offsets",
    "load_tile",
    "NEG_INF",
    "POS_INF",
]
