"""The pooled clipping-scale floor of the stacking engine (see :mod:`utils.stack.combine`).

With a handful of frames a pixel's own MAD is too noisy a clipping scale; the engine clips
each pixel against the larger of its own scale and the typical scale of its image row,
computed here (a numba kernel and its numpy twin, bit for bit the same sums in the same
order).  The engine's numba kernel computes the same floor itself, row by row while the row's
samples are in cache (:func:`_row_floor`, the same sums in the same order and the same median:
the same bits, tested), instead of in a separate pass over the block.
"""

from __future__ import annotations

import numpy as np

from .stats import chi2_median_ratio

try:  # numba is a hard dependency, but keep a working (slower) path without it
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False

#: Fewest pixels of an image row with every sample valid for :func:`pooled_scale_floor` to
#: pool their scale (fewer: no floor on that row).
POOL_MIN_PIXELS = 32


def pooled_scale_floor(x: np.ndarray, n_rows: int, width: int) -> np.ndarray:
    """Per-pixel clipping-scale floor: the typical noise of the pixel's image row.

    The MAD of a few samples is very noisy (with 3 it is their smaller gap), so clipping
    against each pixel's own scale alone rejected genuine Gaussian samples in 25 % of the
    pixels at 3 frames, 13 % at 5, 4 % at 10 (4 sigma, guard on).  Pooled over the row's
    pixels the scale is known to a few per cent; a pixel is then clipped against the larger
    of its own scale and this floor, so only samples beyond ~4 typical sigmas can go.
    Pixels noisier than the row (hot, bright) keep their own larger scale.  Computed per
    image row (not per block) so a master does not depend on the block plan.

    Parameters
    ----------
    x : numpy.ndarray
        Prepared samples ``(n_frames, >= n_rows * width)`` of ``n_rows`` whole image rows,
        +inf where missing.
    n_rows, width : int
        Rows in ``x`` and pixels per row.

    Returns
    -------
    numpy.ndarray
        float64 ``(n_rows * width,)``: per row, ``sqrt(median(s^2) / m)`` over the row's
        pixels with every sample valid (``s^2`` their sample variance, ``ddof=1``; ``m`` the
        median of chi^2_(n-1) / (n-1), which makes it the Gaussian sigma), repeated over the
        row; 0 on rows with fewer than :data:`POOL_MIN_PIXELS` such pixels.  Empty for fewer
        than 2 frames.  Same unit as ``x``.
    """
    n = x.shape[0]
    npix = n_rows * width
    if n < 2 or npix == 0:
        return np.empty(0, dtype=np.float64)
    cons = chi2_median_ratio(n - 1)
    med = np.zeros(n_rows)
    if HAVE_NUMBA:
        _row_var_median(x, n_rows, width, POOL_MIN_PIXELS, med)
    else:  # pragma: no cover - the same sums in the same order (bit for bit, tested)
        _row_var_median_numpy(x, n_rows, width, POOL_MIN_PIXELS, med)
    return np.repeat(np.sqrt(np.maximum(med, 0.0) / cons), width)


def _row_variances_py(x, p0, width, tot, ss, var):
    """The sample variances (``ddof=1``, two passes in float64, frames summed in order) of
    the pixels ``p0:p0+width`` of the samples ``x`` that have every sample finite, in pixel
    order, into ``var[:m]``; returns ``m``.  ``tot``, ``ss``, ``var``: float64 scratch of
    ``width`` values."""
    n = x.shape[0]
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
    m = 0
    for q in range(width):  # branch-free compaction of the finite variances, in order
        v = ss[q] / (n - 1)
        var[m] = v
        m += v < np.inf  # NaN (inf - inf) or inf: a missing sample
    return m


def _row_var_median_py(x, n_rows, width, min_pixels, med):
    """``med[r]`` = median over row ``r``'s pixels with every sample finite of their sample
    variance (:func:`_row_variances_py`); rows with fewer than ``min_pixels`` such pixels
    are left as they are."""
    tot = np.empty(width, dtype=np.float64)
    ss = np.empty(width, dtype=np.float64)
    var = np.empty(width, dtype=np.float64)
    for r in range(n_rows):
        m = _row_variances(x, r * width, width, tot, ss, var)
        if m >= min_pixels:
            med[r] = np.median(var[:m])


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
    _njit = njit(nogil=True, cache=True, error_model="numpy")
    _row_variances = _njit(_row_variances_py)
    _row_var_median = _njit(_row_var_median_py)
    _median = _njit(_median_py)
    _row_floor = _njit(_row_floor_py)
else:  # pragma: no cover
    _row_variances = _row_var_median = _median = _row_floor = None


def _row_var_median_numpy(x, n_rows, width, min_pixels, med):
    """:func:`_row_var_median_py` vectorised with numpy (same operations, same order)."""
    n = x.shape[0]
    v = x[:, :n_rows * width].reshape(n, n_rows, width)
    tot = np.zeros((n_rows, width))
    for k in range(n):
        tot += v[k].astype(np.float64)
    tot /= n
    ss = np.zeros((n_rows, width))
    with np.errstate(invalid="ignore"):
        for k in range(n):
            d = v[k].astype(np.float64) - tot
            ss += d * d
        var = ss / (n - 1)
    ok = var < np.inf
    for r in range(n_rows):
        if ok[r].sum() >= min_pixels:
            med[r] = np.median(var[r][ok[r]])
