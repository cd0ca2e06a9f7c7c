"""Per-frame acquisition logs (``temperatureLog.csv`` and its radiation variants).

One row per frame, keyed by ``FrameNum``; the delimiter is sniffed (``,``,
``;``, tab or ``|``), the encoding is UTF-8 (with or without BOM), UTF-16 with
a BOM, else Latin-1; ``;``-delimited files may use decimal commas.  Values are
mapped to header keywords and units by :mod:`utils.headers` (exposure columns
are microseconds in the log and seconds in the header).  A malformed row, a
non-numeric or non-finite value, a duplicated frame or a missing ``FrameNum``
column never stops a conversion: it is reported in ``problems`` (file, line
and the file's own column name) and the affected frame falls back to its file
and folder names, with a note in ``fits_index.csv``.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import os
import re
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


#: Names of a frame-number column, lower case without separators.
FRAME_COLUMN_NAMES = ("framenum", "framenumber", "frameno", "framenr", "frame", "frameid",
                      "frameindex", "nframe", "imagenum", "imagenumber")

_DELIMITERS = (",", ";", "\t", "|")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+(?:[eE][+-]?\d+)?", re.ASCII)
_NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity",
               "-infinity"}


def decode_text(raw: bytes) -> tuple[str, str]:
    """Decode a text file: UTF-8 (BOM or not), UTF-16 with a BOM, else Latin-1.

    Latin-1 maps every byte to a character, so decoding never fails; NUL
    characters are dropped.

    Returns
    -------
    (text, encoding)
    """
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16").replace("\x00", ""), "utf-16"
        except UnicodeDecodeError:
            pass
    try:
        return raw.decode("utf-8-sig").replace("\x00", ""), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1").replace("\x00", ""), "latin-1"


def parse_number(text: str, *, decimal_comma: bool = False) -> float | None:
    """A decimal number (``-1.5``, ``2e-3``, ``nan``, ``inf``), else None.

    Stricter than ``float``: no ``1_000``, no non-ASCII digits, no hex.  With
    ``decimal_comma`` a single comma is the decimal mark (``20,5``), as in the
    ``;``-delimited files of European spreadsheets.

    Examples
    --------
    >>> parse_number("2e-3"), parse_number("1_0"), parse_number("20,5", decimal_comma=True)
    (0.002, None, 20.5)
    """
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    if decimal_comma and _DECIMAL_COMMA.fullmatch(text):
        return float(text.replace(",", "."))
    if text.lower() in _NON_FINITE:
        return float(text.lower().replace("infinity", "inf"))
    return None


def sniff_delimiter(sample: str) -> str:
    """The delimiter among ``, ; tab |`` that splits the sample's lines most consistently.

    The header line decides the candidates (a delimiter must split it); among
    those, the one giving every following line the header's number of fields
    wins, then the one giving the most fields.  Decimal commas in a ``;`` file
    therefore do not fool it.  Default comma.
    """
    lines = [line for line in sample.splitlines() if line.strip()][:50]
    if len(sample) >= 4096 and len(lines) > 1:
        lines = lines[:-1]  # the sample may cut the last line
    if not lines:
        return ","
    best, best_score = ",", (-1, -1, 0)
    for rank, delimiter in enumerate(_DELIMITERS):
        try:
            rows = list(csv.reader(lines, delimiter=delimiter))
        except csv.Error:
            continue
        width = len(rows[0]) if rows else 0
        if width < 2:
            continue
        consistent = sum(len(r) == width for r in rows[1:])
        score = (consistent, width, -rank)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def read_table_text(path: Path) -> tuple[str, str]:
    """Text of a table file and its delimiter (raises OSError when unreadable)."""
    text, _ = decode_text(path.read_bytes())
    return text, sniff_delimiter(text[:4096])


def table_rows(reader, width: int, problems: list):
    """``(line number, cells)`` of the non-blank rows of a ``csv.reader`` after its header.

    A row with another number of fields than ``width`` is skipped with a
    ``"line N: ..."`` problem; a row the csv module cannot parse (an unterminated
    quote) ends the table, said too.
    """
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            problems.append(f"line {reader.line_num}: unreadable row ({err}); rest of the file "
                            "ignored")
            return
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != width:
            problems.append(f"line {reader.line_num}: {len(row)} fields, header has {width}; "
                            "row ignored")
            continue
        yield reader.line_num, row


def _normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def read_frame_log(path: str | os.PathLike) -> FrameLog:
    """Read a per-frame log CSV.

    Parameters
    ----------
    path : path-like
        The CSV file.

    Returns
    -------
    FrameLog
        Rows keyed by frame number; problems listed, never raised.  Without a
        frame-number column the rows cannot be matched to frames: ``rows`` is
        empty and ``problems`` says so.
    """
    path = Path(path)
    log = FrameLog(path)
    try:
        text, delimiter = read_table_text(path)
    except OSError as err:
        log.problems.append(f"cannot read ({err.strerror or err})")
        return log
    if not text.strip():
        log.problems.append("empty file")
        return log
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader, [])
    except csv.Error as err:
        log.problems.append(f"line 1: not a readable header ({err})")
        return log
    names = [" ".join(h.split()) for h in header]  # a quoted name may hold a line break
    normalised = [_normalised(n) for n in names]
    key_index = next((normalised.index(k) for k in FRAME_COLUMN_NAMES if k in normalised), None)
    if key_index is None:
        shown = ", ".join(n for n in names if n)[:120] or "none"
        log.problems.append(f"line 1: no FrameNum column (columns: {shown}); the log cannot be "
                            "matched to frames, so temperatures and exposures come from file "
                            "and folder names")
        return log
    mapping = []
    for n in names:
        try:
            mapping.append(kw.log_column_keyword(n) if n else (None, 1.0))
        except ValueError:  # e.g. a '#' column: no character usable in a FITS keyword
            log.problems.append(f"line 1: column {n!r} cannot be a FITS keyword; ignored")
            mapping.append((None, 1.0))
    mapping[key_index] = (kw.FRAMENUM, 1.0)
    # two columns may claim the same keyword (e.g. Temperature and CCDTemp): first one wins,
    # the frame-number column before any other
    seen: set[str] = {kw.FRAMENUM}
    for i, (key, _) in enumerate(mapping):
        if i == key_index or key is None:
            continue
        if key in seen:
            try:
                mapping[i] = (kw.fits_keyword(names[i]), 1.0)
            except ValueError:
                mapping[i] = (None, 1.0)
            if mapping[i][0] in seen:
                mapping[i] = (None, 1.0)
        if mapping[i][0]:
            seen.add(mapping[i][0])
    log.columns = {n: m[0] for n, m in zip(names, mapping) if m[0]}
    decimal_comma = delimiter != ","
    first_line: dict[int, int] = {}
    for line_number, row in table_rows(reader, len(names), log.problems):
        number = parse_number(row[key_index], decimal_comma=decimal_comma)
        if number is None or not math.isfinite(number) or not float(number).is_integer():
            log.problems.append(f"line {line_number}: {names[key_index]}={row[key_index].strip()!r}"
                                " is not a frame number (an integer); row ignored")
            continue
        frame = int(number)
        values: dict[str, object] = {}
        bad: list[str] = []
        for name, (key, divisor), cell in zip(names, mapping, row):
            cell = cell.strip()
            if key is None or key == kw.FRAMENUM or cell == "":
                continue
            value = parse_number(cell, decimal_comma=decimal_comma)
            if key not in _NUMERIC and (value is None or not math.isfinite(value)):
                values[key] = cell  # text ('nan' included) of a column that need not be a number
                continue
            if value is None or not math.isfinite(value):
                what = "not a number" if value is None else "not a finite number"
                bad.append(f"line {line_number}: {name}={cell!r} is {what}; ignored")
                continue
            values[key] = value / divisor
        if frame in log.rows:
            if values != log.rows[frame]:
                message = (f"line {line_number}: frame {frame} appears again (first on line "
                           f"{first_line[frame]}) with other values; the first row is used")
                log.problems.append(message)
                log.bad_values.setdefault(frame, []).append(message)
            else:
                log.problems.append(f"line {line_number}: frame {frame} repeated (same values as "
                                    f"line {first_line[frame]}); ignored")
            continue
        log.problems.extend(bad)
        if bad:
            log.bad_values.setdefault(frame, []).extend(bad)
        first_line[frame] = line_number
        log.rows[frame] = values
    return log
