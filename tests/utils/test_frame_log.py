"""Per-frame acquisition logs (utils.io.frame_log)."""

from __future__ import annotations

import pytest

from utils import headers as kw
from utils.io.frame_log import LOG_NAMES, find_frame_log, read_frame_log, sniff_delimiter

HEADER = "FrameNum,TimeStamp,ExtTemperature,ExpTime,RealExpTime,ExpGain,Temperature"


def write(tmp_path, text, name="temperatureLog.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_semicolon_delimiter_alias_column_and_microseconds(tmp_path):
    path = write(tmp_path, "FrameNum;TimeStamp;ExpTime;RealExpTime;CCDTemp;PowerCons\n"
                           "0;1748764800.5;500000;500003.1;-9.75;4.2\n"
                           "1;1748764801.5;500000;500002.9;-10.25;4.3\n")
    log = read_frame_log(path)
    assert log.problems == []
    assert log.columns["CCDTemp"] == kw.TEMP
    assert log.columns["ExpTime"] == kw.EXPTIME
    assert sorted(log.rows) == [0, 1]
    row = log.rows[1]
    assert row[kw.TEMP] == -10.25
    assert row[kw.EXPTIME] == 0.5                         # microseconds -> seconds
    assert row[kw.REXPTIME] == 0.5000029
    assert row[kw.TIMESTAMP] == 1748764801.5
    assert row[kw.POWCONS] == 4.3


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiter_is_sniffed(delimiter):
    sample = delimiter.join(["FrameNum", "Temperature", "ExpTime"]) + "\n" + \
        delimiter.join(["0", "20.5", "12"]) + "\n"
    assert sniff_delimiter(sample) == delimiter


def test_first_sensor_temperature_column_wins(tmp_path):
    log = read_frame_log(write(tmp_path, "FrameNum,Temperature,CCDTemp\n0,20.0,21.5\n"))
    assert log.rows[0][kw.TEMP] == 20.0
    assert log.rows[0]["CCDTEMP"] == 21.5          # the second keeps its own name
    assert log.columns["Temperature"] == kw.TEMP


def test_enclosure_temperature_is_not_sensor_temperature(tmp_path):
    log = read_frame_log(write(tmp_path, "FrameNum,ExtTemperature\n0,22.5\n"))
    assert kw.TEMP not in log.rows[0]
    assert log.rows[0][kw.EQTEMP] == 22.5


def test_malformed_row_recorded_not_raised(tmp_path):
    path = write(tmp_path, HEADER + "\n0,1,22,12,15,100,-10\n1,2,22\n2,3,22,12,15,100,-11\n")
    log = read_frame_log(path)
    assert sorted(log.rows) == [0, 2]
    assert len(log.problems) == 1
    assert log.problems[0].startswith("line 3:")
    assert "fields" in log.problems[0]


def test_non_numeric_temperature_recorded_as_bad_value(tmp_path):
    path = write(tmp_path, HEADER + "\n0,1,22,12,15,100,n/a\n1,2,22,12,15,100,-10\n")
    log = read_frame_log(path)
    assert kw.TEMP not in log.rows[0]
    assert log.rows[0][kw.EXPTIME] == pytest.approx(12e-6)   # the rest of the row is kept
    assert log.rows[1][kw.TEMP] == -10.0
    assert len(log.problems) == 1 and "line 2" in log.problems[0] and "n/a" in log.problems[0]
    assert log.bad_values == {0: log.problems}


def test_text_values_of_unknown_columns_are_kept(tmp_path):
    log = read_frame_log(write(tmp_path, "FrameNum,Operator,Temperature\n0,alice,20\n"))
    assert log.rows[0]["OPERATOR"] == "alice"
    assert log.problems == []


def test_bad_frame_numbers_and_duplicates(tmp_path):
    path = write(tmp_path, "FrameNum,Temperature\n0,20\nx,21\n1.5,22\n0,23\n\n2,24\n")
    log = read_frame_log(path)
    assert sorted(log.rows) == [0, 2]
    assert log.rows[0][kw.TEMP] == 20.0               # first occurrence kept
    joined = "\n".join(log.problems)
    assert "line 3" in joined and "line 4" in joined and "line 5" in joined
    assert "frame 0 appears again (first on line 2)" in joined
    assert len(log.problems) == 3
    assert log.bad_values[0] == [log.problems[-1]]    # and the frame's NOTES say so


def test_unusable_column_name_is_a_problem_not_a_crash(tmp_path):
    log = read_frame_log(write(tmp_path, "FrameNum,#,Temperature\n0,1,20.5\n"))
    assert log.rows[0][kw.TEMP] == 20.5
    assert any("'#'" in p for p in log.problems)


def test_non_finite_numbers_are_bad_values_named_by_their_column(tmp_path):
    log = read_frame_log(write(tmp_path, "FrameNum,PowerCons,CCDTemp\n0,inf,20\n1,3,nan\n"))
    assert kw.POWCONS not in log.rows[0] and log.rows[0][kw.TEMP] == 20.0
    assert kw.TEMP not in log.rows[1] and log.rows[1][kw.POWCONS] == 3.0
    assert log.bad_values[0] == ["line 2: PowerCons='inf' is not a finite number; ignored"]
    assert log.bad_values[1] == ["line 3: CCDTemp='nan' is not a finite number; ignored"]


def test_empty_log(tmp_path):
    log = read_frame_log(write(tmp_path, "\n  \n"))
    assert log.rows == {}
    assert log.problems == ["empty file"]


def test_bom_is_ignored(tmp_path):
    path = tmp_path / "temperatureLog.csv"
    path.write_bytes("\ufeffFrameNum,Temperature\n0,20\n".encode("utf-8"))
    log = read_frame_log(path)
    assert log.columns["FrameNum"] == kw.FRAMENUM
    assert log.rows[0][kw.TEMP] == 20.0


def test_find_frame_log_preference(tmp_path):
    assert find_frame_log(tmp_path) is None
    for name in reversed(LOG_NAMES):
        write(tmp_path, "FrameNum\n0\n", name)
        assert find_frame_log(tmp_path).name == name
    assert find_frame_log(tmp_path).name == "temperatureLog.csv"


@pytest.mark.parametrize("micro, seconds", [(50000, 0.05), (150000, 0.15), (12, 1.2e-05),
                                            (700000, 0.7), (1300000, 1.3), (50003, 0.050003)])
def test_microseconds_become_the_decimal_seconds(tmp_path, micro, seconds):
    """ExpTime in microseconds becomes exactly the decimal number of seconds: multiplied by
    1e-6, 50000 gave 0.049999999999999996 and 150000 0.15000000000000002 in every header,
    index and table of those sets."""
    log = read_frame_log(write(tmp_path, f"FrameNum,ExpTime,RealExpTime\n0,{micro},{micro}\n"))
    assert log.rows[0][kw.EXPTIME] == seconds
    assert log.rows[0][kw.REXPTIME] == seconds
    assert repr(log.rows[0][kw.EXPTIME]) == repr(seconds)
