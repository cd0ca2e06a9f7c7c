"""Tests of utils.stack.stats: robust helpers and one-pass frame statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits

from utils import headers as kw
from utils.stack import stats


def test_mad_std_known_values_and_nan_handling():
    assert stats.mad_std([1.0, 2.0, 3.0, 4.0, 100.0]) == pytest.approx(1.482602218505602)
    with_bad = [1.0, np.nan, 2.0, 3.0, 4.0, np.inf, 100.0]
    assert stats.mad_std(with_bad) == pytest.approx(1.482602218505602)
    assert math.isnan(stats.mad_std([np.nan, np.nan]))
    assert math.isnan(stats.mad_std([]))
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3.0, (4, 20000))
    x[0, :10] = np.nan
    per_row = stats.mad_std(x, axis=1)
    assert per_row.shape == (4,)
    np.testing.assert_allclose(per_row, 3.0, rtol=0.03)
    from astropy.stats import mad_std as astropy_mad_std

    y = rng.normal(5, 2, (7, 9))
    np.testing.assert_allclose(stats.mad_std(y, axis=0), astropy_mad_std(y, axis=0))
    assert stats.mad_std(y) == pytest.approx(astropy_mad_std(y))


def test_mad_std_all_nan_column_gives_nan_without_warning():
    x = np.ones((5, 3))
    x[:, 1] = np.nan
    out = stats.mad_std(x, axis=0)
    assert out[0] == 0.0 and math.isnan(out[1])


def test_sigma_clipped_stats_rejects_outliers():
    rng = np.random.default_rng(1)
    x = rng.normal(100.0, 2.0, 5000)
    x[:20] = 1e4
    x[20:25] = np.nan
    mean, median, std = stats.sigma_clipped_stats(x, sigma=3, maxiters=None)
    assert mean == pytest.approx(100.0, abs=0.1)
    assert median == pytest.approx(100.0, abs=0.1)
    assert std == pytest.approx(2.0, rel=0.05)
    assert all(math.isnan(v) for v in stats.sigma_clipped_stats([np.nan]))
    assert stats.sigma_clipped_stats([3.0, 3.0, 3.0]) == (3.0, 3.0, 0.0)
    # zero MAD on quantised values: the std takes over, the +-16 spread is kept
    quantised = [1600.0] * 11 + [1584.0] * 4 + [1616.0] * 4 + [9000.0]
    mean, median, std = stats.sigma_clipped_stats(quantised)
    assert (mean, median) == (1600.0, 1600.0)
    assert std == pytest.approx(np.std(quantised[:-1]))


def test_sigma_clipped_stats_matches_astropy_cumulative():
    from astropy.stats import sigma_clip

    rng = np.random.default_rng(2)
    x = np.round(rng.normal(50, 4, 301))
    x[::37] += 40
    ref = sigma_clip(x, sigma=3, maxiters=5, cenfunc=np.median,
                     stdfunc=lambda d, axis=None: stats.mad_std(d), axis=0)
    mean, median, std = stats.sigma_clipped_stats(x, sigma=3, maxiters=5)
    assert mean == pytest.approx(ref.mean())
    assert median == pytest.approx(np.ma.median(ref))
    assert std == pytest.approx(ref.std())


def reference(values, saturation=None):
    v = np.asarray(values, dtype=np.float64).ravel()
    good = v[np.isfinite(v)]
    return dict(n_pixels=v.size, n_finite=good.size, mean=good.mean(), median=np.median(good),
                std=good.std(), p16=np.percentile(good, 16), p84=np.percentile(good, 84),
                min=good.min(), max=good.max(), zero_fraction=np.mean(v == 0),
                saturated_fraction=np.mean(v >= saturation) if saturation else math.nan)


def assert_stats(got: stats.FrameStats, expected: dict, rel=1e-9):
    for key, value in expected.items():
        g = getattr(got, key)
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(g), key
        else:
            assert g == pytest.approx(value, rel=rel, abs=1e-9), key


@pytest.mark.parametrize("shape", [(301, 257), (64, 1000), (1, 17)])
def test_frame_statistics_uint16_fits_exact(tmp_path, shape):
    rng = np.random.default_rng(shape[0])
    data = (np.round(rng.normal(1000, 30, shape)) * 16).clip(0, 65520).astype(np.uint16)
    data.flat[::97] = 0
    data.flat[5::211] = 65520
    path = tmp_path / "f.fits"
    fits.PrimaryHDU(data).writeto(path)
    got = stats.frame_statistics(path, saturation=65520, block_rows=7)
    assert_stats(got, reference(data, 65520))
    # same answer from the array, and independent of the block height
    assert got == stats.frame_statistics(data, saturation=65520, block_rows=1000)
    assert got.as_dict()["n_pixels"] == data.size


def test_frame_statistics_float_and_int16_data(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.normal(0.0, 1.0, (120, 90)).astype(np.float32)
    data[0, :5] = np.nan
    data[1, :3] = 0.0
    path = tmp_path / "f.fits"
    fits.PrimaryHDU(data).writeto(path)
    got = stats.frame_statistics(path, block_rows=13)
    assert_stats(got, reference(data), rel=1e-6)
    assert got.n_finite == data.size - 5
    assert math.isnan(got.saturated_fraction)

    signed = rng.integers(-500, 500, (50, 60)).astype(np.int16)
    assert_stats(stats.frame_statistics(signed, saturation=400), reference(signed, 400))
    wide = rng.integers(0, 2**20, (40, 30)).astype(np.int32)
    assert_stats(stats.frame_statistics(wide), reference(wide))


def test_frame_statistics_zero_frame_fraction():
    empty = np.zeros((100, 100), np.uint16)
    got = stats.frame_statistics(empty)
    assert got.zero_fraction == 1.0 and got.std == 0.0 and got.median == 0.0
    nan_frame = np.full((10, 10), np.nan, np.float32)
    got = stats.frame_statistics(nan_frame)
    assert got.n_finite == 0 and math.isnan(got.mean) and got.zero_fraction == 0.0


def test_frame_statistics_of_a_nested_list_is_that_of_the_array():
    # any array-like is data, only a str or path is a file name
    rows = [[1.0, 2.0, 3.0], [4.0, 5.0, 600.0]]
    assert stats.frame_statistics(rows) == stats.frame_statistics(np.array(rows))


def test_median_with_error_matches_the_error_of_a_median():
    # the error of the median of n Gaussian values is 1.2533 sigma / sqrt(n); the kernel
    # density at the median it uses (+-0.3 sigma window, ~2400 of 10000 values) is known to
    # ~2 %, so 10 % is 5 sigma; over 40 seeds the medians scatter as that error says
    rng = np.random.default_rng(3)
    medians, errors = [], []
    for _ in range(40):
        m, e = stats.median_with_error(rng.normal(100.0, 10.0, 10000))
        medians.append(m)
        errors.append(e)
    assert np.median(errors) == pytest.approx(1.2533 * 10 / 100, rel=0.1)
    z = (np.array(medians) - 100.0) / np.array(errors)
    assert abs(z.mean()) < 5 / math.sqrt(40) and 0.5 < z.std() < 1.5  # 40 draws: +-0.11 on the std
    assert stats.median_with_error([]) == pytest.approx((math.nan, math.nan), nan_ok=True)
    assert stats.median_with_error([7.0, 7.0, 7.0]) == (7.0, 0.0)


def test_read_noise_below_one_adu_keeps_its_error():
    """A 16-bit camera at high gain may have a read noise below 1 adu: the accumulator's
    typical-pixel value and its error are still given (0.6 adu, 20 pairs of 4000 pixels: the
    value is known to ~0.2 %), and the error matches the value's scatter over 60 draws."""
    from utils.models.read_noise import ReadNoiseAccumulator

    rng = np.random.default_rng(6)
    values, errors = [], []
    for _ in range(60):
        acc = ReadNoiseAccumulator()
        for _ in range(20):
            acc.add(rng.normal(0.0, 0.6, (40, 100)), rng.normal(0.0, 0.6, (40, 100)))
        result = acc.result()
        values.append(result.median)
        errors.append(result.median_err)
    assert np.all(np.isfinite(errors)) and np.all(np.asarray(errors) > 0)
    assert abs(np.mean(values) - 0.6) < 5 * np.median(errors) / math.sqrt(60)
    ratio = np.std(values, ddof=1) / np.median(errors)
    assert abs(ratio - 1) < 5 / math.sqrt(120), ratio


# --- statistics recorded in a converted frame's header ------------------------------------------

def _carded_header(data, saturation):
    """A frame header as the converter writes it, statistics cards included."""
    from utils.io.conversion import frame_header_bytes

    cards = stats.statistics_cards(stats.frame_statistics(data, saturation=saturation),
                                   saturation)
    return fits.Header.fromstring(frame_header_bytes(data.shape, cards).decode("ascii")), cards


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
def test_statistics_cards_read_back_bit_for_bit(dtype):
    rng = np.random.default_rng(11)
    top = 65520 if dtype == np.uint16 else 255
    data = rng.integers(0, top + 1, (83, 71)).astype(dtype)
    data.flat[::13] = 0
    data.flat[3::29] = top
    header, cards = _carded_header(data, float(top))
    assert [c[0] for c in cards] == list(kw.FRAME_STATS)
    # the very FrameStats the pixels give (dataclass equality: every number bit for bit)
    assert stats.recorded_statistics(header, float(top)) == \
        stats.frame_statistics(data, saturation=float(top))
    assert header[kw.FRNZERO] == np.count_nonzero(data == 0)
    assert header[kw.FRNSAT] == np.count_nonzero(data >= top)


def test_statistics_cards_left_out_when_a_value_would_be_rounded():
    rng = np.random.default_rng(12)
    data = rng.integers(0, 4096, (40, 50)).astype(np.uint16)
    exact = stats.frame_statistics(data, saturation=65520.0)
    assert stats.statistics_cards(exact, 65520.0)
    # a float whose text needs more than the card's 20 columns would come back rounded
    tiny = stats.FrameStats(**dict(exact.as_dict(), std=1.2345678901234567e-05))
    assert stats.statistics_cards(tiny, 65520.0) == []
    assert stats.statistics_cards(exact, math.nan) == []
    # a level float32 cannot hold: the index (float32 pixels) would count against it rounded
    data.flat[0] = 4000
    odd = stats.frame_statistics(data, saturation=4000.0001)
    assert odd.saturated_fraction != stats.frame_statistics(
        data.astype(np.float32), saturation=4000.0001).saturated_fraction
    assert stats.statistics_cards(odd, 4000.0001) == []


@pytest.mark.parametrize("change", [
    {kw.FRSTD: None},                     # a card missing
    {kw.FRMEAN: "high"},                  # not a number
    {kw.FRNZERO: 3.0},                    # a count that is not an integer
    {kw.FRNSAT: True},
    {kw.FRNPIX: 83 * 70},                 # not NAXIS1 x NAXIS2
    {kw.FRNZERO: 83 * 71 + 1},            # more zeros than pixels
    {kw.FRNSAT: -1},
    {kw.FRSATLEV: 65535.0},               # counted against another level
    {kw.FRP16: 70000.0},                  # values out of order
    {kw.FRSTD: -1.0},
    {"NAXIS1": 70},
])
def test_malformed_statistics_cards_are_not_used(change):
    data = np.random.default_rng(13).integers(0, 65521, (83, 71)).astype(np.uint16)
    header, _ = _carded_header(data, 65520.0)
    assert stats.recorded_statistics(header, 65520.0) is not None
    for key, value in change.items():
        if value is None:
            del header[key]
        else:
            header[key] = value
    assert stats.recorded_statistics(header, 65520.0) is None


@pytest.mark.parametrize("saturation", [65520.0, 4000.5, None])
def test_histogram_counted_while_encoding_gives_frame_statistics(tmp_path, saturation):
    from utils.io.conversion import encode_frame, frame_header_bytes, write_frame_fits

    rng = np.random.default_rng(14)
    data = (rng.integers(0, 4096, (97, 61)) * 16).astype(np.uint16)
    data.flat[::17] = 0
    data.flat[2::23] = 65520
    hist = np.zeros(65536, dtype=np.int64)
    payload, _ = encode_frame(data, hist)
    np.testing.assert_array_equal(hist, np.bincount(data.ravel(), minlength=65536))
    from utils.io import conversion

    plain = np.zeros(65536, dtype=np.int64)           # without numba: the same bytes and counts
    same, _ = conversion._encode_numpy(data, plain)
    np.testing.assert_array_equal(plain, hist)
    assert same.tobytes() == payload.tobytes()
    path = tmp_path / "f.fits"
    write_frame_fits(path, payload, frame_header_bytes(data.shape, []))
    # what the index would measure from the file, bit for bit
    assert stats.histogram_statistics(hist, saturation=saturation) == \
        stats.frame_statistics(path, saturation=saturation)
    with pytest.raises(ValueError, match="65536 bins"):
        stats.histogram_statistics(hist[:100])


@pytest.mark.parametrize("n_frames", [3, 4, 8])
def test_typical_noise_is_the_gaussian_sigma_whatever_the_number_of_frames(n_frames):
    """A master's summary noise (masters_summary NOISE, the NOISEMED card, the dose summary's
    NOISE) does not depend on how many frames were stacked: the median of per-pixel sample
    stds was 15 / 12 / 5 % low at 3 / 4 / 8 frames.  Tolerance: 4 standard errors of the
    median of chi^2_k / (k m_k) over the pixels (m_k its median), halved for a sigma."""
    from scipy.stats import chi2

    from utils.stack.combine import combine

    sigma, shape = 32.3, (96, 128)
    rng = np.random.default_rng(100 + n_frames)
    frames = [rng.normal(1600.0, sigma, shape) for _ in range(n_frames)]
    res = combine(frames, method="sigclip", min_accepted=2)
    got = stats.typical_noise(res.noise, res.count)
    k = n_frames - 1
    km = chi2.ppf(0.5, k)
    se_var = 1.0 / (2.0 * math.sqrt(res.noise.size) * km * chi2.pdf(km, k))
    assert got == pytest.approx(sigma, rel=4 * se_var / 2)
    old = float(np.nanmedian(res.noise))
    assert abs(old / sigma - 1) > 4 * se_var / 2  # the old estimator fails this test
    # pixels with fewer samples count with their own chi^2 median; no valid pixel: NaN
    count = res.count.copy()
    count[:, :64] = 1
    assert stats.typical_noise(res.noise, count) == pytest.approx(got, rel=8 * se_var / 2)
    assert math.isnan(stats.typical_noise(res.noise, np.ones_like(res.count)))


@pytest.mark.parametrize("size, hi, seed", [(1000, 5, 0), (300_000, 10, 1), (1 << 20, 20, 2),
                                            (5000, 2, 3)])
def test_typical_noise_one_pass_equals_numpy_steps(size, hi, seed):
    # the numba pass (square, scale, rescale the other counts, drop NaN) gives the numpy
    # steps' number bit for bit: counts 0..hi (NaN below 2), NaN and inf noise
    rng = np.random.default_rng(seed)
    noise = rng.gamma(4.0, 3.0, size).astype(np.float32)
    count = np.full(size, hi, np.int16)
    other = rng.random(size) < 0.2
    count[other] = rng.integers(0, hi + 1, other.sum())
    noise[rng.random(size) < 0.01] = np.nan
    noise[rng.random(size) < 0.001] = np.inf
    med_chi2 = stats.chi2_median_ratio(np.arange(1, hi))
    got = stats.typical_noise(noise, count)
    assert got == stats._typical_noise_numpy(noise, count, hi, med_chi2)
    # as read from a FITS file (big-endian) or in float64: the numpy steps themselves
    assert stats.typical_noise(noise.astype(">f4"), count.astype(">i2")) == got
    noise[:] = np.nan
    assert math.isnan(stats.typical_noise(noise, count))
