"""Triton helpers of the sampler: the multi-pivot threshold search (top-k counts, top-p masses).

Every loop reads [ROWS, BLOCK] tiles and keeps 4 tiles in flight: each slot is used, then
refilled 4 tiles ahead. With one program per row a loop that waits on its own load each
iteration is bound by memory latency, not bandwidth (measured on an H100: ~0.8 us per dependent
load, ~120 us per pass over 256 x 151,936 fp32 with one 1024-element tile in flight).
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice

NEG_INF = tl.constexpr(float("-inf"))
POS_INF = tl.constexpr(float("inf"))
NO_ID = tl.constexpr(2147483647)


@triton.jit
def _mix32(x):
    # lowbias32 on uint32 (multiplies wrap mod 2^32), same as noise.mix32
    x = x ^ (x >> 16)
    x = x * 0x21F0AAAD
    x = x ^ (x >> 15)
    x = x * 0x735A2D97
    return x ^ (x >> 15)


@triton.jit
def gumbel(key, idx, FAST_LOG: tl.constexpr):
    bits = _mix32(_mix32(idx.to(tl.uint32)) ^ key) >> 9
    u = (bits.to(tl.float32) + 0.5) * (1.0 / 8388608.0)
    if FAST_LOG:  # lg2.approx: ~2^-22 absolute error, a third of the instructions of logf
        # -log(u) for u near 1 (the largest noise) needs relative accuracy: from v = 1 - u
        # (exact) by its series below 1/16 (error ~v^6 / 6), else fast; seen on an H100 (call
        # 2): 1 row in ~900 drew another token (key gap 0.2) with -fast_logf(u) alone
        v = (8388607.5 - bits.to(tl.float32)) * (1.0 / 8388608.0)
        series = v * (1.0 + v * (0.5 + v * (1.0 / 3.0 + v * (0.25 + v * 0.2))))
        inner = tl.where(v < 0.0625, series, -libdevice.fast_logf(u))
        return -libdevice.fast_logf(inner)
    else:
        return -tl.log(-tl.log(u))


@triton.jit
def better(k, i, best, best_i):
    """Whether key k (token i) beats best (token best_i): larger key, the smaller id on ties."""
    return (k > best) | ((k == best) & (k > NEG_INF) & (i < best_i))


@triton.jit
def tile_offsets(BLOCK: tl.constexpr, ROWS: tl.constexpr):
    """[ROWS, BLOCK] offsets of one tile: row r holds BLOCK consecutive elements."""
    return tl.arange(0, ROWS)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]


@triton.jit
def load_tile(ptr, idx, n):
    return tl.load(ptr + idx, mask=idx < n, other=NEG_INF)


@triton.jit
def _tally(s, piv, m, lo, hi, cnt, mass, mass_lo, bmin, bmax, WITH_MASS: tl.constexpr):
    """Adds one tile s [ROWS, BLOCK] to the per-lane counts / masses at the pivots, and to the
    per-lane min / max of the values in the bracket [lo, hi)."""
    ge = s[None, :, :] >= piv[:, None, None]  # [NPIV, ROWS, BLOCK]
    cnt += tl.sum(ge.to(tl.float32), axis=1)
    inside = (s >= lo) & (s < hi)
    bmin = tl.minimum(bmin, tl.min(tl.where(inside, s, POS_INF), axis=0))
    bmax = tl.maximum(bmax, tl.max(tl.where(inside, s, NEG_INF), axis=0))
    if WITH_MASS:
        w = tl.exp(s - m)
        mass += tl.sum(tl.where(ge, w[None, :, :], 0.0), axis=1)
        mass_lo += tl.sum(tl.where(s >= lo, w, 0.0), axis=0)
    return cnt, mass, mass_lo, bmin, bmax


@triton.jit
def _pivot_pass(
    src_ptr,
    n,
    scale,
    m,
    lo,
    hi,
    piv,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    NPIV: tl.constexpr,
    WITH_MASS: tl.constexpr,
):
    """Over s = src[:n] * scale: counts [NPIV] of s >= piv; with WITH_MASS the masses
    sum(exp(s - m)) over s >= piv and over s >= lo; the min and max of s in [lo, hi). Partial
    sums stay per lane ([NPIV, BLOCK]) and are reduced across threads once at the end."""
    offs = tile_offsets(BLOCK, ROWS)
    T: tl.constexpr = ROWS * BLOCK
    cnt = tl.zeros([NPIV, BLOCK], tl.float32)
    mass = tl.zeros([NPIV, BLOCK], tl.float32)
    mass_lo = tl.zeros([BLOCK], tl.float32)
    bmin = tl.full([BLOCK], POS_INF, tl.float32)
    bmax = tl.full([BLOCK], NEG_INF, tl.float32)
    t0 = load_tile(src_ptr, offs, n)
    t1 = load_tile(src_ptr, T + offs, n)
    t2 = load_tile(src_ptr, 2 * T + offs, n)
    t3 = load_tile(src_ptr, 3 * T + offs, n)
    for start in range(4 * T, n + 4 * T, 4 * T):
        s = t0.to(tl.float32) * scale
        t0 = load_tile(src_ptr, start + offs, n)
        cnt, mass, mass_lo, bmin, bmax = _tally(
            s, piv, m, lo, hi, cnt, mass, mass_lo, bmin, bmax, WITH_MASS
        )
        s = t1.to(tl.float32) * scale
        t1 = load_tile(src_ptr, start + T + offs, n)
        cnt, mass, mass_lo, bmin, bmax = _tally(
            s, piv, m, lo, hi, cnt, mass, mass_lo, bmin, bmax, WITH_MASS
        )
        s = t2.to(tl.float32) * scale
        t2 = load_tile(src_ptr, start + 2 * T + offs, n)
        cnt, mass, mass_lo, bmin, bmax = _tally(
            s, piv, m, lo, hi, cnt, mass, mass_lo, bmin, bmax, WITH_MASS
        )
        s = t3.to(tl.float32) * scale
        t3 = load_tile(src_ptr, start + 3 * T + offs, n)
        cnt, mass, mass_lo, bmin, bmax = _tally(
            s, piv, m, lo, hi, cnt, mass, mass_lo, bmin, bmax, WITH_MASS
        )
    cnt = tl.sum(cnt, axis=1)
    return cnt, tl.sum(mass, axis=1), tl.sum(mass_lo, axis=0), tl.min(bmin, 0), tl.max(bmax, 0)


@triton.jit
def _copy_tile(
    s, idx, lo, hi_x, buf_ptr, ibuf_ptr, cap, written, key, noisy, nzk, nzi,
    FAST_LOG: tl.constexpr,
):  # fmt: skip
    """Appends the values of tile s in [lo, hi_x) to buf (and their token ids to ibuf) at
    written.. (those past cap are counted, not stored); returns the new count. Slots go in
    column-major order (any bijection will do: buf is a multiset): down a column within the
    thread, then past the earlier columns' totals. If noisy, the values >= hi_x (kept whatever
    the search finds below hi_x) also update the per-lane best noisy key nzk (token nzi)."""
    inside = ((s >= lo) & (s < hi_x)).to(tl.int32)
    col_total = tl.sum(inside, axis=0)  # [BLOCK]
    if tl.sum(col_total, axis=0) > 0:  # most tiles hold nothing to copy
        before = tl.cumsum(col_total, axis=0) - col_total
        pos = written + before[None, :] + tl.cumsum(inside, axis=0) - 1
        keep = (inside != 0) & (pos < cap)
        tl.store(buf_ptr + pos, s, mask=keep)
        tl.store(ibuf_ptr + pos, idx, mask=keep)
    if noisy:
        if tl.max(tl.max(s, axis=1), axis=0) >= hi_x:
            k = tl.where(s >= hi_x, s + gumbel(key, idx, FAST_LOG), NEG_INF)
            k_max = tl.max(k, axis=0)
            k_idx = tl.min(tl.where(k == k_max[None, :], idx, NO_ID), axis=0)
            upd = better(k_max, k_idx, nzk, nzi)
            nzk = tl.where(upd, k_max, nzk)
            nzi = tl.where(upd, k_idx, nzi)
    return written + tl.sum(col_total, axis=0), nzk, nzi


@triton.jit
def _best_of(nzk, nzi):
    """The best (key, token) of per-lane bests [BLOCK]."""
    top = tl.max(nzk, axis=0)
    return top, tl.min(tl.where(nzk == top, nzi, NO_ID), axis=0)


@triton.jit
def copy_pass(
    row_ptr, V, inv_t, lo, hi_x, buf_ptr, ibuf_ptr, cap, key, noisy,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, FAST_LOG: tl.constexpr,
):  # fmt: skip
    """Copies the values s = row * inv_t in [lo, hi_x) and their ids to buf / ibuf (room for
    cap); returns how many there are (a copy is complete only if that is <= cap) and, if noisy,
    the best noisy key over s >= hi_x and its token (else -inf, NO_ID). Each tile's slots come
    from a block-wide scan (barriers): this pass costs ~2x a plain one on an H100; tiles of
    2 x 512 (one scan per 1,024 tokens, two in flight) were slower still (call 3)."""
    offs = tile_offsets(BLOCK, ROWS)
    T: tl.constexpr = ROWS * BLOCK
    written = tl.full([], 0, tl.int32)
    nzk = tl.full([BLOCK], NEG_INF, tl.float32)
    nzi = tl.full([BLOCK], NO_ID, tl.int32)
    t0 = load_tile(row_ptr, offs, V)
    t1 = load_tile(row_ptr, T + offs, V)
    t2 = load_tile(row_ptr, 2 * T + offs, V)
    t3 = load_tile(row_ptr, 3 * T + offs, V)
    for start in range(4 * T, V + 4 * T, 4 * T):
        idx = start - 4 * T + offs
        s = t0.to(tl.float32) * inv_t
        t0 = load_tile(row_ptr, start + offs, V)
        written, nzk, nzi = _copy_tile(
            s, idx, lo, hi_x, buf_ptr, ibuf_ptr, cap, written, key, noisy, nzk, nzi, FAST_LOG
        )
        s = t1.to(tl.float32) * inv_t
        t1 = load_tile(row_ptr, start + T + offs, V)
        written, nzk, nzi = _copy_tile(
            s, idx + T, lo, hi_x, buf_ptr, ibuf_ptr, cap, written, key, noisy, nzk, nzi, FAST_LOG
        )
        s = t2.to(tl.float32) * inv_t
        t2 = load_tile(row_ptr, start + 2 * T + offs, V)
        written, nzk, nzi = _copy_tile(
            s, idx + 2 * T, lo, hi_x, buf_ptr, ibuf_ptr, cap, written, key, noisy, nzk, nzi,
            FAST_LOG,
        )  # fmt: skip
        s = t3.to(tl.float32) * inv_t
        t3 = load_tile(row_ptr, start + 3 * T + offs, V)
        written, nzk, nzi = _copy_tile(
            s, idx + 3 * T, lo, hi_x, buf_ptr, ibuf_ptr, cap, written, key, noisy, nzk, nzi,
            FAST_LOG,
        )  # fmt: skip
    tl.debug_barrier()  # the copy's stores before any thread of the block reads it
    top, top_i = _best_of(nzk, nzi)
    return written, top, top_i


@triton.jit
def recopy_pass(
    buf_ptr, ibuf_ptr, n, lo, hi_x, key, noisy,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, FAST_LOG: tl.constexpr,
):  # fmt: skip
    """Compacts buf[:n] / ibuf[:n] in place to the values in [lo, hi_x); returns how many and,
    if noisy, the best noisy key among the values >= hi_x it drops, and its token. Safe in
    place: a tile's values go to slots below its own end, and _copy_tile's cumsum (a block
    barrier) puts every warp's loads of the tile before any store."""
    offs = tile_offsets(BLOCK, ROWS)
    T: tl.constexpr = ROWS * BLOCK
    written = tl.full([], 0, tl.int32)
    nzk = tl.full([BLOCK], NEG_INF, tl.float32)
    nzi = tl.full([BLOCK], NO_ID, tl.int32)
    t0 = load_tile(buf_ptr, offs, n)
    i0 = tl.load(ibuf_ptr + offs, mask=offs < n, other=0)
    t1 = load_tile(buf_ptr, T + offs, n)
    i1 = tl.load(ibuf_ptr + T + offs, mask=T + offs < n, other=0)
    for start in range(2 * T, n + 2 * T, 2 * T):
        s, idx = t0, i0
        t0 = load_tile(buf_ptr, start + offs, n)
        i0 = tl.load(ibuf_ptr + start + offs, mask=start + offs < n, other=0)
        written, nzk, nzi = _copy_tile(
            s, idx, lo, hi_x, buf_ptr, ibuf_ptr, n, written, key, noisy, nzk, nzi, FAST_LOG
        )
        s, idx = t1, i1
        t1 = load_tile(buf_ptr, start + T + offs, n)
        i1 = tl.load(ibuf_ptr + start + T + offs, mask=start + T + offs < n, other=0)
        written, nzk, nzi = _copy_tile(
            s, idx, lo, hi_x, buf_ptr, ibuf_ptr, n, written, key, noisy, nzk, nzi, FAST_LOG
        )
    tl.debug_barrier()  # the copy's stores before any thread of the block reads it
    top, top_i = _best_of(nzk, nzi)
    return written, top, top_i


@triton.jit
def threshold_search(
    row_ptr, buf_ptr, ibuf_ptr, cap, V, inv_t, m, lo, c_lo, goal, target_in, copied, n_buf,
    full_lo, piv0, use0, key, need_from, pre, cnt0, mass0, mass_lo0, min_recopy,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, NPIV: tl.constexpr, IS_MASS: tl.constexpr,
    MAX_PASSES: tl.constexpr, COMPACT: tl.constexpr, FAST_LOG: tl.constexpr,
):  # fmt: skip
    """Largest lo (a data value or just below one) with F(lo) >= target, F = count or mass of
    s >= v over the row s = row * inv_t (m: its max). target = goal (a count), or target_in if
    > 0, else goal * F(lo at entry) (a fraction of the mass). Invariant: lo feasible, hi not;
    each pass tests NPIV pivots between them (the first pass piv0 if use0, e.g. estimates from
    a sample; its last pivot must be m, or +inf if infeasible with another one); it stops when
    [lo, hi) holds one element or one value (or one float): then s >= lo is exact. If pre, the
    first pass was done elsewhere (fused into pass A): its counts cnt0, masses mass0 at piv0 and
    mass of s >= lo mass_lo0 (reference m) are used instead.

    Once at most cap (about half the row) would be copied, the next full pass copies the values
    that matter (with their ids) to buf: all s >= lo for counts (so a top-p search after top-k
    reuses them), the bracket [lo, hi) for masses (all s >= lo before the first pass). Later
    passes read only buf and add the count / mass above what was copied (base_*); with COMPACT,
    once the bracket holds a quarter of the copy or less, the copy is compacted to it in place.
    copied, n_buf (how many in buf) and full_lo (buf holds every s >= full_lo; +inf if not) go
    in and out. When a mass search copies a bracket [lo, hi) and need_from < hi (the unfiltered
    winner, at need_from, may be cut), the copy also finds the best noisy key over s >= nz_top
    (= hi then; lowered as the copy is compacted), so the final draw needs no pass over the row.
    Returns lo, F_count(lo), copied, n_buf, full_lo, nz_top (+inf: not tracked), its key, id
    and the number of passes."""
    i = tl.arange(0, NPIV).to(tl.float32)
    zero = c_lo * 0.0
    hi = m
    c_hi = zero  # count of s >= hi; the first pass tests hi = m itself, so nothing is above
    m_hi = zero  # mass of s >= hi
    base_c = zero
    base_m = zero
    nz_top = zero + POS_INF
    nzk = zero + NEG_INF
    nzi = tl.full([], NO_ID, tl.int32)
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
        piv = tl.where((first != 0) & (use0 != 0), piv0, piv)
        if IS_MASS:  # masses: the bracket, but all s >= lo before the first pass
            hi_x = tl.where(first != 0, POS_INF, hi)
        else:  # counts: all s >= lo, for a top-p search after this one
            hi_x = hi * 0.0 + POS_INF
        in_play = tl.where(hi_x < POS_INF, c_lo - c_hi, c_lo)
        if (copied == 0) & (in_play <= cap):
            # few enough left: copy them once, then every pass reads only the copy
            noisy = (hi_x < POS_INF) & (need_from < hi_x)
            n_buf, nzk, nzi = copy_pass(
                row_ptr, V, inv_t, lo, hi_x, buf_ptr, ibuf_ptr, cap, key, noisy, BLOCK, ROWS,
                FAST_LOG,
            )  # fmt: skip
            nz_top = tl.where(noisy, hi_x, POS_INF)
            copied = tl.full([], 1, tl.int32)
            full_lo = tl.where(hi_x < POS_INF, POS_INF, lo)
            base_c = tl.where(hi_x < POS_INF, c_hi, 0.0)
            base_m = tl.where(hi_x < POS_INF, m_hi, 0.0)
        elif COMPACT:
            if (
                (copied != 0)
                & (in_play * 4.0 <= n_buf)
                & (n_buf > min_recopy)
                & ((hi_x == POS_INF) | (full_lo == POS_INF))
            ):
                # the bracket holds a quarter of the copy or less: compact the copy to it (a copy
                # holding every s >= full_lo stays so: counts keep all s >= lo, masses skip this);
                # not for a copy of min_recopy values or fewer (a pass over it costs as much)
                noisy = (hi_x < POS_INF) & (nz_top < POS_INF)
                n_buf, k2, i2 = recopy_pass(
                    buf_ptr, ibuf_ptr, n_buf, lo, hi_x, key, noisy, BLOCK, ROWS, FAST_LOG
                )
                upd = better(k2, i2, nzk, nzi)
                nzk = tl.where(upd, k2, nzk)
                nzi = tl.where(upd, i2, nzi)
                nz_top = tl.where(noisy, hi_x, nz_top)
                full_lo = tl.where(hi_x < POS_INF, POS_INF, lo)
                base_c = tl.where(hi_x < POS_INF, c_hi, 0.0)
                base_m = tl.where(hi_x < POS_INF, m_hi, 0.0)
        if (first != 0) & (pre != 0):
            cnt, mass, mass_lo, bmin, bmax = cnt0, mass0, mass_lo0, m * 0.0, m * 0.0
        elif copied != 0:
            cnt, mass, mass_lo, bmin, bmax = _pivot_pass(
                buf_ptr, n_buf, inv_t * 0.0 + 1.0, m, lo, hi, piv, BLOCK, ROWS, NPIV, IS_MASS
            )
            cnt += base_c
            mass += base_m
            mass_lo += base_m
        else:
            cnt, mass, mass_lo, bmin, bmax = _pivot_pass(
                row_ptr, V, inv_t, m, lo, hi, piv, BLOCK, ROWS, NPIV, IS_MASS
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
        if (first == 0) & (bmin == bmax):
            # the bracket [lo, hi) held one value (ties, e.g. bf16 logits): F(it) = F(lo) and
            # every larger threshold has F(hi), so it is the answer
            lo = bmin
            moving = moving * 0
        first = 0
        passes += 1
    return lo, c_lo, copied, n_buf, full_lo, nz_top, nzk, nzi, passes


__all__ = [
    "threshold_search",
    "copy_pass",
    "recopy_pass",
    "gumbel",
    "better",
    "tile_offsets",
    "load_tile",
    "NEG_INF",
    "POS_INF",
    "NO_ID",
]
