"""Per-pixel least-squares fits over whole frames.

:func:`fit_line_per_pixel` fits ``y = a + b (x - x_ref)`` independently for
every pixel of a stack of images (e.g. bias masters vs temperature), with
per-pixel weights from their standard errors, in closed form.  It returns the
coefficients, their standard errors and covariance, and the reduced
chi-square as a fit-quality map.

:func:`fit_exponential_per_pixel` (``y = A exp(rate (x - x_ref))``, e.g. dark
current vs temperature) and :func:`fit_power_exponential_per_pixel`
(``y = A t**gamma exp(rate (T - t_ref))``, dark signal vs exposure time and
temperature) are weighted nonlinear least-squares fits of every pixel: a
log-linear start on the points with enough signal, then damped Newton
iterations.  Values may be negative (quiet pixels).  Pixels without two
usable temperatures (or a failed fit) fall back to the population median of
the shape parameters, with a linear amplitude, and are flagged.

The work is done by numba kernels (``nogil``, on a thread pool over chunks of
pixels) that stream over the inputs once per pass, a tile of pixels at a time
in cache, with loops over pixels that LLVM vectorises; no full-frame float64
temporaries are made.  Without numba the same algorithms run as numpy code
vectorised over blocks of pixels (slower, more memory); the tests check that
both give the same results.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

try:  # numba is a hard dependency, but keep a working (slower) path without it
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised by monkeypatching HAVE_NUMBA
    HAVE_NUMBA = False


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


def _float_array(a) -> np.ndarray:
    """``a`` as a native-endian float32 or float64 array (no copy when it already is one)."""
    a = np.asarray(a)
    if a.dtype.kind == "f" and a.dtype.itemsize in (4, 8):
        return a.astype(a.dtype.newbyteorder("="), copy=False)
    return a.astype(np.float64)


def _default_workers() -> int:
    """Threads for the fits without a ``workers`` argument: the usable CPUs, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _run_chunks(func, total: int, chunk: int, workers: int) -> None:
    """Call ``func(a, b)`` on ``[a, b)`` chunks of ``range(total)``, on ``workers`` threads."""
    starts = range(0, total, chunk)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(starts))) as pool:
            list(pool.map(lambda a: func(a, min(total, a + chunk)), starts))
    else:
        for a in starts:
            func(a, min(total, a + chunk))


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


# ---------------------------------------------------------------------------
# Nonlinear fits: y = amplitude * exp(theta . z), z = per-point design columns
# ---------------------------------------------------------------------------
#
# Both exponential models share one engine.  The amplitude is linear and the
# exponent parameters theta enter through f = exp(z @ theta), so with
# J = [f, A f z_1, ..., A f z_q] every normal-matrix entry is A^k times a
# moment sum(w f^2 * feature) over the points: one small matmul per
# iteration gives all of them for a whole block of pixels.

_MAD_TO_SIGMA = 1.4826
_BLOCK_SAMPLES = 1 << 17   # float64 samples per (n, pixels) working array: 1 MB, cache-sized
_DEFER = 1 / 64            # a block hands its last, slow pixels (below this fraction) to a
                           # tail run (numpy path)
_LAMBDA0 = 1e-3            # initial damping (relative to diag N)
_LAMBDA_MAX = 1e12         # damping beyond which a pixel is declared stuck (not converged)
_EXP_MAX = 700.0           # |exponent| clip: keeps exp finite for absurd trial steps


def population_value(values, mask=None) -> tuple[float, float]:
    """Median and robust spread (1.4826 MAD) of the finite ``values[mask]``.

    Returns ``(nan, nan)`` when there is no finite value.

    Examples
    --------
    >>> population_value(np.array([1.0, 2.0, 3.0, np.nan]))
    (2.0, 1.4826)
    """
    v = np.asarray(values)
    if HAVE_NUMBA and v.dtype.kind == "f" and v.dtype.itemsize in (4, 8):
        m = np.ones(v.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool),
                                                                       v.shape)
        med, mad = _nb_population(_float_array(v).ravel(), np.ascontiguousarray(m).ravel())
        return float(med), _MAD_TO_SIGMA * float(mad)
    v = (v[np.asarray(mask, dtype=bool)] if mask is not None else v.ravel()).astype(np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    med = float(np.median(v))
    return med, _MAD_TO_SIGMA * float(np.median(np.abs(v - med)))


def _sym_inverse(N):
    """Inverse and determinant of symmetric (p, p, B) matrices, p = 2 or 3, by cofactors."""
    if N.shape[0] == 2:
        a, b, d = N[0, 0], N[0, 1], N[1, 1]
        det = a * d - b * b
        inv = np.array([[d, -b], [-b, a]])
    else:
        a, b, c = N[0, 0], N[0, 1], N[0, 2]
        d, e, f = N[1, 1], N[1, 2], N[2, 2]
        c00, c01, c02 = d * f - e * e, c * e - b * f, b * e - c * d
        c11, c12, c22 = a * f - c * c, b * c - a * e, a * d - b * b
        det = a * c00 + b * c01 + c * c02
        inv = np.array([[c00, c01, c02], [c01, c11, c12], [c02, c12, c22]])
    return inv / det, det


def _matvec(M, v):
    """M v for (p, p, B) matrices and (p, B) vectors."""
    p = M.shape[0]
    return np.array([sum(M[i, j] * v[j] for j in range(p)) for i in range(p)])


def _positive_definite(M):
    """Sylvester's criterion on symmetric (p, p, B) matrices, p = 2 or 3."""
    a, b, d = M[0, 0], M[0, 1], M[1, 1]
    ok = (a > 0) & (a * d - b * b > 0)
    if M.shape[0] == 3:
        c, e, f = M[0, 2], M[1, 2], M[2, 2]
        ok &= a * (d * f - e * e) + b * (c * e - b * f) + c * (b * e - c * d) > 0
    return ok


class _Design:
    """Per-point design columns ``z`` (n, q) and the moment features built from them."""

    def __init__(self, z):
        self.z = z
        self.q = z.shape[1]
        self.p = self.q + 1
        self.lin = np.vstack([np.ones(len(z)), z.T])                  # (p, n): 1, z_j
        self.pairs = [(i, j) for i in range(self.q) for j in range(i, self.q)]
        self.quad = np.array([z[:, i] * z[:, j] for i, j in self.pairs])  # z_i z_j

    def normal(self, S, u, A, hessian=False):
        """Normal matrix (p, p, B) and gradient (p, B) from S = w f^2, u = w f r.

        With ``hessian`` also the full Hessian of chi^2 / 2, ``N - sum(u d2m)``:
        the second derivatives of the model are f z_j (amplitude-theta) and
        A f z_i z_j, so it costs one more moment product.
        """
        m_lin = self.lin @ S            # sum S, sum S z_j
        m_quad = self.quad @ S          # sum S z_i z_j
        g = self.lin @ u                # sum u, sum u z_j
        N = np.empty((self.p, self.p, S.shape[1]))
        N[0, 0] = m_lin[0]
        for j in range(self.q):
            N[0, j + 1] = N[j + 1, 0] = A * m_lin[j + 1]
        A2 = A * A
        for k, (i, j) in enumerate(self.pairs):
            N[i + 1, j + 1] = N[j + 1, i + 1] = A2 * m_quad[k]
        H = None
        if hessian:
            H = N.copy()
            for j in range(self.q):
                H[0, j + 1] -= g[j + 1]
                H[j + 1, 0] = H[0, j + 1]
            u_quad = self.quad @ u
            for k, (i, j) in enumerate(self.pairs):
                H[i + 1, j + 1] -= A * u_quad[k]
                H[j + 1, i + 1] = H[i + 1, j + 1]
        g[1:] *= A
        return N, g, H

    def exp(self, theta):
        """f = exp(z @ theta) for theta (q, B), clipped to stay finite."""
        f = self.z[:, 0, None] * theta[0]  # outer products: a matmul with q ~ 1 is slower
        for j in range(1, self.q):
            f += self.z[:, j, None] * theta[j]
        np.clip(f, -_EXP_MAX, _EXP_MAX, out=f)
        return np.exp(f, out=f)

    def profile(self, w, y, theta):
        """Best amplitude at ``theta`` and, there, S = w f^2, u = w f r and chi^2."""
        f = self.exp(theta)
        wf = w * f
        A = np.einsum("kb,kb->b", wf, y) / np.einsum("kb,kb->b", wf, f)
        S = np.multiply(wf, f, out=wf)
        r = y - A * f
        wr = w * r
        chi = np.einsum("kb,kb->b", wr, r)
        return A, S, np.multiply(wr, f, out=wr), chi


def _weights(y, s):
    """y and weights 1/sigma^2 as float64 copies, both 0 where the point is unusable."""
    y = np.array(y, dtype=np.float64)
    w = np.array(s, dtype=np.float64)
    ok = w > 0
    w *= w
    np.divide(1.0, w, out=w, where=ok)
    ok &= np.isfinite(w) & (w > 0) & np.isfinite(y)
    ok = ~ok
    np.copyto(w, 0.0, where=ok)
    np.copyto(y, 0.0, where=ok)
    return y, w


# status of a pixel after _lm
_FAILED, _CONVERGED, _PENDING = 0, 1, 2


def _lm(design, y, w, theta, limit, tol, defer, lam0=None):
    """Damped Newton iteration on a block of pixels, all at once.

    Steps solve ``(H + lambda diag N) d = g`` with the full Hessian H where it
    is positive definite (quadratic convergence even for low-signal pixels,
    where Gauss-Newton crawls), else with the normal matrix N
    (Levenberg-Marquardt).  Trial points get the best amplitude for their
    theta (variable projection), so a step only has to improve the shape.  A
    pixel stops when its Newton decrement ``g^T N^-1 g`` (the chi-square a
    Gauss-Newton step would still gain, i.e. the squared length of that step
    in standard errors) is below ``tol``: scale-free, fine for a rate ~ 0.

    ``limit`` (B,) caps the iterations per pixel.  With ``defer``, once fewer
    than ``_DEFER`` of the block are still iterating they are returned as
    pending with their current theta and damping, so that the slow few of all
    blocks run together instead of every block looping for its own handful;
    ``lam0`` (B,) resumes them with that damping (default ``_LAMBDA0``), so
    a deferred pixel follows the same path as an uninterrupted one.

    Returns amplitude, theta, inverse normal matrix, chi-square, status
    (``_FAILED``, ``_CONVERGED``, ``_PENDING``), iterations used and the
    damping of the pending pixels.
    """
    p, B = design.p, y.shape[1]
    out_A, out_theta = np.full(B, np.nan), np.full((p - 1, B), np.nan)
    out_cov, out_chi = np.full((p, p, B), np.nan), np.full(B, np.nan)
    status = np.zeros(B, dtype=np.int8)
    used = np.zeros(B, dtype=np.int16)
    out_lam = np.full(B, np.nan)
    idx = np.arange(B)
    lam = np.full(B, _LAMBDA0) if lam0 is None else np.array(lam0, dtype=np.float64)
    A, S, u, chi = design.profile(w, y, theta)
    for it in range(int(limit.max()) + 1):
        N, g, H = design.normal(S, u, A, hessian=True)
        inv = _sym_inverse(N)[0]
        dec = (g * _matvec(inv, g)).sum(0)
        usable = _positive_definite(N) & np.isfinite(dec)
        stop = usable & (dec < tol)
        done = stop.copy()
        if stop.any():
            # A minimum resting on one point (rate running off to infinity, the
            # model ~0 elsewhere) is no measurement: the model must also reach
            # 1 sigma at points spanning the design, m / sigma = A sqrt(S).
            done[stop] = _spans(design, A[stop] * np.sqrt(S[:, stop]) >= 1.0)
        leave = stop | ~usable | (lam > _LAMBDA_MAX) | ~np.isfinite(chi) | (it >= limit[idx])
        pending = None
        if defer and it >= 2 and np.count_nonzero(~leave) <= _DEFER * B:
            pending = ~leave
            leave[:] = True
        if leave.any():
            ids = idx[done]
            out_A[ids], out_theta[:, ids] = A[done], theta[:, done]
            out_cov[:, :, ids], out_chi[ids] = inv[:, :, done], chi[done]
            status[ids] = _CONVERGED
            used[idx[leave]] = it
            if pending is not None:
                out_theta[:, idx[pending]] = theta[:, pending]
                out_lam[idx[pending]] = lam[pending]
                status[idx[pending]] = _PENDING
            keep = np.flatnonzero(~leave)
            if not keep.size:
                break
            idx, A, theta, chi, lam = idx[keep], A[keep], theta[:, keep], chi[keep], lam[keep]
            y, w, S, u = (np.take(a, keep, axis=1) for a in (y, w, S, u))
            N, g, H = (np.take(a, keep, axis=-1) for a in (N, g, H))
        M = H  # not needed any more: damped in place
        indefinite = np.flatnonzero(~_positive_definite(H))
        if indefinite.size:
            M[:, :, indefinite] = N[:, :, indefinite]
        for i in range(p):
            M[i, i] += lam * N[i, i]
        step = _matvec(_sym_inverse(M)[0], g)
        theta_t = theta + step[1:]
        A_t, S_t, u_t, chi_t = design.profile(w, y, theta_t)
        # Adopt the trial point, then put back the refused ones (few; NaN is refused).
        rej = np.flatnonzero(~(chi_t <= chi))
        lam *= 0.1
        if rej.size:
            A_t[rej], theta_t[:, rej], chi_t[rej] = A[rej], theta[:, rej], chi[rej]
            S_t[:, rej], u_t[:, rej] = S[:, rej], u[:, rej]
            lam[rej] *= 100.0
        A, theta, chi, S, u = A_t, theta_t, chi_t, S_t, u_t
    return out_A, out_theta, out_cov, out_chi, status, used, out_lam


def _spans(design, good):
    """True where the ``good`` (n, B) points number at least p and take two distinct values
    of every design column (q = 1: two temperatures; q = 2: two T and two t)."""
    ok = np.count_nonzero(good, axis=0) >= design.p
    for j in range(design.q):
        col = design.z[:, j]
        count = np.zeros(good.shape[1], dtype=np.int16)
        for value in np.unique(col):
            count += good[col == value].any(0)
        ok &= count >= 2
    return ok


def _fit_block(design, y, s, min_snr, max_iter, tol):
    """First pass on one block: log-linear start, then iterations where possible.

    Returns amplitude, theta, inverse normal matrix, chi-square, points
    used, status, iterations used and damping (of pending pixels) per pixel.
    """
    y, w = _weights(y, s)
    B, p = y.shape[1], design.p
    npts = np.count_nonzero(w, axis=0)
    good = y * np.sqrt(w) >= min_snr  # y / sigma; False where w = 0
    cand = _spans(design, good)
    status = np.zeros(B, dtype=np.int8)
    used = np.zeros(B, dtype=np.int16)
    lam = np.full(B, np.nan)
    out = (np.full(B, np.nan), np.full((design.q, B), np.nan), np.full((p, p, B), np.nan),
           np.full(B, np.nan))
    if not cand.any():
        return out + (npts, status, used, lam)
    ids = np.flatnonzero(cand)
    y, w, good = (np.take(a, ids, axis=1) for a in (y, w, good))
    # Log-linear start: ln y = ln A + z . theta on the good points, var(ln y) ~ (sigma / y)^2.
    v = np.where(good, y * y * w, 0.0)
    N, g, _ = design.normal(v, v * np.log(np.where(good, y, 1.0)), 1.0)
    inv, det = _sym_inverse(N)
    start = _matvec(inv, g)[1:]
    # Collinear good points (possible for q = 2) leave theta undetermined.
    ok = (det > 1e-10 * np.prod(np.diagonal(N), axis=-1)) & np.all(np.isfinite(start), axis=0)
    limit = np.where(ok, max_iter, -1)  # a negative limit fails the pixel at once
    res = _lm(design, y, w, np.where(ok, start, 0.0), limit, tol, defer=True)
    for full, part in zip(out, res[:4]):
        full[..., ids] = part
    status[ids], used[ids], lam[ids] = res[4], res[5], res[6]
    return out + (npts, status, used, lam)


def _fallback_block(design, y, s, theta):
    """Amplitude of fallback pixels, linear in closed form at the population theta."""
    y, w = _weights(y, s)
    f = design.exp(theta[:, None])[:, 0]          # (n,), the same for every pixel
    swff = w.T @ (f * f)
    A = (w * y).T @ f / swff
    r = y - A * f[:, None]
    return A, 1.0 / np.sqrt(swff), (w * r * r).sum(0)


# ---------------------------------------------------------------------------
# numba kernel of the nonlinear fits: the same algorithm, fused, on pixel tiles
# ---------------------------------------------------------------------------
#
# The numpy path above spends its time on (n, B) float64 temporaries in
# memory and on Python bookkeeping.  The kernel below runs the same steps on a
# tile of pixels held in cache, every loop running over the tile's pixels
# (innermost, so that LLVM vectorises it): weights, candidates, the weighted
# log-linear start, then damped Newton in lockstep (all pixels of a tile are
# at the same iteration, so no deferral is needed); pixels that leave are
# dropped from the tile when they are half of it.  What it took to vectorise
# (a per-pixel scalar version ran at ~1 us per pixel):
# * loops touch few arrays: a loop writing many rows exceeds LLVM's budget of
#   run-time alias checks and stays scalar (moments are one loop per row);
# * exp and log are polynomial / series implementations (~1 ulp) without
#   tables: table lookups become AVX gathers, slow on this kind of CPU; libm
#   calls do not vectorise;
# * no ``a[k, t0 + i]`` indexing with an offset (numba's negative-index
#   wraparound makes gathers of it): slices instead;
# * the hot lane loops (Newton step, sums, model shape) are compiled as their
#   own functions: inlined into the large kernel they stayed scalar.
# With a factorisable design (few distinct values per column, e.g. 5 T x 4 t)
# the model shape needs one exp per distinct value and pixel, not per point.
# Results agree with the numpy path to rounding (FMA contraction, summation
# order); population medians are exact (radix selection).

_INV_LN2 = 1.0 / math.log(2.0)
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10  # Cody-Waite
_SQRT2 = math.sqrt(2.0)
_TINY = 2.2250738585072014e-308                     # smallest normal float64
_MANT_BITS, _ONE_BITS = 0x000FFFFFFFFFFFFF, 0x3FF0000000000000
_NL_TILE = 128        # pixels iterated together (their points stay in L1 / L2)
_NL_CHUNK = 1 << 14  # pixels per thread-pool task
# rows of the per-pixel state of a tile: theta, amplitude, chi^2, the moments
# sum S (1, z0, z1, z0 z0, z0 z1, z1 z1) and sum u (same), damping, iteration limit
_TH0, _TH1, _AMP, _CHI, _MOM = 0, 1, 2, 3, 4
_LAM, _LIM = _MOM + 12, _MOM + 13
_NROW = _MOM + 14


def _exp_parts_py(x):
    """exp(x) = poly * 2^k for |x| <= _EXP_MAX (callers clip): returns poly and the
    bits of the float64 2^k, which the caller multiplies in through an int64 view.

    Branch- and table-free (a table would need gathers, slow here), so that
    loops calling it vectorise; ~1 ulp.  NaN gives NaN (k is clamped).
    """
    kf = math.floor(x * _INV_LN2 + 0.5)
    r = (x - kf * _LN2_HI) - kf * _LN2_LO  # |r| <= ln2 / 2
    poly = 1 / 6227020800                     # Taylor series to r^13 (Horner)
    poly = 1 / 479001600 + r * poly
    poly = 1 / 39916800 + r * poly
    poly = 1 / 3628800 + r * poly
    poly = 1 / 362880 + r * poly
    poly = 1 / 40320 + r * poly
    poly = 1 / 5040 + r * poly
    poly = 1 / 720 + r * poly
    poly = 1 / 120 + r * poly
    poly = 1 / 24 + r * poly
    poly = 1 / 6 + r * poly
    poly = 0.5 + r * poly
    poly = 1.0 + r * poly
    poly = 1.0 + r * poly
    k = min(max(kf, -1022), 1023)
    return poly, (k + 1023) << 52


def _log_mantissa_py(m, e):
    """log(m 2^e) for m in [1, 2) to a few ulp (series of 2 atanh((m - 1) / (m + 1)))."""
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    s = (m - 1.0) / (m + 1.0)  # |s| <= 0.172
    s2 = s * s
    tail = s2 * (1 / 3 + s2 * (1 / 5 + s2 * (1 / 7 + s2 * (1 / 9 + s2 * (
        1 / 11 + s2 * (1 / 13 + s2 * (1 / 15 + s2 * (1 / 17 + s2 * (1 / 19 + s2 * (
            1 / 21 + s2 * (1 / 23)))))))))))
    return e * _LN2_HI + ((2.0 * s + 2.0 * s * tail) + e * _LN2_LO)


def _sym_inv_py(p, a, b, c, d, e, f):
    """Inverse (upper triangle 00 01 02 11 12 22) and determinant of a symmetric 2x2
    ((a b) (b d); c, e, f ignored) or 3x3 matrix, by cofactors as :func:`_sym_inverse`
    (times the reciprocal determinant: divisions dominated the Newton step)."""
    if p == 2:
        det = a * d - b * b
        r = 1.0 / det
        return d * r, -b * r, 0.0, a * r, 0.0, 0.0, det
    c00, c01, c02 = d * f - e * e, c * e - b * f, b * e - c * d
    c11, c12, c22 = a * f - c * c, b * c - a * e, a * d - b * b
    det = a * c00 + b * c01 + c * c02
    r = 1.0 / det
    return c00 * r, c01 * r, c02 * r, c11 * r, c12 * r, c22 * r, det


def _matvec_py(p, i00, i01, i02, i11, i12, i22, g0, g1, g2):
    """Symmetric (upper triangle) matrix times vector, summed as :func:`_matvec`."""
    if p == 2:
        return i00 * g0 + i01 * g1, i01 * g0 + i11 * g1, 0.0
    return (i00 * g0 + i01 * g1 + i02 * g2, i01 * g0 + i11 * g1 + i12 * g2,
            i02 * g0 + i12 * g1 + i22 * g2)


def _posdef_py(p, a, b, c, d, e, f):
    """Sylvester's criterion as :func:`_positive_definite` (branch-free)."""
    third = a * (d * f - e * e) + b * (c * e - b * f) + c * (b * e - c * d) > 0
    return (a > 0) & (a * d - b * b > 0) & ((p == 2) | third)


def _support_py(a, W, F, i, gid, p):
    """:func:`_spans` of the points where the model of lane ``i`` reaches 1 sigma,
    ``a sqrt(w f^2) >= 1`` (as ``a > 0`` and ``a^2 w f^2 >= 1``): at least p of them and
    two distinct values in every design column (``gid`` (q, n): value index per point).
    One scalar pass: it runs once per pixel, on convergence."""
    q, n = gid.shape
    a2 = a * a
    cnt = 0
    first0 = first1 = -1
    two0 = False
    two1 = q == 1
    for k in range(n):
        if (a > 0) & (a2 * W[k, i] * F[k, i] * F[k, i] >= 1.0):
            cnt += 1
            g = gid[0, k]
            if first0 < 0:
                first0 = g
            elif g != first0:
                two0 = True
            if q == 2:
                g = gid[1, k]
                if first1 < 0:
                    first1 = g
                elif g != first1:
                    two1 = True
    return (cnt >= p) & two0 & two1


def _shape_py(na, act, q, z, gid, uz, ngrp, umax, fact, X, F, EF, sbits, scale):
    """Model shape f = exp(clip(z . theta)) (n, lanes) for lanes ``:na``, theta from rows
    ``_TH0``, ``_TH1`` of ``X`` (loops over lanes: they vectorise).  ``sbits`` and
    ``scale`` are an int64 work row and its float64 view."""
    n = F.shape[0]
    if fact:  # one exp per distinct value when no lane can need the clip
        for i in range(na):
            if act[i] and not (abs(X[_TH0, i]) * umax[0] + abs(X[_TH1, i]) * umax[1]
                               <= _EXP_MAX):
                fact = False
                break
    if fact:
        for j in range(q):
            for v in range(ngrp[j]):
                u = uz[j, v]
                for i in range(na):
                    EF[j, v, i], sbits[i] = _nb_exp_parts(u * X[_TH0 + j, i])
                for i in range(na):
                    EF[j, v, i] *= scale[i]
        for k in range(n):
            g0, g1 = gid[0, k], gid[1, k]
            for i in range(na):
                F[k, i] = EF[0, g0, i] * EF[1, g1, i]
    else:
        for k in range(n):
            z0 = z[k, 0]
            z1 = z[k, 1] if q == 2 else 0.0
            for i in range(na):
                t = z0 * X[_TH0, i]
                if q == 2:
                    t += z1 * X[_TH1, i]
                t = _EXP_MAX if t > _EXP_MAX else (-_EXP_MAX if t < -_EXP_MAX else t)
                F[k, i], sbits[i] = _nb_exp_parts(t)
            for i in range(na):
                F[k, i] *= scale[i]


def _moment_py(X, r, Z, c, n, na):
    """X[r, :na] = sum_k Z[k, :na] c[k]; one output per loop and four points per pass, so
    that the loop vectorises (a loop writing many rows exceeds LLVM's alias-check budget)."""
    for i in range(na):
        X[r, i] = 0.0
    k = 0
    while k + 4 <= n:
        c0, c1, c2, c3 = c[k], c[k + 1], c[k + 2], c[k + 3]
        for i in range(na):
            X[r, i] += (Z[k, i] * c0 + Z[k + 1, i] * c1) + (Z[k + 2, i] * c2 + Z[k + 3, i] * c3)
        k += 4
    while k < n:
        ck = c[k]
        for i in range(na):
            X[r, i] += Z[k, i] * ck
        k += 1


def _sums_py(na, feats, phi, Y, W, F, S, U, X):
    """:meth:`_Design.profile` and the moments of :meth:`_Design.normal` for lanes ``:na``.

    Writes the best amplitude, chi^2 and the moments sum(S phi_j), sum(u phi_j)
    (S = w f^2, u = w f r; ``phi`` (6, n): 1, z0, z1, z0 z0, z0 z1, z1 z1, of
    which ``feats`` are used) into the rows of ``X``; ``S``, ``U`` are work.
    """
    n = Y.shape[0]
    for i in range(na):
        X[_AMP, i] = 0.0
        X[_CHI, i] = 0.0
    for k in range(n):  # sum w f y and sum w f^2 in the rows of A and chi
        for i in range(na):
            wf = W[k, i] * F[k, i]
            X[_AMP, i] += wf * Y[k, i]
            X[_CHI, i] += wf * F[k, i]
    for i in range(na):
        X[_AMP, i] = X[_AMP, i] / X[_CHI, i]
        X[_CHI, i] = 0.0
    for k in range(n):
        for i in range(na):
            S[k, i] = W[k, i] * F[k, i] * F[k, i]
        for i in range(na):
            U[k, i] = W[k, i] * (Y[k, i] - X[_AMP, i] * F[k, i]) * F[k, i]
        for i in range(na):
            r = Y[k, i] - X[_AMP, i] * F[k, i]
            X[_CHI, i] += W[k, i] * r * r
    for j in feats:
        _nb_moment(X, _MOM + j, S, phi[j], n, na)
        _nb_moment(X, _MOM + 6 + j, U, phi[j], n, na)


def _newton_py(na, p, q, L, V, tol, it):
    """Newton decrement, stop / leave flags and the damped step of lanes ``:na`` at
    iteration ``it``, as :func:`_lm`.

    Writes rows of the flat ``V`` (row r of lane i at ``r * _NL_TILE + i``): 0 the
    flag (0 stays, 1 leaves, 3 stops), 1-2 the trial theta, 3-8 the inverse normal
    matrix (upper triangle).  Compiled on its own and with compile-time row offsets
    (no run-time alias checks between them), the loop vectorises.
    """
    T = _NL_TILE
    for i in range(na):
        a = L[_AMP, i]
        a2 = a * a
        n00, n01, n02 = L[_MOM, i], a * L[_MOM + 1, i], a * L[_MOM + 2, i]
        n11, n12, n22 = a2 * L[_MOM + 3, i], a2 * L[_MOM + 4, i], a2 * L[_MOM + 5, i]
        g1, g2 = L[_MOM + 7, i], L[_MOM + 8, i]
        G0, G1, G2 = L[_MOM + 6, i], g1 * a, g2 * a
        i00, i01, i02, i11, i12, i22, _ = _nb_sym_inv(p, n00, n01, n02, n11, n12, n22)
        v0, v1, v2 = _nb_matvec(p, i00, i01, i02, i11, i12, i22, G0, G1, G2)
        dec = G0 * v0 + G1 * v1
        if p == 3:
            dec += G2 * v2
        usable = _nb_posdef(p, n00, n01, n02, n11, n12, n22) & math.isfinite(dec)
        st = usable & (dec < tol)
        lam = L[_LAM, i]
        leave = st | (not usable) | (lam > _LAMBDA_MAX) | \
            (not math.isfinite(L[_CHI, i])) | (it >= L[_LIM, i])
        V[i] = 2.0 * st + leave
        V[3 * T + i] = i00
        V[4 * T + i] = i01
        V[5 * T + i] = i02
        V[6 * T + i] = i11
        V[7 * T + i] = i12
        V[8 * T + i] = i22
        H01, H02 = n01 - g1, n02 - g2
        H11 = n11 - a * L[_MOM + 9, i]
        H12 = n12 - a * L[_MOM + 10, i]
        H22 = n22 - a * L[_MOM + 11, i]
        hess = _nb_posdef(p, n00, H01, H02, H11, H12, H22)
        M01 = H01 if hess else n01
        M02 = H02 if hess else n02
        M11 = (H11 if hess else n11) + lam * n11
        M12 = H12 if hess else n12
        M22 = (H22 if hess else n22) + lam * n22
        M00 = n00 + lam * n00
        j00, j01, j02, j11, j12, j22, _ = _nb_sym_inv(p, M00, M01, M02, M11, M12, M22)
        _, d1, d2 = _nb_matvec(p, j00, j01, j02, j11, j12, j22, G0, G1, G2)
        V[T + i] = L[_TH0, i] + d1
        V[2 * T + i] = L[_TH1, i] + d2 if q == 2 else L[_TH1, i]


def _nl_kernel_py(y2, s2, a0, a1, z, zz, gid, uz, ngrp, umax, fact, min_snr, max_iter, tol,
                  A_out, th_out, cov_out, chi_out, npts_out, st_out, chi2_out, err_out):
    """First pass of the nonlinear fit on pixels ``a0:a1`` of ``y2``, ``s2`` (n, P).

    The steps of :func:`_fit_block` and :func:`_lm` on tiles of pixels:
    weights, candidates, weighted log-linear start, damped Newton.  Writes
    points used and status of every pixel and, of the converged ones,
    amplitude, theta, inverse normal matrix, chi^2, reduced chi^2 and errors
    (the other pixels' are left for the fallback pass).
    """
    n, q = z.shape
    p = q + 1
    T = _NL_TILE
    Y = np.empty((n, T))
    Ybits = Y.view(np.int64)
    W = np.empty((n, T))
    F = np.empty((n, T))
    Ft = np.empty((n, T))
    S = np.empty((n, T))
    U = np.empty((n, T))
    G = np.empty((n, T))
    EF = np.ones((2, uz.shape[1], T))
    L = np.zeros((_NROW, T))   # state of the tile's lanes
    Lt = np.zeros((_NROW, T))  # trial state
    V = np.empty((10, T))      # work rows: counts, start moments
    VN = np.empty(9 * T)       # Newton flags, step, inverse (flat: see _newton_py)
    H = np.empty((uz.shape[1], T))
    ebuf = np.empty(T)
    mbuf = np.empty(T, np.int64)
    mant = mbuf.view(np.float64)
    pix = np.empty(T, np.int64)
    act = np.empty(T, np.bool_)
    min_snr2 = min_snr * min_snr
    phi = np.zeros((6, n))     # point features 1, z0, z1, z0 z0, z0 z1, z1 z1
    for k in range(n):
        phi[0, k] = 1.0
        phi[1, k] = z[k, 0]
        phi[3, k] = zz[k, 0]
        if q == 2:
            phi[2, k] = z[k, 1]
            phi[4, k] = zz[k, 1]
            phi[5, k] = zz[k, 2]
    feats = np.array([0, 1, 3]) if q == 1 else np.arange(6)
    for t0 in range(a0, a1, T):
        m = min(a1, t0 + T) - t0
        for k in range(n):  # gather the tile's points, as _weights
            yrow = y2[k, t0:t0 + m]  # (a slice: t0 + i indices would compile to gathers)
            srow = s2[k, t0:t0 + m]
            for i in range(m):
                yv = np.float64(yrow[i])
                sv = np.float64(srow[i])
                wv = 1.0 / (sv * sv)
                ok = (sv > 0) & math.isfinite(wv) & (wv > 0) & math.isfinite(yv)
                Y[k, i] = yv if ok else 0.0
                W[k, i] = wv if ok else 0.0
        for i in range(m):
            V[0, i] = 0.0  # points used
            V[1, i] = 0.0  # good points
        tiny = False
        for k in range(n):  # good: y / sigma >= min_snr, as y > 0 and y^2 w >= min_snr^2
            for i in range(m):
                V[0, i] += W[k, i] != 0
            for i in range(m):
                good = (Y[k, i] > 0) & (Y[k, i] * Y[k, i] * W[k, i] >= min_snr2)
                G[k, i] = 1.0 if good else 0.0
                tiny |= good & (Y[k, i] < _TINY)
            for i in range(m):
                V[1, i] += G[k, i]
        # Only the converged pixels' maps are written here: the fallback pass writes
        # every other pixel's.
        for i in range(m):
            j = t0 + i
            pix[i] = j
            npts_out[j] = V[0, i]
            st_out[j] = _FAILED
            act[i] = V[1, i] >= p
        for j in range(q):  # candidates (_spans): good points at two values of every column
            for v in range(ngrp[j]):
                for i in range(m):
                    H[v, i] = 0.0
            for k in range(n):
                v = gid[j, k]
                for i in range(m):
                    H[v, i] = max(H[v, i], G[k, i])
            for i in range(m):
                V[2, i] = 0.0
            for v in range(ngrp[j]):
                for i in range(m):
                    V[2, i] += H[v, i]
            for i in range(m):
                act[i] &= V[2, i] >= 2
        # log-linear start: ln y = ln A + z . theta on the good points, weights (y / sigma)^2
        for k in range(n):
            for i in range(m):  # exponent and mantissa bits of y
                bits = Ybits[k, i]
                ebuf[i] = np.float64((bits >> 52) - 1023)
                mbuf[i] = (bits & _MANT_BITS) | _ONE_BITS
            for i in range(m):
                S[k, i] = Y[k, i] * Y[k, i] * W[k, i] if G[k, i] != 0 else 0.0
            for i in range(m):
                U[k, i] = S[k, i] * _nb_log_mantissa(mant[i], ebuf[i])
            if tiny:  # subnormal y (only with an absurdly small min_snr): libm
                for i in range(m):
                    if (G[k, i] != 0) & (Y[k, i] < _TINY):
                        U[k, i] = S[k, i] * math.log(Y[k, i])
        for j in feats:
            _nb_moment(V, j, S, phi[j], n, m)
        _nb_moment(V, 6, U, phi[0], n, m)
        _nb_moment(V, 7, U, phi[1], n, m)
        _nb_moment(V, 8, U, phi[2], n, m)
        for i in range(m):
            s0, s1, s2_, s11, s12, s22 = V[0, i], V[1, i], V[2, i], V[3, i], V[4, i], V[5, i]
            i00, i01, i02, i11, i12, i22, det = _nb_sym_inv(p, s0, s1, s2_, s11, s12, s22)
            dprod = s0 * s11 * s22 if q == 2 else s0 * s11
            _, th0, th1 = _nb_matvec(p, i00, i01, i02, i11, i12, i22, V[6, i], V[7, i],
                                     V[8, i])
            ok = (det > 1e-10 * dprod) & math.isfinite(th0) & math.isfinite(th1)
            L[_TH0, i] = th0 if ok else 0.0
            L[_TH1, i] = th1 if ok else 0.0
            L[_LAM, i] = _LAMBDA0
            L[_LIM, i] = max_iter if ok else -1.0
        nact = 0
        for i in range(m):
            nact += act[i]
        if nact == 0:
            continue
        # damped Newton, as _lm, in lockstep
        na = m
        _nb_shape(na, act, q, z, gid, uz, ngrp, umax, fact, L, F, EF, mbuf, mant)
        _nb_sums(na, feats, phi, Y, W, F, S, U, L)
        it = 0
        while True:
            _nb_newton(na, p, q, L, VN, tol, it)
            for i in range(na):
                if not (act[i] and VN[i] != 0):
                    continue
                act[i] = False
                nact -= 1
                if VN[i] != 3:
                    continue
                a = L[_AMP, i]
                if not _nb_support(a, W, F, i, gid, p):
                    continue
                j = pix[i]
                A_out[j] = a
                chi_out[j] = L[_CHI, i]
                st_out[j] = _CONVERGED
                th_out[0, j] = L[_TH0, i]
                if q == 2:
                    th_out[1, j] = L[_TH1, i]
                cov_out[0, 0, j] = VN[3 * T + i]
                cov_out[0, 1, j] = cov_out[1, 0, j] = VN[4 * T + i]
                cov_out[1, 1, j] = VN[6 * T + i]
                if p == 3:
                    cov_out[0, 2, j] = cov_out[2, 0, j] = VN[5 * T + i]
                    cov_out[1, 2, j] = cov_out[2, 1, j] = VN[7 * T + i]
                    cov_out[2, 2, j] = VN[8 * T + i]
                # reduced chi^2 and errors as the numpy path computes them from float32 maps
                if npts_out[j] > p:
                    chi2_out[j] = np.float32(chi_out[j]) / np.float32(npts_out[j] - p)
                for r in range(p):
                    err_out[r, j] = np.sqrt(cov_out[r, r, j])
            if nact == 0:
                break
            if 2 * nact <= na:  # drop the lanes that left
                c = 0
                for i in range(na):
                    if act[i]:
                        mbuf[c] = i
                        c += 1
                for rows in (Y, W, F, L):
                    for r in range(rows.shape[0]):
                        row = rows[r]
                        for jj in range(nact):
                            row[jj] = row[mbuf[jj]]
                for jj in range(nact):
                    VN[T + jj] = VN[T + mbuf[jj]]
                    VN[2 * T + jj] = VN[2 * T + mbuf[jj]]
                for jj in range(nact):
                    pix[jj] = pix[mbuf[jj]]
                    act[jj] = True
                na = nact
            for i in range(na):
                Lt[_TH0, i] = VN[T + i]
                Lt[_TH1, i] = VN[2 * T + i]
            _nb_shape(na, act, q, z, gid, uz, ngrp, umax, fact, Lt, Ft, EF, mbuf, mant)
            _nb_sums(na, feats, phi, Y, W, Ft, S, U, Lt)
            # adopt the trial points (swap the buffers), put back the refused ones
            for i in range(na):
                la = L[_LAM, i] * 0.1
                Lt[_LIM, i] = L[_LIM, i]
                if Lt[_CHI, i] <= L[_CHI, i]:  # NaN is refused
                    Lt[_LAM, i] = la
                else:
                    for r in range(_LAM):
                        Lt[r, i] = L[r, i]
                    Lt[_LAM, i] = la * 100.0
                    for k in range(n):
                        Ft[k, i] = F[k, i]
            L, Lt = Lt, L
            F, Ft = Ft, F
            it += 1


def _fallback_kernel_py(y2, s2, a0, a1, status, npts, f, pop_theta, spread2, A_out, th_out,
                        cov_out, chi2_out, err_out):
    """Fallback pass on the pixels ``a0:a1`` that did not converge, as in the numpy path:
    the amplitude linear at the fixed shape ``f`` (n,) (:func:`_fallback_block`), its
    error and chi^2, theta set to ``pop_theta`` with variance ``spread2``, and the error
    maps ``err_out`` (p, P) = sqrt(diagonal of the float32 covariance)."""
    n = f.size
    q = pop_theta.size
    for pix in range(a0, a1):
        if status[pix] == _CONVERGED:
            continue
        swff = 0.0
        swyf = 0.0
        for k in range(n):
            yv = np.float64(y2[k, pix])
            sv = np.float64(s2[k, pix])
            wv = 1.0 / (sv * sv)
            if sv > 0 and math.isfinite(wv) and wv > 0 and math.isfinite(yv):
                swff += wv * (f[k] * f[k])
                swyf += wv * yv * f[k]
        A = swyf / swff
        chi = 0.0
        for k in range(n):
            yv = np.float64(y2[k, pix])
            sv = np.float64(s2[k, pix])
            wv = 1.0 / (sv * sv)
            if sv > 0 and math.isfinite(wv) and wv > 0 and math.isfinite(yv):
                r = yv - A * f[k]
                chi += wv * r * r
        err = 1.0 / math.sqrt(swff)
        A_out[pix] = A
        cnt = npts[pix]
        chi2_out[pix] = chi / (cnt - 1) if cnt > 1 else np.nan
        for r in range(q + 1):
            for c in range(q + 1):
                cov_out[r, c, pix] = 0.0
        cov_out[0, 0, pix] = err * err
        err_out[0, pix] = np.sqrt(cov_out[0, 0, pix])
        for j in range(q):
            th_out[j, pix] = pop_theta[j]
            cov_out[j + 1, j + 1, pix] = spread2[j]
            err_out[j + 1, pix] = np.sqrt(cov_out[j + 1, j + 1, pix])


def _radix_select_py(keys, m, k, hist):
    """The k-th smallest (0-based) of the int64 order keys ``keys[:m]``, exactly: radix
    selection on 16-bit digits from the top.  Reorders ``keys``."""
    for shift in (48, 32, 16, 0):
        off = 32768 if shift == 48 else 0
        for b in range(65536):
            hist[b] = 0
        for i in range(m):
            hist[((keys[i] >> shift) + off) & 0xFFFF] += 1
        b = 0
        while hist[b] <= k:
            k -= hist[b]
            b += 1
        if hist[b] == m:
            continue
        j = 0
        for i in range(m):
            if ((keys[i] >> shift) + off) & 0xFFFF == b:
                keys[j] = keys[i]
                j += 1
        m = j
    return keys[0]


def _radix_median_py(values, mask, center, absdev):
    """:func:`_masked_median_py` by radix selection on all the values (any data)."""
    m = 0
    for i in range(values.size):
        m += mask[i] & math.isfinite(values[i])
    keys = np.empty(m, np.int64)
    work = np.empty(m, np.int64)
    fbuf = np.empty(m)
    j = 0
    for i in range(values.size):
        if mask[i] & math.isfinite(values[i]):
            x = np.float64(values[i])
            fbuf[j] = abs(x - center) if absdev else x
            j += 1
    bits = fbuf.view(np.int64)
    for i in range(m):  # order-preserving integer keys of the floats
        keys[i] = bits[i] ^ ((bits[i] >> 63) & 0x7FFFFFFFFFFFFFFF)
        work[i] = keys[i]
    k = (m - 1) // 2
    a = _nb_radix_select(work, m, k, np.empty(65536, np.int64))
    b = a
    if m % 2 == 0:  # the next order statistic: a again, or the smallest key above it
        n_le = 0
        above = np.iinfo(np.int64).max
        for i in range(m):
            n_le += keys[i] <= a
            if keys[i] > a and keys[i] < above:
                above = keys[i]
        b = a if n_le >= k + 2 else above
    ibuf = fbuf.view(np.int64)
    ibuf[0] = a ^ ((a >> 63) & 0x7FFFFFFFFFFFFFFF)
    ibuf[1] = b ^ ((b >> 63) & 0x7FFFFFFFFFFFFFFF)
    return fbuf[0] if m % 2 else (fbuf[0] + fbuf[1]) / 2


def _masked_median_py(values, mask, center, absdev):
    """np.median of x = values[i] (or |values[i] - center| with ``absdev``) over the finite
    values where ``mask`` (at least one), exactly, in linear time, without copying them.

    A sorted sample brackets the median; one pass counts the values, those
    below the bracket, and collects those inside it (a few thousand), which
    are sorted.  Should the bracket miss (an unlucky sample), radix selection
    on all of them.  The pass is branch-free: a test of x against the median
    is a coin flip for the branch predictor.
    """
    size = values.size
    step = max(1, size // 32768)
    sample = np.empty(size // step + 1)
    ns = 0
    for i in range(0, size, step):
        x = np.float64(values[i])
        sample[ns] = abs(x - center) if absdev else x
        ns += mask[i] & math.isfinite(values[i])
    if ns == 0:
        return _nb_radix_median(values, mask, center, absdev)
    sample = np.sort(sample[:ns])
    margin = 2 * int(math.sqrt(ns)) + 16  # > 4 sigma of the sample rank of the median
    lo = sample[max(ns // 2 - margin, 0)]
    hi = sample[min(ns // 2 + margin, ns - 1)]
    bracket = np.empty(size + 1)  # only its first entries are written (and paged in)
    m = 0
    below = 0
    inside = 0
    for i in range(size):
        x = np.float64(values[i])
        x = abs(x - center) if absdev else x
        ok = mask[i] & math.isfinite(values[i])
        m += ok
        below += ok & (x < lo)
        bracket[inside] = x
        inside += ok & (x >= lo) & (x <= hi)
    k = (m - 1) // 2
    k1 = k + 1 if m % 2 == 0 else k
    if not (below <= k and k1 < below + inside):
        return _nb_radix_median(values, mask, center, absdev)
    inner = np.sort(bracket[:inside])
    a, b = inner[k - below], inner[k1 - below]
    return a if m % 2 else (a + b) / 2


def _population_py(values, mask):
    """:func:`population_value` (median and MAD of the finite ``values[mask]``) exactly,
    in linear time; NaN, NaN when there is none."""
    found = False
    for i in range(values.size):
        if mask[i] and math.isfinite(values[i]):
            found = True
            break
    if not found:
        return np.nan, np.nan
    med = _nb_masked_median(values, mask, 0.0, False)
    return med, _nb_masked_median(values, mask, med, True)


def _fit_exp_model(z, y, sigma, *, min_snr, max_iter, tol, workers, what):
    """Shared driver: first pass (numba kernel, or numpy blocks), population, fallback pass.

    Returns a dict of maps (float32 / bool / int16) and the population
    median and spread of every theta.
    """
    if not min_snr > 0:
        raise ValueError(f"min_snr must be > 0, not {min_snr}")
    if max_iter < 1 or not tol > 0:
        raise ValueError("max_iter must be >= 1 and tol > 0")
    y = _float_array(y)
    sigma = _float_array(sigma)
    n = z.shape[0]
    if y.ndim < 1 or y.shape[0] != n or sigma.shape != y.shape:
        raise ValueError(f"{n} points but y has shape {y.shape} and sigma {sigma.shape}")
    shape = y.shape[1:]
    y2 = y.reshape(n, -1)
    s2 = sigma.reshape(n, -1)
    P = y2.shape[1]
    design = _Design(z)
    p, q = design.p, design.q
    A = np.empty(P, np.float32)
    theta = np.empty((q, P), np.float32)
    cov = np.empty((p, p, P), np.float32)
    chi = np.empty(P, np.float32)
    npts = np.empty(P, np.int16)
    status = np.empty(P, np.int8)
    workers = max(1, int(workers))
    fail = ValueError(
        f"no pixel is well measured ({what} with y/sigma >= min_snr={min_snr} and a "
        "converged fit), so there is no population value for the low-signal pixels")
    if HAVE_NUMBA:
        chi2 = np.empty(P, np.float32)
        errs = np.empty((p, P), np.float32)
        _first_pass_numba(design, y2, s2, min_snr, max_iter, tol, workers,
                          (A, theta, cov, chi, npts, status, chi2, errs))
        well = status == _CONVERGED
        if q > 1 and workers > 1:  # the kernels release the GIL
            with ThreadPoolExecutor(max_workers=q) as pool:
                pop = list(pool.map(lambda j: population_value(theta[j], well), range(q)))
        else:
            pop = [population_value(theta[j], well) for j in range(q)]
        if not np.isfinite(pop[0][0]):
            raise fail
        pop_theta = np.array([m for m, _ in pop])
        f = design.exp(pop_theta[:, None])[:, 0]
        with np.errstate(all="ignore"):  # only for the float32 casts of overflowing values
            args = (status, npts, f, pop_theta.astype(np.float32),
                    np.array([s ** 2 for _, s in pop], np.float32), A, theta, cov, chi2, errs)
        _run_chunks(lambda a, b: _nb_fallback(y2, s2, a, b, *args), P, _NL_CHUNK, workers)
    else:
        _first_pass_numpy(design, y2, s2, min_snr, max_iter, tol, workers,
                          (A, theta, cov, chi, npts, status))
        well = status == _CONVERGED
        with np.errstate(invalid="ignore", divide="ignore"):
            chi2 = np.where(npts > p, chi / (npts - p), np.nan).astype(np.float32)
        if not well.any():
            raise fail
        pop = [population_value(theta[j], well) for j in range(q)]
        pop_theta = np.array([m for m, _ in pop])
        fb = np.flatnonzero(~well)
        theta[:, fb] = pop_theta[:, None]
        cov[:, :, fb] = 0.0
        for j in range(q):
            cov[j + 1, j + 1, fb] = pop[j][1] ** 2
        step = max(256, _BLOCK_SAMPLES // n)
        with np.errstate(all="ignore"):  # pixels without any usable point give NaN
            for a in range(0, fb.size, step):
                ids = fb[a:a + step]
                A_fb, err, chi_fb = _fallback_block(design, y2[:, ids], s2[:, ids], pop_theta)
                A[ids], cov[0, 0, ids] = A_fb, err * err
                chi2[ids] = np.where(npts[ids] > 1, chi_fb / (npts[ids] - 1), np.nan)
        errs = np.sqrt(np.diagonal(cov).T)  # (p, P)
    return {
        "amplitude": A.reshape(shape), "amplitude_err": errs[0].reshape(shape),
        "theta": theta.reshape((q,) + shape), "theta_err": errs[1:].reshape((q,) + shape),
        "covariance": cov.reshape((p, p) + shape), "chi2": chi2.reshape(shape),
        "npoints": npts.reshape(shape), "fallback": ~well.reshape(shape),
        "population": pop,
    }


def _first_pass_numpy(design, y2, s2, min_snr, max_iter, tol, workers, outputs):
    """First pass by vectorised blocks: fills ``outputs`` (A, theta, cov, chi, npts, status)."""
    A, theta, cov, chi, npts, status = outputs
    n, P = y2.shape
    used = np.empty(P, np.int16)
    resume = {}  # pending pixels resume from their exact theta and damping
    step = max(256, _BLOCK_SAMPLES // n)

    def run(a):
        b = min(P, a + step)
        with np.errstate(all="ignore"):  # thread-local: NaN / overflow handled explicitly
            res = _fit_block(design, y2[:, a:b], s2[:, a:b], min_snr, max_iter, tol)
        A[a:b], theta[:, a:b], cov[:, :, a:b], chi[a:b] = res[:4]
        npts[a:b], status[a:b], used[a:b] = res[4:7]
        pend = res[5] == _PENDING
        if pend.any():
            resume[a] = res[1][:, pend], res[7][pend]

    # NaN / overflow of refused steps and of empty pixels are handled explicitly.
    with np.errstate(all="ignore"):
        starts = range(0, P, step)
        if workers > 1 and len(starts) > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(run, starts))  # numpy releases the GIL in its loops
        else:
            for a in starts:
                run(a)
        pend = np.flatnonzero(status == _PENDING)
        if pend.size:  # the slow pixels of every block, together
            yp, wp = _weights(y2[:, pend], s2[:, pend])
            th = np.concatenate([resume[a][0] for a in sorted(resume)], axis=1)
            lam = np.concatenate([resume[a][1] for a in sorted(resume)])
            res = _lm(design, yp, wp, th, (max_iter - used[pend]).astype(np.int64), tol,
                      defer=False, lam0=lam)
            A[pend], theta[:, pend], cov[:, :, pend], chi[pend], status[pend] = res[:5]


def _design_groups(z):
    """Distinct values of every design column: value index per point (q, n), the
    values (q, G), their count (q,) and largest magnitude (q,), and whether the
    model shape is cheaper as a product of per-value exponentials."""
    n, q = z.shape
    uniq = [np.unique(z[:, j], return_inverse=True) for j in range(q)]
    gid = np.array([inv.reshape(-1) for _, inv in uniq], dtype=np.int64)
    ngrp = np.array([u.size for u, _ in uniq], dtype=np.int64)
    uz = np.zeros((q, int(ngrp.max())))
    for j, (u, _) in enumerate(uniq):
        uz[j, :u.size] = u
    umax = np.array([np.abs(u).max() for u, _ in uniq])
    return gid, uz, ngrp, umax, q > 1 and int(ngrp.sum()) < n


def _first_pass_numba(design, y2, s2, min_snr, max_iter, tol, workers, outputs):
    """First pass by the per-pixel numba kernel on ``workers`` threads (chunks of pixels)."""
    A, theta, cov, chi, npts, status, chi2, errs = outputs
    z = np.ascontiguousarray(design.z, dtype=np.float64)
    n, q = z.shape
    zz = np.zeros((n, 3))
    for k, (i, j) in enumerate(design.pairs):
        zz[:, k] = design.quad[k]
    gid, uz, ngrp, umax, fact = _design_groups(z)
    _run_chunks(lambda a, b: _nb_nl_kernel(y2, s2, a, b, z, zz, gid, uz, ngrp, umax, fact,
                                           float(min_snr), int(max_iter), float(tol),
                                           A, theta, cov, chi, npts, status, chi2, errs),
                y2.shape[1], _NL_CHUNK, workers)


@dataclass
class ExponentialFit:
    """Per-pixel exponential ``y = amplitude * exp(rate * (x - x_ref))``.

    Attributes
    ----------
    amplitude : numpy.ndarray
        Model value at ``x_ref`` per pixel (units of y), float32.
    rate : numpy.ndarray
        Exponential rate (1 / unit of x, e.g. 1/degC; the doubling interval
        is ``ln 2 / rate``), float32.
    amplitude_err, rate_err : numpy.ndarray
        One-sigma standard errors from the weights (no chi-square rescaling).
        For fallback pixels ``rate_err`` is ``population_rate_spread``.
    covariance : numpy.ndarray
        Covariance of amplitude and rate (0 for fallback pixels).
    chi2 : numpy.ndarray
        Reduced chi-square ``sum(w r^2) / (npoints - fitted parameters)``,
        two parameters, one for fallback pixels; NaN when that is <= 0.
    npoints : numpy.ndarray
        Points with positive weight per pixel (int16).
    fallback : numpy.ndarray
        True where the rate is not the pixel's own but ``population_rate``
        (too few points with enough signal, or a failed fit); the amplitude
        is then fitted linearly at that rate (NaN without any usable point).
    x_ref : float
        Reference abscissa of the amplitude.
    population_rate, population_rate_spread : float
        Median and robust spread (1.4826 MAD) of the rates of the
        well-measured (non-fallback) pixels.
    """

    amplitude: np.ndarray
    rate: np.ndarray
    amplitude_err: np.ndarray
    rate_err: np.ndarray
    covariance: np.ndarray
    chi2: np.ndarray
    npoints: np.ndarray
    fallback: np.ndarray
    x_ref: float
    population_rate: float
    population_rate_spread: float

    def predict(self, x: float) -> np.ndarray:
        """Model value at ``x`` (float32 image)."""
        e = np.exp(self.rate.astype(np.float64) * (x - self.x_ref))
        return (self.amplitude * e).astype(np.float32)

    def predict_err(self, x: float) -> np.ndarray:
        """One-sigma error of :meth:`predict` at ``x``, with the amplitude-rate covariance."""
        d = x - self.x_ref
        a = self.amplitude.astype(np.float64)
        e = np.exp(self.rate.astype(np.float64) * d)
        # gradient (e, a d e): var = e^2 (s_a^2 + (a d s_r)^2 + 2 a d cov)
        var = self.amplitude_err.astype(np.float64) ** 2 + (a * d * self.rate_err) ** 2 \
            + 2 * a * d * self.covariance
        return (e * np.sqrt(np.maximum(var, 0))).astype(np.float32)


def fit_exponential_per_pixel(x, y, sigma, *, x_ref: float, min_snr: float = 3.0,
                              max_iter: int = 30, tol: float = 1e-6,
                              workers: int = 2) -> ExponentialFit:
    """Weighted nonlinear least-squares exponential through every pixel of a stack.

    Fits ``y = amplitude * exp(rate * (x - x_ref))``, e.g. dark current
    [adu/s] against temperature [degC], by damped Newton (Levenberg-Marquardt)
    iterations on every pixel (float64 inside, ``workers`` threads, see the
    module notes).  Values
    may be negative or zero (quiet pixels after bias subtraction): the fit is
    made on ``y`` itself, logarithms are only taken of the points with
    ``y / sigma >= min_snr`` for the starting values (a weighted log-linear
    fit, weights ``(y / sigma)^2``).

    A pixel is well measured when at least two distinct ``x`` have
    ``y / sigma >= min_snr`` and the iteration converges to a model that
    reaches one sigma at two distinct ``x`` (not a spike on a single point,
    where the rate runs off to infinity).  Every other pixel
    falls back to the population rate (median over the well-measured pixels)
    with its amplitude fitted linearly at that rate,
    ``A = sum(w y e) / sum(w e^2)``, ``e = exp(rate (x - x_ref))``, error
    ``1 / sqrt(sum(w e^2))``; see :class:`ExponentialFit`.

    Parameters
    ----------
    x : array-like, shape (n,)
        Abscissae (e.g. temperatures [degC]); at least two distinct values.
    y : array-like, shape (n, ...)
        Values to fit (e.g. dark-current maps [adu/s]); NaN gives weight 0.
    sigma : array-like, shape (n, ...)
        One-sigma errors of ``y`` (same units); non-finite or non-positive
        errors give the point weight 0.  They are taken as true: errors are
        not rescaled by the chi-square.
    x_ref : float
        Reference abscissa of the amplitude (units of x).
    min_snr : float
        Smallest ``y / sigma`` of a point used for the start and for
        counting a pixel as well measured.
    max_iter : int
        Largest number of iterations; pixels not converged by then fall back.
    tol : float
        Convergence: the chi-square a further Gauss-Newton step would gain
        (Newton decrement ``g^T N^-1 g``) is below ``tol``, i.e. the
        parameters are within ``sqrt(tol)`` standard errors of the minimum
        (1e-3 by default).
    workers : int
        Threads working on chunks of pixels (the kernels release the GIL).

    Returns
    -------
    ExponentialFit

    Raises
    ------
    ValueError
        Fewer than two distinct ``x``, mismatched shapes, or no well-measured
        pixel (no population rate for the fallback).

    Notes
    -----
    Cost (numba): ~0.15 us per pixel and thread for five points; memory: the
    inputs plus ~50 bytes per pixel of results (and ~1 MB per thread).

    Examples
    --------
    >>> x = np.array([0.0, 6.0, 12.0])
    >>> y = 5.0 * 2.0 ** (x / 6.0)[:, None, None] * np.ones((3, 1, 1))
    >>> fit = fit_exponential_per_pixel(x, y, np.full_like(y, 0.1), x_ref=0.0)
    >>> round(float(fit.amplitude[0, 0]), 4), round(float(np.log(2) / fit.rate[0, 0]), 4)
    (5.0, 6.0)
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError("x must be one-dimensional")
    if np.unique(x[np.isfinite(x)]).size < 2 or not np.isfinite(x).all():
        raise ValueError("an exponential fit needs finite x with at least two distinct values")
    res = _fit_exp_model((x - x_ref)[:, None], y, sigma, min_snr=min_snr, max_iter=max_iter,
                         tol=tol, workers=workers, what="two distinct x")
    (rate_med, rate_spread), = res["population"]
    return ExponentialFit(res["amplitude"], res["theta"][0], res["amplitude_err"],
                          res["theta_err"][0], res["covariance"][0, 1].copy(), res["chi2"],
                          res["npoints"], res["fallback"], float(x_ref), rate_med, rate_spread)


@dataclass
class PowerExponentialFit:
    """Per-pixel ``y = amplitude * t**gamma * exp(rate * (T - t_ref))``.

    ``t`` is the exposure time [s] and ``T`` the temperature [degC].

    Attributes
    ----------
    amplitude : numpy.ndarray
        Model value at ``t = 1 s`` and ``T = t_ref`` (units of y), float32.
    gamma : numpy.ndarray
        Power of the exposure time (1 for a signal proportional to it).
    rate : numpy.ndarray
        Exponential temperature rate [1/degC].
    amplitude_err, gamma_err, rate_err : numpy.ndarray
        One-sigma standard errors (population spreads for fallback pixels).
    covariance : numpy.ndarray
        Shape (3, 3, ...): covariance of (amplitude, gamma, rate) per pixel;
        diagonal for fallback pixels.
    chi2, npoints, fallback :
        As in :class:`ExponentialFit` (three fitted parameters, one for
        fallback pixels).
    t_ref : float
        Reference temperature of the amplitude [degC].
    population_gamma, population_rate : float
        Medians of gamma and rate over the well-measured pixels.
    population_gamma_spread, population_rate_spread : float
        Their robust spreads (1.4826 MAD).
    """

    amplitude: np.ndarray
    gamma: np.ndarray
    rate: np.ndarray
    amplitude_err: np.ndarray
    gamma_err: np.ndarray
    rate_err: np.ndarray
    covariance: np.ndarray
    chi2: np.ndarray
    npoints: np.ndarray
    fallback: np.ndarray
    t_ref: float
    population_gamma: float
    population_rate: float
    population_gamma_spread: float
    population_rate_spread: float

    def _shape(self, temperature: float, exptime: float) -> np.ndarray:
        """t^gamma exp(rate (T - t_ref)) per pixel, float64."""
        return np.exp(self.gamma.astype(np.float64) * np.log(exptime)
                      + self.rate.astype(np.float64) * (temperature - self.t_ref))

    def predict(self, temperature: float, exptime: float) -> np.ndarray:
        """Model value at ``temperature`` [degC] and ``exptime`` [s] (float32 image)."""
        return (self.amplitude * self._shape(temperature, exptime)).astype(np.float32)

    def predict_err(self, temperature: float, exptime: float) -> np.ndarray:
        """One-sigma error of :meth:`predict`, with the full parameter covariance."""
        f = self._shape(temperature, exptime)
        a = self.amplitude.astype(np.float64)
        # gradient f * (1, a ln t, a dT); var = f^2 * u^T C u
        u = (1.0, a * np.log(exptime), a * (temperature - self.t_ref))
        c = self.covariance
        var = sum(u[i] * u[j] * c[i, j].astype(np.float64) for i in range(3) for j in range(3))
        return (f * np.sqrt(np.maximum(var, 0))).astype(np.float32)


def fit_power_exponential_per_pixel(temperature, exptime, y, sigma, *, t_ref: float,
                                    min_snr: float = 3.0, max_iter: int = 30,
                                    tol: float = 1e-6, workers: int = 2) -> PowerExponentialFit:
    """Weighted nonlinear fit of ``y = A t**gamma exp(rate (T - t_ref))`` for every pixel.

    Same scheme as :func:`fit_exponential_per_pixel` with three parameters:
    log-linear start on the points with ``y / sigma >= min_snr`` (design
    ``[1, ln t, T - t_ref]``), Levenberg-Marquardt on all points with a
    positive weight (3x3 systems by cofactors).  A
    pixel is well measured with at least three such points spanning two
    distinct temperatures and two distinct exposure times (not collinear),
    and a converged fit whose model reaches one sigma on such a set of
    points; the others get gamma and rate fixed to the
    population medians and a linear amplitude, flagged as fallback.

    Parameters
    ----------
    temperature : array-like, shape (n,)
        Temperature of every point [degC].
    exptime : array-like, shape (n,)
        Exposure time of every point [s], > 0.
    y : array-like, shape (n, ...)
        Values to fit, e.g. dark signal maps [adu] (may be negative).
    sigma : array-like, shape (n, ...)
        One-sigma errors of ``y``; non-finite or non-positive give weight 0.
    t_ref : float
        Reference temperature of the amplitude [degC].
    min_snr, max_iter, tol, workers :
        As in :func:`fit_exponential_per_pixel`.

    Returns
    -------
    PowerExponentialFit

    Raises
    ------
    ValueError
        Bad exposure times, fewer than two distinct temperatures or exposure
        times, a design that cannot separate gamma from rate, mismatched
        shapes, or no well-measured pixel.
    """
    temperature = np.asarray(temperature, dtype=np.float64)
    exptime = np.asarray(exptime, dtype=np.float64)
    if temperature.ndim != 1 or exptime.shape != temperature.shape:
        raise ValueError("temperature and exptime must be one-dimensional and of equal length")
    if not (np.isfinite(temperature).all() and np.isfinite(exptime).all() and (exptime > 0).all()):
        raise ValueError("temperatures must be finite and exposure times finite and > 0")
    if np.unique(temperature).size < 2 or np.unique(exptime).size < 2:
        raise ValueError("a power-exponential fit needs two distinct temperatures and two "
                         "distinct exposure times")
    z = np.column_stack([np.log(exptime), temperature - t_ref])
    if np.linalg.matrix_rank(np.column_stack([np.ones(len(z)), z - z.mean(0)])) < 3:
        raise ValueError("exposure time and temperature vary together: gamma and rate "
                         "cannot be separated")
    res = _fit_exp_model(z, y, sigma, min_snr=min_snr, max_iter=max_iter, tol=tol,
                         workers=workers,
                         what="three points spanning two temperatures and two exposure times")
    (g_med, g_spread), (r_med, r_spread) = res["population"]
    return PowerExponentialFit(res["amplitude"], res["theta"][0], res["theta"][1],
                               res["amplitude_err"], res["theta_err"][0], res["theta_err"][1],
                               res["covariance"], res["chi2"], res["npoints"], res["fallback"],
                               float(t_ref), g_med, r_med, g_spread, r_spread)


if HAVE_NUMBA:
    _jit = njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
    # the per-pixel helpers are inlined at numba-IR level (tuple returns)
    _inline = njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"},
                   inline="always")
    _nb_exp_parts = _inline(_exp_parts_py)
    _nb_log_mantissa = _inline(_log_mantissa_py)
    _nb_sym_inv = _inline(_sym_inv_py)
    _nb_matvec = _inline(_matvec_py)
    _nb_posdef = _inline(_posdef_py)
    _nb_support = _inline(_support_py)
    _nb_shape = _jit(_shape_py)
    _nb_newton = _jit(_newton_py)
    _nb_moment = _inline(_moment_py)
    _nb_sums = _jit(_sums_py)
    _nb_nl_kernel = _jit(_nl_kernel_py)
    _nb_fallback = _jit(_fallback_kernel_py)
    _nb_radix_select = _jit(_radix_select_py)
    _nb_radix_median = _jit(_radix_median_py)
    _nb_masked_median = _jit(_masked_median_py)
    _nb_population = _jit(_population_py)
    _line_kernel = _jit(_line_kernel_py)
else:  # pragma: no cover
    _nb_nl_kernel = _nb_fallback = _line_kernel = None


def warmup() -> float:
    """Compile (or load from numba's cache) the fit kernels; return the seconds taken.

    The fits compile on first use by themselves; benchmarks call this first to
    time the one-off compilation separately.  Returns 0 without numba.
    """
    if not HAVE_NUMBA:
        return 0.0
    t0 = time.perf_counter()
    x = np.array([0.0, 1.0, 2.0])
    for dtype in (np.float32, np.float64):
        y = (np.exp(x)[:, None] * np.ones((3, 4))).astype(dtype)
        s = np.full_like(y, 0.01)
        fit_line_per_pixel(x, y, s)
        fit_line_per_pixel(x, y)
        fit_exponential_per_pixel(x, y, s, x_ref=0.0, workers=1)
        fit_power_exponential_per_pixel(np.array([0.0, 0, 1, 1]), np.array([1.0, 2, 1, 2]),
                                        np.vstack([y, y[:1]]), np.vstack([s, s[:1]]),
                                        t_ref=0.0, workers=1)
    return time.perf_counter() - t0
