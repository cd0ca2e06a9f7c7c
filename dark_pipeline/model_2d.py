"""Per-pixel dark-signal model in temperature and exposure (2-D), fitted to the dark masters.

``S(T, t) = A t^gamma exp(B (T - TREF))`` [adu], fitted jointly to the bias-subtracted dark
*signal* masters of every (temperature, exposure) by weighted nonlinear least squares,
vectorised over pixels and tile by tile
(:func:`utils.models.nonlinear.fit_power_exponential_per_pixel`); gamma near 1 means the
signal integrates linearly.  The shared error of one subtracted bias serving several masters
is propagated into the coefficients' covariance (:func:`correlated_error_covariance`).
Errors are calibrated by ``ERRSCALE`` as the 1-D model's
(:mod:`dark_pipeline.temperature_model`, which holds the helpers both models share).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from utils import adu
from utils import headers as kw
from utils.errors import UserError
from utils.io.fitsio import write_product
from utils.models.dark_model import read_power_exponential_fit
from utils.models.nonlinear import (
    PowerExponentialFit,
    balanced_chunk,
    fit_power_exponential_per_pixel,
    read_beside,
)
from utils.models.pixel_tiles import PixelTiles
from utils.stack.stats import exact_median
from utils.stack.tiles import ProductRows

from .rates import METHOD_SINGLE, gather_pixels, total_err
from .temperature_model import MASK_HOT, _err_scale, _header, _mask, _scale_in_place

logger = logging.getLogger(__name__)


@dataclass
class DarkModel2D:
    """Per-pixel ``S(T, t) = A t^gamma exp(B (T - t_ref))`` [adu] with calibrated errors."""

    fit: PowerExponentialFit
    err_scale: float = 1.0
    hot: np.ndarray | None = None
    inputs: pd.DataFrame = field(default_factory=pd.DataFrame)
    adc_bits: int = adu.DEFAULT_ADC_BITS
    #: ``(3, 2, H * W)`` float32 ``G V``: how (A, gamma, B) follow the subtracted bias
    #: model's (A, B) errors (kept only when asked: :func:`fit_model_2d`'s ``keep_gain``)
    shared_gain: np.ndarray | None = None

    @property
    def t_ref(self) -> float:
        """[degC] reference temperature."""
        return self.fit.t_ref

    def signal(self, temperature: float, exptime: float) -> np.ndarray:
        """Dark signal [adu] after ``exptime`` [s] at ``temperature`` [degC]."""
        return self.fit.predict(temperature, exptime)

    def signal_err(self, temperature: float, exptime: float) -> np.ndarray:
        """One-sigma error of :meth:`signal` [adu]."""
        return self.fit.predict_err(temperature, exptime)

    def headline(self) -> dict:
        """Population gamma and B (joint fit of every pixel, unbiased at low signal) with
        errors; median and percentiles of gamma over the individually fitted, not-hot pixels
        (selected by signal, hence biased at low signal); counts."""
        good = ~self.fit.fallback & np.isfinite(self.fit.gamma)
        if self.hot is not None:
            good &= ~self.hot
        g = self.fit.gamma[good]
        f = self.fit
        b, b_err = float(f.population_rate), float(f.population_rate_err)
        return {"gamma_population": float(f.population_gamma),
                "gamma_population_err": float(f.population_gamma_err),
                "gamma_median": exact_median(g) if g.size else math.nan,
                "gamma_p16": float(np.percentile(g, 16)) if g.size else math.nan,
                "gamma_p84": float(np.percentile(g, 84)) if g.size else math.nan,
                "b_population_per_degC": b, "b_population_err_per_degC": b_err,
                "b_median_per_degC": exact_median(f.rate[good]) if good.any() else math.nan,
                "doubling_temperature_degC": math.log(2) / b if b > 0 else math.nan,
                "doubling_temperature_err_degC": math.log(2) * b_err / b ** 2 if b > 0
                else math.nan,
                "well_measured_pixels": int(good.sum()),
                "fallback_pixels": int(self.fit.fallback.sum())}

    def prediction_only(self) -> DarkModel2D:
        """This model with only the maps :meth:`signal` and :meth:`signal_err` read (A, gamma,
        B, covariance, fallback): the error, chi-square and point-count maps dropped (5 float32
        maps: 84 MB at 2048^2), for the evaluation once the model is written."""
        fit = dataclasses.replace(self.fit, amplitude_err=None, gamma_err=None, rate_err=None,
                                  chi2=None, npoints=None)
        return dataclasses.replace(self, fit=fit)

    def write(self, path: Path) -> Path:
        """``dark_model_2d.fits``: A (primary, UNCERT, MASK), GAMMA, B, their errors, the
        covariances, CHI2DOF, NPTS, FALLBACK."""
        f = self.fit
        head = self.headline()
        header = _header("DARK_MODEL_2D", "S = A t^GAMMA exp(B (T - TREF))", self.t_ref,
                         self.err_scale, self.adc_bits, [
                             ("GAMMAMED", head["gamma_median"],
                              "median gamma of the fitted pixels"),
                             ("POPGAMMA", head["gamma_population"],
                              "population gamma (joint fit)"),
                             ("POPGERR", head["gamma_population_err"], "error of POPGAMMA"),
                             ("BMEDIAN", head["b_median_per_degC"],
                              "[1/degC] median B of the fitted pixels"),
                             ("POPB", head["b_population_per_degC"],
                              "[1/degC] population B (joint fit)"),
                             ("POPBERR", head["b_population_err_per_degC"],
                              "[1/degC] error of POPB"),
                             ("TDPOP", head["doubling_temperature_degC"], "[degC] ln 2 / POPB"),
                             ("NFALLBCK", float(f.fallback.sum()), "pixels with population "
                                                                   "gamma and B")])
        c = f.covariance
        images = {"GAMMA": (f.gamma, ""), "B": (f.rate, "1 / deg_C"),
                  "SIGMA_A": (f.amplitude_err, adu.UNIT), "SIGMA_GAMMA": (f.gamma_err, ""),
                  "SIGMA_B": (f.rate_err, "1 / deg_C"), "COV_AG": (c[0, 1], adu.UNIT),
                  "COV_AB": (c[0, 2], f"{adu.UNIT} / deg_C"), "COV_GB": (c[1, 2], "1 / deg_C"),
                  "CHI2DOF": (f.chi2, ""), "NPTS": (f.npoints.astype(np.int16), ""),
                  "FALLBACK": (f.fallback.astype(np.uint8), "")}
        return write_product(path, f.amplitude, header, unit=adu.UNIT,
                             uncertainty=f.amplitude_err, mask=_mask(f, self.hot), images=images,
                             tables={"INPUTS": self.inputs} if len(self.inputs.columns) else None)

    @classmethod
    def read(cls, path: Path) -> DarkModel2D:
        """Load :meth:`write`'s product
        (:func:`utils.models.dark_model.read_power_exponential_fit`)."""
        fit, head, m = read_power_exponential_fit(path)
        hot = (m["MASK"] & MASK_HOT) != 0
        return cls(fit, kw.get_float(head, kw.ERRSCALE, 1.0), hot, m["INPUTS"],
                   int(kw.get_float(head, kw.ADCBITS, adu.DEFAULT_ADC_BITS)))


#: Error images of a bias model product the dark fits read (:class:`BiasErrors`).
BIAS_ERROR_IMAGES = ("SIGMA_A", "SIGMA_B", "COV_AB")


@dataclass(frozen=True)
class BiasErrors:
    """The parts of a bias model the dark fits read: the error maps of its A and B (the
    2-D fit's shared-bias covariance), not its values (the masters are already
    bias-subtracted) -- in memory, or rows read from the model's file when it holds the
    same float32 maps (48 MB at 2048^2 not held through the 2-D fit and evaluation).

    Attributes
    ----------
    t_ref : float
        [degC] reference temperature of the bias model's A.
    sigma_a, sigma_b, cov_ab : numpy.ndarray or None
        [adu], [adu/degC], [adu^2/degC] errors and covariance of A and B per pixel (None
        when read from ``rows``).
    rows : utils.stack.tiles.ProductRows or None
        Reader of the model file's ``SIGMA_A``, ``SIGMA_B``, ``COV_AB`` rows.
    """

    t_ref: float
    sigma_a: np.ndarray | None
    sigma_b: np.ndarray | None
    cov_ab: np.ndarray | None
    rows: ProductRows | None = None

    @classmethod
    def of(cls, model, path: str | Path | None = None) -> BiasErrors | None:
        """Those of ``model`` (a :class:`~utils.models.bias_model.BiasModel`, or None); read
        by rows from ``path``, the model's own file (read from or written to), when its maps
        are float32 (the file then holds the same values)."""
        if model is None:
            return None
        maps = (model.sigma_a, model.sigma_b, model.cov_ab)
        if path and Path(path).is_file() and all(m.dtype == np.float32 for m in maps):
            rows = ProductRows([path], BIAS_ERROR_IMAGES)
            if all(rows.has(n)[0] for n in BIAS_ERROR_IMAGES) and rows.shape == maps[0].shape:
                return cls(model.t_ref, None, None, None, rows)
        return cls(model.t_ref, *maps)

    def at(self, pixels: np.ndarray) -> BiasErrors:
        """These errors at the flat pixels ``pixels`` (increasing), as ``(1, n)`` maps in
        memory (gathered once: a leave-one-out evaluation asks for them per master)."""
        return BiasErrors(self.t_ref, *self.reader(pixels)(0, 1))

    def reader(self, pixels: np.ndarray | None = None):
        """``read(r0, r1) -> (sigma_a, sigma_b, cov_ab)``: rows ``r0:r1`` of the maps, or of
        the ``(1, n)`` maps of the flat pixels ``pixels`` (increasing; gathered once)."""
        return _error_rows(self, pixels)


def _error_rows(bias_model, pixels=None):
    """:meth:`BiasErrors.reader` of a :class:`BiasErrors` or a bias model."""
    rows = getattr(bias_model, "rows", None)
    if rows is None:
        images = [getattr(bias_model, n) for n in ("sigma_a", "sigma_b", "cov_ab")]
        if pixels is not None:
            images = [image.reshape(-1)[pixels].reshape(1, -1) for image in images]
    elif pixels is not None:
        sample = gather_pixels(rows, BIAS_ERROR_IMAGES, pixels)
        images = [sample.images[n][0] for n in BIAS_ERROR_IMAGES]
    else:
        return lambda r0, r1: tuple(rows.read(n, r0, r1)[0] for n in BIAS_ERROR_IMAGES)
    return lambda r0, r1: tuple(image[r0:r1] for image in images)


def _bias_error_structure(keys, temps, bias_model, pixels=None):
    """How the subtracted bias's errors are shared between masters: ``(V, C)`` with
    ``cov(bias error of k, of l) = V_k C V_l^T`` per pixel, or ``(None, None)``.

    With the bias model, V_k = (1, T_k - TREF_bias) and C the covariance of (A, B); with bias
    masters, V is the indicator of the master used and C the diagonal of their variances.
    C is returned as ``C(r0, r1, suberr)``: its rows ``r0:r1`` (D, D, rows, W), float64,
    given the masters' subtracted-bias errors ``suberr`` (K, rows, W) of those rows
    (``pixels``: the flat indices of a pixel sample, whose rows are ``(1, n)``).
    """
    if bias_model is not None and all(k.endswith("|bias(T)") for k in keys):
        design = np.stack([np.ones_like(temps), temps - bias_model.t_ref], axis=1)
        maps = _error_rows(bias_model, pixels)

        def model_cov(r0, r1, suberr):
            sa, sb, cab = maps(r0, r1)
            return np.stack([np.stack([sa ** 2, cab]), np.stack([cab, sb ** 2])]
                            ).astype(np.float64)
        return design, model_cov
    if not all(k.endswith("|bias") for k in keys):
        return None, None
    names = sorted(set(keys))
    design = np.array([[1.0 if k == n else 0.0 for n in names] for k in keys])
    first = [keys.index(n) for n in names]

    def master_cov(r0, r1, suberr):
        cd = np.zeros((len(names), len(names)) + suberr.shape[1:])
        for d, k in enumerate(first):
            cd[d, d] = suberr[k].astype(np.float64) ** 2
        return cd
    return design, master_cov


def rate_bias_errors(stack, rates, bias_model=None):
    """How the subtracted bias's errors are shared between the rate maps ``rates`` of
    ``stack`` (:func:`dark_pipeline.rates.measure_rates`), for the 1-D model's
    ``shared_errors``: ``(V, cov)`` with V ``(K, D)`` per rate map and ``cov(r0, r1)`` the
    rows of C ``(D, D, rows, W)`` (:func:`_bias_error_structure`), or None.

    A rate measured from one exposure is its master over the exposure, so it carries that
    master's bias error over the exposure (its row of V); a slope over exposures carries
    none (the bias is in its offset: a row of zeros).  With the bias model the error is
    ``delta A + delta B (T - TREF)`` at every temperature, one line per pixel; ignored, the
    1-D population fit read its constant part as a flatter temperature law.
    """
    design, cov = _bias_error_structure(stack.bias_keys, stack.temps, bias_model, stack.pixels)
    if design is None:
        return None
    v = np.zeros((len(rates), design.shape[1]))
    for j, (idx, r) in enumerate(zip(stack.groups().values(), rates)):
        if r.method == METHOD_SINGLE:  # the longest exposure's master (measure_rate's)
            v[j] = design[idx[-1]] / float(r.exptimes[-1])
    if not v.any():
        return None

    def read(r0, r1):
        return cov(r0, r1, stack.rows.read("SUBERR", r0, r1, fill=0.0, planes=stack.planes))
    return v, read


def _correlated_kernel_py(a, g, b, lnt, dT, sig, design, cd, ok_in, out, gv_out):
    """Per-pixel loop of :func:`correlated_error_covariance` (compiled with numba); also
    writes ``G V`` of every pixel to ``gv_out`` ``(3, D, P)`` unless it is empty.

    Every sum over the points runs in increasing k from 0.0, as a plain loop per sum
    would; the independent sums of one pixel (the 9 normal-matrix entries, G V, the
    diagonal terms) advance together in one loop over k, in scalars: the same numbers,
    without one chain of dependent additions per entry (the loop was bound by their
    latency: 1.3 us a pixel for 36 points, now 0.9, of which 36 exponentials 0.23)."""
    k_n = lnt.shape[0]
    n_d = design.shape[1]
    wj = np.empty((3, k_n))
    gain = np.empty((3, k_n))
    gv = np.empty((3, n_d))
    var_k = np.empty(k_n)
    keep_gv = gv_out.shape[2] > 0
    for p in range(a.shape[0]):
        if not ok_in[p]:
            continue
        ap, gp, bp = a[p], g[p], b[p]
        n00 = n01 = n02 = n10 = n11 = n12 = n20 = n21 = n22 = 0.0
        for k in range(k_n):
            f = ap * np.exp(gp * lnt[k] + bp * dT[k])
            s = sig[k, p]
            w = 1.0 / (s * s) if s > 0 and np.isfinite(s) else 0.0
            j0 = f / ap
            j1 = f * lnt[k]
            j2 = f * dT[k]
            w0 = w * j0
            w1 = w * j1
            w2 = w * j2
            wj[0, k] = w0
            wj[1, k] = w1
            wj[2, k] = w2
            n00 += w0 * j0
            n01 += w0 * j1
            n02 += w0 * j2
            n10 += w1 * j0
            n11 += w1 * j1
            n12 += w1 * j2
            n20 += w2 * j0
            n21 += w2 * j1
            n22 += w2 * j2
        c00 = n11 * n22 - n12 * n21
        c01 = n12 * n20 - n10 * n22
        c02 = n10 * n21 - n11 * n20
        det = n00 * c00 + n01 * c01 + n02 * c02
        if not (det != 0 and np.isfinite(det)):
            continue
        i00 = c00 / det
        i01 = (n02 * n21 - n01 * n22) / det
        i02 = (n01 * n12 - n02 * n11) / det
        i10 = c01 / det
        i11 = (n00 * n22 - n02 * n20) / det
        i12 = (n02 * n10 - n00 * n12) / det
        i20 = c02 / det
        i21 = (n01 * n20 - n00 * n21) / det
        i22 = (n00 * n11 - n01 * n10) / det
        for k in range(k_n):
            w0, w1, w2 = wj[0, k], wj[1, k], wj[2, k]
            # (0.0 + x: the first term of a sum from 0.0, as the loop over j made it)
            gain[0, k] = ((0.0 + i00 * w0) + i01 * w1) + i02 * w2
            gain[1, k] = ((0.0 + i10 * w0) + i11 * w1) + i12 * w2
            gain[2, k] = ((0.0 + i20 * w0) + i21 * w1) + i22 * w2
        for d in range(n_d):
            g0 = g1 = g2 = 0.0
            for k in range(k_n):
                v = design[k, d]
                g0 += gain[0, k] * v
                g1 += gain[1, k] * v
                g2 += gain[2, k] * v
            gv[0, d] = g0
            gv[1, d] = g1
            gv[2, d] = g2
            if keep_gv:
                gv_out[0, d, p] = g0
                gv_out[1, d, p] = g1
                gv_out[2, d, p] = g2
        for k in range(k_n):
            acc = 0.0
            for d in range(n_d):
                for e in range(n_d):
                    acc += design[k, d] * cd[d, e, p] * design[k, e]
            var_k[k] = acc
        q00 = q01 = q02 = q11 = q12 = q22 = 0.0
        for k in range(k_n):
            v = var_k[k]
            h0, h1, h2 = gain[0, k], gain[1, k], gain[2, k]
            q00 += h0 * h0 * v
            q01 += h0 * h1 * v
            q02 += h0 * h2 * v
            q11 += h1 * h1 * v
            q12 += h1 * h2 * v
            q22 += h2 * h2 * v
        for i in range(3):
            for j in range(i, 3):
                full = 0.0
                for d in range(n_d):
                    for e in range(n_d):
                        full += gv[i, d] * cd[d, e, p] * gv[j, e]
                if i == 0:
                    diag = q00 if j == 0 else (q01 if j == 1 else q02)
                elif i == 1:
                    diag = q11 if j == 1 else q12
                else:
                    diag = q22
                out[i, j, p] = full - diag
                out[j, i, p] = full - diag


try:
    from numba import njit, prange  # noqa: F401

    _correlated_kernel = njit(nogil=True, cache=True)(_correlated_kernel_py)
except ImportError:  # pragma: no cover - numba is a dependency; plain Python still works
    _correlated_kernel = _correlated_kernel_py


def correlated_error_covariance(fit: PowerExponentialFit, temps: np.ndarray, exps: np.ndarray,
                                tiles, design: np.ndarray, block: int = 16384, *,
                                out: np.ndarray | None = None,
                                gain_out: np.ndarray | None = None) -> np.ndarray:
    """Extra parameter covariance from an error shared between the points of the fit.

    The fit weighs each point with ``1/sigma_k^2``, treating the points as independent; a
    subtracted bias whose error ``V_k delta`` (``cov(delta) = C``) is common to several
    points moves the parameters by ``G V delta`` with ``G = N^-1 J^T W`` (``N = J^T W J`` at
    the solution).  The part the weights already hold (the diagonal ``V_k C V_k^T``) is
    removed.  ``tiles`` (:class:`utils.models.pixel_tiles.PixelTiles`) gives sigma and C of
    every pixel range.  Returns ``(3, 3, H, W)`` float32; 0 for fallback pixels.  With
    ``out`` (``(3, 3, H, W)`` float32, e.g. the fit's own covariance) the extra covariance
    is added to it in place and ``out`` returned: no second full-frame covariance.  With
    ``gain_out`` (``(3, D, H * W)`` float32) ``G V`` of every pixel is written there too (0
    for fallback pixels): how the parameters follow the shared error, for
    :func:`shared_bias_covariance`.
    """
    shape = fit.amplitude.shape
    npix = int(np.prod(shape))
    # written in place: ``out`` itself when it is contiguous (reshape is then a view)
    target = out if out is not None and out.flags.c_contiguous else \
        np.zeros((3, 3) + shape, np.float32)
    flat = target.reshape(3, 3, npix)
    a_all = fit.amplitude.reshape(-1)
    g_all = fit.gamma.reshape(-1)
    b_all = fit.rate.reshape(-1)
    ok_all = (~fit.fallback).reshape(-1) & np.isfinite(a_all) & (a_all != 0)
    lnt1, dT1 = np.log(exps).astype(np.float64), (temps - fit.t_ref).astype(np.float64)
    design = np.ascontiguousarray(design, dtype=np.float64)
    workers = 2
    ranges = [(a, b) for a, b in tiles.ranges if ok_all[a:b].any()]
    fixed = (a_all, g_all, b_all, ok_all, lnt1, dT1, design)
    # one pool for every tile; the next tile read while this one's blocks run; blocks of
    # equal size, a multiple of the threads (a 49152-pixel tile was 3 blocks on 2 threads)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # the kernel releases the GIL
        read_beside(tiles, ranges, lambda at, got: _covariance_tile(
            pool, at[0], at[1], got[1], got[2], balanced_chunk(at[1] - at[0], block, workers),
            fixed, flat, gain_out))
    if out is not None and target is not out:
        out += target
        return out
    return target


def _covariance_tile(pool, a, b, sigma, cd, block, fixed, flat, gain_out) -> None:
    """:func:`correlated_error_covariance` of the pixels ``a:b`` (a tile's errors ``sigma``
    and shared covariance ``cd``), by blocks of ``block`` pixels on ``pool``'s threads."""
    a_all, g_all, b_all, ok_all, lnt1, dT1, design = fixed
    s_t = sigma.reshape(sigma.shape[0], -1)
    c_t = cd.reshape(cd.shape[0], cd.shape[1], -1)

    def one(start):
        # float64 copies of a block only (the kernel's arithmetic), not of the frame
        sl = slice(start, min(start + block, b - a))
        gl = slice(a + sl.start, a + sl.stop)
        res = np.zeros((3, 3, sl.stop - sl.start))
        gv = np.zeros((3, design.shape[1], 0 if gain_out is None else res.shape[2]))
        _correlated_kernel(a_all[gl].astype(np.float64), g_all[gl].astype(np.float64),
                           b_all[gl].astype(np.float64), lnt1, dT1,
                           np.ascontiguousarray(s_t[:, sl], dtype=np.float64), design,
                           np.ascontiguousarray(c_t[:, :, sl], dtype=np.float64),
                           ok_all[gl], res, gv)
        flat[:, :, gl] += res.astype(np.float32)
        if gain_out is not None:
            gain_out[:, :, gl] = gv
    list(pool.map(one, range(0, b - a, block)))


def stack_tiles(stack, shared_cov=None, points=None):
    """:class:`utils.models.pixel_tiles.PixelTiles` of a dark stack: signal, total error
    (noise model and subtracted bias in quadrature) and the shared-error covariance
    ``shared_cov(r0, r1, suberr)`` of row tiles sized by the stack's memory limit.

    ``points``: the :class:`SamplePoints` of the stack's masters, already read (a pixel
    sample: one tile); every read then gives the same arrays, the covariance made once."""
    height, width = stack.shape
    k_n = len(stack.masters)
    if points is not None:
        if points.signal.shape != (k_n, height, width):
            raise ValueError(f"points of shape {points.signal.shape} for a stack of {k_n} "
                             f"masters of {height} x {width} pixels")
        cd = None if shared_cov is None else shared_cov(0, height, points.suberr)
        kept = (points.signal, points.total_err, cd)
        return PixelTiles(k_n, (height, width), [(0, height * width)], lambda a, b: kept)
    extra = 0 if shared_cov is None else 2  # C is (D, D) per pixel, D ~ a few, float64
    ranges = [(r0 * width, r1 * width) for r0, r1 in stack.row_tiles(images=4 + extra)]

    def read(a, b):
        r0, r1 = a // width, b // width
        data, noise_err, suberr = stack.read(r0, r1)
        cd = None if shared_cov is None else shared_cov(r0, r1, suberr)
        return data, total_err(noise_err, suberr), cd
    return PixelTiles(k_n, (height, width), ranges, read)


@dataclass(frozen=True)
class SamplePoints:
    """The points of a pixel sample's masters (:meth:`dark_pipeline.rates.SignalStack.sample`),
    read once: signal (NaN where masked), total error (noise model and subtracted bias in
    quadrature) and subtracted-bias error [adu], each ``(K, 1, n)`` float32.

    The leave-one-temperature-out refits each fit a subset of the same masters at the same
    pixels: :meth:`select` gives theirs (the same values as a read of those masters: every
    master's errors are its own), instead of one read (noise-model errors recomputed) per
    refit and one more for its covariance pass.
    """

    signal: np.ndarray
    total_err: np.ndarray
    suberr: np.ndarray

    @classmethod
    def read(cls, stack) -> SamplePoints:
        """Every master of ``stack`` (a one-tile pixel sample) at its pixels."""
        height = stack.shape[0]
        data, noise_err, suberr = stack.read(0, height)
        total = total_err(noise_err, suberr)
        del noise_err
        return cls(data, total, suberr)

    def select(self, idx) -> SamplePoints:
        """The points of the masters ``idx`` (indices in the stack's order), in that order:
        copies (a fit may not change the points another one takes)."""
        idx = np.asarray(list(idx), dtype=np.intp)
        return SamplePoints(self.signal[idx], self.total_err[idx], self.suberr[idx])


def fit_model_2d(stack, t_ref: float, *, min_snr: float = 3.0,
                 adc_bits: int = adu.DEFAULT_ADC_BITS, quiet: bool = False,
                 bias_model=None, population_start=None, keep_gain: bool = False,
                 points: SamplePoints | None = None) -> DarkModel2D:
    """Fit the 2-D model to the dark signal masters (:class:`dark_pipeline.rates.SignalStack`).

    Each master's error is its noise-model error (see :mod:`dark_pipeline.rates`) and the
    subtracted bias's error in quadrature.  One bias model (or bias master) serves several
    masters, so its error is shared between them; the parameter covariance adds that
    correlated part (:func:`correlated_error_covariance`), given ``bias_model`` (else the
    bias masters named in the masters' ``BIASFILE``).  ``population_start`` (gamma, B
    [1/degC]): a close start of the population joint fit (the full model's in a
    leave-one-out refit): the same model within the fit's tolerance, faster
    (:func:`utils.models.nonlinear.fit_power_exponential_per_pixel`).  ``keep_gain``: keep
    how the parameters follow the bias model's errors (:attr:`DarkModel2D.shared_gain`, for
    :func:`shared_bias_covariance`), when the masters were subtracted with the bias model.
    ``points``: the stack's points already read (a one-tile pixel sample's
    :class:`SamplePoints`): the fit and its covariance pass take them, no read.

    Raises
    ------
    UserError
        Fewer than two temperatures or exposure times, or no pixel with enough signal.
    """
    temps, exps = stack.temps, stack.exptimes
    if np.unique(np.round(temps, 3)).size < 2 or np.unique(exps).size < 2:
        raise UserError("a 2-D dark model needs dark masters at two temperatures and two "
                        "exposure times at least")
    design, shared_cov = _bias_error_structure(stack.bias_keys, temps, bias_model,
                                               stack.pixels)
    tiles = stack_tiles(stack, shared_cov, points)
    try:
        fit = fit_power_exponential_per_pixel(
            temps, exps, None, None, t_ref=t_ref, min_snr=min_snr,
            shared_errors=None if design is None else (design, None), tiles=tiles,
            population_start=population_start)
    except ValueError as err:
        raise UserError(f"2-D dark model: {err}") from err
    scale = _err_scale(fit.chi2, fit.npoints, fit.fallback, 3)
    _scale_in_place(fit, scale, ("amplitude_err", "gamma_err", "rate_err"))
    gain = None
    if design is not None:
        if keep_gain and bias_model is not None and design.shape[1] == 2 \
                and all(k.endswith("|bias(T)") for k in stack.bias_keys):
            gain = np.zeros((3, 2, fit.amplitude.size), np.float32)
        # added to the fit's own covariance in place (no second (3, 3, H, W) array)
        cov = correlated_error_covariance(fit, temps, exps, tiles, design,
                                          out=fit.covariance, gain_out=gain)
        for name, i in (("amplitude_err", 0), ("gamma_err", 1), ("rate_err", 2)):
            err = getattr(fit, name)
            np.sqrt(np.maximum(cov[i, i], 0, out=err), out=err)
    inputs = pd.DataFrame({"TBIN": [m.temperature for m in stack.masters], "TAVG": temps,
                           "EXPTIME": exps, "PATH": [m.path.name for m in stack.masters]})
    model = DarkModel2D(fit, scale, None, inputs, adc_bits, gain)
    head = model.headline()
    (logger.debug if quiet else logger.info)(
        "2-D dark model: population gamma %.3f +- %.3f, T_d %.2f degC (ERRSCALE %.2f)",
        head["gamma_population"], head["gamma_population_err"],
        head["doubling_temperature_degC"], scale)
    return model


def shared_bias_covariance(model: DarkModel2D, bias_model, temperature: float,
                           exptime: float, pixels: np.ndarray | None = None) -> np.ndarray:
    """``cov(S_model - S, e)`` [adu^2] per pixel: the covariance of the model's prediction
    error at (``temperature`` [degC], ``exptime`` [s]) with the error ``e`` of a master
    there bias-subtracted with the same bias model.

    Both carry the bias model's errors: the master ``-V* delta`` (``V* = (1, T* - TREF)``),
    the prediction ``-grad S G V delta`` through the masters it was fitted to.  So
    ``cov = grad S (G V) C V*^T`` with ``C`` the covariance of the bias model's (A, B)
    (``bias_model``: a :class:`BiasErrors` or bias model; ``pixels``: the flat indices the
    model was fitted on, default every pixel).  A master at a temperature the model did
    not see still shares it: the variance of their difference is ``var(S_model) + var(e) -
    2 cov``.  Needs ``model.shared_gain`` (:func:`fit_model_2d` with ``keep_gain``).
    """
    f = model.fit
    gv = model.shared_gain
    a = f.amplitude.reshape(-1).astype(np.float64)
    pred = f.predict(temperature, exptime).reshape(-1).astype(np.float64)
    sa, sb, cab = (m.reshape(-1).astype(np.float64)
                   for m in _error_rows(bias_model, pixels)(0, f.amplitude.shape[0]))
    v1 = temperature - bias_model.t_ref
    out = np.zeros_like(pred)
    # fallback pixels (gain 0) and pixels without a model (NaN) come out 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        grad = (pred / a, pred * math.log(exptime), pred * (temperature - f.t_ref))
        c_v = (sa ** 2 + cab * v1, cab + sb ** 2 * v1)  # C V*^T, per pixel
        for i in range(3):
            out += grad[i] * (gv[i, 0] * c_v[0] + gv[i, 1] * c_v[1])
    return np.where(np.isfinite(out), out, 0.0).reshape(f.amplitude.shape)


__all__ = ["DarkModel2D", "BiasErrors", "SamplePoints", "correlated_error_covariance",
           "stack_tiles", "fit_model_2d", "shared_bias_covariance", "rate_bias_errors"]
