"""The per-pixel bias model ``bias(T) = A + B (T - TREF)``: fit, product file and evaluation.

Fitted from bias masters at several temperatures, one weighted straight line
per pixel (closed form, vectorised, streamed by row blocks so a 2048 x 2048
model never holds more than a few blocks of the masters in memory).

Uncertainties
-------------
Each master ``k`` gets the per-pixel error ``sigma_k = s * noise_pool / sqrt(n_k)``:

* ``noise_pool`` is the pixel's temporal noise pooled over all masters
  (``sum (n_k - 1) noise_k**2 / sum (n_k - 1)``).  A per-master noise from
  ~10-20 frames is itself uncertain by 15-25 %; weighting with it would make the
  errors of the fit Student-t-like rather than Gaussian.
* ``s`` (``ERRSCALE``) is one number for the whole frame: the square root of the
  median reduced chi-square of the fit over its expected median for a
  chi-square variable with that many degrees of freedom.  It absorbs what the
  noise map of a sigma-clipped master does not show (the clipped mean is
  0.3-3.5 % noisier than sigma/sqrt(n) at 40-10 frames at the default 4 sigma,
  4-13 % at 3 sigma, the clipped noise slightly low) and any common temporal
  noise; a value far above 1 means the line does not describe most pixels and
  is logged as a warning.  With only
  two temperatures there is no chi-square and ``s = 1``.

The product (``bias_model.fits``) has the A map as primary image with its
uncertainty (``UNCERT``) and ``MASK``, so ``CCDData.read`` opens it, and the
extensions ``B, SIGMA_A, SIGMA_B, COV_AB, CHI2DOF, NPTS`` plus the table of
input masters.  The ADU convention is that of :mod:`utils.adu`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from astropy.io import fits
from scipy import special

from .. import adu
from .. import headers as kw
from ..errors import InputPathError, UserError
from ..io import fitsio
from ..io.fitsio import provenance_cards, read_image, set_card, write_product
from ..io.tokens import number_text
from ..stack.blockops import LinearRows
from ..stack.stats import MAD_TO_STD, chi2_median_ratio, exact_median
from ..stack.tiles import PIXEL_BLOCK, ProductRows, pixel_blocks, row_tiles, tile_rows
from ._parallel import HAVE_NUMBA, njit
from .linear import fit_line_per_pixel

logger = logging.getLogger(__name__)

#: Bits of the model's MASK plane.
MASK_NONLINEAR = 1     # chi-square too high for a straight line (p < chi2_pvalue)
MASK_SLOPE = 2         # slope far from the population (robust z > slope_nsigma)
MASK_NOFIT = 4         # fewer than two valid masters, or excluded by the user's mask

#: Extension names of the model product, in order.
EXTENSIONS = ("B", "SIGMA_A", "SIGMA_B", "COV_AB", "CHI2DOF", "NPTS")

#: Default working-memory budget of the streamed fit [byte] (rows of every master per block).
MEMORY_LIMIT = 256e6


@contextlib.contextmanager
def open_bias_model(path: str | os.PathLike, *, lazy: bool = True):
    """The HDU list of a bias model product (``lazy``: HDUs read when used), checked.

    Raises
    ------
    InputPathError
        Missing or unreadable file, or a FITS file that is not a bias model.
    """
    path = Path(path)
    if not path.is_file():
        raise InputPathError(f"{path}: bias model not found; make it with "
                             "python bias_pipeline/run_pipeline.py")
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=lazy) as hdul:
            missing = [n for n in EXTENSIONS if n not in {h.name for h in hdul}]
            if missing:
                raise InputPathError(f"{path}: not a bias model (no {', '.join(missing)} "
                                     "extension); give the bias_model.fits of the bias "
                                     "pipeline")
            yield hdul
    except OSError as err:
        raise InputPathError(f"{path}: unreadable FITS ({err}); re-run the bias pipeline") \
            from err


def line_error(sigma_a: np.ndarray, sigma_b: np.ndarray, cov_ab: np.ndarray,
               d: np.float64) -> np.ndarray:
    """One-sigma error [adu] of ``A + B d`` per pixel from the errors of A [adu] and B
    [adu/degC] and their covariance [adu^2/degC], ``d = T - TREF`` [degC]; float32."""
    out = np.empty(np.shape(sigma_a), np.float32)
    # float64 by pixel blocks: the numbers of the whole-frame formula, without its
    # full-frame float64 temporaries (~170 MB at 2048 x 2048)
    sa, sb, cov, flat = (np.ravel(m) for m in (sigma_a, sigma_b, cov_ab, out))
    for blk in pixel_blocks(flat.size):
        var = (sa[blk].astype(np.float64) ** 2 + d * d * sb[blk].astype(np.float64) ** 2
               + 2 * d * cov[blk])
        flat[blk] = np.sqrt(np.maximum(var, 0))
    return out


class _BiasLine:
    """What every bias model evaluates from its ``a``, ``b`` maps [adu, adu/degC] and
    ``t_ref``, ``t_min``, ``t_max`` [degC]."""

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` [pixel]."""
        return self.a.shape

    def subtractor(self, temperatures: Sequence[float]):
        """``subtract(i, start, stop)`` for :func:`utils.stack.combine.combine`: the bias rows of
        frame ``i`` at its own temperature, ``a + b * float32(T_i - TREF)`` (thread-safe, no
        full-frame copy; a :class:`~utils.stack.blockops.LinearRows`, which combine evaluates
        in one pass)."""
        temps = np.asarray(temperatures, dtype=np.float64)
        if not np.all(np.isfinite(temps)):
            raise ValueError("every frame needs a finite temperature to evaluate the bias model")
        return LinearRows(self.a, self.b, [np.float32(t - self.t_ref) for t in temps])

    def covers(self, temperature: float, margin: float = 0.0) -> bool:
        """True when ``temperature`` lies within the fitted range (+- ``margin`` degC)."""
        return self.t_min - margin <= temperature <= self.t_max + margin


@dataclass
class BiasModel(_BiasLine):
    """Per-pixel bias line and its uncertainties (float32 maps of shape ``(H, W)``).

    Attributes
    ----------
    a : numpy.ndarray
        Bias at ``t_ref`` [adu].
    b : numpy.ndarray
        Temperature coefficient [adu/degC].
    sigma_a, sigma_b : numpy.ndarray
        One-sigma errors of ``a`` [adu] and ``b`` [adu/degC] (scaled by ``err_scale``).
    cov_ab : numpy.ndarray
        Covariance of ``a`` and ``b`` [adu^2/degC].
    chi2dof : numpy.ndarray
        Reduced chi-square with the scaled errors (NaN with two points).
    npts : numpy.ndarray
        Masters used per pixel (int16).
    mask : numpy.ndarray
        uint8 bit plane: :data:`MASK_NONLINEAR`, :data:`MASK_SLOPE`, :data:`MASK_NOFIT`.
    t_ref : float
        [degC] reference temperature of ``a``.
    t_min, t_max : float
        [degC] coolest and warmest master (the model is an interpolation there).
    err_scale : float
        Global factor applied to the noise-map errors (see module notes).
    adc_bits : int
        Converter bits of the inputs (``ADCBITS``).
    inputs : pandas.DataFrame
        The masters fitted: ``PATH, TEMP, NCOMBINE``.
    """

    a: np.ndarray
    b: np.ndarray
    sigma_a: np.ndarray
    sigma_b: np.ndarray
    cov_ab: np.ndarray
    chi2dof: np.ndarray
    npts: np.ndarray
    mask: np.ndarray
    t_ref: float = 0.0
    t_min: float = math.nan
    t_max: float = math.nan
    err_scale: float = 1.0
    adc_bits: int = adu.DEFAULT_ADC_BITS
    inputs: pd.DataFrame = field(default_factory=pd.DataFrame)

    def predict(self, temperature: float) -> np.ndarray:
        """Bias image at ``temperature`` [degC], float32 [adu]."""
        return (self.a + self.b * np.float32(temperature - self.t_ref)).astype(np.float32)

    def predict_err(self, temperature: float) -> np.ndarray:
        """One-sigma error of :meth:`predict` [adu], with the a-b covariance."""
        return line_error(self.sigma_a, self.sigma_b, self.cov_ab,
                          np.float64(temperature - self.t_ref))

    # --- product file ------------------------------------------------------------------------
    def header(self) -> fits.Header:
        """Primary header: model, reference temperature, range, error scale, ADU convention."""
        header = fits.Header()
        for key, value, comment in provenance_cards("BIAS_MODEL"):
            set_card(header, key, value, comment)
        finite = np.isfinite(self.chi2dof) & (self.mask == 0)
        usable = np.isfinite(self.b) & (self.mask == 0)
        for key, value, comment in (
                ("MODEL", "bias = A + B (T - TREF)", "per pixel, weighted least squares"),
                ("TREF", float(self.t_ref), "[degC] reference temperature of A"),
                (kw.TMIN, float(self.t_min), "[degC] coolest master fitted"),
                (kw.TMAX, float(self.t_max), "[degC] warmest master fitted"),
                ("NMASTERS", int(len(self.inputs)), "bias masters fitted"),
                ("ERRSCALE", float(self.err_scale), "noise-map errors multiplied by this"),
                ("CHI2MED", exact_median(self.chi2dof[finite]) if finite.any() else "NAN",
                 "median reduced chi-square, unmasked pixels"),
                # over the unmasked pixels, as summary.json's b_median_adu_per_degC: over
                # every pixel (masked nonlinear ones too) the two disagreed (7.98833 vs 7.98841)
                ("BMEDIAN", exact_median(self.b[usable]) if usable.any() else "NAN",
                 "[adu/degC] median temperature coefficient, unmasked pixels"),
                (kw.NMASKED, int((self.mask != 0).sum()), "pixels with MASK != 0"),
                ("MASKBITS", "1 nonlinear, 2 slope outlier, 4 no fit", "MASK bit meanings")):
            set_card(header, key, value, comment)
        for key, value, comment in adu.scaling_cards(self.adc_bits):
            set_card(header, key, value, comment)
        return header

    def write(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write ``bias_model.fits`` atomically (see module notes for the layout)."""
        header = self.header()
        for key, value in (extra or {}).items():
            value, comment = value if isinstance(value, tuple) else (value, "")
            set_card(header, key, value, comment)
        rate = f"{adu.UNIT} / deg_C"
        images = {"B": (self.b, rate), "SIGMA_A": (self.sigma_a, adu.UNIT),
                  "SIGMA_B": (self.sigma_b, rate), "COV_AB": (self.cov_ab, f"{adu.UNIT}2 / deg_C"),
                  "CHI2DOF": (self.chi2dof, ""), "NPTS": (self.npts.astype(np.int16), "")}
        tables = {"INPUTS": self.inputs} if len(self.inputs.columns) else None
        return write_product(path, self.a, header, unit=adu.UNIT, uncertainty=self.sigma_a,
                             mask=self.mask, images=images, tables=tables)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "BiasModel":
        """Load a model written by :meth:`write`.

        Raises
        ------
        InputPathError
            Missing file, or a FITS file that is not a bias model.
        """
        with open_bias_model(path, lazy=False) as hdul:
            names = {h.name for h in hdul}
            head = hdul[0].header
            maps = {n: np.asarray(hdul[n].data) for n in EXTENSIONS}
            mask = np.asarray(hdul["MASK"].data) if "MASK" in names else \
                np.zeros(maps["B"].shape, np.uint8)
            inputs = pd.DataFrame(np.asarray(hdul["INPUTS"].data)) if "INPUTS" in names \
                else pd.DataFrame()
            a = np.asarray(hdul[0].data, dtype=np.float32)
        for column in inputs.columns:
            if inputs[column].dtype.kind == "S":
                inputs[column] = inputs[column].str.decode("ascii")
        return cls(a=a, b=maps["B"].astype(np.float32), sigma_a=maps["SIGMA_A"].astype(np.float32),
                   sigma_b=maps["SIGMA_B"].astype(np.float32),
                   cov_ab=maps["COV_AB"].astype(np.float32),
                   chi2dof=maps["CHI2DOF"].astype(np.float32), npts=maps["NPTS"].astype(np.int16),
                   mask=mask.astype(np.uint8), t_ref=kw.get_float(head, "TREF", 0.0),
                   t_min=kw.get_float(head, kw.TMIN), t_max=kw.get_float(head, kw.TMAX),
                   err_scale=kw.get_float(head, "ERRSCALE", 1.0),
                   adc_bits=int(kw.get_float(head, kw.ADCBITS, adu.DEFAULT_ADC_BITS)),
                   inputs=inputs)

    @classmethod
    def from_maps(cls, a_path: str | os.PathLike, b_path: str | os.PathLike) -> "BiasModel":
        """A model from the old ``bias_a_map.fits``/``bias_b_map.fits`` pair (bias = a + b T).

        Their ``UNCERT`` extensions are used when present; the a-b covariance is
        not in those files, so it is taken as 0 (the error away from 0 degC is
        then only approximate).
        """
        a, a_head = read_image(a_path)
        b, _ = read_image(b_path)
        if a.shape != b.shape:
            raise UserError(f"{a_path} is {a.shape[1]}x{a.shape[0]} but {b_path} is "
                            f"{b.shape[1]}x{b.shape[0]}; give maps of the same model")

        def err(path, like):
            with fits.open(path, memmap=False) as hdul:
                if "UNCERT" in hdul:
                    return np.asarray(hdul["UNCERT"].data, dtype=np.float32)
            return np.zeros_like(like, dtype=np.float32)
        zeros = np.zeros(a.shape, np.float32)
        return cls(a=a.astype(np.float32), b=b.astype(np.float32), sigma_a=err(a_path, a),
                   sigma_b=err(b_path, b), cov_ab=zeros, chi2dof=zeros + np.nan,
                   npts=np.zeros(a.shape, np.int16), mask=np.zeros(a.shape, np.uint8),
                   t_ref=kw.get_float(a_head, "TREF", 0.0),
                   adc_bits=int(kw.get_float(a_head, kw.ADCBITS, adu.DEFAULT_ADC_BITS)))


@dataclass
class BiasLineModel(_BiasLine):
    """A bias model product opened for subtraction only: its A and B maps in memory,
    the errors of the line read by row blocks from the file when asked.

    What a stacking reference needs of :class:`BiasModel` (``subtractor``,
    ``predict_err``, ``covers``, ``shape``, ``a`` and ``b``) with two of its eight
    maps in memory (34 MB instead of 113 MB at 2048^2); :meth:`predict_err` gives the
    numbers of :meth:`BiasModel.predict_err` (the same elementwise formula, by row
    blocks).

    Attributes
    ----------
    a, b : numpy.ndarray
        Bias at ``t_ref`` [adu] and temperature coefficient [adu/degC], float32.
    t_ref, t_min, t_max : float
        [degC] reference temperature, coolest and warmest master fitted.
    errors : dict
        ``{"SIGMA_A" | "SIGMA_B" | "COV_AB": utils.io.fitsio.FitsLayout}``.
    """

    a: np.ndarray
    b: np.ndarray
    t_ref: float
    t_min: float
    t_max: float
    errors: dict

    @classmethod
    def read(cls, path: str | os.PathLike) -> "BiasLineModel":
        """Open a model written by :meth:`BiasModel.write` (its A and B read; the same checks
        and errors as :meth:`BiasModel.read`)."""
        with open_bias_model(path) as hdul:
            index = {h.name: i for i, h in enumerate(hdul)}
            head = hdul[0].header
            a = np.asarray(hdul[0].data, dtype=np.float32)
            b = np.asarray(hdul["B"].data).astype(np.float32)
        errors = {n: fitsio.fits_layout(path, index[n]) for n in ("SIGMA_A", "SIGMA_B", "COV_AB")}
        return cls(a, b, kw.get_float(head, "TREF", 0.0), kw.get_float(head, kw.TMIN),
                   kw.get_float(head, kw.TMAX), errors)

    def predict_err(self, temperature: float) -> np.ndarray:
        """One-sigma error of the bias at ``temperature`` [degC] [adu], float32, by row
        blocks of the error maps."""
        d = np.float64(temperature - self.t_ref)
        height, width = self.shape
        out = np.empty(self.shape, np.float32)
        for r0, r1 in row_tiles(height, max(1, PIXEL_BLOCK // width)):
            sa, sb, cov = (fitsio.read_rows(self.errors[n], r0, r1)
                           for n in ("SIGMA_A", "SIGMA_B", "COV_AB"))
            out[r0:r1] = line_error(sa, sb, cov, d)
        return out


@dataclass
class MasterStack:
    """Bias masters to fit, read lazily by row blocks.

    Attributes
    ----------
    paths : list of Path
        Master files (primary = master [adu], ``NOISE``, ``NCOMB``, ``MASK``).
    temperatures : numpy.ndarray
        [degC] mean temperature of each master's frames.
    """

    paths: list[Path]
    temperatures: np.ndarray

    def __post_init__(self):
        self.paths = [Path(p) for p in self.paths]
        self.temperatures = np.asarray(self.temperatures, dtype=np.float64)
        if len(self.paths) != self.temperatures.size:
            raise ValueError("one temperature per master is needed")
        shapes = {}
        for p in self.paths:
            with fits.open(p, memmap=False, lazy_load_hdus=True) as hdul:
                head = hdul[0].header
                shapes[p] = (head.get("NAXIS2"), head.get("NAXIS1"))
        if len(set(shapes.values())) > 1:
            detail = ", ".join(f"{p.name} {s[1]}x{s[0]}" for p, s in shapes.items())
            raise UserError(f"bias masters differ in shape ({detail}); "
                            "fit frames of one sensor mode only")
        self.shape = next(iter(shapes.values()))

    def read_block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(data, noise, count)`` of rows ``start:stop`` of every master, shape ``(M, rows, W)``;
        masked pixels are NaN in ``data``.  Read with the stacking engine's block reader."""
        return self.read_planes(start, stop)

    def read_planes(self, start: int, stop: int, planes=None):
        """:meth:`read_block` of the masters ``planes`` (indices; default all)."""
        rows = getattr(self, "_rows", None)
        if rows is None:
            rows = self._rows = ProductRows(self.paths, ("PRIMARY", "MASK", "NOISE", "NCOMB"))
        data = rows.read("PRIMARY", start, stop, planes=planes)
        data[rows.read("MASK", start, stop, fill=0.0, planes=planes) != 0] = np.nan
        return (data, rows.read("NOISE", start, stop, planes=planes),
                rows.read("NCOMB", start, stop, fill=1.0, planes=planes))


def pooled_errors(noise: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per-master standard errors from the pixel's noise pooled over all masters.

    Parameters
    ----------
    noise : numpy.ndarray, shape (M, ...)
        Per-pixel sample standard deviation of each master's inputs [adu].
    count : numpy.ndarray, shape (M, ...)
        Samples combined per pixel.

    Returns
    -------
    numpy.ndarray, shape (M, ...)
        ``noise_pool / sqrt(count)`` (NaN where no master has two samples).
    """
    return _errors_of_pool(_noise_pool(noise, count), count)


def _errors_of_pool(pool: np.ndarray, count: np.ndarray) -> np.ndarray:
    """:func:`pooled_errors` from the pooled noise (:func:`_noise_pool`) already taken."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return pool[None] / np.sqrt(np.where(count > 0, count, np.nan))


def _noise_pool(noise: np.ndarray, count: np.ndarray) -> np.ndarray:
    """[adu] temporal noise per pixel pooled over the masters (``n_k - 1`` weights)."""
    dof = np.where(np.isfinite(noise) & (count > 1), count - 1.0, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # a plain sum: every term is finite or inf (noise is finite where dof > 0, and 0.0
        # stands in elsewhere), so np.nansum's NaN-replaced copy was the same numbers
        return np.sqrt(np.sum(dof * np.where(dof > 0, noise, 0.0) ** 2, axis=0)
                       / dof.sum(axis=0))


def _nonlinear(chi2: np.ndarray, dof: np.ndarray, good: np.ndarray,
               pvalue: float) -> np.ndarray:
    """Pixels among ``good`` whose chi-square ``chi2 * dof`` (``dof`` whole numbers >= 1
    there, as floats) has a p-value ``chdtrc(dof, chi2 * dof)`` (``scipy.stats.chi2.sf``)
    below ``pvalue``: the same pixels as comparing every p-value, which costs ~0.1 us a pixel.
    The survival function falls with x, so a pixel whose x is more than 1e-4 (relative)
    above or below its dof's threshold ``chdtri(dof, pvalue)`` is decided by that comparison
    (over that band the p-value moves by orders of magnitude more than its rounding); the
    few inside the band, and a dof whose threshold is not a finite positive number, are
    evaluated as before."""
    flag = np.zeros(chi2.shape, bool)
    if not good.any():
        return flag
    x = chi2 * dof  # float64, as the p-values' argument always was
    d = np.where(good, dof, 1.0).astype(np.int64)
    table = special.chdtri(np.arange(max(int(d.max()), 1) + 1, dtype=np.float64), pvalue)
    table[~(np.isfinite(table) & (table > 0))] = np.nan  # (dof 0: not used)
    xc = table[d]
    with np.errstate(invalid="ignore"):
        np.greater(x, xc, out=flag)
        near = good & ~(np.abs(x - xc) > 1e-4 * xc)  # in the band, or no threshold
    flag &= good
    if near.any():
        flag[near] = special.chdtrc(np.maximum(dof[near], 1), x[near]) < pvalue
    return flag


def _held_out_py(y, count, noise_pool, sa, sb, cov, a, b, npts, dx, err_scale, residual,
                 error):
    """:meth:`CrossValidation.held_out`'s per-pixel numbers in one pass (numba): each step
    the float64 operation of the array path, in its order, so the same numbers."""
    h, w_ = y.shape
    for r in range(h):
        for c in range(w_):
            yy = np.float64(y[r, c])
            n = np.float64(count[r, c])
            sigma = noise_pool[r, c] / math.sqrt(n) if n > 0 else np.nan
            if not math.isfinite(yy):
                sigma = np.nan
            wt = 1.0 / (sigma * sigma) if math.isfinite(sigma) and sigma > 0 else 0.0
            s_a = np.float64(sa[r, c])
            s_b = np.float64(sb[r, c])
            lever = wt * (s_a * s_a + dx * dx * s_b * s_b + 2 * dx * np.float64(cov[r, c]))
            keep = 1.0 - lever
            ok = (npts[r, c] - (1 if wt > 0 else 0)) >= 2
            if not (ok and keep > 1e-12):
                keep = np.nan
            pred = np.float64(a[r, c]) + np.float64(b[r, c]) * dx
            residual[r, c] = (yy - pred) / keep
            error[r, c] = math.sqrt(sigma * sigma / keep) * err_scale


_held_out_numba = njit(nogil=True, cache=True)(_held_out_py) if HAVE_NUMBA else None


#: Columns of :meth:`CrossValidation.summary`, in order.
_SUMMARY_COLUMNS = ("TEMP", "NPIX", "MAE_MEAN", "MAE_STD", "MAPE_MEAN", "MAPE_STD", "PULL_MEAN",
                    "PULL_STD", "SIGMA_MEDIAN")


@dataclass
class CrossValidation:
    """Leave-one-temperature-out prediction of each master from the others, by deletion.

    The line is linear in its coefficients, so the refit without master ``k`` has a closed
    form (the PRESS / hat-matrix identity): with the point's weight ``w = 1 / sigma_k^2``
    and leverage ``h = w x_k^T C x_k`` (``C`` the coefficient covariance from the weights,
    ``x_k = (1, T_k - TREF)``), the held-out residual is ``r_k / (1 - h)`` (``r_k`` the
    full fit's) and its variance ``sigma_k^2 / (1 - h)`` (the master's error and the
    held-out prediction's, ``sigma_k^2 h / (1 - h)``, in quadrature) -- what M refits
    would give, to float rounding (tested), at the cost of none.  Computed per master on
    demand from the full fit's maps, one master in memory at a time.

    Attributes
    ----------
    temperatures : numpy.ndarray
        [degC] of each held-out master.
    """

    temperatures: np.ndarray
    stack: MasterStack
    t_ref: float
    fit: dict              # full fit's maps: a, b, sa, sb, cov (from the weights), npts
    noise_pool: np.ndarray  # [adu] pooled temporal noise per pixel (float64)
    err_scale: float
    predictable: np.ndarray  # per master: the others span two temperatures

    def held_out(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(residual, sigma, master)`` of master ``k`` [adu], ``(H, W)`` float32: held-out
        master minus its prediction from the others (NaN where not predictable), that
        residual's one-sigma error (scaled by ``err_scale``), the master."""
        data, _, count = self.stack.read_planes(0, self.stack.shape[0], [k])
        if not self.predictable[k]:
            nan = np.full(data[0].shape, np.nan, np.float32)
            return nan, nan.copy(), data[0]
        residual = np.empty(data[0].shape, np.float32)
        error = np.empty(data[0].shape, np.float32)
        dx = float(self.temperatures[k]) - self.t_ref
        f = self.fit
        # by row tiles: every step is per pixel, so the numbers are those of one whole-frame
        # pass, with ~10 float64 temporaries of a tile instead of the frame (~400 MB at 2048^2)
        if HAVE_NUMBA:  # one pass per pixel, no temporaries: the same operations in order
            _held_out_numba(data[0], count[0], self.noise_pool, f["sa"], f["sb"], f["cov"],
                            f["a"], f["b"], f["npts"], float(dx), float(self.err_scale),
                            residual, error)
            return residual, error, data[0]
        rows = tile_rows(1, data.shape[1:], 32e6, images=10, bytes_per_sample=8)
        for r0, r1 in row_tiles(data.shape[1], rows):
            y = data[0, r0:r1].astype(np.float64)
            n = count[0, r0:r1].astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                sigma = self.noise_pool[r0:r1] / np.sqrt(np.where(n > 0, n, np.nan))
                sigma = np.where(np.isfinite(y), sigma, np.nan)
                w = np.where(np.isfinite(sigma) & (sigma > 0), 1.0 / (sigma * sigma), 0.0)
                sa, sb, cov = (f[name][r0:r1].astype(np.float64) for name in ("sa", "sb", "cov"))
                lever = w * (sa * sa + dx * dx * sb * sb + 2 * dx * cov)
                keep = 1.0 - lever
                # the others must hold two points of the pixel for a line
                ok = (f["npts"][r0:r1] - (w > 0)) >= 2
                keep = np.where(ok & (keep > 1e-12), keep, np.nan)
                pred = f["a"][r0:r1].astype(np.float64) + f["b"][r0:r1].astype(np.float64) * dx
                residual[r0:r1] = (y - pred) / keep
                error[r0:r1] = np.sqrt(sigma * sigma / keep) * self.err_scale
        return residual, error, data[0]

    def summary(self, valid: np.ndarray | None = None) -> pd.DataFrame:
        """One row per held-out temperature: MAE, MAPE, pull mean and std, over ``valid`` pixels."""
        rows = []
        for k, t in enumerate(self.temperatures):
            residual, sigma, master = self.held_out(k)
            ok = np.isfinite(residual) & np.isfinite(sigma)
            if valid is not None:
                ok &= valid
            r, s, m = residual[ok], sigma[ok], master[ok]
            del residual, sigma, master  # the full frames: only the valid pixels' values count
            row = dict.fromkeys(_SUMMARY_COLUMNS, math.nan)
            row.update(TEMP=float(t), NPIX=int(ok.sum()))
            if r.size:
                # one full-frame-sized temporary at a time (each ~17 MB at 2048^2)
                with np.errstate(divide="ignore", invalid="ignore"):
                    ape = np.abs(r / m)
                del m
                ape *= 100
                row["MAPE_MEAN"], row["MAPE_STD"] = float(np.nanmean(ape)), float(np.nanstd(ape))
                del ape
                pull = r / s
                row["PULL_MEAN"], row["PULL_STD"] = float(np.mean(pull)), float(np.std(pull))
                del pull
                np.abs(r, out=r)
                row["MAE_MEAN"], row["MAE_STD"] = float(np.mean(r)), float(np.std(r))
                row["SIGMA_MEDIAN"] = exact_median(s)
            rows.append(row)
        return pd.DataFrame(rows)


def fit_bias_model(stack: MasterStack, *, t_ref: float = 0.0, chi2_pvalue: float = 1e-3,
                   slope_nsigma: float = 5.0, exclude: np.ndarray | None = None,
                   cross_validate: bool = True, adc_bits: int = adu.DEFAULT_ADC_BITS,
                   inputs: pd.DataFrame | None = None, memory_limit: float = MEMORY_LIMIT
                   ) -> tuple[BiasModel, CrossValidation | None]:
    """Fit ``bias = A + B (T - t_ref)`` per pixel and (optionally) cross-validate it.

    Parameters
    ----------
    stack : MasterStack
        Bias masters and their temperatures; at least two distinct temperatures.
    t_ref : float, optional
        [degC] reference temperature of A. Default 0 (A is the bias at 0 degC,
        as in the old ``bias_a_map``).
    chi2_pvalue : float, optional
        Pixels whose chi-square has a smaller p-value are flagged non-linear.
    slope_nsigma : float, optional
        Pixels whose slope is further than this many robust sigma from the
        median slope, and significantly so, are flagged.
    exclude : numpy.ndarray of bool, optional
        User mask (e.g. hot pixels): True pixels get NaN A and B and :data:`MASK_NOFIT`.
    cross_validate : bool, optional
        Also predict every master from the others (needs three temperatures), by the
        deletion formula (:class:`CrossValidation`), not by refits.
    memory_limit : float, optional
        [byte] working memory of one block of rows of every master (the fit streams by
        row blocks; the full-frame maps come on top).

    Returns
    -------
    (BiasModel, CrossValidation or None)

    Raises
    ------
    UserError
        Fewer than two distinct temperatures, or an ``exclude`` mask of the wrong shape.
    """
    temps = stack.temperatures
    distinct = np.unique(np.round(temps, 3))
    if distinct.size < 2:
        raise UserError(f"bias frames at a single temperature ({number_text(distinct[0], 'g')} "
                        "degC): a bias(T) model needs at least two; add bias frames at other "
                        "temperatures")
    height, width = stack.shape
    if exclude is not None and exclude.shape != (height, width):
        raise UserError(f"hot-pixel mask is {exclude.shape[1]}x{exclude.shape[0]} but the bias "
                        f"frames are {width}x{height}; give a mask of this sensor")
    m = temps.size
    out = {name: np.full((height, width), np.nan, np.float32)
           for name in ("a", "b", "sa", "sb", "cov", "chi2")}
    npts = np.zeros((height, width), np.int16)
    do_cv = cross_validate and m >= 3
    noise_pool = np.full((height, width), np.nan) if do_cv else None
    for start, stop in row_tiles(height, tile_rows(m, (height, width), memory_limit, images=3)):
        data, noise, count = stack.read_block(start, stop)
        pool = _noise_pool(noise, count)
        sigma = _errors_of_pool(pool, count)
        sigma = np.where(np.isfinite(data), sigma, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            fit = fit_line_per_pixel(temps, data, sigma, x_ref=t_ref)
        rows = slice(start, stop)
        out["a"][rows], out["b"][rows] = fit.intercept, fit.slope
        out["sa"][rows], out["sb"][rows] = fit.intercept_err, fit.slope_err
        out["cov"][rows], out["chi2"][rows] = fit.covariance, fit.chi2
        npts[rows] = (np.isfinite(data) & np.isfinite(sigma) & (sigma > 0)).sum(0)
        if do_cv:
            noise_pool[rows] = pool

    # one error scale for the frame: median reduced chi-square over its expected median
    dof = npts.astype(np.int32) - 2
    good = np.isfinite(out["chi2"]) & (dof > 0)
    err_scale = 1.0
    if good.sum() >= 10:
        common = int(exact_median(dof[good]))
        sel = good & (dof == common)
        err_scale = math.sqrt(exact_median(out["chi2"][sel]) / chi2_median_ratio(common))
        if err_scale > 1.5:
            logger.warning("bias model: median reduced chi-square is %.2f times its expected "
                           "value; a straight line does not describe most pixels (errors scaled "
                           "by %.2f)", err_scale ** 2, err_scale)
    s = np.float32(err_scale)
    sigma_a, sigma_b, cov = out["sa"] * s, out["sb"] * s, out["cov"] * s * s
    chi2 = out["chi2"] / (s * s)

    mask = np.zeros((height, width), np.uint8)
    mask[npts < 2] |= MASK_NOFIT
    # p-values by row blocks: float64 work the size of one block, not of five frames
    for start, stop in row_tiles(height, tile_rows(5, (height, width), memory_limit)):
        rows = slice(start, stop)
        dof_rows = dof[rows].astype(float)
        with np.errstate(invalid="ignore"):
            # chdtrc is what scipy.stats.chi2.sf evaluates for these arguments (x >= 0,
            # dof >= 1), compared with the threshold first (_nonlinear)
            flag = _nonlinear(chi2[rows], dof_rows, good[rows], chi2_pvalue)
        mask[rows][flag] |= MASK_NONLINEAR
    del dof, good
    b = out["b"]
    finite_b = np.isfinite(b) & (mask == 0)
    if finite_b.sum() >= 10:
        centre = exact_median(b[finite_b])
        spread = MAD_TO_STD * exact_median(np.abs(b[finite_b] - centre))
        with np.errstate(invalid="ignore", divide="ignore"):
            far = np.abs(b - centre) > slope_nsigma * max(spread, 1e-12)
            significant = np.abs(b - centre) > slope_nsigma * sigma_b
        mask[far & significant] |= MASK_SLOPE
    a = out["a"]
    if exclude is not None:
        exclude = exclude.astype(bool)
        a, b = a.copy(), b.copy()
        a[exclude] = np.nan
        b[exclude] = np.nan
        mask[exclude] |= MASK_NOFIT
    table = inputs if inputs is not None else pd.DataFrame(
        {"PATH": [p.name for p in stack.paths], "TEMP": temps})
    model = BiasModel(a=a, b=b, sigma_a=sigma_a, sigma_b=sigma_b, cov_ab=cov, chi2dof=chi2,
                      npts=npts, mask=mask, t_ref=float(t_ref), t_min=float(temps.min()),
                      t_max=float(temps.max()), err_scale=err_scale, adc_bits=adc_bits,
                      inputs=table)
    cv = None
    if do_cv:
        predictable = np.array([np.unique(np.round(np.delete(temps, k), 3)).size >= 2
                                for k in range(m)])
        cv = CrossValidation(temps.copy(), stack, float(t_ref),
                             {"a": out["a"], "b": out["b"], "sa": out["sa"], "sb": out["sb"],
                              "cov": out["cov"], "npts": npts},
                             noise_pool, float(s), predictable)
    return model, cv


__all__ = ["BiasModel", "BiasLineModel", "line_error", "open_bias_model", "MasterStack",
           "CrossValidation", "fit_bias_model", "pooled_errors",
           "chi2_median_ratio", "MASK_NONLINEAR", "MASK_SLOPE", "MASK_NOFIT", "EXTENSIONS"]
