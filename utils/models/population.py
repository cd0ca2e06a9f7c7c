"""Population shape parameters of per-pixel exponential fits, estimated from every pixel.

The per-pixel fits of :mod:`utils.models.nonlinear` need a population value of
their shape parameters (the temperature rate B, and gamma) for the pixels that
cannot be fitted on their own.  The median over the pixels that *could* be
fitted is biased at low signal: a faint pixel is fitted only when its noise
happened to lift enough of its points above the signal threshold, and the points
so lifted are the low-temperature (or short-exposure) ones, so the selected
pixels have shallower temperature slopes (a doubling temperature 0.5-1 degC too
high with three temperatures and two exposures).  Selecting on the data biases
whatever is estimated from the selection.

:func:`joint_shape` instead fits one shape ``theta`` to all pixels at once, each
with its own (linear) amplitude: it minimises the profile chi-square
``sum_p min_A sum_k w_pk (y_pk - A f_k(theta))^2``.  For pixel p this is
``C_p - (sum_k w y f)^2 / sum_k w f^2``, whose expectation is
``(n_p - 1) + A_p^2 |(1 - P_f(theta)) f(theta_0)|^2_w`` -- the noise part does not
depend on theta (a rank-one projection) -- so the minimum is at the true theta
however faint the pixels are: no selection, no bias.  Pixels whose chi-square
rejects the common shape (p-value below ``clip_pvalue``) and bright outliers
(amplitude beyond ``BRIGHT_Z`` robust sigma of the population: hot pixels, which
may follow a law of their own and would outweigh the rest) are left out -- cuts
far outside the bulk, never inside it, where they would again select by noise;
a pixel sample keeps the cost bounded on large sensors.

The minimum is found by Newton steps on central differences of the summed profile
chi-square, stopping once a step is below 1e-3 of theta's statistical error: all the
stencil's shapes are evaluated in one pass over the pixels (a fused numba kernel; the
numpy :func:`_profile` without numba), ~2 passes per search from a close start and ~5 for
the whole fit, where Nelder-Mead (the fallback) took ~100 evaluations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from ..stack.tiles import pixel_blocks
from ._parallel import HAVE_NUMBA, _default_workers, _run_chunks, njit

#: Pixels of the sample the joint fit uses at most (a deterministic stride).
MAX_PIXELS = 100_000
#: Robust z of the amplitude beyond which a pixel is a bright outlier (hot), left out.
BRIGHT_Z = 20.0
#: Usable points a pixel needs to take part in the joint fit: its own amplitude takes one,
#: any further point says something about the shared shape (its profile chi-square keeps
#: ``n_p - 1`` degrees of freedom).  It was ``q + 2``, which left no pixel at all when the
#: campaign has ``q + 1`` points (darks at two temperatures, the simulator's standard
#: campaign): the population B then fell back to the median of the individually fitted
#: pixels -- the biased estimate this module replaces -- with no error (T_d 11.6 degC for a
#: true 6, E_a 0.44 eV for 0.86).
MIN_POINTS = 2


def joint_candidates(valid_counts: np.ndarray) -> np.ndarray:
    """Pixels with enough usable points (:data:`MIN_POINTS`) for the joint fit."""
    return np.asarray(valid_counts) >= MIN_POINTS


@dataclass(frozen=True)
class JointShape:
    """Result of :func:`joint_shape`.

    Attributes
    ----------
    theta : numpy.ndarray, shape (q,)
        Population shape parameters.
    covariance : numpy.ndarray, shape (q, q)
        Their covariance: the sandwich estimate from the pixels' own chi-square gradients,
        valid with correlated errors and with a spread of shapes among pixels.
    chi2dof : float
        Reduced chi-square of the joint fit.
    pixels : int
        Pixels used.
    """

    theta: np.ndarray
    covariance: np.ndarray
    chi2dof: float
    pixels: int

    @property
    def errors(self) -> np.ndarray:
        """One-sigma errors of ``theta``."""
        return np.sqrt(np.maximum(np.diag(self.covariance), 0.0))


def _prepare(y2, s2):
    y = np.array(y2, dtype=np.float64)
    w = np.array(s2, dtype=np.float64)
    used = (w > 0) & np.isfinite(w) & np.isfinite(y)
    # w = 1 / s^2 where used, else 0: in place (the same numbers as np.where(used,
    # 1 / (s * s), 0), without its full-size temporaries)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        w *= w
        np.divide(1.0, w, out=w)
    w[~used] = 0.0
    del used
    y[w == 0] = 0.0
    return y, w


def _columns(a: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """``a[..., sel]`` (``sel`` a bool mask or indices of the last axis) in C order: fancy
    indexing of the last axis makes it column-major, where the profile kernel's loops along
    the pixels of a row are strided (not vectorised, ~3x slower on the dark fits' samples)."""
    sel = np.asarray(sel)
    if sel.dtype == bool:
        return np.compress(sel, a, axis=-1)
    return np.take(a, sel, axis=-1)


def _c_order(a: np.ndarray) -> np.ndarray:
    """``a`` in C order (no copy when it is): what the profile kernel runs fastest on."""
    return np.ascontiguousarray(a)


def _start(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Log-linear fit of the pixel-summed signal of each point (a start for the search)."""
    total = (w * y).sum(1) / np.maximum(w.sum(1), 1e-300)
    ok = total > 0
    if ok.sum() < z.shape[1] + 1:
        return np.zeros(z.shape[1])
    design = np.column_stack([np.ones(ok.sum()), z[ok]])
    coef, *_ = np.linalg.lstsq(design, np.log(total[ok]), rcond=None)
    return coef[1:]


def _profile(z, wy, w, theta, shared=None):
    """Per-pixel profile chi-square minus the constant ``sum w y^2``: ``-a^2 / b``; with
    ``shared`` errors, plus the term that removes their theta-dependent expectation.

    The numpy form (and the definition): :func:`_profiles` evaluates it with the numba
    kernel :func:`_profiles_kernel_py` when numba is importable."""
    f = np.exp(np.clip(z @ theta, -700, 700))
    a = f @ wy
    b = (f * f) @ w
    value = -a * a
    if shared is not None:
        V, C, diag = shared
        g = w * f[:, None]                                  # (n, P)
        h = V.T @ g                                         # (D, P)
        value = value + np.einsum("dp,dep,ep->p", h, C, h) - (g * g * diag).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, value / b, 0.0)


#: Pixels per tile of the profile kernel: the tile's accumulators stay in L1 while the
#: rows of the points stream through.
_TILE = 256
#: Pixels per thread-pool task of the profile kernel.
_CHUNK = 1 << 14


def _profiles_kernel_py(F, wy, w, V, C, diag, shared, a0, a1, out):
    """``out[j, p]`` = :func:`_profile` at the shape ``F[j] = exp(z . theta_j)`` (K, n) for
    the pixels ``a0 <= p < a1``, fused: one pass over the points of a tile of pixels for
    all K shapes, float64 sums per tile (in L1), no (n, P) temporary.  ``shared`` False: V, C
    and diag are not read."""
    K, n = F.shape
    D = V.shape[1] if shared else 0
    acc_a = np.empty((K, _TILE))
    acc_b = np.empty((K, _TILE))
    acc_t = np.empty((K, _TILE))
    acc_h = np.empty((K, max(D, 1), _TILE))
    wwd = np.empty(_TILE)
    for p0 in range(a0, a1, _TILE):
        m = min(_TILE, a1 - p0)
        acc_a[:] = 0.0
        acc_b[:] = 0.0
        acc_t[:] = 0.0
        acc_h[:] = 0.0
        for k in range(n):
            wy_k = wy[k, p0:p0 + m]
            w_k = w[k, p0:p0 + m]
            if shared:
                d_k = diag[k, p0:p0 + m]
                for i in range(m):  # (w f)^2 diag = f^2 (w^2 diag): w^2 diag once per point
                    wwd[i] = w_k[i] * w_k[i] * d_k[i]
            for j in range(K):
                f = F[j, k]
                f2 = f * f
                aj = acc_a[j]
                bj = acc_b[j]
                for i in range(m):  # the lanes: vectorised over pixels
                    aj[i] += f * wy_k[i]
                    bj[i] += f2 * w_k[i]
                if shared:
                    tj = acc_t[j]
                    for i in range(m):
                        tj[i] += f2 * wwd[i]
                    for d in range(D):
                        vf = V[k, d] * f
                        hd = acc_h[j, d]
                        for i in range(m):  # h = V^T (w f)
                            hd[i] += vf * w_k[i]
        for j in range(K):
            for i in range(m):
                p = p0 + i
                value = -acc_a[j, i] * acc_a[j, i]
                if shared:
                    quad = 0.0
                    for d in range(D):
                        row = 0.0
                        for e in range(D):
                            row += C[d, e, p] * acc_h[j, e, i]
                        quad += acc_h[j, d, i] * row
                    value += quad - acc_t[j, i]
                b = acc_b[j, i]
                out[j, p] = value / b if b > 0 else 0.0


if HAVE_NUMBA:
    _nb_profiles = njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"}
                        )(_profiles_kernel_py)
else:  # pragma: no cover
    _nb_profiles = None


def _profiles(z, wy, w, thetas, shared=None, workers=None):
    """:func:`_profile` at each row of ``thetas`` (K, q): per-pixel values (K, P).

    With numba one fused pass over the points serves all K shapes (the kernel
    :func:`_profiles_kernel_py`, on ``workers`` threads, default the usable CPUs); without
    it, :func:`_profile` once per shape."""
    thetas = np.atleast_2d(np.asarray(thetas, dtype=np.float64))
    if not HAVE_NUMBA:
        return np.array([_profile(z, wy, w, t, shared) for t in thetas])
    F = np.exp(np.clip(thetas @ z.T, -700, 700))              # (K, n)
    wy, w = _c_order(wy), _c_order(w)  # no copies when they are
    P = wy.shape[1]
    out = np.empty((thetas.shape[0], P))
    if shared is None:
        V = np.zeros((z.shape[0], 0))
        C, diag = np.zeros((0, 0, 0)), np.zeros((0, 0))
    else:
        V, C, diag = (_c_order(a) for a in shared)
    workers = _default_workers() if workers is None else max(1, int(workers))
    _run_chunks(lambda a, b: _nb_profiles(F, wy, w, V, C, diag, shared is not None, a, b,
                                          out), P, _CHUNK, workers)
    return out


def _stencil(q: int, h: np.ndarray) -> np.ndarray:
    """Offsets (K, q) of the central-difference stencil of :func:`_derivatives`: 0, then
    +-h_i for every i, then (+-h_i, +-h_j) for every pair i < j (order ++, +-, -+, --)."""
    rows = [np.zeros(q)]
    for i in range(q):
        e_i = np.zeros(q)
        e_i[i] = h[i]
        rows += [e_i, -e_i]
    for i in range(q):
        for j in range(i + 1, q):
            e_i, e_j = np.zeros(q), np.zeros(q)
            e_i[i], e_j[j] = h[i], h[j]
            rows += [e_i + e_j, e_i - e_j, -e_i + e_j, -e_i - e_j]
    return np.array(rows)


def _stencil_values(z, wy, w, theta, shared=None):
    """One pass of :func:`_profiles` over the pixels at the stencil of :func:`_derivatives`
    around ``theta``: its steps h (q,) and the per-pixel values (K, P), row 0 at ``theta``."""
    h = 1e-4 * np.maximum(np.abs(theta), 1e-2)
    return h, _profiles(z, wy, w, theta + _stencil(theta.size, h), shared)


def _derivatives(z, wy, w, theta, shared=None, *, full=False, values=None, keep=False):
    """Per-pixel gradient (q, P) of the profile chi-square and the Hessian (q, q) of its sum
    (central differences; all stencil points in one pass of :func:`_profiles`).  With
    ``full`` also the sum at ``theta`` and the summed gradient (q,).  ``values``: the
    stencil values at ``theta`` (:func:`_stencil_values`) if already made (kept from an
    earlier pass: no pass then); with ``keep`` they are appended to the result."""
    values = _stencil_values(z, wy, w, theta, shared) if values is None else values
    out = _differences(*values, full=full)
    return out + (values,) if keep else out


def _differences(h, v, *, full=False):
    """:func:`_derivatives` from the stencil steps h and values v (K, P)."""
    q = h.size
    # per-pixel differences first, then the sums: no cancellation between large sums
    grad = np.empty((q, v.shape[1]))
    H = np.empty((q, q))
    for i in range(q):
        up, down = v[1 + 2 * i], v[2 + 2 * i]
        grad[i] = (up - down) / (2 * h[i])
        H[i, i] = float((up - 2 * v[0] + down).sum()) / h[i] ** 2
    r = 1 + 2 * q
    for i in range(q):
        for j in range(i + 1, q):
            H[i, j] = H[j, i] = float((v[r] - v[r + 1] - v[r + 2] + v[r + 3]).sum()) \
                / (4 * h[i] * h[j])
            r += 4
    if full:
        return grad, H, float(v[0].sum()), grad.sum(1)
    return grad, H


def _total(z, wy, w, theta, shared=None) -> float:
    """Sum of the profile chi-square over the pixels (inf where not finite)."""
    value = float(_profiles(z, wy, w, np.atleast_1d(theta)[None], shared).sum())
    return value if math.isfinite(value) else math.inf


def _clip_profile(z, wy, w, theta, shared=None, values=None):
    """Per-pixel profile chi-square (minus ``sum w y^2``) at ``theta`` without the
    shared-error term: row 0 of the stencil ``values`` at theta when they hold it (no
    shared errors), else one pass of :func:`_profiles`."""
    if values is not None and shared is None:
        return values[1][0]
    return _profiles(z, wy, w, theta)[0]


#: Newton iterations of :func:`_minimise` before it hands over to Nelder-Mead.
_NEWTON_ITER = 30
#: Newton stops once every step component is below this fraction of theta's error.
_STEP_TOL = 1e-3
#: Halvings of a Newton step that does not lower the chi-square before giving up.
_HALVINGS = 12


def _newton(z, wy, w, theta0, shared=None):
    """Newton steps on the finite-difference gradient and Hessian of the summed profile
    chi-square, halving a step that does not lower it.  Stops when every component of the
    step is below ``_STEP_TOL`` of theta's statistical error ``sqrt(diag 2 H^-1)``.

    Returns ``(theta, True)`` with theta plus that last step, or ``(theta, False)`` with the
    last point reached when the curvature is not positive definite, no halving lowers the
    chi-square or it does not converge (the caller goes on with Nelder-Mead from there)."""
    theta, step, _, converged = _newton_steps(z, wy, w, theta0, shared)
    return (theta + step, True) if converged else (theta, False)


def _newton_steps(z, wy, w, theta0, shared=None, values=None):
    """The iteration of :func:`_newton`: ``(theta, step, values, converged)`` with theta the
    last point evaluated, ``values`` its stencil values (:func:`_stencil_values`) and
    ``step`` the Newton step from there (below the tolerance when converged).  ``values``
    given are those at ``theta0`` (no pass over the pixels for them)."""
    theta = np.asarray(theta0, dtype=np.float64).copy()
    _, H, f0, g, values = _derivatives(z, wy, w, theta, shared, full=True, values=values,
                                       keep=True)
    step = np.zeros_like(theta)
    for _ in range(_NEWTON_ITER):
        if not (np.all(np.isfinite(H)) and np.all(np.isfinite(g)) and math.isfinite(f0)):
            break
        try:
            L = np.linalg.cholesky(H)
        except np.linalg.LinAlgError:
            break
        step = -np.linalg.solve(H, g)
        err = np.sqrt(2.0 * np.sum(np.linalg.inv(L) ** 2, axis=0))   # sqrt(diag 2 H^-1)
        if np.all(np.abs(step) < _STEP_TOL * err):
            return theta, step, values, True
        for _ in range(_HALVINGS):
            trial = theta + step
            _, H_t, f_t, g_t, values_t = _derivatives(z, wy, w, trial, shared, full=True,
                                                      keep=True)
            # accept at most a rounding-level rise (a chi-square unit is 1; the sum over
            # ~1e5 pixels rounds at ~1e-15 of its size): near the minimum the gain of a
            # step is below the float rounding of the sum
            if math.isfinite(f_t) and f_t <= f0 + 1e-6 + 1e-12 * abs(f0):
                break
            step = step / 2
        else:
            break
        theta, H, f0, g, values = trial, H_t, f_t, g_t, values_t
    return theta, step, values, False


def _minimise(z, wy, w, theta0, shared=None):
    """Minimum of the summed profile chi-square: :func:`_newton` from ``theta0`` (a few
    passes over the pixels), else (it failed) Brent (one parameter) or Nelder-Mead (~100
    passes) from where it got to."""
    theta, converged = _newton(z, wy, w, theta0, shared)
    if converged:
        return theta
    return _minimise_simplex(z, wy, w, theta, shared)


def _minimise_kept(z, wy, w, theta0, shared=None, values=None):
    """:func:`_minimise` for a close start (a refit from the full fit's theta): Newton's last
    point evaluated, within ``_STEP_TOL`` of theta's error of the minimum, with its stencil
    values (for the caller's next search and covariance: no pass over the pixels for them),
    rather than that point plus the last step.  ``values``: those at ``theta0``, if made.
    Returns ``(theta, values)``, values None after the derivative-free fallback."""
    theta, _, values, converged = _newton_steps(z, wy, w, theta0, shared, values)
    if converged:
        return theta, values
    return _minimise_simplex(z, wy, w, theta, shared), None


def _minimise_simplex(z, wy, w, theta0, shared=None):
    """The derivative-free search: Brent for one parameter, else Nelder-Mead."""
    from scipy.optimize import minimize, minimize_scalar

    def total(theta):
        return _total(z, wy, w, theta, shared)

    if z.shape[1] == 1:
        t0 = float(theta0[0])
        step = 0.2 * abs(t0) if t0 != 0 else 0.05
        try:
            res = minimize_scalar(total, bracket=(t0 - step, t0, t0 + step), method="brent",
                                  options={"xtol": 1e-10})
        except ValueError:  # no bracket found: fall back to a derivative-free search
            res = minimize(lambda t: total(t), np.array([t0]), method="Nelder-Mead",
                           options={"xatol": 1e-10, "fatol": 1e-10})
        return np.atleast_1d(np.asarray(res.x, dtype=np.float64))
    # stop when the simplex spans < 1e-4 in chi-square (a statistical unit is 1) and 1e-8 in
    # theta (~1e-5 of its error here): tighter asks for the float rounding of a sum over
    # ~1e5 pixels (~1e-7 relative) and took ~900 evaluations of every pixel per fit
    res = minimize(total, np.asarray(theta0, dtype=np.float64), method="Nelder-Mead",
                   options={"xatol": 1e-8, "fatol": 1e-4, "maxiter": 4000})
    return np.asarray(res.x, dtype=np.float64)


def joint_shape(z, y2, s2, theta0=None, *, usable=None, max_pixels: int = MAX_PIXELS,
                clip_pvalue: float = 1e-4, shared=None, start=None) -> JointShape:
    """Fit one shape ``theta`` to every pixel of a stack, each pixel with its own amplitude.

    Model ``y_pk = A_p exp(z_k . theta)``; see the module notes for why this is unbiased
    where the median of individual fits is not.

    Parameters
    ----------
    z : numpy.ndarray, shape (n, q)
        Design columns of the n points (e.g. ``T - T_ref``; ``ln t, T - T_ref``).
    y2, s2 : numpy.ndarray, shape (n, P)
        Values and one-sigma errors of every pixel (non-finite or non-positive errors
        give the point weight 0).  ``y2`` may instead be a callable ``() -> (y2, s2, C)``
        (``s2`` then None, ``shared`` ``(V, None)``), called once: the fit alone then holds
        the pixels' values and drops them once weighted.
    theta0 : array-like, optional
        Start (e.g. the median of the individual fits); default: a log-linear fit of the
        pixel-summed signal.
    usable : numpy.ndarray of bool, shape (P,), optional
        Pixels allowed in the fit (default: every pixel with at least :data:`MIN_POINTS` points).
    max_pixels : int, optional
        Largest pixel sample (deterministic stride over the usable pixels).
    clip_pvalue : float, optional
        Pixels whose chi-square p-value under the joint fit is smaller are left out and the
        fit is repeated (at most twice).
    shared : tuple (V, C), optional
        Errors shared between the points of a pixel (e.g. one subtracted bias serving
        several masters), ``cov(e_k, e_l) = V_k C_p V_l^T`` with V (n, D) and C
        (D, D, P); their diagonal must be included in ``s2``.  Correlated errors make
        the expected profile chi-square depend on theta (it leans towards the shape the
        shared error has); the term that removes that dependence is added.
    start : array-like, optional
        A close start of the search: the full fit's theta when refitting part of its data
        (a leave-one-out refit).  The pixels are still chosen as without it (the bright
        cut at ``theta0``, the clips on this fit's own chi-square): only the search
        differs.  From there Newton needs fewer passes over the pixels, and each search
        returns the last point it evaluated (within ``1e-3`` of theta's error of the
        minimum, the stopping rule) so that the clip rounds and the covariance reuse that
        pass.  Equal to the fit without it within that tolerance.

    Returns
    -------
    JointShape

    Raises
    ------
    ValueError
        No usable pixel, no significant signal, or a joint fit that does not determine
        ``theta`` (flat or non-finite curvature).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> z = np.array([[-10.0], [0.0], [10.0]])
    >>> amp = rng.uniform(0.2, 2.0, 5000)                 # faint pixels: SNR ~ 1 per point
    >>> y = amp * np.exp(0.1 * z) + rng.standard_normal((3, 5000))
    >>> fit = joint_shape(z, y, np.ones_like(y), [0.05])
    >>> bool(abs(fit.theta[0] - 0.1) < 3 * fit.errors[0])
    True
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    n, q = z.shape
    if callable(y2):  # made here: no caller holds the sample while the fit runs
        y2, s2, c = y2()
        if shared is not None:
            shared = (shared[0], c)
        del c
    y2 = np.asarray(y2)
    s2 = np.asarray(s2)
    y2 = y2.reshape(n, -1)
    s2 = s2.reshape(n, -1)
    valid = np.isfinite(y2) & np.isfinite(s2) & (s2 > 0)
    cand = joint_candidates(valid.sum(0))
    if usable is not None:
        cand &= np.asarray(usable, bool).reshape(-1)
    idx = np.flatnonzero(cand)
    if idx.size == 0:
        raise ValueError("no pixel with enough points for the joint shape fit")
    idx = idx[::max(1, math.ceil(idx.size / max_pixels))]
    if idx.size == y2.shape[1]:  # every pixel (e.g. a sample already): no selected copies
        y, w = _prepare(y2, s2)
    else:
        y, w = _prepare(y2[:, idx], s2[:, idx])
    del y2, s2, valid, cand
    if shared is not None:
        V = np.asarray(shared[0], dtype=np.float64)
        C = np.asarray(shared[1]).reshape(V.shape[1], V.shape[1], -1)[:, :, idx]
        C = C.astype(np.float64)
        diag = np.einsum("kd,dep,ke->kp", V, C, V)
        # C order for the profile kernel (the selection above is column-major)
        shared = (V, _c_order(C), _c_order(diag))
        del diag
    theta = np.asarray(theta0, dtype=np.float64).reshape(-1) if theta0 is not None \
        else np.full(q, np.nan)
    if theta.size != q or not np.all(np.isfinite(theta)):
        theta = _start(z, y, w)
    # bright outliers (hot pixels, ~30x the typical signal) may follow a law of their own and
    # would outweigh all the rest: left out by a robust z of their amplitude far beyond any
    # ordinary pixel's (a cut inside the bulk would select by noise and bias theta)
    f0 = np.exp(np.clip(z @ theta, -700, 700))
    # sum_k w y^2 per pixel ((w y) y, summed over k in order) by blocks of pixels, then y
    # made w y in place: no full-size temporary, no y held beside w y
    wyy = np.empty(y.shape[1])
    for at in pixel_blocks(y.shape[1]):
        wyy[at] = (w[:, at] * y[:, at] * y[:, at]).sum(0)
    wy = y
    wy *= w
    del y
    with np.errstate(divide="ignore", invalid="ignore"):
        amp = (f0 @ wy) / ((f0 * f0) @ w)
    ok = np.isfinite(amp)
    centre = float(np.median(amp[ok])) if ok.any() else 0.0
    spread = 1.4826 * float(np.median(np.abs(amp[ok] - centre))) if ok.any() else 0.0
    if spread > 0:
        keep = ok & ((amp - centre) / spread <= BRIGHT_Z)
        w = _columns(w, keep)  # one copy at a time
        wy = _columns(wy, keep)
        wyy = wyy[keep]
        if shared is not None:
            shared = (shared[0], _columns(shared[1], keep), _columns(shared[2], keep))
    npts = np.count_nonzero(w, axis=0)
    # p-value >= clip_pvalue <=> chi-square <= its isf at the pixel's dof (one per dof);
    # chdtri(dof, q) is what scipy.stats.chi2.isf(q, dof) evaluates, without importing
    # scipy.stats (~0.7 s at the start of every command that fits a dark model)
    limit = special.chdtri(np.arange(1, n + 1), clip_pvalue)
    # a warm start (the pixels chosen above as without it): every search keeps its last pass
    warm = start is not None and np.size(start) == q and bool(np.all(np.isfinite(start)))
    if warm:
        theta = np.asarray(start, dtype=np.float64).reshape(-1)
    values = None  # the stencil values at theta of the pixels kept (warm searches)
    for _ in range(3):
        if warm:
            theta, values = _minimise_kept(z, wy, w, theta, shared, values)
        else:
            theta = _minimise(z, wy, w, theta, shared)
        profile = _clip_profile(z, wy, w, theta, shared, values)
        chi = wyy + profile
        good = chi <= limit[np.clip(npts - 1, 1, n) - 1]
        if good.all():
            break
        wy, w, wyy, npts = _columns(wy, good), _columns(w, good), wyy[good], npts[good]
        if shared is not None:
            shared = (shared[0], _columns(shared[1], good), _columns(shared[2], good))
        if values is not None:
            values = (values[0], _columns(values[1], good))
    else:  # clipped after the last search: the profile of the pixels kept
        profile = _clip_profile(z, wy, w, theta, shared, values)
        chi = wyy + profile
    dof_total = int((npts - 1).sum()) - q
    chi2dof = float(chi.sum() / max(dof_total, 1))
    # the amplitudes must be significant as a whole, or theta is fitted to noise
    gain = -profile.sum()      # sum_p a_p^2 / b_p, ~ P without signal
    if gain - wy.shape[1] < 5.0 * math.sqrt(2.0 * wy.shape[1]):
        raise ValueError("no significant signal in the pixels: the joint fit cannot "
                         "determine the shape parameters")
    grad, H = _derivatives(z, wy, w, theta, shared, values=values)
    if not (np.all(np.isfinite(H)) and np.all(np.linalg.eigvalsh(H) > 0)):
        raise ValueError("the joint shape fit does not determine the shape parameters "
                         "(flat or non-finite chi-square curvature)")
    # sandwich (Huber-White) covariance H^-1 (sum_p g_p g_p^T) H^-1 from the pixels' own
    # gradients: right whatever the points' error correlations or the pixels' spread of
    # shapes (with independent, correctly weighted points it equals 2 H^-1)
    inv = np.linalg.inv(H)
    cov = inv @ (grad @ grad.T) @ inv
    return JointShape(theta, cov, chi2dof, int(w.shape[1]))


__all__ = ["JointShape", "joint_shape", "joint_candidates", "MAX_PIXELS", "MIN_POINTS"]
