"""Per-pixel weighted straight lines over whole frames.

:func:`fit_line_per_pixel` fits ``y = a + b (x - x_ref)`` independently for
every pixel of a stack of images (e.g. bias masters vs temperature), with
per-pixel weights from their standard errors, in closed form.  It returns the
coefficients, their standard errors and covariance, and the reduced
chi-square as a fit-quality map.  A numba kernel (``nogil``, thread pool over
pixel chunks, cache-sized tiles) does the work without full-frame float64
temporaries; the numpy path gives the same results without numba.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ._parallel import HAVE_NUMBA, _default_workers, _float_array, _nb_moment, _run_chunks, njit


@dataclass
class LinearFit:
    """Per-pixel straight line ``y = intercept + slope * (x - x_ref)``.

    Attributes
    ----------
    intercept, slope : numpy.ndarray
        Coefficients per pixel (units of y, and of y per unit of x).
    intercept_err, slope_err : numpy.ndarray
        One-sigma standard errors (from the weights when given; scaled by the
        residual scatter when ``sigma`` is None).
    covariance : numpy.ndarray
        Covariance of intercept and slope per pixel.
    chi2 : numpy.ndarray
        Reduced chi-square per pixel (NaN when there are only two points).
    x_ref : float
        Reference abscissa of the intercept.
    npoints : int
        Number of points fitted.
    """

    intercept: np.ndarray
    slope: np.ndarray
    intercept_err: np.ndarray
    slope_err: np.ndarray
    covariance: np.ndarray
    chi2: np.ndarray
    x_ref: float
    npoints: int

    def predict(self, x: float) -> np.ndarray:
        """Model value at ``x`` (float32 image)."""
        return (self.intercept + self.slope * (x - self.x_ref)).astype(np.float32)

    def predict_err(self, x: float) -> np.ndarray:
        """One-sigma error of :meth:`predict` at ``x``, with the coefficient covariance."""
        d = x - self.x_ref
        var = self.intercept_err ** 2 + d * d * self.slope_err ** 2 + 2 * d * self.covariance
        return np.sqrt(np.maximum(var, 0)).astype(np.float32)


def fit_line_per_pixel(x, y, sigma=None, *, x_ref: float | None = None) -> LinearFit:
    """Weighted least-squares straight line through every pixel of an image stack.

    Parameters
    ----------
    x : array-like, shape (n,)
        Abscissae (e.g. temperatures [degC]); at least two distinct values.
    y : array-like, shape (n, ...)
        Images to fit (e.g. bias masters [adu]).
    sigma : array-like, shape (n, ...), optional
        One-sigma errors of ``y``; non-finite or non-positive errors give the
        point zero weight.  Without it every point weighs 1 and the errors are
        scaled by the residual scatter.
    x_ref : float, optional
        Reference abscissa of the intercept; default the weighted mean of x
        over the frame (which decorrelates intercept and slope).

    Returns
    -------
    LinearFit

    Examples
    --------
    >>> y = np.array([[[1.0]], [[2.0]], [[3.0]]])
    >>> fit = fit_line_per_pixel([0.0, 10.0, 20.0], y, x_ref=0.0)
    >>> round(float(fit.intercept[0, 0]), 6), round(float(fit.slope[0, 0]), 6)
    (1.0, 0.1)
    """
    x = np.asarray(x, dtype=np.float64)
    y = _float_array(y)
    if x.ndim != 1 or y.ndim < 1 or y.shape[0] != x.size:
        raise ValueError(f"x has {x.size} values but y has {y.shape[:1]} images")
    if np.unique(x).size < 2:
        raise ValueError("a straight line needs at least two distinct x values")
    s = None if sigma is None else _float_array(sigma)
    if s is not None and s.shape != y.shape:
        s = np.broadcast_to(s, y.shape)
    if x_ref is None:
        x_ref = float(x.mean())
    if HAVE_NUMBA:
        maps = _line_numba(x, y, s, float(x_ref))
    else:
        maps = _line_numpy(x, y, s, float(x_ref))
    return LinearFit(*maps, float(x_ref), int(x.size))


def _line_numpy(x, y, sigma, x_ref):
    """Closed-form weighted line on full-frame float64 arrays (the path without numba)."""
    y = np.asarray(y, dtype=np.float64)
    xs = x.reshape((x.size,) + (1,) * (y.ndim - 1))
    if sigma is None:
        w = np.ones_like(y)
    else:
        s = np.asarray(sigma, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            w = np.where(np.isfinite(s) & (s > 0), 1.0 / s ** 2, 0.0)
    w = np.where(np.isfinite(y), w, 0.0)
    y0 = np.where(np.isfinite(y), y, 0.0)
    dx = xs - x_ref
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s0 = w.sum(0)
        s1 = (w * dx).sum(0)
        s2 = (w * dx * dx).sum(0)
        sy = (w * y0).sum(0)
        sxy = (w * dx * y0).sum(0)
        det = s0 * s2 - s1 * s1
        slope = (s0 * sxy - s1 * sy) / det
        intercept = (s2 * sy - s1 * sxy) / det
        var_a, var_b, cov = s2 / det, s0 / det, -s1 / det
        npts = (w > 0).sum(0)
        resid = y0 - intercept - slope * dx
        chi2 = np.where(npts > 2, (w * resid * resid).sum(0) / (npts - 2), np.nan)
        if sigma is None:
            scale = np.where(np.isfinite(chi2), chi2, np.nan)
            var_a, var_b, cov = var_a * scale, var_b * scale, cov * scale
        return (intercept.astype(np.float32), slope.astype(np.float32),
                np.sqrt(var_a).astype(np.float32), np.sqrt(var_b).astype(np.float32),
                cov.astype(np.float32), chi2.astype(np.float32))


_LINE_TILE = 512        # pixels per tile of the line kernel: its float64 buffers stay in L2
_LINE_CHUNK = 1 << 16   # pixels per thread-pool task


def _line_kernel_py(x, y, s, weighted, x_ref, a0, a1, out):
    """Weighted line through pixels ``a0:a1`` of ``y`` (n, P) (and ``s``), fused.

    One tile of pixels at a time, with the expressions of the numpy path:
    weights and values of the tile (float64, in cache), the weighted sums as
    moments over the points, the solution, then the residuals.  Every loop
    runs over the tile's pixels and touches few arrays, so that it
    vectorises.  ``out`` (6, P) float32 receives intercept, slope, their
    errors, covariance and reduced chi-square.
    """
    n = x.size
    T = _LINE_TILE
    W = np.empty((n, T))
    Y = np.empty((n, T))
    WY = np.empty((n, T))
    acc = np.empty((8, T))
    phi = np.empty((3, n))
    for k in range(n):
        dx = x[k] - x_ref
        phi[0, k] = 1.0
        phi[1, k] = dx
        phi[2, k] = dx * dx
    for t0 in range(a0, a1, T):
        m = min(a1, t0 + T) - t0
        for k in range(n):
            yrow = y[k, t0:t0 + m]  # (a slice: t0 + i indices would compile to gathers)
            srow = s[k, t0:t0 + m]
            for i in range(m):
                yv = np.float64(yrow[i])
                w = 1.0
                if weighted:
                    sv = np.float64(srow[i])
                    w = 1.0 / (sv * sv) if (math.isfinite(sv) and sv > 0) else 0.0
                ok = math.isfinite(yv)
                W[k, i] = w if ok else 0.0
                Y[k, i] = yv if ok else 0.0
            for i in range(m):
                WY[k, i] = W[k, i] * Y[k, i]
        _nb_moment(acc, 0, W, phi[0], n, m)    # sum w
        _nb_moment(acc, 1, W, phi[1], n, m)    # sum w dx
        _nb_moment(acc, 2, W, phi[2], n, m)    # sum w dx dx
        _nb_moment(acc, 3, WY, phi[0], n, m)   # sum w y
        _nb_moment(acc, 4, WY, phi[1], n, m)   # sum w dx y
        for i in range(m):
            acc[5, i] = 0.0
        for k in range(n):
            for i in range(m):
                acc[5, i] += W[k, i] > 0
        for i in range(m):
            s0, s1, s2, sy, sxy = acc[0, i], acc[1, i], acc[2, i], acc[3, i], acc[4, i]
            det = s0 * s2 - s1 * s1
            acc[6, i] = (s0 * sxy - s1 * sy) / det      # slope
            acc[7, i] = (s2 * sy - s1 * sxy) / det      # intercept
            acc[0, i] = s2 / det
            acc[1, i] = s0 / det
            acc[2, i] = -s1 / det
            acc[3, i] = 0.0
        for k in range(n):
            dx = phi[1, k]
            for i in range(m):
                r = Y[k, i] - acc[7, i] - acc[6, i] * dx
                acc[3, i] += W[k, i] * r * r
        for i in range(m):
            npts = acc[5, i]
            chi2 = acc[3, i] / (npts - 2) if npts > 2 else np.nan
            var_a, var_b, cov = acc[0, i], acc[1, i], acc[2, i]
            if not weighted:
                scale = chi2 if math.isfinite(chi2) else np.nan
                var_a, var_b, cov = var_a * scale, var_b * scale, cov * scale
            acc[0, i] = math.sqrt(var_a)
            acc[1, i] = math.sqrt(var_b)
            acc[2, i] = cov
            acc[3, i] = chi2
        for r, src_row in ((0, 7), (1, 6), (2, 0), (3, 1), (4, 2), (5, 3)):
            orow = out[r, t0:t0 + m]
            for i in range(m):
                orow[i] = acc[src_row, i]


def _line_numba(x, y, sigma, x_ref):
    """:func:`fit_line_per_pixel` maps by the numba kernel, in chunks on a thread pool."""
    n = x.size
    shape = y.shape[1:]
    y2 = y.reshape(n, -1)
    s2 = y2 if sigma is None else sigma.reshape(n, -1)
    P = y2.shape[1]
    out = np.empty((6, P), np.float32)
    _run_chunks(lambda a, b: _line_kernel(x, y2, s2, sigma is not None, x_ref, a, b, out),
                P, _LINE_CHUNK, _default_workers())
    return tuple(out[i].reshape(shape) for i in range(6))


if HAVE_NUMBA:
    _line_kernel = njit(nogil=True, cache=True, error_model="numpy",
                        fastmath={"contract"})(_line_kernel_py)
else:  # pragma: no cover
    _line_kernel = None


def warmup() -> float:
    """Compile (or load from numba's cache) the line kernel; return the seconds taken."""
    if not HAVE_NUMBA:
        return 0.0
    t0 = time.perf_counter()
    x = np.array([0.0, 1.0, 2.0])
    for dtype in (np.float32, np.float64):
        y = (np.exp(x)[:, None] * np.ones((3, 4))).astype(dtype)
        fit_line_per_pixel(x, y, np.full_like(y, 0.01))
        fit_line_per_pixel(x, y)
    return time.perf_counter() - t0


__all__ = ["LinearFit", "fit_line_per_pixel", "warmup"]
