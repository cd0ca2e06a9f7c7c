"""Photon transfer (EMVA 1288): system gain, read noise, saturation onset, linearity error.

Two flat frames taken one after the other at the same temperature and exposure share
their fixed pattern (PRNU, vignetting, dark non-uniformity); their difference holds the
temporal noise only.  For a pair ``(a, b)`` of bias-subtracted frames over a region of
interest, :func:`pair_statistics` gives

* the mean signal ``mu = (mean(a) + mean(b)) / 2`` [adu];
* the temporal variance ``var = Var(a - r b) / (1 + r^2)`` [adu^2], with
  ``r = mean(a) / mean(b)`` matching the two levels first (a lamp that flickers by
  0.1 % would otherwise leave its PRNU-weighted pattern in the difference), and the
  variance sigma-clipped at ``clip`` robust sigma (cosmic rays, defects).

With the gain ``K`` [e-/ADC count] and the noise at zero signal ``s0^2`` (read noise,
quantisation), shot noise gives, in ADC counts, ``var = s0^2 + mu / K``.  The dark
signal need not be removed: it is in ``mu`` and its shot noise is in ``var``, on the
same line.  :func:`fit_photon_transfer` averages the pairs of each level (a set of one
temperature and exposure), finds the saturation onset ``mu_sat`` (EMVA 1288: the
level of largest variance, when the curve turns over), and fits ``var = s0^2 + mu / K``
by weighted least squares over the levels below ``fit_fraction`` x ``mu_sat`` without
saturated pixels.  A level's variance error is ``var sqrt(2 / (N - 1))`` for its N
pixel differences (Gaussian sample variance; pairs are independent); when the fit's
chi2/dof exceeds 1 the errors are scaled by its square root (never down).

Read noise: from bias pairs (``var`` at ``mu = 0``) when given, else from the
intercept; in electrons with the fitted gain.  Linearity error (EMVA 1288): the mean
signal vs exposure time at one temperature, fitted by a straight line over the levels
between 5 % and 95 % of ``mu_sat``; ``LE = (max(delta) - min(delta)) / 2`` with
``delta = 100 (mu - fit) / fit`` [%].

Units: inputs in stored ADU (products' unit); the fit is done in ADC counts
(``/ ADUSCALE``), so the gain is the datasheet number [e-/ADC count].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import adu
from ..stack.stats import MAD_TO_STD, exact_median
from .gain import Gain

#: Method string of a measured gain.
METHOD = "photon transfer (EMVA 1288)"


def pair_statistics(a: np.ndarray, b: np.ndarray, *, clip: float = 5.0,
                    valid: np.ndarray | None = None, match_levels: bool = True) -> dict:
    """Mean, level-matched temporal variance and pixels used of one pair (see module notes).

    Parameters
    ----------
    a, b : numpy.ndarray
        The two frames minus their bias, same region [adu]; NaN pixels are ignored.
    clip : float, optional
        Differences further than this many robust sigma from their median are dropped.
    valid : numpy.ndarray of bool, optional
        Pixels that may be used (e.g. not saturated in either frame).
    match_levels : bool, optional
        Scale ``b`` to the mean of ``a`` before differencing (flats); False for frames
        without signal (bias pairs), whose means are near 0.

    Returns
    -------
    dict
        ``MEAN`` [adu], ``VAR`` [adu^2], ``VAR_ERR`` [adu^2, from the differences' fourth
        moment], ``NPIX``, ``RATIO`` (mean(a) / mean(b)),
        ``NCLIP`` (differences dropped).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> s = pair_statistics(100 + rng.normal(0, 3, 40000), 100 + rng.normal(0, 3, 40000))
    >>> round(s["MEAN"]), round(s["VAR"])
    (100, 9)
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    if valid is not None:
        ok &= np.asarray(valid, bool).ravel()
    if not ok.all():  # (a copy of every value is the same numbers: none made then)
        a, b = a[ok], b[ok]
    if a.size < 10:
        return {"MEAN": math.nan, "VAR": math.nan, "NPIX": int(a.size), "RATIO": math.nan,
                "NCLIP": 0}
    ma, mb = float(a.mean()), float(b.mean())
    ratio = ma / mb if match_levels and mb != 0 else 1.0
    d = a - ratio * b
    # robust starting centre and scale from at most ~2e5 differences (a regular subsample):
    # they only place the first cut, the variance itself uses every difference kept
    sample = d[::max(1, d.size // 200000)]
    centre = exact_median(sample)
    spread = MAD_TO_STD * exact_median(np.abs(sample - centre))
    keep = np.abs(d - centre) <= clip * spread if spread > 0 else np.ones(d.size, bool)
    # the kept differences, once per cut (``d`` itself when none is cut: the same numbers
    # in the same order, so the same sums)
    dk = d if keep.all() else d[keep]
    for _ in range(3):  # the mean of the kept differences, not the median, centres the cut
        centre = float(dk.mean())
        new = np.abs(d - centre) <= clip * float(dk.std()) if spread > 0 else keep
        if np.array_equal(new, keep):
            break
        keep = new
        dk = d if keep.all() else d[keep]
    var = float(dk.var(ddof=1)) / (1.0 + ratio * ratio)
    # its error given the region's pixels, each with its own noise s_p (noisy pixels, x 4
    # in 1 %): Var(mean d^2) = 2 mean(s_p^4) / N, and E d^4 = 3 s_p^4 for a Gaussian d; the
    # Gaussian var sqrt(2 / (N - 1)) assumes one s for all and was too small for the bias
    # pairs' rms over such a population (pulls std 1.53 over 100 sensors, 1.05 now; the
    # spatial scatter of d^2 would count the spread of s_p^2 too, which is not noise)
    c4 = float(np.mean((dk - dk.mean()) ** 4))
    var_err = math.sqrt(2.0 / 3.0 * c4 / dk.size) / (1.0 + ratio * ratio)
    if dk is d:  # nothing clipped: the means of every value, already taken
        return {"MEAN": 0.5 * (ma + mb), "VAR": var, "VAR_ERR": var_err, "NPIX": int(d.size),
                "RATIO": ratio, "NCLIP": 0}
    return {"MEAN": 0.5 * (float(a[keep].mean()) + float(b[keep].mean())), "VAR": var,
            "VAR_ERR": var_err, "NPIX": int(keep.sum()), "RATIO": ratio,
            "NCLIP": int((~keep).sum())}


@dataclass
class PhotonTransfer:
    """Photon-transfer result (see module notes).

    Attributes
    ----------
    levels : pandas.DataFrame
        One row per level: ``TBIN`` [degC], ``EXPTIME`` [s], ``NPAIRS``, ``NPIX``,
        ``MEAN`` [adu], ``VAR`` [adu^2], ``VAR_ERR`` [adu^2] (as weighted, before any
        chi-square scaling), ``SATFRACTION``, ``USED`` (in the gain fit), ``MODEL``
        [adu^2] and ``PULL``.
    gain, gain_err : float
        [e-/ADC count] system gain K and its error (NaN when not measurable).
    intercept, intercept_err : float
        [adu^2] variance at zero signal ``s0^2`` (stored ADU).
    chi2dof : float
        Reduced chi-square of the fit (NaN with two levels).
    err_scale : float
        Factor applied to the level errors (``max(1, sqrt(chi2dof))``).
    saturation_adu : float
        [adu] mean signal of largest variance (NaN when the curve does not turn over).
    saturation_next_adu : float
        [adu] mean signal of the lowest level above it with saturated pixels: with levels
        far apart, saturation sets in between the two (NaN when there is none).
    read_noise_adu, read_noise_adu_err : float
        [adu] temporal noise at zero signal: from bias pairs when given, else
        ``sqrt(intercept)``.
    read_noise_source : str
        ``"bias pairs"`` or ``"intercept"``.
    linearity_error : float
        [%] EMVA 1288 linearity error (NaN with fewer than three levels in range).
    linearity_error_err : float
        [%] its standard error from the scatter of the levels about the line: the
        deviations of a linear sensor are noise of rms ``s``, and half the spread of the
        largest and smallest of them has an error of about ``s / sqrt(2)``.
    linearity : pandas.DataFrame
        ``TBIN, EXPTIME, MEAN, FIT, DEVIATION`` [%] of the levels used for it.
    adc_bits : int
        Converter bits.
    note : str
        Why the gain could not be measured, when it could not.
    """

    levels: pd.DataFrame
    gain: float = math.nan
    gain_err: float = math.nan
    intercept: float = math.nan
    intercept_err: float = math.nan
    chi2dof: float = math.nan
    err_scale: float = 1.0
    saturation_adu: float = math.nan
    saturation_next_adu: float = math.nan
    read_noise_adu: float = math.nan
    read_noise_adu_err: float = math.nan
    read_noise_source: str = ""
    linearity_error: float = math.nan
    linearity_error_err: float = math.nan
    linearity: pd.DataFrame = field(default_factory=pd.DataFrame)
    adc_bits: int = adu.DEFAULT_ADC_BITS
    note: str = ""

    @property
    def measured(self) -> bool:
        """Whether a gain was measured."""
        return math.isfinite(self.gain)

    @property
    def scale(self) -> int:
        """Stored ADU per ADC count."""
        return adu.adu_scale(self.adc_bits)

    @property
    def read_noise_e(self) -> float:
        """[e-] read noise with the measured gain."""
        return self.read_noise_adu / self.scale * self.gain

    @property
    def read_noise_e_err(self) -> float:
        """[e-] its one-sigma error (read-noise and gain errors in quadrature)."""
        if not (self.measured and self.read_noise_adu > 0):
            return math.nan
        rel = math.hypot(self.read_noise_adu_err / self.read_noise_adu, self.gain_err / self.gain)
        return abs(self.read_noise_e) * rel

    @property
    def saturation_err(self) -> float:
        """[adu] error of :attr:`saturation_adu`: the onset lies between the last unsaturated
        level and the next one, uniformly as far as the data tell (``gap / sqrt(12)``)."""
        if math.isfinite(self.saturation_adu) and math.isfinite(self.saturation_next_adu):
            return (self.saturation_next_adu - self.saturation_adu) / math.sqrt(12)
        return math.nan

    @property
    def saturation_e(self) -> float:
        """[e-] saturation capacity ``mu_sat K`` (NaN when not reached)."""
        return self.saturation_adu / self.scale * self.gain

    def summary(self) -> dict:
        """Headline numbers, JSON-ready (NaN as None)."""
        def clean(v):
            return None if isinstance(v, float) and not math.isfinite(v) else v
        out = {"gain_e_per_adc": self.gain, "gain_err_e_per_adc": self.gain_err,
               "intercept_adu2": self.intercept, "intercept_err_adu2": self.intercept_err,
               "chi2dof": self.chi2dof,
               "err_scale": self.err_scale, "read_noise_adu": self.read_noise_adu,
               "read_noise_adu_err": self.read_noise_adu_err,
               "read_noise_source": self.read_noise_source, "read_noise_e": self.read_noise_e,
               "read_noise_e_err": self.read_noise_e_err,
               "saturation_onset_adu": self.saturation_adu,
               "saturation_onset_err_adu": self.saturation_err,
               "saturation_onset_e": self.saturation_e,
               "saturation_next_level_adu": self.saturation_next_adu,
               "linearity_error_percent": self.linearity_error,
               "linearity_error_err_percent": self.linearity_error_err,
               "levels": int(len(self.levels)),
               "levels_fitted": int(self.levels["USED"].sum()) if len(self.levels) else 0,
               "note": self.note}
        return {k: clean(float(v)) if isinstance(v, (float, np.floating)) else v
                for k, v in out.items()}

    def to_gain(self, source: str) -> Gain:
        """The measured gain as a :class:`utils.models.gain.Gain` (needs :attr:`measured`)."""
        extra = {k: v for k, v in self.summary().items()
                 if k not in ("gain_e_per_adc", "gain_err_e_per_adc")}
        return Gain(gain=float(self.gain), gain_err=float(self.gain_err), adc_bits=self.adc_bits,
                    method=METHOD, source=str(source),
                    read_noise_e=float(self.read_noise_e), extra=extra)


def _weighted_line(x, y, err):
    """Weighted straight line ``y = a + b x``: (a, b, cov, chi2)."""
    w = 1.0 / err ** 2
    s0, s1, s2 = w.sum(), (w * x).sum(), (w * x * x).sum()
    sy, sxy = (w * y).sum(), (w * x * y).sum()
    det = s0 * s2 - s1 * s1
    b = (s0 * sxy - s1 * sy) / det
    a = (s2 * sy - s1 * sxy) / det
    cov = np.array([[s2, -s1], [-s1, s0]]) / det
    chi2 = float((w * (y - a - b * x) ** 2).sum())
    return a, b, cov, chi2


def level_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Average the pairs of each level (``TBIN, EXPTIME``).

    Parameters
    ----------
    pairs : pandas.DataFrame
        One row per pair: ``TBIN, EXPTIME, MEAN, VAR, NPIX, SATFRACTION``.
    """
    rows = []
    good = pairs[np.isfinite(pairs["VAR"]) & (pairs["NPIX"] > 10)]
    for (tbin, exptime), part in good.groupby(["TBIN", "EXPTIME"], sort=True):
        npix = part["NPIX"].to_numpy(float)
        var = float(np.average(part["VAR"], weights=npix - 1))
        rows.append({"TBIN": float(tbin), "EXPTIME": float(exptime), "NPAIRS": int(len(part)),
                     "NPIX": int(npix.sum()), "MEAN": float(np.average(part["MEAN"],
                                                                        weights=npix)),
                     "VAR": var, "VAR_ERR": var * math.sqrt(2.0 / max(npix.sum() - 1, 1)),
                     "SATFRACTION": float(part["SATFRACTION"].max())})
    return pd.DataFrame(rows, columns=["TBIN", "EXPTIME", "NPAIRS", "NPIX", "MEAN", "VAR",
                                       "VAR_ERR", "SATFRACTION"])


def fit_photon_transfer(pairs: pd.DataFrame, *, adc_bits: int = adu.DEFAULT_ADC_BITS,
                        bias_pairs: pd.DataFrame | None = None, fit_fraction: float = 0.7,
                        max_sat_fraction: float = 1e-3) -> PhotonTransfer:
    """Fit the photon-transfer curve (see module notes).

    Parameters
    ----------
    pairs : pandas.DataFrame
        Flat pairs: ``TBIN`` [degC], ``EXPTIME`` [s], ``MEAN`` [adu], ``VAR`` [adu^2],
        ``NPIX``, ``SATFRACTION`` (largest fraction of saturated pixels of the two frames).
    adc_bits : int, optional
        Converter bits (the fit is in ADC counts).
    bias_pairs : pandas.DataFrame, optional
        Bias pairs (``VAR``, ``NPIX``) for the read noise.
    fit_fraction : float, optional
        Levels above this fraction of the saturation onset are left out of the fit.
    max_sat_fraction : float, optional
        Levels with more saturated pixels than this are left out of the fit.

    Returns
    -------
    PhotonTransfer
        ``note`` says why the gain is NaN when fewer than two levels can be fitted.
    """
    scale = adu.adu_scale(adc_bits)
    levels = level_table(pairs)
    result = PhotonTransfer(levels=levels.assign(USED=False, MODEL=math.nan, PULL=math.nan),
                            adc_bits=adc_bits)
    if bias_pairs is not None and len(bias_pairs):
        npix = bias_pairs["NPIX"].to_numpy(float)
        weights = npix - 1
        var0 = float(np.average(bias_pairs["VAR"], weights=weights))
        if "VAR_ERR" in bias_pairs and np.all(np.isfinite(bias_pairs["VAR_ERR"])):
            # the pairs' own errors (heavy-tailed pixel populations, see pair_statistics)
            var0_err = float(np.sqrt(np.sum((weights * bias_pairs["VAR_ERR"]) ** 2))
                             / weights.sum())
        else:
            var0_err = var0 * math.sqrt(2.0 / max(npix.sum() - 1, 1))
        result.read_noise_adu = math.sqrt(var0)
        result.read_noise_adu_err = var0_err / (2 * math.sqrt(var0))
        result.read_noise_source = "bias pairs"
    if levels.empty:
        result.note = "no flat pair: the photon-transfer gain needs two frames per level"
        return result
    mean, var = levels["MEAN"].to_numpy(float), levels["VAR"].to_numpy(float)
    order = np.argsort(mean)
    top = int(order[np.argmax(var[order])])
    if top != order[-1]:  # the curve turns over: saturation onset at its largest variance
        result.saturation_adu = float(mean[top])
        above = (mean > mean[top]) & (levels["SATFRACTION"].to_numpy(float) > 0)
        if above.any():
            result.saturation_next_adu = float(mean[above].min())
    limit = fit_fraction * result.saturation_adu if math.isfinite(result.saturation_adu) \
        else math.inf
    used = (mean <= limit) & (levels["SATFRACTION"].to_numpy(float) <= max_sat_fraction) \
        & (mean > 0)
    levels["USED"] = used
    result.levels = levels.assign(MODEL=math.nan, PULL=math.nan)
    if np.unique(np.round(mean[used], 6)).size < 2:
        result.note = (f"{int(used.sum())} flat level(s) below saturation: the photon-transfer "
                       "gain needs at least two")
        _linearity(result)
        return result
    x, y = mean[used] / scale, var[used] / scale ** 2
    err = levels["VAR_ERR"].to_numpy(float)[used] / scale ** 2
    a, b, cov, chi2 = _weighted_line(x, y, err)
    dof = int(used.sum()) - 2
    result.chi2dof = chi2 / dof if dof > 0 else math.nan
    result.err_scale = max(1.0, math.sqrt(result.chi2dof)) if dof > 0 else 1.0
    cov = cov * result.err_scale ** 2
    if not b > 0:
        result.note = "the photon-transfer slope is not positive: no gain"
        return result
    result.gain = 1.0 / b
    result.gain_err = math.sqrt(cov[1, 1]) / b ** 2
    result.intercept = a * scale ** 2
    result.intercept_err = math.sqrt(cov[0, 0]) * scale ** 2
    model = (a + b * mean / scale) * scale ** 2
    err_all = levels["VAR_ERR"].to_numpy(float) * result.err_scale
    with np.errstate(divide="ignore", invalid="ignore"):
        pull = np.where(err_all > 0, (var - model) / err_all, np.nan)
    result.levels = levels.assign(MODEL=model, PULL=pull)
    if not result.read_noise_source and a > 0:
        result.read_noise_adu = math.sqrt(a) * scale
        result.read_noise_adu_err = math.sqrt(cov[0, 0]) / (2 * math.sqrt(a)) * scale
        result.read_noise_source = "intercept"
    _linearity(result)
    return result


def _linearity(result: PhotonTransfer) -> None:
    """EMVA linearity error of the temperature with most levels (see module notes)."""
    levels = result.levels
    if levels.empty:
        return
    tbin = levels.groupby("TBIN").size().idxmax()
    part = levels[levels["TBIN"] == tbin].sort_values("EXPTIME")
    sat = result.saturation_adu
    if math.isfinite(sat):
        part = part[(part["MEAN"] >= 0.05 * sat) & (part["MEAN"] <= 0.95 * sat)]
    else:
        part = part[part["SATFRACTION"] <= 0]
    if len(part) < 3:
        return
    x, y = part["EXPTIME"].to_numpy(float), part["MEAN"].to_numpy(float)
    slope, icept = np.polyfit(x, y, 1)
    fit = icept + slope * x
    dev = 100.0 * (y - fit) / fit
    result.linearity_error = float((dev.max() - dev.min()) / 2)
    if len(dev) > 2:
        rms = float(np.sqrt(np.sum(dev ** 2) / (len(dev) - 2)))
        result.linearity_error_err = rms / math.sqrt(2)
    result.linearity = pd.DataFrame({"TBIN": part["TBIN"].to_numpy(float), "EXPTIME": x,
                                     "MEAN": y, "FIT": fit, "DEVIATION": dev})


__all__ = ["PhotonTransfer", "pair_statistics", "level_table", "fit_photon_transfer", "METHOD"]
