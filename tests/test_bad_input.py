"""Bad input: one-line errors (exit 2, no traceback) or flagged rows, never a crash.

Every case runs the real entry point ``main(argv)`` of the command a user would
type, on a private copy of a simulated campaign with one thing broken.  The
table ``CASES`` (below the first tests) lists every case of issue 13 with its
command, exit status and message; new commands join it by adding themselves to
``COMMANDS`` and their rows to ``CASES``.

Folders that are not writable: as root, ``chmod`` does not stop writing, so the
``chmod`` rows skip themselves when the user can still write; the same check is
always exercised by the rows with a *file* in place of the folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from conftest import assert_one_line_error, sha256_tree

import run_calibration
import run_full_radiation_pipeline
import run_radiation
from analysis import (
    damage_analysis,
    dose_analysis,
    operation_analysis,
    outgassing_analysis,
    process_index,
    radiation_analysis,
    report,
    rts_analysis,
    structure_analysis,
)
from bias_pipeline import bias_temp_analysis, generate_bias
from bias_pipeline import run_pipeline as bias_run
from dark_pipeline import run_pipeline as dark_run
from flat_pipeline import run_pipeline as flat_run
from utils import index_dataset, raw_to_fits, simulate
from utils.io.discovery import find_fits
from utils.io.index import build_index, write_index


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
    # the error alone, not also a warning saying the same ('nothing_here: no FITS files')
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == []


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


# ================================================================================================
# The table: every case of issue 13, for every command.  One row per case: the command, a builder
# that plants the defect in a private copy and returns the argv, the exit status, and a fragment
# of the one ERROR line (status 2) or of a log line (status 0).  Extend it for new commands by
# adding them to COMMANDS and rows to CASES.
# ================================================================================================

#: Entry points by name: ``main(argv) -> exit status``.
COMMANDS: dict[str, Callable] = {
    "raw_to_fits": raw_to_fits.main,
    "index_dataset": index_dataset.main,
    "process_index": process_index.main,
    "run_calibration": run_calibration.main,
    "bias_pipeline": bias_run.main,
    "dark_pipeline": dark_run.main,
    "bias_temp_analysis": bias_temp_analysis.main,
    "generate_bias": generate_bias.main,
    "simulate": simulate.main,
    "full_radiation": run_full_radiation_pipeline.main,
    "flat_pipeline": flat_run.main,
    "run_radiation": run_radiation.main,
    "radiation_analysis": radiation_analysis.main,
    "dose_analysis": dose_analysis.main,
    "damage_analysis": damage_analysis.main,
    "operation_analysis": operation_analysis.main,
    "structure_analysis": structure_analysis.main,
    "outgassing_analysis": outgassing_analysis.main,
    "rts_analysis": rts_analysis.main,
    "report": report.main,
}
#: Files no command may modify (raw inputs, logs, configs, converted frames).
_INPUT_SUFFIXES = (".raw", ".txt", ".fits")
_INPUT_NAMES = ("temperatureLog.csv", "radiationLog.csv", "radiationLogCompleto.csv")


@pytest.fixture(scope="module")
def indexed_standard(converted_standard, tmp_path_factory):
    """A converted copy of the standard campaign with its ``index.csv`` (read-only)."""
    root = tmp_path_factory.mktemp("indexed") / "campaign"
    shutil.copytree(converted_standard[0].root, root)
    write_index(build_index(discover=[root]), root / "index.csv")
    return root


class Env:
    """Private copies of the campaigns a case breaks, built on first use."""

    def __init__(self, request, tmp_path: Path):
        self.request, self.tmp = request, tmp_path
        self.out = tmp_path / "out"

    @cached_property
    def raw(self) -> Path:
        """A raw standard campaign (TestSection1/2/3)."""
        return self.request.getfixturevalue("standard_copy").root

    @cached_property
    def conv(self) -> Path:
        """A converted standard campaign with ``index.csv``."""
        root = self.tmp / "conv"
        shutil.copytree(self.request.getfixturevalue("indexed_standard"), root)
        return root

    @cached_property
    def rad(self) -> Path:
        """A converted, indexed irradiation campaign (``rad_campaign``) with its radiation log."""
        root = self.tmp / "rad"
        shutil.copytree(self.request.getfixturevalue("rad_campaign")[0].root, root)
        return root

    @cached_property
    def empty(self) -> Path:
        """An empty folder."""
        (self.tmp / "empty").mkdir()
        return self.tmp / "empty"

    @cached_property
    def bad_csv(self) -> Path:
        """A CSV no parser can read (an unclosed quote)."""
        path = self.tmp / "bad.csv"
        path.write_text('PATH,CALTYPE\n"unclosed,BIAS\n')
        return path

    @cached_property
    def bad_log(self) -> Path:
        """A radiation log without its Dose or RadiationLevel column."""
        path = self.tmp / "radiationLog.csv"
        path.write_text("garbage;columns\n1;2\n")
        return path

    def sections(self, root: Path | None = None) -> list[str]:
        return sections_of(root or self.raw)

    def index_table(self) -> pd.DataFrame:
        return pd.read_csv(self.conv / "index.csv", dtype=str, keep_default_na=False)

    def write_index(self, table: pd.DataFrame, name: str = "edited.csv") -> Path:
        path = self.conv / name
        table.to_csv(path, index=False)
        return path

    def small_index(self, edit: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> Path:
        """Bias frames at two temperatures only (fast to process), optionally edited."""
        table = self.index_table()
        table = table[(table["CALTYPE"] == "BIAS")
                      & table["PATH"].str.contains("/T0/|/T25/")].reset_index(drop=True)
        return self.write_index(edit(table) if edit else table, "small.csv")

    @cached_property
    def irr(self) -> Path:
        """A raw irradiation campaign (stage folders)."""
        return self.request.getfixturevalue("irradiation_copy").root

    @cached_property
    def dd(self) -> Path:
        """Dose directories of FITS frames."""
        return self.request.getfixturevalue("dosedirs_copy").root

    def roots(self) -> list[Path]:
        return [p for p in (self.__dict__.get(name) for name in ("raw", "conv", "irr", "dd",
                                                                 "rad")) if p]

    def snapshot(self) -> dict[str, str]:
        """sha256 of every file of the copies in use."""
        out = {}
        for root in self.roots():
            out.update({f"{root.name}/{k}": v for k, v in sha256_tree(root).items()})
        return out


@pytest.fixture
def env(request, tmp_path):
    return Env(request, tmp_path)


@dataclass(frozen=True)
class Case:
    """One bad input: ``argv(env)`` plants it and returns the command line."""

    name: str
    command: str
    argv: Callable[[Env], list]
    code: int
    fragment: str
    check: Callable[[Env], None] | None = None


# --- builders and checks ------------------------------------------------------------------------

def _after(_effect, argv):
    """``argv``, once ``_effect`` (evaluated first, as an argument) has planted the defect."""
    return argv


def _file_at(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("I am a file, not a folder\n")
    return path


def _read_only(folder: Path) -> Path:
    """chmod a-w; skips the case when this user can still write (root ignores the mode)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(folder, os.W_OK):
        folder.chmod(0o755)
        pytest.skip("running as a user who may write into read-only folders (root); the same "
                    "check is covered by the 'is a file' cases")
    return folder


def _attempt(env: Env, *parts) -> Path:
    return env.raw.joinpath("TestSection1", *parts)


def _edit_log(path: Path, edit: Callable[[list[list[str]]], list[list[str]]]) -> None:
    lines = [line.split(",") for line in path.read_text().splitlines()]
    path.write_text("\n".join(",".join(cells) for cells in edit(lines)) + "\n")


def _set_log_cell(path: Path, frame: int, column: str, value: str) -> None:
    def edit(lines):
        col = lines[0].index(column)
        for cells in lines[1:]:
            if cells[0] == str(frame):
                cells[col] = value
        return lines
    _edit_log(path, edit)


def _fits_rows(env: Env) -> pd.DataFrame:
    return read_table(env.raw / "fits_index.csv")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _shifted_log(env: Env) -> Path:
    """A dose-folder log whose times lie a year after every frame."""
    frames = sorted((env.dd / "10kRads").rglob("*.fits"))
    t0 = max(fits.getheader(f)["TIMESTMP"] for f in frames) + 3.2e7
    path = env.tmp / "late_log.csv"
    path.write_text("TimeStamp,Dose\n" + "".join(f"{t0 + k},{k}\n" for k in range(5)))
    return path


def _odd_sized_frame(env: Env) -> Path:
    """One frame of the first dose folder replaced by a 10 x 10 one (another camera)."""
    frame = sorted((env.dd / "5kRads" / "fits").glob("dark*.fits"))[0]
    with fits.open(frame) as hdul:
        data, header = hdul[0].data[:10, :10].copy(), hdul[0].header.copy()
    fits.PrimaryHDU(data, header).writeto(frame, overwrite=True)
    return frame


def _each_raw_once(env: Env) -> None:
    table = _fits_rows(env)
    raws = sorted(p.relative_to(env.raw).as_posix() for p in env.raw.rglob("*.raw")
                  if "loop" not in p.relative_to(env.raw).parts)
    assert sorted(table["RAWPATH"]) == raws               # every raw file, each exactly once


def _rows_of(env: Env, *parts) -> pd.DataFrame:
    table = _fits_rows(env)
    prefix = "/".join(("TestSection1",) + parts) + "/"
    return table[table["RAWPATH"].str.startswith(prefix)]


def _stats(env: Env) -> pd.DataFrame:
    return pd.read_csv(env.out / "frame_stats.csv", keep_default_na=False, dtype={"REASON": str})


def _summary(env: Env) -> pd.DataFrame:
    return pd.read_csv(env.out / "masters_summary.csv", keep_default_na=False,
                       dtype={"REASON": str})


def _excluded(env: Env, fragment: str, count: int = 1) -> None:
    stats = _stats(env)
    hit = stats[stats["REASON"].str.contains(fragment, regex=False)]
    assert len(hit) == count and not hit["USED"].astype(str).eq("True").any()
    written = _summary(env)
    assert (written["STATUS"] == "written").sum() >= 1     # the rest is processed


def _float32_frames(env: Env) -> Path:
    folder = env.conv / "TestSection1" / "T25" / "attempt0" / "fits"
    for path in sorted(folder.glob("*.fits")):
        with fits.open(path) as hdul:
            data = hdul[0].data.astype(np.float32)
            header = hdul[0].header.copy()
        for key in ("BZERO", "BSCALE"):
            header.remove(key, ignore_missing=True)
        fits.writeto(path, data, header, overwrite=True)
    return env.conv


def _float32_indexed(env: Env) -> None:
    table = pd.read_csv(env.tmp / "i.csv")
    rows = table[table["PATH"].str.contains("TestSection1/T25/attempt0/")].set_index("PATH")
    assert len(rows) == 4 and not rows["BADFITS"].any()
    # the same statistics as the uint16 originals: the float32 frames hold the same values
    original = pd.read_csv(env.request.getfixturevalue("indexed_standard") / "index.csv")
    original = original.set_index("PATH").loc[[p.removeprefix("conv/") for p in rows.index]]
    np.testing.assert_allclose(rows[["MEAN", "STD", "MEDIAN"]], original[["MEAN", "STD", "MEDIAN"]],
                               rtol=1e-12)


def _rerun_keeps_adcbits(env: Env) -> list:
    assert raw_to_fits.main([*env.sections(), "--no-progress"]) == 0
    return env.sections()


def _existing_rows_keep_adcbits(env: Env) -> None:
    table = _fits_rows(env)
    existing = table[table["STATUS"] == "existing"]
    assert len(existing) > 70
    assert existing["ADCBITS"].notna().all() and (existing["ADCBITS"] == 12).all()


def _no_fits_converted(env: Env) -> None:
    assert not list(env.raw.rglob("*.fits"))


def _shapes_refused(env: Env) -> None:
    summary = _summary(env)
    refused = summary[summary["STATUS"] == "refused"]
    assert len(refused) == 1 and "different shapes" in refused.iloc[0]["REASON"]
    assert (summary["STATUS"] == "written").sum() == 1


def _odd_shape(env: Env) -> Path:
    def edit(table):
        victim = env.conv / table.loc[0, "PATH"]
        with fits.open(victim) as hdul:
            data, header = hdul[0].data[:12, :20], hdul[0].header.copy()
        odd = victim.with_name("odd_shape.fits")
        fits.writeto(odd, data.astype(np.uint16), header)
        extra = table.iloc[[0]].copy()
        extra["PATH"] = odd.relative_to(env.conv).as_posix()
        extra[["NAXIS1", "NAXIS2"]] = ["20", "12"]
        return pd.concat([table, extra], ignore_index=True)
    return env.small_index(edit)


def _truncated(env: Env) -> Path:
    def edit(table):
        victim = env.conv / table.loc[1, "PATH"]
        victim.write_bytes(victim.read_bytes()[:2880 * 2])
        return table
    return env.small_index(edit)


def _single_frame_set(env: Env) -> Path:
    def edit(table):
        source = env.conv / table.loc[0, "PATH"]
        lone = source.with_name("lone_40C.fits")
        shutil.copy(source, lone)
        extra = table.iloc[[0]].copy()
        extra["PATH"], extra["TEMP"] = lone.relative_to(env.conv).as_posix(), "40.0"
        return pd.concat([table, extra], ignore_index=True)
    return env.small_index(edit)


def _single_frame_said(env: Env) -> None:
    summary = _summary(env)
    lone = summary[summary["TBIN"] == 40.0].iloc[0]
    assert lone["STATUS"] == "written" and "NOISE and UNCERT undefined" in lone["REASON"]
    with fits.open(lone["PATH"]) as hdul:
        assert np.isnan(hdul["NOISE"].data).all() and hdul["MASK"].data.all()


def _edited_cell(row: int, column: str, value: str):
    def build(env):
        def edit(table):
            table.loc[row, column] = value
            return table
        return env.small_index(edit)
    return build


CASES: list[Case] = [
    # --- converter ------------------------------------------------------------------------------
    Case("converter: --index-dir is a file", "raw_to_fits",
         lambda e: [*e.sections(), "--index-dir", _file_at(e.tmp / "listing")], 2,
         "is a file, not a folder", _no_fits_converted),
    Case("converter: an attempt's fits/ is a file (stands for a folder not writable)",
         "raw_to_fits",
         lambda e: _after(_file_at(_attempt(e, "T0", "attempt1", "fits")), e.sections()), 2,
         "FITS folder of the attempt is a file", _no_fits_converted),
    Case("converter: an attempt folder not writable (chmod; skipped as root)", "raw_to_fits",
         lambda e: _after(_read_only(_attempt(e, "T0", "attempt1", "fits")), e.sections()), 2,
         "not writable", _no_fits_converted),
    Case("converter: the same section as bias, dark and flat", "raw_to_fits",
         lambda e: [e.raw / "TestSection1"] * 3, 2, "the same folder is given twice",
         _no_fits_converted),
    Case("converter: a section inside another", "raw_to_fits",
         lambda e: [e.raw / "TestSection1", e.raw / "TestSection1" / "T0", e.raw / "TestSection3"],
         2, "lies inside the bias section", _no_fits_converted),
    Case("converter: --workers 0", "raw_to_fits", lambda e: [*e.sections(), "--workers", "0"], 2,
         "workers must be >= 1", _no_fits_converted),
    Case("converter: --search-depth -1", "raw_to_fits",
         lambda e: [*e.sections(), "--search-depth", "-1"], 2, "search_depth must be >= 0",
         _no_fits_converted),
    Case("converter: symlink T0/loop -> .. inside a section", "raw_to_fits",
         lambda e: _after(os.symlink("..", _attempt(e, "T0", "loop")), e.sections()), 0,
         "frames converted", _each_raw_once),
    Case("converter: dangling symlink loops beside the attempts", "raw_to_fits",
         lambda e: _after((os.symlink("b", e.raw / "TestSection2" / "a"),
                           os.symlink("a", e.raw / "TestSection2" / "b"),
                           os.symlink("self", _attempt(e, "T0", "self"))), e.sections()), 0,
         "symbolic link cannot be followed", _each_raw_once),
    Case("converter: NaN sensor temperature in the log", "raw_to_fits",
         lambda e: _after(_set_log_cell(_attempt(e, "T0", "attempt0", "temperatureLog.csv"), 2,
                                        "Temperature", "nan"), e.sections()), 0,
         "Temperature='nan' is not a finite number",
         lambda e: _check_fallback(e, ("T0", "attempt0"), 2, "not a finite number")),
    Case("converter: a log without a FrameNum column", "raw_to_fits",
         lambda e: _after(_edit_log(_attempt(e, "T0", "attempt0", "temperatureLog.csv"),
                                    lambda lines: [cells[1:] for cells in lines]),
                          e.sections()), 0,
         "no FrameNum column (columns: TimeStamp",
         lambda e: _check_fallback(e, ("T0", "attempt0"), 0, "has no row")),
    Case("converter: a non-numeric temperature is named by the log's column", "raw_to_fits",
         lambda e: _after(_set_log_cell(_attempt(e, "T12.5", "attempt1", "temperatureLog.csv"),
                                        1, "Temperature", "warm"), e.sections()), 0,
         "Temperature='warm' is not a number",
         lambda e: _check_fallback(e, ("T12.5", "attempt1"), 1, "Temperature='warm'")),
    Case("converter: a bad BIT_DEPTH is named BIT_DEPTH", "raw_to_fits",
         lambda e: _after(_attempt(e, "T0", "attempt0", "configFile.txt").write_text(
             "WIDTH = 40\nHEIGHT = 24\nBIT_DEPTH = sixteen\n"), e.sections()), 0,
         "BIT_DEPTH='sixteen' is not a whole number"),
    Case("converter: re-run keeps ADCBITS of STATUS=existing rows", "raw_to_fits",
         _rerun_keeps_adcbits, 0, "already converted", _existing_rows_keep_adcbits),
    # --- indexer --------------------------------------------------------------------------------
    Case("indexer: output CSV is a folder", "index_dataset",
         lambda e: ["--discover", e.conv, (e.tmp / "out.csv").mkdir() or e.tmp / "out.csv"], 2,
         "is a folder; give a file name"),
    Case("indexer: the same section as --bias and --dark", "index_dataset",
         lambda e: ["--bias", e.conv / "TestSection1", "--dark", e.conv / "TestSection1",
                    e.tmp / "i.csv"], 2, "the same folder is given twice"),
    Case("indexer: --workers 0", "index_dataset",
         lambda e: ["--discover", e.conv, e.tmp / "i.csv", "--workers", "0"], 2,
         "workers >= 1"),
    Case("indexer: symlink loops under --discover", "index_dataset",
         lambda e: _after((os.symlink("..", e.conv / "TestSection1" / "T0" / "loop"),
                           os.symlink("self", e.conv / "TestSection2" / "self")),
                          ["--discover", e.conv, e.tmp / "i.csv"]), 0,
         "symbolic link cannot be followed",
         lambda e: _each_fits_once(e)),
    Case("indexer: float32 frames are supported, and said", "index_dataset",
         lambda e: ["--discover", _float32_frames(e), e.tmp / "i.csv"], 0,
         "4 frames are float32 rather than the converter's unsigned 16-bit", _float32_indexed),
    # --- index processing -----------------------------------------------------------------------
    Case("process_index: output folder is a file", "process_index",
         lambda e: [e.small_index(), _file_at(e.out)], 2, "the output folder is a file"),
    Case("process_index: output folder below a file", "process_index",
         lambda e: [e.small_index(), _file_at(e.tmp / "f") / "out"], 2, "cannot be created"),
    Case("process_index: output folder not writable (chmod; skipped as root)", "process_index",
         lambda e: [e.small_index(), _read_only(e.out)], 2, "not writable"),
    Case("process_index: --workers 0", "process_index",
         lambda e: [e.small_index(), e.out, "--workers", "0"], 2, "workers must be >= 1"),
    Case("process_index: --workers -1", "process_index",
         lambda e: [e.small_index(), e.out, "--workers", "-1"], 2, "workers must be >= 1"),
    Case("process_index: --sigma nan", "process_index",
         lambda e: [e.small_index(), e.out, "--sigma", "nan"], 2,
         "argument --sigma: invalid finite number value: 'nan'"),
    Case("process_index: an index row whose file does not exist", "process_index",
         lambda e: [_edited_cell(2, "PATH", "TestSection1/T0/attempt0/fits/gone.fits")(e), e.out,
                    "--no-per-attempt"], 0, "gone.fits: file not found",
         lambda e: _excluded(e, "file not found")),
    Case("process_index: a truncated FITS the index did not flag", "process_index",
         lambda e: [_truncated(e), e.out, "--no-per-attempt"], 0, "truncated",
         lambda e: _excluded(e, "truncated")),
    Case("process_index: two frame shapes in one set", "process_index",
         lambda e: [_odd_shape(e), e.out, "--no-per-attempt"], 0,
         "frames of different shapes (40x24: 8 frames, 20x12: 1 frame)", _shapes_refused),
    Case("process_index: a non-numeric TEMP in one row", "process_index",
         lambda e: [_edited_cell(3, "TEMP", "warm")(e), e.out, "--no-per-attempt"], 0,
         "1 bad index value", lambda e: _excluded(e, "TEMP='warm' is not a number")),
    Case("process_index: an empty TEMP is said, not silently dropped", "process_index",
         lambda e: [_edited_cell(3, "TEMP", "")(e), e.out, "--no-per-attempt"], 0,
         "1 without TEMP", lambda e: _excluded(e, "without TEMP")),
    Case("process_index: the same file twice in the index", "process_index",
         lambda e: [e.small_index(lambda t: pd.concat([t, t.iloc[[4]]], ignore_index=True)),
                    e.out, "--no-per-attempt"], 0, "repeats the file of line 6",
         lambda e: _excluded(e, "repeats the file")),
    Case("process_index: a single-frame set", "process_index",
         lambda e: [_single_frame_set(e), e.out, "--no-per-attempt"], 0,
         "too few frames: 1 (< 3); NOISE and UNCERT undefined", _single_frame_said),
    Case("process_index: every frame BADFITS", "process_index",
         lambda e: [e.small_index(lambda t: t.assign(BADFITS="True")), e.out, "--no-per-attempt"],
         0,
         "16 frames, 0 used, 16 excluded (16 BADFITS",
         lambda e: _summary(e)["STATUS"].eq("refused").all()),
    # --- bias and dark pipelines ----------------------------------------------------------------
    Case("bias pipeline: output folder is a file", "bias_pipeline",
         lambda e: ["--basepath", e.small_index(), "--output-dir", _file_at(e.out)], 2,
         "the output folder is a file"),
    Case("bias pipeline: --workers 0", "bias_pipeline",
         lambda e: ["--basepath", e.small_index(), "--output-dir", e.out, "--workers", "0"], 2,
         "workers must be >= 1"),
    Case("bias pipeline: a hot-pixel mask that is not FITS", "bias_pipeline",
         lambda e: ["--basepath", e.small_index(), "--output-dir", e.out, "--hot-pixel-mask",
                    _file_at(e.tmp / "mask.fits")], 2, "mask.fits: hot-pixel mask cannot be read"),
    Case("bias pipeline: no bias frame leaves no config_used.json", "bias_pipeline",
         lambda e: ["--basepath", e.write_index(e.index_table().query("CALTYPE == 'DARK'")),
                    "--output-dir", e.out], 2, "no bias frames"),
    Case("dark pipeline: output folder is a file", "dark_pipeline",
         lambda e: ["--basepath", e.conv / "index.csv", "--output-dir", _file_at(e.out)], 2,
         "the output folder is a file"),
    Case("dark pipeline: --workers -1", "dark_pipeline",
         lambda e: ["--basepath", e.conv / "index.csv", "--output-dir", e.out, "--workers", "-1"],
         2, "workers must be >= 1"),
    Case("dark pipeline: a model mode without the model leaves no config_used.json",
         "dark_pipeline", lambda e: ["--mode", "synthetic_2d", "--output-dir", e.out], 2,
         "dark model not found"),
    Case("bias temperature analysis: output folder is a file", "bias_temp_analysis",
         lambda e: [e.small_index(), "--output-dir", _file_at(e.out)], 2,
         "the output folder is a file"),
    Case("synthetic bias: no model", "generate_bias",
         lambda e: ["--model", e.tmp / "none.fits", "--temperature", "5", "--output",
                    e.out / "b.fits"], 2, "bias model not found"),
    Case("simulator: campaign folder below a file", "simulate",
         lambda e: ["standard", _file_at(e.tmp / "f") / "campaign"], 2,
         "the campaign folder cannot be created"),
    # --- run_calibration ------------------------------------------------------------------------
    Case("run_calibration: output folder is a file", "run_calibration",
         lambda e: ["standard", e.raw, _file_at(e.out)], 2, "the output folder is a file",
         _no_fits_converted),
    Case("run_calibration: the dataset index path is a folder", "run_calibration",
         lambda e: ["standard", e.raw, (e.raw / "index.csv").mkdir() or e.out], 2,
         "index.csv: the dataset index is a folder", _no_fits_converted),
    Case("run_calibration: --search-depth -1", "run_calibration",
         lambda e: ["standard", e.raw, e.out, "--search-depth", "-1"], 2,
         "--search-depth must be >= 0, not -1", _no_fits_converted),
    Case("run_calibration: --workers 0", "run_calibration",
         lambda e: ["standard", e.raw, e.out, "--workers", "0"], 2, "workers must be >= 1",
         _no_fits_converted),
    Case("run_calibration: --workers -1", "run_calibration",
         lambda e: ["standard", e.raw, e.out, "--workers", "-1"], 2, "workers must be >= 1",
         _no_fits_converted),
    Case("run_calibration: --convert-workers 0", "run_calibration",
         lambda e: ["standard", e.raw, e.out, "--convert-workers", "0"], 2,
         "--convert-workers must be >= 1", _no_fits_converted),
    # --- run_full_radiation_pipeline ------------------------------------------------------------
    Case("full radiation: neither stage folders nor <dose>kRads folders", "full_radiation",
         lambda e: [e.raw, e.out], 2, "no stage folders", _no_fits_converted),
    Case("full radiation: an empty dose step", "full_radiation",
         lambda e: _after(_mkdir(e.irr / "Irradiation" / "30kRads"), [e.irr, e.out]), 2,
         "30kRads: empty stage"),
    Case("full radiation: an empty dose folder", "full_radiation",
         lambda e: _after(_mkdir(e.dd / "40kRads"), [e.dd, e.out]), 2,
         "40kRads: empty dose folder"),
    Case("full radiation: the given radiation log is missing", "full_radiation",
         lambda e: [e.irr, e.tmp / "no_log.csv", e.out], 2, "radiation log not found"),
    Case("full radiation: the log covers none of the frames", "full_radiation",
         lambda e: [e.dd, _shifted_log(e), e.out], 2, "covers none of them"),
    Case("full radiation: frames of two sizes", "full_radiation",
         lambda e: _after(_odd_sized_frame(e), [e.dd, e.out]), 2, "frames of 2 sizes"),
    Case("full radiation: --workers 0", "full_radiation",
         lambda e: [e.irr, e.out, "--workers", "0"], 2, "--workers must be >= 1"),
    # --- flat pipeline --------------------------------------------------------------------------
    Case("flat pipeline: missing folder", "flat_pipeline",
         lambda e: ["--basepath", e.tmp / "none", "--output-dir", e.out], 2,
         "none: no such folder or index CSV"),
    Case("flat pipeline: empty folder", "flat_pipeline",
         lambda e: ["--basepath", e.empty, "--output-dir", e.out], 2, "no FITS frames found"),
    Case("flat pipeline: malformed index CSV", "flat_pipeline",
         lambda e: ["--basepath", e.bad_csv, "--output-dir", e.out], 2, "not a readable CSV"),
    Case("flat pipeline: output folder is a file", "flat_pipeline",
         lambda e: ["--basepath", e.conv / "index.csv", "--output-dir", _file_at(e.out)], 2,
         "the output folder is a file"),
    Case("flat pipeline: --workers 0", "flat_pipeline",
         lambda e: ["--basepath", e.conv / "index.csv", "--output-dir", e.out, "--workers", "0"],
         2, "workers must be >= 1"),
    Case("flat pipeline: unknown --mode", "flat_pipeline",
         lambda e: ["--basepath", e.conv / "index.csv", "--output-dir", e.out, "--mode", "x"], 2,
         "argument --mode: invalid choice: 'x'"),
    # --- radiation ------------------------------------------------------------------------------
    Case("run_radiation: missing folder", "run_radiation",
         lambda e: [e.tmp / "none", e.rad / "radiationLogCompleto.csv", e.out], 2,
         "dataset folder does not exist"),
    Case("run_radiation: empty folder", "run_radiation",
         lambda e: [e.empty, e.rad / "radiationLogCompleto.csv", e.out], 2,
         "none of Preirradiation, Irradiation, Postirradiation"),
    Case("run_radiation: malformed radiation log", "run_radiation",
         lambda e: [e.rad, e.bad_log, e.out], 2, "no Dose or RadiationLevel column"),
    Case("run_radiation: output folder is a file", "run_radiation",
         lambda e: [e.rad, e.rad / "radiationLogCompleto.csv", _file_at(e.out)], 2,
         "the output folder is a file"),
    Case("run_radiation: unknown --stages", "run_radiation",
         lambda e: [e.rad, e.rad / "radiationLogCompleto.csv", e.out, "--stages", "nonsense"], 2,
         "unknown stage 'nonsense'"),
    Case("run_radiation: --search-depth -1", "run_radiation",
         lambda e: [e.rad, e.rad / "radiationLogCompleto.csv", e.out, "--search-depth", "-1"], 2,
         "--search-depth must be >= 0, not -1"),
    Case("radiation_analysis: missing index", "radiation_analysis",
         lambda e: [e.tmp / "none.csv", e.rad / "radiationLogCompleto.csv", e.out], 2,
         "index file does not exist"),
    Case("radiation_analysis: a folder as the index", "radiation_analysis",
         lambda e: [e.empty, e.rad / "radiationLogCompleto.csv", e.out], 2,
         "is a folder, not an index CSV"),
    Case("radiation_analysis: malformed index CSV", "radiation_analysis",
         lambda e: [e.bad_csv, e.rad / "radiationLogCompleto.csv", e.out], 2,
         "not a readable CSV"),
    Case("radiation_analysis: malformed radiation log", "radiation_analysis",
         lambda e: [e.rad / "index.csv", e.bad_log, e.out], 2,
         "no Dose or RadiationLevel column"),
    Case("radiation_analysis: output folder is a file", "radiation_analysis",
         lambda e: [e.rad / "index.csv", e.rad / "radiationLogCompleto.csv", _file_at(e.out)], 2,
         "a file is in the way of the folder"),
    Case("radiation_analysis: unknown --stages", "radiation_analysis",
         lambda e: [e.rad / "index.csv", e.rad / "radiationLogCompleto.csv", e.out, "--stages",
                    "nonsense"], 2, "unknown stage 'nonsense'"),
    Case("dose_analysis: missing index", "dose_analysis",
         lambda e: [e.tmp / "none.csv", e.out], 2, "index file does not exist"),
    Case("dose_analysis: malformed index CSV", "dose_analysis",
         lambda e: [e.bad_csv, e.out], 2, "not a readable CSV"),
    Case("dose_analysis: malformed radiation log", "dose_analysis",
         lambda e: [e.rad / "index.csv", e.out, "--radiation-log", e.bad_log], 2,
         "no Dose or RadiationLevel column"),
    Case("dose_analysis: output folder is a file", "dose_analysis",
         lambda e: [e.rad / "index.csv", _file_at(e.out)], 2,
         "a file is in the way of the folder"),
    Case("dose_analysis: --gain -2", "dose_analysis",
         lambda e: [e.rad / "index.csv", e.out, "--gain", "-2"], 2,
         "gain must be a finite number > 0"),
    Case("damage_analysis: missing index", "damage_analysis",
         lambda e: [e.tmp / "none.csv", e.out], 2, "index file does not exist"),
    Case("damage_analysis: malformed index CSV", "damage_analysis",
         lambda e: [e.bad_csv, e.out], 2, "not a readable CSV"),
    Case("damage_analysis: output folder is a file", "damage_analysis",
         lambda e: [e.rad / "index.csv", _file_at(e.out)], 2, "the output folder is a file"),
    Case("damage_analysis: --pixel-pitch -1", "damage_analysis",
         lambda e: [e.rad / "index.csv", e.out, "--pixel-pitch", "-1"], 2,
         "pixel_pitch_um must be > 0"),
    Case("damage_analysis: --hot-threshold nan", "damage_analysis",
         lambda e: [e.rad / "index.csv", e.out, "--hot-threshold", "nan"], 2,
         "invalid finite number value: 'nan'"),
    # --- time series ----------------------------------------------------------------------------
    Case("operation_analysis: missing folder", "operation_analysis",
         lambda e: [e.tmp / "none", e.out], 2, "input folder does not exist"),
    Case("operation_analysis: empty folder", "operation_analysis",
         lambda e: [e.empty, e.out], 2, "no <x>kRads sub-folders"),
    Case("operation_analysis: output folder is a file", "operation_analysis",
         lambda e: [e.empty, _file_at(e.out)], 2, "the output folder is a file"),
    Case("operation_analysis: --threshold -1", "operation_analysis",
         lambda e: [e.empty, e.out, "--threshold", "-1"], 2, "must be > 0 sigma"),
    *[case for name, main in (("structure", "structure_analysis"),
                              ("outgassing", "outgassing_analysis"), ("rts", "rts_analysis"))
      for case in (
        Case(f"{main}: missing folder", main,
             lambda e: [e.tmp / "none", "--output-dir", e.out], 2, "no such folder or index CSV"),
        Case(f"{main}: empty folder", main,
             lambda e: [e.empty, "--output-dir", e.out], 2, "no FITS frames found"),
        Case(f"{main}: malformed index CSV", main,
             lambda e: [e.bad_csv, "--output-dir", e.out], 2, "not a readable CSV"),
        Case(f"{main}: output folder is a file", main,
             lambda e: [e.rad / "index.csv", "--output-dir", _file_at(e.out)], 2,
             "a file is in the way" if name != "rts" else "the output folder is a file"),
        Case(f"{main}: --temp-bin -1", main,
             lambda e: [e.rad / "index.csv", "--output-dir", e.out, "--temp-bin", "-1"], 2,
             "temp_bin must be > 0"))],
    # --- report ---------------------------------------------------------------------------------
    Case("report: missing folder", "report", lambda e: [e.tmp / "none"], 2,
         "no such results folder"),
    Case("report: a folder without products", "report", lambda e: [e.empty], 2,
         "no pipeline products found"),
    Case("report: --output is a file", "report",
         lambda e: [e.conv, "--output", _file_at(e.out)], 2, "the report folder is a file"),
]


def _check_fallback(env: Env, attempt: tuple, frame: int, note: str) -> None:
    """The frame took its temperature from the file name, and its NOTES say why."""
    rows = _rows_of(env, *attempt)
    row = rows[rows["FRAMENUM"] == frame].iloc[0]
    assert row["STATUS"] == "converted" and row["TEMPSRC"] == "filename"
    assert note in row["NOTES"]
    header = fits.getheader(env.raw / row["PATH"])
    assert header["TEMPSRC"] == "filename" and header["TEMP"] == row["FILETEMP"]


def _each_fits_once(env: Env) -> None:
    table = pd.read_csv(env.tmp / "i.csv")
    frames = sorted(p.relative_to(env.conv).as_posix() for p in env.conv.rglob("*.fits")
                    if "loop" not in p.relative_to(env.conv).parts)
    paths = sorted(os.path.relpath(env.tmp / p, env.conv) for p in table["PATH"])
    assert paths == frames


def _run(command: str, argv: list) -> int:
    try:
        return COMMANDS[command](argv)
    except SystemExit as exit_:  # argparse's usage errors
        return exit_.code


#: Commands with ``--plots``: the table runs them without figures (it checks messages and
#: products, never a figure; saving figures was most of the time of its successful runs).
DRAWING = {"process_index", "run_calibration", "bias_pipeline", "dark_pipeline",
           "flat_pipeline", "run_radiation", "radiation_analysis", "dose_analysis",
           "damage_analysis", "full_radiation"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_table(case, env, caplog, capsys):
    argv = [str(a) for a in case.argv(env)]
    if "--no-progress" not in argv:
        argv.append("--no-progress")
    if case.command in DRAWING and not {"--plots", "--no-save-plots"} & set(argv):
        argv += ["--plots", "none"]
    before = env.snapshot()
    caplog.set_level(logging.INFO)
    status = _run(case.command, argv)
    assert status == case.code
    if status == 2:
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        if errors:
            message = assert_one_line_error(caplog, capsys)
        else:                                             # an argparse usage error
            message = capsys.readouterr().err.strip().splitlines()[-1]
        assert case.fragment in message, message
        # nothing half-written: every input byte-identical, nothing new, no config_used.json
        assert env.snapshot() == before
        assert not list(env.out.rglob("config_used.json")) if env.out.is_dir() else True
        assert not (env.out.is_dir() and any(env.out.rglob("*.fits")))
    else:
        said = [r.getMessage() for r in caplog.records]
        assert not [m for r, m in zip(caplog.records, said) if r.levelno >= logging.ERROR]
        assert any(case.fragment in m for m in said), said[-3:]
        assert all("\n" not in m for m in said)
        assert "Traceback" not in capsys.readouterr().err
        after = env.snapshot()
        assert {k: v for k, v in after.items() if k in before and k.endswith(_INPUT_SUFFIXES)
                or k.endswith(_INPUT_NAMES)} == \
            {k: v for k, v in before.items() if k.endswith(_INPUT_SUFFIXES + _INPUT_NAMES)}
    if case.check is not None:
        case.check(env)


# --- non-ASCII paths, stable re-runs, messages ---------------------------------------------------

def test_non_ascii_paths_round_trip_through_products(tmp_path, fitsverify, caplog):
    """Folders, attempts and config values named in Spanish/German/French: frames and masters
    are written (FITS text is ASCII: escaped), fitsverify-clean, and every path reads back."""
    from utils import sim
    from utils.io.fitsio import unescape_text

    root = tmp_path / "cämp ü space" / "Irradiación"
    sim.simulate_standard(root, seed=5, frames=3, attempts=1, bias_temperatures=(0.0, 25.0),
                          dark_temperatures=(25.0,), dark_exposures=(0.5,),
                          flat_temperatures=(25.0,), flat_exposures=(0.1,), defects=False)
    attempt = root / "TestSection1" / "T0" / "attempt0"
    renamed = attempt.rename(attempt.with_name("attempt0_ñandú"))
    (config,) = [p for p in renamed.iterdir() if p.name in ("configFile.txt", "config.txt")]
    config.write_text(config.read_text() + "\nOperador: José Núñez\n", encoding="latin-1")
    assert raw_to_fits.main([*sections_of(root), "--no-progress"]) == 0
    assert index_dataset.main(["--discover", str(root), str(root / "index.csv"),
                               "--no-progress"]) == 0
    out = tmp_path / "cämp ü space" / "résultats"
    assert process_index.main([str(root / "index.csv"), str(out), "--no-progress"]) == 0

    frame = sorted((renamed / "fits").glob("*.fits"))[0]
    header = fits.getheader(frame)
    assert unescape_text(header["ATTEMPT"]) == "attempt0_ñandú"
    assert unescape_text(header["OPERADOR"]) == "José Núñez"
    masters = sorted(out.rglob("master_*.fits"))
    assert len(masters) >= 4
    for path in masters:
        with fits.open(path) as hdul:
            inputs = [unescape_text(p) for p in hdul["INPUTS"].data["PATH"]]
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in inputs)
        assert all("cämp ü space/Irradiación/" in p for p in inputs)
    # the attempt's own master is named after it (letters of any script kept, no collision)
    assert len([p for p in masters if p.name.endswith("C_attempt0-ñandú.fits")]) == 1
    for path in masters + [frame]:
        errors, report = fitsverify(path)
        assert errors == 0, report


def test_inhash_does_not_depend_on_the_output_folder(env, monkeypatch):
    """Two output folders built from the same inputs (the index read through a relative and an
    absolute path) give every master the same INHASH: bias, dark and flat masters of index
    processing, and the dark pipeline's own bias-subtracted masters."""
    from analysis.masters import MasterSettings, build_masters
    from dark_pipeline.pipeline import DarkSettings, measure
    from utils.io.index import DatasetIndex

    settings = MasterSettings(per_attempt=False, workers=1)
    monkeypatch.chdir(env.conv)
    one = build_masters(DatasetIndex.from_csv("index.csv").table, Path("../one"), settings)
    monkeypatch.chdir(env.tmp)
    two = build_masters(DatasetIndex.from_csv(env.conv / "index.csv").table, env.tmp / "two",
                        settings)
    hashes = [{(r.key.caltype, r.key.temperature, r.key.exptime):
               fits.getheader(env.conv / r.path)["INHASH"]  # ../one is relative to conv
               for r in records if r.path is not None} for records in (one, two)]
    assert {k[0] for k in hashes[0]} == {"BIAS", "DARK", "FLAT"} and hashes[0] == hashes[1]
    # the bias model (fitted into each output folder) is identified by content, not by path
    dark = []
    for name in ("dark_a", "dark_b"):
        index = DatasetIndex.from_csv(env.conv / "index.csv")
        masters, _, _ = measure(index, env.tmp / name, DarkSettings(), [])
        dark.append(sorted(fits.getheader(m.path)["INHASH"] for m in masters))
    assert dark[0] == dark[1] and len(dark[0]) == 4


def test_rerun_after_a_kill_finishes_without_rewriting(env, caplog):
    """kill -9 in the middle of process_index, then re-run (from another working folder): the
    leftover temporary files are removed and no complete master is written again."""
    import signal
    import subprocess
    import sys
    import time

    index, out = env.small_index(), env.out
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "analysis.process_index", str(index),
                             str(out), "--no-progress"], cwd=repo,
                            env=dict(os.environ, PYTHONPATH=str(repo)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "masters").is_dir() and any((out / "masters").rglob("master_*.fits")):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # whatever the kill left, plant the worst case too: a half-written temporary master
    (out / "masters" / "bias").mkdir(parents=True, exist_ok=True)
    (out / "masters" / "bias" / ".master_bias_T0.0C.fits.k1ll3d_x.tmp").write_bytes(b"SIMPLE" * 9)
    foreign = out / ".my_notes.tmp"                        # not ours: never deleted
    foreign.write_text("keep me")
    complete = {p: (p.stat().st_mtime_ns, sha256_tree(p.parent)[p.name])
                for p in out.rglob("*.fits")}
    caplog.set_level(logging.INFO)
    assert process_index.main([str(index.resolve()), str(out.resolve()), "--no-progress"]) == 0
    assert list(out.rglob("*.tmp")) == [foreign]
    for path, (mtime, digest) in complete.items():
        assert path.stat().st_mtime_ns == mtime and sha256_tree(path.parent)[path.name] == digest
    summary = _summary(env)
    assert (summary["STATUS"] == "existing").sum() >= sum(
        1 for p in complete if p.name.startswith("master_"))


def test_help_texts_say_what_the_code_does(capsys):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "run_calibration", "--help"], cwd=repo,
                         capture_output=True, text=True, env=dict(os.environ,
                                                                  PYTHONPATH=str(repo)))
    assert run.stdout.startswith("usage: python -m run_calibration ")
    run = subprocess.run([sys.executable, "utils/raw_to_fits.py", "--help"], cwd=repo,
                         capture_output=True, text=True, env=dict(os.environ,
                                                                  PYTHONPATH=str(repo)))
    assert run.stdout.startswith("usage: python utils/raw_to_fits.py ")
    text = " ".join(run.stdout.split())
    assert "(default: common parent of the sections)" in text and "(default: None)" not in text
    with pytest.raises(SystemExit):
        process_index.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "bias at its own temperature (the per-pixel bias(T) model" in text
    assert "(default: None)" not in text and "(default: False)" not in text


@pytest.mark.parametrize("error, fragment", [
    (PermissionError(13, "Permission denied", "/data/out/x.fits"), "check the permissions"),
    (OSError(28, "No space left on device", "/data/out/x.fits"), "the disk is full"),
    (OSError(30, "Read-only file system", "/data/out"), "read-only"),
])
def test_os_errors_the_user_must_fix_are_one_line(error, fragment, caplog, capsys):
    from utils import cli

    def main(args):
        raise error

    assert cli.run_cli(main, cli.make_parser("python -m x", "x"), []) == 2
    message = assert_one_line_error(caplog, capsys, error.filename)
    assert fragment in message


def test_other_os_errors_are_bugs_and_keep_their_traceback():
    from utils import cli

    def main(args):
        raise OSError(9, "Bad file descriptor")

    with pytest.raises(OSError):
        cli.run_cli(main, cli.make_parser("python -m x", "x"), [])


def test_writing_below_a_file_is_a_one_line_error(tmp_path):
    from utils.errors import OutputPathError
    from utils.io.fitsio import write_text

    blocker = _file_at(tmp_path / "products")
    with pytest.raises(OutputPathError, match="a file is in the way") as info:
        write_text("x", blocker / "plots" / "a.txt")
    assert "\n" not in str(info.value)
    (tmp_path / "table.csv").mkdir()
    with pytest.raises(OutputPathError, match="is a folder"):
        write_text("x", tmp_path / "table.csv")
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("text", ["cämp ü space/f0.fits", "Irradiación", "50% done", "%41",
                                  "tab\there", "日本語", "\x00\x7f"])
def test_fits_text_is_printable_ascii_and_round_trips(text, tmp_path, fitsverify):
    from utils.io.fitsio import fits_text, set_card, unescape_text, write_product

    escaped = fits_text(text)
    assert all(" " <= c <= "~" for c in escaped) and unescape_text(escaped) == text
    if text.isascii() and text.isprintable() and "%" not in text:
        assert escaped == text                             # plain text is written as it is
    header = fits.Header()
    set_card(header, "PATHNAME", text, f"comment {text}")
    path = write_product(tmp_path / "p.fits", np.zeros((2, 3), np.float32), header, unit="adu",
                         tables={"INPUTS": pd.DataFrame({"PATH": [text, "plain"]})})
    with fits.open(path) as hdul:
        assert unescape_text(hdul[0].header["PATHNAME"]) == text
        assert [unescape_text(p) for p in hdul["INPUTS"].data["PATH"]] == [text, "plain"]
    assert fitsverify(path)[0] == 0


@pytest.mark.parametrize("value", ["krad", "", "x" * 18, "it's"])
def test_short_string_cards_keep_what_fits_of_their_comment(value):
    # a short string's field is 20 columns wide: a 51-character comment used to overflow
    # the card (astropy's "Card is too long" warning, an error in the tests)
    import warnings

    from utils.io.fitsio import set_card

    header = fits.Header()
    set_card(header, "PERDOSE", value, "values are per krad of dose (krad is no FITS unit)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = str(header.cards["PERDOSE"])
    assert len(image) == 80 and header.comments["PERDOSE"].startswith("values are per krad")


def test_a_frame_error_reaching_the_top_is_one_line(caplog, capsys):
    """A FrameError is raised on purpose (file and reason): never a traceback."""
    from utils import cli
    from utils.errors import UnreadableFrameError

    def main(args):
        raise UnreadableFrameError("/data/f0.fits", "truncated: 2880 bytes, header needs 5760")

    assert cli.run_cli(main, cli.make_parser("python -m x", "x"), []) == 2
    assert "truncated" in assert_one_line_error(caplog, capsys, "/data/f0.fits")


@pytest.mark.parametrize("main, argv, fragment", [
    (dark_run.main, ["--mode", "fit_1d", "--output-dir", "o"], "invalid choice: 'fit_1d'"),
    (flat_run.main, ["--mode", "bogus", "--output-dir", "o"], "invalid choice: 'bogus'"),
    (bias_run.main, ["--output-dir", "o"], "required: --basepath"),
])
def test_usage_error_is_one_line(main, argv, fragment, capsys):
    """A wrong mode name or a missing option: one line naming it and --help, exit 2; argparse
    printed the whole usage block first (28-40 lines for the pipelines; qamodes review)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert fragment in err and err.rstrip().endswith("--help)") and "usage:" not in err


def test_help_shows_no_empty_default(capsys):
    """'--basepath ... (default: )' for options whose default is the empty string."""
    for main in (dark_run.main, flat_run.main, bias_run.main):
        with pytest.raises(SystemExit):
            main(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: )" not in text and "--output-dir" in text
