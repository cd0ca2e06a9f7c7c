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
pull.  Masters are read by row blocks, one at a time.
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

from .flat_model import FlatModel, reader

EVAL_FOLDER = "flat_evaluation"
COLUMNS = ["TAG", "TAVG", "EXPTIME", "NPIX", "MAE", "MAPE_PCT", "PULL_MEAN", "PULL_STD",
           "NPIX_PULL", "PULL_MODEL", "RESIDUAL_MEAN"]
#: Longest side of the residual maps kept for figures [px] (block means).
MAP_SIDE = 256


@dataclass
class Evaluation:
    """Summary table and, per master, reduced ``|r|`` and APE maps for figures."""

    table: pd.DataFrame
    maps: dict      # tag -> (|r| [1], APE [%]) reduced maps


def _eval_header(tag: str, what: str) -> fits.Header:
    header = fits.Header()
    for key, value, comment in provenance_cards("FLAT_EVALUATION"):
        set_card(header, key, value, comment)
    set_card(header, "MASTER", tag, "master compared with the flat model")
    set_card(header, "QUANTITY", what, "")
    return header


#: PULL_MODEL of a master whose every pixel has leverage 1: as many masters as fitted terms,
#: the model passes through each master and its residuals (MAE ~1e-8) are float rounding
EXACT_FIT = "none: exact fit (as many masters as terms)"


def evaluate(model: FlatModel, masters, *, exclude: np.ndarray | None = None,
             fits_dir: Path | None = None, maps: bool = True
             ) -> tuple[Evaluation, list[Path]]:
    """Compare the model with every master (see module notes), row block by row block.

    Parameters
    ----------
    model : FlatModel
        The fitted model.
    masters : list of FlatMaster
        The masters (``tag``, ``tavg``, ``exptime``, ``path``).
    exclude : numpy.ndarray of bool, optional
        Pixels left out of the statistics (defects).
    fits_dir : pathlib.Path, optional
        Also write ``<master>_diff.fits`` (residual with ``UNCERT`` and the ``PULL``
        image), ``_mae.fits`` and ``_mape.fits`` per master there (``--save-eval-fits``).
    maps : bool, optional
        Also the reduced ``|r|`` and APE maps (only figures of level ``all`` draw them);
        without, ``Evaluation.maps`` is empty and the table the same.
    """
    want_maps, maps = maps, {}
    rows, files = [], []
    s = model.err_scale if model.err_scale > 0 else 1.0
    h, w = model.coef.shape[1:]
    f = max(1, int(np.ceil(max(h, w) / MAP_SIDE)))
    step = f * max(1, 256 // f)          # row blocks aligned with the figure's blocks
    # rows (and maps) in grid order, temperature bin then exposure: sorted on TAVG, a mean
    # reading, the 0.15 s master came after 0.7 s when its set ran 0.013 degC warmer
    for m in sorted(masters, key=lambda m: (m.key.temperature, m.exptime)):
        rd = reader(m.path)
        acc = dict.fromkeys(("n", "abs", "ape", "res", "np", "p", "p2"), 0.0)
        reduced = ([], [])
        full = ([], [], [], []) if fits_dir is not None else None
        for start in range(0, h, step):
            stop = min(h, start + step)
            rs = slice(start, stop)
            real, err = rd.read(start, stop)
            pred = model.predict(m.tavg, m.exptime, rs)
            quad = model.quadratic(m.tavg, m.exptime, rs).astype(np.float32)
            resid = real - pred
            ok = np.isfinite(resid) & np.isfinite(err) & (err > 0)
            if exclude is not None:
                ok &= ~exclude[rs]
            with np.errstate(divide="ignore", invalid="ignore"):
                w_pt = np.float32(1.0) / (err * err)
                lev = w_pt * quad / np.float32(s * s)    # leverage with the weights' C
                pull = np.where(lev < 1 - 1e-6, resid * np.sqrt(w_pt) / np.sqrt(1 - lev)
                                / np.float32(s), np.float32(np.nan))
                ape = np.float32(100) * np.abs(resid / real)
            p_ok = ok & np.isfinite(pull)
            acc["n"] += ok.sum()
            acc["abs"] += float(np.abs(resid[ok]).sum(dtype=np.float64))
            acc["ape"] += float(ape[ok].sum(dtype=np.float64))
            acc["res"] += float(resid[ok].sum(dtype=np.float64))
            acc["np"] += p_ok.sum()
            acc["p"] += float(pull[p_ok].sum(dtype=np.float64))
            acc["p2"] += float((pull[p_ok].astype(np.float64) ** 2).sum())
            if want_maps or full is not None:
                ape_map = np.where(ok, ape, np.float32(np.nan))
            if want_maps:
                abs_r = np.where(ok, np.abs(resid), np.float32(np.nan))
                reduced[0].append(_reduce_rows(abs_r, f))
                reduced[1].append(_reduce_rows(ape_map, f))
            if full is not None:
                total = np.sqrt(err * err + quad)
                for store, value in zip(full, (np.where(ok, resid, np.nan), total, ape_map,
                                               pull)):
                    store.append(value.astype(np.float32))
        n, n_p = acc["n"], acc["np"]
        mean_p = acc["p"] / n_p if n_p else math.nan
        rows.append({"TAG": m.tag, "TAVG": m.tavg, "EXPTIME": m.exptime, "NPIX": int(n),
                     "MAE": acc["abs"] / n if n else math.nan,
                     "MAPE_PCT": acc["ape"] / n if n else math.nan,
                     "PULL_MEAN": mean_p,
                     "PULL_STD": math.sqrt(max(acc["p2"] / n_p - mean_p ** 2, 0)) if n_p
                     else math.nan,
                     "NPIX_PULL": int(n_p),
                     "PULL_MODEL": "leave-one-master-out" if n_p else
                     EXACT_FIT if n else "not available",
                     "RESIDUAL_MEAN": acc["res"] / n if n else math.nan})
        if want_maps:
            maps[m.tag] = (np.concatenate(reduced[0]), np.concatenate(reduced[1]))
        if full is not None:
            resid, total, ape_map, pull = (np.concatenate(v) for v in full)
            ok = np.isfinite(resid)
            stem = Path(m.path).stem
            for suffix, data, unit, what, unc in (
                    ("diff", resid, "", "master - model", total),
                    ("mae", np.abs(resid), "", "|master - model|", None),
                    ("mape", ape_map, "%", "100 |master - model| / master", None)):
                header = _eval_header(m.tag, what)
                images = {"PULL": (pull, "")} if suffix == "diff" else None
                files.append(write_product(fits_dir / f"{stem}_{suffix}.fits", data, header,
                                           unit=unit, uncertainty=unc, mask=~ok, images=images))
    return Evaluation(pd.DataFrame(rows, columns=COLUMNS), maps), files


def _reduce_rows(image: np.ndarray, f: int) -> np.ndarray:
    """Block means of ``f`` x ``f`` pixels of a block of rows (partial blocks dropped)."""
    if f == 1:
        return image.astype(np.float32)
    h, w = (image.shape[0] // f) * f, (image.shape[1] // f) * f
    if h == 0:
        return np.empty((0, image.shape[1] // f), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(image[:h, :w].reshape(h // f, f, w // f, f), axis=(1, 3)
                          ).astype(np.float32)


__all__ = ["Evaluation", "evaluate", "EVAL_FOLDER", "COLUMNS"]
