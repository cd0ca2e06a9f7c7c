"""Per-pixel combination kernels of the stacking engine (see :mod:`utils.stack.combine`).

Per pixel, the samples of a row block are sorted with a Batcher odd-even
merge network vectorised across pixels (SIMD min/max, no branches).  Sigma
clipping then only ever keeps a contiguous range of the sorted samples, so the
median is O(1), the MAD is a binary search over the two sorted distance
sequences either side of the median (O(log n)) and each clipping iteration
only moves the range ends.  Counts, means and variances are loops over pixels
again (SIMD).  The kernels are numba functions compiled with ``nogil=True``;
a pure-numpy implementation of the same maths
(:func:`utils.stack.kernels_numpy._combine_numpy`) is the
fallback without numba and the kernels' test oracle.

Masked stores: LLVM (>= 17, AVX2 target) folds ``a[p] = u if cond else a[p]``, and any
``a[p] = select(cond, a[p], v)`` such as a min/max written back over one of its
operands, into a ``vmaskmovps/pd`` store of ``v`` where ``not cond``.  On AMD Zen those
masked stores are microcoded (one per ~10-20 cycles): the sorting network ran 3x slower
than with plain stores (n = 10 and 50 frames), and the lane loops of the first clipping
iteration likewise.  The loops below therefore never store a select over the value
loaded from the same place: either the new value goes to another array, or a store to
a scratch array sits between the load and the store (which blocks the fold; the numbers
stored are the same).  ``tests/utils/test_stacking.py`` checks the compiled code for
masked stores.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .lanes import (  # noqa: F401  (the _py functions: the interpreted kernels' helpers)
    _column_sums,
    _column_sums_py,
    _count_outside,
    _count_outside_py,
    _count_valid,
    _count_valid_py,
    _mad_pair,
    _mad_pair_py,
    _masked_ss,
    _masked_ss_py,
    _masked_sum,
    _masked_sum_py,
    _range_sums,
    _range_sums_py,
)
from .networks import batcher_network  # noqa: F401  (re-exported: the kernels' comparators)

try:  # numba is a hard dependency, but keep a working (slower) path without it
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised by monkeypatching HAVE_NUMBA
    HAVE_NUMBA = False

#: Factor from median absolute deviation to Gaussian sigma, ``1/Phi^-1(3/4)``
#: (astropy's constant, so clipping bounds agree with ``astropy.stats``).
MAD_TO_STD = 1.482602218505602

#: The compiled kernels call the lane loops of lanes.py (see ``tests/utils/test_numba_cache.py``):
#: that file's stamp here invalidates this file's numba cache when it changes.
NUMBA_DEPENDS = {"lanes.py": "aa239c9a93fbc6be"}


# --------------------------------------------------------------------------------------
# numba kernels
# --------------------------------------------------------------------------------------
def _prepare_py(row, sub, scale, saturation, nsat):
    """Raw rows -> samples: saturation count, subtract, scale, missing -> +inf.

    ``row`` (float32, 1-D) is modified in place; ``sub`` is float64 (empty when
    nothing is subtracted); where ``row >= saturation`` the sample becomes
    missing and ``nsat`` (int16) is incremented (``saturation = inf``: no
    check, ``nsat`` untouched).  Returns the number of saturated samples.

    Branch-free on purpose: a conditional ``nsat`` update compiles to AVX-512
    masked stores, which take a microcode assist on not-yet-written
    (copy-on-write zero) pages and ran 10x slower.
    """
    n = row.shape[0]
    inf = np.float32(np.inf)
    has_sub = sub.shape[0] == n
    count = 0
    if saturation < np.inf:
        for p in range(n):
            raw = row[p]
            sat = raw >= saturation
            v = np.float64(raw) - sub[p] if has_sub else np.float64(raw)
            v32 = np.float32(v * scale)
            # NaN/inf (and overflow) become missing samples, sorted to the end
            row[p] = v32 if (abs(v32) < inf and not sat) else inf
            nsat[p] += sat
            count += sat
    else:
        for p in range(n):
            v = np.float64(row[p]) - sub[p] if has_sub else np.float64(row[p])
            v32 = np.float32(v * scale)
            row[p] = v32 if abs(v32) < inf else inf
    return count


def _prepare_u16_py(raw, row, sub, scale, saturation, nsat):
    """:func:`_prepare_py` reading big-endian FITS ``uint16`` bytes (BZERO 32768) directly.

    ``raw`` is the uint8 view of the rows as stored (two bytes per sample,
    most significant first, sign bit flipped by the BZERO convention); the
    physical value ``((hi << 8) | lo) ^ 0x8000`` is exact in float32, so this
    equals :func:`utils.io.fitsio.read_rows` followed by :func:`_prepare_py`, in
    one pass over the bytes instead of three over the samples.
    """
    n = row.shape[0]
    inf = np.float32(np.inf)
    has_sub = sub.shape[0] == n
    count = 0
    if saturation < np.inf:
        for p in range(n):
            raw_v = np.float32(((np.uint16(raw[2 * p]) << 8) | np.uint16(raw[2 * p + 1]))
                               ^ np.uint16(0x8000))
            sat = raw_v >= saturation
            v = np.float64(raw_v) - sub[p] if has_sub else np.float64(raw_v)
            v32 = np.float32(v * scale)
            row[p] = v32 if (abs(v32) < inf and not sat) else inf
            nsat[p] += sat
            count += sat
    else:
        for p in range(n):
            raw_v = np.float32(((np.uint16(raw[2 * p]) << 8) | np.uint16(raw[2 * p + 1]))
                               ^ np.uint16(0x8000))
            v = np.float64(raw_v) - sub[p] if has_sub else np.float64(raw_v)
            v32 = np.float32(v * scale)
            row[p] = v32 if abs(v32) < inf else inf
    return count


def _sort_columns_py(x, lo, hi, p0, p1, tmp):
    """Apply the sorting network to the columns ``p0:p1`` of ``x`` (n, npix).

    The pixel loop is innermost, over 0-based slices, so LLVM turns the
    compare-exchange into SIMD min/max (3-4x faster than indexing ``x[i, p]``).
    ``tmp`` is float32 scratch of at least ``p1 - p0`` values: the minimum is also
    stored there, before the two stores into ``x`` (see the module notes on masked
    stores).
    """
    for c in range(lo.shape[0]):
        a_row = x[lo[c], p0:p1]
        b_row = x[hi[c], p0:p1]
        for p in range(p1 - p0):
            a = a_row[p]
            b = b_row[p]
            small = a if a < b else b
            tmp[p] = small
            b_row[p] = b if a < b else a
            a_row[p] = small


def _kth_distance_py(x, p, half, lo, hi, c, r):
    """``r``-th and ``r+1``-th smallest (0-based) of ``|x[lo:hi, p] - c|``.

    Column ``p`` is sorted and ``c`` is its median.  Distances grow outward
    from the median: ``left[t] = c - x[half-1-t]`` and ``right[t] = x[half+t] - c``
    are two sorted sequences, so this is the k-th element of the union of two
    sorted arrays: a binary search on how many of the ``r + 1`` smallest come
    from the left, O(log n); the next one is the smaller of the two heads.
    Written with selects instead of branches (the comparisons are unpredictable).
    """
    take = r + 1
    a_min = max(0, take - (hi - half))
    a_max = min(half - lo, take)
    while a_min < a_max:
        a = (a_min + a_max) >> 1  # candidate count from the left
        # too few from the left if the next left distance is below the last right one
        more = c - x[half - 1 - a, p] < x[half + take - a - 1, p] - c
        a_min = a + 1 if more else a_min
        a_max = a_max if more else a
    a = a_min
    b = take - a
    d_left = c - x[half - a, p] if a > 0 else -1.0
    d_right = x[half + b - 1, p] - c if b > 0 else -1.0
    kth = d_left if d_left > d_right else d_right
    n_left = c - x[half - 1 - a, p] if half - 1 - a >= lo else np.inf
    n_right = x[half + b, p] - c if half + b < hi else np.inf
    return kth, (n_left if n_left < n_right else n_right)


def _range_std_py(x, p, lo, hi):
    """Population standard deviation of ``x[lo:hi, p]`` (two-pass, float64)."""
    total = 0.0
    for k in range(lo, hi):
        total += x[k, p]
    mean = total / (hi - lo)
    ss = 0.0
    for k in range(lo, hi):
        d = x[k, p] - mean
        ss += d * d
    return math.sqrt(ss / (hi - lo))


def _clip_range_py(x, p, lo, hi, sig_lo, sig_hi, maxiters, min_scale, guard):
    """Iterative sigma clipping of the sorted samples ``x[lo:hi, p]``.

    Centre = median, scale = MAD_TO_STD x MAD of the accepted range (its
    standard deviation when the MAD is 0 but the samples differ, and never
    below ``min_scale``), in float64; with ``guard``, samples flagged by that
    scale are rejected only if they also lie outside the thresholds set by the
    standard deviation of the unflagged samples (when it is larger);
    samples strictly outside ``[c - sig_lo*std, c + sig_hi*std]`` are
    rejected (cumulatively).  The accepted set always stays a contiguous range
    of the sorted samples, so only its ends move.  Returns ``(lo, hi)``.

    Columns are read in place, strided: the chunk is cache-resident, and this
    measured faster than transposing each chunk first.
    """
    it = 0
    while hi > lo and (maxiters <= 0 or it < maxiters):
        k = hi - lo
        half = lo + k // 2
        c = 0.5 * (np.float64(x[lo + (k - 1) // 2, p]) + np.float64(x[half, p]))
        mad, after = _kth_distance(x, p, half, lo, hi, c, (k - 1) // 2)
        if k % 2 == 0:  # even count: numpy's median averages the two middle distances
            mad = 0.5 * (mad + after)
        std = mad * MAD_TO_STD
        if std == 0.0 and x[lo, p] != x[hi - 1, p]:
            # over half the samples equal the median (quantised data): a zero MAD says
            # nothing about the spread and would reject every other sample
            std = _range_std(x, p, lo, hi)
        if std < min_scale:
            # quantised samples cannot resolve a smaller spread: a MAD that collapses onto
            # (near-)tied values would reject good samples
            std = min_scale
        lower = c - std * sig_lo
        upper = c + std * sig_hi
        nlo = lo
        while nlo < hi and x[nlo, p] < lower:
            nlo += 1
        nhi = hi
        while nhi > nlo and x[nhi - 1, p] > upper:
            nhi -= 1
        if guard and (nlo > lo or nhi < hi) and nhi - nlo >= 2:
            # confirm: with few samples the MAD often underestimates the spread and flags good
            # samples; reject only beyond the thresholds of the unflagged samples' own std
            k_in = nhi - nlo
            s_in = _range_std(x, p, nlo, nhi) * math.sqrt(k_in / (k_in - 1.0))
            if s_in < min_scale:
                s_in = min_scale
            if s_in > std:
                lower = c - s_in * sig_lo
                upper = c + s_in * sig_hi
                nlo = lo
                while nlo < hi and x[nlo, p] < lower:
                    nlo += 1
                nhi = hi
                while nhi > nlo and x[nhi - 1, p] > upper:
                    nhi -= 1
        it += 1
        if nlo == lo and nhi == hi:
            break
        lo = nlo
        hi = nhi
    return lo, hi


#: :func:`_first_clip_py` leaves pixels needing more than its plain iteration (a zero MAD on
#: differing samples, flags to confirm) to the scalar loop when at most 1/SCALAR_FEW of its
#: pixels do, instead of extra passes over all of them (measured break-even ~1/10).
SCALAR_FEW = 16

#: Pixels per call of :func:`_first_clip_py` (its float64 scratch is ``(8, FIRST_SUB)``); at
#: 64 pixels the lane loops spent more on set-up than they saved in cache (measured).
FIRST_SUB = 256


def _first_clip_py(x, p0, size, m, sig_lo, sig_hi, min_scale, guard, aux, ilo, ihi, state):
    # ``min_scale`` is here a float64 array, the smallest clipping scale of each pixel
    """First clipping iteration of the sorted columns ``p0:p0+size``, vectorised over pixels.

    For pixels whose ``m`` samples are all valid (rows ``0:m`` sorted,
    ``m >= 3``), the first iteration of :func:`_clip_range_py` with
    ``(lo, hi) = (0, m)`` is computed with the same float64 operations in the
    same order, but as loops over pixels (SIMD, no per-pixel branches or
    gathers): the centre from two rows; the MAD from ranks ``r`` and ``r + 1`` of
    the distances ``|x - c|`` (two sorted sequences either side of the centre, see
    :func:`_mad_pair_py`); the rejected samples by counting; the guard's standard
    deviation by masked sums.

    Writes ``state[q]``: 0 where the iteration rejects nothing (the scalar
    loop stops there: most pixels), 1 where it moved the range to
    ``ilo[q]:ihi[q]`` (the caller continues with the scalar loop from there),
    2 where the caller restarts the scalar loop: pixels whose MAD is 0 on
    differing samples, or (``guard``) with a flagged sample, when at most
    ``size // SCALAR_FEW`` pixels are such; when more, this function does
    it for all of them (the standard deviation of the samples as the scale,
    the guard's masked sums), the same numbers.  ``aux``: float64 scratch ``(8, size)``.
    """
    r = (m - 1) // 2
    c = aux[0, :size]
    kth = aux[1, :size]
    nxt = aux[2, :size]
    std = aux[3, :size]
    lower = aux[4, :size]
    upper = aux[5, :size]
    tot = aux[6, :size]
    ss = aux[7, :size]
    xa = x[r, p0:p0 + size]
    xb = x[m // 2, p0:p0 + size]
    for q in range(size):
        c[q] = 0.5 * (np.float64(xa[q]) + np.float64(xb[q]))
    _mad_pair(x, p0, size, m, c, kth, nxt, ss)  # ss: scratch until used below
    first = x[0, p0:p0 + size]
    last = x[m - 1, p0:p0 + size]
    even = m % 2 == 0
    degenerate = 0
    for q in range(size):
        mad = 0.5 * (kth[q] + nxt[q]) if even else kth[q]
        s = mad * MAD_TO_STD
        std[q] = s
        state[q] = 0
        degenerate += (s == 0.0) & (first[q] != last[q])
    scale = std  # the clipping scale before the floor: the MAD's, or kth below
    if 0 < degenerate <= size // SCALAR_FEW:  # a few: the scalar loop restarts them
        for q in range(size):
            state[q] = 2 if (std[q] == 0.0) & (first[q] != last[q]) else 0
    elif degenerate:
        # a zero MAD on differing samples (quantised data, few frames: 8-17 % of the pixels
        # of 5-frame masters): the std of all m samples instead, _range_std_py's two passes
        # over the rows in order (the same float64 sums), instead of the scalar loop
        _column_sums(x, p0, size, m, tot, ss)
        for q in range(size):  # into kth (free now), not over std (module notes)
            zero = (std[q] == 0.0) & (first[q] != last[q])
            kth[q] = math.sqrt(ss[q] / m) if zero else std[q]
        scale = kth
    for q in range(size):
        s = scale[q]
        s = min_scale[q] if s < min_scale[q] else s
        lower[q] = c[q] - s * sig_lo
        upper[q] = c[q] + s * sig_hi
        std[q] = s  # after the other stores: not folded into a masked store
    _count_outside(x, p0, size, m, lower, upper, ilo, ihi)
    flagged = 0
    for q in range(size):
        flagged += ((ilo[q] > 0) | (ihi[q] < m)) & (state[q] != 2)
    # the guard confirms flags; with a few flagged pixels (0.1-0.3 % of the pixels of the
    # campaign's masters) the scalar loop restarts them instead of two masked passes here
    restart = guard and flagged <= size // SCALAR_FEW
    if guard and not restart:
        # std of the unflagged samples ilo:ihi, two passes as _range_std_py (adding 0.0
        # outside the range leaves the float64 sums bit for bit the scalar ones)
        for q in range(size):
            tot[q] = 0.0
            ss[q] = 0.0
        for k in range(m):
            _masked_sum(x[k, p0:p0 + size], k, ilo, ihi, tot)
        for q in range(size):
            tot[q] = tot[q] / max(ihi[q] - ilo[q], 1)
        for k in range(m):
            _masked_ss(x[k, p0:p0 + size], k, ilo, ihi, tot, ss)
        widen = 0
        for q in range(size):
            k_in = ihi[q] - ilo[q]
            flagged = (ilo[q] > 0) | (ihi[q] < m)
            s_in = math.sqrt(ss[q] / max(k_in, 1)) * math.sqrt(k_in / (k_in - 1.0)) \
                if k_in >= 2 else 0.0
            s_in = min_scale[q] if s_in < min_scale[q] else s_in
            wide = flagged & (k_in >= 2) & (s_in > std[q])
            s = s_in if wide else std[q]
            lower[q] = c[q] - s * sig_lo
            upper[q] = c[q] + s * sig_hi
            widen += wide
        if widen:  # recount with the widened bounds (unchanged bounds give the same counts)
            _count_outside(x, p0, size, m, lower, upper, ilo, ihi)
    for q in range(size):
        moved = (ilo[q] > 0) | (ihi[q] < m)
        state[q] = 2 if (state[q] == 2) | (moved & restart) else np.uint8(moved)


def _finish_chunk_py(lo_a, hi_a, tot, size, ss, out_count, out_noise, out_data):
    """Outputs of ``size`` pixels: count ``hi_a - lo_a``, noise ``sqrt(ss / (count - 1))``
    (NaN below 2 samples) and data ``tot`` (the mean; NaN where the count is 0), in float32.

    One branch-free loop (SIMD) of its own: with the median's gather in it, it stayed
    scalar.  The count minus one goes to float64 through int32 (exact: counts < 2**15),
    which AVX2 converts 4 at a time (int64 it cannot).
    """
    for q in range(size):
        cnt = hi_a[q] - lo_a[q]
        out_count[q] = cnt
        std = math.sqrt(ss[q] / np.float64(np.int32(cnt - 1))) if cnt > 1 else np.nan
        out_noise[q] = np.float32(std)
        out_data[q] = np.float32(tot[q])


def _combine_kernel_py(x, npix, net_lo, net_hi, method, sig_lo, sig_hi, maxiters, min_scale,
                       floor, guard, chunk, out_data, out_noise, out_count, fast=True,
                       pool_width=0, pool_cons=1.0, pool_min=32):
    """Combine the block ``x[:, :npix]`` (n_frames rows of samples, +inf = missing).

    Writes ``out_data``, ``out_noise`` (float32) and ``out_count`` (int16),
    each of length ``npix``, and returns the number of samples rejected by
    clipping.  ``x`` is sorted in place per column (except for the mean).
    The rows of ``x`` may be longer than ``npix`` (padded stride).

    Each pixel's clipping scale is never below ``max(min_scale, floor[p])``
    (``floor``: float64, one value per pixel, the pooled scale of
    :func:`pooled_scale_floor`; empty: ``min_scale`` alone).  With ``pool_width > 0``
    (``npix`` a multiple of it, the image row width) that floor is computed here instead,
    row by row (:func:`_row_floor`, ``pool_cons`` the median of
    chi^2_(n-1) / (n-1), ``pool_min`` :data:`~utils.stack.pooled_floor.POOL_MIN_PIXELS`):
    the same numbers as passing :func:`pooled_scale_floor` as ``floor``, and ``floor`` is
    then ignored.

    Work goes chunk by chunk of ``chunk`` pixels (sized to stay in L2):
    sorting network, valid counts, sums and squared deviations are loops over
    pixels (SIMD); only the clipping walks each pixel's column.
    """
    n = x.shape[0]
    lo_a = np.zeros(chunk, dtype=np.int64)
    hi_a = np.zeros(chunk, dtype=np.int64)
    tot = np.zeros(chunk, dtype=np.float64)
    ss = np.zeros(chunk, dtype=np.float64)
    shift = np.zeros(chunk, dtype=np.float64)
    stmp = np.empty(chunk, dtype=np.float32)
    aux = np.empty((8, FIRST_SUB), dtype=np.float64)
    ilo = np.zeros(chunk, dtype=np.int64)
    ihi = np.zeros(chunk, dtype=np.int64)
    state = np.zeros(chunk, dtype=np.uint8)
    msa = np.zeros(chunk, dtype=np.float64)
    has_floor = floor.shape[0] > 0
    nrej = 0
    # pooled floor computed here, row by row (pool_width = the row width): from the
    # row's samples before they are sorted, while they are in cache (one pass less over
    # the block than pooled_scale_floor, the same sums in the same order)
    seg = pool_width if pool_width > 0 else npix
    pw = max(pool_width, 1)
    ptot = np.empty(pw, dtype=np.float64)
    pss = np.empty(pw, dtype=np.float64)
    pvar = np.empty(pw, dtype=np.float64)
    pbuf = np.empty(pw, dtype=np.float64)
    row_floor = 0.0
    for r0 in range(0, npix, seg):
        r1 = min(r0 + seg, npix)
        if pool_width > 0:
            row_floor = _row_floor(x, r0, r1 - r0, pool_min, pool_cons, ptot, pss, pvar, pbuf)
        for p0 in range(r0, r1, chunk):
            p1 = min(p0 + chunk, r1)
            size = p1 - p0
            if method != 0:
                _sort_columns(x, net_lo, net_hi, p0, p1, stmp)
            for q in range(size):
                lo_a[q] = 0
                hi_a[q] = 0
                tot[q] = 0.0
                ss[q] = 0.0
            _count_valid(x, p0, size, hi_a)  # valid (finite) samples per pixel
            if method == 2:
                for q in range(size):
                    state[q] = 2
                    f = row_floor if pool_width > 0 else (
                        floor[p0 + q] if has_floor else min_scale)
                    msa[q] = f if f > min_scale else min_scale
                if fast and n >= 3:
                    for s0 in range(0, size, FIRST_SUB):
                        s1 = min(s0 + FIRST_SUB, size)
                        _first_clip(x, p0 + s0, s1 - s0, n, sig_lo, sig_hi, msa[s0:s1], guard,
                                    aux, ilo[s0:s1], ihi[s0:s1], state[s0:s1])
                for q in range(size):
                    m = hi_a[q]
                    if m == n and state[q] == 0:  # the first iteration kept every sample
                        continue
                    if m == n and state[q] == 1:  # continue after the first iteration
                        lo = ilo[q]
                        hi = ihi[q]
                        if maxiters != 1:
                            lo, hi = _clip_range(x, p0 + q, lo, hi, sig_lo, sig_hi,
                                                 maxiters - 1 if maxiters > 0 else 0,
                                                 msa[q], guard)
                        nrej += m - (hi - lo)
                        lo_a[q] = lo
                        hi_a[q] = hi
                        continue
                    if m > 0:
                        lo, hi = _clip_range(x, p0 + q, 0, m, sig_lo, sig_hi, maxiters,
                                              msa[q], guard)
                        nrej += m - (hi - lo)
                        lo_a[q] = lo
                        hi_a[q] = hi
            # mean and variance of the accepted samples, vectorised over pixels
            if method == 0:  # unsorted: select by value, classic two passes
                for k in range(n):
                    row = x[k, p0:p1]
                    for q in range(size):
                        v = row[q]
                        tot[q] += np.float64(v) if v < np.inf else 0.0
                for q in range(size):
                    cnt = hi_a[q] - lo_a[q]
                    tot[q] = tot[q] / cnt if cnt > 0 else np.nan  # now the mean
                for k in range(n):
                    row = x[k, p0:p1]
                    for q in range(size):
                        d = np.float64(row[q]) - tot[q]
                        ss[q] += d * d if row[q] < np.inf else 0.0
            else:
                # sorted: select by rank range, one pass of sums shifted by the range's
                # median sample, which keeps sum(d^2) - sum(d)^2/n free of cancellation
                for q in range(size):
                    cnt = hi_a[q] - lo_a[q]
                    shift[q] = np.float64(x[lo_a[q] + (cnt - 1) // 2, p0 + q]) if cnt > 0 else 0.0
                _range_sums(x, p0, size, lo_a, hi_a, shift, tot, ss)
                for q in range(size):  # no conditional stores (module notes)
                    cnt = hi_a[q] - lo_a[q]
                    div = cnt if cnt > 0 else 1  # cnt = 0: sums 0, the values unused
                    t = tot[q]
                    dev = ss[q] - t * t / div
                    ss[q] = dev if dev > 0.0 else 0.0
                    tot[q] = shift[q] + t / div if cnt > 0 else np.nan  # now the mean
            _finish_chunk(lo_a, hi_a, tot, size, ss, out_count[p0:p1], out_noise[p0:p1],
                          out_data[p0:p1])
            if method == 1:  # the median of the accepted range (a gather: its own loop)
                for q in range(size):
                    p = p0 + q
                    lo = lo_a[q]
                    cnt = hi_a[q] - lo
                    if cnt > 0:
                        out_data[p] = np.float32(0.5 * (np.float64(x[lo + (cnt - 1) // 2, p])
                                                        + np.float64(x[lo + cnt // 2, p])))
    return nrej



# --------------------------------------------------------------------------------------
# the pooled clipping floor of one image row (see utils.stack.pooled_floor), computed by
# the combine kernel itself.  Here, in the kernel's own file, because numba's cache of a
# function is not invalidated by changes to the compiled functions of other files it calls
# --------------------------------------------------------------------------------------
def _row_variances_py(x, p0, width, tot, ss, var):
    """The sample variances (``ddof=1``, two passes in float64, frames summed in order) of
    the pixels ``p0:p0+width`` of the samples ``x`` that have every sample finite, in pixel
    order, into ``var[:m]``; returns ``m``.  ``tot``, ``ss``, ``var``: float64 scratch of
    ``width`` values."""
    n = x.shape[0]
    _column_sums(x, p0, width, n, tot, ss)
    m = 0
    for q in range(width):  # branch-free compaction of the finite variances, in order
        v = ss[q] / (n - 1)
        var[m] = v
        m += v < np.inf  # NaN (inf - inf) or inf: a missing sample
    return m


def _median_py(v, m, buf):
    """``np.median(v[:m])`` (float64, no NaN, ``m >= 1``), the same number, by a three-way
    quickselect whose partitions are branch-free loops; ``v[:m]`` and ``buf[:m]`` are
    overwritten.

    numba's ``np.median`` copies its input and partitions it with data-dependent branches:
    ~16 us for the 1024 row variances of a 1024-wide image, against ~3 us here.  Ranks
    ``(m - 1) // 2`` and ``m // 2`` are found; an even ``m`` gives ``(a + b) / 2`` as
    numba's and numpy's medians do.
    """
    k_lo = (m - 1) // 2
    k_hi = m // 2
    src = v[:m]
    dst = buf[:m]
    off = 0  # rank of src[0]'s segment within the whole
    size = m
    upper = np.inf  # smallest value known to lie above the segment
    while size > 16:
        a0 = src[0]
        a1 = src[size >> 1]
        a2 = src[size - 1]
        piv = max(min(a0, a1), min(max(a0, a1), a2))  # median of three
        nb = 0
        na = 0
        for i in range(size):
            val = src[i]
            # below from the front, above from the back (never over a committed slot:
            # at most the slot just committed, with the same value)
            dst[nb] = val
            dst[size - 1 - na] = val
            nb += val < piv
            na += val > piv
        ne = size - nb - na
        lo_r = k_lo - off
        hi_r = k_hi - off
        if lo_r < nb or lo_r < nb + ne:
            # the value above rank lo_r, when it is not in the segment kept: the pivot, or
            # the smallest value above it (a min() inside the loop above cost 3x its time)
            if hi_r >= nb + ne or (lo_r < nb and hi_r >= nb and ne == 0):
                for i in range(size - na, size):
                    upper = dst[i] if dst[i] < upper else upper
            elif lo_r < nb and hi_r >= nb:
                upper = piv
        if lo_r < nb:
            tmp = src
            src = dst[:nb]
            dst = tmp
            size = nb
        elif lo_r < nb + ne:
            b = piv if hi_r < nb + ne else upper
            return (piv + b) / 2 if k_hi > k_lo else piv
        else:
            off += nb + ne
            tmp = src
            src = dst[size - na:size]
            dst = tmp
            size = na
    for i in range(1, size):  # insertion sort of the last few
        val = src[i]
        j = i - 1
        while j >= 0 and src[j] > val:
            src[j + 1] = src[j]
            j -= 1
        src[j + 1] = val
    a = src[k_lo - off]
    if k_hi == k_lo:
        return a
    b = src[k_hi - off] if k_hi - off < size else upper
    return (a + b) / 2


def _row_floor_py(x, p0, width, min_pixels, cons, tot, ss, var, buf):
    """The pooled floor of one image row, pixels ``p0:p0+width`` of the samples ``x``
    (frames in their order, before any sorting): :func:`_row_variances_py`'s sums in the
    same order and the same median, then ``sqrt(max(median, 0) / cons)`` as
    :func:`pooled_scale_floor`; 0 with fewer than ``min_pixels`` pixels with every sample
    valid.  ``tot``, ``ss``, ``var``, ``buf``: float64 scratch of ``width`` values."""
    m = _row_variances(x, p0, width, tot, ss, var)
    if m < min_pixels:
        return 0.0
    med = _median(var, m, buf)
    return np.sqrt(max(med, 0.0) / cons)


if HAVE_NUMBA:
    # error_model="numpy": IEEE division, without the zero-divisor test numba's default
    # ("python", raise ZeroDivisionError) puts before every division.  Those tests kept the
    # lane loops scalar (the first clipping iteration, the means); without them they are
    # SIMD, ~40 % less time at 5-10 frames.  Every division the kernels evaluate has a
    # non-zero divisor (the guarded ones are selected away), so no number changes.
    _jit = njit(nogil=True, cache=True, error_model="numpy")
    # the per-pixel helpers are inlined at numba-IR level: as separate calls
    # (tuple returns) the clipping ran 1.6x slower
    _inline = njit(nogil=True, cache=True, inline="always", error_model="numpy")
    _prepare = _jit(_prepare_py)
    _prepare_u16 = _jit(_prepare_u16_py)
    _sort_columns = _jit(_sort_columns_py)
    _kth_distance = _inline(_kth_distance_py)
    _range_std = _jit(_range_std_py)  # rare path: not worth inlining
    _clip_range = _inline(_clip_range_py)
    # the lane loops (lanes.py) are compiled as their own functions: inlined they stayed scalar
    _first_clip = _jit(_first_clip_py)
    _row_variances = _jit(_row_variances_py)
    _median = _jit(_median_py)
    _row_floor = _jit(_row_floor_py)

    _finish_chunk = _jit(_finish_chunk_py)
    _combine_kernel = _jit(_combine_kernel_py)
else:  # pragma: no cover
    _prepare = _sort_columns = _kth_distance = _range_std = _clip_range = _combine_kernel = None
    _first_clip = _prepare_u16 = _row_variances = _median = _row_floor = None
    _finish_chunk = None


def warmup() -> float:
    """Compile (or load from numba's cache) the kernels; return the seconds taken.

    :func:`combine` calls this itself; benchmarks call it first to time the
    one-off compilation separately.  Returns 0 when numba is not available.
    """
    if not HAVE_NUMBA:
        return 0.0
    t0 = time.perf_counter()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    lo, hi = batcher_network(3)
    nsat = np.zeros(4, np.int16)
    _prepare(x[0], np.zeros(4), 1.0, np.inf, nsat)
    _prepare(x[1], np.empty(0), 1.0, np.inf, nsat)
    raw = np.zeros(8, np.uint8)
    _prepare_u16(raw, x[0], np.zeros(4), 1.0, np.inf, nsat)
    _prepare_u16(raw, x[1], np.empty(0), 1.0, 65520.0, nsat)
    for method in (0, 1, 2):
        _combine_kernel(x.copy(), 4, lo, hi, method, 3.0, 3.0, 5, 0.0, np.empty(0), True, 4,
                        np.empty(4, np.float32), np.empty(4, np.float32), np.empty(4, np.int16))
    _combine_kernel(x.copy(), 4, lo, hi, 2, 3.0, 3.0, 5, 0.0, np.empty(0), True, 4,
                    np.empty(4, np.float32), np.empty(4, np.float32), np.empty(4, np.int16),
                    True, 2, 1.0, 32)
    return time.perf_counter() - t0
