"""Operation analysis: sequences recorded while the sensor works under the beam.

:func:`run` states the order once.  For every ``<x>kRads`` folder of the
input (or those named): find its frames (``fits/``, else convert ``frames/*.raw``
or ``*.raw`` with the shared converter, ``CALTYPE = 'OPER'``), order them and
take times since the first frame; check the radiation and power logs; then

1. temporal statistics and per-frame outliers and events, streamed in two
   passes (:mod:`.transients`);
2. the radiation series at the frame times on one zero point (:mod:`.radiation`);
3. Pearson r (with its Fisher-z error, 95 % interval and p-value) and the
   least-squares line (with standard errors; the old constant fallback when
   no line can be fitted) of outlier pixels and of events per frame against
   the radiation series;
4. products, written atomically::

       OUT/<x>kRads/frame_metrics.csv        one row per frame
       OUT/<x>kRads/correlation.csv          r, its errors, p, fit with errors
       OUT/<x>kRads/cumulative_outliers.fits union of outlier masks (uint8) + NOUTLIER,
                                             TMEAN, TSIGMA, NACCEPT extensions
       OUT/<x>kRads/cumulative_outliers.png, metrics.png, rad_vs_outliers.png (when a
       radiation log covers frames),
       intensity_stats.png, first_last.png, frames.gif, outliers.gif (+ .mp4 with ffmpeg)
       OUT/operation_summary.csv             one row per folder, with status and reason
       OUT/config_used.json

A folder that cannot be analysed (no frames, fewer than ``min_frames``,
unreadable frames) gets a ``failed`` row with the reason and a warning; when
none can, the run stops with one line (exit status 2) before writing
anything.  A folder without a usable log is analysed and its correlation row
says why there is none.  A re-run skips folders whose inputs and settings
are unchanged (``summary.json`` per folder).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.table import Table

from utils import adu
from utils import headers as kw
from utils.errors import FrameError, InputPathError, TableError
from utils.io.conversion import ConversionSettings, convert_folder
from utils.io.discovery import FITS_DIR, FRAMES_DIR, RAW_SUFFIXES
from utils.io.fitsio import provenance_cards, save_figure, set_card, write_csv, write_hdul
from utils.io.radiation_log import (
    POWER_LOG_NAME,
    find_radiation_log,
    read_power_log,
    read_radiation_log,
)
from utils.io.tokens import folder_dose
from utils.models.correlation import fit_line, pearson
from utils.run_record import completed_run, write_run_summary
from utils.settings import dump_settings
from utils.settings import field as sfield

from . import plots_operation as plots
from .animation import note_missing_ffmpeg, write_animations
from .radiation import RADIATION_CHOICES, power_on_frame_axis, radiation_at_frames
from .sequence import FrameSequence, read_sequence
from .transients import TransientResult, TransientSettings, find_transients

logger = logging.getLogger(__name__)

#: Calibration type written on converted operation frames.
CALTYPE = "OPER"
SUMMARY_CSV = "operation_summary.csv"
COUNT_COLUMNS = {"outlier pixels": "N_OUTLIERS", "events": "N_EVENTS",
                 "transients": "N_TRANSIENTS"}


@dataclass(frozen=True)
class OperationSettings:
    """Settings of the operation analysis (written to ``config_used.json``)."""

    transients: TransientSettings = sfield(TransientSettings(), "outlier and event detection")
    radiation: str = sfield("auto", "radiation series: auto (RadiationLevel, else the rate "
                                    "from Dose), level, dose-rate or dose")
    min_frames: int = sfield(3, "sequences with fewer frames are flagged, not analysed")
    fps: float = sfield(8.0, "[1/s] frame rate of the animations")
    workers: int = sfield(1, "processes converting raw frames")

    def __post_init__(self):
        if self.radiation not in RADIATION_CHOICES:
            raise ValueError(f"radiation must be one of {', '.join(RADIATION_CHOICES)}")
        if self.min_frames < 3:
            raise ValueError("min_frames must be >= 3 (a temporal sigma needs 3 frames)")
        if not self.fps > 0 or self.workers < 1:
            raise ValueError("fps must be > 0 and workers >= 1")


@dataclass
class Dataset:
    """One operation sequence folder, checked but not yet analysed."""

    name: str
    folder: Path
    frames: list = field(default_factory=list)
    raw: list = field(default_factory=list)
    log: Path | None = None
    power: Path | None = None
    problem: str = ""


@dataclass
class DatasetResult:
    """Outcome of one folder: its summary row and files."""

    name: str
    status: str                  # analysed, existing, failed
    reason: str
    row: dict
    files: list = field(default_factory=list)


@dataclass
class OperationResult:
    """What a run produced."""

    out_dir: Path
    datasets: list

    def summary_line(self) -> str:
        """One line: what was written where."""
        done = [d for d in self.datasets if d.status in ("analysed", "existing")]
        failed = [d for d in self.datasets if d.status == "failed"]
        parts = []
        for d in done:
            r = d.row.get("R_TRANSIENTS", math.nan)
            parts.append(f"{d.name}: {d.row.get('N_FRAMES', 0)} frames, r(transients, "
                         f"{d.row.get('RADIATION') or 'radiation'}) = "
                         + (f"{r:.3f} ± {d.row.get('R_TRANSIENTS_ERR', math.nan):.3f}"
                            if isinstance(r, float) and math.isfinite(r) else "n/a"))
        text = f"operation analysis: {len(done)} sequence(s) analysed"
        if parts:
            text += " (" + "; ".join(parts) + ")"
        if failed:  # after the analysed ones: '(...) (...)' read as one list
            flagged = "; ".join(f"{d.name}: {d.reason}" for d in failed)
            text += f"; {len(failed)} flagged ({flagged})"
        return text + f"; products in {self.out_dir}"


def find_datasets(input_dir: str | os.PathLike, names=None) -> list[Path]:
    """The sequence folders: sub-folders named like ``<x>kRads``, or exactly ``names``.

    Raises
    ------
    InputPathError
        ``input_dir`` is missing, a named folder does not exist, or no folder matches.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise InputPathError(f"{root}: input folder does not exist; give the Operation folder "
                             "holding <x>kRads sub-folders")
    if names:
        folders = [root / n for n in names]
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise InputPathError(f"{missing[0]}: no such dataset folder (from --datasets); "
                                 f"check the name")
        return folders
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not math.isnan(
        folder_dose(p.name))), key=lambda p: (folder_dose(p.name), p.name))
    if not folders:
        raise InputPathError(f"{root}: no <x>kRads sub-folders (e.g. 10kRads) to analyse; give "
                             "the Operation folder or name datasets with --datasets")
    return folders


def _raw_files(folder: Path) -> list[Path]:
    where = folder / FRAMES_DIR if (folder / FRAMES_DIR).is_dir() else folder
    return sorted(p for p in where.iterdir() if p.is_file() and p.suffix.lower() in RAW_SUFFIXES
                  and not p.name.startswith("."))


def inspect_dataset(folder: Path, settings: OperationSettings) -> Dataset:
    """Find a folder's frames and logs without converting or reading pixels."""
    ds = Dataset(folder.name, folder)
    fits_dir = folder / FITS_DIR
    if fits_dir.is_dir():
        ds.frames = sorted(p for p in fits_dir.iterdir() if p.suffix.lower() in (".fits", ".fit")
                           and not p.name.startswith("."))
    if not ds.frames:
        ds.raw = _raw_files(folder)
    n = len(ds.frames) or len(ds.raw)
    if n == 0:
        ds.problem = f"no frames (neither {FITS_DIR}/*.fits nor raw files)"
    elif n < settings.min_frames:
        ds.problem = f"{n} frame{'s' if n > 1 else ''}: need at least {settings.min_frames}"
    ds.log = find_radiation_log(folder)
    power = folder / POWER_LOG_NAME
    ds.power = power if power.is_file() else None
    return ds


def _digest(ds: Dataset, settings: OperationSettings) -> str:
    import hashlib

    digest = hashlib.sha1(repr(settings).encode())
    for path in list(ds.frames) + [p for p in (ds.log, ds.power) if p is not None]:
        st = Path(path).stat()
        digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def correlate(x: np.ndarray, table: pd.DataFrame) -> tuple[dict, dict]:
    """Pearson r and line fit of each count column of ``table`` against ``x``."""
    corrs, fits_ = {}, {}
    for name, column in COUNT_COLUMNS.items():
        y = table[column].to_numpy(float)
        corrs[name] = pearson(x, y)
        fits_[name] = fit_line(x, y)
    return corrs, fits_


def correlation_table(series_name: str, unit: str, corrs: dict, fits_: dict,
                      problem: str) -> pd.DataFrame:
    """``correlation.csv``: one row per count type."""
    rows = []
    for name in COUNT_COLUMNS:
        c, f = corrs[name], fits_[name]
        rows.append({"COUNT": name, "SERIES": series_name, "UNIT": unit, "N": c.n,
                     "R": c.r, "R_ERR": c.stderr, "R_CI95_LOW": c.ci_low,
                     "R_CI95_HIGH": c.ci_high, "P_VALUE": c.p_value,
                     "SLOPE": f.slope, "SLOPE_ERR": f.slope_err, "INTERCEPT": f.intercept,
                     "INTERCEPT_ERR": f.intercept_err, "FIT_METHOD": f.method,
                     "NOTE": problem or c.reason})
    return pd.DataFrame(rows)


def write_cumulative_fits(result: TransientResult, seq: FrameSequence, path: Path) -> Path:
    """``cumulative_outliers.fits``: primary uint8 union (1 = outlier in some frame)."""
    header = fits.Header()
    for key, value, comment in provenance_cards("CUMULATIVE_OUTLIERS"):
        set_card(header, key, value, comment)
    set_card(header, "NFRAMES", len(seq), "frames in the sequence")
    set_card(header, "THRESH", float(result.threshold), "[sigma] outlier threshold")
    set_card(header, "SIGFLOOR", float(result.sigma_floor), "[adu] floor of the temporal sigma")
    set_card(header, "NOUTPIX", int(result.cumulative.sum()), "pixels outlier in any frame")
    set_card(header, "COMMENT", "1 = outlier (|x - mean| > THRESH sigma) in at least one frame")
    for key, value, comment in adu.scaling_cards(seq.adc_bits):
        set_card(header, key, value, comment)
    primary = fits.PrimaryHDU(result.cumulative.astype(np.uint8), header)
    primary.header[kw.BUNIT] = ("", "0/1 flag")
    hdus = [primary]
    set_card(header, "PILOTN", int(min(len(seq), TransientSettings().pilot_frames)),
             "frames of the robust pilot (median, MAD)")
    for name, data, unit, comment in (
            ("NOUTLIER", result.outlier_frames.astype(np.int32), "", "frames with this pixel "
             "an outlier"),
            ("TMEAN", result.stats.mean, adu.UNIT, "temporal mean (clipped) of the sequence"),
            ("TSIGMA", result.stats.std, adu.UNIT, "temporal sigma (clipped, ddof=1)"),
            ("NACCEPT", result.stats.count.astype(np.int32), "", "samples in TMEAN/TSIGMA")):
        hdu = fits.ImageHDU(data, name=name)
        hdu.header[kw.BUNIT] = (unit, comment)
        hdus.append(hdu)
    inputs = Table({"FILE": [p.name for p in seq.paths], "FRAME": seq.frame_numbers,
                    "TIME": seq.times, "N_OUTLIERS": result.table["N_OUTLIERS"].to_numpy()})
    inputs["TIME"].unit = "s"
    hdus.append(fits.BinTableHDU(inputs, name="INPUTS"))
    return write_hdul(fits.HDUList(hdus), path)


def _captions(seq: FrameSequence, table: pd.DataFrame, idx: np.ndarray, values: np.ndarray,
              name: str, unit: str, dataset: str) -> tuple[list, list]:
    times = seq.times
    frames, outl = [], []
    for i in idx:
        t = f"t = {times[i]:.1f} s" if math.isfinite(times[i]) else f"frame {i}"
        rad = f", {name} {values[i]:.3g} {unit}" if math.isfinite(values[i]) else ""
        frames.append(f"{dataset}  {t}{rad}")
        outl.append(f"{dataset}  {t}: {int(table['N_OUTLIERS'].iloc[i])} outlier pixels, "
                    f"{int(table['N_TRANSIENTS'].iloc[i])} transients")
    return frames, outl


def analyse_dataset(ds: Dataset, out_dir: Path, settings: OperationSettings, *,
                    progress_bar: bool = False) -> DatasetResult:
    """Analyse one checked folder and write its products into ``out_dir / ds.name``."""
    target = out_dir / ds.name
    if ds.raw:
        report = convert_folder(ds.folder, CALTYPE, ConversionSettings(workers=settings.workers),
                                progress_bar=progress_bar)
        ds.frames = sorted(Path(r["PATH"]) for r in report.rows if r.get("PATH"))
        logger.info("%s: converted %d raw frames to %s/", ds.folder, report.count("converted"),
                    FITS_DIR)
    digest = _digest(ds, settings)
    previous = completed_run(target, digest)
    if previous is not None:
        logger.info("%s: unchanged since the last run; products kept", target)
        return DatasetResult(ds.name, "existing", "", previous.get("row", {}),
                             [target / f for f in previous.get("files", [])])
    seq = read_sequence(ds.frames)
    if len(seq) < settings.min_frames:
        reason = (f"{len(seq)} readable frame(s): need at least {settings.min_frames}"
                  + (f" ({seq.unreadable[0][0]}: {seq.unreadable[0][1]})" if seq.unreadable
                     else ""))
        return DatasetResult(ds.name, "failed", reason, {})
    log = None
    log_problem = ""
    if ds.log is not None:
        try:
            log = read_radiation_log(ds.log, need="any")
        except TableError as err:
            log_problem = str(err)
            logger.warning("%s", err)
        if log is not None and log.problems:
            logger.warning("%s: %d unusable cells (e.g. %s)", ds.log, len(log.problems),
                           log.problems[0])
    radiation = radiation_at_frames(log, seq, settings.radiation)
    if log_problem:
        radiation.problem = log_problem
    if radiation.problem:
        logger.warning("%s: %s; no correlation with radiation", ds.folder, radiation.problem)
    power = None
    if ds.power is not None:
        try:
            power = power_on_frame_axis(read_power_log(ds.power), seq)
        except TableError as err:
            logger.warning("%s; power log not plotted", err)
    try:
        result = find_transients(seq, settings.transients, progress_bar=progress_bar)
    except FrameError as err:
        return DatasetResult(ds.name, "failed", f"{err.path}: {err.reason}", {})
    table = result.table
    table.insert(0, "INDEX", np.arange(len(seq)))
    # frame numbers are whole (a frame without FRAMENUM stays empty): '0', not '0.0'
    table.insert(1, "FRAME", pd.Series(np.round(seq.frame_numbers)).astype("Int64"))
    table.insert(2, "PATH", [str(p) for p in seq.paths])
    table.insert(3, "TIMESTAMP", seq.timestamps)
    table.insert(4, "TIME", seq.times)
    table.insert(5, "TEMP", seq.temperatures)
    table["RADIATION"] = radiation.values
    table["RAD_COVERED"] = radiation.covered
    table["DOSE"] = radiation.dose
    x = np.where(radiation.covered, radiation.values, np.nan) if not radiation.problem else \
        np.full(len(seq), np.nan)
    corrs, fits_ = correlate(x, table)
    files = [write_csv(table, target / "frame_metrics.csv"),
             write_csv(correlation_table(radiation.name, radiation.unit, corrs, fits_,
                                         radiation.problem), target / "correlation.csv"),
             write_cumulative_fits(result, seq, target / "cumulative_outliers.fits")]
    files.append(save_figure(plots.plot_cumulative_outliers(result.outlier_frames,
                                                            len(seq)).figure,
                             target / "cumulative_outliers.png"))
    axes = plots.plot_metrics(table, radiation, power)
    files.append(save_figure(axes[0].figure, target / "metrics.png"))
    xlabel = (f"{radiation.name} at frame time [{radiation.unit}]" if radiation.name
              else "radiation [n/a]")
    if np.isfinite(x).any():
        axes = plots.plot_rad_vs_outliers(x, {k: table[c].to_numpy(float) for k, c in
                                              COUNT_COLUMNS.items()}, corrs, fits_,
                                          xlabel=xlabel)
        files.append(save_figure(axes[0].figure, target / "rad_vs_outliers.png"))
    else:  # no radiation value at any frame: three empty panels say nothing (the log says why)
        (target / "rad_vs_outliers.png").unlink(missing_ok=True)
    files.append(save_figure(plots.plot_intensity_stats(table).figure,
                             target / "intensity_stats.png"))
    times = seq.times
    axes = plots.plot_first_mean_last(result.first, result.stats.mean, result.last,
                                      times=(float(times[0]), float(times[-1])))
    files.append(save_figure(axes[0].figure, target / "first_last.png"))
    cap_frames, cap_outliers = _captions(seq, table, result.display_index, radiation.values,
                                         radiation.name, radiation.unit, ds.name)
    finite = result.display_frames[np.isfinite(result.display_frames)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    common = dict(fps=settings.fps, factor=result.display_factor)
    files += write_animations(result.display_frames, cap_frames, target / "frames.gif",
                              unit=adu.UNIT, label="signal", title=f"{ds.name} frames",
                              vmin=float(lo), vmax=float(max(hi, lo + 1)), **common)
    top = outlier_colour_limit(result.display_outliers, result.threshold)
    files += write_animations(result.display_outliers, cap_outliers, target / "outliers.gif",
                              unit="sigma", label="|x - mean| / sigma of outliers",
                              title=f"{ds.name} outlier pixels", vmin=0.0, vmax=top,
                              cmap="inferno", **common)
    c_ev, f_ev = corrs["transients"], fits_["transients"]
    c_px = corrs["outlier pixels"]
    row = {"DATASET": ds.name, "STATUS": "analysed",
           "REASON": radiation.problem or "", "N_FRAMES": len(seq),
           "DURATION_S": float(np.nanmax(times)) if np.isfinite(times).any() else math.nan,
           "FRAME_INTERVAL_S": seq.frame_interval, "ORDER": seq.order_source,
           "CONVERTED": bool(ds.raw), "RADIATION": radiation.name, "RAD_UNIT": radiation.unit,
           "N_COVERED": radiation.n_covered, "THRESHOLD_SIGMA": result.threshold,
           "N_OUTLIER_PIXELS": int(result.cumulative.sum()),
           "MEAN_OUTLIERS_PER_FRAME": float(table["N_OUTLIERS"].mean()),
           "MEAN_EVENTS_PER_FRAME": float(table["N_EVENTS"].mean()),
           "MEAN_TRANSIENTS_PER_FRAME": float(table["N_TRANSIENTS"].mean()),
           "R_TRANSIENTS": c_ev.r, "R_TRANSIENTS_ERR": c_ev.stderr,
           "P_TRANSIENTS": c_ev.p_value, "SLOPE_TRANSIENTS": f_ev.slope,
           "SLOPE_TRANSIENTS_ERR": f_ev.slope_err, "INTERCEPT_TRANSIENTS": f_ev.intercept,
           "INTERCEPT_TRANSIENTS_ERR": f_ev.intercept_err,
           "FIT_METHOD": f_ev.method, "R_PIXELS": c_px.r, "R_PIXELS_ERR": c_px.stderr,
           "P_PIXELS": c_px.p_value}
    write_run_summary(target, {"dataset": ds.name, "row": row}, files, digest)
    return DatasetResult(ds.name, "analysed", row["REASON"], row, files)


def outlier_colour_limit(outliers: np.ndarray, threshold: float) -> float:
    """Upper colour limit of the outlier animation [sigma]: the 90th percentile of the outlier
    pixels' ``|z|``, at least twice the threshold.

    The brightest hits (hundreds of sigma) then saturate instead of setting the scale, where
    the typical hit of 10-100 sigma was drawn nearly black.

    Examples
    --------
    >>> z = np.zeros(1000); z[:99] = 20.0; z[99] = 850.0
    >>> outlier_colour_limit(z, 5.0)
    20.0
    """
    values = np.asarray(outliers, dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    top = float(np.percentile(values, 90)) if values.size else 0.0
    return max(top, 2.0 * float(threshold))


#: Whole-number columns of the summary table (pandas makes them float next to a failed row).
COUNT_SUMMARY_COLUMNS = ("N_FRAMES", "N_COVERED", "N_OUTLIER_PIXELS")


def run(input_dir: str | os.PathLike, output_dir: str | os.PathLike,
        settings: OperationSettings = OperationSettings(), *, datasets=None,
        progress_bar: bool = False) -> OperationResult:
    """Analyse every operation sequence of ``input_dir`` into ``output_dir``.

    Raises
    ------
    InputPathError
        No dataset folder, or none that can be analysed (one line naming each reason).
    """
    out_dir = Path(output_dir)
    checked = [inspect_dataset(f, settings) for f in find_datasets(input_dir, datasets)]
    usable = [d for d in checked if not d.problem]
    if not usable:
        reasons = "; ".join(f"{d.name}: {d.problem}" for d in checked)
        raise InputPathError(f"{Path(input_dir)}: no sequence can be analysed ({reasons})")
    for d in checked:
        if d.problem:
            logger.warning("%s: %s; flagged in %s", d.folder, d.problem, SUMMARY_CSV)
        elif d.log is None:  # a folder without frames is not analysed: its log is moot
            logger.warning("%s: no radiation log (radiationLog*.csv); outliers are analysed, "
                           "the correlation with radiation is not", d.folder)
    dump_settings(out_dir, operation=settings, input_dir=str(Path(input_dir).resolve()))
    note_missing_ffmpeg()
    results = []
    for d in checked:
        if d.problem:
            results.append(DatasetResult(d.name, "failed", d.problem, {}))
            continue
        res = analyse_dataset(d, out_dir, settings, progress_bar=progress_bar)
        if res.status == "failed":
            logger.warning("%s: %s; flagged in %s", d.folder, res.reason, SUMMARY_CSV)
        results.append(res)
    rows = [dict(r.row) if r.row else {"DATASET": r.name, "STATUS": r.status,
                                       "REASON": r.reason} for r in results]
    for row, r in zip(rows, results):
        row["STATUS"] = r.status
    table = pd.DataFrame(rows)
    for column in COUNT_SUMMARY_COLUMNS:  # counts stay whole beside a failed row's blanks
        if column in table:
            table[column] = table[column].astype("Int64")
    write_csv(table, out_dir / SUMMARY_CSV)
    return OperationResult(out_dir, results)


__all__ = ["OperationSettings", "OperationResult", "run", "outlier_colour_limit", "find_datasets",
           "inspect_dataset", "analyse_dataset", "correlate", "SUMMARY_CSV"]
