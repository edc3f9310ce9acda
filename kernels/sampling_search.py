"""Triton helpers of the sampler: the multi-pivot threshold search (top-k counts, top-p masses).

Every loop reads [ROWS, BLOCK] tiles and loads four tiles ahead before it uses the current one:
with one program per row, a loop that waits on its own load each iteration is bound by memory
latency, not bandwidth (measured on an H100: ~0.8 us per dependent load, ~120 us per pass over
256 x 151,936 fp32 with one 1024-element tile in flight per iteration).
"""

from __future__ import annotations

import triton
import triton.language as tl

NEG_INF = tl.constexpr(float("-inf"))
POS_INF = tl.constexpr(float("inf"))


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
):
    """Over s = src[:n] * scale: counts [NPIV] of s >= piv; with WITH_MASS the masses
    sum(exp(s - m)) over s >= piv and over s >= lo.

    Partial sums stay per lane ([NPIV, BLOCK]) and are reduced across threads once at the end;
    four tiles are in flight (see the module doc)."""
    offs = tile_offsets(BLOCK, ROWS)
    T: tl.constexpr = ROWS * BLOCK
    cnt = tl.zeros([NPIV, BLOCK], tl.float32)
    mass = tl.zeros([NPIV, BLOCK], tl.float32)
    mass_lo = tl.zeros([BLOCK], tl.float32)
    t0 = tl.load(src_ptr + offs, mask=offs < n, other=NEG_INF)
    t1 = tl.load(src_ptr + T + offs, mask=T + offs < n, other=NEG_INF)
    t2 = tl.load(src_ptr + 2 * T + offs, mask=2 * T + offs < n, other=NEG_INF)
    t3 = tl.load(src_ptr + 3 * T + offs, mask=3 * T + offs < n, other=NEG_INF)
    for start in range(4 * T, n + 4 * T, 4 * T):
        # each slot is used, then refilled 4 tiles ahead: no register rotation to wait on
        s = t0.to(tl.float32) * scale
        t0 = tl.load(src_ptr + start + offs, mask=start + offs < n, other=NEG_INF)
        cnt, mass, mass_lo = _tally(s, piv, m, lo, cnt, mass, mass_lo, WITH_MASS)
        s = t1.to(tl.float32) * scale
        t1 = tl.load(src_ptr + start + T + offs, mask=start + T + offs < n, other=NEG_INF)
        cnt, mass, mass_lo = _tally(s, piv, m, lo, cnt, mass, mass_lo, WITH_MASS)
        s = t2.to(tl.float32) * scale
        t2 = tl.load(src_ptr + start + 2 * T + offs, mask=start + 2 * T + offs < n, other=NEG_INF)
        cnt, mass, mass_lo = _tally(s, piv, m, lo, cnt, mass, mass_lo, WITH_MASS)
        s = t3.to(tl.float32) * scale
        t3 = tl.load(src_ptr + start + 3 * T + offs, mask=start + 3 * T + offs < n, other=NEG_INF)
        cnt, mass, mass_lo = _tally(s, piv, m, lo, cnt, mass, mass_lo, WITH_MASS)
    return tl.sum(cnt, axis=1), tl.sum(mass, axis=1), tl.sum(mass_lo, axis=0)


@triton.jit
def _copy_tile(s, lo, hi_x, buf_ptr, written):
    """Appends the values of tile s in [lo, hi_x) to buf at written..; returns the new count.
    Slots go in column-major order (any bijection will do: buf is a multiset): down a column
    within the thread, then past the earlier columns' totals."""
    inside = ((s >= lo) & (s < hi_x)).to(tl.int32)
    col_total = tl.sum(inside, axis=0)  # [BLOCK]
    before = tl.cumsum(col_total, axis=0) - col_total
    pos = written + before[None, :] + tl.cumsum(inside, axis=0) - 1
    tl.store(buf_ptr + pos, s, mask=inside != 0)
    return written + tl.sum(col_total, axis=0)


@triton.jit
def _copy_pass(row_ptr, V, inv_t, lo, hi_x, buf_ptr, BLOCK: tl.constexpr, ROWS: tl.constexpr):
    """Copies the values s = row * inv_t in [lo, hi_x) to buf; returns how many."""
    offs = tile_offsets(BLOCK, ROWS)
    T: tl.constexpr = ROWS * BLOCK
    written = tl.full([], 0, tl.int32)
    t0 = tl.load(row_ptr + offs, mask=offs < V, other=NEG_INF)
    t1 = tl.load(row_ptr + T + offs, mask=T + offs < V, other=NEG_INF)
    t2 = tl.load(row_ptr + 2 * T + offs, mask=2 * T + offs < V, other=NEG_INF)
    t3 = tl.load(row_ptr + 3 * T + offs, mask=3 * T + offs < V, other=NEG_INF)
    for start in range(4 * T, V + 4 * T, 4 * T):
        s = t0.to(tl.float32) * inv_t
        t0 = tl.load(row_ptr + start + offs, mask=start + offs < V, other=NEG_INF)
        written = _copy_tile(s, lo, hi_x, buf_ptr, written)
        s = t1.to(tl.float32) * inv_t
        t1 = tl.load(row_ptr + start + T + offs, mask=start + T + offs < V, other=NEG_INF)
        written = _copy_tile(s, lo, hi_x, buf_ptr, written)
        s = t2.to(tl.float32) * inv_t
        t2 = tl.load(row_ptr + start + 2 * T + offs, mask=start + 2 * T + offs < V, other=NEG_INF)
        written = _copy_tile(s, lo, hi_x, buf_ptr, written)
        s = t3.to(tl.float32) * inv_t
        t3 = tl.load(row_ptr + start + 3 * T + offs, mask=start + 3 * T + offs < V, other=NEG_INF)
        written = _copy_tile(s, lo, hi_x, buf_ptr, written)
    return written


@triton.jit
def tile_offsets(BLOCK: tl.constexpr, ROWS: tl.constexpr):
    """[ROWS, BLOCK] offsets of one tile: row r holds BLOCK consecutive elements."""
    return tl.arange(0, ROWS)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]


@triton.jit
def threshold_search(
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
    ROWS: tl.constexpr,
    NPIV: tl.constexpr,
    IS_MASS: tl.constexpr,
    MAX_PASSES: tl.constexpr,
):
    """Largest lo (a data value or just below one) with F(lo) >= target, F = count or mass of
    s >= v over the row s = row * inv_t (m: its max). target = goal (a count) or goal * F(lo at
    entry) (a fraction of the mass). Invariant: lo feasible, hi not; each pass tests NPIV pivots
    between them; it stops when [lo, hi) holds one element (or one float): then s >= lo is exact.

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
        if (copied == 0) & (c_lo - c_hi <= 0.5 * V):
            # few enough left: copy them once, then every pass reads only the copy
            if IS_MASS:
                hi_x = tl.where(first != 0, POS_INF, hi)
            else:
                hi_x = hi * 0.0 + POS_INF
            n_buf = _copy_pass(row_ptr, V, inv_t, lo, hi_x, buf_ptr, BLOCK, ROWS)
            copied = tl.full([], 1, tl.int32)
            base_c = tl.where(hi_x < POS_INF, c_hi, 0.0)
            base_m = tl.where(hi_x < POS_INF, m_hi, 0.0)
        if copied != 0:
            cnt, mass, mass_lo = _pivot_pass(
                buf_ptr, n_buf, inv_t * 0.0 + 1.0, m, lo, piv, BLOCK, ROWS, NPIV, IS_MASS
            )
            cnt += base_c
            mass += base_m
            mass_lo += base_m
        else:
            cnt, mass, mass_lo = _pivot_pass(
                row_ptr, V, inv_t, m, lo, piv, BLOCK, ROWS, NPIV, IS_MASS
            )
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


__all__ = ["threshold_search", "tile_offsets", "NEG_INF", "POS_INF"]
