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


def compute_checks(table: pd.DataFrame, t: np.ndarray, d: np.ndarray,
                   temps: pd.DataFrame | None) -> list[dict]:
    """Every check (see the module notes) from the index rows and the log's time [s], dose
    [krad] and, when logged, temperature (``TIME``, ``TEMP``)."""
    rows: list[dict] = []
    stage = table["STAGE"].astype(object).fillna("").astype(str)
    times = pd.to_numeric(table["TIMESTAMP"], errors="coerce")
    intervals = beam_intervals(t, d)
    steps = sorted(pd.to_numeric(table.loc[stage == "radiating", "DOSE"],
                                 errors="coerce").dropna().unique())
    starts = {}
    for dose in steps:
        sel = (stage == "radiating") & np.isclose(pd.to_numeric(table["DOSE"], errors="coerce"),
                                                  dose)
        starts[("radiating", dose)] = float(times[sel].min())
    if (stage == "post").any():
        starts[("post", math.nan)] = float(times[stage == "post"].min())
    previous_end = -math.inf
    step_ends = []
    for (name, dose), first in starts.items():
        label = f"{dose:g} krad" if name == "radiating" else "post"
        before = [iv for iv in intervals if previous_end <= iv[0] < first or
                  (iv[0] < first <= iv[1])]
        under_beam = any(on <= first < off for on, off, _ in intervals)
        if name == "radiating":
            if not before:
                rows.append(_row("dose_rate", name, dose, math.nan, "rad(Si)/s", "", "fail",
                                 f"no irradiation logged before or during the {label} step"))
            else:
                delivered = sum(iv[2] for iv in before)
                duration = sum(iv[1] - iv[0] for iv in before)
                rate = delivered * RAD_PER_KRAD / duration if duration > 0 else math.nan
                rows += _windowed("dose_rate", name, dose, rate,
                                  f"{delivered:g} krad in {duration:.0f} s of beam")
        if under_beam:
            rows.append(_row("time_to_measurement", name, dose, 0.0, "s", "<= 3600 s", "warn",
                             "measured while the beam was on (in-situ): the window applies to "
                             "measurements after irradiation"))
        else:
            ended = [off for _, off, _ in intervals if off <= first]
            if ended:
                wait = first - max(ended)
                rows += _windowed("time_to_measurement", name, dose, wait,
                                  "end of irradiation to the first frame")
                step_ends.append((name, dose, max(ended)))
            elif name == "radiating":
                rows.append(_row("time_to_measurement", name, dose, math.nan, "s", "<= 3600 s",
                                 "not_logged", "no beam-off logged before the step's frames"))
        if name == "radiating" and under_beam:
            step_ends.append((name, dose, max((off for on, off, _ in intervals if on <= first),
                                              default=math.nan)))
        previous_end = first
    for (name, dose, end), nxt in zip(step_ends, step_ends[1:]):
        if name != "radiating" or nxt[0] != "radiating":
            continue
        later = [on for on, _, _ in intervals if on >= end]
        if later and math.isfinite(end):
            rows += _windowed("time_to_next_step", name, dose, min(later) - end,
                              f"end of the {dose:g} krad irradiation to the next one")
    if ("post", math.nan) in starts or (stage == "post").any():
        first = float(times[stage == "post"].min())
        ended = [off for _, off, _ in intervals if off <= first]
        if ended:
            off = max(ended)
            rows += _windowed("anneal_duration", "post", math.nan, first - off,
                              "last beam-off to the first post-irradiation frame")
            if temps is not None and temps["TEMP"].notna().any():
                sel = (temps["TIME"] >= off) & (temps["TIME"] <= first) & temps["TEMP"].notna()
                if sel.any():
                    rows += _windowed("anneal_temperature", "post", math.nan,
                                      float(temps.loc[sel, "TEMP"].mean()),
                                      f"mean of {int(sel.sum())} logged temperatures")
                else:
                    rows.append(_row("anneal_temperature", "post", math.nan, math.nan, "degC",
                                     "18..30 degC", "not_logged",
                                     "no temperature logged during the anneal"))
            else:
                rows.append(_row("anneal_temperature", "post", math.nan, math.nan, "degC",
                                 "18..30 degC", "not_logged",
                                 "the radiation log has no temperature column"))
        else:
            rows.append(_row("anneal_duration", "post", math.nan, math.nan, "s", ">= 86400 s",
                             "not_logged", "no beam-off logged before the post frames"))
    for r in rows:
        r["stage"] = stage_tag(r["stage"], r["dose_krad"]) if r["stage"] == "radiating" \
            else r["stage"]
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
