"""The dark pipeline: bias-subtracted masters, rates, dark-current models, hot pixels, evaluation.

:func:`run` states the order of every mode once.  Products (``OUT``)::

    dark_masters/master_dark_T<T>C_E<t>s.fits   bias-subtracted dark signal [adu] per (T, t)
    dark_rates/dark_rate_T<T>C.fits             rate [adu/s] = slope of signal vs exposure
    dark_model/dark_model.fits                  1-D model: A (primary, UNCERT, MASK), B, SIGMA_A,
                                                SIGMA_B, COV_AB, CHI2DOF, NPTS, FALLBACK, TDOUBLE,
                                                EA, HOT; old names A_map.fits, B_map.fits,
                                                hot_pixels.fits
    dark_model_2d/dark_model_2d.fits            2-D model: A, GAMMA, B, errors, covariances;
                                                old names A_map_2D, B_map_2D, GAMMA_map_2D.fits
    hot_pixels.fits, hot_pixels.csv             mask at TREF and counts per temperature bin
    evaluation_model_{1d,2d}_summary.csv, heatmap_{mae,mape,pull,dark_real,dark_synthetic}_
    {1d,2d}.png, plots_2d_comparison/scatter_T<T>_E<t>.png
    dark_current_vs_temperature.csv|png
    synthetic/ (synthetic_only), synthetic_2d_exp_<E>/ (synthetic_2d),
    synthetic_2d_dark_T<T>_E<E>.fits (synthetic_2d_single)
    plots/*.png, masters.csv, summary.json, config_used.json, index.csv, bias_model.fits and
    bias_masters/ (when the bias comes from the tree's own bias frames)
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from utils import adu, plotting
from utils.errors import ConfigError, InputPathError, UserError
from utils.io.fitsio import (
    check_output_dir,
    provenance_cards,
    set_card,
    write_csv,
    write_product,
    write_text,
)
from utils.io.index import DatasetIndex, load_frames
from utils.io.tokens import number_text
from utils.memory import release_free_memory
from utils.models.bias_model import BiasModel
from utils.models.gain import resolve_gain
from utils.run_record import StageRuns, completed_run, json_text, run_digest, write_run_summary
from utils.settings import dump_settings, field
from utils.stack.grouping import stage_tag
from utils.stack.master import CombineSettings, adc_bits_of, find_masters
from utils.stack.references import resolve_bias_model
from utils.stack.tiles import pixel_blocks, pixel_sample

from . import holdout as refits
from . import plots
from .evaluation import RefitsAhead, dark_current_table, evaluate
from .hot_pixels import find_hot_pixels, hot_pixel_counts
from .masters import (
    MASTER_FOLDER,
    bias_reference,
    build_dark_masters,
    dark_frames,
    dark_groups,
    dark_sets,
    masters_table,
)
from .model_2d import (
    BiasErrors,
    DarkModel2D,
    fit_model_2d,
    rate_bias_errors,
)
from .rates import load_stack, rate_maps, rate_sample
from .synthetic import grid_path, single_path, write_rate_map, write_synthetic_frame
from .temperature_model import DarkModel1D, fit_temperature_model

logger = logging.getLogger(__name__)

MODES = ("full", "synthetic_only", "evaluation_only", "evaluate_dark_current", "fit_2d_model",
         "evaluate_2d_model", "synthetic_2d", "synthetic_2d_single")
#: Modes that read dark frames.
FRAME_MODES = ("full", "evaluation_only", "evaluate_dark_current", "fit_2d_model",
               "evaluate_2d_model")
MODEL_1D = Path("dark_model") / "dark_model.fits"
MODEL_2D = Path("dark_model_2d") / "dark_model_2d.fits"


@dataclass(frozen=True)
class DarkSettings:
    """Settings of one dark-pipeline run (written to ``config_used.json``)."""

    mode: str = field("full", "what to run: " + ", ".join(MODES))
    temp_bin: float = field(1.0, "[degC] largest temperature span of one master")
    exp_tolerance: float = field(0.01, "largest relative exposure-time span of one master")
    t_ref: float = field(20.0, "[degC] reference temperature of the models and hot pixels")
    bias_model: str = field("", "bias_model.fits of the bias pipeline (else fitted from the "
                                "tree's bias frames)")
    bias_temp_tolerance: float = field(2.0, "[degC] largest distance to the bias model's range "
                                            "or to a bias master")
    model_dir: str = field("", "folder holding dark_model/ and dark_model_2d/ (default: the "
                               "output folder)")
    gain: float | str | None = field(None, "[e-/ADC count] gain for electron units, or a "
                                           "gain.json (the flat pipeline's measured gain)")
    hot_threshold: float = field(5.0, "[sigma] hot-pixel threshold on ln(rate)")
    hot_min_rate: float = field(5.0, "[e-/s] hot pixels must also exceed this (with --gain)")
    min_snr: float = field(3.0, "smallest signal/error of a point counted as signal by the "
                                "2-D model (the 1-D model fits every pixel with two positive "
                                "rates)")
    stage: str = field("", "irradiation stage to use (default: each stage found, in "
                           "sub-folders)")
    dose: float | None = field(None, "[krad] dose step of the radiating stage to use (default: "
                                     "each step found, in sub-folders)")
    temps: tuple = field((20.0,), "[degC] temperatures of the synthetic_only and synthetic_2d "
                                  "modes")
    exptimes: tuple = field((1.0, 5.0, 10.0, 20.0, 25.0), "[s] exposures of the synthetic modes")
    temp_single: float = field(20.0, "[degC] temperature of synthetic_2d_single")
    exptime_single: float = field(10.0, "[s] exposure of synthetic_2d_single")
    combine: CombineSettings = field(CombineSettings(), "combination of each master")
    masters_from: str = field("", "folder of masters already built from these frames (index "
                                  "processing's OUT/masters): one with the same inputs, "
                                  "settings and bias (same INHASH) is taken, not stacked again")

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not self.temp_bin > 0 or self.exp_tolerance < 0 or self.bias_temp_tolerance < 0:
            raise ValueError("temp_bin must be > 0, exp_tolerance and bias_temp_tolerance >= 0")
        if self.gain is not None and not isinstance(self.gain, str) and not self.gain > 0:
            raise ValueError(f"gain must be > 0 e-/ADC count, got {self.gain}")
        if not self.hot_threshold > 0 or not self.min_snr > 0:
            raise ValueError("hot_threshold and min_snr must be > 0")
        if not all(e > 0 for e in self.exptimes) or not self.exptime_single > 0:
            raise ValueError("exposure times must be > 0 s")
        if self.dose is not None and not math.isfinite(self.dose):
            raise ValueError(f"dose must be a finite number of krad, got {self.dose}")


@dataclass
class DarkResult:
    """What a run produced."""

    out_dir: Path
    summary: dict
    files: list[Path]

    def summary_line(self) -> str:
        """One line: what was written where."""
        s = self.summary
        parts = [f"dark pipeline ({s['mode']})"]
        if "n_masters" in s:
            parts.append(f"{s['n_masters']} masters at {len(s.get('temperatures_degC', []))} "
                         f"temperatures")
        if s.get("doubling_temperature_degC") is not None:
            parts.append(f"population T_d {s['doubling_temperature_degC']:.2f} degC, E_a "
                         f"{s['activation_energy_eV']:.3f} eV")
        if s.get("hot_pixels") is not None:
            parts.append(f"{s['hot_pixels']} hot pixels")
        if s.get("gamma_population") is not None:
            parts.append(f"population gamma {s['gamma_population']:.3f}")
        return ", ".join(parts) + f"; {len(self.files)} files in {self.out_dir}"


def _save(draw, path: Path, files: list, level: str = "summary") -> None:
    """Save a figure of ``level`` (``draw``: a drawing, drawn where the figure is rendered,
    or a callable, see :func:`utils.plotting.save`); listed in ``files`` when saved."""
    saved = plotting.save(draw, path, level=level)
    if saved is not None:
        files.append(saved)


def _e_per_adu(settings: DarkSettings, adc_bits: int) -> float | None:
    gain = resolve_gain(settings.gain, adc_bits)
    return gain.e_per_adu if gain else None


# --- measured products -------------------------------------------------------------------------

def measure(index: DatasetIndex, out_dir: Path, settings: DarkSettings, files: list, *,
            progress_bar: bool = False):
    """Dark masters of one (stage, dose step) (written, or kept when unchanged); returns
    ``(masters, bias, adc_bits)``."""
    if (out_dir / "index.csv").is_file():
        files.append(out_dir / "index.csv")
    rows = dark_frames(index, settings.stage, settings.dose)
    adc_bits = adc_bits_of(rows)
    reuse = find_masters(settings.masters_from)
    bias = bias_reference(index, out_dir, model_path=settings.bias_model, stage=settings.stage,
                          dose=settings.dose, temp_bin=settings.temp_bin,
                          tolerance=settings.bias_temp_tolerance,
                          combine=settings.combine, progress_bar=progress_bar, reuse=reuse)
    bias.check_shape((int(rows["NAXIS2"].iloc[0]), int(rows["NAXIS1"].iloc[0])))
    masters, refused = build_dark_masters(
        dark_sets(rows, settings.temp_bin, settings.exp_tolerance), bias,
        out_dir / MASTER_FOLDER, settings.combine, reuse=reuse, progress_bar=progress_bar)
    if not masters:
        raise UserError("no dark master could be made: " + "; ".join(refused[:2]))
    files += [m.path for m in masters]
    files.append(write_csv(masters_table(masters, out_dir), out_dir / "masters.csv"))
    return masters, bias, adc_bits


def _loaded(rates):
    """The rate maps with their rate and error in memory, one map at a time."""
    return (r.loaded() for r in rates)


def write_hot_pixels(rate: np.ndarray, out_dir: Path, settings: DarkSettings, adc_bits: int,
                     what: str, files: list):
    """Hot-pixel mask of ``rate`` [adu/s] (at TREF) to ``hot_pixels.fits``; returns it."""
    e = _e_per_adu(settings, adc_bits)
    try:
        hot = find_hot_pixels(rate, n_sigma=settings.hot_threshold, e_per_adu=e,
                              min_rate_e=settings.hot_min_rate)
    except ValueError as err:
        # e.g. sets smaller than the stacking's minimum: every pixel of their masters masked
        raise UserError(f"{out_dir}: no hot-pixel test on the {what} rate map ({err}); check "
                        "that the dark sets have enough frames for the stacking's "
                        "--min-accepted and that their masters are not fully masked") from err
    header = fits.Header()
    for key, value, comment in provenance_cards("HOT_PIXELS"):
        set_card(header, key, value, comment)
    for key, value, comment in (
            ("RATESRC", what, "rate map the test was made on"),
            ("NSIGMA", hot.n_sigma, "[sigma] threshold on ln(rate), robust sigma"),
            ("MEDRATE", hot.median_rate, "[adu/s] population median rate"),
            ("SPREADLN", hot.spread_ln, "robust sigma of ln(rate)"),
            ("THRESH", hot.threshold, "[adu/s] rate threshold"),
            ("MINRATE", hot.min_rate_adu, "[adu/s] electron floor (0 without gain)"),
            ("NHOT", hot.count, "hot pixels")):
        set_card(header, key, value, comment)
    if e:
        set_card(header, "THRESHE", hot.threshold * e, "[electron/s] rate threshold")
        for key, value, comment in resolve_gain(settings.gain, adc_bits).cards():
            set_card(header, key, value, comment)
    files.append(write_product(out_dir / "hot_pixels.fits", hot.mask.astype(np.uint8), header,
                               unit=""))
    return hot


def _model_aliases(model_file: Path, maps: dict, unit_of: dict) -> list[Path]:
    """The old per-map file names next to a model product."""
    out = []
    for name, data in maps.items():
        header = fits.Header()
        for key, value, comment in provenance_cards("DARK_MODEL_MAP"):
            set_card(header, key, value, comment)
        set_card(header, "MODELFIL", model_file.name, "full model with errors")
        out.append(write_product(model_file.parent / name, data, header, unit=unit_of[name]))
    return out


def _evaluation_products(ev, kind: str, out_dir: Path, files: list) -> None:
    files.append(write_csv(ev.table, out_dir / f"evaluation_model_{kind}_summary.csv"))
    for column, name, title in (("MAE [ADU]", "mae", "mean absolute error [adu]"),
                                ("MAPE [%]", "mape", "mean absolute percentage error [%]"),
                                ("PULL_STD", "pull", "pull standard deviation [1]"),
                                ("REAL_MEDIAN [ADU]", "dark_real", "measured median signal [adu]"),
                                ("SYNTH_MEDIAN [ADU]", "dark_synthetic",
                                 "model median signal [adu]")):
        _save(plotting.drawing(plots.plot_heatmap, ev.table, column, label=title,
                               title=f"{kind.upper()} model: {title}"),
              out_dir / f"heatmap_{name}_{kind}.png", files)
    for which, name, unit in ((0, "mae", "adu"), (1, "mape", "%")):
        _save(lambda: plotting.drawing(plots.plot_error_maps_data,
                                       plots.error_maps_data(ev.maps, which), which=which,
                                       unit=unit,
                                       title=f"{kind.upper()} model {name.upper()} per pixel"),
              out_dir / f"{name}_maps_{kind}.png", files, level="all")


def _ambiguous_hot(model: DarkModel1D, hot) -> int:
    """Pixels whose rate at TREF lies within one standard error of the hot-pixel threshold:
    the count of hot pixels is uncertain by about this many."""
    count = 0
    amplitude, error = (m.reshape(-1) for m in (model.fit.amplitude, model.fit.amplitude_err))
    for blk in pixel_blocks(amplitude.size):  # float64 work arrays of a block only
        a = amplitude[blk].astype(np.float64)
        err = error[blk].astype(np.float64) * model.err_scale
        with np.errstate(invalid="ignore"):
            near = np.abs(a - hot.threshold) < err
        count += int(np.count_nonzero(near & np.isfinite(a)))
    return count


def _pixels(model: DarkModel1D, count: int = 4) -> list[tuple[int, int]]:
    good = ~model.fit.fallback & np.isfinite(model.fit.amplitude)
    if model.hot is not None and (model.hot & good).any():
        hot = [tuple(int(v) for v in np.unravel_index(np.flatnonzero(model.hot & good)[0],
                                                    model.hot.shape))]
    else:
        hot = []
    flat = np.flatnonzero(good & ~(model.hot if model.hot is not None else False))
    if flat.size == 0:
        return hot
    order = flat[np.argsort(model.fit.amplitude.ravel()[flat])]
    picks = [order[len(order) // 2], order[len(order) // 10], order[-len(order) // 10]]
    return (hot + [tuple(int(v) for v in np.unravel_index(i, model.fit.amplitude.shape))
                   for i in picks])[:count]


# --- the pipeline ------------------------------------------------------------------------------

def run(basepath: str | os.PathLike | None, out_dir: str | os.PathLike,
        settings: DarkSettings = DarkSettings(), *,
        progress_bar: bool = False) -> DarkResult | StageRuns:
    """Run one mode of the dark pipeline.

    An irradiation campaign is modelled per (stage, dose step): dark frames of several
    groups (and no ``stage``/``dose`` choosing one) give one run per group in
    ``out_dir/<stage tag>/`` (``pre``, ``radiating_D10kR``, ``post``), returned as a
    :class:`~utils.run_record.StageRuns`; groups that cannot be modelled (e.g. one
    temperature) are reported.  Each group's bias comes from its own bias frames, or
    from ``bias_model`` (a file, or the bias pipeline's output folder holding one
    ``<stage tag>/bias_model.fits`` per group).

    Order of ``full``: frames -> bias reference -> masters per (T, t) -> rate maps -> 1-D
    model -> hot pixels -> 2-D model -> evaluation of both models -> dark current vs T ->
    plots -> summary.  The other modes run the named part, reading models from
    ``model_dir`` and (for evaluations) masters from the frames.

    Raises
    ------
    UserError
        No dark frames, missing bias, missing model for a model-reading mode, frames of
        several dose steps in one fit, or a single temperature in ``full`` (masters, rates
        and hot pixels are still written); with several groups, only when none could be
        modelled.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    resolve_gain(settings.gain)  # an unreadable gain.json is refused before any work
    index = None
    if settings.mode in FRAME_MODES:
        if not basepath:
            raise ConfigError(f"mode {settings.mode} needs --basepath (converted dark frames or "
                              "an index)")
        index = load_frames(basepath, out_dir / "index.csv", progress_bar=progress_bar)
        groups = dark_groups(index, settings.stage, settings.dose)
        if len(groups) > 1:
            runs = StageRuns(out_dir, f"dark pipeline ({settings.mode})")
            for stage, dose in groups:
                tag = stage_tag(stage, dose)
                runs.run(tag, lambda: _run_one(index, basepath, out_dir / tag,
                                               _group_settings(settings, stage, dose, tag),
                                               progress_bar))
            return runs.check()
        if groups:
            settings = replace(settings, stage=groups[0][0],
                               dose=None if math.isnan(groups[0][1]) else groups[0][1])
    return _run_one(index, basepath, out_dir, settings, progress_bar)


def _group_settings(settings: DarkSettings, stage: str, dose: float, tag: str) -> DarkSettings:
    """Settings of one group's run: its stage and dose, its own model folder."""
    model_dir = settings.model_dir
    if model_dir and (Path(model_dir) / tag).is_dir():
        model_dir = str(Path(model_dir) / tag)
    if settings.bias_model and Path(settings.bias_model).is_file():
        logger.warning("%s: one bias model for every dose step (%s); the bias shifts with dose, "
                       "give the bias pipeline's output folder to use each step's own",
                       tag, settings.bias_model)
    return replace(settings, stage=stage, dose=None if math.isnan(dose) else dose,
                   model_dir=model_dir)


def _run_one(index, basepath, out_dir: Path, settings: DarkSettings,
             progress_bar: bool) -> DarkResult:
    """One (stage, dose step), one mode: see :func:`run`."""
    mode = settings.mode
    gain = resolve_gain(settings.gain)  # a number or a gain.json: checked before anything
    model_dir = Path(settings.model_dir) if settings.model_dir else out_dir
    needed = _MODEL_OF_MODE.get(mode)
    if needed and not (model_dir / needed).is_file():
        makers = "mode full" if needed == MODEL_1D else "mode full or fit_2d_model"
        raise InputPathError(f"{model_dir / needed}: dark model not found; run the dark pipeline "
                             f"({makers}) first, or give --model-dir")
    files: list[Path] = []
    summary: dict = {"mode": mode, "output_dir": str(out_dir), "t_ref_degC": settings.t_ref,
                     "stage": settings.stage, "dose_krad": settings.dose,
                     "stage_tag": stage_tag(settings.stage, math.nan if settings.dose is None
                                            else settings.dose),
                     "units": "stored 16-bit ADU (divide by adu_scale for ADC counts)",
                     "gain_e_per_adc_count": gain.gain if gain else None,
                     "gain_source": f"{gain.method}: {gain.source}" if gain else None}
    masters = stack = rates = bias_errors = digest = None
    # a --bias-model given to a synthetic mode must exist: it was passed over silently
    synthetic_bias = _bias_for_synthetic(settings, model_dir, summary["stage_tag"]) \
        if mode not in FRAME_MODES else None
    adc_bits = adu.DEFAULT_ADC_BITS
    if mode in FRAME_MODES:
        masters, bias, adc_bits = measure(index, out_dir, settings, files,
                                          progress_bar=progress_bar)
        digest = run_digest(settings, [m.path for m in masters], bias.fingerprint,
                            repr(gain))
        # the masters are made: the fits read only the bias model's error maps (the rest of
        # the model and the reference's caches are released: 70 MB at 2048^2)
        bias_errors = BiasErrors.of(bias.model, bias.source)
        del bias
        done = completed_run(out_dir, digest)
        if done is not None:
            logger.info("dark products in %s are up to date (same masters and settings)",
                        out_dir)
            return DarkResult(out_dir, done, [out_dir / f for f in done["files"]])
        # every later step reads the masters from it tile by tile, within the memory limit
        stack = load_stack(masters, settings.combine.memory_limit)
        rates = rate_maps(stack, out_dir, adc_bits, files)
        release_free_memory()  # the written rate maps' other images
        summary.update(n_masters=len(masters),
                       temperatures_degC=[float(r.tavg) for r in rates],
                       exposures_s=sorted({float(m.exptime) for m in masters}),
                       rate_method=sorted({r.method for r in rates}),
                       adc_bits=adc_bits, adu_scale=adu.adu_scale(adc_bits))
    # written once the inputs are checked: a command that fails on its input leaves none
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_settings(out_dir, dark=settings, basepath=str(basepath or ""))
    e = _e_per_adu(settings, adc_bits)

    if mode == "full":
        _full(stack, rates, out_dir, settings, adc_bits, summary, files, bias_errors)
    elif mode == "evaluate_dark_current":
        model = DarkModel1D.read(model_dir / MODEL_1D) if (model_dir / MODEL_1D).is_file() \
            else None
        _dark_current(rates, model, e, out_dir, summary, files)
    elif mode == "evaluation_only":
        model = DarkModel1D.read(model_dir / MODEL_1D)
        _check_model_shape(model.fit.amplitude.shape, stack)
        pixels = pixel_sample(stack.shape, LOO_PIXELS)
        ev = evaluate(stack, lambda t, x: model.rate(t) * x, lambda t, x: model.rate_err(t) * x,
                      exclude=_exclusion(model.mask()),
                      holdout=refits.holdout_1d(rates, settings, adc_bits, pixels,
                                                model.fit.population_rate), pull_pixels=pixels,
                      keep_maps=plotting.wants("all"))
        _evaluation_products(ev, "1d", out_dir, files)
        summary["evaluation_1d"] = _eval_summary(ev)
    elif mode == "fit_2d_model":
        hot = DarkModel1D.read(model_dir / MODEL_1D).hot if (model_dir / MODEL_1D).is_file() \
            else None
        model2 = _fit_2d(stack, out_dir, settings, adc_bits, hot, summary, files,
                         bias_errors)
        del model2
    elif mode == "evaluate_2d_model":
        model2 = DarkModel2D.read(model_dir / MODEL_2D)
        _check_model_shape(model2.fit.amplitude.shape, stack)
        sample, pixels = stack.sample(LOO_PIXELS)
        ev = evaluate(stack, model2.signal, model2.signal_err,
                      exclude=_exclusion(model2.hot, model2.fit.amplitude),
                      holdout=refits.holdout_2d(sample, settings, adc_bits, bias_errors,
                                                refits.population_shape(model2)),
                      pull_pixels=pixels, keep_maps=plotting.wants("all"))
        _evaluation_products(ev, "2d", out_dir, files)
        _scatter_plots(ev, out_dir, files)
        summary["evaluation_2d"] = _eval_summary(ev)
    else:
        _synthetic(mode, model_dir, out_dir, settings, summary, files, synthetic_bias)

    files += [out_dir / "config_used.json", out_dir / "summary.json"]
    # written last: with its hash and file list it marks the run complete for a re-run
    write_run_summary(out_dir, summary, files, digest, default=_json)
    return DarkResult(out_dir, summary, files)


#: Model file a mode reads (checked before anything is written).
_MODEL_OF_MODE = {"evaluation_only": MODEL_1D, "synthetic_only": MODEL_1D,
                  "evaluate_2d_model": MODEL_2D, "synthetic_2d": MODEL_2D,
                  "synthetic_2d_single": MODEL_2D}


def _json(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def _exclusion(mask, amplitude=None) -> np.ndarray | None:
    out = None if mask is None else np.asarray(mask) != 0
    if amplitude is not None:
        nofit = ~np.isfinite(amplitude)
        out = nofit if out is None else out | nofit
    return out


def _check_model_shape(shape, stack) -> None:
    frames = tuple(stack.shape)
    if tuple(shape) != frames:
        raise UserError(f"the dark model is {shape[1]}x{shape[0]} but the dark frames are "
                        f"{frames[1]}x{frames[0]}")


def _eval_summary(ev) -> dict:
    t = ev.table
    return {"mae_mean_adu": float(t["MAE [ADU]"].mean()),
            "mape_mean_percent": float(t["MAPE [%]"].mean()),
            "pull_std_median": float(t["PULL_STD"].median()),
            "pull_std_max": float(t["PULL_STD"].max())}


def _dark_current(rates, model, e, out_dir: Path, summary: dict, files: list,
                  exclude=None) -> pd.DataFrame:
    table = dark_current_table(_loaded(rates), model, e, exclude)
    files.append(write_csv(table, out_dir / "dark_current_vs_temperature.csv"))
    _save(plotting.drawing(plots.plot_dark_current, table, electrons=bool(e)),
          out_dir / "dark_current_vs_temperature.png", files)
    summary["dark_current"] = table.to_dict("records")
    return table


def _fit_2d(stack, out_dir: Path, settings: DarkSettings, adc_bits: int, hot, summary: dict,
            files: list, bias_model=None) -> DarkModel2D:
    model2 = fit_model_2d(stack, settings.t_ref, min_snr=settings.min_snr, adc_bits=adc_bits,
                          bias_model=bias_model)
    model2.hot = hot
    path = model2.write(out_dir / MODEL_2D)
    files.append(path)
    files += _model_aliases(path, {"A_map_2D.fits": model2.fit.amplitude,
                                   "B_map_2D.fits": model2.fit.rate,
                                   "GAMMA_map_2D.fits": model2.fit.gamma},
                            {"A_map_2D.fits": adu.UNIT, "B_map_2D.fits": "1 / deg_C",
                             "GAMMA_map_2D.fits": ""})
    _save(lambda: plotting.drawing(plots.plot_gamma_histogram_data,
                                   plots.gamma_histogram_data(model2)),
          out_dir / "plots" / "gamma_histogram_2d.png", files)
    summary.update({k: v for k, v in model2.headline().items() if k.startswith("gamma")})
    summary["model_2d"] = model2.headline()
    return model2


def _scatter_plots(ev, out_dir: Path, files: list) -> None:
    for (t, x), (real, synth) in ev.samples.items():
        tag = f"T{t:g}_E{x:g}".replace(".", "p")
        _save(plotting.drawing(plots.plot_scatter, real, synth,
                               title=f"2-D model at {number_text(t, 'g')} degC, {x:g} s"),
              out_dir / "plots_2d_comparison" / f"scatter_{tag}.png", files, level="all")


#: Pixels of the deterministic stride sample on which the leave-one-temperature-out models
#: are refitted and the pulls taken (every pixel of a smaller frame): a pull standard
#: deviation from 65536 pixels is known to 1/sqrt(2N) = 0.3 %, and the refits then cost
#: ~1/60 of a 2048 x 2048 frame's (the nonlinear fits have no exact deletion formula, and a
#: one-step update would leave the population values of the faint pixels at the full
#: fit's).  The refits are full fits of the held-out data, their population joint fit
#: warm-started from the full model's population values (``population_start``: the same
#: result within the search's tolerance, in ~3 passes over the pixels instead of 5-8).
LOO_PIXELS = 65536


def _full(stack, rates, out_dir: Path, settings: DarkSettings, adc_bits: int, summary: dict,
          files: list, bias_model=None) -> None:
    e = _e_per_adu(settings, adc_bits)
    counts = hot_pixel_counts(_loaded(rates), n_sigma=settings.hot_threshold, e_per_adu=e,
                              min_rate_e=settings.hot_min_rate)
    files.append(write_csv(counts, out_dir / "hot_pixels.csv"))
    if len(rates) < 2:
        # no temperature model: hot pixels and dark current at the one temperature measured
        hot = write_hot_pixels(rates[0].loaded().rate, out_dir, settings, adc_bits,
                               f"measured rate at {number_text(rates[0].tavg)} degC", files)
        summary["hot_pixels"] = hot.count
        _dark_current(rates, None, e, out_dir, summary, files, hot.mask)
        write_text(json_text(summary, _json), out_dir / "summary.json")
        raise UserError(f"dark frames at a single temperature ({number_text(rates[0].tavg)} degC): "
                        f"masters, rate map and hot pixels written to {out_dir}, but the "
                        "dark-current model in temperature needs at least two")
    # one-exposure rates share the subtracted bias model's error between temperatures
    model = fit_temperature_model(rates, settings.t_ref, adc_bits=adc_bits,
                                  shared_errors=rate_bias_errors(stack, rates, bias_model))
    hot = write_hot_pixels(model.fit.amplitude, out_dir, settings, adc_bits,
                           f"1-D model A at TREF {settings.t_ref:g} degC", files)
    model.hot = hot.mask
    hot.zscore = None  # not read again: a float32 map held through the 2-D fit otherwise
    path = model.write(out_dir / MODEL_1D)
    files.append(path)
    files += _model_aliases(path, {"A_map.fits": model.fit.amplitude, "B_map.fits": model.fit.rate,
                                   "hot_pixels.fits": hot.mask.astype(np.uint8)},
                            {"A_map.fits": adu.RATE_UNIT, "B_map.fits": "1 / deg_C",
                             "hot_pixels.fits": ""})
    release_free_memory()  # the written images' copies
    # the last uses of the rate maps (read back from their files): the leave-one-out refits'
    # pixel sample, the dark-current table and the 1-D figures.  Their files and summary
    # entry keep their place after the evaluation.
    pixels = pixel_sample(stack.shape, LOO_PIXELS)  # the leave-one-out refits' pixels
    # the refits start their population fit from the full model's B (only that float held);
    # made in a background thread from now on, beside the main thread's one-core work on
    # the model's products and then its comparisons (the same refits in the same order)
    holdout_1d = RefitsAhead(refits.holdout_1d(rates, settings, adc_bits, pixels,
                                         float(model.fit.population_rate)),
                             list(stack.groups()))
    try:
        later: list[Path] = []
        dark_current = _dark_current(rates, model, e, out_dir, {}, later, hot.mask)
        _plots_rates(model, rates, counts, out_dir, later)
        rates.clear()  # the caller's list too
        model.fit.chi2 = model.fit.npoints = None  # written, summarised: not read again
        release_free_memory()
        _plots_1d(model, out_dir, later)  # full-frame images drawn without the rate maps held
        head = model.headline()
        summary.update(doubling_temperature_degC=head["doubling_temperature_degC"],
                       doubling_temperature_err_degC=head["doubling_temperature_err_degC"],
                       activation_energy_eV=head["activation_energy_eV"],
                       activation_energy_err_eV=head["activation_energy_err_eV"],
                       b_population_per_degC=head["b_population_per_degC"],
                       b_population_err_per_degC=head["b_population_err_per_degC"],
                       b_median_per_degC=head["b_median_per_degC"],
                       fallback_pixels=head["fallback_pixels"], err_scale_1d=model.err_scale,
                       hot_pixels=hot.count, hot_threshold_adu_s=hot.threshold)
        # every not-hot pixel (choosing by the fit would select by noise): the typical pixel
        # (median over pixels) with its standard error and the dark-signal non-uniformity
        # (spatial std with the fit errors removed, EMVA 1288), both of A at the population B
        summary["dark_rate_at_t_ref_adu_s"] = model.rate_statistics(
            ~hot.mask & np.isfinite(model.fit.amplitude))
        summary["dark_rate_at_t_ref_estimator"] = (
            "A of each not-hot pixel fitted at the population B: median over pixels (error of a "
            "median) and DSNU = spatial std with the fit errors removed; errors include the "
            "population B's")
        summary["hot_pixels_ambiguous"] = _ambiguous_hot(model, hot)
        model.common = None  # written and summarised: A at the population B is not used again
        if e:
            # electrons: the values scale by e-/adu; their errors gain the gain's relative error
            gain = resolve_gain(settings.gain)
            rel = gain.gain_err / gain.gain if math.isfinite(gain.gain_err) else 0.0
            in_adu = summary["dark_rate_at_t_ref_adu_s"]
            summary["dark_rate_at_t_ref_e_s"] = {
                k: (math.hypot(v, in_adu[k[:-4]] * rel) if k.endswith("_err") else v) * e
                for k, v in in_adu.items()}

        exclude = hot.mask | ~np.isfinite(model.fit.amplitude)
        ev1 = evaluate(stack, lambda t, x: model.rate(t) * x, lambda t, x: model.rate_err(t) * x,
                       exclude=exclude, holdout=holdout_1d, pull_pixels=pixels,
                       keep_maps=plotting.wants("all"))
    finally:
        holdout_1d.close()
    _evaluation_products(ev1, "1d", out_dir, files)
    summary["evaluation_1d"] = _eval_summary(ev1)
    del ev1  # its samples and maps are drawn: not held through the 2-D fit
    summary["dark_current"] = dark_current.to_dict("records")
    files += later
    model = holdout_1d = None  # ~8 float32 maps of the 1-D model: not held through the 2-D fit
    release_free_memory()
    exposures = {m.exptime for m in stack.masters}
    if len(exposures) >= 2:
        # written and summarised: the evaluation needs only the prediction's maps
        model2 = _fit_2d(stack, out_dir, settings, adc_bits, hot.mask, summary, files,
                         bias_model).prediction_only()
        release_free_memory()  # the fit's tiles and work maps, the dropped maps
        # the leave-one-out refits' pixels (``pixels``: the same deterministic sample) of
        # every master, in memory: gathered only now, not held through the 2-D fit; read
        # once by refits.holdout_2d, which keeps only the points (not the sample's images)
        holdout_2d = refits.holdout_2d(stack.sample(LOO_PIXELS)[0], settings, adc_bits,
                                       bias_model, refits.population_shape(model2))
        ev2 = evaluate(stack, model2.signal, model2.signal_err,
                       exclude=exclude | ~np.isfinite(model2.fit.amplitude),
                       holdout=holdout_2d, pull_pixels=pixels,
                       keep_maps=plotting.wants("all"))
        holdout_2d = None
        _evaluation_products(ev2, "2d", out_dir, files)
        _scatter_plots(ev2, out_dir, files)
        summary["evaluation_2d"] = _eval_summary(ev2)
    else:
        logger.warning("one exposure time: no 2-D (temperature x exposure) model")


def _plots_rates(model: DarkModel1D, rates, counts, out_dir: Path, files: list) -> None:
    """Figures of the rate maps (a few pixels' rates with the 1-D model; hot-pixel counts)."""
    def pixel_rates():
        pixels = _pixels(model)
        flat = np.array([np.ravel_multi_index(p, model.fit.amplitude.shape) for p in pixels],
                        dtype=np.int64)
        order = np.argsort(flat)
        at = rate_sample(rates, flat[order])  # those pixels only (read back from the files)
        values, errors = (np.empty((len(rates), flat.size), np.float32) for _ in range(2))
        for k, r in enumerate(at):
            values[k, order], errors[k, order] = r.rate[0], r.rate_err[0]
        return plotting.drawing(plots.plot_pixel_rates_data,
                                plots.pixel_rates_data([r.tavg for r in rates], values, errors,
                                                       model, pixels))
    _save(pixel_rates, out_dir / "plots" / "dark_rate_vs_temperature_pixels.png", files)
    _save(plotting.drawing(plots.plot_hot_pixel_counts, counts),
          out_dir / "plots" / "hot_pixels_vs_temperature.png", files)


def _plots_1d(model: DarkModel1D, out_dir: Path, files: list) -> None:
    """Figures of the 1-D model's maps."""
    for which, name in (("a", "dark_A_map.png"), ("b", "dark_B_map.png"),
                        ("td", "doubling_temperature_map.png"),
                        ("ea", "activation_energy_map.png")):
        _save(lambda: plotting.drawing(plots.plot_model_map_data,
                                       plots.model_map_data(model, which)),
              out_dir / "plots" / name, files)
    _save(lambda: plotting.drawing(plots.plot_doubling_histogram_data,
                                   plots.doubling_histogram_data(model)),
          out_dir / "plots" / "doubling_temperature_hist.png", files)


def _bias_for_synthetic(settings: DarkSettings, model_dir: Path, tag: str) -> BiasModel | None:
    """The bias model added to synthetic darks: ``--bias-model`` (a file, or the bias
    pipeline's output folder), which must exist, else the model folder's
    ``bias_model.fits`` when there is one, else None (dark signal only)."""
    if settings.bias_model:
        return BiasModel.read(resolve_bias_model(settings.bias_model, tag))
    candidate = model_dir / "bias_model.fits"
    return BiasModel.read(candidate) if candidate.is_file() else None


def _synthetic(mode: str, model_dir: Path, out_dir: Path, settings: DarkSettings, summary: dict,
               files: list, bias: BiasModel | None) -> None:
    summary["bias_included"] = bias is not None
    if mode == "synthetic_only":
        model = DarkModel1D.read(model_dir / MODEL_1D)
        for t in settings.temps:
            files.append(write_rate_map(model, t, out_dir / "synthetic"))
            for x in settings.exptimes:
                files.append(write_synthetic_frame(model, bias, t, x, grid_path(
                    out_dir / "synthetic", t, x, "1d")))
    elif mode == "synthetic_2d":
        model2 = DarkModel2D.read(model_dir / MODEL_2D)
        for t in settings.temps:
            for x in settings.exptimes:
                files.append(write_synthetic_frame(model2, bias, t, x, grid_path(out_dir, t, x)))
    else:
        model2 = DarkModel2D.read(model_dir / MODEL_2D)
        files.append(write_synthetic_frame(model2, bias, settings.temp_single,
                                           settings.exptime_single,
                                           single_path(out_dir, settings.temp_single,
                                                       settings.exptime_single)))
    summary["synthetic_files"] = [p.relative_to(out_dir).as_posix() for p in files]
    if not math.isfinite(settings.temp_single):
        raise ConfigError("temp_single must be finite")


__all__ = ["DarkSettings", "DarkResult", "run", "measure", "MODES"]
