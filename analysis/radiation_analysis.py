"""Radiation analysis: per-frame statistics, masters and differences per (stage, dose step).

Joins the campaign's radiation log to the index by time stamp (DOSE step,
FRAMEDOSE, DOSERATE [rad(Si)/s], BEAM, TANNEAL), then, for every (stage, dose
step) -- ``pre``, ``radiating_D<d>kR``, ``post`` -- in OUTPUT_DIR/<stage tag>/:
stats_bias.csv and stats_dark.csv (per-frame mean and std, darks minus the
group's bias master; old columns PATH, FRAME, GROUP, TEMP, [T_EXP,] MEAN, STD),
mean +- std vs time figures (with .npz twins), sigma-clipped masters per
temperature bin (and exposure for darks: exposures are never averaged
together) and group_summary.csv (STAGE, CALTYPE, GROUP, MEAN_RAD, MEAN_VAL,
STD_VAL, then TAG, DOSE, TBIN, EXPTIME, NFRAMES, FRAMEDOSE and MEAN_VAL_ERR, the
standard error of MEAN_VAL from the frames' scatter).  Between consecutive groups
(pre -> first step -> ... -> post) and pre -> post, every master present in
both gives a difference map (FITS with UNCERT and a SIGNIF = diff/sigma
extension, PNG and .npz with key ``diff``).
GROUP is the index of the (stage, dose step) in campaign order.  --ignore-temp
(and --group-by-dose, kept for the old command line) put all temperatures of a
group into one master per exposure; dose steps are never merged.

Example
-------
::

    python -m analysis.radiation_analysis irr/index.csv irr/radiationLogCompleto.csv out/rad
    python -m analysis.radiation_analysis irr/index.csv irr/radiationLogCompleto.csv out/rad \\
        --stages pre post --ignore-temp
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

from analysis.products import save_plot
from analysis.stage_differences import difference, plot_difference, write_difference
from utils import cli, plotting
from utils import headers as kw
from utils.errors import ConfigError, FrameError, UserError
from utils.io.dose import assign_doses
from utils.io.fitsio import read_image, write_csv
from utils.io.index import STAGES, DatasetIndex, parse_stage
from utils.io.tokens import number_text
from utils.plotting import finish_axes, new_axes
from utils.progress import progress
from utils.settings import dump_settings, field
from utils.stack.grouping import calibration_groups, stage_groups, stage_tag, text_column
from utils.stack.master import (
    CombineSettings,
    add_combine_options,
    combine_settings,
    make_master,
    read_master,
)

logger = logging.getLogger(__name__ if __name__ != "__main__" else "analysis.radiation_analysis")


@dataclass(frozen=True)
class RadiationSettings:
    """Settings of the radiation analysis (written to ``config_used.json``)."""

    stages: tuple = field(STAGES, "stages analysed, in this order")
    ignore_temp: bool = field(False, "one master per group and exposure, all temperatures")
    group_by_dose: bool = field(False, "old option: same as ignore_temp (groups are always "
                                       "per dose step)")
    temp_bin: float = field(1.0, "[degC] largest temperature span of one master")
    exp_tolerance: float = field(0.01, "largest relative exposure-time span of one master")
    bias_temp_tolerance: float = field(2.0, "[degC] largest dark-bias temperature distance")
    combine: CombineSettings = field(CombineSettings(), "combination of each master")

    def __post_init__(self):
        if not self.stages or any(s not in STAGES for s in self.stages):
            raise ValueError(f"stages must be among {', '.join(STAGES)}, got {self.stages}")
        if not self.temp_bin > 0:
            raise ValueError("temp_bin must be > 0 degC")


@dataclass
class RadiationResult:
    """What a run produced."""

    out_dir: Path
    groups: list
    masters: dict
    differences: list
    files: list

    def summary_line(self) -> str:
        """One line: what was written where."""
        n = sum(len(v) for v in self.masters.values())
        return (f"radiation analysis: {len(self.groups)} (stage, dose step) groups "
                f"({', '.join(self.groups)}), {n} masters, {len(self.differences)} difference "
                f"maps; {len(self.files)} files in {self.out_dir}")


def _frame_stats(path: str, bias: np.ndarray | None) -> tuple[float, float]:
    """Mean and population std of a frame (minus ``bias``), read once."""
    data, _ = read_image(path)
    data = np.asarray(data, dtype=np.float64)
    if bias is not None:
        data = data - bias
    ok = np.isfinite(data)
    return float(data[ok].mean()), float(data[ok].std())


def _step_dose(rows: pd.DataFrame) -> float:
    """[krad] The dose step of a set's frames (the index's ``DOSE``: 0 before irradiation, the
    last step's dose after it), NaN when no frame has one."""
    dose = pd.to_numeric(rows["DOSE"], errors="coerce").to_numpy(float)
    return float(np.median(dose[np.isfinite(dose)])) if np.isfinite(dose).any() else math.nan


def _mean_error(values: list[float]) -> float:
    """[adu] Standard error of the mean of per-frame means: their sample standard deviation
    over sqrt(N) (frame-to-frame scatter: temporal noise, offsets, drifts); NaN below 2."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.std(ddof=1) / math.sqrt(v.size)) if v.size >= 2 else math.nan


def _plot_vs_time(stats: pd.DataFrame, caltype: str, tag: str, t0: float):
    ax = new_axes(None)
    keys = ["TEMP_BIN"] + (["T_EXP"] if caltype == "DARK" else [])
    data = {}
    for key, part in stats.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        part = part.sort_values("TIMESTAMP")
        t = part["TIMESTAMP"].to_numpy(float) - t0
        label = f"{number_text(key[0], 'g')} degC" + (f", {key[1]:g} s" if len(key) > 1 else "")
        line, = ax.plot(t, part["MEAN"], "o-", label=f"{label}: frame mean")
        ax.fill_between(t, part["MEAN"] - part["STD"], part["MEAN"] + part["STD"], alpha=0.2,
                        color=line.get_color(), label=f"{label}: ± spatial std")
        name = label.replace(" degC", "C").replace(", ", "_").replace(" s", "s")
        data.update({f"{name}_time": t, f"{name}_mean": part["MEAN"],
                     f"{name}_std": part["STD"]})
    finish_axes(ax, "time since the campaign's first frame [s]", "frame mean [adu]",
                f"{tag}: {caltype.lower()} frames, mean and spatial std vs time")
    return ax, data


def run(index_csv: str | os.PathLike, radiation_log: str | os.PathLike,
        out_dir: str | os.PathLike, settings: RadiationSettings = RadiationSettings(), *,
        joined: bool = False, progress_bar: bool = False) -> RadiationResult:
    """Run the radiation analysis (see the module notes).

    Order: index + log join -> per (stage, dose step): bias masters, dark masters,
    per-frame statistics, time figures, group summary -> differences between groups.

    Parameters
    ----------
    joined : bool, optional
        The index was just built with ``radiation_log`` joined (``run_radiation.py``): its dose
        columns are used as they are, not joined a second time (which repeated every warning
        about the log and the bookkeeping line). Default is False.

    Raises
    ------
    UserError
        Missing or unusable index or log, a log covering none of the frames, no frame of
        the chosen stages.
    """
    out = Path(out_dir)
    index = DatasetIndex.from_csv(index_csv)
    if joined:
        table = index.table.copy()
    else:
        table, report = assign_doses(index.table, radiation_log=radiation_log,
                                     root=Path(index_csv).resolve().parent)
        logger.info("%s", report.summary())
    table["STAGE"] = text_column(table["STAGE"])
    rows = table[table["STAGE"].isin(settings.stages) & table["CALTYPE"].isin(["BIAS", "DARK"])
                 & ~table["BADFITS"].astype(bool)]
    if rows.empty:
        raise UserError(f"{index_csv}: no usable bias or dark frame of the stages "
                        f"{', '.join(settings.stages)} (stages present: "
                        f"{', '.join(sorted(set(table['STAGE']) - {''})) or 'none'})")
    dump_settings(out, radiation=settings, index_csv=str(Path(index_csv).resolve()),
                  radiation_log=str(Path(radiation_log).resolve()))
    files: list[Path] = []
    merge_t = settings.ignore_temp or settings.group_by_dose
    groups = [g for g in stage_groups(rows) if g[0] in settings.stages]
    groups.sort(key=lambda g: (settings.stages.index(g[0]),
                               g[1] if math.isfinite(g[1]) else -1))
    t0 = float(np.nanmin(rows["TIMESTAMP"])) if rows["TIMESTAMP"].notna().any() else 0.0
    masters: dict[str, dict[str, Path]] = {}
    tags = []
    for gid, (stage, dose) in enumerate(groups):
        tag = stage_tag(stage, dose)
        tags.append(tag)
        part = rows[(rows["STAGE"] == stage)
                    & (np.isclose(rows["DOSE"], dose) if math.isfinite(dose) and
                       stage == "radiating" else True)]
        if merge_t:
            part = part.assign(TEMP_BIN=round(float(np.nanmean(part["TEMP"])), 1))
        masters[tag], group_files = _one_group(part, out / tag, tag, gid, settings, merge_t, t0,
                                               progress_bar)
        files += group_files
    diffs = _differences(tags, masters, out, files, settings.temp_bin)
    return RadiationResult(out, tags, masters, diffs, files)


def _one_group(part: pd.DataFrame, folder: Path, tag: str, gid: int, settings, merge_t, t0,
               progress_bar) -> tuple[dict, list]:
    files, made, summary = [], {}, []
    work = part.copy()
    if merge_t:
        work["TEMP"] = work["TEMP_BIN"]   # one temperature bin for grouping
    sets = list(calibration_groups(work, temp_width=settings.temp_bin,
                                   exp_tolerance=settings.exp_tolerance))
    bias_ref: list[tuple[float, Path]] = []
    stats = {"BIAS": [], "DARK": []}
    for caltype in ("BIAS", "DARK"):
        for key, rows in sets:
            if key.caltype != caltype:
                continue
            rows = part.loc[rows.index]  # the frames' own temperatures
            name = f"master_{caltype.lower()}_T{key.temperature:.1f}"
            if caltype == "DARK":
                name += f"_E{key.exptime:g}s"
            path = folder / f"{name}.fits"
            extra = {kw.STAGE: (key.stage or "none", "irradiation stage"),
                     "STAGETAG": (tag, "stage and dose step"),
                     kw.TBIN: (key.temperature, "[degC] temperature bin label"
                               + (" (all temperatures)" if merge_t else ""))}
            bias = None
            if caltype == "DARK":
                near = [b for b in bias_ref if abs(b[0] - key.temperature)
                        <= settings.bias_temp_tolerance]
                if not near:
                    logger.warning("%s: no bias master within %g degC of %s; darks skipped",
                                   tag, settings.bias_temp_tolerance, name)
                    continue
                t_b, b_path = min(near, key=lambda b: abs(b[0] - key.temperature))
                b_img = read_master(b_path)
                bias = b_img.data
                extra[kw.BIASFILE] = (b_path.name, "master bias subtracted")
                extra[kw.EXPTIME] = (key.exptime, "[s] exposure of the set")
                make_master(rows, path, settings.combine, product="MASTER_DARK", subtract=bias,
                            sub_stderr=b_img.stderr, extra=extra, refs=(str(b_path),),
                            progress_bar=progress_bar)
            else:
                make_master(rows, path, settings.combine, product="MASTER_BIAS", extra=extra,
                            progress_bar=progress_bar)
                bias_ref.append((key.temperature, path))
            made[path.name] = (caltype, key.temperature, key.exptime, path)
            files.append(path)
            set_stats = []
            for _, r in progress(list(rows.iterrows()), desc=f"{tag} {caltype.lower()} stats",
                                 enabled=progress_bar):
                try:
                    mean, std = _frame_stats(r["PATH"], bias)
                except FrameError as err:
                    logger.warning("%s: %s; left out of the statistics", r["PATH"], err.reason)
                    continue
                rec = {"PATH": r["PATH"], "FRAME": r["FRAMENUM"], "GROUP": gid,
                       "TEMP": r["TEMP"]}
                if caltype == "DARK":
                    rec["T_EXP"] = r["EXPTIME"] if math.isfinite(r["EXPTIME"]) else 0.0
                rec.update(MEAN=mean, STD=std, TIMESTAMP=r["TIMESTAMP"], DOSE=r["DOSE"],
                           FRAMEDOSE=r["FRAMEDOSE"], DOSERATE=r["DOSERATE"],
                           TEMP_BIN=key.temperature)
                set_stats.append(rec)
            stats[caltype] += set_stats
            summary.append({"STAGE": key.stage, "CALTYPE": caltype, "GROUP": gid,
                            "MEAN_RAD": float(np.nanmean(rows["DOSERATE"]))
                            if rows["DOSERATE"].notna().any() else math.nan,
                            "MEAN_VAL": float(np.mean([s["MEAN"] for s in set_stats]))
                            if set_stats else math.nan,
                            "STD_VAL": float(np.mean([s["STD"] for s in set_stats]))
                            if set_stats else math.nan,
                            "TAG": tag, "DOSE": _step_dose(rows), "TBIN": key.temperature,
                            "EXPTIME": key.exptime, "NFRAMES": len(rows),
                            "FRAMEDOSE": float(np.nanmean(rows["FRAMEDOSE"]))
                            if rows["FRAMEDOSE"].notna().any() else math.nan,
                            "MEAN_VAL_ERR": _mean_error([s["MEAN"] for s in set_stats])})
    for caltype in ("BIAS", "DARK"):
        table = pd.DataFrame(stats[caltype])
        if table.empty:
            continue
        # frame numbers are whole (empty without FRAMENUM): '0', not '0.0'
        table["FRAME"] = pd.to_numeric(table["FRAME"], errors="coerce").round().astype("Int64")
        files.append(write_csv(table, folder / f"stats_{caltype.lower()}.csv"))
        ax, data = _plot_vs_time(table, caltype, tag, t0)
        files += save_plot(ax, folder / f"mean_std_{caltype.lower()}_vs_time", data)
    files.append(write_csv(pd.DataFrame(summary), folder / "group_summary.csv"))
    return made, files


def _differences(tags: list[str], masters: dict, out: Path, files: list,
                 temp_bin: float) -> list[Path]:
    """Consecutive groups in campaign order, and pre -> post: every pair of masters of the
    same type and exposure whose temperature bins are within ``temp_bin``."""
    pairs = list(zip(tags, tags[1:]))
    if "pre" in tags and "post" in tags and ("pre", "post") not in pairs:
        pairs.append(("pre", "post"))
    made = []
    for ref, target in pairs:
        for cal, t, e, ref_path in masters[ref].values():
            match = [m for m in masters[target].values() if m[0] == cal
                     and abs(m[1] - t) <= temp_bin
                     and (cal == "BIAS" or math.isclose(m[2], e, rel_tol=0.01))]
            if not match:
                continue
            target_path = min(match, key=lambda m: abs(m[1] - t))[3]
            d = difference(target_path, ref_path)
            name = f"master_{cal.lower()}_T{t:.1f}" + ("" if cal == "BIAS" else f"_E{e:g}s")
            base = f"{name}_{target}_minus_{ref}"
            files.append(write_difference(out / f"{base}.fits", d,
                                          [("STAGE1", ref, "reference group"),
                                           ("STAGE2", target, "target group")]))
            files.extend(save_plot(plot_difference(d.diff, unit="adu",
                                                   title=f"{name}: {target} - {ref}"),
                                   out / f"{base}.png", {"diff": d.diff, "error": d.error,
                                                         "significance": d.significance}))
            made.append(out / f"{base}.fits")
    return made


def build_parser() -> cli.ArgumentParser:
    """Command-line interface (the old positional arguments and options)."""
    parser = cli.make_parser("python -m analysis.radiation_analysis", __doc__)
    parser.add_argument("index_csv", metavar="INDEX_CSV", help="index of the campaign")
    parser.add_argument("radiation_log", metavar="RADIATION_LOG",
                        help="campaign radiation log (radiationLogCompleto.csv)")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder for the products")
    parser.add_argument("--stages", nargs="+", default=list(STAGES),
                        help="stages to analyse, in order (pre radiating post; 'during' is "
                             "accepted)")
    parser.add_argument("--ignore-temp", action="store_true",
                        help="one master per group and exposure, all temperatures together")
    parser.add_argument("--group-by-dose", action="store_true",
                        help="old option, same as --ignore-temp (groups are per dose step)")
    add_combine_options(parser)
    plotting.add_plots_option(parser)
    return parser


def settings_from(args) -> RadiationSettings:
    """Validated settings from parsed options."""
    try:
        stages = tuple(parse_stage(s) for s in args.stages)
        return RadiationSettings(stages=stages, ignore_temp=args.ignore_temp,
                                 group_by_dose=args.group_by_dose,
                                 combine=combine_settings(args))
    except ValueError as err:
        raise ConfigError(f"invalid option: {err}") from err


def _main(args) -> int:
    result = run(args.index_csv, args.radiation_log, args.output_dir, settings_from(args),
                 progress_bar=not args.no_progress)
    logger.info("%s", result.summary_line())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
