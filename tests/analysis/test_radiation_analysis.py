"""radiation_analysis and run_radiation.py: products per (stage, dose step), differences with
errors, bad logs refused in one line, end to end from raw frames."""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.nddata import CCDData

from analysis import radiation_analysis

GROUPS = ["pre", "radiating_D10kR", "radiating_D20kR", "radiating_D30kR", "radiating_D40kR",
          "post"]


@pytest.fixture(scope="module")
def rad_run(rad_analysis):
    return rad_analysis


def test_products_per_stage_and_dose_step(rad_run):
    _, out, status = rad_run
    assert status == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(GROUPS)
    for gid, tag in enumerate(GROUPS):
        bias = pd.read_csv(out / tag / "stats_bias.csv")
        dark = pd.read_csv(out / tag / "stats_dark.csv")
        assert list(bias.columns[:6]) == ["PATH", "FRAME", "GROUP", "TEMP", "MEAN", "STD"]
        assert list(dark.columns[:7]) == ["PATH", "FRAME", "GROUP", "TEMP", "T_EXP", "MEAN",
                                          "STD"]
        assert (bias["GROUP"] == gid).all() and set(dark["T_EXP"]) == {5.0, 20.0}
        # frame numbers written whole ('0.0' before)
        first = (out / tag / "stats_bias.csv").read_text().splitlines()[1]
        assert first.split(",")[1].isdigit(), first
        summary = pd.read_csv(out / tag / "group_summary.csv")
        assert list(summary.columns[:6]) == ["STAGE", "CALTYPE", "GROUP", "MEAN_RAD", "MEAN_VAL",
                                             "STD_VAL"]
        # the dose step of every group, pre (0) and post (the last step) included: it was
        # empty for them (the grouping key has a dose for radiating steps only)
        step = {"pre": 0.0, "post": 40.0}[tag] if tag in ("pre", "post") \
            else float(tag[len("radiating_D"):-2])
        assert np.allclose(summary["DOSE"], step), (tag, summary["DOSE"].tolist())
        # the mean level has its error: the frames' scatter / sqrt(N) (it had none)
        for _, row in summary.iterrows():
            stats = bias if row["CALTYPE"] == "BIAS" else dark
            means = stats[(stats["TEMP_BIN"] == row["TBIN"]) & (
                True if row["CALTYPE"] == "BIAS" else stats["T_EXP"] == row["EXPTIME"])]["MEAN"]
            assert len(means) == row["NFRAMES"]
            assert row["MEAN_VAL_ERR"] == pytest.approx(means.std(ddof=1) / np.sqrt(len(means)))
        for caltype in ("bias", "dark"):
            assert (out / tag / f"mean_std_{caltype}_vs_time.png").is_file()
            with np.load(out / tag / f"mean_std_{caltype}_vs_time.npz") as data:
                assert any(k.endswith("_mean") for k in data.files)
    # exposures are never averaged together: one dark master per (temperature bin, exposure)
    assert len(list((out / "pre").glob("master_dark_*.fits"))) == 3 * 2
    assert len(list((out / "radiating_D10kR").glob("master_dark_*.fits"))) == 2


def test_differences_between_groups_with_errors(rad_run, fitsverify):
    campaign, out, _ = rad_run
    diffs = sorted(out.glob("master_bias_T*_radiating_D20kR_minus_radiating_D10kR.fits"))
    assert len(diffs) == 1
    ccd = CCDData.read(diffs[0])
    assert ccd.uncertainty is not None and ccd.unit == "adu"
    with fits.open(diffs[0]) as hdul:
        head, signif = hdul[0].header, hdul["SIGNIF"].data
    # 10 krad more: the bias shifts by alpha * 10 krad; the step's masters sit at 20 +- 0.15
    # degC, so the 8 adu/degC temperature slope adds up to ~2 adu
    truth = campaign.physics.bias_shift * 16 * 10
    assert abs(head["MEANDIFF"] - truth) < 2.0
    # ~2 sigma per pixel (8-frame masters), far beyond the error of the mean
    assert 1 < np.nanmedian(signif) < 4 and head["MEANDIFF"] > 10 * head["MEANDERR"]
    with np.load(diffs[0].with_name(diffs[0].name[:-5] + ".npz")) as data:
        assert "diff" in data.files and data["diff"].shape == (campaign.height, campaign.width)
    assert len(list(out.glob("master_bias_T*_post_minus_pre.fits"))) == 3  # 10, 20, 30 degC
    assert len(list(out.glob("master_dark_*_minus_*.fits"))) >= 5
    errors, report = fitsverify(diffs[0])
    assert errors == 0, report


def test_ignore_temp_one_master_per_exposure(rad_campaign, tmp_path):
    campaign, index = rad_campaign
    out = tmp_path / "out"
    assert radiation_analysis.main([str(index), str(campaign.root / "radiationLogCompleto.csv"),
                                    str(out), "--stages", "pre", "--ignore-temp",
                                    "--no-progress"]) == 0
    assert len(list((out / "pre").glob("master_bias_*.fits"))) == 1
    assert len(list((out / "pre").glob("master_dark_*.fits"))) == 2
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["pre"]


@pytest.mark.parametrize("problem, words", [
    ("missing", ("missing.csv", "cannot read")),
    ("other_campaign", ("covers none",)),
    ("unsorted", ("time goes backwards",)),
    ("no_dose", ("no Dose or RadiationLevel column",)),
])
def test_bad_logs_are_one_line_and_write_nothing(rad_campaign, tmp_path, caplog, capsys,
                                                 one_line_error, problem, words):
    campaign, index = rad_campaign
    log = pd.read_csv(campaign.root / "radiationLogCompleto.csv")
    path = tmp_path / f"{problem}.csv"
    if problem == "other_campaign":
        log.assign(TimeStamp=log["TimeStamp"] - 3e7).to_csv(path, index=False)
    elif problem == "unsorted":
        log.iloc[[2, 1, 0] + list(range(3, len(log)))].to_csv(path, index=False)
    elif problem == "no_dose":
        log.drop(columns=["Dose", "RadiationLevel"]).to_csv(path, index=False)
    out = tmp_path / "out"
    status = radiation_analysis.main([str(index), str(path), str(out), "--no-progress"])
    assert status == 2
    one_line_error(caplog, capsys, *words)
    assert not out.exists() or not any(out.rglob("*"))


def test_unknown_stage_is_one_line(rad_campaign, tmp_path, caplog, capsys, one_line_error):
    campaign, index = rad_campaign
    status = radiation_analysis.main([str(index), str(campaign.root / "radiationLogCompleto.csv"),
                                      str(tmp_path / "o"), "--stages", "later", "--no-progress"])
    assert status == 2
    one_line_error(caplog, capsys, "unknown stage", "later")


def test_run_radiation_end_to_end_and_rerun(irradiation_copy, tmp_path, checksums):
    import run_radiation

    root = irradiation_copy.root
    raw_before = {k: v for k, v in checksums(root).items() if not k.endswith(".fits")}
    log = root / "radiationLogCompleto.csv"
    out = tmp_path / "out"
    # figures are checked on the shared run (rad_analysis): none needed here
    argv = [str(root), str(log), str(out), "--no-progress", "--plots", "none"]
    assert run_radiation.main(argv) == 0
    index = pd.read_csv(root / "index.csv")
    assert index["FRAMEDOSE"].notna().all() and len(index) == len(irradiation_copy.records)
    assert {p.name for p in out.iterdir() if p.is_dir()} == \
        {"pre", "radiating_D10kR", "radiating_D20kR", "post"}
    # the inputs are untouched (only fits/ and index CSVs were added)
    after = checksums(root)
    assert all(after[k] == v for k, v in raw_before.items())
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.fits")}
    assert run_radiation.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.fits")} == stamps


def test_run_radiation_missing_log(irradiation_campaign, tmp_path, caplog, capsys,
                                   one_line_error):
    import run_radiation

    status = run_radiation.main([str(irradiation_campaign.root), str(tmp_path / "none.csv"),
                                 str(tmp_path / "o"), "--no-progress"])
    assert status == 2
    one_line_error(caplog, capsys, "none.csv", "radiation log not found")


@pytest.mark.parametrize("module", ["analysis.radiation_analysis", "analysis.dose_analysis",
                                    "analysis.damage_analysis", "run_radiation"])
def test_commands_have_help_with_example(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "Example" in out and "--verbose" in out


def test_run_radiation_joins_the_log_once(irradiation_copy, tmp_path, caplog):
    """The index is built with the log joined; the analysis used to join it again, so every
    warning about the log and the bookkeeping line came twice."""
    import logging

    import run_radiation

    root = irradiation_copy.root
    log = pd.read_csv(root / "radiationLogCompleto.csv")
    constant = tmp_path / "constant.csv"
    log.assign(Dose=0.0).to_csv(constant, index=False)
    with caplog.at_level(logging.INFO):
        assert run_radiation.main([str(root), str(constant), str(tmp_path / "out"),
                                   "--no-progress", "--plots", "none", "--stages", "pre"]) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("dose bookkeeping" in m for m in messages) == 1, messages
    assert sum("its Dose column is constant" in m for m in messages) == 1, messages
    # the file named once: not 'constant.csv: not used (constant.csv: its Dose ...)'
    (line,) = [m for m in messages if "its Dose column is constant" in m]
    assert line == f"{constant}: not used (its Dose column is constant)", line


def test_run_radiation_refuses_a_log_without_time_before_converting(
        irradiation_copy, tmp_path, caplog, capsys, one_line_error):
    """A log that cannot be joined by time was refused only after every raw frame had been
    converted into the campaign's folders."""
    import run_radiation

    root = irradiation_copy.root
    log = pd.read_csv(root / "radiationLogCompleto.csv")
    bad = tmp_path / "no_time.csv"
    log.drop(columns=["TimeStamp"]).to_csv(bad, index=False)
    status = run_radiation.main([str(root), str(bad), str(tmp_path / "out"), "--no-progress"])
    assert status == 2
    one_line_error(caplog, capsys, "no_time.csv", "no time column")
    assert not list(root.rglob("*.fits")) and not (root / "index.csv").exists()


def test_time_figure_says_the_band_is_the_spatial_std():
    """mean_std_<type>_vs_time.png titled 'bias mean +- std' with an unlabelled band: nothing said
    the band is the frame's spatial standard deviation (fixed pattern and hot pixels), not an
    error of the mean."""
    import matplotlib.pyplot as plt

    stats = pd.DataFrame({"TEMP_BIN": 20.1, "TIMESTAMP": [10.0, 12.0, 14.0],
                          "MEAN": [3357.0, 3354.0, 3358.0], "STD": [66.0, 65.5, 66.2]})
    ax, data = radiation_analysis._plot_vs_time(stats, "BIAS", "pre", 10.0)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["20.1 degC: frame mean", "20.1 degC: ± spatial std"]
    assert "spatial std" in ax.get_title() and ax.get_ylabel() == "frame mean [adu]"
    assert list(data) == ["20.1C_time", "20.1C_mean", "20.1C_std"]
    plt.close(ax.figure)
