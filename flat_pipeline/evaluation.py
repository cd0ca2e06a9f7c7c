"""The flat model against each master: MAE, MAPE and leave-one-out pulls.

For each normalised master ``F_k`` at (``T_k``, ``t_k``), with the model ``F^`` fitted to
all masters: residual ``r = F_k - F^(T_k, t_k)``; MAE = mean ``|r|`` [1]; MAPE = mean
``|r| / |F_k|`` x 100 [%]; over valid pixels.  The pull uses the model fitted *without*
master ``k`` (an in-sample prediction is not independent of the master it is compared
with), and the master's noise-model error (the one the fit weighed).  For a linear
least-squares fit that refit has a closed form: with the weight
``w = 1 / sigma_k^2`` of the point and its leverage ``h = w x_k^T C x_k`` (``C`` the
coefficient covariance from the weights), the held-out residual is ``r / (1 - h)`` and
its variance ``sigma_k^2 / (1 - h)``, so ``pull = r sqrt(w) / sqrt(1 - h) / ERRSCALE``
-- exactly the refit's, without refitting (the tests check the identity).  Pixels
where the held-out fit is not determined (``h = 1``: as many masters as terms) have no
pull.  One master is in memory at a time.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from utils.io.fitsio import provenance_cards, set_card, write_product

from .flat_model import FlatModel, read_rows

EVAL_FOLDER = "flat_evaluation"
COLUMNS = ["TAG", "TAVG", "EXPTIME", "NPIX", "MAE", "MAPE_PCT", "PULL_MEAN", "PULL_STD",
           "NPIX_PULL", "PULL_MODEL", "RESIDUAL_MEDIAN"]
#: Longest side of the residual maps kept for figures [px] (block means).
MAP_SIDE = 256


@dataclass
class Evaluation:
    """Summary table and, per master, reduced ``|r|`` and APE maps for figures."""

    table: pd.DataFrame
    maps: dict      # tag -> (|r| [1], APE [%]) reduced maps


def _reduce(image: np.ndarray, side: int = MAP_SIDE) -> np.ndarray:
    f = max(1, int(np.ceil(max(image.shape) / side)))
    if f == 1:
        return image.astype(np.float32)
    h, w = (image.shape[0] // f) * f, (image.shape[1] // f) * f
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(image[:h, :w].reshape(h // f, f, w // f, f), axis=(1, 3)
                          ).astype(np.float32)


def _eval_header(tag: str, what: str) -> fits.Header:
    header = fits.Header()
    for key, value, comment in provenance_cards("FLAT_EVALUATION"):
        set_card(header, key, value, comment)
    set_card(header, "MASTER", tag, "master compared with the flat model")
    set_card(header, "QUANTITY", what, "")
    return header


def evaluate(model: FlatModel, masters, *, exclude: np.ndarray | None = None,
             fits_dir: Path | None = None) -> tuple[Evaluation, list[Path]]:
    """Compare the model with every master (see module notes).

    Parameters
    ----------
    model : FlatModel
        The fitted model.
    masters : list of FlatMaster
        The masters (``tag``, ``tavg``, ``exptime``, ``path``).
    exclude : numpy.ndarray of bool, optional
        Pixels left out of the statistics (defects).
    fits_dir : pathlib.Path, optional
        Also write ``<master>_diff.fits`` (residual with ``UNCERT``), ``_mae.fits`` and
        ``_mape.fits`` per master there (``--save-eval-fits``).
    """
    rows, maps, files = [], {}, []
    s = model.err_scale if model.err_scale > 0 else 1.0
    for m in masters:
        data, err = read_rows(m.path)                       # the errors the fit weighed
        pred = model.predict(m.tavg, m.exptime)
        quad = model.quadratic(m.tavg, m.exptime)          # x^T C x with the scaled errors
        real = data.astype(np.float64)
        err = err.astype(np.float64)
        resid = real - pred
        ok = np.isfinite(resid) & np.isfinite(err) & (err > 0)
        if exclude is not None:
            ok &= ~exclude
        with np.errstate(divide="ignore", invalid="ignore"):
            w = 1.0 / err ** 2
            lev = w * quad / (s * s)                       # leverage with the weights' C
            pull = np.where(lev < 1 - 1e-6, resid * np.sqrt(w) / np.sqrt(1 - lev) / s, np.nan)
            ape = 100.0 * np.abs(resid / real)
        p_ok = ok & np.isfinite(pull)
        rows.append({"TAG": m.tag, "TAVG": m.tavg, "EXPTIME": m.exptime, "NPIX": int(ok.sum()),
                     "MAE": float(np.mean(np.abs(resid[ok]))) if ok.any() else math.nan,
                     "MAPE_PCT": float(np.mean(ape[ok])) if ok.any() else math.nan,
                     "PULL_MEAN": float(np.mean(pull[p_ok])) if p_ok.any() else math.nan,
                     "PULL_STD": float(np.std(pull[p_ok])) if p_ok.any() else math.nan,
                     "NPIX_PULL": int(p_ok.sum()),
                     "PULL_MODEL": "leave-one-master-out" if p_ok.any() else "not available",
                     "RESIDUAL_MEDIAN": float(np.median(resid[ok])) if ok.any() else math.nan})
        abs_r = np.where(ok, np.abs(resid), np.nan)
        ape_map = np.where(ok, ape, np.nan)
        maps[m.tag] = (_reduce(abs_r), _reduce(ape_map))
        if fits_dir is not None:
            stem = Path(m.path).stem
            total = np.sqrt(err ** 2 + quad).astype(np.float32)
            for suffix, data, unit, what, unc in (
                    ("diff", resid, "", "master - model", total),
                    ("mae", abs_r, "", "|master - model|", None),
                    ("mape", ape_map, "%", "100 |master - model| / master", None)):
                header = _eval_header(m.tag, what)
                images = {"PULL": (pull.astype(np.float32), "")} if suffix == "diff" else None
                files.append(write_product(fits_dir / f"{stem}_{suffix}.fits",
                                           np.asarray(data, np.float32), header, unit=unit,
                                           uncertainty=unc, mask=~ok, images=images))
    table = pd.DataFrame(rows, columns=COLUMNS).sort_values(["TAVG", "EXPTIME"])
    return Evaluation(table.reset_index(drop=True), maps), files


__all__ = ["Evaluation", "evaluate", "EVAL_FOLDER", "COLUMNS"]
