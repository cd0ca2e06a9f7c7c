"""Per-pixel weighted straight lines over whole frames.

:func:`fit_line_per_pixel` fits ``y = a + b (x - x_ref)`` independently for
every pixel of a stack of images (e.g. bias masters vs temperature), with
per-pixel weights from their standard errors, in closed form.  It returns the
coefficients, their standard errors and covariance, and the reduced
chi-square as a fit-quality map.  A numba kernel (``nogil``, thread pool over
pixel chunks, cache-sized tiles) does the work without full-frame float64
temporaries; the numpy path gives the same results without numba.

:func:`fit_linear_per_pixel` fits several regressors at once,
``y = sum_j c_j x_j`` (e.g. a flat field ``A + B (T - T_ref) + C (t - t_ref)``),
with coefficient covariances and the reduced chi-square, dropping the terms
the points cannot constrain (one temperature, one exposure time...).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ._parallel import HAVE_NUMBA, _default_workers, _float_array, _nb_moment, _run_chunks, njit

#: numba caches this file's kernels keyed by this file alone, but they inline ``_nb_moment``
#: from ``_parallel.py``: the file's hash here (checked by tests/utils/test_numba_cache.py)
#: makes every change there change this file too, which invalidates the cached kernels.
NUMBA_DEPENDS = {"_parallel.py": "8b686c8afe861f94"}


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


# ---------------------------------------------------------------------------
# Several regressors: y = sum_j c_j x_j per pixel
# ---------------------------------------------------------------------------

@dataclass
class MultiLinearFit:
    """Per-pixel linear model ``y = sum_j coef_j * x_j`` in several regressors.

    Attributes
    ----------
    names : tuple of str
        Name of every term asked for (e.g. ``("A", "B", "C")``).
    fitted : tuple of bool
        Which terms were fitted; the others could not be constrained by the points
        (their column was a combination of the kept ones, e.g. one temperature only)
        and are fixed at 0 with error 0.
    coef, err : numpy.ndarray, shape (p, ...)
        Coefficients and their one-sigma standard errors (float32).
    covariance : numpy.ndarray, shape (p, p, ...)
        Covariance of the coefficients per pixel (float32).
    chi2 : numpy.ndarray
        Reduced chi-square per pixel, ``sum w r^2 / (npoints - fitted terms)`` (NaN when
        no degree of freedom is left).
    npoints : numpy.ndarray
        Points with a positive weight per pixel (int16).
    dropped : dict
        ``{name: reason}`` of the terms not fitted.
    """

    names: tuple
    fitted: tuple
    coef: np.ndarray
    err: np.ndarray
    covariance: np.ndarray
    chi2: np.ndarray
    npoints: np.ndarray
    dropped: dict

    def term(self, name: str) -> int:
        """Index of the term ``name``."""
        return self.names.index(name)

    def predict(self, x) -> np.ndarray:
        """Model value for the regressor values ``x`` (length p, one per term), float32."""
        x = np.asarray(x, dtype=np.float64)
        out = np.zeros(self.coef.shape[1:], np.float64)
        for j, xj in enumerate(x):
            if xj != 0:
                out += xj * self.coef[j]
        return out.astype(np.float32)

    def predict_err(self, x) -> np.ndarray:
        """One-sigma error of :meth:`predict`, ``sqrt(x^T C x)`` with the covariance."""
        x = np.asarray(x, dtype=np.float64)
        var = np.zeros(self.coef.shape[1:], np.float64)
        for i, xi in enumerate(x):
            for j, xj in enumerate(x):
                if xi != 0 and xj != 0:
                    var += xi * xj * self.covariance[i, j]
        return np.sqrt(np.maximum(var, 0)).astype(np.float32)


def constrained_terms(design, names=None, rtol: float = 1e-9) -> tuple[list[int], dict]:
    """Columns of ``design`` (n, p) that the points constrain, in order, and the others.

    A column is kept when it raises the rank of the columns kept before it.

    Returns
    -------
    (list of int, dict)
        Kept column indices and ``{name: reason}`` of the dropped ones.

    Examples
    --------
    >>> constrained_terms(np.array([[1.0, 5.0, 0.1], [1.0, 5.0, 0.4]]), ["A", "B", "C"])
    ([0, 2], {'B': 'not constrained: its values are a combination of the other terms'})
    """
    design = np.asarray(design, dtype=np.float64)
    names = list(names) if names is not None else [f"x{j}" for j in range(design.shape[1])]
    scale = np.abs(design).max(axis=0)
    scaled = design / np.where(scale > 0, scale, 1.0)
    kept: list[int] = []
    dropped = {}
    for j in range(design.shape[1]):
        trial = scaled[:, kept + [j]]
        if scale[j] > 0 and np.linalg.matrix_rank(trial, tol=rtol * max(trial.shape)) \
                == len(kept) + 1:
            kept.append(j)
        else:
            dropped[names[j]] = "not constrained: its values are a combination of the other terms"
    return kept, dropped


def confounded_terms(design, kept, rtol: float = 1e-9) -> list[int]:
    """Kept columns of ``design`` whose coefficient the points do not determine.

    :func:`constrained_terms` keeps a column when it raises the rank of those before it, so
    with two collinear columns the first is kept and fitted in place of both: its value is
    their combination.  A coefficient is determined only when leaving its column out lowers
    the rank of the whole design (every column, dropped ones included).

    Parameters
    ----------
    design : array_like, shape (n, p)
        Every candidate column.
    kept : list of int
        The columns fitted (as returned by :func:`constrained_terms`).
    rtol : float
        Relative rank tolerance, as in :func:`constrained_terms`.

    Returns
    -------
    list of int
        The kept columns whose fitted value stands for a combination with dropped ones.

    Examples
    --------
    >>> d = np.array([[1.0, 1.0, 0.0], [1.0, 4.0, 1.0]])
    >>> kept, _ = constrained_terms(d)
    >>> kept, confounded_terms(d, kept)
    ([0, 1], [0, 1])
    """
    design = np.asarray(design, dtype=np.float64)
    scale = np.abs(design).max(axis=0)
    scaled = design / np.where(scale > 0, scale, 1.0)
    tol = rtol * max(scaled.shape)
    full = np.linalg.matrix_rank(scaled, tol=tol)
    out = []
    for j in kept:
        rest = np.delete(scaled, j, axis=1)
        if rest.shape[1] and np.linalg.matrix_rank(rest, tol=tol) == full:
            out.append(j)
    return out


def fit_linear_per_pixel(design, y, sigma=None, *, names=None,
                         workers: int | None = None) -> MultiLinearFit:
    """Weighted least squares ``y = sum_j c_j x_j`` for every pixel of an image stack.

    Closed form per pixel (normal equations solved by Cholesky), vectorised: a numba
    kernel on a thread pool over chunks of pixels, or numpy on blocks of pixels.  Terms
    the points cannot constrain (:func:`constrained_terms`) are dropped and reported.

    Parameters
    ----------
    design : array-like, shape (n, p)
        Regressor values of every point, e.g. columns ``[1, T - T_ref, t - t_ref]``.
    y : array-like, shape (n, ...)
        Images to fit; NaN gives the point weight 0 at that pixel.
    sigma : array-like, shape (n, ...), optional
        One-sigma errors of ``y``; non-finite or non-positive give weight 0.  Without
        it every point weighs 1 and the errors are scaled by the residual scatter.
    names : sequence of str, optional
        Term names (default ``x0, x1, ...``).
    workers : int, optional
        Threads of the numba kernel (default: the usable CPUs, at most 8).

    Returns
    -------
    MultiLinearFit
        Pixels with fewer weighted points than fitted terms (or a singular system)
        get NaN coefficients.

    Examples
    --------
    >>> X = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    >>> fit = fit_linear_per_pixel(X, np.array([[[1.0]], [[3.0]], [[5.0]]]), names=["a", "b"])
    >>> [round(float(c), 6) for c in fit.coef[:, 0, 0]]
    [1.0, 2.0]
    """
    design = np.asarray(design, dtype=np.float64)
    y = _float_array(y)
    if design.ndim != 2 or y.shape[0] != design.shape[0]:
        raise ValueError(f"design has {design.shape[:1]} points but y has {y.shape[:1]} images")
    n, p = design.shape
    names = tuple(names) if names is not None else tuple(f"x{j}" for j in range(p))
    if len(names) != p:
        raise ValueError(f"{len(names)} names for {p} terms")
    kept, dropped = constrained_terms(design, names)
    if not kept:
        raise ValueError("no term is constrained by the points")
    s = None if sigma is None else _float_array(sigma)
    if s is not None and s.shape != y.shape:
        s = np.broadcast_to(s, y.shape)
    shape = y.shape[1:]
    y2 = y.reshape(n, -1)
    s2 = y2 if s is None else np.ascontiguousarray(s.reshape(n, -1))
    q = len(kept)
    x = np.ascontiguousarray(design[:, kept])
    npix = y2.shape[1]
    # the kernel writes straight into the outputs when every term is fitted
    coef = np.zeros((p, npix), np.float32)
    cov = np.zeros((p, p, npix), np.float32)
    sub_coef = coef if q == p else np.empty((q, npix), np.float32)
    sub_cov = cov if q == p else np.empty((q, q, npix), np.float32)
    chi2 = np.empty(npix, np.float32)
    npts = np.empty(npix, np.int16)
    if HAVE_NUMBA:
        _run_chunks(lambda a, b: _multi_kernel(x, y2, s2, s is not None, a, b, sub_coef, sub_cov,
                                               chi2, npts),
                    npix, _LINE_CHUNK, workers or _default_workers())
    else:
        for a in range(0, npix, _LINE_CHUNK):
            b = min(npix, a + _LINE_CHUNK)
            _multi_numpy(x, y2[:, a:b], None if s is None else s2[:, a:b], sub_coef[:, a:b],
                         sub_cov[:, :, a:b], chi2[a:b], npts[a:b])
    if q != p:
        for i, ki in enumerate(kept):
            coef[ki] = sub_coef[i]
            for j, kj in enumerate(kept):
                cov[ki, kj] = sub_cov[i, j]
    err = np.empty((p, npix), np.float32)
    for j in range(p):
        np.sqrt(np.maximum(cov[j, j], 0), out=err[j])
        if j not in kept:
            err[j] = np.where(np.isfinite(sub_coef[0]), 0.0, np.nan)
    return MultiLinearFit(names, tuple(j in kept for j in range(p)),
                          coef.reshape((p,) + shape), err.reshape((p,) + shape),
                          cov.reshape((p, p) + shape), chi2.reshape(shape),
                          npts.reshape(shape), dropped)


def _multi_kernel_py(x, y, s, weighted, a0, a1, coef, cov, chi2, npts):
    """Pixels ``a0:a1``: normal equations, Cholesky solve and inverse, chi-square.

    Works a tile of pixels at a time (as :func:`_line_kernel_py`): the weighted sums are
    moments over the points, and the small solves run with the pixel loop innermost so
    that they vectorise.  ``coef`` (q, P), ``cov`` (q, q, P), ``chi2`` (P,) float32 and
    ``npts`` (P,) int16 receive the results.
    """
    n, q = x.shape
    T = _LINE_TILE
    npair = q * (q + 1) // 2
    W = np.empty((n, T))
    Y = np.empty((n, T))
    WY = np.empty((n, T))
    mom = np.empty((npair + q + 1, T))
    low = np.empty((npair, T))
    linv = np.empty((npair, T))
    beta = np.empty((q, T))
    acc = np.empty(T)
    ok = np.empty(T)
    phi = np.empty((npair, n))
    xc = np.empty((q, n))
    for i in range(q):
        for k in range(n):
            xc[i, k] = x[k, i]
        for j in range(i + 1):
            for k in range(n):
                phi[i * (i + 1) // 2 + j, k] = x[k, i] * x[k, j]
    for t0 in range(a0, a1, T):
        m = min(a1, t0 + T) - t0
        for k in range(n):
            yrow = y[k, t0:t0 + m]
            srow = s[k, t0:t0 + m]
            for t in range(m):
                yv = np.float64(yrow[t])
                w = 1.0
                if weighted:
                    sv = np.float64(srow[t])
                    w = 1.0 / (sv * sv) if (math.isfinite(sv) and sv > 0) else 0.0
                good = math.isfinite(yv)
                W[k, t] = w if good else 0.0
                Y[k, t] = yv if good else 0.0
            for t in range(m):
                WY[k, t] = W[k, t] * Y[k, t]
        for r in range(npair):
            _nb_moment(mom, r, W, phi[r], n, m)
        for i in range(q):
            _nb_moment(mom, npair + i, WY, xc[i], n, m)
        cnt = npair + q
        for t in range(m):
            mom[cnt, t] = 0.0
        for k in range(n):
            for t in range(m):
                mom[cnt, t] += W[k, t] > 0
        for t in range(m):
            ok[t] = 1.0 if mom[cnt, t] >= q else 0.0
        # Cholesky N = L L^T, packed lower triangle (row i, column j at i(i+1)/2 + j)
        for i in range(q):
            ii = i * (i + 1) // 2
            for j in range(i + 1):
                jj = j * (j + 1) // 2
                for t in range(m):
                    acc[t] = mom[ii + j, t]
                for c in range(j):
                    for t in range(m):
                        acc[t] -= low[ii + c, t] * low[jj + c, t]
                if i == j:
                    for t in range(m):
                        good = acc[t] > 1e-12 * mom[ii + i, t] and acc[t] > 0
                        ok[t] = ok[t] if good else 0.0
                        low[ii + i, t] = math.sqrt(acc[t]) if good else 1.0
                else:
                    for t in range(m):
                        low[ii + j, t] = acc[t] / low[jj + j, t]
        # L^-1 (lower triangular), column by column
        for i in range(q):
            ii = i * (i + 1) // 2
            for j in range(i + 1):
                for t in range(m):
                    acc[t] = 1.0 if i == j else 0.0
                for c in range(j, i):
                    for t in range(m):
                        acc[t] -= low[ii + c, t] * linv[c * (c + 1) // 2 + j, t]
                for t in range(m):
                    linv[ii + j, t] = acc[t] / low[ii + i, t]
        # covariance N^-1 = L^-T L^-1, coefficients N^-1 rhs
        for i in range(q):
            for j in range(i + 1):
                for t in range(m):
                    acc[t] = 0.0
                for c in range(i, q):
                    cc = c * (c + 1) // 2
                    for t in range(m):
                        acc[t] += linv[cc + i, t] * linv[cc + j, t]
                ci = cov[i, j, t0:t0 + m]
                cj = cov[j, i, t0:t0 + m]
                for t in range(m):
                    ci[t] = acc[t]
                    cj[t] = acc[t]
        for i in range(q):
            for t in range(m):
                beta[i, t] = 0.0
            for j in range(q):
                cr = cov[i, j, t0:t0 + m]
                for t in range(m):
                    beta[i, t] += np.float64(cr[t]) * mom[npair + j, t]
        for t in range(m):
            acc[t] = 0.0
        for k in range(n):
            for t in range(m):
                r = Y[k, t]
                for i in range(q):
                    r -= x[k, i] * beta[i, t]
                acc[t] += W[k, t] * r * r
        for t in range(m):
            npt = mom[cnt, t]
            c2 = acc[t] / (npt - q) if npt > q else np.nan
            scale = 1.0
            if not weighted:
                scale = c2 if math.isfinite(c2) else np.nan
            good = ok[t] > 0
            chi2[t0 + t] = c2 if good else np.nan
            npts[t0 + t] = np.int16(npt)
            for i in range(q):
                coef[i, t0 + t] = beta[i, t] if good else np.nan
                for j in range(q):
                    cov[i, j, t0 + t] = cov[i, j, t0 + t] * scale if good else np.nan


if HAVE_NUMBA:
    _multi_kernel = njit(nogil=True, cache=True, error_model="numpy",
                         fastmath={"contract"})(_multi_kernel_py)
else:  # pragma: no cover
    _multi_kernel = None


def _multi_numpy(x, y, s, coef, cov, chi2, npts):
    """numpy path of :func:`fit_linear_per_pixel` on one block of pixels."""
    y = np.asarray(y, dtype=np.float64)
    if s is None:
        w = np.ones_like(y)
    else:
        sv = np.asarray(s, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            w = np.where(np.isfinite(sv) & (sv > 0), 1.0 / sv ** 2, 0.0)
    w = np.where(np.isfinite(y), w, 0.0)
    y0 = np.where(w > 0, y, 0.0)
    q = x.shape[1]
    nrm = np.einsum("ki,kj,kp->pij", x, x, w)
    rhs = np.einsum("ki,kp->pi", x, w * y0)
    cnt = (w > 0).sum(0)
    ok = (cnt >= q) & (np.linalg.det(nrm) > 0)
    safe = np.where(ok[:, None, None], nrm, np.eye(q))
    inv = np.linalg.inv(safe)
    beta = np.einsum("pij,pj->pi", inv, rhs)
    resid = y0 - np.einsum("ki,pi->kp", x, beta)
    with np.errstate(divide="ignore", invalid="ignore"):
        c2 = np.where(cnt > q, (w * resid * resid).sum(0) / (cnt - q), np.nan)
    scale = np.ones_like(c2) if s is not None else c2
    beta[~ok] = np.nan
    inv = inv * scale[:, None, None]
    inv[~ok] = np.nan
    c2 = np.where(ok, c2, np.nan)
    coef[...] = beta.T
    cov[...] = np.moveaxis(inv, 0, -1)
    chi2[...] = c2
    npts[...] = cnt


def prediction_weights(design, row, sigma, y=None) -> np.ndarray:
    """How much each point of a per-pixel weighted least-squares fit enters its prediction.

    For the fit of :func:`fit_linear_per_pixel` (``design`` X, weights ``W = 1/sigma^2``)
    the prediction at regressors ``row`` (x) is ``x^T (X^T W X)^-1 X^T W y = sum_k a_k y_k``;
    this returns ``a`` per pixel.  At a fitted point's own row ``a_k`` is the leverage
    ``h_kk`` (the hat matrix's diagonal); the variance of any linear combination of the
    points' errors follows from ``a`` (e.g. a residual ``y_k - sum_j a_j y_j``).

    Parameters
    ----------
    design : array-like, shape (n, p)
        Regressors of the fitted terms (the columns the fit kept).
    row : array-like, shape (p,)
        Regressors of the prediction.
    sigma : array-like, shape (n, ...)
        One-sigma errors the fit weighed by; non-finite or non-positive give weight 0.
    y : array-like, shape (n, ...), optional
        The fitted images: NaN points get weight 0 as in the fit.

    Returns
    -------
    numpy.ndarray, shape (n, ...)
        ``a`` (dimensionless); NaN at pixels with fewer weighted points than terms or a
        singular system (where the fit has no coefficients).

    Examples
    --------
    >>> X = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    >>> a = prediction_weights(X, X[0], np.ones((3, 1)))
    >>> [round(float(v), 6) for v in a[:, 0]]  # leverage 5/6 of the end point
    [0.833333, 0.333333, -0.166667]
    """
    return PredictionWeights(design, sigma, y)(row)


class PredictionWeights:
    """:func:`prediction_weights` of one fit at any number of rows: the per-pixel inverse
    normal matrices are computed once (the costly part) and applied to each row.

    Parameters are those of :func:`prediction_weights` without ``row``; call the object
    with a row.
    """

    def __init__(self, design, sigma, y=None):
        x = np.asarray(design, np.float64)
        sv = np.asarray(sigma, np.float64)
        self.shape = sv.shape[1:]
        sv = sv.reshape(x.shape[0], -1)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            w = np.where(np.isfinite(sv) & (sv > 0), 1.0 / sv ** 2, 0.0)
        if y is not None:
            w = np.where(np.isfinite(np.asarray(y).reshape(sv.shape)), w, 0.0)
        q = x.shape[1]
        nrm = np.einsum("ki,kj,kp->pij", x, x, w)
        self.ok = ((w > 0).sum(0) >= q) & (np.linalg.det(nrm) > 0)
        self.inv = np.linalg.inv(np.where(self.ok[:, None, None], nrm, np.eye(q)))
        self.x, self.w = x, w

    def __call__(self, row) -> np.ndarray:
        a = np.einsum("i,pij,kj->kp", np.asarray(row, np.float64), self.inv, self.x) * self.w
        a[:, ~self.ok] = np.nan
        return a.reshape(self.x.shape[0], *self.shape)


__all__ = ["LinearFit", "fit_line_per_pixel", "warmup", "MultiLinearFit",
           "fit_linear_per_pixel", "constrained_terms", "prediction_weights",
           "PredictionWeights"]
