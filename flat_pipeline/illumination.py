"""Illumination (vignetting) of every master flat and the vignetting-corrected masters.

The model (:mod:`utils.models.illumination`): a radial polynomial in even powers of the
distance to a fitted optical centre, to ``r^6``, optionally times a tilted-lamp plane
(``--tilt``), fitted robustly to the master's block medians with the known defects
masked.  Products per master:

* ``illumination_model/illumination_<tag>.fits``: the illumination relative to the
  optical centre ``V = M / c0`` (1 there) with its ``UNCERT`` (from the parameter
  covariance), the parameters and errors as header cards (``X0, Y0`` [px], ``C0..C6``,
  ``TX, TY``), the corner fall-off ``CORNFALL`` [%] and the residual rms ``RESRMS``
  [%] of ``master / M - 1`` at full resolution (the PRNU and noise), and the
  ``COVAR`` image of the parameter covariance;
* ``flat_vignetting_corrected/master_flat_<tag>_vigncorr.fits``: ``master / V``
  (old folder name), errors of both in quadrature;
* ``illumination_model/illumination.csv``: one row per master.

``vignetting_only`` divides the normalised frames by ``V`` instead (given with
``--illumination-model`` as such a file, or fitted to their set's master).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from utils import headers as kw
from utils.errors import InputPathError
from utils.io.fitsio import provenance_cards, read_image, set_card, write_product
from utils.models.illumination import IlluminationModel, fit_illumination
from utils.stack.stats import MAD_TO_STD, exact_median

from .flat_model import reader

logger = logging.getLogger(__name__)

ILLUMINATION_FOLDER = "illumination_model"
CORRECTED_FOLDER = "flat_vignetting_corrected"
MODEL_TEXT = "M = (C0 + C2 rho^2 + C4 rho^4 + C6 rho^6) (1 + TX X + TY Y)"


@dataclass
class Illumination:
    """The fitted model of one master and its full-resolution maps.

    Attributes
    ----------
    tag : str
        The master's tag.
    model : IlluminationModel
        Parameters, covariance, binning.
    relative, relative_err : numpy.ndarray
        ``V = M / c0`` and its one-sigma error [1].
    residual_rms : float
        [1] robust rms of ``master / M - 1`` over valid, non-defect pixels.
    """

    tag: str
    model: IlluminationModel
    relative: np.ndarray
    relative_err: np.ndarray
    residual_rms: float

    def row(self) -> dict:
        """Row of ``illumination.csv``."""
        m = self.model
        fall, fall_err = m.corner_falloff()
        row = {"TAG": self.tag}
        for name in m.names:
            row[name.upper()] = m.value(name)
            row[name.upper() + "_ERR"] = m.error(name)
        row.update(CORNER_FALLOFF_PCT=fall, CORNER_FALLOFF_ERR_PCT=fall_err,
                   RESIDUAL_RMS_PCT=100 * self.residual_rms,
                   BINNED_RESIDUAL_RMS_PCT=100 * m.residual_rms, BINNING=m.binning,
                   NPOINTS=m.n_points, NREJECTED=m.n_rejected, RNORM=m.r_norm)
        return row


def fit_master(tag: str, data: np.ndarray, exclude: np.ndarray | None = None, *,
               tilt: bool = False) -> Illumination:
    """Fit the illumination of one master (NaN pixels and ``exclude`` left out)."""
    bad = ~np.isfinite(data)
    if exclude is not None:
        bad |= exclude
    model = fit_illumination(data, bad, tilt=tilt)
    relative, err = model.evaluate(relative=True, with_error=True)
    ratio = data / (relative * np.float32(model.value("c0"))) - 1.0
    good = ratio[~bad & np.isfinite(ratio)][::max(1, data.size // 500000)]
    rms = MAD_TO_STD * exact_median(np.abs(good - exact_median(good))) if good.size else math.nan
    x0, y0 = model.centre
    logger.info("illumination %s: optical centre (%.2f +- %.2f, %.2f +- %.2f) px, corner "
                "fall-off %.2f %%, residual rms %.2f %%", tag, x0, model.error("x0"), y0,
                model.error("y0"), model.corner_falloff()[0], 100 * rms)
    return Illumination(tag, model, relative, err, rms)


def write_illumination(ill: Illumination, path: Path, master_path: Path) -> Path:
    """``illumination_<tag>.fits`` (see module notes)."""
    m = ill.model
    header = fits.Header()
    for key, value, comment in provenance_cards("FLAT_ILLUMINATION"):
        set_card(header, key, value, comment)
    set_card(header, "MODEL", MODEL_TEXT if m.tilt else MODEL_TEXT.split(" (1 +")[0],
             "rho = r / RNORM, X = (x - X0) / RNORM")
    set_card(header, "PRIMARY", "V = M / C0", "illumination relative to the optical centre")
    set_card(header, "MASTER", master_path.name, "master flat fitted")
    units = {"x0": "px", "y0": "px"}
    for name in m.names:
        key = name.upper()
        set_card(header, key, m.value(name), f"[{units.get(name, '1')}] fitted")
        set_card(header, key[:5] + "ERR", m.error(name), f"[{units.get(name, '1')}] 1-sigma")
    fall, fall_err = m.corner_falloff()
    for key, value, comment in (
            ("RNORM", m.r_norm, "[px] half-diagonal of the frame"),
            ("CORNFALL", fall, "[%] mean illumination loss at the corners"),
            ("CORNERR", fall_err, "[%] 1-sigma error of CORNFALL"),
            ("RESRMS", 100 * ill.residual_rms, "[%] robust rms of master / M - 1"),
            ("BINNING", m.binning, "[px] block side of the binned fit"),
            ("NBINPTS", m.n_points, "binned points fitted"),
            ("NREJECT", m.n_rejected, "binned points clipped")):
        set_card(header, key, value, comment)
    return write_product(path, ill.relative, header, unit="", uncertainty=ill.relative_err,
                         mask=~np.isfinite(ill.relative),
                         images={"COVAR": (m.covariance.astype(np.float64), "")})


def read_relative_illumination(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """The relative illumination ``V`` of an ``illumination_<tag>.fits`` (``--illumination-model``).

    Raises
    ------
    InputPathError
        Missing file, or a map of another shape.
    """
    path = Path(path)
    if not path.is_file():
        raise InputPathError(f"{path}: illumination model not found; give an "
                             "illumination_model/illumination_<tag>.fits of this pipeline")
    data, header = read_image(path)
    if data.shape != shape:
        raise InputPathError(f"{path} is {data.shape[1]}x{data.shape[0]} but the flats are "
                             f"{shape[1]}x{shape[0]}")
    if header.get(kw.PRODUCT) != "FLAT_ILLUMINATION":
        logger.warning("%s: not written by this pipeline (PRODUCT %s); used as the relative "
                       "illumination", path, header.get(kw.PRODUCT))
    return np.asarray(data, np.float32)


def write_corrected(master_path: Path, ill: Illumination, path: Path,
                    master: np.ndarray | None = None) -> Path:
    """``master / V`` with both errors in quadrature (``master``: the master's image, NaN
    where masked, when already read)."""
    rd = reader(master_path)
    if master is None:
        master = rd.image("PRIMARY", 0, rd.shape[0], np.nan)
        master[rd.image("MASK", 0, rd.shape[0], 0.0) != 0] = np.nan
    stderr = rd.image("UNCERT", 0, rd.shape[0], np.nan)
    v = ill.relative
    data = master / v
    err = np.abs(data) * np.sqrt((stderr / master) ** 2 + (ill.relative_err / v) ** 2)
    header = rd.header.copy()
    for key in ("BUNIT",):
        header.remove(key, ignore_missing=True)
    set_card(header, kw.PRODUCT, "MASTER_FLAT_VIGNCORR", "kind of product")
    set_card(header, "FLATSTEP", "vignetting_corrected", "flat pipeline step")
    set_card(header, "FLATVIGN", "fitted model", "divided by the relative illumination")
    set_card(header, "ILLUMFIL", f"illumination_{ill.tag}.fits", "model divided out")
    return write_product(path, data, header, unit="", uncertainty=err,
                         mask=~np.isfinite(data))


def illumination_table(items: list[Illumination]) -> pd.DataFrame:
    """``illumination.csv``."""
    return pd.DataFrame([i.row() for i in items])


__all__ = ["Illumination", "fit_master", "write_illumination", "write_corrected",
           "read_relative_illumination", "illumination_table", "ILLUMINATION_FOLDER",
           "CORRECTED_FOLDER"]
