"""The radiation section of the campaign report, read from the radiation products.

Nothing here computes new science: every number is read from a product that an
analysis wrote, with its uncertainty, unit, estimator and source file, as in the
datasheet.  The products read, each optional:

* the damage analysis (``python -m analysis.damage_analysis``, or ``damage/`` of
  ``python -m analysis.dose_analysis``): ``damage_summary.json`` (damage slope,
  recovered fraction, bias shift, read-noise change, doubling temperature pre/post),
  ``damage_summary.csv`` (step means of the normal pixels), ``damage_fits.csv``
  (chi-square of the dose fits), ``hot_pixels.csv``, ``dark_current_percentiles.csv``
  and ``plots/``;
* the dose analysis (``dose_summary.csv``): ``photometric_precision.csv``,
  ``pixel_precision/pixel_precision_stats.csv``, ``analysis/stage_differences.csv``;
* the radiation analysis (``python -m analysis.radiation_analysis``): the headers of its
  difference maps ``master_*_<group2>_minus_<group1>.fits`` (``MEANDIFF``, ``MEANDERR``);
* the per-stage bias, dark and flat products of ``run_calibration.py irradiation``
  (``bias/pre``, ``bias/post``, ...): the datasheet numbers of each stage, pre vs post;
* ``run_full_radiation_pipeline.py``: ``radiation_model/fit_results.json``
  (``{"parameters": [{"param", "value", "err", "R2", "unit", "constrained",
  "reason"}], "correlation": {...}, "n_masters": N}``), ``procedure_checks.csv``
  (``check, stage, dose_krad, value, unit, limit, status, detail``) and ``summary.json``
  (``damage_slope``, ``recovered_fraction``, ``hot_pixel_growth``,
  ``model_parameters``: each ``{value, err, unit}`` or null), used where the
  analyses' own products are absent.

:func:`radiation_section` returns one :class:`Block` per topic; a topic whose
products are absent is a block that says "not measured" and which command makes
them.  It returns None when the results hold no irradiation campaign at all.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from astropy.io import fits

from analysis.report_data import (
    FULLRAD_KEYS,
    Entry,
    Figure,
    Product,
    _bias_entries,
    _dark_entries,
    _flat_entries,
    _json,
    _number,
    _rel,
)
from utils.io.tokens import number_text

logger = logging.getLogger(__name__)

#: Difference maps of the radiation analysis read (headers only) at most.
MAX_DIFFERENCES = 60
#: Figures of the radiation response model shown at most.
MAX_MODEL_FIGURES = 4
#: The radiation response model's figures in the report, in order, with their captions (they
#: were its first PNGs by name, captioned from the file name: 'beta d map', no unit).
MODEL_FIGURES = (
    ("bias_residuals.png", "Mean of each bias master minus the model's prediction vs "
     "accumulated dose, per stage; post-irradiation masters predicted, not fitted "
     "[adu vs krad]."),
    ("dark_current_residuals.png", "Mean of each dark master minus the model's prediction vs "
     "accumulated dose, per stage; post-irradiation masters predicted, not fitted "
     "[adu vs krad]."),
    ("dc0_map.png", "Per-pixel dark current at T_ref before irradiation, DC0 [adu/s]."),
    ("beta_d_map.png", "Per-pixel dark-current increase per krad, beta_D [adu/s/krad]."),
    ("variance_residuals.png", "Temporal variance of each master minus the model's "
     "prediction vs accumulated dose [adu^2 vs krad]."),
    ("qq_plot.png", "Pulls (residual / error) of the fitted masters' means and variances "
     "against standard normal quantiles [1]."))


@dataclass
class Table:
    """A table of a block.  Cells are text, numbers, ``(value, error)`` pairs or None."""

    caption: str
    columns: list[str]
    rows: list[list]
    row_classes: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        """Plain data: pairs as ``[value, error]`` lists."""
        return {"caption": self.caption, "columns": self.columns,
                "rows": [[list(c) if isinstance(c, tuple) else c for c in r] for r in self.rows]}


@dataclass
class Block:
    """One topic of the radiation section: datasheet-like rows, tables and figures."""

    key: str
    title: str
    entries: list[Entry] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    missing: str = ""      # what to run when nothing was measured

    @property
    def measured(self) -> bool:
        """True when the block shows any number or figure."""
        return (any(e.measured for e in self.entries) or any(t.rows for t in self.tables)
                or bool(self.figures))

    def as_json(self, base: Path) -> dict:
        """The block for ``report.json``."""
        return {"key": self.key, "title": self.title, "measured": self.measured,
                "missing": "" if self.measured else self.missing,
                "entries": [dict(asdict(e), measured=e.measured) for e in self.entries],
                "tables": [t.as_json() for t in self.tables],
                "figures": [{"file": _rel(f.path, base), "caption": f.caption}
                            for f in self.figures]}


# --- reading helpers -----------------------------------------------------------------------------

def _csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        logger.warning("%s: unreadable (%s); left out of the radiation section", path, err)
        return None


def _cell(value):
    """A table cell: a finite number, text, or None (NaN and empty cells)."""
    if isinstance(value, str):
        return value
    number = _number(value)
    return number


def _pair(value, error):
    """``(value, error)`` when the value is finite (error may be None), else None."""
    v = _number(value)
    return None if v is None else (v, _number(error))


def _figures(folder: Path, items) -> list[Figure]:
    return [Figure(folder / name, caption, "radiation") for name, caption in items
            if (folder / name).is_file()]


def _first(products: list[Product], kind: str) -> Product | None:
    """The product of ``kind`` nearest the results folder (a stand-alone run before one
    nested in another analysis's output)."""
    of_kind = [p for p in products if p.kind == kind]
    return min(of_kind, key=lambda p: len(p.folder.parts)) if of_kind else None


def _step_label(stage, dose) -> str:
    d = _number(dose)
    return str(stage) if d is None or stage != "radiating" else f"radiating, {d:g} krad"


def _add_summary_entry(block: Block, full: dict, key: str, quantity: str) -> None:
    """Append the full radiation pipeline's ``summary.json`` number ``key`` to ``block``."""
    entry = _from_summary(full["record"], key, key, quantity, full["source"],
                          "run_full_radiation_pipeline.py summary")
    if entry is not None:
        block.entries.append(entry)


def _from_summary(record: dict, key: str, entry_key: str, quantity: str, source: str,
                  method: str) -> Entry | None:
    """An entry from the full radiation pipeline's ``summary.json`` (``{value, err, unit}``)."""
    item = record.get(key)
    if not isinstance(item, dict):
        return None
    return Entry(entry_key, quantity, _number(item.get("value")), _number(item.get("err")),
                 str(item.get("unit") or ""), method, source)


# --- blocks --------------------------------------------------------------------------------------

def damage_block(damage: Product | None, full: dict, base: Path) -> Block:
    """Damage slope (dark current vs dose), globally and per pixel."""
    block = Block("damage_slope", "Dark current vs dose (damage slope)",
                  missing="python -m analysis.damage_analysis INDEX_CSV RESULTS/damage "
                          "(needs pre or post darks at two temperatures)")
    if damage is not None:
        folder = damage.folder
        s = _json(folder / "damage_summary.json")
        src = _rel(folder / "damage_summary.json", base)
        unit, t_ref = s.get("unit", ""), s.get("t_ref_degC", 20.0)
        fits_table = _csv(folder / "damage_fits.csv")
        chi2 = None
        if fits_table is not None and "QUANTITY" in fits_table:
            row = fits_table[fits_table["QUANTITY"] == "dark_current_mean"]
            chi2 = _number(row["CHI2DOF"].iloc[0]) if len(row) and "CHI2DOF" in row else None
        fit_note = f", chi2/dof {chi2:.2f}" if chi2 is not None else ""
        block.entries += [
            Entry("damage_slope", f"Damage slope: mean dark-current increase per krad at "
                  f"{t_ref:g} degC (normal pixels)", _number(s.get("damage_slope")),
                  _number(s.get("damage_slope_err")), f"{unit}/krad",
                  "weighted line through the step means of the pixels hot at no step vs the "
                  f"accumulated dose (pre and radiating steps){fit_note}", src),
            Entry("damage_slope_median_pixel", "Damage slope of the median pixel",
                  _number(s.get("damage_slope_median_pixel")),
                  _number(s.get("damage_slope_median_pixel_err")), f"{unit}/krad",
                  "median over pixels of the per-pixel weighted slopes", src)]
        means = _csv(folder / "damage_summary.csv")
        if means is not None and {"STAGE", "DC_MEAN", "DC_MEAN_ERR"} <= set(means.columns):
            pre = means[means["STAGE"] == "pre"]
            if len(pre):
                block.entries.append(Entry(
                    "dark_current_pre_mean", f"Dark current before irradiation at {t_ref:g} "
                    "degC (mean of the normal pixels)", _number(pre["DC_MEAN"].iloc[0]),
                    _number(pre["DC_MEAN_ERR"].iloc[0]), unit,
                    "rate map nearest T_ref, corrected per pixel with the pre dark model",
                    _rel(folder / "damage_summary.csv", base)))
        block.figures = _figures(folder / "plots", [
            ("dark_current_vs_dose.png", f"Mean dark current of the normal pixels at T_ref "
             f"vs accumulated dose, with the weighted line [{unit} vs krad]."),
            ("damage_slope_map.png", f"Map of the per-pixel damage slope [{unit}/krad].")])
    elif full.get("record"):
        _add_summary_entry(block, full, "damage_slope",
                           "Damage slope: dark-current increase per krad")
    return block


def distribution_block(damage: Product | None, base: Path) -> Block:
    """Dark-current distribution per dose step: mean of the normal pixels and percentiles."""
    block = Block("dark_current_distribution", "Dark-current distribution per dose step",
                  missing="the damage analysis (python -m analysis.damage_analysis)")
    if damage is None:
        return block
    folder = damage.folder
    pct = _csv(folder / "dark_current_percentiles.csv")
    means = _csv(folder / "damage_summary.csv")
    if pct is not None and "TAG" in pct:
        if means is not None and {"TAG", "DC_MEAN", "DC_MEAN_ERR"} <= set(means.columns):
            pct = pct.merge(means[["TAG", "DC_MEAN", "DC_MEAN_ERR"]], on="TAG", how="left")
        rows = []
        for _, r in pct.iterrows():
            rows.append([_step_label(r["STAGE"], r.get("DOSE")), _cell(r.get("FRAMEDOSE")),
                         _pair(r.get("DC_MEAN"), r.get("DC_MEAN_ERR")), _cell(r.get("P50")),
                         _cell(r.get("P95")), _cell(r.get("P99_9")), _cell(r.get("N_PIXELS")),
                         str(r.get("UNIT", ""))])
        block.tables.append(Table(
            "Per (stage, dose step), at T_ref. Mean with its standard error over the pixels "
            "hot at no step; percentiles over all pixels (descriptive, no uncertainty). "
            f"Source: {_rel(folder / 'dark_current_percentiles.csv', base)}, "
            f"{_rel(folder / 'damage_summary.csv', base)}.",
            ["Step", "Accumulated dose [krad]", "Mean, normal pixels", "Median (P50)", "P95",
             "P99.9", "Pixels", "Unit"], rows))
    unit = str(pct["UNIT"].iloc[0]) if pct is not None and len(pct) and "UNIT" in pct else ""
    block.figures = _figures(folder / "plots", [
        ("dark_current_distribution.png", f"Histogram of the dark current at T_ref per dose "
         f"step [pixels vs {unit}, log scale]."),
        ("dark_current_cumulative.png", f"Pixels above a dark current x at T_ref per dose step, "
         f"with the hot-pixel threshold [pixels vs {unit}].")])
    return block


def hot_pixel_block(damage: Product | None, full: dict, base: Path) -> Block:
    """Hot pixels per step: above the fixed and the relative threshold, new, recovered."""
    block = Block("hot_pixel_growth", "Hot-pixel growth",
                  missing="the damage analysis (python -m analysis.damage_analysis)")
    if full.get("record"):
        _add_summary_entry(block, full, "hot_pixel_growth", "Hot-pixel growth")
    if damage is None:
        return block
    folder = damage.folder
    s = _json(folder / "damage_summary.json")
    table = _csv(folder / "hot_pixels.csv")
    if table is not None and "N_HOT" in table:
        unit = s.get("unit", "")
        fixed = _number(s.get("hot_threshold"))
        rel = _number(s.get("hot_threshold_relative"))
        rows, columns = [], ["Step", "Accumulated dose [krad]", "Hot (fixed threshold)",
                             "Hot (relative threshold)", "New since pre", "Pre-existing",
                             "Recovered after annealing", "Unit"]
        for _, r in table.iterrows():
            rows.append([_step_label(r["STAGE"], r.get("DOSE")), _cell(r.get("FRAMEDOSE")),
                         _cell(r.get("N_HOT")), _cell(r.get("N_HOT_RELATIVE")),
                         _cell(r.get("N_NEW")), _cell(r.get("N_PREEXISTING")),
                         _cell(r.get("N_RECOVERED")), "pixels"])
        thresholds = (f"fixed threshold {fixed:g} {unit} at T_ref" if fixed is not None
                      else "no fixed threshold (no gain)")
        if rel is not None:
            thresholds += f"; relative threshold {rel:.3g} {unit} (5 robust sigma of " \
                          "ln(dark current) above the pre median)"
        block.tables.append(Table(
            f"Counts of pixels per (stage, dose step): {thresholds}. Counts are exact for the "
            f"given threshold. Source: {_rel(folder / 'hot_pixels.csv', base)}.",
            columns, rows))
    block.figures = _figures(folder / "plots", [
        ("hot_pixels_vs_dose.png", "Hot pixels vs accumulated dose: total, new since "
         "pre-irradiation, pre-existing [pixels vs krad].")])
    return block


def annealing_block(damage: Product | None, full: dict, base: Path) -> Block:
    """Recovered fraction after annealing, with the time since beam-off."""
    block = Block("annealing", "Annealing",
                  missing="the damage analysis with pre, radiating and post darks")
    if damage is not None:
        folder = damage.folder
        s = _json(folder / "damage_summary.json")
        t = _number(s.get("tanneal_s"))
        when = f", post darks {t / 3600:.3g} h after beam-off (median)" if t is not None else ""
        status = s.get("annealing_status", "")
        end = _number(s.get("recovered_fraction_end_dose_krad"))
        at = (f", I_last the irradiated current at {end:g} krad (the last step's brought to "
              "the post darks' dose along the damage line when they received less)"
              if end is not None else "")
        block.entries.append(Entry(
            "recovered_fraction", "Recovered fraction after annealing",
            _number(s.get("recovered_fraction")), _number(s.get("recovered_fraction_err")), "1",
            "(I_last - I_post) / (I_last - I_pre) of the normal pixels' mean dark currents"
            + at + when + ("" if status in ("", "ok") else f"; {status}"),
            _rel(folder / "damage_summary.json", base)))
        block.figures = _figures(folder / "plots", [
            ("annealing_map.png", "Per-pixel recovered fraction after annealing, where the "
             "dark-current increase is significant [1].")])
    elif full.get("record"):
        _add_summary_entry(block, full, "recovered_fraction", "Recovered fraction after annealing")
    return block


def bias_noise_block(damage: Product | None, base: Path) -> Block:
    """Bias shift and read-noise change per krad."""
    block = Block("bias_read_noise", "Bias and read noise vs dose",
                  missing="the damage analysis (python -m analysis.damage_analysis)")
    if damage is None:
        return block
    folder = damage.folder
    s = _json(folder / "damage_summary.json")
    src = _rel(folder / "damage_summary.json", base)
    block.entries += [
        Entry("bias_shift", "Bias shift per krad (bias at T_ref)",
              _number(s.get("bias_shift_adu_per_krad")),
              _number(s.get("bias_shift_err_adu_per_krad")), "adu/krad",
              "weighted line through the step's mean bias at T_ref vs accumulated dose", src),
        Entry("read_noise_slope", "Read-noise change per krad",
              _number(s.get("read_noise_slope_adu_per_krad")),
              _number(s.get("read_noise_slope_err_adu_per_krad")), "adu/krad",
              "weighted line through the step's typical-pixel read noise vs dose", src)]
    block.figures = _figures(folder / "plots", [
        ("bias_shift.png", "Mean bias at T_ref vs accumulated dose, with the line [adu vs "
         "krad]."),
        ("read_noise_vs_dose.png", "Read noise of the typical pixel vs accumulated dose "
         "[adu vs krad].")])
    return block


def _stage_products(products: list[Product], kind: str) -> dict[str, Product]:
    return {p.stage: p for p in products if p.kind == kind and p.stage in ("pre", "post")}


def _model_comparison(products: list[Product], base: Path) -> Table | None:
    """The datasheet numbers of the pre and post stages side by side, with post - pre."""
    per_stage: dict[str, dict[str, Entry]] = {}
    for stage in ("pre", "post"):
        bias = _stage_products(products, "bias").get(stage)
        dark = _stage_products(products, "dark").get(stage)
        flat = _stage_products(products, "flat").get(stage)
        gain = _json(flat.folder / "gain.json") if flat and (flat.folder / "gain.json"
                                                            ).is_file() else {}
        entries = ((_bias_entries(bias, base, gain) if bias else [])
                   + (_dark_entries(dark, base) if dark else [])
                   + (_flat_entries(flat, base) if flat else []))
        per_stage[stage] = {e.key: e for e in entries if e.measured}
    pre, post = per_stage["pre"], per_stage["post"]
    rows = []
    for key, a in pre.items():
        b = post.get(key)
        if b is None or a.unit != b.unit:
            continue
        err = math.hypot(a.error, b.error) if a.error is not None and b.error is not None \
            else None
        rows.append([a.quantity, (a.value, a.error), (b.value, b.error),
                     (b.value - a.value, err), a.unit, f"{a.source}, {b.source}"])
    if not rows:
        return None
    return Table("Datasheet numbers of the pre- and post-irradiation stages (each stage's own "
                 "bias, dark and flat products) and their difference, errors in quadrature "
                 "(independent frames).",
                 ["Quantity", "Pre", "Post", "Post - pre", "Unit", "Products"], rows)


def _master_differences(products: list[Product], base: Path) -> Table | None:
    """Mean differences between groups' masters: dose analysis and radiation analysis."""
    rows = []
    dose = _first(products, "dose")
    if dose is not None:
        path = dose.folder / "analysis" / "stage_differences.csv"
        table = _csv(path)
        if table is not None and {"CALTYPE", "CMP", "DIFF", "DIFF_ERR"} <= set(table.columns):
            names = {"first_vs_pre": "first step - pre", "post_vs_last": "post - last step"}
            for _, r in table.iterrows():
                if _number(r["DIFF"]) is None:
                    continue
                exp = _number(r.get("EXPTIME"))
                what = str(r["CALTYPE"]).lower() + (f" {exp:g} s" if exp is not None else "")
                rows.append([what, names.get(r["CMP"], r["CMP"]), (r["DIFF"], r["DIFF_ERR"]),
                             "adu", _rel(path, base)])
    radiation = _first(products, "radiation")
    if radiation is not None:
        for path in sorted(radiation.folder.glob("master_*_minus_*.fits"))[:MAX_DIFFERENCES]:
            try:
                header = fits.getheader(path)
            except OSError as err:
                logger.warning("%s: unreadable header (%s); left out", path, err)
                continue
            name = path.stem[len("master_"):]
            what = name.split("_")[0] + " " + " ".join(
                p for p in name.split("_")[1:3] if p[:1] in "TE" and p[1:2].isdigit())
            rows.append([what, f"{header.get('STAGE2', '?')} - {header.get('STAGE1', '?')}",
                         (_number(header.get("MEANDIFF")), _number(header.get("MEANDERR"))),
                         str(header.get("BUNIT", "adu")), _rel(path, base)])
    if not rows:
        return None
    return Table("Mean difference between the masters of two (stage, dose step) groups, same "
                 "type, temperature bin and exposure, with its standard error.",
                 ["Master", "Groups", "Mean difference", "Unit", "Product"], rows)


def _reference_difference(folder: Path, t_ref: float) -> tuple[Path, float, float] | None:
    """The radiation analysis's post - pre dark difference figure to show: the longest
    exposure (most signal) at the temperature nearest ``t_ref``."""
    found = []
    for path in folder.glob("master_dark_T*_E*s_post_minus_pre.png"):
        parts = path.stem.split("_")
        try:
            found.append((path, float(parts[2][1:]), float(parts[3][1:-1])))
        except (IndexError, ValueError):
            continue
    if not found:
        return None
    return min(found, key=lambda f: (-f[2], abs(f[1] - t_ref), f[0].name))


def stage_block(products: list[Product], damage: Product | None, base: Path) -> Block:
    """Pre vs post (and consecutive steps): model numbers, doubling temperature, masters."""
    block = Block("stage_differences", "Stage differences",
                  missing="run_calibration.py irradiation (pre and post models), "
                          "python -m analysis.radiation_analysis or analysis.dose_analysis")
    t_ref = 20.0
    if damage is not None:
        s = _json(damage.folder / "damage_summary.json")
        t_ref = _number(s.get("t_ref_degC")) or t_ref
        src = _rel(damage.folder / "damage_summary.json", base)
        td, td_err = s.get("doubling_temperature_degC") or {}, \
            s.get("doubling_temperature_err_degC") or {}
        for stage in ("pre", "post"):
            if stage in td:
                block.entries.append(Entry(
                    f"doubling_temperature_{stage}", f"Dark-current doubling temperature, "
                    f"{stage}-irradiation", _number(td.get(stage)), _number(td_err.get(stage)),
                    "degC", "population fit of the stage's dark model (ln 2 / B)", src))
    for table in (_model_comparison(products, base), _master_differences(products, base)):
        if table is not None:
            block.tables.append(table)
    radiation = _first(products, "radiation")
    if radiation is not None:
        shown = _reference_difference(radiation.folder, t_ref)
        if shown is not None:
            block.figures = [Figure(shown[0], "Post minus pre dark master at "
                                              f"{number_text(shown[1], 'g')} degC, "
                                              f"{shown[2]:g} s [adu].", "radiation")]
    dose = _first(products, "dose")
    if dose is not None and not block.figures:
        block.figures = _figures(dose.folder / "analysis", [
            ("dark_first_vs_pre.png", "First dose step minus pre-irradiation dark master "
             "[adu]."),
            ("dark_post_vs_last.png", "Post-irradiation minus last dose step dark master "
             "[adu].")])
    return block


def _parameter_entry(p: dict, n_masters, source: str) -> Entry:
    name = str(p.get("param", "?"))
    constrained = p.get("constrained", True)
    constrained = constrained if isinstance(constrained, bool) else \
        str(constrained).lower() in ("true", "1", "yes")
    r2 = _number(p.get("R2"))
    method = "radiation response model fit" + (f" over {n_masters} masters" if n_masters
                                               else "") + (f", R2 = {r2:.3f}" if r2 is not None
                                                           else "")
    if not constrained:
        return Entry(f"model_{name}", f"Model parameter {name}", None, None,
                     str(p.get("unit") or ""),
                     f"not constrained: {p.get('reason') or 'no reason given'}", source,
                     missing="not constrained")
    return Entry(f"model_{name}", f"Model parameter {name}", _number(p.get("value")),
                 _number(p.get("err")), str(p.get("unit") or ""), method, source)


def _correlation_table(corr) -> Table | None:
    """The correlation matrix when it is ``{param: {param: r}}`` (else only in report.json)."""
    if not isinstance(corr, dict) or not corr or \
            not all(isinstance(v, dict) for v in corr.values()):
        return None
    names = list(corr)
    rows = [[a] + [_cell(corr[a].get(b)) for b in names] for a in names]
    return Table("Correlation coefficients of the fitted parameters [1].", ["", *names], rows)


def model_block(full: dict, base: Path) -> Block:
    """Parameters of the radiation response model; unconstrained ones said so, with why."""
    block = Block("model_parameters", "Radiation response model",
                  missing="run_full_radiation_pipeline.py (radiation_model/fit_results.json)")
    folder = full.get("folder")
    if folder is None:
        return block
    path = folder / "radiation_model" / "fit_results.json"
    if path.is_file():
        record = _json(path)
        src = _rel(path, base)
        for p in record.get("parameters") or []:
            if isinstance(p, dict):
                block.entries.append(_parameter_entry(p, record.get("n_masters"), src))
        table = _correlation_table(record.get("correlation"))
        if table is not None:
            block.tables.append(table)
        block.figures = _figures(folder / "radiation_model", MODEL_FIGURES)[:MAX_MODEL_FIGURES]
    elif isinstance((full.get("record") or {}).get("model_parameters"), dict):
        params = full["record"]["model_parameters"]
        if "value" in params:      # one parameter
            params = {"model": params}
        for name, item in params.items():
            if isinstance(item, dict):
                block.entries.append(Entry(f"model_{name}", f"Model parameter {name}",
                                           _number(item.get("value")), _number(item.get("err")),
                                           str(item.get("unit") or ""),
                                           "run_full_radiation_pipeline.py summary",
                                           full["source"]))
            else:
                block.entries.append(Entry(f"model_{name}", f"Model parameter {name}",
                                           source=full["source"], missing="not constrained",
                                           method="null in the summary: not constrained"))
    return block


def precision_block(dose: Product | None, base: Path) -> Block:
    """Photometric precision of a half-full-scale source and the pixels' precision vs dose."""
    block = Block("precision", "Precision vs dose",
                  missing="python -m analysis.dose_analysis INDEX_CSV RESULTS/dose")
    if dose is None:
        return block
    folder = dose.folder
    path = folder / "photometric_precision.csv"
    table = _csv(path)
    if table is not None and {"DOSE", "MAG_ERR"} <= set(table.columns):
        k = _number(table["GAIN_E_PER_ADU"].iloc[0]) if "GAIN_E_PER_ADU" in table and \
            len(table) else None
        rows = [[_cell(r["DOSE"]), _pair(r["MAG_ERR"], r.get("MAG_ERR_STD")),
                 _cell(r.get("NPAIRS")), "mag"] for _, r in table.iterrows()]
        block.tables.append(Table(
            "Magnitude error of a source at half the full scale, from the bias and dark "
            "masters' noise of each dose step plus the shot noise"
            + (f" ({k:g} e-/adu)" if k is not None else "")
            + "; mean over the bias x dark master pairs of the step, +- their standard "
            f"deviation. Source: {_rel(path, base)}.",
            ["Dose step [krad]", "Magnitude error", "Master pairs", "Unit"], rows))
    path = folder / "pixel_precision" / "pixel_precision_stats.csv"
    table = _csv(path)
    if table is not None and {"DOSE", "MAG_MEAN", "ADU_MEAN"} <= set(table.columns):
        rows = [[_cell(r["DOSE"]), _pair(r["MAG_MEAN"], r.get("MAG_STD")),
                 _pair(r["ADU_MEAN"], r.get("ADU_STD")), "mag, adu"]
                for _, r in table.iterrows()]
        block.tables.append(Table(
            "Per-pixel precision maps of each dose step: mean over pixels +- their spatial "
            f"standard deviation. Source: {_rel(path, base)}.",
            ["Dose step [krad]", "Pixel magnitude error", "Pixel noise", "Unit"], rows))
    block.figures = _figures(folder, [
        ("plots/photometric_precision_vs_dose.png", "Magnitude error of a half-full-scale "
         "source vs dose step [mag vs krad]."),
        ("pixel_precision/mag_err_vs_dose.png", "Mean per-pixel magnitude error vs dose step, "
         "+- its spatial spread [mag vs krad].")])
    return block


#: Columns of ``procedure_checks.csv`` (the full radiation pipeline's contract).
CHECK_COLUMNS = ["check", "stage", "dose_krad", "value", "unit", "limit", "status", "detail"]


def procedure_block(full: dict, base: Path) -> Block:
    """The procedure checks of the full radiation pipeline, one row per check."""
    block = Block("procedure_checks", "Procedure checks",
                  missing="run_full_radiation_pipeline.py (procedure_checks.csv)")
    folder = full.get("folder")
    if folder is None:
        return block
    path = folder / "procedure_checks.csv"
    table = _csv(path)
    if table is None:
        return block
    missing = [c for c in CHECK_COLUMNS if c not in table.columns]
    if missing:
        logger.warning("%s: no column %s; procedure checks left out", path, ", ".join(missing))
        return block
    rows, classes = [], []
    for _, r in table.iterrows():
        status = str(r["status"]).strip().lower()
        rows.append([str(r["check"]), _cell(r["stage"]) or "", _cell(r["dose_krad"]),
                     _cell(r["value"]), "" if pd.isna(r["unit"]) else str(r["unit"]),
                     _cell(r["limit"]), status, "" if pd.isna(r["detail"]) else str(r["detail"])])
        classes.append(f"check-{status}")
    counts = table["status"].astype(str).str.strip().str.lower().value_counts()
    summary = ", ".join(f"{counts[s]} {s}" for s in ("pass", "warn", "fail", "not_logged")
                        if s in counts)
    block.tables.append(Table(f"Checks of the irradiation procedure ({summary}). "
                              f"Source: {_rel(path, base)}.",
                              ["Check", "Stage", "Dose [krad]", "Value", "Unit", "Limit",
                               "Status", "Detail"], rows, classes))
    return block


# --- the section ---------------------------------------------------------------------------------

def _full_pipeline(products: list[Product], base: Path) -> dict:
    """``{"folder", "record", "source"}`` of the full radiation pipeline's products."""
    full = _first(products, "fullrad")
    if full is None:
        return {}
    record = full.summary if any(k in full.summary for k in FULLRAD_KEYS) else {}
    return {"folder": full.folder, "record": record,
            "source": _rel(full.folder / "summary.json", base)}


def is_irradiation(products: list[Product]) -> bool:
    """True when the results hold an irradiation campaign's products."""
    return any(p.kind in ("damage", "dose", "radiation", "fullrad") or p.stage
               for p in products)


def radiation_section(products: list[Product], base: Path) -> list[Block] | None:
    """The blocks of the radiation section, or None for a campaign without irradiation."""
    if not is_irradiation(products):
        return None
    damage = _first(products, "damage")
    full = _full_pipeline(products, base)
    return [damage_block(damage, full, base), distribution_block(damage, base),
            hot_pixel_block(damage, full, base), annealing_block(damage, full, base),
            bias_noise_block(damage, base), stage_block(products, damage, base),
            model_block(full, base), precision_block(_first(products, "dose"), base),
            procedure_block(full, base)]


def as_json(blocks: list[Block] | None, base: Path) -> dict | None:
    """``report.json``'s radiation part: the blocks, and every entry by key for scripts."""
    if blocks is None:
        return None
    numbers = {e.key: {k: v for k, v in asdict(e).items() if k not in ("key", "missing")}
               | {"measured": e.measured} for b in blocks for e in b.entries}
    return {"blocks": [b.as_json(base) for b in blocks], "numbers": numbers}


__all__ = ["Block", "Table", "radiation_section", "is_irradiation", "as_json"]
