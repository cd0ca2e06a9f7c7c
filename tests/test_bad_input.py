"""Bad input: one-line errors (exit 2, no traceback) or flagged rows, never a crash.

Every case runs the real entry point ``main(argv)`` of the command a user would
type, on a private copy of a simulated campaign with one thing broken.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from astropy.io import fits
from conftest import assert_one_line_error

from analysis import process_index
from utils import index_dataset, raw_to_fits
from utils.io.discovery import find_fits


def sections_of(root) -> list[str]:
    return [str(Path(root) / name) for name in ("TestSection1", "TestSection2", "TestSection3")]


def read_table(path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""],
                       dtype={"NOTES": str, "REASON": str, "PATH": str})


def warnings_about(caplog, text) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and text in r.getMessage()]


def row_of(table, raw: Path, root: Path) -> pd.Series:
    rows = table[table["RAWPATH"] == raw.relative_to(root).as_posix()]
    assert len(rows) == 1
    return rows.iloc[0]


# --- converter ----------------------------------------------------------------------------------

def test_missing_section_path(standard_copy, caplog, capsys, checksums):
    root = standard_copy.root
    before = checksums(root)
    missing = root / "TestSection9"
    args = sections_of(root)
    args[1] = str(missing)
    assert raw_to_fits.main([*args, "--no-progress"]) == 2
    message = assert_one_line_error(caplog, capsys, missing)
    assert "does not exist" in message
    assert checksums(root) == before                       # nothing written before the check


def test_section_without_attempts(standard_copy, caplog, capsys):
    empty = standard_copy.root / "EmptySection"
    (empty / "sub").mkdir(parents=True)
    args = sections_of(standard_copy.root)
    args[0] = str(empty)
    assert raw_to_fits.main([*args, "--no-progress"]) == 2
    message = assert_one_line_error(caplog, capsys, empty)
    assert "no attempts found" in message
    assert not find_fits(standard_copy.root)


def test_attempts_deeper_than_search_depth_hint(standard_copy, caplog, capsys):
    root = standard_copy.root
    assert raw_to_fits.main([*sections_of(root), "--no-progress", "--search-depth", "2"]) == 2
    message = assert_one_line_error(caplog, capsys, root / "TestSection2", "--search-depth")
    # the suggested depth reaches every dark attempt (the deepest is 5 levels down)
    assert message.endswith("--search-depth 5")
    caplog.clear()
    assert raw_to_fits.main([*sections_of(root), "--no-progress", "--search-depth", "5"]) == 0
    table = read_table(root / "fits_index.csv")
    assert (table["CALTYPE"] == "DARK").sum() == len(standard_copy.select(kind="dark"))


def test_missing_config_uses_defaults_and_rejects_frames(standard_copy, caplog, capsys):
    root = standard_copy.root
    attempt = root / "TestSection1" / "T12.5" / "attempt0"
    (config,) = [p for p in attempt.iterdir() if p.name in ("configFile.txt", "config.txt")]
    config.unlink()
    with caplog.at_level(logging.INFO):
        assert raw_to_fits.main([*sections_of(root), "--no-progress"]) == 0
    said = warnings_about(caplog, "assuming 2048x2048")
    assert len(said) == 1 and str(attempt) in said[0]
    assert "\n" not in said[0]
    assert "Traceback" not in capsys.readouterr().err
    table = read_table(root / "fits_index.csv")
    raws = sorted((attempt / "frames").glob("*.raw"))
    assert len(raws) == 4
    for raw in raws:
        row = row_of(table, raw, root)
        assert row["STATUS"] == "rejected"
        assert f"expected {2048 * 2048 * 2}" in row["REASON"]
        assert pd.isna(row["PATH"])
    assert not (attempt / "fits").exists() or not list((attempt / "fits").iterdir())
    # the rest of the campaign is converted as usual
    assert (table["STATUS"] == "converted").sum() == len(standard_copy.records) - 4 - 1


def test_malformed_log_row(standard_copy, caplog, capsys):
    root = standard_copy.root
    attempt = root / "TestSection1" / "T-10" / "attempt0"
    log = attempt / "temperatureLog.csv"
    lines = log.read_text().splitlines()
    assert lines[3].startswith("2,")
    lines[3] = "2,1748764802.0,22.0"                      # line 4: frame 2 cut short
    log.write_text("\n".join(lines) + "\n")
    assert raw_to_fits.main([*sections_of(root), "--no-progress"]) == 0
    said = warnings_about(caplog, "line 4")
    assert len(said) == 1 and str(log) in said[0] and "\n" not in said[0]
    assert "Traceback" not in capsys.readouterr().err

    (raw,) = (attempt / "frames").glob("*f2.raw")
    row = row_of(read_table(root / "fits_index.csv"), raw, root)
    assert row["STATUS"] == "converted"
    assert "frame 2 has no row in temperatureLog.csv" in row["NOTES"]
    header = fits.getheader(root / row["PATH"])
    assert header["TEMP"] == -10.0 and header["TEMPSRC"] == "filename"
    assert header["EXPTIME"] == pytest.approx(1.2e-05) and header["EXPSRC"] == "filename"
    # neighbours still use the log
    (other,) = (attempt / "frames").glob("*f1.raw")
    assert fits.getheader(root / row_of(read_table(root / "fits_index.csv"), other, root)["PATH"]
                          )["TEMPSRC"] == "log"


def test_non_numeric_temperature_in_log(standard_copy, caplog, capsys):
    root = standard_copy.root
    attempt = root / "TestSection1" / "T0" / "attempt0"
    log = attempt / "temperatureLog.csv"
    lines = log.read_text().splitlines()
    header = lines[0].split(",")
    column = header.index("Temperature")
    cells = lines[2].split(",")                            # line 3: frame 1
    assert cells[0] == "1"
    cells[column] = "ERR"
    lines[2] = ",".join(cells)
    log.write_text("\n".join(lines) + "\n")
    assert raw_to_fits.main([*sections_of(root), "--no-progress"]) == 0
    said = [m for m in warnings_about(caplog, "'ERR'") if str(log) in m]
    assert len(said) == 1 and "line 3" in said[0]
    # and the section summary points at the NOTES column
    assert any("NOTES column" in m for m in warnings_about(caplog, "'ERR'"))
    assert "Traceback" not in capsys.readouterr().err

    (raw,) = (attempt / "frames").glob("*f1.raw")
    row = row_of(read_table(root / "fits_index.csv"), raw, root)
    assert row["STATUS"] == "converted"
    assert row["TEMP"] == 0.0 and row["TEMPSRC"] == "filename"
    assert "not a number" in row["NOTES"]
    fits_header = fits.getheader(root / row["PATH"])
    assert fits_header["TEMP"] == 0.0 and fits_header["TEMPSRC"] == "filename"
    assert fits_header["EXPSRC"] == "log"                  # the rest of the row is still used


def test_unusable_log_column_name_does_not_crash(standard_copy, caplog):
    root = standard_copy.root
    log = root / "TestSection1" / "T25" / "attempt0" / "temperatureLog.csv"
    lines = log.read_text().splitlines()
    lines = [lines[0] + ",#"] + [line + ",x" for line in lines[1:]]
    log.write_text("\n".join(lines) + "\n")
    assert raw_to_fits.main([*sections_of(root), "--no-progress"]) == 0
    assert len(warnings_about(caplog, "'#'")) == 1


# --- indexer ------------------------------------------------------------------------------------

def test_unreadable_fits_is_flagged(converted_standard_copy, tmp_path, caplog, capsys):
    root = converted_standard_copy.root
    garbage = root / "TestSection1" / "T-10" / "attempt0" / "fits" / "garbage.fits"
    garbage.write_bytes(b"this is not a FITS file\x00\xff" * 200)
    out = tmp_path / "index.csv"
    assert index_dataset.main(["--discover", str(root), str(out), "--no-progress"]) == 0
    said = warnings_about(caplog, "garbage.fits")
    assert len(said) == 1 and "BADFITS" in said[0]
    assert "Traceback" not in capsys.readouterr().err
    table = pd.read_csv(out)
    rows = table[table["PATH"].str.endswith("garbage.fits")]
    assert len(rows) == 1
    assert bool(rows.iloc[0]["BADFITS"]) is True
    assert "cannot read" in rows.iloc[0]["REASON"]
    assert rows.iloc[0]["CALTYPE"] == "BIAS"


def test_truncated_fits_is_flagged(converted_standard_copy, tmp_path):
    root = converted_standard_copy.root
    victim = sorted((root / "TestSection1" / "T0" / "attempt1" / "fits").glob("*.fits"))[0]
    victim.write_bytes(victim.read_bytes()[:2880 * 2])
    out = tmp_path / "index.csv"
    assert index_dataset.main(["--bias", str(root / "TestSection1"), str(out),
                               "--no-progress"]) == 0
    table = pd.read_csv(out)
    row = table[table["PATH"].str.endswith(victim.name)].iloc[0]
    assert bool(row["BADFITS"]) is True and isinstance(row["REASON"], str) and row["REASON"]


@pytest.mark.parametrize("option", ["--bias", "--discover"])
def test_empty_folder_given_to_indexer(tmp_path, caplog, capsys, option):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    out = tmp_path / "index.csv"
    assert index_dataset.main([option, str(empty), str(out), "--no-progress"]) == 2
    message = assert_one_line_error(caplog, capsys, empty)
    assert "no FITS frames found" in message
    assert not out.exists()


def test_missing_folder_given_to_indexer(tmp_path, caplog, capsys):
    missing = tmp_path / "Darks"
    assert index_dataset.main(["--dark", str(missing), str(tmp_path / "i.csv"),
                               "--no-progress"]) == 2
    assert "does not exist" in assert_one_line_error(caplog, capsys, missing)


def test_indexer_output_must_be_csv(tmp_path, caplog, capsys):
    assert index_dataset.main(["--discover", str(tmp_path), str(tmp_path / "index.txt"),
                               "--no-progress"]) == 2
    assert_one_line_error(caplog, capsys, "index.txt")


# --- processing an index ------------------------------------------------------------------------

@pytest.mark.parametrize("content", [
    b'PATH,CALTYPE\nframe.fits,"BIAS\n',                  # unterminated quote
    b"a,b\n1,2,3,4\n",                                    # ragged rows
    b"TEMP,EXPTIME\n20,1\n",                              # required columns missing
    b"",                                                  # empty file
    b"\xff\xfe\x00garbage\x00\x81\x82\n",                 # not text
])
def test_malformed_index_csv_given_to_process_index(tmp_path, caplog, capsys, content):
    bad = tmp_path / "index.csv"
    bad.write_bytes(content)
    out = tmp_path / "products"
    assert process_index.main([str(bad), str(out), "--no-progress"]) == 2
    assert_one_line_error(caplog, capsys, bad)
    assert not out.exists() or not any(out.rglob("*.fits"))


def test_missing_index_csv_given_to_process_index(tmp_path, caplog, capsys):
    missing = tmp_path / "absent.csv"
    assert process_index.main([str(missing), str(tmp_path / "out"), "--no-progress"]) == 2
    assert "does not exist" in assert_one_line_error(caplog, capsys, missing)
