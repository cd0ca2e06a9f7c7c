"""Structure analysis: new structures in flats over time and temperature.

:func:`run` states the order once:

1. frames from a folder of converted FITS or an index CSV; frames flagged
   BADFITS (too many zero pixels, unreadable) are listed in
   ``suspicious_frames.csv`` **in the output folder**;
2. flats grouped by temperature bin and exposure time; a flat is valid when
   not BADFITS, not saturated (fraction at the header's ``SATLEVEL``), and
   timed (``TIMESTMP``; a time of 0 is a time);
3. with ``--reduce``, each flat minus the dark master of its exposure at its
   own temperature (else the bias master), built from the same tree;
4. per group, the reference is the **earliest** valid flat by time stamp (not
   the first in the file list); every later flat is compared with it
   (:mod:`.flat_compare`: normalised difference, noise model from the flats,
   significance) and changed regions are found as connected groups of
   significant pixels (:mod:`.regions`): area, centroid, amplitude with errors;
5. a detection is *persistent* when the next comparison of its group finds
   a region within ``persist_radius`` pixels (a stain stays; a cosmic ray in
   one flat does not).

Products in OUT::

    structures.csv          one row per detected region per comparison
    comparisons.csv         one row per flat: reference, time since it, noise model,
                            threshold, regions, or why it was not compared
    suspicious_frames.csv   frames flagged BADFITS, with the reason
    differences/T<T>C_E<t>s/diff_<nn>_<time>.png   each difference with detections outlined
    timeline.png            detections and their area vs time since the reference
    structure_counts.fits   per pixel: comparisons in which it belonged to a detection
    masters/ (with --reduce), index.csv (folder input), config_used.json, summary.json
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

from utils import headers as kw
from utils.errors import FrameError, InputPathError
from utils.io.fitsio import provenance_cards, save_figure, set_card, write_csv, write_hdul
from utils.io.tokens import number_text
from utils.progress import progress
from utils.run_record import write_run_summary
from utils.settings import dump_settings, field
from utils.stack.master import CombineSettings

from . import plots_flats as plots
from .flat_compare import CompareSettings, compare_flats
from .inputs import inputs_digest, previous_run
from .reduction import flats_of, load_flat, reducer_for
from .regions import find_regions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StructureSettings:
    """Settings of the structure analysis (written to ``config_used.json``)."""

    compare: CompareSettings = field(CompareSettings(), "flat comparison and detection")
    temp_bin: float = field(1.0, "[degC] largest temperature span of one bin")
    exp_tolerance: float = field(0.01, "largest relative exposure span of one group")
    max_saturated: float = field(0.01, "largest fraction of pixels at SATLEVEL in a valid flat "
                                               "(fewer are hot pixels or hits, masked)")
    reduce: bool = field(False, "subtract the dark (else bias) master at each flat's own "
                                "temperature")
    temp_tolerance: float = field(2.0, "[degC] largest flat-master temperature difference")
    dark_exp_tolerance: float = field(0.1, "[s] largest flat-dark exposure difference")
    persist_radius: float = field(2.0, "[pixel] a detection is persistent when the next "
                                       "comparison has one this close")
    combine: CombineSettings = field(CombineSettings(), "combination of the bias/dark masters")

    def __post_init__(self):
        if not self.temp_bin > 0 or self.exp_tolerance < 0 or not 0 <= self.max_saturated <= 1:
            raise ValueError("temp_bin must be > 0, exp_tolerance >= 0, max_saturated in 0..1")
        if self.temp_tolerance < 0 or self.dark_exp_tolerance < 0 or self.persist_radius < 0:
            raise ValueError("tolerances and persist_radius must be >= 0")


@dataclass
class StructureResult:
    """What a run produced."""

    out_dir: Path
    structures: pd.DataFrame
    comparisons: pd.DataFrame
    files: list

    def summary_line(self) -> str:
        """One line: what was written where."""
        done = int((self.comparisons["STATUS"] == "compared").sum()) \
            if len(self.comparisons) else 0
        persistent = int(self.structures["PERSISTENT"].eq(True).sum()) \
            if len(self.structures) else 0
        return (f"structure analysis: {done} comparisons, {len(self.structures)} detections "
                f"({persistent} persistent); {len(self.files)} files in {self.out_dir}")


STRUCTURE_COLUMNS = ["TBIN", "EXPTIME", "REFERENCE", "FILE", "TIMESTAMP", "DT_S", "REGION",
                     "SIGN", "AREA", "ROW", "ROW_ERR", "COL", "COL_ERR", "AMPLITUDE",
                     "AMPLITUDE_ERR", "PEAK_Z", "SIGNIFICANCE", "ROW_MIN", "ROW_MAX", "COL_MIN",
                     "COL_MAX", "PERSISTENT"]


def _stamp(t: float) -> str:
    return f"{t:.3f}".replace(".", "_").replace(" ", "_")


def _mark_persistence(rows: list[dict], radius: float) -> None:
    """Set ``PERSISTENT`` of each detection from the next comparison of its group."""
    by_group: dict[tuple, list] = {}
    for r in rows:
        by_group.setdefault((r["TBIN"], r["EXPTIME"]), []).append(r)
    for items in by_group.values():
        times = sorted({r["TIMESTAMP"] for r in items})
        nxt = {t: times[i + 1] if i + 1 < len(times) else None for i, t in enumerate(times)}
        for r in items:
            later = nxt[r["TIMESTAMP"]]
            if later is None:
                r["PERSISTENT"] = None          # the last comparison: unknown
                continue
            r["PERSISTENT"] = any(o["TIMESTAMP"] == later and o["SIGN"] == r["SIGN"]
                                  and math.hypot(o["ROW"] - r["ROW"], o["COL"] - r["COL"])
                                  <= radius for o in items)


def write_counts_fits(counts: np.ndarray, comparisons: pd.DataFrame,
                      settings: StructureSettings, path: Path) -> Path:
    """``structure_counts.fits``: comparisons in which each pixel belonged to a detection.

    The header records the detection settings, and the ``INPUTS`` table every comparison made
    (flat, its reference, time since it [s], detections), so the map can be traced back."""
    from astropy.table import Table

    done = comparisons[comparisons["STATUS"] == "compared"]
    header = fits.Header()
    for key, value, comment in provenance_cards("STRUCTURE_COUNTS"):
        set_card(header, key, value, comment)
    set_card(header, "NCOMPARE", len(done), "flat comparisons made")
    c = settings.compare
    set_card(header, "SEEDTHR", c.seed_threshold, "[sigma] smallest seed significance")
    set_card(header, "FALSEALM", c.false_alarm, "false-alarm chance per comparison")
    set_card(header, "GROWTHR", c.grow_threshold, "[sigma] region growth threshold")
    set_card(header, "MINAREA", c.min_area, "[pixel] smallest detection")
    set_card(header, "BACKSUB", c.background, "smooth background removed from differences")
    set_card(header, "REDUCED", settings.reduce, "flats minus dark/bias masters (--reduce)")
    set_card(header, "COMMENT", "value = comparisons in which the pixel was in a detected region")
    hdu = fits.PrimaryHDU(counts.astype(np.int32), header)
    hdu.header[kw.BUNIT] = ("", "count of comparisons")
    inputs = Table({"FILE": [Path(p).name for p in done["FILE"]],
                    "REFERENCE": [Path(p).name for p in done["REFERENCE"]],
                    "DT_S": done["DT_S"].to_numpy(float),
                    "N_REGIONS": done["N_REGIONS"].to_numpy(np.int64)})
    inputs["DT_S"].unit = "s"
    return write_hdul(fits.HDUList([hdu, fits.BinTableHDU(inputs, name="INPUTS")]), path)


def run(basepath: str | os.PathLike, output_dir: str | os.PathLike,
        settings: StructureSettings = StructureSettings(), *,
        progress_bar: bool = False) -> StructureResult:
    """Find new structures in the flats of ``basepath`` (folder of FITS or index CSV).

    Raises
    ------
    InputPathError
        No frames, no valid flat, or no temperature bin with two valid flats.
    """
    out_dir = Path(output_dir)
    index, flats, save_index = flats_of(basepath, out_dir, settings, progress_bar=progress_bar)
    valid = flats[flats["STATUS"] == "valid"]
    if valid.empty:
        why = "; ".join(sorted(set(flats["STATUS"]))) if len(flats) else "no FLAT frames"
        raise InputPathError(f"{basepath}: no valid flat to analyse ({why})")
    sizes = valid.groupby(["TBIN", "EXPGROUP"]).size()
    if sizes.max() < 2:
        raise InputPathError(f"{basepath}: every temperature bin (and exposure) has a single "
                             "valid flat; a structure search needs at least two")
    save_index()
    digest = inputs_digest(index, settings)
    if (previous := previous_run(out_dir, digest)) is not None:
        return StructureResult(out_dir, pd.read_csv(out_dir / "structures.csv"),
                               pd.read_csv(out_dir / "comparisons.csv"),
                               [out_dir / f for f in previous["files"]])
    dump_settings(out_dir, structure=settings, basepath=str(Path(basepath).resolve()))
    files: list[Path] = []
    suspicious = index[index["BADFITS"].astype(bool)][["PATH", "CALTYPE", "ZEROFRACTION",
                                                       "REASON"]]
    files.append(write_csv(suspicious, out_dir / "suspicious_frames.csv"))
    if len(suspicious):
        logger.warning("%d suspicious frames (zero fraction or unreadable) listed in %s",
                       len(suspicious), out_dir / "suspicious_frames.csv")
    reducer = None
    if settings.reduce:
        reducer = reducer_for(settings, index, out_dir, progress_bar=progress_bar)
    comparisons: list[dict] = []
    detections: list[dict] = []
    counts = None
    for _, row in flats[flats["STATUS"] != "valid"].iterrows():
        comparisons.append({"TBIN": math.nan, "EXPTIME": row["EXPTIME"], "FILE": row["PATH"],
                            "TIMESTAMP": row["TIMESTAMP"], "STATUS": row["STATUS"]})
    groups = list(valid.groupby(["TBIN", "EXPGROUP"], sort=True))
    for (tbin, exp), part in progress(groups, desc="structure groups", enabled=progress_bar,
                                      unit="group"):
        part = part.sort_values(["TIMESTAMP", "PATH"], kind="stable")
        folder = out_dir / "differences" / f"T{number_text(tbin)}C_E{exp:.6g}s"
        reference = ref_image = None
        ref_note = ""
        for k, (_, row) in enumerate(part.iterrows()):
            base = {"TBIN": tbin, "EXPTIME": exp, "FILE": row["PATH"],
                    "TIMESTAMP": row["TIMESTAMP"]}
            subtract, note = None, ""
            if reducer is not None:
                entry, note = reducer.choose(float(row["TEMP"]), float(row["EXPTIME"]))
                if entry is None:
                    comparisons.append({**base, "STATUS": f"not reduced: {note}"})
                    continue
                subtract = reducer.image(entry)
                note = f"{note}: {entry.path.name}"
            try:
                image = load_flat(row["PATH"], subtract)
            except FrameError as err:
                comparisons.append({**base, "STATUS": f"unreadable: {err.reason}"})
                continue
            if reference is None:
                reference, ref_image, ref_note = row, image, note
                comparisons.append({**base, "REFERENCE": row["PATH"], "DT_S": 0.0,
                                    "STATUS": "reference", "REDUCTION": note})
                if counts is None:
                    counts = np.zeros(image.shape, dtype=np.int32)
                continue
            try:
                fd = compare_flats(image, ref_image, settings.compare)
            except ValueError as err:
                comparisons.append({**base, "REFERENCE": reference["PATH"],
                                    "STATUS": f"not compared: {err}"})
                continue
            c = settings.compare
            regions, labels = find_regions(fd.z, fd.diff, fd.sigma, seed=fd.threshold,
                                           grow=c.grow_threshold, min_area=c.min_area)
            counts += labels > 0
            dt = float(row["TIMESTAMP"] - reference["TIMESTAMP"])
            comparisons.append({**base, "REFERENCE": reference["PATH"], "DT_S": dt,
                                "STATUS": "compared", "REDUCTION": note or ref_note,
                                "LEVEL_ADU": fd.level, "REF_LEVEL_ADU": fd.reference_level,
                                "NOISE_ALPHA": fd.alpha, "NOISE_BETA": fd.beta,
                                "ROBUST_STD": fd.robust_std, "THRESHOLD_SIGMA": fd.threshold,
                                "N_REGIONS": len(regions),
                                "AREA_PX": int(sum(r.area for r in regions))})
            for reg in regions:
                d = reg.as_dict()
                detections.append({"TBIN": tbin, "EXPTIME": exp, "REFERENCE": reference["PATH"],
                                   "FILE": row["PATH"], "TIMESTAMP": row["TIMESTAMP"],
                                   "DT_S": dt, "REGION": d["label"],
                                   **{k.upper(): d[k] for k in d if k != "label"}})
            title = (f"{Path(row['PATH']).name} - {Path(reference['PATH']).name}\n"
                     f"T {number_text(tbin, 'g')} degC, {exp:g} s, +{dt / 3600:.1f} h: "
                     f"{len(regions)} structure(s) above {fd.threshold:.1f} sigma")
            ax = plots.plot_difference(fd, title=title, labels=labels)
            files.append(save_figure(ax.figure, folder / f"diff_{k:02d}_{_stamp(row['TIMESTAMP'])}"
                                                          f".png"))
    _mark_persistence(detections, settings.persist_radius)
    structures = pd.DataFrame(detections, columns=STRUCTURE_COLUMNS)
    comp = pd.DataFrame(comparisons)
    for column in ("REFERENCE", "DT_S", "N_REGIONS", "AREA_PX", "REDUCTION"):
        if column not in comp:
            comp[column] = np.nan
    files.append(write_csv(structures, out_dir / "structures.csv"))
    files.append(write_csv(comp, out_dir / "comparisons.csv"))
    axes = plots.plot_timeline(comp)
    files.append(save_figure(axes[0].figure, out_dir / "timeline.png"))
    n_done = int((comp["STATUS"] == "compared").sum())
    if counts is not None:
        files.append(write_counts_fits(counts, comp, settings, out_dir / "structure_counts.fits"))
    summary = {"comparisons": n_done, "detections": len(structures),
               "persistent": int(structures["PERSISTENT"].eq(True).sum()),
               "suspicious_frames": len(suspicious), "invalid_flats":
               int((flats["STATUS"] != "valid").sum())}
    files.append(write_run_summary(out_dir, summary, files, digest))
    return StructureResult(out_dir, structures, comp, files)


__all__ = ["StructureSettings", "StructureResult", "run"]
