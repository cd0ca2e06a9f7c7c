"""Dose bookkeeping: the dose step, accumulated dose, dose rate and beam state of every frame.

An irradiation campaign is analysed per (stage, dose step), so every index row
needs its step, and the dose-response analyses need the dose the sensor had
accumulated when the frame was taken.  :func:`assign_doses` fills, for each row:

``DOSE`` [krad]
    The dose step the frame belongs to: its ``<dose>kRads`` folder; 0 for the
    pre-irradiation stage; the final step for the post-irradiation stage.
``FRAMEDOSE`` [krad]
    Accumulated dose at the frame's time stamp, from a radiation log.
``DOSERATE`` [rad(Si)/s]
    Dose rate during the frame: the slope of the log's accumulated dose over the
    log interval the frame's exposure starts in.
``BEAM``
    ``on`` / ``off`` (``DOSERATE`` above ``beam_threshold``), '' when unknown.
``TANNEAL`` [s]
    Time since the beam last went off (post-irradiation annealing time); empty while
    the beam is on or before any irradiation.
``DOSESRC``, ``DOSEFLAG``
    Where the values came from, and why a value is missing or estimated.

Joins go **by time stamp**, never by frame number (``FrameNum`` restarts in every
attempt, so a frame-number join collides).  Logs, in order of preference: the
campaign log (given, else ``radiationLogCompleto.csv`` / ``radiationLog.csv`` /
``radiationLogDef.csv`` in the dataset root), then a log next to the frame's
attempt or dose folder.  A frame no log covers gets no dose (NaN with the reason
in ``DOSEFLAG``), never 0, with two stated exceptions: pre-irradiation frames
(nothing has irradiated the sensor: 0) and the old dose-folder rule -- a
``<dose>kRads`` folder whose log is missing or has a constant Dose column gets
its dose spread linearly over its frames (time order), from the previous
folder's final value to its own nominal dose: 5kRads with 4 frames after 0 gives
1.25, 2.5, 3.75 and 5.0 krad.  Both are said in ``DOSESRC``/``DOSEFLAG``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import TableError, UserError
from ..settings import field
from .radiation_log import RADIATION_LOG_NAMES, RadiationLog, read_radiation_log
from .tokens import folder_dose

logger = logging.getLogger(__name__)

#: Columns written by :func:`assign_doses`.
DOSE_COLUMNS = ["DOSE", "FRAMEDOSE", "DOSERATE", "BEAM", "TANNEAL", "DOSESRC", "DOSEFLAG"]
#: rad per krad (DOSERATE is in rad(Si)/s, logs in krad).
RAD_PER_KRAD = 1000.0


@dataclass(frozen=True)
class DoseSettings:
    """How frames are joined to radiation logs."""

    time_tolerance: float = field(2.0, "[s] a frame this close outside a log's span still counts "
                                       "as covered (time-stamp rounding)")
    beam_threshold: float = field(1e-3, "[rad(Si)/s] dose rates above this mean the beam is on")

    def __post_init__(self):
        if not self.time_tolerance >= 0 or not self.beam_threshold >= 0:
            raise ValueError("time_tolerance and beam_threshold must be >= 0")


@dataclass
class DoseReport:
    """What :func:`assign_doses` did, for the log and for tests.

    Attributes
    ----------
    campaign_log : pathlib.Path or None
        The campaign-level log used.
    local_logs : list of pathlib.Path
        Attempt or dose-folder logs used.
    spread_folders : dict
        ``{folder: reason}`` of dose folders whose dose was spread by the old rule.
    uncovered : int
        Frames left without FRAMEDOSE.
    """

    campaign_log: Path | None = None
    local_logs: list = None
    spread_folders: dict = None
    uncovered: int = 0

    def summary(self) -> str:
        """One line."""
        parts = [f"campaign log {self.campaign_log}" if self.campaign_log else "no campaign log"]
        if self.local_logs:
            parts.append(f"{len(self.local_logs)} attempt/folder logs")
        if self.spread_folders:
            parts.append(f"dose spread over {len(self.spread_folders)} folder(s) without a "
                         "usable log")
        parts.append(f"{self.uncovered} frames without a dose")
        return "dose bookkeeping: " + ", ".join(parts)


# --- log helpers ---------------------------------------------------------------------------------

def _dose_log(log: RadiationLog) -> tuple[RadiationLog, str]:
    """The log with a DOSE column: its own, else RadiationLevel taken as the dose (the old
    reader's rule), with a note; '' when it has neither."""
    if log.table["DOSE"].notna().any():
        return log, ""
    if log.table["LEVEL"].notna().any():
        table = log.table.copy()
        table["DOSE"] = table["LEVEL"]
        return replace(log, table=table), "RadiationLevel taken as the dose (no Dose column)"
    return log, ""


def _usable(log: RadiationLog) -> str:
    """Why a log cannot give frame doses by time, or ''."""
    if not log.table["DOSE"].notna().any():
        return "no Dose or RadiationLevel values"
    if not log.has_time:
        return "no time column, so it cannot be joined by time stamp"
    if log.dose_is_constant:
        return "its Dose column is constant"
    return ""


def check_time_order(log: RadiationLog) -> None:
    """Raise :class:`TableError` when the log's time goes backwards (a join by time needs it
    ordered; a concatenation of attempts often is not)."""
    t = log.table["TIME"].to_numpy(float)
    ok = np.flatnonzero(np.isfinite(t))
    back = np.flatnonzero(np.diff(t[ok]) < 0)
    if back.size:
        i = ok[back[0] + 1]
        raise TableError(f"{log.path}: time goes backwards at data row {i + 1} ({t[i]:.3f} s "
                         f"after {t[ok[back[0]]]:.3f} s); sort the log by time (a join by time "
                         "stamp needs it ordered)")


def _segments(log: RadiationLog) -> tuple[np.ndarray, np.ndarray]:
    """Times [s] and accumulated doses [krad] of the log, time-sorted, duplicates averaged."""
    part = log.table[["TIME", "DOSE"]].dropna()
    part = part.groupby("TIME", sort=True)["DOSE"].mean()
    return part.index.to_numpy(float), part.to_numpy(float)


def dose_rate_at(times: np.ndarray, t: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Dose rate [krad/s] of the log interval each time starts in (right derivative).

    A frame's exposure starts at its time stamp, so the interval *after* it is the one the
    frame integrates in.  On or after the last row nothing is logged: the rate is taken as
    0 when the last interval had the beam off (nothing says it came back on), else unknown
    (NaN).

    Examples
    --------
    >>> dose_rate_at(np.array([0.0, 5.0, 10.0, 20.0]), np.array([0.0, 10.0, 20.0]),
    ...              np.array([0.0, 1.0, 1.0])).tolist()
    [0.1, 0.0, 0.0, 0.0]
    """
    times = np.asarray(times, float)
    out = np.full(times.shape, np.nan)
    if t.size < 2:
        return out
    slope = np.diff(d) / np.diff(t)
    k = np.searchsorted(t, times, side="right") - 1        # interval [t_k, t_k+1)
    inside = (k >= 0) & (k < t.size - 1)
    out[inside] = slope[k[inside]]
    if slope[-1] == 0:
        out[np.isfinite(times) & (k >= t.size - 1)] = 0.0
    return out


def beam_off_times(t: np.ndarray, d: np.ndarray, threshold: float) -> np.ndarray:
    """Times [s] at which the beam went off: ends of log intervals with a rate above
    ``threshold`` [krad/s] followed by one at or below it (or by the end of the log)."""
    if t.size < 2:
        return np.array([])
    on = np.diff(d) / np.diff(t) > threshold
    ends = [t[i + 1] for i in range(on.size) if on[i] and (i + 1 == on.size or not on[i + 1])]
    return np.array(ends)


def time_since_beam_off(times: np.ndarray, offs: np.ndarray) -> np.ndarray:
    """[s] time since the latest beam-off at or before each time (NaN before the first)."""
    times = np.asarray(times, float)
    out = np.full(times.shape, np.nan)
    if offs.size == 0:
        return out
    k = np.searchsorted(offs, times, side="right") - 1
    ok = (k >= 0) & np.isfinite(times)
    out[ok] = times[ok] - offs[k[ok]]
    return out


# --- dose steps ----------------------------------------------------------------------------------

def step_folder(path: str | os.PathLike) -> Path | None:
    """The deepest ``<dose>kRads`` folder above a frame, else None."""
    for parent in Path(path).parents:
        if not math.isnan(folder_dose(parent.name)):
            return parent
    return None


def _step_folders(paths) -> list[Path | None]:
    """:func:`step_folder` of every path, looked up once per folder holding frames (a
    campaign's ~500 frames sit in ~100 folders; each lookup parses every parent's name)."""
    by_folder: dict[str, Path | None] = {}
    out = []
    for p in paths:
        folder = os.path.dirname(os.fspath(p))
        if folder not in by_folder:
            by_folder[folder] = step_folder(p)
        out.append(by_folder[folder])
    return out


def step_doses(table: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Dose step [krad] of every row and the reason where it is unknown.

    ``<dose>kRads`` folder for any stage (radiating frames), 0 for ``pre``, the final
    radiating step for ``post``.
    """
    stage = table["STAGE"].astype(object).fillna("").astype(str).to_numpy()
    dose = np.array([folder_dose(p.name) if p is not None else math.nan
                     for p in _step_folders(table["PATH"])], dtype=float)
    reasons = [""] * len(table)
    dose[stage == "pre"] = 0.0
    radiating = dose[(stage == "radiating") & np.isfinite(dose)]
    final = float(radiating.max()) if radiating.size else math.nan
    for i in np.flatnonzero(stage == "post"):
        if math.isnan(dose[i]):
            dose[i] = final
    for i in np.flatnonzero(np.isnan(dose)):
        if stage[i] == "post":
            reasons[i] = "post frame but no radiating dose step in the index: final dose unknown"
        elif stage[i] == "radiating":
            reasons[i] = "no <dose>kRads folder above the frame: dose step unknown"
    return dose, reasons


# --- the join ------------------------------------------------------------------------------------

def _local_logs(path: str) -> list[Path]:
    """Logs next to a frame: in its folder, its attempt folder, or its dose folder."""
    out = []
    here = Path(path).parent
    for folder in (here, here.parent):
        for name in RADIATION_LOG_NAMES:
            if (folder / name).is_file():
                out.append(folder / name)
    step = step_folder(path)
    if step is not None:
        out += [step / n for n in RADIATION_LOG_NAMES if (step / n).is_file()]
    return list(dict.fromkeys(out))


def find_campaign_log(root: str | os.PathLike | None) -> Path | None:
    """``radiationLogCompleto.csv`` (else ``radiationLog.csv``) in ``root``, else None.

    ``radiationLogDef.csv`` belongs to a dose folder, never to the campaign root.
    """
    if root is None:
        return None
    root = Path(root)
    return next((root / n for n in RADIATION_LOG_NAMES[:2] if (root / n).is_file()), None)


class _Join:
    """One log ready for joining: sorted (time, dose), beam-off times, coverage."""

    def __init__(self, log: RadiationLog, note: str, settings: DoseSettings):
        self.log, self.note = log, note
        self.t, self.d = _segments(log)
        self.offs = beam_off_times(self.t, self.d, settings.beam_threshold / RAD_PER_KRAD)
        self.tol = settings.time_tolerance

    def covers(self, times: np.ndarray) -> np.ndarray:
        times = np.asarray(times, float)
        return (times >= self.t[0] - self.tol) & (times <= self.t[-1] + self.tol)

    def values(self, times: np.ndarray):
        dose = np.interp(times, self.t, self.d)
        rate = dose_rate_at(times, self.t, self.d) * RAD_PER_KRAD
        return dose, rate, time_since_beam_off(times, self.offs)


def _read(path: Path, settings: DoseSettings, *, strict: bool,
          warn: bool = True) -> tuple[_Join | None, str]:
    """A joinable log, or None and why not (``strict``: raise instead, for a given log;
    ``warn``: log the reader's problems with the rows)."""
    try:
        log = read_radiation_log(path)
        if strict:
            check_time_order(log)
        elif not log.time_sorted:
            return None, f"{path.name} has non-monotonic time"
    except TableError as err:
        if strict:
            raise
        return None, str(err)
    log, note = _dose_log(log)
    why = _usable(log)
    if why:
        if strict and "constant" not in why:
            raise TableError(f"{path}: {why}; give a radiation log with a time column and "
                             "the accumulated Dose")
        return None, f"{path.name}: {why}"
    for line in log.problems[:3] if warn else ():
        logger.warning("%s: %s", path, line)
    return _Join(log, note, settings), ""


def check_radiation_log(path: str | os.PathLike,
                        settings: DoseSettings = DoseSettings()) -> None:
    """Raise what :func:`assign_doses` would raise for this given log before any frame is read.

    Every check that needs no frame: the file is readable, has a time and a Dose (or
    RadiationLevel) column and its time goes forward. Whether it covers the frames' time
    stamps needs the frames. A constant Dose column is accepted, as :func:`assign_doses`
    does (with a warning).

    Raises
    ------
    TableError
        As :func:`assign_doses` for a given log.
    """
    _read(Path(path), settings, strict=True, warn=False)  # the join that follows warns


def assign_doses(table: pd.DataFrame, *, radiation_log: str | os.PathLike | None = None,
                 root: str | os.PathLike | None = None,
                 settings: DoseSettings = DoseSettings()) -> tuple[pd.DataFrame, DoseReport]:
    """Fill the dose columns (:data:`DOSE_COLUMNS`) of index rows.

    Parameters
    ----------
    table : pandas.DataFrame
        Index rows with absolute ``PATH``, ``STAGE`` and ``TIMESTAMP`` [s].
    radiation_log : path-like, optional
        The campaign radiation log (``--radiation-log``); else one found in ``root``.
    root : path-like, optional
        Dataset root searched for the campaign log.
    settings : DoseSettings, optional
        Join tolerances.

    Returns
    -------
    (pandas.DataFrame, DoseReport)
        A copy of ``table`` with the dose columns, and what was done.

    Raises
    ------
    TableError
        The given log is missing, unreadable, has no time or dose column, its time goes
        backwards, or it covers none of the frames' time stamps (a wrong log).
    """
    out = table.copy().reset_index(drop=True)
    n = len(out)
    report = DoseReport(local_logs=[], spread_folders={})
    step, step_reason = step_doses(out)
    out["DOSE"] = step
    times = pd.to_numeric(out.get("TIMESTAMP", pd.Series(np.nan, index=out.index)),
                          errors="coerce").to_numpy(float)
    stage = out["STAGE"].astype(object).fillna("").astype(str).to_numpy()
    framedose = np.full(n, np.nan)
    rate = np.full(n, np.nan)
    tanneal = np.full(n, np.nan)
    source = [""] * n
    flag = list(step_reason)

    given = radiation_log is not None
    path = Path(radiation_log) if given else find_campaign_log(root)
    campaign = None
    if path is not None:
        campaign, why = _read(path, settings, strict=given)
        if campaign is None:
            # the reason may start with the file's name, already said at the line's start
            for prefix in (f"{path}: ", f"{path.name}: "):
                why = why[len(prefix):] if why.startswith(prefix) else why
            logger.warning("%s: not used (%s)", path, why)
        else:
            report.campaign_log = path
            hit = np.isfinite(times) & campaign.covers(times)
            if given and np.isfinite(times).any() and not hit.any():
                t0, t1 = campaign.t[0], campaign.t[-1]
                raise TableError(
                    f"{path}: the log spans {t0:.0f}..{t1:.0f} s but the frames' time stamps "
                    f"span {np.nanmin(times):.0f}..{np.nanmax(times):.0f} s: it covers none "
                    "of them; give the campaign's own radiation log")
            _fill(campaign, hit, times, framedose, rate, tanneal, source,
                  f"campaign log {path.name}")

    # logs next to the frames, for what the campaign log did not cover
    cache: dict[Path, tuple[_Join | None, str]] = {}
    logs_by_folder: dict[str, list[Path]] = {}  # the logs next to a frame: per its folder
    for i in np.flatnonzero(np.isnan(framedose)):
        if not np.isfinite(times[i]):
            continue
        frame = out.at[i, "PATH"]
        folder = os.path.dirname(os.fspath(frame))
        if folder not in logs_by_folder:
            logs_by_folder[folder] = _local_logs(frame)
        for log_path in logs_by_folder[folder]:
            if log_path not in cache:
                cache[log_path] = _read(log_path, settings, strict=False)
            join, why = cache[log_path]
            if join is None or not join.covers(times[i:i + 1])[0]:
                continue
            mask = np.zeros(n, bool)
            mask[i] = True
            _fill(join, mask, times, framedose, rate, tanneal, source,
                  f"log {log_path.parent.name}/{log_path.name}")
            if log_path not in report.local_logs:
                report.local_logs.append(log_path)
            break

    _spread_dose_folders(out, times, step, framedose, source, flag, cache, report, settings)

    for i in range(n):
        if not np.isnan(framedose[i]):
            continue
        if stage[i] == "pre":
            framedose[i] = 0.0
            source[i] = source[i] or "pre-irradiation stage (no dose yet)"
        elif stage[i] == "post" and campaign is not None and np.isfinite(times[i]) \
                and times[i] > campaign.t[-1]:
            # the beam stays off after the campaign's last logged row
            framedose[i] = campaign.d[-1]
            rate[i] = 0.0
            tanneal[i] = time_since_beam_off(times[i:i + 1], campaign.offs)[0]
            source[i] = f"campaign log {campaign.log.path.name} (final dose)"
            flag[i] = _join_flags(flag[i], "after the log's last row: its final dose assumed, "
                                           "beam off")
        elif not np.isfinite(times[i]):
            flag[i] = _join_flags(flag[i], "no time stamp (TIMESTAMP): cannot be joined to a "
                                           "radiation log")
        else:
            flag[i] = _join_flags(flag[i], "no radiation log covers this frame's time; give "
                                           "the campaign log with --radiation-log")
    report.uncovered = int(np.isnan(framedose).sum())
    beam = np.where(np.isnan(rate), "", np.where(rate > settings.beam_threshold, "on", "off"))
    tanneal[beam == "on"] = np.nan
    out["FRAMEDOSE"] = np.round(framedose, 6)
    out["DOSERATE"] = rate
    out["BEAM"] = beam
    out["TANNEAL"] = tanneal
    out["DOSESRC"] = source
    out["DOSEFLAG"] = flag
    return out, report


def _join_flags(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def _fill(join: _Join, mask, times, framedose, rate, tanneal, source, what: str) -> None:
    idx = np.flatnonzero(mask & np.isnan(framedose))
    if not idx.size:
        return
    d, r, a = join.values(times[idx])
    framedose[idx], rate[idx], tanneal[idx] = d, r, a
    label = what + (f" ({join.note})" if join.note else "")
    for i in idx:
        source[i] = label


def _spread_dose_folders(out, times, step, framedose, source, flag, cache, report,
                         settings) -> None:
    """The old dose-folder rule for ``<dose>kRads`` folders without a usable log of their own."""
    folders: dict[Path, list[int]] = {}
    for i, folder in enumerate(_step_folders(out["PATH"])):
        if folder is not None:
            folders.setdefault(folder, []).append(i)
    previous = 0.0
    for folder, rows in sorted(folders.items(), key=lambda kv: folder_dose(kv[0].name)):
        nominal = folder_dose(folder.name)
        rows = np.array(rows)
        todo = rows[np.isnan(framedose[rows])]
        logs = [folder / n for n in RADIATION_LOG_NAMES if (folder / n).is_file()]
        if todo.size == len(rows) and not _frames_have_own_logs(out, rows):
            why = "no radiation log in the folder"
            if logs:
                if logs[0] not in cache:
                    cache[logs[0]] = _read(logs[0], settings, strict=False)
                join, reason = cache[logs[0]]
                why = reason or f"{logs[0].name} does not cover the folder's frames"
            order = sorted(todo, key=lambda i: (np.isnan(times[i]), times[i]
                                                if np.isfinite(times[i]) else 0.0,
                                                str(out.at[i, "PATH"])))
            count = len(order)
            for k, i in enumerate(order):
                framedose[i] = previous + (k + 1) * (nominal - previous) / count
                source[i] = "spread over the dose folder (no usable log)"
                flag[i] = _join_flags(flag[i], f"estimated: {why}; dose spread linearly from "
                                               f"{previous:g} to {nominal:g} krad over the "
                                               f"folder's {count} frames in time order")
            report.spread_folders[folder] = why
            logger.warning("%s: %s; dose spread linearly from %g to %g krad over its %d frames",
                           folder, why, previous, nominal, count)
        done = framedose[rows]
        previous = float(np.nanmax(done)) if np.isfinite(done).any() else nominal


def _frames_have_own_logs(out, rows) -> bool:
    """True when some frame of a dose folder sits in an attempt with its own radiation log
    (the irradiation layout): the folder rule is for the dose-directory layout only."""
    step = step_folder(out.at[rows[0], "PATH"])
    for i in rows:
        here = Path(out.at[i, "PATH"]).parent
        for folder in (here, here.parent):
            if folder != step and any((folder / n).is_file() for n in RADIATION_LOG_NAMES):
                return True
    return False


def require_doses(table: pd.DataFrame, what: str) -> None:
    """Raise :class:`UserError` when no row has a dose step (nothing to analyse per dose)."""
    if "DOSE" not in table or not pd.to_numeric(table["DOSE"], errors="coerce").notna().any():
        raise UserError(f"{what}: no frame has a dose step (no <dose>kRads folder, no "
                        "pre/post stage); index an irradiation campaign")


__all__ = ["DoseSettings", "DoseReport", "assign_doses", "step_doses", "step_folder",
           "dose_rate_at", "beam_off_times", "time_since_beam_off", "find_campaign_log",
           "check_time_order", "check_radiation_log", "require_doses", "DOSE_COLUMNS",
           "RAD_PER_KRAD"]
