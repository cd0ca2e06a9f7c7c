"""Per-pixel straight-line fits: known answers and errors that match the scatter."""

from unittest import mock

import numpy as np
import pytest

from utils.models import linear as fitting
from utils.models.linear import fit_line_per_pixel


def test_exact_line_recovered():
    x = np.array([-10.0, 0.0, 12.5, 25.0])
    a, b = np.full((3, 4), 200.0), np.linspace(0.1, 1.0, 12).reshape(3, 4)
    y = a + b * x[:, None, None]
    fit = fit_line_per_pixel(x, y, x_ref=0.0)
    np.testing.assert_allclose(fit.intercept, a, rtol=1e-6)
    np.testing.assert_allclose(fit.slope, b, rtol=1e-5)
    np.testing.assert_allclose(fit.predict(25.0), y[-1], rtol=1e-6)


def test_errors_match_scatter_and_chi2_is_one():
    rng = np.random.default_rng(5)
    x = np.array([-10.0, 0.0, 10.0, 20.0, 30.0])
    sigma = np.full((5, 100, 100), 2.0)
    y = 100 + 0.5 * x[:, None, None] + rng.normal(0, 2.0, sigma.shape)
    fit = fit_line_per_pixel(x, y, sigma)
    assert np.std((fit.slope - 0.5) / fit.slope_err) == pytest.approx(1.0, abs=0.05)
    z = (fit.intercept - (100 + 0.5 * fit.x_ref)) / fit.intercept_err
    assert np.std(z) == pytest.approx(1.0, abs=0.05)
    assert np.nanmean(fit.chi2) == pytest.approx(1.0, abs=0.05)
    pred_z = (fit.predict(40.0) - 120.0) / fit.predict_err(40.0)
    assert np.std(pred_z) == pytest.approx(1.0, abs=0.05)


def test_zero_weight_points_and_errors():
    x = np.array([0.0, 10.0, 20.0])
    y = np.array([[[1.0]], [[2.0]], [[np.nan]]])
    fit = fit_line_per_pixel(x, y, np.ones_like(y))
    assert fit.slope[0, 0] == pytest.approx(0.1)
    assert np.isnan(fit.chi2[0, 0])  # two usable points: no quality estimate
    with pytest.raises(ValueError):
        fit_line_per_pixel([1.0, 1.0], np.zeros((2, 2, 2)))


def _maps(fit):
    return {k: v for k, v in vars(fit).items() if isinstance(v, np.ndarray)}


@pytest.mark.skipif(not fitting.HAVE_NUMBA, reason="numba not importable")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [True, False])
def test_numba_kernel_matches_numpy_fallback(dtype, weighted):
    rng = np.random.default_rng(3)
    x = np.array([-10.0, -3.0, 4.0, 11.0, 18.0, 25.0])
    y = (1600 + 0.2 * x[:, None, None] + rng.normal(0, 0.5, (6, 37, 41))).astype(dtype)
    sigma = rng.uniform(0.3, 0.6, y.shape).astype(dtype)
    y[2, 0, :5] = np.nan            # missing points
    y[:4, 1, 0] = np.nan            # two points left: no chi-square
    y[:, 1, 1] = np.nan             # no point at all
    sigma[1, 2, :3] = [0.0, -1.0, np.inf]  # unusable errors
    sigma[0, 3, 3] = np.nan
    s = sigma if weighted else None
    with np.errstate(all="ignore"):
        fast = fit_line_per_pixel(x, y, s, x_ref=20.0)
        with mock.patch.object(fitting, "HAVE_NUMBA", False):
            slow = fit_line_per_pixel(x, y, s, x_ref=20.0)
    for name, a in _maps(fast).items():
        b = getattr(slow, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0, equal_nan=True, err_msg=name)
    assert fast.x_ref == slow.x_ref and fast.npoints == slow.npoints


@pytest.mark.skipif(not fitting.HAVE_NUMBA, reason="numba not importable")
def test_numba_line_one_dimensional_and_default_reference():
    x = [0.0, 10.0, 20.0]
    fit = fit_line_per_pixel(x, np.array([1.0, 2.0, 3.5]))
    with mock.patch.object(fitting, "HAVE_NUMBA", False):
        ref = fit_line_per_pixel(x, np.array([1.0, 2.0, 3.5]))
    assert fit.slope.shape == () and fit.x_ref == ref.x_ref == 10.0
    for name, a in _maps(fit).items():
        np.testing.assert_allclose(a, getattr(ref, name), rtol=1e-6, err_msg=name)
