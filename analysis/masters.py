"""Masters from a dataset index: bias per temperature bin, dark and flat per (temperature,
exposure).

Order matters and is fixed: bias masters first, then darks (each frame minus
the bias at its own temperature: the per-pixel bias model when the set lies
within the bias temperatures, else the nearest bias master within a
tolerance), then flats (minus bias and the matching dark, normalised).  Stages
and dose steps are never mixed.  A master whose inputs and settings are
unchanged since it was written (same ``INHASH``) is not rebuilt.  A set that
cannot be combined (frames of different shapes, a frame that turns out
unreadable, a reference of another shape) is refused with the reason and the
other sets are built, as BANZAI isolates a bad frame.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from astropy.io import fits

from utils import adu, scheduler
from utils import headers as kw
from utils.errors import FrameError
from utils.io.fastheader import PrimaryHeader, UnusualCard, read_primary
from utils.io.fitsio import read_header
from utils.io.tokens import number_text
from utils.io.write_behind import WriteBehind
from utils.models.bias_model import BiasModel, MasterStack, fit_bias_model
from utils.settings import field
from utils.stack.blockops import FLAG_FEW
from utils.stack.combine import DEFAULT_CLIP_SIGMA
from utils.stack.grouping import GroupKey, calibration_groups
from utils.stack.master import (
    CombineSettings,
    adc_bits_of,
    existing_product,
    inputs_hash,
    quadrature_sum,
    real_paths,
    stack_request,
    stack_rows,
)
from utils.stack.references import BiasReference, scaled_dark_files
from utils.stack.stats import exact_median, exact_nanmedian, typical_noise
from utils.stack.subsets import combine_subsets, shareable, subset_index
from utils.stack.tiles import pixel_blocks

logger = logging.getLogger(__name__)

INHASH = kw.INHASH
#: Masters finished and written behind at most (statistics, header, file; each holds its
#: images, ~20 byte per pixel).  Each master's blocks are queued in the shared pool as soon as
#: it is set up and its finish job waits for them, so the stacking of the next master already
#: overlaps the finishing of this one with one job pending; with two, three masters' images
#: coexisted with the finish temporaries: the 2048 x 2048 masters stage peaked at 904 MB
#: instead of 780 (one pending: 789), and the 1024 x 1024 stage was not faster with two
#: (against the stacking in turn, separate runs: -1.0..-1.4 s wall with two, -3.2 s with one).
WRITE_DEPTH = 1
#: Key of the ``{path: real path}`` of the index's frames in the stage cache of build_masters.
REAL_PATHS = "real paths"
#: Stack a set's master and its attempts' masters from one read of the frames
#: (:func:`utils.stack.subsets.combine_subsets`) where they are prepared alike; False: one
#: combine each (the same products, each frame read and prepared once per master).
SHARE_READS = True
#: Largest size of the images of the masters stacked from one read, twice (the unit being
#: finished and the next one being stacked) [byte], at :data:`MASTER_IMAGE_BYTES` per pixel
#: each: about six masters' images exist at once instead of two when stacked in turn.
#: 1024 x 1024 with 2 attempts (2 x 3 masters, 94 MB) shares its reads; 2048 x 2048 (377 MB)
#: stacks in turn, its peak unchanged (with units of 3 finished one master at a time, four
#: masters' images: its darks stage alone 616 -> 727 MB resident).  Not tied to
#: ``memory_limit`` (1e9: 2048 x 2048 would share): at 2048 x 2048 the stage is bound by the
#: write-behind thread (~35 of ~42 s busy: FITS writes 18-20 s, header statistics 8-10 s), so
#: one read per unit saved no CPU or time there (page cache warm), only cost memory or time:
#: two units in flight 757-789 -> 883 MB (stage alone); units stacked once at most one master
#: before them is unwritten (k + 1 masters' images) +2..+8 s wall, +35-50 MB (session 34).
SHARE_IMAGE_BYTES = 100e6
#: Bytes per pixel of a master's images while stacked: data, noise, stderr (float32),
#: count (int16), flags (uint8).
MASTER_IMAGE_BYTES = 15


@dataclass(frozen=True)
class MasterSettings:
    """How masters are grouped and combined."""

    temp_bin: float = field(1.0, "[degC] largest temperature span of one master")
    exp_tolerance: float = field(0.01, "largest relative exposure-time span of one master")
    bias_temp_tolerance: float = field(2.0, "[degC] largest |T_dark - T_bias| for bias subtraction")
    bias_model: bool = field(True, "subtract a per-pixel bias(T) line fitted to the bias masters, "
                                   "evaluated at each frame's temperature, when the set lies "
                                   "within their temperature range (else the nearest master)")
    dark_temp_tolerance: float = field(2.0, "[degC] largest |T_flat - T_dark| for dark subtraction")
    method: str = field("sigclip", "combination: sigclip, median or mean")
    sigma_low: float = field(DEFAULT_CLIP_SIGMA, "[sigma] lower clipping threshold")
    sigma_high: float = field(DEFAULT_CLIP_SIGMA, "[sigma] upper clipping threshold")
    maxiters: int = field(5, "largest number of clipping iterations")
    min_accepted: int = field(3, "pixels with fewer accepted samples are masked")
    per_attempt: bool = field(True, "also write one master per attempt (stability check)")
    memory_limit: float = field(1e9, "[byte] working-memory budget of one combination")
    workers: int = field(2, "threads of one combination")

    def __post_init__(self):
        if self.method not in ("sigclip", "median", "mean"):
            raise ValueError(f"method must be sigclip, median or mean, not {self.method!r}")
        # written as 'not x > 0' so that NaN is refused too
        if not (self.temp_bin > 0 and self.exp_tolerance >= 0):
            raise ValueError("temp_bin must be > 0 and exp_tolerance >= 0")
        if not (self.bias_temp_tolerance >= 0 and self.dark_temp_tolerance >= 0):
            raise ValueError("temperature tolerances must be >= 0")
        if not (self.sigma_low > 0 and self.sigma_high > 0) or self.min_accepted < 1:
            raise ValueError("sigma thresholds must be > 0 and min_accepted >= 1")
        if self.maxiters < 0:
            raise ValueError("maxiters must be >= 0")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, not {self.workers}")
        if not self.memory_limit >= 1e6:
            raise ValueError(f"memory_limit must be >= 1e6 byte, not {self.memory_limit:g}")

    @property
    def combine(self) -> CombineSettings:
        """The combination part, as the pipelines' settings hold it (same INHASH)."""
        return CombineSettings(method=self.method, sigma_low=self.sigma_low,
                               sigma_high=self.sigma_high, maxiters=self.maxiters,
                               min_accepted=self.min_accepted, memory_limit=self.memory_limit,
                               workers=self.workers)


@dataclass
class MasterRecord:
    """One master: where it is, what went in, and its headline numbers."""

    key: GroupKey
    path: Path | None
    status: str                 # written, existing, refused
    reason: str = ""
    ncombine: int = 0
    nbad: int = 0               # frames of the set excluded as BADFITS
    mean: float = math.nan      # [unit] of the master over valid pixels
    median: float = math.nan
    std: float = math.nan
    noise: float = math.nan     # typical input noise [unit] (stats.typical_noise)
    tavg: float = math.nan
    bias_file: str = ""
    dark_file: str = ""
    level: float = math.nan     # flats: normalisation level [adu]
    worst_frame: str = ""

    def row(self) -> dict:
        """Row of ``masters_summary.csv``."""
        return {"PATH": str(self.path or ""), "CALTYPE": self.key.caltype,
                "STAGE": self.key.stage, "DOSE": self.key.dose, "TBIN": self.key.temperature,
                "EXPTIME": self.key.exptime, "ATTEMPT": self.key.attempt, "STATUS": self.status,
                "REASON": self.reason, "NCOMBINE": self.ncombine, "NBADFITS": self.nbad,
                "TAVG": self.tavg, "MEAN": self.mean, "MEDIAN": self.median, "STD": self.std,
                "NOISE": self.noise, "LEVEL": self.level, "BIASFILE": self.bias_file,
                "DARKFILE": self.dark_file, "WORST": self.worst_frame}


def master_path(out_dir: Path, key: GroupKey) -> Path:
    """``masters/[<stage>/]<type>/[attempts/]master_<type>_<tag>.fits``."""
    folder = Path(out_dir) / "masters"
    if key.stage_dir:
        folder /= key.stage_dir
    folder /= key.caltype.lower()
    if key.attempt:
        folder /= "attempts"
    return folder / f"master_{key.caltype.lower()}_{key.tag}.fits"


def _no_flat_level(result, level: float, saturation: float) -> str:
    """Why a flat master has no level to normalise by: every pixel masked (saying how many
    of the samples were saturated), or a median level <= 0 [adu]."""
    if math.isfinite(level):
        return (f"flat level {level:.4g} adu <= 0 after the bias/dark subtraction (check the "
                "subtracted masters and the exposure)")
    nsat = int(result.inputs["NSAT"].sum()) if "NSAT" in result.inputs else 0
    samples = len(result.inputs) * result.data.size
    return (f"no valid pixel: {nsat / samples:.0%} of the samples saturated (>= {saturation:g} "
            "adu); a shorter exposure or a lower illumination is needed" if nsat
            else "no valid pixel: every pixel masked")


def _fill_from_header(record: MasterRecord, header: fits.Header | PrimaryHeader) -> None:
    record.ncombine = int(header.get(kw.NCOMBINE, 0))
    record.mean = kw.get_float(header, kw.MEAN)
    record.median = kw.get_float(header, kw.MEDIAN)
    record.std = kw.get_float(header, kw.STD)
    record.tavg = kw.get_float(header, kw.TAVG)
    record.noise = kw.get_float(header, "NOISEMED")
    record.level = kw.get_float(header, kw.FLATNORM)
    record.bias_file = str(header.get(kw.BIASFILE, ""))
    record.dark_file = str(header.get(kw.DARKFILE, ""))


def _fill_from_file(record: MasterRecord, path: Path) -> None:
    """:func:`_fill_from_header` from the master just written, its cards as they read back
    (without astropy where the header is plain; ~0.1 ms instead of ~1 ms a master)."""
    header = read_primary(path)
    if header is not None:
        try:
            _fill_from_header(record, header)
            return
        except UnusualCard:
            pass
    _fill_from_header(record, read_header(path))


def _nearest(records: list[MasterRecord], key: GroupKey, caltype: str, tolerance: float,
             exptime: float | None = None, exp_tolerance: float = 0.0) -> MasterRecord | None:
    best, best_dt = None, (math.inf, 0.0)
    for rec in records:
        k = rec.key
        if (k.caltype != caltype or k.attempt or rec.path is None or k.stage != key.stage
                or not (k.dose == key.dose or (math.isnan(k.dose) and math.isnan(key.dose)))):
            continue
        if exptime is not None and abs(k.exptime - exptime) > exp_tolerance * exptime + 1e-9:
            continue
        # nearest temperature first; among equals the longest exposure (best signal to noise)
        dt = (abs(k.temperature - key.temperature),
              -k.exptime if exptime is None and not math.isnan(k.exptime) else 0.0)
        if best is None or dt < best_dt:
            best, best_dt = rec, dt
    return best if best is not None and best_dt[0] <= tolerance else None


def _build(key: GroupKey, rows: pd.DataFrame, nbad: int, out_dir: Path, settings: MasterSettings,
           *, unit: str, subtract=None, sub_stderr=None, scale=None, extra: dict | None = None,
           refs: tuple = (), normalise: bool = False, progress_bar: bool = False,
           writer: WriteBehind | None = None, real: dict | None = None,
           executor=None) -> MasterRecord | _Pending:
    """The master of one set, set up: its record when it exists already, else a
    :class:`_Pending` to stack and finish (:func:`_stack`)."""
    path = master_path(out_dir, key)
    paths = rows["PATH"].tolist()
    digest = inputs_hash(paths, settings, *refs, real=real)
    record = MasterRecord(key, path, "existing", nbad=nbad)
    worst = rows["STD"].idxmax() if "STD" in rows and rows["STD"].notna().any() else rows.index[0]
    record.worst_frame = str(rows.loc[worst, "PATH"])
    header = existing_product(path, digest)
    if header is not None:
        _fill_from_header(record, header)
        return record
    bits = adc_bits_of(rows)
    args = dict(scale=scale, subtract=subtract, product=f"MASTER_{key.caltype}",
                progress_bar=progress_bar, bits=bits)

    def stack():
        return stack_rows(rows, settings, deferred=True,
                          executor=executor if writer is not None else None, **args)

    def finish(stacked) -> None:
        # the master's statistics, header and file: single-threaded work, done behind (in
        # the writer's thread) while the next master is stacked; the record is complete
        # once its file is
        try:
            result = stacked.finish()  # (with a shared pool: waits for its blocks)
        except FrameError as err:  # a frame unreadable although the index said it was fine:
            # refused as _isolated refuses it when the stacking raises there
            record.status, record.reason, record.path = "refused", f"{err.path}: {err.reason}", None
            record.worst_frame = ""
            return
        cards = dict(extra or {})
        images = None
        if sub_stderr is not None:
            # the subtracted master's own uncertainty is common to every frame: add it once
            result.stderr = quadrature_sum(result.stderr, sub_stderr, out=result.stderr)
            if not normalise:  # kept alone too, as utils.stack.master.make_master does
                images = {"SUBERR": (np.asarray(sub_stderr, np.float32), unit)}
                cards["SUBERR"] = (True, "UNCERT includes the SUBERR of the subtracted image")
        if normalise:
            valid = ~result.mask & np.isfinite(result.data)
            if not valid.any():
                # a set of fewer than min_accepted frames has every pixel flagged FLAG_FEW
                # (and masked), yet its level is measured: it is written flagged, as bias
                # and darks are
                valid = np.isfinite(result.data) & ((result.flags & ~np.uint8(FLAG_FEW)) == 0)
            level = exact_median(result.data[valid]) if valid.any() else math.nan
            if not level > 0:
                record.status, record.reason, record.path = "refused", _no_flat_level(
                    result, level, adu.saturation_level(bits)), None
                return
            result.data = (result.data / level).astype(np.float32)
            result.stderr = (result.stderr / level).astype(np.float32)
            result.noise = (result.noise / level).astype(np.float32)
            cards[kw.FLATNORM] = (level * float(np.median(1.0 / np.asarray(scale)))
                                  if scale is not None else level,
                                  "[adu] median level divided out")
            good = result.data[valid] if valid.any() else np.array([math.nan])
            for name, value in ((kw.MEAN, np.mean(good)), (kw.MEDIAN, exact_median(good)),
                                (kw.STD, np.std(good))):
                cards[name] = (float(value), "of the normalised master, valid pixels")
        noise_med = typical_noise(result.noise, result.count)
        cards.update({
            INHASH: (digest, "hash of inputs and settings"),
            "NOISEMED": (noise_med, f"[{unit or '1'}] typical input noise (stats.typical_noise)"),
            kw.TBIN: (key.temperature, "[degC] temperature bin label"),
            kw.TBINW: (settings.temp_bin, "[degC] temperature bin width"),
            kw.STAGE: (key.stage or "none", "irradiation stage"),
            kw.CALTYPE: (key.caltype, "calibration type"),
            kw.IMAGETYP: (f"MASTER {key.caltype}", "frame type"),
            "NBADFITS": (nbad, "frames of the set excluded as BADFITS"),
        })
        if not math.isnan(key.exptime):
            cards[kw.EXPTIME] = (key.exptime, "[s] exposure time of the set")
        if not math.isnan(key.dose):
            cards[kw.DOSE] = (key.dose, "[krad] dose step")
        if key.attempt:
            cards[kw.ATTEMPT] = (key.attempt[:60], "attempt")
        for name, value, comment in adu.scaling_cards(bits):
            cards.setdefault(name, (value, comment))
        _fill_from_file(record, result.write(path, unit=unit, extra_header=cards,
                                             extra_images=images))
    shapes = frame_shapes(rows)
    pixels = next(iter(shapes))[0] * next(iter(shapes))[1] if len(shapes) == 1 else 0
    return _Pending(record, stack_request(rows, settings, **args), stack, finish,
                    pixels if pixels > 0 else 10**12)


@dataclass
class _Pending:
    """A master set up to be stacked: its record (complete once ``finish`` ran), the
    arguments of its combine, ``stack()`` (its own combine, deferred) and ``finish(stacked)``
    (statistics, header, file)."""

    record: MasterRecord
    request: dict
    stack: Callable
    finish: Callable
    pixels: int  # of one frame (unknown: huge, never shared)


def _joins(group: list[_Pending], pending: _Pending) -> bool:
    """Whether ``pending``'s frames are frames of ``group[0]``'s set prepared alike, none of
    them in another member of ``group`` (:func:`utils.stack.subsets.combine_subsets`)."""
    if 2 * (len(group) + 1) * MASTER_IMAGE_BYTES * pending.pixels > SHARE_IMAGE_BYTES:
        return False
    whole = group[0].request
    index = subset_index(whole["inputs"], pending.request["inputs"])
    if index is None or not shareable(whole, pending.request, index):
        return False
    taken = {p for member in group[1:] for p in member.request["inputs"]}
    return not taken.intersection(pending.request["inputs"])


def _stack(group: list[_Pending], out: list, writer: WriteBehind | None, executor) -> None:
    """Stack the masters of ``group`` (from one read of their frames when they share them)
    and finish each, in order (behind, with ``writer``).  A frame whose layout cannot be read
    refuses its master (its record in ``out`` replaced), as ``_isolated`` does.

    Masters stacked from one read are finished by one writer job: the next unit's blocks
    are queued while the writer finishes this unit's masters (finished one by one, their
    images would wait for the writer instead: two units' images, at most
    ``SHARE_IMAGE_BYTES``, against the pool idle while this unit's attempts are written)."""
    shared = None
    if SHARE_READS and len(group) > 1:
        shared = combine_subsets([p.request for p in group],
                                 executor=executor if writer is not None else None)
    jobs = []
    for k, pending in enumerate(group):
        if shared is not None:
            stacked = shared[k]
        else:
            try:
                stacked = pending.stack()
            except FrameError as err:  # a frame unreadable although the index said it was fine
                rec = pending.record
                out[out.index(rec)] = MasterRecord(rec.key, None, "refused", nbad=rec.nbad,
                                                   reason=f"{err.path}: {err.reason}")
                continue
        pending.record.status = "written"
        job = functools.partial(pending.finish, stacked)
        if shared is not None:
            jobs.append(job)
        elif writer is None:
            job()
        else:
            writer.submit(job)
    if jobs:
        def finish_all() -> None:
            for job in jobs:
                job()
        if writer is None:
            finish_all()
        else:
            writer.submit(finish_all)


def _load(record: MasterRecord) -> tuple[np.ndarray, np.ndarray]:
    with fits.open(record.path, memmap=False) as hdul:  # one open for both images
        data = np.asarray(hdul[0].data, dtype=np.float32)
        stderr = np.asarray(hdul["UNCERT"].data, dtype=np.float64)
    return data, stderr


def build_masters(index: pd.DataFrame, out_dir: str | Path, settings: MasterSettings, *,
                  progress_bar: bool = False) -> list[MasterRecord]:
    """Build every master of an index: bias, then dark, then flat.

    Parameters
    ----------
    index : pandas.DataFrame
        Index rows with absolute ``PATH`` (see :class:`utils.io.index.DatasetIndex`).
    out_dir : path-like
        Output folder; masters go to ``out_dir/masters/...``.
    settings : MasterSettings
        Grouping and combination settings.

    Returns
    -------
    list of MasterRecord
        One per calibration set (and per attempt when enabled), including the
        refused ones with their reason.
    """
    out_dir = Path(out_dir)
    bad = index["BADFITS"].astype(bool)
    groups = list(calibration_groups(index, temp_width=settings.temp_bin,
                                     exp_tolerance=settings.exp_tolerance,
                                     by_attempt=settings.per_attempt))
    records: list[MasterRecord] = []
    # bias models, fitted once per stage; the frames' real paths (for INHASH), resolved once
    cache: dict = {REAL_PATHS: real_paths(index["PATH"].astype(str))}
    for caltype in ("BIAS", "DARK", "FLAT"):
        sets = [(key, rows[~bad.loc[rows.index]], len(rows) - len(rows[~bad.loc[rows.index]]))
                for key, rows in groups if key.caltype == caltype]
        built = _build_sets(sets, records, out_dir, settings, progress_bar, cache)
        for (key, good, nbad), rec in zip(sets, built):
            records.append(rec)
            if good.empty:
                continue
            if rec.status == "refused":
                logger.warning("%s master %s not built: %s", caltype.lower(), key.tag, rec.reason)
                continue
            logger.debug("%s %s master %s (%d frames)", rec.status, caltype.lower(),
                         rec.path, rec.ncombine)
            if len(good) < settings.min_accepted:
                rec.reason = _few_frames_note(len(good), settings.min_accepted)
                logger.warning("%s master %s: %s", caltype.lower(), rec.path, rec.reason)
    return records


#: Marker of the note on a master made from fewer frames than ``min_accepted``.
FEW_FRAMES = "too few frames"


def _few_frames_note(n: int, min_accepted: int) -> str:
    """What a master of fewer than ``min_accepted`` frames is worth."""
    noise = "NOISE and UNCERT undefined (one frame)" if n == 1 else \
        f"NOISE from {n} frames only"
    return (f"{FEW_FRAMES}: {n} (< {min_accepted}); {noise}; every pixel flagged "
            "'too few samples' in FLAGS/MASK")


def frame_shapes(rows: pd.DataFrame) -> dict[tuple[int, int], int]:
    """``{(width, height): number of frames}`` of index rows (from ``NAXIS1``/``NAXIS2``)."""
    if "NAXIS1" not in rows or "NAXIS2" not in rows:
        return {}
    width = pd.to_numeric(rows["NAXIS1"], errors="coerce").to_numpy(np.float64)
    height = pd.to_numeric(rows["NAXIS2"], errors="coerce").to_numpy(np.float64)
    known = ~(np.isnan(width) | np.isnan(height))
    # a plain count of a few pairs (a pandas value_counts per set cost ~5 ms)
    return dict(Counter(zip(width[known].astype(int).tolist(),
                            height[known].astype(int).tolist())))


def _shape_text(shapes: dict) -> str:
    return ", ".join(f"{w}x{h}: {n} frame{'s' if n > 1 else ''}"
                     for (w, h), n in sorted(shapes.items(), key=lambda item: -item[1]))


def _units(sets: list) -> list[list]:
    """``sets`` (``(key, good rows, nbad)`` in the order of :func:`calibration_groups`) cut
    into units: a set followed by its attempts' sets (stacked from one read of the frames)."""
    units: list[list] = []
    for item in sets:
        key = item[0]
        base = units[-1][0][0] if units else None
        if key.attempt and base is not None and not base.attempt and base.tag == \
                key.without_attempt().tag and (base.stage, base.caltype) == (
                key.stage, key.caltype) and base.stage_dir == key.stage_dir:
            units[-1].append(item)
        else:
            units.append([item])
    return units


def _build_sets(sets, records, out_dir, settings, progress_bar, cache) -> list[MasterRecord]:
    """The masters of ``sets`` (``(key, good rows, nbad)`` of one calibration type), in order.

    Locally one unit (a set and its attempts, :func:`_units`) after the other; on a Dask
    scheduler (:mod:`utils.scheduler`) as one task per unit, after the first unit of each
    stage was built here (it fits and writes the stage's bias model, which the tasks then
    reuse from ``cache``).

    Each master's file is written while the next one is stacked (:class:`WriteBehind`); a
    set only ever reads the masters of the calibration types built before its own, whose
    files are complete (the writes are drained before this returns)."""
    def local(unit):
        return _build_unit(unit, records + [r for d in done if d is not None for r in d],
                           out_dir, settings, progress_bar, cache, writer=writer, executor=pool)
    units = _units(sets)
    done: list[list[MasterRecord] | None] = []
    remote = scheduler.current().remote
    todo = []
    stages = set()
    # the blocks of every master go to one pool: the next master's are queued behind this
    # one's while the finish jobs wait for theirs (the pool shuts down after the writes)
    with ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="stack") as pool, \
            WriteBehind(depth=WRITE_DEPTH) as writer:
        for i, unit in enumerate(units):
            if not remote or (unit[0][0].stage, unit[0][0].dose) not in stages:
                stages.add((unit[0][0].stage, unit[0][0].dose))
                done.append(local(unit))
            else:
                done.append(None)
                todo.append(i)
    if todo:
        task = functools.partial(_set_task, records=list(records), out_dir=out_dir,
                                 settings=settings, cache=dict(cache))
        for i, recs in zip(todo, scheduler.map_tasks(task, [units[i] for i in todo])):
            done[i] = recs
    return [r for recs in done for r in recs]


def _set_task(unit, *, records, out_dir, settings, cache) -> list[MasterRecord]:
    """The masters of one unit (a set and its attempts' sets; a scheduler task; each item
    ``(key, good rows, nbad)``)."""
    cache = {k: v for k, v in cache.items() if k != REAL_PATHS}  # resolved here, on the worker
    return _build_unit(unit, records, out_dir, settings, False, cache)


def _build_unit(unit, records: list[MasterRecord], out_dir: Path, settings: MasterSettings,
                progress_bar: bool, cache: dict, *, writer: WriteBehind | None = None,
                executor=None) -> list[MasterRecord]:
    """The masters of a set and of its attempts (``unit``), in order.  Those set up to be
    stacked whose frames are prepared alike (the attempts' frames are the set's, with the
    same bias reference: bias and darks) are stacked from one read of the frames; as soon as
    one is not (a flat set normalised by its own level), each from there on is stacked alone,
    so the finish jobs stay in order."""
    out: list[MasterRecord] = []
    group: list[_Pending] = []
    alone = False
    for key, good, nbad in unit:
        if good.empty:
            out.append(MasterRecord(key, None, "refused", f"all {nbad} frames are BADFITS",
                                    nbad=nbad))
            continue
        built = _isolated(key, good, nbad, records, out_dir, settings, progress_bar, cache,
                          writer=writer, executor=executor)
        if isinstance(built, MasterRecord):
            out.append(built)
            continue
        out.append(built.record)
        if not alone and (not group or _joins(group, built)):
            group.append(built)
            continue
        alone = True
        if group:
            _stack(group, out, writer, executor)
            group = []
        _stack([built], out, writer, executor)
    if group:
        _stack(group, out, writer, executor)
    return out


def _isolated(key: GroupKey, rows: pd.DataFrame, nbad: int, records: list[MasterRecord],
              out_dir: Path, settings: MasterSettings, progress_bar: bool,
              cache: dict, *, writer: WriteBehind | None = None,
              executor=None) -> MasterRecord | _Pending:
    """Set up one master (:func:`_build`); a set that cannot be combined is refused with the
    reason, so the other sets are still built.  With ``writer`` its file is written there
    (the record's statistics are filled in once it is)."""
    shapes = frame_shapes(rows)
    if len(shapes) > 1:
        return MasterRecord(key, None, "refused", nbad=nbad,
                            reason=f"frames of different shapes ({_shape_text(shapes)}); "
                                   "remove the odd frames from the index or flag them BADFITS")
    try:
        return _build_one(key, rows, nbad, records, out_dir, settings, progress_bar, cache,
                          writer=writer, executor=executor)
    except FrameError as err:  # a frame unreadable although the index said it was fine
        return MasterRecord(key, None, "refused", nbad=nbad,
                            reason=f"{err.path}: {err.reason}")


@dataclass
class _BiasReference:
    """The bias to subtract from each frame of a set: a master, or the per-pixel model of T."""

    image: np.ndarray | None            # constant master bias [adu]
    model: BiasModel | None             # bias(T) = A + B (T - TREF) per pixel
    stderr: np.ndarray                  # [adu] error of the subtracted bias
    cards: dict
    refs: tuple

    def at(self, temperature: float) -> np.ndarray:
        """Bias image at ``temperature`` [degC]."""
        return self.image if self.model is None else self.model.predict(temperature)

    def subtractor(self, temperatures: np.ndarray, extra: np.ndarray | None = None):
        """Argument ``subtract`` of :func:`utils.stack.combine.combine` for these frames."""
        if self.model is None:
            return self.image if extra is None else self.image + extra
        rows = self.model.subtractor(temperatures)
        if extra is None:
            return rows
        return rows.plus(extra)


def _bias_model(masters: list[MasterRecord], out_dir: Path, cache: dict) -> tuple:
    """Fit (once per stage) and write the per-pixel bias-vs-temperature model."""
    key = tuple(str(m.path) for m in masters)
    if key in cache:
        return cache[key]
    temps = np.array([m.tavg if math.isfinite(m.tavg) else m.key.temperature for m in masters])
    first = masters[0].key
    path = master_path(out_dir, GroupKey(first.stage, first.dose, "BIAS", 0.0)).with_name(
        "bias_model.fits")
    digest = hashlib.sha1("".join(str(read_header(m.path).get(INHASH, m.path))
                                  for m in masters).encode()).hexdigest()[:16]
    if existing_product(path, digest) is None:
        inputs = pd.DataFrame({"PATH": [m.path.name for m in masters], "TEMP": temps,
                               "NCOMBINE": [m.ncombine for m in masters]})
        model, _ = fit_bias_model(MasterStack([m.path for m in masters], temps),
                                  cross_validate=False, inputs=inputs)
        model.write(path, {INHASH: (digest, "hash of the input masters")})
        logger.info("bias model of %d masters (%.1f..%.1f degC) written to %s", len(masters),
                    temps.min(), temps.max(), path)
    else:
        model = BiasModel.read(path)
    cache[key] = (model, path, temps)
    return cache[key]


def _bias_reference(records: list[MasterRecord], key: GroupKey, rows: pd.DataFrame,
                    out_dir: Path, settings: MasterSettings, cache: dict) -> _BiasReference | None:
    """The per-pixel bias model when the set lies within the bias temperatures, else the
    nearest bias master within the tolerance, else None."""
    tol = settings.bias_temp_tolerance
    masters = sorted((r for r in records if r.key.caltype == "BIAS" and not r.key.attempt
                      and r.path is not None and r.key.stage == key.stage
                      and (r.key.dose == key.dose or (math.isnan(r.key.dose)
                                                      and math.isnan(key.dose)))),
                     key=lambda r: r.key.temperature)
    temps = [m.key.temperature for m in masters]
    if settings.bias_model and len(set(temps)) >= 2 and \
            min(temps) - tol <= key.temperature <= max(temps) + tol:
        model, path, _ = _bias_model(masters, out_dir, cache)
        # the same terms (and INHASH) as the dark pipeline's with this model: a campaign run
        # hands these masters to it instead of stacking the frames again.  Its error maps
        # depend on the set's temperature only, never on the sets built before (Dask tasks
        # each start from a copy of this cache)
        slot = ("reference", path)
        if slot not in cache:
            cache[slot] = BiasReference(model, [], tol, str(path))
        _, stderr, cards, refs = cache[slot].model_terms(rows)
        return _BiasReference(None, model, stderr, cards, refs)
    bias = _nearest(records, key, "BIAS", tol)
    if bias is None:
        return None
    data, err = _load(bias)
    cards = {kw.BIASFILE: (bias.path.name, "master bias subtracted"),
             kw.BIASTEMP: (bias.key.temperature, "[degC] temperature of that master bias"),
             kw.SUBTRACT: ("bias", "subtracted per frame")}
    return _BiasReference(data, None, err, cards, (str(bias.path),))


def _bias_dark_error(bias_err: np.ndarray, dark_err: np.ndarray) -> np.ndarray:
    """[adu] error of bias + scaled dark, in quadrature: ``sqrt(bias_err**2 + dark_err**2)``
    (the bias error squared in float32, the sum in float64), float64, by pixel blocks."""
    out = np.empty(np.shape(bias_err), np.float64)
    flat, b, d = out.reshape(-1), np.ravel(bias_err), np.ravel(dark_err)
    for blk in pixel_blocks(flat.size):
        flat[blk] = np.sqrt(b[blk] ** 2 + d[blk].astype(np.float64) ** 2)
    return out


def _reference_mismatch(rows: pd.DataFrame, shape: tuple, what: str) -> str:
    """Reason to refuse a set whose frames differ in shape from the reference subtracted."""
    shapes = frame_shapes(rows)
    if len(shape) != 2 or not shapes:
        return ""
    (width, height), = shapes
    if (height, width) == tuple(shape):
        return ""
    return (f"the {what} to subtract is {shape[1]}x{shape[0]} but the frames are "
            f"{width}x{height}")


def _build_one(key: GroupKey, rows: pd.DataFrame, nbad: int, records: list[MasterRecord],
               out_dir: Path, settings: MasterSettings, progress_bar: bool,
               cache: dict, *, writer: WriteBehind | None = None,
               executor=None) -> MasterRecord | _Pending:
    if key.caltype == "BIAS":
        return _build(key, rows, nbad, out_dir, settings, unit=adu.UNIT, progress_bar=progress_bar,
                      writer=writer, real=cache.get(REAL_PATHS), executor=executor)
    bias = _bias_reference(records, key, rows, out_dir, settings, cache)
    if bias is None:
        return MasterRecord(key, None, "refused", nbad=nbad,
                            reason=f"no bias master within {settings.bias_temp_tolerance:g} degC "
                                   f"of {number_text(key.temperature, 'g')} degC in stage "
                                   f"'{key.stage or 'none'}'")
    mismatch = _reference_mismatch(rows, np.shape(bias.stderr), "bias")
    if mismatch:
        return MasterRecord(key, None, "refused", nbad=nbad, reason=mismatch)
    temps = rows["TEMP"].to_numpy(float)
    extra = dict(bias.cards)
    if key.caltype == "DARK":
        return _build(key, rows, nbad, out_dir, settings, unit=adu.UNIT,
                      subtract=bias.subtractor(temps), sub_stderr=bias.stderr, extra=extra,
                      refs=bias.refs, progress_bar=progress_bar, writer=writer,
                      real=cache.get(REAL_PATHS), executor=executor)
    dark = _nearest(records, key, "DARK", settings.dark_temp_tolerance)
    mean_t = float(np.nanmean(temps))
    dark_image, ref_err, refs = None, bias.stderr, bias.refs
    if dark is not None:
        # the dark signal is proportional to exposure time: the master of the nearest
        # exposure (at the nearest temperature), scaled; where it is masked (a hot pixel
        # saturated in a long dark) the next-nearest exposure's, else the median rate x t,
        # never a NaN that would blank the flat master there
        same = [r for r in records if r.key.caltype == "DARK" and not r.key.attempt
                and r.path is not None and r.key.stage == dark.key.stage
                and r.key.temperature == dark.key.temperature
                and (r.key.dose == dark.key.dose
                     or (math.isnan(r.key.dose) and math.isnan(dark.key.dose)))]
        scaled = scaled_dark_files([(r.key.exptime, r.path) for r in same], key.exptime)
        dark = next(r for r in same if r.key.exptime == scaled.source)
        mismatch = _reference_mismatch(rows, scaled.data.shape, "dark")
        if mismatch:
            return MasterRecord(key, None, "refused", nbad=nbad, reason=mismatch)
        dark_image = scaled.data
        ref_err = _bias_dark_error(bias.stderr, scaled.err)
        refs += tuple(str(r.path) for r in same) + (key.exptime,)
        extra[kw.DARKFILE] = (dark.path.name, "master dark subtracted")
        extra[kw.DARKTEMP] = (dark.key.temperature, "[degC] temperature of that master dark")
        extra[kw.DARKEXP] = (dark.key.exptime, "[s] exposure of that master dark")
        extra["DARKSCL"] = (scaled.scale, "dark master scaled by EXPTIME / DARKEXP")
        extra["DARKFILL"] = (scaled.n_other + scaled.n_population,
                             "pixels masked in it: other exposure or median rate")
        extra[kw.SUBTRACT] = (extra[kw.SUBTRACT][0] + "+dark", "subtracted per frame")
    else:
        extra[kw.DARKFILE] = ("none", "no dark within tolerance: dark current not removed")
        logger.warning("flat %s: no dark master within %g degC; only bias subtracted",
                       key.tag, settings.dark_temp_tolerance)
    reference = bias.at(mean_t) if dark_image is None else bias.at(mean_t) + dark_image
    ref_level = exact_nanmedian(reference)
    medians = pd.to_numeric(rows["MEDIAN"], errors="coerce") if "MEDIAN" in rows else None
    if medians is None or medians.isna().any():
        from utils.stack.stats import frame_statistics
        medians = pd.Series([frame_statistics(p).median for p in rows["PATH"]], index=rows.index)
    levels = medians.to_numpy(float) - ref_level
    if np.any(levels <= 0):
        return MasterRecord(key, None, "refused", nbad=nbad,
                            reason="a flat frame has no signal above bias+dark")
    # each frame normalised by its own level so lamp drifts do not bias the clipping
    scale = 1.0 / levels
    level_scale = float(np.median(scale))
    return _build(key, rows, nbad, out_dir, settings, unit="",
                  subtract=bias.subtractor(temps, dark_image),
                  sub_stderr=(ref_err * level_scale if ref_err is bias.stderr  # shared: a copy
                              else np.multiply(ref_err, level_scale, out=ref_err)),
                  scale=scale, extra=extra,
                  refs=refs, normalise=True, progress_bar=progress_bar, writer=writer,
                  real=cache.get(REAL_PATHS), executor=executor)
