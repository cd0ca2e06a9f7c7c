"""The radiation response model: signal and temporal variance of masters vs dose, dose rate,
exposure and temperature, fitted jointly by weighted least squares.

The old model (``fit_radiation_model.py`` of the previous toolkit), with a temperature
term for the bias and the dark current, on the population of a fixed set of pixels::

    mean     = B0 + alpha_D D + b_T (T - T_ref) + (DC0 + beta_D D) f(T) t + <q> Ddot t
    variance = sigma_read^2 + g (DC0 + beta_D D) f(T) t + (<q>^2 + sigma_q^2) Ddot t
    f(T)     = 2^((T - T_ref) / T_d)

``D`` is the accumulated dose [krad] (the mean over the master's frames), ``Ddot`` the
dose rate while exposing [krad/s], ``t`` the exposure [s], ``T`` the master's mean
temperature [degC], ``T_d`` the measured doubling temperature of the dark current, and
``g`` the stored adu per electron (``ADUSCALE / K`` with the gain ``K`` in e-/ADC count:
the dark current's shot noise).  Without a gain the variance's dark terms get their own
coefficients (``g DC0`` and ``g beta_D``, from which ``g`` is derived).  The beam terms
follow the old model's convention of one hit per pixel per krad: ``<q>`` is the mean
charge the beam leaves per krad received while exposing, and ``<q>^2 + sigma_q^2`` (one
linear coefficient, ``kappa``) its variance coefficient.

Every coefficient of the two equations is linear, so the fit is closed-form weighted
least squares on the stacked rows (the masters' means and variances with their errors);
``sigma_read`` and ``sigma_q`` are derived from ``sigma_read^2`` and ``kappa - <q>^2``
with propagated errors.  Before fitting, each parameter is checked for identifiability
(:func:`identify`): a parameter the masters cannot constrain (every master at one dose,
the beam off during every master, no dark master, temperatures within a narrow span,
columns that are combinations of others) is reported with the reason and
``constrained = False``, never a crash and never a silent NaN.

:func:`linear_fit` is the old toolkit's straight-line helper, with its semantics for
degenerate input kept (NaN coefficients, errors, R^2 and a NaN residual vector of the
filtered length).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .linear import confounded_terms, constrained_terms, fit_linear_per_pixel

#: Linear coefficients of the joint fit, in order.
COEFFICIENTS = ("B0", "alpha_D", "b_T", "DC0", "beta_D", "q_mean", "sigma_read2", "kappa",
                "shot_DC0", "shot_beta_D")
#: Parameters reported (the old rows, plus the temperature coefficient of the bias).
PARAMETERS = ("B0", "alpha_D", "b_T", "DC0", "beta_D", "q_mean", "sigma_q", "sigma_read")
#: Unit of each reported parameter and coefficient (stored 16-bit ADU).
UNITS = {"B0": "adu", "alpha_D": "adu/krad", "b_T": "adu/degC", "DC0": "adu/s",
         "beta_D": "adu/s/krad", "q_mean": "adu/krad", "sigma_q": "adu/krad",
         "sigma_read": "adu", "sigma_read2": "adu^2", "kappa": "adu^2/krad",
         "shot_DC0": "adu^2/s", "shot_beta_D": "adu^2/s/krad", "adu_per_e": "adu/e-"}
#: Start of the reason of a coefficient that is fitted but stands for a combination with
#: coefficients left out: it keeps the predictions right and is reported as not constrained.
NUISANCE = "not constrained: confounded with "
#: Columns of the masters' table the model needs.
POINT_COLUMNS = ("CALTYPE", "DOSE", "RATE", "EXPTIME", "TEMP", "MEAN", "MEAN_ERR", "VAR",
                 "VAR_ERR")


@dataclass(frozen=True)
class ModelSettings:
    """Fixed inputs of the model.

    Attributes
    ----------
    t_ref : float
        Reference temperature of ``B0`` and ``DC0`` [degC].
    t_d : float or None
        Doubling temperature of the dark current [degC] (measured); None: no temperature
        term (``f = 1``), said in the result.
    t_d_err : float or None
        Standard error of ``t_d`` [degC], propagated into every parameter (see
        :func:`fit_response`); None or 0: ``t_d`` taken as exact.
    adu_per_e : float or None
        Stored adu per electron (``ADUSCALE / gain``); None: the variance's dark terms
        are fitted on their own.
    b_t : tuple or None
        ``(value, error)`` of the bias temperature coefficient [adu/degC] used when the
        masters' temperatures cannot constrain it.
    min_temp_span : float
        Smallest spread of the masters' temperatures [degC] that constrains ``b_T``.
    """

    t_ref: float = 20.0
    t_d: float | None = None
    t_d_err: float | None = None
    adu_per_e: float | None = None
    b_t: tuple | None = None
    min_temp_span: float = 2.0


@dataclass
class ResponseFit:
    """Result of :func:`fit_response`.

    Attributes
    ----------
    parameters : pandas.DataFrame
        One row per reported parameter: ``param, value, err, err_stat, err_td, R2, unit,
        constrained, reason``: ``err`` the total standard error, ``err_stat`` the fit's
        own (the masters' errors), ``err_td`` the part from the doubling temperature's
        error (0 when ``t_d`` is taken as exact), ``err^2 = err_stat^2 + err_td^2``.
    coefficients : tuple of str
        Linear coefficients fitted.
    coef : dict
        ``{name: value}`` of every linear coefficient (fixed ones included).
    covariance : numpy.ndarray
        Covariance of the fitted coefficients (order of ``coefficients``), statistical
        (T_d fixed).
    correlation : dict
        ``{a: {b: r}}`` between the fitted coefficients and derived parameters
        (statistical, T_d fixed).
    chi2dof : float
        Reduced chi-square of the joint fit.
    dof : int
        Degrees of freedom.
    settings : ModelSettings
        The fixed inputs.
    notes : list of str
        What was fixed, dropped or assumed.
    """

    parameters: pd.DataFrame
    coefficients: tuple
    coef: dict
    covariance: np.ndarray
    correlation: dict
    chi2dof: float
    dof: int
    settings: ModelSettings
    notes: list = field(default_factory=list)

    def value(self, name: str) -> float:
        """Reported parameter ``name`` (NaN when not constrained)."""
        row = self.parameters[self.parameters["param"] == name]
        return float(row["value"].iloc[0]) if len(row) else math.nan

    def error(self, name: str) -> float:
        """Total standard error of reported parameter ``name`` (T_d's error included)."""
        row = self.parameters[self.parameters["param"] == name]
        return float(row["err"].iloc[0]) if len(row) else math.nan

    def constrained(self, name: str) -> bool:
        """Whether the masters constrain ``name``."""
        row = self.parameters[self.parameters["param"] == name]
        return bool(row["constrained"].iloc[0]) if len(row) else False


def temperature_factor(temp, settings: ModelSettings) -> np.ndarray:
    """``2^((T - T_ref)/T_d)`` (1 without a doubling temperature)."""
    temp = np.asarray(temp, dtype=float)
    if settings.t_d is None or not math.isfinite(settings.t_d):
        return np.ones_like(temp)
    return 2.0 ** ((temp - settings.t_ref) / settings.t_d)


def design_rows(points: pd.DataFrame, settings: ModelSettings) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the mean and variance equations, one column per :data:`COEFFICIENTS`."""
    d = points["DOSE"].to_numpy(float)
    t = points["EXPTIME"].to_numpy(float)
    beam = points["RATE"].to_numpy(float) * t
    ft = temperature_factor(points["TEMP"].to_numpy(float), settings) * t
    dt = points["TEMP"].to_numpy(float) - settings.t_ref
    zero, one = np.zeros_like(d), np.ones_like(d)
    mean = np.column_stack([one, d, dt, ft, d * ft, beam, zero, zero, zero, zero])
    if settings.adu_per_e is not None:
        g = settings.adu_per_e
        var = np.column_stack([zero, zero, zero, g * ft, g * d * ft, zero, one, beam,
                               zero, zero])
    else:
        var = np.column_stack([zero, zero, zero, zero, zero, zero, one, beam, ft, d * ft])
    return mean, var


def identify(points: pd.DataFrame, settings: ModelSettings) -> dict:
    """``{coefficient: reason}`` of the coefficients the masters cannot constrain.

    Checked by name first (the reasons a user can act on), then by rank: a coefficient
    whose column is a combination of the others' is reported too.
    """
    why: dict[str, str] = {}
    dark = points["EXPTIME"].to_numpy(float) * temperature_factor(points["TEMP"], settings)
    is_dark = points["CALTYPE"].astype(str).str.upper().eq("DARK").to_numpy() & (dark > 0)
    doses = points["DOSE"].to_numpy(float)
    beam = points["RATE"].to_numpy(float) * points["EXPTIME"].to_numpy(float)
    temps = points["TEMP"].to_numpy(float)
    if not is_dark.any():
        for name in ("DC0", "beta_D", "shot_DC0", "shot_beta_D"):
            why[name] = "no dark master (only bias frames)"
    elif np.ptp(doses[is_dark]) == 0:
        for name in ("beta_D", "shot_beta_D"):
            why[name] = f"every dark master at one dose ({doses[is_dark][0]:g} krad)"
    if np.ptp(doses) == 0:
        why["alpha_D"] = f"every master at one dose ({doses[0]:g} krad)"
        for name in ("beta_D", "shot_beta_D"):
            why.setdefault(name, why["alpha_D"])
    if not np.any(np.abs(beam) > 0):
        reason = ("no master was exposed under the beam (dose rate 0, or not logged, while "
                  "exposing): <q> and sigma_q need frames taken under the beam")
        why["q_mean"] = why["kappa"] = reason
    if np.ptp(temps) == 0:
        why["b_T"] = "every master at one temperature"
    elif np.ptp(temps) < settings.min_temp_span and settings.b_t is not None:
        # a measured coefficient beats one fitted on the set points' jitter
        why["b_T"] = (f"the masters' temperatures span {np.ptp(temps):.2g} degC "
                      f"(< {settings.min_temp_span:g})")
    if settings.adu_per_e is not None:
        why["shot_DC0"] = why["shot_beta_D"] = "tied to DC0, beta_D by the gain"
    mean, var = design_rows(points, settings)
    rows = np.vstack([mean, var])
    candidates = [j for j, name in enumerate(COEFFICIENTS) if name not in why]
    kept, dropped = constrained_terms(rows[:, candidates], [COEFFICIENTS[j] for j in candidates])
    why.update(dropped)
    if dropped:
        # a kept column collinear with a dropped one is fitted in place of both: its value
        # is their combination (e.g. one dose folder: bias and darks at two mean frame doses
        # and one exposure make alpha_D and DC0, and B0, a single combination)
        others = ", ".join(dropped)
        for k in confounded_terms(rows[:, candidates], kept):
            name = COEFFICIENTS[candidates[k]]
            why[name] = NUISANCE + f"{others}: only their combination is fitted"
    return why


def _wls(rows: np.ndarray, y: np.ndarray, sigma: np.ndarray):
    w = 1.0 / sigma ** 2
    normal = rows.T @ (rows * w[:, None])
    inv = np.linalg.inv(normal)
    coef = inv @ (rows.T @ (w * y))
    resid = y - rows @ coef
    chi2 = float(np.sum(w * resid ** 2))
    return coef, inv, resid, chi2


def _r2(y, pred, sigma) -> float:
    ok = np.isfinite(y) & np.isfinite(pred)
    if ok.sum() < 2:
        return math.nan
    w = 1.0 / sigma[ok] ** 2
    tot = float(np.sum(w * (y[ok] - np.average(y[ok], weights=w)) ** 2))
    return 1.0 - float(np.sum(w * (y[ok] - pred[ok]) ** 2)) / tot if tot > 0 else 0.0


def _usable(points: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in POINT_COLUMNS if c not in points]
    if missing:
        raise ValueError(f"the masters' table lacks {', '.join(missing)}")
    numbers = points[["DOSE", "RATE", "EXPTIME", "TEMP", "MEAN", "MEAN_ERR", "VAR", "VAR_ERR"]]
    ok = np.all(np.isfinite(numbers.to_numpy(float)), axis=1)
    ok &= (points["MEAN_ERR"].to_numpy(float) > 0) & (points["VAR_ERR"].to_numpy(float) > 0)
    return points[ok].reset_index(drop=True)


def fit_response(points: pd.DataFrame, settings: ModelSettings = ModelSettings()) -> ResponseFit:
    """Fit the radiation response model jointly to the masters' means and variances.

    Parameters
    ----------
    points : pandas.DataFrame
        One row per master with :data:`POINT_COLUMNS`: ``CALTYPE`` (BIAS/DARK), ``DOSE``
        [krad], ``RATE`` [krad/s while exposing], ``EXPTIME`` [s], ``TEMP`` [degC],
        ``MEAN`` and ``MEAN_ERR`` [adu], ``VAR`` and ``VAR_ERR`` [adu^2].  Rows with a
        non-finite value or a non-positive error are left out.
    settings : ModelSettings
        Reference temperature, doubling temperature, gain, fallback bias coefficient.

    Returns
    -------
    ResponseFit
        Parameters with errors (scaled by sqrt(chi2/dof) when that exceeds 1), the reason
        of every parameter not constrained, correlations.

    Notes
    -----
    ``T_d`` is fixed in the fit, so the fit's own errors (``err_stat``) leave its error
    out; every dark-current coefficient is referred to ``T_ref`` through ``2^(dT/T_d)``
    and moves with it (DC0 by about twice its own error per T_d error on a 0-30 degC
    campaign).  With ``settings.t_d_err`` the model is refitted at ``T_d -+ t_d_err``
    and each parameter's half difference (linear propagation, ``dp/dT_d * sigma``) is
    ``err_td``; ``err`` is their sum in quadrature.

    Examples
    --------
    >>> pts = pd.DataFrame({"CALTYPE": ["BIAS", "DARK", "BIAS", "DARK"], "DOSE": [0, 0, 10, 10],
    ...                     "RATE": [0.0] * 4, "EXPTIME": [0, 2, 0, 2], "TEMP": [20.0] * 4,
    ...                     "MEAN": [100, 120, 110, 140], "MEAN_ERR": [1.0] * 4,
    ...                     "VAR": [25, 45, 25, 55], "VAR_ERR": [1.0] * 4})
    >>> fit = fit_response(pts, ModelSettings(adu_per_e=1.0))
    >>> round(fit.value("alpha_D"), 6), round(fit.value("beta_D"), 6), fit.constrained("q_mean")
    (1.0, 0.5, False)
    """
    if settings.t_d is not None and math.isfinite(settings.t_d) and \
            settings.t_d_err is not None and settings.t_d_err > 0:
        return _propagate_t_d(points, settings)
    points = _usable(points)
    notes: list[str] = []
    if points.empty:
        raise ValueError("no master with a finite mean, variance and errors")
    why = identify(points, settings)
    mean_rows, var_rows = design_rows(points, settings)
    y_mean = points["MEAN"].to_numpy(float).copy()
    s_mean = points["MEAN_ERR"].to_numpy(float).copy()
    fixed: dict[str, tuple[float, float]] = {}
    if "b_T" in why and settings.b_t is not None and all(map(math.isfinite, settings.b_t)):
        value, err = settings.b_t
        dt = mean_rows[:, COEFFICIENTS.index("b_T")]
        y_mean -= value * dt
        s_mean = np.hypot(s_mean, err * dt)
        fixed["b_T"] = (value, err)
        notes.append(f"b_T fixed at the measured {value:.4g} +- {err:.2g} adu/degC ({why['b_T']})")
    elif "b_T" in why:
        dt = mean_rows[:, COEFFICIENTS.index("b_T")]
        if np.any(dt != 0):
            notes.append("b_T not constrained and no measured value: the masters' temperature "
                         "offsets from T_ref are not corrected for the bias")
    elif np.ptp(points["TEMP"]) < settings.min_temp_span:
        notes.append(f"b_T fitted on a temperature span of {np.ptp(points['TEMP']):.2g} degC "
                     "(set-point jitter): large error, correlated with B0")
    if settings.t_d is None:
        notes.append("no doubling temperature: the dark current has no temperature term")
    fit_idx = [j for j, name in enumerate(COEFFICIENTS)
               if name not in why or why[name].startswith(NUISANCE)]
    rows = np.vstack([mean_rows, var_rows])[:, fit_idx]
    y = np.concatenate([y_mean, points["VAR"].to_numpy(float)])
    sigma = np.concatenate([s_mean, points["VAR_ERR"].to_numpy(float)])
    names = tuple(COEFFICIENTS[j] for j in fit_idx)
    n, p = rows.shape
    if n < p or not p:
        raise ValueError(f"{n} equations for {p} coefficients")
    coef, inv, resid, chi2 = _wls(rows, y, sigma)
    dof = n - p
    chi2dof = chi2 / dof if dof > 0 else math.nan
    cov = inv * (max(1.0, chi2dof) if dof > 0 else 1.0)
    if dof > 0 and chi2dof > 1:
        notes.append(f"errors scaled by sqrt(chi2/dof) = {math.sqrt(chi2dof):.3g}")
    values = dict(zip(names, coef))
    values.update({k: v[0] for k, v in fixed.items()})
    pred = rows @ coef
    nm = len(points)
    r2_mean = _r2(y[:nm], pred[:nm], sigma[:nm])
    r2_var = _r2(y[nm:], pred[nm:], sigma[nm:])
    err = dict(zip(names, np.sqrt(np.maximum(np.diag(cov), 0))))
    records = []

    def record(param, value, error, constrained, reason, r2):
        records.append({"param": param, "value": value, "err": error, "err_stat": error,
                        "err_td": 0.0 if math.isfinite(error) else math.nan, "R2": r2,
                        "unit": UNITS[param], "constrained": bool(constrained),
                        "reason": reason})

    derived_grad: dict[str, np.ndarray] = {}
    for param in PARAMETERS:
        r2 = r2_var if param in ("sigma_q", "sigma_read") else r2_mean
        if param == "sigma_read":
            s2 = values.get("sigma_read2", math.nan)
            if "sigma_read2" in why:
                record(param, math.nan, math.nan, False, why["sigma_read2"], r2)
            elif s2 > 0:
                grad = np.zeros(p)
                grad[names.index("sigma_read2")] = 1.0 / (2 * math.sqrt(s2))
                derived_grad[param] = grad
                record(param, math.sqrt(s2), float(math.sqrt(grad @ cov @ grad)), True, "", r2)
            else:
                # no value (NaN, as every parameter not constrained): a 0 reads as measured
                record(param, math.nan, math.nan, False, f"sigma_read^2 = {s2:.3g} <= 0", r2)
            continue
        if param == "sigma_q":
            if "kappa" in why or "q_mean" in why:
                record(param, math.nan, math.nan, False, why.get("kappa", why.get("q_mean")), r2)
                continue
            q, kappa = values["q_mean"], values["kappa"]
            s2 = kappa - q * q
            grad = np.zeros(p)
            if s2 > 0:
                sq = math.sqrt(s2)
                grad[names.index("kappa")] = 1.0 / (2 * sq)
                grad[names.index("q_mean")] = -q / sq
                derived_grad[param] = grad
                record(param, sq, float(math.sqrt(grad @ cov @ grad)), True, "", r2)
            else:
                grad[names.index("kappa")] = 1.0
                grad[names.index("q_mean")] = -2 * q
                e2 = float(math.sqrt(grad @ cov @ grad))
                record(param, math.nan, math.nan, False,
                       f"<q>^2 + sigma_q^2 - <q>^2 = {s2:.3g} +- {e2:.2g} adu^2/krad <= 0: "
                       "sigma_q not defined (more than one hit per pixel per krad, or no "
                       "spread)", r2)
            continue
        if param in fixed:
            record(param, fixed[param][0], fixed[param][1], False,
                   "fixed at the measured value: " + why[param], r2)
        elif param in why:
            record(param, math.nan, math.nan, False, why[param], r2)
        else:
            record(param, float(values[param]), float(err[param]), True, "", r2)
    if settings.adu_per_e is None and "shot_DC0" in values and values.get("DC0"):
        notes.append(f"gain not given: adu per electron from the variance's dark term "
                     f"{values['shot_DC0'] / values['DC0']:.4g}")
    # correlations of the fitted coefficients and the derived parameters
    labels = list(names)
    grads = [np.eye(p)[i] for i in range(p)]
    for param, grad in derived_grad.items():
        labels.append(param)
        grads.append(grad)
    jac = np.array(grads)
    full = jac @ cov @ jac.T
    sd = np.sqrt(np.maximum(np.diag(full), 0))
    corr = full / np.where(np.outer(sd, sd) > 0, np.outer(sd, sd), np.nan)
    correlation = {a: {b: (float(corr[i, j]) if np.isfinite(corr[i, j]) else None)
                       for j, b in enumerate(labels)} for i, a in enumerate(labels)}
    for name in COEFFICIENTS:
        values.setdefault(name, math.nan)
    return ResponseFit(pd.DataFrame(records), names, values, cov, correlation, chi2dof, dof,
                       settings, notes)


def _propagate_t_d(points: pd.DataFrame, settings: ModelSettings) -> ResponseFit:
    """:func:`fit_response` at ``settings.t_d`` with its error ``settings.t_d_err``
    propagated linearly: refits at ``t_d -+ t_d_err``, ``err_td = |p(+) - p(-)| / 2``."""
    t_d, sigma = settings.t_d, settings.t_d_err
    fit = fit_response(points, replace(settings, t_d_err=None))
    fit.settings = settings
    shifted = []
    if sigma < t_d:
        try:
            shifted = [fit_response(points, replace(settings, t_d=t_d + s, t_d_err=None))
                       for s in (-sigma, sigma)]
        except ValueError:
            shifted = []
    params = fit.parameters
    if len(shifted) == 2:
        low, high = (f.parameters.set_index("param")["value"] for f in shifted)
        names = params["param"]
        err_td = (high.reindex(names).to_numpy(float)
                  - low.reindex(names).to_numpy(float)) / 2
        err_td = np.abs(err_td)
        ok = params["constrained"].to_numpy(bool) & np.isfinite(err_td)
        stat = params["err_stat"].to_numpy(float)
        params["err_td"] = np.where(ok, err_td, np.where(params["constrained"], math.nan,
                                                          params["err_td"]))
        params["err"] = np.where(ok, np.hypot(stat, err_td), stat)
        notes = (f"T_d's error ({sigma:.3g} degC) propagated: each parameter refitted at "
                 f"T_d -+ {sigma:.3g} degC, half the difference (err_td) added in quadrature "
                 "to the fit's error (err_stat)")
        if not ok[params["constrained"].to_numpy(bool)].all():
            notes += ("; not for " + ", ".join(params["param"][params["constrained"] & ~ok])
                      + " (not constrained at the shifted T_d)")
    else:
        notes = (f"T_d's error ({sigma:.3g} degC) not propagated: the model cannot be refitted "
                 f"at T_d -+ {sigma:.3g} degC; err is the fit's error only")
        params["err_td"] = np.where(params["constrained"], math.nan, params["err_td"])
    fit.notes.append(notes)
    return fit


def predict(points: pd.DataFrame, fit: ResponseFit) -> tuple[np.ndarray, np.ndarray]:
    """Predicted mean [adu] and temporal variance [adu^2] of masters (unconstrained terms
    count as 0: a prediction says what the constrained part of the model expects)."""
    mean_rows, var_rows = design_rows(points, fit.settings)
    c = np.array([fit.coef.get(name, math.nan) for name in COEFFICIENTS], float)
    c = np.where(np.isfinite(c), c, 0.0)
    return mean_rows @ c, var_rows @ c


def pooled_read_variance(noise, count) -> np.ndarray:
    """Per-pixel temporal variance of bias frames [adu^2], pooled over bias masters.

    ``sum((n_k - 1) s_k^2) / sum(n_k - 1)`` over the masters ``k`` with the per-pixel
    sample standard deviation ``s_k`` of their ``n_k`` accepted frames: the pixel's read
    noise (quantisation included) with the degrees of freedom of every bias frame of the
    campaign, not the two or three of one master.  Bias frames expose for ~0 s, so the
    beam leaves no charge in them.

    Parameters
    ----------
    noise, count : sequence of numpy.ndarray, shape (H, W)
        Per-pixel sample standard deviation [adu] and number of frames of each bias master.

    Returns
    -------
    numpy.ndarray
        Pooled variance [adu^2]; NaN where no master has two frames of the pixel.

    Examples
    --------
    >>> v = pooled_read_variance([np.full((1, 1), 2.0), np.full((1, 1), 4.0)],
    ...                          [np.full((1, 1), 3), np.full((1, 1), 2)])
    >>> round(float(v[0, 0]), 6)  # (2 * 4 + 1 * 16) / 3
    8.0
    """
    num = den = 0.0
    for s, n in zip(noise, count):
        dof = np.maximum(np.asarray(n, np.float64) - 1.0, 0.0)
        s2 = np.asarray(s, np.float64) ** 2
        use = np.isfinite(s2) & (dof > 0)
        num = num + np.where(use, dof * s2, 0.0)
        den = den + np.where(use, dof, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.asarray(den) > 0, num / np.where(den > 0, den, 1.0), np.nan)


def frame_variance(point, fit: ResponseFit, read_var=None, pixel_dark=None
                   ) -> np.ndarray | float:
    """Expected temporal variance of one frame of a master, pixel by pixel [adu^2].

    ``read_var + g (DC0 + beta_D D) f(T) t + (<q>^2 + sigma_q^2) Ddot t``: the pixel's read
    variance (``read_var``, e.g. :func:`pooled_read_variance`; the model's ``sigma_read^2``
    without it) plus the model's dark shot noise and beam variance for the master's dose,
    dose rate, exposure and temperature (terms not constrained, or negative, count as 0).
    It does not depend on the charge the beam happened to leave in a pixel: a weight or an
    error built from it does not follow a pixel's own hits (a pixel's sample variance does,
    and a fit weighted by it leans away from the pixels the beam hit).

    Parameters
    ----------
    point : mapping
        ``DOSE`` [krad], ``RATE`` [krad/s], ``EXPTIME`` [s], ``TEMP`` [degC] of the master.
    fit : ResponseFit
        The fitted model.
    read_var : numpy.ndarray or float, optional
        Read variance per pixel [adu^2].
    pixel_dark : tuple of numpy.ndarray, optional
        ``(DC0_i, beta_i)`` [adu/s, adu/s/krad]: the pixel's own dark current (e.g. the
        per-pixel dark maps).  Each dark shot term is then scaled by the pixel's component
        over the population's (``g DC0_i f t`` with a gain), so a hot pixel gets its own
        shot noise; NaN pixels (or a population value <= 0) keep the population's term.
        Without it every pixel gets the population's dark shot noise.

    Returns
    -------
    numpy.ndarray or float
        Variance of one frame [adu^2].
    """
    row = pd.DataFrame([{k: float(point[k]) for k in ("DOSE", "RATE", "EXPTIME", "TEMP")}])
    _, var_row = design_rows(row, fit.settings)
    own = dict(zip(("DC0", "beta_D"), pixel_dark)) if pixel_dark is not None else {}
    extra = 0.0
    for name in ("DC0", "beta_D", "shot_DC0", "shot_beta_D", "kappa"):
        c = fit.coef.get(name, math.nan)
        j = COEFFICIENTS.index(name)
        if math.isfinite(c) and var_row[0, j]:
            term = c * var_row[0, j]
            pop = fit.coef.get(name.removeprefix("shot_"), math.nan)
            mine = own.get(name.removeprefix("shot_"))
            if mine is not None and math.isfinite(pop) and pop > 0:
                mine = np.asarray(mine, np.float64)
                term = np.where(np.isfinite(mine), term * mine / pop, term)
            extra = extra + term
    extra = np.maximum(extra, 0.0) if np.ndim(extra) else max(extra, 0.0)
    if read_var is None:
        s2 = fit.coef.get("sigma_read2", math.nan)
        read_var = s2 if math.isfinite(s2) and s2 > 0 else 0.0
    if np.ndim(read_var) or np.ndim(extra):
        return np.asarray(read_var, np.float64) + extra
    return float(read_var) + extra


def master_variance(point, fit: ResponseFit, read_var, count, stderr=None,
                    pixel_dark=None) -> np.ndarray:
    """Variance of a master's per-pixel mean [adu^2] expected from the model.

    :func:`frame_variance` (the pixel's read variance, the model's dark shot noise and beam
    variance) over the pixel's number of frames -- never the pixel's own sample variance:
    under the beam that grows with the hits the pixel happened to get, and weights or pulls
    built from it follow them.

    Parameters
    ----------
    point : mapping
        ``DOSE``, ``RATE``, ``EXPTIME``, ``TEMP`` of the master.
    fit : ResponseFit
        The fitted model.
    read_var : numpy.ndarray or None
        Pixel read variance [adu^2] (:func:`pooled_read_variance`); None: ``stderr`` is
        used instead (no bias master to measure it).
    count : numpy.ndarray
        Frames combined per pixel.
    stderr : numpy.ndarray, optional
        The master's own standard error [adu] (the fallback).
    pixel_dark : tuple of numpy.ndarray, optional
        The pixel's own ``(DC0_i, beta_i)`` for the dark shot noise
        (:func:`frame_variance`).

    Returns
    -------
    numpy.ndarray
        Variance [adu^2]; NaN where the pixel has no frame.
    """
    if read_var is None:
        if stderr is None:
            raise ValueError("no read variance and no standard error of the master")
        return np.asarray(stderr, np.float64) ** 2
    n = np.asarray(count, np.float64)
    n = np.where(n > 0, n, np.nan)
    return frame_variance(point, fit, read_var, pixel_dark) / n


def dark_point_error(dark_point, bias_point, fit: ResponseFit, read_var, dark_count,
                     dark_stderr, bias_count, bias_stderr) -> np.ndarray:
    """Error [adu] of one point of the per-pixel dark maps' fit, a dark master minus its bias
    master: the square root of the two masters' :func:`master_variance` (the population's
    dark shot noise).  The weights of :func:`pixel_dark_maps` in the model fit, and the same
    weights where the reconstruction computes the leverage of its points."""
    return np.sqrt(master_variance(dark_point, fit, read_var, dark_count, dark_stderr)
                   + master_variance(bias_point, fit, read_var, bias_count, bias_stderr))


def pixel_dark_maps(dark: np.ndarray, dark_err: np.ndarray, points: pd.DataFrame,
                    settings: ModelSettings, q_mean: float = 0.0):
    """Per-pixel ``DC0`` and ``beta_D`` from bias-subtracted dark masters.

    Parameters
    ----------
    dark, dark_err : numpy.ndarray, shape (n, H, W)
        Bias-subtracted dark masters [adu] and their one-sigma errors: errors that do not
        follow the pixel's own beam hits (:func:`master_variance`), else the fit leans
        away from the points of the pixels the beam hit and the maps are biased low.
    points : pandas.DataFrame
        ``DOSE``, ``RATE``, ``EXPTIME``, ``TEMP`` of each master (n rows).
    settings : ModelSettings
        Reference and doubling temperatures.
    q_mean : float
        The population's beam charge [adu/krad], removed from each master first.

    Returns
    -------
    utils.models.linear.MultiLinearFit
        Terms ``DC0`` [adu/s] and ``beta_D`` [adu/s/krad]; ``beta_D`` is dropped (and
        named in ``dropped``) when the masters are at one dose.
    """
    ft = temperature_factor(points["TEMP"].to_numpy(float), settings) \
        * points["EXPTIME"].to_numpy(float)
    d = points["DOSE"].to_numpy(float)
    beam = points["RATE"].to_numpy(float) * points["EXPTIME"].to_numpy(float)
    y = np.asarray(dark, np.float64) - (q_mean * beam)[:, None, None]
    return fit_linear_per_pixel(np.column_stack([ft, d * ft]), y, dark_err,
                                names=["DC0", "beta_D"])


@dataclass(frozen=True)
class LineFit:
    """Result of :func:`linear_fit` (the old helper's outputs)."""

    slope: float
    intercept: float
    slope_err: float
    intercept_err: float
    r2: float
    residuals: np.ndarray


def linear_fit(x, y) -> LineFit:
    """Least-squares line ``y = intercept + slope x`` with the old helper's semantics.

    Non-finite points are dropped.  Fewer than 2 points or a constant ``x``: NaN
    coefficients, errors and R^2, and a NaN residual vector of the *filtered* length.
    Otherwise R^2 = 1 - SS_res/SS_tot (0 when SS_tot = 0) and the errors come from
    ``s^2 (A^T A)^-1`` with ``s^2 = SS_res/(n - 2)`` (0 when n <= 2).

    Examples
    --------
    >>> round(linear_fit([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]).slope, 9)
    2.0
    >>> f = linear_fit([1.0, 1.0, np.nan], [2.0, 3.0, 4.0])
    >>> math.isnan(f.slope), f.residuals.shape
    (True, (2,))
    """
    x = np.asarray(x, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = x.size
    if n < 2 or np.ptp(x) == 0:
        nan = math.nan
        return LineFit(nan, nan, nan, nan, nan, np.full(n, np.nan))
    a = np.column_stack([x, np.ones(n)])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    resid = y - a @ coef
    ss_res = float(np.sum(resid ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    s2 = ss_res / (n - 2) if n > 2 else 0.0
    cov = s2 * np.linalg.inv(a.T @ a)
    return LineFit(float(coef[0]), float(coef[1]), float(math.sqrt(cov[0, 0])),
                   float(math.sqrt(cov[1, 1])), r2, resid)


__all__ = ["ModelSettings", "ResponseFit", "fit_response", "identify", "predict",
           "design_rows", "temperature_factor", "pixel_dark_maps", "pooled_read_variance",
           "frame_variance", "master_variance", "dark_point_error", "linear_fit", "LineFit",
           "COEFFICIENTS", "PARAMETERS", "UNITS"]
