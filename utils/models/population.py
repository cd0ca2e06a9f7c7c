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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Pixels of the sample the joint fit uses at most (a deterministic stride).
MAX_PIXELS = 100_000
#: Robust z of the amplitude beyond which a pixel is a bright outlier (hot), left out.
BRIGHT_Z = 20.0


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
    s = np.asarray(s2, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where((s > 0) & np.isfinite(s) & np.isfinite(y), 1.0 / (s * s), 0.0)
    y[w == 0] = 0.0
    return y, w


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
    ``shared`` errors, plus the term that removes their theta-dependent expectation."""
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


def _minimise(z, wy, w, theta0, shared=None):
    from scipy.optimize import minimize, minimize_scalar

    def total(theta):
        value = float(_profile(z, wy, w, np.atleast_1d(theta), shared).sum())
        return value if math.isfinite(value) else math.inf

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


def _derivatives(z, wy, w, theta, shared=None):
    """Per-pixel gradient (q, P) of the profile chi-square and the Hessian (q, q) of its sum
    (central differences)."""
    q = theta.size
    h = 1e-4 * np.maximum(np.abs(theta), 1e-2)

    def each(t):
        return _profile(z, wy, w, t, shared)

    grad = np.empty((q, wy.shape[1]))
    H = np.empty((q, q))
    f0 = each(theta).sum()
    for i in range(q):
        e_i = np.zeros(q)
        e_i[i] = h[i]
        up, down = each(theta + e_i), each(theta - e_i)
        grad[i] = (up - down) / (2 * h[i])
        H[i, i] = (up.sum() - 2 * f0 + down.sum()) / h[i] ** 2
        for j in range(i + 1, q):
            e_j = np.zeros(q)
            e_j[j] = h[j]
            H[i, j] = H[j, i] = (each(theta + e_i + e_j).sum() - each(theta + e_i - e_j).sum()
                                 - each(theta - e_i + e_j).sum()
                                 + each(theta - e_i - e_j).sum()) / (4 * h[i] * h[j])
    return grad, H


def joint_shape(z, y2, s2, theta0=None, *, usable=None, max_pixels: int = MAX_PIXELS,
                clip_pvalue: float = 1e-4, shared=None) -> JointShape:
    """Fit one shape ``theta`` to every pixel of a stack, each pixel with its own amplitude.

    Model ``y_pk = A_p exp(z_k . theta)``; see the module notes for why this is unbiased
    where the median of individual fits is not.

    Parameters
    ----------
    z : numpy.ndarray, shape (n, q)
        Design columns of the n points (e.g. ``T - T_ref``; ``ln t, T - T_ref``).
    y2, s2 : numpy.ndarray, shape (n, P)
        Values and one-sigma errors of every pixel (non-finite or non-positive errors
        give the point weight 0).
    theta0 : array-like, optional
        Start (e.g. the median of the individual fits); default: a log-linear fit of the
        pixel-summed signal.
    usable : numpy.ndarray of bool, shape (P,), optional
        Pixels allowed in the fit (default: every pixel with at least ``q + 2`` points).
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
    from scipy.stats import chi2 as chi2_dist

    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    n, q = z.shape
    y2 = np.asarray(y2)
    s2 = np.asarray(s2)
    y2 = y2.reshape(n, -1)
    s2 = s2.reshape(n, -1)
    valid = np.isfinite(y2) & np.isfinite(s2) & (s2 > 0)
    cand = valid.sum(0) >= q + 2
    if usable is not None:
        cand &= np.asarray(usable, bool).reshape(-1)
    idx = np.flatnonzero(cand)
    if idx.size == 0:
        raise ValueError("no pixel with enough points for the joint shape fit")
    idx = idx[::max(1, math.ceil(idx.size / max_pixels))]
    y, w = _prepare(y2[:, idx], s2[:, idx])
    if shared is not None:
        V = np.asarray(shared[0], dtype=np.float64)
        C = np.asarray(shared[1]).reshape(V.shape[1], V.shape[1], -1)[:, :, idx]
        C = C.astype(np.float64)
        shared = (V, C, np.einsum("kd,dep,ke->kp", V, C, V))
    theta = np.asarray(theta0, dtype=np.float64).reshape(-1) if theta0 is not None \
        else np.full(q, np.nan)
    if theta.size != q or not np.all(np.isfinite(theta)):
        theta = _start(z, y, w)
    # bright outliers (hot pixels, ~30x the typical signal) may follow a law of their own and
    # would outweigh all the rest: left out by a robust z of their amplitude far beyond any
    # ordinary pixel's (a cut inside the bulk would select by noise and bias theta)
    f0 = np.exp(np.clip(z @ theta, -700, 700))
    with np.errstate(divide="ignore", invalid="ignore"):
        amp = (f0 @ (w * y)) / ((f0 * f0) @ w)
    ok = np.isfinite(amp)
    centre = float(np.median(amp[ok])) if ok.any() else 0.0
    spread = 1.4826 * float(np.median(np.abs(amp[ok] - centre))) if ok.any() else 0.0
    if spread > 0:
        keep = ok & ((amp - centre) / spread <= BRIGHT_Z)
        y, w = y[:, keep], w[:, keep]
        if shared is not None:
            shared = (shared[0], shared[1][:, :, keep], shared[2][:, keep])
    for _ in range(3):
        wy = w * y
        theta = _minimise(z, wy, w, theta, shared)
        chi = (wy * y).sum(0) + _profile(z, wy, w, theta)
        dof = np.count_nonzero(w, axis=0) - 1
        good = chi2_dist.sf(chi, np.maximum(dof, 1)) >= clip_pvalue
        if good.all():
            break
        y, w = y[:, good], w[:, good]
        if shared is not None:
            shared = (shared[0], shared[1][:, :, good], shared[2][:, good])
    wy = w * y
    chi = (wy * y).sum(0) + _profile(z, wy, w, theta)
    dof_total = int((np.count_nonzero(w, axis=0) - 1).sum()) - q
    chi2dof = float(chi.sum() / max(dof_total, 1))
    # the amplitudes must be significant as a whole, or theta is fitted to noise
    gain = -_profile(z, wy, w, theta).sum()      # sum_p a_p^2 / b_p, ~ P without signal
    if gain - wy.shape[1] < 5.0 * math.sqrt(2.0 * wy.shape[1]):
        raise ValueError("no significant signal in the pixels: the joint fit cannot "
                         "determine the shape parameters")
    grad, H = _derivatives(z, wy, w, theta, shared)
    if not (np.all(np.isfinite(H)) and np.all(np.linalg.eigvalsh(H) > 0)):
        raise ValueError("the joint shape fit does not determine the shape parameters "
                         "(flat or non-finite chi-square curvature)")
    # sandwich (Huber-White) covariance H^-1 (sum_p g_p g_p^T) H^-1 from the pixels' own
    # gradients: right whatever the points' error correlations or the pixels' spread of
    # shapes (with independent, correctly weighted points it equals 2 H^-1)
    inv = np.linalg.inv(H)
    cov = inv @ (grad @ grad.T) @ inv
    return JointShape(theta, cov, chi2dof, int(w.shape[1]))


__all__ = ["JointShape", "joint_shape", "MAX_PIXELS"]
