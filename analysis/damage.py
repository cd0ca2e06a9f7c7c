"""Radiation damage from per-(stage, dose step) measurements: what radiation practitioners report.

Pure computations on :class:`analysis.stage_models.StageMeasurement` results (no
files, no plots; :mod:`analysis.damage_plots` draws, :mod:`analysis.damage_analysis`
writes).  Nothing is stacked or fitted across dose steps except the
dose-response fits, which take one point per step:

* dark current at ``T_ref`` per step, per pixel, temperature-corrected with the
  per-pixel temperature rate of the pre-irradiation dark model (else post), in
  e-/s with a gain (and nA/cm^2 with a pixel pitch), else adu/s;
* the **damage slope** (increase per krad): a weighted line through the step means
  of the normal pixels (not hot at any step) vs the accumulated dose of each
  step's dark frames, and per pixel (slope map with errors);
* the dark-current distribution per step (histogram, pixels above x, 50/95/99.9th
  percentiles);
* hot pixels per step above a fixed threshold (e-/s at T_ref, 5 e-/s as LSST) and
  above a threshold relative to the pre-irradiation distribution (robust sigma of
  ln(rate)); new vs pre-existing; recovered after annealing;
* **annealing**: recovered fraction ``f = (I_last - I_post) / (I_last - I_pre)``
  globally and per pixel with errors, and the time since beam-off of the post
  measurements;
* bias shift per krad and read-noise change vs dose (one point per step).

Which steps enter a dose fit: pre-irradiation and the radiating steps (their
accumulated dose); post-irradiation measurements carry the same dose as the last
step but annealed damage, so they are compared, not fitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from utils.models.linear import fit_line_per_pixel
from utils.models.regression import Regression, fit_line

#: Elementary charge [C].
ELEMENTARY_CHARGE = 1.602176634e-19


@dataclass(frozen=True)
class DamageSettings:
    """Thresholds and references of the damage analysis."""

    t_ref: float = 20.0               # [degC] temperature every dark current is referred to
    hot_threshold_e: float = 5.0      # [e-/s] fixed hot-pixel threshold at t_ref (as LSST)
    hot_nsigma: float = 5.0           # [sigma] relative threshold on ln(rate) vs pre
    pixel_pitch_um: float | None = None   # [um] pixel pitch for nA/cm^2
    min_significance: float = 3.0     # per-pixel annealing only where the increase is this many
    #                                   sigma
    percentiles: tuple = (50.0, 95.0, 99.9)   # [%] of the dark-current distribution


@dataclass
class StepCurrent:
    """Dark current at ``t_ref`` of one (stage, dose step).

    Attributes
    ----------
    stage, tag : str
        Stage and stage tag.
    dose : float
        [krad] dose step (NaN for pre/post).
    framedose : float
        [krad] mean accumulated dose of the step's dark frames.
    tanneal : float
        [s] median time since beam-off of its dark frames.
    temperature : float
        [degC] temperature of the measured rate before correction.
    current, error : numpy.ndarray
        Dark current and one-sigma error per pixel [``unit``].
    unit : str
        ``e-/s`` (with a gain) or ``adu/s``.
    """

    stage: str
    tag: str
    dose: float
    framedose: float
    tanneal: float
    temperature: float
    current: np.ndarray
    error: np.ndarray
    unit: str


def temperature_slope(measurements) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-pixel temperature rate B [1/degC] and its error, from the pre model, else post.

    Raises
    ------
    ValueError
        Neither the pre nor the post stage has a dark model (darks at two temperatures).
    """
    for stage in ("pre", "post"):
        for m in measurements:
            if m.stage == stage and m.model is not None:
                fit = m.model.fit
                return (fit.rate.astype(np.float64), fit.rate_err.astype(np.float64),
                        f"{m.tag} dark model")
    models = [m for m in measurements if m.model is not None]
    if models:
        fit = models[0].model.fit
        return fit.rate.astype(np.float64), fit.rate_err.astype(np.float64), \
            f"{models[0].tag} dark model"
    raise ValueError("no dark model in temperature in any stage (pre or post darks at two "
                     "temperatures at least are needed to refer dark currents to T_ref)")


def step_currents(measurements, t_ref: float, e_per_adu: float | None,
                  bias_shift: tuple | None = None, bias_slope=0.0) -> list[StepCurrent]:
    """Dark current at ``t_ref`` of every measured group (see module notes).

    ``bias_shift`` is ``(value, error)`` of the bias shift per krad [adu/krad]: a group whose
    dark frames received more dose than its bias frames (the beam on while measuring) had a
    higher bias in its darks than the bias subtracted; a rate from one exposure would count
    that as dark current (``StageMeasurement.rate_at``), so it is taken out; likewise the
    bias temperature coefficient ``bias_slope`` [adu/degC] times the temperature difference
    between the darks and the bias master of a group without a bias model.
    """
    slope, slope_err, _ = temperature_slope(measurements)
    unit = "e-/s" if e_per_adu else "adu/s"
    k = e_per_adu or 1.0
    out = []
    for m in measurements:
        if bias_shift is None:
            rate, err = m.rate_at(t_ref, slope, slope_err)
        else:
            drift = m.bias_drift(*bias_shift, t_ref=t_ref, bias_slope=bias_slope)
            rate, err = m.rate_at(t_ref, slope, slope_err, bias_drift=drift)
        # the temperature of the map measured (a stage with darks at several temperatures
        # has its mean in m.temperature: 15 degC for 0..30, while 20.2 was measured)
        out.append(StepCurrent(m.stage, m.tag, m.dose, m.framedose, m.tanneal,
                               m.rate_temperature(t_ref),
                               rate * k, err * k, unit))
    return out


def to_na_per_cm2(current_e_s, pitch_um: float):
    """[e-/s per pixel] -> [nA/cm^2] for square pixels of ``pitch_um`` [um].

    Examples
    --------
    >>> round(float(to_na_per_cm2(1.0, 10.0)), 9)   # 1 e-/s on a 10 um pixel
    1.6e-10
    """
    area_cm2 = (pitch_um * 1e-4) ** 2
    return np.asarray(current_e_s) * ELEMENTARY_CHARGE / area_cm2 * 1e9


# --- hot pixels -------------------------------------------------------------------------------

@dataclass
class HotPixels:
    """Hot pixels of every step.

    Attributes
    ----------
    fixed, relative : dict
        ``{tag: bool mask}`` above the fixed threshold and above the relative threshold.
    threshold_fixed, threshold_relative : float
        Thresholds [unit of the currents].
    table : pandas.DataFrame
        One row per step: counts, new vs pre-existing, recovered (post).
    """

    fixed: dict
    relative: dict
    threshold_fixed: float
    threshold_relative: float
    table: pd.DataFrame


def relative_threshold(current: np.ndarray, n_sigma: float) -> float:
    """``exp(median + n_sigma robust-sigma)`` of ln(current) over positive pixels."""
    v = current[np.isfinite(current) & (current > 0)]
    if v.size < 10:
        return math.nan
    logs = np.log(v)
    centre = float(np.median(logs))
    spread = 1.4826 * float(np.median(np.abs(logs - centre)))
    return math.exp(centre + n_sigma * max(spread, 1e-6))


def find_hot_pixels(steps: list[StepCurrent], threshold_fixed: float,
                    n_sigma: float) -> HotPixels:
    """Hot pixels per step: above ``threshold_fixed`` and above the pre-relative threshold.

    A pixel is new at a step when it is hot there but was not at pre; post-irradiation
    rows count the pixels hot at the last radiating step that are not hot any more
    (recovered by annealing).  Without a fixed threshold (``inf``: no gain) the counts that
    need it (``N_HOT``, ``N_NEW``, ``N_PREEXISTING``, ``N_RECOVERED``, ``RECOVERED_OF``)
    are missing, not 0: no pixel was tested against it.
    """
    pre = next((s for s in steps if s.stage == "pre"), None)
    rel = relative_threshold(pre.current, n_sigma) if pre is not None else math.nan
    fixed, relative, rows = {}, {}, []
    base = pre.current > threshold_fixed if pre is not None else None
    last = [s for s in steps if s.stage == "radiating"]
    last = last[-1] if last else None
    for s in steps:
        finite = np.isfinite(s.current)
        fixed[s.tag] = finite & (s.current > threshold_fixed)
        relative[s.tag] = finite & (s.current > rel) if math.isfinite(rel) else \
            np.zeros(s.current.shape, bool)
        row = {"STAGE": s.stage, "TAG": s.tag, "DOSE": s.dose, "FRAMEDOSE": s.framedose,
               "N_HOT": int(fixed[s.tag].sum()), "N_HOT_RELATIVE": int(relative[s.tag].sum()),
               "N_PIXELS": int(finite.sum())}
        if base is not None:
            row["N_NEW"] = int((fixed[s.tag] & ~base).sum())
            row["N_PREEXISTING"] = int((fixed[s.tag] & base).sum())
        if s.stage == "post" and last is not None:
            was = fixed[last.tag]
            row["N_RECOVERED"] = int((was & ~fixed[s.tag]).sum())
            row["RECOVERED_OF"] = int(was.sum())
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in _FIXED_COUNTS:
        if column in table:
            # nullable integers: counts stay "3" in the CSV and a missing one is an empty cell
            table[column] = (table[column] if math.isfinite(threshold_fixed)
                             else pd.Series(pd.NA, index=table.index)).astype("Int64")
    return HotPixels(fixed, relative, float(threshold_fixed), float(rel), table)


#: Hot-pixel counts that need the fixed threshold.
_FIXED_COUNTS = ("N_HOT", "N_NEW", "N_PREEXISTING", "N_RECOVERED", "RECOVERED_OF")


# --- dose response ------------------------------------------------------------------------------

def dose_points(steps: list[StepCurrent]) -> list[StepCurrent]:
    """Pre and radiating steps with a known accumulated dose, in dose order."""
    pts = [s for s in steps if s.stage in ("pre", "radiating") and math.isfinite(s.framedose)]
    return sorted(pts, key=lambda s: s.framedose)


def normal_masks(hot: HotPixels) -> tuple[dict, str]:
    """The hot-pixel masks that exclude pixels from the normal ones, and which criterion.

    The relative one (an outlier of the pre-irradiation distribution of ln(current)) when
    there is a pre stage: whatever the unit, it removes the distribution's tail only.  The
    fixed threshold (e-/s) cuts into the population itself when the typical pixel is near
    it -- a sensor of 5 e-/s at T_ref, or one whose damage brings it there -- leaving as
    normal only the pixels measured low at every step (a biased, sometimes empty, set); it
    is used only without a pre stage (no relative threshold) and with a gain.
    """
    if math.isfinite(hot.threshold_relative):
        return hot.relative, (f"not above the relative threshold ({hot.threshold_relative:.4g},"
                              " pre-irradiation outliers) at any step")
    if math.isfinite(hot.threshold_fixed):
        return hot.fixed, f"not above {hot.threshold_fixed:g} e-/s at any step (no pre stage)"
    none = {tag: np.zeros(m.shape, bool) for tag, m in hot.fixed.items()}
    return none, "every measured pixel (no threshold: no pre stage and no gain)"


def normal_pixels(steps: list[StepCurrent], hot: HotPixels) -> np.ndarray:
    """Pixels finite at every step and hot at none (``hot.fixed``: the masks passed, see
    :func:`normal_masks`)."""
    ok = np.ones(steps[0].current.shape, bool)
    for s in steps:
        ok &= np.isfinite(s.current) & np.isfinite(s.error) & ~hot.fixed[s.tag]
    return ok


def step_means(steps: list[StepCurrent], mask: np.ndarray) -> pd.DataFrame:
    """Mean, its error, median and percentiles of the current over ``mask``, per step."""
    rows = []
    for s in steps:
        v, e = s.current[mask], s.error[mask]
        rows.append({"STAGE": s.stage, "TAG": s.tag, "DOSE": s.dose, "FRAMEDOSE": s.framedose,
                     "TANNEAL": s.tanneal, "TEMP": s.temperature, "DC_MEAN": float(v.mean()),
                     "DC_MEAN_ERR": float(np.sqrt(np.sum(e * e)) / v.size),
                     "DC_MEDIAN": float(np.median(v)), "N_PIXELS": int(v.size),
                     "UNIT": s.unit})
    return pd.DataFrame(rows)


@dataclass
class DamageSlope:
    """Increase of the dark current per krad.

    Attributes
    ----------
    fit : Regression
        Weighted line of the step means (normal pixels) vs accumulated dose.
    slope_map, slope_err, intercept_map, chi2 : numpy.ndarray
        Per-pixel weighted lines through the steps (NaN where fewer than two points).
    median_slope, median_slope_err : float
        Median of the per-pixel slopes (normal pixels) and its robust standard error.
    points : pandas.DataFrame
        The step means used.
    """

    fit: Regression
    slope_map: np.ndarray
    slope_err: np.ndarray
    intercept_map: np.ndarray
    chi2: np.ndarray
    median_slope: float
    median_slope_err: float
    points: pd.DataFrame = field(default_factory=pd.DataFrame)


def damage_slope(steps: list[StepCurrent], normal: np.ndarray) -> DamageSlope:
    """Dark-current increase per krad, globally and per pixel (pre and radiating steps)."""
    pts = dose_points(steps)
    table = step_means(pts, normal)
    fit = fit_line(table["FRAMEDOSE"], table["DC_MEAN"], table["DC_MEAN_ERR"],
                   what="damage slope (mean dark current vs dose)", xname="dose")
    shape = steps[0].current.shape
    nan = np.full(shape, np.nan, np.float32)
    if len({round(p.framedose, 9) for p in pts}) < 2:
        return DamageSlope(fit, nan, nan.copy(), nan.copy(), nan.copy(), math.nan, math.nan,
                           table)
    x = np.array([p.framedose for p in pts])
    y = np.stack([p.current for p in pts]).astype(np.float32)
    s = np.stack([p.error for p in pts]).astype(np.float32)
    line = fit_line_per_pixel(x, y, s, x_ref=0.0)
    good = normal & np.isfinite(line.slope)
    slopes = line.slope[good]
    med = float(np.median(slopes)) if slopes.size else math.nan
    mad = 1.4826 * float(np.median(np.abs(slopes - med))) if slopes.size else math.nan
    # standard error of a median: sqrt(pi/2) sigma / sqrt(n)
    med_err = math.sqrt(math.pi / 2) * mad / math.sqrt(slopes.size) if slopes.size else math.nan
    return DamageSlope(fit, line.slope, line.slope_err, line.intercept, line.chi2, med, med_err,
                       table)


@dataclass
class Annealing:
    """Recovery after irradiation.

    Attributes
    ----------
    fraction, fraction_err : float
        ``(I_last - I_post) / (I_last - I_pre)`` of the normal pixels' mean currents.
    fraction_map, fraction_map_err : numpy.ndarray
        Per pixel (NaN where the increase I_last - I_pre is below ``min_significance``
        sigma).
    tanneal : float
        [s] median time since beam-off of the post measurements.
    last_tag : str
        Step taken as "last".
    status : str
        ``ok`` or why it was skipped.
    end_dose : float
        [krad] accumulated dose the irradiated current ``I_last`` refers to: the post
        measurements' (the final dose); the last step's darks when they carry it.
    """

    fraction: float
    fraction_err: float
    fraction_map: np.ndarray
    fraction_map_err: np.ndarray
    tanneal: float
    last_tag: str
    status: str = "ok"
    end_dose: float = math.nan


def recovered_fraction(pre, last, post, err_pre=0.0, err_last=0.0, err_post=0.0):
    """``f = (last - post) / (last - pre)`` and its propagated error (independent inputs).

    Examples
    --------
    >>> f, e = recovered_fraction(1.0, 3.0, 2.4)
    >>> round(float(f), 6), float(e)
    (0.3, 0.0)
    """
    pre, last, post = (np.asarray(v, dtype=np.float64) for v in (pre, last, post))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = last - pre
        f = (last - post) / d
        # df/dlast = (post - pre)/d^2, df/dpost = -1/d, df/dpre = (last - post)/d^2
        var = (((post - pre) / d ** 2) * err_last) ** 2 + (err_post / d) ** 2 \
            + (((last - post) / d ** 2) * err_pre) ** 2
    return f, np.sqrt(var)


def annealing(steps: list[StepCurrent], normal: np.ndarray, min_significance: float = 3.0
              ) -> Annealing:
    """Recovered fraction globally and per pixel (needs pre, a radiating step and post)."""
    pre = next((s for s in steps if s.stage == "pre"), None)
    post = next((s for s in steps if s.stage == "post"), None)
    rad = [s for s in steps if s.stage == "radiating"]
    shape = steps[0].current.shape
    nan = np.full(shape, np.nan, np.float32)
    if pre is None or post is None or not rad:
        missing = ", ".join(n for n, v in (("pre", pre), ("post", post), ("radiating", rad))
                            if not v)
        return Annealing(math.nan, math.nan, nan, nan.copy(), math.nan, "",
                         f"skipped: no {missing} measurement")
    last = max(rad, key=lambda s: s.framedose if math.isfinite(s.framedose) else s.dose)
    pts = dose_points(steps)
    gap = post.framedose - last.framedose
    ids = [id(p) for p in pts]
    if id(pre) in ids and id(last) in ids and math.isfinite(gap) and abs(gap) > 1e-6 \
            and len({round(p.framedose, 9) for p in pts}) >= 2:
        # the last step's darks received less than the final dose the post measurements carry
        # (the beam on while measuring: on a ramp, the mean of the step's frames): the
        # irradiated current is the last step's brought to the final dose along the damage
        # line, or f would compare damage at two doses (0.38 +- 0.006 for a true 0.30)
        x = np.array([p.framedose for p in pts])
        table = step_means(pts + [post], normal)
        y, e = table["DC_MEAN"].to_numpy(), table["DC_MEAN_ERR"].to_numpy()
        chi2 = fit_line(x, y[:-1], e[:-1]).chi2dof
        scale = math.sqrt(chi2) if math.isfinite(chi2) and chi2 > 1 else 1.0
        k_pre, k_last = ids.index(id(pre)), ids.index(id(last))
        f, f_err = _fraction_at(x, y[:-1], e[:-1] * scale, k_pre, k_last, gap, y[-1], e[-1])
        fmap, ferr, increase, increase_err = _fraction_at(
            x, np.stack([p.current for p in pts]), np.stack([p.error for p in pts]), k_pre,
            k_last, gap, post.current, post.error, with_increase=True)
        end = post.framedose
    else:
        table = step_means([pre, last, post], normal)
        m, e = table["DC_MEAN"].to_numpy(), table["DC_MEAN_ERR"].to_numpy()
        f, f_err = recovered_fraction(m[0], m[1], m[2], e[0], e[1], e[2])
        fmap, ferr = recovered_fraction(pre.current, last.current, post.current, pre.error,
                                        last.error, post.error)
        increase = last.current - pre.current
        increase_err = np.sqrt(pre.error ** 2 + last.error ** 2)
        end = last.framedose
    weak = ~(increase >= min_significance * increase_err)
    fmap = np.where(weak, np.nan, fmap).astype(np.float32)
    ferr = np.where(weak, np.nan, ferr).astype(np.float32)
    return Annealing(float(f), float(f_err), fmap, ferr, post.tanneal, last.tag,
                     end_dose=float(end))


def _fraction_at(x, y, s, k_pre, k_last, gap, post, s_post, with_increase=False):
    """Recovered fraction with the irradiated current ``y[k_last] + slope * gap`` (slope of
    the weighted line through the points ``(x, y +- s)``), its error propagated from every
    point's (first order; the points and ``post`` independent).  ``y``, ``s``: ``(K, ...)``.
    """
    x = np.asarray(x, float).reshape((-1,) + (1,) * (np.ndim(y) - 1))
    y, s = np.asarray(y, float), np.asarray(s, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = 1.0 / s ** 2
        xbar = np.sum(w * x, axis=0) / np.sum(w, axis=0)
        sxx = np.sum(w * (x - xbar) ** 2, axis=0)
        c = w * (x - xbar) / sxx                       # slope = sum_k c_k y_k
        end = y[k_last] + gap * np.sum(c * y, axis=0)
        d = end - y[k_pre]
        f = (end - post) / d
        d_end, d_pre, d_post = (post - y[k_pre]) / d ** 2, (end - post) / d ** 2, -1.0 / d
        grad = d_end * gap * c
        grad[k_last] = grad[k_last] + d_end
        grad[k_pre] = grad[k_pre] + d_pre
        var = np.sum((grad * s) ** 2, axis=0) + (d_post * s_post) ** 2
        if not with_increase:
            return f, np.sqrt(var)
        g_inc = gap * c
        g_inc[k_last] = g_inc[k_last] + 1.0
        g_inc[k_pre] = g_inc[k_pre] - 1.0
        return f, np.sqrt(var), d, np.sqrt(np.sum((g_inc * s) ** 2, axis=0))


# --- bias and read noise ----------------------------------------------------------------------

def level_trend(table: pd.DataFrame, value: str, error: str, what: str) -> Regression:
    """Weighted line of a per-step quantity vs the accumulated dose (pre and radiating rows)."""
    rows = table[table["STAGE"].isin(["pre", "radiating"])]
    return fit_line(rows["FRAMEDOSE"], rows[value], rows[error], what=what, xname="dose")


__all__ = ["DamageSettings", "StepCurrent", "HotPixels", "DamageSlope", "Annealing",
           "temperature_slope", "step_currents", "to_na_per_cm2", "relative_threshold",
           "find_hot_pixels", "dose_points", "normal_masks", "normal_pixels", "step_means",
           "damage_slope",
           "recovered_fraction", "annealing", "level_trend", "ELEMENTARY_CHARGE"]
