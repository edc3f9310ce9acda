"""Triton helpers of the sampler: the multi-pivot threshold search (top-k counts, top-p masses).

Every loop reads a [ROWS, BLOCK] tile per iteration, ROWS loads per thread in flight at once:
with one program per row, a loop that waits on one load per iteration is bound by memory latency,
not bandwidth (measured: ~120 us per pass over 256 x 151,936 fp32 at ROWS = 1).
"""

from __future__ import annotations

import triton
import triton.language as tl

NEG_INF = tl.constexpr(float("-inf"))
POS_INF = tl.constexpr(float("inf"))


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
    ROWS: tl.constexpr,
    NPIV: tl.constexpr,
    WITH_MASS: tl.constexpr,
):
    """Over s = src[:n] * scale: counts [NPIV] of s >= piv; with WITH_MASS the masses
    sum(exp(s - m)) over s >= piv and over s >= lo. With write != 0 it also copies the values in
    [lo, hi_x) to buf and returns how many it wrote.

    Partial sums stay per lane ([NPIV, BLOCK]) and are reduced across threads once at the end."""
    offs = tl.arange(0, ROWS)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]  # [ROWS, BLOCK]
    cnt = tl.zeros([NPIV, BLOCK], tl.float32)
    mass = tl.zeros([NPIV, BLOCK], tl.float32)
    mass_lo = tl.zeros([BLOCK], tl.float32)
    written = tl.full([], 0, tl.int32)
    for start in range(0, n, ROWS * BLOCK):
        idx = start + offs
        s = tl.load(src_ptr + idx, mask=idx < n, other=NEG_INF).to(tl.float32) * scale
        ge = s[None, :, :] >= piv[:, None, None]  # [NPIV, ROWS, BLOCK]
        cnt += tl.sum(ge.to(tl.float32), axis=1)
        if WITH_MASS:
            w = tl.exp(s - m)
            mass += tl.sum(tl.where(ge, w[None, :, :], 0.0), axis=1)
            mass_lo += tl.sum(tl.where(s >= lo, w, 0.0), axis=0)
        if write != 0:
            # slots in column-major order (any bijection will do: buf is a multiset): down a
            # column within the thread, then past the earlier columns' totals
            inside = ((s >= lo) & (s < hi_x)).to(tl.int32)
            down = tl.cumsum(inside, axis=0)  # [ROWS, BLOCK]
            col_total = tl.sum(inside, axis=0)  # [BLOCK]
            before = tl.cumsum(col_total, axis=0) - col_total
            pos = written + before[None, :] + down - 1
            tl.store(buf_ptr + pos, s, mask=inside != 0)
            written += tl.sum(col_total, axis=0)
    return tl.sum(cnt, axis=1), tl.sum(mass, axis=1), tl.sum(mass_lo, axis=0), written


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
        if copied != 0:
            cnt, mass, mass_lo, n_new = _pivot_pass(
                buf_ptr, n_buf, inv_t * 0.0 + 1.0, m, lo, hi, piv, buf_ptr, 0,
                BLOCK, ROWS, NPIV, IS_MASS,
            )  # fmt: skip
            cnt += base_c
            mass += base_m
        else:
            write = (c_lo - c_hi <= 0.5 * V).to(tl.int32)
            if IS_MASS:
                hi_x = tl.where(first != 0, POS_INF, hi)
            else:
                hi_x = hi * 0.0 + POS_INF
            cnt, mass, mass_lo, n_new = _pivot_pass(
                row_ptr, V, inv_t, m, lo, hi_x, piv, buf_ptr, write, BLOCK, ROWS, NPIV, IS_MASS
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


__all__ = ["threshold_search", "NEG_INF", "POS_INF"]
