"""Per-pixel weighted nonlinear least squares over whole frames: exponential models.

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
both give the same results.  Straight lines are in :mod:`utils.models.linear`.
"""

from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .. import scheduler
from ._parallel import HAVE_NUMBA, _float_array, _run_chunks
from .exp_kernels import (
    _CONVERGED,
    _EXP_MAX,
    _LAMBDA0,
    _LAMBDA_MAX,
    _NL_CHUNK,
    _PENDING,
    _nb_fallback,
    _nb_nl_kernel,
    _nb_population,
)
from .linear import warmup as _warmup_line
from .pixel_tiles import PixelTiles, flat_cov, gather_sample, store_tile, tile_outputs
from .population import joint_shape

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


def _fit_exp_model(z, y, sigma, *, min_snr, max_iter, tol, workers, what, shared=None,
                   tiles: PixelTiles | None = None):
    """Shared driver: first pass (numba kernel, or numpy blocks), population, fallback pass.

    With ``tiles`` (:class:`PixelTiles`; ``y``, ``sigma`` and the covariance of ``shared``
    then None) the points are read tile by tile, three passes: first fits, the joint
    population's pixel sample, fallback fits.  Returns a dict of maps (float32 / bool /
    int16) and the population median and spread of every theta.
    """
    if not min_snr > 0:
        raise ValueError(f"min_snr must be > 0, not {min_snr}")
    if max_iter < 1 or not tol > 0:
        raise ValueError("max_iter must be >= 1 and tol > 0")
    n = z.shape[0]
    if tiles is None:
        y = _float_array(y)
        sigma = _float_array(sigma)
        if y.ndim < 1 or y.shape[0] != n or sigma.shape != y.shape:
            raise ValueError(f"{n} points but y has shape {y.shape} and sigma {sigma.shape}")
        if not HAVE_NUMBA:
            return _fit_exp_model_numpy(z, y, sigma, min_snr=min_snr, max_iter=max_iter,
                                        tol=tol, workers=workers, what=what, shared=shared)
        tiles = PixelTiles.of_arrays(y, sigma, None if shared is None else
                                     np.asarray(shared[1]))
    elif tiles.n != n:
        raise ValueError(f"{n} points but the tiles hold {tiles.n}")
    elif not HAVE_NUMBA:  # the numpy path needs every pixel at once
        parts = [tiles.read(a, b) for a, b in tiles.ranges]
        y2 = np.concatenate([_float_array(p[0]) for p in parts], axis=1)
        s2 = np.concatenate([_float_array(p[1]) for p in parts], axis=1)
        if shared is not None:
            shared = (shared[0], np.concatenate([flat_cov(p[2]) for p in parts], axis=2))
        return _fit_exp_model_numpy(z, y2.reshape((n,) + tuple(tiles.shape)),
                                    s2.reshape((n,) + tuple(tiles.shape)), min_snr=min_snr,
                                    max_iter=max_iter, tol=tol, workers=workers, what=what,
                                    shared=shared)
    shape = tuple(tiles.shape)
    P = int(np.prod(shape))
    design = _Design(z)
    p, q = design.p, design.q
    maps = (np.empty(P, np.float32), np.empty((q, P), np.float32),
            np.empty((p, p, P), np.float32), np.empty(P, np.float32), np.empty(P, np.int16),
            np.empty(P, np.int8), np.empty(P, np.float32), np.empty((p, P), np.float32))
    A, theta, cov, chi, npts, status, chi2, errs = maps
    candidate = np.empty(P, bool)  # enough points for the joint population fit
    workers = max(1, int(workers))
    fail = ValueError(
        f"no pixel is well measured ({what} with y/sigma >= min_snr={min_snr} and a "
        "converged fit), so there is no population value for the low-signal pixels")
    if scheduler.current().remote:  # one task per tile on the cluster
        task = functools.partial(_first_pass_tile, read=tiles.read, design=design, n=n,
                                 fit=(min_snr, max_iter, tol))
        for (a, b), (out, cand) in zip(tiles.ranges, scheduler.map_tasks(task, tiles.ranges)):
            for full, part in zip(maps, out):  # always a copy: the task's arrays are its own
                full[..., a:b] = part
            candidate[a:b] = cand
    for a, b in ([] if scheduler.current().remote else tiles.ranges):
        y_t, s_t, _ = tiles.read(a, b)
        y_t = _float_array(y_t).reshape(n, -1)
        s_t = _float_array(s_t).reshape(n, -1)
        out = tile_outputs(maps, a, b, P)
        _first_pass_numba(design, y_t, s_t, min_snr, max_iter, tol, workers, out)
        store_tile(maps, out, a, b, P)
        candidate[a:b] = (np.isfinite(y_t) & np.isfinite(s_t) & (s_t > 0)).sum(0) >= q + 2
    well = status == _CONVERGED
    if q > 1 and workers > 1:  # the kernels release the GIL
        with ThreadPoolExecutor(max_workers=q) as pool:
            pop = list(pool.map(lambda j: population_value(theta[j], well), range(q)))
    else:
        pop = [population_value(theta[j], well) for j in range(q)]
    # the joint fit's pixel sample (joint_shape's own stride over the candidates), gathered
    y_s, s_s, c_s = gather_sample(tiles, candidate, n)
    pop_theta, joint = _joint_population(z, y_s, s_s, pop, fail,
                                         None if shared is None else (shared[0], c_s))
    del y_s, s_s, c_s
    f = design.exp(pop_theta[:, None])[:, 0]
    with np.errstate(all="ignore"):  # only for the float32 casts of overflowing values
        fixed = (f, pop_theta.astype(np.float32),
                 np.array([s ** 2 for _, s in pop], np.float32))
    for a, b in tiles.ranges:
        if well[a:b].all():
            continue  # no fallback pixel: nothing to read
        y_t, s_t, _ = tiles.read(a, b)
        y_t = _float_array(y_t).reshape(n, -1)
        s_t = _float_array(s_t).reshape(n, -1)
        out = tile_outputs(maps, a, b, P)
        t_A, t_theta, t_cov, _, t_npts, t_status, t_chi2, t_errs = out
        _run_chunks(lambda i, j: _nb_fallback(y_t, s_t, i, j, t_status, t_npts, *fixed, t_A,
                                              t_theta, t_cov, t_chi2, t_errs),
                    b - a, _NL_CHUNK, workers)
        store_tile(maps, out, a, b, P)
    return {
        "amplitude": A.reshape(shape), "amplitude_err": errs[0].reshape(shape),
        "theta": theta.reshape((q,) + shape), "theta_err": errs[1:].reshape((q,) + shape),
        "covariance": cov.reshape((p, p) + shape), "chi2": chi2.reshape(shape),
        "npoints": npts.reshape(shape), "fallback": ~well.reshape(shape),
        "population": [(float(v), spread) for v, (_, spread) in zip(pop_theta, pop)],
        "population_err": joint.errors if joint is not None else np.full(q, np.nan),
        "population_median": [m for m, _ in pop],
    }


def _first_pass_tile(tile, *, read, design, n, fit):
    """First pass on the pixels ``tile = (a, b)`` (a scheduler task): the per-pixel fit's
    maps of those pixels and whether each has enough points for the joint fit."""
    a, b = tile
    y_t, s_t, _ = read(a, b)
    y_t = _float_array(y_t).reshape(n, -1)
    s_t = _float_array(s_t).reshape(n, -1)
    m, p, q = b - a, design.p, design.q
    out = (np.empty(m, np.float32), np.empty((q, m), np.float32),
           np.empty((p, p, m), np.float32), np.empty(m, np.float32), np.empty(m, np.int16),
           np.empty(m, np.int8), np.empty(m, np.float32), np.empty((p, m), np.float32))
    _first_pass_numba(design, y_t, s_t, fit[0], fit[1], fit[2], 1, out)
    return out, (np.isfinite(y_t) & np.isfinite(s_t) & (s_t > 0)).sum(0) >= q + 2


def _fit_exp_model_numpy(z, y, sigma, *, min_snr, max_iter, tol, workers, what, shared=None):
    """The driver without numba: vectorised numpy blocks over in-memory arrays."""
    n = z.shape[0]
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
    _first_pass_numpy(design, y2, s2, min_snr, max_iter, tol, workers,
                      (A, theta, cov, chi, npts, status))
    well = status == _CONVERGED
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = np.where(npts > p, chi / (npts - p), np.nan).astype(np.float32)
    pop = [population_value(theta[j], well) for j in range(q)]
    pop_theta, joint = _joint_population(z, y2, s2, pop, fail, shared)
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
        "population": [(float(v), spread) for v, (_, spread) in zip(pop_theta, pop)],
        "population_err": joint.errors if joint is not None else np.full(q, np.nan),
        "population_median": [m for m, _ in pop],
    }


def _joint_population(z, y2, s2, pop, fail, shared=None):
    """Population shape: the joint fit of every pixel (:mod:`utils.models.population`), which
    the faint pixels do not bias; the median of the individually fitted pixels only when the
    joint fit cannot be made.  Returns ``(theta, JointShape or None)``."""
    medians = np.array([m for m, _ in pop])
    try:
        joint = joint_shape(z, y2, s2, medians if np.all(np.isfinite(medians)) else None,
                            shared=shared)
    except ValueError:
        if not np.all(np.isfinite(medians)):
            raise fail from None
        return medians, None
    return joint.theta, joint


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
    population_rate : float
        Rate of the population: the joint fit of every pixel with its own amplitude
        (:func:`utils.models.population.joint_shape`), unbiased at low signal.
    population_rate_spread : float
        Robust spread (1.4826 MAD) of the rates of the well-measured (non-fallback) pixels.
    population_rate_err : float
        One-sigma error of ``population_rate``.
    population_rate_median : float
        Median rate of the well-measured pixels (biased low at low signal: they are selected
        by their noise).
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
    population_rate_err: float = float("nan")
    population_rate_median: float = float("nan")

    def predict(self, x: float) -> np.ndarray:
        """Model value at ``x`` (float32 image; inf where a pixel's own law runs beyond float32
        far from its data)."""
        with np.errstate(over="ignore"):
            e = np.exp(self.rate.astype(np.float64) * (x - self.x_ref))
            return (self.amplitude * e).astype(np.float32)

    def predict_err(self, x: float) -> np.ndarray:
        """One-sigma error of :meth:`predict` at ``x``, with the amplitude-rate covariance."""
        d = x - self.x_ref
        a = self.amplitude.astype(np.float64)
        # gradient (e, a d e): var = e^2 (s_a^2 + (a d s_r)^2 + 2 a d cov)
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.exp(self.rate.astype(np.float64) * d)
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
    (rate_pop, rate_spread), = res["population"]
    return ExponentialFit(res["amplitude"], res["theta"][0], res["amplitude_err"],
                          res["theta_err"][0], res["covariance"][0, 1].copy(), res["chi2"],
                          res["npoints"], res["fallback"], float(x_ref), rate_pop, rate_spread,
                          float(res["population_err"][0]), float(res["population_median"][0]))


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
        Gamma and rate of the population: the joint fit of every pixel with its own
        amplitude (:func:`utils.models.population.joint_shape`), unbiased at low signal.
    population_gamma_spread, population_rate_spread : float
        Robust spreads (1.4826 MAD) of gamma and rate over the well-measured pixels.
    population_gamma_err, population_rate_err : float
        One-sigma errors of the population values.
    population_gamma_median, population_rate_median : float
        Medians over the well-measured pixels (biased at low signal).
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
    population_gamma_err: float = float("nan")
    population_rate_err: float = float("nan")
    population_gamma_median: float = float("nan")
    population_rate_median: float = float("nan")

    def _shape(self, temperature: float, exptime: float) -> np.ndarray:
        """t^gamma exp(rate (T - t_ref)) per pixel, float64."""
        with np.errstate(over="ignore"):
            return np.exp(self.gamma.astype(np.float64) * np.log(exptime)
                          + self.rate.astype(np.float64) * (temperature - self.t_ref))

    def predict(self, temperature: float, exptime: float) -> np.ndarray:
        """Model value at ``temperature`` [degC] and ``exptime`` [s] (float32 image; inf where a
        pixel's own law runs beyond float32 far from its data)."""
        with np.errstate(over="ignore"):
            return (self.amplitude * self._shape(temperature, exptime)).astype(np.float32)

    def predict_err(self, temperature: float, exptime: float) -> np.ndarray:
        """One-sigma error of :meth:`predict`, with the full parameter covariance."""
        f = self._shape(temperature, exptime)
        a = self.amplitude.astype(np.float64)
        # gradient f * (1, a ln t, a dT); var = f^2 * u^T C u
        u = (1.0, a * np.log(exptime), a * (temperature - self.t_ref))
        c = self.covariance
        with np.errstate(over="ignore", invalid="ignore"):
            var = sum(u[i] * u[j] * c[i, j].astype(np.float64) for i in range(3)
                      for j in range(3))
            return (f * np.sqrt(np.maximum(var, 0))).astype(np.float32)


def fit_power_exponential_per_pixel(temperature, exptime, y, sigma, *, t_ref: float,
                                    min_snr: float = 3.0, max_iter: int = 30,
                                    tol: float = 1e-6, workers: int = 2,
                                    shared_errors=None,
                                    tiles: PixelTiles | None = None) -> PowerExponentialFit:
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
    shared_errors : tuple (V, C), optional
        Error shared between the points (e.g. one subtracted bias serving several
        masters): ``cov = V_k C V_l^T`` with V (n, D) and C (D, D, ...); used by the
        population fit (:func:`utils.models.population.joint_shape`), whose expectation
        it would otherwise bias.  With ``tiles``, C is None (the tiles give it).
    tiles : PixelTiles, optional
        Read the points tile by tile instead of from ``y`` and ``sigma`` (then None):
        memory bounded by the tile size, results identical.

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
                         what="three points spanning two temperatures and two exposure times",
                         shared=shared_errors, tiles=tiles)
    (g_pop, g_spread), (r_pop, r_spread) = res["population"]
    g_err, r_err = (float(v) for v in res["population_err"])
    g_med, r_med = (float(v) for v in res["population_median"])
    return PowerExponentialFit(res["amplitude"], res["theta"][0], res["theta"][1],
                               res["amplitude_err"], res["theta_err"][0], res["theta_err"][1],
                               res["covariance"], res["chi2"], res["npoints"], res["fallback"],
                               float(t_ref), g_pop, r_pop, g_spread, r_spread, g_err, r_err,
                               g_med, r_med)


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
        fit_exponential_per_pixel(x, y, s, x_ref=0.0, workers=1)
        fit_power_exponential_per_pixel(np.array([0.0, 0, 1, 1]), np.array([1.0, 2, 1, 2]),
                                        np.vstack([y, y[:1]]), np.vstack([s, s[:1]]),
                                        t_ref=0.0, workers=1)
    return time.perf_counter() - t0 + _warmup_line()
