"""The exact medians of utils.stack.stats give numpy's numbers (the master MEDIAN and NOISEMED
cards, the flat levels): odd and even sizes, quantised and heavy-tailed data, NaN."""

import math

import numpy as np
import pytest

from utils.stack.stats import exact_median, exact_nanmedian


@pytest.mark.parametrize("n", [300_001, 300_002, 1 << 20])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_median_equals_numpy(n, dtype):
    rng = np.random.default_rng(n)
    cases = [rng.normal(1600.0, 32.0, n),                      # bias-like
             np.rint(rng.normal(1600.0, 32.0, n) / 16) * 16,   # quantised: many ties
             rng.standard_cauchy(n),                           # heavy tails
             np.sort(rng.normal(size=n))]                      # ordered input
    for x in cases:
        x = x.astype(dtype)
        assert exact_median(x) == float(np.median(x))


def test_exact_median_small_and_2d():
    x = np.random.default_rng(1).normal(size=(512, 700)).astype(np.float32)
    assert exact_median(x) == float(np.median(x))
    assert exact_median(x[:10, :10]) == float(np.median(x[:10, :10]))


def test_exact_nanmedian_equals_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(700, 700)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    assert exact_nanmedian(x) == float(np.nanmedian(x))
    x[:, :] = 5.0
    x[::3] = np.nan
    assert exact_nanmedian(x) == 5.0
    assert math.isnan(exact_nanmedian(np.full(10, np.nan)))


def test_exact_median_column_structure_takes_the_window(monkeypatch):
    # a bias-like 1024-wide image with a column pattern of period 16 (column ADCs): a
    # power-of-two subsample stride would see only every 16th column, miss the window and
    # fall back to a full np.median
    rng = np.random.default_rng(3)
    columns = rng.normal(0.0, 4.0, 1024).astype(np.float32)
    columns[::16] += 60.0
    x = (np.rint(rng.normal(3120.0, 8.0, (1024, 1024)) / 3.2) * 3.2).astype(np.float32) + columns
    expected = float(np.median(x))

    def no_fallback(*args, **kwargs):
        raise AssertionError("exact_median fell back to np.median")
    monkeypatch.setattr(np, "median", no_fallback)
    assert exact_median(x) == expected


@pytest.mark.parametrize("one_pass", [True, False])
def test_exact_median_window_split_with_and_without_numba(one_pass, monkeypatch):
    from utils.stack import stats

    if not one_pass:
        monkeypatch.setattr(stats, "_split_window", None)
    elif stats._split_window is None:
        pytest.skip("numba not importable")
    rng = np.random.default_rng(4)
    for x in (rng.normal(5.0, 1.0, 400_001), np.rint(rng.normal(0, 3, 400_000)).astype(np.float32)):
        assert exact_median(x) == float(np.median(x))
        x[::1000] = np.nan  # NaN counts in no part of the split: np.median's NaN
        assert math.isnan(exact_median(x))
        assert exact_nanmedian(x) == float(np.nanmedian(x))
