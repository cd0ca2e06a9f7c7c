"""dark2d (session 34): the 2-D fit's and its leave-one-temperature-out refits' speed-ups
give the former numbers bit for bit: the refits' points read once for all of them
(:class:`dark_pipeline.model_2d.SamplePoints`), balanced kernel chunks
(:func:`utils.models.nonlinear.balanced_chunk`) and the next tile read beside the kernels'
pass on the one before (:func:`utils.models.nonlinear.read_beside`)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dark_pipeline.holdout import holdout_2d
from dark_pipeline.model_2d import BiasErrors, fit_model_2d, shared_bias_covariance
from dark_pipeline.pipeline import DarkSettings, measure
from dark_pipeline.rates import load_stack
from utils.io.index import DatasetIndex, build_index
from utils.models import nonlinear
from utils.models.pixel_tiles import PixelTiles
from utils.sim import simulate_standard


@pytest.fixture(scope="module")
def masters_and_bias(tmp_path_factory):
    from conftest import convert_campaign

    root = tmp_path_factory.mktemp("dark2d")
    campaign = simulate_standard(root / "c", seed=341, width=40, height=30, frames=6,
                                 attempts=1, bias_temperatures=(10.0, 20.0, 30.0),
                                 dark_temperatures=(10.0, 20.0, 30.0),
                                 dark_exposures=(1.0, 2.0, 4.0), flat_temperatures=(20.0,),
                                 flat_exposures=(0.1,), defects=True)
    convert_campaign(campaign)
    index = DatasetIndex(build_index([("", campaign.root)]))
    masters, bias, _ = measure(index, root / "o", DarkSettings(), [])
    return masters, bias


def _former_holdout(sample, settings, bias_model, start):
    """The refits as made before dark2d: each reads its masters from the sample stack, its
    fit and covariance pass each once, with the bias model's errors gathered per fit."""
    at_sample = BiasErrors.of(bias_model).at(sample.pixels)

    def fit_without(label):
        rest = sample.select(i for i, m in enumerate(sample.masters) if m.temperature != label)
        m2 = fit_model_2d(rest, settings.t_ref, min_snr=settings.min_snr, quiet=True,
                          bias_model=bias_model, population_start=start, keep_gain=True)
        return m2.signal, m2.signal_err, lambda t, x: shared_bias_covariance(
            m2, at_sample, t, x)
    return fit_without


def test_refits_from_points_read_once_equal_former_refits(masters_and_bias):
    """Every leave-one-temperature-out refit (prediction, its error, its covariance with
    the masters' bias errors at every master) equals the former refit bit for bit."""
    masters, bias = masters_and_bias
    stack = load_stack(masters)
    settings = DarkSettings()
    full = fit_model_2d(stack, settings.t_ref, quiet=True, bias_model=bias.model)
    start = (float(full.fit.population_gamma), float(full.fit.population_rate))
    sample = stack.sample(700)[0]  # a stride sample, not every pixel
    assert 0 < sample.pixels.size < stack.shape[0] * stack.shape[1]
    new = holdout_2d(stack.sample(700)[0], settings, 16, bias.model, start)
    old = _former_holdout(sample, settings, bias.model, start)
    for label in stack.groups():
        a, b = new(label), old(label)
        assert len(a) == len(b) == 3
        for m in stack.masters:
            for f, g in zip(a, b, strict=True):
                x, y = f(m.tavg, m.exptime), g(m.tavg, m.exptime)
                assert x.dtype == y.dtype and np.isfinite(y).mean() > 0.9
                np.testing.assert_array_equal(x, y)
    # the sample stack's images are not read after the set-up
    with pytest.raises(ValueError, match="pixel sample"):
        holdout_2d(stack, settings, 16, bias.model, start)


def test_balanced_chunk():
    """Chunks of equal size (the last one smaller), none above the cap, covering every
    pixel, at least one per thread; a multiple of the threads' count where the sizes
    divide (the 2-D fit's row tiles and samples)."""
    for total in (1, 5, 100, 16383, 16384, 16385, 49152, 65536, 1 << 20, 123457):
        for cap in (1, 7, 16384):
            for workers in (1, 2, 3, 8):
                size = nonlinear.balanced_chunk(total, cap, workers)
                count = -(-total // size)
                assert 1 <= size <= cap and count * size >= total
                assert count >= min(workers, total)
    assert nonlinear.balanced_chunk(49152, 16384, 2) == 12288
    assert nonlinear.balanced_chunk(65536, 16384, 2) == 16384
    assert nonlinear.balanced_chunk(24 * 2048, 16384, 2) == 12288
    assert nonlinear.balanced_chunk(0, 16384, 2) == 16384


def test_fits_do_not_depend_on_the_kernel_chunks(masters_and_bias, monkeypatch):
    """Per-pixel kernels: the 2-D fit (first pass, fallback pass, covariance pass) gives the
    same maps bit for bit with chunks of 16384 pixels (one chunk), 97 or 5."""
    masters, bias = masters_and_bias
    stack = load_stack(masters, memory_limit=3e5)
    assert len(list(stack.row_tiles(images=6))) > 2
    fits = []
    for chunk in (16384, 97, 5):
        monkeypatch.setattr(nonlinear, "_NL_CHUNK", chunk)
        fits.append(fit_model_2d(stack, 20.0, quiet=True, bias_model=bias.model).fit)
    assert fits[0].fallback.any() and (~fits[0].fallback).any()
    for other in fits[1:]:
        for name in ("amplitude", "gamma", "rate", "amplitude_err", "gamma_err", "rate_err",
                     "covariance", "chi2", "npoints", "fallback"):
            np.testing.assert_array_equal(getattr(fits[0], name), getattr(other, name),
                                          err_msg=name)


def test_read_beside_reads_every_range_once_in_order():
    """Every range read once, in order, by the calling thread; its work done by the helper
    thread and its result handed back in order; the next range read before the work on the
    one before is collected (at most two tiles held)."""
    y = np.arange(40.0).reshape(2, 20)
    log = []
    caller = threading.current_thread().name

    def read(a, b):
        log.append(("read", a, threading.current_thread().name))
        return y[:, a:b], y[:, a:b] + 1, None

    def work(at, got):
        log.append(("work", at[0], threading.current_thread().name))
        return float(got[0].sum() + got[1].sum())

    got = []

    def after(at, points, result):
        log.append(("after", at[0], threading.current_thread().name))
        got.append((at, points[0].copy(), result))
    ranges = [(0, 5), (5, 9), (9, 20)]
    nonlinear.read_beside(PixelTiles(2, (20,), ranges, read), ranges, work, after)
    assert [g[0] for g in got] == ranges
    for (a, b), yt, result in got:
        np.testing.assert_array_equal(yt, y[:, a:b])
        assert result == y[:, a:b].sum() * 2 + y[:, a:b].size
    assert [e[:2] for e in log if e[0] == "read"] == [("read", a) for a, _ in ranges]
    assert all(e[2] == caller for e in log if e[0] != "work")
    assert all(e[2].startswith("tile-work") for e in log if e[0] == "work")
    reads = [i for i, e in enumerate(log) if e[0] == "read"]
    afters = [i for i, e in enumerate(log) if e[0] == "after"]
    assert reads[1] < afters[0] and reads[2] < afters[1]  # one read ahead, not more
    assert afters[0] < reads[2]
    log.clear()
    nonlinear.read_beside(PixelTiles(2, (20,), [(0, 20)], read), [(0, 20)], work, after)
    assert all(e[2] == caller for e in log)
    # an error of a read or of a work is raised to the caller
    with pytest.raises(ZeroDivisionError):
        nonlinear.read_beside(PixelTiles(2, (20,), ranges, lambda a, b: 1 / 0), ranges, work)
    with pytest.raises(ZeroDivisionError):
        nonlinear.read_beside(PixelTiles(2, (20,), ranges, read), ranges,
                              lambda at, got: 1 / 0)
