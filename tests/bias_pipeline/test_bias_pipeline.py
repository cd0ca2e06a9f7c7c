"""Bias pipeline on a small simulated campaign with known truth (6 temperatures x 20 frames)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty
from statcheck import assert_close, assert_pulls

from bias_pipeline import bias_temp_analysis, generate_bias, run_pipeline
from utils.io.index import build_index, write_index
from utils.sim import simulate_standard

TEMPERATURES = (-10.0, -2.0, 5.0, 12.5, 20.0, 28.0)


@pytest.fixture(scope="module")
def bias_campaign(tmp_path_factory):
    """Converted campaign with 6 bias temperatures x 2 attempts x 10 frames, 48 x 32 pixels."""
    from conftest import convert_campaign

    root = tmp_path_factory.mktemp("bias") / "campaign"
    campaign = simulate_standard(root, seed=5, width=48, height=32, frames=10, attempts=2,
                                 bias_temperatures=TEMPERATURES, dark_temperatures=(25.0,),
                                 dark_exposures=(1.0,), flat_temperatures=(25.0,),
                                 flat_exposures=(0.1,), defects=False)
    convert_campaign(campaign)
    return campaign


@pytest.fixture(scope="module")
def bias_run(bias_campaign, tmp_path_factory):
    """``(campaign, out, exit status)`` of one CLI run with --generate-set and --gain."""
    out = tmp_path_factory.mktemp("bias_out") / "out"
    status = run_pipeline.main(["--basepath", str(bias_campaign.root / "TestSection1"),
                                "--output_dir", str(out), "--generate-set", "--save-eval-fits",
                                "--gain", "2.0", "--no-progress", "--plots", "all"])
    return bias_campaign, out, status


def _model(out):
    with fits.open(out / "bias_model.fits") as hdul:
        return {h.name: (np.asarray(h.data) if h.is_image else h.data) for h in hdul}, \
            hdul[0].header.copy()


def test_run_succeeds_and_writes_named_products(bias_run):
    _, out, status = bias_run
    assert status == 0
    for name in ("bias_model.fits", "bias_model/bias_a_map.fits", "bias_model/bias_b_map.fits",
                 "read_noise.fits", "read_noise.csv", "summary.json", "config_used.json",
                 "masters.csv", "evaluation/evaluation_summary.png",
                 "evaluation/evaluation_summary.csv", "plots/bias_a_map.png",
                 "plots/bias_b_map.png", "plots/bias_b_histogram.png",
                 "plots/bias_vs_temperature_pixels.png", "plots/read_noise_map.png"):
        assert (out / name).is_file(), name
    masters = sorted(p.name for p in (out / "bias_grouped_by_temp").glob("*.fits"))
    assert len(masters) == len(TEMPERATURES) and "master_bias_12.5C.fits" in masters
    synthetic = sorted((out / "bias_masks_by_temp").glob("synthetic_bias_*C.fits"))
    assert len(synthetic) == len(TEMPERATURES)
    for kind in ("real_bias", "synthetic_bias", "mae", "mape"):
        assert (out / "evaluation" / f"{kind}_12.5C.png").is_file()
        assert (out / "evaluation" / f"{kind}_12.5C.fits").is_file()
    assert not list(out.rglob("*.tmp*"))


def test_slope_and_intercept_pulls_match_reported_errors(bias_run):
    campaign, out, _ = bias_run
    truth = campaign.maps()
    maps, header = _model(out)
    normal = (maps["MASK"] == 0) & ~truth["noisy_mask"] & ~truth["hot_mask"]
    assert normal.mean() > 0.95
    t_ref = header["TREF"]
    z_b = ((maps["B"] - truth["bias_b"]) / maps["SIGMA_B"])[normal]
    z_a = ((maps["PRIMARY"] - (truth["bias_a"] + truth["bias_b"] * t_ref))
           / maps["SIGMA_A"])[normal]
    assert_pulls(z_b, what="B pulls")
    assert_pulls(z_a, what="A pulls")
    # the prediction error at another temperature is consistent too (covariance used)
    t = 15.0
    pred = maps["PRIMARY"] + maps["B"] * (t - t_ref)
    err = np.sqrt(maps["SIGMA_A"] ** 2 + (t - t_ref) ** 2 * maps["SIGMA_B"] ** 2
                  + 2 * (t - t_ref) * maps["COV_AB"])
    z = ((pred - (truth["bias_a"] + truth["bias_b"] * t)) / err)[normal]
    assert_pulls(z, what="bias(15 degC) pulls")


def test_read_noise_matches_truth_within_its_error(bias_run):
    campaign, out, _ = bias_run
    truth = campaign.maps()
    summary = json.loads((out / "summary.json").read_text())
    # what a measurement sees: the read noise and the ADC's quantisation noise (step/sqrt(12))
    true_rn = float(np.hypot(np.median(truth["read_noise"]), 16 / np.sqrt(12)))
    assert_close(summary["read_noise_adu"], true_rn, summary["read_noise_err_adu"],
                 what="read noise [adu]")
    # gain 2 e-/ADC count and 16 stored ADU per count: 1/8 e- per stored ADU
    assert summary["read_noise_e"] == pytest.approx(summary["read_noise_adu"] / 8)
    table = pd.read_csv(out / "read_noise.csv")
    assert len(table) == len(TEMPERATURES) + 1
    assert (table["NPAIRS"].iloc[:-1] == 10).all()
    for _, row in table.iloc[:-1].iterrows():  # each temperature's value within its error
        assert_close(row["RN_MEDIAN"], true_rn, row["RN_MEDIAN_ERR"], what=f"RN {row['TBIN']}")
    rn_map = fits.getdata(out / "read_noise.fits")
    noisy = truth["noisy_mask"]
    assert np.median(rn_map[noisy]) > 3 * np.median(rn_map[~noisy])  # noisy pixels stand out


def test_leave_one_temperature_out_pulls(bias_run):
    _, out, _ = bias_run
    table = pd.read_csv(out / "evaluation" / "evaluation_summary.csv")
    assert len(table) == len(TEMPERATURES)
    for _, row in table.iterrows():
        n = row["NPIX"]  # pulls of a model refitted without this temperature: N(0, 1) each
        assert_close(row["PULL_STD"], 1.0, 1 / np.sqrt(2 * n), what=f"LOO pull std {row.TBIN}")
        assert_close(row["PULL_MEAN"], 0.0, 1 / np.sqrt(n), what=f"LOO pull mean {row.TBIN}")
        # Gaussian differences: mean |d| = sqrt(2/pi) sigma. SIGMA_MEDIAN is a median over
        # pixels whose errors differ (noisy pixels), hence 10 % rather than the 2 % error
        assert row["MAE_MEAN"] == pytest.approx(np.sqrt(2 / np.pi) * row["SIGMA_MEDIAN"],
                                                rel=0.1)
        # MAPE is the same error relative to the bias level (~3200 adu here)
        level = float(np.median(fits.getdata(
            out / "bias_grouped_by_temp" / f"master_bias_{row['TBIN']:.1f}C.fits")))
        assert row["MAPE_MEAN"] == pytest.approx(100 * row["MAE_MEAN"] / level, rel=0.05)


def test_fits_products_verify_and_open_as_ccddata(bias_run, fitsverify):
    _, out, _ = bias_run
    for path in sorted(out.rglob("*.fits")):
        errors, report = fitsverify(path)
        assert errors == 0, f"{path}: {report}"
    ccd = CCDData.read(out / "bias_model.fits")
    assert ccd.unit == "adu" and isinstance(ccd.uncertainty, StdDevUncertainty)
    assert ccd.mask is not None and ccd.mask.shape == ccd.data.shape
    maps, header = _model(out)
    for name in ("B", "SIGMA_A", "SIGMA_B", "COV_AB", "CHI2DOF", "NPTS", "MASK", "INPUTS"):
        assert name in maps
    assert header["ADUSCALE"] == 16 and header["BUNIT"] == "adu" and "PIPEVER" in header
    assert np.all(maps["NPTS"][maps["MASK"] == 0] == len(TEMPERATURES))
    assert CCDData.read(out / "bias_model" / "bias_b_map.fits").unit == "adu / deg_C"


def test_generate_bias_from_model_and_from_old_maps(bias_run, tmp_path):
    _, out, _ = bias_run
    assert generate_bias.main(["--model", str(out / "bias_model.fits"), "--temperature", "7",
                               "--output", str(tmp_path)]) == 0
    ccd = CCDData.read(tmp_path / "synthetic_bias_7.0C.fits")
    maps, header = _model(out)
    expected = maps["PRIMARY"] + maps["B"] * (7 - header["TREF"])
    assert np.allclose(ccd.data, expected, rtol=0, atol=1e-3)
    assert ccd.header["TEMP"] == 7 and np.all(ccd.uncertainty.array > 0)
    old = tmp_path / "old.fits"
    assert generate_bias.main(["--a_map", str(out / "bias_model" / "bias_a_map.fits"),
                               "--b_map", str(out / "bias_model" / "bias_b_map.fits"),
                               "--temperature", "7", "--output", str(old)]) == 0
    assert np.allclose(fits.getdata(old), ccd.data, atol=1e-3)
    kebab = tmp_path / "kebab.fits"  # the kebab-case spellings of the same options
    assert generate_bias.main(["--a-map", str(out / "bias_model" / "bias_a_map.fits"),
                               "--b-map", str(out / "bias_model" / "bias_b_map.fits"),
                               "--temperature", "7", "--output", str(kebab)]) == 0
    assert np.array_equal(fits.getdata(kebab), fits.getdata(old))


def test_rerun_keeps_unchanged_masters(bias_run, bias_campaign):
    _, out, _ = bias_run
    masters = sorted((out / "bias_grouped_by_temp").glob("*.fits"))
    before = {p: os.stat(p).st_mtime_ns for p in masters}
    summary = json.loads((out / "summary.json").read_text())
    assert run_pipeline.main(["--basepath", str(bias_campaign.root / "TestSection1"),
                              "--output-dir", str(out), "--gain", "2", "--no-progress"]) == 0
    assert {p: os.stat(p).st_mtime_ns for p in masters} == before
    again = json.loads((out / "summary.json").read_text())
    assert again["b_median_adu_per_degC"] == summary["b_median_adu_per_degC"]


def test_hot_pixel_mask_excludes_pixels(bias_campaign, tmp_path):
    mask = np.zeros((32, 48), np.uint8)
    mask[3, 4] = mask[10, 20] = 1
    fits.writeto(tmp_path / "hot.fits", mask)
    out = tmp_path / "out"
    assert run_pipeline.main(["--basepath", str(bias_campaign.root / "TestSection1"),
                              "--output-dir", str(out), "--hot-pixel-mask",
                              str(tmp_path / "hot.fits"), "--sigma", "2.5", "--no-progress",
                              "--plots", "none"]) == 0
    head = fits.getheader(out / "bias_grouped_by_temp" / "master_bias_12.5C.fits")
    assert head["CLIPLO"] == head["CLIPHI"] == 2.5 and head["COMBMETH"] == "sigclip"
    maps, _ = _model(out)
    assert np.isnan(maps["PRIMARY"][3, 4]) and np.isnan(maps["B"][10, 20])
    assert maps["MASK"][3, 4] & 4 and np.isfinite(maps["B"][0, 0])


def test_bias_temp_analysis(bias_campaign, tmp_path):
    out = tmp_path / "stats"
    assert bias_temp_analysis.main([str(bias_campaign.root / "TestSection1"), "--output-dir",
                                    str(out), "--no-progress"]) == 0
    stats = json.loads((out / "bias_stats.json").read_text())
    assert sorted(float(k) for k in stats) == pytest.approx(TEMPERATURES, abs=0.3)
    for key, entry in stats.items():
        assert abs(entry["temperature_mean"] - float(key)) < 0.3
        assert len(entry["values"]) == entry["n_frames"] == 20
        assert entry["std_adu"] > 0
    means = [stats[k]["mean_adu"] for k in sorted(stats, key=float)]
    assert np.all(np.diff(means) > 0)  # bias grows with temperature in the simulation
    assert (out / "mean_vs_temperature.png").is_file()
    assert len(list(out.glob("detail_T*.png"))) == len(TEMPERATURES)
    assert len(list(out.glob("master_bias_*C.fits"))) == len(TEMPERATURES)


# --- bad input ----------------------------------------------------------------------------------

def test_no_bias_frames(bias_campaign, tmp_path, caplog, capsys, one_line_error):
    darks = bias_campaign.root / "TestSection2"
    status = run_pipeline.main(["--basepath", str(darks), "--output-dir", str(tmp_path / "o"),
                                "--no-progress"])
    assert status == 2
    one_line_error(caplog, capsys, "no bias frames")


def test_single_temperature_writes_masters_then_refuses(bias_campaign, tmp_path, caplog, capsys,
                                                        one_line_error):
    table = build_index([("", bias_campaign.root / "TestSection1")])
    one = table[(table["CALTYPE"] == "BIAS") & (table["TEMP"].sub(12.5).abs() < 1)]
    write_index(one, tmp_path / "one.csv")
    out = tmp_path / "o"
    status = run_pipeline.main(["--basepath", str(tmp_path / "one.csv"), "--output-dir",
                                str(out), "--no-progress"])
    assert status == 2
    one_line_error(caplog, capsys, "single temperature", "at least two")
    assert (out / "bias_grouped_by_temp" / "master_bias_12.5C.fits").is_file()
    assert not (out / "bias_model.fits").exists()


def test_mismatched_shapes(bias_campaign, tmp_path, caplog, capsys, one_line_error):
    from conftest import convert_campaign

    other = simulate_standard(tmp_path / "other", seed=6, width=40, height=24, frames=2,
                              attempts=1, defects=False)
    convert_campaign(other)
    table = pd.concat([build_index([("", bias_campaign.root / "TestSection1")]),
                       build_index([("", other.root / "TestSection1")])])
    write_index(table, tmp_path / "mixed.csv")
    status = run_pipeline.main(["--basepath", str(tmp_path / "mixed.csv"), "--output-dir",
                                str(tmp_path / "o"), "--no-progress"])
    assert status == 2
    one_line_error(caplog, capsys, "different shapes", "48x32", "40x24")


def test_hot_pixel_mask_of_wrong_shape(bias_campaign, tmp_path, caplog, capsys, one_line_error):
    fits.writeto(tmp_path / "hot.fits", np.zeros((10, 10), np.uint8))
    status = run_pipeline.main(["--basepath", str(bias_campaign.root / "TestSection1"),
                                "--output-dir", str(tmp_path / "o"), "--hot-pixel-mask",
                                str(tmp_path / "hot.fits"), "--no-progress"])
    assert status == 2
    one_line_error(caplog, capsys, "hot.fits", "10x10", "48x32")


def test_hot_pixel_mask_leaving_out_every_pixel(bias_campaign, tmp_path, caplog, capsys,
                                                one_line_error):
    """A mask non-zero everywhere (e.g. a master bias given by mistake) left no pixel to model
    and the run ended in a traceback (summary line formatting a None median B) after writing
    its masters; it is refused in one line before anything is written."""
    fits.writeto(tmp_path / "hot.fits", np.full((32, 48), 3000, np.uint16))
    out = tmp_path / "o"
    status = run_pipeline.main(["--basepath", str(bias_campaign.root / "TestSection1"),
                                "--output-dir", str(out), "--hot-pixel-mask",
                                str(tmp_path / "hot.fits"), "--no-progress", "--plots", "none"])
    assert status == 2
    one_line_error(caplog, capsys, "hot.fits", "every pixel", "1536 of 1536")
    assert not (out / "config_used.json").exists()


def test_script_runs_as_a_file(bias_campaign, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(root / "bias_pipeline" / "run_pipeline.py"),
                           "--help"], capture_output=True, text=True, cwd=tmp_path, env=env,
                          check=False)
    assert proc.returncode == 0 and "Example" in proc.stdout



def test_t_ref_method_and_temp_bin_options(bias_campaign, tmp_path):
    """--t-ref moves A to that temperature, --method median makes median masters, --temp-bin
    10 merges the set points within 10 degC (-10/-2, 5/12.5, 20/28): three masters of 40."""
    out = tmp_path / "o"
    assert run_pipeline.main(["--basepath", str(bias_campaign.root / "TestSection1"),
                              "--output-dir", str(out), "--t-ref", "20", "--method", "median",
                              "--temp-bin", "10", "--no-progress", "--plots", "none"]) == 0
    masters = sorted((out / "bias_grouped_by_temp").glob("*.fits"))
    assert len(masters) == 3
    for path in masters:
        head = fits.getheader(path)
        assert head["COMBMETH"] == "median" and head["NCOMBINE"] == 40
    maps, header = _model(out)
    assert header["TREF"] == 20.0
    truth = bias_campaign.maps()
    normal = (maps["MASK"] == 0) & ~truth["noisy_mask"]
    z = ((maps["PRIMARY"] - (truth["bias_a"] + truth["bias_b"] * 20.0)) / maps["SIGMA_A"])[normal]
    assert_pulls(z, what="A at TREF 20 degC")


def test_read_noise_table_in_electrons():
    from types import SimpleNamespace

    from utils.models.read_noise import read_noise_table

    rn = SimpleNamespace(npairs=5, median=32.0, median_err=0.5, rms=33.0)
    table = read_noise_table([(20.0, rn), (25.0, None)], to_electrons=0.125)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["RN_MEDIAN_E"], row["RN_MEDIAN_ERR_E"], row["RN_RMS_E"]) == (4.0, 0.0625, 4.125)
