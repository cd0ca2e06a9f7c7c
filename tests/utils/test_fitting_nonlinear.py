"""Per-pixel exponential and power-exponential fits: recovery, honest errors, fallback."""

from unittest import mock

import numpy as np
import pytest
from scipy import stats
from statcheck import assert_pulls, std_error_of_std

from utils.models import nonlinear as fitting
from utils.models.nonlinear import (
    fit_exponential_per_pixel,
    fit_power_exponential_per_pixel,
    population_value,
)

LN2 = np.log(2.0)
TEMPS = np.linspace(-10.0, 25.0, 5)  # degC


def dark_stack(rng, shape=(64, 64), *, quiet_fraction=0.1, x_ref=0.0, read=0.5):
    """Dark-current-like maps: log-normal amplitudes (median 5), a few hot pixels,
    a fraction of quiet ones, rate ln2/6 per degC with 2 % spread; known sigma."""
    amp = 5.0 * np.exp(rng.normal(0.0, 0.3, shape))
    amp[rng.random(shape) < 0.01] *= rng.uniform(30, 100)
    quiet = rng.random(shape) < quiet_fraction
    amp[quiet] *= 0.02
    rate = LN2 / 6.0 * (1.0 + rng.normal(0.0, 0.02, shape))
    truth = amp * np.exp(rate * (TEMPS[:, None, None] - x_ref))
    sigma = np.sqrt(read ** 2 + 0.01 * truth)
    y = truth + rng.normal(0.0, 1.0, truth.shape) * sigma
    return amp, rate, quiet, y.astype(np.float32), sigma.astype(np.float32)


def pulls(est, err, truth, mask):
    z = ((est - truth) / err)[mask]
    return float(np.mean(z)), float(np.std(z))


def test_exponential_recovers_truth_with_honest_errors():
    rng = np.random.default_rng(11)
    amp, rate, quiet, y, sigma = dark_stack(rng)
    fit = fit_exponential_per_pixel(TEMPS, y, sigma, x_ref=0.0)
    well = ~fit.fallback
    assert well.sum() > 0.85 * well.size
    for est, err, truth, what in ((fit.rate, fit.rate_err, rate, "rate"),
                                  (fit.amplitude, fit.amplitude_err, amp, "amplitude")):
        # ~3700 pixels: pull mean and std within 5 sigma (0.08 and ~0.06)
        assert_pulls(((est - truth) / err)[well], what=what)
    # the median rate is known to 1.2533 x the rates' spread / sqrt(n) (0.05 % here)
    median_rate = np.median(fit.rate[well])
    se = 1.2533 * np.std(fit.rate[well]) / np.sqrt(well.sum())
    assert abs(LN2 / median_rate - 6.0) < 5 * (LN2 / median_rate) * se / median_rate
    assert fit.population_rate_median == pytest.approx(np.median(fit.rate[well]))
    # the population rate is the joint fit of every pixel: within 3 sigma of the truth
    assert abs(fit.population_rate - LN2 / 6.0) < 3 * fit.population_rate_err
    assert 0 < fit.population_rate_err < 0.002 * LN2 / 6
    assert 0.01 * LN2 / 6 < fit.population_rate_spread < 0.05 * LN2 / 6
    # Reduced chi-square with 3 degrees of freedom: mean 1, median 0.79 (not 1).
    # the mean of n reduced chi2 with 3 dof is known to sqrt(2 / 3 / n) (0.013); 5 sigma
    assert abs(np.mean(fit.chi2[well]) - 1.0) < 5 * np.sqrt(2 / 3 / well.sum())
    assert np.median(fit.chi2[well]) == pytest.approx(stats.chi2.ppf(0.5, 3) / 3, abs=0.06)
    assert fit.npoints.dtype == np.int16 and np.all(fit.npoints == 5)
    for name in ("amplitude", "rate", "amplitude_err", "rate_err", "covariance", "chi2"):
        assert getattr(fit, name).dtype == np.float32
    # Quiet pixels fall back to the population rate, with a finite linear amplitude.
    fb = fit.fallback
    assert fb.sum() > 0.5 * quiet.sum() and np.all(quiet[fb])
    assert np.all(fit.rate[fb] == np.float32(fit.population_rate))
    assert np.all(fit.rate_err[fb] == np.float32(fit.population_rate_spread))
    assert np.all(fit.covariance[fb] == 0)
    assert np.all(np.isfinite(fit.amplitude[fb])) and np.all(fit.amplitude_err[fb] > 0)
    mean, std = pulls(fit.amplitude, fit.amplitude_err, amp, fb)
    assert abs(mean) < 0.2 and 0.8 < std < 1.2  # rate spread is only 2 %: still honest


def test_fallback_amplitude_is_the_closed_form():
    rng = np.random.default_rng(3)
    _, _, _, y, sigma = dark_stack(rng, (16, 16))
    y[:, 0, 0] = [0.3, -0.2, 0.1, 0.6, 0.4]      # no point at 3 sigma
    sigma[2, 0, 0] = np.nan                      # and one unusable point
    fit = fit_exponential_per_pixel(TEMPS, y, sigma, x_ref=5.0)
    assert fit.fallback[0, 0] and fit.npoints[0, 0] == 4
    keep = np.arange(5) != 2
    w = 1.0 / sigma[keep, 0, 0].astype(np.float64) ** 2
    e = np.exp(fit.population_rate * (TEMPS[keep] - 5.0))
    expected = np.sum(w * y[keep, 0, 0] * e) / np.sum(w * e * e)
    assert fit.amplitude[0, 0] == pytest.approx(expected, rel=1e-5)
    assert fit.amplitude_err[0, 0] == pytest.approx(1 / np.sqrt(np.sum(w * e * e)), rel=1e-5)
    r = y[keep, 0, 0] - expected * e
    assert fit.chi2[0, 0] == pytest.approx(np.sum(w * r * r) / 3, rel=1e-4)


def test_exact_exponential_and_prediction():
    x = np.array([-5.0, 0.0, 10.0, 20.0])
    amp = np.linspace(1.0, 50.0, 12).reshape(3, 4)
    rate = np.linspace(-0.05, 0.2, 12).reshape(3, 4)  # decreasing ones too
    y = amp * np.exp(rate * (x[:, None, None] - 10.0))
    fit = fit_exponential_per_pixel(x, y, np.full_like(y, 1e-3), x_ref=10.0)
    assert not fit.fallback.any()
    np.testing.assert_allclose(fit.amplitude, amp, rtol=1e-5)
    np.testing.assert_allclose(fit.rate, rate, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fit.predict(20.0), y[-1], rtol=1e-5)


def test_negative_and_zero_values_do_not_give_nan():
    rng = np.random.default_rng(7)
    _, _, _, y, sigma = dark_stack(rng, (32, 32), quiet_fraction=0.5, read=1.0)
    assert (y < 0).mean() > 0.05
    y[0, :4, :] = 0.0                       # exact zeros too
    y[:, 5, 5] = [-3.0, -1.0, 0.0, 4.0, 9.0]  # a well-measured pixel with negative points
    y[:, 6, 6] = np.nan                       # a pixel without any usable point
    fit = fit_exponential_per_pixel(TEMPS, y, sigma, x_ref=0.0)
    well = ~fit.fallback
    assert well[5, 5]
    for name in ("amplitude", "rate", "amplitude_err", "rate_err", "covariance", "chi2"):
        assert np.all(np.isfinite(getattr(fit, name)[well])), name
    usable = fit.npoints > 0
    assert np.all(np.isfinite(fit.amplitude[usable])) and fit.npoints[6, 6] == 0
    assert fit.fallback[6, 6] and np.isnan(fit.amplitude[6, 6])


def test_fit_resting_on_one_point_falls_back():
    rng = np.random.default_rng(5)
    _, _, _, y, sigma = dark_stack(rng, (16, 16), quiet_fraction=0.0)
    # Two points above 3 sigma, but no exponential through both fits the zeros
    # between them: the least-squares optimum is a spike on the last point
    # (rate -> infinity, amplitude -> 0), not a measurement.
    y[:, 0, 0] = [0.0, 0.0, 3.5, 0.0, 50.0]
    sigma[:, 0, 0] = 1.0
    # A loose tol lets the iteration "converge" on the runaway: the support
    # check rejects it.  With the default tol it runs out of iterations.
    for tol in (1e-2, 1e-6):
        fit = fit_exponential_per_pixel(TEMPS, y, sigma, x_ref=0.0, tol=tol, max_iter=100)
        assert fit.fallback[0, 0] and fit.fallback.sum() == 1
        assert np.isfinite(fit.amplitude[0, 0]) and fit.amplitude_err[0, 0] > 0


def test_predict_err_matches_monte_carlo_scatter():
    # Every pixel is one noise realisation of the same truth.
    rng = np.random.default_rng(21)
    shape = (60, 60)
    truth = 4.0 * np.exp(LN2 / 6.0 * (TEMPS - 10.0))[:, None, None] * np.ones(shape)
    sigma = np.sqrt(0.5 ** 2 + 0.05 * truth)
    y = truth + rng.normal(0.0, 1.0, truth.shape) * sigma
    fit = fit_exponential_per_pixel(TEMPS, y, sigma, x_ref=10.0)
    assert not fit.fallback.any()
    for x in (-15.0, 35.0):  # extrapolated, far from x_ref
        predicted = fit.predict(x)
        scatter = np.std(predicted)
        # the scatter of 3600 realisations is known to std_error_of_std (1.3 %); the
        # linearised error is 2.5-4.5 % low this far out (-2 and -3.4 sigma): 5 sigma
        assert abs(np.median(fit.predict_err(x)) - scatter) < 5 * std_error_of_std(predicted)
    assert np.median(fit.predict_err(10.0)) == pytest.approx(np.median(fit.amplitude_err))


def power_stack(rng, shape=(48, 48), t_ref=10.0):
    temps = np.repeat(TEMPS, 4)
    times = np.tile([0.5, 1.0, 2.0, 4.0], 5)  # s
    amp = 5.0 * np.exp(rng.normal(0.0, 0.3, shape))
    amp[rng.random(shape) < 0.1] *= 0.01      # quiet pixels
    rate = LN2 / 6.0 * (1.0 + rng.normal(0.0, 0.02, shape))
    truth = amp * times[:, None, None] * np.exp(rate * (temps[:, None, None] - t_ref))
    sigma = np.sqrt(2.0 ** 2 + truth)
    y = truth + rng.normal(0.0, 1.0, truth.shape) * sigma
    return temps, times, amp, rate, y.astype(np.float32), sigma.astype(np.float32)


def test_power_exponential_recovers_gamma_and_rate():
    rng = np.random.default_rng(13)
    temps, times, amp, rate, y, sigma = power_stack(rng)
    fit = fit_power_exponential_per_pixel(temps, times, y, sigma, t_ref=10.0)
    well = ~fit.fallback
    assert 0.8 * well.size < well.sum() < well.size
    assert np.median(fit.gamma[well]) == pytest.approx(1.0, abs=0.02)
    assert fit.population_gamma == pytest.approx(1.0, abs=0.02)
    assert fit.population_rate == pytest.approx(LN2 / 6.0, rel=0.02)
    for est, err, truth in ((fit.gamma, fit.gamma_err, 1.0), (fit.rate, fit.rate_err, rate),
                            (fit.amplitude, fit.amplitude_err, amp)):
        mean, std = pulls(est, err, truth, well)
        assert abs(mean) < 0.15
        assert 0.85 < std < 1.15
    assert fit.covariance.shape == (3, 3) + y.shape[1:] and fit.covariance.dtype == np.float32
    np.testing.assert_allclose(fit.covariance[1, 1], fit.gamma_err ** 2, rtol=1e-5)
    fb = fit.fallback
    assert np.all(fit.gamma[fb] == np.float32(fit.population_gamma))
    assert np.all(np.isfinite(fit.amplitude[fb]))
    # Prediction at an unmeasured (T, t) has honest errors for the well-measured pixels.
    truth = amp * 8.0 * np.exp(rate * 20.0)
    mean, std = pulls(fit.predict(30.0, 8.0), fit.predict_err(30.0, 8.0), truth, well)
    assert abs(mean) < 0.15 and 0.85 < std < 1.15


def test_errors():
    rng = np.random.default_rng(1)
    sigma = np.ones((5, 4, 4))
    with pytest.raises(ValueError, match="no pixel is well measured"):
        fit_exponential_per_pixel(TEMPS, rng.normal(0, 1, (5, 4, 4)), sigma, x_ref=0.0)
    with pytest.raises(ValueError, match="two distinct"):
        fit_exponential_per_pixel([5.0] * 5, np.full((5, 4, 4), 10.0), sigma, x_ref=0.0)
    with pytest.raises(ValueError, match="shape"):
        fit_exponential_per_pixel(TEMPS, np.ones((4, 4, 4)), np.ones((4, 4, 4)), x_ref=0.0)
    with pytest.raises(ValueError, match="two distinct"):
        fit_power_exponential_per_pixel(TEMPS, [1.0] * 5, np.ones((5, 2, 2)),
                                        np.ones((5, 2, 2)), t_ref=0.0)
    with pytest.raises(ValueError, match="cannot be separated"):
        fit_power_exponential_per_pixel(TEMPS, np.exp(TEMPS / 10), np.ones((5, 2, 2)),
                                        np.ones((5, 2, 2)), t_ref=0.0)
    with pytest.raises(ValueError, match="> 0"):
        fit_power_exponential_per_pixel(TEMPS, [0.0, 1, 2, 3, 4], np.ones((5, 2, 2)),
                                        np.ones((5, 2, 2)), t_ref=0.0)


def test_population_value():
    values = np.array([1.0, 2.0, 3.0, 100.0, np.nan])
    assert population_value(values, values < 50) == (2.0, pytest.approx(1.4826))
    assert np.isnan(population_value(values, np.zeros(5, bool))[0])


def assert_same_fit(fast, slow):
    """numba kernel and numpy fallback agree: maps to ~1e-5, identical flags and counts."""
    for name, a in vars(fast).items():
        b = getattr(slow, name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            if a.dtype.kind in "bi":
                np.testing.assert_array_equal(a, b, err_msg=name)
            else:
                finite = np.abs(b[np.isfinite(b)])
                scale = float(finite.max()) if finite.size else 1.0
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7 * scale, equal_nan=True,
                                           err_msg=name)
        else:
            assert a == pytest.approx(b, rel=1e-9), name


@pytest.mark.skipif(not fitting.HAVE_NUMBA, reason="numba not importable")
def test_numba_kernels_match_numpy_fallback():
    rng = np.random.default_rng(17)
    _, _, _, y, sigma = dark_stack(rng, (40, 50), quiet_fraction=0.2)
    y[1, 0, :6] = np.nan                      # missing points
    y[:, 1, 1] = np.nan                       # no usable point
    y[:, 2, 2] = [0.0, 0.0, 3.5, 0.0, 50.0]   # a spike on one point
    sigma[:, 2, 2] = 1.0
    sigma[3, 3, :4] = [0.0, -1.0, np.inf, np.nan]
    y[0, 4, :] = -2.0                         # negative values
    for x_ref in (0.0, TEMPS[2]):             # a point at x_ref: a zero design value
        fast = fit_exponential_per_pixel(TEMPS, y, sigma, x_ref=x_ref)
        with mock.patch.object(fitting, "HAVE_NUMBA", False):
            slow = fit_exponential_per_pixel(TEMPS, y, sigma, x_ref=x_ref)
        assert 0 < fast.fallback.sum() < fast.fallback.size
        assert_same_fit(fast, slow)
    temps, times, _, _, y, sigma = power_stack(rng, (30, 40))
    y[5, 0, :3] = np.nan
    y[:, 1, 1] = np.nan
    fast = fit_power_exponential_per_pixel(temps, times, y, sigma, t_ref=10.0)
    with mock.patch.object(fitting, "HAVE_NUMBA", False):
        slow = fit_power_exponential_per_pixel(temps, times, y, sigma, t_ref=10.0)
    assert 0 < fast.fallback.sum() < fast.fallback.size
    assert_same_fit(fast, slow)
    # without a factorisable design (every point at its own temperature and time)
    temps2 = temps + rng.uniform(-0.3, 0.3, temps.size)
    times2 = times * rng.uniform(0.9, 1.1, times.size)
    fast = fit_power_exponential_per_pixel(temps2, times2, y, sigma, t_ref=10.0, workers=1)
    with mock.patch.object(fitting, "HAVE_NUMBA", False):
        slow = fit_power_exponential_per_pixel(temps2, times2, y, sigma, t_ref=10.0, workers=1)
    assert_same_fit(fast, slow)


@pytest.mark.skipif(not fitting.HAVE_NUMBA, reason="numba not importable")
def test_population_value_numba_matches_numpy():
    rng = np.random.default_rng(2)
    cases = [rng.normal(0.1, 0.01, 1001), rng.normal(0.0, 1.0, 1000).astype(np.float32),
             np.array([3.0, -0.0, 0.0, 3.0, 3.0, -5.0, np.nan, np.inf]),
             rng.integers(-3, 4, 999).astype(np.float64), np.array([7.5]),
             # every other value far off: the strided sample misses the median (radix path)
             np.where(np.arange(70001) % 2 == 0, rng.normal(0.0, 1.0, 70001),
                      100.0 + np.arange(70001))]
    for values in cases:
        mask = rng.random(values.size) < 0.8
        mask[0] = True
        for m in (None, mask):
            fast = population_value(values, m)
            with mock.patch.object(fitting, "HAVE_NUMBA", False):
                slow = population_value(values, m)
            assert fast == slow
    assert np.isnan(population_value(np.array([np.nan, 1.0]), np.array([True, False]))[0])


def test_kernel_exp_is_within_a_few_ulp():
    """The kernels' branch-free exp (``poly * 2^k``, a Taylor series to r^13) is ~1 ulp, as
    its docstring says: within 4 ulp of numpy's over the clipped range (a wrong term of the
    series is thousands of ulp)."""
    from utils.models.exp_kernels import _EXP_MAX, _exp_parts_py

    x = np.concatenate([np.linspace(-_EXP_MAX, _EXP_MAX, 20001),
                        np.random.default_rng(1).uniform(-3.0, 3.0, 2000)])
    got = np.array([poly * np.int64(bits).view(np.float64)
                    for poly, bits in map(_exp_parts_py, x.tolist())])
    np.testing.assert_allclose(got, np.exp(x), rtol=4 * np.finfo(np.float64).eps, atol=0)


@pytest.mark.skipif(not fitting.HAVE_NUMBA, reason="numba not importable")
def test_population_sample_of_a_large_frame_with_sparse_pixels():
    """More pixels than the joint population fit samples (population.MAX_PIXELS) and a fifth
    of them with two usable points only: the numba path gathers the sample tile by tile and
    must pick the pixels joint_shape picks on the numpy path (q + 2 points or more, the same
    stride), so both give the same population rate."""
    from utils.models.population import MAX_PIXELS

    rng = np.random.default_rng(23)
    shape = (250, 480)
    _, _, _, y, sigma = dark_stack(rng, shape)
    y[:3, ::5, :] = np.nan
    assert y[0].size > MAX_PIXELS
    fast = fit_exponential_per_pixel(TEMPS, y, sigma, x_ref=0.0)
    with mock.patch.object(fitting, "HAVE_NUMBA", False):
        slow = fit_exponential_per_pixel(TEMPS, y, sigma, x_ref=0.0)
    assert fast.population_rate == pytest.approx(slow.population_rate, rel=1e-9)
    assert fast.population_rate_err == pytest.approx(slow.population_rate_err, rel=1e-6)


def test_radix_median_is_numpys_median():
    """The radix-selection median (the fallback of the bracketed median, numba or not) equals
    numpy's, for odd and even counts of distinct values (the even case averages two order
    statistics), with and without the absolute deviation."""
    from utils.models.exp_kernels import _nb_radix_median

    rng = np.random.default_rng(8)
    for n in (1, 2, 7, 10, 1001, 1000):
        values = rng.normal(0.0, 1.0, n)
        mask = np.ones(n, bool)
        assert _nb_radix_median(values, mask, 0.0, False) == np.median(values)
        assert _nb_radix_median(values, mask, 0.3, True) == np.median(np.abs(values - 0.3))
        keep = rng.random(n) < 0.7
        keep[0] = True
        assert _nb_radix_median(values, keep, 0.0, False) == np.median(values[keep])


def test_population_rate_from_two_temperatures_is_the_joint_fit():
    """Darks at two temperatures (the simulator's standard campaign): every pixel has two
    points, one more than its amplitude, so it informs the shared rate.  The joint fit
    required q + 2 = 3 points and so took no pixel at all; the population rate fell back to
    the median of the individually fitted pixels (selected by their noise at the faint
    temperature) with no error: B 0.063 for a true 0.1155 1/degC (T_d 11 degC for 6)."""
    rng = np.random.default_rng(5)
    temps = np.array([0.0, 25.0])
    true_rate = np.log(2) / 6.0
    amp = 40.0 * rng.lognormal(0.0, 0.3, (48, 64))        # adu/s at 20 degC
    y0 = amp * np.exp(true_rate * (temps - 20.0))[:, None, None]
    sigma = np.sqrt(10.0 ** 2 + 0.3 * y0)                  # SNR ~ 0.4 per pixel at 0 degC
    y = y0 + rng.standard_normal(y0.shape) * sigma
    fit = fit_exponential_per_pixel(temps, y, sigma, x_ref=20.0, min_snr=1e-3)
    assert np.isfinite(fit.population_rate_err) and fit.population_rate_err > 0
    # 20 seeds: pulls mean -0.6, std 1.03 (error 0.0017, i.e. 1.5 % of B)
    assert abs(fit.population_rate - true_rate) < 4 * fit.population_rate_err


@pytest.mark.skipif(not fitting.HAVE_NUMBA, reason="the tiled passes are the numba path's")
def test_one_small_tile_is_read_once_with_the_same_fit(monkeypatch):
    """popspeed: a fit over one small tile (a leave-one-out refit's pixel sample) reads it
    once for its three passes (first fits, the joint fit's sample, fallback fits): a dark
    stack computes the errors from its noise model at every read.  The fit is, bit for bit,
    the one that reads the tile at every pass."""
    from utils.models.pixel_tiles import PixelTiles

    rng = np.random.default_rng(23)
    temps, times, _, _, y, sigma = power_stack(rng)
    n = y.shape[0]
    y2, s2 = y.reshape(n, -1), sigma.reshape(n, -1)
    reads = []

    def read(a, b):
        reads.append((a, b))
        return y2[:, a:b].copy(), s2[:, a:b].copy(), None
    tiles = PixelTiles(n, y.shape[1:], [(0, y2.shape[1])], read)

    def fit():
        reads.clear()
        return fit_power_exponential_per_pixel(temps, times, None, None, t_ref=10.0,
                                               tiles=tiles)
    once = fit()
    assert len(reads) == 1 and once.fallback.any()     # the fallback pass needed the points
    monkeypatch.setattr(fitting, "_KEEP_SAMPLES", 0)
    every = fit()
    assert len(reads) == 3
    for name in ("amplitude", "gamma", "rate", "amplitude_err", "gamma_err", "rate_err",
                 "covariance", "chi2", "npoints", "fallback"):
        np.testing.assert_array_equal(getattr(once, name), getattr(every, name), name)
    for name in ("population_gamma", "population_rate", "population_gamma_err",
                 "population_rate_err"):
        assert getattr(once, name) == getattr(every, name), name


@pytest.mark.skipif(not fitting.HAVE_NUMBA, reason="the tiled passes are the numba path's")
@pytest.mark.parametrize("sparse", [False, True])
def test_joint_sample_gathered_in_the_first_pass(sparse, monkeypatch):
    """popspeed: over several tiles the joint fit's pixel sample is gathered while the first
    pass reads them, at the stride of every pixel being a candidate, and the fallback
    pixels' points are kept from it, so the tiles are read once; the fit is, bit for bit,
    the one that gathers the sample in a pass of its own and reads the fallback pixels'
    tiles again.  With many pixels left out (``sparse``: another stride) the fit gathers
    the sample in its own pass as before, with the same result."""
    from utils.models import pixel_tiles
    from utils.models.pixel_tiles import PixelTiles

    rng = np.random.default_rng(29)
    temps, times, _, _, y, sigma = power_stack(rng, shape=(60, 50))
    n = y.shape[0]
    if sparse:  # a third of the pixels without points: fewer candidates, another stride
        sigma[:, rng.random(y.shape[1:]) < 0.35] = np.nan
    y2, s2 = y.reshape(n, -1), sigma.reshape(n, -1)
    cov = np.tile(np.array([[0.04, 0.001], [0.001, 0.002]])[:, :, None], (1, 1, y2.shape[1]))
    v = np.column_stack([np.ones(n), temps - 10.0])
    reads = []

    def read(a, b):
        reads.append((a, b))
        return y2[:, a:b].copy(), s2[:, a:b].copy(), cov[:, :, a:b].copy()
    tiles = PixelTiles(n, y.shape[1:], [(a, min(a + 700, 3000)) for a in range(0, 3000, 700)],
                       read)
    for module in (fitting, pixel_tiles):  # a stride of 3 over 3000 pixels
        monkeypatch.setattr(module, "POPULATION_PIXELS", 1000)

    def fit():
        reads.clear()
        return fit_power_exponential_per_pixel(temps, times, None, None, t_ref=10.0,
                                               tiles=tiles, shared_errors=(v, None))
    ahead = fit()
    ahead_reads = len(reads)
    assert ahead.fallback.any()
    # the former passes: the sample gathered in a pass of its own, the fallback pixels'
    # tiles read again
    monkeypatch.setattr(fitting, "_KEEP_SAMPLES", 0)
    with mock.patch.object(fitting._SampleAhead, "take", lambda self, count: None):
        gathered = fit()
    fallback_tiles = sum(bool(ahead.fallback.reshape(-1)[a:b].any()) for a, b in tiles.ranges)
    assert len(reads) == 2 * len(tiles.ranges) + fallback_tiles
    # the first pass's reads only; with another stride, the sample's pass as well
    assert ahead_reads == len(tiles.ranges) * (2 if sparse else 1)
    for name in ("amplitude", "gamma", "rate", "covariance", "chi2", "fallback"):
        np.testing.assert_array_equal(getattr(ahead, name), getattr(gathered, name), name)
    for name in ("population_gamma", "population_rate", "population_gamma_err",
                 "population_rate_err"):
        assert getattr(ahead, name) == getattr(gathered, name), name
