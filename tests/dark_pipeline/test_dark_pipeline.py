"""Dark pipeline on a small simulated campaign with known truth: 5 temperatures x 4 exposures."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.nddata import CCDData
from statcheck import assert_close, assert_pulls

from dark_pipeline import run_pipeline
from utils.io.index import build_index, write_index
from utils.sim import simulate_standard

TEMPS = (0.0, 7.5, 15.0, 22.5, 30.0)
EXPOSURES = (0.5, 1.0, 2.0, 4.0)


@pytest.fixture(scope="module")
def dark_campaign(tmp_path_factory):
    """Converted campaign: bias at 5 temperatures, darks on the 5 x 4 grid, 16 frames each."""
    from conftest import convert_campaign

    campaign = simulate_standard(tmp_path_factory.mktemp("dark") / "campaign", seed=4, width=96,
                                 height=64, frames=16, attempts=1,
                                 bias_temperatures=(-5.0, 5.0, 15.0, 25.0, 35.0),
                                 dark_temperatures=TEMPS, dark_exposures=EXPOSURES,
                                 flat_temperatures=(25.0,), flat_exposures=(0.1,), defects=False)
    convert_campaign(campaign)
    return campaign


@pytest.fixture(scope="module")
def dark_run(dark_campaign, tmp_path_factory):
    """``(campaign, out, status)`` of one full CLI run (bias fitted from the tree)."""
    out = tmp_path_factory.mktemp("dark_out") / "out"
    status = run_pipeline.main(["--basepath", str(dark_campaign.root), "--output_dir", str(out),
                                "--gain", "2.0", "--no-progress", "--plots", "all"])
    return dark_campaign, out, status


def _maps(path):
    with fits.open(path) as hdul:
        return {h.name: np.asarray(h.data) for h in hdul if h.is_image}, hdul[0].header.copy()


def test_full_run_writes_products_that_verify(dark_run, fitsverify):
    _, out, status = dark_run
    assert status == 0
    for name in ("dark_model/dark_model.fits", "dark_model/A_map.fits", "dark_model/B_map.fits",
                 "dark_model/hot_pixels.fits", "dark_model_2d/dark_model_2d.fits",
                 "dark_model_2d/GAMMA_map_2D.fits", "hot_pixels.fits", "hot_pixels.csv",
                 "evaluation_model_2d_summary.csv", "evaluation_model_1d_summary.csv",
                 "heatmap_mae_2d.png", "heatmap_mape_2d.png", "heatmap_dark_real_2d.png",
                 "heatmap_dark_synthetic_2d.png", "dark_current_vs_temperature.png",
                 "mae_maps_2d.png", "mape_maps_1d.png",
                 "dark_current_vs_temperature.csv", "summary.json", "config_used.json",
                 "plots/doubling_temperature_hist.png", "plots/gamma_histogram_2d.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "dark_masters").glob("*.fits"))) == len(TEMPS) * len(EXPOSURES)
    assert len(list((out / "dark_rates").glob("*.fits"))) == len(TEMPS)
    assert len(list((out / "plots_2d_comparison").glob("scatter_*.png"))) == 20
    for path in sorted(out.rglob("*.fits")):
        errors, report = fitsverify(path)
        assert errors == 0, f"{path}: {report}"
    ccd = CCDData.read(out / "dark_model" / "dark_model.fits")
    assert ccd.unit == "adu / s" and ccd.uncertainty is not None
    head = fits.getheader(next((out / "dark_masters").glob("master_dark_T15*C_E2s.fits")))
    assert head["BIASFILE"] == "bias_model.fits" and head["SUBTRACT"] == "bias(T)"


def test_doubling_temperature_and_slope_pulls(dark_run):
    campaign, out, _ = dark_run
    truth, physics = campaign.maps(), campaign.physics
    maps, head = _maps(out / "dark_model" / "dark_model.fits")
    summary = json.loads((out / "summary.json").read_text())
    # the population T_d (joint fit of every pixel), error ~0.005 degC; a 0.2-0.4 % systematic
    # was measured at this precision (2.8 sigma on this seed), hence 0.05 degC
    assert abs(summary["doubling_temperature_degC"] - physics.doubling_temperature) < 0.05
    assert 0 < summary["doubling_temperature_err_degC"] < 0.02
    b_true = math.log(2) / physics.doubling_temperature
    good = (maps["FALLBACK"] == 0) & ~truth["hot_mask"] & np.isfinite(maps["B"])
    assert good.mean() > 0.9
    # ~6000 pixels: pull mean and std within 5 of their standard errors (~0.013, ~0.009)
    assert_pulls(((maps["B"] - b_true) / maps["SIGMA_B"])[good], what="1-D B")
    ea = maps["EA"][good]  # k_B B T^2 at 293.15 K: 0.857 eV for T_d = 6 degC
    k_t2 = 8.617333e-5 * 293.15 ** 2
    # error of a median: 1.2533 sigma / sqrt(n) (measured +0.2 %, 1.9 sigma, on this seed)
    assert_close(float(np.median(ea)), k_t2 * b_true,
                 1.2533 * k_t2 * float(np.median(maps["SIGMA_B"][good])) / math.sqrt(good.sum()),
                 what="median E_a [eV]")


def test_rate_at_reference_temperature_within_3_percent(dark_run):
    campaign, out, _ = dark_run
    truth = campaign.maps()
    maps, head = _maps(out / "dark_model" / "dark_model.fits")
    assert head["TREF"] == campaign.physics.t_ref
    normal = ~truth["hot_mask"]
    ratio = np.median(maps["PRIMARY"][normal] / truth["dark_ref_adu"][normal])
    rel_err = np.median((maps["SIGMA_A"] / maps["PRIMARY"])[normal])
    # the median ratio within 5 errors of a median (~0.1 %: a 2.5 % high A is ~20 sigma)
    assert_close(float(ratio), 1.0, 1.2533 * float(rel_err) / math.sqrt(normal.sum()),
                 what="median A / true A at TREF")
    pull = ((maps["PRIMARY"] - truth["dark_ref_adu"]) / maps["SIGMA_A"])[normal]
    assert_pulls(pull, what="1-D A at TREF")


def test_hot_pixels_found(dark_run):
    campaign, out, _ = dark_run
    planted = campaign.maps()["hot_mask"]
    found = fits.getdata(out / "hot_pixels.fits").astype(bool)
    assert planted.sum() >= 20
    hits = (found & planted).sum()
    assert hits / planted.sum() >= 0.98 and hits / found.sum() >= 0.98
    counts = pd.read_csv(out / "hot_pixels.csv")
    assert len(counts) == len(TEMPS) and "THRESHOLD_E" in counts


def _check_evaluation(out, kind: str) -> None:
    """Out-of-sample pulls of every master against the model of ``kind`` ('1d' or '2d')."""
    # pulls against the model fitted without the master's temperature (out of sample).  One
    # row has ~6000 pixels: its pull std has a statistical error of ~0.01 and its mean ~0.013;
    # measured pull stds 0.98-1.04 (1-D) and 0.92-1.07 (2-D), means within 0.085: the edge
    # temperatures are extrapolations, whose model error is not Gaussian.  Bounds at ~10
    # sigma: still failing errors 20 % off (pull std 0.83 or 1.2)
    table = pd.read_csv(out / f"evaluation_model_{kind}_summary.csv")
    assert len(table) == len(TEMPS) * len(EXPOSURES)
    # one column of the grid per temperature bin, whatever the masters' mean temperatures
    assert (table.groupby("TBIN").size() == len(EXPOSURES)).all()
    assert sorted(table["TBIN"].unique()) == list(TEMPS)
    assert table["PULL_STD"].between(0.9, 1.1).all(), table["PULL_STD"].tolist()
    assert (table["PULL_MODEL"] == "leave-one-temperature-out").all()
    assert table["PULL_MEAN"].abs().max() < 0.15, table["PULL_MEAN"].tolist()


def test_gamma_and_two_d_evaluation(dark_run):
    _, out, _ = dark_run
    summary = json.loads((out / "summary.json").read_text())
    # the median of ~6000 per-pixel gammas has an error of 0.0008; it sits +0.0035 high (4
    # sigma, a small bias of the per-pixel fits also seen in the population gamma, see
    # test_radiation_regressions), hence 0.006 (7.5 sigma) rather than 5 sigma
    assert abs(summary["gamma_median"] - 1) < 0.006
    for kind in ("1d", "2d"):
        _check_evaluation(out, kind)
    # The held-out 2-D prediction and a master share the bias model's errors; their pulls
    # take that covariance out (shared_bias_covariance).  Seeds 4, 5: pull stds 0.990-1.087,
    # mean over the warm (>= 15 degC) short (<= 1 s) masters 1.015-1.025; without the
    # covariance 0.886-1.075 and 0.914-0.924 (those errors looked ~8 % too large)
    table = pd.read_csv(out / "evaluation_model_2d_summary.csv")
    assert table["PULL_STD"].min() > 0.95, table["PULL_STD"].tolist()
    warm_short = table[(table["TBIN"] >= 15) & (table["Exposure (s)"] <= 1)]["PULL_STD"]
    assert len(warm_short) == 6 and abs(warm_short.mean() - 1) < 0.05, warm_short.tolist()
    dc = pd.read_csv(out / "dark_current_vs_temperature.csv")
    assert np.all(np.diff(dc["DC_MEDIAN"]) > 0) and (dc["DC_P95"] > dc["DC_MEDIAN"]).all()
    assert "DC_MEDIAN_E" in dc


def test_synthetic_modes(dark_run, tmp_path):
    _, out, _ = dark_run
    args = ["--output-dir", str(out), "--no-progress"]
    assert run_pipeline.main(["--mode", "synthetic_2d_single", "--temp_single", "12.5",
                              "--exptime_single", "3", *args]) == 0
    ccd = CCDData.read(out / "synthetic_2d_dark_T12.50_E3.00.fits")
    assert ccd.header["TEMP"] == 12.5 and ccd.header["EXPTIME"] == 3.0 and ccd.header["BIASINCL"]
    m2, h2 = _maps(out / "dark_model_2d" / "dark_model_2d.fits")
    bias, hb = _maps(out / "bias_model.fits")
    expected = (bias["PRIMARY"] + bias["B"] * (12.5 - hb["TREF"])
                + m2["PRIMARY"] * 3.0 ** m2["GAMMA"] * np.exp(m2["B"] * (12.5 - h2["TREF"])))
    assert np.allclose(ccd.data, expected, rtol=1e-4, atol=0.05)
    assert np.all(ccd.uncertainty.array[np.isfinite(ccd.data)] > 0)
    assert run_pipeline.main(["--mode", "synthetic_2d", "--temps", "5", "25", "--exptimes", "1",
                              "2", *args]) == 0
    assert len(list(out.glob("synthetic_2d_exp_*/synthetic_2d_dark_t*_e*.fits"))) == 4
    assert run_pipeline.main(["--mode", "synthetic_only", "--temps", "10", "--exptimes", "2",
                              *args]) == 0
    rate = CCDData.read(out / "synthetic" / "synthetic_dark_rate_T10.00.fits")
    frame = CCDData.read(out / "synthetic" / "synthetic_1d_exp_2.00" /
                         "synthetic_1d_dark_t10.00_e2.00.fits")
    # a synthetic dark frame is bias(T) + DC(T) t: scaled by the exposure, unlike the old tool
    expected = bias["PRIMARY"] + bias["B"] * (10 - hb["TREF"]) + rate.data * 2
    assert np.allclose(frame.data, expected, rtol=1e-4, atol=0.05)


#: The product each re-run mode must (re)write, in the order they run.
MODE_PRODUCTS = {"evaluation_only": "evaluation_model_1d_summary.csv",
                 "evaluate_dark_current": "dark_current_vs_temperature.csv",
                 "fit_2d_model": "dark_model_2d/dark_model_2d.fits",
                 "evaluate_2d_model": "evaluation_model_2d_summary.csv"}


def test_evaluation_modes_reuse_masters(dark_run, dark_campaign):
    campaign, out, _ = dark_run
    before = {p: p.stat().st_mtime_ns for p in (out / "dark_masters").glob("*.fits")}
    for mode, product in MODE_PRODUCTS.items():
        written = (out / product).stat().st_mtime_ns
        assert run_pipeline.main(["--mode", mode, "--basepath", str(dark_campaign.root),
                                  "--output-dir", str(out), "--no-progress"]) == 0
        # each mode does its own work (a mode that silently does nothing must fail here)
        assert (out / product).stat().st_mtime_ns > written, f"{mode} did not write {product}"
        assert json.loads((out / "summary.json").read_text())["mode"] == mode
    assert {p: p.stat().st_mtime_ns for p in (out / "dark_masters").glob("*.fits")} == before
    for kind in ("1d", "2d"):
        _check_evaluation(out, kind)
    _check_two_d_pulls(campaign, out)
    # dark current vs temperature against the truth: the median rate of each bin is the
    # median of the true rates 2^((T - TREF) / T_d) A_true within 5 of its stated errors
    truth, physics = campaign.maps(), campaign.physics
    dc = pd.read_csv(out / "dark_current_vs_temperature.csv")
    assert len(dc) == len(TEMPS) and (dc["NPIX"] == truth["dark_ref_adu"].size).all()
    for row in dc.itertuples():
        true = np.median(truth["dark_ref_adu"]) * 2.0 ** ((row.TAVG - physics.t_ref)
                                                          / physics.doubling_temperature)
        assert_close(row.DC_MEDIAN, true, row.DC_MEDIAN_ERR, what=f"DC median at {row.TAVG:.1f}")


# --- bad input ----------------------------------------------------------------------------------

def _index(campaign, tmp_path, keep) -> str:
    table = build_index([("", campaign.root)])
    write_index(table[keep(table)], tmp_path / "subset.csv")
    return str(tmp_path / "subset.csv")


def test_no_darks(dark_campaign, tmp_path, caplog, capsys, one_line_error):
    status = run_pipeline.main(["--basepath", str(dark_campaign.root / "TestSection1"),
                                "--output-dir", str(tmp_path / "o"), "--no-progress"])
    assert status == 2
    one_line_error(caplog, capsys, "no usable dark frames")


def test_missing_bias(dark_campaign, tmp_path, caplog, capsys, one_line_error):
    status = run_pipeline.main(["--basepath", str(dark_campaign.root / "TestSection2"),
                                "--output-dir", str(tmp_path / "o"), "--no-progress"])
    assert status == 2
    one_line_error(caplog, capsys, "missing bias", "--bias-model")
    assert not list((tmp_path / "o").rglob("*.tmp*"))


def test_one_temperature_writes_masters_then_says_so(dark_campaign, tmp_path, caplog, capsys,
                                                     one_line_error):
    csv = _index(dark_campaign, tmp_path, lambda t: (t["CALTYPE"] == "BIAS")
                 | (t["TEMP"].sub(15).abs() < 1))
    out = tmp_path / "o"
    status = run_pipeline.main(["--basepath", csv, "--output-dir", str(out), "--no-progress",
                                "--plots", "none"])
    assert status == 2
    one_line_error(caplog, capsys, "single temperature", "at least two")
    assert len(list((out / "dark_masters").glob("*.fits"))) == len(EXPOSURES)
    assert (out / "hot_pixels.fits").is_file() and (out / "dark_rates").is_dir()


def test_one_exposure_rate_is_flagged(dark_campaign, tmp_path):
    csv = _index(dark_campaign, tmp_path, lambda t: (t["CALTYPE"] == "BIAS")
                 | ((t["CALTYPE"] == "DARK") & (t["EXPTIME"].sub(4).abs() < 0.01)))
    out = tmp_path / "o"
    assert run_pipeline.main(["--basepath", csv, "--output-dir", str(out), "--no-progress",
                              "--plots", "none"]) == 0
    head = fits.getheader(next((out / "dark_rates").glob("dark_rate_T15*C.fits")))
    assert head["RATEMETH"] == "single exposure" and head["NEXP"] == 1
    assert (out / "dark_model" / "dark_model.fits").is_file()
    assert not (out / "dark_model_2d").exists()


def test_synthetic_mode_refuses_a_missing_bias_model(dark_run, tmp_path, caplog, capsys,
                                                      one_line_error):
    """A --bias-model that does not exist was passed over: the synthetic dark was written
    without bias (BIASINCL F, a warning) and the run ended with status 0 (qamodes review).
    Now a one-line error, nothing written; a bias-pipeline output folder is accepted."""
    _, out, _ = dark_run
    target = tmp_path / "o"
    argv = ["--mode", "synthetic_2d_single", "--model-dir", str(out), "--output-dir",
            str(target), "--no-progress"]
    assert run_pipeline.main([*argv, "--bias-model", str(tmp_path / "missing.fits")]) == 2
    one_line_error(caplog, capsys, "missing.fits", "not found")
    assert not target.exists()
    folder = tmp_path / "bias_out"
    folder.mkdir()
    (folder / "bias_model.fits").write_bytes((out / "bias_model.fits").read_bytes())
    assert run_pipeline.main([*argv, "--bias-model", str(folder)]) == 0
    assert fits.getheader(target / "synthetic_2d_dark_T20.00_E10.00.fits")["BIASINCL"]


def test_model_mode_without_model(tmp_path, caplog, capsys, one_line_error):
    status = run_pipeline.main(["--mode", "synthetic_2d_single", "--output-dir",
                                str(tmp_path / "o"), "--no-progress"])
    assert status == 2
    one_line_error(caplog, capsys, "dark_model_2d.fits", "not found")


def test_1d_model_mode_without_model_names_the_mode_that_writes_it(tmp_path, caplog, capsys,
                                                                   one_line_error):
    """fit_2d_model writes no 1-D model: the error sent users to it (qamodes review)."""
    status = run_pipeline.main(["--mode", "synthetic_only", "--output-dir", str(tmp_path / "o"),
                                "--no-progress"])
    assert status == 2
    one_line_error(caplog, capsys, "dark_model.fits", "not found", "(mode full)")
    assert "fit_2d_model" not in caplog.text


def test_bias_model_option_is_used(dark_run, dark_campaign, tmp_path):
    _, out, _ = dark_run
    status = run_pipeline.main(["--mode", "fit_2d_model", "--basepath",
                                str(dark_campaign.root / "TestSection2"), "--bias-model",
                                str(out / "bias_model.fits"), "--output-dir",
                                str(tmp_path / "o"), "--no-progress", "--plots", "none"])
    assert status == 0
    head = fits.getheader(next((tmp_path / "o" / "dark_masters").glob("master_dark_T30*_E4s.fits")))
    assert head["BIASFILE"] == "bias_model.fits"
    assert not (tmp_path / "o" / "bias_masters").exists()


def _check_two_d_pulls(campaign, out) -> None:
    """Pulls of the 2-D model's A, gamma and B against the truth."""
    truth, physics = campaign.maps(), campaign.physics
    maps, _ = _maps(out / "dark_model_2d" / "dark_model_2d.fits")
    good = (maps["FALLBACK"] == 0) & ~truth["hot_mask"]
    b_true = math.log(2) / physics.doubling_temperature
    for value, err, true in ((maps["B"], maps["SIGMA_B"], b_true),
                             (maps["GAMMA"], maps["SIGMA_GAMMA"], 1.0),
                             (maps["PRIMARY"], maps["SIGMA_A"], truth["dark_ref_adu"])):
        pull = ((value - true) / err)[good]
        # ~6000 pixels (errors 0.013 of the mean, 0.009 of the std), but measured: A pull mean
        # -0.12, gamma pull std 1.07 -- the 2-D errors are calibrated to ~7 % (the shared
        # bias error enters through a linearised covariance), so these bounds are ~10-15
        # sigma on purpose; they still fail the ~1.5 pull std of errors without that term
        assert abs(pull.mean()) < 0.15 and 0.85 < pull.std() < 1.2


def test_two_d_errors_include_the_shared_bias_error(dark_run):
    # one bias model serves every master: its error is correlated between them and the 2-D
    # parameter errors must include it, or the pulls of A, gamma and B come out ~1.4-1.6
    campaign, out, _ = dark_run
    _check_two_d_pulls(campaign, out)


def test_heat_maps_of_large_frames_are_block_means():
    # frames wider than MAP_SIDE are shown as NaN-aware block means (the test campaigns are
    # smaller, so this path is checked here)
    from dark_pipeline.evaluation import MAP_SIDE, _reduce

    image = np.arange(600 * 1030, dtype=np.float64).reshape(600, 1030)
    image[0, 0] = np.nan
    small = _reduce(image)
    f = int(np.ceil(1030 / MAP_SIDE))
    assert small.shape == (600 // f, 1030 // f) and max(small.shape) <= MAP_SIDE
    expected = image[:600, :1029].reshape(200, 3, 343, 3)
    np.testing.assert_allclose(small, np.nanmean(expected, axis=(1, 3)), rtol=1e-6)


def test_fully_masked_rate_map_is_a_user_error(tmp_path):
    """Sets too small for the stacking leave every pixel masked: the hot-pixel test says so in
    one line (a UserError the orchestrators report and skip), not a ValueError traceback."""
    from dark_pipeline.pipeline import DarkSettings, write_hot_pixels
    from utils.errors import UserError

    rate = np.full((8, 8), np.nan)
    with pytest.raises(UserError, match="no hot-pixel test.*min-accepted"):
        write_hot_pixels(rate, tmp_path, DarkSettings(), 12, "2-D model at TREF", [])
    assert not any(tmp_path.iterdir())


def test_heatmap_columns_are_temperature_bins():
    """Masters of one bin whose mean temperatures differ (9.96, 10.05 degC) share a column."""
    import matplotlib.pyplot as plt

    from dark_pipeline.plots import plot_heatmap

    table = pd.DataFrame({"Temperature (°C)": [-0.04, 0.02, 9.96, 10.05],
                          "Exposure (s)": [1.0, 2.0, 1.0, 2.0], "MAE [ADU]": [1.0, 2.0, 3.0, 4.0],
                          "TBIN": [0.0, 0.0, 10.0, 10.0]})
    ax = plot_heatmap(table, "MAE [ADU]", title="MAE")
    grid = ax.images[0].get_array()
    assert grid.shape == (2, 2) and np.allclose(grid, [[1.0, 3.0], [2.0, 4.0]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "10"]
    plt.close(ax.figure)


def test_heatmap_cell_values_not_measured_by_the_layout_same_pixels(tmp_path):
    """The cell values are clipped to the axes, so the constrained layout skips them (~10 % of
    a heatmap's rendering); they sit inside the axes: the same pixels as unclipped."""
    from PIL import Image

    from dark_pipeline.plots import plot_heatmap
    from utils.plotting import write_png

    table = pd.DataFrame({"Exposure (s)": [1.0, 1.0, 2.0, 2.0], "TBIN": [0.0, 30.0, 0.0, 30.0],
                          "MAE [ADU]": [1.0, 1010.6, 1.29, 55.5]})
    images = []
    for clipped in (True, False):
        ax = plot_heatmap(table, "MAE [ADU]", title="MAE")
        assert len(ax.texts) == 4
        assert all(t._fully_clipped_to_axes() for t in ax.texts)
        for t in ax.texts:
            t.set_clip_on(clipped)
        write_png(ax.figure, tmp_path / f"{clipped}.png")
        with Image.open(tmp_path / f"{clipped}.png") as image:
            images.append(np.asarray(image.convert("RGB")))
    np.testing.assert_array_equal(images[0], images[1])


def test_heatmap_cells_readable():
    """Each cell's value is readable: black on the light (yellow) end of viridis, white on the
    dark end (white on yellow was unreadable), no ``1.01e+03``; the colour bar names the
    quantity, not the table column."""
    import matplotlib.pyplot as plt

    from dark_pipeline.plots import plot_heatmap

    table = pd.DataFrame({"Exposure (s)": [1.0, 1.0, 2.0], "TBIN": [-0.0, 30.0, 30.0],
                          "REAL_MEDIAN [ADU]": [1.0, 1010.6, 1.29]})
    ax = plot_heatmap(table, "REAL_MEDIAN [ADU]", title="measured", label="median signal [adu]")
    cells = {t.get_text(): t.get_color() for t in ax.texts}
    assert cells == {"1.00": "w", "1011": "k", "1.29": "w"}  # "1.00", not "1" next to "1.29"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "30"]
    assert ax.figure.axes[-1].get_ylabel() == "median signal [adu]"
    plt.close(ax.figure)
