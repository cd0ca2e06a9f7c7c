"""Reconstruction: every master of the radiation response model predicted pixel by pixel,
and what the model leaves over.

Prediction of a master at dose D, dose rate Ddot, exposure t and temperature T::

    B0_i + alpha_D D + b_T (T - T_ref) + (DC0_i + beta_i D) 2^((T - T_ref)/T_d) t + <q> Ddot t

with ``B0_i`` the pixel's own bias: the bias master of the earliest group (pre-irradiation,
else the first dose step) nearest T_ref, brought to T_ref and dose 0 with the model's
``b_T`` and ``alpha_D``; ``DC0_i`` and ``beta_i`` the per-pixel dark maps of the model
where they were fitted, else the population's values.  Coefficients the masters could not
constrain count as 0.  Residual = master - prediction.

Its error: the residual is a linear combination of masters -- the master, minus the
reference bias master, minus ``sum_k a_k (dark_k - bias_k)`` over the points of the dark maps'
per-pixel weighted fit, ``a_k`` the weight of point k in the prediction
(``utils.models.linear.prediction_weights``, from the same design and weights the maps fit
used) -- so its variance is ``sum c_m^2 var_m`` over the distinct masters, each master's
variance the one the model expects (``rr.master_variance``: the pixel's read variance pooled
over the bias masters, the beam's variance, and the dark shot noise of the pixel's own dark
current from the maps; the population's where the maps have none).  For a dark master the maps
were fitted to (``MAPFIT``) ``a_k`` at its own point is its leverage ``h_kk`` and the residual
variance ~ ``sigma^2 (1 - h_kk)`` (plus the bias terms): adding the maps' prediction error to
``sigma^2`` instead gave pulls of spread 0.03-0.5; for any other master it is
``sigma^2 + x^T Cov x`` (covariance included).  Post-irradiation masters are predicted from
the final dose: their residuals show the recovery (annealing) the model does not describe.

Per master, in the folder the caller gives for its (stage, dose step):
``<master>_diff.fits`` (residual, ``UNCERT``, ``MASK``, ``PREDICT``), ``.png`` and ``.npz``
(keys ``diff``, ``error``, ``pull``); per folder ``residual_stats.csv``, and all masters in
``radiation_model/reconstruction_stats.csv``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from astropy.io import fits

from analysis.products import save_plot
from utils.io.fitsio import provenance_cards, set_card, write_csv, write_product
from utils.io.index import sort_by_stage
from utils.models import radiation_response as rr
from utils.models.linear import PredictionWeights, constrained_terms
from utils.plotting import show_image
from utils.stack.master import read_master
from utils.stack.stats import mad_std

logger = logging.getLogger(__name__)

#: |pull| above which a pixel counts as badly predicted in the statistics.
PULL_LIMIT = 5.0


@dataclass
class Reconstruction:
    """What :func:`run` wrote."""

    stats: pd.DataFrame
    files: list = field(default_factory=list)
    table_path: Path | None = None


def _coef(fit: rr.ResponseFit, name: str) -> float:
    value = fit.coef.get(name, math.nan)
    return value if math.isfinite(value) else 0.0


def _reference_bias(model) -> tuple | None:
    """The pixel bias at T_ref and dose 0, from the earliest group's bias master nearest
    T_ref, with its error, its point and the master."""
    fit = model.fit
    biases = [m for m in model.masters if m.key.caltype == "BIAS"]
    if not biases:
        return None
    order = {"pre": 0, "radiating": 1, "post": 2}
    first = min(biases, key=lambda m: (order.get(m.key.stage, 3), m.point["DOSE"],
                                       abs(m.point["TEMP"] - fit.settings.t_ref)))
    img = read_master(first.path)
    p = first.point
    b0 = img.data - _coef(fit, "alpha_D") * p["DOSE"] \
        - _coef(fit, "b_T") * (p["TEMP"] - fit.settings.t_ref)
    var = rr.master_variance(p, fit, getattr(model, "read_variance", None), img.count,
                             img.stderr)
    return b0, np.sqrt(var), p, first


def _dark_maps(model) -> dict:
    """The model's per-pixel DC0 and beta_D with their errors (empty without the maps)."""
    path = model.out_dir / "dark_maps.fits"
    if not path.is_file():
        return {}
    with fits.open(path) as hdul:
        return {"dc0": np.asarray(hdul[0].data, float),
                "dc0_err": np.asarray(hdul["UNCERT"].data, float),
                "beta": np.asarray(hdul["BETA_D"].data, float),
                "beta_err": np.asarray(hdul["BETA_ERR"].data, float)}


def _map_design(points: list, fit: rr.ResponseFit) -> np.ndarray:
    """Rows ``[f(T) t, D f(T) t]`` of the dark maps' per-pixel fit (``rr.pixel_dark_maps``)."""
    ft = np.array([float(rr.temperature_factor(p["TEMP"], fit.settings)) * p["EXPTIME"]
                   for p in points])
    return np.column_stack([ft, np.array([p["DOSE"] for p in points], float) * ft])


class _Variances:
    """The terms of the residuals' variance: each master's expected variance and the
    weights of the dark maps' fit (see the module notes)."""

    def __init__(self, model, maps: dict, read_var):
        self.fit, self.read_var = model.fit, read_var
        self.own = (maps["dc0"], maps["beta"]) if maps else None
        self.inmap = np.isfinite(maps["dc0"]) if maps else None
        self.var, self.keep, self.ref = {}, set(), None
        self.pairs = list(getattr(model, "dark_map_pairs", ()) or ()) if maps else []
        if not self.pairs:
            return
        design = _map_design([d.point for d, _ in self.pairs], self.fit)
        self.kept, _ = constrained_terms(design, ["DC0", "beta_D"])
        self.design = design[:, self.kept]
        sigma, y = [], []
        for d, b in self.pairs:
            di, bi = read_master(d.path), read_master(b.path)
            # the weights the maps' fit used (radiation_tiles.dark_maps)
            sigma.append(rr.dark_point_error(d.point, b.point, self.fit, read_var, di.count,
                                             di.stderr, bi.count, bi.stderr))
            y.append(np.isfinite(di.data) & np.isfinite(bi.data))
        # the per-pixel inverse normal matrices of the maps' fit, once for every master
        self.predict = PredictionWeights(self.design, np.array(sigma, np.float32),
                                         np.where(np.array(y), 0.0, np.nan))
        del sigma, y
        self.keep = {id(m) for pair in self.pairs for m in pair}

    def of(self, master, img=None) -> np.ndarray:
        """Expected variance of ``master`` [adu^2], the dark shot noise of each pixel's own
        dark current (kept only for the masters of the maps' fit and the reference bias:
        the memory grows with those, not with every master)."""
        key = id(master)
        if key in self.var:
            return self.var[key]
        img = img if img is not None else read_master(master.path)
        var = rr.master_variance(master.point, self.fit, self.read_var, img.count,
                                 img.stderr, pixel_dark=self.own)
        if key in self.keep or key == self.ref:
            self.var[key] = var
        return var

    def weights(self, point: dict) -> np.ndarray | None:
        """``a_k`` of every map point in the per-pixel prediction at ``point`` (0 where the
        prediction does not use the maps); None without the maps' fit."""
        if not self.pairs:
            return None
        row = _map_design([point], self.fit)[0, self.kept]
        a = self.predict(row)
        return np.where(self.inmap & np.isfinite(a), a, 0.0)

    def residual(self, master, img, ref) -> tuple[np.ndarray, np.ndarray | None]:
        """Variance of ``master - prediction`` [adu^2] (reference bias master ``ref``) and
        the master's leverage where it is a point of the maps' fit (else None)."""
        self.ref = id(ref)
        own = self.of(master, img)
        terms = {id(master): (master, 1.0)}
        if ref is not master:
            terms[id(ref)] = (ref, -1.0)
        a = self.weights(master.point)
        lev = None
        for k, (d, b) in enumerate(self.pairs if a is not None else ()):
            for m, sign in ((d, -1.0), (b, 1.0)):
                old = terms.get(id(m), (m, 0.0))[1]
                terms[id(m)] = (m, old + sign * a[k])
            if d is master:
                lev = a[k]
        var = 0.0
        for m, c in terms.values():
            c = np.asarray(c, np.float64)
            var = var + np.where(c != 0, c * c * (own if m is master else self.of(m)), 0.0)
        if lev is not None:
            # a point the maps' line goes through (as many points as terms at the pixel:
            # leverage 1): its residual is 0 by construction and carries no information
            var = np.where(np.abs(1.0 - lev) > 1e-6, var, np.nan)
        return var, lev


def predict_master(point: dict, b0: np.ndarray, maps: dict, fit: rr.ResponseFit) -> np.ndarray:
    """Per-pixel prediction [adu] of a master (see the module notes)."""
    f = float(rr.temperature_factor(point["TEMP"], fit.settings))
    t, d = point["EXPTIME"], point["DOSE"]
    dc0, beta = maps.get("dc0"), maps.get("beta")
    dark0 = np.where(np.isfinite(dc0), dc0, _coef(fit, "DC0")) if dc0 is not None \
        else _coef(fit, "DC0")
    slope = np.where(np.isfinite(beta), beta, _coef(fit, "beta_D")) if beta is not None \
        else _coef(fit, "beta_D")
    bias = b0 + _coef(fit, "alpha_D") * d \
        + _coef(fit, "b_T") * (point["TEMP"] - fit.settings.t_ref)
    return bias + (dark0 + slope * d) * f * t + _coef(fit, "q_mean") * point["RATE"] * t


def residual_statistics(diff: np.ndarray, error: np.ndarray, pixels: np.ndarray) -> dict:
    """Mean, median, standard deviation and robust sigma of the residual [adu], and the pulls'
    mean, standard deviation and fraction beyond :data:`PULL_LIMIT`, over the model's pixel
    set and over all pixels."""
    out = {}
    for label, sel in (("", pixels & np.isfinite(diff)), ("_ALL", np.isfinite(diff))):
        r = diff[sel]
        pull = r / error[sel]
        pull = pull[np.isfinite(pull)]
        out.update({f"NPIX{label}": int(r.size),
                    f"MEAN_RESID{label}": float(np.mean(r)) if r.size else math.nan,
                    f"MEAN_RESID_ERR{label}": float(np.std(r, ddof=1) / math.sqrt(r.size))
                    if r.size > 1 else math.nan,
                    f"MEDIAN_RESID{label}": float(np.median(r)) if r.size else math.nan,
                    f"STD_RESID{label}": float(np.std(r, ddof=1)) if r.size > 1 else math.nan,
                    f"ROBUST_STD{label}": float(mad_std(r)) if r.size else math.nan,
                    f"PULL_MEAN{label}": float(np.mean(pull)) if pull.size else math.nan,
                    f"PULL_STD{label}": float(np.std(pull, ddof=1)) if pull.size > 1
                    else math.nan,
                    f"FRAC_PULL_GT{PULL_LIMIT:g}{label}": float(np.mean(np.abs(pull) >
                                                                        PULL_LIMIT))
                    if pull.size else math.nan})
    return out


def run(model, folder_of: Callable[[str], Path]) -> Reconstruction:
    """Predict every master of ``model`` (a ``fit_radiation_model`` result) and write the
    residual maps and statistics; ``folder_of(stage tag)`` gives each group's folder."""
    ref = _reference_bias(model)
    if ref is None:
        logger.warning("reconstruction skipped: the model has no bias master")
        return Reconstruction(pd.DataFrame())
    b0, _, ref_point, ref_master = ref
    read_var = getattr(model, "read_variance", None)
    maps = _dark_maps(model)
    fit = model.fit
    variances = _Variances(model, maps, read_var)
    in_maps = {id(d) for d, _ in variances.pairs}
    rows, files, per_folder = [], [], {}
    for m in model.masters:
        img = read_master(m.path)
        pred = predict_master(m.point, b0, maps, fit)
        diff = img.data - pred
        # the variance the model expects of the masters in the residual (the pixel's read
        # noise, its dark shot noise, the beam's variance over the frames), not the pixel's
        # sample variance: under the beam that follows the hits the pixel happened to get;
        # with the maps' leverage for the masters they were fitted to (the maps' prediction
        # error added to the master's instead gave pulls of spread 0.03-0.5 for those)
        var, lev = variances.residual(m, img, ref_master)
        error = np.sqrt(var)
        mapfit = id(m) in in_maps
        folder = folder_of(m.key.stage_dir)
        stem = m.path.stem + "_diff"
        header = fits.Header()
        for key, value, comment in provenance_cards("RECONSTRUCTION_RESIDUAL"):
            set_card(header, key, value, comment)
        set_card(header, "MASTER", m.path.name, "master reconstructed")
        set_card(header, "STAGETAG", m.key.stage_dir, "stage and dose step")
        set_card(header, "DOSE", m.point["DOSE"], "[krad] mean accumulated dose of its frames")
        set_card(header, "DOSERATE", m.point["RATE"], "[krad/s] mean dose rate while exposing")
        set_card(header, "BIASREF", f"{ref_point['TAG']}/{ref_point['MASTER']}",
                 "pixel bias taken from this master")
        set_card(header, "MAPFIT", mapfit, "master is a point of the dark maps' fit")
        header["COMMENT"] = ("data = master - model prediction; UNCERT = expected error of "
                             "the residual: master, bias reference and dark maps with their "
                             "covariance (for a MAPFIT master its leverage in the maps' "
                             "per-pixel fit: ~sigma^2 (1 - h)), each pixel's own dark shot "
                             "noise")
        files.append(write_product(folder / f"{stem}.fits", diff, header, unit="adu",
                                   uncertainty=error, mask=~np.isfinite(diff),
                                   images={"PREDICT": (pred, "adu")}))
        files += save_plot(show_image(diff, unit="adu", label="master - model",
                                      title=f"{m.key.stage_dir} {m.path.stem}: residual"),
                           folder / f"{stem}.png",
                           {"diff": diff, "error": error, "pull": diff / error})
        stats = {"TAG": m.key.stage_dir, "STAGE": m.key.stage, "MASTER": m.path.name,
                 "CALTYPE": m.key.caltype, "TEMP": m.point["TEMP"],
                 "EXPTIME": m.point["EXPTIME"], "DOSE": m.point["DOSE"], "RATE": m.point["RATE"],
                 "FITTED": m.key.stage in model.points.loc[model.points["FITTED"], "STAGE"].values,
                 "MAPFIT": mapfit,
                 "LEVERAGE": float(np.nanmean(lev[model.pixels])) if lev is not None
                 else math.nan,
                 **residual_statistics(diff, error, model.pixels)}
        rows.append(stats)
        per_folder.setdefault(folder, []).append(stats)
    for folder, part in per_folder.items():
        files.append(write_csv(pd.DataFrame(part), folder / "residual_stats.csv"))
    table = pd.DataFrame(rows)
    path = write_csv(sort_by_stage(table, ["STAGE", "DOSE", "CALTYPE", "EXPTIME", "TEMP"]),
                     model.out_dir / "reconstruction_stats.csv")
    files.append(path)
    return Reconstruction(table, files, path)


__all__ = ["Reconstruction", "run", "predict_master",
           "residual_statistics", "PULL_LIMIT"]
