"""Glue of the full radiation run: the layout of a campaign, its conversion and index, its
campaign log and the per-stage intensity series (``run_full_radiation_pipeline.py``).

Two layouts are recognised:

* **stage folders**: ``Preirradiation/``, ``Irradiation/<dose>kRads/``, ``Postirradiation/``,
  each with ``Bias/``, ``Darks/``, ``Flats/`` of raw frames (converted in place: FITS are
  added in each attempt's ``fits/``);
* **dose directories**: ``<dose>kRads/`` folders holding ``fits/*.fits`` (already converted),
  raw frames in ``frames/`` (or loose), or ``Bias/``/``Darks/`` sections; an optional
  ``radiationLogDef.csv`` each.

Nothing in the dataset is ever modified: the converter's listings (``fits_index.csv``),
the index and a synthesised campaign log all go to the output folder.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.products import save_plot
from utils.errors import InputPathError, TableError
from utils.io.conversion import (
    STATUS_CONVERTED,
    STATUS_EXISTING,
    STATUS_REJECTED,
    ConversionSettings,
    convert_folder,
    convert_sections,
)
from utils.io.discovery import (
    FRAMES_DIR,
    RAW_SUFFIXES,
    STAGE_FOLDERS,
    campaign_sections,
    find_fits,
)
from utils.io.dose import DoseReport, assign_doses, check_time_order, find_campaign_log
from utils.io.fitsio import write_csv, write_text
from utils.io.index import IndexSettings, build_index, discover_sections, write_index
from utils.io.radiation_log import read_radiation_log
from utils.io.tokens import folder_dose
from utils.plotting import finish_axes, new_axes
from utils.stack.grouping import parse_stage_tag, stage_tag

logger = logging.getLogger(__name__)

#: Name of the campaign log synthesised into the output folder when the dataset has none.
SYNTHESISED_LOG = "radiationLogCompleto.csv"


@dataclass
class Layout:
    """A recognised campaign: ``stages`` (stage folders) or ``dosedirs``."""

    kind: str
    root: Path
    stages: list = field(default_factory=list)       # StageSections (stage folders)
    dose_folders: list = field(default_factory=list)  # Path (dose directories)

    def describe(self) -> str:
        """One line."""
        if self.kind == "stages":
            names = ", ".join(f"{s.stage}:{s.root.name}" for s in self.stages)
            return f"{self.root}: irradiation campaign with stage folders ({names})"
        return (f"{self.root}: dose directories "
                f"({', '.join(f.name for f in self.dose_folders)})")


def _has_raw(folder: Path) -> bool:
    where = folder / FRAMES_DIR if (folder / FRAMES_DIR).is_dir() else folder
    return any(p.suffix.lower() in RAW_SUFFIXES for p in where.iterdir() if p.is_file())


def detect_layout(root: Path, *, search_depth: int = 6) -> Layout:
    """Recognise the layout of ``root``.

    Raises
    ------
    InputPathError
        ``root`` is missing, holds neither stage folders nor ``<dose>kRads`` folders, or
        one of its stages (or dose folders) holds no frames.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputPathError(f"{root}: dataset folder does not exist; check the path")
    present = {stage: root / name for stage, name in STAGE_FOLDERS.items()
               if (root / name).is_dir()}
    if present:
        stages = campaign_sections(root, "irradiation")
        found = {s.root.resolve() for s in stages}
        expected = [folder for stage, folder in present.items() if stage != "radiating"]
        if "radiating" in present:
            steps = [p for p in sorted(present["radiating"].iterdir()) if p.is_dir()]
            if not steps:
                raise InputPathError(f"{present['radiating']}: empty stage (no <dose>kRads "
                                     "folder); remove it or add its dose steps")
            expected += steps
        for folder in expected:
            if folder.resolve() not in found:
                raise InputPathError(f"{folder}: empty stage (no Bias, Darks or Flats folder); "
                                     "remove it or add its frames")
        return Layout("stages", root, stages=stages)
    folders = sorted((p for p in root.iterdir() if p.is_dir() and math.isfinite(
        folder_dose(p.name))), key=lambda p: folder_dose(p.name))
    if not folders:
        raise InputPathError(f"{root}: no stage folders ({', '.join(STAGE_FOLDERS.values())}) "
                             "and no <dose>kRads folders; give the root of an irradiation "
                             "campaign")
    for folder in folders:
        if not (find_fits(folder, search_depth) or discover_sections(folder, search_depth)
                or _has_raw(folder)):
            raise InputPathError(f"{folder}: empty dose folder (no fits/*.fits, no raw frames); "
                                 "remove it or add its frames")
    return Layout("dosedirs", root, dose_folders=folders)


def _listing_dir(out_dir: Path, root: Path, folder: Path) -> Path:
    """Where the converter's ``fits_index.csv`` of ``folder`` goes: below ``OUTPUT_DIR/
    conversion``, mirroring the dataset (the dataset itself is never written to)."""
    return out_dir / "conversion" / folder.resolve().relative_to(root.resolve())


def convert_campaign(layout: Layout, out_dir: Path, *, search_depth: int = 6, workers: int = 1,
                     progress_bar: bool = False) -> dict:
    """Convert the raw frames that have no FITS yet; counts per status."""
    conversion = ConversionSettings(search_depth=search_depth, workers=workers)
    counts = {STATUS_CONVERTED: 0, STATUS_EXISTING: 0, STATUS_REJECTED: 0}
    reports = []
    if layout.kind == "stages":
        for stage in layout.stages:
            reports.append(convert_sections(dict(stage.sections), conversion,
                                            index_dir=_listing_dir(out_dir, layout.root,
                                                                   stage.root),
                                            progress_bar=progress_bar))
    else:
        for folder in layout.dose_folders:
            sections = dict((cal, path) for cal, path in discover_sections(folder, search_depth))
            listing = _listing_dir(out_dir, layout.root, folder)
            if sections:
                reports.append(convert_sections(sections, conversion, index_dir=listing,
                                                progress_bar=progress_bar))
            elif _has_raw(folder):
                reports.append(convert_folder(folder, "", conversion, index_dir=listing,
                                              progress_bar=progress_bar))
    for report in reports:
        for status in counts:
            counts[status] += report.count(status)
    logger.info("conversion: %d converted, %d already there, %d rejected",
                counts[STATUS_CONVERTED], counts[STATUS_EXISTING], counts[STATUS_REJECTED])
    return counts


def index_campaign(layout: Layout, out_dir: Path, radiation_log: Path | None, *,
                   search_depth: int = 6, progress_bar: bool = False
                   ) -> tuple[Path, pd.DataFrame, DoseReport]:
    """``OUTPUT_DIR/index.csv`` with the dose bookkeeping; a stage the log leaves without
    doses is named in a warning (its rows keep the reason in ``DOSEFLAG``)."""
    index_path = out_dir / "index.csv"
    table = build_index(discover=[layout.root], settings=IndexSettings(
        search_depth=search_depth + 2), previous=index_path, progress_bar=progress_bar)
    table, report = assign_doses(table, radiation_log=radiation_log, root=layout.root)
    logger.info("%s", report.summary())
    missing = table[table["FRAMEDOSE"].isna()]
    if len(missing):
        tags = sorted({stage_tag(s, d) for s, d in zip(missing["STAGE"], missing["DOSE"])})
        logger.warning("%d frames have no dose (%s): no log covers them; the reason is in the "
                       "DOSEFLAG column of %s", len(missing), ", ".join(tags), index_path)
    write_index(table, index_path)
    return index_path, table, report


def campaign_log(layout: Layout, out_dir: Path, given: Path | None,
                 table: pd.DataFrame) -> tuple[Path, str]:
    """The campaign log the analyses join: the given one, the one beside the data, else one
    synthesised from the index's doses into ``OUTPUT_DIR`` (one row per frame in time order:
    FrameNum, TimeStamp [s], Dose [krad])."""
    if given is not None:
        return Path(given), "given"
    found = find_campaign_log(layout.root)
    if found is not None:
        return found, "found beside the data"
    rows = table[np.isfinite(pd.to_numeric(table["FRAMEDOSE"], errors="coerce"))
                 & np.isfinite(pd.to_numeric(table["TIMESTAMP"], errors="coerce"))]
    rows = rows.sort_values("TIMESTAMP", kind="stable")
    lines = ["FrameNum,TimeStamp,Dose"] + [
        f"{k},{t:.3f},{d:.6g}" for k, (t, d) in enumerate(zip(rows["TIMESTAMP"],
                                                             rows["FRAMEDOSE"]))]
    path = write_text("\n".join(lines) + "\n", out_dir / SYNTHESISED_LOG)
    logger.info("no campaign radiation log: %s synthesised from the dose bookkeeping "
                "(%d frames)", path, len(rows))
    return path, "synthesised from the index (dose folders and their logs)"


def check_log(path: Path) -> None:
    """A given campaign log must exist, be readable and go forward in time (one-line errors,
    before anything is converted); whether it covers the frames is checked at indexing."""
    path = Path(path)
    if not path.is_file():
        raise InputPathError(f"{path}: radiation log not found; give the campaign's "
                             "radiationLogCompleto.csv, or none to use the one beside the data")
    check_time_order(read_radiation_log(path))


def check_frame_sizes(table: pd.DataFrame, index_path: Path) -> None:
    """One sensor format per campaign: frames of several sizes end the run in one line,
    before any product is made (their masters would be refused one by one)."""
    usable = table[~table["BADFITS"].astype(bool)]
    sizes = usable.groupby(["NAXIS1", "NAXIS2"]).size()
    if len(sizes) > 1:
        text = ", ".join(f"{int(a)}x{int(b)} px ({n} frames)" for (a, b), n in sizes.items())
        raise TableError(f"{index_path}: frames of {len(sizes)} sizes ({text}); a campaign "
                         "holds one sensor format: remove the frames of the other camera")


def stage_folder(out_dir: Path, stage: str, dose: float) -> Path:
    """``OUTPUT_DIR/pre``, ``OUTPUT_DIR/radiating/radiating_D10kR``, ``OUTPUT_DIR/post``."""
    if stage == "radiating":
        return out_dir / "radiating" / stage_tag(stage, dose)
    return out_dir / (stage or "campaign")


def _series(stats: pd.DataFrame, t0: float) -> pd.DataFrame:
    part = stats.sort_values("TIMESTAMP", kind="stable")
    return pd.DataFrame({"TIME": part["TIMESTAMP"].to_numpy(float) - t0,
                         "MEAN": part["MEAN"].to_numpy(float), "STD": part["STD"].to_numpy(float),
                         "TEMP": part["TEMP"].to_numpy(float),
                         "DOSE": part["FRAMEDOSE"].to_numpy(float), "TAG": part["TAG"].to_numpy()})


def plot_intensity(series: pd.DataFrame, title: str, ax=None):
    """Frame mean +- std [adu] vs time since the campaign's first frame, per step."""
    ax = new_axes(ax)
    for tag, part in series.groupby("TAG", sort=False):
        ax.errorbar(part["TIME"], part["MEAN"], part["STD"], fmt="o", ms=3, label=tag)
    finish_axes(ax, "time since the campaign's first frame [s]", "frame mean +- std [adu]", title)
    return ax


def intensity_series(radiation, out_dir: Path) -> list[Path]:
    """Per stage, ``plots/{bias,dark}_intensity.png|csv|npz`` (time, mean, std of every frame,
    from the radiation analysis's statistics; darks minus their group's bias master) and
    ``plots/dark_intensity_<t>s.*`` per dark exposure."""
    frames = []
    for tag in radiation.groups:
        for cal in ("bias", "dark"):
            path = radiation.out_dir / tag / f"stats_{cal}.csv"
            if path.is_file():
                frames.append(pd.read_csv(path).assign(TAG=tag, CAL=cal))
    if not frames:
        return []
    stats = pd.concat(frames, ignore_index=True)
    t0 = float(np.nanmin(stats["TIMESTAMP"]))
    files: list[Path] = []
    stats["STAGE"] = [parse_stage_tag(t)[0] for t in stats["TAG"]]
    for stage, part in stats.groupby("STAGE", sort=False):
        plots = (out_dir / stage if stage != "radiating" else out_dir / "radiating") / "plots"
        for cal, sub in part.groupby("CAL"):
            pieces = [(f"{cal}_intensity", sub)]
            if cal == "dark" and "T_EXP" in sub:
                pieces += [(f"dark_intensity_{e:g}s", sub[sub["T_EXP"] == e])
                           for e in sorted(sub["T_EXP"].unique())]
            for name, piece in pieces:
                series = _series(piece, t0)
                files.append(write_csv(series, plots / f"{name}.csv"))
                files += save_plot(plot_intensity(series, f"{stage}: {name.replace('_', ' ')}"),
                                   plots / f"{name}.png",
                                   {"time": series["TIME"], "mean": series["MEAN"],
                                    "std": series["STD"]})
    return files


__all__ = ["Layout", "detect_layout", "check_log", "check_frame_sizes", "convert_campaign",
           "index_campaign", "campaign_log", "stage_folder", "intensity_series", "plot_intensity",
           "SYNTHESISED_LOG"]
