"""One pass over the flats' central region: levels, saturation, photon-transfer pairs; frame QC.

:func:`measure_frames` reads the central region of every flat once (rows straight from
the file, :func:`utils.io.fitsio.read_rows`), two frames in memory at most, and gives

* per frame: the level [adu] of the reduced frame (bias and dark at the frame's own T and
  t removed) by ``--norm-method`` (median, mean or max of the central region: the
  normalisation of that frame), the level per second of exposure, the mean of the
  bias-subtracted frame and the saturated fraction of the region;
* per pair of consecutive frames of a set: the photon-transfer statistics
  (:func:`utils.models.photon_transfer.pair_statistics` on the bias-subtracted frames,
  saturated pixels included, so the curve turns over at saturation).  They need the bias
  only, so a campaign's gain step and its full flat run (dark subtracted) share them: a
  pair already measured in this process with the same files, bias and region is not
  measured again (:data:`_PAIRS`).

:func:`assess` then decides which frames go into the masters, with the reason of each
exclusion in ``frame_qc.csv``: bad file (index ``BADFITS``), no temperature or
exposure, zero pixels (a readout glitch: a flat never reads 0), saturated pixels,
no dark (without ``--allow-bias-only``), no signal, and lamp drift -- a level per
second further from its set's median than ``level_nsigma`` robust sigma and
``level_min_dev`` (relative), tested in sets of three frames or more.  Frames
excluded only for saturation still give photon-transfer pairs (the saturation onset
needs them); pairs with a frame excluded for any other reason are dropped.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils import adu
from utils.errors import FrameError
from utils.io.fitsio import fits_layout, read_rows
from utils.models.photon_transfer import pair_statistics
from utils.models.read_noise import frame_pairs
from utils.progress import progress
from utils.stack.stats import MAD_TO_STD, exact_median

logger = logging.getLogger(__name__)

NORM_METHODS = ("median", "mean", "max")

#: Columns of ``frame_qc.csv``.
QC_COLUMNS = ["PATH", "STAGE", "DOSE", "TBIN", "EXPTIME", "TEMP", "LEVEL", "LEVEL_RATE",
              "LEVEL_DEV", "MEAN_BIASSUB", "CENTRAL_SATFRACTION", "SATFRACTION", "ZEROFRACTION",
              "DARKSRC", "STATUS", "REASON", "PTC"]
USED, EXCLUDED = "used", "excluded"


def central_region(shape: tuple[int, int], fraction: float) -> tuple[slice, slice]:
    """Rows and columns of the centred box covering ``fraction`` of each side.

    Examples
    --------
    >>> central_region((64, 96), 0.5)
    (slice(16, 48, None), slice(24, 72, None))
    """
    h, w = shape
    rh, rw = max(1, int(round(h * fraction))), max(1, int(round(w * fraction)))
    r0, c0 = (h - rh) // 2, (w - rw) // 2
    return slice(r0, r0 + rh), slice(c0, c0 + rw)


def level_of(values: np.ndarray, method: str, *, max_samples: int = 1 << 19) -> float:
    """Normalisation level of a region's finite values: median, mean or max.

    A median of more than ``max_samples`` values is taken on a regular subsample (every
    k-th value): its statistical error, ``1.25 sigma / sqrt(n)``, stays below 2e-5 of the
    level for a flat of 1 % noise, and the full sort would cost more than reading the
    frame."""
    v = values.ravel()
    if method == "median" and v.size > max_samples:
        v = v[::-(-v.size // max_samples)]
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan
    if method == "median":
        return exact_median(v)
    if method == "mean":
        return float(np.mean(v))
    return float(np.max(v))


@dataclass
class SetToMeasure:
    """One flat set for :func:`measure_frames`."""

    key: object            # GroupKey (TBIN, EXPTIME)
    rows: pd.DataFrame     # its usable index rows, in frame order
    reference: object      # flat_pipeline.reduction.Reference


#: Photon-transfer statistics of the flat pairs measured in this process, by pair (files and
#: their times, frame temperatures, bias identity, region, saturation level); the gain step
#: of a campaign fills it and the full flat run after the dark pipeline takes them.
_PAIRS: dict = {}
#: Most pairs kept (a campaign's stage has a few dozen).
_PAIRS_KEPT = 4096


def _pair_key(reference, rows: pd.DataFrame, i: int, j: int, region, sat_level: float):
    """What one pair's statistics depend on, or None when it cannot be told (no bias
    identity)."""
    bias = getattr(reference, "bias_refs", ())
    if not bias:
        return None
    # a master named by its path: with its time too (rewritten in place, it is another bias)
    bias = tuple((r, os.stat(r).st_mtime_ns) if isinstance(r, str) and os.path.isfile(r)
                 else r for r in bias)
    files = []
    for k in (i, j):
        path = str(rows["PATH"].iloc[k])
        try:
            files.append((path, os.stat(path).st_mtime_ns, float(rows["TEMP"].iloc[k])))
        except OSError:
            return None
    return (tuple(files), bias, region, float(sat_level))


def _read_region(path: str, rows: slice, cols: slice) -> np.ndarray:
    layout = fits_layout(path)
    return read_rows(layout, rows.start, rows.stop)[:, cols]


def measure_frames(sets: list[SetToMeasure], shape: tuple[int, int], *, norm_method: str,
                   central_fraction: float, adc_bits: int, progress_bar: bool = False
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Levels of every frame and statistics of every pair (see module notes).

    Returns
    -------
    (frames, pairs) : pandas.DataFrame
        ``frames``: ``PATH, TBIN, EXPTIME, TEMP, LEVEL, LEVEL_RATE, MEAN_BIASSUB,
        CENTRAL_SATFRACTION, READERR``; ``pairs``: ``TBIN, EXPTIME, PATH_A, PATH_B, MEAN,
        VAR, NPIX, RATIO, NCLIP, SATFRACTION``.
    """
    rows_sl, cols_sl = central_region(shape, central_fraction)
    sat_level = adu.saturation_level(adc_bits)
    frames, pairs = [], []
    total = sum(len(s.rows) for s in sets)
    bar = progress(range(total), desc="flat levels", enabled=progress_bar)
    ticks = iter(bar)
    region = (rows_sl.start, rows_sl.stop, cols_sl.start, cols_sl.stop)
    for s in sets:
        paths = s.rows["PATH"].astype(str).tolist()
        index_of = {p: i for i, p in enumerate(paths)}
        set_pairs = frame_pairs(s.rows)
        ordered = [p for pair in set_pairs for p in pair]
        ordered += [p for p in paths if p not in ordered]
        partner = {b: a for a, b in set_pairs}
        # statistics of this set's pairs measured before (the gain step's): their first
        # frames need not be held, nor the pairs measured again
        known = {}
        for a, b in set_pairs:
            key = _pair_key(s.reference, s.rows, index_of[a], index_of[b], region, sat_level)
            known[a] = (key, _PAIRS.get(key) if key is not None else None)
        held: dict[str, tuple[np.ndarray | None, float]] = {}
        for path in ordered:
            next(ticks, None)
            i = index_of[path]
            row = s.rows.iloc[i]
            record = {"PATH": path, "TBIN": s.key.temperature, "EXPTIME": s.key.exptime,
                      "TEMP": float(row["TEMP"]), "READERR": ""}
            try:
                raw = _read_region(path, rows_sl, cols_sl)
            except FrameError as err:
                logger.warning("%s; left out of the flats", err)
                record["READERR"] = err.reason
                frames.append(record)
                held.pop(partner.get(path, ""), None)
                continue
            sat = raw >= sat_level
            biassub = raw - np.asarray(s.reference.bias_rows(i, rows_sl.start, rows_sl.stop),
                                       dtype=np.float32)[:, cols_sl]
            reduced = biassub
            if s.reference.dark is not None:
                reduced = biassub - np.asarray(s.reference.dark.rows(
                    i, rows_sl.start, rows_sl.stop), dtype=np.float32)[:, cols_sl]
            level = level_of(np.where(sat, np.float32(np.nan), reduced), norm_method)
            exptime = float(row["EXPTIME"])
            record.update(LEVEL=level, LEVEL_RATE=level / exptime if exptime > 0 else math.nan,
                          MEAN_BIASSUB=float(np.mean(biassub, dtype=np.float64)),
                          CENTRAL_SATFRACTION=float(sat.mean()))
            frames.append(record)
            central_sat = float(sat.mean())
            if path in partner and partner[path] in held:
                first_path = partner[path]
                first, first_sat = held.pop(first_path)
                key, stats = known[first_path]
                if stats is None:
                    stats = pair_statistics(first, biassub)
                    if key is not None:
                        if len(_PAIRS) >= _PAIRS_KEPT:
                            _PAIRS.clear()
                        _PAIRS[key] = stats
                pairs.append({"TBIN": s.key.temperature, "EXPTIME": s.key.exptime,
                              "PATH_A": first_path, "PATH_B": path, **stats,
                              "SATFRACTION": max(first_sat, central_sat)})
            elif path in known:
                held[path] = (None if known[path][1] is not None else biassub, central_sat)
    frames = pd.DataFrame(frames)
    for column in ("LEVEL", "LEVEL_RATE", "MEAN_BIASSUB", "CENTRAL_SATFRACTION"):
        if column not in frames:
            frames[column] = math.nan
    # typed even when empty (a set of one frame has no pair): an untyped empty table made the
    # concatenated pairs of every set 'object' and the photon-transfer fit a TypeError
    pairs = pd.DataFrame(pairs, columns=["TBIN", "EXPTIME", "PATH_A", "PATH_B", "MEAN", "VAR",
                                         "NPIX", "RATIO", "NCLIP", "SATFRACTION"]).astype(
        {"TBIN": float, "EXPTIME": float, "MEAN": float, "VAR": float, "NPIX": "int64",
         "RATIO": float, "NCLIP": "int64", "SATFRACTION": float})
    return frames, pairs


def bias_pair_statistics(pairs: list[tuple[str, str]], shape: tuple[int, int], *,
                         central_fraction: float, clip: float = 10.0) -> pd.DataFrame:
    """``VAR`` [adu^2] and ``NPIX`` of bias pairs over the same central region (read noise).

    Clipped at ``clip`` = 10 robust sigma only: the read noise is the rms over the pixels
    (as the flats' variance at zero signal), and the few pixels with a several times larger
    read noise must stay in it; only cosmic-ray hits go."""
    rows_sl, cols_sl = central_region(shape, central_fraction)
    out = []
    for a, b in pairs:
        try:
            fa = _read_region(a, rows_sl, cols_sl).astype(np.float64)
            fb = _read_region(b, rows_sl, cols_sl).astype(np.float64)
        except FrameError as err:
            logger.warning("%s; bias pair left out of the read noise", err)
            continue
        stats = pair_statistics(fa, fb, match_levels=False, clip=clip)
        out.append({"PATH_A": a, "PATH_B": b, **stats})
    return pd.DataFrame(out, columns=["PATH_A", "PATH_B", "MEAN", "VAR", "VAR_ERR", "NPIX",
                                      "RATIO", "NCLIP"])


def assess(frames: pd.DataFrame, index_rows: pd.DataFrame, dark_missing: dict, *,
           allow_bias_only: bool, max_zero_fraction: float, max_saturated_fraction: float,
           level_nsigma: float, level_min_dev: float) -> pd.DataFrame:
    """Frame QC table (``frame_qc.csv``): every flat of the group with ``STATUS`` and
    ``REASON`` (see module notes).

    Parameters
    ----------
    frames : pandas.DataFrame
        From :func:`measure_frames` (usable frames only).
    index_rows : pandas.DataFrame
        Every flat index row of the group (``BADFITS``, ``REASON``, ``ZEROFRACTION``,
        ``SATFRACTION``, ``TEMP``, ``EXPTIME``, ``STAGE``, ``DOSE``).
    dark_missing : dict
        ``{path: reason}`` of frames without a dark (or without a bias).
    """
    measured = frames.set_index("PATH") if len(frames) else pd.DataFrame()
    out = []
    for _, row in index_rows.iterrows():
        path = str(row["PATH"])
        m = measured.loc[path] if path in measured.index else None
        rec = {"PATH": path, "STAGE": row.get("STAGE", ""), "DOSE": row.get("DOSE", math.nan),
               "TBIN": m["TBIN"] if m is not None else math.nan,
               "EXPTIME": float(row["EXPTIME"]), "TEMP": float(row["TEMP"]),
               "ZEROFRACTION": float(row.get("ZEROFRACTION", math.nan)),
               "SATFRACTION": float(row.get("SATFRACTION", math.nan)),
               "STATUS": USED, "REASON": "", "PTC": m is not None,
               "DARKSRC": "", "LEVEL_DEV": math.nan}
        for column in ("LEVEL", "LEVEL_RATE", "MEAN_BIASSUB", "CENTRAL_SATFRACTION"):
            rec[column] = float(m[column]) if m is not None else math.nan
        reason, ptc = "", m is not None
        if bool(row["BADFITS"]):
            reason = "bad file: " + (str(row["REASON"]) if isinstance(row["REASON"], str)
                                     and row["REASON"] else "flagged BADFITS by the index")
        elif not math.isfinite(rec["TEMP"]):
            reason = "no sensor temperature (TEMP)"
        elif not (math.isfinite(rec["EXPTIME"]) and rec["EXPTIME"] > 0):
            reason = "no exposure time (EXPTIME)"
        elif m is not None and m.get("READERR"):
            reason, ptc = f"unreadable: {m['READERR']}", False
        elif path in dark_missing and (dark_missing[path].startswith("no bias")
                                       or not allow_bias_only):
            reason = dark_missing[path]
        elif rec["ZEROFRACTION"] > max_zero_fraction:
            reason, ptc = (f"{100 * rec['ZEROFRACTION']:.3g}% zero pixels (limit "
                           f"{100 * max_zero_fraction:g}%): readout defect"), False
        elif rec["SATFRACTION"] > max_saturated_fraction:
            reason = (f"saturated: {100 * rec['SATFRACTION']:.3g}% of the pixels (limit "
                      f"{100 * max_saturated_fraction:g}%)")
        elif not rec["LEVEL"] > 0:
            reason = "no signal above bias and dark"
        if path in dark_missing and not reason:
            rec["DARKSRC"] = "none (bias only)"
        if reason:
            rec.update(STATUS=EXCLUDED, REASON=reason)
            # pairs need two good frames of one level: only saturation keeps a frame in them
            rec["PTC"] = ptc and reason.startswith("saturated")
        out.append(rec)
    table = pd.DataFrame(out, columns=QC_COLUMNS)
    _lamp_drift(table, level_nsigma, level_min_dev)
    return table


def _lamp_drift(table: pd.DataFrame, nsigma: float, min_dev: float) -> None:
    """Exclude frames whose level per second departs from their set's (in place)."""
    used = table["STATUS"] == USED
    for _, part in table[used].groupby(["TBIN", "EXPTIME"]):
        rate = part["LEVEL_RATE"].to_numpy(float)
        med = float(np.median(rate))
        dev = rate / med - 1.0
        table.loc[part.index, "LEVEL_DEV"] = dev
        if len(part) < 3:
            if len(part) == 2 and abs(dev[0] - dev[1]) > 2 * min_dev:
                logger.warning("flats %s: two frames %.1f%% apart; lamp drift cannot be told "
                               "from two frames, both kept", Path(part["PATH"].iloc[0]).name,
                               100 * abs(dev[0] - dev[1]))
            continue
        spread = MAD_TO_STD * float(np.median(np.abs(rate - med))) / med
        limit = max(nsigma * spread, min_dev)
        for idx, d in zip(part.index, dev):
            if abs(d) > limit:
                table.loc[idx, ["STATUS", "REASON", "PTC"]] = [
                    EXCLUDED, f"lamp drift: level {100 * d:+.2f}% from its set's median (limit "
                              f"+-{100 * limit:.2f}%)", False]


__all__ = ["measure_frames", "bias_pair_statistics", "assess", "central_region", "level_of",
           "SetToMeasure", "NORM_METHODS", "QC_COLUMNS", "USED", "EXCLUDED"]
