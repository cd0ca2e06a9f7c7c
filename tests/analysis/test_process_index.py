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
from statcheck import assert_close, assert_pulls, clipped_factor

from analysis import process_index
from analysis.masters import MasterSettings
from utils import plotting, sim
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
    with plotting.figure_output("all", workers=0):  # comparisons too
        result = process_index.run(ds / "index.csv", out, MasterSettings(workers=1))
    truth = np.load(ds / "truth" / "truth.npz")
    physics = json.loads((ds / "truth" / "truth.json").read_text())
    return ds, out, result, truth, physics


def _summary(out):
    return pd.read_csv(out / "masters_summary.csv")


def test_flat_master_error_budget(processed):
    """A normalised flat master's UNCERT is normalised like its data: the stack's standard
    error NOISE / sqrt(NCOMB) and, added once, the error of what was subtracted -- the bias
    reference (the dark master's SUBERR, the same map) and the dark master scaled by DARKSCL
    -- divided by the level FLATNORM [adu]."""
    _, out, _, _, _ = processed
    summary = _summary(out)
    row = summary[(summary.CALTYPE == "FLAT") & summary.ATTEMPT.isna()].iloc[0]
    with fits.open(row["PATH"]) as hdul:
        head = hdul[0].header
        uncert, noise, ncomb = (np.asarray(hdul[n].data, np.float64)
                                for n in ("UNCERT", "NOISE", "NCOMB"))
        good = ~np.asarray(hdul["MASK"].data, bool)
    stack_err2 = noise ** 2 / ncomb
    # the stack's own error is most of it (measured 98.8 % of UNCERT on this campaign)
    ratio = np.median(np.sqrt(stack_err2[good]) / uncert[good])
    assert 0.95 < ratio <= 1.0
    with fits.open(Path(row["PATH"]).parent.parent / "dark" / head["DARKFILE"]) as hdul:
        bias_err, dark_err = (np.asarray(hdul[n].data, np.float64) for n in ("SUBERR", "UNCERT"))
    expected = bias_err ** 2 + (head["DARKSCL"] * dark_err) ** 2  # [adu^2]
    # an identity up to the float32 rounding of the maps (the medians over the pixels agreed
    # to 1e-5 on this campaign): 0.1 % resolves the dark's part (8 % of it, 0.2 x 10.8 adu
    # against the bias reference's 7.2 adu)
    sub2 = (uncert ** 2 - stack_err2) * head["FLATNORM"] ** 2
    assert np.median(sub2[good]) == pytest.approx(np.median(expected[good]), rel=1e-3)


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
    # unbiased, and errors calibrated up to the documented clipped-mean factor (the bias is
    # linear in T, so the frames' temperature jitter averages to the master's TAVG exactly)
    assert_pulls(z[good], expected_std=clipped_factor(ccd.header["NCOMBINE"]),
                 what="bias master vs truth")
    with fits.open(row["PATH"]) as hdul:
        noise = hdul["NOISE"].data
    quant = 16 / math.sqrt(12)
    normal = ~truth["noisy_mask"] & good
    # the per-pixel noise of N samples (read noise + quantisation); clipping trims it by
    # the documented few per cent: median ratio to truth within 5 standard errors of a
    # median of sample stds (1.2533 / sqrt(2 (N - 1)) / sqrt(pixels)) of that factor
    n = ccd.header["NCOMBINE"]
    ratio = np.median(noise[normal]) / np.median(np.hypot(truth["read_noise"][normal], quant))
    se = 1.2533 / math.sqrt(2 * (n - 1)) / math.sqrt(normal.sum())
    assert_close(float(ratio), 1 / clipped_factor(n) ** 0.5, 2 * se + 0.01,
                 what="noise map / true read noise")


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
    # the mean dark signal within 4 standard errors of its mean (0.4 adu here): bias
    # subtracted at T + 0.35 degC, a 2.8 adu error, sits at ~6.5 sigma and must fail
    assert_close(float(diff.mean()), 0.0, float(np.sqrt(np.mean(err ** 2) / diff.size)), k=4,
                 what="mean dark signal - truth [adu]")
    assert_pulls(diff / err, expected_std=clipped_factor(ccd.header["NCOMBINE"]),
                 what="dark master vs truth")


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
    # two temperatures: no chi-square to calibrate ERRSCALE, so the errors keep the
    # clipped-mean factor of the 20-frame masters
    factor = clipped_factor(20)
    assert_pulls(z_b, expected_std=factor, what="bias slope")
    assert_pulls(z_a, expected_std=factor, what="bias at TREF")


def test_flat_master_normalised_and_shows_prnu_vignetting(processed):
    ds, out, _, truth, _ = processed
    summary = _summary(out)
    row = summary[(summary.CALTYPE == "FLAT") & summary.ATTEMPT.isna()].iloc[0]
    ccd = CCDData.read(row["PATH"])
    assert abs(np.median(ccd.data[~ccd.mask]) - 1) < 1e-3
    # FLATNORM is the level divided out [adu]: the frames' median minus bias and dark (2 %:
    # the dark signal of 0.1 s and the median of per-frame medians, not statistics)
    index = pd.read_csv(ds / "index.csv")
    raw_level = float(np.median(index.loc[index.CALTYPE == "FLAT", "MEDIAN"]))
    bias_level = float(np.median(truth["bias_a"] + truth["bias_b"] * ccd.header["TAVG"]))
    assert ccd.header["FLATNORM"] == pytest.approx(raw_level - bias_level, rel=0.02)
    # NOISE is normalised like the data: the frames' temporal noise relative to the level,
    # ~ 1 / sqrt(electrons) (gain 2 e-/ADC count, 16 stored adu per count) for shot noise;
    # measured 0.958 of it (clipping trims a sample std by a few per cent), hence 10 %
    electrons = ccd.header["FLATNORM"] / 16 * 2.0
    with fits.open(row["PATH"]) as hdul:
        noise = float(np.nanmedian(hdul["NOISE"].data))
    assert noise == pytest.approx(1 / math.sqrt(electrons), rel=0.1)
    # a dark was subtracted (not "none"), scaled to the flat's exposure, from this run's masters
    assert ccd.header["DARKFILE"].startswith("master_dark_")
    assert ccd.header["DARKSCL"] == pytest.approx(ccd.header["EXPTIME"] / ccd.header["DARKEXP"])
    assert (Path(row["PATH"]).parent.parent / "dark" / ccd.header["DARKFILE"]).is_file()
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
    # the values are the frames' own statistics (population std, 16th/84th percentiles)
    good = stats[~stats["BADFITS"].astype(bool)]
    for _, row in good.iloc[[0, len(good) // 2, -1]].iterrows():
        data = fits.getdata(ds / row["PATH"] if not Path(row["PATH"]).is_absolute()
                            else row["PATH"]).astype(np.float64)
        assert row["MEAN"] == pytest.approx(data.mean(), rel=1e-6)
        assert row["MEDIAN"] == pytest.approx(np.median(data), rel=1e-6)
        assert row["STD"] == pytest.approx(data.std(), rel=1e-5)
        assert row["P16"] == pytest.approx(np.percentile(data, 16), abs=16.0)
        assert row["P84"] == pytest.approx(np.percentile(data, 84), abs=16.0)
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


def test_zero_degree_bin_is_not_labelled_minus_zero():
    """A bin whose median reading is -0.03 degC is the 0 degC bin: label +0.0 (TBIN cards,
    CSV columns) and file names T0.0C, master_bias_0.0C (was T-0.0C, master_bias_-0.0C)."""
    from bias_pipeline.pipeline import master_file
    from dark_pipeline.masters import master_file as dark_master_file

    table = pd.DataFrame({"PATH": list("abc"), "CALTYPE": "BIAS", "STAGE": "", "DOSE": np.nan,
                          "TEMP": [-0.19, -0.03, 0.31], "EXPTIME": 1e-5, "ATTEMPT": "attempt0"})
    (key, _), = calibration_groups(table)
    assert key.temperature == 0.0 and math.copysign(1.0, key.temperature) == 1.0
    assert key.tag == "T0.0C"
    assert master_file(Path("m"), -0.03).name == "master_bias_0.0C.fits"
    assert dark_master_file(Path("m"), -0.0, 2.0).name == "master_dark_T0.0C_E2s.fits"


def test_legends_name_the_stage_only_when_there_is_one():
    """Masters of a campaign without irradiation stages: '1 s', not '1 s, all frames'; a
    stage and dose are still named."""
    import matplotlib.pyplot as plt

    from analysis.plots import plot_dark_rate_vs_temperature

    masters = pd.DataFrame({"CALTYPE": "DARK", "ATTEMPT": np.nan, "STATUS": "written",
                            "STAGE": [np.nan, np.nan, "radiating", "radiating"],
                            "DOSE": [np.nan, np.nan, 10.0, 10.0], "TBIN": [0.0, 10.0] * 2,
                            "TAVG": [0.02, 10.01] * 2, "EXPTIME": 1.0,
                            "MEAN": [4.0, 8.0, 5.0, 9.0]})
    ax = plot_dark_rate_vs_temperature(masters)
    assert ax.get_legend_handles_labels()[1] == ["1 s", "1 s, radiating 10 krad"]
    plt.close(ax.figure)


def _indexed_campaign(tmp_path, seed: int, **layout) -> Path:
    """A small simulated standard campaign (3 frames, 1 attempt, no defects), converted and
    indexed: its folder (``index.csv`` inside)."""
    ds = sim.simulate_standard(tmp_path / "ds", seed=seed, frames=3, attempts=1, defects=False,
                               **layout).root
    convert_sections({"BIAS": ds / "TestSection1", "DARK": ds / "TestSection2",
                      "FLAT": ds / "TestSection3"}, ConversionSettings())
    write_index(build_index(discover=[ds]), ds / "index.csv")
    return ds


def test_dark_refused_without_bias_in_tolerance(tmp_path):
    ds = _indexed_campaign(tmp_path, 3, bias_temperatures=(0.0,), dark_temperatures=(25.0,),
                           dark_exposures=(0.5,), flat_temperatures=(25.0,),
                           flat_exposures=(0.1,))
    result = process_index.run(ds / "index.csv", tmp_path / "out",
                               MasterSettings(workers=1, per_attempt=False))
    refused = [r for r in result.records if r.status == "refused"]
    assert refused and all(r.key.caltype in ("DARK", "FLAT") for r in refused)
    assert "no bias master within 2 degC" in refused[0].reason


def test_saturated_flat_refused_with_its_reason(tmp_path):
    # the 1.3 s flats saturate every pixel (the simulated campaign's top level): refused,
    # saying so and what to do, while the 0.1 s set is built
    ds = _indexed_campaign(tmp_path, 4, bias_temperatures=(25.0,), dark_temperatures=(25.0,),
                           dark_exposures=(0.5,), flat_temperatures=(25.0,),
                           flat_exposures=(0.1, 1.3))
    result = process_index.run(ds / "index.csv", tmp_path / "out",
                               MasterSettings(workers=1, per_attempt=False))
    flats = {r.key.exptime: r for r in result.records if r.key.caltype == "FLAT"}
    assert flats[0.1].status != "refused"
    assert flats[1.3].status == "refused"
    assert "no valid pixel: 100% of the samples saturated (>= " in flats[1.3].reason
    assert "shorter exposure" in flats[1.3].reason


def test_failed_master_write_stops_the_run(tmp_path, monkeypatch):
    # masters are written in the background while the next is stacked: a write that fails
    # (disk full) still stops the run with its error, not a summary claiming the master
    from utils.stack.combine import MasterResult

    ds = _indexed_campaign(tmp_path, 5, bias_temperatures=(0.0, 10.0, 20.0),
                           dark_temperatures=(10.0,), dark_exposures=(0.5,),
                           flat_temperatures=(10.0,), flat_exposures=(0.1,))
    write, calls = MasterResult.write, []

    def failing(self, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return write(self, path, **kwargs)
    monkeypatch.setattr(MasterResult, "write", failing)
    with pytest.raises(OSError, match="No space left"):
        process_index.run(ds / "index.csv", tmp_path / "out",
                          MasterSettings(workers=1, per_attempt=False))
    assert len(calls) >= 2 and not calls[1].exists()


def test_group_key_stage_dir():
    key = GroupKey("radiating", 10.0, "BIAS", 20.0)
    assert key.stage_dir == "radiating_D10kR" and key.tag == "T20.0C"
    assert GroupKey("post", math.nan, "BIAS", 20.0).stage_dir == "post"


# --- the command line: main() and the combination and grouping options, checked by result ---

def _bias_frames(ds, tbin):
    index = pd.read_csv(ds / "index.csv")
    rows = index[(index.CALTYPE == "BIAS") & ~index.BADFITS.astype(bool)
                 & (index.TEMP.sub(tbin).abs() < 1)]
    return np.stack([fits.getdata(ds / p).astype(np.float64) for p in rows["PATH"]])


@pytest.mark.parametrize("method, extra", [("median", []), ("mean", ["--temp-bin", "30"])])
def test_main_method_and_temp_bin_give_that_master(processed, tmp_path, method, extra):
    ds, _, _, _, _ = processed
    out = tmp_path / method
    assert process_index.main([str(ds / "index.csv"), str(out), "--method", method,
                               "--no-per-attempt", "--no-progress", "--plots", "none",
                               *extra]) == 0
    summary = _summary(out)
    assert summary["ATTEMPT"].isna().all()
    bias = summary[summary.CALTYPE == "BIAS"]
    if extra:  # bins 30 degC wide: the 0 and 25 degC bias frames make one master, so the
        # darks at 25 degC have no bias master within 2 degC and are refused, with the reason
        assert len(bias) == 1 and bias.iloc[0]["NCOMBINE"] == 40
        assert fits.getheader(bias.iloc[0]["PATH"])["TBINW"] == 30.0
        darks = summary[summary.CALTYPE == "DARK"]
        assert (darks["STATUS"] == "refused").all()
        assert darks["REASON"].str.contains("no bias master within 2 degC").all()
        stack = np.concatenate([_bias_frames(ds, 0.0), _bias_frames(ds, 25.0)])
        row = bias.iloc[0]
    else:
        assert (summary["STATUS"] == "written").all()
        row = bias[bias.TBIN.round() == 25.0].iloc[0]
        stack = _bias_frames(ds, 25.0)
    ccd = CCDData.read(row["PATH"])
    assert ccd.header["COMBMETH"] == method
    expected = np.median(stack, axis=0) if method == "median" else stack.mean(axis=0)
    np.testing.assert_allclose(ccd.data, expected, rtol=1e-6)
    # the standard error of a median is sqrt(pi/2) times that of a mean of the same samples
    noise = fits.getdata(row["PATH"], "NOISE")
    factor = math.sqrt(math.pi / 2) if method == "median" else 1.0
    np.testing.assert_allclose(ccd.uncertainty.array,
                               factor * noise / math.sqrt(len(stack)), rtol=1e-5)


def test_main_sigma_sets_the_clipping_threshold(processed, tmp_path):
    ds, out0, _, _, _ = processed
    out = tmp_path / "narrow"
    assert process_index.main([str(ds / "index.csv"), str(out), "--sigma", "2",
                               "--no-per-attempt", "--no-progress", "--plots", "none"]) == 0
    query = "CALTYPE == 'DARK' and EXPTIME == 2.0 and ATTEMPT != ATTEMPT"
    narrow = fits.getheader(_summary(out).query(query).iloc[0]["PATH"])
    default = fits.getheader(_summary(out0).query(query).iloc[0]["PATH"])
    assert narrow["CLIPLO"] == narrow["CLIPHI"] == 2.0 and default["CLIPLO"] == 4.0
    # a 2-sigma clip rejects ~4.6 % of Gaussian samples, the default 4-sigma one ~0.006 %
    assert narrow["NREJECT"] > 5 * default["NREJECT"]


def test_nearest_master_tolerance_is_inclusive():
    # "within 2 degC" includes 2 degC; among equally near masters the longest exposure wins
    from analysis.masters import MasterRecord, _nearest

    def dark(t, exptime):
        return MasterRecord(GroupKey("", math.nan, "DARK", t, exptime), Path(f"d{t}_{exptime}"),
                            "written")
    flat = GroupKey("", math.nan, "FLAT", 25.0, 0.1)
    records = [dark(23.0, 1.0), dark(27.0, 4.0), dark(30.0, 8.0)]
    assert _nearest(records, flat, "DARK", 2.0).key.exptime == 4.0
    assert _nearest(records, flat, "DARK", 1.999) is None


def test_frame_shapes_counts_each_shape_and_skips_unknown_sizes():
    from analysis.masters import frame_shapes

    rows = pd.DataFrame({"NAXIS1": [64, 64, 32, None, 64, "x"],
                         "NAXIS2": [48, 48, 48, 48, 48, 48]})
    assert frame_shapes(rows) == {(64, 48): 3, (32, 48): 1}
    assert frame_shapes(rows.iloc[:2]) == {(64, 48): 2}
    assert frame_shapes(rows.drop(columns="NAXIS2")) == {}


def test_bias_std_axis_names_frames_and_masters():
    """The frames' spatial std and the bias masters' per-pixel temporal noise share the axis:
    its label names both (it said 'frame std (spatial)' for the masters' squares too)."""
    import matplotlib.pyplot as plt

    from analysis import plots

    stats = pd.DataFrame({"CALTYPE": ["BIAS"] * 2, "BADFITS": [False] * 2, "STAGE": ["", ""],
                          "DOSE": [np.nan] * 2, "TEMP": [0.0, 10.0], "STD": [70.0, 72.0]})
    masters = pd.DataFrame({"CALTYPE": ["BIAS"], "STATUS": ["written"], "ATTEMPT": [""],
                            "TAVG": [5.0],
                            "NOISE": [31.0], "MEAN": [1600.0]})
    ax = plots.plot_metric_vs_temperature(stats, masters, "BIAS", "STD")
    assert ax.get_ylabel() == "bias std: frames spatial, masters temporal [adu]"
    plt.close(ax.figure)
    ax = plots.plot_metric_vs_temperature(stats, masters.iloc[:0], "BIAS", "STD")
    assert ax.get_ylabel() == "bias frame std (spatial) [adu]"
    plt.close(ax.figure)


@pytest.mark.parametrize("caltype", ["DARK", "FLAT"])
def test_comparison_frame_is_reduced_like_the_masters_inputs(processed, caltype):
    """The comparison figure's 'frame - master' of a master made with the bias model: the
    frame kept its bias (BIASFILE bias_model.fits was not looked up), so a dark's difference
    read +3300 adu everywhere and a flat's showed the vignetting (qamodes review). Now its
    median is 0 within a few standard errors of the noise."""
    _, out, result, _, _ = processed
    by_name = {r.path.name: r for r in result.records if r.path is not None}
    rec = next(r for r in result.records if r.key.caltype == caltype and not r.key.attempt
               and r.path is not None and r.worst_frame)
    master, frame, header = process_index.comparison_images(rec, by_name, out)
    assert header["BIASFILE"] == "bias_model.fits"
    diff = (frame - master)[np.isfinite(frame - master)]
    spread = 1.4826 * np.median(np.abs(diff - np.median(diff)))
    assert abs(np.median(diff)) < 5 * 1.25 * spread / math.sqrt(diff.size), (
        np.median(diff), spread)
    if caltype == "FLAT":
        # a bias left in a normalised flat flattens its vignetting: the difference followed
        # the master with slope -0.28 on this campaign; 0.085 now (the noisiest frame's own)
        good = np.isfinite(frame - master)
        slope = np.polyfit(master[good] - 1.0, (frame - master)[good], 1)[0]
        assert abs(slope) < 0.15, slope


def test_flat_set_of_one_frame_is_written_flagged(tmp_path):
    """README (Errors and re-runs): a set of fewer than 3 frames gets its master written, with a
    warning and every pixel flagged.  A flat set of one frame was refused instead ('no valid
    pixel: every pixel masked'): its level was taken over the unmasked pixels only, and the
    'too few samples' flag masks them all.  The level now comes from the pixels flagged for
    nothing else."""
    ds = _indexed_campaign(tmp_path, 5, bias_temperatures=(25.0,), dark_temperatures=(25.0,),
                           dark_exposures=(0.1,), flat_temperatures=(25.0,),
                           flat_exposures=(0.1,))
    table = pd.read_csv(ds / "index.csv")
    flats = table.index[table["CALTYPE"] == "FLAT"]
    table.drop(flats[1:]).to_csv(ds / "index.csv", index=False)
    result = process_index.run(ds / "index.csv", tmp_path / "out",
                               MasterSettings(workers=1, per_attempt=False))
    flat = [r for r in result.records if r.key.caltype == "FLAT"]
    assert len(flat) == 1 and flat[0].status != "refused", flat[0].reason
    assert "too few frames: 1" in flat[0].reason
    with fits.open(flat[0].path) as hdul:
        assert hdul[0].header["FLATNORM"] > 0 and hdul["MASK"].data.all()
        assert np.nanmedian(hdul[0].data) == pytest.approx(1.0, abs=1e-6)


def test_summary_noise_is_the_typical_noise_of_the_noise_map(processed):
    """masters_summary NOISE (and the NOISEMED card) is the Gaussian sigma of the master's
    NOISE map for its own counts (utils.stack.stats.typical_noise), so the 10-frame attempt
    masters and the 20-frame group master of one bias set agree with each other and with
    the truth; the plain median of sample stds put the attempts ~2 % below the group."""
    from utils.stack.stats import typical_noise

    _, out, _, truth, _ = processed
    summary = _summary(out)
    rows = summary[(summary.CALTYPE == "BIAS") & (summary.TBIN.round() == 25.0)]
    assert len(rows) == 3  # two attempts and the set
    quant = 16 / math.sqrt(12)
    expected = float(np.median(np.hypot(truth["read_noise"], quant)))
    for _, row in rows.iterrows():
        with fits.open(row["PATH"]) as hdul:
            value = typical_noise(hdul["NOISE"].data, hdul["NCOMB"].data)
            n = int(np.median(hdul["NCOMB"].data))
            assert hdul[0].header["NOISEMED"] == pytest.approx(value, rel=1e-12)
        assert row["NOISE"] == pytest.approx(value, rel=1e-9)
        # median of a variance over the pixels: ~1.25 sqrt(2 / (n - 1) / pixels), halved for
        # a sigma; 4 standard errors, plus the spread of the sensor's read noise (its own
        # median vs this estimator's) and the clipping's few per mille
        se = 1.2533 * math.sqrt(2 / (n - 1) / truth["read_noise"].size) / 2
        assert row["NOISE"] == pytest.approx(expected, rel=4 * se + 0.01), row["PATH"]


def test_masters_finished_behind_equal_masters_finished_in_place(tmp_path, monkeypatch):
    # each master's statistics, header and file are made in the writer's thread while the
    # next master is stacked: the same files (every HDU's cards but DATE, and data) and the
    # same records (statistics, a refused saturated flat) as when each is finished in place
    from analysis import masters
    from utils.io.index import DatasetIndex

    ds = _indexed_campaign(tmp_path, 6, bias_temperatures=(0.0, 25.0), dark_temperatures=(25.0,),
                           dark_exposures=(0.5, 2.0), flat_temperatures=(25.0,),
                           flat_exposures=(0.1, 1.3))
    settings = MasterSettings(workers=2, per_attempt=False)
    index = DatasetIndex.from_csv(ds / "index.csv").table
    index["BADFITS"] = False
    behind = masters.build_masters(index.copy(), tmp_path / "behind", settings)
    monkeypatch.setattr(masters, "WRITE_DEPTH", 0)
    in_place = masters.build_masters(index.copy(), tmp_path / "in_place", settings)
    assert {r.status for r in behind} == {"written", "refused"}
    for a, b in zip(behind, in_place, strict=True):
        assert (a.status, a.reason, a.ncombine) == (b.status, b.reason, b.ncombine)
        np.testing.assert_array_equal([a.mean, a.median, a.std, a.noise, a.level, a.tavg],
                                      [b.mean, b.median, b.std, b.noise, b.level, b.tavg])
        assert (a.path is None) == (b.path is None)
        if a.path is None:
            continue
        with fits.open(a.path) as ha, fits.open(b.path) as hb:
            assert len(ha) == len(hb)
            for x, y in zip(ha, hb):
                assert [c.image for c in x.header.cards if c.keyword != "DATE"] == \
                    [c.image for c in y.header.cards if c.keyword != "DATE"]
                assert x.data.tobytes() == y.data.tobytes()


def test_frame_unreadable_while_stacked_refuses_its_set_as_before(tmp_path, monkeypatch):
    # the blocks of every master run in one shared pool and a master's finish job waits for
    # them, so a frame that turns out unreadable while its blocks are read raises there, in
    # the writer's thread: its set is still refused with the reason (and the others built),
    # the same records as when the stacking raises in the main thread (no shared pool)
    from analysis import masters
    from utils.errors import UnreadableFrameError
    from utils.io.index import DatasetIndex
    from utils.stack import combine as stacking

    ds = _indexed_campaign(tmp_path, 7, bias_temperatures=(0.0, 25.0), dark_temperatures=(25.0,),
                           dark_exposures=(0.5, 2.0), flat_temperatures=(25.0,),
                           flat_exposures=(0.1,))
    settings = MasterSettings(workers=2, per_attempt=False)
    index = DatasetIndex.from_csv(ds / "index.csv").table
    index["BADFITS"] = False
    bad = Path(index[(index.CALTYPE == "DARK") & (index.EXPTIME == 2.0)].PATH.iloc[1]).name
    read_bytes = stacking._FileSource.read_bytes

    def failing(self, i, start, stop, buf):
        if Path(self.paths[i]).name == bad and stop == self.shape[0]:  # one block: the last
            raise UnreadableFrameError(self.paths[i], f"short read of rows {start}:{stop}")
        return read_bytes(self, i, start, stop, buf)
    monkeypatch.setattr(stacking._FileSource, "read_bytes", failing)
    shared = masters.build_masters(index.copy(), tmp_path / "shared", settings)
    stack_rows = masters.stack_rows
    monkeypatch.setattr(masters, "stack_rows",
                        lambda *a, **k: stack_rows(*a, **{**k, "executor": None}))
    alone = masters.build_masters(index.copy(), tmp_path / "alone", settings)
    refused = [r for r in shared if r.status == "refused"]
    assert len(refused) == 1 and refused[0].key.exptime == 2.0
    assert bad in refused[0].reason and "short read of rows" in refused[0].reason
    assert sum(r.status == "written" for r in shared) == len(shared) - 1
    for a, b in zip(shared, alone, strict=True):
        assert (a.status, a.reason, a.path is None, a.worst_frame, a.ncombine) == \
            (b.status, b.reason, b.path is None, b.worst_frame, b.ncombine)
        np.testing.assert_array_equal([a.mean, a.median, a.std, a.noise, a.level],
                                      [b.mean, b.median, b.std, b.noise, b.level])
