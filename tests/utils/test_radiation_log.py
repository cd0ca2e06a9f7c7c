"""Radiation and power logs: column matching, encodings, coverage, bad files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from utils.errors import TableError
from utils.io.radiation_log import find_radiation_log, read_power_log, read_radiation_log


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_campaign_log_columns_and_interpolation(tmp_path):
    p = write(tmp_path / "radiationLogCompleto.csv",
              "FrameNum,TimeStamp,Dose,RadiationLevel,Temperature\n"
              "0,1000.0,0.0,0.001,20.1\n1,1010.0,1.0,0.1,20.2\n0,1020.0,2.0,0.1,20.0\n")
    log = read_radiation_log(p)
    assert (log.time_column, log.dose_column, log.level_column) == \
        ("TimeStamp", "Dose", "RadiationLevel")
    assert log.table["FRAMENUM"].tolist() == [0, 1, 0]        # restarts: kept as logged
    np.testing.assert_allclose(log.dose_at([1005.0, 1020.0]), [0.5, 2.0])
    assert math.isnan(log.dose_at([999.0])[0]) and log.dose_at([999.0], tolerance=2)[0] == 0.0
    assert log.span() == (1000.0, 1020.0) and log.time_sorted and not log.dose_is_constant


@pytest.mark.parametrize("bom,encoding", [("\ufeff", "utf-8"), ("", "latin-1")])
def test_semicolon_bom_latin1_crlf_and_decimal_comma(tmp_path, bom, encoding):
    p = write(tmp_path / "radiationLog.csv",
              bom + "timestamp;DOSE;Temperatura ºC\r\n10;1,5;20\r\n20;2,5;21\r\n", encoding)
    log = read_radiation_log(p)
    np.testing.assert_allclose(log.table["DOSE"], [1.5, 2.5])
    assert log.time_column == "timestamp"


def test_bad_cells_become_nan_with_a_problem_line(tmp_path):
    p = write(tmp_path / "r.csv", "Time,Dose\n1,0.5\n2,abc\n3,inf\n4\n5,2.0\n")
    log = read_radiation_log(p)
    assert np.isnan(log.table["DOSE"]).tolist() == [False, True, True, False]
    assert len(log.problems) == 3 and any("abc" in m for m in log.problems)


def test_constant_dose_and_unsorted_time_are_reported_not_raised(tmp_path):
    p = write(tmp_path / "radiationLogDef.csv", "FrameNum,TimeStamp,Dose\n0,5,10\n1,3,10\n")
    log = read_radiation_log(p)
    assert log.dose_is_constant and not log.time_sorted


@pytest.mark.parametrize("text,need,fragment", [
    ("", "dose", "empty"),
    ("FrameNum,Temperature\n0,20\n", "dose", "no Dose or RadiationLevel"),
    ("Dose\n1\n", "time", "no time column"),
])
def test_unusable_logs_are_one_line_table_errors(tmp_path, text, need, fragment):
    p = write(tmp_path / "radiationLog.csv", text)
    with pytest.raises(TableError, match=fragment) as info:
        read_radiation_log(p, need=need)
    assert "\n" not in str(info.value) and str(p) in str(info.value)
    with pytest.raises(TableError, match="cannot read"):
        read_radiation_log(tmp_path / "missing.csv")


def test_power_log_substring_columns(tmp_path):
    p = write(tmp_path / "powerLog.csv",
              "TimeStampPwr,Amperage (A),Voltage\n0,0.5,5.0\n1,0.6,5.1\n")
    table = read_power_log(p)
    assert table.columns.tolist() == ["TIME", "CURRENT", "VOLTAGE"]
    np.testing.assert_allclose(table["CURRENT"], [0.5, 0.6])
    with pytest.raises(TableError, match="no time column"):
        read_power_log(write(tmp_path / "p2.csv", "Amperage\n1\n"))


def test_find_prefers_the_campaign_log(tmp_path):
    assert find_radiation_log(tmp_path) is None
    write(tmp_path / "radiationLogDef.csv", "Dose\n1\n")
    write(tmp_path / "radiationLogCompleto.csv", "Dose\n1\n")
    assert find_radiation_log(tmp_path).name == "radiationLogCompleto.csv"
