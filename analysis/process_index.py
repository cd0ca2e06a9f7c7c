"""Build master frames, per-frame statistics and trend plots from a dataset index.

Bias masters per temperature bin; dark masters per (temperature, exposure),
each frame minus the bias at its own temperature (the per-pixel bias(T) model
of the bias masters when the set lies within their temperatures, else the
bias master nearest in temperature within --bias-temp-tolerance; refused and
reported beyond it); flat masters per (temperature, exposure), minus bias and
the matching dark, normalised.  Irradiation stages and dose steps are never
mixed.  Frames flagged BADFITS, missing or unreadable, with an unusable index
value, or without a temperature (exposure time for darks and flats) are
excluded and counted, each with its REASON in frame_stats.csv; a set that
cannot be combined is refused with the reason and the others are built.
Masters are sigma-clipped stacks with uncertainty, noise, count and mask
extensions.

Outputs in OUTPUT_DIR: ``masters/`` (FITS), ``masters_summary.csv``,
``frame_stats.csv``, ``plots/`` (trends vs temperature and exposure time),
``comparisons/`` (each master vs its noisiest input, with ``--plots all``),
``config_used.json``.
A re-run rebuilds only masters whose inputs or settings changed.

Example
-------
  python -m analysis.process_index data/index.csv results/
  python -m analysis.process_index data/index.csv results/ --temp-bin 0.5 --method median
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis import plots
from analysis.masters import (
    FEW_FRAMES,
    MasterRecord,
    MasterSettings,
    build_masters,
    master_path,
)
from utils import cli, plotting, scheduler
from utils import headers as kw
from utils.errors import ConfigError, FrameError
from utils.io.fitsio import (
    check_output_dir,
    read_image,
    write_csv,
)
from utils.io.index import DatasetIndex
from utils.memory import release_free_memory
from utils.models.bias_model import BiasModel
from utils.progress import progress
from utils.settings import dump_settings
from utils.stack.grouping import GroupKey

logger = logging.getLogger(__name__ if __name__ != "__main__" else "analysis.process_index")

STATS_COLUMNS = ["PATH", "CALTYPE", "STAGE", "DOSE", "TEMP", "EXPTIME", "MEAN", "MEDIAN", "STD",
                 "P16", "P84", "ZEROFRACTION", "SATFRACTION", "BADFITS", "REASON", "USED"]


@dataclass
class ProcessResult:
    """What a run produced."""

    out_dir: Path
    records: list[MasterRecord]
    stats: pd.DataFrame
    figures: list[Path]

    def count(self, status: str) -> int:
        """Masters with this status (written, existing, refused)."""
        return sum(1 for r in self.records if r.status == status)

    def summary_line(self) -> str:
        """One line saying what was written where, and what was left out and why."""
        masters = (f"{self.count('written')} masters written, {self.count('existing')} up to "
                   f"date, {self.count('refused')} refused")
        few = sum(1 for r in self.records if r.status != "refused" and FEW_FRAMES in r.reason)
        if few:
            masters += f" ({few} from too few frames, NOISE undefined or poor)"
        used = self.stats["USED"].astype(bool)
        frames = f"{len(self.stats)} frames, {int(used.sum())} used, {int((~used).sum())} excluded"
        why = ", ".join(f"{n} {what}" for what, n in self.exclusions().items() if n)
        if why:
            frames += f" ({why}; REASON in frame_stats.csv)"
        return f"{masters}; {frames}; {len(self.figures)} figures; outputs in {self.out_dir}"

    def exclusions(self) -> dict[str, int]:
        """Number of frames left out, by kind of reason."""
        return exclusion_counts(self.stats)


def frame_stats_table(index: pd.DataFrame, *, progress_bar: bool = False) -> pd.DataFrame:
    """Per-frame statistics, reusing the index's when present (one read per frame otherwise)."""
    table = index.copy()
    missing = table["MEAN"].isna() & ~table["BADFITS"].astype(bool)
    if missing.any():
        from utils.stack.stats import frame_statistics

        for i in progress(list(table.index[missing]), desc="frame stats", enabled=progress_bar):
            try:
                st = frame_statistics(table.at[i, "PATH"])
            except FrameError as err:
                logger.warning("%s: %s; flagged BADFITS", table.at[i, "PATH"], err.reason)
                table.loc[i, ["BADFITS", "REASON"]] = [True, err.reason]
                continue
            for column, value in (("MEAN", st.mean), ("MEDIAN", st.median), ("STD", st.std),
                                  ("P16", st.p16), ("P84", st.p84),
                                  ("ZEROFRACTION", st.zero_fraction),
                                  ("SATFRACTION", st.saturated_fraction)):
                table.at[i, column] = value
    return table[[c for c in STATS_COLUMNS if c in table.columns]]


#: Kinds of exclusion, in the order the summary lists them.
_EXCLUSIONS = ("BADFITS", "bad index value", "missing or unreadable", "without TEMP",
               "without EXPTIME", "not bias/dark/flat")


def _kind(reason: str, badfits: bool) -> str:
    if not badfits:
        for kind in _EXCLUSIONS[3:]:
            if reason.startswith(kind):
                return kind
        return ""
    if reason.startswith("index:"):
        return "bad index value"
    if reason.startswith(("file not found", "cannot read", "truncated", "HDU", "short read")):
        return "missing or unreadable"
    return "BADFITS"


def exclusion_counts(stats: pd.DataFrame) -> dict[str, int]:
    """``{kind: frames}`` of the frames not used (see :func:`mark_unusable`)."""
    counts = dict.fromkeys(_EXCLUSIONS, 0)
    for reason, bad, used in zip(stats["REASON"], stats["BADFITS"], stats["USED"]):
        if not used:
            kind = _kind(reason if isinstance(reason, str) else "", bool(bad)) or "BADFITS"
            counts[kind] += 1
    return counts


def mark_unusable(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``USED`` and, for good frames that belong to no master, the REASON.

    A frame without a temperature belongs to no temperature bin, a dark or flat
    without an exposure time to no set, a frame of another type to no master:
    each is said, never silently left out.
    """
    table = table.copy()
    table["REASON"] = table["REASON"].astype(object).where(table["REASON"].notna(), "")
    bad = table["BADFITS"].astype(bool)
    caltype = table["CALTYPE"].astype(str)
    reasons = []
    for i, row in table.iterrows():
        if bad.loc[i]:
            reasons.append(row["REASON"])
        elif caltype.loc[i] not in ("BIAS", "DARK", "FLAT"):
            reasons.append(f"not bias/dark/flat (CALTYPE={caltype.loc[i] or 'empty'!r})")
        elif not np.isfinite(row["TEMP"]):
            reasons.append("without TEMP: belongs to no temperature bin")
        elif caltype.loc[i] != "BIAS" and not np.isfinite(row["EXPTIME"]):
            reasons.append("without EXPTIME: belongs to no exposure set")
        else:
            reasons.append("")
    table["REASON"] = reasons
    table["USED"] = ~bad & (table["REASON"] == "")
    return table


#: Columns of the frame statistics and of the masters' summary that the trend figures draw
#: from: sent to the render process without the paths and reasons (~5x fewer bytes).
TREND_STATS_COLUMNS = ("CALTYPE", "STAGE", "DOSE", "TEMP", "MEAN", "MEDIAN", "STD", "BADFITS")
TREND_MASTERS_COLUMNS = ("CALTYPE", "STAGE", "DOSE", "TBIN", "EXPTIME", "ATTEMPT", "STATUS",
                         "TAVG", "MEAN", "NOISE", "LEVEL")


def write_trend_plots(stats: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Draw and save the trend figures into ``out_dir/plots`` (level ``summary``); drawn where
    they are rendered, from the tables' columns they show."""
    drawings = []
    plot_dir = out_dir / "plots"
    frames = stats[[c for c in TREND_STATS_COLUMNS if c in stats]]
    masters = summary[[c for c in TREND_MASTERS_COLUMNS if c in summary]]
    for caltype in ("BIAS", "DARK", "FLAT"):
        if not (stats["CALTYPE"] == caltype).any():
            continue
        for metric in ("MEAN", "STD"):
            drawings.append((plotting.drawing(plots.plot_metric_vs_temperature, frames,
                                              masters, caltype, metric),
                             f"{caltype.lower()}_{metric.lower()}_vs_temperature.png"))
    if (summary["CALTYPE"] == "DARK").any():
        drawings.append((plotting.drawing(plots.plot_dark_vs_exposure, masters),
                         "dark_signal_vs_exposure.png"))
        drawings.append((plotting.drawing(plots.plot_dark_rate_vs_temperature, masters),
                         "dark_rate_vs_temperature.png"))
    if (summary["CALTYPE"] == "FLAT").any():
        drawings.append((plotting.drawing(plots.plot_flat_level_vs_exposure, masters),
                         "flat_level_vs_exposure.png"))
    saved = [plotting.save(draw, plot_dir / name) for draw, name in drawings]
    return [p for p in saved if p is not None]


def write_comparisons(records: list[MasterRecord], out_dir: Path) -> list[Path]:
    """For each all-attempts master, save master vs its noisiest input frame (level ``all``:
    one figure per master)."""
    figures = []
    if not plotting.wants("all"):
        return figures
    by_name = {r.path.name: r for r in records if r.path is not None}
    for rec in records:
        if rec.path is None or rec.key.attempt or not rec.worst_frame:
            continue
        # mirror the master's place below masters/ (stage and dose step folders), so the
        # comparisons of different stages never share a name
        try:
            relative = rec.path.relative_to(out_dir / "masters")
        except ValueError:
            relative = Path(rec.path.name)
        target = (out_dir / "comparisons" / relative).with_suffix(".png")
        if rec.status == "existing" and target.is_file():
            figures.append(target)
            continue
        saved = plotting.save(lambda r=rec, t=target: _draw_comparison(r, by_name, out_dir),
                              target, level="all")
        if saved is not None:
            figures.append(saved)
    return figures


def _subtracted(name: str, rec: MasterRecord, by_name: dict, out_dir: Path,
                frame_header) -> np.ndarray | None:
    """The image a master's inputs had subtracted under ``name`` (its BIASFILE or DARKFILE),
    for this frame: a master of this run, or the bias model ``bias_model.fits`` next to the
    bias masters of the same stage and dose, evaluated at the frame's temperature."""
    ref = by_name.get(name)
    if ref is not None:
        return read_image(ref.path)[0]
    if name != "bias_model.fits":
        return None
    path = master_path(out_dir, GroupKey(rec.key.stage, rec.key.dose, "BIAS", 0.0)).with_name(name)
    temperature = frame_header.get(kw.TEMP)
    if not path.is_file() or temperature is None:
        return None
    return BiasModel.read(path).predict(float(temperature))


def _draw_comparison(rec: MasterRecord, by_name: dict, out_dir: Path):
    """Master vs its noisiest input frame, the frame reduced like the master's inputs."""
    master, frame, header = comparison_images(rec, by_name, out_dir)
    return plots.plot_master_comparison(
        master, frame, unit=str(header.get("BUNIT", "")),
        title=f"{rec.path.stem} vs {Path(rec.worst_frame).name}")


def comparison_images(rec: MasterRecord, by_name: dict, out_dir: Path):
    """``(master, frame, master header)`` of a comparison figure: the noisiest input frame
    reduced like the master's inputs (bias, scaled dark, flat level), float32."""
    master, header = read_image(rec.path)
    frame, frame_header = read_image(rec.worst_frame)
    frame = frame.astype(np.float32)
    # reduce the frame like the master's inputs so the difference shows only noise/defects
    # (a master made with the bias model had its frames' bias left in the figure: a dark's
    # 'frame - master' read +3300 adu everywhere)
    for key, scale in (("BIASFILE", 1.0), ("DARKFILE", float(header.get("DARKSCL", 1.0)))):
        image = _subtracted(str(header.get(key, "")), rec, by_name, out_dir, frame_header)
        if image is not None:
            frame = frame - np.float32(scale) * image
    if rec.key.caltype == "FLAT":
        level = float(np.nanmedian(frame))
        frame = frame / level if level > 0 else frame
    return np.asarray(master, dtype=np.float32), frame, header


def run(index_csv: str | Path, out_dir: str | Path, settings: MasterSettings = MasterSettings(),
        *, progress_bar: bool = False, upstream_settings: dict | None = None) -> ProcessResult:
    """Process an index: statistics, masters (bias, dark, flat), summary, plots, comparisons.

    This function states the order of the whole step; everything it calls is
    defined in :mod:`analysis.masters` and :mod:`analysis.plots`.
    ``upstream_settings`` (e.g. the conversion and index settings of
    ``run_calibration.py``) are recorded in ``config_used.json`` too.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    loaded = DatasetIndex.from_csv(index_csv)
    index = loaded.table
    if index.empty:
        raise ConfigError(f"{index_csv}: the index has no rows; nothing to process")
    for message in loaded.check_files():
        logger.warning("%s; flagged BADFITS", message)
    # inputs checked: only now does the output folder get anything (dump_settings first
    # removes the temporaries a killed run left)
    dump_settings(out_dir, masters=settings, index_csv=str(Path(index_csv).resolve()),
                  **(upstream_settings or {}))
    stats = mark_unusable(frame_stats_table(index, progress_bar=progress_bar))
    write_csv(stats, out_dir / "frame_stats.csv")
    index["BADFITS"] = stats["BADFITS"].astype(bool)
    index["REASON"] = stats["REASON"]
    records = build_masters(index, out_dir, settings, progress_bar=progress_bar)
    release_free_memory()  # what the stacking of every set freed: not carried into later steps
    summary = pd.DataFrame([r.row() for r in records])
    write_csv(summary, out_dir / "masters_summary.csv")
    figures = write_trend_plots(stats, summary, out_dir)
    figures += write_comparisons(records, out_dir)
    return ProcessResult(out_dir, records, stats, figures)


def add_master_options(parser, *, per_attempt: bool = True, workers: bool = True) -> None:
    """Options of :class:`MasterSettings` (shared with ``run_calibration.py`` and
    ``run_full_radiation_pipeline.py``, which builds no per-attempt masters and whose
    ``--workers`` converts: ``per_attempt``, ``workers`` False leave those two out)."""
    d = MasterSettings()
    parser.add_argument("--temp-bin", type=float, default=d.temp_bin,
                        help="[degC] largest temperature span of one master")
    parser.add_argument("--exp-tolerance", type=float, default=d.exp_tolerance,
                        help="largest relative exposure span of one master")
    parser.add_argument("--bias-temp-tolerance", type=float, default=d.bias_temp_tolerance,
                        help="[degC] largest dark-bias temperature difference")
    parser.add_argument("--method", choices=["sigclip", "median", "mean"], default=d.method,
                        help="combination method")
    parser.add_argument("--sigma", type=float, default=d.sigma_high,
                        help="[sigma] clipping threshold (both sides)")
    if per_attempt:
        parser.add_argument("--no-per-attempt", action="store_true",
                            help="skip the per-attempt masters")
    parser.add_argument("--memory-limit", type=float, default=d.memory_limit,
                        help="[byte] working-memory budget of one combination")
    if workers:
        parser.add_argument("--workers", type=int, default=d.workers,
                            help="threads per combination")


def master_settings(args, *, workers: int | None = None) -> MasterSettings:
    """Build validated settings from parsed options (``workers``: the threads per
    combination when the command has no such option)."""
    d = MasterSettings()
    try:
        return MasterSettings(temp_bin=args.temp_bin, exp_tolerance=args.exp_tolerance,
                              bias_temp_tolerance=args.bias_temp_tolerance, method=args.method,
                              sigma_low=args.sigma, sigma_high=args.sigma,
                              per_attempt=not getattr(args, "no_per_attempt", not d.per_attempt),
                              memory_limit=args.memory_limit,
                              workers=args.workers if workers is None else workers)
    except ValueError as err:
        raise ConfigError(f"invalid option: {err}") from err


def build_parser() -> cli.ArgumentParser:
    """Command-line interface."""
    parser = cli.make_parser("python -m analysis.process_index", __doc__)
    parser.add_argument("index_csv", metavar="INDEX_CSV", help="index built by utils.index_dataset")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder for the products")
    add_master_options(parser)
    plotting.add_plots_option(parser)
    scheduler.add_options(parser)
    return parser


def _main(args) -> int:
    result = run(args.index_csv, args.output_dir, master_settings(args),
                 progress_bar=not args.no_progress)
    logger.info("%s", result.summary_line())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m analysis.process_index INDEX_CSV OUTPUT_DIR``."""
    return cli.run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
