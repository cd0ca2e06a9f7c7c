"""The numpy engine of the exponential fits of :mod:`utils.models.nonlinear`.

Without numba, :func:`_fit_exp_model_numpy` runs the per-pixel fits as numpy code
vectorised over blocks of pixels: a log-linear start, damped Newton
(Levenberg-Marquardt) iterations on a whole block at once (:func:`_lm`), the slow pixels
of every block in one tail run, then the population shape and the linear amplitude of
the fallback pixels -- the same algorithm as the numba kernels of
:mod:`utils.models.exp_kernels` (the tests check that both give the same results).

Both drivers share :class:`_Design` (the design columns and their moment features) and
:func:`_joint_population` (the population shape).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .exp_kernels import _CONVERGED, _EXP_MAX, _LAMBDA0, _LAMBDA_MAX, _PENDING
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

MAD_TO_SIGMA = 1.4826      # robust sigma of a normal population from its MAD
_BLOCK_SAMPLES = 1 << 17   # float64 samples per (n, pixels) working array: 1 MB, cache-sized
_DEFER = 1 / 64            # a block hands its last, slow pixels (below this fraction) to a
                           # tail run


def population_median(values, mask=None) -> tuple[float, float]:
    """Median and robust spread (1.4826 MAD) of the finite ``values[mask]``, in numpy
    (``(nan, nan)`` without a finite value); see :func:`utils.models.nonlinear.population_value`."""
    v = (np.asarray(values)[np.asarray(mask, dtype=bool)] if mask is not None
         else np.asarray(values).ravel()).astype(np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    med = float(np.median(v))
    return med, MAD_TO_SIGMA * float(np.median(np.abs(v - med)))


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



def _fit_exp_model_numpy(z, y, sigma, *, min_snr, max_iter, tol, workers, what, shared=None,
                         population_start=None):
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
    pop = [population_median(theta[j], well) for j in range(q)]
    pop_theta, joint = _joint_population(z, y2, s2, pop, fail, shared, population_start)
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
    return fit_maps(shape, (A, theta, cov, chi2, npts, errs), well, pop_theta, pop, joint)


def fit_maps(shape, maps, well, pop_theta, pop, joint) -> dict:
    """The drivers' result: the flat per-pixel ``maps`` (amplitude, theta, covariance,
    reduced chi-square, points, errors of every parameter) shaped as ``shape``, the
    fallback flags (``~well``) and the population values (median, spread, error)."""
    A, theta, cov, chi2, npts, errs = maps
    p, q = cov.shape[0], theta.shape[0]
    return {
        "amplitude": A.reshape(shape), "amplitude_err": errs[0].reshape(shape),
        "theta": theta.reshape((q,) + shape), "theta_err": errs[1:].reshape((q,) + shape),
        "covariance": cov.reshape((p, p) + shape), "chi2": chi2.reshape(shape),
        "npoints": npts.reshape(shape), "fallback": ~well.reshape(shape),
        "population": [(float(v), spread) for v, (_, spread) in zip(pop_theta, pop)],
        "population_err": joint.errors if joint is not None else np.full(q, np.nan),
        "population_median": [m for m, _ in pop],
    }


def _joint_population(z, y2, s2, pop, fail, shared=None, start=None):
    """Population shape: the joint fit of every pixel (:mod:`utils.models.population`), which
    the faint pixels do not bias; the median of the individually fitted pixels only when the
    joint fit cannot be made.  ``start``: the joint fit's warm start (``joint_shape``'s
    ``start``, e.g. the full fit's population theta in a leave-one-out refit).  Returns
    ``(theta, JointShape or None)``."""
    medians = np.array([m for m, _ in pop])
    try:
        joint = joint_shape(z, y2, s2, medians if np.all(np.isfinite(medians)) else None,
                            shared=shared, start=start)
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
