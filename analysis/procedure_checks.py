"""Procedure checks: did the campaign follow the total-dose test methods it cites?

Checks, from the campaign radiation log (beam-on intervals: log intervals whose dose
rate exceeds 1e-3 rad(Si)/s) and the index (frame times, stages, dose steps):

``dose_rate`` (per dose step and standard)
    Mean dose rate of the irradiation that delivered the step [rad(Si)/s] against the
    standard's window.
``time_to_measurement`` (per dose step and post stage)
    Time from the end of the step's irradiation (the last beam-off before its first frame)
    to its first frame [s]; limit 1 h.  Frames taken while the beam is on (in-situ
    measurement) get ``warn``: the window is for measurements after irradiation.
``time_to_next_step`` (per dose step but the last)
    Time from the end of a step's irradiation to the start of the next one [s]; limit 2 h.
``anneal_duration`` (post stage)
    Time from the last beam-off to the first post-irradiation frame [s] (room-temperature
    anneal); at least 24 h.
``anneal_temperature`` (post stage)
    Mean temperature logged between the last beam-off and the first post frame [degC],
    room temperature 24 +- 6 degC; ``not_logged`` when the log has no temperature column.

Limits (:data:`LIMITS`), as commonly quoted from the standards: MIL-STD-883 Test Method
1019 (ionising radiation total-dose test procedure), condition A "standard rate" 50 to
300 rad(Si)/s, electrical measurements within 1 h of the end of each irradiation and the
next irradiation within 2 h, room-temperature anneal 24 h at 24 +- 6 degC; ESCC Basic
Specification 22900 (total dose steady-state irradiation), standard-rate window 1 to 50
rad(Si)/s (3.6 to 180 krad(Si)/h) and low-rate window 0.01 to 0.1 rad(Si)/s (36 to 360
rad(Si)/h), the same 1 h / 2 h timing and a 24 h room-temperature anneal.  Check the
revision your test plan cites: the numbers are in :data:`LIMITS`, one place.

Status: ``pass`` within the limit, ``warn`` outside it (the campaign may follow another
procedure: the number is reported for a reviewer, nothing is refused), ``fail`` when a
required quantity is contradictory (a step with no dose delivered), ``not_logged`` when the
log does not hold the quantity.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils.errors import TableError
from utils.io.fitsio import write_csv
from utils.io.radiation_log import read_radiation_log
from utils.stack.grouping import stage_tag

logger = logging.getLogger(__name__)

#: rad per krad.
RAD_PER_KRAD = 1000.0
#: Beam on above this dose rate [rad(Si)/s] (as the dose bookkeeping).
BEAM_THRESHOLD = 1e-3
#: The standards' windows: ``{check: [(standard, low, high, unit)]}``.
LIMITS = {
    "dose_rate": [("MIL-STD-883 TM1019 condition A", 50.0, 300.0, "rad(Si)/s"),
                  ("ESCC 22900 standard rate", 1.0, 50.0, "rad(Si)/s"),
                  ("ESCC 22900 low rate", 0.01, 0.1, "rad(Si)/s")],
    "time_to_measurement": [("MIL-STD-883 TM1019 / ESCC 22900", 0.0, 3600.0, "s")],
    "time_to_next_step": [("MIL-STD-883 TM1019 / ESCC 22900", 0.0, 7200.0, "s")],
    "anneal_duration": [("MIL-STD-883 TM1019 / ESCC 22900 room-temperature anneal", 86400.0,
                         math.inf, "s")],
    "anneal_temperature": [("MIL-STD-883 TM1019 room temperature", 18.0, 30.0, "degC")],
}
COLUMNS = ["check", "stage", "dose_krad", "value", "unit", "limit", "status", "detail"]


@dataclass
class ProcedureChecks:
    """The checks' table and where it was written."""

    table: pd.DataFrame
    path: Path

    def counts(self) -> dict:
        """``{status: count}``."""
        return {s: int(n) for s, n in self.table["status"].value_counts().items()}


def beam_intervals(t: np.ndarray, d: np.ndarray) -> list[tuple[float, float, float]]:
    """``(on, off, dose delivered [krad])`` of each run of log intervals with the beam on.

    Examples
    --------
    >>> beam_intervals(np.array([0., 10., 20., 30., 40.]), np.array([0., 0., 1., 2., 2.]))
    [(10.0, 30.0, 2.0)]
    """
    if t.size < 2:
        return []
    on = np.diff(d) / np.diff(t) * RAD_PER_KRAD > BEAM_THRESHOLD
    out, start = [], None
    for i, flag in enumerate(on):
        if flag and start is None:
            start = i
        if start is not None and (not flag or i == on.size - 1):
            stop = i if not flag else i + 1
            out.append((float(t[start]), float(t[stop]), float(d[stop] - d[start])))
            start = None
    return out


def _limit_text(low: float, high: float, unit: str) -> str:
    if math.isinf(high):
        return f">= {low:g} {unit}"
    return f"{low:g}..{high:g} {unit}"


def _row(check, stage, dose, value, unit, limit, status, detail) -> dict:
    return dict(zip(COLUMNS, [check, stage, dose, value, unit, limit, status, detail]))


def _windowed(check: str, stage: str, dose: float, value: float, detail: str) -> list[dict]:
    rows = []
    for standard, low, high, unit in LIMITS[check]:
        status = "pass" if low <= value <= high else "warn"
        rows.append(_row(check, stage, dose, value, unit, _limit_text(low, high, unit), status,
                         f"{standard}; {detail}"))
    return rows


def _step_spans(table: pd.DataFrame) -> list[tuple[str, float, float, float]]:
    """``(stage, dose, first frame, last frame)`` of every dose step in time order, then post."""
    stage = table["STAGE"].astype(object).fillna("").astype(str)
    times = pd.to_numeric(table["TIMESTAMP"], errors="coerce")
    dose = pd.to_numeric(table["DOSE"], errors="coerce")
    spans = []
    for d in sorted(dose[stage == "radiating"].dropna().unique()):
        t = times[(stage == "radiating") & np.isclose(dose, d)].dropna()
        if len(t):
            spans.append(("radiating", float(d), float(t.min()), float(t.max())))
    spans.sort(key=lambda s: s[2])
    t = times[stage == "post"].dropna()
    if len(t):
        spans.append(("post", math.nan, float(t.min()), float(t.max())))
    return spans


def _anneal(rows: list[dict], first: float, off: float, temps: pd.DataFrame | None) -> None:
    rows += _windowed("anneal_duration", "post", math.nan, first - off,
                      "last beam-off to the first post-irradiation frame")
    limit = _limit_text(*LIMITS["anneal_temperature"][0][1:])
    if temps is None or not temps["TEMP"].notna().any():
        rows.append(_row("anneal_temperature", "post", math.nan, math.nan, "degC", limit,
                         "not_logged", "the radiation log has no temperature column"))
        return
    sel = (temps["TIME"] >= off) & (temps["TIME"] <= first) & temps["TEMP"].notna()
    if sel.any():
        rows += _windowed("anneal_temperature", "post", math.nan,
                          float(temps.loc[sel, "TEMP"].mean()),
                          f"mean of {int(sel.sum())} temperatures logged during the anneal")
    else:
        rows.append(_row("anneal_temperature", "post", math.nan, math.nan, "degC", limit,
                         "not_logged", "no temperature logged during the anneal"))


def compute_checks(table: pd.DataFrame, t: np.ndarray, d: np.ndarray,
                   temps: pd.DataFrame | None) -> list[dict]:
    """Every check (see the module notes) from the index rows and the log's time [s], dose
    [krad] and, when logged, temperature (``TIME``, ``TEMP``).

    The irradiation of a dose step is every beam-on interval that starts after the previous
    step's last frame and at or before its own last frame (before its frames, or during
    them when the beam stays on while measuring)."""
    rows: list[dict] = []
    intervals = beam_intervals(t, d)
    previous_last = -math.inf
    ends: list[tuple[float, float, float]] = []   # (dose, end of irradiation, next start)
    for name, dose, first, last in _step_spans(table):
        label = f"{dose:g} krad" if name == "radiating" else "post"
        mine = [iv for iv in intervals if previous_last < iv[0] <= last]
        under_beam = any(on <= first < off for on, off, _ in intervals)
        if name == "radiating":
            if not mine:
                rows.append(_row("dose_rate", name, dose, math.nan, "rad(Si)/s", "",
                                 "not_logged" if not intervals else "fail",
                                 f"no irradiation logged for the {label} step"))
            else:
                delivered = sum(iv[2] for iv in mine)
                duration = sum(iv[1] - iv[0] for iv in mine)
                rows += _windowed("dose_rate", name, dose,
                                  delivered * RAD_PER_KRAD / duration,
                                  f"{delivered:g} krad in {duration:.0f} s of beam")
                if ends:
                    ends[-1] = (ends[-1][0], ends[-1][1], min(iv[0] for iv in mine))
                ends.append((dose, max(iv[1] for iv in mine), math.nan))
        ended = [off for _, off, _ in intervals if off <= first]
        if under_beam:
            rows.append(_row("time_to_measurement", name, dose, 0.0, "s", "<= 3600 s", "warn",
                             "measured while the beam was on (in-situ): the window applies to "
                             "measurements after irradiation"))
        elif ended:
            rows += _windowed("time_to_measurement", name, dose, first - max(ended),
                              "end of irradiation to the first frame")
        else:
            rows.append(_row("time_to_measurement", name, dose, math.nan, "s", "<= 3600 s",
                             "not_logged", f"no beam-off logged before the {label} frames"))
        if name == "post":
            if ended:
                _anneal(rows, first, max(ended), temps)
            else:
                rows.append(_row("anneal_duration", "post", math.nan, math.nan, "s",
                                 ">= 86400 s", "not_logged",
                                 "no beam-off logged before the post frames"))
        previous_last = last
    for dose, end, nxt in ends:
        if math.isfinite(nxt):
            rows += _windowed("time_to_next_step", "radiating", dose, nxt - end,
                              f"end of the {dose:g} krad irradiation to the next one")
    for r in rows:
        if r["stage"] == "radiating":
            r["stage"] = stage_tag("radiating", r["dose_krad"])
    return rows


def run(table: pd.DataFrame, log_path: Path, out_path: Path) -> ProcedureChecks:
    """Read the campaign log, compute every check and write ``procedure_checks.csv``."""
    try:
        log = read_radiation_log(log_path)
        part = log.table[["TIME", "DOSE"]].dropna().groupby("TIME", sort=True)["DOSE"].mean()
        t, d = part.index.to_numpy(float), part.to_numpy(float)
        temps = log.table[["TIME", "TEMP"]] if log.table["TEMP"].notna().any() else None
    except TableError as err:
        logger.warning("procedure checks: %s; every check is not_logged", err)
        t, d, temps = np.array([]), np.array([]), None
    rows = compute_checks(table, t, d, temps)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    path = write_csv(frame, out_path)
    bad = frame[frame["status"].isin(["warn", "fail"])]
    if len(bad):
        logger.info("procedure checks: %d of %d outside the standards' limits (see %s)",
                    len(bad), len(frame), path)
    return ProcedureChecks(frame, path)


__all__ = ["ProcedureChecks", "run", "compute_checks", "beam_intervals", "LIMITS", "COLUMNS"]
