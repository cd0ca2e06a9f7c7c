"""darkeval: the dark stage's medians taken by ``exact_median`` (hot-pixel test, model
headlines, error scale, the DSNU's population-B shift) give numpy's median, the number the
former ``np.median`` calls gave: the former steps are kept here as the reference."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from dark_pipeline.hot_pixels import find_hot_pixels
from dark_pipeline.model_2d import DarkModel2D
from dark_pipeline.temperature_model import DarkModel1D, _err_scale
from utils.stack.stats import MAD_TO_STD, chi2_median_ratio


def _former_hot_pixels(rate, n_sigma, floor):
    """find_hot_pixels' centre, spread and mask as np.median made them."""
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(rate) & (rate > 0)
    logs = np.log(rate[usable].astype(np.float64))
    centre = float(np.median(logs))
    spread = max(MAD_TO_STD * float(np.median(np.abs(logs - centre))), 1e-6)
    z = (logs - centre) / spread
    mask = np.zeros(rate.shape, bool)
    mask[usable] = (z > n_sigma) & (rate[usable].astype(np.float64) > floor)
    return centre, spread, mask, z


@pytest.mark.parametrize("shape", [(600, 701), (600, 700), (40, 51)])
def test_hot_pixels_equal_the_former_np_median_steps(shape):
    """Odd and even usable counts, above and below exact_median's 2^18 windowed path, with
    NaN, zero and negative rates and a hot tail: the same centre, spread, mask and z."""
    rng = np.random.default_rng(7)
    rate = np.exp(rng.normal(0.0, 0.3, shape)).astype(np.float32)
    rate.flat[::97] *= 40.0
    rate.flat[5::1013] = np.nan
    rate.flat[7::2011] = 0.0
    rate.flat[9::3001] = -1.0
    rate.flat[11] = np.nan if rate.size % 2 else rate.flat[11]  # the parity of the count
    hot = find_hot_pixels(rate, n_sigma=5.0, e_per_adu=0.5, min_rate_e=1.0)
    centre, spread, mask, z = _former_hot_pixels(rate, 5.0, 2.0)
    assert hot.median_rate == math.exp(centre) and hot.spread_ln == spread
    np.testing.assert_array_equal(hot.mask, mask)
    np.testing.assert_array_equal(hot.zscore[np.isfinite(hot.zscore)], z.astype(np.float32))
    assert hot.count > 0


def test_headlines_and_error_scale_equal_the_former_np_median():
    """The 1-D and 2-D models' headline medians and the error scale's medians: numpy's."""
    rng = np.random.default_rng(3)
    shape = (700, 701)
    fallback = rng.random(shape) < 0.05
    rate = rng.normal(0.07, 0.01, shape).astype(np.float32)
    gamma = rng.normal(1.0, 0.02, shape).astype(np.float32)
    rate[3, ::7] = np.nan
    hot = rng.random(shape) < 0.01
    fit1 = SimpleNamespace(fallback=fallback, rate=rate, population_rate=0.07,
                           population_rate_err=0.001, x_ref=20.0)
    m1 = DarkModel1D.__new__(DarkModel1D)
    m1.fit, m1.hot = fit1, hot
    good = ~fallback & np.isfinite(rate) & ~hot
    assert DarkModel1D.headline(m1)["b_median_per_degC"] == float(np.median(rate[good]))
    fit2 = SimpleNamespace(fallback=fallback, rate=rate, gamma=gamma, population_rate=0.07,
                           population_rate_err=0.001, population_gamma=1.0,
                           population_gamma_err=0.01)
    m2 = DarkModel2D.__new__(DarkModel2D)
    m2.fit, m2.hot = fit2, hot
    head2 = DarkModel2D.headline(m2)
    good2 = ~fallback & np.isfinite(gamma) & ~hot
    assert head2["gamma_median"] == float(np.median(gamma[good2]))
    # NaN rates left among the 2-D model's "good" pixels: NaN, as np.median gave
    assert math.isnan(head2["b_median_per_degC"]) and math.isnan(np.median(rate[good2]))
    m2.fit.rate = np.where(np.isfinite(rate), rate, np.float32(0.07))
    assert DarkModel2D.headline(m2)["b_median_per_degC"] == float(np.median(m2.fit.rate[good2]))
    for size in (600 * 700, 600 * 701):  # even and odd counts of the common dof
        chi2 = rng.chisquare(30, size).astype(np.float32) / 30
        npoints = np.full(size, 33, np.int16)
        npoints[::5] = 32
        fb = np.zeros(size, bool)
        dof = npoints.astype(np.int32) - 3
        common = int(np.median(dof))
        former = math.sqrt(float(np.median(chi2[dof == common])) / chi2_median_ratio(common))
        assert _err_scale(chi2, npoints, fb, 3) == former

