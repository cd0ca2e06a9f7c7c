"""Property-based tests of every input parser (hypothesis).

Each parser gets two kinds of properties:

* **round trip**: a table or file name built from known values, written the
  ways users' files come (``,``/``;``/tab/``|`` delimiters, UTF-8 with or without
  BOM, UTF-16, Latin-1, CRLF, quoting, decimal commas, shuffled and extra
  columns, empty/NaN/inf/garbage cells, duplicated rows), must parse back to
  exactly those values, and every value that cannot be used must be *said*
  (a problem line naming the file's own column, or a flagged row), never
  silently replaced;
* **robustness**: arbitrary bytes or text give a result or a one-line
  :class:`~utils.errors.UserError`, never another exception.

The ``ci`` profile (default) is derandomized, 200 examples per test and no
example database, so CI runs are reproducible; ``HYPOTHESIS_PROFILE=dev``
explores new examples on every run, ``HYPOTHESIS_PROFILE=deep`` 3000 of them.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from utils import headers as kw
from utils.errors import TableError, UserError
from utils.io.frame_log import parse_number, read_frame_log
from utils.io.index import DatasetIndex
from utils.io.radiation_log import read_power_log, read_radiation_log
from utils.io.raw import DEFAULT_HEIGHT, parse_config_text, read_camera_config
from utils.io.tokens import (
    file_exposure,
    file_frame_number,
    file_temperature,
    folder_dose,
    folder_exposure,
    folder_temperature,
    path_values,
)

settings.register_profile("ci", max_examples=200, derandomize=True, database=None,
                          deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: One private folder for the files the examples write (rewritten by every example).
_WORK = Path(tempfile.mkdtemp(prefix="hypothesis_parsers_"))


# --- rendering a table the ways users' files come -----------------------------------------------

DELIMITERS = [",", ";", "\t", "|"]
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "latin-1"]
#: Text a real log or index holds: ASCII and the accented letters of Spanish, German, French.
#: (All accented letters are >= U+00C0, never a UTF-8 continuation byte in Latin-1: a
#: Latin-1 file of such text is never valid UTF-8, so decoding it is unambiguous.)
ACCENTED = "áéíóúñüäößçàèÁÉÍÓÚÑÜÄÖ"
TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from(
    ACCENTED), max_size=12)
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz" + ACCENTED, min_size=1, max_size=8)
FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64,
                   min_value=-1e12, max_value=1e12)


def render(header: list[str], rows: list[list[str]], *, delimiter: str, encoding: str,
           crlf: bool) -> bytes:
    """A delimited table as a user's file: csv quoting where needed, line ends, encoding."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode(encoding)


def write(name: str, data: bytes) -> Path:
    path = _WORK / name
    path.write_bytes(data)
    return path


def number_text(value: float, decimal_comma: bool) -> str:
    text = repr(float(value))
    return text.replace(".", ",") if decimal_comma else text


#: A cell: a finite number, an empty cell, NaN/inf spelled out, or text that is no number.
CELL = st.one_of(FINITE.map(lambda v: ("number", v)), st.just(("empty", "")),
                 st.sampled_from(["nan", "NaN", "inf", "-Infinity"]).map(
                     lambda t: ("nonfinite", t)),
                 st.sampled_from(["warm", "ERR", "n/a", "1_000", "0x10", "١٢", "--", "12 C"]
                                 ).map(lambda t: ("text", t)))


def cell_text(cell, decimal_comma: bool) -> str:
    kind, value = cell
    return number_text(value, decimal_comma) if kind == "number" else value


def one_line(messages) -> bool:
    return all(isinstance(m, str) and "\n" not in m and "\r" not in m for m in messages)


@st.composite
def file_format(draw):
    delimiter = draw(st.sampled_from(DELIMITERS))
    return {"delimiter": delimiter, "encoding": draw(st.sampled_from(ENCODINGS)),
            "crlf": draw(st.booleans()),
            # ';'-delimited files of European spreadsheets write decimal commas
            "decimal_comma": delimiter != "," and draw(st.booleans())}


def encodable(data: list[str], encoding: str) -> bool:
    try:
        "".join(data).encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


# --- config files (utils.io.raw) ----------------------------------------------------------------

CONFIG_KEY = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_ 0123456789",
                     min_size=1, max_size=12).map(str.strip).filter(
    lambda k: k and k[0].isalpha())
CONFIG_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)
                       | st.sampled_from(ACCENTED), max_size=20).map(str.strip)


@given(entries=st.dictionaries(CONFIG_KEY, CONFIG_VALUE, max_size=8),
       width=st.one_of(st.integers(1, 5000).map(str), st.sampled_from(
           ["64.7", "forty", "-3", "0", "inf", "nan", "1e3", "", "1_0"])),
       separator=st.sampled_from(["=", ":", " = ", ": ", "  :  "]),
       encoding=st.sampled_from(ENCODINGS), crlf=st.booleans(), comments=st.booleans())
def test_config_round_trip_and_geometry_never_silently_wrong(entries, width, separator, encoding,
                                                           crlf, comments):
    entries = {k: v for k, v in entries.items()
               if k.lower().replace("_", "").replace(" ", "") not in
               ("width", "imagewidth", "sizex", "byteorder", "endianness", "endian")}
    entries["WIDTH"] = width
    lines = ["# camera settings", ""] if comments else []
    lines += [f"{key}{separator}{value}" for key, value in entries.items()]
    assume(encodable(lines, encoding))
    folder = _WORK / "config"
    folder.mkdir(exist_ok=True)
    (folder / "configFile.txt").write_bytes(("\r\n" if crlf else "\n").join(lines).encode(
        encoding))
    config = read_camera_config(folder)
    assert config.entries == entries                      # every entry, exactly as written
    assert one_line(config.problems)
    number = parse_number(width)
    if number is not None and math.isfinite(number) and number.is_integer() \
            and 0 < number <= 1 << 20:
        assert config.width == int(number)
        assert not any(p.startswith("WIDTH=") for p in config.problems)
    else:                                                 # default used, and said by key
        assert config.width == 2048
        assert any(p.startswith(f"WIDTH={width!r}") for p in config.problems)
    assert config.height == DEFAULT_HEIGHT or "HEIGHT" in "".join(config.entries)


@given(data=st.binary(max_size=400))
def test_config_arbitrary_bytes_never_raise(data):
    folder = _WORK / "config_bytes"
    folder.mkdir(exist_ok=True)
    (folder / "configFile.txt").write_bytes(data)
    config = read_camera_config(folder)
    assert config.width > 0 and config.height > 0 and 1 <= config.bit_depth <= 16
    assert config.byteorder in "<>" and one_line(config.problems)


@given(text=st.text(max_size=300))
def test_config_text_arbitrary_text_never_raises(text):
    entries, problems = parse_config_text(text)
    assert all(isinstance(k, str) and k == k.strip() and k for k in entries)
    assert one_line(problems)


# --- per-frame logs (utils.io.frame_log) --------------------------------------------------------

LOG_HEADERS = {"frame": "FrameNum", "time": "TimeStamp", "temp": "Temperature",
               "exp": "ExpTime", "extra": "Operator"}


@given(frames=st.lists(st.integers(0, 10_000), min_size=1, max_size=12, unique=True),
       cells=st.lists(st.tuples(CELL, CELL, FINITE, WORDS), min_size=12, max_size=12),
       fmt=file_format(), order=st.permutations(list(LOG_HEADERS)),
       temp_name=st.sampled_from(["Temperature", "CCDTemp", "ChipTemp", "temperature"]),
       duplicate=st.booleans(), drop_frame_column=st.booleans())
def test_frame_log_round_trip(frames, cells, fmt, order, temp_name, duplicate, drop_frame_column):
    names = dict(LOG_HEADERS, temp=temp_name)
    columns = [c for c in order if not (drop_frame_column and c == "frame")]
    header = [names[c] for c in columns]
    rows, expected = [], {}
    for frame, (temp, exp, stamp, word) in zip(frames, cells):
        values = {"frame": str(frame), "time": number_text(stamp, fmt["decimal_comma"]),
                  "temp": cell_text(temp, fmt["decimal_comma"]),
                  "exp": cell_text(exp, fmt["decimal_comma"]), "extra": word}
        rows.append([values[c] for c in columns])
        expected[frame] = (temp, exp, stamp, word)
    if duplicate:
        rows.append(list(rows[0]))                        # the same row twice
    assume(encodable([fmt["delimiter"].join(r) for r in [header] + rows], fmt["encoding"]))
    log = read_frame_log(write("temperatureLog.csv", render(
        header, rows, delimiter=fmt["delimiter"], encoding=fmt["encoding"], crlf=fmt["crlf"])))
    assert one_line(log.problems)
    if drop_frame_column:                                 # cannot be matched: said, not guessed
        assert log.rows == {} and any("no FrameNum column" in p for p in log.problems)
        return
    assert sorted(log.rows) == sorted(frames)
    for frame, (temp, exp, stamp, word) in expected.items():
        row, said = log.rows[frame], " ".join(log.bad_values.get(frame, []))
        assert row[kw.TIMESTAMP] == stamp
        assert row["OPERATOR"] == word
        for cell, key, name, divisor in ((temp, kw.TEMP, temp_name, 1.0),
                                         (exp, kw.EXPTIME, "ExpTime", 1e6)):  # us -> s
            kind, value = cell
            if kind == "number":
                assert row[key] == value / divisor        # exactly the logged value
            else:
                assert key not in row                     # never a made-up value
                if kind != "empty":                       # and said, by the file's column name
                    assert f"{name}={value!r}" in said
    if duplicate:
        assert any(f"frame {frames[0]} repeated" in p for p in log.problems)


@given(data=st.binary(max_size=600))
def test_frame_log_arbitrary_bytes_never_raise(data):
    log = read_frame_log(write("temperatureLog.csv", data))
    assert one_line(log.problems)
    for frame, values in log.rows.items():
        assert isinstance(frame, int)
        assert all(isinstance(v, (float, str)) for v in values.values())
        assert all(math.isfinite(v) for v in values.values() if isinstance(v, float))


@given(lines=st.lists(st.lists(st.text(alphabet="0123456789.,;|\t -eEnaifxFrameNumTp\"",
                                        max_size=8), max_size=6), max_size=8))
def test_frame_log_arbitrary_tables_never_raise(lines):
    text = "\n".join(",".join(cells) for cells in lines)
    log = read_frame_log(write("temperatureLog.csv", text.encode()))
    assert one_line(log.problems)


# --- radiation and power logs (utils.io.radiation_log) ------------------------------------------

@given(times=st.lists(FINITE, min_size=1, max_size=10, unique=True),
       doses=st.lists(CELL, min_size=10, max_size=10),
       levels=st.lists(CELL, min_size=10, max_size=10), fmt=file_format(),
       names=st.tuples(st.sampled_from(["TimeStamp", "Timestamp", "time", "TIME"]),
                       st.sampled_from(["Dose", "dose", "DOSE"]),
                       st.sampled_from(["RadiationLevel", "radiation_level", "Level"])),
       order=st.permutations([0, 1, 2, 3]), duplicate=st.booleans())
def test_radiation_log_round_trip(times, doses, levels, fmt, names, order, duplicate):
    header_all = [names[0], names[1], names[2], "FrameNum"]
    header = [header_all[i] for i in order]
    rows, dc = [], fmt["decimal_comma"]
    for k, t in enumerate(times):
        cells = [number_text(t, dc), cell_text(doses[k], dc), cell_text(levels[k], dc), str(k)]
        rows.append([cells[i] for i in order])
    if duplicate:
        rows.append(list(rows[-1]))
    assume(encodable([fmt["delimiter"].join(r) for r in [header] + rows], fmt["encoding"]))
    log = read_radiation_log(write("radiationLog.csv", render(
        header, rows, delimiter=fmt["delimiter"], encoding=fmt["encoding"], crlf=fmt["crlf"])),
        need="any")
    assert (log.time_column, log.dose_column, log.level_column, log.frame_column) == \
        (names[0], names[1], names[2], "FrameNum")
    n = len(times)
    table = log.table.iloc[:n]
    assert table["TIME"].tolist() == times
    assert table["FRAMENUM"].tolist() == list(range(n))
    problems = " ".join(log.problems)
    assert one_line(log.problems)
    for column, name, cells in (("DOSE", names[1], doses), ("LEVEL", names[2], levels)):
        for k, (kind, value) in enumerate(cells[:n]):
            got = table[column].iloc[k]
            if kind == "number":
                assert got == value
            else:
                assert math.isnan(got)                    # missing, never a made-up number
                if kind != "empty":
                    assert f"{name}={value!r}" in problems
    assert len(log.table) == n + duplicate                # rows are never dropped


@given(data=st.binary(max_size=600), need=st.sampled_from(["dose", "time", "any"]))
def test_radiation_log_arbitrary_bytes_never_raise(data, need):
    path = write("radiationLogCompleto.csv", data)
    try:
        log = read_radiation_log(path, need=need)
    except TableError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        return
    assert one_line(log.problems)
    assert set(log.table.columns) == {"TIME", "DOSE", "LEVEL", "FRAMENUM", "TEMP"}
    values = log.table.to_numpy(dtype=float)
    assert not np.isinf(values).any()                     # non-finite cells become NaN, said


@given(data=st.binary(max_size=400))
def test_power_log_arbitrary_bytes_never_raise(data):
    path = write("powerLog.csv", data)
    try:
        table = read_power_log(path)
    except TableError as err:
        assert "\n" not in str(err)
        return
    assert list(table.columns) == ["TIME", "CURRENT", "VOLTAGE"]
    assert one_line(table.attrs["problems"])


# --- file-name and folder tokens (utils.io.tokens) ----------------------------------------------

DECIMAL = st.decimals(min_value=-200, max_value=200, places=3, allow_nan=False,
                      allow_infinity=False)


@given(temp=DECIMAL, exposure=st.floats(min_value=1e-7, max_value=1e4), attempt=st.integers(0, 99),
       frame=st.integers(0, 10**9 - 1), kind=st.sampled_from(["Bias", "Dark", "Flat", "Img"]),
       suffix=st.sampled_from([".raw", ".fits", ".bin"]))
def test_file_name_tokens_round_trip(temp, exposure, attempt, frame, kind, suffix):
    name = f"{kind}T{temp}_exp{exposure!r}sAt{attempt}f{frame}{suffix}"
    assert file_temperature(name) == float(temp)
    assert file_exposure(name) == exposure
    assert file_frame_number(name) == frame


@given(temp=DECIMAL, exposure=st.floats(min_value=0, max_value=1e4),
       dose=st.floats(min_value=0, max_value=1e4), unit=st.sampled_from(["kRads", "kR", "krad"]))
def test_folder_tokens_round_trip(temp, exposure, dose, unit):
    assert folder_temperature(f"T{temp}") == float(temp)
    assert folder_exposure(f"{exposure!r}s") == exposure
    assert folder_dose(f"{dose!r}{unit}") == dose
    values = path_values(f"/d/S/{dose!r}{unit}/T{temp}/{exposure!r}s/attempt0/f0.raw", "/d/S")
    assert (values.temperature, values.exposure, values.dose) == (float(temp), exposure, dose)


@given(name=st.text(max_size=60))
def test_tokens_arbitrary_text_never_raise_never_non_finite(name):
    for parse in (file_temperature, file_exposure, folder_temperature, folder_exposure,
                  folder_dose):
        value = parse(name)
        assert isinstance(value, float) and not math.isinf(value)
    for parse in (folder_exposure, folder_dose):
        assert not parse(name) < 0                        # no negative exposure or dose
    number = file_frame_number(name)
    assert number is None or (isinstance(number, int) and 0 <= number < 10**9)


@given(name=st.text(alphabet=st.characters(categories=["Lu", "Ll", "Nd", "No"]), max_size=20))
def test_tokens_need_ascii_digits(name):
    """Non-ASCII digits (Arabic-Indic, full-width) are not numbers in a name."""
    assume(not any("0" <= c <= "9" for c in name))
    assert math.isnan(file_temperature("T" + name)) or name == ""
    assert file_frame_number("f" + name) is None


@given(parts=st.lists(st.text(min_size=1, max_size=10).filter(
    lambda p: "/" not in p and "\x00" not in p and p not in (".", "..")), max_size=5))
def test_path_values_arbitrary_folders_never_raise(parts):
    values = path_values("/root/" + "/".join(parts + ["f0.raw"]), "/root")
    for v in (values.temperature, values.exposure, values.dose):
        assert isinstance(v, float) and not math.isinf(v)


# --- index CSVs (utils.io.index.DatasetIndex.from_csv) ------------------------------------------

TRUTH = st.sampled_from([("True", True), ("False", False), ("1", True), ("0", False),
                         ("", False), ("yes", True), ("maybe", None), ("TRUE", True)])
PATH_PART = st.text(alphabet="abcxyz019_- " + ACCENTED, min_size=1, max_size=8).map(str.strip
                                                                                   ).filter(bool)


@given(paths=st.lists(st.lists(PATH_PART, min_size=1, max_size=3), min_size=1, max_size=8,
                      unique_by=lambda p: "/".join(p)),
       temps=st.lists(CELL, min_size=8, max_size=8),
       exps=st.lists(st.one_of(FINITE.map(lambda v: ("number", abs(v))), CELL), min_size=8,
                     max_size=8),
       flags=st.lists(TRUTH, min_size=8, max_size=8),
       caltypes=st.lists(st.sampled_from(["BIAS", "dark", "Flat", "SCIENCE", ""]), min_size=8,
                         max_size=8),
       fmt=file_format(), duplicate=st.booleans(), extra=st.booleans())
def test_index_csv_round_trip_rows_never_dropped_bad_cells_flagged(
        paths, temps, exps, flags, caltypes, fmt, duplicate, extra):
    fmt["decimal_comma"] = False                          # the index is written by pandas
    header = ["PATH", "CALTYPE", "TEMP", "EXPTIME", "BADFITS"] + (["OPERATOR"] if extra else [])
    rows = []
    for k, parts in enumerate(paths):
        row = ["/".join(parts) + ".fits", caltypes[k], cell_text(temps[k], False),
               cell_text(exps[k], False), flags[k][0]]
        rows.append(row + (["x"] if extra else []))
    if duplicate:
        rows.append(list(rows[0]))
    assume(encodable([fmt["delimiter"].join(r) for r in [header] + rows], fmt["encoding"]))
    folder = _WORK / "index"
    folder.mkdir(exist_ok=True)
    path = folder / "index.csv"
    path.write_bytes(render(header, rows, delimiter=fmt["delimiter"], encoding=fmt["encoding"],
                            crlf=fmt["crlf"]))
    table = DatasetIndex.from_csv(path).table
    assert len(table) == len(rows)                        # never silently dropped
    for k, parts in enumerate(paths):
        got = table.iloc[k]
        assert got["PATH"] == os.path.abspath(folder / ("/".join(parts) + ".fits"))
        assert got["CALTYPE"] == caltypes[k].upper()
        reason = got["REASON"]
        bad = []
        for column, (kind, value) in (("TEMP", temps[k]), ("EXPTIME", exps[k])):
            if kind == "number" and not (column == "EXPTIME" and value < 0):
                assert got[column] == value
            else:
                assert math.isnan(got[column])
                # 'nan', 'n/a' and empty mean "missing" in an index (pandas writes NaN so)
                if kind == "number" or kind in ("text", "nonfinite") and value.lower() not in (
                        "nan", "n/a"):
                    bad.append(column)
        if flags[k][1] is None:
            bad.append("BADFITS")
        for column in bad:                                # flagged, with the reason
            assert bool(got["BADFITS"]) and f"{column}=" in reason
        if not bad:
            assert bool(got["BADFITS"]) == flags[k][1]
    if duplicate:
        last = table.iloc[-1]
        assert bool(last["BADFITS"]) and "repeats the file of line 2" in last["REASON"]


@given(data=st.binary(max_size=600))
def test_index_csv_arbitrary_bytes_never_raise(data):
    folder = _WORK / "index_bytes"
    folder.mkdir(exist_ok=True)
    path = folder / "index.csv"
    path.write_bytes(data)
    try:
        index = DatasetIndex.from_csv(path)
    except UserError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        return
    table = index.table
    assert table["BADFITS"].dtype == bool
    for column in ("TEMP", "EXPTIME", "DOSE"):
        assert not np.isinf(table[column].to_numpy(dtype=float)).any()


@given(text=st.text(alphabet=st.sampled_from(list("PATH,CALTYPE;TEMP\t|\"'\n\r 0123456789.eE-"
                                                  "BIASfitsnan")), max_size=300),
       bom=st.booleans())
def test_index_csv_arbitrary_text_never_raises(text, bom):
    folder = _WORK / "index_text"
    folder.mkdir(exist_ok=True)
    path = folder / "index.csv"
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + text.encode())
    try:
        DatasetIndex.from_csv(path)
    except UserError as err:
        assert "\n" not in str(err)


@pytest.mark.parametrize("text, value", [("1_000", None), ("١٢", None), ("0x10", None),
                                         ("20,5", None), ("-1.5e3", -1500.0), (" 7 ", 7.0)])
def test_parse_number_is_strict(text, value):
    assert parse_number(text) == value
