"""Outgassing / destruction analysis: planted pixel classes, old outputs, explicit rules."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from astropy.io import fits
from astropy.nddata import CCDData

from analysis import outgassing_analysis
from analysis.timeseries.classification import (
    LIKELY_SENSOR,
    SENSOR_DAMAGE,
    TEMPERATURE,
    classify,
    classify_legacy,
)
from analysis.timeseries.reduction import select_flats
from utils.io.index import build_index
from utils.sim.sequences import PIXEL_CLASSES, sequence_truth, simulate_flat_sequence

OLD_COLUMNS_FLATS = ["analysis_type", "approx_temp", "file_path", "time_header", "n_outliers",
                     "std_diff", "mean_flat", "std_flat"]
OLD_COLUMNS_OUTLIERS = ["pixel", "num_occurrences", "temp_labels", "times", "classification"]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """Six visits alternating 0 and 20 degC, 5 pixels of each class planted (damage at 3)."""
    return simulate_flat_sequence(tmp_path_factory.mktemp("og") / "seq", seed=31, visits=6,
                                  pixel_classes=True)


@pytest.fixture(scope="module")
def plain(campaign, tmp_path_factory):
    out = tmp_path_factory.mktemp("og_out") / "plain"
    assert outgassing_analysis.main([str(campaign.root), "--output_dir", str(out),
                                     "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def calibrated(campaign, tmp_path_factory):
    out = tmp_path_factory.mktemp("og_out") / "calibrated"
    assert outgassing_analysis.main([str(campaign.root), "--calibrate", "--output-dir",
                                     str(out), "--no-progress"]) == 0
    return out


def _planted(campaign) -> dict:
    pixels = sequence_truth(campaign, "flat_sequence")["pixels"]
    return {(r, c): name for name, items in pixels.items() for r, c in items}


def test_planted_classes_are_reproduced(campaign, plain):
    planted = _planted(campaign)
    table = pd.read_csv(plain / "analysis_outliers.csv")
    found = {(r, c): cls for r, c, cls in zip(table["row"], table["col"],
                                             table["classification"])}
    for pixel, name in planted.items():
        assert found.get(pixel) == PIXEL_CLASSES[name], (pixel, name, found.get(pixel))
    # nothing else, except pixels that really change with temperature (natural hot pixels)
    hot = campaign.maps()["hot_mask"]
    extra = [p for p in found if p not in planted]
    assert all(hot[p] and found[p] == TEMPERATURE for p in extra), extra


def test_calibration_removes_the_dark_current_pixels(campaign, calibrated):
    """With the dark subtracted, the strong-dark-current pixels no longer change with T."""
    planted = _planted(campaign)
    table = pd.read_csv(calibrated / "analysis_outliers.csv")
    found = {(r, c): cls for r, c, cls in zip(table["row"], table["col"],
                                             table["classification"])}
    for pixel, name in planted.items():
        if name == "temperature":
            assert pixel not in found
        else:
            assert found.get(pixel) == PIXEL_CLASSES[name], (pixel, name)
    flats = pd.read_csv(calibrated / "analysis_flats.csv")
    compared = flats[flats["status"] == "compared"]
    assert compared["reduction"].str.startswith("dark (bias included)").all()
    assert len(list((calibrated / "flats_norm_reduced").glob("*_norm.fits"))) == 12


def test_old_outputs(plain, fitsverify):
    flats = pd.read_csv(plain / "analysis_flats.csv")
    assert flats.columns[:8].tolist() == OLD_COLUMNS_FLATS
    assert set(flats["analysis_type"]) == {"by_temperature", "ignore_temperature"}
    outliers = pd.read_csv(plain / "analysis_outliers.csv")
    assert set(OLD_COLUMNS_OUTLIERS) <= set(outliers.columns)
    assert outliers["pixel"].str.match(r"^\(\d+,\d+\)$").all()
    for name in ("outliers_vs_time", "outliers_vs_temperature", "mean_std_vs_time",
                 "mean_std_vs_temp"):
        assert (plain / "summary_plots" / f"{name}.png").is_file()
    assert (plain / "sensor_plane_outliers" / "all_outliers_sensor_plane.png").is_file()
    assert len(list((plain / "sensor_plane_outliers").glob("outliers_T*.png"))) == 2
    assert len(list((plain / "analysis_by_temperature").glob("T_*/diffmap_*.png"))) == 10
    assert len(list((plain / "analysis_by_time_ignore_temp").glob("diffmap_*.png"))) == 11
    for log in ("suspicious_bias.log", "suspicious_darks.log"):
        assert (plain / log).read_text().startswith("# ")
    normalised = sorted((plain / "flats_norm").glob("*_norm.fits"))
    assert len(normalised) == 12
    errors, report = fitsverify(normalised[0])
    assert errors == 0, report
    ccd = CCDData.read(normalised[0])
    assert abs(float(pd.Series(ccd.data.ravel()).median()) - 1.0) < 1e-6
    assert ccd.header["NORMMETH"] == "median"


def test_time_zero_is_a_time_and_saturation_comes_from_the_header(campaign, tmp_path):
    table = build_index([("", campaign.root)])
    flats = table[table["CALTYPE"] == "FLAT"]
    late = flats["TIMESTAMP"].idxmax()
    table.loc[late, "TIMESTAMP"] = 0.0                 # a legitimate time of 0 s
    selected = select_flats(table, temp_bin=1.0, exp_tolerance=0.01, max_saturated=0.01)
    row = selected[selected["PATH"] == table.loc[late, "PATH"]].iloc[0]
    assert row["STATUS"] == "valid"
    group = selected[(selected["TBIN"] == row["TBIN"]) & (selected["STATUS"] == "valid")]
    assert group.iloc[0]["PATH"] == row["PATH"]        # earliest: it becomes the reference
    # a flat whose header saturation level lies below its pixels is saturated (the index
    # measures SATFRACTION against each frame's own SATLEVEL, not a hard-coded 60000)
    seq = tmp_path / "seq"
    shutil.copytree(campaign.root, seq)
    victim = next(seq.rglob("flat_v02_f001.fits"))
    with fits.open(victim, mode="update") as hdul:
        hdul[0].header["SATLEVEL"] = float(hdul[0].data.min())
    selected = select_flats(build_index([("", seq)]), temp_bin=1.0, exp_tolerance=0.01,
                            max_saturated=0.01)
    bad = selected[selected["STATUS"] != "valid"]
    assert [p.split("/")[-1] for p in bad["PATH"]] == [victim.name]
    assert bad["STATUS"].iloc[0].startswith("saturated: 100 %")


def test_classification_rules():
    # the old test's stage labels
    assert classify(["Pre", "Radiating", "Post"], [1, 2, 3]) == SENSOR_DAMAGE
    assert classify(["Pre", "Post"], [1, 1]) == SENSOR_DAMAGE
    assert classify(["Radiating", "Radiating"], [2, 3]) == LIKELY_SENSOR
    assert classify(["Post"], [5]) == TEMPERATURE
    assert classify(["Radiating", "Radiating"], [4, 4]) == TEMPERATURE
    # IgnoreTemp is not a condition: alone it means "explained by temperature"
    assert classify(["IgnoreTemp"], [1, 2, 3]) == TEMPERATURE
    assert classify(["T0.0", "IgnoreTemp"], [1, 2]) == LIKELY_SENSOR
    # the intended difference from the old rule: IgnoreTemp no longer vetoes Sensor Damage
    assert classify(["T0.0", "T20.0", "IgnoreTemp"], [1, 2]) == SENSOR_DAMAGE
    assert classify_legacy(["T0.0", "T20.0", "IgnoreTemp"], [1, 2]) == TEMPERATURE
    for labels, times in ((["Pre", "Radiating", "Post"], [1, 2, 3]), (["Post"], [5]),
                          (["Radiating", "Radiating"], [2, 3]), (["IgnoreTemp"], [1, 2])):
        assert classify(labels, times) == classify_legacy(labels, times)


def test_empty_and_single_flat(tmp_path, caplog, capsys, one_line_error):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert outgassing_analysis.main([str(empty), "--output-dir", str(tmp_path / "o"),
                                     "--no-progress"]) == 2
    one_line_error(caplog, capsys, empty, "no FITS frames")
    caplog.clear()
    one = simulate_flat_sequence(tmp_path / "one", seed=4, visits=2, flats=1, width=16,
                                 height=12, temperatures=(20.0,))
    shutil.rmtree(next(one.root.glob("visit1_*")))
    assert outgassing_analysis.main([str(one.root), "--output-dir", str(tmp_path / "o"),
                                     "--no-progress"]) == 2
    one_line_error(caplog, capsys, "1 valid flat(s)", "at least two")
    assert not (tmp_path / "o").exists()                # nothing written, not even the index


def test_counts_figure_has_one_series_per_bin_and_one_ignoring_temperature():
    """The ignore-temperature comparisons are one series: their rows carry each flat's own
    temperature reading, and grouping by it drew one legend entry per flat (9 entries
    'ignoring temperature' in different colours on the 6-visit sequence)."""
    import matplotlib.pyplot as plt

    from analysis.timeseries.plots_flats import plot_counts_vs

    temps = [-0.13, 20.02, -0.08, 19.97, 0.04, 20.11]
    rows = [{"analysis_type": "by_temperature", "approx_temp": tb, "status": "compared",
             "n_outliers": i, "time_h": float(i), "label": f"T{tb:.1f}"}
            for i, tb in enumerate([-0.1, 20.0, -0.1, 20.0])]
    rows += [{"analysis_type": "ignore_temperature", "approx_temp": round(t, 1),
              "status": "compared", "n_outliers": i, "time_h": float(i), "label": "IgnoreTemp"}
             for i, t in enumerate(temps)]
    rows.append({"analysis_type": "by_temperature", "approx_temp": -0.1, "status": "reference",
                 "n_outliers": float("nan"), "time_h": 0.0, "label": float("nan")})
    ax = plot_counts_vs(pd.DataFrame(rows), "time_h", xlabel="time since the first flat [h]")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["-0.1 degC", "20 degC", "ignoring temperature"]
    assert len(ax.lines) == 3 and len(ax.lines[2].get_xdata()) == len(temps)
    assert len({line.get_color() for line in ax.lines}) == 3
    plt.close(ax.figure)
    # two exposures in a bin: the exposure is part of the series name
    two = pd.DataFrame([{**rows[0], "label": "T-0.1_E0.5s"}, {**rows[0], "label": "T-0.1_E2s"}])
    ax = plot_counts_vs(two, "time_h", xlabel="time since the first flat [h]")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["-0.1 degC, 0.5 s",
                                                                  "-0.1 degC, 2 s"]
    plt.close(ax.figure)


def test_stable_sequence_without_outliers_runs(tmp_path, caplog, capsys):
    """A stable sequence (no outlier pixel: the good case) ended in a traceback: the empty
    outlier table had untyped columns and the sensor-plane figure refused them."""
    campaign = simulate_flat_sequence(tmp_path / "seq", seed=22, visits=4, width=24, height=20)
    out = tmp_path / "out"
    assert outgassing_analysis.main([str(campaign.root), "--output-dir", str(out),
                                     "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    table = pd.read_csv(out / "analysis_outliers.csv")
    assert len(table) == 0 and list(table.columns[:5]) == ["pixel", "row", "col",
                                                           "num_occurrences", "temp_labels"]
    assert (out / "sensor_plane_outliers" / "all_outliers_sensor_plane.png").is_file()
    assert "0 outlier pixels" in caplog.text
