"""dose_analysis: every output of the old dose analysis (seed spec 4.5) exists, under its old
name, and loads with its old keys; the old worked examples (spec 5.5); degenerate subsets
said, not fatal; the fixes (gain, full scale, exposures kept apart)."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from analysis import dose_analysis
from analysis.dose.dynamic_range import dynamic_range
from analysis.dose.models import dose_rate_model
from analysis.dose.summary import dose_rates_by_sequence, group_rate, master_name

DOSES = (10, 20, 30, 40)
DARK_EXPOSURES = ("5p0", "20p0")

#: seed spec 4.5, with the .npz keys the old code wrote ({d}: every irradiating dose).
EXPECTED = {
    "dose_summary.csv": ["STAGE", "CALTYPE", "DOSE", "EXPTIME", "MEAN", "STD", "DOSE_RATE",
                         "DOSE_RATE_STD"],
    "photometric_precision.csv": ["DOSE", "MAG_ERR", "MAG_ERR_STD"],
    "plots/bias_mean_vs_dose.npz": ["pre_dose", "pre_mean", "pre_std", "radiating_dose",
                                    "radiating_mean", "radiating_std", "post_dose"],
    "plots/bias_mean_std_vs_dose.npz": ["dose", "mean", "std", "fit_ir", "fit_no", "slope_ir",
                                        "intercept_ir", "slope_no", "intercept_no"],
    "plots/dose_rate_effect_bias.npz": [
        "rate_ir", "mean_ir", "std_ir", "rate_no", "mean_no", "std_no", "slope_mean_ir",
        "intercept_mean_ir", "slope_mean_no", "intercept_mean_no", "slope_std_ir",
        "intercept_std_ir", "slope_std_no", "intercept_std_no"],
    "plots/dose_rate_effect_dark.npz": ["rate_ir", "mean_ir", "slope_mean_ir", "slope_std_no"],
    "plots/photometric_precision_vs_dose.npz": ["dose", "mag_err", "mag_err_std"],
    "plots/std_model_bias.png": None,
    "pixel_precision/zone_mag_error.png": None,
    "pixel_precision/zone_adu_error.png": None,
    "pixel_precision/pixel_precision_stats.csv": ["DOSE", "MAG_MEAN", "MAG_STD", "ADU_MEAN",
                                                  "ADU_STD"],
    "pixel_precision/mag_err_vs_dose.npz": ["dose", "mag_mean", "mag_std"],
    "pixel_precision/adu_err_vs_dose.npz": ["dose", "adu_mean", "adu_std"],
    "analysis/stage_differences.csv": ["CALTYPE", "CMP", "DIFF"],
    "analysis/dose_rate_model.csv": ["CALTYPE", "A0", "A1", "A2", "B0", "B1", "B2", "EXPTIME"],
    "analysis/dose_model.csv": ["CALTYPE", "SLOPE", "INTERCEPT", "EXPTIME"],
    "analysis/dose_model_bias.png": None,
    "analysis/dose_rate_model_bias.png": None,
    "analysis/base_level_trend.csv": ["CALTYPE", "SLOPE", "INTERCEPT"],
    "analysis/base_level_trend_bias.png": None,
    "analysis/base_level_trend_dark.png": None,
    "analysis/stage_base_diff.npz": ["dose", "bias_diff", "dark_diff"],
    "analysis/stage_base_diff_bias.png": None,
    "analysis/stage_base_diff_dark.png": None,
    "analysis/dynamic_range.npz": ["dose", "bias_mean", "dark_mean", "dynamic_range_16",
                                   "dynamic_range_12", "noise_adu", "noise_mag",
                                   "reduction_16", "reduction_12", "base_level_16",
                                   "base_level_12"],
    "analysis/dynamic_range_vs_dose_16.png": None,
    "analysis/dynamic_range_vs_dose_12.png": None,
    "analysis/baseline_vs_dose_16.png": None,
    "analysis/baseline_vs_dose_12.png": None,
    "analysis/magnitude_vs_dose.png": None,
    "analysis/relative_noise_vs_dose_16.npz": ["pre_dose", "pre_NOISE16_DIFF",
                                               "radiating_NOISE16_DIFF"],
    "analysis/relative_noise_vs_dose_12.npz": ["pre_dose", "pre_NOISE12_DIFF"],
    "analysis/relative_mag_err_vs_dose_16.npz": ["radiating_dose", "radiating_MAG16_DIFF"],
    "analysis/relative_mag_err_vs_dose_12.npz": ["post_dose", "post_MAG12_DIFF"],
    "analysis/relative_precision.npz": ["stage", "dose", "noise16_diff", "noise12_diff",
                                        "mag16_diff", "mag12_diff"],
    "analysis/pre_vs_post_relative_precision.npz": ["pre_NOISE16_DIFF", "post_NOISE16_DIFF",
                                                    "pre_MAG12_DIFF", "post_MAG12_DIFF"],
}
for _e in DARK_EXPOSURES:
    EXPECTED[f"plots/dark_mean_vs_dose_E{_e}s.npz"] = ["pre_dose", "pre_mean", "pre_std"]
    EXPECTED[f"plots/dark_mean_std_vs_dose_E{_e}s.npz"] = ["dose", "mean", "std", "slope_ir"]
    EXPECTED[f"plots/std_model_dark_E{_e}s.png"] = None
    EXPECTED[f"analysis/dose_model_dark_E{_e}s.png"] = None
    EXPECTED[f"analysis/dose_rate_model_dark_E{_e}s.png"] = None
for _d in DOSES:
    for _name in ("mag_err", "adu_err16", "adu_err12"):
        EXPECTED[f"pixel_precision/{_name}_{_d}kR.fits"] = None
        EXPECTED[f"pixel_precision/{_name}_{_d}kR.png"] = None
for _cal in ("bias", "dark"):
    for _cmp in ("first_vs_pre", "first_vs_pre_log", "post_vs_last", "post_vs_last_log"):
        EXPECTED[f"analysis/{_cal}_{_cmp}.png"] = None


def _load(path):
    if path.suffix == ".csv":
        return list(pd.read_csv(path).columns)
    if path.suffix == ".npz":
        with np.load(path) as data:
            return list(data.files)
    if path.suffix == ".fits":
        with fits.open(path) as hdul:
            assert hdul[0].data is not None
        return []
    assert path.stat().st_size > 1000   # a PNG with something drawn
    return []


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_every_old_output_exists_and_loads(rad_dose, rel):
    _, out, status = rad_dose
    assert status == 0
    path = out / rel
    assert path.is_file(), rel
    found = _load(path)
    for key in EXPECTED[rel] or []:
        assert key in found, f"{rel}: no {key} in {found}"


def test_every_png_has_its_data_twin(rad_dose):
    _, out, _ = rad_dose
    pngs = list(out.rglob("*.png"))
    assert len(pngs) > 60
    missing = [p for p in pngs if not p.with_name(p.name[:-4] + ".npz").is_file()]
    assert not missing


def test_masters_keep_their_old_names(rad_dose):
    _, out, _ = rad_dose
    names = {p.name for p in (out / "masters").glob("*.fits")}
    assert master_name("DARK", "radiating", 10.0, 20.0) == "master_dark_radiating_D10kR_E20.0.fits"
    assert "master_dark_radiating_D10kR_E20.0.fits" in names
    assert "master_bias_radiating_D40kR_Enone.fits" in names
    # pre and post have three temperature bins: the bin is added to the name
    assert len([n for n in names if n.startswith("master_bias_pre_D0kR_Enone_T")]) == 3
    assert len([n for n in names if n.startswith("master_dark_post_D40kR_E5.0_T")]) == 3


def test_summary_rows_and_fixes(rad_dose):
    campaign, out, _ = rad_dose
    summary = pd.read_csv(out / "dose_summary.csv")
    # one row per (stage, type, dose step, exposure, temperature bin): nothing merged
    darks = summary[summary["CALTYPE"] == "DARK"]
    assert len(darks) == 2 * (3 + 4 + 3)
    used = summary[summary["USED"]]
    assert set(used["TEMP"].round()) == {20.0}
    # the dose steps: pre 0, the steps, post at the final dose (never blank)
    assert sorted(summary["DOSE"].unique()) == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert (summary.loc[summary["STAGE"] == "post", "DOSE"] == 40.0).all()
    record = json.loads((out / "dose_analysis_summary.json").read_text())
    assert record["full_scale_adu"] == 65520.0          # the 12-bit saturation, not 65536
    assert record["gain_e_per_adu"] == 2.0 / 16 and record["gain_source"] == "--gain"
    precision = pd.read_csv(out / "photometric_precision.csv")
    assert (precision["GAIN_E_PER_ADU"] == 0.125).all()
    trend = pd.read_csv(out / "analysis/base_level_trend.csv")
    assert sorted(trend.loc[trend["CALTYPE"] == "DARK", "EXPTIME"]) == [5.0, 20.0]


def test_bias_dose_model_recovers_the_shift(rad_dose):
    campaign, out, _ = rad_dose
    model = pd.read_csv(out / "analysis/dose_model.csv")
    bias = model[model["CALTYPE"] == "BIAS"].iloc[0]
    truth = campaign.physics.bias_shift * 16
    # the steps' bias masters at 20.0 +- 0.15 degC: the 8 adu/degC temperature slope adds
    # ~0.4 adu scatter per step, absorbed by the chi-square scaling of the error
    assert abs(bias["SLOPE"] - truth) < 3 * bias["SLOPE_ERR"] + 0.01 * truth
    assert bias["STATUS"] == "ok"


def test_fits_table_states_every_skipped_fit(rad_dose):
    _, out, _ = rad_dose
    fits_table = pd.read_csv(out / "fits.csv")
    assert {"VALUE", "ERR"}.isdisjoint(fits_table.columns)
    assert {"INTERCEPT", "INTERCEPT_ERR", "STATUS"} <= set(fits_table.columns)
    # the beam is off while measuring: every dose rate is 0, the dose-rate fits are skipped
    rate = fits_table[fits_table["ANALYSIS"] == "dose_rate_model"]
    assert len(rate) and rate["STATUS"].str.contains("every dose rate is 0").all()
    ok = fits_table[fits_table["STATUS"] == "ok"]
    assert len(ok) and ok["SLOPE_ERR"].notna().all()
    # an unweighted line through two points (pre and post): coefficients, errors said unknown
    exact = fits_table[fits_table["STATUS"].str.startswith("ok (")]
    assert exact["STATUS"].str.contains("errors unknown").all() and exact["SLOPE"].notna().all()


# --- the old worked examples (seed spec 5.5) -----------------------------------------------

def test_dose_rate_example():
    rates = dose_rates_by_sequence([1, 1, 2, 2], [0, 10, 20, 40])
    assert rates[1:].tolist() == [0.0, 0.1, 0.0] and math.isnan(rates[0])
    assert group_rate(rates[:2])[0] == 0.0
    assert group_rate(rates[2:])[0] == pytest.approx(0.05)
    # equal time stamps: no rate (the old code gave inf)
    assert math.isnan(dose_rates_by_sequence([1, 2], [5, 5])[1])


def test_dose_rate_model_coefficients_example():
    t = pd.DataFrame({"DOSE": [0, 1, 0, 1], "DOSE_RATE": [0, 0, 2, 2],
                      "MEAN": [2.0, 3.5, 2.4, 3.9], "STD": [0.5, 0.55, 0.7, 0.75]})
    a, b = dose_rate_model(t, "example")
    np.testing.assert_allclose(a.coef, [2.0, 1.5, 0.2], atol=1e-12)
    np.testing.assert_allclose(b.coef, [0.5, 0.05, 0.1], atol=1e-12)
    assert a.ok and np.all(a.err < 1e-9)      # an exact fit: zero residual, zero error


def test_dynamic_range_example():
    r = dynamic_range(10.0, 1.0, 5.0, 2.0, full_scale=65536, adu_scale=16)
    assert float(r["dynamic_range_16"]) == 65521
    assert float(r["noise_adu"]) == pytest.approx(math.sqrt(5))
    assert float(r["reduction_16"]) == pytest.approx(100 * 15 / 65536)
    assert float(r["dynamic_range_12"]) == pytest.approx(4096 - 15 / 16)


# --- degenerate campaigns ---------------------------------------------------------------------

def _subset_index(rad_campaign, tmp_path, keep) -> str:
    from utils.io.index import DatasetIndex, write_index

    _, index = rad_campaign
    table = DatasetIndex.from_csv(index).table
    write_index(table[keep(table)], tmp_path / "subset.csv")
    return str(tmp_path / "subset.csv")


def test_one_dose_step_and_no_pre_stage_are_said(rad_campaign, tmp_path):
    index = _subset_index(rad_campaign, tmp_path,
                          lambda t: (t["STAGE"] == "radiating") & (t["DOSE"] == 20.0)
                          & (t["CALTYPE"] != "FLAT"))
    out = tmp_path / "out"
    assert dose_analysis.main([index, str(out), "--no-progress", "--plots", "none"]) == 0
    fits_table = pd.read_csv(out / "fits.csv")
    dose_fits = fits_table[fits_table["ANALYSIS"] == "dose_model"]
    # one row per series (one dose step): skipped, with the reason
    assert len(dose_fits) and dose_fits["STATUS"].str.contains("skipped: 1 usable point").all()
    diffs = pd.read_csv(out / "analysis/stage_differences.csv")
    assert diffs["DIFF"].isna().all() and diffs["STATUS"].str.contains("no pre rows").any()
    record = json.loads((out / "dose_analysis_summary.json").read_text())
    notes = " | ".join(record["notes"])
    assert "one dose step only" in notes and "gain" in record["gain_source"]
    assert "damage analysis skipped" in notes
    assert record["gain_e_per_adu"] == 1.0   # no gain: the old assumption, stated


def test_gain_json_is_used_and_named(rad_campaign, tmp_path):
    from utils.models.gain import Gain, write_gain

    gain = write_gain(Gain(gain=2.0, gain_err=0.02, method="photon transfer (EMVA 1288)",
                           source="flat"), tmp_path / "gain.json")
    index = _subset_index(rad_campaign, tmp_path,
                          lambda t: t["STAGE"].isin(["radiating"]) & (t["CALTYPE"] != "FLAT")
                          & (t["DOSE"] == 10.0))  # one step: the gain's naming is per product
    out = tmp_path / "out"
    assert dose_analysis.main([index, str(out), "--gain", str(gain), "--no-damage",
                               "--no-progress", "--plots", "none"]) == 0
    record = json.loads((out / "dose_analysis_summary.json").read_text())
    assert record["gain_source"] == str(gain) and record["gain_e_per_adu"] == 0.125
    head = fits.getheader(out / "pixel_precision" / "mag_err_10kR.fits")
    assert head["GAINSRC"] == str(gain)[:60] and head["FULLSCAL"] == 65520.0


def test_bad_index_is_one_line(tmp_path, caplog, capsys, one_line_error):
    status = dose_analysis.main([str(tmp_path / "nope.csv"), str(tmp_path / "o"),
                                 "--no-progress"])
    assert status == 2
    one_line_error(caplog, capsys, "nope.csv", "does not exist")
    assert not (tmp_path / "o").exists()


def test_dose_fits_products_verify(rad_dose, fitsverify):
    _, out, _ = rad_dose
    paths = [out / "pixel_precision" / "mag_err_10kR.fits", out / "analysis" /
             "dark_post_vs_last.fits", sorted((out / "masters").glob("master_dark_*.fits"))[0]]
    for path in paths:
        errors, report = fitsverify(path)
        assert errors == 0, f"{path}: {report}"


def test_fit_legends_show_the_slope_to_its_error_and_never_nan():
    """A fit with no degree of freedom (2 points, 2 coefficients) has no error: the STD-model
    legend read 'not irradiating: slope 0.01394 +- nan'; a slope 0.009469 +- 0.02 showed
    four digits more than its error allows.  Now 'slope 0.0139 (no error)', '0.009 +- 0.020'."""
    import matplotlib

    matplotlib.use("Agg")
    from analysis.dose.plots import plot_std_model
    from utils.models.regression import fit_line

    rng = np.random.default_rng(5)
    mean = np.array([3356.0, 3357.0, 3388.0, 3420.0, 3447.0])
    std = 28.7 + 0.0108 * mean + rng.normal(0, 0.05, mean.size)
    irr = np.array([False, True, True, True, False])
    fit_ir = fit_line(mean[irr], std[irr], np.full(3, 0.05))
    fit_no = fit_line(mean[~irr], std[~irr])
    assert fit_no.ok and not (np.isfinite(fit_no.err[1]) and fit_no.err[1] > 0)
    top, _ = plot_std_model(mean, std, fit_ir, fit_no, irr, title="bias")
    labels = top.get_legend_handles_labels()[1]
    assert not any("nan" in label for label in labels), labels
    assert any(label.endswith("(no error)") for label in labels), labels
    (ir,) = [label for label in labels if label.startswith("irradiating: slope")]
    value, err = ir.split("slope ")[1].split(" +- ")
    assert len(err.replace(".", "").lstrip("0")) == 2          # two significant digits
    assert len(value.split(".")[-1]) == len(err.split(".")[-1])  # the value to the same place


def test_dose_rate_model_with_no_degree_of_freedom_says_it_is_exact():
    """Three dose steps fitted with three coefficients put every point on the 1:1 line of
    the measured-vs-predicted figure by construction; the panel looked like a perfect model.
    Now its title says it is exact (3 points, 3 coefficients); a fit with freedom is not
    marked."""
    import matplotlib

    matplotlib.use("Agg")
    from analysis.dose.plots import plot_predicted
    from utils.models.regression import fit_linear

    rng = np.random.default_rng(2)
    dose, rate = np.array([10.0, 20.0, 40.0]), np.array([0.0041, 0.0041, 0.0083])
    mean = 41.0 + 2.7 * dose + 1800.0 * rate + rng.normal(0, 0.5, 3)
    exact = fit_linear(mean, {"dose": dose, "rate": rate})
    assert exact.ok and exact.dof == 0
    free = fit_linear(mean, {"dose": dose})
    meas = {"mean": mean, "std": mean}
    pred = {"mean": exact.predict(dose, rate), "std": free.predict(dose)}
    left, right = plot_predicted(meas, pred, title="dark dose-rate model",
                                 fits={"mean": exact, "std": free})
    assert left.get_title() == "dark dose-rate model: mean (exact: 3 points, 3 coefficients)"
    assert right.get_title() == "dark dose-rate model: std"


def test_symlog_difference_colour_bar_labels_do_not_overlap():
    """The symmetric-log difference maps (*_log.png) printed '10^-2', '0' and '-10^-2' over
    each other at the middle of the colour bar (decade ticks inside the linear part); now
    the ticks are 0 and the decades beyond the linear part, and no two labels overlap."""
    import matplotlib

    matplotlib.use("Agg")
    from analysis.stage_differences import plot_difference

    rng = np.random.default_rng(4)
    image = rng.normal(1.0, 1.5, (48, 64))
    image[5, 5] = 5.0
    ax = plot_difference(image, title="bias post vs last (symlog)", unit="%", log=True)
    fig = ax.figure
    fig.canvas.draw()
    bar = fig.axes[-1]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in bar.get_yticklabels()
             if t.get_text() and t.get_visible()]
    assert len(boxes) >= 3
    for a, b in zip(boxes, boxes[1:]):
        assert not a.overlaps(b), (a, b)
    lin = 0.01 * np.abs(image).max()
    assert all(t == 0 or abs(t) >= lin for t in bar.get_yticks())


def test_std_model_predictions_only_at_the_points_each_fit_was_fitted_to():
    """STD = a MEAN + b is fitted to the radiating steps and, apart, to pre and post.  The
    mean-and-std figure drew both fits as lines over every point (the irradiating one over
    pre and post) and joined the MEAN line from the last step to post at the same dose (a
    vertical segment at 40 krad); the STD-model figure drew each line over every mean.  Now
    each stage is its own line and each fit is marked at, or spans, its own points only."""
    import matplotlib

    matplotlib.use("Agg")
    from analysis.dose.plots import plot_mean_std_vs_dose, plot_std_model
    from utils.models.regression import fit_line

    stage = np.array(["pre", "radiating", "radiating", "radiating", "post"], dtype=object)
    dose = np.array([0.0, 10.0, 20.0, 40.0, 40.0])
    mean = np.array([3356.0, 3357.0, 3388.0, 3420.0, 3447.0])
    rng = np.random.default_rng(8)
    std = 28.7 + 0.0108 * mean + rng.normal(0, 0.05, 5)
    irr = stage == "radiating"
    fit_ir, fit_no = fit_line(mean[irr], std[irr]), fit_line(mean[~irr], std[~irr])
    ax = plot_mean_std_vs_dose(dose, mean, std, fit_ir, fit_no, title="bias", stage=stage)
    twin = [a for a in ax.figure.axes if a is not ax][0]
    for line in ax.get_lines():            # no MEAN line joins two stages (40 -> 40 krad)
        x = line.get_xdata()
        assert len(x) < 2 or np.all(np.diff(x) > 0), x
    marks = {line.get_label(): line for line in twin.get_lines()
             if line.get_label().startswith("STD = ")}
    (ir,) = [v for k, v in marks.items() if k.endswith("(irradiating)")]
    (no,) = [v for k, v in marks.items() if k.endswith("(not irradiating)")]
    assert list(ir.get_xdata()) == [10.0, 20.0, 40.0] and ir.get_linestyle() == "None"
    assert sorted(no.get_xdata()) == [0.0, 40.0] and no.get_linestyle() == "None"
    top, _ = plot_std_model(mean, std, fit_ir, fit_no, irr, title="bias")
    spans = {line.get_label().split(":")[0]: line.get_xdata() for line in top.get_lines()
             if line.get_linestyle() == "--"}
    assert min(spans["irradiating"]) == 3357.0 and max(spans["irradiating"]) == 3420.0
    assert min(spans["not irradiating"]) == 3356.0 and max(spans["not irradiating"]) == 3447.0


def test_dose_model_regresses_on_the_dose_the_frames_received(tmp_path):
    """With the beam on while measuring (a ramp: the frames of the 10, 20 and 40 krad steps
    received ~0-10, 10-20 and 20-40 krad), MEAN against the steps' labels put the bias shift
    at 2.0 +- 0.4 adu/krad for a true 3.2 (chi2/dof 472); against the frames' mean FRAMEDOSE
    it is within 3 of its errors (and the step label stays in the table)."""
    from conftest import convert_campaign

    from analysis.dose.pipeline import DoseSettings
    from analysis.dose.pipeline import run as dose_run
    from utils.io.index import build_index, write_index
    from utils.sim import simulate_irradiation

    campaign = simulate_irradiation(tmp_path / "c", seed=21, width=32, height=24, frames=6,
                                    doses=(10, 20, 40), dose_profile="ramp")
    convert_campaign(campaign)
    index = campaign.root / "index.csv"
    write_index(build_index(discover=[campaign.root]), index)
    dose_run(index, tmp_path / "out", DoseSettings(damage=False))
    summary = pd.read_csv(tmp_path / "out" / "dose_summary.csv")
    ir = summary[(summary["STAGE"] == "radiating") & (summary["CALTYPE"] == "BIAS")]
    assert (ir["FRAMEDOSE"] < ir["DOSE"] - 1.0).all()         # the frames before the label
    model = pd.read_csv(tmp_path / "out" / "analysis" / "dose_model.csv")
    bias = model[model["CALTYPE"] == "BIAS"].iloc[0]
    truth = campaign.physics.bias_shift * 16
    assert bias["DOSE_COLUMN"] == "FRAMEDOSE" and bias["STATUS"] == "ok"
    assert bias["SLOPE_ERR"] < 0.1 * truth                     # precise enough to tell
    assert abs(bias["SLOPE"] - truth) < 3 * bias["SLOPE_ERR"], (bias["SLOPE"], truth)
    with np.load(tmp_path / "out" / "analysis" / "dose_model_bias.npz") as data:
        np.testing.assert_allclose(np.sort(data["dose"]), np.sort(ir["FRAMEDOSE"]))
        assert sorted(data["dose_step"]) == sorted(ir["DOSE"])


def test_fit_log_lines_read_as_sentences_and_expected_skips_are_info(tmp_path, caplog):
    """Every run warned 'ok (bias STD vs MEAN (not irradiating): 2 points for 2
    coefficients, ...)' (six lines starting 'ok (' in warnings.log and the report) and
    'skipped: every dose rate is 0' for pre/post, where the beam is off by definition."""
    from analysis.dose.pipeline import _Writer
    from utils.models.regression import fit_line

    caplog.set_level(logging.INFO, logger="analysis.dose.pipeline")
    w = _Writer(tmp_path)
    exact = fit_line([1.0, 2.0], [3.0, 5.0], what="bias STD vs MEAN (not irradiating)")
    no_beam = fit_line([0.0, 0.0, 0.0], [1.0, 2.0, 3.0],
                       what="bias MEAN vs dose rate (not irradiating)", xname="dose rate")
    w.fit("std_model", "BIAS", math.nan, "STD vs MEAN", exact)
    w.fit("dose_rate_effect", "BIAS", math.nan, "MEAN", no_beam)
    records = {r.getMessage(): r.levelno for r in caplog.records}
    assert records == {
        "bias STD vs MEAN (not irradiating): 2 points for 2 coefficients, no degree of "
        "freedom: errors unknown": logging.WARNING,
        no_beam.status: logging.INFO}, records
    assert not any(n.startswith("ok (") for n in w.notes)
    assert {f["STATUS"] for f in w.fits} == {exact.status, no_beam.status}  # table unchanged
