"""The failures the radiation issue opened with, as regression tests.

1. the bias pipeline fitted bias(T) across dose steps at one temperature (the dose shift read
   as a temperature slope, exit 0);
2. the dark pipeline pooled the dose steps (masters overwriting each other, then a crash);
3. the index gave FRAMEDOSE to a few frames only and no DOSE to post-irradiation frames
   (see test_radiation_dose_bookkeeping.py for every frame against truth);
4. process_index comparison figures collided across stages;
5. the dark model of the pre and post stages (3 temperatures x 2 exposures, 8 frames) was
   biased at low signal (T_d 0.4-0.9 degC high, gamma 0.08-0.16 low).
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from astropy.io import fits
from statcheck import assert_pulls

from analysis import process_index
from analysis.masters import MasterSettings
from bias_pipeline import run_pipeline as bias_cli
from dark_pipeline import run_pipeline as dark_cli
from utils import plotting
from utils.io.index import DatasetIndex, build_index, write_index


def test_bias_pipeline_never_fits_across_dose_steps(dosedirs_campaign, tmp_path, caplog, capsys,
                                                    one_line_error):
    out = tmp_path / "bias"
    status = bias_cli.main(["--basepath", str(dosedirs_campaign.root), "--output-dir", str(out),
                            "--no-progress"])
    assert status == 2
    message = one_line_error(caplog, capsys, "radiating_D5kR", "radiating_D10kR",
                             "single temperature")
    assert "none of the 2" in message
    # each dose step got its own masters, in its own folder; no model anywhere
    for step in ("radiating_D5kR", "radiating_D10kR"):
        assert len(list((out / step / "bias_grouped_by_temp").glob("*.fits"))) == 1
    assert not list(out.rglob("bias_model.fits"))


def test_a_fit_whose_points_span_dose_steps_is_refused(dosedirs_campaign, tmp_path, caplog,
                                                       capsys, one_line_error):
    # an index whose stage words were lost still carries the dose steps: refused, not fitted
    table = build_index(discover=[dosedirs_campaign.root]).assign(STAGE="")
    write_index(table, tmp_path / "index.csv")
    status = bias_cli.main(["--basepath", str(tmp_path / "index.csv"), "--output-dir",
                            str(tmp_path / "o"), "--no-progress"])
    assert status == 2
    one_line_error(caplog, capsys, "2 dose steps", "5, 10 krad", "--dose")


@pytest.fixture(scope="module")
def dark_radiating(rad_campaign, tmp_path_factory):
    _, index = rad_campaign
    out = tmp_path_factory.mktemp("dark_rad") / "out"
    status = dark_cli.main(["--basepath", str(index), "--output-dir", str(out), "--stage",
                            "radiating", "--gain", "2.0", "--no-progress"])
    return out, status


def test_dark_pipeline_keeps_dose_steps_apart(dark_radiating):
    out, status = dark_radiating
    # every step is at one temperature: no model in temperature, said in one line (exit 2),
    # but each step's masters are written in its own folder, none overwritten
    assert status == 2
    masters = sorted(p.relative_to(out).as_posix() for p in out.rglob("dark_masters/*.fits"))
    assert len(masters) == 4 * 2 == len(set(masters))
    assert {m.split("/")[0] for m in masters} == {f"radiating_D{d}kR" for d in (10, 20, 30, 40)}
    for step in ("radiating_D10kR", "radiating_D40kR"):
        assert (out / step / "dark_rates").is_dir() and (out / step / "hot_pixels.fits").is_file()


def test_process_index_comparisons_do_not_collide(converted_irradiation, tmp_path):
    campaign, _ = converted_irradiation
    write_index(build_index(discover=[campaign.root]), tmp_path / "index.csv")
    with plotting.figure_output("all", workers=0):  # the comparisons are per master
        result = process_index.run(tmp_path / "index.csv", tmp_path / "out",
                                   MasterSettings(workers=1, per_attempt=False))
    built = [r for r in result.records if r.path is not None and r.worst_frame]
    pngs = list((tmp_path / "out" / "comparisons").rglob("*.png"))
    assert len(built) > 10 and len(pngs) == len(built)
    stages = {p.relative_to(tmp_path / "out" / "comparisons").parts[0] for p in pngs}
    assert stages == {"pre", "radiating_D10kR", "radiating_D20kR", "post"}
    # the frames' accumulated dose ramps within each step (beam on while measuring), yet
    # there is one master per type and <dose>kRads step, from that stage's frames only
    table = pd.read_csv(tmp_path / "index.csv")
    ramp = table[(table["STAGE"] == "radiating") & (table["CALTYPE"] == "DARK")]
    assert ramp["FRAMEDOSE"].nunique() > ramp["DOSE"].nunique()
    summary = pd.read_csv(tmp_path / "out" / "masters_summary.csv")
    written = summary[summary["STATUS"] == "written"]
    radiating = written[written["STAGE"] == "radiating"]
    assert sorted(radiating["DOSE"].unique()) == [10.0, 20.0]
    assert radiating.groupby(["CALTYPE", "DOSE"]).size().eq(1).all()
    folders = {"pre": "Preirradiation", "radiating": "Irradiation", "post": "Postirradiation"}
    for path, stage in zip(written["PATH"], written["STAGE"]):
        with fits.open(path) as hdul:
            inputs = hdul["INPUTS"].data["PATH"]
        assert all(f"/{folders[stage]}/" in str(p) for p in inputs), (path, inputs[:2])


@pytest.fixture(scope="module")
def dark_pre_post(rad_calibration):
    """The dark pipeline's products for the pre and post stages of ``rad_campaign``, from the
    session's ``run_calibration.py irradiation`` run (which runs it once per stage)."""
    _, products, status = rad_calibration
    assert status == 0
    out = products / "dark"
    runs = {stage: 0 if (out / stage / "summary.json").is_file() else 1
            for stage in ("pre", "post")}
    return out, runs


@pytest.mark.parametrize("stage", ["pre", "post"])
def test_dark_model_unbiased_at_low_signal(dark_pre_post, rad_campaign, stage):
    campaign, _ = rad_campaign
    out, runs = dark_pre_post
    assert runs[stage] == 0
    summary = json.loads((out / stage / "summary.json").read_text())
    t_d = campaign.physics.doubling_temperature
    if stage == "pre":
        # the faint pixels are fitted on their own (no rate/error cut, which chose them by
        # their noise and biased A and the old median B): only those without two positive
        # rates or a converged fit (~4 %) take the population B
        assert 0 < summary["fallback_pixels"] < 0.1 * campaign.width * campaign.height
    # population values from the joint fit: within the acceptance, and within 3 of their errors
    assert abs(summary["doubling_temperature_degC"] - t_d) < 0.3
    assert abs(summary["doubling_temperature_degC"] - t_d) < \
        3 * summary["doubling_temperature_err_degC"]
    b = summary["model_2d"]
    assert abs(b["gamma_population"] - 1.0) < 0.05
    # beyond 3 sigma: a systematic of +0.003..+0.010 measured over seeds and stages (largest
    # post-irradiation, where bright pixels dominate the weights) -- well inside the 0.05
    assert abs(b["gamma_population"] - 1.0) < 3 * b["gamma_population_err"] + 0.015
    assert abs(math.log(2) / b["b_population_per_degC"] - t_d) < 0.3


def test_dark_model_errors_at_low_signal(dark_pre_post, rad_campaign):
    # the A map's errors are honest for the pixels that are not hot (pulls against truth)
    import numpy as np

    campaign, _ = rad_campaign
    out, _ = dark_pre_post
    truth = campaign.maps()
    with fits.open(out / "pre" / "dark_model" / "dark_model.fits") as hdul:
        a, err = hdul[0].data, hdul["SIGMA_A"].data
    normal = ~truth["hot_mask"] & np.isfinite(a)
    pull = ((a - truth["dark_ref_adu"]) / err)[normal]
    # 3000 pixels: mean within 5 / sqrt(N) (0.09) of 0, std within 5 standard errors of 1
    # (the rate/error >= 3 choice of the pixels fitted on their own gave A 3 % high)
    assert_pulls(pull, what="pre-irradiation 1-D A at TREF")


def test_index_rows_read_back_with_dose_columns(rad_campaign):
    _, index = rad_campaign
    table = DatasetIndex.from_csv(index).table
    for column in ("DOSE", "FRAMEDOSE", "DOSERATE", "BEAM", "TANNEAL", "DOSESRC", "DOSEFLAG"):
        assert column in table
    assert table["FRAMEDOSE"].notna().all()
    assert pd.api.types.is_float_dtype(table["DOSERATE"])
