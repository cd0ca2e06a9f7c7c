"""The pooled clipping-scale floor of the stacking engine (see :mod:`utils.stack.combine`).

With a handful of frames a pixel's own MAD is too noisy a clipping scale; the engine clips
each pixel against the larger of its own scale and the typical scale of its image row,
computed here (a numba kernel and its numpy twin, bit for bit the same sums in the same
order).  The engine's numba kernel computes the same floor itself, row by row while the row's
samples are in cache (:func:`utils.stack.kernels._row_floor`, the same sums and median:
the same bits, tested), instead of in a separate pass over the block.
"""

from __future__ import annotations

import numpy as np

from .kernels import _median, _median_py, _row_variances, _row_variances_py  # noqa: F401
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


if HAVE_NUMBA:
    # not cached: it calls the kernels' compiled row variances (another file), and it is
    # the numpy pass's test oracle only (the engine computes the floor in its kernel)
    _row_var_median = njit(nogil=True, error_model="numpy")(_row_var_median_py)
else:  # pragma: no cover
    _row_var_median = None


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
