"""Lane loops of the stacking kernels (utils/stack/kernels.py), bit for bit against plain
references: the first clipping iteration's MAD rank selection (:func:`kernels._mad_pair`), its
hand-over to the scalar loop on blocks with missing samples, and the four-rows-per-pass valid
counts and range sums."""

import numpy as np
import pytest

from utils.stack import kernels

pytestmark = pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="needs numba")


def _sorted_columns(n, npix, seed):
    """Sorted float32 columns (frames in rows): quantised ties, signed zeros, a normal half,
    huge outliers; all valid."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (n, npix)).astype(np.float32) * 16
    x[rng.random(x.shape) < 0.15] = -0.0
    x[:, npix // 2:] = rng.normal(0.0, 1.0, (n, npix - npix // 2)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] *= 1e6
    x[:, 5] = 7.0  # every sample equal
    x[:, 6] = 0.0
    x[: n // 2, 6] = -0.0
    return np.sort(x, axis=0)


@pytest.mark.parametrize("n", [3, 4, 5, 6, 9, 10, 16, 17, 32, 33, 49, 50, 64, 65])
def test_mad_pair_is_the_rank_pair_of_the_distances(n):
    """Ranks ``(n - 1) // 2`` and ``+ 1`` of ``|x - c|`` (c the median, float64) are those of
    numpy's sort of the distances, bit for bit (zeros +0.0)."""
    npix = 300
    x = _sorted_columns(n, npix, n)
    c = 0.5 * (x[(n - 1) // 2].astype(np.float64) + x[n // 2].astype(np.float64))
    dist = np.sort(np.abs(x.astype(np.float64) - c), axis=0)
    r = (n - 1) // 2
    kth, nxt, tmp = np.empty(npix), np.empty(npix), np.empty(npix)
    kernels._mad_pair(x, 0, npix, n, c, kth, nxt, tmp)
    np.testing.assert_array_equal(kth.view(np.int64), dist[r].view(np.int64))
    np.testing.assert_array_equal(nxt.view(np.int64), dist[r + 1].view(np.int64))
    # an offset sub-range of the columns, as the kernel calls it
    kernels._mad_pair(x, 100, 64, n, c[100:164].copy(), kth, nxt, tmp)
    np.testing.assert_array_equal(kth[:64].view(np.int64), dist[r, 100:164].view(np.int64))


@pytest.mark.parametrize("n", [3, 4, 9, 20, 33, 50, 64])
@pytest.mark.parametrize("missing", [0.0005, 0.003, 0.02, 0.2])
def test_first_clip_with_missing_samples_equals_scalar_clipping(n, missing):
    """Pixels with missing samples (+inf, sorted last: the vectorised iteration sees NaN or
    inf distances and its results are discarded) change only which pixels the vectorised
    iteration hands to the scalar loop (its zero-MAD and flagged counts over the sub-chunk),
    never a number: the kernel with the vectorised first iteration equals the scalar
    clipping bit for bit, for missing-pixel fractions around the hand-over threshold
    (1/SCALAR_FEW of a sub-chunk), quantised or not, with and without guard and floor."""
    rng = np.random.default_rng(n * 1000 + int(missing * 1e4))
    npix = 2 * kernels.FIRST_SUB + 40
    for quantised, guard, floored in ((False, True, False), (True, True, True),
                                      (True, False, False), (False, True, True)):
        x = rng.normal(100.0, 2.0, (n, npix))
        if quantised:
            x = np.round(x / 2) * 16
        hit = rng.random(x.shape) < 0.01
        x[hit] += rng.integers(20, 2000, hit.sum()) * 16
        x = x.astype(np.float32)
        x[rng.random(x.shape) < missing] = np.inf
        x[: n // 2 + 1, 7] = np.inf  # the median itself missing
        x[:, 8] = np.inf
        net_lo, net_hi = kernels.batcher_network(n)
        floor = rng.uniform(0.0, 3.0, npix) * (8 if quantised else 1) if floored else np.empty(0)
        outs = []
        for fast in (True, False):
            y = x.copy()
            out = (np.empty(npix, np.float32), np.empty(npix, np.float32),
                   np.empty(npix, np.int16))
            nrej = kernels._combine_kernel(y, npix, net_lo, net_hi, 2, 3.0, 3.0, 5, 0.0, floor,
                                           guard, 320, *out, fast)
            outs.append((nrej, *out))
        assert outs[0][0] == outs[1][0]
        for a, b in zip(outs[0][1:], outs[1][1:]):
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 50])
def test_four_row_counts_and_sums_equal_the_row_by_row_loops(n):
    """:func:`kernels._count_valid` and :func:`kernels._range_sums` (four rows per pass, the
    rest one by one) equal the row-by-row loops they replaced, bit for bit: the float64
    ``tot += d``, ``ss += d * d`` in frame order, 0.0 added outside ``lo <= k < hi``."""
    rng = np.random.default_rng(n)
    npix = 203
    x = rng.normal(0.0, 1.0, (n, npix)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] *= 1e5
    x[rng.random(x.shape) < 0.1] = -0.0
    x[rng.random(x.shape) < 0.1] = np.inf
    x = np.sort(x, axis=0)
    lo = rng.integers(0, n + 1, npix)
    hi = np.minimum(n, lo + rng.integers(0, n + 1, npix))
    lo[:3], hi[:3] = 0, n
    shift = rng.normal(0.0, 1.0, npix)
    shift[3] = 0.0
    cnt = np.full(npix, 5, np.int64)
    kernels._count_valid(x, 0, npix, cnt)
    np.testing.assert_array_equal(cnt, 5 + np.isfinite(x).sum(axis=0))
    tot, ss = np.zeros(npix), np.zeros(npix)
    ref_tot, ref_ss = np.zeros(npix), np.zeros(npix)
    with np.errstate(invalid="ignore"):
        for k in range(n):
            d = np.where((lo <= k) & (k < hi), x[k].astype(np.float64) - shift, 0.0)
            ref_tot += d
            ref_ss += d * d
    kernels._range_sums(x, 0, npix, lo, hi, shift, tot, ss)
    np.testing.assert_array_equal(tot.view(np.int64), ref_tot.view(np.int64))
    np.testing.assert_array_equal(ss.view(np.int64), ref_ss.view(np.int64))
    # a sub-range of the columns, as the kernel calls them
    tot[:], ss[:] = 0.0, 0.0
    kernels._range_sums(x, 50, 100, lo[50:150], hi[50:150], shift[50:150], tot, ss)
    np.testing.assert_array_equal(tot[:100].view(np.int64), ref_tot[50:150].view(np.int64))
