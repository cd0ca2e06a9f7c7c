"""The bias pipeline: masters per temperature, per-pixel bias(T) model, read noise, evaluation.

:func:`run` states the order once.  Every product is written atomically;
masters whose inputs are unchanged are not rebuilt on a re-run.

Products (``OUT``)::

    bias_model.fits                        A (primary, UNCERT, MASK), B, SIGMA_A, SIGMA_B,
                                           COV_AB, CHI2DOF, NPTS, INPUTS
    bias_model/bias_a_map.fits, bias_b_map.fits   the old names: A and B with their errors
    bias_grouped_by_temp/master_bias_<T>C.fits    sigma-clipped masters per temperature bin
    bias_masks_by_temp/synthetic_bias_<T>C.fits   with --generate-set
    read_noise.fits, read_noise.csv        per-pixel read noise and per-bin summary
    evaluation/evaluation_summary.csv|png  leave-one-temperature-out MAE, MAPE, pulls
    evaluation/{real_bias,synthetic_bias,mae,mape}_<T>C.png (+ .fits with --save-eval-fits)
    plots/*.png                            maps of A and B, histogram of B, pixel fits,
                                           read-noise map
    masters.csv, excluded_frames.csv, summary.json, config_used.json, index.csv
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from dataclasses import field as dc_field
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from utils import adu, plotting
from utils import headers as kw
from utils.errors import FrameError, InputPathError, UserError
from utils.io.fitsio import (
    check_output_dir,
    provenance_cards,
    read_image,
    set_card,
    write_csv,
    write_product,
)
from utils.io.index import DatasetIndex, load_frames
from utils.io.tokens import number_text
from utils.memory import release_free_memory
from utils.models.bias_model import (
    BiasModel,
    CrossValidation,
    MasterStack,
    fit_bias_model,
    pooled_errors,
)
from utils.models.read_noise import ReadNoiseAccumulator, frame_pairs, read_noise, read_noise_table
from utils.run_record import StageRuns, completed_run, run_digest, write_run_summary
from utils.settings import dump_settings, field
from utils.stack.grouping import (
    GroupKey,
    calibration_groups,
    check_one_dose_step,
    select_stage,
    stage_groups,
    stage_tag,
)
from utils.stack.master import (
    CombineSettings,
    adc_bits_of,
    existing_product,
    find_masters,
    inputs_hash,
    make_master,
)
from utils.stack.stats import exact_median, exact_nanmedian, median_with_error
from utils.stack.tiles import TILE_SHARE

from . import plots
from .generate_bias import synthetic_bias_path, write_synthetic_bias

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BiasSettings:
    """Settings of one bias-pipeline run (written to ``config_used.json``)."""

    temp_bin: float = field(1.0, "[degC] largest temperature span of one master")
    t_ref: float = field(0.0, "[degC] reference temperature of the A map")
    chi2_pvalue: float = field(1e-3, "pixels whose straight-line fit has a smaller chi-square "
                                     "p-value are flagged non-linear")
    slope_nsigma: float = field(5.0, "[sigma] slope outliers flagged beyond this robust z")
    gain: float | None = field(None, "[e-/ADC count] gain for electron units (none: ADU only)")
    stage: str = field("", "irradiation stage to use (default: each stage found, in "
                           "sub-folders)")
    dose: float | None = field(None, "[krad] dose step of the radiating stage to use (default: "
                                     "each step found, in sub-folders)")
    hot_pixel_mask: str = field("", "boolean FITS; True pixels get no model (NaN A and B)")
    generate_set: bool = field(False, "write a synthetic bias at every master temperature")
    save_eval_fits: bool = field(False, "also write the evaluation maps as FITS")
    pixels_to_plot: int = field(4, "pixels shown in the bias-vs-temperature figure")
    combine: CombineSettings = field(CombineSettings(), "combination of each master")
    masters_from: str = field("", "folder of masters already built from these frames (index "
                                  "processing's OUT/masters): one with the same inputs and "
                                  "settings (same INHASH) is taken, not stacked again")

    def __post_init__(self):
        if not self.temp_bin > 0:
            raise ValueError(f"temp_bin must be > 0 degC, got {self.temp_bin}")
        if not 0 < self.chi2_pvalue < 1 or not self.slope_nsigma > 0:
            raise ValueError("chi2_pvalue must be within (0, 1) and slope_nsigma > 0")
        if self.gain is not None and not self.gain > 0:
            raise ValueError(f"gain must be > 0 e-/ADC count, got {self.gain}")
        if self.dose is not None and not math.isfinite(self.dose):
            raise ValueError(f"dose must be a finite number of krad, got {self.dose}")


@dataclass
class BiasMaster:
    """One master of the run."""

    temperature: float      # [degC] bin label
    tavg: float             # [degC] mean temperature of its frames
    path: Path
    ncombine: int
    written: bool
    rows: pd.DataFrame = dc_field(repr=False, default_factory=pd.DataFrame)


@dataclass
class BiasResult:
    """What a run produced."""

    out_dir: Path
    masters: list[BiasMaster]
    model: BiasModel | None
    summary: dict
    files: list[Path]

    def summary_line(self) -> str:
        """One line: what was written where."""
        s = self.summary
        rn = s.get("read_noise_adu")
        low, high = s["temperatures_degC"][0], s["temperatures_degC"][-1]
        text = (f"bias pipeline: {s['n_frames']} frames -> {len(self.masters)} masters "
                f"({number_text(low)}..{number_text(high)} degC)")
        if self.model is not None:
            text += (f", model median B {s['b_median_adu_per_degC']:.3f} adu/degC "
                     f"(ERRSCALE {s['err_scale']:.2f})")
        if rn is not None:
            text += f", read noise {rn:.2f} adu"
        return text + f"; {len(self.files)} files in {self.out_dir}"


# --- frames ---------------------------------------------------------------------------------------

def _bias_rows(index: DatasetIndex) -> pd.DataFrame:
    table = index.table
    bias = table[table["CALTYPE"] == "BIAS"].copy()
    if bias.empty:
        types = ", ".join(f"{c or '?'}: {n}" for c, n in table["CALTYPE"].value_counts().items())
        raise InputPathError(f"no bias frames among {len(table)} frames ({types}); bias frames "
                             "are recognised from CALTYPE/IMAGETYP or EXPTIME in their headers")
    return bias


def bias_groups(index: DatasetIndex, stage: str = "",
                dose: float | None = None) -> list[tuple[str, float]]:
    """(stage, dose step) groups of the bias frames selected by ``stage`` and ``dose``.

    Raises
    ------
    UserError
        No bias frame, or none of that stage and dose step.
    """
    bias = _bias_rows(index)
    chosen = select_stage(bias, stage, dose)
    if chosen.empty:
        present = ", ".join(stage_tag(s, d) or "none" for s, d in stage_groups(bias))
        wanted = stage_tag(stage or "radiating", dose if dose is not None else math.nan)
        raise UserError(f"no bias frames of {wanted} (present: {present})")
    return stage_groups(chosen)


def select_bias_frames(index: DatasetIndex, stage: str = "",
                       dose: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Usable bias frames of one (stage, dose step), and those left out with their reason.

    Raises
    ------
    UserError
        No bias frame, several (stage, dose step) groups without a choice, frames of
        several dose steps, or frames of different shapes.
    """
    groups = bias_groups(index, stage, dose)
    if len(groups) > 1:
        raise UserError("bias frames of several stages or dose steps ("
                        + ", ".join(stage_tag(s, d) for s, d in groups)
                        + "); choose one with --stage and --dose")
    bias = select_stage(_bias_rows(index), stage, dose)
    check_one_dose_step(bias, "bias(T) model")
    reasons = pd.Series("", index=bias.index, dtype=object)
    reasons[bias["BADFITS"].astype(bool)] = ("BADFITS: " + bias["REASON"].astype(object)
                                             .fillna("").astype(str))
    reasons[(reasons == "") & bias["TEMP"].isna()] = \
        "no sensor temperature (TEMP); fix the temperature log and re-convert"
    excluded = bias[reasons != ""].assign(REASON=reasons[reasons != ""])
    for _, row in excluded.iterrows():
        logger.warning("%s: left out of the bias pipeline (%s)", row["PATH"], row["REASON"])
    good = bias[reasons == ""]
    if good.empty:
        raise UserError(f"all {len(bias)} bias frames are unusable (see excluded_frames.csv); "
                        "first reason: " + str(excluded["REASON"].iloc[0]))
    shapes = good.groupby(["NAXIS1", "NAXIS2"]).size()
    if len(shapes) > 1:
        detail = ", ".join(f"{int(w)}x{int(h)}: {n} frames" for (w, h), n in shapes.items())
        raise UserError(f"bias frames of different shapes ({detail}); give frames of one "
                        "sensor mode (an index filtered to one shape, or one folder)")
    return good, excluded[["PATH", "CALTYPE", "TEMP", "REASON"]]


def temperature_sets(rows: pd.DataFrame, temp_bin: float) -> list[tuple[GroupKey, pd.DataFrame]]:
    """Bias frames split into temperature bins (one master each)."""
    return [(k, part) for k, part in calibration_groups(rows, temp_width=temp_bin)
            if k.caltype == "BIAS"]


#: Folder of the masters below the output folder (the old layout's name).
MASTER_FOLDER = "bias_grouped_by_temp"


def master_file(folder: Path, temperature: float) -> Path:
    """``<folder>/master_bias_<T:.1f>C.fits``."""
    return Path(folder) / f"master_bias_{number_text(temperature)}C.fits"


def build_masters(sets, folder: Path, settings: CombineSettings, *, reuse=None,
                  progress_bar: bool = False) -> list[BiasMaster]:
    """One sigma-clipped master per temperature bin in ``folder`` (skipped when unchanged;
    taken from ``reuse``, ``{INHASH: path}``, when already built from the same frames)."""
    masters = []
    for key, rows in sets:
        path = master_file(folder, key.temperature)
        header, written = make_master(
            rows, path, settings, product="MASTER_BIAS", progress_bar=progress_bar, reuse=reuse,
            extra={kw.CALTYPE: ("BIAS", "calibration type"),
                   kw.IMAGETYP: ("MASTER BIAS", "frame type"),
                   kw.TBIN: (key.temperature, "[degC] temperature bin label")})
        tavg = kw.get_float(header, kw.TAVG, key.temperature)
        masters.append(BiasMaster(key.temperature, tavg, path, int(header.get(kw.NCOMBINE, 0)),
                                  written, rows))
        logger.info("%s master bias %.1f degC (%d frames): %s",
                    "wrote" if written else "kept", key.temperature, len(rows), path.name)
    return masters


# --- read noise -----------------------------------------------------------------------------------

def measure_read_noise(masters: list[BiasMaster], out_dir: Path, gain: float | None,
                       adc_bits: int, *, progress_bar: bool = False):
    """Read noise per temperature bin and pooled, from consecutive frame pairs.

    Returns ``(pooled ReadNoise or None, table, path or None)``; the map is
    written to ``read_noise.fits`` (skipped when its pairs are unchanged).
    """
    path = out_dir / "read_noise.fits"
    per_bin, pooled = [], ReadNoiseAccumulator()
    all_pairs = {m.temperature: frame_pairs(m.rows) for m in masters}
    digest = inputs_hash([p for pairs in all_pairs.values() for pair in pairs for p in pair],
                         CombineSettings(), "read-noise pairs")
    e_per_adu = adu.electrons_per_adu(gain, adc_bits) if gain else None
    cached = existing_product(path, digest)
    if cached is not None and (out_dir / "read_noise.csv").is_file():
        table = pd.read_csv(out_dir / "read_noise.csv")
        data, _ = read_image(path)
        from utils.models.read_noise import ReadNoise

        pooled_rn = ReadNoise(variance=np.asarray(data, np.float32) ** 2,
                              npairs=int(cached.get("NPAIRS", 0)),
                              median=kw.get_float(cached, "RNMEDIAN"),
                              median_err=kw.get_float(cached, "RNMEDERR"),
                              rms=kw.get_float(cached, "RNRMS"))
        return pooled_rn, table, path
    for m in masters:
        pairs = all_pairs[m.temperature]
        acc = read_noise(pairs, progress_bar=progress_bar,
                         desc=f"read noise {number_text(m.temperature)} degC")
        result = acc.result()
        per_bin.append((m.temperature, result.numbers_only() if result is not None else None))
        pooled.merge(acc)
        del acc, result
        release_free_memory()  # the bin's full-frame work arrays: not carried into the next
    rn = pooled.result()
    table = read_noise_table(per_bin + [(math.nan, rn)], e_per_adu)
    if rn is None:
        logger.warning("no pair of consecutive bias frames: read noise not measured")
        return None, table, None
    header = fits.Header()
    for key, value, comment in provenance_cards("READ_NOISE"):
        set_card(header, key, value, comment)
    for key, value, comment in (
            ("METHOD", "pairs", "consecutive-frame differences / sqrt(2)"),
            ("NPAIRS", rn.npairs, "frame pairs used"),
            ("RNMEDIAN", rn.median, "[adu] read noise of the typical pixel"),
            ("RNMEDERR", rn.median_err, "[adu] standard error of RNMEDIAN"),
            ("RNRMS", rn.rms, "[adu] rms read noise over pixels"),
            (kw.INHASH, digest, "hash of the frame pairs")):
        set_card(header, key, value, comment)
    if e_per_adu:
        set_card(header, kw.GAINUSED, float(gain), "[e-/ADC count] gain")
        set_card(header, "RNMEDE", rn.median * e_per_adu, "[electron] RNMEDIAN in electrons")
    for key, value, comment in adu.scaling_cards(adc_bits):
        set_card(header, key, value, comment)
    write_product(path, rn.map, header, unit=adu.UNIT, uncertainty=rn.map_err,
                  mask=~np.isfinite(rn.map))
    return rn, table, path


# --- model products -------------------------------------------------------------------------------

def write_model_maps(model: BiasModel, folder: Path, model_file: Path) -> list[Path]:
    """The old ``bias_a_map.fits`` and ``bias_b_map.fits``, each with its uncertainty."""
    written = []
    rate = f"{adu.UNIT} / deg_C"
    for name, data, err, unit, what in (
            ("bias_a_map.fits", model.a, model.sigma_a, adu.UNIT, f"bias at {model.t_ref:g} degC"),
            ("bias_b_map.fits", model.b, model.sigma_b, rate, "bias temperature coefficient")):
        header = fits.Header()
        for key, value, comment in provenance_cards("BIAS_MODEL_MAP"):
            set_card(header, key, value, comment)
        set_card(header, "CONTENT", what, "bias = A + B (T - TREF)")
        set_card(header, kw.TREF, float(model.t_ref), "[degC] reference temperature of A")
        set_card(header, "BIASMODL", model_file.name, "full model with covariance")
        for key, value, comment in adu.scaling_cards(model.adc_bits):
            set_card(header, key, value, comment)
        written.append(write_product(folder / name, data, header, unit=unit, uncertainty=err,
                                     mask=model.mask != 0))
    return written


def evaluation_products(cv: CrossValidation, model: BiasModel, out_dir: Path, save_fits: bool,
                        labels: list[float]) -> tuple[pd.DataFrame, list[Path]]:
    """Leave-one-temperature-out summary table, figures and (optionally) FITS maps
    (file names use the masters' temperature-bin ``labels``)."""
    folder = out_dir / "evaluation"
    valid = model.mask == 0
    table = cv.summary(valid)
    table.insert(0, "TBIN", labels)
    files = [write_csv(table, folder / "evaluation_summary.csv")]
    files.append(plotting.save(plotting.drawing(plots.plot_evaluation_summary, table),
                               folder / "evaluation_summary.png"))
    for k, t in enumerate(cv.temperatures):
        if not (save_fits or plotting.wants("all")):
            break  # per-temperature maps: figures at level 'all', FITS when asked
        residual, _, real = cv.held_out(k)  # one held-out master in memory at a time
        synth = real - residual
        mae = np.abs(residual)
        with np.errstate(divide="ignore", invalid="ignore"):
            mape = 100 * np.abs(residual / real)
        tag = f"{number_text(labels[k])}C"
        for name, image, unit, label, symmetric in (
                ("real_bias", real, adu.UNIT, "measured master", False),
                ("synthetic_bias", synth, adu.UNIT, "predicted from the other masters", False),
                ("mae", mae, adu.UNIT, "|measured - predicted|", False),
                ("mape", mape, "%", "|measured - predicted| / measured", False)):
            files.append(plotting.save(
                lambda image=image, unit=unit, label=label, symmetric=symmetric, name=name, t=t:
                plotting.drawing(plots.show_image, plots.image_view(image, symmetric=symmetric),
                                 unit=unit, label=label,
                                 title=f"{name.replace('_', ' ')} at {number_text(t)} degC"),
                folder / f"{name}_{tag}.png", level="all"))
            if save_fits:
                header = fits.Header()
                for key, value, comment in provenance_cards("BIAS_EVALUATION"):
                    set_card(header, key, value, comment)
                set_card(header, kw.TEMP, float(t), "[degC] held-out master temperature")
                set_card(header, "CONTENT", label, "leave-one-temperature-out")
                files.append(write_product(folder / f"{name}_{tag}.fits", image, header,
                                           unit=unit))
    return table, files


def _pixel_series(model: BiasModel, stack: MasterStack, count: int):
    """Master values and errors at a few pixels: median and extreme slopes, worst fit."""
    valid = (model.mask == 0) & np.isfinite(model.b)
    picks: list[tuple[int, int]] = []
    if valid.any():
        flat = np.where(valid.ravel())[0]
        b = model.b.ravel()[flat]
        order = np.argsort(b)
        for i in (order[len(order) // 2], order[0], order[-1]):
            picks.append(np.unravel_index(flat[i], model.shape))
    flagged = (model.mask & 1) != 0
    if flagged.any():
        chi = np.where(flagged, model.chi2dof, -np.inf)
        picks.append(np.unravel_index(int(np.nanargmax(chi)), model.shape))
    series = []
    for row, col in dict.fromkeys(picks[:count]):
        data, noise, ncomb = stack.read_block(row, row + 1)
        err = pooled_errors(noise, ncomb) * model.err_scale
        series.append(((int(row), int(col)), data[:, 0, col], err[:, 0, col]))
    return series


# --- the pipeline --------------------------------------------------------------------------------

def _load_mask(path: str) -> np.ndarray:
    if not Path(path).is_file():
        raise InputPathError(f"{path}: hot-pixel mask not found")
    try:
        data, _ = read_image(path)
    except FrameError as err:
        raise InputPathError(f"{path}: hot-pixel mask cannot be read ({err.reason}); give a FITS "
                             "image whose non-zero pixels are to be left out") from err
    exclude = np.asarray(data) != 0
    if exclude.size and exclude.all():
        raise UserError(f"{path}: hot-pixel mask leaves out every pixel ({exclude.size} of "
                        f"{exclude.size} non-zero), so no pixel would get a model; give a FITS "
                        "image that is 0 except at the pixels to leave out")
    return exclude


def run(basepath: str | os.PathLike, out_dir: str | os.PathLike,
        settings: BiasSettings = BiasSettings(), *,
        progress_bar: bool = False) -> BiasResult | StageRuns:
    """Run the bias pipeline on a folder of converted FITS frames or an index CSV.

    An irradiation campaign is modelled per (stage, dose step): frames of several
    groups (and no ``stage``/``dose`` choosing one) give one run per group in
    ``out_dir/<stage tag>/`` (``pre``, ``radiating_D10kR``, ``post``), returned as a
    :class:`~utils.run_record.StageRuns`; groups that cannot be modelled are reported.

    Order of one run: frames -> masters per temperature -> model fit (+ cross-validation)
    -> model products -> read noise -> evaluation -> synthetic set -> plots -> summary.

    Raises
    ------
    UserError
        No bias frames, one temperature only (masters are still written), frames of
        several dose steps in one fit, mismatched shapes, a hot-pixel mask of the wrong
        shape; with several groups, only when none could be modelled.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    # an unreadable or wrong mask is refused before anything is written
    exclude = _load_mask(settings.hot_pixel_mask) if settings.hot_pixel_mask else None
    index = load_frames(basepath, out_dir / "index.csv", progress_bar=progress_bar)
    groups = bias_groups(index, settings.stage, settings.dose)
    if len(groups) == 1:
        return _run_one(index, basepath, out_dir, settings, exclude, progress_bar)
    runs = StageRuns(out_dir, "bias pipeline")
    for stage, dose in groups:
        tag = stage_tag(stage, dose)
        one = replace(settings, stage=stage, dose=None if math.isnan(dose) else dose)
        runs.run(tag, lambda: _run_one(index, basepath, out_dir / tag, one, exclude,
                                       progress_bar))
    return runs.check()


def _run_one(index: DatasetIndex, basepath, out_dir: Path, settings: BiasSettings,
             exclude, progress_bar: bool) -> BiasResult:
    """One (stage, dose step): see :func:`run`."""
    rows, excluded = select_bias_frames(index, settings.stage, settings.dose)
    # written once the inputs are checked: a command that fails on its input leaves none
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_settings(out_dir, bias=settings, basepath=str(Path(basepath).resolve()))
    files = [out_dir / "index.csv"] if Path(basepath).is_dir() and \
        (out_dir / "index.csv").is_file() else []
    if len(excluded):
        files.append(write_csv(excluded, out_dir / "excluded_frames.csv"))
    adc_bits = adc_bits_of(rows)
    sets = temperature_sets(rows, settings.temp_bin)
    if exclude is not None:
        width, height = int(rows["NAXIS1"].iloc[0]), int(rows["NAXIS2"].iloc[0])
        if exclude.shape != (height, width):
            raise UserError(f"{settings.hot_pixel_mask}: hot-pixel mask is {exclude.shape[1]}x"
                            f"{exclude.shape[0]} but the bias frames are {width}x{height}")

    masters = build_masters(sets, out_dir / MASTER_FOLDER, settings.combine,
                            reuse=find_masters(settings.masters_from), progress_bar=progress_bar)
    files += [m.path for m in masters]
    table = pd.DataFrame([{"TBIN": m.temperature, "TAVG": m.tavg, "NCOMBINE": m.ncombine,
                           "NFRAMES": len(m.rows), "PATH": m.path.relative_to(out_dir).as_posix()}
                          for m in masters])
    files.append(write_csv(table, out_dir / "masters.csv"))
    temps = np.array([m.tavg for m in masters])
    if np.unique(np.round(temps, 3)).size < 2:
        raise UserError(f"bias frames at a single temperature ({number_text(temps[0])} degC): "
                        f"masters written to {out_dir / MASTER_FOLDER}, but a bias(T) model "
                        "needs at least two temperatures")

    digest = run_digest(settings, [m.path for m in masters],
                        Path(settings.hot_pixel_mask).stat().st_mtime_ns
                        if settings.hot_pixel_mask else "")
    done = completed_run(out_dir, digest)
    if done is not None:
        logger.info("bias model products in %s are up to date (same masters and settings)",
                    out_dir)
        return BiasResult(out_dir, masters, BiasModel.read(out_dir / "bias_model.fits"), done,
                          [out_dir / f for f in done["files"]])

    # the read noise first: its pair differences are full frames, and the model's maps
    # (~200 MB at 2048^2 with the leave-one-out terms) need not be held under them
    rn, rn_table, rn_path = measure_read_noise(masters, out_dir, settings.gain, adc_bits,
                                               progress_bar=progress_bar)
    stack = MasterStack([m.path for m in masters], temps)
    inputs = pd.DataFrame({"PATH": [m.path.name for m in masters], "TEMP": temps,
                           "NCOMBINE": [m.ncombine for m in masters]})
    model, cv = fit_bias_model(stack, t_ref=settings.t_ref, chi2_pvalue=settings.chi2_pvalue,
                               slope_nsigma=settings.slope_nsigma, exclude=exclude,
                               adc_bits=adc_bits, inputs=inputs,
                               memory_limit=settings.combine.memory_limit * TILE_SHARE)
    model_file = model.write(out_dir / "bias_model.fits",
                             {"HOTMASK": (Path(settings.hot_pixel_mask).name or "none",
                                          "user mask of pixels without model")})
    files.append(model_file)
    files += write_model_maps(model, out_dir / "bias_model", model_file)

    files.append(write_csv(rn_table, out_dir / "read_noise.csv"))
    if rn_path is not None:
        files.append(rn_path)

    cv_table = None
    if cv is not None:
        cv_table, eval_files = evaluation_products(cv, model, out_dir, settings.save_eval_fits,
                                                    [m.temperature for m in masters])
        files += eval_files
    else:
        logger.warning("two temperatures only: no leave-one-out evaluation (needs three)")

    if settings.generate_set:
        for m in masters:
            files.append(write_synthetic_bias(model, m.temperature, synthetic_bias_path(
                out_dir / "bias_masks_by_temp", m.temperature), str(model_file)))

    # drawn in the render process from what they show (data reduced here when wanted)
    figures = {
        "bias_a_map.png": lambda: plotting.drawing(plots.plot_model_map_data,
                                                   plots.model_map_data(model, "a")),
        "bias_b_map.png": lambda: plotting.drawing(plots.plot_model_map_data,
                                                   plots.model_map_data(model, "b")),
        "bias_b_histogram.png": lambda: plotting.drawing(plots.plot_slope_histogram_data,
                                                         plots.slope_histogram_data(model)),
        "bias_vs_temperature_pixels.png": lambda: plotting.drawing(
            plots.plot_pixel_fits_data, plots.pixel_fits_data(
                model, temps, _pixel_series(model, stack, settings.pixels_to_plot))),
    }
    if rn is not None:
        figures["read_noise_map.png"] = lambda: plotting.drawing(plots.plot_read_noise_data,
                                                                 plots.read_noise_data(rn))
    for name, draw in figures.items():
        files.append(plotting.save(draw, out_dir / "plots" / name))
    files = [f for f in files if f is not None]  # figures not drawn (level, failure)

    summary = _summary(rows, masters, model, rn, cv_table, settings, adc_bits, out_dir)
    files += [out_dir / "config_used.json", out_dir / "summary.json"]
    # written last: its hash and file list mark the run complete for the next re-run
    write_run_summary(out_dir, summary, files, digest)
    return BiasResult(out_dir, masters, model, summary, files)


def _summary(rows, masters, model, rn, cv_table, settings, adc_bits, out_dir) -> dict:
    valid = (model.mask == 0) & np.isfinite(model.b)
    b = model.b[valid]
    e_per_adu = adu.electrons_per_adu(settings.gain, adc_bits) if settings.gain else None
    # the typical pixel of the sensor: medians over pixels with their standard errors
    a_med, a_med_err = median_with_error(model.a[valid])
    b_med, b_med_err = median_with_error(b)
    summary = {
        "stage": settings.stage, "dose_krad": settings.dose,
        "stage_tag": stage_tag(settings.stage, math.nan if settings.dose is None
                               else settings.dose),
        "n_frames": int(len(rows)),
        "n_masters": len(masters),
        "temperatures_degC": [float(m.tavg) for m in masters],
        "t_ref_degC": float(model.t_ref),
        "a_median_adu": a_med if valid.any() else None,
        "a_median_err_adu": a_med_err if valid.any() else None,
        "b_median_adu_per_degC": b_med if b.size else None,
        "b_median_err_adu_per_degC": b_med_err if b.size else None,
        # (in float32, as the median of the float32 slopes it scales always was)
        "b_spread_adu_per_degC": float(1.4826 * np.float32(exact_median(
            np.abs(b - exact_median(b))))) if b.size else None,
        "sigma_b_median_adu_per_degC": exact_median(model.sigma_b[valid]) if b.size else None,
        "err_scale": float(model.err_scale),
        "chi2dof_median": exact_nanmedian(model.chi2dof[valid]) if valid.any() else None,
        "masked_pixels": {"nonlinear": int(((model.mask & 1) != 0).sum()),
                          "slope_outlier": int(((model.mask & 2) != 0).sum()),
                          "no_fit": int(((model.mask & 4) != 0).sum())},
        "adc_bits": int(adc_bits), "adu_scale": adu.adu_scale(adc_bits),
        "units": "stored 16-bit ADU (divide by adu_scale for ADC counts)",
        "read_noise_adu": float(rn.median) if rn is not None else None,
        "read_noise_err_adu": float(rn.median_err) if rn is not None else None,
        "read_noise_rms_adu": float(rn.rms) if rn is not None else None,
        "read_noise_e": float(rn.median * e_per_adu) if rn is not None and e_per_adu else None,
        "gain_e_per_adc_count": settings.gain,
        "output_dir": str(out_dir),
    }
    if cv_table is not None and len(cv_table):
        summary.update(loo_mae_mean_adu=float(cv_table["MAE_MEAN"].mean()),
                       loo_mape_mean_percent=float(cv_table["MAPE_MEAN"].mean()),
                       loo_pull_std=[float(v) for v in cv_table["PULL_STD"]])
    return summary


__all__ = ["BiasSettings", "BiasResult", "BiasMaster", "run", "select_bias_frames", "bias_groups",
           "temperature_sets", "build_masters", "measure_read_noise", "master_file"]
