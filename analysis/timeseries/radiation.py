"""The radiation and power logs of a sequence, put on the frames' clock.

Log times and frame times are compared on one zero point: both must be on the
same clock (both Unix times, or both the same relative clock), the log is
interpolated at the frames' own time stamps -- averaged over each frame's
exposure ``[TIMESTMP, TIMESTMP + EXPTIME]``, which is what the frame received --
and only then are times expressed relative to the first frame.  (The old
operation analysis made each series relative to its own first row, so a log
that started earlier or later than the frames was shifted by that difference.)
Frames that start outside the logged span get no value and are flagged, never
extrapolated.

The radiation series correlated with transients is the dose *rate*: the
monitor's ``RadiationLevel`` column when the log has one, else the rate
derived from the accumulated ``Dose`` (dose difference over time difference
between log rows).  The accumulated dose itself can be chosen, as the old
toolkit did, but transients follow the rate, not the total.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from utils.io.radiation_log import RadiationLog

from .sequence import FrameSequence, clock_kind

logger = logging.getLogger(__name__)

#: Choices of the radiation series.
RADIATION_CHOICES = ("auto", "level", "dose-rate", "dose")


@dataclass
class RadiationSeries:
    """A radiation series at the frame times, and the log itself on the frames' time axis.

    Attributes
    ----------
    name : str
        What the values are (``RadiationLevel``, ``dose rate from Dose``, ``Dose``) or ''.
    unit : str
        Their unit (``krad/s``, ``krad``).
    values : numpy.ndarray
        Value at each frame (NaN where not covered).
    dose : numpy.ndarray
        Accumulated dose at each frame [krad] (NaN without a Dose column or coverage).
    covered : numpy.ndarray
        True where the frame's time lies within the logged span.
    log_time : numpy.ndarray
        Log rows' times relative to the first frame [s].
    log_values, log_dose, log_temperature : numpy.ndarray
        The log's radiation series, dose [krad] and temperature [degC] per row.
    problem : str
        Why no value could be given ('' when the series is usable).
    """

    name: str = ""
    unit: str = ""
    values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dose: np.ndarray = field(default_factory=lambda: np.zeros(0))
    covered: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    log_time: np.ndarray = field(default_factory=lambda: np.zeros(0))
    log_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    log_dose: np.ndarray = field(default_factory=lambda: np.zeros(0))
    log_temperature: np.ndarray = field(default_factory=lambda: np.zeros(0))
    problem: str = ""

    @property
    def n_covered(self) -> int:
        """Frames inside the logged span."""
        return int(np.count_nonzero(self.covered))


def _rate_from_dose(t: np.ndarray, dose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dose rate [krad/s] between consecutive log rows, at the interval midpoints."""
    good = np.isfinite(t) & np.isfinite(dose)
    t, dose = t[good], dose[good]
    order = np.argsort(t, kind="stable")
    t, dose = t[order], dose[order]
    dt = np.diff(t)
    keep = dt > 0
    mid = 0.5 * (t[1:] + t[:-1])[keep]
    return mid, np.diff(dose)[keep] / dt[keep]


def window_mean(t: np.ndarray, v: np.ndarray, starts: np.ndarray, widths: np.ndarray,
                samples: int = 17) -> np.ndarray:
    """Mean of the linear interpolant of ``v(t)`` over each window ``[start, start + width]``.

    A width of 0 gives the value at ``start``.  (Simpson-like sampling of a piecewise-linear
    function: exact up to the log's own sampling.)

    Examples
    --------
    >>> window_mean(np.array([0.0, 1.0, 2.0]), np.array([0.0, 0.0, 2.0]),
    ...             np.array([0.5, 1.0]), np.array([1.0, 0.0])).round(3).tolist()
    [0.25, 0.0]
    """
    good = np.isfinite(t) & np.isfinite(v)
    t, v = t[good], v[good]
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    out = np.full(np.shape(starts), np.nan)
    if t.size == 0:
        return out
    frac = np.linspace(0.0, 1.0, samples)
    points = np.asarray(starts, float)[:, None] + np.asarray(widths, float)[:, None] * frac
    values = np.interp(points, t, v)
    weights = np.ones(samples)
    weights[[0, -1]] = 0.5                       # trapezoid rule
    return (values * weights).sum(axis=1) / weights.sum()


def radiation_at_frames(log: RadiationLog | None, seq: FrameSequence,
                        choice: str = "auto") -> RadiationSeries:
    """The radiation series at each frame's time, with the log on the frames' time axis.

    Parameters
    ----------
    log : RadiationLog or None
        The sequence's radiation log (None: no log).
    seq : FrameSequence
        The frames (their ``timestamps`` are the common clock).
    choice : {"auto", "level", "dose-rate", "dose"}
        Which series: ``auto`` = the monitor level if logged, else the rate from ``Dose``.

    Returns
    -------
    RadiationSeries
        ``problem`` says why values are missing (no log, no time column, different clocks,
        no coverage); frames outside the logged span are NaN and not ``covered``.
    """
    if choice not in RADIATION_CHOICES:
        raise ValueError(f"choice must be one of {RADIATION_CHOICES}, got {choice!r}")
    n = len(seq)
    empty = np.full(n, np.nan)
    if log is None:
        return RadiationSeries(values=empty, dose=empty.copy(), covered=np.zeros(n, bool),
                               problem="no radiation log")
    table = log.table
    t_log = table["TIME"].to_numpy(float)
    rel = t_log - seq.start
    base = dict(log_time=rel, log_dose=table["DOSE"].to_numpy(float),
                log_temperature=table["TEMP"].to_numpy(float))
    if not log.has_time:
        return RadiationSeries(values=empty, dose=empty.copy(), covered=np.zeros(n, bool),
                               problem=f"{log.path.name} has no time column", **base)
    frames_clock, log_clock = seq.clock, clock_kind(t_log)
    if frames_clock == "none":
        return RadiationSeries(values=empty, dose=empty.copy(), covered=np.zeros(n, bool),
                               problem="frames have no time stamps (TIMESTMP)", **base)
    if frames_clock != log_clock:
        return RadiationSeries(values=empty, dose=empty.copy(), covered=np.zeros(n, bool),
                               problem=f"{log.path.name} times are {log_clock} but frame times "
                                       f"are {frames_clock}: no common zero point", **base)
    has_level = bool(table["LEVEL"].notna().any())
    has_dose = bool(table["DOSE"].notna().any())
    if choice == "auto":
        choice = "level" if has_level else "dose-rate"
    t_frames = seq.timestamps
    lo, hi = log.span()
    covered = np.isfinite(t_frames) & (t_frames >= lo) & (t_frames <= hi)
    # the exposure window, cut at the end of the log (a per-frame log ends at the last
    # frame's start: that frame keeps its own row's value)
    widths = np.where(np.isfinite(seq.exptimes) & (seq.exptimes > 0), seq.exptimes, 0.0)
    widths = np.where(covered, np.clip(np.minimum(t_frames + widths, hi) - t_frames, 0, None),
                      0.0)
    dose = log.dose_at(t_frames) if has_dose else empty.copy()
    if choice == "level":
        if not has_level:
            return RadiationSeries(values=empty, dose=dose, covered=covered,
                                   problem=f"{log.path.name} has no RadiationLevel column",
                                   **base)
        values = window_mean(table["TIME"].to_numpy(float), table["LEVEL"].to_numpy(float),
                             t_frames, widths)
        values = np.where(covered, values, np.nan)
        name, unit, log_values = "RadiationLevel", "krad/s", table["LEVEL"].to_numpy(float)
    elif choice == "dose":
        if not has_dose:
            return RadiationSeries(values=empty, dose=dose, covered=covered,
                                   problem=f"{log.path.name} has no Dose column", **base)
        values, name, unit = dose.copy(), "Dose", "krad"
        log_values = table["DOSE"].to_numpy(float)
    else:
        if not has_dose:
            return RadiationSeries(values=empty, dose=dose, covered=covered,
                                   problem=f"{log.path.name} has neither RadiationLevel nor "
                                           "Dose", **base)
        mid, rate = _rate_from_dose(t_log, table["DOSE"].to_numpy(float))
        if mid.size < 1:
            return RadiationSeries(values=empty, dose=dose, covered=covered,
                                   problem=f"{log.path.name}: too few timed Dose rows for a "
                                           "rate", **base)
        point = np.interp(t_frames, mid, rate) if mid.size > 1 else np.full(n, rate[0])
        with np.errstate(invalid="ignore", divide="ignore"):
            # the dose received during the exposure, over the exposure: the frame's own rate
            received = (log.dose_at(t_frames + widths) - log.dose_at(t_frames)) / widths
        values = np.where(widths > 0, received, point)
        values = np.where(covered, values, np.nan)
        name, unit = "dose rate from Dose", "krad/s"
        log_values = np.interp(t_log, mid, rate) if mid.size > 1 else np.full(t_log.size,
                                                                                 rate[0])
    problem = ""
    if not covered.any():
        problem = (f"{log.path.name} covers none of the {n} frames (log {lo - seq.start:.1f} "
                   f"to {hi - seq.start:.1f} s after the first frame)")
    elif not covered.all():
        logger.warning("%s covers %d of %d frames; the others get no radiation value",
                       log.path, int(covered.sum()), n)
    return RadiationSeries(name=name, unit=unit, values=values, dose=dose, covered=covered,
                           log_values=log_values, problem=problem, **base)


def power_on_frame_axis(power: pd.DataFrame | None, seq: FrameSequence) -> pd.DataFrame | None:
    """The power log with ``TIME`` made relative to the first frame (None if not comparable)."""
    if power is None or power.empty:
        return None
    if clock_kind(power["TIME"]) != seq.clock or seq.clock == "none":
        logger.warning("power log times are %s but frame times are %s; power log not plotted",
                       clock_kind(power["TIME"]), seq.clock)
        return None
    out = power.copy()
    out["TIME"] = out["TIME"] - seq.start
    return out


__all__ = ["RadiationSeries", "radiation_at_frames", "power_on_frame_axis", "window_mean",
           "RADIATION_CHOICES"]
