"""The dose analysis, step by step: :func:`run` states the order and writes every product.

Layout of OUTPUT_DIR (the old names and ``.npz`` keys; every PNG has an ``.npz``
twin of the same base name)::

    dose_summary.csv, photometric_precision.csv, masters/
    plots/       <cal>_mean_vs_dose[_E<p>s], <cal>_mean_std_vs_dose[_E<p>s],
                 std_model_<cal>[_E<p>s], dose_rate_effect_<cal>,
                 photometric_precision_vs_dose
    pixel_precision/  mag_err_<d>kR, adu_err16_<d>kR, adu_err12_<d>kR (.fits, .png, .npz),
                 zone_mag_error, zone_adu_error, pixel_precision_stats.csv,
                 mag_err_vs_dose, adu_err_vs_dose
    analysis/    stage_differences.csv, {bias,dark}_{first_vs_pre,post_vs_last}[_log],
                 dose_rate_model.csv + dose_rate_model_<cal>[_E<p>s], dose_model.csv +
                 dose_model_<cal>[_E<p>s], base_level_trend.csv + base_level_trend_{bias,dark},
                 stage_base_diff.npz + stage_base_diff_{bias,dark}, dynamic_range.npz +
                 dynamic_range_vs_dose_{16,12}, baseline_vs_dose_{16,12}, magnitude_vs_dose,
                 relative_{noise,mag_err}_vs_dose_{16,12}, relative_precision.npz,
                 pre_vs_post_relative_precision
    damage/      the damage analysis (analysis.damage_analysis), when the campaign allows
    fits.csv     every fitted coefficient of the above with its error and status
    dose_analysis_summary.json, config_used.json
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from analysis.products import p_form, save_plot, write_npz
from analysis.stage_differences import difference, plot_difference, write_difference
from utils.errors import UserError
from utils.io.fitsio import (
    provenance_cards,
    set_card,
    write_csv,
    write_json,
    write_product,
)
from utils.io.index import by_stage, sort_by_stage
from utils.models.gain import Gain, resolve_gain
from utils.models.regression import Regression
from utils.settings import dump_settings, field
from utils.stack.master import CombineSettings, read_master

from . import dynamic_range as drm
from . import models, plots, precision
from .summary import IRRADIATING, build_summary, full_scale, group_frames, take_out_bias_drift

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DoseSettings:
    """Settings of the dose analysis (written to ``config_used.json``)."""

    temp_bin: float = field(1.0, "[degC] largest temperature span of one master")
    exp_tolerance: float = field(0.01, "largest relative exposure-time span of one master")
    bias_temp_tolerance: float = field(2.0, "[degC] largest dark-bias temperature distance")
    dark_exposure: float | None = field(None, "[s] dark exposure of the dynamic-range and "
                                              "precision products (default: the longest)")
    damage: bool = field(True, "also run the damage analysis into damage/")
    combine: CombineSettings = field(CombineSettings(), "combination of each master")

    def __post_init__(self):
        if not self.temp_bin > 0 or self.exp_tolerance < 0 or self.bias_temp_tolerance < 0:
            raise ValueError("temp_bin must be > 0, the tolerances >= 0")
        if self.dark_exposure is not None and not self.dark_exposure > 0:
            raise ValueError("dark_exposure must be > 0 s")


@dataclass
class DoseResult:
    """What a run produced."""

    out_dir: Path
    summary: pd.DataFrame
    fits: pd.DataFrame
    files: list
    notes: list
    gain: Gain | None
    damage: object = None

    def summary_line(self) -> str:
        """One line: what was written where."""
        skipped = int((~self.fits["STATUS"].str.startswith("ok")).sum()) if len(self.fits) \
            else 0
        gain = f"gain {self.gain.gain:g} e-/ADC count ({self.gain.source})" if self.gain \
            else "gain assumed 1 e-/adu"
        text = (f"dose analysis: {len(self.summary)} groups, {len(self.fits)} fits "
                f"({skipped} skipped, see fits.csv), {gain}")
        if self.damage is not None:
            text += "; " + self.damage.summary_line()
        return text + f"; {len(self.files)} files in {self.out_dir}"


class _Writer:
    """Collects written files and fit records."""

    def __init__(self, out: Path):
        self.out, self.files, self.fits, self.notes = out, [], [], []

    def plot(self, ax, rel: str, data: dict) -> None:
        self.files += save_plot(ax, self.out / rel, data)

    def csv(self, table: pd.DataFrame, rel: str) -> None:
        self.files.append(write_csv(table, self.out / rel))

    def npz(self, rel: str, **data) -> None:
        self.files.append(write_npz(self.out / rel, **data))

    def fit(self, analysis: str, caltype: str, exptime, quantity: str, r: Regression) -> None:
        rec = {"ANALYSIS": analysis, "CALTYPE": caltype, "EXPTIME": exptime,
               "QUANTITY": quantity}
        rec.update(r.record())
        self.fits.append(rec)
        if r.status != "ok":
            # a dose rate outside irradiation is 0 by definition: that skip is expected
            expected = analysis == "dose_rate_effect" and "not irradiating" in r.status
            logger.log(logging.INFO if expected else logging.WARNING, "%s", r.message)
            self.notes.append(r.message)


def _suffix(caltype: str, exptime: float) -> str:
    return "" if caltype == "BIAS" or not math.isfinite(exptime) else f"_E{p_form(exptime)}s"


def _coef(r: Regression, i: int) -> float:
    return float(r.coef[i]) if r.ok else math.nan


def _err(r: Regression, i: int) -> float:
    return float(r.err[i]) if r.ok else math.nan


def run(index_csv: str | os.PathLike, out_dir: str | os.PathLike,
        settings: DoseSettings = DoseSettings(), *, gain: float | str | None = None,
        radiation_log: str | os.PathLike | None = None,
        progress_bar: bool = False) -> DoseResult:
    """Run the dose analysis (see the module notes for the products).

    Order: index (+ dose join) -> groups -> masters and summary -> per-type dose plots ->
    STD model -> dose-rate effect -> photometric precision -> pixel precision -> stage
    differences -> dose-rate model -> dose model -> base-level trend -> stage base
    difference -> dynamic range -> relative precision -> damage analysis -> fits table.

    Raises
    ------
    UserError
        Unreadable index or radiation log, no frame with a dose step.
    """
    from analysis.damage_analysis import load_index

    out = Path(out_dir)
    index = load_index(index_csv, radiation_log)
    table = index.table
    groups = group_frames(table, settings.temp_bin, settings.exp_tolerance)
    if not groups:
        raise UserError(f"{index_csv}: no usable frame with a dose step (DOSE): index an "
                        "irradiation campaign (stage folders or <dose>kRads folders)")
    usable = table[~table["BADFITS"].astype(bool)]
    fs, scale = full_scale(usable)
    g = resolve_gain(gain, int(round(16 - math.log2(scale))))
    e_per_adu = g.e_per_adu if g is not None else 1.0
    if g is None:
        logger.warning("no gain given (--gain K or the flat pipeline's gain.json): shot noise "
                       "computed with 1 e-/adu (the old assumption), recorded in every "
                       "precision product")
    dump_settings(out, dose=settings, index_csv=str(Path(index_csv).resolve()),
                  gain=None if g is None else g.__dict__, full_scale_adu=fs)
    summary = build_summary(groups, out, settings.combine, temp_bin=settings.temp_bin,
                            bias_tolerance=settings.bias_temp_tolerance,
                            progress_bar=progress_bar)
    summary, drift_note = take_out_bias_drift(summary)
    w = _Writer(out)
    w.notes.append(drift_note)
    # rows in campaign order per calibration type (pre, radiating, post; not alphabetical)
    w.csv(sort_by_stage(summary, ["CALTYPE", "STAGE", "DOSE", "EXPTIME", "TEMP"]),
          "dose_summary.csv")
    rows = summary[summary["USED"]].copy()
    gain_note = {"gain_e_per_adu": e_per_adu,
                 "gain_source": g.source if g is not None else "assumed 1 e-/adu (no gain)",
                 "full_scale_adu": fs}
    dark_exps = sorted(rows.loc[rows["CALTYPE"] == "DARK", "EXPTIME"].dropna().unique())
    ref_exp = settings.dark_exposure if settings.dark_exposure else \
        (dark_exps[-1] if dark_exps else math.nan)
    if not rows["STAGE"].isin(IRRADIATING).any():
        w.notes.append("no irradiating (radiating) rows: the dose fits are skipped")
    if rows["DOSE"].nunique() < 2:
        w.notes.append(f"one dose step only ({', '.join(map(str, rows['DOSE'].unique()))} "
                       "krad): fits across dose are skipped")

    _per_type_plots(w, rows)
    _dose_rate_effect(w, rows)
    _photometric(w, rows, fs, e_per_adu, gain_note)
    _pixel_precision(w, rows, out, fs, e_per_adu, scale, ref_exp, gain_note)
    _stage_differences(w, rows, out, ref_exp)
    _dose_rate_model(w, rows)
    _dose_model(w, rows)
    _base_level(w, rows)
    _stage_base_diff(w, rows, ref_exp)
    _dynamic_range(w, rows, fs, scale, ref_exp)
    _relative(w, rows, fs, scale, ref_exp)
    damage = None
    if settings.damage:
        from analysis import damage_analysis

        try:
            damage = damage_analysis.run(index_csv, out / "damage",
                                         damage_analysis.DamageAnalysisSettings(
                                             temp_bin=settings.temp_bin,
                                             exp_tolerance=settings.exp_tolerance,
                                             bias_temp_tolerance=settings.bias_temp_tolerance,
                                             combine=settings.combine),
                                         gain=gain, radiation_log=radiation_log,
                                         progress_bar=progress_bar)
            w.files += damage.files
        except UserError as err:
            logger.warning("damage analysis skipped: %s", err)
            w.notes.append(f"damage analysis skipped: {err}")
    fits_table = pd.DataFrame(w.fits)
    w.csv(fits_table, "fits.csv")
    record = {"groups": len(summary), "used_rows": int(len(rows)), "reference_dark_exposure_s":
              ref_exp, "notes": w.notes, **gain_note,
              "damage": None if damage is None else damage.summary}
    w.files.append(write_json(record, out / "dose_analysis_summary.json"))
    w.files.append(out / "config_used.json")
    return DoseResult(out, summary, fits_table, w.files, w.notes, g, damage)


# --- the steps ---------------------------------------------------------------------------------

def _per_type_plots(w: _Writer, rows: pd.DataFrame) -> None:
    """Mean vs dose per stage; MEAN and STD vs dose with the STD = a MEAN + b fits; STD model."""
    for cal, exp, part in models.series(rows):
        sfx = _suffix(cal, exp)
        name = f"{cal.lower()}{'' if not sfx else ' ' + sfx[2:]}"
        data, pts = {}, {}
        for stage, sp in by_stage(part):
            sp = sp.sort_values("DOSE")
            data.update({f"{stage}_dose": sp["DOSE"], f"{stage}_mean": sp["MEAN"],
                         f"{stage}_std": sp["STD"]})
            pts[stage] = (sp["DOSE"], sp["MEAN"], sp["STD"])
        w.plot(plots.plot_series(pts, xlabel=plots.DOSE, ylabel="mean [adu]",
                                 title=f"{name}: mean +- std vs dose"),
               f"plots/{cal.lower()}_mean_vs_dose{sfx}", data)
        fit_ir, fit_no = models.std_model(part, name)
        for tag, r in (("ir", fit_ir), ("no", fit_no)):
            w.fit("std_model", cal, exp, f"STD vs MEAN ({tag})", r)
        p = part.sort_values("DOSE")
        data = {"dose": p["DOSE"], "mean": p["MEAN"], "std": p["STD"],
                "fit_ir": fit_ir.predict(p["MEAN"]) if fit_ir.ok else np.full(len(p), np.nan),
                "fit_no": fit_no.predict(p["MEAN"]) if fit_no.ok else np.full(len(p), np.nan)}
        for tag, r in (("ir", fit_ir), ("no", fit_no)):
            data.update({f"slope_{tag}": _coef(r, 1), f"intercept_{tag}": _coef(r, 0),
                         f"slope_{tag}_err": _err(r, 1), f"intercept_{tag}_err": _err(r, 0),
                         f"status_{tag}": r.status})
        w.plot(plots.plot_mean_std_vs_dose(p["DOSE"], p["MEAN"], p["STD"], fit_ir, fit_no,
                                           title=f"{name}: mean and std vs dose",
                                           stage=p["STAGE"].to_numpy()),
               f"plots/{cal.lower()}_mean_std_vs_dose{sfx}", data)
        irr = models.irradiating(p).to_numpy()
        w.plot(plots.plot_std_model(p["MEAN"], p["STD"], fit_ir, fit_no, irr,
                                    title=f"{name}: STD = a MEAN + b"),
               f"plots/std_model_{cal.lower()}{sfx}",
               {"mean": p["MEAN"], "std": p["STD"], "irradiating": irr,
                "fit_ir": data["fit_ir"], "fit_no": data["fit_no"],
                "resid_ir": p["STD"] - data["fit_ir"], "resid_no": p["STD"] - data["fit_no"]})


def _dose_rate_effect(w: _Writer, rows: pd.DataFrame) -> None:
    for cal in ("BIAS", "DARK", "FLAT"):
        part = rows[rows["CALTYPE"] == cal]
        if part.empty:
            continue
        fits_ = models.dose_rate_effect(part, cal.lower())
        ir = models.irradiating(part)
        data = {}
        for subset, mask in (("ir", ir), ("no", ~ir)):
            sp = part[mask & part["DOSE_RATE"].notna()]
            data.update({f"rate_{subset}": sp["DOSE_RATE"], f"mean_{subset}": sp["MEAN"],
                         f"std_{subset}": sp["STD"]})
        for (q, subset), r in fits_.items():
            data.update({f"slope_{q}_{subset}": _coef(r, 1), f"intercept_{q}_{subset}":
                         _coef(r, 0), f"slope_{q}_{subset}_err": _err(r, 1),
                         f"intercept_{q}_{subset}_err": _err(r, 0),
                         f"status_{q}_{subset}": r.status})
            w.fit("dose_rate_effect", cal, math.nan, f"{q.upper()} vs DOSE_RATE ({subset})", r)
        w.plot(plots.plot_dose_rate_effect(data, fits_, title=cal.lower()),
               f"plots/dose_rate_effect_{cal.lower()}", data)


def _photometric(w: _Writer, rows, fs, e_per_adu, gain_note) -> None:
    table = precision.summary_precision(rows, fs, e_per_adu)
    table = table.assign(GAIN_E_PER_ADU=e_per_adu, FULL_SCALE=fs)
    w.csv(table, "photometric_precision.csv")
    w.plot(plots.plot_series({"mag_err": (table["DOSE"], table["MAG_ERR"],
                                          table["MAG_ERR_STD"])},
                             xlabel=plots.DOSE, ylabel="magnitude error [mag]",
                             title="photometric precision vs dose (half-full-scale source)"),
           "plots/photometric_precision_vs_dose",
           {"dose": table["DOSE"], "mag_err": table["MAG_ERR"],
            "mag_err_std": table["MAG_ERR_STD"], **gain_note})


def _master_images(rows: pd.DataFrame, out: Path):
    return {r["MASTER"]: read_master(out / r["MASTER"]) for _, r in rows.iterrows()
            if isinstance(r["MASTER"], str) and r["MASTER"]}


def _pixel_precision(w: _Writer, rows, out, fs, e_per_adu, scale, ref_exp, gain_note) -> None:
    ir = rows[rows["STAGE"].isin(IRRADIATING)]
    stats, zones_mag, zones_adu, doses = [], [], [], []
    for dose, part in ir.groupby("DOSE", sort=True):
        bias = part[part["CALTYPE"] == "BIAS"]
        dark = part[(part["CALTYPE"] == "DARK") & np.isclose(part["EXPTIME"], ref_exp)]
        if bias.empty or dark.empty:
            continue
        b, d = read_master(out / bias["MASTER"].iloc[0]), read_master(out / dark["MASTER"].iloc[0])
        maps = precision.pixel_precision(b.data, b.noise, d.noise, fs, e_per_adu, scale)
        tag = f"{float(dose) + 0.0:g}kR"
        for name, unit in (("mag_err", "mag"), ("adu_err16", "adu"), ("adu_err12", "adu/16")):
            header = fits.Header()
            for key, value, comment in provenance_cards("PIXEL_PRECISION"):
                set_card(header, key, value, comment)
            for key, value, comment in (("DOSE", float(dose), "[krad] dose step"),
                                        ("FULLSCAL", fs, "[adu] full scale (saturation)"),
                                        ("EPERADU", e_per_adu, "[e-/adu] for the shot noise"),
                                        ("GAINSRC", gain_note["gain_source"][:60], "gain"),
                                        ("DARKEXP", float(ref_exp), "[s] dark exposure")):
                set_card(header, key, value, comment)
            fits_unit = {"mag": "mag", "adu": "adu", "adu/16": "adu"}[unit]
            if name == "adu_err12":
                set_card(header, "ADUSCALE", scale, "12-bit units: stored adu / ADUSCALE")
            w.files.append(write_product(out / "pixel_precision" / f"{name}_{tag}.fits",
                                         maps[name], header, unit=fits_unit,
                                         mask=~np.isfinite(maps[name])))
            w.plot(plots.plot_map_relative(maps[name], title=f"{name} at {dose:g} krad"),
                   f"pixel_precision/{name}_{tag}", {name: maps[name], "dose": dose})
        mm, ms = precision.map_stats(maps["mag_err"])
        am, as_ = precision.map_stats(maps["adu_err16"])
        stats.append({"DOSE": dose, "MAG_MEAN": mm, "MAG_STD": ms, "ADU_MEAN": am,
                      "ADU_STD": as_})
        zones_mag.append(precision.quadrants(maps["mag_err"]))
        zones_adu.append(precision.quadrants(maps["adu_err16"]))
        doses.append(float(dose))
    table = pd.DataFrame(stats, columns=["DOSE", "MAG_MEAN", "MAG_STD", "ADU_MEAN", "ADU_STD"])
    w.csv(table, "pixel_precision/pixel_precision_stats.csv")
    zm, za = np.array(zones_mag).reshape(-1, 4), np.array(zones_adu).reshape(-1, 4)
    for rel, z, ylabel in (("zone_mag_error", zm, "mean magnitude error [mag]"),
                           ("zone_adu_error", za, "mean ADU error [adu]")):
        w.plot(plots.plot_series({f"Q{i + 1}": (doses, z[:, i], None) for i in range(4)},
                                 xlabel=plots.DOSE, ylabel=ylabel, title="quadrant means vs dose"),
               f"pixel_precision/{rel}", {"dose": doses, **{f"q{i + 1}": z[:, i]
                                                           for i in range(4)}})
    w.plot(plots.plot_series({"pixels": (table["DOSE"], table["MAG_MEAN"], table["MAG_STD"])},
                             xlabel=plots.DOSE, ylabel="magnitude error [mag]",
                             title="pixel magnitude error vs dose"),
           "pixel_precision/mag_err_vs_dose", {"dose": table["DOSE"],
                                               "mag_mean": table["MAG_MEAN"],
                                               "mag_std": table["MAG_STD"]})
    w.plot(plots.plot_series({"pixels": (table["DOSE"], table["ADU_MEAN"], table["ADU_STD"])},
                             xlabel=plots.DOSE, ylabel="ADU error [adu]",
                             title="pixel ADU error vs dose"),
           "pixel_precision/adu_err_vs_dose", {"dose": table["DOSE"],
                                               "adu_mean": table["ADU_MEAN"],
                                               "adu_std": table["ADU_STD"]})


def _pick(rows, stage_mask, dose, cal, ref_exp):
    part = rows[stage_mask & (rows["CALTYPE"] == cal)]
    if dose is not None:
        part = part[part["DOSE"] == dose]
    if cal == "DARK":
        part = part[np.isclose(part["EXPTIME"], ref_exp)]
    return part


def _stage_differences(w: _Writer, rows, out, ref_exp) -> None:
    ir_mask = rows["STAGE"].isin(IRRADIATING)
    ir = rows[ir_mask]
    records = []
    if ir.empty:
        w.notes.append("stage differences skipped: no irradiating rows")
    dmin = ir["DOSE"].min() if len(ir) else math.nan
    dmax = ir["DOSE"].max() if len(ir) else math.nan
    for cal in ("BIAS", "DARK"):
        for cmp, target, reference, ref_name in (
                ("first_vs_pre", (ir_mask, dmin), (rows["STAGE"] == "pre", None), "pre"),
                ("post_vs_last", (rows["STAGE"] == "post", None), (ir_mask, dmax), "last")):
            t = _pick(rows, target[0], target[1], cal, ref_exp)
            r = _pick(rows, reference[0], reference[1], cal, ref_exp)
            if t.empty or r.empty:
                missing = "pre" if cmp == "first_vs_pre" else "post"
                why = f"{cal.lower()} {cmp} skipped: no {missing} rows"
                w.notes.append(why)
                records.append({"CALTYPE": cal, "CMP": cmp, "DIFF": math.nan,
                                "DIFF_ERR": math.nan, "STATUS": why})
                continue
            diff = float(t["MEAN"].mean() - r["MEAN"].mean())
            err = float(math.hypot(np.sqrt(np.sum(t["MEAN_ERR"] ** 2)) / len(t),
                                   np.sqrt(np.sum(r["MEAN_ERR"] ** 2)) / len(r)))
            records.append({"CALTYPE": cal, "CMP": cmp, "DIFF": diff, "DIFF_ERR": err,
                            "EXPTIME": ref_exp if cal == "DARK" else math.nan, "STATUS": "ok"})
            d = difference(out / t["MASTER"].iloc[0], out / r["MASTER"].iloc[0])
            base = f"analysis/{cal.lower()}_{cmp}"
            w.files.append(write_difference(out / f"{base}.fits", d))
            for log in (False, True):
                w.plot(plot_difference(d.relative, log=log, unit="%",
                                       title=f"{cal.lower()} {cmp.replace('_', ' ')}"
                                       + (" (symlog)" if log else "")),
                       base + ("_log" if log else ""),
                       {"diff": d.relative, "diff_adu": d.diff, "error": d.error,
                        "significance": d.significance})
    w.csv(pd.DataFrame(records), "analysis/stage_differences.csv")


def _dose_rate_model(w: _Writer, rows) -> None:
    ir = rows[rows["STAGE"].isin(IRRADIATING) & rows["DOSE_RATE"].notna()]
    records = []
    for cal, exp, part in models.series(ir):
        a, b = models.dose_rate_model(part, f"{cal.lower()}{_suffix(cal, exp)}")
        dose, column = models.received_dose(part)
        rec = {"CALTYPE": cal, "EXPTIME": exp, "N": a.npoints, "DOSE_COLUMN": column}
        for prefix, r in (("A", a), ("B", b)):
            for i in range(3):
                rec[f"{prefix}{i}"] = _coef(r, i)
                rec[f"{prefix}{i}_ERR"] = _err(r, i)
            rec[f"STATUS_{prefix}"] = r.status
            w.fit("dose_rate_model", cal, exp, "MEAN" if prefix == "A" else "STD", r)
        records.append(rec)
        pred = {"mean": a.predict(dose, part["DOSE_RATE"]) if a.ok
                else np.full(len(part), np.nan),
                "std": b.predict(dose, part["DOSE_RATE"]) if b.ok
                else np.full(len(part), np.nan)}
        meas = {"mean": part["MEAN"], "std": part["STD"]}
        w.plot(plots.plot_predicted(meas, pred, title=f"{cal.lower()} dose-rate model",
                                    fits={"mean": a, "std": b}),
               f"analysis/dose_rate_model_{cal.lower()}{_suffix(cal, exp)}",
               {"dose": dose, "dose_step": part["DOSE"], "dose_rate": part["DOSE_RATE"],
                "mean": part["MEAN"],
                "std": part["STD"], "mean_pred": pred["mean"], "std_pred": pred["std"],
                "A": a.coef, "A_err": a.err, "B": b.coef, "B_err": b.err})
    w.csv(pd.DataFrame(records), "analysis/dose_rate_model.csv")


def _dose_model(w: _Writer, rows) -> None:
    ir = rows[rows["STAGE"].isin(IRRADIATING)]
    records = []
    for cal, exp, part in models.series(ir):
        dose, column = models.received_dose(part)
        part = part.assign(_X=dose).sort_values("_X")
        r = models.dose_model(part, f"{cal.lower()}{_suffix(cal, exp)}")
        w.fit("dose_model", cal, exp, f"MEAN vs {column}", r)
        records.append({"CALTYPE": cal, "SLOPE": _coef(r, 1), "INTERCEPT": _coef(r, 0),
                        "EXPTIME": exp, "SLOPE_ERR": _err(r, 1), "INTERCEPT_ERR": _err(r, 0),
                        "N": r.npoints, "CHI2DOF": r.chi2dof, "STATUS": r.status,
                        "DOSE_COLUMN": column})
        w.plot(plots.plot_fit_with_residuals(part["_X"], part["MEAN"], part["MEAN_ERR"], r,
                                             xlabel=plots.dose_axis(column), ylabel="mean [adu]",
                                             title=f"{cal.lower()} mean vs dose"),
               f"analysis/dose_model_{cal.lower()}{_suffix(cal, exp)}",
               {"dose": part["_X"], "dose_step": part["DOSE"], "mean": part["MEAN"],
                "mean_err": part["MEAN_ERR"],
                "slope": _coef(r, 1), "intercept": _coef(r, 0), "slope_err": _err(r, 1),
                "intercept_err": _err(r, 0), "residual": part["MEAN"] - r.predict(part["_X"])
                if r.ok else np.full(len(part), np.nan)})
    w.csv(pd.DataFrame(records), "analysis/dose_model.csv")


def _base_level(w: _Writer, rows) -> None:
    ir = rows[rows["STAGE"].isin(IRRADIATING)]
    records, per_cal = [], {"BIAS": {}, "DARK": {}}
    for cal, exp, part in models.series(ir):
        if cal not in per_cal:
            continue
        # one point per step; FRAMEDOSE of a step NaN when one of its rows has none
        level = part.groupby("DOSE").agg(
            MEAN=("MEAN", "mean"), MEAN_ERR=("MEAN_ERR", "mean"),
            FRAMEDOSE=("FRAMEDOSE", lambda v: v.mean(skipna=False))).reset_index()
        r = models.dose_model(level, f"{cal.lower()} base level{_suffix(cal, exp)}")
        dose, column = models.received_dose(level)
        level["_X"] = dose
        w.fit("base_level_trend", cal, exp, f"MEAN vs {column}", r)
        records.append({"CALTYPE": cal, "SLOPE": _coef(r, 1), "INTERCEPT": _coef(r, 0),
                        "EXPTIME": exp, "SLOPE_ERR": _err(r, 1), "INTERCEPT_ERR": _err(r, 0),
                        "STATUS": r.status, "DOSE_COLUMN": column})
        per_cal[cal][exp] = (level, r)
    w.csv(pd.DataFrame(records), "analysis/base_level_trend.csv")
    for cal, series in per_cal.items():
        pts, data, columns = {}, {}, set()
        for exp, (level, r) in series.items():
            label = "bias" if cal == "BIAS" else f"{exp:g} s"
            pts[label] = (level["_X"], level["MEAN"], level["MEAN_ERR"])
            columns.add(models.received_dose(level)[1])
            key = "" if cal == "BIAS" else f"_E{p_form(exp)}s"
            data.update({f"dose{key}": level["_X"], f"dose_step{key}": level["DOSE"],
                         f"mean{key}": level["MEAN"],
                         f"slope{key}": _coef(r, 1), f"intercept{key}": _coef(r, 0),
                         f"slope_err{key}": _err(r, 1), f"intercept_err{key}": _err(r, 0)})
        axis = plots.dose_axis(columns.pop()) if len(columns) == 1 else plots.DOSE
        w.plot(plots.plot_series(pts, xlabel=axis, ylabel="base level [adu]",
                                 title=f"{cal.lower()} base level vs dose (per exposure)"),
               f"analysis/base_level_trend_{cal.lower()}", data)


def _stage_base_diff(w: _Writer, rows, ref_exp) -> None:
    out = {"dose": [math.nan, math.nan]}
    for cal in ("BIAS", "DARK"):
        part = rows[(rows["CALTYPE"] == cal)]
        if cal == "DARK":
            part = part[np.isclose(part["EXPTIME"], ref_exp)]
        res = models.stage_base_diff(part)
        out["dose"] = res["dose"]
        values = [res["first_pre"][0], res["last_post"][0]]
        errors = [res["first_pre"][1], res["last_post"][1]]
        out[f"{cal.lower()}_diff"] = values
        out[f"{cal.lower()}_diff_err"] = errors
        w.notes += [f"{cal.lower()} stage base diff: {s}" for s in res["status"]]
        w.plot(plots.plot_series({"first - pre, last - post": (res["dose"], values, errors)},
                                 xlabel=plots.DOSE, ylabel="base-level difference [adu]",
                                 title=f"{cal.lower()}: radiating minus reference stage"),
               f"analysis/stage_base_diff_{cal.lower()}",
               {"dose": res["dose"], "diff": values, "diff_err": errors})
    w.npz("analysis/stage_base_diff", **out)


def _dynamic_range(w: _Writer, rows, fs, scale, ref_exp) -> None:
    pd_ = drm.per_dose(rows, ref_exp)
    r = drm.dynamic_range(pd_["MEAN_B"], pd_["STD_B"], pd_["MEAN_D"], pd_["STD_D"], fs, scale)
    data = {"dose": pd_["DOSE"].to_numpy(), **r, "dark_exposure": ref_exp}
    w.npz("analysis/dynamic_range", **data)
    for bits, dr, noise, red in ((16, r["dynamic_range_16"], r["noise_adu"], r["reduction_16"]),
                                 (12, r["dynamic_range_12"], r["noise_adu"] / scale,
                                  r["reduction_12"])):
        w.plot(plots.plot_dynamic_range(data["dose"], dr, noise, red, bits=bits,
                                        full_scale=fs if bits == 16 else fs / scale),
               f"analysis/dynamic_range_vs_dose_{bits}", data)
        base = r[f"base_level_{bits}"]
        w.plot(plots.plot_series({"bias + dark": (data["dose"], base, noise)},
                                 xlabel=plots.DOSE, ylabel=f"base level [{bits}-bit adu]",
                                 title=f"baseline vs dose ({bits} bit)"),
               f"analysis/baseline_vs_dose_{bits}", {"dose": data["dose"],
                                                      f"base_level_{bits}": base,
                                                      "noise": noise})
    loss, loss_err = drm.limiting_magnitude_loss(r["dynamic_range_16"], r["noise_adu"], fs)
    w.plot(plots.plot_series({"noise [mag]": (data["dose"], r["noise_mag"], None),
                              "limiting-magnitude loss [mag]": (data["dose"], loss, loss_err)},
                             xlabel=plots.DOSE, ylabel="magnitude [mag]",
                             title="magnitude terms vs dose"),
           "analysis/magnitude_vs_dose", {"dose": data["dose"], "noise_mag": r["noise_mag"],
                                          "mag_loss": loss, "mag_loss_err": loss_err})


def _relative(w: _Writer, rows, fs, scale, ref_exp) -> None:
    table, status = drm.relative_precision(rows, ref_exp, fs, scale)
    if status:
        w.notes.append(f"relative precision: {status}")
    for name, metric in (("relative_noise_vs_dose_16", "NOISE16_DIFF"),
                         ("relative_noise_vs_dose_12", "NOISE12_DIFF"),
                         ("relative_mag_err_vs_dose_16", "MAG16_DIFF"),
                         ("relative_mag_err_vs_dose_12", "MAG12_DIFF")):
        pts, data = {}, {}
        for stage, part in by_stage(table):
            pts[stage] = (part["DOSE"], part[metric], None)
            data[f"{stage}_dose"] = part["DOSE"]
            data[f"{stage}_{metric}"] = part[metric]
        unit = "mag" if metric.startswith("MAG") else ("adu" if "16" in metric else "adu/16")
        w.plot(plots.plot_series(pts, xlabel=plots.DOSE, ylabel=f"{metric} [{unit}]",
                                 title=f"{metric} relative to pre-irradiation"),
               f"analysis/{name}", data)
    w.npz("analysis/relative_precision", stage=table["STAGE"].tolist(), dose=table["DOSE"],
          noise16_diff=table["NOISE16_DIFF"], noise12_diff=table["NOISE12_DIFF"],
          mag16_diff=table["MAG16_DIFF"], mag12_diff=table["MAG12_DIFF"], status=status)
    if (table["STAGE"] == "post").any():
        metrics = ("NOISE16_DIFF", "NOISE12_DIFF", "MAG16_DIFF", "MAG12_DIFF")
        data = {f"{s}_{m}": float(table.loc[table["STAGE"] == s, m].mean())
                for s in ("pre", "post") for m in metrics}
        w.plot(plots.plot_bars(data, ylabel="difference to pre [adu or mag]",
                               title="pre vs post: relative precision"),
               "analysis/pre_vs_post_relative_precision", data)


__all__ = ["DoseSettings", "DoseResult", "run"]
