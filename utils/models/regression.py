"""Small weighted linear regressions with standard errors, and degenerate cases said, not raised.

Analyses across dose steps fit a handful of points (one per dose step or per
master): a straight line ``y = a + b x`` or a plane ``y = c0 + c1 x1 + c2 x2``.
:func:`fit_linear` returns every coefficient with its standard error and the
fit's quality; a fit the data cannot determine (too few finite points, a
constant abscissa such as equal dose rates, collinear columns) comes back with
``ok = False`` and the reason in ``status`` -- never an exception that aborts a
whole analysis (the old toolkit's ``polyfit`` on constant x), never a silent NaN.

Errors: with ``sigma`` the covariance is ``(X^T W X)^-1`` scaled by the reduced
chi-square when that exceeds 1 (scatter beyond the stated errors is not hidden);
without, it is ``s^2 (X^T X)^-1`` with ``s^2 = SS_res / (n - p)`` (0 when the fit
is exact; NaN with no degree of freedom).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Regression:
    """Result of :func:`fit_linear`.

    Attributes
    ----------
    names : tuple of str
        Coefficient names (``intercept`` first).
    coef, err : numpy.ndarray
        Coefficients and one-sigma standard errors (NaN when not ``ok``).
    covariance : numpy.ndarray
        Coefficient covariance (p, p).
    npoints : int
        Finite points used.
    dof : int
        ``npoints - p``.
    chi2dof : float
        Reduced chi-square (with sigma) or residual variance (without); NaN without dof.
    r2 : float
        Coefficient of determination (0 when y is constant).
    status : str
        ``ok``, ``ok (... errors unknown)`` for an unweighted exact fit, or why the fit was
        skipped.
    residuals : numpy.ndarray
        ``y - prediction`` of every input point (NaN where not used or not ok).
    """

    names: tuple
    coef: np.ndarray
    err: np.ndarray
    covariance: np.ndarray
    npoints: int
    dof: int
    chi2dof: float
    r2: float
    status: str
    residuals: np.ndarray = field(repr=False, default_factory=lambda: np.array([]))

    @property
    def ok(self) -> bool:
        """True when the coefficients were determined (their errors may still be unknown:
        an exact fit without weights and without a degree of freedom says so)."""
        return self.status.startswith("ok")

    @property
    def message(self) -> str:
        """What a log line says of the fit: '' when ok, else the status as a sentence (the
        wrapper of ``ok (...)`` removed: a log line reading 'ok (... errors unknown)' read
        as a contradiction).

        Examples
        --------
        >>> fit_line([1.0, 2.0], [3.0, 5.0], what="y vs x").message
        'y vs x: 2 points for 2 coefficients, no degree of freedom: errors unknown'
        """
        if self.status == "ok":
            return ""
        if self.status.startswith("ok (") and self.status.endswith(")"):
            return self.status[4:-1]
        return self.status

    def value(self, name: str) -> float:
        """Coefficient ``name``."""
        return float(self.coef[self.names.index(name)])

    def error(self, name: str) -> float:
        """Standard error of coefficient ``name``."""
        return float(self.err[self.names.index(name)])

    def predict(self, *columns) -> np.ndarray:
        """Prediction at the given regressor values (one array per non-intercept column)."""
        x = [np.asarray(c, dtype=float) for c in columns]
        out = np.full(np.broadcast(*x).shape if x else (), self.coef[0], dtype=float)
        for c, v in zip(self.coef[1:], x):
            out = out + c * v
        return out

    def record(self, prefix: str = "") -> dict:
        """``{NAME: value, NAME_ERR: error}`` plus ``N``, ``CHI2DOF``, ``R2``, ``STATUS``."""
        out = {}
        for n, c, e in zip(self.names, self.coef, self.err):
            out[f"{prefix}{n.upper()}"] = float(c)
            out[f"{prefix}{n.upper()}_ERR"] = float(e)
        out.update({f"{prefix}N": self.npoints, f"{prefix}CHI2DOF": self.chi2dof,
                    f"{prefix}R2": self.r2, f"{prefix}STATUS": self.status})
        return out


def _skipped(names, n, reason, size) -> Regression:
    p = len(names)
    nan = np.full(p, np.nan)
    return Regression(tuple(names), nan, nan.copy(), np.full((p, p), np.nan), n, n - p,
                      math.nan, math.nan, reason, np.full(size, np.nan))


def fit_linear(y, columns: dict, sigma=None, *, what: str = "fit",
               labels: dict | None = None) -> Regression:
    """Weighted least squares ``y = c0 + sum_j c_j x_j``.

    Parameters
    ----------
    y : array-like, shape (n,)
        Values.
    columns : dict
        ``{name: values}`` of the regressors (each shape (n,)); an intercept is added.
    sigma : array-like, optional
        One-sigma errors of ``y``; non-finite or non-positive ones drop the point.
    what : str, optional
        Name of the fit for the status message.
    labels : dict, optional
        ``{name: label}`` of the regressors in messages (default: their names).

    Returns
    -------
    Regression
        ``ok = False`` with the reason when the fit cannot be made.

    Examples
    --------
    >>> r = fit_linear([2.0, 3.5, 2.4, 3.9], {"dose": [0, 1, 0, 1], "rate": [0, 0, 2, 2]})
    >>> [round(float(v), 6) for v in r.coef]
    [2.0, 1.5, 0.2]
    >>> fit_linear([1.0, 2.0], {"rate": [3.0, 3.0]}, what="mean vs rate").status
    'mean vs rate skipped: every rate is 3 (a constant cannot be a regressor)'
    """
    y = np.asarray(y, dtype=float).reshape(-1)
    names = ["intercept"] + list(columns)
    X = np.column_stack([np.ones(y.size)] + [np.asarray(v, dtype=float).reshape(-1)
                                             for v in columns.values()])
    ok = np.isfinite(y) & np.all(np.isfinite(X), axis=1)
    if sigma is not None:
        s = np.asarray(sigma, dtype=float).reshape(-1)
        ok &= np.isfinite(s) & (s > 0)
    n, p = int(ok.sum()), len(names)
    if n < p:
        return _skipped(names, n, f"{what} skipped: {n} usable point(s), {p} needed", y.size)
    for name, col in zip(names[1:], X[ok, 1:].T):
        if np.ptp(col) == 0:
            label = (labels or {}).get(name, name)
            return _skipped(names, n, f"{what} skipped: every {label} is {col[0]:g} (a constant "
                                      "cannot be a regressor)", y.size)
    Xo, yo = X[ok], y[ok]
    w = 1.0 / s[ok] ** 2 if sigma is not None else np.ones(n)
    normal = Xo.T @ (Xo * w[:, None])
    if np.linalg.matrix_rank(normal) < p:
        return _skipped(names, n, f"{what} skipped: the regressors "
                                  f"({', '.join(names[1:])}) are collinear", y.size)
    inv = np.linalg.inv(normal)
    coef = inv @ (Xo.T @ (w * yo))
    resid = yo - Xo @ coef
    dof = n - p
    ss = float(np.sum(w * resid ** 2))
    if sigma is not None:
        chi2dof = ss / dof if dof > 0 else math.nan
        cov = inv * (max(1.0, chi2dof) if dof > 0 else 1.0)
    else:
        chi2dof = ss / dof if dof > 0 else math.nan
        cov = inv * (chi2dof if dof > 0 else math.nan)
    tot = float(np.sum(w * (yo - np.average(yo, weights=w)) ** 2))
    r2 = 1.0 - ss / tot if tot > 0 else 0.0
    residuals = np.full(y.size, np.nan)
    residuals[ok] = resid
    status = "ok" if dof > 0 or sigma is not None else \
        f"ok ({what}: {n} points for {p} coefficients, no degree of freedom: errors unknown)"
    return Regression(tuple(names), coef, np.sqrt(np.maximum(np.diag(cov), 0)), cov, n, dof,
                      chi2dof, r2, status, residuals)


def fit_line(x, y, sigma=None, *, what: str = "line", name: str = "slope",
             xname: str = "x") -> Regression:
    """Straight line ``y = intercept + slope x`` (see :func:`fit_linear`).

    Examples
    --------
    >>> r = fit_line([0, 1, 2], [1.0, 3.0, 5.0])
    >>> round(r.value("slope"), 6), round(r.error("slope"), 6)
    (2.0, 0.0)
    """
    return fit_linear(y, {name: x}, sigma, what=what, labels={name: xname})


__all__ = ["Regression", "fit_linear", "fit_line"]
