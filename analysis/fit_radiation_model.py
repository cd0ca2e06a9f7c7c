"""Radiation response model of an irradiation campaign, fitted jointly on its masters.

The old model -- signal D* = B0 + alpha_D D + (DC0 + beta_D D) t + <q> Ddot t and
variance sigma^2 = sigma_read^2 + (DC0 + beta_D D) t + (<q>^2 + sigma_q^2) Ddot t --
with a temperature term for the bias (b_T) and the dark current (x 2^((T - T_ref)/T_d),
T_d measured), the dark current's shot noise in stored adu (x ADUSCALE/gain), fitted
by weighted least squares on the masters, not on frame medians one by one (the
numerics are in utils/models/radiation_response.py).

Masters: one mean-combined master per (stage, dose step, type, temperature bin,
exposure) of the bias and dark frames, in OUTPUT_DIR/masters/<tag>/ (the mean and
the sample variance are unbiased; a sigma-clipped noise is biased low).  Each master
gives two points, measured over a fixed set of pixels (unmasked everywhere and hot
in no dark master: 5 robust sigma above the population of the bias-subtracted dark):
the mean of the master (error from its temporal standard errors only: the fixed
pattern is common to every master and is part of B0) and the mean temporal variance
(the per-pixel sample variance; error from 2 s^4/(n + 1)).  D is the mean
accumulated dose of the master's frames [krad], Ddot their mean dose rate while
exposing [krad/s].  By default the pre-irradiation and dose-step masters are fitted;
the post-irradiation ones (their damage has partly annealed, which the model does
not describe) are predicted only.

Before fitting, every parameter is checked: one the masters cannot constrain (the
beam off during every master leaves <q> and sigma_q free, one dose leaves alpha_D
and beta_D free, temperatures within 2 degC leave b_T free, which then takes a
measured value when one is given) is written with constrained = false and the
reason.  Errors are scaled by sqrt(chi2/dof) when that exceeds 1.  T_d's error (the
measured one, or --doubling-temperature-err) is propagated: the model is refitted at
T_d -+ its error and half the difference (err_td) is added in quadrature to the fit's
own error (err_stat) to make err.

Outputs in OUTPUT_DIR: fit_results.csv (param, value, err, err_stat, err_td, R2, unit,
constrained, reason), fit_results.json (the same records as "parameters", "correlation",
"n_masters", chi2/dof, the pixel set, the fixed inputs, notes), masters.csv (every
master's point, prediction, residual and pull), bias_residuals.png,
dark_current_residuals.png, variance_residuals.png, qq_plot.png (each with its
.npz), dark_maps.fits (per-pixel DC0 and beta_D with errors, where the dark masters
allow) with dc0_map.png and beta_d_map.png, pixels.fits (the pixel set), masters/,
reconstruction_stats.csv (with the full pipeline), config_used.json, summary.json.

Memory: the masters are never held together.  The pixel set, the points, the pooled read
variance and the dark maps are computed from row tiles of every master read with the
stacking engine's block reader, tiles sized from a quarter of ``--memory-limit``
(analysis/radiation_tiles.py); per-pixel maps are the same bit for bit whatever the tile,
the points the same to float64 rounding.

Example
-------
::

    python -m analysis.fit_radiation_model out/index.csv out/radiation_model --gain 2.0
    python -m analysis.fit_radiation_model /data/dd/5kRads/fits model --doubling-temperature 6.5
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Sequence

import numpy as np
import pandas as pd
from astropy.io import fits

from analysis.products import save_plot
from analysis.radiation_tiles import (
    MasterRows,
    dark_map_inputs,
    dark_maps,
    measure_points,
    read_variance,
    select_pixels,
)
from utils import adu, cli
from utils import headers as kw
from utils.errors import ConfigError, UserError
from utils.io.dose import RAD_PER_KRAD, assign_doses
from utils.io.fitsio import (
    provenance_cards,
    set_card,
    write_csv,
    write_json,
    write_product,
)
from utils.io.index import STAGES, DatasetIndex, by_stage, load_frames, sort_by_stage
from utils.io.tokens import value_error_text
from utils.models import radiation_response as rr
from utils.models.gain import resolve_gain
from utils.models.regression import fit_line
from utils.plotting import STAGE_COLOURS, finish_axes, new_axes, show_image
from utils.run_record import run_digest, write_run_summary
from utils.settings import dump_settings, field
from utils.stack.grouping import GroupKey, calibration_groups, text_column
from utils.stack.master import CombineSettings, make_master

logger = logging.getLogger(__name__ if __name__ != "__main__" else "analysis.fit_radiation_model")


@dataclass(frozen=True)
class FitSettings:
    """Settings of the radiation response model (written to ``config_used.json``)."""

    t_ref: float = field(20.0, "[degC] reference temperature of B0 and DC0")
    doubling_temperature: float | None = field(
        None, "[degC] T_d of the dark current (default: measured from the pre-irradiation "
              "darks when they span two temperatures, else no temperature term)")
    doubling_temperature_err: float | None = field(
        None, "[degC] standard error of a given T_d, propagated into the parameters' errors "
              "(a measured T_d brings its own; none with a given T_d: taken as exact)")
    gain: float | str | None = field(None, "[e-/ADC count] gain, or a gain.json; none: the "
                                           "variance's dark terms are fitted on their own")
    bias_slope: tuple | None = field(None, "(value, error) [adu/degC] bias temperature "
                                           "coefficient used when the masters cannot fit it")
    fit_stages: tuple = field(("pre", "radiating"), "stages whose masters are fitted; the "
                                                    "others are predicted only")
    temp_bin: float = field(1.0, "[degC] largest temperature span of one master")
    exp_tolerance: float = field(0.01, "largest relative exposure-time span of one master")
    min_temp_span: float = field(2.0, "[degC] temperature spread of the masters that "
                                      "constrains b_T")
    combine: CombineSettings = field(CombineSettings(method="mean"),
                                     "combination of each model master (mean: unbiased "
                                     "mean and variance); its memory_limit also sizes the "
                                     "row tiles of the model's pixel work")

    def __post_init__(self):
        if any(s not in STAGES for s in self.fit_stages) or not self.fit_stages:
            raise ValueError(f"fit_stages must be among {', '.join(STAGES)}")
        if self.doubling_temperature is not None and not self.doubling_temperature > 0:
            raise ValueError("doubling_temperature must be > 0 degC")
        if self.doubling_temperature_err is not None and \
                not (self.doubling_temperature_err >= 0 and self.doubling_temperature is not None):
            raise ValueError("doubling_temperature_err must be >= 0 degC, with a "
                             "doubling_temperature")
        if not self.temp_bin > 0 or not math.isfinite(self.t_ref):
            raise ValueError("temp_bin must be > 0 and t_ref finite")


@dataclass
class ModelMaster:
    """One model master: its key, file, frames and measured point."""

    key: GroupKey
    path: Path
    rows: pd.DataFrame
    point: dict


@dataclass
class RadiationModelResult:
    """What a run produced."""

    out_dir: Path
    fit: rr.ResponseFit
    points: pd.DataFrame
    masters: list
    pixels: np.ndarray
    files: list
    skipped: bool = False
    #: Per-pixel read variance [adu^2] pooled over the bias masters (None: not measured).
    read_variance: np.ndarray | None = None
    #: ``(dark, bias)`` ModelMasters of every point of the per-pixel dark maps' fit (the
    #: dark minus that bias), empty without the maps: the reconstruction's leverage.
    dark_map_pairs: tuple = ()

    def summary_line(self) -> str:
        """One line: the parameters and where they are."""
        parts = []
        for _, r in self.fit.parameters.iterrows():
            if r["constrained"]:
                parts.append(f"{r['param']} {value_error_text(r['value'], r['err'], r['unit'])}")
            else:
                parts.append(f"{r['param']} not constrained")
        return (f"radiation model on {len(self.points)} masters ({int(self.pixels.sum())} "
                f"pixels): " + ", ".join(parts) + f"; {self.out_dir / 'fit_results.csv'}")


# --- masters and their points -----------------------------------------------------------------

def _frames(source, radiation_log, out: Path, progress_bar: bool) -> pd.DataFrame:
    """Usable bias and dark rows with dose bookkeeping."""
    index = load_frames(source, cache=None if Path(source).is_file() else out / "index.csv",
                        progress_bar=progress_bar)
    table = index.table
    if radiation_log is not None or "FRAMEDOSE" not in table or \
            not pd.to_numeric(table["FRAMEDOSE"], errors="coerce").notna().any():
        root = Path(source).resolve()
        table, report = assign_doses(table, radiation_log=radiation_log,
                                     root=root.parent if root.is_file() else root)
        logger.info("%s", report.summary())
    table = DatasetIndex(table).table
    table["STAGE"] = text_column(table["STAGE"])
    rows = table[table["CALTYPE"].isin(["BIAS", "DARK"]) & ~table["BADFITS"].astype(bool)]
    if rows.empty:
        raise UserError(f"{source}: no usable bias or dark frame; the model needs the masters "
                        "of an irradiation campaign")
    return rows


def _rate_krad_s(rows: pd.DataFrame) -> tuple[float, str]:
    """Mean dose rate while exposing [krad/s] and where it comes from.  Frames no log gives a
    rate (pre-irradiation frames, dose folders whose dose was spread) count as 0: the model
    then cannot see a beam term, which the identifiability check reports."""
    rate = pd.to_numeric(rows["DOSERATE"], errors="coerce").to_numpy(float) / RAD_PER_KRAD
    if np.isfinite(rate).all():
        return float(np.mean(rate)), "log"
    known = np.isfinite(rate)
    return float(np.mean(np.where(known, rate, 0.0))), \
        f"{int((~known).sum())} of {rate.size} frames without a logged rate: taken as 0"


def build_model_masters(rows: pd.DataFrame, out: Path, settings: FitSettings, *,
                        progress_bar: bool = False) -> list[ModelMaster]:
    """One mean master per (stage, dose step, type, temperature bin, exposure)."""
    masters = []
    for key, part in calibration_groups(rows, temp_width=settings.temp_bin,
                                        exp_tolerance=settings.exp_tolerance):
        if key.caltype not in ("BIAS", "DARK") or len(part) < 2:
            if len(part) < 2:
                logger.warning("%s %s %s: %d frame, no temporal variance; left out of the model",
                               key.stage_dir, key.caltype.lower(), key.tag, len(part))
            continue
        path = out / "masters" / key.stage_dir / f"master_{key.caltype.lower()}_{key.tag}.fits"
        make_master(part, path, settings.combine, product=f"MODEL_{key.caltype}",
                    extra={kw.STAGE: (key.stage or "none", "irradiation stage"),
                           "STAGETAG": (key.stage_dir, "stage and dose step")},
                    progress_bar=progress_bar)
        dose = pd.to_numeric(part["FRAMEDOSE"], errors="coerce").to_numpy(float)
        point = {"TAG": key.stage_dir, "STAGE": key.stage, "CALTYPE": key.caltype,
                 "MASTER": path.name, "NFRAMES": len(part),
                 "DOSE": float(np.mean(dose)) if np.isfinite(dose).all() else math.nan,
                 "RATE": math.nan, "RATE_SOURCE": "",
                 "EXPTIME": float(np.mean(pd.to_numeric(part["EXPTIME"], errors="coerce"))),
                 "TEMP": float(np.mean(part["TEMP"]))}
        point["RATE"], point["RATE_SOURCE"] = _rate_krad_s(part)
        if point["CALTYPE"] == "BIAS" and not math.isfinite(point["EXPTIME"]):
            point["EXPTIME"] = 0.0
        masters.append(ModelMaster(key, path, part, point))
    return masters


def measure_doubling_temperature(points: pd.DataFrame, t_ref: float) -> tuple[float, float]:
    """Population T_d [degC] from the pre-irradiation darks at two temperatures or more:
    weighted line of ln((dark - bias) / t) vs T.  ``(nan, nan)`` when they do not allow it."""
    pre = points[points["STAGE"] == "pre"]
    darks = pre[pre["CALTYPE"] == "DARK"]
    biases = pre[pre["CALTYPE"] == "BIAS"]
    if darks["TEMP"].nunique() < 2 or biases.empty:
        return math.nan, math.nan
    x, y, s = [], [], []
    for _, d in darks.iterrows():
        b = biases.iloc[int(np.argmin(np.abs(biases["TEMP"].to_numpy() - d["TEMP"])))]
        if abs(b["TEMP"] - d["TEMP"]) > 2.0:
            continue
        signal = d["MEAN"] - b["MEAN"]
        err = math.hypot(d["MEAN_ERR"], b["MEAN_ERR"])
        if signal > 3 * err:
            x.append(d["TEMP"] - t_ref)
            y.append(math.log(signal / d["EXPTIME"]))
            s.append(err / signal)
    if len(set(np.round(x, 1))) < 2:
        return math.nan, math.nan
    fit = fit_line(x, y, s, what="ln(dark rate) vs temperature", xname="temperature")
    if not fit.ok or not fit.value("slope") > 0:
        return math.nan, math.nan
    slope, err = fit.value("slope"), fit.error("slope")
    return math.log(2) / slope, math.log(2) * err / slope ** 2


# --- the run ----------------------------------------------------------------------------------

def model_settings(points: pd.DataFrame, settings: FitSettings, adc_bits: int
                   ) -> tuple[rr.ModelSettings, dict]:
    """The model's fixed inputs: T_d (given or measured), adu per electron, b_T fallback."""
    info = {}
    t_d, t_d_err = settings.doubling_temperature, settings.doubling_temperature_err
    if t_d is None:
        t_d, t_d_err = measure_doubling_temperature(points, settings.t_ref)
        info["doubling_temperature_source"] = "measured from the pre-irradiation darks" \
            if math.isfinite(t_d) else "none (no temperature term)"
        info["doubling_temperature_err"] = t_d_err if math.isfinite(t_d) else None
        t_d, t_d_err = (t_d, t_d_err) if math.isfinite(t_d) else (None, None)
    else:
        info["doubling_temperature_source"] = "given"
        info["doubling_temperature_err"] = t_d_err
    info["doubling_temperature"] = t_d
    g = resolve_gain(settings.gain, adc_bits)
    info["gain"] = None if g is None else {"e_per_adc_count": g.gain, "source": g.source}
    per_e = None if g is None else 1.0 / g.e_per_adu
    info["adu_per_e"] = per_e
    return rr.ModelSettings(t_ref=settings.t_ref, t_d=t_d, t_d_err=t_d_err, adu_per_e=per_e,
                            b_t=settings.bias_slope, min_temp_span=settings.min_temp_span), info


def run(source: str | os.PathLike, out_dir: str | os.PathLike,
        settings: FitSettings = FitSettings(), *, radiation_log=None,
        progress_bar: bool = False) -> RadiationModelResult:
    """Fit the radiation response model (see the module notes).

    Order: frames (index or folder, dose join) -> model masters -> pixel set -> points ->
    fixed inputs (T_d, gain) -> joint fit -> per-pixel dark maps -> tables and figures.

    Raises
    ------
    UserError
        No usable bias or dark frame, no master of the fitted stages, frames of two sizes,
        a model the masters cannot constrain at all.
    """
    out = Path(out_dir)
    rows = _frames(source, radiation_log, out, progress_bar)
    shapes = rows.groupby(["NAXIS1", "NAXIS2"]).size()
    if len(shapes) > 1:
        sizes = ", ".join(f"{int(a)}x{int(b)} ({n} frames)" for (a, b), n in shapes.items())
        raise UserError(f"{source}: frames of {len(shapes)} sizes ({sizes}); the model needs "
                        "one sensor format: index the frames of one camera")
    dump_settings(out, radiation_model=settings, source=str(Path(source).resolve()),
                  radiation_log=None if radiation_log is None else str(radiation_log))
    masters = build_model_masters(rows, out, settings, progress_bar=progress_bar)
    fitted = [m for m in masters if m.key.stage in settings.fit_stages]
    if not fitted:
        raise UserError(f"{source}: no bias or dark master of the stages "
                        f"{', '.join(settings.fit_stages)} with two frames or more")
    digest = run_digest(settings, [m.path for m in masters], str(radiation_log))
    # rows of every master read tile by tile within the budget, never every master at once
    images = MasterRows.of_paths([m.path for m in masters], settings.combine.memory_limit)
    pixels = select_pixels(masters, images)
    points = measure_points(masters, images, pixels)
    adc_bits = int(round(16 - math.log2(float(np.nanmedian(rows["ADUSCALE"]))))) \
        if "ADUSCALE" in rows and rows["ADUSCALE"].notna().any() else adu.DEFAULT_ADC_BITS
    model, info = model_settings(points, settings, adc_bits)
    use = points["STAGE"].isin(settings.fit_stages)
    try:
        fit = rr.fit_response(points[use], model)
    except ValueError as err:
        raise UserError(f"{source}: the radiation model cannot be fitted: {err}") from err
    for note in fit.notes:
        logger.info("radiation model: %s", note)
    for _, r in fit.parameters[~fit.parameters["constrained"]].iterrows():
        logger.warning("radiation model: %s not constrained: %s", r["param"], r["reason"])
    mean_pred, var_pred = rr.predict(points, fit)
    points = points.assign(FITTED=use, MEAN_PRED=mean_pred, VAR_PRED=var_pred,
                           MEAN_RESID=points["MEAN"] - mean_pred,
                           VAR_RESID=points["VAR"] - var_pred)
    points["MEAN_PULL"] = points["MEAN_RESID"] / points["MEAN_ERR"]
    points["VAR_PULL"] = points["VAR_RESID"] / points["VAR_ERR"]
    files = write_results(out, fit, points, pixels, info, settings)
    header = fits.Header()
    for key, value, comment in provenance_cards("RADIATION_MODEL_PIXELS"):
        set_card(header, key, value, comment)
    header["COMMENT"] = "1 = pixel of the model's population (measured everywhere, never hot)"
    files.append(write_product(out / "pixels.fits", pixels.astype(np.uint8), header, unit=""))
    read_var = read_variance(masters, images)
    maps, n_darks = fit_dark_maps(masters, images, points, fit, settings, read_var)
    files += write_dark_maps(out, maps, n_darks, fit, settings)
    pairs = tuple((d, b) for d, b, *_ in dark_map_inputs(masters, points, fit,
                                                         settings.fit_stages)) \
        if maps is not None else ()
    del maps
    files.append(out / "config_used.json")
    write_run_summary(out, {"n_masters": int(use.sum()), "pixels": int(pixels.sum())}, files,
                      digest)
    return RadiationModelResult(out, fit, points, masters, pixels, files,
                                read_variance=read_var, dark_map_pairs=pairs)


def fit_record(fit: rr.ResponseFit, points: pd.DataFrame, pixels: np.ndarray, info: dict,
               settings: FitSettings) -> dict:
    """The content of ``fit_results.json``."""
    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v
    params = [{k: clean(v) if not isinstance(v, (np.bool_, bool)) else bool(v)
               for k, v in rec.items()} for rec in fit.parameters.to_dict("records")]
    for rec in params:
        for k in ("value", "err", "err_stat", "err_td", "R2"):
            rec[k] = clean(float(rec[k])) if rec[k] is not None else None
    return {"parameters": params, "correlation": fit.correlation,
            "n_masters": int(points["FITTED"].sum()), "n_predicted": int(len(points)),
            "fitted_stages": list(settings.fit_stages), "chi2dof": clean(fit.chi2dof),
            "dof": fit.dof, "pixels": int(pixels.sum()), "pixels_total": int(pixels.size),
            "t_ref_degC": settings.t_ref, **info, "notes": fit.notes,
            "estimator": "joint weighted least squares on the masters' mean and mean temporal "
                         "variance over a fixed pixel set; errors scaled by sqrt(chi2/dof) when "
                         "it exceeds 1",
            "errors": {"err": "total standard error: err_stat and err_td in quadrature",
                       "err_stat": "the fit's own (the masters' errors, T_d fixed)",
                       "err_td": "from T_d's error (doubling_temperature_err): half the "
                                 "difference of refits at T_d -+ its error; 0 when T_d is "
                                 "taken as exact",
                       "correlation": "statistical (T_d fixed)"},
            "model": {"mean": "B0 + alpha_D D + b_T (T - T_ref) + (DC0 + beta_D D) "
                              "2^((T - T_ref)/T_d) t + q_mean Ddot t",
                      "variance": "sigma_read^2 + g (DC0 + beta_D D) 2^((T - T_ref)/T_d) t + "
                                  "(q_mean^2 + sigma_q^2) Ddot t",
                      "units": {"D": "krad", "Ddot": "krad/s", "t": "s", "T": "degC"}}}


def write_results(out: Path, fit: rr.ResponseFit, points: pd.DataFrame, pixels: np.ndarray,
                  info: dict, settings: FitSettings) -> list[Path]:
    """fit_results.csv|json, masters.csv and the residual and QQ figures."""
    files = [write_csv(fit.parameters[["param", "value", "err", "err_stat", "err_td", "R2",
                                       "unit", "constrained", "reason"]],
                       out / "fit_results.csv"),
             write_csv(sort_by_stage(points, ["STAGE", "DOSE", "CALTYPE", "EXPTIME", "TEMP"]),
                       out / "masters.csv")]
    record = fit_record(fit, points, pixels, info, settings)
    files.append(write_json(record, out / "fit_results.json"))
    for cal, name in (("BIAS", "bias_residuals"), ("DARK", "dark_current_residuals")):
        part = points[points["CALTYPE"] == cal]
        if not part.empty:
            ax, data = plot_mean_residuals(part, cal)
            files += save_plot(ax, out / f"{name}.png", data)
    ax, data = plot_variance_residuals(points)
    files += save_plot(ax, out / "variance_residuals.png", data)
    ax, data = plot_qq(points)
    files += save_plot(ax, out / "qq_plot.png", data)
    return files


def plot_mean_residuals(points: pd.DataFrame, caltype: str, ax=None):
    """Mean residual (data - model) [adu] with its error vs dose, per stage."""
    ax = new_axes(ax)
    for stage, part in by_stage(points):
        ax.errorbar(part["DOSE"], part["MEAN_RESID"], part["MEAN_ERR"], fmt="o",
                    color=STAGE_COLOURS.get(stage),
                    label=f"{stage}" + ("" if part["FITTED"].all() else " (predicted only)"))
    ax.axhline(0, color="k", lw=0.8)
    finish_axes(ax, "accumulated dose [krad]", "mean - model [adu]",
                f"{caltype.lower()} masters: residuals of the radiation model")
    return ax, {"dose": points["DOSE"].to_numpy(float),
                "residual": points["MEAN_RESID"].to_numpy(float),
                "error": points["MEAN_ERR"].to_numpy(float)}


def plot_variance_residuals(points: pd.DataFrame, ax=None):
    """Variance residual [adu^2] with its error vs dose, bias and dark."""
    ax = new_axes(ax)
    for cal, part in points.groupby("CALTYPE"):
        ax.errorbar(part["DOSE"], part["VAR_RESID"], part["VAR_ERR"], fmt="o",
                    label=cal.lower())
    ax.axhline(0, color="k", lw=0.8)
    finish_axes(ax, "accumulated dose [krad]", "variance - model [adu^2]",
                "temporal variance: residuals of the radiation model")
    return ax, {"dose": points["DOSE"].to_numpy(float),
                "residual": points["VAR_RESID"].to_numpy(float),
                "error": points["VAR_ERR"].to_numpy(float)}


def plot_qq(points: pd.DataFrame, ax=None):
    """Normalised residuals (mean and variance pulls of the fitted masters) against the
    standard normal quantiles at (i - 0.5)/n."""
    fitted = points[points["FITTED"]]
    pulls = np.sort(np.concatenate([fitted["MEAN_PULL"], fitted["VAR_PULL"]]))
    pulls = pulls[np.isfinite(pulls)]
    n = pulls.size
    inv_cdf = NormalDist().inv_cdf
    quant = np.array([inv_cdf((i - 0.5) / n) for i in range(1, n + 1)])
    ax = new_axes(ax)
    ax.plot(quant, pulls, "o", label="pulls")
    if n:
        lim = [min(quant.min(), pulls.min()), max(quant.max(), pulls.max())]
        ax.plot(lim, lim, "k--", lw=0.8, label="y = x")
    finish_axes(ax, "standard normal quantile", "residual / error (sorted)",
                "QQ plot of the radiation model's residuals")
    return ax, {"normal_quantile": quant, "pull": pulls}


def fit_dark_maps(masters: list[ModelMaster], images: MasterRows, points: pd.DataFrame,
                  fit: rr.ResponseFit, settings: FitSettings,
                  read_var: np.ndarray | None = None):
    """Per-pixel DC0 and beta_D from the fitted dark masters (bias of the same group
    subtracted and brought to the dark's temperature and dose with b_T and alpha_D, the
    population's beam charge removed), where they allow it, tile by tile
    (:func:`analysis.radiation_tiles.dark_maps`).  Each point weighs by the variance the
    model expects for it (``rr.master_variance`` of the dark and of the bias subtracted,
    from the pixel's pooled read variance ``read_var``), not by the pixel's own sample
    variance, which under the beam follows the pixel's own hits.

    Returns
    -------
    tuple
        ``(maps, n_darks)``: a :class:`utils.models.linear.MultiLinearFit` (None when no
        dark master allows it) and the number of dark masters fitted per pixel.
    """
    inputs = dark_map_inputs(masters, points, fit, settings.fit_stages)
    if not inputs:
        return None, 0
    try:
        return dark_maps(masters, images, inputs, fit, read_var), len(inputs)
    except ValueError as err:
        logger.warning("per-pixel dark maps not made: %s", err)
        return None, 0


def write_dark_maps(out: Path, maps, n_darks: int, fit: rr.ResponseFit,
                    settings: FitSettings) -> list[Path]:
    """dark_maps.fits (DC0 with UNCERT, BETA_D, BETA_ERR, CHI2DOF, NPTS), dc0_map.png and
    beta_d_map.png from :func:`fit_dark_maps`' maps (nothing when None).  UNCERT and
    BETA_ERR are the pixels' statistical errors; T_d's error, common to every pixel, is
    in the header (TDERR and the population's DC0TDERR, BETATDER)."""
    if maps is None:
        return []
    i0, i1 = maps.term("DC0"), maps.term("beta_D")
    header = fits.Header()
    for key, value, comment in provenance_cards("RADIATION_DARK_MAPS"):
        set_card(header, key, value, comment)
    set_card(header, "TREF", settings.t_ref, "[degC] reference temperature")
    set_card(header, "TDOUBLE", fit.settings.t_d if fit.settings.t_d else "none",
             "[degC] T_d used (none: no T term)")
    if fit.settings.t_d:
        # the per-pixel errors are statistical; T_d's error moves every pixel alike
        rows = fit.parameters.set_index("param")["err_td"]
        set_card(header, "TDERR", fit.settings.t_d_err or 0.0,
                 "[degC] T_d's error (0: exact), not in UNCERT/BETA_ERR")
        set_card(header, "DC0TDERR", float(rows.get("DC0", math.nan)),
                 "[adu/s] population DC0's error from TDERR")
        set_card(header, "BETATDER", float(rows.get("beta_D", math.nan)),
                 "[adu/s/krad] population beta_D's error from TDERR")
    set_card(header, "NMASTERS", n_darks, "dark masters fitted per pixel")
    set_card(header, "BETAFIT", bool(maps.fitted[i1]), "beta_D fitted (dark masters at >1 dose)")
    if not maps.fitted[i1]:
        set_card(header, "BETAWHY", maps.dropped.get("beta_D", ""), "why beta_D is not fitted")
    # BUNIT 'adu/s/krad' read as adu per second per kilo-RADIAN (astropy's krad, with a
    # UnitsWarning for the two slashes): the per-krad maps say so in PERDOSE instead, as the
    # damage analysis's slope map does
    set_card(header, "PERDOSE", "krad", "BETA_D, BETA_ERR are per krad (krad is no FITS unit)")
    files = [write_product(out / "dark_maps.fits", maps.coef[i0], header, unit="adu / s",
                           uncertainty=maps.err[i0], mask=~np.isfinite(maps.coef[i0]),
                           images={"BETA_D": (maps.coef[i1] if maps.fitted[i1] else
                                              np.full(maps.coef[i1].shape, np.nan), "adu / s"),
                                   "BETA_ERR": (maps.err[i1] if maps.fitted[i1] else
                                                np.full(maps.coef[i1].shape, np.nan),
                                                "adu / s"),
                                   "CHI2DOF": (maps.chi2, ""), "NPTS": (maps.npoints, "")})]
    files += save_plot(show_image(maps.coef[i0], unit="adu/s", label="DC0",
                                  title=f"dark current at {settings.t_ref:g} degC before "
                                        "irradiation (DC0)"),
                       out / "dc0_map.png", {"dc0": maps.coef[i0], "dc0_err": maps.err[i0]})
    if maps.fitted[i1]:
        files += save_plot(show_image(maps.coef[i1], unit="adu/s/krad", label="beta_D",
                                      title="dark-current increase per krad (beta_D)"),
                           out / "beta_d_map.png", {"beta_d": maps.coef[i1],
                                                    "beta_d_err": maps.err[i1]})
    return files


# --- command line -----------------------------------------------------------------------------

def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    d = FitSettings()
    parser = cli.make_parser("python -m analysis.fit_radiation_model", __doc__)
    parser.add_argument("source", metavar="FRAMES_OR_INDEX",
                        help="index CSV of the campaign, or a folder of its FITS frames")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder for the products")
    parser.add_argument("--radiation-log", default=None,
                        help="campaign radiation log joined by time stamp (default: the "
                             "index's dose columns, else a log found beside the frames)")
    parser.add_argument("--gain", default=None,
                        help="[e-/ADC count] gain, or the flat pipeline's gain.json")
    parser.add_argument("--t-ref", type=cli.finite_float, default=d.t_ref,
                        help="[degC] reference temperature")
    parser.add_argument("--doubling-temperature", type=cli.finite_float, default=None,
                        help="[degC] T_d of the dark current (default: measured from the "
                             "pre-irradiation darks, else no temperature term)")
    parser.add_argument("--doubling-temperature-err", type=cli.finite_float, default=None,
                        help="[degC] standard error of --doubling-temperature, propagated "
                             "into the parameters' errors (default: taken as exact)")
    parser.add_argument("--bias-slope", type=cli.finite_float, nargs=2, default=None,
                        metavar=("VALUE", "ERROR"),
                        help="[adu/degC] bias temperature coefficient used when the masters "
                             "cannot fit it")
    parser.add_argument("--fit-stages", nargs="+", default=list(d.fit_stages),
                        help="stages whose masters are fitted (the others are predicted)")
    parser.add_argument("--temp-bin", type=cli.finite_float, default=d.temp_bin,
                        help="[degC] largest temperature span of one master")
    parser.add_argument("--memory-limit", type=cli.finite_float,
                        default=d.combine.memory_limit,
                        help="[byte] working-memory budget of each master's combination; the "
                             "model's pixel work reads row tiles of every master within a "
                             "quarter of it")
    return parser


def settings_from(args) -> FitSettings:
    """Validated settings from parsed options."""
    try:
        return FitSettings(t_ref=args.t_ref, doubling_temperature=args.doubling_temperature,
                           doubling_temperature_err=args.doubling_temperature_err,
                           gain=args.gain, bias_slope=tuple(args.bias_slope)
                           if args.bias_slope else None, fit_stages=tuple(args.fit_stages),
                           temp_bin=args.temp_bin,
                           combine=CombineSettings(method="mean",
                                                   memory_limit=args.memory_limit))
    except ValueError as err:
        raise ConfigError(f"invalid option: {err}") from err


def _main(args) -> int:
    settings = settings_from(args)
    result = run(args.source, args.output_dir, settings, radiation_log=args.radiation_log,
                 progress_bar=not args.no_progress)
    logger.info("%s", result.summary_line())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m analysis.fit_radiation_model FRAMES_OR_INDEX OUTPUT_DIR``."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
