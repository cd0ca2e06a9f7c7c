"""Correlation and straight-line fits of two series, each number with its uncertainty.

* :func:`pearson`: Pearson's r with its two-sided p-value (t distribution under
  no correlation) and a 95 % confidence interval and standard error from
  Fisher's z transform (``atanh r`` is normal with sigma ``1/sqrt(n - 3)``);
* :func:`fit_line`: least-squares ``y = intercept + slope x`` with standard
  errors from the residual scatter (or from given errors), and the old
  toolkit's fallback made explicit: when a line cannot be fitted (fewer than
  3 points, or x constant) the result is slope 0 and intercept = mean of y, with
  NaN errors and ``method`` saying why, instead of an exception.

Neither warns on degenerate input: they return NaN with a reason.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Correlation:
    """Pearson correlation of two series.

    Attributes
    ----------
    r : float
        Pearson's correlation coefficient (NaN when undefined).
    p_value : float
        Two-sided p-value of r under the hypothesis of no correlation.
    stderr : float
        Standard error of r from Fisher's z (``(1 - r^2) / sqrt(n - 3)``); NaN below 4 points.
    ci_low, ci_high : float
        95 % confidence interval of r (Fisher z); NaN below 4 points.
    n : int
        Number of finite pairs used.
    reason : str
        Why r is NaN, else ''.
    """

    r: float
    p_value: float
    stderr: float
    ci_low: float
    ci_high: float
    n: int
    reason: str = ""

    def as_dict(self, prefix: str = "") -> dict:
        """Plain dict with keys prefixed (for a table row)."""
        return {prefix + k: v for k, v in asdict(self).items()}


def pearson(x, y) -> Correlation:
    """Pearson's r of the finite pairs of ``x`` and ``y``, with p-value and Fisher interval.

    Examples
    --------
    >>> c = pearson([1, 2, 3, 4, 5, 6], [1.1, 1.9, 3.2, 3.9, 5.1, 6.0])
    >>> round(c.r, 3), c.p_value < 1e-3, c.ci_low < c.r < c.ci_high
    (0.998, True, True)
    >>> pearson([1, 1, 1], [1, 2, 3]).reason
    'x is constant'
    """
    from scipy import stats

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    good = np.isfinite(x) & np.isfinite(y)
    x, y = x[good], y[good]
    n = int(x.size)
    nan = math.nan
    if n < 3:
        return Correlation(nan, nan, nan, nan, nan, n, f"{n} finite pairs (need 3)")
    for name, v in (("x", x), ("y", y)):
        if np.ptp(v) == 0:
            return Correlation(nan, nan, nan, nan, nan, n, f"{name} is constant")
    r = float(np.clip(np.corrcoef(x, y)[0, 1], -1.0, 1.0))
    if abs(r) < 1.0:
        t = r * math.sqrt((n - 2) / (1.0 - r * r))
        p = float(2.0 * stats.t.sf(abs(t), n - 2))
    else:
        p = 0.0
    if n > 3 and abs(r) < 1.0:
        z, dz = math.atanh(r), 1.0 / math.sqrt(n - 3)
        half = float(stats.norm.isf(0.025)) * dz
        lo, hi = math.tanh(z - half), math.tanh(z + half)
        err = (1.0 - r * r) * dz
    else:
        lo = hi = err = nan
    return Correlation(r, p, err, lo, hi, n)


@dataclass(frozen=True)
class LineFit:
    """Straight line ``y = intercept + slope * x``.

    Attributes
    ----------
    slope, intercept : float
        Coefficients (units of y per unit of x, and of y).
    slope_err, intercept_err : float
        One-sigma standard errors (NaN for the fallback).
    covariance : float
        Covariance of slope and intercept.
    chi2_dof : float
        Residual variance over the expected one (weighted fits), or NaN.
    n : int
        Points used.
    method : str
        ``least squares``, ``weighted least squares`` or ``fallback: <reason>``.
    """

    slope: float
    intercept: float
    slope_err: float
    intercept_err: float
    covariance: float
    chi2_dof: float
    n: int
    method: str

    @property
    def is_fallback(self) -> bool:
        """True when no line could be fitted (constant at the mean instead)."""
        return self.method.startswith("fallback")

    def predict(self, x) -> np.ndarray:
        """Line value at ``x``."""
        return self.intercept + self.slope * np.asarray(x, dtype=float)

    def as_dict(self, prefix: str = "") -> dict:
        """Plain dict with keys prefixed (for a table row)."""
        return {prefix + k: v for k, v in asdict(self).items()}


def fit_line(x, y, sigma=None) -> LineFit:
    """Least-squares straight line through the finite points, with standard errors.

    Parameters
    ----------
    x, y : array-like
        Abscissae and ordinates.
    sigma : array-like, optional
        One-sigma errors of ``y``; without them the errors come from the residual
        scatter (``s^2 = RSS / (n - 2)``).

    Returns
    -------
    LineFit
        With ``method = 'fallback: ...'`` (slope 0, intercept mean(y), NaN errors) when
        fewer than 3 points or a constant x make a line meaningless; with one point the
        intercept is that point. Unweighted, with every point on the line (zero residual
        scatter, e.g. constant y), the errors are NaN: unknown, not 0.

    Examples
    --------
    >>> f = fit_line([0, 1, 2, 3], [1.0, 3.1, 4.9, 7.0])
    >>> round(f.slope, 2), round(f.intercept, 2), f.slope_err > 0
    (1.98, 1.03, True)
    >>> fit_line([2, 2, 2], [1, 2, 3]).method
    'fallback: x is constant'
    >>> f = fit_line([0.0, 0.1, 0.2], [0, 0, 0])   # on the line: no scatter, errors unknown
    >>> f.slope, math.isnan(f.slope_err)
    (0.0, True)
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    s = None if sigma is None else np.asarray(sigma, dtype=float)
    good = np.isfinite(x) & np.isfinite(y)
    if s is not None:
        good &= np.isfinite(s) & (s > 0)
    x, y = x[good], y[good]
    s = None if s is None else s[good]
    n = int(x.size)
    nan = math.nan

    def fallback(reason):
        mean = float(y.mean()) if n else nan
        return LineFit(0.0, mean, nan, nan, nan, nan, n, f"fallback: {reason}")

    if n < 3:
        return fallback(f"{n} points (need 3)")
    if np.ptp(x) == 0:
        return fallback("x is constant")
    w = np.ones(n) if s is None else 1.0 / s ** 2
    sw, sx, sy = w.sum(), (w * x).sum(), (w * y).sum()
    xm = sx / sw
    sxx = (w * (x - xm) ** 2).sum()
    slope = float((w * (x - xm) * y).sum() / sxx)
    intercept = float((sy - slope * sx) / sw)
    resid = y - intercept - slope * x
    chi2 = float((w * resid ** 2).sum() / (n - 2))
    var_scale = chi2 if s is None else 1.0
    if s is None and chi2 == 0.0:
        # every point on the line (e.g. no transient in any frame): the scatter is zero, so
        # it cannot give the errors; 0 +- 0 would claim an exact slope
        var_scale = nan
    slope_var = var_scale / sxx
    intercept_var = var_scale * (1.0 / sw + xm * xm / sxx)
    cov = -xm * var_scale / sxx
    return LineFit(slope, intercept, math.sqrt(slope_var), math.sqrt(intercept_var), float(cov),
                   chi2 if s is not None else nan, n,
                   "least squares" if s is None else "weighted least squares")


__all__ = ["Correlation", "pearson", "LineFit", "fit_line"]
