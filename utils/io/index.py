"""The dataset index: one row per FITS frame, a table you filter instead of globbing.

:func:`build_index` scans campaign sections (or discovers them below a root),
reads each frame's header (and, unless the converter recorded the statistics there,
one streaming statistics pass over its pixels) and returns a pandas table.
:class:`DatasetIndex` loads such a table back from CSV, validates it, resolves paths
and filters it.

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

import functools
import io
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

from .. import adu, scheduler
from .. import headers as kw
from ..errors import FrameError, InputPathError, TableError
from ..progress import progress
from ..settings import field
from .discovery import check_distinct_sections, find_fits, real_paths, subfolders
from .fastheader import PrimaryHeader, UnusualCard, read_primary
from .fitsio import fits_layout, read_header, unescape_text, write_csv
from .frame_log import decode_text, parse_number, sniff_delimiter
from .tokens import folder_dose

logger = logging.getLogger(__name__)

INDEX_COLUMNS = ["PATH", "CALTYPE", "STAGE", "VACUUM", "TEMP", "ZEROFRACTION", "BADFITS",
                 "EXPTIME", "FRAMENUM", "TIMESTAMP", "DOSE", "ATTEMPT", "NAXIS1", "NAXIS2",
                 "SATFRACTION", "MEAN", "MEDIAN", "STD", "P16", "P84", "ADUSCALE", "FRAMEDOSE",
                 "REASON", "DOSERATE", "BEAM", "TANNEAL", "DOSESRC", "DOSEFLAG"]
#: Columns a fresh index writes as integers.
_INT_COLUMNS = ("NAXIS1", "NAXIS2", "ADUSCALE")
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


@functools.lru_cache(maxsize=4096)
def _folder_labels(folder: Path) -> tuple[str, str, float]:
    """:func:`infer_stage`, :func:`infer_vacuum` and :func:`infer_dose` of a frame in
    ``folder`` (they read the folder names only: the frames of a folder share them, and the
    index works them out once, not ~0.1 ms per frame)."""
    frame = folder / "frame.fits"
    return infer_stage(frame), infer_vacuum(frame), infer_dose(frame)


def section_type(name: str) -> str:
    """CALTYPE a section folder name stands for (``Bias``, ``Darks``, ``TestSection2``...)
    or ''."""
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
    seen: set = set()
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        if depth >= max_depth:
            continue
        children = [Path(e.path) for e in subfolders(folder, seen)]  # each real folder once
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
    # the header read without astropy (~0.1 ms, astropy ~1.5 ms); anything it cannot answer
    # as astropy would (UnusualCard) and any unusual file: the row is made from astropy's
    header = read_primary(path)
    if header is not None:
        try:
            return _header_row(path, header, caltype, stage, vacuum, settings)
        except UnusualCard as err:
            logger.debug("%s: card %s read by astropy", path, err)
    try:
        header = read_header(path)
    except FrameError as err:
        logger.warning("%s: %s; flagged BADFITS", path, err.reason)
        return {"PATH": str(path), "CALTYPE": caltype, "STAGE": stage or infer_stage(path),
                "VACUUM": vacuum or infer_vacuum(path), "BADFITS": True, "REASON": err.reason}
    return _header_row(path, header, caltype, stage, vacuum, settings)


def _header_row(path: Path, header, caltype: str, stage: str | None, vacuum: str | None,
                settings: IndexSettings) -> dict:
    """The index row of the frame ``path`` from its primary ``header`` (an astropy Header or a
    :class:`PrimaryHeader`: every card is read before the file is, so an UnusualCard leaves
    nothing half done)."""
    from ..stack.stats import frame_statistics, recorded_statistics

    row: dict[str, object] = {"PATH": str(path)}
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
    folder_stage, folder_vacuum, dose = _folder_labels(path.parent)
    stage = stage or folder_stage
    if stage == "pre" and math.isnan(dose):
        dose = 0.0  # nothing has irradiated the sensor yet
    if math.isnan(dose) and stage != "post":
        dose = frame_dose
    adc_bits = int(kw.get_float(header, kw.ADCBITS, adu.DEFAULT_ADC_BITS))
    row["_BITPIX"] = header.get("BITPIX")
    row.update(CALTYPE=caltype, STAGE=stage, VACUUM=vacuum or folder_vacuum,
               TEMP=kw.sensor_temperature(header), EXPTIME=kw.exptime(header),
               FRAMENUM=kw.frame_number(header), TIMESTAMP=kw.timestamp(header), DOSE=dose,
               FRAMEDOSE=frame_dose,
               ATTEMPT=unescape_text(str(header.get(kw.ATTEMPT, path.parent.parent.name))),
               NAXIS1=header.get("NAXIS1"), NAXIS2=header.get("NAXIS2"),
               ADUSCALE=adu.adu_scale(adc_bits))
    saturation = adu.frame_saturation(header)
    # the converter records the statistics in the header: the pixels need not be read again,
    # but the data unit must still be all there (a truncated file stays BADFITS)
    stats = recorded_statistics(header, saturation) if row["_BITPIX"] == 16 else None
    try:
        if stats is None:
            stats = frame_statistics(path, saturation=saturation)
        elif not isinstance(header, PrimaryHeader):  # read_primary saw the whole data unit
            fits_layout(path)
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
    check_distinct_sections(jobs)
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
    resolved_of: dict[Path, Path] = {}
    empty: list[Path] = []
    for cal, root in jobs:
        frames = find_fits(root, settings.search_depth + 2)
        if not frames:
            empty.append(root)
        for path, resolved in zip(frames, _resolved(frames)):
            if resolved not in seen:  # each file once, even if two sections overlap
                seen.add(resolved)
                resolved_of[path] = resolved
                files.append((path, cal))
    if not files:  # the error alone: a warning per empty folder before it said it twice
        raise InputPathError("no FITS frames found in " + ", ".join(str(r) for _, r in jobs)
                             + "; convert the raw frames first or check the paths")
    for root in empty:
        logger.warning("%s: no FITS files; convert the raw frames first "
                       "(python -m utils.raw_to_fits)", root)

    reuse: dict[Path, dict] = {}
    if previous is not None and Path(previous).is_file():
        since = Path(previous).stat().st_mtime
        try:
            old = DatasetIndex.from_csv(previous).table
        except TableError as err:
            logger.warning("%s; rebuilding the index from scratch", err)
            old = pd.DataFrame(columns=INDEX_COLUMNS)
        rows = old.to_dict("records")
        for row, resolved in zip(rows, _resolved(row["PATH"] for row in rows)):
            path = Path(row["PATH"])
            if str(row["REASON"]).startswith("index:"):
                continue  # a row flagged for its cells is measured again, not copied
            if path.is_file() and path.stat().st_mtime < since:
                # integer columns come back as floats from a CSV with empty cells: written
                # as a fresh index writes them ("40", not "40.0"), a re-run changes nothing
                reuse[resolved] = {
                    k: int(v) if k in _INT_COLUMNS and isinstance(v, float) and v.is_integer()
                    else v for k, v in row.items()}

    def one(item):
        cached = reuse.get(resolved_of[item[0]]) if reuse else None
        if cached is not None and (not item[1] or cached["CALTYPE"] == item[1]) \
                and (stage is None or cached["STAGE"] == stage):
            return dict(cached, PATH=str(item[0]))
        return _frame_row(item[0], item[1], stage, vacuum, settings)

    if scheduler.current().remote:  # one task per frame on the cluster
        rows = scheduler.map_tasks(one, files)
    else:
        with ThreadPoolExecutor(max_workers=settings.workers) as pool:
            rows = list(progress(pool.map(one, files), desc="index", total=len(files),
                                 enabled=progress_bar))
    rows = [r for r in rows if r]
    _note_pixel_types(rows)
    table = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    table["BADFITS"] = table["BADFITS"].fillna(True).astype(bool)
    from .dose import assign_doses

    root = Path(discover[0]) if discover else _common_parent([r for _, r in jobs])
    table, report = assign_doses(table, radiation_log=radiation_log, root=root)
    if report.campaign_log or report.local_logs or report.spread_folders:
        logger.info("%s", report.summary())
    return table[INDEX_COLUMNS]


def _resolved(paths: Iterable) -> list[Path]:
    """``Path(p).resolve()`` of each of ``paths``, each folder resolved once
    (:func:`~utils.io.discovery.real_paths`)."""
    paths = [os.fspath(p) for p in paths]
    real = real_paths(paths)
    return [Path(real[p]) for p in paths]


def _common_parent(paths) -> Path | None:
    try:
        return Path(os.path.commonpath([str(Path(p).resolve()) for p in paths]))
    except ValueError:
        return None


#: FITS sample types by BITPIX, for the log.
_BITPIX_NAMES = {8: "uint8", 16: "int16/uint16", 32: "int32", 64: "int64", -32: "float32",
                 -64: "float64"}


def _note_pixel_types(rows: list[dict]) -> None:
    """Say (once) when frames are not the converter's 16-bit integers: they are supported."""
    other: dict[str, list[str]] = {}
    for row in rows:
        bitpix = row.pop("_BITPIX", 16)
        if bitpix not in (16, None):
            other.setdefault(_BITPIX_NAMES.get(bitpix, f"BITPIX {bitpix}"), []).append(row["PATH"])
    for kind, paths in other.items():
        logger.info("%d frames are %s rather than the converter's unsigned 16-bit (e.g. %s): "
                    "supported, read as physical values in adu; their ADU convention is the "
                    "header's ADCBITS, else %d-bit", len(paths), kind, paths[0],
                    adu.DEFAULT_ADC_BITS)


def write_index(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the index CSV atomically, with paths relative to its folder."""
    path = Path(path)
    base = path.parent.resolve()
    out = table.copy()
    out["PATH"] = [os.path.relpath(p, base) for p in _resolved(out["PATH"])]
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
        self.problems: list[str] = []

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> "DatasetIndex":
        """Load and validate an index CSV; relative paths are resolved against its folder.

        The delimiter is sniffed (``,``, ``;``, tab, ``|``), the encoding is UTF-8
        (BOM or not), UTF-16 with a BOM, else Latin-1.  Rows that cannot be used
        as they are become BADFITS with the reason (never silently dropped or
        mis-read): a key value that is not a number (``TEMP='warm'``), not finite
        or negative where it cannot be, an empty ``PATH``, a ``BADFITS`` cell
        that is not a truth value, a second row of the same file.  One warning
        says how many.

        Raises
        ------
        TableError
            Missing file, unreadable CSV, or missing required columns.
        """
        path = Path(path)
        if path.is_dir():
            raise TableError(f"{path}: is a folder, not an index CSV; give the index file (build "
                             "it with python -m utils.index_dataset)")
        if not path.is_file():
            raise TableError(f"{path}: index file does not exist; build it with "
                             "python -m utils.index_dataset")
        try:
            text, _ = decode_text(path.read_bytes())
        except OSError as err:
            raise TableError(f"{path}: cannot read the index ({err.strerror or err})") from err
        hint = "rebuild it with python -m utils.index_dataset"
        if not text.strip():
            raise TableError(f"{path}: the index is empty; {hint}")
        delimiter = sniff_delimiter(text[:4096])
        try:
            table = pd.read_csv(io.StringIO(text), sep=delimiter, low_memory=False)
            cells = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str,
                                keep_default_na=False, na_filter=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise TableError(f"{path}: not a readable CSV ({first}); {hint}") from err
        names = [" ".join(str(c).split()).upper() for c in table.columns]
        repeated = sorted({n for n in names if names.count(n) > 1 and n in INDEX_COLUMNS})
        if repeated:
            raise TableError(f"{path}: column(s) {', '.join(repeated)} appear twice; {hint}")
        table.columns = cells.columns = names
        missing = [c for c in cls.REQUIRED if c not in table.columns]
        if missing:
            shown = ", ".join(n for n in names[:8]) or "none"
            raise TableError(f"{path}: missing column(s) {', '.join(missing)} (columns: "
                             f"{shown}); {hint}")
        table, problems = _validated(table, cells, path.parent)
        index = cls(table)
        index.problems = problems
        if problems:
            logger.warning("%s: %d rows cannot be used as they are and are flagged BADFITS (e.g. "
                           "%s); see their REASON", path, len(problems), problems[0])
        return index

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

    def check_files(self) -> list[str]:
        """Flag (BADFITS, with the reason) rows whose file is missing, unreadable or truncated.

        Reads each usable frame's header only; ``NAXIS1``/``NAXIS2`` are taken from
        the file.  Returns one message per newly flagged row.
        """
        table = self.table
        flagged = []
        for i in table.index[~table["BADFITS"].to_numpy(dtype=bool)]:
            try:
                layout = fits_layout(table.at[i, "PATH"])
            except FrameError as err:
                reason = ("file not found" if not Path(table.at[i, "PATH"]).is_file()
                          else err.reason)
                _flag(table, i, reason)
                flagged.append(f"{table.at[i, 'PATH']}: {reason}")
                continue
            table.at[i, "NAXIS2"], table.at[i, "NAXIS1"] = layout.shape
        return flagged


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
        index = DatasetIndex.from_csv(basepath)
        for message in index.check_files():
            logger.warning("%s; flagged BADFITS", message)
        return index
    if not basepath.is_dir():
        raise InputPathError(f"{basepath}: no such folder or index CSV; give the folder of "
                             "converted FITS frames or an index from utils.index_dataset")
    table = build_index([("", basepath)], settings=settings, previous=cache,
                        progress_bar=progress_bar)
    if cache is not None:
        write_index(table, cache)
        return DatasetIndex.from_csv(cache)
    return DatasetIndex(table)


#: Truth values of a BADFITS cell (lower case); an empty cell is False.
_TRUE = {"true", "1", "1.0", "yes", "t", "y"}
_FALSE = {"false", "0", "0.0", "no", "f", "n", ""}
#: Numeric columns whose value decides grouping or reading: a bad cell flags the row.
_KEY_NUMBERS = ("TEMP", "EXPTIME", "DOSE", "NAXIS1", "NAXIS2", "ADUSCALE")
#: Other numeric columns: a bad cell is left empty (the value is measured again when needed).
_OTHER_NUMBERS = ("ZEROFRACTION", "FRAMENUM", "TIMESTAMP", "SATFRACTION", "MEAN", "MEDIAN",
                  "STD", "P16", "P84", "FRAMEDOSE", "DOSERATE", "TANNEAL")
#: Columns that cannot be negative.
_NON_NEGATIVE = ("EXPTIME", "DOSE", "NAXIS1", "NAXIS2", "ADUSCALE")


def _flag(table: pd.DataFrame, i, reason: str) -> None:
    """Mark row ``i`` BADFITS and append ``reason`` to its REASON."""
    before = table.at[i, "REASON"]
    before = before if isinstance(before, str) and before else ""
    table.at[i, "BADFITS"] = True
    table.at[i, "REASON"] = f"{before}; {reason}" if before else reason


def _validated(table: pd.DataFrame, cells: pd.DataFrame, base: Path
               ) -> tuple[pd.DataFrame, list[str]]:
    """Typed index columns from the raw text ``cells``; unusable rows flagged, not dropped."""
    problems: list[str] = []
    reasons: dict[int, list[str]] = {}

    def note(i, text):
        reasons.setdefault(i, []).append(text)

    for column in INDEX_COLUMNS:
        if column not in table.columns:
            table[column] = np.nan
    text = {c: cells[c].astype(str).str.strip() if c in cells.columns
            else pd.Series("", index=table.index) for c in INDEX_COLUMNS}
    for column in _KEY_NUMBERS + _OTHER_NUMBERS:
        values = np.full(len(table), np.nan)
        for i, cell in enumerate(text[column]):
            if cell == "" or cell.lower() in ("nan", "none", "null", "n/a", "na"):
                continue
            value = parse_number(cell)
            if value is None or not math.isfinite(value):
                if column in _KEY_NUMBERS:
                    what = "not a number" if value is None else "not finite"
                    note(i, f"{column}={cell!r} is {what}")
                continue
            if column in _NON_NEGATIVE and value < 0:
                note(i, f"{column}={cell!r} is negative")
                continue
            values[i] = value
        table[column] = values
    for column in ("NAXIS1", "NAXIS2"):
        values = table[column].to_numpy()
        for i in np.flatnonzero(np.isfinite(values) & (values % 1 != 0)):
            note(i, f"{column}={text[column].iloc[i]!r} is not a whole number")
            table.loc[i, column] = np.nan
    # paths: relative to the CSV's folder; an empty one is no frame at all
    paths = []
    for i, cell in enumerate(text["PATH"]):
        if cell == "":
            note(i, "empty PATH")
            paths.append("")
            continue
        paths.append(os.path.abspath(base / cell))  # documented: absolute paths
    table["PATH"] = paths
    table["CALTYPE"] = text["CALTYPE"].str.upper().to_numpy()
    table["STAGE"] = text["STAGE"].to_numpy()
    table["REASON"] = text["REASON"].to_numpy()
    for column in ("BEAM", "DOSESRC", "DOSEFLAG"):  # dose bookkeeping, text
        table[column] = text[column].to_numpy()
    badfits = []
    for i, cell in enumerate(text["BADFITS"]):
        word = cell.lower()
        if word not in _TRUE | _FALSE:
            note(i, f"BADFITS={cell!r} is not true or false")
        badfits.append(word in _TRUE)
    table["BADFITS"] = np.array(badfits, dtype=bool)
    # the same file twice would count twice in its master
    first: dict[str, int] = {}
    for i, p in enumerate(paths):
        if not p:
            continue
        key = os.path.normcase(os.path.abspath(p))
        if key in first:
            note(i, f"repeats the file of line {first[key] + 2}")
        else:
            first[key] = i
    table = table.reset_index(drop=True)
    for i, texts in sorted(reasons.items()):
        reason = "index: " + ", ".join(texts)
        _flag(table, i, reason)
        problems.append(f"line {i + 2}: {', '.join(texts)}")
    return table, problems


def stage_order(stage: str) -> int:
    """Sort key of stages: pre, radiating, post, then anything else."""
    return STAGES.index(stage) if stage in STAGES else len(STAGES)


def by_stage(table: pd.DataFrame, column: str = "STAGE"):
    """``(stage, rows)`` of ``table`` in campaign order (pre, radiating, post, then any other
    in the order first seen), so legends and colours follow the campaign, not the rows'
    order (rows sorted by tag put post first).

    Examples
    --------
    >>> t = pd.DataFrame({"STAGE": ["post", "pre", "radiating", "pre"], "V": [4, 1, 2, 3]})
    >>> [(s, rows["V"].tolist()) for s, rows in by_stage(t)]
    [('pre', [1, 3]), ('radiating', [2]), ('post', [4])]
    """
    groups = dict(tuple(table.groupby(column, sort=False)))
    for stage in sorted(groups, key=stage_order):
        yield stage, groups[stage]


def sort_by_stage(table: pd.DataFrame, columns=("STAGE",)) -> pd.DataFrame:
    """A copy of ``table`` sorted by ``columns`` (stable), ``STAGE`` in campaign order (pre,
    radiating, post), not alphabetical (post, pre, radiating): the order a product table is
    read in.

    Examples
    --------
    >>> t = pd.DataFrame({"STAGE": ["post", "pre", "radiating", "radiating"],
    ...                   "DOSE": [40.0, 0.0, 20.0, 5.0]})
    >>> sort_by_stage(t, ["STAGE", "DOSE"])["DOSE"].tolist()
    [0.0, 5.0, 20.0, 40.0]
    """
    return table.sort_values(
        list(columns), kind="stable",
        key=lambda s: s.map(stage_order) if s.name == "STAGE" else s).reset_index(drop=True)


def parse_stage(text: str) -> str:
    """Accept ``pre/radiating/post`` and the old word ``during``; raise ValueError otherwise."""
    word = re.sub(r"[^a-z0-9]", "", text.lower())
    if word in _STAGE_LOOKUP:
        return _STAGE_LOOKUP[word]
    raise ValueError(f"unknown stage {text!r}; use one of {', '.join(STAGES)}")


__all__ = ["DatasetIndex", "IndexSettings", "build_index", "write_index", "infer_stage",
           "infer_vacuum", "infer_dose", "discover_sections", "section_type", "INDEX_COLUMNS",
           "STAGES", "CALTYPES", "stage_order", "by_stage", "sort_by_stage", "parse_stage",
           "load_frames"]
