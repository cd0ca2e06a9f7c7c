"""Lane loops of the stacking kernels (:mod:`utils.stack.kernels`): loops over the pixels of a
chunk, row by row of its samples, each compiled as its own function (inlined into their
callers they stayed scalar).  No store of a select over the value loaded from the same place
(see the masked-store notes of :mod:`utils.stack.kernels`).
"""

from __future__ import annotations

import numpy as np

try:  # numba is a hard dependency, but keep a working (slower) path without it
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False


def _mad_pair_py(x, p0, size, m, c, kth, nxt, tmp):
    """Ranks ``r = (m - 1) // 2`` and ``r + 1`` (0-based) of the distances ``|x[:m, p] - c[q]|``
    of the sorted columns ``p = p0 + q``, ``q < size``, into ``kth`` and ``nxt``.

    ``c`` is the median, so the distances are two ascending sequences, the left
    ``L[t] = |x[h-1-t] - c|`` and the right ``R[t] = |x[h+t] - c|`` (``h = m // 2``), and
    rank ``j`` of their union is ``min over a of max(L[a-1], R[j-a])`` (``a`` taken from
    the left; ``L[-1] = R[-1] = -inf``, ``a`` such that both indices exist): an element of
    the union, the one any selection finds (zeros are +0.0 after ``abs``).  The row indices
    depend on ``a`` only, so each step is a loop over pixels (SIMD) of three row loads,
    without scratch rows: at 50 frames it replaced writing 64 rows of distances and a
    63-exchange selection network (~20 of ~130 ns per pixel).  Pixels with a missing
    (+inf) sample get meaningless values (the caller discards them).  ``tmp``: float64
    scratch of ``size`` values.
    """
    h = m // 2
    r = (m - 1) // 2
    nr = m - h  # length of the right sequence
    inf = np.inf
    for q in range(size):
        kth[q] = inf
        nxt[q] = inf
    for a in range(max(0, r + 1 - nr), min(h, r + 2) + 1):
        use_l = a >= 1
        ik = h + r - a  # R[r - a]; h - 1 (unused) when a = r + 1
        in_ = h + r + 1 - a  # R[r + 1 - a]; h - 1 (unused) when a = r + 2
        ok_k = a <= r + 1  # a >= r + 1 - nr holds from the loop start
        ok_n = a >= r + 2 - nr
        use_rk = a <= r
        use_rn = a <= r + 1
        xl = x[h - a if use_l else 0, p0:p0 + size]
        xk = x[ik if ok_k else 0, p0:p0 + size]
        xn = x[in_ if ok_n else 0, p0:p0 + size]
        for q in range(size):
            cq = c[q]
            lv = abs(np.float64(xl[q]) - cq) if use_l else -inf
            rk = abs(np.float64(xk[q]) - cq) if use_rk else -inf
            rn = abs(np.float64(xn[q]) - cq) if use_rn else -inf
            tk = max(lv, rk) if ok_k else inf
            tn = max(lv, rn) if ok_n else inf
            new_k = min(kth[q], tk)
            new_n = min(nxt[q], tn)
            tmp[q] = new_k  # blocks the masked-store fold (module notes)
            kth[q] = new_k
            nxt[q] = new_n


def _count_outside_py(x, p0, size, m, lower, upper, nlo, nhi):
    """Sorted rows ``0:m``: ``nlo`` = samples below ``lower``, ``nhi`` = ``m`` - those above."""
    for q in range(size):
        nlo[q] = 0
        nhi[q] = 0  # first the count above
    for k in range(m):
        xr = x[k, p0:p0 + size]
        for q in range(size):
            v = np.float64(xr[q])
            nlo[q] += np.int64(v < lower[q])
            nhi[q] += np.int64(v > upper[q])
    for q in range(size):  # the scalar walk never crosses (only with negative sigmas)
        end = m - nhi[q]  # not max(nhi[q], .) over itself: a masked store (module notes)
        nhi[q] = end if end > nlo[q] else nlo[q]


def _column_sums_py(x, p0, width, n, tot, ss):
    """Two-pass float64 sums of the first ``n`` samples of pixels ``p0:p0+width``, frames in
    order: ``tot`` their means, ``ss`` the sums of squared deviations from them."""
    for q in range(width):
        tot[q] = 0.0
        ss[q] = 0.0
    for k in range(n):
        xr = x[k, p0:p0 + width]
        for q in range(width):
            tot[q] += np.float64(xr[q])
    for q in range(width):
        tot[q] = tot[q] / n
    for k in range(n):
        xr = x[k, p0:p0 + width]
        for q in range(width):
            d = np.float64(xr[q]) - tot[q]
            ss[q] += d * d


def _masked_sum_py(xr, k, ilo, ihi, tot):
    """``tot += xr`` where ``ilo <= k < ihi`` (0.0 added elsewhere: the sum is unchanged)."""
    for q in range(tot.shape[0]):
        tot[q] += np.float64(xr[q]) if (k >= ilo[q]) & (k < ihi[q]) else 0.0


def _masked_ss_py(xr, k, ilo, ihi, mean, ss):
    """``ss += (xr - mean)**2`` where ``ilo <= k < ihi``."""
    for q in range(ss.shape[0]):
        d = np.float64(xr[q]) - mean[q]
        ss[q] += d * d if (k >= ilo[q]) & (k < ihi[q]) else 0.0


def _count_valid_py(x, p0, size, cnt):
    """``cnt[q] +=`` the finite samples of pixel ``p0 + q``, four rows per pass over ``cnt``
    (integer adds: any order)."""
    n = x.shape[0]
    k = 0
    while k + 4 <= n:
        r0 = x[k, p0:p0 + size]
        r1 = x[k + 1, p0:p0 + size]
        r2 = x[k + 2, p0:p0 + size]
        r3 = x[k + 3, p0:p0 + size]
        for q in range(size):
            cnt[q] += ((r0[q] < np.inf) + (r1[q] < np.inf)) + ((r2[q] < np.inf) + (r3[q] < np.inf))
        k += 4
    for j in range(k, n):
        xr = x[j, p0:p0 + size]
        for q in range(size):
            cnt[q] += xr[q] < np.inf


def _range_sums_py(x, p0, size, lo_a, hi_a, shift, tot, ss):
    """``tot += d``, ``ss += d * d`` with ``d = x[k, p] - shift`` for the rows ``lo_a <= k <
    hi_a`` of pixel ``p = p0 + q`` (0.0 added for the others), frames in order: the adds of
    one row after another, but four rows per pass over ``tot`` and ``ss`` (the same float64
    operations in the same order per pixel, fewer loads and stores)."""
    n = x.shape[0]
    k = 0
    while k + 4 <= n:
        r0 = x[k, p0:p0 + size]
        r1 = x[k + 1, p0:p0 + size]
        r2 = x[k + 2, p0:p0 + size]
        r3 = x[k + 3, p0:p0 + size]
        for q in range(size):
            lo = lo_a[q]
            hi = hi_a[q]
            sh = shift[q]
            d0 = np.float64(r0[q]) - sh if lo <= k < hi else 0.0
            d1 = np.float64(r1[q]) - sh if lo <= k + 1 < hi else 0.0
            d2 = np.float64(r2[q]) - sh if lo <= k + 2 < hi else 0.0
            d3 = np.float64(r3[q]) - sh if lo <= k + 3 < hi else 0.0
            t = tot[q]
            u = ss[q]
            t += d0
            u += d0 * d0
            t += d1
            u += d1 * d1
            t += d2
            u += d2 * d2
            t += d3
            u += d3 * d3
            tot[q] = t
            ss[q] = u
        k += 4
    for j in range(k, n):
        xr = x[j, p0:p0 + size]
        for q in range(size):
            d = np.float64(xr[q]) - shift[q] if lo_a[q] <= j < hi_a[q] else 0.0
            tot[q] += d
            ss[q] += d * d


if HAVE_NUMBA:
    # error_model="numpy": IEEE division without zero-divisor tests (see kernels.py)
    _jit = njit(nogil=True, cache=True, error_model="numpy")
    _mad_pair = _jit(_mad_pair_py)
    _count_outside = _jit(_count_outside_py)
    _column_sums = _jit(_column_sums_py)
    _masked_sum = _jit(_masked_sum_py)
    _masked_ss = _jit(_masked_ss_py)
    _count_valid = _jit(_count_valid_py)
    _range_sums = _jit(_range_sums_py)
else:  # pragma: no cover
    _mad_pair = _count_outside = _column_sums = _masked_sum = _masked_ss = None
    _count_valid = _range_sums = None
