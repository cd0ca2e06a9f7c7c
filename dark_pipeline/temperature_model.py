"""Per-pixel dark-current model in temperature (1-D), and the helpers it shares with the 2-D
model (:mod:`dark_pipeline.model_2d`).

1-D: ``DC(T) = A exp(B (T - TREF))`` [adu/s], fitted to the rate maps of every
temperature bin (:mod:`dark_pipeline.rates`) by weighted nonlinear least
squares, vectorised over pixels (:func:`utils.models.nonlinear.fit_exponential_per_pixel`).
No logarithm of a measured value is taken, so quiet pixels with rates near
zero or negative are fitted as they are.  Every pixel with a positive rate at
two temperatures is fitted on its own (:data:`START_SNR`): choosing the pixels
by their measured signal-to-noise (rate/error >= 3 at two temperatures, as
before) selects them by their noise -- the faint pixels so chosen had their
low-temperature rates lifted, hence B 7 % low and A at TREF 7 % high, the rest
the opposite, and A over all pixels came out 3 % high at 0.5 e-/s (mean pull
+0.05 to +0.10 over 4 seeds, DSNU 3-4 sigma low).  The pixels left (no two
positive rates, or no converged fit: ~4 % at 0.5 e-/s) take the population B
with their own A and are flagged (``FALLBACK``).  The population B (and gamma) is the joint fit of
every pixel with its own amplitude (:mod:`utils.models.population`), not the
median of the individually fitted pixels, which is biased at low signal (they
were selected by their noise; the median is only reported).  Derived maps: doubling temperature
``T_d = ln 2 / B`` [degC] and activation energy ``E_a = k_B B T_K^2`` [eV]
(the Arrhenius law ``exp(-E_a / (k_B T_K))`` has this local slope at
``T_K = TREF + 273.15`` K).

2-D: ``S(T, t) = A t^gamma exp(B (T - TREF))`` [adu], in :mod:`dark_pipeline.model_2d`.

Both fits' errors are calibrated like the bias model's: one frame-wide factor
``ERRSCALE`` = sqrt(median reduced chi-square of the well-measured pixels /
its expected median) multiplies the weight-based errors, so residual
underestimates of the masters' noise do not pass into the model errors.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from utils import adu
from utils import headers as kw
from utils.errors import UserError
from utils.io.fitsio import provenance_cards, set_card, write_product
from utils.io.tokens import number_text, value_error_text
from utils.models.dark_model import read_exponential_fit
from utils.models.nonlinear import (
    ExponentialFit,
    fit_exponential_per_pixel,
)
from utils.models.pixel_tiles import PixelTiles, flat_cov
from utils.stack.stats import (
    chi2_median_ratio,
    exact_median,
    median_with_error,
    spread_with_error,
)
from utils.stack.tiles import PIXEL_BLOCK, row_tiles

from .rates import rate_rows

logger = logging.getLogger(__name__)

#: Boltzmann constant [eV/K].
K_BOLTZMANN_EV = 8.617333262e-5
#: 0 degC in kelvin.
ZERO_CELSIUS_K = 273.15

#: MASK bits of the model products.
MASK_FALLBACK = 1   # population B (and gamma) used: too little signal for the pixel's own
MASK_HOT = 2        # hot pixel (see dark_pipeline.hot_pixels)
MASK_NOFIT = 4      # no usable point at all


def _err_scale(chi2: np.ndarray, npoints: np.ndarray, fallback: np.ndarray, nparams: int) -> float:
    """sqrt(median reduced chi-square / its expected median) over well-measured pixels."""
    dof = npoints.astype(np.int32)  # small counts: no int64 full-frame copies
    dof -= nparams
    good = ~fallback & np.isfinite(chi2) & (dof > 0)
    if good.sum() < 10:
        return 1.0
    common = int(exact_median(dof[good]))
    sel = good & (dof == common)
    return math.sqrt(exact_median(chi2[sel]) / chi2_median_ratio(common))


def _scale_in_place(fit, s: float, error_fields: tuple[str, ...]) -> None:
    """Errors times ``s``, covariance times ``s^2``, chi2 over ``s^2``, in the fit's own
    (float32) maps: no copies of the full-frame maps."""
    with np.errstate(invalid="ignore", over="ignore"):  # NaN / inf maps of unfitted pixels
        for name in error_fields:
            getattr(fit, name)[...] *= np.float32(s)
        fit.covariance[...] *= np.float32(s * s)
        fit.chi2[...] /= np.float32(s * s)


def _mask(fit, hot: np.ndarray | None) -> np.ndarray:
    mask = np.zeros(fit.amplitude.shape, np.uint8)
    mask[fit.fallback] |= MASK_FALLBACK
    mask[~np.isfinite(fit.amplitude)] |= MASK_NOFIT
    if hot is not None:
        mask[hot] |= MASK_HOT
    return mask


def _header(product: str, model: str, t_ref: float, err_scale: float, adc_bits: int,
            cards: list) -> fits.Header:
    header = fits.Header()
    for key, value, comment in provenance_cards(product):
        set_card(header, key, value, comment)
    set_card(header, "MODEL", model, "per pixel, weighted nonlinear least squares")
    set_card(header, kw.TREF, float(t_ref), "[degC] reference temperature")
    set_card(header, kw.ERRSCALE, float(err_scale), "weight-based errors multiplied by this")
    for key, value, comment in cards:
        set_card(header, key, value if np.isfinite(value) else "NAN", comment)
    set_card(header, "MASKBITS", "1 population B, 2 hot, 4 no fit", "MASK bit meanings")
    for key, value, comment in adu.scaling_cards(adc_bits):
        set_card(header, key, value, comment)
    return header


# --- 1-D ----------------------------------------------------------------------------------------

@dataclass
class DarkModel1D:
    """Per-pixel ``DC(T) = A exp(B (T - t_ref))`` [adu/s] with calibrated errors.

    Attributes
    ----------
    fit : ExponentialFit
        Maps of A [adu/s], B [1/degC], their errors and covariance (scaled).
    err_scale : float
        Factor applied to the weight-based errors.
    hot : numpy.ndarray or None
        Hot-pixel mask, once found.
    inputs : pandas.DataFrame
        Rate maps fitted: ``TBIN, TAVG, RATEMETH``.
    adc_bits : int
        Converter bits of the data.
    common : CommonLawAmplitude or None
        A of every pixel at the population B (set by :func:`fit_temperature_model`, not
        written: the population statistics of :meth:`rate_statistics` come from it).
    """

    fit: ExponentialFit
    err_scale: float = 1.0
    hot: np.ndarray | None = None
    inputs: pd.DataFrame = field(default_factory=pd.DataFrame)
    adc_bits: int = adu.DEFAULT_ADC_BITS
    common: CommonLawAmplitude | None = None
    #: the A/B errors hold the subtracted bias's error shared between the rate maps
    #: (:func:`fit_temperature_model`'s ``shared_errors``; sandwich covariance)
    shared_errors: bool = False

    @property
    def t_ref(self) -> float:
        """[degC] reference temperature of A."""
        return self.fit.x_ref

    def rate(self, temperature: float) -> np.ndarray:
        """Dark rate [adu/s] at ``temperature`` [degC]."""
        return self.fit.predict(temperature)

    def rate_err(self, temperature: float) -> np.ndarray:
        """One-sigma error of :meth:`rate` [adu/s]."""
        return self.fit.predict_err(temperature)

    def doubling_temperature(self) -> np.ndarray:
        """``ln 2 / B`` [degC] (inf where B <= 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.fit.rate > 0, math.log(2) / self.fit.rate, np.inf
                            ).astype(np.float32)

    def activation_energy(self) -> np.ndarray:
        """``k_B B T_K^2`` at the reference temperature [eV]."""
        t_k = self.t_ref + ZERO_CELSIUS_K
        return (K_BOLTZMANN_EV * self.fit.rate * t_k * t_k).astype(np.float32)

    def mask(self) -> np.ndarray:
        """uint8 bits :data:`MASK_FALLBACK`, :data:`MASK_HOT`, :data:`MASK_NOFIT`."""
        return _mask(self.fit, self.hot)

    def rate_statistics(self, pixels: np.ndarray) -> dict:
        """The typical pixel's rate at TREF and the DSNU over ``pixels`` (bool map) [adu/s].

        From A at the population B (:attr:`common`; the pixels' own A without it): the
        median over pixels with its standard error and the spatial standard deviation
        with the fit errors removed (EMVA 1288's DSNU, :func:`~utils.stack.stats.
        spread_with_error`), each error with the population B's error added (it moves
        every pixel's A together); ``p95`` the 95th percentile.
        """
        if self.common is None:
            a = self.fit.amplitude[pixels]
            err = self.fit.amplitude_err[pixels] * self.err_scale
            slope = np.zeros(a.shape)
        else:
            a, err = self.common.amplitude[pixels], self.common.amplitude_err[pixels]
            slope = self.common.slope[pixels]
        ok = np.isfinite(a) & np.isfinite(err) & np.isfinite(slope)
        a, err, slope = (v[ok].astype(np.float64) for v in (a, err, slope))
        median, median_err = median_with_error(a)
        dsnu, dsnu_err = spread_with_error(a, err)
        # the population B's error: every A moves by slope * dB at once
        db = float(self.fit.population_rate_err)
        if self.common is not None and math.isfinite(db) and db > 0:
            shifted = []  # (median, DSNU) of A at B + dB and B - dB, one map at a time
            for sign in (1.0, -1.0):
                moved = a + sign * (slope * db)
                shifted.append((exact_median(moved), spread_with_error(moved, err)[0]))
                del moved
            (m_up, d_up), (m_down, d_down) = shifted
            median_err = math.hypot(median_err, 0.5 * abs(m_up - m_down))
            dsnu_err = math.hypot(dsnu_err, 0.5 * abs(d_up - d_down))
        return {"median": median, "median_err": median_err, "dsnu": dsnu, "dsnu_err": dsnu_err,
                "p95": float(np.percentile(a, 95)) if a.size else math.nan}

    def headline(self) -> dict:
        """Population B (joint fit of every pixel, unbiased at low signal), T_d and E_a with
        their errors; the median B of the individually fitted, not-hot pixels (selected by
        signal, hence biased at low signal); counts."""
        good = ~self.fit.fallback & np.isfinite(self.fit.rate)
        if self.hot is not None:
            good &= ~self.hot
        med = exact_median(self.fit.rate[good]) if good.any() else math.nan
        b, b_err = float(self.fit.population_rate), float(self.fit.population_rate_err)
        t_k = self.t_ref + ZERO_CELSIUS_K
        return {"b_population_per_degC": b, "b_population_err_per_degC": b_err,
                "b_median_per_degC": med,
                "doubling_temperature_degC": math.log(2) / b if b > 0 else math.nan,
                "doubling_temperature_err_degC": math.log(2) * b_err / b ** 2 if b > 0
                else math.nan,
                "activation_energy_eV": K_BOLTZMANN_EV * b * t_k * t_k,
                "activation_energy_err_eV": K_BOLTZMANN_EV * b_err * t_k * t_k,
                "well_measured_pixels": int(good.sum()),
                "fallback_pixels": int(self.fit.fallback.sum())}

    def write(self, path: Path) -> Path:
        """``dark_model.fits``: A (primary, UNCERT, MASK) and B, SIGMA_A, SIGMA_B, COV_AB,
        CHI2DOF, NPTS, FALLBACK, TDOUBLE, EA, HOT; with the common law, A_POP and SIGMA_A_POP
        (A at the population B: what the summary's typical pixel, DSNU and p95 are of)."""
        f = self.fit
        head = self.headline()
        header = _header("DARK_MODEL_1D", "DC = A exp(B (T - TREF))", self.t_ref,
                         self.err_scale, self.adc_bits, [
                             ("BMEDIAN", head["b_median_per_degC"],
                              "[1/degC] median B of the fitted pixels"),
                             ("TDPOP", head["doubling_temperature_degC"], "[degC] ln 2 / POPB"),
                             ("TDPOPERR", head["doubling_temperature_err_degC"],
                              "[degC] error of TDPOP"),
                             ("EAPOP", head["activation_energy_eV"], "[eV] k_B POPB T_K^2"),
                             ("POPB", f.population_rate, "[1/degC] population B (joint fit), "
                                                         "also of fallback pixels"),
                             ("POPBERR", f.population_rate_err, "[1/degC] error of POPB"),
                             ("NFALLBCK", float(f.fallback.sum()), "pixels with population B"),
                             ("NHOT", float(self.hot.sum()) if self.hot is not None else 0.0,
                              "hot pixels")])
        if self.shared_errors:
            set_card(header, kw.ERRSHARE, True,
                     "SIGMA_A/B, COV_AB, SIGMA_A_POP: sandwich with shared bias err")
        images = {"B": (f.rate, "1 / deg_C"), "SIGMA_A": (f.amplitude_err, adu.RATE_UNIT),
                  "SIGMA_B": (f.rate_err, "1 / deg_C"),
                  "COV_AB": (f.covariance, f"{adu.RATE_UNIT} / deg_C"),
                  "CHI2DOF": (f.chi2, ""), "NPTS": (f.npoints.astype(np.int16), ""),
                  "FALLBACK": (f.fallback.astype(np.uint8), ""),
                  "TDOUBLE": (self.doubling_temperature(), "deg_C"),
                  "EA": (self.activation_energy(), "eV"),
                  "HOT": ((self.hot if self.hot is not None
                           else np.zeros(f.rate.shape, bool)).astype(np.uint8), "")}
        if self.common is not None:
            images["A_POP"] = (self.common.amplitude, adu.RATE_UNIT)
            images["SIGMA_A_POP"] = (self.common.amplitude_err, adu.RATE_UNIT)
        return write_product(path, f.amplitude, header, unit=adu.RATE_UNIT,
                             uncertainty=f.amplitude_err, mask=self.mask(), images=images,
                             tables={"INPUTS": self.inputs} if len(self.inputs.columns) else None)

    @classmethod
    def read(cls, path: Path) -> DarkModel1D:
        """Load :meth:`write`'s product (:func:`utils.models.dark_model.read_exponential_fit`)."""
        fit, head, maps = read_exponential_fit(path)
        return cls(fit, kw.get_float(head, kw.ERRSCALE, 1.0), maps["HOT"] != 0, maps["INPUTS"],
                   int(kw.get_float(head, kw.ADCBITS, adu.DEFAULT_ADC_BITS)))


@dataclass
class CommonLawAmplitude:
    """A [adu/s] of every pixel fitted linearly at the population B (one law for all).

    The population statistics (typical pixel, DSNU) come from these rather than from the
    pixels' own fits: linear in the rates, they carry no nonlinear small-sample bias, and
    their errors do not depend on a noisy B of the pixel (the own fits' errors do, which
    inflated the noise removed from the DSNU: 8 sigma low at 1-2 s x 5 e-/s).

    Attributes
    ----------
    amplitude, amplitude_err : numpy.ndarray
        A = sum(w y f) / sum(w f^2), f = exp(B (T - TREF)), and its error
        1 / sqrt(sum(w f^2)) times ERRSCALE [adu/s]; NaN without a usable rate.
    slope : numpy.ndarray
        dA/dB [adu/s per 1/degC]: how A moves with the population B.
    """

    amplitude: np.ndarray
    amplitude_err: np.ndarray
    slope: np.ndarray


def common_law_amplitude(temps: np.ndarray, y: np.ndarray | None, s: np.ndarray | None,
                         rate: float, t_ref: float, err_scale: float = 1.0,
                         block_rows: int = 32, *, point_scale: np.ndarray | None = None,
                         points: RatePoints | None = None, shared=None) -> CommonLawAmplitude:
    """A of every pixel at the fixed rate B (see :class:`CommonLawAmplitude`).

    Parameters
    ----------
    temps : numpy.ndarray, shape (K,)
        [degC] temperature of each rate map.
    y, s : numpy.ndarray, shape (K, H, W)
        Rates and their errors [adu/s]; non-finite or non-positive errors drop the point.
    rate : float
        [1/degC] the population B.
    t_ref : float
        [degC] reference temperature of A.
    err_scale : float
        Factor applied to the weight-based errors.
    block_rows : int
        Rows summed at a time (float64 work arrays of a block only, not of the frame).
    point_scale : numpy.ndarray, shape (K,), optional
        Factor on the errors of each rate map (applied block by block: no scaled copy of
        the whole error stack).
    points : RatePoints, optional
        The rates and errors read by blocks of rows from here instead (``y``, ``s`` None).
    shared : tuple (V, cov), optional
        An error the rate maps share, ``V C V^T`` (V ``(K, D)`` on the errors as scaled,
        ``cov(r0, r1)`` rows of C ``(D, D, rows, W)``): the error of A is then the sandwich
        (:func:`shared_error_covariance_1d`), not ``1 / sqrt(sum(w f^2))``.
    """
    points = RatePoints(y, s) if points is None else points
    shape = points.shape[1:]
    k_scale = np.ones(len(temps)) if point_scale is None else np.asarray(point_scale, float)
    out = CommonLawAmplitude(*(np.empty(shape, np.float32) for _ in range(3)))
    x = np.asarray(temps, dtype=np.float64) - t_ref
    f = np.exp(rate * x)
    for r0 in range(0, shape[0], block_rows):
        rows = slice(r0, min(r0 + block_rows, shape[0]))
        y_rows, s_rows = points.read(rows.start, rows.stop)
        yk = y_rows.astype(np.float64)
        sk = s_rows.astype(np.float64) * k_scale.reshape((-1,) + (1,) * (y_rows.ndim - 1))
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(np.isfinite(yk) & np.isfinite(sk) & (sk > 0), 1.0 / (sk * sk), 0.0)
        wy = w * np.where(w > 0, yk, 0.0)
        fk = f.reshape((-1,) + (1,) * (y_rows.ndim - 1))
        xk = x.reshape(fk.shape)
        sw_ff, sw_yf = (w * fk * fk).sum(0), (wy * fk).sum(0)
        sw_xff, sw_xyf = (w * xk * fk * fk).sum(0), (wy * xk * fk).sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            a = sw_yf / sw_ff
            out.amplitude[rows] = a
            if shared is None:
                out.amplitude_err[rows] = err_scale / np.sqrt(sw_ff)
            else:
                g = shared_gain_1d(a, np.full(a.shape, float(rate)), np.zeros(a.shape, bool),
                                   x, sk, w > 0)
                extra = shared_error_covariance_1d(g[:1], shared[0],
                                                   shared[1](rows.start, rows.stop))[0, 0]
                out.amplitude_err[rows] = err_scale * np.sqrt(np.maximum(1.0 / sw_ff + extra,
                                                                         0.0))
            # d/dB of sum(w y f) / sum(w f^2), with df/dB = x f
            out.slope[rows] = (sw_xyf - 2.0 * a * sw_xff) / sw_ff
    return out


#: Signal-to-noise a rate needs to count in the per-pixel fit's log-linear start and in its
#: choice of the pixels fitted on their own: any positive rate.  A threshold of a few sigma
#: selects the faint pixels by their noise (see the module notes); the fit's own test (the
#: converged model reaches one sigma at two temperatures) still leaves out pure noise.
START_SNR = 1e-3

#: Temperature bins from which each bin's rate errors are calibrated on its own (with fewer,
#: the residual of one bin is too tied to the others': one frame-wide factor only).
MIN_POINTS_PER_T_SCALE = 5
#: Largest leverage of a pixel's point that still calibrates that point's errors: a point the
#: pixel's fit nearly passes through (the brightest of a steep law with few exposures, where
#: h reaches 0.97) has a residual that says almost nothing about its error, and dividing by
#: a floored 1 - h made the warmest bin's factor 0.47 (its weight x4.5, T_d 4 sigma off).
MAX_SCALE_LEVERAGE = 0.9
#: Share of the fitted pixels that must be below that leverage for the point to be calibrated
#: at all (else its factor stays 1): the few left where nearly every fit passes through the
#: point are a tail, not the population.
MIN_SCALE_SHARE = 0.5


def _point_scales(fit: ExponentialFit, temps: np.ndarray, points: RatePoints,
                  t_ref: float, point_scale: np.ndarray | None = None,
                  block: int = 1 << 18) -> np.ndarray:
    """Factor per point (temperature) by which its errors are too small: sqrt(median of
    r^2 / (sigma^2 (1 - h)) over the individually fitted pixels / median of chi2(1)),
    with r the residual and h the point's leverage in the pixel's fit (pixels where
    h >= :data:`MAX_SCALE_LEVERAGE` left out; 1 when fewer than 50, or than
    :data:`MIN_SCALE_SHARE` of the fitted pixels, are left).  The errors are
    the ``points``' errors times ``point_scale`` (per point; default 1); one map of the
    points read at a time, float64 work arrays of ``block`` pixels at a time, one float64
    value per fitted pixel kept for the median (exact, linear time:
    :func:`~utils.stack.stats.exact_median`) and the fitted pixels' five parameter maps
    (float32) gathered once for all the points."""
    good = (~fit.fallback & np.isfinite(fit.amplitude) & np.isfinite(fit.rate)).reshape(-1)
    out = np.ones(len(temps))
    n_good = int(good.sum())
    if n_good < 50:
        return out
    k_scale = np.ones(len(temps)) if point_scale is None else np.asarray(point_scale, float)
    maps = [m.reshape(-1) for m in (fit.amplitude, fit.rate, fit.amplitude_err, fit.rate_err,
                                    fit.covariance)]
    npix = good.size
    # the fitted pixels' parameters (float32, as in the maps), gathered once for every point
    blocks = [(b0, good[b0:b0 + block]) for b0 in range(0, npix, block)]
    params = [[m[b0:b0 + block][sel] for m in maps] for b0, sel in blocks]
    for k, t in enumerate(temps):
        d = t - t_ref
        yk_all, sk_all = (m.reshape(-1) for m in points.plane(k))
        u_all = np.empty(n_good)
        at = 0
        for (b0, sel), chosen in zip(blocks, params):
            a, b, va, vb, cab = (m.astype(np.float64) for m in chosen)
            va, vb = va ** 2, vb ** 2
            f = np.exp(b * d)
            yk = yk_all[b0:b0 + block][sel].astype(np.float64)
            sk = sk_all[b0:b0 + block][sel].astype(np.float64) * k_scale[k]
            # leverage: w J C J^T with J = (f, a f d)
            h = (f * f * va + (a * f * d) ** 2 * vb + 2 * a * f * f * d * cab) / (sk * sk)
            u = (yk - a * f) ** 2 / (sk * sk * np.clip(1 - h, 0.05, 1))
            u[~(h < MAX_SCALE_LEVERAGE)] = np.nan   # no say on this point's error
            u_all[at:at + a.size] = u
            at += a.size
        u = u_all[np.isfinite(u_all)]
        # most pixels must have a say: the few below the leverage cut where nearly every fit
        # passes through the point set the warmest bin of a 5 x 4 grid at 2048^2 to 0.80,
        # where its errors were right (rate pulls std 0.997)
        if u.size >= max(50, MIN_SCALE_SHARE * n_good):
            out[k] = math.sqrt(exact_median(u) / chi2_median_ratio(1))
    return out


def _planes_of(maps: list[np.ndarray]) -> np.ndarray:
    """``np.stack(maps)``, or without a copy the ``(K, H, W)`` array whose planes the maps
    are (the rate maps of :func:`dark_pipeline.rates.measure_rates` share one)."""
    base = maps[0].base
    if (isinstance(base, np.ndarray) and base.ndim == 3 and base.shape[0] == len(maps)
            and all(m.base is base and m.shape == base.shape[1:] and m.dtype == base.dtype
                    and m.strides == base.strides[1:] and m.ctypes.data == base[i].ctypes.data
                    for i, m in enumerate(maps))):
        return base
    return np.stack(maps)


#: Pixels per tile of the 1-D fit with scaled errors, or read back from the rate maps' files
#: (float64 errors of a tile only: the whole scaled stack was 8 bytes per point, 300 MB at
#: 2048^2 x 9 T).
SCALED_TILE_PIXELS = PIXEL_BLOCK


class RatePoints:
    """Rate ``y`` and error ``s`` [adu/s] of every rate map, as ``(K, H, W)`` stacks in memory,
    or read back by rows from the written maps (:func:`dark_pipeline.rates.rate_rows`): the
    pipeline does not hold the two float32 stacks (300 MB at 2048^2 x 9 T) through the fit.

    Parameters
    ----------
    y, s : numpy.ndarray, shape (K, H, W), optional
        The stacks in memory.
    rows : utils.stack.tiles.ProductRows, optional
        Reader of the maps' ``PRIMARY`` (rate) and ``UNCERT`` (error) rows, instead.
    """

    def __init__(self, y: np.ndarray | None = None, s: np.ndarray | None = None, rows=None):
        self.y, self.s, self.rows = y, s, rows
        self.shape = tuple(y.shape) if rows is None else (len(rows),) + tuple(rows.shape)

    @classmethod
    def of(cls, rates) -> RatePoints:
        """The rate maps' points: their planes in memory (without a copy when they share one
        stack), or their files when the maps were dropped once written."""
        if all(r.rate is not None and r.rate_err is not None for r in rates):
            return cls(_planes_of([r.rate for r in rates]),
                       _planes_of([r.rate_err for r in rates]))
        return cls(rows=rate_rows(rates))

    def read(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``r0:r1`` of every map, ``(K, r1 - r0, W)`` (views of the stacks in memory)."""
        if self.rows is None:
            return self.y[:, r0:r1], self.s[:, r0:r1]
        return self.rows.read("PRIMARY", r0, r1), self.rows.read("UNCERT", r0, r1)

    def plane(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rate and error of map ``k`` (``(H, W)``)."""
        if self.rows is None:
            return self.y[k], self.s[k]
        height = self.shape[1]
        return (self.rows.read("PRIMARY", 0, height, planes=[k])[0],
                self.rows.read("UNCERT", 0, height, planes=[k])[0])

    def tiles(self, point_scale: np.ndarray | None = None,
              pixels: int = SCALED_TILE_PIXELS, shared_cov=None) -> PixelTiles:
        """The points with errors ``s * point_scale`` (per map, float64 as
        ``s * point_scale[:, None, None]`` gives them; ``s`` as it is without), tile by tile:
        ``pixels`` pixels at a time in memory, whole rows of the files (or of the maps in
        memory, with ``shared_cov(r0, r1)``: the ``(D, D, r1 - r0, W)`` covariance of the
        errors the points share, read with each tile)."""
        k, height, width = self.shape
        npix = height * width
        scale = None if point_scale is None else \
            np.asarray(point_scale, dtype=np.float64)[:, None]

        def scaled(s2):
            return s2 if scale is None else s2 * scale
        if self.rows is None and shared_cov is None:
            y2, s2 = self.y.reshape(k, -1), self.s.reshape(k, -1)
            ranges = [(a, min(a + pixels, npix)) for a in range(0, npix, pixels)]
            return PixelTiles(k, (height, width), ranges, lambda a, b: (
                np.ascontiguousarray(y2[:, a:b]), scaled(s2[:, a:b]), None))
        rows = max(1, pixels // width)
        ranges = [(r0 * width, r1 * width) for r0, r1 in row_tiles(height, rows)]

        def read(a, b):
            r0, r1 = a // width, b // width
            y_t, s_t = self.read(r0, r1)
            cov = None if shared_cov is None else flat_cov(shared_cov(r0, r1))
            return y_t.reshape(k, -1), scaled(s_t.reshape(k, -1)), cov
        return PixelTiles(k, (height, width), ranges, read)


def shared_gain_1d(a: np.ndarray, b: np.ndarray, own: np.ndarray, x: np.ndarray,
                   s: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``G = N^-1 J^T W`` ``(2, K, ...)`` of the 1-D fit per pixel: how (A, B) follow the
    rates' errors at the solution (``J = (f, A x f)``, ``f = exp(B x)``, ``W = 1/s^2`` on the
    ``valid`` points); where ``own`` is False (population B) only A is fitted, linearly:
    ``G_A = w f / sum(w f^2)``, ``G_B = 0``.  ``a, b, own`` ``(...)``, ``x`` ``(K,)``
    [degC from TREF], ``s, valid`` ``(K, ...)``; float64."""
    xk = x.reshape((-1,) + (1,) * a.ndim)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        w = np.where(valid, 1.0 / (s * s), 0.0)
        f = np.exp(b * xk)
        j0, j1 = f, a * xk * f
        n00, n01, n11 = (w * j0 * j0).sum(0), (w * j0 * j1).sum(0), (w * j1 * j1).sum(0)
        det = n00 * n11 - n01 * n01
        g = np.empty((2,) + s.shape)
        g[0] = np.where(own, (n11 * w * j0 - n01 * w * j1) / det, w * j0 / n00)
        g[1] = np.where(own, (n00 * w * j1 - n01 * w * j0) / det, 0.0)
    return g


def shared_error_covariance_1d(g: np.ndarray, v: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Extra covariance ``(2, 2, ...)`` of (A, B) from an error shared between the points:
    ``G (V C V^T) G^T - G diag(V C V^T) G^T`` (the diagonal is already in the weights,
    whose ``N^-1 = G diag(s^2) G^T`` the fit reports), so that ``N^-1`` + this is the
    sandwich ``G (diag(s^2) + V C V^T - diag(V C V^T)) G^T`` of the points' true
    covariance.  ``g`` ``(2, K, ...)`` (:func:`shared_gain_1d`), ``v`` ``(K, D)``, ``c``
    ``(D, D, ...)`` per pixel."""
    gv = np.einsum("ik...,kd->id...", g, v)
    var_k = np.einsum("kd,de...,ke->k...", v, c, v)
    full = np.einsum("id...,de...,je...->ij...", gv, c, gv)
    diag = np.einsum("ik...,jk...,k...->ij...", g, g, var_k)
    return full - diag


def _add_shared_errors(fit: ExponentialFit, temps: np.ndarray, points: RatePoints,
                       t_ref: float, point_scale: np.ndarray, v: np.ndarray, shared_cov,
                       pixels: int = SCALED_TILE_PIXELS) -> np.ndarray:
    """The per-pixel A/B errors and covariance of ``fit`` (weights ``1 / (s point_scale)^2``)
    made the sandwich with the error ``v C v^T`` the rate maps share
    (:func:`shared_error_covariance_1d`), in place, row tile by row tile (float64 work
    arrays of a tile).  The fit's own pixels get A, B and COV_AB; the population-B pixels
    A only (their SIGMA_B is the population spread).

    Returns the map ``(H, W)`` float32 of each pixel's expected median reduced chi-square
    under the shared error over that of chi2(n - 2) (1 where not computed): the residuals
    are ``(I - H) e`` (``H = J G``), the chi-square a sum of ``lambda_i chi2(1)`` over the
    eigenvalues of ``W (I - H) Sigma (I - H)^T``, its median taken as that of ``c chi2(nu)``
    of the same mean and variance.  The fit's law absorbs much of the shared line, so its
    chi-square runs below chi2(n - 2), and ERRSCALE (median chi-square over its
    expectation) must not read that as errors too large (0.81-0.82 for right errors)."""
    height, width = points.shape[1:]
    expect = np.ones((height, width), np.float32)
    x = np.asarray(temps, dtype=np.float64) - t_ref
    k_scale = np.asarray(point_scale, dtype=np.float64)[:, None, None]
    for r0, r1 in row_tiles(height, max(1, pixels // width)):
        y_t, s_t = points.read(r0, r1)
        s = s_t.astype(np.float64) * k_scale
        valid = np.isfinite(y_t) & np.isfinite(s) & (s > 0)
        a = fit.amplitude[r0:r1].astype(np.float64)
        b = fit.rate[r0:r1].astype(np.float64)
        own = ~fit.fallback[r0:r1]
        g = shared_gain_1d(a, b, own, x, s, valid)
        c = shared_cov(r0, r1)
        extra = shared_error_covariance_1d(g, v, c)
        ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(extra).all((0, 1))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # residual map I - J G; Sigma = diag(s^2) + the shared part off the diagonal
            w = np.where(valid, 1.0 / (s * s), 0.0)
            xk = x.reshape((-1, 1, 1))
            f = np.exp(b * xk)
            jac = np.stack([f, a * xk * f])                      # (2, K, ...)
            res = -np.einsum("ik...,il...->kl...", jac, g)       # -(J G)_kl
            kk = np.arange(len(x))
            res[kk, kk] += 1.0
            sigma = np.einsum("kd,de...,le->kl...", v, c, v)
            sigma[kk, kk] = np.where(valid, s * s, 0.0)
            # chi2 = sum of lambda_i chi2(1), lambda the eigenvalues of M = W R Sigma R^T:
            # its median as that of c chi2(nu) with the same mean and variance
            # (Satterthwaite: nu = tr(M)^2 / tr(M^2), c = tr(M^2) / tr(M))
            m = w[:, None] * np.einsum("km...,mn...,ln...->kl...", res, sigma, res)
            tr1 = np.einsum("kk...->...", m)
            tr2 = np.einsum("kl...,lk...->...", m, m)
            dof = valid.sum(0) - 2
            nu = tr1 * tr1 / tr2
            e_red = (tr2 / tr1) * nu * chi2_median_ratio(nu) / dof  # expected median red. chi2
        use = ok & own & (dof > 0) & np.isfinite(e_red) & (e_red > 0)
        # over the median reduced chi-square of chi2(dof), which _err_scale divides by
        ratio = np.array([1.0] + [chi2_median_ratio(d) for d in range(1, len(x) + 1)])
        expect[r0:r1] = np.where(use, e_red / ratio[np.clip(dof, 0, len(x))], 1.0)
        va = fit.amplitude_err[r0:r1].astype(np.float64) ** 2 + extra[0, 0]
        vb = fit.rate_err[r0:r1].astype(np.float64) ** 2 + extra[1, 1]
        cab = fit.covariance[r0:r1].astype(np.float64) + extra[0, 1]
        fit.amplitude_err[r0:r1] = np.where(ok, np.sqrt(np.maximum(va, 0.0)),
                                            fit.amplitude_err[r0:r1])
        mine = ok & own
        fit.rate_err[r0:r1] = np.where(mine, np.sqrt(np.maximum(vb, 0.0)), fit.rate_err[r0:r1])
        fit.covariance[r0:r1] = np.where(mine, cab, fit.covariance[r0:r1])
    return expect


def _scaled_tiles(y: np.ndarray, s: np.ndarray, point_scale: np.ndarray,
                  pixels: int = SCALED_TILE_PIXELS) -> PixelTiles:
    """The points ``y`` with errors ``s * point_scale`` (per point, float64 as
    ``s * point_scale[:, None, None]`` gives them), computed tile by tile."""
    return RatePoints(y, s).tiles(point_scale, pixels)


def fit_temperature_model(rates, t_ref: float, *, adc_bits: int = adu.DEFAULT_ADC_BITS,
                          quiet: bool = False,
                          population_start: float | None = None,
                          shared_errors=None) -> DarkModel1D:
    """Fit the 1-D model to rate maps (:class:`dark_pipeline.rates.RateMap`) of several bins.

    Every pixel with a positive rate at two temperatures is fitted on its own (no
    signal-to-noise cut, see the module notes); the others take the population B.
    ``population_start`` [1/degC]: a close start of the population B's joint fit (the full
    model's in a leave-one-out refit): the same model within the fit's tolerance, faster
    (:func:`utils.models.nonlinear.fit_exponential_per_pixel`).
    ``shared_errors`` ``(V, cov)``: the error the rate maps share, ``cov(e_k, e_l) = V_k
    C V_l^T`` with V ``(K, D)`` (one row per rate map, in their order) and ``cov(r0, r1)``
    giving rows ``r0:r1`` of C ``(D, D, rows, W)`` -- the subtracted bias model's error in
    rates measured from one exposure (:func:`dark_pipeline.model_2d.rate_bias_errors`).
    The population fit then takes it into account: an offset common to the temperatures
    is otherwise read as a flatter law (T_d 1.5-3 % high, pulls +1.6..+3.3, with one 1 s
    dark at 0..30 degC and 3 frames per master).

    Raises
    ------
    UserError
        Fewer than two temperature bins, or no pixel with signal at two temperatures.
    """
    temps = np.array([r.tavg for r in rates])
    if np.unique(np.round(temps, 3)).size < 2:
        raise UserError(f"dark frames at a single temperature ({number_text(temps[0])} degC): "
                        "a dark-current model in temperature needs at least two")
    points = RatePoints.of(rates)  # in memory, or read back from the written maps
    point_scale = np.ones(len(rates))
    v_shared, shared_cov = (None, None) if shared_errors is None else shared_errors
    for attempt in range(3):
        # the shared error scales with its points' errors
        shared = None if shared_cov is None else \
            (np.asarray(v_shared, dtype=np.float64) * point_scale[:, None], None)
        try:
            if np.all(point_scale == 1.0) and points.rows is None and shared_cov is None:
                # unscaled errors go in as they are (the kernels read float64 either way)
                fit = fit_exponential_per_pixel(temps, points.y, points.s, x_ref=t_ref,
                                                min_snr=START_SNR,
                                                population_start=population_start)
            else:
                # tile by tile (the same numbers): scaled errors, or rows of the files
                fit = fit_exponential_per_pixel(
                    temps, None, None, x_ref=t_ref, min_snr=START_SNR,
                    tiles=points.tiles(None if np.all(point_scale == 1.0) else point_scale,
                                       shared_cov=shared_cov),
                    population_start=population_start, shared_errors=shared)
        except ValueError as err:
            raise UserError(f"dark-current model: {err}") from err
        if len(rates) < MIN_POINTS_PER_T_SCALE or attempt == 2:
            break
        # the rate maps' errors come from few frames and are underestimated by an amount
        # that grows with the signal (the clipped mean's small-N bias, shot noise): one
        # factor per temperature, from the fit's own residuals, calibrates them point by
        # point where a single frame-wide factor would leave the errors of A (at TREF)
        # and B wrong
        factors = _point_scales(fit, temps, points, t_ref, point_scale)
        if np.all(np.abs(factors - 1) < 0.02):
            break
        point_scale *= factors
        fit = None  # not held while the next fit runs
    if shared_cov is None:
        v_scaled = None
        scale = _err_scale(fit.chi2, fit.npoints, fit.fallback, 2)
    else:
        # the per-pixel errors with the shared error's covariance (sandwich), then ERRSCALE
        # from the chi-squares over their expectation under that covariance
        v_scaled = np.asarray(v_shared, dtype=np.float64) * point_scale[:, None]
        expect = _add_shared_errors(fit, temps, points, t_ref, point_scale, v_scaled,
                                    shared_cov)
        scale = _err_scale(fit.chi2 / expect, fit.npoints, fit.fallback, 2)
        del expect
    _scale_in_place(fit, scale, ("amplitude_err", "rate_err"))
    inputs = pd.DataFrame({"TBIN": [r.temperature for r in rates], "TAVG": temps,
                           "RATEMETH": [r.method for r in rates],
                           "ERRSCALE": point_scale * scale})
    common = common_law_amplitude(temps, None, None, float(fit.population_rate), t_ref, scale,
                                  point_scale=point_scale, points=points,
                                  shared=None if shared_cov is None else (v_scaled, shared_cov))
    model = DarkModel1D(fit, scale, None, inputs, adc_bits, common, shared_cov is not None)
    head = model.headline()
    (logger.debug if quiet else logger.info)(
        "1-D dark model: population T_d %s, E_a %s, %d pixels with population B "
        "(ERRSCALE %.2f)", value_error_text(head["doubling_temperature_degC"],
                                            head["doubling_temperature_err_degC"], "degC"),
        value_error_text(head["activation_energy_eV"], head["activation_energy_err_eV"], "eV"),
        head["fallback_pixels"], scale)
    return model


__all__ = ["DarkModel1D", "CommonLawAmplitude", "common_law_amplitude", "fit_temperature_model",
           "K_BOLTZMANN_EV", "MASK_FALLBACK", "MASK_HOT", "MASK_NOFIT"]
