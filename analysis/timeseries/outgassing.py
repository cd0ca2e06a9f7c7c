"""Outgassing / destruction analysis: flat degradation and outlier pixels over time.

:func:`run` states the order once:

1. frames from a folder of converted FITS or an index CSV; bias and dark
   frames flagged BADFITS (zero fraction, unreadable) are listed in
   ``suspicious_bias.log`` / ``suspicious_darks.log``;
2. flats are valid when not BADFITS, not saturated (fraction of pixels at
   the header's ``SATLEVEL``, not a hard-coded 60000) and timed (a time
   stamp of 0 is a time, not "missing");
3. with ``--calibrate``, each flat minus the dark master of its exposure
   nearest in temperature (within 1 degC and 0.1 s), else the bias master;
   each flat normalised by its median (the old code used the maximum, which
   one hot pixel or cosmic ray sets) and written to ``flats_norm/`` (or
   ``flats_norm_reduced/``);
4. *by temperature*: per temperature bin (and exposure), flats in time order,
   the earliest is the reference; every later flat is compared with it
   (:mod:`.flat_compare`): a pixel is an outlier when its significance
   ``|z|`` (difference over the noise the flats themselves show) passes the
   comparison's threshold; label ``T<bin>``;
5. *ignoring temperature*: the same over all valid flats in time order, label
   ``IgnoreTemp``;
6. each outlier pixel is classified from its labels and times
   (:mod:`.classification`: Sensor Damage, Likely Sensor, Temperature).

Products (old names) in OUT: ``analysis_flats.csv``, ``analysis_outliers.csv``,
``suspicious_bias.log``, ``suspicious_darks.log``, ``flats_norm[_reduced]/``,
``analysis_by_temperature/T_<T>/diffmap_<time>.png``,
``analysis_by_time_ignore_temp/diffmap_<time>.png``, ``summary_plots/``
(outliers_vs_time, outliers_vs_temperature, mean_std_vs_time,
mean_std_vs_temp), ``sensor_plane_outliers/`` (outliers_T<T>.png,
all_outliers_sensor_plane.png), ``masters/`` (with --calibrate),
``config_used.json``, ``summary.json``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from utils.errors import FrameError, InputPathError
from utils.io.fitsio import (
    provenance_cards,
    save_figure,
    set_card,
    write_csv,
    write_product,
    write_text,
)
from utils.progress import progress
from utils.run_record import write_run_summary
from utils.settings import dump_settings, field
from utils.stack.master import CombineSettings

from . import plots_flats as plots
from .classification import IGNORE_TEMP, classify
from .flat_compare import CompareSettings, FlatDifference, compare_flats
from .inputs import inputs_digest, previous_run
from .reduction import flats_of, load_flat, reducer_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutgassingSettings:
    """Settings of the outgassing/destruction analysis (written to ``config_used.json``)."""

    compare: CompareSettings = field(CompareSettings(), "flat comparison; a pixel is an "
                                     "outlier when |z| passes the seed threshold")
    temp_bin: float = field(1.0, "[degC] largest temperature span of one bin (the old code "
                                 "rounded to 0.1 degC, splitting one set point with jitter)")
    exp_tolerance: float = field(0.01, "largest relative exposure span of one group")
    max_saturated: float = field(0.01, "largest fraction of pixels at SATLEVEL in a valid flat "
                                               "(fewer are hot pixels or hits, masked)")
    calibrate: bool = field(False, "subtract the dark (else bias) master at each flat's "
                                   "temperature")
    temp_tolerance: float = field(1.0, "[degC] largest flat-master temperature difference")
    dark_exp_tolerance: float = field(0.1, "[s] largest flat-dark exposure difference")
    save_normalised: bool = field(True, "write every normalised flat (flats_norm/)")
    combine: CombineSettings = field(CombineSettings(), "combination of the bias/dark masters")

    def __post_init__(self):
        if not self.temp_bin > 0 or self.exp_tolerance < 0 or not 0 <= self.max_saturated <= 1:
            raise ValueError("temp_bin must be > 0, exp_tolerance >= 0, max_saturated in 0..1")
        if self.temp_tolerance < 0 or self.dark_exp_tolerance < 0:
            raise ValueError("tolerances must be >= 0")


@dataclass
class OutgassingResult:
    """What a run produced."""

    out_dir: Path
    flats: pd.DataFrame
    outliers: pd.DataFrame
    files: list

    def summary_line(self) -> str:
        """One line: what was written where."""
        counts = self.outliers["classification"].value_counts().to_dict() \
            if len(self.outliers) else {}
        classes = ", ".join(f"{n} {c}" for c, n in sorted(counts.items())) or "none"
        done = int((self.flats["status"] == "compared").sum()) if len(self.flats) else 0
        return (f"outgassing analysis: {done} comparisons, {len(self.outliers)} outlier pixels "
                f"({classes}); {len(self.files)} files in {self.out_dir}")


def _stamp(t: float) -> str:
    return f"{t:.3f}".replace(".", "_").replace(" ", "_")


def suspicious_log(rows: pd.DataFrame, what: str) -> str:
    """Text of ``suspicious_bias.log`` / ``suspicious_darks.log``."""
    lines = [f"# {what} frames flagged BADFITS (zero fraction above the index limit, or "
             "unreadable); excluded from the masters"]
    for _, r in rows.iterrows():
        zf = r.get("ZEROFRACTION")
        zf_text = f"{100 * float(zf):.2f}%" if pd.notna(zf) else "n/a"
        lines.append(f"{r['PATH']} -> Zero fraction = {zf_text} ({r.get('REASON') or ''})")
    return "\n".join(lines) + "\n"


def write_normalised(image: np.ndarray, level: float, source: str, note: str,
                     path: Path) -> Path:
    """A flat divided by its median, with provenance (``NORMLVL`` = the median [adu])."""
    header = fits.Header()
    for key, value, comment in provenance_cards("FLAT_NORMALISED"):
        set_card(header, key, value, comment)
    set_card(header, "NORMLVL", float(level), "[adu] median the flat was divided by")
    set_card(header, "NORMMETH", "median", "normalisation (old code: maximum)")
    set_card(header, "SRCFILE", Path(source).name, "flat normalised")
    set_card(header, "REDUCED", note or "none", "what was subtracted before normalising")
    return write_product(path, image / np.float32(level), header, unit="")


class _Outliers:
    """Outlier pixels found so far: (row, col) -> list of (label, time)."""

    def __init__(self):
        self.hits: dict[tuple[int, int], list] = {}

    def add(self, fd: FlatDifference, label: str, time: float) -> np.ndarray:
        mask = np.abs(np.nan_to_num(fd.z)) > fd.threshold
        points = np.argwhere(mask)
        for r, c in points:
            self.hits.setdefault((int(r), int(c)), []).append((label, float(time)))
        return points

    def table(self) -> pd.DataFrame:
        rows = []
        for (r, c), items in sorted(self.hits.items()):
            labels = [lab for lab, _ in items]
            times = [t for _, t in items]
            conditions = sorted(set(labels) - {IGNORE_TEMP})
            rows.append({"pixel": f"({r},{c})", "row": r, "col": c,
                         "num_occurrences": len(items),
                         "temp_labels": ";".join(sorted(set(labels))),
                         "times": ";".join(f"{t:.3f}" for t in sorted(set(times))),
                         "n_conditions": len(conditions), "n_times": len(set(times)),
                         "classification": classify(labels, times)})
        # typed even when empty: a stable sequence has no outlier pixel, and untyped (object)
        # columns made the sensor-plane figure fail with a traceback
        return pd.DataFrame(rows, columns=["pixel", "row", "col", "num_occurrences",
                                           "temp_labels", "times", "n_conditions", "n_times",
                                           "classification"]).astype(
            {"row": "int64", "col": "int64", "num_occurrences": "int64",
             "n_conditions": "int64", "n_times": "int64"})


def run(basepath: str | os.PathLike, output_dir: str | os.PathLike,
        settings: OutgassingSettings = OutgassingSettings(), *,
        progress_bar: bool = False) -> OutgassingResult:
    """Flat degradation and outlier pixels of ``basepath`` (folder of FITS or index CSV).

    Raises
    ------
    InputPathError
        No frames, no valid flat, or fewer than two valid flats.
    """
    out_dir = Path(output_dir)
    index, flats, save_index = flats_of(basepath, out_dir, settings, progress_bar=progress_bar)
    valid = flats[flats["STATUS"] == "valid"]
    if len(valid) < 2:
        why = "; ".join(sorted(set(flats["STATUS"]))) if len(flats) else "no FLAT frames"
        raise InputPathError(f"{basepath}: {len(valid)} valid flat(s); the analysis compares "
                             f"flats over time and needs at least two ({why})")
    save_index()
    digest = inputs_digest(index, settings)
    if (previous := previous_run(out_dir, digest)) is not None:
        return OutgassingResult(out_dir, pd.read_csv(out_dir / "analysis_flats.csv"),
                                pd.read_csv(out_dir / "analysis_outliers.csv"),
                                [out_dir / f for f in previous["files"]])
    dump_settings(out_dir, outgassing=settings, basepath=str(Path(basepath).resolve()))
    files: list[Path] = []
    bad = index[index["BADFITS"].astype(bool)]
    files.append(write_text(suspicious_log(bad[bad["CALTYPE"] == "BIAS"], "bias"),
                            out_dir / "suspicious_bias.log"))
    files.append(write_text(suspicious_log(bad[bad["CALTYPE"] == "DARK"], "dark"),
                            out_dir / "suspicious_darks.log"))
    reducer = None
    if settings.calibrate:
        reducer = reducer_for(settings, index, out_dir, progress_bar=progress_bar)
    norm_dir = out_dir / ("flats_norm_reduced" if settings.calibrate else "flats_norm")
    multi_exp = valid.groupby("TBIN")["EXPGROUP"].nunique().max() > 1
    outliers = _Outliers()
    records: list[dict] = []
    shape = None
    written_norm: set[str] = set()

    def load(row) -> tuple[np.ndarray | None, str]:
        subtract, note = None, ""
        if reducer is not None:
            entry, note = reducer.choose(float(row["TEMP"]), float(row["EXPTIME"]))
            if entry is None:
                return None, f"not calibrated: {note}"
            subtract = reducer.image(entry)
            note = f"{note}: {entry.path.name}"
        try:
            return load_flat(row["PATH"], subtract), note
        except FrameError as err:
            return None, f"unreadable: {err.reason}"

    def sequence(rows: pd.DataFrame, kind: str, label_of, folder_of):
        nonlocal shape
        reference = ref_image = None
        for _, row in rows.iterrows():
            image, note = load(row)
            temp = float(row["TBIN"]) if kind == "by_temperature" else round(float(row["TEMP"]),
                                                                               1)
            base = {"analysis_type": kind, "approx_temp": temp, "file_path": row["PATH"],
                    "time_header": float(row["TIMESTAMP"]), "reduction": note}
            if image is None:
                records.append({**base, "status": note})
                continue
            shape = image.shape
            level = float(np.nanmedian(image))
            base.update(mean_flat=float(np.nanmean(image)), std_flat=float(np.nanstd(image)),
                        level_adu=level)
            if settings.save_normalised and kind == "by_temperature" and level > 0 \
                    and row["PATH"] not in written_norm:
                files.append(write_normalised(image, level, row["PATH"], note,
                                              norm_dir / f"{Path(row['PATH']).stem}_norm.fits"))
                written_norm.add(row["PATH"])
            if reference is None:
                reference, ref_image = row, image
                records.append({**base, "status": "reference", "reference": row["PATH"],
                                "dt_s": 0.0})
                continue
            try:
                fd = compare_flats(image, ref_image, settings.compare)
            except ValueError as err:
                records.append({**base, "status": f"not compared: {err}",
                                "reference": reference["PATH"]})
                continue
            points = outliers.add(fd, label_of(row), float(row["TIMESTAMP"]))
            dt = float(row["TIMESTAMP"] - reference["TIMESTAMP"])
            records.append({**base, "status": "compared", "reference": reference["PATH"],
                            "dt_s": dt, "n_outliers": len(points), "std_diff": fd.robust_std,
                            "threshold_sigma": fd.threshold, "noise_alpha": fd.alpha,
                            "noise_beta": fd.beta, "label": label_of(row)})
            title = (f"{Path(row['PATH']).name} - {Path(reference['PATH']).name} "
                     f"({label_of(row)}, +{dt / 3600:.1f} h)\n{len(points)} outlier pixels "
                     f"above {fd.threshold:.1f} sigma")
            ax = plots.plot_difference(fd, title=title, points=points)
            files.append(save_figure(ax.figure, folder_of(row)
                                     / f"diffmap_{_stamp(row['TIMESTAMP'])}.png"))

    def temp_label(row) -> str:
        text = f"T{float(row['TBIN']):.1f}"
        return text + (f"_E{float(row['EXPGROUP']):g}s" if multi_exp else "")

    groups = list(valid.groupby(["TBIN", "EXPGROUP"], sort=True))
    for (tbin, _), part in progress(groups, desc="by temperature", enabled=progress_bar,
                                    unit="group"):
        sequence(part.sort_values(["TIMESTAMP", "PATH"], kind="stable"), "by_temperature",
                 temp_label, lambda row: out_dir / "analysis_by_temperature" / f"T_{tbin:.1f}")
    everything = valid.sort_values(["TIMESTAMP", "PATH"], kind="stable")
    sequence(everything, "ignore_temperature", lambda row: IGNORE_TEMP,
             lambda row: out_dir / "analysis_by_time_ignore_temp")
    flats_table = pd.DataFrame(records)
    for column in ("reference", "dt_s", "n_outliers", "std_diff", "mean_flat", "std_flat",
                   "threshold_sigma", "label"):
        if column not in flats_table:
            flats_table[column] = np.nan
    for _, row in flats[flats["STATUS"] != "valid"].iterrows():
        flats_table.loc[len(flats_table)] = {"analysis_type": "excluded",
                                             "approx_temp": row["TEMP"],
                                             "file_path": row["PATH"],
                                             "time_header": row["TIMESTAMP"],
                                             "status": row["STATUS"]}
    first_columns = ["analysis_type", "approx_temp", "file_path", "time_header", "n_outliers",
                     "std_diff", "mean_flat", "std_flat"]
    flats_table = flats_table[first_columns + [c for c in flats_table.columns
                                               if c not in first_columns]]
    outlier_table = outliers.table()
    files.append(write_csv(flats_table, out_dir / "analysis_flats.csv"))
    files.append(write_csv(outlier_table, out_dir / "analysis_outliers.csv"))
    files += _summary_plots(flats_table, out_dir / "summary_plots")
    files += _sensor_plane_plots(outlier_table, outliers, shape, out_dir / "sensor_plane_outliers")
    counts = outlier_table["classification"].value_counts().to_dict() if len(outlier_table) \
        else {}
    summary = {"comparisons": int((flats_table["status"] == "compared").sum()),
               "outlier_pixels": len(outlier_table), "classes": counts,
               "suspicious_bias": int((bad["CALTYPE"] == "BIAS").sum()),
               "suspicious_darks": int((bad["CALTYPE"] == "DARK").sum()),
               "invalid_flats": int((flats["STATUS"] != "valid").sum())}
    files.append(write_run_summary(out_dir, summary, files, digest))
    return OutgassingResult(out_dir, flats_table, outlier_table, files)


def _summary_plots(table: pd.DataFrame, folder: Path) -> list[Path]:
    out = []
    t0 = table["time_header"].min()
    table = table.assign(time_h=(table["time_header"] - t0) / 3600.0)
    ax = plots.plot_counts_vs(table, "time_h", xlabel="time since the first flat [h]")
    out.append(save_figure(ax.figure, folder / "outliers_vs_time.png"))
    ax = plots.plot_counts_vs(table, "approx_temp", xlabel="temperature [degC]")
    out.append(save_figure(ax.figure, folder / "outliers_vs_temperature.png"))
    ax = plots.plot_mean_std_vs(table, "time_h", xlabel="time since the first flat [h]")
    out.append(save_figure(ax.figure, folder / "mean_std_vs_time.png"))
    ax = plots.plot_mean_std_vs(table, "approx_temp", xlabel="temperature [degC]")
    out.append(save_figure(ax.figure, folder / "mean_std_vs_temp.png"))
    return out


def _sensor_plane_plots(table: pd.DataFrame, outliers: _Outliers, shape, folder: Path) -> list:
    if shape is None:
        return []
    out = []
    labels = sorted({lab for items in outliers.hits.values() for lab, _ in items} - {IGNORE_TEMP})
    for label in labels:
        keys = {k for k, items in outliers.hits.items() if any(lab == label for lab, _ in items)}
        part = table[[(r, c) in keys for r, c in zip(table["row"], table["col"])]]
        ax = plots.plot_sensor_plane(part, shape, title=f"outlier pixels found at {label}")
        name = label[1:] if label.startswith("T") else label
        out.append(save_figure(ax.figure, folder / f"outliers_T{name}.png"))
    ax = plots.plot_sensor_plane(table, shape, title=f"all outlier pixels ({len(table)})")
    out.append(save_figure(ax.figure, folder / "all_outliers_sensor_plane.png"))
    return out


__all__ = ["OutgassingSettings", "OutgassingResult", "run", "suspicious_log"]
