"""Dark-pipeline results no other test reads, checked on a small simulated campaign (the
mutation run of issue 16 found them unchecked): the summary's 95th percentile of A."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

from dark_pipeline import run_pipeline
from utils.sim import simulate_standard


@pytest.fixture(scope="module")
def small_dark_run(tmp_path_factory):
    """``(campaign, out)`` of one CLI run on 48 x 32 pixels: darks at 3 temperatures x 2
    exposures, 8 frames each (1-D model only matters here)."""
    from conftest import convert_campaign

    campaign = simulate_standard(tmp_path_factory.mktemp("dark_small") / "campaign", seed=11,
                                 width=48, height=32, frames=8, attempts=1,
                                 bias_temperatures=(-5.0, 15.0, 35.0),
                                 dark_temperatures=(0.0, 15.0, 30.0), dark_exposures=(1.0, 4.0),
                                 flat_temperatures=(25.0,), flat_exposures=(0.1,),
                                 defects=False)
    convert_campaign(campaign)
    out = tmp_path_factory.mktemp("dark_small_out") / "out"
    assert run_pipeline.main(["--basepath", str(campaign.root), "--output_dir", str(out),
                              "--no-progress", "--plots", "none"]) == 0
    return campaign, out


def test_summary_p95_is_the_95th_percentile_of_a(small_dark_run):
    campaign, out = small_dark_run
    summary = json.loads((out / "summary.json").read_text())["dark_rate_at_t_ref_adu_s"]
    with fits.open(out / "dark_model" / "dark_model.fits") as hdul:
        a, s_a = np.asarray(hdul[0].data, float), np.asarray(hdul["SIGMA_A"].data, float)
    hot = fits.getdata(out / "hot_pixels.fits").astype(bool)
    good = ~hot & np.isfinite(a)
    # the statistic as stated (every not-hot pixel with an A), from the written maps
    assert summary["p95"] == pytest.approx(float(np.percentile(a[good], 95)), rel=1e-6)
    # and against the truth of the same pixels: the measurement noise of A moves a quantile
    # by less than a few of its errors (a ~1.5 sigma spread of true A over these pixels)
    truth = campaign.maps()["dark_ref_adu"]
    assert abs(summary["p95"] - np.percentile(truth[good], 95)) < 5 * np.median(s_a[good])
