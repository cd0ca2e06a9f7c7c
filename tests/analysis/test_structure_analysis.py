"""Structure analysis on simulated flat sequences: a planted structure found, a stable one clean."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from analysis import structure_analysis
from analysis.timeseries.flat_compare import CompareSettings, compare_flats
from analysis.timeseries.reduction import load_flat
from utils.io.index import build_index, write_index
from utils.sim.sequences import FlatStructure, sequence_truth, simulate_flat_sequence

STRUCTURE = FlatStructure(row=19.0, col=26.0, radius=4.0, depth=0.2, first_visit=3)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Six visits at 0 and 20 degC; a 20 % deep disc of 49 px appears at visit 3; --reduce."""
    root = tmp_path_factory.mktemp("struct")
    campaign = simulate_flat_sequence(root / "seq", seed=21, structure=STRUCTURE)
    out = root / "out"
    assert structure_analysis.main([str(campaign.root), "--output-dir", str(out), "--reduce",
                                    "--no-progress"]) == 0
    return campaign, out


@pytest.fixture(scope="module")
def stable(tmp_path_factory):
    """The same sequence without any structure (another seed), not reduced."""
    root = tmp_path_factory.mktemp("stable")
    campaign = simulate_flat_sequence(root / "seq", seed=22, visits=6)
    out = root / "out"
    assert structure_analysis.main([str(campaign.root), "--output-dir", str(out),
                                    "--no-progress"]) == 0
    return campaign, out


def test_planted_structure_found_with_position_and_area(planted):
    campaign, out = planted
    truth = sequence_truth(campaign, "flat_sequence")["structure"]
    found = pd.read_csv(out / "structures.csv")
    comps = pd.read_csv(out / "comparisons.csv")
    after = comps[(comps["STATUS"] == "compared") & (comps["TIMESTAMP"] >= truth["first_time"])]
    assert len(after) >= 4                                   # both temperatures, later visits
    for _, comp in after.iterrows():
        rows = found[found["FILE"] == comp["FILE"]]
        assert len(rows) == 1, rows                          # the structure and nothing else
        r = rows.iloc[0]
        # acceptance: position within 2 px, area within 20 %
        assert math.hypot(r["ROW"] - truth["centroid_row"], r["COL"] - truth["centroid_col"]) <= 2
        assert abs(r["AREA"] - truth["area"]) <= 0.2 * truth["area"]
        assert r["SIGN"] == -1 and r["PEAK_Z"] >= comp["THRESHOLD_SIGMA"]
    # before it appeared: nothing
    before = comps[(comps["STATUS"] == "compared") & (comps["TIMESTAMP"] < truth["first_time"])]
    assert len(before) >= 2 and (before["N_REGIONS"] == 0).all()
    # it stays: persistent wherever a later comparison exists
    assert found["PERSISTENT"].isin([True, np.nan]).all() and found["PERSISTENT"].eq(True).any()


def test_structure_amplitude_matches_its_depth(planted):
    campaign, out = planted
    maps = campaign.maps()
    found = pd.read_csv(out / "structures.csv")
    # D = F/med(F) - R/med(R) = -depth x (the reference's normalised level in the disc)
    shape = maps["prnu"] * maps["vignetting"]
    local = float(np.mean(shape[maps["structure_mask"]]) / np.median(shape))
    expected = -STRUCTURE.depth * local
    pulls = (found["AMPLITUDE"] - expected) / found["AMPLITUDE_ERR"]
    # the error is the mean of ~49 pixel errors; 3 sigma per comparison
    assert (pulls.abs() < 3).all(), pulls.tolist()


def test_reference_is_the_earliest_flat_by_time(planted, tmp_path):
    campaign, out = planted
    comps = pd.read_csv(out / "comparisons.csv")
    for tbin, part in comps[comps["STATUS"].isin(["reference", "compared"])].groupby("TBIN"):
        first = part.loc[part["TIMESTAMP"].idxmin(), "FILE"]
        assert (part["REFERENCE"] == first).all()
    # an index whose rows are in reverse time order gives the same references
    table = build_index([("", campaign.root)])
    table = table.sort_values("TIMESTAMP", ascending=False)
    write_index(table, tmp_path / "index.csv")
    assert structure_analysis.main([str(tmp_path / "index.csv"), "--output-dir",
                                    str(tmp_path / "out"), "--no-progress"]) == 0
    again = pd.read_csv(tmp_path / "out" / "comparisons.csv")
    refs = again[again["STATUS"] == "reference"].sort_values("TBIN")["FILE"].tolist()
    expected = comps[comps["STATUS"] == "reference"].sort_values("TBIN")["FILE"].tolist()
    assert [os.path.basename(p) for p in refs] == [os.path.basename(p) for p in expected]


def test_stable_sequence_gives_no_detection(stable):
    _, out = stable
    comps = pd.read_csv(out / "comparisons.csv")
    assert (comps["STATUS"] == "compared").sum() == 10
    assert len(pd.read_csv(out / "structures.csv")) == 0
    assert (comps.loc[comps["STATUS"] == "compared", "N_REGIONS"] == 0).all()


def test_rerun_keeps_the_products(stable, caplog):
    campaign, out = stable
    stamp = (out / "timeline.png").stat().st_mtime_ns
    assert structure_analysis.main([str(campaign.root), "--output-dir", str(out),
                                    "--no-progress"]) == 0
    assert (out / "timeline.png").stat().st_mtime_ns == stamp
    assert any("unchanged since the last run" in r.getMessage() for r in caplog.records)


def test_significance_is_in_units_of_the_flats_noise(stable):
    campaign, _ = stable
    flats = [campaign.path(r) for r in campaign.records if r.kind == "flat"
             and r.setpoint == 20.0]
    fd = compare_flats(load_flat(flats[-1]), load_flat(flats[0]), CompareSettings())
    z = fd.z[np.isfinite(fd.z)]
    # 1920 pixels: the standard deviation of z is known to 1.6 % (3 sigma: 5 %)
    assert abs(np.std(z) - 1.0) < 0.05 and abs(np.mean(z)) < 0.1
    assert fd.threshold == 5.0                  # the false-alarm threshold is 4.55 sigma here
    assert CompareSettings().threshold(2048 * 2048) == pytest.approx(5.97, abs=0.01)


def test_products_verify_and_suspicious_frames_go_to_the_output(planted, tmp_path, fitsverify,
                                                                monkeypatch):
    campaign, out = planted
    errors, report = fitsverify(out / "structure_counts.fits")
    assert errors == 0, report
    masters = sorted((out / "masters").glob("*.fits"))
    assert masters and fitsverify(masters[0])[0] == 0
    with fits.open(out / "structure_counts.fits") as hdul:
        assert hdul[0].data.max() >= 1 and hdul[0].header["NCOMPARE"] == 10
        # provenance: the settings and the comparisons behind the map (it had neither)
        head, inputs = hdul[0].header, hdul["INPUTS"].data
        assert head["SEEDTHR"] == 5.0 and head["MINAREA"] == 2 and head["REDUCED"] is True
        assert len(inputs) == 10 and hdul["INPUTS"].columns["DT_S"].unit == "s"
        assert inputs["N_REGIONS"].sum() == int(hdul[0].data.max() > 0) * len(
            pd.read_csv(out / "structures.csv"))
    assert len(list((out / "differences").rglob("*.png"))) == 10
    assert (out / "timeline.png").is_file()
    # an all-zero frame is listed in the output folder, never in the working directory
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    seq = tmp_path / "seq"
    import shutil

    shutil.copytree(campaign.root, seq)
    victim = next(seq.rglob("flat_v01_f000.fits"))
    with fits.open(victim, mode="update") as hdul:
        hdul[0].data[:] = 0
    assert structure_analysis.main([str(seq), "--output-dir", str(tmp_path / "o2"),
                                    "--no-progress"]) == 0
    listed = pd.read_csv(tmp_path / "o2" / "suspicious_frames.csv")
    assert [os.path.basename(p) for p in listed["PATH"]] == [victim.name]
    assert "zero pixels" in listed["REASON"].iloc[0]
    assert list(work.iterdir()) == []
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary["suspicious_frames"] == 1


def test_empty_folder(tmp_path, caplog, capsys, one_line_error):
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert structure_analysis.main([str(empty), "--output-dir", str(tmp_path / "out"),
                                    "--no-progress"]) == 2
    one_line_error(caplog, capsys, empty, "no FITS frames")
    assert not (tmp_path / "out").exists()              # nothing written, not even the index


def test_single_flat_per_bin(tmp_path, caplog, capsys, one_line_error):
    campaign = simulate_flat_sequence(tmp_path / "seq", seed=3, visits=2, flats=1,
                                      bias_frames=0, dark_frames=0, width=16, height=12)
    assert structure_analysis.main([str(campaign.root), "--output-dir", str(tmp_path / "out"),
                                    "--no-progress"]) == 2
    one_line_error(caplog, capsys, "single valid flat", "at least two")
    assert not (tmp_path / "out").exists()              # nothing written, not even the index


def test_timeline_draws_counts_as_steps_with_whole_ticks():
    """timeline.png joined the comparisons by slopes (a structure found 48 h after the
    reference read as growing from 0 at 0 h) and labelled its counts 0.0, 0.2 ... 1.0."""
    import matplotlib.pyplot as plt

    from analysis.timeseries.plots_flats import plot_timeline

    table = pd.DataFrame({"STATUS": ["reference", "compared", "compared", "compared"],
                          "TBIN": 20.0, "EXPTIME": 0.5, "DT_S": [0.0, 1.5, 172800.0, 345600.0],
                          "N_REGIONS": [np.nan, 0, 1, 1], "AREA_PX": [np.nan, 0, 49, 50]})
    axes = plot_timeline(table)
    axes[0].figure.canvas.draw()
    for ax in axes:
        assert ax.lines[0].get_drawstyle() == "steps-post"
        ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
        assert all(float(t).is_integer() for t in ticks), ticks
    plt.close(axes[0].figure)
