"""The dataset index: one row per FITS frame, a table you filter instead of globbing.

:func:`build_index` scans campaign sections (or discovers them below a root),
reads each frame once (header + one streaming statistics pass) and returns a
pandas table.  :class:`DatasetIndex` loads such a table back from CSV,
validates it, resolves paths and filters it.

Columns, in order: ``PATH, CALTYPE, STAGE, VACUUM, TEMP, ZEROFRACTION,
BADFITS`` (the user's original seven), then ``EXPTIME, FRAMENUM, TIMESTAMP,
DOSE, ATTEMPT, NAXIS1, NAXIS2, SATFRACTION, MEAN, MEDIAN, STD, P16, P84,
ADUSCALE, FRAMEDOSE, REASON, DOSERATE, BEAM, TANNEAL, DOSESRC, DOSEFLAG``.
``PATH`` is relative to the CSV's folder.  ``DOSE`` [krad] is the dose step frames
are grouped by (``<dose>kRads`` folder, 0 for pre-irradiation, the final step for
post-irradiation); ``FRAMEDOSE`` [krad] the accumulated dose at the frame's time,
``DOSERATE`` [rad(Si)/s], ``BEAM`` and ``TANNEAL`` [s] come from the radiation logs
joined by time stamp (:mod:`utils.io.dose`).  Indexing never writes to the frames.
"""

from __future__ import annotations

import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .. import adu
from .. import headers as kw
from ..errors import FrameError, InputPathError, TableError
from ..progress import progress
from ..settings import field
from .discovery import find_fits
from .fitsio import read_header, write_csv
from .tokens import folder_dose

logger = logging.getLogger(__name__)

INDEX_COLUMNS = ["PATH", "CALTYPE", "STAGE", "VACUUM", "TEMP", "ZEROFRACTION", "BADFITS",
                 "EXPTIME", "FRAMENUM", "TIMESTAMP", "DOSE", "ATTEMPT", "NAXIS1", "NAXIS2",
                 "SATFRACTION", "MEAN", "MEDIAN", "STD", "P16", "P84", "ADUSCALE", "FRAMEDOSE",
                 "REASON", "DOSERATE", "BEAM", "TANNEAL", "DOSESRC", "DOSEFLAG"]
CALTYPES = ("BIAS", "DARK", "FLAT")
STAGES = ("pre", "radiating", "post")

#: Folder words naming an irradiation stage (lower case, letters and digits only).
_STAGE_WORDS = {
    "pre": ("preirradiation", "preirrad", "preirradiated", "pre", "prerad"),
    "radiating": ("irradiation", "irradiating", "irrad", "during", "radiating", "inbeam"),
    "post": ("postirradiation", "postirrad", "postirradiated", "post", "postrad"),
}
_STAGE_LOOKUP = {word: stage for stage, words in _STAGE_WORDS.items() for word in words}
#: Section folder names of the standard campaign.
_SECTION_NAMES = {"testsection1": "BIAS", "testsection2": "DARK", "testsection3": "FLAT"}


@dataclass(frozen=True)
class IndexSettings:
    """Settings of the dataset index."""

    zero_fraction_limit: float = field(0.01, "frames with more zero pixels than this are BADFITS")
    bias_max_exptime: float = field(1e-3, "[s] frames of unknown type up to this exposure are bias")
    search_depth: int = field(6, "folder levels searched below a --discover root")
    workers: int = field(2, "threads reading frames in parallel")

    def __post_init__(self):
        if not 0 <= self.zero_fraction_limit <= 1:
            raise ValueError("zero_fraction_limit must be within 0..1")
        if self.search_depth < 0 or self.workers < 1:
            raise ValueError("search_depth must be >= 0 and workers >= 1")


def infer_stage(path: str | os.PathLike) -> str:
    """Irradiation stage from folder words, deepest first: ``pre``, ``radiating``, ``post`` or ''.

    Whole words only (``compressed`` is not ``pre``); a ``<dose>kRads`` folder
    means ``radiating`` when no stage word is found.

    Examples
    --------
    >>> infer_stage("/c/Preirradiation/Bias/T20/attempt0/fits/f0.fits")
    'pre'
    >>> infer_stage("/c/compressed/Bias/f0.fits")
    ''
    """
    parts = Path(path).parts[:-1]
    for part in reversed(parts):
        word = re.sub(r"[^a-z0-9]", "", part.lower())
        if word in _STAGE_LOOKUP:
            return _STAGE_LOOKUP[word]
    if any(not math.isnan(folder_dose(p)) for p in parts):
        return "radiating"
    return ""


def infer_vacuum(path: str | os.PathLike) -> str:
    """``vacuum``, ``air`` or '' from folder words, deepest first.

    Examples
    --------
    >>> infer_vacuum("/c/TVAC/Bias/f.fits"), infer_vacuum("/c/no_vac/f.fits")
    ('vacuum', 'air')
    """
    for part in reversed(Path(path).parts[:-1]):
        squashed = re.sub(r"[^a-z0-9]", "", part.lower())
        tokens = set(re.split(r"[^a-z0-9]+", part.lower()))
        if "novac" in squashed:
            return "air"
        if tokens & {"vac", "vacuum", "tvac", "invacuum"}:
            return "vacuum"
        if tokens & {"air", "atm", "ambient"}:
            return "air"
    return ""


def infer_dose(path: str | os.PathLike) -> float:
    """Dose [krad] from the deepest ``<dose>kRads`` folder, else NaN."""
    for part in reversed(Path(path).parts[:-1]):
        value = folder_dose(part)
        if not math.isnan(value):
            return value
    return math.nan


def section_type(name: str) -> str:
    """CALTYPE a section folder name stands for (``Bias``, ``Darks``, ``TestSection2``...), or ''."""
    lowered = name.lower()
    if lowered in _SECTION_NAMES:
        return _SECTION_NAMES[lowered]
    for cal in CALTYPES:
        if cal.lower() in lowered:
            return cal
    return ""


def discover_sections(root: str | os.PathLike, max_depth: int = 6) -> list[tuple[str, Path]]:
    """Find ``Bias``/``Darks``/``Flats`` (any case) or ``TestSection1/2/3`` folders below ``root``.

    The walk stops descending at a section folder, so a section is never
    nested inside another.
    """
    root = Path(root)
    found: list[tuple[str, Path]] = []
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        if depth >= max_depth:
            continue
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir())
        except OSError:
            continue
        for child in children:
            if child.name in ("frames", "fits") or child.name.startswith("."):
                continue
            cal = section_type(child.name)
            if cal:
                found.append((cal, child))
            else:
                stack.append((child, depth + 1))
    return sorted(found, key=lambda item: str(item[1]))


def _frame_row(path: Path, caltype: str, stage: str | None, vacuum: str | None,
               settings: IndexSettings) -> dict:
    from ..stack.stats import frame_statistics

    row: dict[str, object] = {"PATH": str(path)}
    try:
        header = read_header(path)
    except FrameError as err:
        logger.warning("%s: %s; flagged BADFITS", path, err.reason)
        row.update(CALTYPE=caltype, STAGE=stage or infer_stage(path),
                   VACUUM=vacuum or infer_vacuum(path), BADFITS=True, REASON=err.reason)
        return row
    if header.get(kw.PRODUCT, "FRAME") not in ("FRAME", ""):
        return {}  # a product of this toolkit (master, model), not a raw frame
    if not caltype:
        caltype = kw.caltype(header)
        if caltype not in CALTYPES:
            exposure = kw.exptime(header)
            caltype = ("BIAS" if exposure <= settings.bias_max_exptime else "DARK") \
                if not math.isnan(exposure) else ""
    # DOSE is the dose *step* a frame belongs to (its <dose>kRads folder), the key of every
    # grouping; the accumulated dose the log gives each frame ramps within a step, and
    # grouping by it would make one group per frame (the old toolkit's mistake)
    frame_dose = kw.dose(header)
    dose = infer_dose(path)
    stage = stage or infer_stage(path)
    if stage == "pre" and math.isnan(dose):
        dose = 0.0  # nothing has irradiated the sensor yet
    if math.isnan(dose) and stage != "post":
        dose = frame_dose
    adc_bits = int(kw.get_float(header, kw.ADCBITS, adu.DEFAULT_ADC_BITS))
    row.update(CALTYPE=caltype, STAGE=stage, VACUUM=vacuum or infer_vacuum(path),
               TEMP=kw.sensor_temperature(header), EXPTIME=kw.exptime(header),
               FRAMENUM=kw.frame_number(header), TIMESTAMP=kw.timestamp(header), DOSE=dose,
               FRAMEDOSE=frame_dose,
               ATTEMPT=str(header.get(kw.ATTEMPT, path.parent.parent.name)),
               NAXIS1=header.get("NAXIS1"), NAXIS2=header.get("NAXIS2"),
               ADUSCALE=adu.adu_scale(adc_bits))
    try:
        stats = frame_statistics(path, saturation=kw.get_float(
            header, kw.SATLEVEL, adu.saturation_level(adc_bits)))
    except FrameError as err:
        logger.warning("%s: %s; flagged BADFITS", path, err.reason)
        row.update(BADFITS=True, REASON=err.reason)
        return row
    reasons = []
    if stats.zero_fraction > settings.zero_fraction_limit:
        reasons.append(f"{100 * stats.zero_fraction:.2f}% zero pixels "
                       f"(limit {100 * settings.zero_fraction_limit:g}%)")
    if math.isnan(row["TEMP"]):
        logger.debug("%s: no TEMP in the header", path)
    row.update(ZEROFRACTION=stats.zero_fraction, SATFRACTION=stats.saturated_fraction,
               MEAN=stats.mean, MEDIAN=stats.median, STD=stats.std, P16=stats.p16,
               P84=stats.p84, BADFITS=bool(reasons), REASON="; ".join(reasons))
    return row


def build_index(sections: Iterable[tuple[str, str | os.PathLike]] = (),
                discover: Iterable[str | os.PathLike] = (), *, stage: str | None = None,
                vacuum: str | None = None, settings: IndexSettings = IndexSettings(),
                previous: str | os.PathLike | None = None,
                radiation_log: str | os.PathLike | None = None,
                progress_bar: bool = False) -> pd.DataFrame:
    """Index every FITS frame of the given sections.

    Parameters
    ----------
    sections : iterable of (caltype, path)
        Explicit sections, e.g. ``[("BIAS", "TestSection1")]``; each must point
        at the section folder itself.
    discover : iterable of path
        Roots below which ``Bias/Darks/Flats`` (or ``TestSection1/2/3``)
        folders are found.  A root without such folders is indexed as one
        mixed section whose frame types come from headers (the
        ``<dose>kRads/fits/`` layout).
    stage, vacuum : str, optional
        Force these values instead of inferring them from folder words.
    settings : IndexSettings
        Thresholds and parallelism.
    previous : path-like, optional
        An earlier index CSV: rows of frames not modified since it was written
        are reused instead of re-reading the pixels (makes re-runs cheap).
    radiation_log : path-like, optional
        The campaign radiation log joined to the frames by time stamp; by default
        ``radiationLogCompleto.csv`` (or ``radiationLog.csv``) found in the first
        discover root (see :func:`utils.io.dose.assign_doses`).
    progress_bar : bool
        Show a progress bar.

    Returns
    -------
    pandas.DataFrame
        One row per frame, columns :data:`INDEX_COLUMNS`, absolute paths.

    Raises
    ------
    InputPathError
        A section or root does not exist, or no FITS frame was found at all.
    TableError
        The given radiation log is unusable or covers none of the frames.
    """
    discover = list(discover)
    jobs: list[tuple[str, Path]] = []
    for cal, root in sections:
        root = Path(root)
        if not root.is_dir():
            raise InputPathError(f"{root}: {cal.lower()} section folder does not exist")
        jobs.append((cal.upper(), root))
    for root in discover:
        root = Path(root)
        if not root.is_dir():
            raise InputPathError(f"{root}: folder to discover does not exist")
        found = discover_sections(root, settings.search_depth)
        if found:
            jobs.extend(found)
        else:
            logger.info("%s: no Bias/Darks/Flats folders; frame types taken from headers", root)
            jobs.append(("", root))
    files: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for cal, root in jobs:
        frames = find_fits(root, settings.search_depth + 2)
        if not frames:
            logger.warning("%s: no FITS files; convert the raw frames first "
                           "(python -m utils.raw_to_fits)", root)
        for path in frames:
            resolved = path.resolve()
            if resolved not in seen:  # each file once, even if two sections overlap
                seen.add(resolved)
                files.append((path, cal))
    if not files:
        raise InputPathError("no FITS frames found in " + ", ".join(str(r) for _, r in jobs)
                             + "; convert the raw frames first or check the paths")

    reuse: dict[Path, dict] = {}
    if previous is not None and Path(previous).is_file():
        since = Path(previous).stat().st_mtime
        try:
            old = DatasetIndex.from_csv(previous).table
        except TableError as err:
            logger.warning("%s; rebuilding the index from scratch", err)
            old = pd.DataFrame(columns=INDEX_COLUMNS)
        for row in old.to_dict("records"):
            path = Path(row["PATH"])
            if path.is_file() and path.stat().st_mtime < since:
                reuse[path.resolve()] = row

    def one(item):
        cached = reuse.get(item[0].resolve())
        if cached is not None and (not item[1] or cached["CALTYPE"] == item[1]) \
                and (stage is None or cached["STAGE"] == stage):
            return dict(cached, PATH=str(item[0]))
        return _frame_row(item[0], item[1], stage, vacuum, settings)

    with ThreadPoolExecutor(max_workers=settings.workers) as pool:
        rows = list(progress(pool.map(one, files), desc="index", total=len(files),
                             enabled=progress_bar))
    table = pd.DataFrame([r for r in rows if r], columns=INDEX_COLUMNS)
    table["BADFITS"] = table["BADFITS"].fillna(True).astype(bool)
    from .dose import assign_doses

    root = Path(discover[0]) if discover else _common_parent([r for _, r in jobs])
    table, report = assign_doses(table, radiation_log=radiation_log, root=root)
    if report.campaign_log or report.local_logs or report.spread_folders:
        logger.info("%s", report.summary())
    return table[INDEX_COLUMNS]


def _common_parent(paths) -> Path | None:
    try:
        return Path(os.path.commonpath([str(Path(p).resolve()) for p in paths]))
    except ValueError:
        return None


def write_index(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the index CSV atomically, with paths relative to its folder."""
    path = Path(path)
    base = path.parent.resolve()
    out = table.copy()
    out["PATH"] = [os.path.relpath(Path(p).resolve(), base) for p in out["PATH"]]
    return write_csv(out, path)


class DatasetIndex:
    """A loaded index: validated columns, absolute paths, and filtering.

    Parameters
    ----------
    table : pandas.DataFrame
        Index rows; ``PATH`` must be absolute (use :meth:`from_csv` to load a file).
    """

    REQUIRED = ("PATH", "CALTYPE")

    def __init__(self, table: pd.DataFrame):
        self.table = table.reset_index(drop=True)

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> "DatasetIndex":
        """Load and validate an index CSV; relative paths are resolved against its folder.

        Raises
        ------
        TableError
            Missing file, unreadable CSV, or missing required columns.
        """
        path = Path(path)
        if not path.is_file():
            raise TableError(f"{path}: index file does not exist; build it with "
                             "python -m utils.index_dataset")
        try:
            table = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise TableError(f"{path}: not a readable CSV ({str(err).splitlines()[0]}); "
                             "rebuild it with python -m utils.index_dataset") from err
        missing = [c for c in cls.REQUIRED if c not in table.columns]
        if missing:
            raise TableError(f"{path}: missing column(s) {', '.join(missing)}; rebuild it with "
                             "python -m utils.index_dataset")
        for column in INDEX_COLUMNS:
            if column not in table.columns:
                table[column] = np.nan
        base = path.parent
        table["PATH"] = [str(p if Path(p).is_absolute() else (base / p))
                         for p in table["PATH"].astype(str)]
        # an all-empty column reads as float64: fill as object (no str fill of a float column)
        table["CALTYPE"] = table["CALTYPE"].astype(object).fillna("").astype(str).str.upper()
        table["STAGE"] = table["STAGE"].astype(object).fillna("").astype(str)
        table["BADFITS"] = table["BADFITS"].map(_truthy)
        for column in ("TEMP", "EXPTIME", "DOSE", "TIMESTAMP", "FRAMENUM", "FRAMEDOSE",
                       "DOSERATE", "TANNEAL"):
            table[column] = pd.to_numeric(table[column], errors="coerce")
        for column in ("BEAM", "DOSESRC", "DOSEFLAG"):
            table[column] = table[column].astype(object).fillna("").astype(str)
        return cls(table)

    def __len__(self) -> int:
        return len(self.table)

    def filter(self, **criteria) -> "DatasetIndex":
        """Rows whose columns equal the given values (a list/tuple value means "any of")."""
        mask = np.ones(len(self.table), dtype=bool)
        for column, wanted in criteria.items():
            values = self.table[column.upper()]
            if isinstance(wanted, (list, tuple, set)):
                mask &= values.isin(list(wanted)).to_numpy()
            else:
                mask &= (values == wanted).to_numpy()
        return DatasetIndex(self.table[mask])

    def usable(self) -> "DatasetIndex":
        """Rows not flagged BADFITS."""
        return DatasetIndex(self.table[~self.table["BADFITS"].to_numpy(dtype=bool)])


def load_frames(basepath: str | os.PathLike, cache: str | os.PathLike | None = None, *,
                settings: IndexSettings = IndexSettings(),
                progress_bar: bool = False) -> DatasetIndex:
    """The frames a pipeline works on: an index CSV, or every FITS frame below a folder.

    Frame types of a folder come from each header (``CALTYPE``, else
    ``IMAGETYP``, else ``EXPTIME``), never from folder names.  Products of this
    toolkit found below the folder (masters, models) are not frames and are
    left out.

    Parameters
    ----------
    basepath : path-like
        An index CSV (from ``python -m utils.index_dataset``) or a folder of
        converted FITS frames.
    cache : path-like, optional
        Where to keep the index of a folder (e.g. ``OUT/index.csv``); a re-run
        reuses the rows of unchanged frames instead of reading them again.
    settings : IndexSettings, optional
        Index thresholds.
    progress_bar : bool, optional
        Show a progress bar while indexing.

    Raises
    ------
    InputPathError
        ``basepath`` does not exist or holds no FITS frame.
    TableError
        The CSV is not an index.
    """
    basepath = Path(basepath)
    if basepath.is_file():
        return DatasetIndex.from_csv(basepath)
    if not basepath.is_dir():
        raise InputPathError(f"{basepath}: no such folder or index CSV; give the folder of "
                             "converted FITS frames or an index from utils.index_dataset")
    table = build_index([("", basepath)], settings=settings, previous=cache,
                        progress_bar=progress_bar)
    if cache is not None:
        write_index(table, cache)
        return DatasetIndex.from_csv(cache)
    return DatasetIndex(table)


def _truthy(value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.number)):
        return bool(value) and not (isinstance(value, float) and math.isnan(value))
    return str(value).strip().lower() in ("true", "1", "yes", "t", "y")


def stage_order(stage: str) -> int:
    """Sort key of stages: pre, radiating, post, then anything else."""
    return STAGES.index(stage) if stage in STAGES else len(STAGES)


def parse_stage(text: str) -> str:
    """Accept ``pre/radiating/post`` and the old word ``during``; raise ValueError otherwise."""
    word = re.sub(r"[^a-z0-9]", "", text.lower())
    if word in _STAGE_LOOKUP:
        return _STAGE_LOOKUP[word]
    raise ValueError(f"unknown stage {text!r}; use one of {', '.join(STAGES)}")


__all__ = ["DatasetIndex", "IndexSettings", "build_index", "write_index", "infer_stage",
           "infer_vacuum", "infer_dose", "discover_sections", "section_type", "INDEX_COLUMNS",
           "STAGES", "CALTYPES", "stage_order", "parse_stage", "load_frames"]
