"""End-to-end index processing on a small simulated standard campaign, checked against truth."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.nddata import CCDData

from analysis import process_index
from analysis.masters import MasterSettings
from utils import sim
from utils.io.conversion import ConversionSettings, convert_sections
from utils.io.index import IndexSettings, build_index, write_index
from utils.stack.grouping import GroupKey, calibration_groups, cluster


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """Simulate (10 frames x 2 attempts per set), convert, index and process once."""
    root = tmp_path_factory.mktemp("campaign")
    campaign = sim.simulate_standard(root / "ds", seed=11, frames=10, attempts=2,
                                          bias_temperatures=(0.0, 25.0),
                                          dark_temperatures=(25.0,), dark_exposures=(0.5, 2.0),
                                          flat_temperatures=(25.0,), flat_exposures=(0.1,))
    ds = campaign.root
    convert_sections({"BIAS": ds / "TestSection1", "DARK": ds / "TestSection2",
                      "FLAT": ds / "TestSection3"}, ConversionSettings())
    table = build_index(discover=[ds], settings=IndexSettings())
    write_index(table, ds / "index.csv")
    out = root / "out"
    result = process_index.run(ds / "index.csv", out, MasterSettings(workers=1))
    truth = np.load(ds / "truth" / "truth.npz")
    physics = json.loads((ds / "truth" / "truth.json").read_text())
    return ds, out, result, truth, physics


def _summary(out):
    return pd.read_csv(out / "masters_summary.csv")


def test_masters_per_group_and_names(processed):
    ds, out, result, _, _ = processed
    summary = _summary(out)
    main = summary[summary["ATTEMPT"].isna()]
    assert sorted(main[main.CALTYPE == "BIAS"]["TBIN"].round().tolist()) == [0.0, 25.0]
    darks = main[main.CALTYPE == "DARK"]
    assert sorted(darks["EXPTIME"].tolist()) == [0.5, 2.0]
    assert (main["STATUS"] == "written").all(), main[["PATH", "STATUS", "REASON"]]
    names = [Path(p).name for p in summary["PATH"]]
    assert len(names) == len(set(names))  # no collisions
    assert (summary["ATTEMPT"].notna()).sum() > 0  # per-attempt masters too
    for path in main["PATH"]:
        ccd = CCDData.read(path)
        assert ccd.uncertainty is not None and ccd.mask is not None
        assert ccd.header["NCOMBINE"] >= 3


def test_bias_master_matches_truth_within_uncertainty(processed):
    _, out, _, truth, _ = processed
    summary = _summary(out)
    row = summary[(summary.CALTYPE == "BIAS") & summary.ATTEMPT.isna()].iloc[-1]
    ccd = CCDData.read(row["PATH"])
    expected = truth["bias_a"] + truth["bias_b"] * ccd.header["TAVG"]
    z = (ccd.data - expected) / ccd.uncertainty.array
    good = ~ccd.mask
    # errors must match the reported uncertainties: z ~ N(0, 1) up to the spread of the
    # temperature jitter, which the per-pixel slope turns into a small common offset
    assert 0.75 < np.std(z[good]) < 1.35
    assert abs(np.median(z[good])) < 0.5
    with fits.open(row["PATH"]) as hdul:
        noise = hdul["NOISE"].data
    quant = 16 / math.sqrt(12)
    normal = ~truth["noisy_mask"] & good
    ratio = np.median(noise[normal]) / np.median(np.hypot(truth["read_noise"][normal], quant))
    assert abs(ratio - 1) < 0.08


def test_dark_master_recovers_dark_signal(processed):
    _, out, _, truth, meta = processed
    phys = meta["physics"] if "physics" in meta else meta
    summary = _summary(out)
    row = summary[(summary.CALTYPE == "DARK") & summary.ATTEMPT.isna()
                  & (summary.EXPTIME == 2.0)].iloc[0]
    ccd = CCDData.read(row["PATH"])
    # two bias temperatures bracket the darks: the per-pixel bias(T) model is subtracted
    assert ccd.header["BIASFILE"] == "bias_model.fits" and ccd.header["SUBTRACT"] == "bias(T)"
    t_ref, t_d = phys["t_ref"], phys["doubling_temperature"]
    exposure = 2.0 + phys["real_exposure_offset"] * 1e-6
    expected = truth["dark_ref_adu"] * 2.0 ** ((ccd.header["TAVG"] - t_ref) / t_d) * exposure
    good = ~ccd.mask & ~truth["hot_mask"]
    # mean dark signal within 3 standard errors of the mean, and per-pixel z-scores ~ N(0,1)
    diff = ccd.data[good] - expected[good]
    err = ccd.uncertainty.array[good]
    assert abs(diff.mean()) < 3 * np.sqrt(np.mean(err ** 2) / diff.size) + 2.0
    assert 0.7 < np.std(diff / err) < 1.4


def test_bias_model_recovers_truth(processed):
    _, out, _, truth, _ = processed
    path = out / "masters" / "bias" / "bias_model.fits"
    with fits.open(path) as hdul:
        t_ref = hdul[0].header["TREF"]
        a, a_err = hdul[0].data, hdul["UNCERT"].data
        b, b_err = hdul["B"].data, hdul["SIGMA_B"].data
        assert np.array_equal(a_err, hdul["SIGMA_A"].data)
    z_b = (b - truth["bias_b"]) / b_err
    z_a = (a - (truth["bias_a"] + truth["bias_b"] * t_ref)) / a_err
    assert 0.7 < np.std(z_b) < 1.4 and abs(np.median(z_b)) < 0.3
    assert 0.7 < np.std(z_a) < 1.4


def test_flat_master_normalised_and_shows_prnu_vignetting(processed):
    _, out, _, truth, _ = processed
    summary = _summary(out)
    row = summary[(summary.CALTYPE == "FLAT") & summary.ATTEMPT.isna()].iloc[0]
    ccd = CCDData.read(row["PATH"])
    assert abs(np.median(ccd.data[~ccd.mask]) - 1) < 1e-3
    assert ccd.header["DARKFILE"] != ""
    shape = truth["prnu"] * truth["vignetting"]
    corr = np.corrcoef(ccd.data[~ccd.mask], shape[~ccd.mask])[0, 1]
    assert corr > 0.9


def test_frame_stats_and_plots(processed):
    ds, out, result, _, _ = processed
    stats = pd.read_csv(out / "frame_stats.csv")
    for column in ("PATH", "CALTYPE", "TEMP", "EXPTIME", "MEAN", "MEDIAN", "STD", "P16", "P84",
                   "ZEROFRACTION", "SATFRACTION"):
        assert column in stats.columns
    assert len(stats) == len(pd.read_csv(ds / "index.csv"))
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert "bias_mean_vs_temperature.png" in pngs and "dark_signal_vs_exposure.png" in pngs
    assert len(list((out / "comparisons").rglob("*.png"))) >= 4
    ax = process_index.plots.plot_dark_vs_exposure(_summary(out))
    assert ax.get_xlabel() and "[" in ax.get_ylabel()
    assert json.loads((out / "config_used.json").read_text())["masters"]["method"] == "sigclip"


def test_rerun_is_noop(processed):
    ds, out, _, _, _ = processed
    before = {p: p.stat().st_mtime_ns for p in (out / "masters").rglob("*.fits")}
    result = process_index.run(ds / "index.csv", out, MasterSettings(workers=1))
    assert result.count("written") == 0 and result.count("existing") > 0
    after = {p: p.stat().st_mtime_ns for p in (out / "masters").rglob("*.fits")}
    assert before == after


def test_fitsverify_masters(processed):
    _, out, _, _, _ = processed
    if shutil.which("fitsverify") is None:
        pytest.skip("fitsverify not installed")
    paths = [str(p) for p in (out / "masters").rglob("*.fits")][:6]
    run = subprocess.run(["fitsverify", "-q", "-e", *paths], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_temperature_bins_keep_jittered_setpoint_together():
    temps = np.array([12.3, 12.6, 12.45, 12.7, 0.1, -0.2, 24.9])
    labels = cluster(temps, 1.0)
    assert len(set(labels[:4])) == 1 and labels[4] == labels[5] and len(set(labels)) == 3


def test_exposure_names_never_collide():
    table = pd.DataFrame({"PATH": list("abcd"), "CALTYPE": "DARK", "STAGE": "", "DOSE": np.nan,
                          "TEMP": [20.0, 20.1, 19.9, 20.0], "EXPTIME": [0.01, 0.01, 0.04, 0.04],
                          "ATTEMPT": "attempt0"})
    keys = [k for k, _ in calibration_groups(table)]
    assert [k.tag for k in keys] == ["T20.0C_E0.01s", "T20.0C_E0.04s"]


def test_dark_refused_without_bias_in_tolerance(tmp_path):
    campaign = sim.simulate_standard(tmp_path / "ds", seed=3, frames=3, attempts=1,
                                          bias_temperatures=(0.0,), dark_temperatures=(25.0,),
                                          dark_exposures=(0.5,), flat_temperatures=(25.0,),
                                          flat_exposures=(0.1,), defects=False)
    ds = campaign.root
    convert_sections({"BIAS": ds / "TestSection1", "DARK": ds / "TestSection2",
                      "FLAT": ds / "TestSection3"}, ConversionSettings())
    write_index(build_index(discover=[ds]), ds / "index.csv")
    result = process_index.run(ds / "index.csv", tmp_path / "out",
                               MasterSettings(workers=1, per_attempt=False))
    refused = [r for r in result.records if r.status == "refused"]
    assert refused and all(r.key.caltype in ("DARK", "FLAT") for r in refused)
    assert "no bias master within 2 degC" in refused[0].reason


def test_group_key_stage_dir():
    key = GroupKey("radiating", 10.0, "BIAS", 20.0)
    assert key.stage_dir == "radiating_D10kR" and key.tag == "T20.0C"
    assert GroupKey("post", math.nan, "BIAS", 20.0).stage_dir == "post"
