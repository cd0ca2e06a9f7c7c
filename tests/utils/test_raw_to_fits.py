"""Raw-to-FITS conversion (utils.raw_to_fits) on simulated campaigns."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

import utils.io.conversion as r2f
from utils.io.conversion import ConversionSettings, convert_sections
from utils.io.discovery import STANDARD_SECTIONS, campaign_sections, find_fits
from utils.io.fitsio import is_complete_fits
from utils.raw_to_fits import main
from utils.sim import load_campaign, simulate_standard

REPO = Path(__file__).resolve().parents[2]


# --- helpers ------------------------------------------------------------------------------------

def sections_of(root) -> list[str]:
    """BIAS DARK FLAT positional arguments of a standard campaign."""
    return [str(Path(root) / STANDARD_SECTIONS[cal]) for cal in ("BIAS", "DARK", "FLAT")]


def standard_sections(root) -> dict[str, str]:
    return dict(zip(("BIAS", "DARK", "FLAT"), sections_of(root)))


def fits_path(raw: Path) -> Path:
    """Where the converter writes the FITS of a raw file."""
    return raw.parent.parent / "fits" / (raw.stem + ".fits")


def raw_of(campaign, record) -> Path:
    return campaign.path(record)


def expected_size(campaign) -> int:
    return campaign.width * campaign.height * 2


def good_records(campaign):
    """Records whose raw file has the right size (a FITS is expected)."""
    return [r for r in campaign.records
            if raw_of(campaign, r).stat().st_size == expected_size(campaign)]


def read_index(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"PATH": str, "NOTES": str, "REASON": str},
                       keep_default_na=False, na_values=[""])


def raw_pixels(campaign, record) -> np.ndarray:
    return np.fromfile(raw_of(campaign, record), dtype="<u2").reshape(campaign.height,
                                                                     campaign.width)


def iso(stamp: float) -> str:
    moment = dt.datetime.fromtimestamp(stamp, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def without_date_card(data: bytes) -> bytes:
    """A FITS file's bytes less its DATE card (the time it was written)."""
    cards = [data[i:i + 80] for i in range(0, data.index(b"END" + b" " * 77) + 80, 80)]
    dates = [i for i, card in enumerate(cards) if card.startswith(b"DATE    = ")]
    assert len(dates) == 1
    return data[:dates[0] * 80] + data[dates[0] * 80 + 80:]


def header_without_date(path) -> list[tuple]:
    header = fits.getheader(path)
    return [(c.keyword, c.value, c.comment) for c in header.cards if c.keyword != "DATE"]


def raw_inputs(checksums, root) -> dict[str, str]:
    """Checksums of every raw frame, config and log (everything but converter outputs)."""
    return {k: v for k, v in checksums(root).items()
            if "/fits/" not in f"/{k}" and not k.endswith("fits_index.csv")}


def assert_complete_frame(campaign, record, fitsverify=None):
    """The FITS of ``record`` opens, has the whole frame equal to the raw file, and verifies."""
    path = fits_path(raw_of(campaign, record))
    assert is_complete_fits(path), path
    with fits.open(path) as hdul:
        data = hdul[0].data
        assert data.dtype == np.uint16
        np.testing.assert_array_equal(data, raw_pixels(campaign, record))
    if fitsverify is not None:
        errors, output = fitsverify(path)
        assert errors == 0, output


# --- standard campaign ---------------------------------------------------------------------------

def test_every_frame_converted_exactly_once(converted_standard):
    campaign, report = converted_standard
    raws = sorted(campaign.root.rglob("*.raw"))
    wrong = [p for p in raws if p.stat().st_size != expected_size(campaign)]
    assert len(raws) == len(campaign.records)
    assert len(wrong) == 1                                   # the planted truncated file
    produced = find_fits(campaign.root)
    assert len(produced) == len(raws) - len(wrong)
    assert sorted(produced) == sorted(fits_path(p) for p in raws if p not in wrong)

    index = read_index(report.index_path)
    assert report.index_path == campaign.root / "fits_index.csv"
    assert len(index) == len(raws)
    assert index["RAWPATH"].is_unique
    written = index["PATH"].dropna()
    assert written.is_unique and len(written) == len(produced)
    assert sorted(campaign.root / p for p in index["RAWPATH"]) == raws
    assert (index["STATUS"] == "converted").sum() == len(produced)
    assert report.count("converted") == len(produced)
    assert set(index["CALTYPE"]) == {"BIAS", "DARK", "FLAT"}
    for cal, kind in (("BIAS", "bias"), ("DARK", "dark"), ("FLAT", "flat")):
        assert (index["CALTYPE"] == cal).sum() == len(campaign.select(kind=kind))


def test_truncated_raw_rejected_with_reason(converted_standard):
    campaign, _ = converted_standard
    (record,) = campaign.select(defect="truncated")
    raw = raw_of(campaign, record)
    assert not fits_path(raw).exists()
    index = read_index(campaign.root / "fits_index.csv")
    row = index[index["RAWPATH"] == raw.relative_to(campaign.root).as_posix()].iloc[0]
    assert row["STATUS"] == "rejected"
    assert pd.isna(row["PATH"])
    assert f"size {raw.stat().st_size} bytes, expected {expected_size(campaign)}" in row["REASON"]
    assert (index["STATUS"] == "rejected").sum() == 1


def test_headers_and_units(converted_standard):
    campaign, _ = converted_standard
    records = [r for r in campaign.records if r.defect != "truncated"]
    for record in records:
        raw = raw_of(campaign, record)
        header = fits.getheader(fits_path(raw))
        where = record.path
        assert header["CALTYPE"] == record.kind.upper() == header["IMAGETYP"], where
        assert header["FRAMENUM"] == record.frame, where
        assert header["EXPTIME"] == pytest.approx(record.exposure, rel=1e-9), where  # us -> s
        assert header["EXPSRC"] == "log", where
        assert header["REXPTIME"] == pytest.approx(record.real_exposure, rel=1e-9), where
        assert header["TEMP"] == pytest.approx(record.temperature, abs=1e-9), where
        assert header["TEMPSRC"] == "log", where
        assert header["FILETEMP"] == record.setpoint, where
        assert header["PATHTEMP"] == record.setpoint, where      # innermost T folder
        assert header["BUNIT"] == "adu", where
        assert header["ADCBITS"] == 12 and header["ADUSCALE"] == 16, where
        assert header["SATLEVEL"] == 65520.0, where
        # the index's statistics, counted against that level (read back in tests/utils/test_index)
        assert header["FRSATLEV"] == 65520.0, where
        assert header["FRNPIX"] == campaign.width * campaign.height, where
        assert header["DATE-OBS"] == iso(record.timestamp), where
        assert header["TIMESTMP"] == pytest.approx(record.timestamp, abs=1e-6), where
        assert header["RAWFILE"] == raw.name, where
        assert header["RAWSIZE"] == raw.stat().st_size == expected_size(campaign), where
        assert header["RAWDTYPE"] == "uint16le", where
        assert header["PRODUCT"] == "FRAME", where
        assert header["BZERO"] == 32768 and header["BITPIX"] == 16, where
        assert (header["NAXIS1"], header["NAXIS2"]) == (campaign.width, campaign.height), where
        assert header["GAIN"] == 100, where
        assert header["HIERARCH BIT_DEPTH"] == 16, where        # never truncated to BIT_DEPT
        assert "BIT_DEPT" not in header, where


def test_nested_decoy_folder_gives_innermost_temperature(converted_standard):
    campaign, _ = converted_standard
    nested = [r for r in campaign.records if "/T20/T0/" in r.path and r.defect != "truncated"]
    assert nested
    for record in nested:
        header = fits.getheader(fits_path(raw_of(campaign, record)))
        assert header["PATHTEMP"] == 0.0
        assert header["PATHEXP"] == 0.5
        assert abs(header["TEMP"]) < 2.0                       # 0 degC, not the decoy 20


def test_ccdtemp_alias_column_gives_temp(converted_standard):
    campaign, _ = converted_standard
    (attempt,) = [a for a in campaign.attempts if a.temperature_column == "CCDTemp"]
    records = [r for r in campaign.records if r.attempt == attempt.path]
    assert records
    for record in records:
        header = fits.getheader(fits_path(raw_of(campaign, record)))
        assert header["TEMPSRC"] == "log"
        assert header["TEMP"] == pytest.approx(record.temperature, abs=1e-9)
        assert header["TEMP"] != header["FILETEMP"]            # log value, not the set point


def test_semicolon_log_is_read(converted_standard):
    campaign, _ = converted_standard
    (attempt,) = [a for a in campaign.attempts if a.delimiter == ";"]
    for record in [r for r in campaign.records if r.attempt == attempt.path]:
        header = fits.getheader(fits_path(raw_of(campaign, record)))
        assert header["TEMPSRC"] == "log" and header["EXPSRC"] == "log"
        assert header["TEMP"] == pytest.approx(record.temperature, abs=1e-9)
        assert header["EQTEMP"] == pytest.approx(22.0, abs=1.0)


def test_attempt_less_folder_converted(converted_standard):
    campaign, _ = converted_standard
    attempt = next(a for a in campaign.attempts if not Path(a.path).name.startswith("attempt"))
    for record in [r for r in campaign.records if r.attempt == attempt.path]:
        header = fits.getheader(fits_path(raw_of(campaign, record)))
        assert header["ATTEMPT"] == Path(attempt.path).relative_to(
            Path(attempt.path).parts[0]).as_posix()


def test_pixel_values_identical_to_raw(converted_standard):
    campaign, _ = converted_standard
    for record in good_records(campaign):
        assert_complete_frame(campaign, record)
    (zero,) = campaign.select(defect="all_zero")
    assert not fits.getdata(fits_path(raw_of(campaign, zero))).any()


def test_fitsverify_sample(converted_standard, converted_irradiation, fitsverify):
    sample = []
    for campaign in (converted_standard[0], converted_irradiation[0]):
        seen = set()
        for record in good_records(campaign):
            if record.attempt not in seen:                   # one frame per attempt
                seen.add(record.attempt)
                sample.append(fits_path(raw_of(campaign, record)))
    assert len(sample) >= 30
    for path in sample:
        errors, output = fitsverify(path)
        assert errors == 0, output


def test_raw_inputs_untouched(standard_copy, checksums):
    root = standard_copy.root
    before = checksums(root)
    assert any(k.endswith("temperatureLog.csv") for k in before)
    assert any(k.endswith(("configFile.txt", "config.txt")) for k in before)
    convert_sections(standard_sections(root), ConversionSettings())
    after = checksums(root)
    assert {k: after[k] for k in before} == before
    new = set(after) - set(before)
    assert new and all("/fits/" in k or k == "fits_index.csv" for k in new)


def test_rerun_converts_nothing_new_and_overwrite_redoes(standard_copy):
    sections = standard_sections(standard_copy.root)
    first = convert_sections(sections, ConversionSettings())
    n = first.count("converted")
    assert n == len(good_records(standard_copy))
    outputs = sorted(find_fits(standard_copy.root))
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outputs}

    second = convert_sections(sections, ConversionSettings())
    assert second.count("converted") == 0
    assert second.count("existing") == n
    assert second.count("rejected") == 1
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outputs} == stamps
    statuses = read_index(second.index_path)["STATUS"].value_counts().to_dict()
    assert statuses == {"existing": n, "rejected": 1}

    third = convert_sections(sections, ConversionSettings(overwrite=True))
    assert third.count("converted") == n and third.count("existing") == 0
    assert all(p.stat().st_ino != stamps[p][0] for p in outputs)   # rewritten (atomic replace)
    assert sorted(find_fits(standard_copy.root)) == outputs


@pytest.mark.parametrize("keep", ["header_part", "header_only", "odd_size"])
def test_incomplete_fits_is_redone(standard_copy, keep):
    sections = standard_sections(standard_copy.root)
    convert_sections(sections, ConversionSettings())
    record = good_records(standard_copy)[5]
    target = fits_path(raw_of(standard_copy, record))
    content = target.read_bytes()
    cut = {"header_part": 2880, "header_only": len(content) - 2880,
           "odd_size": len(content) - 7}[keep]
    target.write_bytes(content[:cut])                       # e.g. a half copy by hand
    assert not is_complete_fits(target)
    report = convert_sections(sections, ConversionSettings())
    assert report.count("converted") == 1
    assert report.count("existing") == len(good_records(standard_copy)) - 1
    assert_complete_frame(standard_copy, record)


def test_interrupted_run_then_rerun_is_complete(standard_copy, monkeypatch, fitsverify):
    sections = standard_sections(standard_copy.root)
    real = r2f.write_frame_fits
    done = []

    def crashing(path, data, header):
        if len(done) == 10:
            # the process dies in the middle of a write: a partial temporary file stays behind
            path = Path(path)
            partial = path.parent / f".{path.name}.crash1.tmp"
            partial.write_bytes(header[:1000])
            raise RuntimeError("simulated crash")
        real(path, data, header)
        done.append(path)

    monkeypatch.setattr(r2f, "write_frame_fits", crashing)
    # one thread: the exception stands for the whole process dying (a second thread would
    # finish the frame it is writing)
    monkeypatch.setattr(r2f, "local_threads", lambda: 1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert_sections(sections, ConversionSettings())
    leftovers = list(standard_copy.root.rglob(".*.tmp"))
    assert len(leftovers) == 1
    produced = find_fits(standard_copy.root)
    assert len(produced) == 10                               # the temporary is not a frame
    assert not (standard_copy.root / "fits_index.csv").exists()

    monkeypatch.setattr(r2f, "write_frame_fits", real)
    report = convert_sections(sections, ConversionSettings())
    good = good_records(standard_copy)
    assert report.count("existing") == 10
    assert report.count("converted") == len(good) - 10
    assert not list(standard_copy.root.rglob("*.tmp"))
    assert len(find_fits(standard_copy.root)) == len(good)
    for i, record in enumerate(good):
        assert_complete_frame(standard_copy, record, fitsverify if i % 10 == 0 else None)


def test_a_failed_frame_stops_the_threads(standard_copy, monkeypatch):
    """On two threads, a frame that raises stops the frames not yet begun (the frame the
    other thread is at is finished, complete)."""
    real = r2f.write_frame_fits
    done, crashed = [], []

    def crashing(path, data, header):
        if len(done) >= 3 and not crashed:   # not == 3: the two threads may pass 3 together
            crashed.append(path)
            raise RuntimeError("simulated crash")
        real(path, data, header)
        done.append(path)

    monkeypatch.setattr(r2f, "write_frame_fits", crashing)
    monkeypatch.setattr(r2f, "local_threads", lambda: 2)
    dark = {"DARK": standard_sections(standard_copy.root)["DARK"]}
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert_sections(dark, ConversionSettings())
    darks = list(Path(dark["DARK"]).rglob("frames/*.raw"))
    assert 3 <= len(find_fits(standard_copy.root)) <= 6 < len(darks) - 4
    assert not list(standard_copy.root.rglob("*.tmp"))


def test_sigkill_midway_then_rerun(tmp_path, fitsverify):
    """A converter killed with SIGKILL leaves only complete FITS; a re-run finishes the set."""
    campaign = simulate_standard(tmp_path / "big", seed=5, width=512, height=512, frames=6)
    total = len(good_records(campaign))
    fits_dirs = sorted({fits_path(raw_of(campaign, r)).parent for r in campaign.records})

    def count():
        n = 0
        for folder in fits_dirs:
            try:
                n += sum(1 for e in os.scandir(folder)
                         if e.name.endswith(".fits") and not e.name.startswith("."))
            except FileNotFoundError:
                pass
        return n

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                                    os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "utils.raw_to_fits",
                             *sections_of(campaign.root), "--no-progress"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if count() >= 3:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "converter finished before it could be killed"

    present = find_fits(campaign.root)
    assert 3 <= len(present) < total
    assert not (campaign.root / "fits_index.csv").exists()
    by_fits = {fits_path(raw_of(campaign, r)): r for r in good_records(campaign)}
    for path in present:
        assert_complete_frame(campaign, by_fits[path], fitsverify)

    # whatever the kill left, plant the leftover of a write cut short as well
    first = present[0]
    stale = first.parent / f".{first.name}.killed.tmp"
    stale.write_bytes(first.read_bytes()[: 2880 * 3])
    assert find_fits(campaign.root) == present               # a temporary is never a frame

    assert main([*sections_of(campaign.root), "--no-progress"]) == 0
    assert not list(campaign.root.rglob("*.tmp"))
    assert len(find_fits(campaign.root)) == total
    for record in good_records(campaign):
        assert_complete_frame(campaign, record, fitsverify)
    statuses = read_index(campaign.root / "fits_index.csv")["STATUS"].value_counts().to_dict()
    assert statuses == {"existing": len(present), "converted": total - len(present),
                        "rejected": 1}


def test_workers_two_gives_same_files(standard_copy, tmp_path):
    other = load_campaign(shutil.copytree(standard_copy.root, tmp_path / "parallel"))
    one = convert_sections(standard_sections(standard_copy.root), ConversionSettings(workers=1))
    two = convert_sections(standard_sections(other.root), ConversionSettings(workers=2))
    assert one.count("converted") == two.count("converted") > 0
    a, b = find_fits(standard_copy.root), find_fits(other.root)
    assert [p.relative_to(standard_copy.root) for p in a] == [p.relative_to(other.root) for p in b]
    for pa, pb in zip(a, b):
        assert header_without_date(pa) == header_without_date(pb), pa
        np.testing.assert_array_equal(fits.getdata(pa), fits.getdata(pb))
        assert pa.stat().st_size == pb.stat().st_size
    assert (standard_copy.root / "fits_index.csv").read_bytes() == \
        (other.root / "fits_index.csv").read_bytes()


def test_threads_give_the_rows_and_files_of_one_thread(standard_copy, tmp_path, monkeypatch):
    """workers=1 converts on two threads (where there are two cores): same listing (its rows
    in the same order) and the same files as one frame at a time."""
    other = load_campaign(shutil.copytree(standard_copy.root, tmp_path / "threads"))
    monkeypatch.setattr(r2f, "local_threads", lambda: 1)
    one = convert_sections(standard_sections(standard_copy.root), ConversionSettings())
    monkeypatch.setattr(r2f, "local_threads", lambda: 2)
    two = convert_sections(standard_sections(other.root), ConversionSettings())
    assert one.count("converted") == two.count("converted") > 0 and one.count("rejected")
    strip = [{k: v for k, v in r.items() if k not in ("PATH", "RAWPATH")} for r in one.rows]
    assert strip == [{k: v for k, v in r.items() if k not in ("PATH", "RAWPATH")}
                     for r in two.rows]
    a, b = find_fits(standard_copy.root), find_fits(other.root)
    assert [p.relative_to(standard_copy.root) for p in a] == [p.relative_to(other.root) for p in b]
    for pa, pb in zip(a, b):
        assert without_date_card(pa.read_bytes()) == without_date_card(pb.read_bytes()), pa
    assert (standard_copy.root / "fits_index.csv").read_bytes() == \
        (other.root / "fits_index.csv").read_bytes()


def test_cli_main_returns_zero(standard_copy, caplog):
    with caplog.at_level(logging.INFO):
        assert main([*sections_of(standard_copy.root), "--no-progress"]) == 0
    n = len(good_records(standard_copy))
    assert any(f"{n} frames converted" in r.getMessage() for r in caplog.records)
    assert len(find_fits(standard_copy.root)) == n
    # snake_case alias and skip flags
    assert main([*sections_of(standard_copy.root), "--no-progress", "--search_depth", "6",
                 "--skip-flat"]) == 0


def test_cli_index_dir_option(standard_copy, tmp_path):
    out = tmp_path / "listing"
    assert main([*sections_of(standard_copy.root), "--no-progress", "--index-dir", str(out)]) == 0
    index = read_index(out / "fits_index.csv")
    assert not (standard_copy.root / "fits_index.csv").exists()
    assert all((out / p).is_file() for p in index["PATH"].dropna())


def test_cli_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "Example" in out and "--search-depth" in out and "--workers" in out


# --- irradiation and dose-directory campaigns ----------------------------------------------------

def test_irradiation_every_stage_converted(converted_irradiation):
    campaign, reports = converted_irradiation
    assert len(reports) == 4                                 # pre, 10kRads, 20kRads, post
    rows = [row for report in reports for row in report.rows]
    assert len(rows) == len(campaign.records)
    assert all(row["STATUS"] == "converted" for row in rows)
    assert len({row["PATH"] for row in rows}) == len(rows)
    assert len(find_fits(campaign.root)) == len(campaign.records)
    index_paths = sorted(str(r.index_path.relative_to(campaign.root)) for r in reports)
    assert index_paths == ["Irradiation/10kRads/fits_index.csv",
                           "Irradiation/20kRads/fits_index.csv",
                           "Postirradiation/fits_index.csv", "Preirradiation/fits_index.csv"]


def test_irradiation_headers(converted_irradiation):
    campaign, _ = converted_irradiation
    for record in campaign.records:
        header = fits.getheader(fits_path(raw_of(campaign, record)))
        assert header["CALTYPE"] == record.kind.upper()
        assert header["EXPTIME"] == pytest.approx(record.exposure, rel=1e-9)
        assert header["TEMP"] == pytest.approx(record.temperature, abs=1e-9)
        assert header["PATHTEMP"] == record.setpoint
        if record.stage == "radiating" and record.kind != "bias":   # radiationLog.csv
            assert header["DOSE"] == pytest.approx(record.dose, abs=1e-4)
            assert "RADLEVEL" in header
        else:
            assert "DOSE" not in header
        np.testing.assert_array_equal(fits.getdata(fits_path(raw_of(campaign, record))),
                                      raw_pixels(campaign, record))


def test_irradiation_inputs_untouched(irradiation_copy, checksums):
    before = checksums(irradiation_copy.root)
    for stage in campaign_sections(irradiation_copy.root, "irradiation"):
        convert_sections({c: str(p) for c, p in stage.sections.items()}, ConversionSettings())
    assert raw_inputs(checksums, irradiation_copy.root) == before
    assert len(find_fits(irradiation_copy.root)) == len(irradiation_copy.records)


def test_dosedirs_are_not_raw_campaigns(dosedirs_copy, checksums, caplog):
    """Dose directories hold FITS already: the converter refuses them cleanly (exit 2)."""
    root = dosedirs_copy.root
    before = checksums(root)
    folders = sorted(str(p) for p in root.glob("*kRads"))
    assert main([folders[0], folders[1], folders[1], "--skip-flat", "--no-progress"]) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "no attempts found" in errors[0].getMessage()
    assert checksums(root) == before


# --- command-line options checked by their effect ------------------------------------------------

def test_cli_byte_order_big_reads_swapped_samples(standard_copy):
    root = standard_copy.root
    reference = load_campaign(root)
    bias_raw = sorted((root / "TestSection1").rglob("*.raw"))
    originals = {p: np.fromfile(p, "<u2") for p in bias_raw}
    for p, data in originals.items():  # the same samples, written big-endian
        data.astype(">u2").tofile(p)
    assert main([*sections_of(root), "--skip-dark", "--skip-flat", "--byte-order", "big",
                 "--no-progress"]) == 0
    record = reference.select(kind="bias")[0]
    raw = raw_of(reference, record)
    with fits.open(fits_path(raw)) as hdul:
        assert hdul[0].header["RAWDTYPE"] == "uint16be"
        np.testing.assert_array_equal(hdul[0].data.ravel(), originals[raw])


def test_cli_skip_flags_leave_those_sections_alone(standard_copy):
    root = standard_copy.root
    assert main([*sections_of(root), "--skip-bias", "--skip-flat", "--no-progress"]) == 0
    assert not list((root / "TestSection1").rglob("*.fits"))
    assert not list((root / "TestSection3").rglob("*.fits"))
    assert list((root / "TestSection2").rglob("*.fits"))
    index = read_index(root / "fits_index.csv")
    assert set(index["CALTYPE"]) == {"DARK"}


def test_cli_skip_flag_keeps_the_skipped_sections_rows_of_the_listing(standard_copy):
    """A re-run with --skip-flat after a full conversion rewrote fits_index.csv with the bias
    and dark rows only: the flats (converted, their NOTES and rejected rows) vanished from the
    listing.  The skipped section's earlier rows are kept, with paths still relative to it."""
    root = standard_copy.root
    assert main([*sections_of(root), "--no-progress"]) == 0
    before = read_index(root / "fits_index.csv")
    assert main([*sections_of(root), "--skip-flat", "--no-progress"]) == 0
    after = read_index(root / "fits_index.csv")
    flats = before[before["CALTYPE"] == "FLAT"]
    assert len(flats) and len(after) == len(before)
    kept = after[after["CALTYPE"] == "FLAT"].set_index("RAWPATH")
    for _, row in flats.iterrows():
        assert kept.loc[row["RAWPATH"], "STATUS"] == row["STATUS"]
        assert str(kept.loc[row["RAWPATH"], "PATH"]) == str(row["PATH"])
        if isinstance(row["PATH"], str):
            assert (root / row["PATH"]).is_file()


def test_cli_overwrite_rewrites_every_frame(standard_copy):
    root = standard_copy.root
    assert main([*sections_of(root), "--skip-dark", "--skip-flat", "--no-progress"]) == 0
    outputs = sorted((root / "TestSection1").rglob("*.fits"))
    inodes = {p: p.stat().st_ino for p in outputs}
    assert main([*sections_of(root), "--skip-dark", "--skip-flat", "--no-progress"]) == 0
    assert {p: p.stat().st_ino for p in outputs} == inodes          # kept
    assert main([*sections_of(root), "--skip-dark", "--skip-flat", "--overwrite",
                 "--no-progress"]) == 0
    assert all(p.stat().st_ino != inodes[p] for p in outputs)      # rewritten


def test_rerun_converts_again_what_its_log_config_or_raw_file_changed(standard_copy):
    """A warning says 'fix the temperature log and re-convert'; a user who did and ran the
    converter (or run_calibration.py) again got fits_index.csv with the new temperature but
    kept the FITS with the old one (or none): frames whose FITS was complete were never
    converted again.  The FITS now records what it was made from (CNVHASH: the raw file's
    size and time, the config, the log's values); a frame whose inputs changed is
    converted again, the others are kept."""
    sections = standard_sections(standard_copy.root)
    first = convert_sections(sections, ConversionSettings())
    n = first.count("converted")

    def comma_log(record):
        log = raw_of(standard_copy, record).parent.parent / "temperatureLog.csv"
        return log.is_file() and log.read_text().startswith("FrameNum,") \
            and "Temperature," in log.read_text().splitlines()[0]
    record = next(r for r in good_records(standard_copy) if comma_log(r))
    raw = raw_of(standard_copy, record)
    target = fits_path(raw)
    frame = fits.getheader(target)["FRAMENUM"]
    log_path = raw.parent.parent / "temperatureLog.csv"
    log = pd.read_csv(log_path)
    log.loc[log["FrameNum"] == frame, "Temperature"] = 31.25   # the log fixed by hand
    log.to_csv(log_path, index=False)
    second = convert_sections(sections, ConversionSettings())
    assert second.count("converted") == 1 and second.count("existing") == n - 1
    assert fits.getheader(target)["TEMP"] == 31.25
    rows = read_index(second.index_path)
    assert rows.loc[rows["PATH"].str.endswith(target.name), "TEMP"].tolist() == [31.25]

    other = raw_of(standard_copy, next(r for r in good_records(standard_copy)
                                       if raw_of(standard_copy, r).parent != raw.parent))
    os.utime(other, ns=(other.stat().st_atime_ns, other.stat().st_mtime_ns + 10**9))  # re-copied
    third = convert_sections(sections, ConversionSettings())
    assert third.count("converted") == 1
    assert [r["RAWPATH"] for r in third.rows if r["STATUS"] == "converted"] == [str(other)]
    assert convert_sections(sections, ConversionSettings()).count("converted") == 0


def test_log_without_a_temperature_column_is_said(standard_copy, caplog):
    """A temperatureLog.csv whose temperature column was lost (a spreadsheet export of some
    columns) gave every frame of the attempt its set point from the file name, with no word
    about it but TEMPSRC=filename in the listing.  One warning now names the log."""
    record = next(r for r in good_records(standard_copy)
                  if (raw_of(standard_copy, r).parent.parent / "temperatureLog.csv")
                  .read_text().startswith("FrameNum,"))
    log_path = raw_of(standard_copy, record).parent.parent / "temperatureLog.csv"
    log = pd.read_csv(log_path)
    log.drop(columns=[c for c in log.columns if c == "Temperature"]).to_csv(log_path,
                                                                            index=False)
    caplog.set_level(logging.WARNING, logger="utils.io.conversion")
    report = convert_sections(standard_sections(standard_copy.root), ConversionSettings())
    said = [r.getMessage() for r in caplog.records if "no sensor temperature column" in
            r.getMessage()]
    assert len(said) == 1 and str(log_path) in said[0] and "\n" not in said[0]
    rows = [r for r in report.rows if r["RAWPATH"] == str(raw_of(standard_copy, record))]
    assert rows[0]["TEMPSRC"] == "filename" and math.isfinite(rows[0]["TEMP"])


def test_fits_index_paths_resolved_per_folder_are_resolved_per_file(tmp_path, monkeypatch):
    """fits_index.csv's relative paths, resolved once per folder (a linked file by itself):
    the same as resolving every path (linked files and folders, '..', a bare name, a
    missing file, an empty path)."""
    import os
    from pathlib import Path

    from utils.io.conversion import write_fits_index

    (tmp_path / "a" / "frames").mkdir(parents=True)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.raw").write_bytes(b"1")
    (tmp_path / "a" / "frames" / "f.raw").write_bytes(b"1")
    os.symlink(tmp_path / "real" / "x.raw", tmp_path / "a" / "frames" / "link.raw")
    os.symlink(tmp_path / "real", tmp_path / "linked_dir")
    os.symlink(tmp_path / "a", tmp_path / "linked_a")
    monkeypatch.chdir(tmp_path / "a" / "frames")
    frames = tmp_path / "a" / "frames"
    paths = [str(frames / "f.raw"), str(frames / "link.raw"),
             str(tmp_path / "linked_dir" / "x.raw"), str(frames / ".." / "frames" / "f.raw"),
             str(tmp_path / "linked_a" / "frames" / "f.raw"), "", str(frames / "missing.raw"),
             "f.raw", "link.raw"]
    out = tmp_path / "index" / "fits_index.csv"
    out.parent.mkdir()
    write_fits_index([{"PATH": p, "RAWPATH": p} for p in paths], out)
    table = pd.read_csv(out, keep_default_na=False)
    base = out.parent.resolve()
    want = [os.path.relpath(Path(p).resolve(), base) if p else "" for p in paths]
    assert table["PATH"].tolist() == want and table["RAWPATH"].tolist() == want
