"""Raw frames to FITS, one file per frame, and the per-frame listing ``fits_index.csv``.

For every attempt of the bias, dark and flat sections (``TestSection1/2/3``,
or ``Bias/Darks/Flats`` of an irradiation stage) each raw file in
``frames/`` becomes ``fits/<name>.fits`` beside it: unsigned 16-bit data
(BZERO convention), every config entry and per-frame log column as header
keywords, exposure in seconds, sensor temperature as ``TEMP``, the values
parsed from the file and folder names, the ADU convention and the raw file's
provenance.  ``fits_index.csv`` in the common parent of the sections lists
every raw frame with its status: converted, already there, or rejected with
the reason (a wrong-size file is never padded: it gets no FITS).

Re-running skips frames whose FITS is complete and finishes the rest; every
file is written atomically, and raw files are only ever read.  The command
line is :mod:`utils.raw_to_fits`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import logging
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .. import adu, scheduler
from .. import headers as kw
from ..errors import FrameError, InputPathError, OutputPathError
from ..jobs import usable_cpus
from ..progress import progress
from ..settings import field
from ..stack.stats import histogram_statistics, statistics_cards
from .discovery import (
    FRAMES_DIR,
    RAW_SUFFIXES,
    Attempt,
    check_distinct_sections,
    find_attempts,
    real_paths,
)
from .fitsio import (
    BLOCK,
    atomic_path,
    check_output_dir,
    header_bytes,
    is_complete_fits,
    primary_cards,
    provenance_cards,
    read_header,
    remove_stale_temporaries,
    write_csv,
)
from .frame_log import FrameLog, find_frame_log, read_frame_log
from .raw import CameraConfig, read_camera_config, read_raw
from .tokens import file_exposure, file_frame_number, file_temperature, path_values

logger = logging.getLogger(__name__)

#: Name of the per-frame listing written by the converter.
FITS_INDEX_NAME = "fits_index.csv"
#: Structural keywords a config entry may not overwrite.
_RESERVED = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BZERO", "BSCALE",
             "BLANK", "END", "COMMENT", "HISTORY", "PCOUNT", "GCOUNT", "XTENSION", "BUNIT"}
#: Unix times after this are treated as absolute (DATE-OBS is written); smaller ones are relative.
_UNIX_EPOCH_MIN = 1e8

STATUS_CONVERTED = "converted"
STATUS_EXISTING = "existing"
STATUS_REJECTED = "rejected"

INDEX_COLUMNS = ["PATH", "CALTYPE", "STATUS", "REASON", "RAWPATH", "ATTEMPT", "FRAMENUM",
                 "EXPTIME", "REXPTIME", "TEMP", "TEMP_0", "EQTEMP", "FILETEMP", "PATHTEMP",
                 "GAIN", "TIMESTAMP", "DOSE", "TEMPSRC", "EXPSRC", "ADCBITS", "NOTES"]


@dataclass(frozen=True)
class ConversionSettings:
    """Settings of a raw-to-FITS conversion."""

    search_depth: int = field(6, "how many folder levels below a section root to look for attempts")
    byteorder: str = field("<", "byte order of raw samples when the config does not say: < or >")
    default_adc_bits: int = field(
        adu.DEFAULT_ADC_BITS, "ADC bits assumed for a frame whose samples carry no hint (all 0)")
    temp_tolerance: float = field(2.0, "[degC] log vs file/folder temperature difference reported")
    exp_tolerance: float = field(0.02, "relative log vs file/folder exposure difference reported")
    overwrite: bool = field(False, "re-convert frames whose FITS already exists")
    workers: int = field(1, "processes converting frames in parallel; 1: this process, "
                            "with two threads where there are two cores")

    def __post_init__(self):
        if self.search_depth < 0:
            raise ValueError("search_depth must be >= 0")
        if self.byteorder not in "<>" or len(self.byteorder) != 1:
            raise ValueError("byteorder must be '<' or '>'")
        if not 1 <= self.default_adc_bits <= 16:
            raise ValueError("default_adc_bits must be within 1..16")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.temp_tolerance < 0 or self.exp_tolerance < 0:
            raise ValueError("tolerances must be >= 0")


@dataclass
class _FrameTask:
    """Everything a worker process needs to convert one frame (picklable)."""

    raw_path: str
    fits_path: str
    caltype: str
    config: CameraConfig
    cards: list            # (key, value, comment) in write order
    default_adc_bits: int
    write: bool
    fingerprint: str = ""  # what the FITS is made from (:func:`conversion_fingerprint`)


def _config_cards(config: CameraConfig) -> list[tuple[str, object, str]]:
    cards = []
    for key, value in config.entries.items():
        try:
            name = kw.fits_keyword(key)
        except ValueError:
            continue
        if name in _RESERVED:
            name = f"HIERARCH CONFIG {name}"
        number = _as_number(value)
        cards.append((name, number if number is not None else value, f"config {key}"[:40]))
    return cards


def _as_number(text: str):
    """Config values that are numbers become numbers (int when written as one)."""
    for kind in (int, float):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            continue
        return value if math.isfinite(value) else None
    return None


def _iso_time(seconds: float) -> str:
    moment = _dt.datetime.fromtimestamp(seconds, tz=_dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def frame_metadata(raw_path: Path, attempt: Attempt, caltype: str, log: FrameLog | None,
                   position: int, settings: ConversionSettings) -> tuple[list, dict]:
    """Resolve one frame's header cards and its ``fits_index.csv`` row.

    Priority: per-frame log, then file name, then folder names below the
    section root (innermost wins).  Disagreements beyond the tolerances are
    noted, not silently resolved.

    Returns
    -------
    cards : list of (key, value, comment)
        Frame-specific header cards (config cards are added by the caller).
    row : dict
        Values for ``fits_index.csv``.
    """
    notes: list[str] = []
    name = raw_path.name
    number = file_frame_number(name)
    if number is None:
        number = position
        notes.append(f"no frame number in the file name; using position {position}")
    values: dict[str, object] = {}
    if log is not None:
        row = log.rows.get(number)
        if row is None:
            notes.append(f"frame {number} has no row in {log.path.name}")
        else:
            values = dict(row)
        notes.extend(log.bad_values.get(number, []))
    file_t, file_e = file_temperature(name), file_exposure(name)
    folder = path_values(raw_path.parent, attempt.section_root)
    cards: list[tuple[str, object, str]] = [
        (kw.CALTYPE, caltype, "calibration type (campaign section)"),
        (kw.IMAGETYP, caltype, "frame type"),
        (kw.FRAMENUM, int(number), "frame number within the attempt"),
    ]

    def pick(log_key, candidates, tolerance, relative, unit):
        from_log = values.pop(log_key, None)
        chosen, source = None, ""
        if isinstance(from_log, float):
            chosen, source = from_log, "log"
        for label, value in candidates:
            if math.isnan(value):
                continue
            if chosen is None:
                chosen, source = value, label
            else:
                limit = tolerance * max(abs(chosen), 1e-12) if relative else tolerance
                if abs(value - chosen) > limit:
                    notes.append(f"{log_key} from {source} {chosen:g} {unit} disagrees with "
                                 f"{label} {value:g} {unit}")
        return chosen, source

    temp, temp_src = pick(kw.TEMP, [("filename", file_t), ("folder", folder.temperature)],
                          settings.temp_tolerance, False, "degC")
    exptime, exp_src = pick(kw.EXPTIME, [("filename", file_e), ("folder", folder.exposure)],
                            settings.exp_tolerance, True, "s")
    if temp is None:
        notes.append("no sensor temperature (log, file name or folder)")
    else:
        cards.append((kw.TEMP, float(temp), f"[degC] sensor temperature ({temp_src})"))
        cards.append((kw.TEMPSRC, temp_src, "source of TEMP"))
    if exptime is None:
        notes.append("no exposure time (log, file name or folder)")
    else:
        cards.append((kw.EXPTIME, float(exptime), f"[s] exposure time ({exp_src})"))
        cards.append((kw.EXPSRC, exp_src, "source of EXPTIME"))
    if not math.isnan(file_t):
        cards.append((kw.FILETEMP, file_t, "[degC] temperature in the raw file name"))
    if not math.isnan(folder.temperature):
        cards.append((kw.PATHTEMP, folder.temperature, "[degC] temperature in the folder names"))
    if not math.isnan(folder.exposure):
        cards.append((kw.PATHEXP, folder.exposure, "[s] exposure in the folder names"))
    values.pop(kw.FRAMENUM, None)
    units = {kw.REXPTIME: "[s] ", kw.TEMP_0: "[degC] ", kw.EQTEMP: "[degC] ",
             kw.DELTMP: "[degC] ", kw.TIMESTAMP: "[s] ", kw.DOSE: "[krad] "}
    for key, value in values.items():
        cards.append((key, value, f"{units.get(key, '')}per-frame log"))
    stamp = values.get(kw.TIMESTAMP)
    if isinstance(stamp, float) and stamp > _UNIX_EPOCH_MIN:
        cards.append((kw.DATE_OBS, _iso_time(stamp), "UTC start of exposure (from TIMESTMP)"))
    cards.append((kw.ATTEMPT, attempt.name[:60], "attempt folder"))
    row = {"CALTYPE": caltype, "ATTEMPT": attempt.name, "FRAMENUM": int(number),
           "EXPTIME": exptime, "TEMP": temp, "TEMPSRC": temp_src, "EXPSRC": exp_src,
           "FILETEMP": None if math.isnan(file_t) else file_t,
           "PATHTEMP": None if math.isnan(folder.temperature) else folder.temperature,
           "REXPTIME": values.get(kw.REXPTIME), "TEMP_0": values.get(kw.TEMP_0),
           "EQTEMP": values.get(kw.EQTEMP), "GAIN": values.get(kw.GAIN),
           "TIMESTAMP": values.get(kw.TIMESTAMP), "DOSE": values.get(kw.DOSE),
           "NOTES": "; ".join(notes)}
    return cards, row


_STRUCTURE = (("SIMPLE", True, "conforms to FITS standard"),
              ("BITPIX", 16, "16-bit integers (unsigned via BZERO)"),
              ("NAXIS", 2, ""))
_UNSIGNED = (("EXTEND", True, ""), ("BZERO", 32768, "unsigned 16-bit convention"),
             ("BSCALE", 1, ""))


def frame_header_bytes(shape: tuple[int, int], cards: Iterable) -> bytes:
    """Primary header of a converted uint16 frame, structural cards first."""
    structure = _STRUCTURE + (("NAXIS1", shape[1], "columns"), ("NAXIS2", shape[0], "rows")) \
        + _UNSIGNED
    return header_bytes(list(structure) + list(cards))


def _encode_numpy(data: np.ndarray, hist: np.ndarray) -> tuple[np.ndarray, int]:
    payload = data.astype(">u2")            # one copy, byte-swapped on little-endian hosts
    view = payload.view(np.uint16)
    np.bitwise_xor(view, np.frombuffer(b"\x80\x00", np.uint16)[0], out=view)
    hist += np.bincount(data.ravel(), minlength=hist.size)
    return payload, int(np.bitwise_or.reduce(data, axis=None))


def _histogram(hist: np.ndarray | None) -> np.ndarray:
    if hist is None:
        return np.zeros(1 << 16, dtype=np.int64)
    if hist.shape != (1 << 16,) or hist.dtype != np.int64:
        raise ValueError("hist must be an int64 array of 65536 bins")
    return hist


try:
    import numba

    @numba.njit(nogil=True, cache=True)
    def _encode_kernel(src, dst, hist):  # pragma: no cover - compiled
        # two loops, not one: the byte swap and OR vectorise on their own, and the counting
        # loop is left as bare loads and increments (one fused loop took twice as long)
        acc = np.uint16(0)
        s = src.ravel()
        o = dst.ravel()
        for i in range(s.size):
            v = s[i]
            acc |= v
            w = v ^ np.uint16(0x8000)
            o[i] = np.uint16(((w >> 8) | (w << 8)) & 0xFFFF)
        for i in range(s.size):
            hist[s[i]] += 1
        return acc

    def encode_frame(data: np.ndarray, hist: np.ndarray | None = None,
                     out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """FITS data bytes (big-endian ``value - 32768``) and the OR of all samples, one pass.

        ``hist`` (int64, 65536 bins), when given, gets each sample value counted in the same
        pass (for :func:`utils.stack.stats.histogram_statistics`).  ``out`` (uint16,
        ``data.size`` samples, C-contiguous), when given, receives the bytes (the result is
        a view of it): a converter reuses one from frame to frame.
        """
        data = np.ascontiguousarray(data, dtype=np.uint16)
        hist = _histogram(hist)
        if sys.byteorder != "little":
            return _encode_numpy(data, hist)
        out = _output(data, out)
        acc = _encode_kernel(data, out, hist)
        return out.view(">u2"), int(acc)
except ImportError:  # numba is optional: same bytes, four passes instead of one
    def encode_frame(data: np.ndarray, hist: np.ndarray | None = None,
                     out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """FITS data bytes (big-endian ``value - 32768``) and the OR of all samples
        (``hist``, when given, counts each sample value; ``out`` is not used)."""
        return _encode_numpy(np.asarray(data, dtype=np.uint16), _histogram(hist))


def _output(data: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return np.empty_like(data)
    if out.dtype != np.uint16 or out.size != data.size or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous uint16 array of data.size samples")
    return out.reshape(data.shape)


class _Scratch:
    """Frame-sized buffers (raw samples, encoded bytes, histogram) reused from frame to frame
    within one conversion run, one set per thread at work.

    A fresh 2 MB array per frame costs its pages' faults again (glibc hands freed large
    blocks back to the system): ~1400 faults per 1024^2 frame, ~2 ms of system time here,
    more than encoding the frame.
    """

    def __init__(self):
        self._free: list = []   # list.pop/append are atomic: threads share one pool

    @contextlib.contextmanager
    def buffers(self, config: CameraConfig):
        """``(raw, encoded, hist)`` for frames of ``config`` (hist zeroed)."""
        key = (config.frame_bytes, config.height * config.width)
        try:
            held = self._free.pop()
        except IndexError:
            held = None
        if held is None or held[0] != key:
            held = (key, np.empty(key[0], np.uint8), np.empty(key[1], np.uint16),
                    np.zeros(1 << 16, dtype=np.int64))
        else:
            held[3].fill(0)
        try:
            yield held[1:]
        finally:
            self._free.append(held)


def write_frame_fits(path: str | os.PathLike, payload: np.ndarray, header: bytes) -> None:
    """Write an encoded frame (see :func:`encode_frame`) and its header as FITS, atomically."""
    pad = (-payload.nbytes) % BLOCK
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(header)
            handle.write(payload.view(np.uint8))
            handle.write(b"\0" * pad)


def conversion_fingerprint(raw_path: Path, config: CameraConfig, cards: list,
                           default_adc_bits: int) -> str:
    """Short hash of everything a frame's FITS is made from: the raw file's size and
    modification time, the sample layout, and the header cards from the config, the
    per-frame log and the file and folder names.  A FITS whose ``CNVHASH`` differs (the log
    or config fixed after a warning, the raw file re-copied) is converted again."""
    stat = raw_path.stat()
    digest = hashlib.sha1(repr((stat.st_size, stat.st_mtime_ns, config.width, config.height,
                                config.dtype_name, default_adc_bits,
                                [tuple(c) for c in cards])).encode())
    return digest.hexdigest()[:16]


def _convert_one(task: _FrameTask, scratch: _Scratch | None = None) -> dict:
    """Convert one frame (in a worker thread or process); returns ADU/provenance fields.

    ``scratch`` lends the frame-sized buffers (fresh ones without it)."""
    raw_path = Path(task.raw_path)
    if not task.write:
        # already converted: a size check keeps the listing honest without reading pixels
        size = raw_path.stat().st_size
        if size != task.config.frame_bytes:
            return {"STATUS": STATUS_REJECTED,
                    "REASON": f"size {size} bytes, expected {task.config.frame_bytes}"}
        # the listing keeps what the first conversion measured (ADCBITS), read from the header
        header = primary_cards(task.fits_path, (kw.CNVHASH, kw.ADCBITS))
        if header is None:  # an unusual header: astropy reads it
            try:
                header = read_header(task.fits_path)
            except FrameError:
                header = {}
        if not task.fingerprint or header.get(kw.CNVHASH) == task.fingerprint:
            return {"STATUS": STATUS_EXISTING, "REASON": "", "ADCBITS": header.get(kw.ADCBITS)}
        # made from another raw file, config or log (or by a version without CNVHASH): the
        # FITS would disagree with fits_index.csv, which lists the current values
        logger.info("%s: its raw file, config or log changed since it was converted; "
                    "converting again", task.fits_path)
    with (scratch or _Scratch()).buffers(task.config) as (raw, encoded, hist):
        try:
            data = read_raw(raw_path, task.config, raw)
        except FrameError as err:
            return {"STATUS": STATUS_REJECTED, "REASON": err.reason}
        return _write_frame(task, raw_path, data, encoded, hist)


def _write_frame(task: _FrameTask, raw_path: Path, data: np.ndarray, encoded: np.ndarray,
                 hist: np.ndarray) -> dict:
    payload, bits = encode_frame(data, hist, encoded)
    adc_bits = 8 if data.dtype.itemsize == 1 else adu.adc_bits_from_bits(bits,
                                                                         task.default_adc_bits)
    cards = list(task.cards)
    cards += [(kw.RAWFILE, raw_path.name[:60], "raw file converted"),
              (kw.RAWSIZE, raw_path.stat().st_size, "[byte] size of the raw file"),
              (kw.RAWDTYPE, task.config.dtype_name, "sample type of the raw file"),
              (kw.CNVHASH, task.fingerprint or conversion_fingerprint(
                  raw_path, task.config, task.cards, task.default_adc_bits),
               "hash of raw file, config and log values used"),
              (kw.BUNIT, adu.UNIT, "stored 16-bit ADU")]
    cards += adu.scaling_cards(adc_bits)
    # the index's statistics, from the histogram counted while encoding, so that the index
    # need not read every frame again; counted against the level it will take from this header
    first: dict = {}
    for key, value, _ in cards:
        first.setdefault(key, value)   # a reader sees a repeated keyword's first card
    saturation = adu.frame_saturation(first)
    cards += statistics_cards(histogram_statistics(hist, saturation=saturation), saturation)
    cards += provenance_cards("FRAME")
    write_frame_fits(task.fits_path, payload, frame_header_bytes(data.shape, cards))
    return {"STATUS": STATUS_CONVERTED, "REASON": "", "ADCBITS": adc_bits}


def plan_attempt(attempt: Attempt, caltype: str, settings: ConversionSettings):
    """Prepare the conversion tasks and index rows of one attempt (no pixel I/O)."""
    config = read_camera_config(attempt.path, byteorder=settings.byteorder)
    for problem in config.problems:
        logger.warning("%s: %s", config.path or attempt.path, problem)
    log_path = find_frame_log(attempt.path)
    log = read_frame_log(log_path) if log_path else None
    if log is None:
        logger.warning("%s: no per-frame log (temperatureLog.csv/radiationLog.csv); temperatures "
                       "and exposures come from file and folder names", attempt.path)
    else:
        for problem in log.problems:
            logger.warning("%s: %s", log.path, problem)
        if log.rows and kw.TEMP not in log.columns.values():
            shown = ", ".join(log.columns)[:120]
            logger.warning("%s: no sensor temperature column (columns: %s); TEMP comes from the "
                           "file and folder names (set points, see TEMPSRC); add the column "
                           "and re-run to use the sensor's readings", log.path, shown)
    raws = attempt.raw_files()
    if not raws:
        logger.warning("%s: frames/ holds no raw files", attempt.path)
    remove_stale_temporaries(attempt.fits_dir)
    base_cards = _config_cards(config)
    tasks, rows = [], []
    for position, raw in enumerate(raws):
        cards, row = frame_metadata(raw, attempt, caltype, log, position, settings)
        out = attempt.fits_dir / (raw.stem + ".fits")
        write = settings.overwrite or not is_complete_fits(out)
        merged = {}
        for key, value, comment in base_cards + cards:   # log/frame cards override config cards
            merged[key] = (key, value, comment)
        cards = list(merged.values())
        try:
            fingerprint = conversion_fingerprint(raw, config, cards, settings.default_adc_bits)
        except OSError:   # gone or unreadable: the conversion says so
            fingerprint = ""
        tasks.append(_FrameTask(str(raw), str(out), caltype, config, cards,
                                settings.default_adc_bits, write, fingerprint))
        row.update(PATH=str(out), RAWPATH=str(raw))
        rows.append(row)
    return tasks, rows


@dataclass
class ConversionReport:
    """What a conversion did: one index row per raw frame, and where the index went."""

    rows: list
    index_path: Path | None

    def count(self, status: str) -> int:
        """Number of frames with this status."""
        return sum(1 for r in self.rows if r["STATUS"] == status)


def _convert_attempt(tasks: list[_FrameTask]) -> list[dict]:
    """Convert the frames of one attempt (a scheduler task)."""
    scratch = _Scratch()
    return [_convert_one(t, scratch) for t in tasks]


#: Buffers of a worker process (:func:`_convert_pooled`), kept as long as the process.
_PROCESS_SCRATCH = _Scratch()


def _convert_pooled(task: _FrameTask) -> dict:
    return _convert_one(task, _PROCESS_SCRATCH)


def local_threads() -> int:
    """Threads converting frames when no worker processes are asked for: two where there are
    two cores (reading, encoding and writing a frame release the GIL; its statistics and
    header cards, ~30 % of its time, hold it, so more threads gain little)."""
    return min(2, usable_cpus())


def _run_tasks(tasks: list[_FrameTask], workers: int, desc: str, show: bool) -> list[dict]:
    if scheduler.current().remote:  # one task per attempt (the folder holding frames/)
        attempts: list[list[_FrameTask]] = []
        for task in tasks:
            folder = Path(task.raw_path).parent.parent
            if not attempts or Path(attempts[-1][0].raw_path).parent.parent != folder:
                attempts.append([])
            attempts[-1].append(task)
        done = scheduler.map_tasks(_convert_attempt, attempts)
        return [row for rows in done for row in rows]
    scratch = _Scratch()
    threads = local_threads() if workers <= 1 else 1
    if len(tasks) < 2 or (workers <= 1 and threads <= 1):
        return [_convert_one(t, scratch) for t in progress(tasks, desc=desc, enabled=show)]
    if workers <= 1:
        # map keeps the order of the tasks: the rows stay in the listing's order
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="convert")
        try:
            return list(progress(pool.map(lambda t: _convert_one(t, scratch), tasks),
                                 desc=desc, total=len(tasks), enabled=show))
        finally:  # a failed frame (or Ctrl-C) stops the frames not yet begun
            pool.shutdown(wait=True, cancel_futures=True)
    chunk = max(1, min(16, len(tasks) // (workers * 4)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(progress(pool.map(_convert_pooled, tasks, chunksize=chunk), desc=desc,
                             total=len(tasks), enabled=show))


def convert_sections(sections: dict[str, str | os.PathLike], settings: ConversionSettings,
                     *, index_dir: str | os.PathLike | None = None,
                     keep: Sequence[str] = (),
                     progress_bar: bool = False) -> ConversionReport:
    """Convert every attempt of the given sections and write ``fits_index.csv``.

    Parameters
    ----------
    sections : dict
        ``{"BIAS": path, "DARK": path, "FLAT": path}`` (any subset).
    settings : ConversionSettings
        Conversion settings.
    index_dir : path-like, optional
        Folder of ``fits_index.csv``; default is the common parent of the sections.
    keep : sequence of str
        Frame types (``CALTYPE``) of sections not converted this time (``--skip-flat``):
        their rows of an existing ``fits_index.csv`` are kept, not dropped from the listing.
    progress_bar : bool
        Show one progress bar per section.

    Raises
    ------
    InputPathError
        A section folder is missing or holds no attempts.
    """
    roots = {cal: Path(p) for cal, p in sections.items()}
    for cal, root in roots.items():
        if not root.is_dir():
            raise InputPathError(f"{root}: {cal.lower()} section folder does not exist; "
                                 "check the path or pass --skip-" + cal.lower())
    check_distinct_sections(list(roots.items()))
    if index_dir is None:
        index_dir = common_parent(list(roots.values()))
    check_output_dir(index_dir, f"folder of {FITS_INDEX_NAME} (--index-dir)")
    # find every attempt first: a bad section stops the run before anything is written
    found = {cal: find_attempts(root, settings.search_depth) for cal, root in roots.items()}
    planned = {}
    for cal, attempts in found.items():
        tasks, rows = [], []
        for attempt in attempts:
            t, r = plan_attempt(attempt, cal, settings)
            tasks += t
            rows += r
        planned[cal] = (tasks, rows)
    check_writable_attempts([t for tasks, _ in planned.values() for t in tasks])
    all_rows: list[dict] = []
    for cal, (tasks, rows) in planned.items():
        logger.info("%s section %s: %d attempts", cal.lower(), roots[cal], len(found[cal]))
        results = _run_tasks(tasks, settings.workers, f"convert {cal.lower()}", progress_bar)
        for row, result in zip(rows, results):
            row.update(result)
            if row["STATUS"] == STATUS_REJECTED:
                logger.warning("%s: %s; no FITS written", row["RAWPATH"], row["REASON"])
                row["PATH"] = ""
        noted = [r for r in rows if r.get("NOTES")]
        if noted:
            logger.warning("%s section: %d frames have notes (e.g. %s: %s); see the NOTES column "
                           "of %s", cal.lower(), len(noted), Path(noted[0]["RAWPATH"]).name,
                           noted[0]["NOTES"], FITS_INDEX_NAME)
        all_rows += rows
    index_path = None
    if all_rows:
        index_path = Path(index_dir) / FITS_INDEX_NAME
        kept = _kept_rows(index_path, keep) if keep else []
        write_fits_index(all_rows + kept, index_path)
    return ConversionReport(all_rows, index_path)


def _kept_rows(index_path: Path, caltypes: Sequence[str]) -> list[dict]:
    """Rows of an existing listing whose ``CALTYPE`` is in ``caltypes``, paths absolute."""
    if not index_path.is_file():
        return []
    try:
        table = pd.read_csv(index_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        logger.warning("%s: earlier listing unreadable (%s); the skipped sections' rows are not "
                       "kept", index_path, err)
        return []
    if "CALTYPE" not in table:
        return []
    table = table[table["CALTYPE"].str.upper().isin([c.upper() for c in caltypes])].copy()
    base = index_path.parent
    for column in ("PATH", "RAWPATH"):
        if column in table:
            table[column] = table[column].map(lambda p: str(base / p) if p else "")
    return table.to_dict("records")


def check_writable_attempts(tasks: list[_FrameTask]) -> None:
    """One-line error, before anything is converted, when an attempt's ``fits/`` folder
    cannot be written (a file in its place, or no permission)."""
    bad: list[tuple[Path, OutputPathError]] = []
    checked: set[str] = set()
    for task in tasks:
        folder = str(Path(task.fits_path).parent)
        if not task.write or folder in checked:
            continue
        checked.add(folder)
        try:
            check_output_dir(folder, "FITS folder of the attempt")
        except OutputPathError as err:
            bad.append((Path(folder), err))
    if bad:
        more = f" (and {len(bad) - 1} more attempt folders)" if len(bad) > 1 else ""
        raise OutputPathError(f"{bad[0][1]}{more}; nothing was converted")


def common_parent(roots: Sequence[Path]) -> Path:
    """The folder holding all section roots (the parent of a single root)."""
    resolved = [Path(r).resolve() for r in roots]
    parent = Path(os.path.commonpath(resolved))
    return parent.parent if parent in resolved else parent


def write_fits_index(rows: list[dict], path: Path) -> Path:
    """Write ``fits_index.csv``: paths relative to its folder, one row per raw frame."""
    table = pd.DataFrame(rows)
    for column in INDEX_COLUMNS:
        if column not in table:
            table[column] = None
    base = path.parent.resolve()
    # each folder resolved once (a linked file by itself)
    real = real_paths(os.fspath(p) for column in ("PATH", "RAWPATH") for p in table[column] if p)

    def relative(p):
        return os.path.relpath(real[os.fspath(p)], base) if p else ""

    table["PATH"] = table["PATH"].map(relative)
    table["RAWPATH"] = table["RAWPATH"].map(relative)
    table["ADCBITS"] = pd.to_numeric(table["ADCBITS"], errors="coerce").astype("Int64")
    return write_csv(table[INDEX_COLUMNS], path)


class _LooseAttempt(Attempt):
    """An attempt whose raw files lie in the folder itself, without a ``frames/`` sub-folder."""

    @property
    def frames_dir(self) -> Path:
        """The folder itself."""
        return self.path


def convert_folder(folder: str | os.PathLike, caltype: str, settings: ConversionSettings, *,
                   progress_bar: bool = False,
                   index_dir: str | os.PathLike | None = None) -> ConversionReport:
    """Convert one folder of raw frames outside the campaign sections (e.g. an operation
    sequence ``<x>kRads/`` with ``CALTYPE`` ``OPER``).

    The raw files are in ``folder/frames/`` or, failing that, in ``folder`` itself; the
    config and per-frame log are in ``folder``.  FITS go to ``folder/fits/`` and the
    listing to ``folder/fits_index.csv``, as for any attempt.  ``caltype`` '' leaves the frame
    type to the index (from each header's ``EXPTIME``); ``index_dir`` puts ``fits_index.csv``
    elsewhere (e.g. an output folder, so that a re-run leaves the input folder untouched).

    Raises
    ------
    InputPathError
        ``folder`` is missing or holds no raw frame.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputPathError(f"{folder}: folder does not exist; check the path")
    frames = folder / FRAMES_DIR
    attempt = Attempt(folder, folder) if frames.is_dir() else _LooseAttempt(folder, folder)
    tasks, rows = plan_attempt(attempt, caltype, settings)
    if not tasks:
        raise InputPathError(f"{attempt.frames_dir}: no raw frames ({', '.join(RAW_SUFFIXES)}) "
                             "to convert; check the folder")
    results = _run_tasks(tasks, settings.workers, f"convert {folder.name}", progress_bar)
    for row, result in zip(rows, results):
        row.update(result)
        if row["STATUS"] == STATUS_REJECTED:
            logger.warning("%s: %s; no FITS written", row["RAWPATH"], row["REASON"])
            row["PATH"] = ""
    listing = Path(index_dir) if index_dir is not None else folder
    return ConversionReport(rows, write_fits_index(rows, listing / FITS_INDEX_NAME))
