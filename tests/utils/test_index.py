"""The dataset index (utils.io.index, utils.index_dataset) on converted simulated campaigns."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import utils.io.fitsio as fitsio_module
import utils.io.index as index_module
from utils import headers as kw
from utils.index_dataset import main
from utils.io.index import (
    INDEX_COLUMNS,
    DatasetIndex,
    IndexSettings,
    build_index,
    discover_sections,
    infer_dose,
    infer_stage,
    infer_vacuum,
    parse_stage,
    section_type,
    write_index,
)

FIRST_SEVEN = ["PATH", "CALTYPE", "STAGE", "VACUUM", "TEMP", "ZEROFRACTION", "BADFITS"]
NEXT_FIVE = ["EXPTIME", "FRAMENUM", "TIMESTAMP", "DOSE", "ATTEMPT"]


def fits_of(campaign, record) -> Path:
    """FITS written by the converter for a raw record (or the record itself for FITS layouts)."""
    path = campaign.path(record)
    if path.suffix == ".fits":
        return path
    return path.parent.parent / "fits" / (path.stem + ".fits")


def by_path(table: pd.DataFrame) -> dict[str, dict]:
    return {str(Path(p).resolve()): row for p, row in zip(table["PATH"], table.to_dict("records"))}


def converted_records(campaign):
    return [r for r in campaign.records if r.defect != "truncated"]


@pytest.fixture(scope="module")
def standard_table(converted_standard):
    campaign, _ = converted_standard
    return campaign, build_index(discover=[campaign.root])


@pytest.fixture(scope="module")
def irradiation_table(converted_irradiation):
    campaign, _ = converted_irradiation
    return campaign, build_index(discover=[campaign.root])


# --- columns and the standard campaign ----------------------------------------------------------

def test_columns_order(standard_table, tmp_path):
    _, table = standard_table
    assert list(table.columns[:7]) == FIRST_SEVEN
    assert list(table.columns[7:12]) == NEXT_FIVE
    assert list(table.columns) == INDEX_COLUMNS
    out = write_index(table, tmp_path / "index.csv")
    assert list(pd.read_csv(out, nrows=0).columns) == INDEX_COLUMNS


def test_discover_standard_sections(converted_standard):
    campaign, _ = converted_standard
    found = discover_sections(campaign.root)
    assert [(cal, p.name) for cal, p in found] == [("BIAS", "TestSection1"),
                                                   ("DARK", "TestSection2"),
                                                   ("FLAT", "TestSection3")]


def test_standard_index_rows_match_truth(standard_table):
    campaign, table = standard_table
    records = converted_records(campaign)
    assert len(table) == len(records)
    assert table["PATH"].is_unique
    rows = by_path(table)
    for record in records:
        row = rows[str(fits_of(campaign, record).resolve())]
        assert row["CALTYPE"] == record.kind.upper()
        assert row["TEMP"] == pytest.approx(record.temperature, abs=1e-9)
        assert row["EXPTIME"] == pytest.approx(record.exposure, rel=1e-9)
        assert row["FRAMENUM"] == record.frame
        assert row["TIMESTAMP"] == pytest.approx(record.timestamp, abs=1e-6)
        assert row["STAGE"] == ""
        assert math.isnan(row["DOSE"])
        assert (row["NAXIS1"], row["NAXIS2"]) == (campaign.width, campaign.height)
        assert row["ADUSCALE"] == 16
        assert Path(row["PATH"]).is_absolute()


def test_zero_frames_flagged_badfits(standard_table):
    campaign, table = standard_table
    rows = by_path(table)
    (zero,) = campaign.select(defect="all_zero")
    (dead,) = campaign.select(defect="dead_region")
    z = rows[str(fits_of(campaign, zero).resolve())]
    d = rows[str(fits_of(campaign, dead).resolve())]
    assert bool(z["BADFITS"])
    assert z["ZEROFRACTION"] == 1.0
    assert "zero pixels" in z["REASON"] and "100.00%" in z["REASON"]
    assert bool(d["BADFITS"])
    assert 0.01 < d["ZEROFRACTION"] < 0.2                    # about 5 % of the frame
    assert "zero pixels" in d["REASON"]
    clean = table[~table["PATH"].map(lambda p: str(Path(p).resolve())).isin(
        [str(fits_of(campaign, zero).resolve()), str(fits_of(campaign, dead).resolve())])]
    assert not clean["BADFITS"].any()
    assert (clean["REASON"].fillna("") == "").all()
    assert (clean["ZEROFRACTION"] <= 0.01).all()


def test_zero_fraction_limit_setting(converted_standard):
    campaign, _ = converted_standard
    table = build_index([("DARK", campaign.root / "TestSection2"),
                         ("FLAT", campaign.root / "TestSection3")],
                        settings=IndexSettings(zero_fraction_limit=0.5))
    assert table["BADFITS"].sum() == 1                      # the dead region (5 %) passes now


def test_statistics_columns(standard_table):
    _, table = standard_table
    good = table[~table["BADFITS"]]
    assert (good["P16"] <= good["MEDIAN"]).all() and (good["MEDIAN"] <= good["P84"]).all()
    assert (good["STD"] > 0).all()
    flats = good[good["CALTYPE"] == "FLAT"]
    biases = good[good["CALTYPE"] == "BIAS"]
    assert flats["MEAN"].min() > biases["MEAN"].max()       # illuminated frames are brighter


def test_index_never_modifies_inputs(converted_standard_copy, tmp_path, checksums):
    root = converted_standard_copy.root
    before = checksums(root)
    out = tmp_path / "out" / "index.csv"
    assert main(["--discover", str(root), str(out), "--no-progress"]) == 0
    assert checksums(root) == before
    assert out.is_file()


def test_index_csv_inside_the_campaign_is_not_a_frame(converted_standard_copy):
    root = converted_standard_copy.root
    out = root / "index.csv"
    assert main(["--discover", str(root), str(out), "--no-progress"]) == 0
    assert main(["--discover", str(root), str(out), "--no-progress"]) == 0
    table = pd.read_csv(out)
    assert len(table) == len(converted_records(converted_standard_copy))
    assert table["PATH"].str.endswith(".fits").all()


def test_legacy_positional_form(converted_standard_copy, tmp_path):
    root = converted_standard_copy.root
    legacy, modern = tmp_path / "legacy.csv", tmp_path / "modern.csv"
    sections = [str(root / n) for n in ("TestSection1", "TestSection2", "TestSection3")]
    assert main([*sections, str(legacy), "--no-progress"]) == 0
    assert main(["--bias", sections[0], "--dark", sections[1], "--flat", sections[2],
                 str(modern), "--no-progress"]) == 0
    table = pd.read_csv(legacy)
    section = table["PATH"].str.extract(r"(TestSection\d)/", expand=False)
    assert section.notna().all()
    assert dict(zip(["TestSection1", "TestSection2", "TestSection3"], ["BIAS", "DARK", "FLAT"])) \
        == dict(zip(section, table["CALTYPE"]))
    assert len(table) == len(converted_records(converted_standard_copy))
    pd.testing.assert_frame_equal(table, pd.read_csv(modern))


def test_wrong_number_of_positionals(converted_standard, tmp_path):
    root = converted_standard[0].root
    assert main([str(root / "TestSection1"), str(root / "TestSection2"),
                 str(tmp_path / "x.csv"), "--no-progress"]) == 2


def test_explicit_section_type_wins_over_header(converted_standard):
    campaign, _ = converted_standard
    table = build_index([("FLAT", campaign.root / "TestSection1")])
    assert set(table["CALTYPE"]) == {"FLAT"}


# --- irradiation campaign -----------------------------------------------------------------------

def test_discover_irradiation_sections(converted_irradiation):
    campaign, _ = converted_irradiation
    found = discover_sections(campaign.root)
    assert len(found) == 12                                  # 4 stages x Bias/Darks/Flats
    names = {(cal, p.name) for cal, p in found}
    assert names == {("BIAS", "Bias"), ("DARK", "Darks"), ("FLAT", "Flats")}
    stages = sorted(p.parent.name for cal, p in found if cal == "BIAS")
    assert stages == ["10kRads", "20kRads", "Postirradiation", "Preirradiation"]


def test_irradiation_stage_and_dose(irradiation_table):
    campaign, table = irradiation_table
    assert len(table) == len(campaign.records)
    rows = by_path(table)
    for record in campaign.records:
        row = rows[str(fits_of(campaign, record).resolve())]
        assert row["STAGE"] == record.stage
        assert row["CALTYPE"] == record.kind.upper()
        if record.stage == "pre":
            assert row["DOSE"] == 0.0
        elif record.stage == "radiating":
            # DOSE is the dose step (the <dose>kRads folder), the grouping key ...
            assert row["DOSE"] == float(record.step.replace("kRads", ""))
            if record.kind != "bias":
                # ... and FRAMEDOSE the accumulated dose the log gives each frame
                assert row["FRAMEDOSE"] == pytest.approx(record.dose, abs=1e-4)
    assert set(table["STAGE"]) == {"pre", "radiating", "post"}
    assert not table["BADFITS"].any()


def test_forced_stage_and_vacuum(converted_irradiation, tmp_path):
    campaign, _ = converted_irradiation
    out = tmp_path / "forced.csv"
    assert main(["--discover", str(campaign.root), str(out), "--stage", "during",
                 "--vacuum", "air", "--no-progress"]) == 0
    table = pd.read_csv(out)
    assert set(table["STAGE"]) == {"radiating"}
    assert set(table["VACUUM"]) == {"air"}
    assert main(["--discover", str(campaign.root), str(out), "--stage", "sideways",
                 "--no-progress"]) == 2


def test_vacuum_inferred_from_folder(converted_standard, tmp_path):
    campaign, _ = converted_standard
    tvac = tmp_path / "TVAC_campaign"
    shutil.copytree(campaign.root / "TestSection1", tvac / "TestSection1")
    shutil.copytree(campaign.root / "TestSection2", tmp_path / "no_vac" / "TestSection2")
    table = build_index(discover=[tvac, tmp_path / "no_vac"])
    vacuum = dict(zip(table["CALTYPE"], table["VACUUM"]))
    assert vacuum == {"BIAS": "vacuum", "DARK": "air"}


# --- inference rules ----------------------------------------------------------------------------

@pytest.mark.parametrize("path, stage", [
    ("/c/Preirradiation/Bias/T20/attempt0/fits/f0.fits", "pre"),
    ("/c/Irradiation/10kRads/Darks/T20/1s/attempt0/fits/f0.fits", "radiating"),
    ("/c/Postirradiation/Flats/T20/0.2s/attempt0/fits/f0.fits", "post"),
    ("/c/compressed/Bias/f0.fits", ""),
    ("/c/prepared/postprocessing/Bias/f0.fits", ""),
    ("/c/10kRads/fits/f0.fits", "radiating"),
    ("/post/Preirradiation/Bias/f0.fits", "pre"),             # deepest word wins
    ("/c/pre-rad/Bias/f0.fits", "pre"),
    ("/c/TestSection1/T0/attempt0/fits/f0.fits", ""),
])
def test_infer_stage(path, stage):
    assert infer_stage(path) == stage


@pytest.mark.parametrize("path, vacuum", [
    ("/c/TVAC/Bias/f.fits", "vacuum"), ("/c/run_vacuum_2/f.fits", "vacuum"),
    ("/c/no_vac/f.fits", "air"), ("/c/noVac/f.fits", "air"), ("/c/in-air/f.fits", "air"),
    ("/c/evacuated/f.fits", ""), ("/c/vacation/f.fits", ""), ("/c/Bias/f.fits", ""),
    ("/vacuum/air/f.fits", "air"),
])
def test_infer_vacuum(path, vacuum):
    assert infer_vacuum(path) == vacuum


def test_infer_dose_and_section_type():
    assert infer_dose("/c/Irradiation/20kRads/Darks/T20/fits/f.fits") == 20.0
    assert infer_dose("/c/5kRads/x/2.5kR/f.fits") == 2.5
    assert math.isnan(infer_dose("/c/Preirradiation/Bias/f.fits"))
    assert math.isnan(infer_dose("/c/20kRads.fits"))       # the file name is not a folder
    assert [section_type(n) for n in ("Bias", "DARKS", "flats", "TestSection2", "T20")] == \
        ["BIAS", "DARK", "FLAT", "DARK", ""]
    assert parse_stage("Post") == "post" and parse_stage("during") == "radiating"
    with pytest.raises(ValueError):
        parse_stage("later")


def test_folder_labels_are_the_frames():
    """The per-folder labels the index caches are infer_stage/vacuum/dose of each frame."""
    paths = ["/c/Preirradiation/Bias/T20/attempt0/fits/f0.fits", "/c/TVAC/10kRads/f.fits",
             "/c/no_vac/Postirradiation/20kRads/x.fits", "/c/20kRads.fits", "rel/5kRads/f.fits",
             "f.fits", "/vacuum/air/pre/f.fits"]
    for path in paths:
        stage, vacuum, dose = index_module._folder_labels(Path(path).parent)
        assert (stage, vacuum) == (infer_stage(path), infer_vacuum(path)), path
        assert dose == infer_dose(path) or math.isnan(dose) and math.isnan(infer_dose(path))


def test_resolved_paths_are_path_resolve(tmp_path, monkeypatch):
    """The index resolves each folder once: the same paths as Path.resolve, symlinked files
    and folders, relative paths, '..' and missing files included."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "real" / "sub" / "f.fits").write_bytes(b"x")
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "sub" / "g.fits").symlink_to(tmp_path / "real" / "sub" / "f.fits")
    (tmp_path / "real" / "up.fits").symlink_to(Path("sub") / "f.fits")
    monkeypatch.chdir(tmp_path / "real")
    paths = [tmp_path / "real" / "sub" / "f.fits", tmp_path / "linked" / "sub" / "f.fits",
             tmp_path / "linked" / "sub" / "g.fits", tmp_path / "linked" / "up.fits",
             Path("sub/f.fits"), Path("sub/../sub/g.fits"), Path("f.fits"), Path(".."),
             tmp_path / "linked" / "sub" / "missing.fits", Path("sub") / ".." / "..",
             str(tmp_path / "linked" / "sub" / "f.fits")]
    assert index_module._resolved(paths) == [Path(p).resolve() for p in paths]


# --- dose directories ---------------------------------------------------------------------------

def test_dosedirs_types_from_headers(dosedirs_copy, tmp_path, checksums):
    root = dosedirs_copy.root
    before = checksums(root)
    out = tmp_path / "dd.csv"
    assert main(["--discover", str(root), str(out), "--no-progress"]) == 0
    assert checksums(root) == before
    table = DatasetIndex.from_csv(out).table
    assert len(table) == len(dosedirs_copy.records)
    rows = by_path(table)
    for record in dosedirs_copy.records:
        row = rows[str(dosedirs_copy.path(record).resolve())]
        assert row["CALTYPE"] == record.kind.upper()
        assert row["STAGE"] == "radiating"
        assert row["DOSE"] == float(record.step.replace("kRads", ""))
        assert row["TEMP"] == pytest.approx(record.temperature)
        assert row["EXPTIME"] == pytest.approx(record.exposure)
        assert row["FRAMENUM"] == record.frame
    assert not table["BADFITS"].any()


def test_unknown_type_falls_back_to_exposure(dosedirs_copy):
    from astropy.io import fits

    biases = [r for r in dosedirs_copy.records if r.kind == "bias"][:1]
    darks = [r for r in dosedirs_copy.records if r.kind == "dark"][:1]
    for record in biases + darks:
        with fits.open(dosedirs_copy.path(record), mode="update") as hdul:
            del hdul[0].header["IMAGETYP"]
    table = build_index(discover=[dosedirs_copy.root])
    rows = by_path(table)
    for record in biases + darks:
        assert rows[str(dosedirs_copy.path(record).resolve())]["CALTYPE"] == record.kind.upper()


# --- loading, filtering, re-use -----------------------------------------------------------------

def test_from_csv_resolves_relative_paths_and_filters(standard_table, tmp_path, monkeypatch):
    campaign, table = standard_table
    out = write_index(table, tmp_path / "sub" / "index.csv")
    stored = pd.read_csv(out)
    assert not any(Path(p).is_absolute() for p in stored["PATH"])
    monkeypatch.chdir(campaign.root)                        # paths do not depend on the cwd
    loaded = DatasetIndex.from_csv(out)
    assert len(loaded) == len(table)
    assert all(Path(p).is_file() for p in loaded.table["PATH"])
    assert sorted(str(Path(p).resolve()) for p in loaded.table["PATH"]) == \
        sorted(str(Path(p).resolve()) for p in table["PATH"])
    darks = loaded.filter(caltype="DARK")
    assert len(darks) == (table["CALTYPE"] == "DARK").sum() > 0
    assert set(darks.table["CALTYPE"]) == {"DARK"}
    mixed = loaded.filter(CALTYPE=["BIAS", "FLAT"], BADFITS=False)
    assert set(mixed.table["CALTYPE"]) == {"BIAS", "FLAT"}
    assert len(mixed) == ((table["CALTYPE"] != "DARK") & ~table["BADFITS"]).sum()
    assert len(loaded.usable()) == (~table["BADFITS"]).sum()
    assert len(loaded.filter(CALTYPE="DARK", EXPTIME=2.0)) == \
        ((table["CALTYPE"] == "DARK") & (table["EXPTIME"] == 2.0)).sum() > 0


def test_from_csv_adds_missing_optional_columns(tmp_path):
    frame = tmp_path / "frames" / "f.fits"
    (tmp_path / "index.csv").write_text("PATH,CALTYPE,BADFITS\nframes/f.fits,bias,false\n")
    loaded = DatasetIndex.from_csv(tmp_path / "index.csv")
    assert set(INDEX_COLUMNS) <= set(loaded.table.columns)
    assert math.isnan(loaded.table.loc[0, "TEMP"])
    assert loaded.table.loc[0, "PATH"] == str(frame)
    assert loaded.table.loc[0, "CALTYPE"] == "BIAS"
    assert not bool(loaded.table.loc[0, "BADFITS"])


def _normalised(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    out["PATH"] = [str(Path(p).resolve()) for p in out["PATH"]]
    for column in ("STAGE", "VACUUM", "REASON", "ATTEMPT", "CALTYPE"):
        out[column] = out[column].astype(object).fillna("").astype(str)
    for column in out.columns.difference(["PATH", "STAGE", "VACUUM", "REASON", "ATTEMPT",
                                          "CALTYPE", "BADFITS"]):
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)
    out["BADFITS"] = out["BADFITS"].astype(bool)
    return out.sort_values("PATH").reset_index(drop=True)


def test_previous_index_reused(converted_irradiation, tmp_path, monkeypatch):
    campaign, _ = converted_irradiation
    fresh = build_index(discover=[campaign.root])
    csv = write_index(fresh, tmp_path / "index.csv")

    def must_not_read(*args, **kwargs):
        raise AssertionError("a frame was re-read although the previous index had it")

    monkeypatch.setattr(index_module, "_frame_row", must_not_read)
    again = build_index(discover=[campaign.root], previous=csv)
    assert list(again.columns) == INDEX_COLUMNS
    pd.testing.assert_frame_equal(_normalised(again), _normalised(fresh), check_exact=False,
                                  rtol=1e-12)


def test_previous_index_rereads_modified_frames(converted_standard_copy, tmp_path):
    root = converted_standard_copy.root
    fresh = build_index(discover=[root])
    csv = write_index(fresh, tmp_path / "index.csv")
    record = converted_records(converted_standard_copy)[0]
    frame = fits_of(converted_standard_copy, record)
    from astropy.io import fits
    with fits.open(frame, mode="update") as hdul:
        hdul[0].data[:] = 0                                  # the frame changed since
        for key in kw.FRAME_STATS:  # a tool that edits the pixels drops their statistics
            del hdul[0].header[key]
    later = os.stat(csv).st_mtime + 10
    os.utime(frame, (later, later))
    again = build_index(discover=[root], previous=csv)
    row = by_path(again)[str(frame.resolve())]
    assert bool(row["BADFITS"]) and row["ZEROFRACTION"] == 1.0
    assert not bool(by_path(fresh)[str(frame.resolve())]["BADFITS"])


def test_malformed_previous_index_rebuilds(converted_standard, tmp_path, caplog):
    campaign, _ = converted_standard
    bad = tmp_path / "index.csv"
    bad.write_text("not,an\nindex")
    table = build_index([("BIAS", campaign.root / "TestSection1")], previous=bad)
    assert len(table) == len(campaign.select(kind="bias"))
    assert any("rebuilding the index" in r.getMessage() for r in caplog.records)
    assert np.isfinite(table["MEAN"]).all()


# --- statistics recorded at conversion ------------------------------------------------------------

def _strip_statistics_cards(root: Path) -> int:
    """Remove the converter's statistics cards from every FITS below ``root``; how many had them."""
    from astropy.io import fits

    carded = 0
    for path in sorted(root.rglob("*.fits")):
        with fits.open(path, mode="update") as hdul:
            if kw.FRNPIX in hdul[0].header:
                carded += 1
                for key in kw.FRAME_STATS:
                    del hdul[0].header[key]
    return carded


def _no_pixel_reads(monkeypatch):
    def must_not_read(*args, **kwargs):
        raise AssertionError("pixel data read although the header records the statistics")

    monkeypatch.setattr(fitsio_module, "read_rows", must_not_read)


def test_index_from_recorded_statistics_equals_measured(converted_standard_copy, monkeypatch):
    root = converted_standard_copy.root
    with monkeypatch.context() as patch:
        _no_pixel_reads(patch)
        recorded = build_index(discover=[root])
    assert _strip_statistics_cards(root) == len(recorded) == \
        len(converted_records(converted_standard_copy))
    measured = build_index(discover=[root])
    # every column, exactly: ZEROFRACTION and SATFRACTION included (the zero frame is BADFITS)
    pd.testing.assert_frame_equal(recorded, measured, check_exact=True)
    assert recorded["BADFITS"].sum() == 2 and (recorded["ZEROFRACTION"] == 1.0).any()


def test_frame_truncated_after_conversion_is_badfits(converted_standard_copy, monkeypatch):
    root = converted_standard_copy.root
    frame = fits_of(converted_standard_copy, converted_records(converted_standard_copy)[0])
    from astropy.io import fits
    assert kw.FRNPIX in fits.getheader(frame)
    head = fitsio_module.fits_layout(frame).offset
    keep = head + 1000                                       # the header and part of the data
    assert frame.stat().st_size > keep
    with open(frame, "r+b") as handle:
        handle.truncate(keep)
    _no_pixel_reads(monkeypatch)
    row = by_path(build_index(discover=[root]))[str(frame.resolve())]
    assert bool(row["BADFITS"])
    assert row["REASON"].startswith("truncated") and "re-convert" in row["REASON"]
    assert math.isnan(row["MEAN"])
    # a header reader that does not notice it (astropy warns on its own): the size is checked
    monkeypatch.setattr(index_module, "read_header", lambda path: fits.Header.fromstring(
        Path(path).read_bytes()[:head].decode("ascii")))
    row = by_path(build_index(discover=[root]))[str(frame.resolve())]
    assert bool(row["BADFITS"]) and math.isnan(row["MEAN"])
    assert row["REASON"].startswith(f"truncated: {keep} bytes, header needs")


def test_malformed_statistics_cards_measure_the_pixels(converted_standard_copy):
    root = converted_standard_copy.root
    frame = fits_of(converted_standard_copy, converted_records(converted_standard_copy)[0])
    from astropy.io import fits
    before = by_path(build_index(discover=[root]))[str(frame.resolve())]
    with fits.open(frame, mode="update") as hdul:
        hdul[0].header[kw.FRMEAN] = "unknown"
        hdul[0].header[kw.FRSTD] = 1.0                       # well-formed, but not used either
    row = by_path(build_index(discover=[root]))[str(frame.resolve())]
    from utils.stack.stats import frame_statistics
    assert row["MEAN"] == frame_statistics(frame).mean == before["MEAN"]
    assert row["STD"] == before["STD"] > 1


# --- the header read without astropy (utils.io.fastheader) ---------------------------------------

def test_converted_headers_read_without_astropy_as_astropy(converted_standard):
    """Every converted frame's header is read by the fast reader; every key the index asks
    for (and every card of the header) is answered as astropy's Header.get answers it."""
    from astropy.io import fits

    from tests.utils.test_fastheader import INDEX_KEYS, answers, assert_answers_as_astropy
    from utils.io.fastheader import read_primary

    frames = sorted(converted_standard[0].root.rglob("*.fits"))
    assert len(frames) >= len(converted_records(converted_standard[0]))
    for frame in frames:
        fast = read_primary(frame)
        astro = fits.getheader(frame)
        assert fast is not None, frame
        assert all(answers(fast, key) is not None for key in INDEX_KEYS), frame
        keys = list(INDEX_KEYS) + list(astro.keys()) + [k.lower() for k in INDEX_KEYS]
        assert assert_answers_as_astropy(fast, astro, keys) >= len(INDEX_KEYS)


def _replace_card(path: Path, key: str, image: str, after: bool = False) -> None:
    """Overwrite the card ``key`` (or the card after it) with ``image`` in place."""
    raw = bytearray(path.read_bytes())
    at = next(i for i in range(0, 2880 * 8, 80) if raw[i:i + 8] == key.ljust(8).encode())
    at += 80 if after else 0
    raw[at:at + 80] = image.ljust(80).encode("ascii")
    path.write_bytes(bytes(raw))


def test_index_without_astropy_headers_identical(converted_standard_copy, monkeypatch):
    """The index read with the fast header reader is the one read with astropy, bit for bit,
    also for frames whose cards it leaves to astropy (a HIERARCH key asked for, a CONTINUE
    card, a D exponent, a truncated data unit); converted frames never need astropy."""
    from utils.io import fitsio

    root = converted_standard_copy.root
    frames = [fits_of(converted_standard_copy, r)
              for r in converted_records(converted_standard_copy)]
    with monkeypatch.context() as patch:  # plain converted frames: no astropy header at all
        patch.setattr(index_module, "read_header", lambda path: pytest.fail(f"{path} by astropy"))
        build_index(discover=[root])
    _replace_card(frames[0], kw.EXPTIME, "HIERARCH EXPTIME = 8.0")
    _replace_card(frames[1], kw.ATTEMPT, "CONTINUE  'more'", after=True)
    from astropy.io import fits
    mean = fits.getheader(frames[2])[kw.FRMEAN]
    _replace_card(frames[2], kw.FRMEAN, f"FRMEAN  = {mean:.17E}".replace("E", "D"))
    _replace_card(frames[3], kw.TEMP, f"TEMP    = {'(1, 2)':>20}")
    keep = fitsio.fits_layout(frames[4]).offset + 100
    with open(frames[4], "r+b") as handle:
        handle.truncate(keep)
    fast = build_index(discover=[root])
    monkeypatch.setattr(index_module, "read_primary", lambda path: None)
    astro = build_index(discover=[root])
    pd.testing.assert_frame_equal(fast, astro, check_exact=True)
    rows = by_path(fast)
    assert rows[str(frames[2].resolve())]["MEAN"] == mean
    assert rows[str(frames[4].resolve())]["REASON"].startswith("truncated")
    assert rows[str(frames[4].resolve())]["BADFITS"]
