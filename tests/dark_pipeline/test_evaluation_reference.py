"""The evaluation's comparison of a master with a prediction (``_compare``) against the
numpy steps it replaced (kept here as the reference): the same table row, sample and maps,
bit for bit, with NaN, excluded, faint and zero pixels, float32 and float64 predictions."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from dark_pipeline import evaluation
from dark_pipeline.evaluation import _flat, _measured_err, _reduce, exact_median
from utils.jobs import Jobs
from utils.stack.tiles import pixel_blocks


class _Stack:
    """The two things ``_compare`` asks of a stack: its masters and one master's frames."""

    def __init__(self, frames):
        self.frames = frames
        self.masters = [SimpleNamespace(tavg=20.013, exptime=4.0, temperature=20.0)]

    @property
    def shape(self):
        return self.frames[0].shape

    def read_master(self, i):
        return tuple(f.copy() for f in self.frames)

    def master_tiles(self, min_tiles=1):
        # uneven tiles: the pulled pixels and masks are assembled across tile edges
        height = self.shape[0]
        edges = sorted({0, height, *(height * k // (min_tiles + 1) + k for k in
                                     range(1, min_tiles + 1) if height * k // (min_tiles + 1)
                                     + k < height)})
        return list(zip(edges[:-1], edges[1:]))

    def read_master_rows(self, i, r0, r1):
        return tuple(f[r0:r1].copy() for f in self.frames)


def _reference_compare(stack, i: int, synth, held_pred, held_err, exclude, pull_pixels, rng,
                       keep_maps: bool, held_cov=None):
    """``_compare`` before its masks and selections became compiled passes."""
    m = stack.masters[i]
    synth = np.asarray(synth())  # before the master: not on top of its read
    data, noise_err, suberr = stack.read_master(i)  # one master in memory at a time
    flat_real, flat_synth = data.reshape(-1), synth.reshape(-1)
    flat_noise, flat_sub = noise_err.reshape(-1), suberr.reshape(-1)
    # usable pixels, and those with a signal of 3 sigma at least, by blocks of pixels
    ok = np.empty(data.shape, bool)
    strong = np.empty(data.shape, bool)
    flat_ok, flat_strong = ok.reshape(-1), strong.reshape(-1)
    flat_excl = None if exclude is None else np.asarray(exclude).reshape(-1)
    for at in pixel_blocks(flat_ok.size):
        err = _measured_err(flat_noise, flat_sub, at)
        real = flat_real[at].astype(np.float64)
        good = np.isfinite(real) & np.isfinite(flat_synth[at]) & np.isfinite(err)
        if flat_excl is not None:
            good &= ~flat_excl[at]
        flat_ok[at] = good
        flat_strong[at] = good & (np.abs(real) >= 3 * err)
    del err, real, good
    # pulls against the held-out model, over its pixels (all, or the sample)
    at = slice(None) if pull_pixels is None else pull_pixels
    held_pred = _flat(held_pred, at, data.size)
    held_err = _flat(held_err, at, data.size)
    real_p = flat_real[at].astype(np.float64)
    var = _measured_err(flat_noise, flat_sub, at) ** 2 + held_err ** 2
    if held_cov is not None:
        var -= 2 * _flat(held_cov, at, data.size)
    with np.errstate(invalid="ignore"):
        sigma = np.sqrt(var)  # NaN where the covariance would leave no variance: not pulled
    del var
    ok_p = flat_ok[at] & np.isfinite(held_pred) & np.isfinite(sigma) & (sigma > 0)
    pull = (real_p - held_pred)[ok_p] / sigma[ok_p]
    del held_pred, held_err, real_p, sigma, ok_p, noise_err, suberr, flat_noise, flat_sub
    # |residual| and APE of the pixels used, made in place from their values
    # (each masked selection made once: the float32 values, in pixel order, that every
    # statistic below takes)
    real_strong = data[strong]
    ape = real_strong.astype(np.float64)
    ape -= synth[strong]
    ape /= real_strong
    del real_strong
    np.abs(ape, out=ape)
    ape *= 100
    n_strong = ape.size
    mape = float(np.mean(ape)) if ape.size else math.nan
    del ape
    real_ok, synth_ok = data[ok], synth[ok]
    diff = real_ok.astype(np.float64)
    diff -= synth_ok
    np.abs(diff, out=diff)
    mae = float(np.mean(diff)) if diff.size else math.nan
    del diff
    n_ok = real_ok.size
    row = {"Temperature (°C)": m.tavg, "Exposure (s)": m.exptime,
           "MAE [ADU]": mae, "MAPE [%]": mape,
           "PULL_MEAN": float(np.mean(pull)) if pull.size else math.nan,
           "PULL_STD": float(np.std(pull)) if pull.size else math.nan,
           "REAL_MEDIAN [ADU]": exact_median(real_ok.astype(np.float64)) if n_ok
           else math.nan,
           "SYNTH_MEDIAN [ADU]": exact_median(synth_ok.astype(np.float64)) if n_ok
           else math.nan,
           "NPIX": int(n_ok), "NPIX_MAPE": int(n_strong), "NPIX_PULL": int(pull.size),
           "TBIN": m.temperature}
    del real_ok, synth_ok
    idx = np.flatnonzero(ok)
    if idx.size > 5000:
        idx = rng.choice(idx, 5000, replace=False)
    sample = (flat_real[idx].astype(np.float64), flat_synth[idx].astype(np.float64))
    if not keep_maps:
        return row, sample, None
    real = data.astype(np.float64)
    resid = real - synth.astype(np.float64)
    del synth
    abs_err = np.where(ok, np.abs(resid), np.nan)
    ape_map = np.where(strong, 100 * np.abs(resid / np.where(strong, real, 1)), np.nan)
    return row, sample, (_reduce(abs_err), _reduce(ape_map))


def _frames(rng, shape):
    real = rng.normal(30, 12, shape).astype(np.float32)
    real[rng.random(shape) < 0.02] = np.nan
    real[rng.random(shape) < 0.01] = 0.0
    noise = rng.uniform(2, 8, shape).astype(np.float32)
    noise[rng.random(shape) < 0.01] = np.nan
    noise[rng.random(shape) < 0.005] = np.inf
    sub = rng.uniform(0.5, 3, shape).astype(np.float32)
    return real, noise, sub


def _same(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("synth_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("exclude_some", [True, False])
@pytest.mark.parametrize("pulled", ["all", "sample"])
@pytest.mark.parametrize("keep_maps", [True, False])
@pytest.mark.parametrize("helpers", [0, 1])
def test_compare_matches_reference(synth_dtype, exclude_some, pulled, keep_maps, helpers):
    """darkpar: also with the predictions and the master's row tiles run as jobs on two
    threads (the masks and the pulled pixels' errors assembled tile by tile)."""
    rng = np.random.default_rng(3)
    shape = (211, 733)  # > 2^17 pixels: exact_median's fast path
    frames = _frames(rng, shape)
    synth = (np.nan_to_num(frames[0], nan=30.0) + rng.normal(0, 3, shape)).astype(synth_dtype)
    synth[rng.random(shape) < 0.01] = np.nan
    exclude = rng.random(shape) < 0.03 if exclude_some else None
    pixels = None if pulled == "all" else np.sort(rng.choice(synth.size, 5000, replace=False))
    n_pull = synth.size if pixels is None else pixels.size
    held = rng.normal(30, 12, n_pull).astype(np.float32)
    held_err = rng.uniform(0.5, 2, n_pull).astype(np.float32)
    held_cov = rng.uniform(-1, 1, n_pull)
    if pixels is None:
        held, held_err, held_cov = (a.reshape(shape) for a in (held, held_err, held_cov))
    stack = _Stack(frames)
    with Jobs(helpers=helpers) as tasks:
        got = evaluation._compare(stack, 0, lambda: synth.copy(), held, held_err, exclude,
                                  pixels, np.random.default_rng(5), keep_maps, held_cov, tasks)
    want = _reference_compare(stack, 0, lambda: synth.copy(), held, held_err, exclude, pixels,
                              np.random.default_rng(5), keep_maps, held_cov)
    assert set(got[0]) == set(want[0])
    assert 1000 < want[0]["NPIX_MAPE"] < want[0]["NPIX"] < synth.size
    for key in want[0]:
        assert _same(got[0][key], want[0][key]), key
    for a, b in zip(got[1], want[1]):
        assert _same(a, b)
    if keep_maps:
        for a, b in zip(got[2], want[2]):
            assert _same(a, b)
    else:
        assert got[2] is None and want[2] is None


def test_compare_without_usable_pixels():
    shape = (40, 50)
    frames = tuple(np.full(shape, np.nan, np.float32) for _ in range(3))
    synth = np.ones(shape, np.float32)
    row, sample, _ = evaluation._compare(_Stack(frames), 0, lambda: synth, synth, synth, None,
                                         None, np.random.default_rng(0), False)
    assert row["NPIX"] == row["NPIX_MAPE"] == row["NPIX_PULL"] == 0
    assert all(math.isnan(row[k]) for k in ("MAE [ADU]", "MAPE [%]", "REAL_MEDIAN [ADU]",
                                            "SYNTH_MEDIAN [ADU]", "PULL_MEAN"))
    assert sample[0].size == 0


@pytest.mark.parametrize("synth_dtype", [np.float32, np.float64])
def test_gathered_values_match_numpy_steps(synth_dtype):
    """Each gathered value, not only their mean (which hides last-bit differences), is the
    former numpy steps' on the masked float64 values."""
    rng = np.random.default_rng(9)
    real = rng.normal(30, 12, 50000).astype(np.float32)
    synth = (real + rng.normal(0, 3, real.size)).astype(synth_dtype)
    mask = rng.random(real.size) < 0.7
    r64 = real[mask].astype(np.float64)
    ape = r64.copy()
    ape -= synth[mask]
    ape /= real[mask]
    np.abs(ape, out=ape)
    ape *= 100
    diff = r64.copy()
    diff -= synth[mask]
    np.abs(diff, out=diff)
    for what, want in ((evaluation._APE, ape), (evaluation._ABS_DIFF, diff),
                       (evaluation._REAL, r64), (evaluation._SYNTH,
                                                 synth[mask].astype(np.float64))):
        got = np.empty(int(mask.sum()) + 1)
        assert evaluation._gather(real, synth, mask, what, got) == want.size
        assert np.array_equal(got[:-1].view(np.int64), want.view(np.int64)), what


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [10, 1001, 300001, 1 << 20])
def test_nanmedian_matches_numpy(dtype, n):
    """The dark-current table's model median: numpy's nanmedian, the same number."""
    x = np.random.default_rng(n).lognormal(1, 1, n).astype(dtype)
    x[::17] = np.nan
    x[::1001] = np.inf
    got = evaluation._nanmedian(x)
    assert type(got) is float
    assert got == float(np.nanmedian(x))
    assert math.isnan(evaluation._nanmedian(np.full(4, np.nan, dtype)))
