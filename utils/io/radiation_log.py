"""Time-series logs of an irradiation or operation campaign: radiation logs and power logs.

Three radiation-log files occur (see the old toolkit's notes): the campaign log
``radiationLogCompleto.csv`` (every frame in time order), per-attempt
``radiationLog.csv`` and per-dose-folder ``radiationLogDef.csv``.  They share a
vocabulary, matched by column name whatever the case: a time column
(``TimeStamp``, ``Timestamp``, ``Time``) [s], the accumulated dose ``Dose``
[krad], the monitor's ``RadiationLevel`` (dose rate as the sensor measures it),
``FrameNum`` and a temperature.  ``FrameNum`` restarts in every attempt, so
joins to frames go by time, not by frame number (the old code's collision).

The readers only parse: every cell that is not a number becomes NaN with a
line in ``problems``; whether a log is usable (does it cover these frames? is
its dose constant?) is for the caller to decide and say.  Only a file that
cannot be read at all, or has no column of the kind needed, raises
:class:`~utils.errors.TableError` (one line naming the file and what to do).
``powerLog.csv`` (time, current, voltage) is read the same way.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import TableError
from .frame_log import decode_text, parse_number, sniff_delimiter, table_rows

#: Radiation-log names, in the order a dataset folder is searched.
RADIATION_LOG_NAMES = ("radiationLogCompleto.csv", "radiationLog.csv", "radiationLogDef.csv")
#: Power-log name of the operation layout.
POWER_LOG_NAME = "powerLog.csv"

_TIME_NAMES = ("timestamp", "timestampradiation", "time", "timestamppwr", "unixtime", "t")
_DOSE_NAMES = ("dose", "totaldose", "accumulateddose", "dosekrad")
_LEVEL_NAMES = ("radiationlevel", "radlevel", "doserate", "level")
_FRAME_NAMES = ("framenum", "frame_num", "frame", "framenumber")
_TEMP_NAMES = ("temperature", "temp", "sensortemp", "ccdtemp", "chiptemp")
_CURRENT_NAMES = ("amperage", "current", "currenta")
_VOLTAGE_NAMES = ("voltage", "voltagev")


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum() or ch == "_").replace("_", "")


def _find(columns: list[str], candidates: tuple[str, ...], *, contains: bool = False,
          exclude: tuple = ()) -> str | None:
    keys = {_key(c): c for c in columns if c not in exclude}
    for cand in candidates:
        if cand.replace("_", "") in keys:
            return keys[cand.replace("_", "")]
    if contains:
        for cand in candidates:
            for k, c in keys.items():
                if cand in k:
                    return c
    return None


def _read_table(path: Path, what: str):
    """``(names, rows, line numbers, problems, delimiter)`` of a delimited text table."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise TableError(f"{path}: cannot read the {what} ({err.strerror or err}); check the "
                         "path") from err
    text, _ = decode_text(raw)
    if not text.strip():
        raise TableError(f"{path}: the {what} is empty; give a log with a header row")
    delimiter = sniff_delimiter(text[:4096])
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    problems: list[str] = []
    try:
        header = next(reader, [])
    except csv.Error as err:
        raise TableError(f"{path}: the {what} has no readable header row ({err})") from err
    names = [" ".join(h.split()) for h in header]  # a quoted name may hold a line break
    if not any(names):
        raise TableError(f"{path}: the {what} has no header row")
    rows, lines = [], []
    for line, row in table_rows(reader, len(names), problems):
        rows.append([c.strip() for c in row])
        lines.append(line)
    return names, rows, lines, problems, delimiter


def read_text_table(path: str | os.PathLike, what: str) -> tuple[list[str], list[list[str]], list]:
    """Header and rows of a delimited text table (delimiter sniffed, UTF-8 or Latin-1, BOM ok).

    Returns
    -------
    (names, rows, problems)
        Column names (stripped), rows with as many fields as the header, and one
        ``"line N: ..."`` message per row that had another number of fields (skipped).

    Raises
    ------
    TableError
        Missing, unreadable or empty file, or no header.
    """
    names, rows, _, problems, _ = _read_table(Path(path), what)
    return names, rows, problems


def _numbers(names, rows, column, problems, lines=None, decimal_comma=True) -> np.ndarray:
    """A column as float64, NaN (with a problem line) where a cell is not a finite number."""
    i = names.index(column)
    out = np.full(len(rows), np.nan)
    for k, row in enumerate(rows):
        cell = row[i]
        if cell == "":
            continue
        where = f"line {lines[k]}" if lines is not None else f"row {k + 1}"
        value = parse_number(cell, decimal_comma=decimal_comma)
        if value is None:
            problems.append(f"{where}: {column}={cell!r} is not a number; taken as missing")
            continue
        if not math.isfinite(value):
            problems.append(f"{where}: {column}={cell!r} is not finite; taken as missing")
            continue
        out[k] = value
    return out


def _repeated_times(table: pd.DataFrame, lines: list[int], column: str | None) -> list[str]:
    """Problems for times logged twice with different values (which one is right is unknown)."""
    if column is None or table.empty:
        return []
    problems = []
    first: dict[float, int] = {}
    for k, t in enumerate(table["TIME"].to_numpy()):
        if not math.isfinite(t):
            continue
        if t in first:
            j = first[t]
            a, b = table.iloc[j], table.iloc[k]
            if not all((a[c] == b[c]) or (math.isnan(a[c]) and math.isnan(b[c]))
                       for c in table.columns):
                problems.append(f"line {lines[k]}: {column}={t:g} again (line {lines[j]}) with "
                                "other values")
        else:
            first[t] = k
    return problems


@dataclass
class RadiationLog:
    """A parsed radiation log.

    Attributes
    ----------
    path : pathlib.Path
        The file.
    table : pandas.DataFrame
        One row per log row, in file order: ``TIME`` [s], ``DOSE`` [krad], ``LEVEL``
        (monitor reading, krad/s for the campaign logs), ``FRAMENUM``, ``TEMP`` [degC];
        NaN where the column is absent or the cell is not a number.
    time_column, dose_column, level_column, frame_column, temp_column : str or None
        The file's own names of those columns (None when absent).
    problems : list of str
        Rows or cells that could not be used.
    """

    path: Path
    table: pd.DataFrame
    time_column: str | None = None
    dose_column: str | None = None
    level_column: str | None = None
    frame_column: str | None = None
    temp_column: str | None = None
    problems: list = field(default_factory=list)

    @property
    def has_time(self) -> bool:
        """True when the log has a time column with at least one value."""
        return bool(self.table["TIME"].notna().any())

    @property
    def time_sorted(self) -> bool:
        """True when the times that are present never decrease in file order."""
        t = self.table["TIME"].dropna().to_numpy()
        return bool(np.all(np.diff(t) >= 0))

    @property
    def dose_is_constant(self) -> bool:
        """True when the dose column (else the level column) holds at most one distinct value:
        such a log carries no dose information (the old dose-directory rule)."""
        column = "DOSE" if self.table["DOSE"].notna().any() else "LEVEL"
        return self.table[column].dropna().nunique() <= 1

    def span(self) -> tuple[float, float]:
        """``(first, last)`` logged time [s] (NaN, NaN without times)."""
        t = self.table["TIME"].dropna()
        return (float(t.min()), float(t.max())) if len(t) else (math.nan, math.nan)

    def dose_at(self, times, *, tolerance: float = 0.0) -> np.ndarray:
        """Accumulated dose [krad] at ``times`` [s], linear between log rows.

        Times outside the logged span by more than ``tolerance`` [s] get NaN: a
        log that does not cover a frame must not give it a dose.
        """
        return self._interp("DOSE", times, tolerance)

    def level_at(self, times, *, tolerance: float = 0.0) -> np.ndarray:
        """Monitor level at ``times`` [s] (NaN outside the log's span +- ``tolerance``)."""
        return self._interp("LEVEL", times, tolerance)

    def _interp(self, column: str, times, tolerance: float) -> np.ndarray:
        times = np.atleast_1d(np.asarray(times, dtype=float))
        part = self.table[["TIME", column]].dropna().sort_values("TIME", kind="stable")
        out = np.full(times.shape, np.nan)
        if part.empty:
            return out
        t, v = part["TIME"].to_numpy(), part[column].to_numpy()
        inside = (times >= t[0] - tolerance) & (times <= t[-1] + tolerance)
        out[inside] = np.interp(times[inside], t, v)
        return out


def read_radiation_log(path: str | os.PathLike, *, need: str = "dose") -> RadiationLog:
    """Read a radiation log (``radiationLogCompleto.csv``, ``radiationLog.csv``, ``…Def.csv``).

    Parameters
    ----------
    path : path-like
        The CSV file.
    need : {"dose", "time", "any"}, optional
        What must be present: a ``Dose`` or ``RadiationLevel`` column ("dose", the
        default), a time column ("time"), or nothing ("any").

    Raises
    ------
    TableError
        The file cannot be read, or lacks the columns ``need`` asks for.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "radiationLog.csv"
    >>> _ = p.write_text("FrameNum;TimeStamp;Dose\\n0;100;1.0\\n1;110;2.0\\n")
    >>> log = read_radiation_log(p)
    >>> log.dose_at([105.0, 120.0]).tolist()
    [1.5, nan]
    """
    path = Path(path)
    names, rows, lines, problems, delimiter = _read_table(path, "radiation log")
    cols = {
        "TIME": _find(names, _TIME_NAMES) or _find(names, ("timestamp", "time"), contains=True),
        "DOSE": _find(names, _DOSE_NAMES),
        "LEVEL": _find(names, _LEVEL_NAMES) or _find(names, ("radiation",), contains=True),
        "FRAMENUM": _find(names, _FRAME_NAMES),
        "TEMP": _find(names, _TEMP_NAMES),
    }
    if need in ("dose",) and not (cols["DOSE"] or cols["LEVEL"]):
        raise TableError(f"{path}: no Dose or RadiationLevel column (columns: "
                         f"{', '.join(n for n in names if n) or 'none'}); give the campaign's "
                         "radiation log")
    if need == "time" and not cols["TIME"]:
        raise TableError(f"{path}: no time column (TimeStamp, Timestamp or Time) among "
                         f"{', '.join(n for n in names if n) or 'none'}")
    table = pd.DataFrame({key: _numbers(names, rows, col, problems, lines, delimiter != ",")
                          if col else np.full(len(rows), np.nan) for key, col in cols.items()})
    problems += _repeated_times(table, lines, cols["TIME"])
    return RadiationLog(path, table, cols["TIME"], cols["DOSE"], cols["LEVEL"], cols["FRAMENUM"],
                        cols["TEMP"], problems)


def read_power_log(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``powerLog.csv``: columns ``TIME`` [s], ``CURRENT`` [A], ``VOLTAGE`` [V].

    Columns are matched by case-insensitive substring (``TimeStampPwr``,
    ``Amperage``...); a missing current or voltage column gives NaN.

    Raises
    ------
    TableError
        Unreadable file, or no time column.
    """
    path = Path(path)
    names, rows, lines, problems, delimiter = _read_table(path, "power log")
    time_col = _find(names, _TIME_NAMES) or _find(names, ("time",), contains=True)
    if time_col is None:
        raise TableError(f"{path}: no time column in the power log (columns: "
                         f"{', '.join(names)})")
    others = dict(exclude=(time_col,))  # 'TimeStampPwr' contains 'amp'
    cols = {"TIME": time_col,
            "CURRENT": _find(names, _CURRENT_NAMES, **others)
            or _find(names, ("amper", "current"), contains=True, **others),
            "VOLTAGE": _find(names, _VOLTAGE_NAMES, **others)
            or _find(names, ("volt",), contains=True, **others)}
    table = pd.DataFrame({key: _numbers(names, rows, col, problems, lines, delimiter != ",")
                          if col else np.full(len(rows), np.nan) for key, col in cols.items()})
    problems += _repeated_times(table, lines, time_col)
    table.attrs["problems"] = problems
    return table


def find_radiation_log(folder: str | os.PathLike) -> Path | None:
    """The first radiation log of :data:`RADIATION_LOG_NAMES` in ``folder``, else None."""
    folder = Path(folder)
    return next((folder / n for n in RADIATION_LOG_NAMES if (folder / n).is_file()), None)


__all__ = ["RadiationLog", "read_radiation_log", "read_power_log", "find_radiation_log",
           "read_text_table", "RADIATION_LOG_NAMES", "POWER_LOG_NAME"]
