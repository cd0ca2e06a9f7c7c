"""The end-to-end calibration command on the built-in campaigns."""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from conftest import strict_json_files
from statcheck import assert_close, assert_pulls

import run_calibration


@pytest.mark.slow
def test_demo_end_to_end_and_rerun_is_noop(demo_output, caplog):
    out, messages = demo_output
    caplog.set_level("INFO")
    products = out / "products"
    summary = pd.read_csv(products / "masters_summary.csv")
    assert {"BIAS", "DARK", "FLAT"} <= set(summary["CALTYPE"])
    assert (out / "campaign" / "index.csv").is_file()
    assert any("done:" in m and str(products) in m and "report" in m for m in messages)
    assert (products / "report" / "index.html").is_file()
    assert (products / "warnings.log").is_file()
    # the report lists this run's warnings (it was written before warnings.log, and showed
    # none: the saturated flat set, the rejected raw file were missing from it)
    logged = (products / "warnings.log").read_text(encoding="utf-8").splitlines()
    quality = json.loads((products / "report" / "report.json").read_text())["quality"]
    assert logged and 0 < quality.get("warnings", 0) <= len(logged)
    # the truncated raw file is rejected, the zero frames are excluded as BADFITS
    index = pd.read_csv(out / "campaign" / "index.csv")
    assert index["BADFITS"].sum() >= 2
    check_models_against_truth(out)
    # every product JSON is strict JSON (the demo's 2-temperature dark model has undefined
    # errors); config_used, summaries, gain, report
    names = {p.name for p in strict_json_files(products)}
    assert {"config_used.json", "summary.json", "gain.json", "report.json"} <= names
    before = {p: p.stat().st_mtime_ns for p in products.rglob("*.fits")}
    caplog.clear()
    assert run_calibration.main(["demo", str(out), "--no-progress"]) == 0
    after = {p: p.stat().st_mtime_ns for p in products.rglob("*.fits")}
    assert before == after
    assert any("0 frames converted" in r.getMessage() and "0 masters written" in r.getMessage()
               for r in caplog.records)
    if shutil.which("fitsverify"):
        files = [str(p) for p in products.rglob("*.fits")]
        run = subprocess.run(["fitsverify", "-q", "-e", *files], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-2000:]


def test_pipelines_take_the_masters_index_processing_built(demo_output):
    """Every bias and dark master of the pipelines is index processing's file of the same
    INHASH (linked, not stacked again): the frames are stacked once per campaign run."""
    out, messages = demo_output
    products = out / "products"
    built = {fits.getheader(p).get("INHASH"): p for p in (products / "masters").rglob("*.fits")}
    taken = 0
    for folder in ("bias/bias_grouped_by_temp", "dark/dark_masters"):
        masters = sorted((products / folder).glob("master_*.fits"))
        assert masters, folder
        for path in masters:
            twin = built.get(fits.getheader(path)["INHASH"])
            assert twin is not None and filecmp.cmp(twin, path, shallow=False), path
        taken += len(masters)
    assert sum("reused, not stacked again" in m for m in messages) == taken


def test_taken_masters_are_those_the_pipelines_make_alone(demo_output, tmp_path):
    """The bias and dark pipelines alone (no masters to take) stack masters identical, image
    for image, to index processing's that the campaign run handed them."""
    from dark_pipeline import pipeline as dark_pipeline
    from utils.io.index import load_frames

    out, _ = demo_output
    products = out / "products"
    index = load_frames(out / "campaign" / "index.csv")
    settings = dark_pipeline.DarkSettings(bias_model=str(products / "bias" / "bias_model.fits"))
    masters, _, _ = dark_pipeline.measure(index, tmp_path, settings, [])
    assert len(masters) == len(list((products / "dark" / "dark_masters").glob("*.fits")))
    for master in masters:
        taken = products / "dark" / "dark_masters" / master.path.name
        with fits.open(master.path) as alone, fits.open(taken) as shared:
            assert [h.name for h in alone] == [h.name for h in shared]
            assert alone[0].header["INHASH"] == shared[0].header["INHASH"]
            for a, b in zip(alone, shared):
                if a.is_image and a.data is not None:
                    np.testing.assert_array_equal(a.data, b.data, err_msg=f"{taken} {a.name}")


def check_models_against_truth(out: Path) -> None:
    """The bias and dark pipelines ran inside the demo and recovered the simulated truth."""
    truth = np.load(out / "campaign" / "truth" / "truth.npz")
    with fits.open(out / "products" / "bias" / "bias_model.fits") as hdul:
        tref = hdul[0].header["TREF"]
        normal = (hdul["MASK"].data == 0) & ~truth["noisy_mask"]
        z_b = (hdul["B"].data - truth["bias_b"]) / hdul["SIGMA_B"].data
        z_a = (hdul[0].data - truth["bias_a"] - truth["bias_b"] * tref) / hdul["UNCERT"].data
    assert_pulls(z_b[normal], what="demo bias slope")
    assert_pulls(z_a[normal], what="demo bias at TREF")
    dark = out / "products" / "dark"
    with fits.open(dark / "dark_model" / "dark_model.fits") as hdul:
        hot = hdul["HOT"].data.astype(bool)
    assert np.array_equal(hot, truth["hot_mask"])  # every hot pixel found, none invented
    summary = json.loads((dark / "summary.json").read_text())
    assert summary["n_masters"] == 6 and summary["hot_pixels"] == int(truth["hot_mask"].sum())
    # the dark model against the truth: A at TREF (pulls), the population T_d, and the dark
    # current of each temperature bin (median within 5 of its stated errors)
    physics = json.loads((out / "campaign" / "truth" / "truth.json").read_text())["physics"]
    with fits.open(dark / "dark_model" / "dark_model.fits") as hdul:
        assert hdul[0].header["TREF"] == physics["t_ref"]
        a, err = hdul[0].data, hdul["SIGMA_A"].data
    normal = ~truth["hot_mask"] & np.isfinite(a)
    assert_pulls(((a - truth["dark_ref_adu"]) / err)[normal], what="demo dark A at TREF")
    t_d = physics["doubling_temperature"]
    assert_close(summary["doubling_temperature_degC"], t_d,
                 summary["doubling_temperature_err_degC"], what="demo T_d")
    dc = pd.read_csv(dark / "dark_current_vs_temperature.csv")
    assert len(dc) == 3
    for row in dc.itertuples():
        true = np.median(truth["dark_ref_adu"]) * 2.0 ** ((row.TAVG - physics["t_ref"]) / t_d)
        assert_close(row.DC_MEDIAN, true, row.DC_MEDIAN_ERR, what=f"demo DC at {row.TAVG:.1f}")


def test_irradiation_stages_never_mixed(rad_calibration):
    campaign, out, status = rad_calibration
    assert status == 0
    summary = pd.read_csv(out / "masters_summary.csv")
    written = summary[summary["STATUS"].isin(["written", "existing"])]
    assert {"pre", "radiating", "post"} <= set(written["STAGE"])
    # the report's radiation section shows what the calibration products allow: the pre and
    # post stages' numbers side by side; the dose analyses' topics say what makes them
    record = json.loads((out / "report" / "report.json").read_text())
    blocks = {b["key"]: b for b in record["radiation"]["blocks"]}
    assert record["sections"]["radiation"] and blocks["stage_differences"]["measured"]
    prnu = next(r for r in blocks["stage_differences"]["tables"][0]["rows"]
                if r[0] == "PRNU (EMVA 1288)")
    assert prnu[4] == "%" and prnu[3][1] > 0
    assert not blocks["damage_slope"]["measured"] and blocks["damage_slope"]["missing"]
    assert (summary["STATUS"] != "refused").all(), summary[["PATH", "REASON"]]
    radiating = written[written["STAGE"] == "radiating"]
    # one master per type, exposure and dose step (the grouping by <dose>kRads step rather than by
    # the ramping FRAMEDOSE is checked on a ramp campaign in test_radiation_regressions)
    assert sorted(radiating["DOSE"].unique()) == [10.0, 20.0, 30.0, 40.0]
    assert radiating.groupby(["CALTYPE", "EXPTIME", "DOSE"]).size().eq(1).all()
    assert len(radiating) == 4 * (1 + 2 + 1)  # bias, darks of 5 and 20 s, flat
    for path, stage in zip(written["PATH"], written["STAGE"]):
        with fits.open(path) as hdul:
            inputs = hdul["INPUTS"].data["PATH"]
        folder = {"pre": "Preirradiation", "radiating": "Irradiation",
                  "post": "Postirradiation"}[stage]
        assert all(f"/{folder}/" in str(p) for p in inputs), (path, inputs[:2])
        # a dark master's bias comes from the same stage
        header = fits.getheader(path)
        if header.get("BIASFILE"):
            assert (Path(path).parent.parent / "bias" / header["BIASFILE"]).is_file()


def test_irradiation_datasheet_against_truth(rad_calibration):
    """The report's datasheet of the irradiation campaign (the sensor before irradiation: the
    pre stage's products) against the simulator's truth, each number within 3 of its stated
    errors; what one flat level cannot measure (gain, saturation, linearity) is said."""
    campaign, out, status = rad_calibration
    assert status == 0
    record = json.loads((out / "report" / "report.json").read_text())
    rows = {r["key"]: r for r in record["datasheet"]}
    truth, physics = campaign.maps(), campaign.physics
    bias = json.loads((out / "bias" / "pre" / "summary.json").read_text())
    tref = bias["t_ref_degC"]
    quant = 16 / np.sqrt(12)   # a measurement sees the ADC's quantisation noise too
    normal = ~truth["hot_mask"]
    expected = {
        "read_noise_adu": float(np.hypot(np.median(truth["read_noise"]), quant)),
        "bias_level_adu": float(np.median(truth["bias_a"] + truth["bias_b"] * tref)),
        "bias_tempco_adu_per_degC": float(np.median(truth["bias_b"])),
        "dark_current_adu_s": float(np.median(truth["dark_ref_adu"][normal])),
        "doubling_temperature_degC": physics.doubling_temperature,
        # a single flat master (one level): its own variance minus its temporal noise
        "prnu_percent": float(100 * np.std(truth["prnu"])),
    }
    for key, value in expected.items():
        assert rows[key]["measured"], (key, rows[key])
        assert_close(rows[key]["value"], value, rows[key]["error"], k=3,
                     what=f"irradiation datasheet {key}")
    assert rows["hot_pixels"]["value"] == truth["hot_mask"].sum()
    for key in ("gain_e_per_adc", "saturation_adu", "linearity_error_percent"):
        assert not rows[key]["measured"], (key, rows[key])


@pytest.mark.parametrize("stage", ["pre", "post"])
def test_irradiation_pre_and_post_models_against_truth(rad_calibration, stage):
    """The bias and dark pipelines ran on each of the pre and post stages (three temperatures
    each) and recovered that stage's truth: post has the annealed damage's dark current and
    the bias shift of its dose."""
    campaign, out, _ = rad_calibration
    truth, physics = campaign.maps(), campaign.physics
    adu_per_e = float(np.median(truth["dark_ref_adu"] / truth["dark_ref"]))
    if stage == "pre":
        shift, dark_ref, hot = 0.0, truth["dark_ref_adu"], truth["hot_mask"]
    else:
        post = list(truth["damage_label"]).index("post")
        shift = truth["damage_bias_shift"][post]
        dark_ref = truth["damage_dark_ref"][post] * adu_per_e
        hot = truth["hot_mask"] | truth["damage_hot_mask"][post]
    with fits.open(out / "bias" / stage / "bias_model.fits") as hdul:
        tref = hdul[0].header["TREF"]
        normal = (hdul["MASK"].data == 0) & ~truth["noisy_mask"]
        z_b = (hdul["B"].data - truth["bias_b"]) / hdul["SIGMA_B"].data
        z_a = (hdul[0].data - truth["bias_a"] - truth["bias_b"] * tref - shift) \
            / hdul["UNCERT"].data
    assert_pulls(z_b[normal], what=f"{stage} bias slope")
    assert_pulls(z_a[normal], what=f"{stage} bias at TREF")
    dark = out / "dark" / stage
    with fits.open(dark / "dark_model" / "dark_model.fits") as hdul:
        a, err = hdul[0].data, hdul["SIGMA_A"].data
    normal = ~hot & np.isfinite(a)
    assert normal.mean() > 0.9
    assert_pulls(((a - dark_ref) / err)[normal], what=f"{stage} dark A at TREF")
    summary = json.loads((dark / "summary.json").read_text())
    assert summary["temperatures_degC"] == pytest.approx([10, 20, 30], abs=0.5)
    assert_close(summary["doubling_temperature_degC"], physics.doubling_temperature,
                 summary["doubling_temperature_err_degC"], what=f"{stage} T_d")


def test_runs_as_file_and_help(tmp_path):
    run = subprocess.run([sys.executable, "run_calibration.py", "--help"], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0 and "Example" in run.stdout
    bad = subprocess.run([sys.executable, "run_calibration.py", "standard", str(tmp_path / "none"),
                          str(tmp_path / "out")], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and "does not exist" in bad.stderr


def test_command_start_imports_neither_the_simulator_nor_scipy_stats():
    """Every run starts by importing run_calibration: the simulator (only the demo uses it)
    and scipy.stats (~0.7 s; the read noise takes its chi-square numbers from scipy.special)
    are not imported then."""
    import subprocess
    import sys

    code = ("import sys, run_calibration; "
            "print('utils.sim' in sys.modules, 'scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "False"]
