"""Per-frame acquisition logs (``temperatureLog.csv`` and its radiation variants).

One row per frame, keyed by ``FrameNum``; the delimiter is sniffed.  Values
are mapped to header keywords and units by :mod:`utils.headers` (exposure
columns are microseconds in the log and seconds in the header).  A malformed
row or a non-numeric value never stops a conversion: it is reported in
``problems`` (file and line) and the affected frame falls back to its file
and folder names, with a note in ``fits_index.csv``.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import headers as kw

#: Per-frame log names, in order of preference.
LOG_NAMES = ("temperatureLog.csv", "radiationLog.csv", "radiationLogCompleto.csv")

#: Keywords whose log values must be numbers.
_NUMERIC = {kw.FRAMENUM, kw.TIMESTAMP, kw.EXPTIME, kw.REXPTIME, kw.TEMP, kw.TEMP_0, kw.EQTEMP,
            kw.DELTMP, kw.POWCONS, kw.DOSE, kw.RADLEVEL, kw.GAIN}


@dataclass
class FrameLog:
    """A parsed per-frame log.

    Attributes
    ----------
    path : Path
        The CSV file.
    rows : dict
        ``frame number -> {keyword: value}`` with values already in header units
        (floats for numbers, strings otherwise).
    columns : dict
        ``CSV column -> keyword``.
    problems : list of str
        One line per malformed row or value (``"line N: ..."``).
    bad_values : dict
        ``frame number -> [messages]`` for values that could not be used.
    """

    path: Path
    rows: dict = field(default_factory=dict)
    columns: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    bad_values: dict = field(default_factory=dict)


def find_frame_log(folder: str | os.PathLike) -> Path | None:
    """Return the attempt's per-frame log: temperatureLog, else radiationLog, else Completo."""
    folder = Path(folder)
    return next((folder / n for n in LOG_NAMES if (folder / n).is_file()), None)


def sniff_delimiter(sample: str) -> str:
    """Guess the delimiter among ``, ; tab |`` from a text sample (default comma)."""
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def read_frame_log(path: str | os.PathLike) -> FrameLog:
    """Read a per-frame log CSV.

    Parameters
    ----------
    path : path-like
        The CSV file.

    Returns
    -------
    FrameLog
        Rows keyed by frame number; problems listed, never raised.
    """
    path = Path(path)
    log = FrameLog(path)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as err:
        log.problems.append(f"cannot read ({err})")
        return log
    if not text.strip():
        log.problems.append("empty file")
        return log
    reader = csv.reader(io.StringIO(text), delimiter=sniff_delimiter(text[:4096]))
    header = next(reader, [])
    names = [h.strip() for h in header]
    lowered = [n.lower() for n in names]
    key_index = next((lowered.index(k) for k in ("framenum", "frame_num", "frame")
                      if k in lowered), 0)
    mapping = []
    for n in names:
        try:
            mapping.append(kw.log_column_keyword(n) if n else (None, 1.0))
        except ValueError:  # e.g. a '#' column: no character usable in a FITS keyword
            log.problems.append(f"line 1: column {n!r} cannot be a FITS keyword; ignored")
            mapping.append((None, 1.0))
    # two columns may claim the same keyword (e.g. Temperature and CCDTemp): first one wins
    seen: set[str] = set()
    for i, (key, _) in enumerate(mapping):
        if key in seen:
            mapping[i] = (kw.fits_keyword(names[i]), 1.0)
            if mapping[i][0] in seen:
                mapping[i] = (None, 1.0)
        if mapping[i][0]:
            seen.add(mapping[i][0])
    log.columns = {n: m[0] for n, m in zip(names, mapping) if m[0]}
    for line_number, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(names):
            log.problems.append(f"line {line_number}: {len(row)} fields, header has {len(names)}; "
                                "row ignored")
            continue
        number = _number(row[key_index].strip())
        if number is None or not float(number).is_integer():
            log.problems.append(f"line {line_number}: frame number {row[key_index]!r} is not an "
                                "integer; row ignored")
            continue
        frame = int(number)
        values: dict[str, object] = {}
        for (key, factor), cell in zip(mapping, row):
            cell = cell.strip()
            if key is None or cell == "":
                continue
            value = _number(cell)
            if value is None:
                if key in _NUMERIC:
                    message = f"line {line_number}: {key}={cell!r} is not a number; ignored"
                    log.problems.append(message)
                    log.bad_values.setdefault(frame, []).append(message)
                    continue
                values[key] = cell
            elif not math.isfinite(value):
                values[key] = "INF" if value > 0 else "-INF" if value < 0 else "NAN"
            else:
                values[key] = value * factor
        if frame in log.rows:
            log.problems.append(f"line {line_number}: frame {frame} appears twice; first kept")
            continue
        log.rows[frame] = values
    return log
