"""Per-pixel least-squares fits, vectorised over the whole frame.

:func:`fit_line_per_pixel` fits ``y = a + b (x - x_ref)`` independently for
every pixel of a stack of images (e.g. bias masters vs temperature), with
per-pixel weights from their standard errors, in closed form (no Python loop
over pixels).  It returns the coefficients, their standard errors and
covariance, and the reduced chi-square as a fit-quality map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    >>> fit = fit_line_per_pixel([0.0, 10.0, 20.0], np.array([[[1.0]], [[2.0]], [[3.0]]]), x_ref=0.0)
    >>> round(float(fit.intercept[0, 0]), 6), round(float(fit.slope[0, 0]), 6)
    (1.0, 0.1)
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or y.shape[0] != x.size:
        raise ValueError(f"x has {x.size} values but y has {y.shape[0]} images")
    if np.unique(x).size < 2:
        raise ValueError("a straight line needs at least two distinct x values")
    shape = (x.size,) + (1,) * (y.ndim - 1)
    xs = x.reshape(shape)
    if sigma is None:
        w = np.ones_like(y)
    else:
        s = np.asarray(sigma, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(np.isfinite(s) & (s > 0), 1.0 / s ** 2, 0.0)
    w = np.where(np.isfinite(y), w, 0.0)
    y0 = np.where(np.isfinite(y), y, 0.0)
    if x_ref is None:
        x_ref = float(x.mean())
    dx = xs - x_ref
    s0 = w.sum(0)
    s1 = (w * dx).sum(0)
    s2 = (w * dx * dx).sum(0)
    sy = (w * y0).sum(0)
    sxy = (w * dx * y0).sum(0)
    det = s0 * s2 - s1 * s1
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (s0 * sxy - s1 * sy) / det
        intercept = (s2 * sy - s1 * sxy) / det
        var_a, var_b, cov = s2 / det, s0 / det, -s1 / det
        npts = (w > 0).sum(0)
        resid = y0 - intercept - slope * dx
        chi2 = np.where(npts > 2, (w * resid * resid).sum(0) / (npts - 2), np.nan)
    if sigma is None:
        scale = np.where(np.isfinite(chi2), chi2, np.nan)
        var_a, var_b, cov = var_a * scale, var_b * scale, cov * scale
    return LinearFit(intercept.astype(np.float32), slope.astype(np.float32),
                     np.sqrt(var_a).astype(np.float32), np.sqrt(var_b).astype(np.float32),
                     cov.astype(np.float32), chi2.astype(np.float32), float(x_ref), int(x.size))
