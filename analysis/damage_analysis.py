"""Radiation damage of an irradiation campaign: dark current vs dose, hot pixels, annealing.

From an index of the campaign (with its dose bookkeeping), every (stage, dose
step) is measured apart with the dark pipeline's steps -- bias-subtracted dark
masters, rate maps, the 1-D dark model where the stage has darks at two
temperatures or more, bias and read noise -- then the damage is computed from
one point per step: dark current at T_ref per pixel (temperature-corrected with
the pre-irradiation model; e-/s with a gain, nA/cm^2 with --pixel-pitch), the
damage slope (increase per krad) globally and per pixel, the dark-current
distribution and hot pixels per step (fixed threshold in e-/s, and relative to
the pre-irradiation distribution; new vs pre-existing; recovered after
annealing), the recovered fraction after annealing with the time since
beam-off, the bias shift and read-noise change per krad and the doubling
temperature pre vs post.  Every PNG has its .npz twin; every fitted number its
standard error.  See analysis/damage.py for the definitions.

Outputs in OUTPUT_DIR: damage_summary.csv (one row per step), damage_fits.csv
(every dose-response fit with errors and status), hot_pixels.csv,
dark_current_percentiles.csv, dark_current_<tag>.fits, hot_pixels_<tag>.fits,
damage_slope_map.fits, annealing_fraction_map.fits,
doubling_temperature_<pre|post>.fits, plots/*.png + .npz, models/<tag>/ (masters),
damage_summary.json, config_used.json.

Example
-------
::

    python -m analysis.damage_analysis irr/index.csv out/damage --gain 2.0
    python -m analysis.damage_analysis irr/index.csv out/damage --gain flat/gain.json \\
        --t-ref 0 --pixel-pitch 10 --radiation-log irr/radiationLogCompleto.csv
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from astropy.io import fits

from analysis import damage as dmg
from analysis import damage_plots as plots
from analysis.products import save_plot
from analysis.stage_models import bias_level_at, measure_campaign, nofit_pixels
from dark_pipeline.pipeline import DarkSettings
from utils import adu, cli, plotting
from utils import headers as kw
from utils.errors import ConfigError, UserError
from utils.io.dose import assign_doses
from utils.io.fitsio import (
    check_output_dir,
    provenance_cards,
    set_card,
    write_csv,
    write_json,
    write_product,
)
from utils.io.index import DatasetIndex
from utils.io.tokens import value_error_text
from utils.models.gain import Gain, resolve_gain
from utils.models.regression import Regression
from utils.settings import dump_settings, field
from utils.stack.master import CombineSettings, adc_bits_of, add_combine_options, combine_settings

logger = logging.getLogger(__name__ if __name__ != "__main__" else "analysis.damage_analysis")

UNIT_FITS = {"e-/s": "electron / s", "adu/s": "adu / s"}


@dataclass(frozen=True)
class DamageAnalysisSettings:
    """Settings of the damage analysis (written to ``config_used.json``)."""

    t_ref: float = field(20.0, "[degC] temperature the dark currents are referred to")
    hot_threshold_e: float = field(5.0, "[e-/s] fixed hot-pixel threshold at t_ref (LSST's "
                                        "default); needs the gain")
    hot_nsigma: float = field(5.0, "[sigma] relative hot-pixel threshold: robust sigma of "
                                   "ln(dark current) above the pre-irradiation median")
    pixel_pitch_um: float | None = field(None, "[um] pixel pitch, for dark current in nA/cm^2")
    min_significance: float = field(3.0, "[sigma] per-pixel annealing fraction only where the "
                                         "dark-current increase is this significant")
    temp_bin: float = field(1.0, "[degC] largest temperature span of one master")
    exp_tolerance: float = field(0.01, "largest relative exposure-time span of one master")
    min_snr: float = field(3.0, "smallest rate/error counted as signal in the dark fits")
    bias_temp_tolerance: float = field(2.0, "[degC] largest dark-bias temperature distance")
    combine: CombineSettings = field(CombineSettings(), "combination of each master")

    def __post_init__(self):
        if not self.hot_threshold_e > 0 or not self.hot_nsigma > 0:
            raise ValueError("hot_threshold_e and hot_nsigma must be > 0")
        if self.pixel_pitch_um is not None and not self.pixel_pitch_um > 0:
            raise ValueError("pixel_pitch_um must be > 0 um")
        if not math.isfinite(self.t_ref) or not self.min_significance > 0:
            raise ValueError("t_ref must be finite and min_significance > 0")
        if not self.bias_temp_tolerance > 0:
            raise ValueError(f"bias_temp_tolerance must be > 0 degC, not "
                             f"{self.bias_temp_tolerance:g}")

    @property
    def damage(self) -> dmg.DamageSettings:
        """The compute settings."""
        return dmg.DamageSettings(self.t_ref, self.hot_threshold_e, self.hot_nsigma,
                                  self.pixel_pitch_um, self.min_significance)


@dataclass
class DamageResult:
    """What a run produced."""

    out_dir: Path
    summary: dict
    files: list
    steps: list
    hot: dmg.HotPixels | None
    slope: dmg.DamageSlope | None
    annealing: dmg.Annealing | None
    table: pd.DataFrame

    def summary_line(self) -> str:
        """One line: the key results and where they are."""
        s = self.summary
        parts = [f"damage analysis: {s['steps']} steps"]
        if s.get("damage_slope") is not None:
            parts.append("damage slope " + value_error_text(
                s["damage_slope"], s["damage_slope_err"], f"{s['unit']}/krad"))
        if s.get("recovered_fraction") is not None:
            parts.append("recovered fraction " + value_error_text(
                s["recovered_fraction"], s["recovered_fraction_err"]))
        if s.get("bias_shift_adu_per_krad") is not None:
            parts.append("bias shift " + value_error_text(
                s["bias_shift_adu_per_krad"], s["bias_shift_err_adu_per_krad"], "adu/krad"))
        return ", ".join(parts) + f"; {len(self.files)} files in {self.out_dir}"


def load_index(index_csv, radiation_log=None) -> DatasetIndex:
    """The index, with dose bookkeeping (re-joined when a log is given or it has none)."""
    index = DatasetIndex.from_csv(index_csv)
    table = index.table
    if radiation_log is not None or not table["FRAMEDOSE"].notna().any():
        table, report = assign_doses(table, radiation_log=radiation_log,
                                     root=Path(index_csv).resolve().parent)
        logger.info("%s", report.summary())
        index = DatasetIndex(table)
    return index


def _fit_record(quantity: str, fit: Regression, unit: str) -> dict:
    rec = {"QUANTITY": quantity, "UNIT": unit}
    rec.update(fit.record())
    return rec


def _image_header(product: str, cards: list) -> fits.Header:
    header = fits.Header()
    for key, value, comment in provenance_cards(product):
        set_card(header, key, value, comment)
    for key, value, comment in cards:
        set_card(header, key, value if not (isinstance(value, float) and not math.isfinite(value))
                 else "NAN", comment)
    return header


def _distribution(steps, percentiles):
    rows, hists, curves = [], {}, {}
    finite = np.concatenate([s.current[np.isfinite(s.current) & (s.current > 0)]
                             for s in steps])
    lo = max(float(np.percentile(finite, 0.1)), 1e-6) if finite.size else 1e-3
    hi = float(finite.max()) * 1.01 if finite.size else 1.0
    edges = np.geomspace(lo, max(hi, lo * 10), 61)
    for s in steps:
        v = s.current[np.isfinite(s.current)]
        row = {"STAGE": s.stage, "TAG": s.tag, "DOSE": s.dose, "FRAMEDOSE": s.framedose,
               "N_PIXELS": int(v.size), "UNIT": s.unit}
        for p in percentiles:
            row[f"P{p:g}".replace(".", "_")] = float(np.percentile(v, p)) if v.size else math.nan
        rows.append(row)
        hists[s.tag] = (edges, np.histogram(v, edges)[0])
        xs = np.sort(v)
        curves[s.tag] = (xs, xs.size - np.arange(xs.size))
    return pd.DataFrame(rows), hists, curves


def _bias_table(measurements, t_ref, slope_map, e_per_adu):
    rows = []
    for m in measurements:
        row = {"STAGE": m.stage, "TAG": m.tag, "DOSE": m.dose, "FRAMEDOSE": m.framedose_bias,
               "BIAS_LEVEL": math.nan, "BIAS_LEVEL_ERR": math.nan, "READ_NOISE": math.nan,
               "READ_NOISE_ERR": math.nan}
        try:
            level, err = bias_level_at(m, t_ref, slope_map)
            ok = np.isfinite(level) & np.isfinite(err)
            row["BIAS_LEVEL"] = float(level[ok].mean())
            row["BIAS_LEVEL_ERR"] = float(np.sqrt(np.sum(err[ok] ** 2)) / ok.sum())
        except UserError as err:
            logger.warning("%s: no bias level (%s)", m.tag, err)
        if m.read_noise is not None:
            row["READ_NOISE"], row["READ_NOISE_ERR"] = m.read_noise.median, m.read_noise.median_err
        rows.append(row)
    return pd.DataFrame(rows)


def _bias_slope_map(measurements):
    for stage in ("pre", "post"):
        for m in measurements:
            if m.stage == stage and m.bias_model is not None:
                # no coefficient where the model could not fit the pixel (its b is noise)
                nofit = nofit_pixels(m.bias_model)
                return (np.where(nofit, np.nan, np.asarray(m.bias_model.b, np.float64)),
                        f"{m.tag} bias model")
    return 0.0, "none (no bias model at two temperatures): no temperature correction"


def run(index_csv: str | os.PathLike, out_dir: str | os.PathLike,
        settings: DamageAnalysisSettings = DamageAnalysisSettings(), *,
        gain: float | str | None = None, radiation_log: str | os.PathLike | None = None,
        progress_bar: bool = False) -> DamageResult:
    """Measure every (stage, dose step) and compute the damage products (see module notes).

    Order: index (+ dose join) -> per-step masters, rates, models, bias, read noise ->
    dark current at T_ref -> hot pixels -> normal pixels -> damage slope -> annealing ->
    distributions -> bias shift and read noise vs dose -> products.

    Raises
    ------
    UserError
        Unreadable index or log, no dark frames, no group with a dark-current model in
        temperature (pre or post darks at two temperatures), or nothing measured.
    """
    out_dir = check_output_dir(out_dir)  # a file in the way: one line, before any work
    index = load_index(index_csv, radiation_log)
    table = index.table
    darks = table[(table["CALTYPE"] == "DARK") & ~table["BADFITS"].astype(bool)]
    if darks.empty:
        raise UserError(f"{index_csv}: no usable dark frames; the damage analysis needs the "
                        "darks of every stage")
    adc_bits = adc_bits_of(darks)
    g: Gain | None = resolve_gain(gain, adc_bits)
    e_per_adu = g.e_per_adu if g is not None else None
    if g is None:
        logger.warning("no gain (--gain K or a gain.json): dark currents in adu/s and no fixed "
                       "hot-pixel threshold in e-/s (the relative one is used)")
    dark_settings = DarkSettings(t_ref=settings.t_ref, temp_bin=settings.temp_bin,
                                 exp_tolerance=settings.exp_tolerance, min_snr=settings.min_snr,
                                 bias_temp_tolerance=settings.bias_temp_tolerance,
                                 combine=settings.combine,
                                 gain=g.gain if g is not None else None)
    measurements, failed = measure_campaign(index, out_dir / "models", dark_settings,
                                            progress_bar=progress_bar)
    if not measurements:
        raise UserError("damage analysis: no (stage, dose step) could be measured ("
                        + "; ".join(f"{k}: {v}" for k, v in failed.items()) + ")")
    # the bias first: its shift per krad takes out of a step's dark current the bias its
    # darks gained over its bias frames while the beam was on (one-exposure rates)
    bias_b, bias_src = _bias_slope_map(measurements)
    bias = _bias_table(measurements, settings.t_ref, bias_b, e_per_adu)
    bias_fit = dmg.level_trend(bias, "BIAS_LEVEL", "BIAS_LEVEL_ERR", "bias shift vs dose")
    rn_fit = dmg.level_trend(bias, "READ_NOISE", "READ_NOISE_ERR", "read noise vs dose")
    shift = (bias_fit.value("slope"), bias_fit.error("slope")) if bias_fit.ok else (0.0, 0.0)
    try:
        steps = dmg.step_currents(measurements, settings.t_ref, e_per_adu, bias_shift=shift,
                                  bias_slope=bias_b)
        slope_b, _, slope_src = dmg.temperature_slope(measurements)
    except ValueError as err:
        raise UserError(f"damage analysis: {err}") from err
    if not any(m.stage == "pre" for m in measurements):
        logger.warning("no pre-irradiation stage: no relative hot-pixel threshold, no new vs "
                       "pre-existing hot pixels, no recovered fraction")
    dump_settings(out_dir, damage=settings, index_csv=str(Path(index_csv).resolve()),
                  gain=None if g is None else g.__dict__, dark=dark_settings)
    unit = steps[0].unit
    files: list[Path] = []

    threshold = settings.hot_threshold_e if e_per_adu else math.inf
    hot = dmg.find_hot_pixels(steps, threshold, settings.hot_nsigma)
    masks, normal_rule = dmg.normal_masks(hot)
    normal = dmg.normal_pixels(steps, dmg.HotPixels(masks, masks, threshold,
                                                    hot.threshold_relative, hot.table))
    slope = dmg.damage_slope(steps, normal)
    anneal = dmg.annealing(steps, normal, settings.min_significance)
    means = dmg.step_means(steps, normal)
    dist, hists, curves = _distribution(steps, settings.damage.percentiles)

    # --- tables -------------------------------------------------------------------------------
    # both tables count pixels: the normal ones averaged, the finite ones the hot pixels are
    # counted among (merged as they were, they read N_PIXELS_x and N_PIXELS_y)
    summary_table = means.rename(columns={"N_PIXELS": "N_PIXELS_NORMAL"}).merge(
        hot.table.drop(columns=["STAGE", "DOSE", "FRAMEDOSE"])
        .rename(columns={"N_PIXELS": "N_PIXELS_FINITE"}), on="TAG", how="left")
    summary_table = summary_table.merge(
        bias[["TAG", "BIAS_LEVEL", "BIAS_LEVEL_ERR", "READ_NOISE", "READ_NOISE_ERR"]],
        on="TAG", how="left")
    if settings.pixel_pitch_um and e_per_adu:
        summary_table["DC_MEAN_NA_CM2"] = dmg.to_na_per_cm2(summary_table["DC_MEAN"],
                                                            settings.pixel_pitch_um)
        summary_table["DC_MEAN_ERR_NA_CM2"] = dmg.to_na_per_cm2(summary_table["DC_MEAN_ERR"],
                                                                settings.pixel_pitch_um)
    files.append(write_csv(summary_table, out_dir / "damage_summary.csv"))
    fits_rows = [_fit_record("dark_current_mean", slope.fit, f"{unit}/krad"),
                 _fit_record("bias_level", bias_fit, "adu/krad"),
                 _fit_record("read_noise", rn_fit, "adu/krad")]
    fits_rows.append({"QUANTITY": "dark_current_median_pixel_slope", "UNIT": f"{unit}/krad",
                      "SLOPE": slope.median_slope, "SLOPE_ERR": slope.median_slope_err,
                      "STATUS": "ok" if math.isfinite(slope.median_slope) else "skipped"})
    files.append(write_csv(pd.DataFrame(fits_rows), out_dir / "damage_fits.csv"))
    files.append(write_csv(hot.table, out_dir / "hot_pixels.csv"))
    files.append(write_csv(dist, out_dir / "dark_current_percentiles.csv"))

    # --- images -------------------------------------------------------------------------------
    funit = UNIT_FITS[unit]
    for s in steps:
        header = _image_header("DARK_CURRENT_TREF", [
            (kw.STAGE, s.stage, "irradiation stage"), ("STAGETAG", s.tag, "stage and dose step"),
            (kw.DOSE, s.dose if math.isfinite(s.dose) else "NAN", "[krad] dose step"),
            ("FRAMDOSE", s.framedose, "[krad] mean accumulated dose of the dark frames"),
            (kw.TREF, settings.t_ref, "[degC] temperature the current refers to"),
            ("TMEAS", s.temperature, "[degC] temperature of the measured rate"),
            ("TSLOPE", slope_src[:60], "per-pixel temperature rate used")])
        if g is not None:
            for key, value, comment in g.cards():
                set_card(header, key, value, comment)
        files.append(write_product(out_dir / f"dark_current_{s.tag}.fits", s.current, header,
                                   unit=funit, uncertainty=s.error,
                                   mask=~np.isfinite(s.current)))
        bits = (hot.fixed[s.tag].astype(np.uint8) | (hot.relative[s.tag].astype(np.uint8) << 1))
        pre = next((t for t in steps if t.stage == "pre"), None)
        if pre is not None and e_per_adu:
            bits |= (hot.fixed[s.tag] & ~hot.fixed[pre.tag]).astype(np.uint8) << 2
        header = _image_header("HOT_PIXELS", [
            ("STAGETAG", s.tag, "stage and dose step"),
            ("THRFIXED", threshold if math.isfinite(threshold) else "NAN",
             f"[{unit}] fixed threshold at TREF (bit 1)"),
            ("THRREL", hot.threshold_relative, f"[{unit}] threshold relative to pre (bit 2)"),
            ("BITS", "1 fixed, 2 relative, 4 new since pre", "mask bit meanings")])
        files.append(write_product(out_dir / f"hot_pixels_{s.tag}.fits", bits, header, unit=""))
    header = _image_header("DAMAGE_SLOPE", [
        ("MODEL", "I(D) = I0 + SLOPE D", "per pixel, weighted, pre and radiating steps"),
        ("PERDOSE", "krad", "values are per krad of dose (krad is no FITS unit)"),
        (kw.TREF, settings.t_ref, "[degC] reference temperature")])
    files.append(write_product(out_dir / "damage_slope_map.fits", slope.slope_map, header,
                               unit=funit, uncertainty=slope.slope_err,
                               mask=~np.isfinite(slope.slope_map),
                               images={"INTERCEPT": (slope.intercept_map, funit),
                                       "CHI2DOF": (slope.chi2, "")}))
    if anneal.status == "ok":
        header = _image_header("ANNEALING_FRACTION", [
            ("MODEL", "(I_last - I_post) / (I_last - I_pre)", "recovered fraction"),
            ("LASTTAG", anneal.last_tag, "last irradiated step"),
            ("TANNEAL", anneal.tanneal, "[s] median time since beam-off of post darks"),
            ("ENDDOSE", anneal.end_dose, "[krad] dose of I_last (the post darks')")])
        files.append(write_product(out_dir / "annealing_fraction_map.fits", anneal.fraction_map,
                                   header, unit="", uncertainty=anneal.fraction_map_err,
                                   mask=~np.isfinite(anneal.fraction_map)))
    td = {}
    for m in measurements:
        if m.stage in ("pre", "post") and m.model is not None:
            head = m.model.headline()
            td[m.stage] = (m.model.doubling_temperature(), head)
            header = _image_header("DOUBLING_TEMPERATURE", [
                ("STAGETAG", m.tag, "stage"),
                ("TDPOP", head["doubling_temperature_degC"], "[degC] population T_d"),
                ("TDPOPERR", head["doubling_temperature_err_degC"], "[degC] its error")])
            files.append(write_product(out_dir / f"doubling_temperature_{m.stage}.fits",
                                       td[m.stage][0], header, unit="deg_C",
                                       mask=m.model.fit.fallback | ~np.isfinite(td[m.stage][0]),
                                       images={"EA": (m.model.activation_energy(), "eV")}))

    # --- figures with their data ------------------------------------------------------------
    pdir = out_dir / "plots"
    pts = means
    files += save_plot(plots.plot_dark_current_vs_dose(pts, slope.fit, unit),
                       pdir / "dark_current_vs_dose",
                       {"stage": pts["STAGE"].tolist(), "dose": pts["FRAMEDOSE"],
                        "mean": pts["DC_MEAN"], "mean_err": pts["DC_MEAN_ERR"],
                        "slope": slope.fit.value("slope") if slope.fit.ok else math.nan,
                        "slope_err": slope.fit.error("slope") if slope.fit.ok else math.nan,
                        "intercept": slope.fit.value("intercept") if slope.fit.ok else math.nan})
    files += save_plot(plots.plot_distributions(hists, unit), pdir / "dark_current_distribution",
                       {"tags": list(hists), "edges": next(iter(hists.values()))[0],
                        "counts": np.array([c for _, c in hists.values()])})
    files += save_plot(plots.plot_cumulative(curves, unit, threshold),
                       pdir / "dark_current_cumulative",
                       {f"{tag}_x": x for tag, (x, _) in curves.items()}
                       | {f"{tag}_above": a for tag, (_, a) in curves.items()})
    files += save_plot(plots.plot_hot_pixels(hot.table), pdir / "hot_pixels_vs_dose",
                       {c.lower(): hot.table[c].to_numpy(float, na_value=np.nan)
                        for c in hot.table.columns if c not in ("STAGE", "TAG")}
                       | {"tag": hot.table["TAG"].tolist()})
    for value, fit, name, ylabel, title in (
            ("BIAS_LEVEL", bias_fit, "bias_shift", "bias at T_ref [adu]", "bias level vs dose"),
            ("READ_NOISE", rn_fit, "read_noise_vs_dose", "read noise [adu]",
             "read noise vs dose")):
        files += save_plot(plots.plot_level_trend(bias, value, value + "_ERR", fit,
                                                  ylabel=ylabel, title=title, unit="adu"),
                           pdir / name,
                           {"stage": bias["STAGE"].tolist(), "dose": bias["FRAMEDOSE"],
                            "value": bias[value], "error": bias[value + "_ERR"],
                            "slope": fit.value("slope") if fit.ok else math.nan,
                            "slope_err": fit.error("slope") if fit.ok else math.nan})
    from utils.plotting import show_image

    files += save_plot(show_image(slope.slope_map, unit=f"{unit}/krad", label="damage slope",
                                  title="dark-current increase per krad"),
                       pdir / "damage_slope_map", {"slope": slope.slope_map,
                                                   "slope_err": slope.slope_err})
    if anneal.status == "ok":
        files += save_plot(show_image(anneal.fraction_map, unit="1", label="recovered fraction",
                                      title=f"annealing after {anneal.last_tag}"),
                           pdir / "annealing_map", {"fraction": anneal.fraction_map,
                                                    "fraction_err": anneal.fraction_map_err})
    if td:
        pre = td.get("pre", (None, None))[0]
        post = td.get("post", (None, None))[0]
        files += save_plot(plots.plot_doubling(pre, post), pdir / "doubling_temperature_pre_post",
                           {"pre": pre if pre is not None else np.array([]),
                            "post": post if post is not None else np.array([])})

    summary = {
        "steps": len(steps), "unit": unit, "t_ref_degC": settings.t_ref,
        "gain": None if g is None else {"e_per_adc_count": g.gain, "source": g.source,
                                         "method": g.method},
        "temperature_slope_from": slope_src, "bias_temperature_slope_from": bias_src,
        "normal_pixels": int(normal.sum()), "normal_pixels_criterion": normal_rule,
        "not_measured": failed,
        "damage_slope": slope.fit.value("slope") if slope.fit.ok else None,
        "damage_slope_err": slope.fit.error("slope") if slope.fit.ok else None,
        "damage_slope_status": slope.fit.status,
        "damage_slope_median_pixel": slope.median_slope,
        "damage_slope_median_pixel_err": slope.median_slope_err,
        "recovered_fraction": anneal.fraction if anneal.status == "ok" else None,
        "recovered_fraction_err": anneal.fraction_err if anneal.status == "ok" else None,
        "recovered_fraction_end_dose_krad": anneal.end_dose if anneal.status == "ok" else None,
        "annealing_status": anneal.status, "tanneal_s": anneal.tanneal,
        "hot_threshold": threshold if math.isfinite(threshold) else None,
        "hot_threshold_relative": hot.threshold_relative,
        # Without a gain there is no fixed e-/s threshold: the counts are the pre-relative ones
        # (the masks that define the normal pixels), and the summary says which.
        "hot_pixels": dict(zip(hot.table["TAG"], hot.table[
            "N_HOT" if e_per_adu else "N_HOT_RELATIVE"].astype(int).tolist())),
        "hot_pixels_criterion": (f"> {settings.hot_threshold_e:g} e-/s at t_ref" if e_per_adu
                                 else f"> {settings.hot_nsigma:g} robust sigma of ln(rate) "
                                 "above the pre distribution (no gain)"),
        "bias_shift_adu_per_krad": bias_fit.value("slope") if bias_fit.ok else None,
        "bias_shift_err_adu_per_krad": bias_fit.error("slope") if bias_fit.ok else None,
        "bias_shift_status": bias_fit.status,
        "read_noise_slope_adu_per_krad": rn_fit.value("slope") if rn_fit.ok else None,
        "read_noise_slope_err_adu_per_krad": rn_fit.error("slope") if rn_fit.ok else None,
        "read_noise_status": rn_fit.status,
        "doubling_temperature_degC": {k: v[1]["doubling_temperature_degC"] for k, v in td.items()},
        "doubling_temperature_err_degC": {k: v[1]["doubling_temperature_err_degC"]
                                          for k, v in td.items()},
        "adc_bits": adc_bits, "adu_scale": adu.adu_scale(adc_bits),
    }
    files.append(write_json(summary, out_dir / "damage_summary.json", _json))
    files.append(out_dir / "config_used.json")
    return DamageResult(out_dir, summary, files, steps, hot, slope, anneal, summary_table)


def _json(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    d = DamageAnalysisSettings()
    parser = cli.make_parser("python -m analysis.damage_analysis", __doc__)
    parser.add_argument("index_csv", metavar="INDEX_CSV", help="index of the campaign")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder for the products")
    parser.add_argument("--radiation-log", default=None,
                        help="campaign radiation log (default: the index's dose columns)")
    parser.add_argument("--gain", default=None,
                        help="[e-/ADC count] system gain, or the flat pipeline's gain.json")
    parser.add_argument("--t-ref", type=float, default=d.t_ref,
                        help="[degC] temperature the dark currents are referred to")
    parser.add_argument("--hot-threshold", type=float, default=d.hot_threshold_e,
                        help="[e-/s] fixed hot-pixel threshold at T_ref")
    parser.add_argument("--hot-nsigma", type=float, default=d.hot_nsigma,
                        help="[sigma] hot-pixel threshold relative to the pre distribution")
    parser.add_argument("--pixel-pitch", type=float, default=None,
                        help="[um] pixel pitch, for the dark current in nA/cm^2")
    parser.add_argument("--temp-bin", type=float, default=d.temp_bin,
                        help="[degC] largest temperature span of one master")
    add_combine_options(parser, d.combine)
    plotting.add_plots_option(parser)
    return parser


def settings_from(args) -> DamageAnalysisSettings:
    """Validated settings from parsed options."""
    try:
        return DamageAnalysisSettings(t_ref=args.t_ref, hot_threshold_e=args.hot_threshold,
                                      hot_nsigma=args.hot_nsigma,
                                      pixel_pitch_um=args.pixel_pitch, temp_bin=args.temp_bin,
                                      combine=combine_settings(args))
    except ValueError as err:
        raise ConfigError(f"invalid option: {err}") from err


def _main(args) -> int:
    result = run(args.index_csv, args.output_dir, settings_from(args), gain=args.gain,
                 radiation_log=args.radiation_log, progress_bar=not args.no_progress)
    logger.info("%s", result.summary_line())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
