"""Per-pixel flat-field model over temperature and exposure time.

``F(T, t) = A + B (T - TREF) + C (t - EXPREF)`` [1], fitted to the normalised masters of a
stage by weighted least squares per pixel (:func:`utils.models.linear.fit_linear_per_pixel`,
closed form), the masters read row block by row block so memory does not grow with their
number.  Weights: each master's smooth noise-model error
(:func:`flat_pipeline.master.model_error`: its noise line over its accepted frames, and
the error of the subtracted bias and dark), not the per-pixel ``UNCERT`` whose own
scatter would make the residuals heavy-tailed.  One frame-wide factor ``ERRSCALE`` =
``sqrt(median chi2/dof / its expected median)`` calibrates the errors, as in the bias and
dark models (the clipped stacks' errors are a little low).  Where the masters span one
temperature (or one exposure time) the data cannot constrain ``B`` (``C``): the term is
dropped, its map written as 0 with error 0, and the header (``DROPPED``) and log say so.
``TREF`` and ``EXPREF`` default to the masters' mean temperature and exposure (A is then
nearly uncorrelated with B and C); ``--t-ref`` / ``--exp-ref`` set them.

Product ``flat_model_fits/flat_model.fits``: ``A`` (primary, ``UNCERT``, ``MASK``), ``B``
[1/degC], ``C`` [1/s], ``SIGMA_A/B/C``, ``COV_AB``, ``COV_AC``, ``COV_BC``, ``CHI2DOF``,
``NPTS``, table ``INPUTS``; and the old names ``flat_A_map.fits``, ``flat_B_map.fits``,
``flat_C_map.fits``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from utils import headers as kw
from utils.errors import InputPathError, UserError
from utils.io import fitsio
from utils.io.fitsio import provenance_cards, set_card, write_product
from utils.models.dark_model import read_model_maps
from utils.models.linear import fit_linear_per_pixel
from utils.stack.stats import chi2_median_ratio, exact_median
from utils.stack.tiles import row_tiles, tile_rows

from .master import model_error

logger = logging.getLogger(__name__)

MODEL_FOLDER = "flat_model_fits"
MODEL_FILE = "flat_model.fits"
NAMES = ("A", "B", "C")
UNITS = {"A": "", "B": "1 / deg_C", "C": "1 / s"}
#: Most rows of one tile of the fit: its per-tile working set (the masters' rows and errors,
#: the fit's outputs) comes on top of the model's 10.5 full-frame maps; 128 rows of 2048
#: columns took the fit's traced peak at 2048^2 from 272 to 227 MB (the numbers are per
#: pixel: the same whatever the tiles).
TILE_ROWS = 128
EXTENSIONS = ("B", "C", "SIGMA_A", "SIGMA_B", "SIGMA_C", "COV_AB", "COV_AC", "COV_BC",
              "CHI2DOF", "NPTS")


@dataclass
class FlatModel:
    """Per-pixel ``F = A + B (T - t_ref) + C (t - exp_ref)`` with errors (float32 maps)."""

    coef: np.ndarray            # (3, H, W): A, B, C
    sigma: np.ndarray           # (3, H, W)
    cov: dict                   # {"AB", "AC", "BC"}: (H, W)
    chi2dof: np.ndarray
    npts: np.ndarray
    t_ref: float
    exp_ref: float
    err_scale: float = 1.0
    dropped: dict = field(default_factory=dict)
    inputs: pd.DataFrame = field(default_factory=pd.DataFrame)

    def _x(self, temperature: float, exptime: float) -> np.ndarray:
        return np.array([1.0, temperature - self.t_ref, exptime - self.exp_ref])

    def predict(self, temperature: float, exptime: float, rows: slice = slice(None)
                ) -> np.ndarray:
        """Model flat at (``temperature`` [degC], ``exptime`` [s]) [1], float32."""
        x = self._x(temperature, exptime)
        out = self.coef[0, rows].astype(np.float64)
        for j in (1, 2):
            if x[j] != 0:
                out = out + x[j] * self.coef[j, rows]
        return out.astype(np.float32)

    def quadratic(self, temperature: float, exptime: float, rows: slice = slice(None)
                  ) -> np.ndarray:
        """``x^T C x`` [1]: the variance of :meth:`predict`, float64."""
        x = self._x(temperature, exptime)
        s = self.sigma[:, rows].astype(np.float64)
        var = (x[0] * s[0]) ** 2 + (x[1] * s[1]) ** 2 + (x[2] * s[2]) ** 2
        for (i, j), name in (((0, 1), "AB"), ((0, 2), "AC"), ((1, 2), "BC")):
            if x[i] != 0 and x[j] != 0:
                var = var + 2 * x[i] * x[j] * self.cov[name][rows]
        return np.maximum(var, 0.0)

    def predict_err(self, temperature: float, exptime: float) -> np.ndarray:
        """One-sigma error of :meth:`predict` [1], float32."""
        return np.sqrt(self.quadratic(temperature, exptime)).astype(np.float32)

    def headline(self) -> dict:
        """Median coefficients and errors, dropped terms, error scale."""
        step = max(1, self.coef[0].size // 250000)   # medians of a regular subsample
        coef = self.coef.reshape(3, -1)[:, ::step]
        sigma = self.sigma.reshape(3, -1)[:, ::step]
        chi2 = self.chi2dof.ravel()[::step]
        good = np.isfinite(coef[0])
        out = {"t_ref_degC": self.t_ref, "exp_ref_s": self.exp_ref, "err_scale": self.err_scale,
               "dropped": dict(self.dropped), "masters": int(len(self.inputs))}
        for j, name in enumerate(NAMES):
            out[f"{name}_median"] = exact_median(coef[j][good]) if good.any() else math.nan
            out[f"{name}_sigma_median"] = exact_median(sigma[j][good]) if good.any() \
                else math.nan
        finite = np.isfinite(chi2)
        out["chi2dof_median"] = exact_median(chi2[finite]) if finite.any() else math.nan
        return out

    def write(self, folder: Path) -> list[Path]:
        """``flat_model.fits`` and the old ``flat_{A,B,C}_map.fits`` in ``folder``."""
        folder = Path(folder)
        header = fits.Header()
        for key, value, comment in provenance_cards("FLAT_MODEL"):
            set_card(header, key, value, comment)
        for key, value, comment in (
                ("MODEL", "F = A + B (T - TREF) + C (t - EXPREF)", "per pixel, weighted LSQ"),
                (kw.TREF, float(self.t_ref), "[degC] reference temperature"),
                ("EXPREF", float(self.exp_ref), "[s] reference exposure time"),
                (kw.ERRSCALE, float(self.err_scale), "weight-based errors multiplied by this"),
                ("NMASTERS", int(len(self.inputs)), "normalised masters fitted"),
                ("DROPPED", "; ".join(f"{k}: {v}" for k, v in self.dropped.items()) or "none",
                 "terms not constrained (written as 0)"),
                ("MASKBITS", "1 no fit", "MASK bit meanings")):
            set_card(header, key, value, comment)
        mask = (~np.isfinite(self.coef[0])).astype(np.uint8)
        images = {"B": (self.coef[1], UNITS["B"]), "C": (self.coef[2], UNITS["C"]),
                  "SIGMA_A": (self.sigma[0], ""), "SIGMA_B": (self.sigma[1], UNITS["B"]),
                  "SIGMA_C": (self.sigma[2], UNITS["C"]), "COV_AB": (self.cov["AB"], "1 / deg_C"),
                  "COV_AC": (self.cov["AC"], "1 / s"),
                  "COV_BC": (self.cov["BC"], "1 / (deg_C s)"),
                  "CHI2DOF": (self.chi2dof, ""), "NPTS": (self.npts.astype(np.int16), "")}
        out = [write_product(folder / MODEL_FILE, self.coef[0], header, unit="",
                             uncertainty=self.sigma[0], mask=mask, images=images,
                             tables={"INPUTS": self.inputs} if len(self.inputs.columns)
                             else None)]
        for j, name in enumerate(NAMES):
            alias = fits.Header()
            for key, value, comment in provenance_cards("FLAT_MODEL_MAP"):
                set_card(alias, key, value, comment)
            set_card(alias, "MODELFIL", MODEL_FILE, "full model with covariances")
            set_card(alias, "TERM", name, "F = A + B (T - TREF) + C (t - EXPREF)")
            set_card(alias, kw.TREF, float(self.t_ref), "[degC]")
            set_card(alias, "EXPREF", float(self.exp_ref), "[s]")
            set_card(alias, "FITTED", name not in self.dropped, "False: not constrained, 0")
            out.append(write_product(folder / f"flat_{name}_map.fits", self.coef[j], alias,
                                     unit=UNITS[name], uncertainty=self.sigma[j], mask=mask))
        return out

    @classmethod
    def read(cls, path: str | Path) -> FlatModel:
        """Load :meth:`write`'s ``flat_model.fits``.

        Raises
        ------
        InputPathError
            Missing file or not a flat model.
        """
        path = Path(path)
        if not path.is_file():
            raise InputPathError(f"{path}: flat model not found; run the flat pipeline in mode "
                                 "full or fit_model first, or give --model-dir")
        try:
            maps, head = read_model_maps(path, EXTENSIONS)
        except InputPathError as err:
            raise InputPathError(str(err).replace("dark model", "flat model")) from err
        coef = np.stack([maps["PRIMARY"], maps["B"], maps["C"]]).astype(np.float32)
        sigma = np.stack([maps["SIGMA_A"], maps["SIGMA_B"], maps["SIGMA_C"]]).astype(np.float32)
        dropped = {}
        text = str(head.get("DROPPED", "none"))
        if text != "none":
            for part in text.split("; "):
                name, _, why = part.partition(": ")
                dropped[name] = why
        return cls(coef, sigma, {k: maps[f"COV_{k}"].astype(np.float32) for k in
                                 ("AB", "AC", "BC")},
                   maps["CHI2DOF"].astype(np.float32), maps["NPTS"].astype(np.int16),
                   kw.get_float(head, kw.TREF), kw.get_float(head, "EXPREF"),
                   kw.get_float(head, kw.ERRSCALE, 1.0), dropped, maps["INPUTS"])


class MasterReader:
    """Rows of a master and of its noise-model error, read straight from the file.

    The extensions' data sections are located once (:func:`utils.io.fitsio.fits_layout`)
    and then read by row ranges with ``os.pread``: the masters are streamed block by
    block many times (flat model, PRNU), and re-parsing their headers each time would cost
    more than the pixels.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with fits.open(self.path, memmap=False, lazy_load_hdus=True) as hdul:
            names = [h.name for h in hdul]
            self.header = hdul[0].header.copy()
        self.layouts = {name: fitsio.fits_layout(self.path, names.index(name))
                        for name in ("PRIMARY", "MASK", "NCOMB", "SUBERR", "UNCERT")
                        if name in names}
        self.shape = self.layouts["PRIMARY"].shape

    def image(self, name: str, start: int, stop: int, fill: float) -> np.ndarray:
        """Rows ``start:stop`` of extension ``name`` (``fill`` when the master has none)."""
        if name not in self.layouts:
            return np.full((stop - start, self.shape[1]), fill, np.float32)
        return fitsio.read_rows(self.layouts[name], start, stop)

    def read(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start:stop`` of the master (NaN where masked) and their noise-model error
        (:func:`flat_pipeline.master.model_error`)."""
        stop = self.shape[0] if stop is None else stop
        data = self.image("PRIMARY", start, stop, np.nan)
        data[self.image("MASK", start, stop, 0.0) != 0] = np.nan
        # UNCERT only for a master without a noise line (model_error's fallback): the
        # masters are read block by block four times a run
        line = all(math.isfinite(kw.get_float(self.header, k)) for k in ("NOISEA", "NOISEB"))
        err = model_error(data, self.image("NCOMB", start, stop, 1.0),
                          self.image("SUBERR", start, stop, 0.0), self.header,
                          None if line else self.image("UNCERT", start, stop, np.nan))
        return data, err


_READERS: dict = {}


def reader(path: str | Path) -> MasterReader:
    """The :class:`MasterReader` of a master file (one per file and version, kept)."""
    path = Path(path)
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _READERS:
        if len(_READERS) > 256:
            _READERS.clear()
        _READERS[key] = MasterReader(path)
    return _READERS[key]


def read_rows(path: Path, start: int = 0, stop: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a master (NaN where masked) and their noise-model error."""
    return reader(path).read(start, stop)


def fit_flat_model(masters, *, t_ref: float | None = None, exp_ref: float | None = None,
                   shape: tuple[int, int], memory_limit: float = 256e6) -> FlatModel:
    """Fit the model to masters (:class:`flat_pipeline.master.FlatMaster`; see module notes).

    Raises
    ------
    UserError
        Fewer than two masters.
    """
    if len(masters) < 2:
        raise UserError(f"a flat model over temperature and exposure needs two masters or "
                        f"more; this stage has {len(masters)}")
    temps = np.array([m.tavg for m in masters], dtype=np.float64)
    exps = np.array([m.exptime for m in masters], dtype=np.float64)
    t_ref = float(np.mean(temps)) if t_ref is None else float(t_ref)
    exp_ref = float(np.mean(exps)) if exp_ref is None else float(exp_ref)
    design = np.stack([np.ones_like(temps), temps - t_ref, exps - exp_ref], axis=1)
    # one temperature bin (or one exposure): the few 0.01 degC between the masters' mean
    # temperatures constrain nothing physical; drop the term rather than fit noise
    if len({m.key.temperature for m in masters}) < 2:
        design[:, 1] = 0.0
    if len({m.key.exptime for m in masters}) < 2:
        design[:, 2] = 0.0
    h, w = shape
    coef = np.full((3, h, w), np.nan, np.float32)
    sigma = np.full((3, h, w), np.nan, np.float32)
    cov = {k: np.full((h, w), np.nan, np.float32) for k in ("AB", "AC", "BC")}
    chi2 = np.full((h, w), np.nan, np.float32)
    npts = np.zeros((h, w), np.int16)
    dropped: dict = {}
    readers = [reader(m.path) for m in masters]
    # blocks of rows of every master within the memory budget (--memory-limit), at most
    # TILE_ROWS
    for start, stop in row_tiles(h, tile_rows(len(masters), shape, memory_limit, images=2,
                                              max_rows=TILE_ROWS)):
        blocks = [r.read(start, stop) for r in readers]
        y = np.stack([b[0] for b in blocks])
        s = np.stack([b[1] for b in blocks])
        with np.errstate(invalid="ignore", divide="ignore"):
            fit = fit_linear_per_pixel(design, y, s, names=NAMES)
        rows = slice(start, stop)
        coef[:, rows], sigma[:, rows] = fit.coef, fit.err
        cov["AB"][rows], cov["AC"][rows] = fit.covariance[0, 1], fit.covariance[0, 2]
        cov["BC"][rows] = fit.covariance[1, 2]
        chi2[rows], npts[rows] = fit.chi2, fit.npoints
        dropped = fit.dropped
        del blocks, y, s, fit  # not held while the next tile is read and fitted
    for name in dropped:
        dropped[name] = ("masters at one temperature" if name == "B"
                         else "masters at one exposure time")
        logger.warning("flat model: %s; term %s not fitted (written as 0)", dropped[name], name)
    n_fit = 3 - len(dropped)
    dof = npts - np.int16(n_fit)  # int16 as npts: a masters' count (no int64 frame copies)
    good = np.isfinite(chi2) & (dof > 0)
    scale = 1.0
    if good.sum() >= 10:
        common = int(exact_median(dof[good]))
        sel = good & (dof == common)
        scale = math.sqrt(exact_median(chi2[sel]) / chi2_median_ratio(common))
    s = np.float32(scale)
    sigma *= s
    for k in cov:
        cov[k] *= s * s
    chi2 /= s * s
    inputs = pd.DataFrame({"TAG": [m.tag for m in masters], "TAVG": temps, "EXPTIME": exps,
                           "LEVEL": [m.level for m in masters],
                           "PATH": [Path(m.path).name for m in masters]})
    model = FlatModel(coef, sigma, cov, chi2, npts, t_ref, exp_ref, scale, dropped, inputs)
    head = model.headline()
    logger.info("flat model of %d masters: median B %.3g /degC, C %.3g /s (ERRSCALE %.2f)",
                len(masters), head["B_median"], head["C_median"], scale)
    return model


__all__ = ["FlatModel", "fit_flat_model", "read_rows", "reader", "MasterReader", "MODEL_FOLDER",
           "MODEL_FILE", "NAMES"]
