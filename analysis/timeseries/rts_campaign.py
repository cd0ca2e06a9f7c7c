"""RTS analysis of a campaign: every long dark sequence, per stage, dose step and temperature.

:func:`run` states the order once: frames from a folder of converted FITS or
an index CSV; usable frames of one type (darks by default) grouped like
masters (irradiation stage, dose step, temperature bin, exposure time; never
across dose steps); each group with at least ``min_frames`` frames, in time
order, searched for RTS pixels (:mod:`.rts`); groups with fewer frames get a
flagged row.  Products in OUT::

    rts_pixels.csv                 one row per RTS or step pixel, with its group
    rts_counts.csv                 per group: frames, pixels, RTS and step pixels,
                                   RTS fraction with its binomial error, or why not analysed
    rts_<group>.fits               uint8 class map (1 RTS, 2 step) + AMPLITUDE [adu],
                                   SIGMA [adu] (noise from successive differences), ZETA
    rts_counts_vs_dose.png, rts_amplitudes.png, rts_dwell_times.png,
    rts_examples_<group>.png, index.csv (folder input), config_used.json, summary.json
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

from utils import adu
from utils import headers as kw
from utils.errors import FrameError, InputPathError
from utils.io.fitsio import provenance_cards, save_figure, set_card, write_csv, write_hdul
from utils.io.index import DatasetIndex
from utils.run_record import write_run_summary
from utils.settings import dump_settings, field
from utils.stack.grouping import calibration_groups
from utils.stack.master import adc_bits_of

from . import plots_rts as plots
from .inputs import frame_index, inputs_digest, previous_run
from .rts import CLASS_RTS, CLASS_STEP, RTSResult, RTSSettings, find_rts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RTSRunSettings:
    """Settings of the RTS analysis (written to ``config_used.json``)."""

    rts: RTSSettings = field(RTSSettings(), "per-pixel RTS search")
    caltype: str = field("DARK", "frame type searched: DARK or BIAS")
    temp_bin: float = field(2.0, "[degC] largest temperature span of one sequence (wider than "
                                 "for masters: the jitter of a long run spans more)")
    exp_tolerance: float = field(0.01, "largest relative exposure span of one sequence")
    min_frames: int = field(50, "sequences with fewer frames are flagged, not searched")

    def __post_init__(self):
        if self.caltype not in ("DARK", "BIAS"):
            raise ValueError("caltype must be DARK or BIAS")
        if not self.temp_bin > 0 or self.exp_tolerance < 0 or self.min_frames < 10:
            raise ValueError("temp_bin must be > 0, exp_tolerance >= 0 and min_frames >= 10")


@dataclass
class RTSRunResult:
    """What a run produced."""

    out_dir: Path
    pixels: pd.DataFrame
    counts: pd.DataFrame
    files: list

    def summary_line(self) -> str:
        """One line: what was written where."""
        done = self.counts[self.counts["STATUS"] == "analysed"]
        parts = [f"{r.GROUP}: {int(r.N_RTS)} RTS of {int(r.N_PIXELS)} px"
                 for r in done.itertuples()]
        flagged = len(self.counts) - len(done)
        return (f"RTS analysis: {len(done)} sequence(s) searched"
                + (f", {flagged} flagged" if flagged else "")
                + (f" ({'; '.join(parts)})" if parts else "")
                + f"; {len(self.files)} files in {self.out_dir}")


def group_name(key) -> str:
    """File-name tag of a sequence: ``[<stage>_]T<T>C_E<t>s``."""
    return f"{key.stage_dir}_{key.tag}" if key.stage_dir else key.tag


def write_rts_fits(result: RTSResult, key, frames: pd.DataFrame, adc_bits: int, path: Path,
                   settings: RTSSettings = RTSSettings()) -> Path:
    """``rts_<group>.fits``: class map and per-pixel maps of one sequence, with the search
    settings in the header and the frames searched (``INPUTS``: file, time since the first
    [s]) for provenance."""
    from astropy.table import Table

    n_frames = len(frames)
    header = fits.Header()
    for k, value, comment in provenance_cards("RTS_MAP"):
        set_card(header, k, value, comment)
    for k, value, comment in ((kw.STAGE, key.stage or "none", "irradiation stage"),
                              (kw.DOSE, 0.0 if math.isnan(key.dose) else key.dose,
                               "[krad] dose step"),
                              (kw.TBIN, key.temperature, "[degC] temperature bin"),
                              (kw.EXPTIME, 0.0 if math.isnan(key.exptime) else key.exptime,
                               "[s] exposure time"),
                              ("NFRAMES", n_frames, "frames searched"),
                              ("NRTS", result.n_rts, "RTS pixels"),
                              ("NSTEP", int((result.mask == CLASS_STEP).sum()), "step pixels"),
                              ("FRMINTVL", result.interval if math.isfinite(result.interval)
                               else "NAN", "[s] median frame interval")):
        set_card(header, k, value, comment)
    for k, value, comment in (
            ("KAMPL", settings.k_amplitude, "RTS levels at least this many noise sigma apart"),
            ("ZTHRESH", settings.z_threshold, "[sigma] von Neumann significance of a candidate"),
            ("MINTRANS", settings.min_transitions, "fewer switches make a step"),
            ("MAXLEVEL", settings.max_levels, "largest number of levels tried"),
            ("COMMODE", settings.common_mode, "each frame's median offset removed")):
        set_card(header, k, value, comment)
    set_card(header, "COMMENT", "primary: 1 = RTS pixel, 2 = step (few switches), 0 = neither")
    for k, value, comment in adu.scaling_cards(adc_bits):
        set_card(header, k, value, comment)
    primary = fits.PrimaryHDU(result.mask, header)
    primary.header[kw.BUNIT] = ("", "class code")
    hdus = [primary]
    for name, data, unit, comment in (
            ("AMPLITUDE", result.amplitude, adu.UNIT, "largest level difference"),
            ("SIGMA", result.sigma_diff, adu.UNIT, "noise from successive differences"),
            ("ZETA", result.z_eta, "", "von Neumann significance [sigma]")):
        hdu = fits.ImageHDU(data.astype(np.float32), name=name)
        hdu.header[kw.BUNIT] = (unit, comment)
        hdus.append(hdu)
    stamps = frames["TIMESTAMP"].to_numpy(float)
    inputs = Table({"FILE": [Path(p).name for p in frames["PATH"]],
                    "TIME": stamps - (stamps[0] if len(stamps) else 0.0)})
    inputs["TIME"].unit = "s"
    hdus.append(fits.BinTableHDU(inputs, name="INPUTS"))
    return write_hdul(fits.HDUList(hdus), path)


def run(basepath: str | os.PathLike, output_dir: str | os.PathLike,
        settings: RTSRunSettings = RTSRunSettings(), *,
        progress_bar: bool = False) -> RTSRunResult:
    """Search every long sequence of ``basepath`` for RTS pixels.

    Raises
    ------
    InputPathError
        No frames, none of the type searched, or no sequence long enough.
    """
    out_dir = Path(output_dir)
    table, save_index = frame_index(basepath, out_dir, progress_bar=progress_bar)
    rows = DatasetIndex(table).filter(caltype=settings.caltype).usable().table
    if rows.empty:
        raise InputPathError(f"{basepath}: no usable {settings.caltype} frames for an RTS "
                             "search")
    groups = list(calibration_groups(rows, temp_width=settings.temp_bin,
                                     exp_tolerance=settings.exp_tolerance))
    longest = max((len(part) for _, part in groups), default=0)
    if longest < settings.min_frames:
        raise InputPathError(f"{basepath}: the longest {settings.caltype.lower()} sequence has "
                             f"{longest} frame(s); an RTS search needs at least "
                             f"{settings.min_frames} (--min-frames)")
    save_index()
    digest = inputs_digest(rows, settings)
    if (previous := previous_run(out_dir, digest)) is not None:
        try:
            pixels = pd.read_csv(out_dir / "rts_pixels.csv")
        except pd.errors.EmptyDataError:  # no RTS pixel at all
            pixels = pd.DataFrame()
        return RTSRunResult(out_dir, pixels, pd.read_csv(out_dir / "rts_counts.csv"),
                            [out_dir / f for f in previous["files"]])
    dump_settings(out_dir, rts=settings, basepath=str(Path(basepath).resolve()))
    files: list[Path] = []
    tables, counts = [], []
    for key, part in groups:
        name = group_name(key)
        dose = 0.0 if key.stage == "pre" else key.dose   # nothing irradiated it yet
        base = {"GROUP": name, "STAGE": key.stage, "DOSE": dose, "TEMP": key.temperature,
                "EXPTIME": key.exptime, "N_FRAMES": len(part)}
        if len(part) < settings.min_frames:
            counts.append({**base, "STATUS": f"{len(part)} frames: need at least "
                                             f"{settings.min_frames}"})
            logger.warning("%s: %d frames, too few for an RTS search; flagged", name, len(part))
            continue
        part = part.sort_values(["TIMESTAMP", "FRAMENUM", "PATH"], kind="stable")
        stamps = part["TIMESTAMP"].to_numpy(float)
        try:
            result = find_rts(part["PATH"].tolist(), stamps, settings.rts,
                              progress_bar=progress_bar)
        except (FrameError, ValueError) as err:
            reason = err.reason if isinstance(err, FrameError) else str(err)
            counts.append({**base, "STATUS": f"not searched: {reason}"})
            logger.warning("%s: %s; flagged", name, reason)
            continue
        table = result.table.copy()
        for column, value in reversed(list(base.items())[:5]):
            table.insert(0, column, value)
        tables.append(table)
        n_pix = int(result.mask.size)
        fraction = result.n_rts / n_pix
        counts.append({**base, "STATUS": "analysed", "N_PIXELS": n_pix, "N_RTS": result.n_rts,
                       "N_STEP": int((result.mask == CLASS_STEP).sum()),
                       "FRACTION": fraction,
                       "FRACTION_ERR": math.sqrt(max(fraction * (1 - fraction), 1.0 / n_pix)
                                                 / n_pix),
                       "INTERVAL_S": result.interval,
                       "MEDIAN_AMP_SIGMA": float(np.median(
                           table.loc[table["CLASS"] == "rts", "AMP_SIGMA"]))
                       if result.n_rts else math.nan})
        files.append(write_rts_fits(result, key, part, adc_bits_of(part),
                                    out_dir / f"rts_{name}.fits", settings.rts))
        if result.examples:
            times = stamps - stamps[0] if np.isfinite(stamps).all() else None
            axes = plots.plot_examples(
                result.examples, times,
                title=f"RTS pixels of {name} ({len(part)} frames): signal and fitted levels "
                      "(dashed)")
            files.append(save_figure(axes[0].figure, out_dir / f"rts_examples_{name}.png"))
    pixels = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    count_table = pd.DataFrame(counts)
    files.append(write_csv(pixels, out_dir / "rts_pixels.csv"))
    files.append(write_csv(count_table, out_dir / "rts_counts.csv"))
    if len(pixels):
        unit = "s" if count_table["INTERVAL_S"].notna().all() else "frames"
        files.append(save_figure(plots.plot_amplitudes(pixels).figure,
                                 out_dir / "rts_amplitudes.png"))
        files.append(save_figure(plots.plot_dwell_times(pixels, unit).figure,
                                 out_dir / "rts_dwell_times.png"))
    if (count_table["STATUS"] == "analysed").sum() > 1:
        files.append(save_figure(plots.plot_counts(count_table).figure,
                                 out_dir / "rts_counts_vs_dose.png"))
    summary = {"sequences": int((count_table["STATUS"] == "analysed").sum()),
               "flagged": int((count_table["STATUS"] != "analysed").sum()),
               "rts_pixels": int((pixels["CLASS"] == "rts").sum()) if len(pixels) else 0}
    files.append(write_run_summary(out_dir, summary, files, digest))
    return RTSRunResult(out_dir, pixels, count_table, files)


__all__ = ["RTSRunSettings", "RTSRunResult", "run", "group_name", "CLASS_RTS"]
