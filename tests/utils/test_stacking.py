"""Tests of the streaming master-frame engine (utils.stack)."""

from __future__ import annotations

import functools
import json
import logging
import math
import shutil
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from scipy import stats as sps
from statcheck import assert_close, clipped_factor

from utils import headers as kw
from utils.errors import FrameError, InsufficientFramesError
from utils.stack import combine as stacking
from utils.stack import kernels, pooled_floor
from utils.stack import stats as stack_stats
from utils.stack.error_factor import clipped_error_factor

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ helpers
def gaussian_frames(n, shape=(64, 48), mean=1000.0, sigma=10.0, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.normal(mean, sigma, shape).astype(dtype) for _ in range(n)]


def write_frames(folder: Path, frames, prefix="f") -> list[Path]:
    """Write frames as FITS (uint16 frames use the BZERO=32768 convention)."""
    paths = []
    for i, frame in enumerate(frames):
        hdu = fits.PrimaryHDU(frame)
        hdu.header[kw.BUNIT] = "adu"
        path = folder / f"{prefix}{i:03d}.fits"
        hdu.writeto(path)
        paths.append(path)
    return paths


def bias_like(n, shape=(40, 56), seed=1, spikes=True):
    """uint16 frames like the camera's: multiples of 16 around 1600 ADU, a few cosmics."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        f = np.round(rng.normal(100, 2.0, shape)) * 16
        if spikes:
            hit = rng.random(shape) < 0.01
            f[hit] += rng.integers(50, 2000, hit.sum()) * 16
        frames.append(f.astype(np.uint16))
    return frames


def assert_same_result(a, b, *, rtol=1e-6):
    np.testing.assert_array_equal(a.count, b.count)
    np.testing.assert_array_equal(a.flags, b.flags)
    np.testing.assert_allclose(a.data, b.data, rtol=rtol, atol=0, equal_nan=True)
    np.testing.assert_allclose(a.noise, b.noise, rtol=max(rtol, 1e-5), atol=1e-4, equal_nan=True)
    np.testing.assert_allclose(a.stderr, b.stderr, rtol=max(rtol, 1e-5), atol=1e-4, equal_nan=True)
    assert a.header[kw.NREJECT] == b.header[kw.NREJECT]


# ------------------------------------------------------------------ known answers
@pytest.mark.parametrize("method", stacking.METHODS)
def test_constant_frames_give_constant_master_and_zero_noise(method):
    frames = [np.full((30, 20), 1234.0, dtype=np.float32) for _ in range(6)]
    res = stacking.combine(frames, method=method)
    np.testing.assert_array_equal(res.data, 1234.0)
    np.testing.assert_array_equal(res.noise, 0.0)
    np.testing.assert_array_equal(res.stderr, 0.0)
    np.testing.assert_array_equal(res.count, 6)
    assert res.data.dtype == np.float32 and res.count.dtype == np.int16
    assert res.flags.dtype == np.uint8 and not res.mask.any()
    assert res.header[kw.NCOMBINE] == 6 and res.header[kw.COMBMETH] == method
    assert res.header[kw.NMASKED] == 0 and res.header[kw.NREJECT] == 0
    assert res.header[kw.MEAN] == pytest.approx(1234.0)


def test_cosmic_rays_removed_by_sigclip_but_bias_the_mean():
    frames = gaussian_frames(12, sigma=5.0, seed=3)
    hits = [(5, 7), (20, 30), (40, 11)]
    for i, (r, c) in enumerate(hits):
        frames[i][r, c] += 5000.0
        frames[i + 3][r, c] += 3000.0
    clipped = stacking.combine(frames, method="sigclip")
    plain = stacking.combine(frames, method="mean")
    truth = np.mean(np.stack(frames), axis=0)
    for r, c in hits:
        assert abs(clipped.data[r, c] - 1000.0) < 8.0   # both spikes gone
        assert clipped.count[r, c] <= 10                 # (a MAD of ~10 samples may trim more)
        assert plain.data[r, c] > 1500.0                   # (5000+3000)/12 bias
        assert plain.data[r, c] == pytest.approx(truth[r, c], rel=1e-6)
    assert clipped.header[kw.NREJECT] >= 2 * len(hits)
    assert not clipped.mask.any()


def test_all_nan_pixel_is_flagged_and_masked():
    frames = gaussian_frames(5)
    for f in frames:
        f[3, 4] = np.nan
    res = stacking.combine(frames, min_accepted=1)
    assert res.count[3, 4] == 0 and np.isnan(res.data[3, 4])
    assert res.flags[3, 4] == stacking.FLAG_FEW | stacking.FLAG_NONFINITE
    assert res.mask[3, 4] and res.mask.sum() == 1
    assert res.header[kw.NMASKED] == 1
    assert np.isfinite(res.header[kw.MEAN])


def test_too_few_accepted_samples_flagged():
    frames = gaussian_frames(8, seed=4)
    for f in frames[:6]:
        f[1, 2] = np.nan
    frames[0][9, 9] = np.inf  # inf is a missing sample too
    res = stacking.combine(frames, method="median", min_accepted=3)
    assert res.count[1, 2] == 2
    assert res.flags[1, 2] == stacking.FLAG_FEW
    assert np.isfinite(res.data[1, 2])
    assert res.data[1, 2] == pytest.approx((frames[6][1, 2] + frames[7][1, 2]) / 2, rel=1e-6)
    assert res.count[9, 9] == 7 and res.flags[9, 9] == 0
    assert res.header[kw.MINACC] == 3


def test_saturation_excluded_counted_and_flagged():
    frames = [f.astype(np.float32) for f in bias_like(10, spikes=False)]
    for f in frames[:6]:
        f[2, 3] = 65520.0                     # saturated in most inputs -> flagged
    for f in frames[:3]:
        f[4, 5] = 65535.0                     # saturated in a few -> excluded, flagged partial
    master_bias = np.full(frames[0].shape, 1000.0)
    res = stacking.combine(frames, method="mean", saturation=65520, subtract=master_bias)
    assert res.flags[2, 3] & stacking.FLAG_SATURATED
    assert res.count[2, 3] == 4
    # the mean of the unsaturated rest is biased low (the bright tail was cut): flagged
    assert res.flags[4, 5] == stacking.FLAG_PARTSAT and res.count[4, 5] == 7
    expected = np.mean([f[4, 5] for f in frames[3:]]) - 1000.0
    assert res.data[4, 5] == pytest.approx(expected, rel=1e-6)
    np.testing.assert_array_equal(res.inputs["NSAT"], [2, 2, 2, 1, 1, 1, 0, 0, 0, 0])
    assert res.header[kw.SATLEVEL] == 65520.0


def test_noise_and_stderr_match_input_sigma():
    sigma, n = 7.0, 30
    frames = gaussian_frames(n, shape=(200, 160), sigma=sigma, seed=5)
    npix = 200 * 160
    res = stacking.combine(frames, method="mean")
    # the median over pixels of a sample std with n-1 degrees of freedom is
    # sigma sqrt(median(chi2_{n-1}) / (n-1)); its error: 1.2533 x (sd of one sample std,
    # sigma / sqrt(2 (n-1))) / sqrt(pixels)
    expected = sigma * math.sqrt(sps.chi2.median(n - 1) / (n - 1))
    se = 1.2533 * sigma / math.sqrt(2 * (n - 1)) / math.sqrt(npix)
    assert_close(float(np.median(res.noise)), expected, se, what="median noise")
    assert_close(float(np.median(res.stderr)), expected / math.sqrt(n), se / math.sqrt(n),
                 what="median stderr")
    assert_close(float(np.std(res.data)), sigma / math.sqrt(n),
                 sigma / math.sqrt(n) / math.sqrt(2 * npix), what="master scatter")
    # sigma clipping against each pixel's own scale trims the tails: the accepted samples'
    # std is low, and the master's actual scatter exceeds its reported error by the
    # documented factor; with the row's pooled scale as a floor (default) almost nothing is
    # clipped and the factor is ~1.001
    for pooled in (False, True):
        clipped = stacking.combine(frames, method="sigclip", pooled_floor=pooled)
        if not pooled:
            assert np.median(clipped.noise) < expected
        ratio = np.std(clipped.data) / np.sqrt(np.mean(clipped.stderr.astype(np.float64) ** 2))
        factor = clipped_error_factor(n, pooled_floor=pooled)
        assert_close(float(ratio), factor, ratio / math.sqrt(2 * npix),
                     what=f"sigclip scatter / reported error, pooled_floor={pooled}")


def test_scale_and_subtract_array_and_callable():
    rng = np.random.default_rng(6)
    shape = (33, 41)
    pattern = rng.uniform(0.8, 1.2, shape)
    levels = np.array([1000.0, 2000.0, 3000.0, 1500.0, 2500.0])
    biases = [np.full(shape, 500.0) + rng.normal(0, 1, shape) for _ in levels]
    frames = [(lvl * pattern + b).astype(np.float32) for lvl, b in zip(levels, biases)]
    common_bias = np.mean(biases, axis=0)
    calls = []
    lock = threading.Lock()

    def bias_model(i, start, stop):
        with lock:
            calls.append((i, start, stop))
        return biases[i][start:stop]

    res = stacking.combine(frames, method="mean", subtract=bias_model, scale=1 / levels,
                           memory_limit=5 * 41 * 50 * 2)  # several blocks
    np.testing.assert_allclose(res.data, pattern, rtol=2e-6)
    assert len({c[1] for c in calls}) > 1          # called block by block
    assert {c[0] for c in calls} == set(range(5))
    assert res.header[kw.SUBTRACT].startswith("callable")
    assert kw.SCALEMTH in res.header
    np.testing.assert_allclose(res.inputs["SCALE"], 1 / levels)

    res2 = stacking.combine(frames, method="mean", subtract=common_bias, scale=1 / levels)
    expected = np.mean([(f - common_bias) / lvl for f, lvl in zip(frames, levels)], axis=0)
    np.testing.assert_allclose(res2.data, expected, rtol=2e-6)
    assert res2.header[kw.SUBTRACT] == "array"


def test_sigclip_matches_astropy_cumulative_clipping():
    from astropy.stats import sigma_clip

    # continuous values: no zero MAD, where the two deliberately differ
    rng = np.random.default_rng(7)
    frames = [(f + rng.uniform(-8, 8, f.shape)).astype(np.float32).astype(np.float64)
              for f in bias_like(15, seed=7)]
    frames[0][0, :5] = np.nan
    cube = np.stack(frames)
    mad = functools.partial(stacking_mad_std, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # callables force astropy's cumulative (per-axis) algorithm
        ref = sigma_clip(cube, sigma=3, maxiters=None, cenfunc=np.nanmedian, stdfunc=mad,
                         axis=0, masked=True)
    res = stacking.combine(frames, method="sigclip", sigma_low=3.0, sigma_high=3.0,
                           maxiters=None, guard=False, pooled_floor=False)
    np.testing.assert_array_equal(res.count, (~ref.mask).sum(axis=0))
    np.testing.assert_allclose(res.data, ref.mean(axis=0).filled(np.nan), rtol=1e-6)
    np.testing.assert_allclose(res.noise, ref.std(axis=0, ddof=1).filled(np.nan), rtol=1e-5)


def stacking_mad_std(data, axis=None):
    med = np.nanmedian(data, axis=axis, keepdims=True)
    return np.nanmedian(np.abs(data - med), axis=axis) * stacking.MAD_TO_STD


def test_zero_mad_falls_back_to_std_on_quantised_samples():
    # 20 frames of one quantised pixel: 11 at the median, the rest +-16, one cosmic ray
    values = np.array([1600] * 11 + [1584] * 4 + [1616] * 4 + [9000], dtype=np.float32)
    frames = [np.full((2, 3), v, dtype=np.float32) for v in values]
    res = stacking.combine(frames, method="sigclip", maxiters=None)
    assert res.count[0, 0] == 19                      # only the cosmic ray went
    assert res.data[0, 0] == pytest.approx(1600.0)
    assert res.noise[0, 0] == pytest.approx(np.std(values[:-1], ddof=1), rel=1e-6)
    assert res.flags[0, 0] == 0
    if stacking.HAVE_NUMBA:  # the numpy fallback agrees
        import unittest.mock as mock

        with mock.patch.object(stacking, "HAVE_NUMBA", False):
            slow = stacking.combine(frames, method="sigclip", maxiters=None)
        assert_same_result(res, slow)


def test_median_matches_numpy_for_even_and_odd_counts():
    frames = gaussian_frames(6, seed=8)
    frames[0][0, 0] = np.nan  # 5 valid samples there
    res = stacking.combine(frames, method="median")
    np.testing.assert_allclose(res.data, np.nanmedian(np.stack(frames), axis=0), rtol=1e-7)


# ------------------------------------------------------------------ implementation checks
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 33, 64, 65])
def test_pruned_batcher_network_sorts(n):
    lo, hi = kernels.batcher_network(n)
    assert np.all(lo < hi) and (n < 2 or hi.max() < n)
    rng = np.random.default_rng(n)
    x = rng.integers(0, 4, size=(n, 500)).astype(np.float32)   # many ties
    x[:, :3] = np.inf
    ref = np.sort(x, axis=0)
    tmp = np.empty(x.shape[1], np.float32)
    if stacking.HAVE_NUMBA:
        kernels._sort_columns(x, lo, hi, 0, x.shape[1], tmp)
    else:  # pragma: no cover
        kernels._sort_columns_py(x, lo, hi, 0, x.shape[1], tmp)
    np.testing.assert_array_equal(x, ref)


@pytest.mark.skipif(not stacking.HAVE_NUMBA, reason="numba not importable")
@pytest.mark.parametrize("method", stacking.METHODS)
@pytest.mark.parametrize("n", [4, 7, 20])
def test_numba_kernel_equals_numpy_fallback(method, n, monkeypatch):
    frames = [f.astype(np.float32) for f in bias_like(n, seed=n)]
    rng = np.random.default_rng(n)
    for f in frames:
        f[rng.random(f.shape) < 0.05] = np.nan
    frames[0][:, 0] = 65520.0
    kwargs = dict(method=method, saturation=65520, maxiters=None, min_accepted=2)
    fast = stacking.combine(frames, **kwargs)
    monkeypatch.setattr(stacking, "HAVE_NUMBA", False)
    slow = stacking.combine(frames, **kwargs)
    assert_same_result(fast, slow)
    assert fast.count.min() < n  # the NaNs did reach the kernels


@pytest.mark.skipif(not stacking.HAVE_NUMBA, reason="numba not importable")
@pytest.mark.parametrize("n", [3, 4, 9, 20, 33, 50])
def test_vectorised_first_clip_equals_scalar_clipping(n):
    """The pixel-vectorised first iteration changes no bit of the scalar clipping."""
    rng = np.random.default_rng(n)
    cases = 0
    for quantised, guard, min_scale, maxiters, floored in [
            (False, True, 0.0, 5, False), (True, True, 0.0, 5, False),
            (True, False, 32.0, 0, False), (True, True, 16.0, 1, False),
            (False, True, 0.0, 5, True), (True, True, 16.0, 0, True)]:
        x = rng.normal(100.0, 2.0, (n, 3000))
        if quantised:  # many ties: zero MADs, guards and widened bounds all happen
            x = np.round(x / 2) * 16
        hit = rng.random(x.shape) < 0.01
        x[hit] += rng.integers(20, 2000, hit.sum()) * 16
        x = x.astype(np.float32)
        x[rng.random(x.shape) < 0.002] = np.inf  # missing samples take the scalar path
        net_lo, net_hi = kernels.batcher_network(n)
        # per-pixel scale floors around the typical scale (the pooled floor's role)
        floor = rng.uniform(0.0, 3.0, 3000) * (8 if quantised else 1) if floored else np.empty(0)
        outs = []
        for fast in (True, False):
            y = x.copy()
            out = (np.empty(3000, np.float32), np.empty(3000, np.float32),
                   np.empty(3000, np.int16))
            nrej = kernels._combine_kernel(y, 3000, net_lo, net_hi, 2, 3.0, 3.0, maxiters,
                                           min_scale, floor, guard, 320, *out, fast)
            outs.append((nrej, *out))
        assert outs[0][0] == outs[1][0]
        for a, b in zip(outs[0][1:], outs[1][1:]):
            np.testing.assert_array_equal(a, b)
        cases += outs[0][0] > 0
    assert cases == 6  # every case did clip something


def test_stored_uint16_read_equals_generic_read(tmp_path, monkeypatch):
    """Stored FITS bytes prepared in one pass = read_rows + prepare, saturation and subtraction
    included."""
    frames = bias_like(7, shape=(33, 41), seed=3)
    frames[2][5, :] = 65520
    paths = write_frames(tmp_path, frames)
    sub = np.random.default_rng(1).normal(5.0, 1.0, (33, 41))
    kwargs = dict(saturation=65520, subtract=sub, scale=np.linspace(0.5, 2.0, 7), workers=2)
    direct = stacking.combine(paths, **kwargs)
    monkeypatch.setattr(stacking._FileSource, "unsigned16", property(lambda self: False))
    generic = stacking.combine(paths, **kwargs)
    assert_same_result(direct, generic, rtol=0)
    np.testing.assert_array_equal(direct.inputs["NSAT"], generic.inputs["NSAT"])
    assert direct.inputs["NSAT"].iloc[2] == 41


def test_block_size_independence(caplog):
    frames = bias_like(9, shape=(37, 29), seed=9)
    ref = stacking.combine(frames)
    with caplog.at_level(logging.WARNING, logger="utils.stack.combine"):
        tiny = stacking.combine(frames, memory_limit=1, workers=2)
    assert "1-row blocks" in caplog.text
    assert_same_result(ref, tiny, rtol=0)
    np.testing.assert_array_equal(ref.data, tiny.data)


def test_plan_blocks_respects_budget_and_caps():
    plan = stacking.plan_blocks(50, (2048, 2048), 1e12, 2)
    assert plan.rows * 50 * 2048 * 4 <= stacking.BLOCK_CAP_BYTES
    small = stacking.plan_blocks(40, (512, 512), 8e6, 2)
    big = stacking.plan_blocks(10, (512, 512), 8e6, 2)
    assert small.rows < big.rows
    assert small.workers * small.block_bytes <= 8e6
    one = stacking.plan_blocks(10, (100, 1000), 50_000, 4)   # one row fits, four do not
    assert one.rows == 1 and one.workers == 1


def test_shape_mismatch_names_first_bad_input(tmp_path):
    frames = gaussian_frames(4)
    frames[2] = np.zeros((10, 10), np.float32)
    with pytest.raises(FrameError, match=r"inputs\[2\]"):
        stacking.combine(frames)
    good = write_frames(tmp_path, bias_like(3, shape=(20, 30)))
    bad = write_frames(tmp_path, bias_like(2, shape=(21, 30)), prefix="odd")
    with pytest.raises(FrameError, match="odd000.fits"):
        stacking.combine(good + bad)
    with pytest.raises(InsufficientFramesError):
        stacking.combine([])
    with pytest.raises(ValueError, match="method"):
        stacking.combine(gaussian_frames(3), method="mode")


# ------------------------------------------------------------------ files and products
def test_file_inputs_equal_array_inputs(tmp_path, monkeypatch):
    frames = bias_like(11, shape=(45, 52), seed=10)
    paths = write_frames(tmp_path, frames)
    for method in stacking.METHODS:
        from_files = stacking.combine(paths, method=method, workers=2)
        from_arrays = stacking.combine(frames, method=method, workers=1)
        assert_same_result(from_files, from_arrays, rtol=0)
    assert list(from_files.inputs["PATH"]) == [str(p) for p in paths]
    # many inputs: files are opened per read instead of kept open
    monkeypatch.setattr(stacking, "MAX_OPEN_FILES", 4)
    per_read = stacking.combine(paths, workers=2, progress_bar=True)
    assert_same_result(per_read, stacking.combine(frames), rtol=0)
    with pytest.raises(ValueError, match="mix"):
        stacking.combine([paths[0], frames[1], frames[2]])


def test_header_metadata_and_inputs_table():
    frames = gaussian_frames(4)
    meta = [{kw.TEMP: t, kw.EXPTIME: e, "ATTEMPT": "a1"}
            for t, e in [(-10.0, 1.0), (-9.5, 2.0), (-10.5, 1.0), (-10.0, 4.0)]]
    res = stacking.combine(frames, metadata=meta, sigma_low=2.5, sigma_high=4.0, maxiters=3,
                           product="MASTER_DARK")
    h = res.header
    assert (h[kw.CLIPLO], h[kw.CLIPHI], h[kw.CLIPITER]) == (2.5, 4.0, 3)
    assert h[kw.CLIPCEN] == "median" and h[kw.CLIPDEV] == "mad_std"
    assert (h[kw.TMIN], h[kw.TMAX], h[kw.TAVG]) == (-10.5, -9.5, -10.0)
    assert (h[kw.EMIN], h[kw.EMAX], h[kw.EAVG]) == (1.0, 4.0, 2.0)
    assert h[kw.PRODUCT] == "MASTER_DARK" and kw.PIPEVER in h and kw.DATE in h
    assert list(res.inputs.columns[:3]) == ["PATH", kw.TEMP, kw.EXPTIME]
    assert list(res.inputs["ATTEMPT"]) == ["a1"] * 4
    assert kw.CLIPLO not in stacking.combine(frames, method="median").header


@pytest.mark.parametrize("exptime", [0.15, 0.05, 0.35, 0.7])
def test_mean_exposure_of_equal_inputs_is_their_value(exptime):
    """Ten frames of 0.15 s give EAVG 0.15 (np.mean gave 0.14999999999999997, which the flat
    pipeline's masters.csv showed as the set's exposure); unequal ones their mean within
    [EMIN, EMAX]."""
    frames = gaussian_frames(10)
    res = stacking.combine(frames, metadata=[{kw.EXPTIME: exptime, kw.TEMP: 0.1}] * 10)
    assert repr(res.header[kw.EAVG]) == repr(exptime)
    assert repr(res.header[kw.TAVG]) == repr(0.1)
    uneven = [{kw.EXPTIME: 0.1 + 1e-17 * i} for i in range(10)] + [{kw.EXPTIME: 0.3}]
    res = stacking.combine(gaussian_frames(11), metadata=uneven)
    assert 0.1 <= res.header[kw.EAVG] <= 0.3
    assert res.header[kw.EAVG] == pytest.approx((10 * 0.1 + 0.3) / 11, rel=1e-15)


def test_write_round_trips_through_ccddata(tmp_path):
    from astropy.nddata import CCDData, StdDevUncertainty

    frames = gaussian_frames(5, seed=11)
    for f in frames:
        f[0, 0] = np.nan
    res = stacking.combine(frames, metadata=[{kw.TEMP: 20.0}] * 5, min_accepted=1)
    path = res.write(tmp_path / "master.fits", unit="adu",
                     extra_header={kw.BIASFILE: ("bias.fits", "master bias used")})
    ccd = CCDData.read(path)
    assert str(ccd.unit) == "adu"
    np.testing.assert_array_equal(ccd.data, res.data)
    np.testing.assert_array_equal(ccd.mask, res.mask)
    assert ccd.mask[0, 0] and ccd.mask.sum() == 1
    assert isinstance(ccd.uncertainty, StdDevUncertainty)
    np.testing.assert_array_equal(ccd.uncertainty.array, res.stderr)
    assert ccd.header[kw.BIASFILE] == "bias.fits" and ccd.header[kw.NCOMBINE] == 5
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(hdul["NCOMB"].data, res.count)
        np.testing.assert_array_equal(hdul["FLAGS"].data, res.flags)
        np.testing.assert_array_equal(hdul["NOISE"].data, res.noise)
        assert hdul["NOISE"].header[kw.BUNIT] == "adu"
        assert len(hdul["INPUTS"].data) == 5


@pytest.mark.skipif(shutil.which("fitsverify") is None, reason="fitsverify not installed")
def test_written_master_passes_fitsverify(tmp_path):
    frames = gaussian_frames(4, seed=12)
    frames[1][2, 2] = np.nan
    res = stacking.combine(frames, saturation=5000, metadata=[{kw.EXPTIME: 2.0}] * 4,
                           scale=[0.5] * 4)
    path = res.write(tmp_path / "m.fits", unit="adu / s")
    out = subprocess.run(["fitsverify", "-q", "-e", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verification OK" in out.stdout, out.stdout


# ------------------------------------------------------------------ ccdproc equivalence
@pytest.mark.parametrize("method", ["median", "sigclip"])
def test_equivalent_to_ccdproc_combine(tmp_path, method):
    ccdproc = pytest.importorskip("ccdproc")
    from astropy.stats import mad_std

    paths = write_frames(tmp_path, bias_like(9, shape=(48, 40), seed=13))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "median":
            ref = ccdproc.combine([str(p) for p in paths], method="median", unit="adu")
        else:
            ref = ccdproc.combine([str(p) for p in paths], method="average", unit="adu",
                                  sigma_clip=True, sigma_clip_low_thresh=3,
                                  sigma_clip_high_thresh=3, sigma_clip_func=np.ma.median,
                                  sigma_clip_dev_func=mad_std)
    ours = stacking.combine(paths, method=method, sigma_low=3.0, sigma_high=3.0, maxiters=1,
                            guard=False, pooled_floor=False)
    same = np.ones(ours.data.shape, bool)
    if method == "sigclip":
        assert ours.header[kw.NREJECT] > 0  # the clipping did something to compare
        # deliberate difference: where over half the samples are equal (MAD = 0)
        # ccdproc keeps only those, we clip with the samples' std instead
        cube = np.stack([fits.getdata(p).astype(float) for p in paths])
        med = np.median(cube, axis=0)
        same = np.median(np.abs(cube - med), axis=0) > 0
        assert 0 < (~same).sum() < 0.1 * same.size
        kept_by_ccdproc = (cube == med).sum(axis=0)[~same]  # only the median's value
        assert (ours.count[~same] >= kept_by_ccdproc).all()
        assert (ours.count[~same] > kept_by_ccdproc).mean() > 0.5
    np.testing.assert_allclose(ours.data[same], ref.data[same], rtol=1e-6, atol=0)


# ------------------------------------------------------------------ memory
MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    sys.path.insert(0, sys.argv[1])
    from utils.stack import combine as stacking
    stacking.warmup()
    res = stacking.combine(sys.argv[2:], method="sigclip", memory_limit=8e6, workers=2)
    print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "ncombine": res.header["NCOMBINE"]}))
""")


def test_peak_memory_does_not_grow_with_frame_count(tmp_path):
    stacking.warmup()  # numba cache written once, so both children just load it
    frames = bias_like(40, shape=(1024, 1024), seed=14, spikes=False)
    paths = [str(p) for p in write_frames(tmp_path, frames)]
    del frames
    rss = {}
    for n in (10, 40):
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(ROOT), *paths[:n]],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout.strip().splitlines()[-1])
        assert info["ncombine"] == n
        rss[n] = info["maxrss_kb"]
    # loading 40 frames of 1024x1024 as float32 would add 160 MB (~60 %) on top of 10
    assert abs(rss[40] - rss[10]) < 0.15 * rss[10], rss


@pytest.mark.parametrize("method, n, sigma, expected", [
    ("mean", 25, None, 1.0),
    # the exact variance of a median of 25 Gaussian samples is ~2 % below the asymptotic
    # pi/2 sigma^2/n used for its error, so its scatter is ~1 % below the reported error
    ("median", 25, None, 0.99),
    *[("sigclip", n, None, clipped_factor(n)) for n in (10, 20, 40, 60)],
    *[("sigclip", n, 3.0, clipped_factor(n, 3.0)) for n in (10, 20, 40, 60)]])
def test_reported_stderr_matches_actual_scatter_of_master(method, n, sigma, expected):
    """The standard error is checked against truth: the scatter of masters of pure noise.

    A sigma-clipped mean of few frames scatters more than noise/sqrt(count) says: the MAD
    scale of few samples is noisy and clips good samples (documented in utils.stack.combine,
    3.5 % at 10 frames at the default 4 sigma, 13 % at 3 sigma).  The plain ratio of this
    independent sample (other seed, other scale; not the variance-reduced estimate of
    clipped_error_factor) is bounded by 5 sigma (0.46 % for 24000 pixels): a regression of
    the guard (21 % at 10 frames, 3 sigma) or of the error formula fails.
    """
    rng = np.random.default_rng(42)
    frames = [rng.normal(100.0, 5.0, (160, 150)).astype(np.float32) for _ in range(n)]
    clip = {} if sigma is None else {"sigma_low": sigma, "sigma_high": sigma}
    res = stacking.combine(frames, method=method, workers=1, **clip)
    actual = np.std(res.data - 100.0)
    reported = np.sqrt(np.mean(res.stderr.astype(np.float64) ** 2))
    ratio = actual / reported
    assert_close(float(ratio), expected, ratio / math.sqrt(2 * res.data.size),
                 what=f"{method} {n} frames: actual scatter / reported error")


def test_min_scale_stops_clipping_collapse_on_quantised_near_ties():
    # 12-bit-like samples (steps of 16 adu, noise ~1.2 steps) minus a per-frame offset of a
    # fraction of a step: over half of a pixel's samples can nearly tie, the MAD collapses
    rng = np.random.default_rng(3)
    n, shape = 8, (100, 200)
    frames = [np.round(rng.normal(0, 1.2, shape)).astype(np.float32) * 16 for _ in range(n)]
    shift = rng.uniform(-0.3, 0.3, n)

    def sub(i, start, stop):
        return np.full((stop - start, shape[1]), shift[i], np.float32)
    bare = stacking.combine(frames, subtract=sub, workers=1, pooled_floor=False)
    floored = stacking.combine(frames, subtract=sub, workers=1, min_scale=32.0,
                               pooled_floor=False)
    pooled = stacking.combine(frames, subtract=sub, workers=1)  # the row's scale: no collapse
    assert (pooled.noise < 1).mean() < (bare.noise < 1).mean() / 5
    assert (bare.noise < 1).mean() > 0.005          # collapsed noise without the floor
    assert (floored.noise < 1).mean() < (bare.noise < 1).mean() / 5  # left: truly tied samples
    assert floored.count.mean() > bare.count.mean()
    assert floored.header["CLIPMIN"] == 32.0 and "CLIPMIN" not in bare.header


def test_guard_keeps_good_samples_and_still_rejects_outliers():
    rng = np.random.default_rng(11)
    frames = [rng.standard_normal((120, 200)).astype(np.float32) for _ in range(10)]
    frames[3][10, 10], frames[6][20, 20] = 40.0, -25.0
    # the own-scale rule, where the guard matters (with the pooled floor it rarely acts)
    plain = stacking.combine(frames, guard=False, workers=1, pooled_floor=False)
    guarded = stacking.combine(frames, workers=1, pooled_floor=False)
    assert guarded.header["CLIPGRD"] and not plain.header["CLIPGRD"]
    # fewer good samples clipped, so the master scatters less about the truth (0)
    assert guarded.count.mean() > plain.count.mean()
    assert np.std(guarded.data) < np.std(plain.data)
    assert guarded.count[10, 10] == 9 and guarded.count[20, 20] == 9
    if stacking.HAVE_NUMBA:  # the numpy fallback agrees
        import unittest.mock as mock

        with mock.patch.object(stacking, "HAVE_NUMBA", False):
            slow = stacking.combine(frames, workers=1, pooled_floor=False)
        assert_same_result(guarded, slow)


@pytest.mark.parametrize("method", ["sigclip", "mean", "median"])
def test_identical_quantised_samples_get_the_quantisation_noise(method):
    """Three frames quantised in 16-adu steps with a read noise of 1.5 steps: in ~3 % of the
    pixels the three samples are equal and their sample std is 0, an error of 0 (pulls of
    10^6 in the reconstruction statistics of 3-frame bias masters, infinite weight in a
    fit).  With quantum=16 those pixels get NOISE 16/sqrt(12) and the rest are untouched."""
    rng = np.random.default_rng(5)
    frames = [(np.round(rng.normal(3200.0, 24.0, (120, 150)) / 16) * 16).astype(np.float32)
              for _ in range(3)]
    plain = stacking.combine(frames, method=method, min_accepted=1, workers=1)
    floored = stacking.combine(frames, method=method, min_accepted=1, workers=1, quantum=16.0)
    tied = (plain.noise == 0) & (plain.count >= 2)
    assert 0.01 < tied.mean() < 0.08, tied.mean()
    np.testing.assert_allclose(floored.noise[tied], 16 / math.sqrt(12), rtol=1e-6)
    assert (floored.stderr[tied] > 0).all()
    np.testing.assert_array_equal(floored.noise[~tied], plain.noise[~tied])
    np.testing.assert_array_equal(floored.stderr[~tied], plain.stderr[~tied])
    np.testing.assert_array_equal(floored.data, plain.data)
    assert floored.header[kw.NOISEMIN] == pytest.approx(16 / math.sqrt(12))
    assert kw.NOISEMIN not in plain.header


@pytest.mark.parametrize("n, main_rate", [(3, 0.25), (5, 0.13)])
def test_few_frame_sigclip_keeps_gaussian_samples(n, main_rate):
    """With few frames the pixel's own MAD scale is noisy: clipping against it alone rejected a
    genuine Gaussian sample in 25 % of the pixels at 3 frames (all masked by min_accepted) and
    13 % at 5.  With the row's pooled scale as a floor: ~0.07 %.  Cosmic rays (+50 sigma) are
    still rejected, and the result does not depend on the block plan."""
    rng = np.random.default_rng(7 + n)
    shape = (100, 200)
    frames = [(1000 + 30 * rng.standard_normal(shape)).astype(np.float32) for _ in range(n)]
    res = stacking.combine(frames, method="sigclip", workers=1)
    npix = frames[0].size
    clipped = np.mean(res.count < n)
    # a Gaussian sample beyond 4 of the row's sigmas: 6e-5 per sample; the pooled scale's own
    # ~5 % error raises that to ~1e-3 per pixel.  0.5 % is > 10 binomial sigmas above it and
    # far below the old rate (> 100 binomial sigmas of 20000 pixels)
    assert clipped < 0.005
    assert np.mean(res.mask) < 0.005
    old = stacking.combine(frames, method="sigclip", workers=1, pooled_floor=False)
    assert abs(np.mean(old.count < n) - main_rate) < 5 * math.sqrt(main_rate / npix)
    assert res.header["CLIPPOOL"] is True and old.header["CLIPPOOL"] is False
    # cosmic rays, one frame each: every one rejected
    hit = rng.random(shape) < 0.002
    ray = [f.copy() for f in frames]
    ray[1][hit] += 50 * 30
    with_rays = stacking.combine(ray, method="sigclip", workers=1)
    assert np.all(with_rays.count[hit] == n - 1)
    # the floor is pooled per image row: blocks of a few rows give the same master
    tiny = stacking.combine(ray, method="sigclip", workers=2, memory_limit=1)
    np.testing.assert_array_equal(tiny.data, with_rays.data)
    np.testing.assert_array_equal(tiny.count, with_rays.count)


def test_pooled_floor_keeps_noisy_pixels_own_scale():
    """Hot pixels (4x the row's noise) are clipped against their own, larger scale: a floor
    pooled over the row never makes their clipping stricter than without it."""
    rng = np.random.default_rng(11)
    shape, n = (100, 200), 5
    sig = np.full(shape, 30.0)
    hot = rng.random(shape) < 0.1
    sig[hot] *= 4
    frames = [(1000 + sig * rng.standard_normal(shape)).astype(np.float32) for _ in range(n)]
    new = stacking.combine(frames, method="sigclip", workers=1)
    old = stacking.combine(frames, method="sigclip", workers=1, pooled_floor=False)
    assert np.all(new.count[hot] >= old.count[hot])
    # the floor (~1/4 of a hot pixel's sigma) helps little there: ~10.6 % vs 13 % clipped
    assert np.mean(new.count[hot] < n) > 0.05


@pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="needs numba")
@pytest.mark.parametrize("n", [2, 3, 5, 12])
def test_pooled_floor_numba_equals_numpy(n):
    """The row-variance medians of the pooled floor: numba and numpy bit for bit, and equal
    (to rounding) to numpy's var/median over the pixels with every sample valid."""
    rng = np.random.default_rng(n)
    rows, width = 9, 57
    x = (1000 + 30 * rng.standard_normal((n, rows * width + 5))).astype(np.float32)
    x[rng.random(x.shape) < 0.04] = np.inf
    x[:, 2 * width:3 * width][:, 30:] = np.inf  # a row with too few valid pixels
    fast, slow = np.zeros(rows), np.zeros(rows)
    pooled_floor._row_var_median(x, rows, width, 32, fast)
    pooled_floor._row_var_median_numpy(x, rows, width, 32, slow)
    np.testing.assert_array_equal(fast, slow)
    v = x[:, :rows * width].reshape(n, rows, width).astype(np.float64)
    full = np.isfinite(v).all(axis=0)
    ref = [np.median(v[:, r][:, full[r]].var(axis=0, ddof=1)) if full[r].sum() >= 32 else 0.0
           for r in range(rows)]
    np.testing.assert_allclose(fast, ref, rtol=1e-12)
    assert fast[2] == 0.0


@pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="needs numba")
@pytest.mark.parametrize("n", [2, 3, 5, 10, 33])
def test_fused_pooled_floor_equals_separate_pass(n):
    """The kernel's own row-by-row pooled floor (pool_width) gives bit for bit the masters of
    the separate pass (pooled_scale_floor, then the kernel with that floor): quantised and
    continuous samples, missing ones, cosmic rays, a row with too few valid pixels, odd and
    even numbers of valid pixels per row."""
    rng = np.random.default_rng(100 + n)
    for quantised, width, rows in ((True, 64, 7), (False, 57, 9), (True, 200, 3)):
        npix = rows * width
        x = rng.normal(100.0, 2.0, (n, npix + 16))
        if quantised:
            x = np.round(x / 2) * 16
        hit = rng.random(x.shape) < 0.01
        x[hit] += rng.integers(20, 2000, hit.sum()) * 16
        x = x.astype(np.float32)
        x[rng.random(x.shape) < 0.01] = np.inf
        x[:, width:2 * width][:, 20:] = np.inf  # a row with too few valid pixels: no floor
        net_lo, net_hi = kernels.batcher_network(n)
        outs = []
        for fused in (True, False):
            y = x.copy()
            out = (np.empty(npix, np.float32), np.empty(npix, np.float32),
                   np.empty(npix, np.int16))
            floor = np.empty(0) if fused else pooled_floor.pooled_scale_floor(y, rows, width)
            nrej = kernels._combine_kernel(y, npix, net_lo, net_hi, 2, 4.0, 4.0, 5, 8.0, floor,
                                           True, 48, *out, True,
                                           width if fused else 0,
                                           stack_stats.chi2_median_ratio(n - 1), 32)
            outs.append((nrej, *out))
        assert outs[0][0] == outs[1][0]
        for a, b in zip(outs[0][1:], outs[1][1:]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="needs numba")
def test_pooled_floor_median_equals_numpy():
    """The branch-free selection of the fused floor gives np.median's number: ties, sorted
    and reversed input, odd and even sizes, 1 to 400 values."""
    rng = np.random.default_rng(5)
    for t in range(3000):
        m = int(rng.integers(1, 400))
        kind = t % 4
        v = (rng.normal(size=m) if kind == 0 else rng.integers(0, 5, m).astype(float)
             if kind == 1 else np.round(rng.chisquare(3, m) * 4) / 4 if kind == 2
             else np.sort(rng.normal(size=m))[::1 if t % 8 == 3 else -1].copy())
        assert pooled_floor._median(v.copy(), m, np.empty(m)) == np.median(v)


@pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="needs numba")
@pytest.mark.parametrize("n", [3, 5, 10])
@pytest.mark.parametrize("rate", [0.0005, 0.004, 0.05])
def test_first_clip_scalar_handover_equals_scalar_clipping(n, rate):
    """Rare zero-MAD or flagged pixels handed to the scalar loop (state 2) and frequent ones
    done in the vectorised pass give the scalar loop's numbers: sparse and dense outliers,
    quantised samples with a few or many zero MADs, with and without the pooled floor."""
    rng = np.random.default_rng(int(n + 1000 * rate))
    npix = 4096
    for quantised, floored in ((False, False), (True, False), (True, True)):
        x = rng.normal(100.0, 3.0 if quantised else 2.0, (n, npix))
        if quantised:
            x = np.round(x / 16) * 16
        hit = rng.random(x.shape) < rate
        x[hit] += rng.integers(20, 2000, hit.sum()) * 16
        x = x.astype(np.float32)
        net_lo, net_hi = kernels.batcher_network(n)
        floor = rng.uniform(0.0, 3.0, npix) if floored else np.empty(0)
        outs = []
        for fast in (True, False):
            y = x.copy()
            out = (np.empty(npix, np.float32), np.empty(npix, np.float32),
                   np.empty(npix, np.int16))
            outs.append((kernels._combine_kernel(y, npix, net_lo, net_hi, 2, 4.0, 4.0, 5, 4.0,
                                                 floor, True, 1024, *out, fast), *out))
        assert outs[0][0] == outs[1][0]
        for a, b in zip(outs[0][1:], outs[1][1:]):
            np.testing.assert_array_equal(a, b)


class _LevelModel:
    """A subtract callable that is an object (the header names its class)."""

    def __init__(self, level):
        self.level = level

    def __call__(self, i, start, stop):
        return np.full((stop - start, 41), self.level + i)


@pytest.mark.parametrize("subtract", [None, "array", "function", "object"])
def test_deferred_finish_equals_combine(subtract):
    # combine(deferred=True) stacks now and computes the header statistics and inputs table
    # in finish(): the same images, cards (but DATE) and table as combine() bit for bit
    rng = np.random.default_rng(11)
    frames = [np.round(rng.normal(3000, 20, (33, 41)) / 16).astype(np.float32) * 16
              for _ in range(6)]
    frames[2][5, 7] = 70000.0  # saturated, counted in INPUTS.NSAT
    sub = {None: None, "array": np.full((33, 41), 100.0),
           "function": lambda i, start, stop: np.full((stop - start, 41), 90.0 + i),
           "object": _LevelModel(95.0)}[subtract]
    kwargs = dict(method="sigclip", subtract=sub, scale=np.linspace(0.9, 1.1, 6),
                  saturation=65520.0, quantum=16.0, min_scale=32.0, workers=2,
                  memory_limit=6 * 41 * 8 * 4, metadata=[{kw.TEMP: 20.0 + 0.1 * i,
                                                          kw.EXPTIME: 1.0} for i in range(6)],
                  product="MASTER_TEST")
    direct = stacking.combine(frames, **kwargs)
    stacked = stacking.combine(frames, deferred=True, **kwargs)
    assert isinstance(stacked, stacking.StackedMaster)
    later = stacked.finish()
    for name in ("data", "noise", "stderr", "count", "flags"):
        a, b = getattr(direct, name), getattr(later, name)
        assert a.dtype == b.dtype
        assert a.tobytes() == b.tobytes(), name
    images = [c.image for c in direct.header.cards if c.keyword != kw.DATE]
    assert images == [c.image for c in later.header.cards if c.keyword != kw.DATE]
    assert kw.MEDIAN in later.header and (subtract is None) == (kw.SUBTRACT not in later.header)
    assert direct.inputs.equals(later.inputs)


def _edge_samples(n, npix, seed):
    """float32 samples with ties, signed zeros, +inf (missing), all-missing and one-sample
    pixels and outliers: the cases where a changed compare-exchange or select would show."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (n, npix)).astype(np.float32) * 16
    x[rng.random(x.shape) < 0.15] = -0.0
    x[:, npix // 2:] = rng.normal(0.0, 1.0, (n, npix - npix // 2)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] *= 1000
    x[rng.random(x.shape) < 0.05] = np.inf
    x[:, 3] = np.inf
    x[1:, 4] = np.inf
    return x


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 50])
def test_sorting_network_is_the_plain_compare_exchange(n):
    """The network with its scratch store gives the numbers of the plain compare-exchange
    ``lo = a if a < b else b``, ``hi = b if a < b else a``, bit for bit (signed zeros
    included)."""
    x = _edge_samples(n, 300, n)
    ref = x.copy()
    lo, hi = kernels.batcher_network(n)
    for a, b in zip(lo, hi):
        u, v = ref[a].copy(), ref[b].copy()
        ref[a], ref[b] = np.where(u < v, u, v), np.where(u < v, v, u)
    sort = kernels._sort_columns if kernels.HAVE_NUMBA else kernels._sort_columns_py
    sort(x, lo, hi, 0, x.shape[1], np.empty(x.shape[1], np.float32))
    np.testing.assert_array_equal(x.view(np.int32), ref.view(np.int32))


@pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="needs numba")
@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 50])
def test_compiled_kernel_equals_its_python_source(n, monkeypatch):
    """The compiled combine kernel gives the numbers of its own Python source run by the
    interpreter (every helper replaced by its ``_py`` function), bit for bit: every method,
    with and without the guard, the pooled floor and the vectorised first iteration, on
    edge-case samples (ties, signed zeros, missing and one-sample pixels, outliers)."""
    width, rows = 24, 2
    npix = width * rows
    x0 = _edge_samples(n, npix, 100 + n)
    lo, hi = kernels.batcher_network(n)
    cases = [(method, guard, pool, fast) for method in (0, 1, 2) for guard in (True, False)
             for pool in (0, width) for fast in (True, False)
             if method == 2 or (guard and not pool and fast)]
    compiled = []
    for method, guard, pool, fast in cases:
        x = x0.copy()
        out = (np.empty(npix, np.float32), np.empty(npix, np.float32), np.empty(npix, np.int16))
        nrej = kernels._combine_kernel(x, npix, lo, hi, method, 3.0, 2.5, 5, 0.5, np.empty(0),
                                       guard, 16, *out, fast, pool if n >= 2 else 0, 0.9, 4)
        compiled.append((nrej, x, *out))
    for name in ("_sort_columns", "_kth_distance", "_range_std", "_clip_range", "_mad_pair",
                 "_count_outside", "_column_sums", "_masked_sum", "_masked_ss", "_first_clip",
                 "_row_variances", "_median", "_row_floor", "_finish_chunk", "_combine_kernel"):
        monkeypatch.setattr(kernels, name, getattr(kernels, name + "_py"))
    for (method, guard, pool, fast), (nrej, xc, *outc) in zip(cases, compiled):
        x = x0.copy()
        out = (np.empty(npix, np.float32), np.empty(npix, np.float32), np.empty(npix, np.int16))
        with np.errstate(all="ignore"):
            ref = kernels._combine_kernel(x, npix, lo, hi, method, 3.0, 2.5, 5, 0.5,
                                          np.empty(0), guard, 16, *out, fast,
                                          pool if n >= 2 else 0, 0.9, 4)
        assert nrej == ref
        np.testing.assert_array_equal(xc.view(np.int32), x.view(np.int32))
        for a, b in zip(outc, out):
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


_MASKED_STORES = """
import re, sys
import numpy as np
from numba.core.registry import CPUDispatcher
from utils.stack import kernels, keysort
x = np.random.default_rng(1).normal(size=(10, 96)).astype(np.float32)
x[2, ::7] = np.inf
lo, hi = kernels.batcher_network(10)
out = (np.empty(96, np.float32), np.empty(96, np.float32), np.empty(96, np.int16))
for method in (0, 1, 2):
    kernels._combine_kernel(x.copy(), 96, lo, hi, method, 3.0, 3.0, 5, 0.5, np.empty(0), True,
                            32, *out, True, 24 if method == 2 else 0, 0.9, 4)
keysort.warmup()  # the 16-bit key path
store = re.compile(r"vmaskmovp[sd]\\s+%[xy]mm\\d+,\\s*%[xy]mm\\d+,\\s*\\S*\\(")
for name, obj in sorted({**vars(kernels), **vars(keysort)}.items()):
    if isinstance(obj, CPUDispatcher) and obj.signatures:
        print(name, len(store.findall("".join(obj.inspect_asm().values()))))
"""


@pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="needs numba")
def test_compiled_kernels_have_no_masked_stores(tmp_path):
    """LLVM folds a select stored over its own operand into a ``vmaskmovps/pd`` store, which
    AMD Zen microcodes (the sorting network ran 3x slower): none in the compiled kernels
    (masked loads are harmless).  Compiled afresh in a subprocess with an empty numba cache
    (~20 s): numba does not show the machine code of cached functions."""
    import os

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _MASKED_STORES], capture_output=True,
                         text=True, env=env, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    counts = {name: int(n) for name, n in (line.split() for line in out.stdout.splitlines())}
    assert {"_combine_kernel", "_sort_columns", "_first_clip", "_finish_chunk",
            "_combine_keys", "_prepare_keys", "_keys_to_samples"} <= set(counts)
    assert not any(counts.values()), counts
