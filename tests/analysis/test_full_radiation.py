"""run_full_radiation_pipeline.py end to end on both layouts, and the radiation response model.

One small campaign per layout is simulated and run once per module (twice: the second run
must keep everything); the tests read its products.  The model's parameters are compared
with the simulator's truth over the model's own pixel set (``pixels.fits``): pulls within
3 of each reported error (one seed here, more seeds in the slow test).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from conftest import convert_campaign, sha256_tree, strict_json_files

import run_full_radiation_pipeline as full
from analysis import fit_radiation_model as frm
from analysis import procedure_checks
from analysis.campaign_runs import convert_campaign as convert_layout
from analysis.campaign_runs import detect_layout
from utils.errors import TableError
from utils.io.index import build_index, write_index
from utils.models import linear as lin
from utils.models import radiation_response as rr
from utils.sim import Physics, radiation_model_truth, simulate_dosedirs, simulate_irradiation

#: The beam leaves charge while the dose-step darks expose (one hit per pixel per krad of
#: 100 +- 50 ADC counts); a low dark current (the damage analysis's hot threshold); T_d so
#: large that the dark current does not depend on the set-point jitter (one temperature,
#: no T_d to measure in this fast campaign).
FAST_PHYSICS = Physics(beam_charge=100.0, beam_charge_sigma=50.0, dark_median=0.5,
                       doubling_temperature=1000.0)
PARAMS = ("B0", "alpha_D", "b_T", "DC0", "beta_D", "q_mean", "sigma_q", "sigma_read")


def _run_twice(root, out, argv_extra=()):
    before = sha256_tree(root)
    argv = [str(root), str(out), "--no-progress", *argv_extra]
    t0 = time.perf_counter()
    status = full.main(argv)
    first = time.perf_counter() - t0
    after = sha256_tree(root)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    t0 = time.perf_counter()
    status2 = full.main(argv)
    second = time.perf_counter() - t0
    return {"status": (status, status2), "before": before, "after": after,
            "after2": sha256_tree(root), "mtimes": mtimes, "times": (first, second)}


@pytest.fixture(scope="module")
def irr_run(tmp_path_factory):
    """Stage folders of raw frames: pre, 20 and 40 krad (the beam on while measuring), post."""
    base = tmp_path_factory.mktemp("full_irr")
    campaign = simulate_irradiation(base / "campaign", seed=11, width=32, height=24, frames=4,
                                    doses=(20, 40), dark_exposures=(20.0,), physics=FAST_PHYSICS)
    out = base / "out"
    return campaign, out, _run_twice(campaign.root, out, ["--gain", "2.0"])


@pytest.fixture(scope="module")
def dd_run(tmp_path_factory):
    """Dose folders of FITS: 5kRads without a log, 10kRads with a constant-dose log, 20kRads
    without; the beam off while measuring (an equal dose before each frame).  Without figures
    (``--plots none``: three quarters of a run's time is saving them; irr_run checks them)."""
    base = tmp_path_factory.mktemp("full_dd")
    campaign = simulate_dosedirs(base / "campaign", seed=12, width=32, height=24, frames=4,
                                 doses=(5, 10, 20), with_log=(False, True),
                                 constant_dose_log=True, dose_profile="increments")
    out = base / "out"
    return campaign, out, _run_twice(campaign.root, out, ["--plots", "none"])


#: Suffixes of a figure's files: the PNG only where figures are drawn (not in dd_run).
FIGURE_FILES = {"irr_run": (".png", ".npz"), "dd_run": (".npz",)}


# --- both layouts --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["irr_run", "dd_run"])
def test_runs_and_keeps_inputs(name, request):
    campaign, out, run = request.getfixturevalue(name)
    assert run["status"] == (0, 0)
    before, after = run["before"], run["after"]
    # every input file byte-identical; the only new files are FITS beside raw frames
    assert {k: after[k] for k in before} == before
    assert all("/fits/" in "/" + k for k in set(after) - set(before))
    assert run["after2"] == after
    assert not (campaign.root / "index.csv").exists()


@pytest.mark.parametrize("name", ["irr_run", "dd_run"])
def test_rerun_keeps_every_product(name, request):
    _, out, run = request.getfixturevalue(name)
    kept = {p: p.stat().st_mtime_ns for p in run["mtimes"] if p.name != "warnings.log"}
    assert kept and all(p.stat().st_mtime_ns == m for p, m in kept.items())
    assert run["times"][1] < run["times"][0] / 3


@pytest.mark.parametrize("name", ["irr_run", "dd_run"])
def test_contract_files(name, request):
    _, out, _ = request.getfixturevalue(name)
    table = pd.read_csv(out / "radiation_model" / "fit_results.csv")
    assert list(table.columns) == ["param", "value", "err", "err_stat", "err_td", "R2", "unit",
                                   "constrained", "reason"]
    assert list(table["param"]) == list(PARAMS)
    record = json.loads((out / "radiation_model" / "fit_results.json").read_text())
    # every JSON product strict (undefined numbers null, never the bare NaN token)
    assert len(strict_json_files(out)) > 10
    assert {"parameters", "correlation", "n_masters"} <= set(record)
    assert [p["param"] for p in record["parameters"]] == list(PARAMS)
    for p in record["parameters"]:
        assert set(p) == {"param", "value", "err", "err_stat", "err_td", "R2", "unit",
                          "constrained", "reason"}
        # never a silent NaN: a missing value has constrained = false and a reason
        assert (p["value"] is not None and p["err"] is not None) or \
            (not p["constrained"] and p["reason"])
    checks = pd.read_csv(out / "procedure_checks.csv")
    assert list(checks.columns) == ["check", "stage", "dose_krad", "value", "unit", "limit",
                                    "status", "detail"]
    assert set(checks["status"]) <= {"pass", "warn", "fail", "not_logged"}
    summary = json.loads((out / "summary.json").read_text())
    for key in ("damage_slope", "recovered_fraction", "hot_pixel_growth", "model_parameters"):
        assert key in summary
    for value in summary["model_parameters"].values():
        assert value is None or set(value) == {"value", "err", "err_stat", "err_td", "unit"}
    assert (out / "report" / "index.html").is_file()
    # the report shows the model (every parameter, constrained or said not to be) and the checks
    report = json.loads((out / "report" / "report.json").read_text())
    blocks = {b["key"]: b for b in report["radiation"]["blocks"]}
    assert blocks["model_parameters"]["measured"] and blocks["procedure_checks"]["measured"]
    assert [e["key"] for e in blocks["model_parameters"]["entries"]] == \
        [f"model_{p}" for p in PARAMS]
    assert len(blocks["procedure_checks"]["tables"][0]["rows"]) == len(checks)
    for name_ in ("bias_residuals", "dark_current_residuals", "variance_residuals", "qq_plot"):
        for suffix in FIGURE_FILES[name]:
            assert (out / "radiation_model" / f"{name_}{suffix}").is_file()
    if name == "dd_run":       # --plots none: no figure anywhere
        assert not list(out.rglob("*.png"))


@pytest.mark.parametrize("name", ["irr_run", "dd_run"])
def test_every_master_is_reconstructed(name, request):
    _, out, _ = request.getfixturevalue(name)
    points = pd.read_csv(out / "radiation_model" / "masters.csv")
    stats = pd.read_csv(out / "radiation_model" / "reconstruction_stats.csv")
    assert sorted(stats["MASTER"] + stats["TAG"]) == sorted(points["MASTER"] + points["TAG"])
    for _, row in stats.iterrows():
        folder = out / (row["TAG"] if row["STAGE"] != "radiating" else f"radiating/{row['TAG']}")
        stem = row["MASTER"].removesuffix(".fits") + "_diff"
        for suffix in (".fits", *FIGURE_FILES[name]):
            assert (folder / "reconstruction" / (stem + suffix)).is_file()
        assert (folder / "reconstruction" / "residual_stats.csv").is_file()
    fitted = stats[stats["FITTED"]]
    # the fitted masters are predicted within their noise (pulls of order 1, not tens)
    assert (fitted["PULL_STD"] < 3).all(), fitted[["MASTER", "PULL_STD"]]


# --- irradiation layout --------------------------------------------------------------------------

def test_products_per_stage(irr_run):
    _, out, _ = irr_run
    for folder in ("pre", "radiating/radiating_D20kR", "radiating/radiating_D40kR", "post"):
        assert (out / folder / "bias").is_dir() and (out / folder / "dark").is_dir()
        assert (out / folder / "flat").is_dir()
    for stage in ("pre", "radiating", "post"):
        plots = out / stage / "plots"
        for name in ("bias_intensity", "dark_intensity", "dark_intensity_20s"):
            for suffix in (".png", ".csv", ".npz"):
                assert (plots / (name + suffix)).is_file(), plots / (name + suffix)
        series = pd.read_csv(plots / "dark_intensity.csv")
        assert list(series.columns[:3]) == ["TIME", "MEAN", "STD"] and len(series) == 4 * (
            2 if stage == "radiating" else 1)
    assert (out / "precision" / "dose_summary.csv").is_file()
    # product tables list the stages in campaign order (they were alphabetical: post first)
    rank = {"pre": 0, "radiating": 1, "post": 2}
    for table, within in (("precision/dose_summary.csv", "CALTYPE"),
                          ("radiation_model/masters.csv", None),
                          ("radiation_model/reconstruction_stats.csv", None)):
        rows = pd.read_csv(out / table)
        for _, part in (rows.groupby(within) if within else [(None, rows)]):
            order = part["STAGE"].map(rank).tolist()
            assert order == sorted(order) and order[0] == 0, (table, part["STAGE"].tolist())
    assert (out / "precision" / "radiation_analysis" / "pre" / "stats_dark.csv").is_file()
    assert (out / "conversion" / "Preirradiation" / "fits_index.csv").is_file()


def test_model_recovers_the_truth(irr_run):
    campaign, out, _ = irr_run
    record = json.loads((out / "radiation_model" / "fit_results.json").read_text())
    pixels = fits.getdata(out / "radiation_model" / "pixels.fits").astype(bool)
    truth = radiation_model_truth(campaign.maps(), campaign.physics, pixels, t_ref=20.0)
    pulls = {}
    for p in record["parameters"]:
        assert p["constrained"], p
        pulls[p["param"]] = (p["value"] - truth[p["param"]]) / p["err"]
    assert all(abs(z) < 3 for z in pulls.values()), pulls


def test_beam_on_darks_are_reconstructed_without_bias(irr_run):
    """The per-pixel dark maps weighed each point by the pixel's own master error, which grows
    with the beam hits the pixel happened to get: the fit leaned away from the hit pixels'
    points and the beam-on darks' mean residual was +24 +- 12 and +72 +- 6 adu (20, 40 krad).
    With the error the model expects (read noise, shot noise, beam variance), 0 within a few
    standard errors of the mean residual."""
    _, out, _ = irr_run
    stats = pd.read_csv(out / "radiation_model" / "reconstruction_stats.csv")
    beam = stats[(stats["CALTYPE"] == "DARK") & (stats["RATE"] > 0)]
    assert len(beam) == 2
    z = beam["MEAN_RESID"] / beam["MEAN_RESID_ERR"]
    assert (z.abs() < 4).all(), beam[["TAG", "MEAN_RESID", "MEAN_RESID_ERR"]]
    # the predicted-only post darks (no fit, so no leverage): pulls of unit spread (0.58
    # with the beam variance added to the pixel's own error)
    post = stats[(stats["CALTYPE"] == "DARK") & (stats["STAGE"] == "post")]
    assert ((post["PULL_STD"] > 0.8) & (post["PULL_STD"] < 1.2)).all(), post["PULL_STD"]


def test_pulls_of_the_masters_the_maps_were_fitted_to(irr_run):
    """The dark masters the per-pixel maps were fitted to (3 points, 2 terms per pixel:
    mean leverage 2/3): their residual's variance is sigma^2 (1 - h), not sigma^2 plus the
    maps' prediction error.  With the latter PULL_STD was 0.03 / 0.88 / 0.23 (pre, 20, 40
    krad, 64x48 of this campaign); now 1 within 4 standard errors of a sample standard
    deviation over the pixel set (from the pulls' own kurtosis), and the table says which
    masters were in the maps' fit (MAPFIT) with their mean leverage."""
    _, out, _ = irr_run
    stats = pd.read_csv(out / "radiation_model" / "reconstruction_stats.csv")
    darks = stats[(stats["CALTYPE"] == "DARK") & stats["FITTED"]]
    assert len(darks) == 3
    pixels = fits.getdata(out / "radiation_model" / "pixels.fits").astype(bool)
    for _, row in darks.iterrows():
        folder = out / (row["TAG"] if row["STAGE"] != "radiating" else f"radiating/{row['TAG']}")
        pull = np.load(folder / "reconstruction" /
                       (row["MASTER"].removesuffix(".fits") + "_diff.npz"))["pull"][pixels]
        pull = pull[np.isfinite(pull)]
        kurt = np.mean((pull - pull.mean()) ** 4) / np.var(pull) ** 2
        tol = 4 * math.sqrt(max(kurt - 1, 2.0) / (4 * pull.size))
        assert abs(row["PULL_STD"] - 1) < tol, (row["TAG"], row["PULL_STD"], tol)
    assert list(stats["MAPFIT"]) == list((stats["CALTYPE"] == "DARK") & stats["FITTED"])
    # the leverages of a pixel's points add up to its 2 terms (the weighted hat's trace)
    assert darks["LEVERAGE"].sum() == pytest.approx(2.0, abs=0.01)


def test_residual_variance_terms():
    """prediction_weights at a point's own row is the hat matrix's diagonal (leverage), and
    the dark shot noise follows the pixel's own dark current where it is given."""
    rng = np.random.default_rng(3)
    x = np.column_stack([np.ones(4), [0.0, 1.0, 2.0, 5.0]])
    sigma = rng.uniform(0.5, 2.0, (4, 2, 3))
    for k in range(4):
        a = lin.prediction_weights(x, x[k], sigma)
        for i, j in np.ndindex(2, 3):
            w = np.diag(1 / sigma[:, i, j] ** 2)
            hat = x @ np.linalg.inv(x.T @ w @ x) @ x.T @ w
            assert np.allclose(a[:, i, j], hat[k], atol=1e-12)
    truth = {"B0": 3200.0, "alpha_D": 3.2, "b_T": 8.0, "DC0": 4.0, "beta_D": 0.2,
             "q_mean": 1600.0, "sigma_read2": 1089.0, "kappa": 3.2e6}
    pts, settings = _points(**truth)
    fit = rr.fit_response(pts, settings)
    point = {"DOSE": 20.0, "RATE": 0.0, "EXPTIME": 20.0, "TEMP": 20.0}
    read = np.full((1, 3), 900.0)
    own = (np.array([[4.0, 400.0, np.nan]]), np.array([[0.2, 0.2, np.nan]]))
    var = rr.frame_variance(point, fit, read, own)
    expect = 900.0 + 8.0 * (np.array([4.0, 400.0, 4.0]) + 0.2 * 20.0) * 20.0
    assert np.allclose(var, expect, rtol=1e-6)


def test_dark_maps_pulls_against_the_truth(irr_run):
    """Per-pixel DC0 and beta_D against the simulator's maps, over the model's pixels without
    radiation hot pixels (~750): pulls of mean 0 and spread 1.  Weighted by each pixel's own
    master error they were DC0 std 1.36 (four-frame sample variances as weights) and beta_D
    mean -0.37 +- 0.02, std 0.61."""
    campaign, out, _ = irr_run
    maps = campaign.maps()
    physics = campaign.physics
    pixels = fits.getdata(out / "radiation_model" / "pixels.fits").astype(bool)
    pixels &= ~(maps["rad_hot_threshold"] <= 40)
    dc0 = maps["dark_ref_adu"].astype(float)  # T_ref = the simulator's 20 degC
    with fits.open(out / "radiation_model" / "dark_maps.fits") as hdul:
        for name, value, err, true in (
                ("DC0", hdul[0].data, hdul["UNCERT"].data, dc0),
                ("beta_D", hdul["BETA_D"].data, hdul["BETA_ERR"].data,
                 physics.dark_damage * dc0)):
            pull = ((value - true) / err)[pixels]
            assert pull.size > 500
            se = pull.std() / math.sqrt(pull.size)
            assert abs(pull.mean()) < 4 * se, (name, pull.mean(), se)
            assert 0.85 < pull.std() < 1.15, (name, pull.std())


def test_procedure_checks_of_a_ramp_campaign(irr_run):
    _, out, _ = irr_run
    checks = pd.read_csv(out / "procedure_checks.csv")
    rate = checks[(checks["check"] == "dose_rate") & (checks["stage"] == "radiating_D20kR")]
    # 20 krad over the step's ~2600 s of beam: ~7.6 rad(Si)/s, inside ESCC 22900's standard
    # window only
    assert np.allclose(rate["value"], rate["value"].iloc[0]) and 5 < rate["value"].iloc[0] < 10
    assert dict(zip(rate["detail"].str.split(";").str[0], rate["status"])) == {
        "MIL-STD-883 TM1019 condition A": "warn", "ESCC 22900 standard rate": "pass",
        "ESCC 22900 low rate": "warn"}
    during = checks[checks["check"] == "time_to_measurement"].set_index("stage")
    assert during.loc["radiating_D20kR", "status"] == "warn"          # in-situ
    assert during.loc["post", "status"] == "pass"                       # 20 min after
    anneal = checks[checks["check"] == "anneal_duration"].iloc[0]
    assert anneal["status"] == "warn" and anneal["value"] < 86400


def test_summary_line_names_the_results(irr_run):
    _, out, _ = irr_run
    line = full.summary_line(json.loads((out / "summary.json").read_text()))
    assert line.startswith("done: ") and "q_mean" in line and "recovered fraction" in line
    assert "\n" not in line


# --- dose directories ----------------------------------------------------------------------------

def test_dose_folders_spread_and_synthesised_log(dd_run):
    campaign, out, _ = dd_run
    table = pd.read_csv(out / "index.csv")
    five = table[table["PATH"].str.contains("5kRads/")].sort_values("TIMESTAMP")
    assert five["FRAMEDOSE"].tolist() == pytest.approx([5 * (k + 1) / 8 for k in range(8)])
    log = pd.read_csv(out / "radiationLogCompleto.csv")
    assert log["Dose"].tolist() == pytest.approx(sorted(table["FRAMEDOSE"]))
    assert not (campaign.root / "radiationLogCompleto.csv").exists()
    for rec in campaign.records:                    # increments: the rule is exact here
        row = table[table["PATH"].str.endswith(rec.path)].iloc[0]
        assert abs(row["FRAMEDOSE"] - rec.dose) < 1e-3


def test_old_dose_folder_example(tmp_path):
    from analysis.campaign_runs import campaign_log, index_campaign

    # the old example: 5kRads, 4 frames, no log, previous 0 -> 1.25, 2.5, 3.75, 5.0
    campaign = simulate_dosedirs(tmp_path / "c", frames=2, doses=(5.0,), with_log=(False,))
    layout = detect_layout(campaign.root)
    _, table, _ = index_campaign(layout, tmp_path / "out", None)
    assert table.sort_values("TIMESTAMP")["FRAMEDOSE"].tolist() == [1.25, 2.5, 3.75, 5.0]
    path, note = campaign_log(layout, tmp_path / "out", None, table)
    assert path == tmp_path / "out" / "radiationLogCompleto.csv" and "synthesised" in note
    assert pd.read_csv(path)["Dose"].tolist() == [1.25, 2.5, 3.75, 5.0]
    assert sorted(p.name for p in campaign.root.iterdir()) == ["5kRads", "truth"]


def test_dose_step_darks_are_reconstructed_without_the_bias_drift(dd_run):
    """The per-pixel dark maps (dark_maps.fits, which the reconstruction uses) subtracted from
    each dark master the bias master of its group brought to the dark's temperature, not to
    its dose: when the darks received more dose than the bias frames before them (here an
    equal increment before every frame, the bias frames first), they held alpha_D dD more
    bias, counted as dark current, so beta_D per pixel was too high and the darks of the
    dose steps over-predicted: mean residuals -6.6, -9.8, -15.7 adu (+-0.6, 0.8, 1.0) here,
    -6.5, -18.4, -32.8 on a 64x48 default ramp campaign.  Now +0.27, +0.14, -0.17.  The mean
    residual of every fitted dark master must lie within 5 of its errors."""
    _, out, _ = dd_run
    stats = pd.read_csv(out / "radiation_model" / "reconstruction_stats.csv")
    fitted = stats[stats["FITTED"] & (stats["CALTYPE"] == "DARK")]
    assert len(fitted) == 3
    pulls = fitted["MEAN_RESID"] / fitted["MEAN_RESID_ERR"]
    assert (pulls.abs() < 5).all(), fitted[["TAG", "MASTER", "MEAN_RESID", "MEAN_RESID_ERR"]]


def test_beam_off_campaign_reports_q_unconstrained(dd_run):
    _, out, _ = dd_run
    table = pd.read_csv(out / "radiation_model" / "fit_results.csv").set_index("param")
    for name in ("q_mean", "sigma_q"):
        assert not table.loc[name, "constrained"] and math.isnan(table.loc[name, "value"])
        assert "beam" in table.loc[name, "reason"]
    assert table.loc[["B0", "alpha_D", "DC0", "beta_D", "sigma_read"], "constrained"].all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_parameters"]["q_mean"] is None
    assert "beam" in summary["model_unconstrained"]["q_mean"]


def test_raw_dose_folders_are_converted(irr_run, tmp_path):
    campaign, _, _ = irr_run
    attempt = campaign.root / "Irradiation" / "20kRads" / "Darks" / "T20" / "20s" / "attempt0"
    shutil.copytree(attempt, tmp_path / "ds" / "20kRads", ignore=shutil.ignore_patterns("fits"))
    layout = detect_layout(tmp_path / "ds")
    assert layout.kind == "dosedirs"
    counts = convert_layout(layout, tmp_path / "out")
    assert counts["converted"] == 4
    assert (tmp_path / "out" / "conversion" / "20kRads" / "fits_index.csv").is_file()
    assert not (tmp_path / "ds" / "20kRads" / "fits_index.csv").exists()
    table = build_index(discover=[tmp_path / "ds"])
    assert (table["CALTYPE"] == "DARK").all() and (table["DOSE"] == 20).all()


def test_log_not_covering_a_stage_flags_its_rows(irr_run, tmp_path, caplog):
    from analysis.campaign_runs import index_campaign

    campaign, _, _ = irr_run
    log = pd.read_csv(campaign.root / "radiationLogCompleto.csv")
    part = tmp_path / "partial.csv"
    cut = log["TimeStamp"].quantile(0.5)
    log[log["TimeStamp"] <= cut].to_csv(part, index=False)
    caplog.set_level(logging.WARNING)
    _, table, report = index_campaign(detect_layout(campaign.root), tmp_path / "o", part)
    bare = table["FRAMEDOSE"].isna()
    assert report.uncovered == bare.sum() > 0
    assert table.loc[bare, "DOSEFLAG"].str.contains("no radiation log covers").all()
    said = [r.getMessage() for r in caplog.records if "have no dose" in r.getMessage()]
    assert len(said) == 1 and "radiating_D40kR" in said[0] and "DOSEFLAG" in said[0]
    log.assign(TimeStamp=log["TimeStamp"] + 1e7).to_csv(part, index=False)
    with pytest.raises(TableError, match="covers none"):
        index_campaign(detect_layout(campaign.root), tmp_path / "o2", part)


# --- the model's numerics ------------------------------------------------------------------------

def _points(**truth):
    """Exact model points: bias and darks (5, 20 s) at 0, 10, 20 krad, the beam on (0.01
    krad/s) while the 10 and 20 krad masters expose, temperatures 10/20/30 at dose 0."""
    s = rr.ModelSettings(t_ref=20.0, t_d=6.0, adu_per_e=8.0)
    rows = []
    for dose, rate, temps in ((0, 0.0, (10, 20, 30)), (10, 0.01, (20,)), (20, 0.01, (20,))):
        for temp in temps:
            for cal, t in (("BIAS", 0.0), ("DARK", 5.0), ("DARK", 20.0)):
                rows.append({"CALTYPE": cal, "DOSE": dose, "RATE": rate, "EXPTIME": t,
                             "TEMP": float(temp), "MEAN_ERR": 0.5, "VAR_ERR": 20.0})
    pts = pd.DataFrame(rows)
    c = np.array([truth.get(n, 0.0) for n in rr.COEFFICIENTS])
    mean, var = rr.design_rows(pts, s)
    return pts.assign(MEAN=mean @ c, VAR=var @ c), s


def test_joint_fit_recovers_exact_points():
    truth = {"B0": 3200.0, "alpha_D": 3.2, "b_T": 8.0, "DC0": 4.0, "beta_D": 0.2,
             "q_mean": 1600.0, "sigma_read2": 1100.0, "kappa": 1600.0 ** 2 + 800.0 ** 2}
    pts, s = _points(**truth)
    fit = rr.fit_response(pts, s)
    for name in ("B0", "alpha_D", "b_T", "DC0", "beta_D", "q_mean"):
        assert fit.value(name) == pytest.approx(truth[name], rel=1e-6)
    assert fit.value("sigma_q") == pytest.approx(800.0, rel=1e-6)
    assert fit.value("sigma_read") == pytest.approx(math.sqrt(1100.0), rel=1e-6)
    assert fit.correlation["q_mean"]["q_mean"] == pytest.approx(1.0)


def _td_campaign_points(rng, t_d=6.0):
    """Noisy model points like the irradiation campaign's (bias and 1 s darks at 0, 10, 20,
    30 degC before and after 10, 20, 40 krad, beam off; 40 adu/s at 20 degC)."""
    truth = {"B0": 3355.0, "alpha_D": 3.2, "b_T": 8.0, "DC0": 40.0, "beta_D": 2.0,
             "sigma_read2": 1190.0}
    s = rr.ModelSettings(t_ref=20.0, t_d=t_d, adu_per_e=2.0)
    rows = [{"CALTYPE": cal, "DOSE": float(dose), "RATE": 0.0, "EXPTIME": t, "TEMP": temp,
             "MEAN_ERR": 0.3, "VAR_ERR": 15.0}
            for dose in (0, 10, 20, 40) for temp in (0.0, 10.0, 20.0, 30.0)
            for cal, t in (("BIAS", 0.0), ("DARK", 1.0))]
    pts = pd.DataFrame(rows)
    c = np.array([truth.get(n, 0.0) for n in rr.COEFFICIENTS])
    mean, var = rr.design_rows(pts, s)
    return pts.assign(MEAN=mean @ c + rng.normal(0.0, 0.3, len(pts)),
                      VAR=var @ c + rng.normal(0.0, 15.0, len(pts))), truth


def test_doubling_temperature_error_is_propagated():
    """DC0 (at T_ref, from masters at 0-30 degC) moves with the fixed T_d by several of
    its own errors per T_d error (2.2 on the irradiation campaign).  With T_d drawn about
    its truth by its stated error (as the damage analysis measures it), DC0's and beta_D's
    pulls over 300 seeds follow N(0, 1) with the total error (err: err_stat and err_td in
    quadrature), not with the fit's own error (err_stat), and err_td is dDC0/dT_d * sigma."""
    n, sigma = 300, 0.05
    rng = np.random.default_rng(2026)
    pulls = {"DC0": ([], []), "beta_D": ([], [])}
    ratio = []
    for _ in range(n):
        pts, truth = _td_campaign_points(rng)
        t_d = 6.0 + rng.normal(0.0, sigma)
        fit = rr.fit_response(pts, rr.ModelSettings(t_ref=20.0, t_d=t_d, t_d_err=sigma,
                                                    adu_per_e=2.0))
        rows = fit.parameters.set_index("param")
        for name, (total, stat) in pulls.items():
            r = rows.loc[name]
            assert r["err"] == pytest.approx(math.hypot(r["err_stat"], r["err_td"]))
            total.append((r["value"] - truth[name]) / r["err"])
            stat.append((r["value"] - truth[name]) / r["err_stat"])
        ratio.append(rows.loc["DC0", "err_td"] / rows.loc["DC0", "err_stat"])
    # err_td is the derivative times sigma: DC0's shift per unit T_d, from two refits
    high = rr.fit_response(pts, rr.ModelSettings(t_ref=20.0, t_d=t_d + 1e-4, adu_per_e=2.0))
    low = rr.fit_response(pts, rr.ModelSettings(t_ref=20.0, t_d=t_d - 1e-4, adu_per_e=2.0))
    slope = (high.value("DC0") - low.value("DC0")) / 2e-4
    assert rows.loc["DC0", "err_td"] == pytest.approx(abs(slope) * sigma, rel=0.01)
    assert np.median(ratio) > 1.5, np.median(ratio)      # T_d's error dominates (3.8 here)
    se_mean, se_std = 1 / math.sqrt(n), 1 / math.sqrt(2 * (n - 1))
    for name, (total, stat) in pulls.items():
        total, stat = np.array(total), np.array(stat)
        assert abs(total.mean()) < 4 * se_mean, (name, total.mean())
        assert abs(total.std(ddof=1) - 1) < 4 * se_std, (name, total.std(ddof=1))
        if name == "DC0":       # the fit's own error alone: pulls ~2.4 wide
            assert stat.std(ddof=1) > 1 + 8 * se_std, (name, stat.std(ddof=1))
    # without an error T_d is taken as exact (err_td 0), and said when it is propagated
    exact = rr.fit_response(pts, rr.ModelSettings(t_ref=20.0, t_d=t_d, adu_per_e=2.0))
    assert (exact.parameters["err_td"].fillna(0) == 0).all()
    assert exact.error("DC0") == rows.loc["DC0", "err_stat"]
    assert any("T_d's error" in note for note in fit.notes)


def test_doubling_temperature_error_reaches_the_model():
    """The full pipeline hands the damage analysis's T_d *and its error* to the model; a
    given T_d without an error is taken as exact; a measured one brings its own."""
    from analysis.campaign_summary import doubling_temperature_and_error
    damage = {"doubling_temperature_degC": {"pre": 5.93, "post": 6.01},
              "doubling_temperature_err_degC": {"pre": 0.053, "post": 0.024}}
    assert doubling_temperature_and_error(damage) == (5.93, 0.053)
    assert doubling_temperature_and_error({}) == (None, None)
    pts, _ = _td_campaign_points(np.random.default_rng(1))
    pts = pts[pts["DOSE"] == 0].assign(STAGE="pre", MEAN_ERR=0.01)
    given = frm.FitSettings(doubling_temperature=5.93, doubling_temperature_err=0.053)
    model, info = frm.model_settings(pts, given, 16)
    assert model.t_d_err == 0.053 and info["doubling_temperature_err"] == 0.053
    model, info = frm.model_settings(pts, frm.FitSettings(doubling_temperature=5.93), 16)
    assert model.t_d_err is None
    model, info = frm.model_settings(pts, frm.FitSettings(), 16)
    assert model.t_d == pytest.approx(6.0, abs=0.05) and 0 < model.t_d_err < 0.05
    assert info["doubling_temperature_err"] == model.t_d_err
    with pytest.raises(ValueError, match="doubling_temperature_err"):
        frm.FitSettings(doubling_temperature_err=0.1)
    args = frm.build_parser().parse_args(["i", "o", "--doubling-temperature", "6",
                                          "--doubling-temperature-err", "0.05"])
    assert frm.settings_from(args).doubling_temperature_err == 0.05

def test_identifiability_reasons():
    pts, s = _points(B0=3200.0, DC0=4.0, sigma_read2=1100.0)
    off = pts.assign(RATE=0.0)
    fit = rr.fit_response(off, s)
    assert not fit.constrained("q_mean") and not fit.constrained("sigma_q")
    assert "beam" in fit.parameters.set_index("param").loc["q_mean", "reason"]
    one = off[off["DOSE"] == 0]
    fit = rr.fit_response(one, s)
    reasons = fit.parameters.set_index("param")["reason"]
    assert "one dose" in reasons["alpha_D"] and "one dose" in reasons["beta_D"]
    bias_only = one[one["CALTYPE"] == "BIAS"]
    fit = rr.fit_response(bias_only, s)
    assert "no dark master" in fit.parameters.set_index("param").loc["DC0", "reason"]
    assert math.isfinite(fit.value("B0"))
    with pytest.raises(ValueError, match="no master"):
        rr.fit_response(off.assign(MEAN_ERR=0.0), s)


def test_measured_bias_slope_replaces_a_jitter_fit():
    pts, _ = _points(B0=3200.0, b_T=8.0, DC0=4.0, sigma_read2=1100.0)
    pts = pts[pts["TEMP"] == 20.0].assign(TEMP=20.0 + 0.05 * np.arange(9))
    s = rr.ModelSettings(t_ref=20.0, t_d=6.0, adu_per_e=8.0, b_t=(8.0, 0.1))
    fit = rr.fit_response(pts, s)
    row = fit.parameters.set_index("param").loc["b_T"]
    assert not row["constrained"] and row["value"] == 8.0 and "measured" in row["reason"]


def test_old_linear_fit_helper_degenerate_cases():
    one = rr.linear_fit([1.0], [2.0])
    assert math.isnan(one.slope) and math.isnan(one.r2) and one.residuals.shape == (1,)
    flat = rr.linear_fit([3.0, 3.0, 3.0, np.nan], [1.0, 2.0, 3.0, 4.0])
    assert math.isnan(flat.intercept) and math.isnan(flat.slope_err)
    assert flat.residuals.shape == (3,) and np.isnan(flat.residuals).all()
    two = rr.linear_fit([0.0, 1.0], [1.0, 3.0])
    assert (two.slope, two.slope_err, two.r2) == pytest.approx((2.0, 0.0, 1.0))
    const = rr.linear_fit([0.0, 1.0, 2.0], [5.0, 5.0, 5.0])
    assert const.r2 == 0.0 and const.slope == pytest.approx(0.0)
    noisy = rr.linear_fit([0, 1, 2, 3], [0.1, 0.9, 2.1, 2.9])
    assert noisy.slope_err > 0 and 0 < noisy.r2 < 1


def test_beam_intervals_and_windows():
    t = np.array([0.0, 100.0, 200.0, 4000.0, 4100.0, 200000.0])
    d = np.array([0.0, 10.0, 10.0, 10.0, 20.0, 20.0])       # 100 rad/s twice
    assert procedure_checks.beam_intervals(t, d) == [(0.0, 100.0, 10.0), (4000.0, 4100.0, 10.0)]
    table = pd.DataFrame({"STAGE": ["radiating", "radiating", "post"], "DOSE": [10, 20, 20],
                          "TIMESTAMP": [150.0, 4200.0, 190000.0]})
    rows = pd.DataFrame(procedure_checks.compute_checks(table, t, d, None))
    rate = rows[(rows["check"] == "dose_rate") & rows["detail"].str.startswith("MIL")]
    assert rate["value"].tolist() == [100.0, 100.0] and (rate["status"] == "pass").all()
    wait = rows[rows["check"] == "time_to_measurement"].set_index("stage")["value"]
    assert wait["radiating_D10kR"] == 50.0 and wait["radiating_D20kR"] == 100.0
    nxt = rows[rows["check"] == "time_to_next_step"].iloc[0]
    assert nxt["value"] == 3900.0 and nxt["status"] == "pass"
    anneal = rows.set_index("check").loc["anneal_duration"]
    assert anneal["value"] == 190000.0 - 4100.0 and anneal["status"] == "pass"
    assert rows.set_index("check").loc["anneal_temperature", "status"] == "not_logged"


# --- several seeds (slow) ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("seed", [31, 32, 33])
def test_model_pulls_over_seeds(seed, tmp_path):
    """Pre/post at 10, 20, 30 degC (T_d measured from the pre darks), darks of 5 and 20 s,
    the beam on while the dose steps are measured: every parameter within 3 errors."""
    physics = Physics(beam_charge=100.0, beam_charge_sigma=50.0, doubling_temperature=6.5)
    campaign = simulate_irradiation(tmp_path / "c", seed=seed, width=32, height=24, frames=4,
                                    doses=(20, 40), model_temperatures=(10, 20, 30),
                                    dark_exposures=(5.0, 20.0), physics=physics)
    convert_campaign(campaign)
    index = tmp_path / "index.csv"
    write_index(build_index(discover=[campaign.root]), index)
    result = frm.run(index, tmp_path / "model", frm.FitSettings(gain=2.0))
    truth = radiation_model_truth(campaign.maps(), physics, result.pixels, 20.0)
    pulls = {r["param"]: (r["value"] - truth[r["param"]]) / r["err"]
             for _, r in result.fit.parameters.iterrows()}
    assert all(abs(z) < 3 for z in pulls.values()), pulls


def test_fit_radiation_model_command_on_a_folder_of_frames(dd_run, tmp_path):
    campaign, _, _ = dd_run
    before = sha256_tree(campaign.root)
    assert frm.main([str(campaign.root), str(tmp_path / "m"), "--no-progress",
                     "--doubling-temperature", "6.5", "--doubling-temperature-err", "0.1"]) == 0
    table = pd.read_csv(tmp_path / "m" / "fit_results.csv").set_index("param")
    assert table.loc["beta_D", "constrained"] and not table.loc["q_mean", "constrained"]
    assert (tmp_path / "m" / "dark_maps.fits").is_file()
    # a given T_d's error reaches the parameters' errors and the maps' header
    dc0 = table.loc["DC0"]
    assert dc0["err_td"] > 0 and dc0["err"] == pytest.approx(math.hypot(dc0["err_stat"],
                                                                        dc0["err_td"]))
    head = fits.getheader(tmp_path / "m" / "dark_maps.fits")
    assert head["TDERR"] == 0.1 and head["DC0TDERR"] == pytest.approx(dc0["err_td"])
    # units astropy reads as written: BETA_D's BUNIT was 'adu/s/krad' (per kilo-radian, with
    # a UnitsWarning); now adu / s with PERDOSE = 'krad', as the damage slope map
    import warnings

    from astropy.nddata import CCDData

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        beta = CCDData.read(tmp_path / "m" / "dark_maps.fits", hdu="BETA_D")
        dc0 = CCDData.read(tmp_path / "m" / "dark_maps.fits")
    assert beta.unit == "adu / s" and dc0.unit == "adu / s"
    assert fits.getheader(tmp_path / "m" / "dark_maps.fits")["PERDOSE"] == "krad"
    assert sha256_tree(campaign.root) == before


def test_master_options_and_scheduler_reach_every_step(tmp_path):
    """--sigma, --temp-bin and --memory-limit reach every step that groups or combines (the
    stage pipelines, the radiation and dose analyses, the response model's budget), and
    --scheduler dask runs conversion and index statistics on the cluster.  Before, the
    orchestrator had none of these options: every step combined with the defaults."""
    distributed = pytest.importorskip("distributed")
    campaign = simulate_irradiation(tmp_path / "campaign", seed=13, width=24, height=16,
                                    frames=4, doses=(20,), dark_exposures=(20.0,),
                                    physics=FAST_PHYSICS)
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        status = full.main([str(campaign.root), str(out), "--no-progress", "--plots", "none",
                            "--gain", "2.0", "--sigma", "5", "--temp-bin", "2",
                            "--memory-limit", "5e8", "--scheduler", "dask",
                            "--dask-address", cluster.scheduler_address])
        assert status == 0
        assert {"convert_attempt", "one"} <= set(cluster.scheduler.task_prefixes)
    clipped = {}
    for path in out.rglob("*.fits"):
        header = fits.getheader(path)
        if "CLIPHI" in header:
            clipped[path.relative_to(out).parts[0]] = clipped.get(
                path.relative_to(out).parts[0], set()) | {header["CLIPHI"]}
    # stage pipelines (pre, radiating, post) and the precision analyses, all at 5 sigma
    assert {"pre", "radiating", "post", "precision"} <= set(clipped), clipped
    assert all(values == {5.0} for values in clipped.values()), clipped
    configs = [json.loads(p.read_text()) for p in out.rglob("config_used.json")]
    budgets = [v for c in configs for v in _values(c, "memory_limit")]
    bins = [v for c in configs for v in _values(c, "temp_bin")]
    assert len(configs) >= 5 and budgets and bins
    assert set(budgets) == {5e8} and set(bins) == {2.0}, (set(budgets), set(bins))


def _values(tree, key):
    """Every value of ``key`` anywhere in a JSON tree."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key:
                yield v
            yield from _values(v, key)
    elif isinstance(tree, list):
        for v in tree:
            yield from _values(v, key)


def test_summary_line_rounds_values_to_their_errors():
    """The final log line printed 'B0 3.36e+03 +- 0.17 adu' (the value rounded to 4 adu, 25
    times its error) and 'recovered fraction 0.384 +- 0.006 1'; now each value to the decimal
    place of its two-digit error, and no unit '1'."""
    summary = {"indexed": 45, "converted": 45, "rejected": 0, "uncovered": 0,
               "index": "/x/index.csv",
               "damage_slope": {"value": 3.0092749, "err": 0.26134, "unit": "adu/s/krad"},
               "recovered_fraction": {"value": 0.384195, "err": 0.0059560, "unit": "1"},
               "hot_pixel_growth": {"value": 19, "err": None, "unit": "pixels"},
               "model_parameters": {"B0": {"value": 3355.650265, "err": 0.1680664,
                                           "unit": "adu"}, "sigma_q": None},
               "procedure_checks": {"pass": 6, "warn": 11}}
    line = full.summary_line(summary)
    assert "damage slope 3.01 +- 0.26 adu/s/krad;" in line
    assert "recovered fraction 0.3842 +- 0.0060;" in line
    assert "hot-pixel growth 19 pixels;" in line
    assert "B0 3355.65 +- 0.17 adu," in line and "sigma_q not constrained" in line


def test_stage_legends_in_campaign_order_and_colours():
    """The radiation-model residuals and the dose analysis's per-stage figures listed the
    stages in the rows' order (sorted by tag: post, pre, radiating) with the colour cycle in
    that order, so pre was orange there and blue in the damage figures.  Now every figure
    lists pre, radiating, post, each in its STAGE_COLOURS colour."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import to_hex

    from analysis.damage_plots import plot_level_trend
    from analysis.dose.plots import plot_series
    from utils.io.index import by_stage
    from utils.models.regression import fit_line
    from utils.plotting import STAGE_COLOURS

    points = pd.DataFrame({"STAGE": ["post", "pre", "radiating", "radiating"],
                           "DOSE": [40.0, 0.0, 5.0, 15.0], "FRAMEDOSE": [40.0, 0.0, 5.0, 15.0],
                           "MEAN_RESID": [-40.0, 0.1, -0.2, 0.3], "MEAN_ERR": [0.4] * 4,
                           "FITTED": [False, True, True, True]})
    want = {"pre": to_hex(STAGE_COLOURS["pre"]), "radiating": to_hex(STAGE_COLOURS["radiating"]),
            "post": to_hex(STAGE_COLOURS["post"])}

    def legend(ax):
        handles, labels = ax.get_legend_handles_labels()
        return [(label.split(" ")[0], to_hex(h.lines[0].get_color())) for h, label in
                zip(handles, labels) if hasattr(h, "lines")]

    ax, _ = frm.plot_mean_residuals(points, "BIAS")
    assert legend(ax) == list(want.items())
    pts = {stage: (part["DOSE"], part["MEAN_RESID"], None) for stage, part in by_stage(points)}
    assert legend(plot_series(pts, xlabel="x", ylabel="y", title="t")) == list(want.items())
    fit = fit_line([0.0, 5.0, 15.0], [0.1, -0.2, 0.3], [0.4] * 3)
    level = plot_level_trend(points[points["STAGE"] != "pre"], "MEAN_RESID", "MEAN_ERR", fit,
                             ylabel="y", title="t", unit="adu")
    assert legend(level) == [("radiating", want["radiating"]), ("post", want["post"])]


def test_undefined_sigma_q_and_sigma_read_have_no_value():
    """When the fitted <q>^2 + sigma_q^2 is below <q>^2 (or sigma_read^2 <= 0) the parameter
    is not defined: fit_results.csv wrote 'sigma_q, 0.0, , ..., False' (a measured zero to a
    reader) where every other unconstrained parameter has no value.  Now NaN, with the
    reason."""
    truth = {"B0": 3200.0, "alpha_D": 3.2, "b_T": 8.0, "DC0": 4.0, "beta_D": 0.2,
             "q_mean": 1600.0, "sigma_read2": -50.0, "kappa": 1600.0 ** 2 - 5.0e4}
    pts, s = _points(**truth)
    table = rr.fit_response(pts, s).parameters.set_index("param")
    for name, why in (("sigma_q", "sigma_q not defined"), ("sigma_read", "sigma_read^2")):
        assert not table.loc[name, "constrained"], name
        assert math.isnan(table.loc[name, "value"]) and math.isnan(table.loc[name, "err"])
        assert why in table.loc[name, "reason"]
    assert table.loc["q_mean", "value"] == pytest.approx(1600.0, rel=1e-6)


def test_collinear_dose_and_dark_terms_are_not_reported_as_measured():
    """One dose folder (`fit_radiation_model dd/5kRads/fits`): a bias and a dark master at
    two mean frame doses, one exposure, no gain.  alpha_D and DC0 are then collinear; DC0 was
    dropped and alpha_D kept, reported constrained with the dark signal read as dose damage
    (31.7 +- 0.35 adu/krad for a true 3.2 on the simulator's folder), and B0 extrapolated
    with it.  Now B0, alpha_D and DC0 are not constrained (NaN, 'confounded with'), and the
    fitted combination still predicts the masters."""
    s = rr.ModelSettings(t_ref=20.0, t_d=6.5)
    pts = pd.DataFrame({"CALTYPE": ["BIAS", "DARK"], "DOSE": [1.5625, 4.0625],
                        "RATE": [0.0, 0.0], "EXPTIME": [1.2e-5, 1.0], "TEMP": [20.0, 20.0],
                        "MEAN_ERR": [0.5, 0.5], "VAR_ERR": [60.0, 60.0]})
    truth = {"B0": 3348.0, "alpha_D": 3.2, "DC0": 72.0, "sigma_read2": 1190.0,
             "shot_DC0": 500.0}
    c = np.array([truth.get(n, 0.0) for n in rr.COEFFICIENTS])
    mean, var = rr.design_rows(pts, s)
    pts = pts.assign(MEAN=mean @ c, VAR=var @ c)
    fit = rr.fit_response(pts, s)
    table = fit.parameters.set_index("param")
    for name in ("B0", "alpha_D", "DC0"):
        assert not table.loc[name, "constrained"], name
        assert math.isnan(table.loc[name, "value"]) and math.isnan(table.loc[name, "err"])
    assert "confounded with" in table.loc["alpha_D", "reason"]
    assert "DC0" in table.loc["alpha_D", "reason"]
    pred_mean, _ = rr.predict(pts, fit)
    assert pred_mean == pytest.approx(pts["MEAN"].to_numpy(), abs=1e-6)
    # a design that separates them is untouched
    pts2, s2 = _points(B0=3200.0, alpha_D=3.2, DC0=4.0, sigma_read2=1100.0)
    assert rr.fit_response(pts2, s2).value("alpha_D") == pytest.approx(3.2, rel=1e-6)


def test_master_variance_follows_the_model_not_the_pixel():
    """The error of a beam-on master's pixel: read variance + g (DC0 + beta_D D) f t + kappa
    Ddot t over its frames, whatever the pixel's own sample error (hits make it large)."""
    truth = {"B0": 3200.0, "alpha_D": 3.2, "b_T": 8.0, "DC0": 4.0, "beta_D": 0.2,
             "q_mean": 1600.0, "sigma_read2": 1089.0, "kappa": 3.2e6}
    pts, settings = _points(**truth)
    fit = rr.fit_response(pts, settings)
    point = {"DOSE": 20.0, "RATE": 0.008, "EXPTIME": 20.0, "TEMP": 20.0}
    read = np.array([[900.0, 1300.0]])
    own = np.array([[30.0, 900.0]])  # a pixel the beam missed, one it hit
    var = rr.master_variance(point, fit, read, np.array([[4, 4]]), own)
    expect = (read + 8.0 * (4.0 + 0.2 * 20.0) * 20.0 + 3.2e6 * 0.008 * 20.0) / 4
    assert np.allclose(var, expect, rtol=1e-6)
    # without a read-variance map (no bias master): the master's own error
    assert np.allclose(rr.master_variance(point, fit, None, np.array([[4, 4]]), own), own ** 2)
