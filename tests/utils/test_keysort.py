"""The 16-bit key path of the stacking engine (utils/stack/keysort.py) gives the products of the
float32-sample path bit for bit: the kernel on edge-case keys for 1..50 frames, every
method and option, and :func:`combine` on FITS frames (saturation, 65535 samples, quantum,
min_scale, iterations)."""

import numpy as np
import pytest
from astropy.io import fits

from utils import headers as kw
from utils.stack import combine as stacking
from utils.stack import kernels, keysort

pytestmark = pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="needs numba")


def _edge_keys(n, npix, seed):
    """uint16 samples: quantised ties (16-ADU steps), a few wide values, outliers, 0 and
    65534, missing samples (``KEY_MISSING``), an all-missing and a one-sample pixel."""
    rng = np.random.default_rng(seed)
    k = (rng.integers(-2, 3, (n, npix)) * 16 + 1600).astype(np.int64)
    k[:, npix // 2:] = np.round(rng.normal(1600, 3.0, (n, npix - npix // 2)))
    k[rng.random(k.shape) < 0.04] += rng.integers(100, 20000)
    k[rng.random(k.shape) < 0.01] = 0
    k[rng.random(k.shape) < 0.01] = 65534
    k[rng.random(k.shape) < 0.05] = keysort.KEY_MISSING
    k[:, 3] = keysort.KEY_MISSING
    k[1:, 4] = keysort.KEY_MISSING
    return k.astype(np.uint16)


def _samples(keys):
    x = keys.astype(np.float32)
    x[keys == keysort.KEY_MISSING] = np.inf
    return x


@pytest.mark.parametrize("n", range(1, 51))
def test_key_kernel_equals_the_sample_kernel(n):
    """:func:`keysort._combine_keys` = :func:`kernels._combine_kernel` on the same samples as
    float32, bit for bit (outputs and rejected count): median and sigma clipping, guard on and
    off, pooled floor or not, 1/5/unlimited iterations, min_scale; rows of 40 pixels in
    chunks of 16 (rows cut across chunks)."""
    width, rows = 40, 3
    npix = width * rows
    keys0 = _edge_keys(n, npix, 1000 + n)
    lo, hi = kernels.batcher_network(n)
    stride = npix + 24
    for method, guard, pool, maxiters, min_scale in [
            (1, True, False, 5, 0.0), (2, True, True, 5, 0.0), (2, False, True, 5, 16.0),
            (2, True, False, 1, 0.0), (2, False, False, 0, 32.0), (2, True, True, 0, 8.0)]:
        pool_width = width if pool and n >= 2 else 0
        x = np.zeros((n, stride), np.float32)
        x[:, :npix] = _samples(keys0)
        keys = np.zeros((n, stride), np.uint16)
        keys[:, :npix] = keys0
        ref = (np.empty(npix, np.float32), np.empty(npix, np.float32), np.empty(npix, np.int16))
        got = (np.empty(npix, np.float32), np.empty(npix, np.float32), np.empty(npix, np.int16))
        nrej = kernels._combine_kernel(x, npix, lo, hi, method, 3.0, 2.5, maxiters, min_scale,
                                       np.empty(0), guard, 16, *ref, True, pool_width, 0.9, 4)
        nkey = keysort._combine_keys(keys, npix, width, lo, hi, method, 3.0, 2.5, maxiters,
                                     min_scale, guard, 16, *got, pool_width, 0.9, 4)
        assert nkey == nrej
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
        np.testing.assert_array_equal(_samples(keys[:, :npix]).view(np.int32),
                                      x[:, :npix].view(np.int32))  # the sorted samples


def _write_frames(tmp_path, n, seed, top=None):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        frame = np.round(rng.normal(100.0, 2.0, (12, 70))) * 16
        frame[rng.random(frame.shape) < 0.02] += 3000
        frame[rng.random(frame.shape) < 0.02] = 65520  # saturated
        frame[rng.random(frame.shape) < 0.01] = 65535
        frame[0, :5] = 65520  # a pixel saturated in every frame, and next to it ...
        frame[1, 3] = 65535 if i else 100  # one valid sample (saturation <= 65535)
        if top is not None:
            frame[:, :] = np.minimum(frame, top)
        path = tmp_path / f"f{seed}_{i:02d}.fits"
        fits.PrimaryHDU(frame.astype(np.uint16)).writeto(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 17, 50])
@pytest.mark.parametrize("top", [None, 65534])
def test_combine_key_path_equals_float_path(tmp_path, monkeypatch, n, top):
    """:func:`combine` on FITS uint16 frames gives the same products with the key path as
    with the float32 samples (``KEY_SORT = False``): images, flags, header (NREJECT, the
    statistics) and the saturated counts per input; with and without a saturation level,
    with samples of 65535 (no level: the block falls back to the float path; ``top``
    65534: none, the key path runs)."""
    monkeypatch.setattr(stacking, "KEY_MIN_FRAMES", 1)
    paths = _write_frames(tmp_path, n, n, top)
    option_sets = [dict(method="median"), dict(method="sigclip"),
                   dict(method="sigclip", saturation=65520, quantum=16.0, min_scale=8.0),
                   dict(method="median", saturation=65535),
                   dict(method="sigclip", saturation=65536, maxiters=None, guard=False),
                   dict(method="sigclip", saturation=60000, pooled_floor=False, maxiters=1),
                   dict(method="sigclip", scale=[1.0] * n, saturation=65520)]
    for opts in option_sets:
        results = []
        for key_sort in (True, False):
            monkeypatch.setattr(stacking, "KEY_SORT", key_sort)
            results.append(stacking.combine(paths, workers=2, memory_limit=2e5, **opts))
        got, ref = results
        for name in ("data", "noise", "stderr", "count", "flags"):
            np.testing.assert_array_equal(getattr(got, name).view(np.uint8),
                                          getattr(ref, name).view(np.uint8), err_msg=name)
        for header in (got.header, ref.header):
            header.remove(kw.DATE)  # the time of writing
        assert got.header == ref.header
        assert got.inputs.equals(ref.inputs)


def test_key_path_is_taken_only_where_identical(tmp_path, monkeypatch):
    """Raw uint16 frames with a saturation level (the bias masters), at least KEY_MIN_FRAMES
    of them, take the key path; fewer frames, a subtraction, a scale other than 1, the
    mean, and a 65535 sample without saturation level (ambiguous with the missing key) do
    not."""
    calls = []
    real = keysort._combine_keys

    def spy(*args):
        calls.append(args[5])
        return real(*args)

    monkeypatch.setattr(stacking, "_combine_keys", spy)
    nf = stacking.KEY_MIN_FRAMES
    paths = _write_frames(tmp_path, nf, 7, 65534)
    stacking.combine(paths, method="sigclip", saturation=65520)
    assert calls
    n_blocks = len(calls)
    stacking.combine(paths[1:], method="sigclip", saturation=65520)
    stacking.combine(paths, method="sigclip", subtract=np.zeros((12, 70)))
    stacking.combine(paths, method="sigclip", scale=[1.0] * (nf - 1) + [2.0])
    stacking.combine(paths, method="mean")
    for i in range(nf):
        frame = np.full((12, 70), 1600, np.uint16)
        frame[:, i] = 65535  # in every block, valid without a saturation level
        fits.PrimaryHDU(frame).writeto(tmp_path / f"top{i}.fits")
    stacking.combine([tmp_path / f"top{i}.fits" for i in range(nf)], method="sigclip")
    assert len(calls) == n_blocks


@pytest.mark.parametrize("n", [2, 3, 5, 12, 33, 50])
def test_key_sort_equals_the_float_network(n):
    """:func:`keysort._sort_keys` (no scratch store) sorts the key columns as numpy does, and
    their samples are the float network's sorted samples bit for bit."""
    keys = _edge_keys(n, 300, 7 * n)
    lo, hi = kernels.batcher_network(n)
    x = _samples(keys)
    kernels._sort_columns(x, lo, hi, 0, 300, np.empty(300, np.float32))
    got = keys.copy()
    keysort._sort_keys(got, lo, hi, 0, 300)
    np.testing.assert_array_equal(got, np.sort(keys, axis=0))
    np.testing.assert_array_equal(_samples(got).view(np.int32), x.view(np.int32))


@pytest.mark.parametrize("n", [2, 3, 4, 5, 11, 12, 33, 50])
@pytest.mark.parametrize("missing", [0.0, 0.05, 0.5])
def test_key_row_floor_equals_the_float_row_floor(n, missing):
    """The pooled floor from the keys (:func:`keysort._key_row_floor`: integer first pass,
    missing keys counted apart) is :func:`kernels._row_floor` of their float32 samples, bit
    for bit: ties, wide values, 0 and 65534, missing samples (pixels left out, down to
    fewer than ``min_pixels`` complete pixels: 0), odd and even pixel counts."""
    rng = np.random.default_rng(n + int(100 * missing))
    for width in (37, 64):
        keys = _edge_keys(n, width, 3 * n + width)
        keys[keys == keysort.KEY_MISSING] = 1600
        keys[rng.random(keys.shape) < missing / n] = keysort.KEY_MISSING
        keys[:, 3] = keysort.KEY_MISSING
        x = _samples(keys)
        scratch = [np.empty(width) for _ in range(4)]
        iscr = [np.empty(width, np.int32) for _ in range(2)]
        for min_pixels in (1, 4, 30):
            ref = kernels._row_floor(x, 0, width, min_pixels, 0.93, *scratch)
            got = keysort._key_row_floor(keys, 0, width, min_pixels, 0.93, *iscr, *scratch)
            assert np.float64(got).view(np.int64) == np.float64(ref).view(np.int64)
