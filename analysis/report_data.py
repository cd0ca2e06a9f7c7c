"""What the campaign report shows, read from the products: nothing here computes new science.

:func:`collect` walks a results folder (``run_calibration.py``'s ``products/``
or ``run_full_radiation_pipeline.py``'s output), recognises each product by the
files it holds (``bias_model.fits`` -> bias pipeline, ``dark_model/`` -> dark
pipeline, ``gain.json`` -> photon transfer, ``masters_summary.csv`` -> index
processing, ...), and turns their ``summary.json`` numbers and FITS headers
into :class:`Entry` rows of the datasheet, captioned figures, the data-quality
tables and the provenance.  A product that is absent gives rows marked "not
measured", never an error.  Every value keeps the product file it came from,
its unit, its uncertainty and the estimator that made it, so a reviewer can
trace each number.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from astropy.io import fits

from utils import headers as kw
from utils.io.index import stage_order

logger = logging.getLogger(__name__)

#: Folder depth searched below the results folder.
SEARCH_DEPTH = 4


@dataclass
class Entry:
    """One datasheet row.

    Attributes
    ----------
    key : str
        Machine name in ``report.json`` (e.g. ``read_noise_e``).
    quantity : str
        What it is, for a person.
    value, error : float or None
        The number and its one-sigma uncertainty, in ``unit``; None when not measured.
    unit : str
        Physical unit of ``value`` and ``error``.
    method : str
        The estimator, in a few words.
    source : str
        Product file it was read from, relative to the results folder.
    missing : str
        What the page says instead of a value when there is none (``not measured``, or
        ``not constrained`` for a model parameter the data cannot fix).
    """

    key: str
    quantity: str
    value: float | None = None
    error: float | None = None
    unit: str = ""
    method: str = ""
    source: str = ""
    missing: str = "not measured"

    @property
    def measured(self) -> bool:
        """True when there is a finite value."""
        return self.value is not None and math.isfinite(self.value)


@dataclass
class Figure:
    """A pipeline figure shown in the report (copied next to it)."""

    path: Path
    caption: str
    section: str


@dataclass
class Product:
    """One product folder found below the results folder."""

    kind: str            # bias, dark, flat, processing, dose, damage, radiation, fullrad
    folder: Path
    stage: str = ""      # '', pre, radiating_D10kR, post ...
    summary: dict = field(default_factory=dict)


@dataclass
class ReportData:
    """Everything the report shows."""

    title: str
    results_dir: Path
    products: list[Product]
    datasheet: list[Entry]
    figures: list[Figure]
    quality: dict
    provenance: dict
    radiation: list | None = None   # report_radiation.Block per topic; None: no irradiation

    def sections(self) -> dict[str, bool]:
        """Which sections hold measured content (``False`` = "not measured")."""
        kinds = {p.kind for p in self.products}
        return {"datasheet": any(e.measured for e in self.datasheet),
                "calibration": any(f.section == "calibration" for f in self.figures),
                "radiation": self.radiation is not None
                and any(b.measured for b in self.radiation),
                "quality": bool(self.quality.get("tables")),
                "provenance": bool(self.provenance.get("configs")) or bool(kinds)}

    def as_json(self) -> dict:
        """The numbers of the report for scripts (``report.json``)."""
        rel = self.results_dir
        return {
            "title": self.title,
            "results_dir": str(rel),
            "sections": self.sections(),
            "datasheet": [dict(asdict(e), measured=e.measured) for e in self.datasheet],
            "products": [{"kind": p.kind, "stage": p.stage,
                          "folder": _rel(p.folder, rel)} for p in self.products],
            "figures": [{"file": _rel(f.path, rel), "caption": f.caption, "section": f.section}
                        for f in self.figures],
            "quality": {k: v for k, v in self.quality.items() if k != "tables"},
            "radiation": radiation_json(self.radiation, rel),
            "provenance": {k: v for k, v in self.provenance.items() if k != "configs"},
        }


def _rel(path: Path, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
    except ValueError:
        return str(path)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        logger.warning("%s: unreadable (%s); its numbers are left out of the report", path, err)
        return {}


def _number(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


# --- finding the products ---------------------------------------------------------------------

#: Keys of the full radiation pipeline's ``summary.json`` (its contract with the report).
FULLRAD_KEYS = ("damage_slope", "recovered_fraction", "hot_pixel_growth", "model_parameters")


def _kinds_of(folder: Path) -> tuple[list[str], dict]:
    """The products a folder holds, recognised by their files (a folder can hold several:
    the full radiation pipeline's summary next to the index processing's masters), and its
    ``summary.json`` (``{}`` when it has none)."""
    kinds = []
    summary = (folder / "summary.json").is_file()
    record = _json(folder / "summary.json") if summary else {}
    if (folder / "dark_model").is_dir() and summary:
        kinds.append("dark")
    if (folder / "gain.json").is_file() or (folder / "flat_model_fits").is_dir() \
            or ((folder / "prnu").is_dir() and summary):
        kinds.append("flat")
    # the dark and flat pipelines keep the bias model they fitted from the tree next to their
    # products: only the bias pipeline's folder is a bias product
    if (folder / "bias_model.fits").is_file() and summary and not kinds:
        kinds.insert(0, "bias")
    if (folder / "masters_summary.csv").is_file():
        kinds.append("processing")
    if (folder / "dose_summary.csv").is_file():
        kinds.append("dose")
    if (folder / "damage_summary.json").is_file():
        kinds.append("damage")
    if (folder / "config_used.json").is_file() and next(folder.glob("*/group_summary.csv"),
                                                        None) is not None:
        kinds.append("radiation")
    if (folder / "procedure_checks.csv").is_file() \
            or (folder / "radiation_model" / "fit_results.json").is_file() \
            or any(k in record for k in FULLRAD_KEYS):
        kinds.append("fullrad")
    return kinds, record


def find_products(results_dir: Path, depth: int = SEARCH_DEPTH) -> list[Product]:
    """Product folders below ``results_dir``, each with its kind and stage (from folder names)."""
    found: list[Product] = []
    stack = [(Path(results_dir), 0)]
    while stack:
        folder, level = stack.pop()
        kinds, summary = _kinds_of(folder)
        if kinds:
            rel = folder.relative_to(results_dir).parts
            stage = next((p for p in rel if p.split("_")[0] in ("pre", "radiating", "post")), "")
            found.extend(Product(kind, folder, stage, summary) for kind in kinds)
        if level >= depth:
            continue
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir()
                              and not p.name.startswith(".") and p.name not in ("report",))
        except OSError:
            continue
        stack.extend((c, level + 1) for c in children)
    return sorted(found, key=lambda p: (p.kind, stage_order(p.stage.split("_")[0]), p.stage))


def _reference(products: list[Product], kind: str) -> Product | None:
    """The product of ``kind`` describing the sensor as delivered: no stage, else pre."""
    of_kind = [p for p in products if p.kind == kind]
    for stage in ("", "pre"):
        for p in of_kind:
            if p.stage == stage:
                return p
    return of_kind[0] if of_kind else None


# --- datasheet -----------------------------------------------------------------------------------

def _bias_entries(p: Product | None, base: Path, gain: dict) -> list[Entry]:
    s = p.summary if p else {}
    src = _rel(p.folder / "summary.json", base) if p else ""
    scale = s.get("adu_scale", 16)
    rn, rn_err = _number(s.get("read_noise_adu")), _number(s.get("read_noise_err_adu"))
    k, k_err = _number(gain.get("gain")), _number(gain.get("gain_err"))
    extra = gain.get("extra") or {}
    rows = [
        Entry("read_noise_adu", "Read noise, typical pixel", rn, rn_err, "adu",
              "frame-pair differences, pixels within the chi-square core", src),
        Entry("read_noise_e", "Read noise, typical pixel", unit="e-",
              method="needs the system gain", source=src),
        Entry("dark_noise_emva_e", "Temporal dark noise, rms over all pixels (EMVA 1288)",
              _number(extra.get("read_noise_e")), _number(extra.get("read_noise_e_err")), "e-",
              "bias-pair variance averaged over every pixel, times K", gain.get("_source", "")),
        Entry("bias_level_adu", f"Bias level at {s.get('t_ref_degC', 0):g} degC (median pixel)",
              _number(s.get("a_median_adu")), _number(s.get("a_median_err_adu")), "adu",
              "per-pixel WLS line bias(T), median over pixels", src),
        Entry("bias_tempco_adu_per_degC", "Bias temperature coefficient (median pixel)",
              _number(s.get("b_median_adu_per_degC")),
              _number(s.get("b_median_err_adu_per_degC")), "adu/degC",
              "per-pixel WLS line bias(T), median over pixels", src),
    ]
    if k is not None and rn is not None:
        per_adu = k / scale
        err = math.hypot((rn_err or 0.0) * per_adu, rn * (k_err or 0.0) / scale) \
            if rn_err is not None and k_err is not None else None
        rows[1] = Entry("read_noise_e", "Read noise, typical pixel", rn * per_adu, err, "e-",
                        "read noise [adu] x K / ADUSCALE, errors in quadrature", src)
    return rows


def _dark_entries(p: Product | None, base: Path) -> list[Entry]:
    s = p.summary if p else {}
    src = _rel(p.folder / "summary.json", base) if p else ""
    t_ref = s.get("t_ref_degC", 20.0)
    rate_e = s.get("dark_rate_at_t_ref_e_s") or {}
    rate_adu = s.get("dark_rate_at_t_ref_adu_s") or {}
    return [
        Entry("dark_current_e_s", f"Dark current at {t_ref:g} degC (median pixel)",
              _number(rate_e.get("median")), _number(rate_e.get("median_err")), "e-/s",
              "1-D model A = DC(T_ref), median over pixels", src),
        Entry("dark_current_adu_s", f"Dark current at {t_ref:g} degC (median pixel)",
              _number(rate_adu.get("median")), _number(rate_adu.get("median_err")), "adu/s",
              "1-D model A = DC(T_ref), median over pixels", src),
        Entry("dsnu_e_s", f"DSNU at {t_ref:g} degC (spatial std of the dark current)",
              _number(rate_e.get("dsnu")), _number(rate_e.get("dsnu_err")), "e-/s",
              "std over pixels of A, hot pixels excluded", src),
        Entry("doubling_temperature_degC", "Dark-current doubling temperature",
              _number(s.get("doubling_temperature_degC")),
              _number(s.get("doubling_temperature_err_degC")), "degC",
              "ln 2 / B of the per-pixel exponential in T, population value", src),
        Entry("activation_energy_eV", "Activation energy", _number(s.get("activation_energy_eV")),
              _number(s.get("activation_energy_err_eV")), "eV",
              "k_B B T_K^2 at T_ref", src),
        Entry("hot_pixels", "Hot pixels", _number(s.get("hot_pixels")),
              _number(s.get("hot_pixels_ambiguous")), "pixels",
              "robust z of ln(rate at T_ref) > threshold; +- pixels within 1 sigma of it", src),
    ]


#: How the row and column parts of the PRNU are estimated (flat_pipeline.prnu): not the std
#: of the row (column) means, which holds the pixel part / sqrt(width) too, but the std of
#: the pattern once that share is removed -- a variance difference, reported as a signed
#: square root, so it is negative when there is no pattern above the pixel noise (it read
#: "std of row means" next to -0.057 +- 0.013 %).
PRNU_PART_METHOD = ("std of the {part} pattern: variance of the {means} minus the pixel "
                    "part / {other}, signed square root (negative: no {part} pattern above "
                    "the pixel noise; the error is on this signed scale)")


def _flat_entries(p: Product | None, base: Path) -> list[Entry]:
    s = p.summary if p else {}
    src = _rel(p.folder / "summary.json", base) if p else ""
    gain = _json(p.folder / "gain.json") if p and (p.folder / "gain.json").is_file() else {}
    gsrc = _rel(p.folder / "gain.json", base) if gain else src
    extra = gain.get("extra") or {}
    prnu = (s.get("prnu") or {}).get("combined") or {}
    defects = s.get("defects") or {}
    method = str(prnu.get("METHOD") or "cross-covariance of masters")
    return [
        Entry("gain_e_per_adc", "System gain K", _number(gain.get("gain")),
              _number(gain.get("gain_err")), "e-/ADC count",
              str(gain.get("method") or "photon transfer (EMVA 1288)"), gsrc),
        Entry("prnu_percent", "PRNU (EMVA 1288)", _number(prnu.get("PRNU_PCT")),
              _number(prnu.get("PRNU_ERR_PCT")), "%",
              f"spatial std of master / illumination model, temporal noise removed ({method})",
              src),
        Entry("prnu_pixel_percent", "PRNU, pixel component", _number(prnu.get("PRNU_PIXEL_PCT")),
              _number(prnu.get("PRNU_PIXEL_ERR_PCT")), "%", "after row and column means", src),
        Entry("prnu_row_percent", "PRNU, row component", _number(prnu.get("PRNU_ROW_PCT")),
              _number(prnu.get("PRNU_ROW_ERR_PCT")), "%", PRNU_PART_METHOD.format(
                  part="row", means="row means", other="width"), src),
        Entry("prnu_column_percent", "PRNU, column component",
              _number(prnu.get("PRNU_COLUMN_PCT")), _number(prnu.get("PRNU_COLUMN_ERR_PCT")), "%",
              PRNU_PART_METHOD.format(part="column", means="column means", other="height"),
              src),
        Entry("cold_pixels", "Cold and dead pixels",
              None if not defects else _number(defects.get("cold", 0) + defects.get("dead", 0)),
              None, "pixels", "response < 80 % of the local smooth response", src),
        Entry("saturation_adu", "Saturation onset", _number(extra.get("saturation_onset_adu")),
              _number(extra.get("saturation_onset_err_adu")), "adu",
              "photon transfer: level of largest variance, between it and the next level", gsrc),
        Entry("linearity_error_percent", "Linearity error (EMVA 1288)",
              _number(extra.get("linearity_error_percent")),
              _number(extra.get("linearity_error_err_percent")), "%",
              "half the spread of the mean signal's deviations from a line in exposure", gsrc),
    ]


def datasheet(products: list[Product], base: Path) -> list[Entry]:
    """Datasheet rows of the reference stage (no stage, else pre-irradiation)."""
    flat = _reference(products, "flat")
    gain = _json(flat.folder / "gain.json") if flat and (flat.folder / "gain.json").is_file() \
        else {}
    if gain:
        gain["_source"] = _rel(flat.folder / "gain.json", base)
    rows = (_flat_entries(flat, base)[:1] + _bias_entries(_reference(products, "bias"), base,
                                                          gain)
            + _dark_entries(_reference(products, "dark"), base) + _flat_entries(flat, base)[1:])
    sat = _saturation_level(products)
    if sat is not None:
        rows.append(Entry("adc_full_scale_adu", "ADC full scale (stored)", sat[0], 0.0, "adu",
                          "SATLEVEL of the products (ADCBITS, ADUSCALE)", sat[1]))
    return rows


def _saturation_level(products: list[Product]) -> tuple[float, str] | None:
    for p in products:
        for path in sorted(p.folder.glob("*.fits"))[:1]:
            try:
                header = fits.getheader(path)
            except OSError:
                continue
            if kw.SATLEVEL in header:
                return float(header[kw.SATLEVEL]), path.name
    return None


# --- figures -------------------------------------------------------------------------------------

#: (product kind, file below its folder, caption, section); the first ones found are shown.
FIGURES = [
    ("bias", "plots/bias_vs_temperature_pixels.png",
     "Bias vs temperature of sample pixels with the per-pixel line fit [adu vs degC].",
     "calibration"),
    ("bias", "plots/bias_b_map.png", "Map of the bias temperature coefficient B [adu/degC].",
     "calibration"),
    ("bias", "plots/read_noise_map.png", "Read-noise map from frame-pair differences [adu].",
     "calibration"),
    ("dark", "dark_current_vs_temperature.png",
     "Dark current vs temperature: median pixel with its error and the model [adu/s or e-/s].",
     "calibration"),
    ("dark", "plots/doubling_temperature_map.png",
     "Map of the dark-current doubling temperature T_d [degC].", "calibration"),
    ("dark", "plots/hot_pixels_vs_temperature.png",
     "Hot-pixel counts per temperature bin [pixels vs degC].", "calibration"),
    ("flat", "plots/photon_transfer.png",
     "Photon transfer curve: half the variance of pair differences vs mean signal [adu^2 vs "
     "adu]; the slope is 1/K.", "calibration"),
    ("flat", "plots/vignetting.png",
     "Illumination (vignetting) model: relative response vs radius from the optical centre.",
     "calibration"),
    ("flat", "plots/prnu_map.png", "PRNU map: master flat / illumination model [1].",
     "calibration"),
]


def figures(products: list[Product]) -> list[Figure]:
    """Figures of :data:`FIGURES` that exist, from the reference product of each kind."""
    out = []
    for kind, name, caption, section in FIGURES:
        p = _reference(products, kind)
        if p is not None and (p.folder / name).is_file():
            out.append(Figure(p.folder / name, caption, section))
    return out


# --- data quality and provenance -----------------------------------------------------------------

def _table(path: Path, columns: list[str], query) -> pd.DataFrame | None:
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        logger.warning("%s: unreadable (%s); left out of the data-quality section", path, err)
        return None
    part = query(table)
    keep = [c for c in columns if c in part.columns]
    return part[keep]


def quality(products: list[Product], base: Path) -> dict:
    """Frames converted, rejected and flagged, masters refused, with their reasons."""
    out: dict = {"tables": {}}
    proc = _reference(products, "processing")
    if proc is None:
        return out
    stats = proc.folder / "frame_stats.csv"
    if stats.is_file():
        table = pd.read_csv(stats)
        bad = table["BADFITS"].astype(str).str.lower().isin(("true", "1"))
        out["frames_indexed"] = int(len(table))
        out["frames_flagged"] = int(bad.sum())
        out["tables"]["Frames flagged BADFITS (excluded from every master)"] = \
            table[bad][[c for c in ("PATH", "CALTYPE", "TEMP", "EXPTIME", "REASON")
                        if c in table.columns]]
    summary = proc.folder / "masters_summary.csv"
    if summary.is_file():
        table = pd.read_csv(summary)
        refused = table[table["STATUS"] == "refused"]
        out["masters_built"] = int((table["STATUS"] != "refused").sum())
        out["masters_refused"] = int(len(refused))
        # ATTEMPT: a set refused for all attempts and per attempt is three rows, identical
        # without it
        out["tables"]["Masters refused"] = refused[[c for c in ("CALTYPE", "STAGE", "TBIN",
                                                                "EXPTIME", "ATTEMPT", "REASON")
                                                    if c in refused.columns]]
    config = _json(proc.folder / "config_used.json") if (proc.folder / "config_used.json"
                                                         ).is_file() else {}
    dataset = config.get("dataset")
    listing = Path(dataset) / "fits_index.csv" if dataset else None
    if listing is not None and listing.is_file():
        table = pd.read_csv(listing)
        out["frames_converted"] = int((table["STATUS"] != "rejected").sum())
        out["frames_rejected"] = int((table["STATUS"] == "rejected").sum())
        out["tables"]["Raw frames rejected at conversion"] = \
            table[table["STATUS"] == "rejected"][[c for c in ("RAWPATH", "CALTYPE", "REASON")
                                                  if c in table.columns]]
    warnings = base / "warnings.log"
    if warnings.is_file():
        lines = [ln for ln in warnings.read_text(encoding="utf-8").splitlines() if ln.strip()]
        out["warnings"] = len(lines)
        out["tables"]["Warnings of the run"] = pd.DataFrame({"MESSAGE": lines[:200]})
    return out


def provenance(products: list[Product], base: Path) -> dict:
    """Software version, settings of every step, input hashes and product dates."""
    configs = {}
    software = set()
    for path in sorted(base.rglob("config_used.json")):
        if len(path.relative_to(base).parts) > SEARCH_DEPTH + 1:
            continue
        record = _json(path)
        software.add(str(record.get("software", "")))
        configs[_rel(path, base)] = json.dumps(record, indent=1, sort_keys=True)
    hashes = {f"{p.kind}{'/' + p.stage if p.stage else ''}": p.summary.get("inputs_hash")
              for p in products if p.summary.get("inputs_hash")}
    return {"software": sorted(s for s in software if s), "configs": configs,
            "input_hashes": hashes}


def collect(results_dir: str | os.PathLike, title: str = "") -> ReportData:
    """Everything the report shows, from the products below ``results_dir``."""
    from analysis.report_radiation import radiation_section  # it builds on this module

    base = Path(results_dir)
    products = find_products(base)
    logger.debug("report: %d products found below %s", len(products), base)
    return ReportData(title=title or f"Sensor calibration report: {base.resolve().name}",
                      results_dir=base, products=products, datasheet=datasheet(products, base),
                      figures=figures(products), quality=quality(products, base),
                      provenance=provenance(products, base),
                      radiation=radiation_section(products, base))


def radiation_json(blocks, base: Path) -> dict | None:
    """``report.json``'s radiation part (see :func:`analysis.report_radiation.as_json`)."""
    from analysis.report_radiation import as_json

    return as_json(blocks, base)


__all__ = ["Entry", "Figure", "Product", "ReportData", "collect", "find_products", "datasheet"]
