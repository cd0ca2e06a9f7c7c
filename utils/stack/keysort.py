"""Stacking raw 16-bit frames by sorting their stored integer values (the "key" path).

When every input of a median or sigma-clipped combine is a FITS unsigned 16-bit frame
and nothing is done to the samples before they are combined (no subtraction, no scale
other than 1; saturated samples become missing), the float32 samples of the
:mod:`utils.stack.kernels` path are exactly the stored integers (or +inf).  The
integer -> float32 conversion is exact and monotone, so sorting the ``uint16`` values
and converting afterwards gives the same sorted columns, bit for bit, as converting
first and sorting floats, and every product is the same.  The sorting network then
moves half the bytes (16 lanes per AVX2 vector instead of 8), and the float32 samples
only ever exist for one image row at a time (in L2) instead of for the whole block
(written to memory by the reader, read back by the kernel): at 50 frames the sort was
~80 of ~200 ns per pixel.

Missing samples are the key ``0xFFFF`` (sorted last, converted to +inf).  That value is
ambiguous only when it is also a valid sample, i.e. without a saturation level
``<= 65535``: :func:`_prepare_keys_py` counts such samples and the caller then stacks
the block by the float path instead (an unsaturated 65535 is rare).

The row-wise pooled clipping floor is computed from the row's samples in frame order
(before sorting), and the rest of each row is :func:`utils.stack.kernels._combine_kernel`
itself, given the sorted samples and an empty network: the same code on the same numbers.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import FrameError
from .kernels import HAVE_NUMBA, _combine_kernel, _median, batcher_network
from .kernels import warmup as _warmup_kernels

#: This module's compiled code calls :mod:`utils.stack.kernels` (see
#: ``tests/utils/test_numba_cache.py``): the stamp of that file invalidates the cache.
NUMBA_DEPENDS = {"kernels.py": "6e555e9c32d0f4e0"}

#: The key of a missing (saturated) sample.
KEY_MISSING = 0xFFFF

#: Bytes of keys per sorting chunk (the network sweeps ``n_frames x`` this many columns).
KEY_CHUNK_BYTES = 64 * 2**10


def _prepare_keys_py(raw, keys, saturation, nsat):
    """Big-endian FITS ``uint16`` bytes (BZERO 32768) -> ``uint16`` physical values.

    ``raw``: the uint8 view of the stored rows (:func:`utils.stack.kernels._prepare_u16_py`
    reads the same bytes); ``keys`` (uint16, 1-D) receives the values, ``KEY_MISSING`` where
    the value is ``>= saturation`` (compared in float, as the float path does), where
    ``nsat`` (int16) is incremented (``saturation = inf``: no check, ``nsat`` untouched).
    Returns ``(saturated, clashes)``: the number of saturated samples and of valid samples
    equal to ``KEY_MISSING`` (possible only when ``saturation > 65535``; the caller must
    then not use the keys).
    """
    n = keys.shape[0]
    count = 0
    clash = 0
    if saturation < np.inf:
        for p in range(n):
            k = np.uint16(((np.uint16(raw[2 * p]) << 8) | np.uint16(raw[2 * p + 1]))
                          ^ np.uint16(0x8000))
            sat = np.float32(k) >= saturation
            keys[p] = np.uint16(KEY_MISSING) if sat else k
            nsat[p] += sat
            count += sat
            clash += (k == KEY_MISSING) & (not sat)
    else:
        for p in range(n):
            k = np.uint16(((np.uint16(raw[2 * p]) << 8) | np.uint16(raw[2 * p + 1]))
                          ^ np.uint16(0x8000))
            keys[p] = k
            clash += k == KEY_MISSING
    return count, clash


def _keys_to_samples_py(keys, c0, c1, xs, off):
    """Columns ``c0:c1`` of ``keys`` (n, .) -> float32 ``xs[:, off:off + c1 - c0]``
    (``KEY_MISSING`` -> +inf): exact, order preserving."""
    inf = np.float32(np.inf)
    for k in range(keys.shape[0]):
        kr = keys[k, c0:c1]
        xr = xs[k, off:off + c1 - c0]
        for q in range(c1 - c0):
            v = kr[q]
            xr[q] = np.float32(v) if v != KEY_MISSING else inf


def _sort_keys_py(keys, lo, hi, c0, c1):
    """Apply the sorting network (``lo[c] < hi[c]``, in order) to the columns ``c0:c1`` of
    ``keys`` (uint16, frames in rows).

    :func:`utils.stack.kernels._sort_columns_py` without its scratch store: AVX2 has no
    masked store of 16-bit lanes, so the min/max written back over their operands stay
    plain stores (two per compare-exchange instead of three); integers sort to the same
    columns whatever the network's execution.
    """
    for c in range(lo.shape[0]):
        a_row = keys[lo[c], c0:c1]
        b_row = keys[hi[c], c0:c1]
        for q in range(c1 - c0):
            a = a_row[q]
            b = b_row[q]
            a_row[q] = min(a, b)
            b_row[q] = max(a, b)


def _key_row_floor_py(keys, c0, width, min_pixels, cons, isum, miss, tot, ss, var, buf):
    """:func:`utils.stack.kernels._row_floor_py` of the samples the keys
    ``keys[:, c0:c0+width]`` (frames in order, unsorted) stand for, the same number, without
    converting them to float32 first.

    The float path's first pass adds integers in float64 (exact: sums < 2**53 in any
    order), so here they are added as int32 (8 lanes per AVX2 vector instead of 4; no
    overflow below 2**15 frames, the int16 counts' limit anyway), the missing keys counted
    apart; its second pass (squared deviations from the mean, frames
    in order) is the same float64 arithmetic on the same values.  Pixels with a missing
    sample are left out of the median as there (where +inf made the variance inf or NaN).
    ``isum``, ``miss``: int32 scratch, ``tot``, ``ss``, ``var``, ``buf``: float64 scratch,
    each of ``width`` values.
    """
    n = keys.shape[0]
    for q in range(width):
        isum[q] = 0
        miss[q] = 0
        ss[q] = 0.0
    for k in range(n):
        kr = keys[k, c0:c0 + width]
        for q in range(width):
            v = kr[q]
            isum[q] += np.int32(v)
            miss[q] += np.int32(v == KEY_MISSING)
    for q in range(width):
        tot[q] = np.float64(isum[q]) / n
    for k in range(n):
        kr = keys[k, c0:c0 + width]
        for q in range(width):
            d = np.float64(kr[q]) - tot[q]
            ss[q] += d * d
    m = 0
    for q in range(width):  # branch-free compaction, in pixel order (as _row_variances_py)
        var[m] = ss[q] / (n - 1)
        m += miss[q] == 0
    if m < min_pixels:
        return 0.0
    med = _median(var, m, buf)
    return np.sqrt(max(med, 0.0) / cons)


def _combine_keys_py(keys, npix, width, net_lo, net_hi, method, sig_lo, sig_hi, maxiters,
                     min_scale, guard, chunk, out_data, out_noise, out_count, pool_width,
                     pool_cons, pool_min):
    """:func:`utils.stack.kernels._combine_kernel_py` of the block whose samples are the keys
    ``keys[:, :npix]`` (uint16, frames in rows, ``KEY_MISSING`` = missing), ``method`` 1
    (median) or 2 (sigma clipping), the same outputs bit for bit; ``keys`` is sorted in
    place per column.  Returns the number of samples rejected by clipping.

    Row by row (``width`` pixels; with ``pool_width > 0`` it must equal ``width``): the
    pooled floor from the row's samples in frame order, then the keys sorted in chunks and
    converted into a float32 row of samples (cache-resident), which ``_combine_kernel``
    combines with an empty network (already sorted) and the floor as its ``floor`` array.
    Without the pooled floor the rows are cut at multiples of ``chunk`` so that the
    kernel's chunks are the whole block's (the first clipping iteration's scalar/vector
    choices depend on them, not its numbers).
    """
    n = keys.shape[0]
    seg = pool_width if pool_width > 0 else max(1, width // chunk) * chunk
    stride = -(-seg // 16) * 16 + 16
    xs = np.empty((n, stride), dtype=np.float32)
    # sorting chunks: the row cut into equal parts of at most KEY_CHUNK_BYTES of keys
    cmax = max(32, KEY_CHUNK_BYTES // (2 * n))
    parts = -(-seg // cmax)
    kchunk = -(-seg // parts)
    kchunk = -(-kchunk // 16) * 16
    no_net = np.empty(0, dtype=np.int64)
    floor = np.empty(seg if pool_width > 0 else 0, dtype=np.float64)
    pw = max(pool_width, 1)
    isum = np.empty(pw, dtype=np.int32)
    miss = np.empty(pw, dtype=np.int32)
    ptot = np.empty(pw, dtype=np.float64)
    pss = np.empty(pw, dtype=np.float64)
    pvar = np.empty(pw, dtype=np.float64)
    pbuf = np.empty(pw, dtype=np.float64)
    nrej = 0
    for r0 in range(0, npix, seg):
        r1 = min(r0 + seg, npix)
        size = r1 - r0
        if pool_width > 0:  # from the samples in frame order, as the kernel's own row floor
            f = _key_row_floor(keys, r0, size, pool_min, pool_cons, isum, miss, ptot, pss,
                               pvar, pbuf)
            for q in range(size):
                floor[q] = f
        for c0 in range(r0, r1, kchunk):
            c1 = min(c0 + kchunk, r1)
            _sort_keys(keys, net_lo, net_hi, c0, c1)
            _keys_to_samples(keys, c0, c1, xs, c0 - r0)
        nrej += _combine_kernel(xs, size, no_net, no_net, method, sig_lo, sig_hi, maxiters,
                                min_scale, floor[:size], guard, chunk, out_data[r0:r1],
                                out_noise[r0:r1], out_count[r0:r1], True, 0, 1.0, pool_min)
    return nrej


def read_keys(source, start, stop, keys, raw_buf, saturation, nsat, failed=None):
    """Rows ``start:stop`` of every input of ``source`` (``read_bytes(i, start, stop, buf)``,
    FITS ``uint16``) into ``keys[i, :npix]`` by :func:`_prepare_keys`; returns the saturated
    samples per input (int64), or None when a valid sample equals ``KEY_MISSING`` (the
    block must then be stacked by the float path; ``nsat`` is untouched in that case, as
    nothing saturates with a level above 65535).

    ``nsat``: the per-pixel saturation counts of every input, or a list of one count array
    per input (:func:`utils.stack.subsets.combine_subsets` counts each input in its
    subset's).  ``failed``: when a dict, the :class:`~utils.errors.FrameError` of an input
    that cannot be read is kept there under its index and the input skipped (0 saturated);
    else it is raised."""
    frame_sat = np.zeros(keys.shape[0], dtype=np.int64)
    per_input = isinstance(nsat, list)
    for i in range(keys.shape[0]):
        try:
            raw = source.read_bytes(i, start, stop, raw_buf)
        except FrameError as err:
            if failed is None:
                raise
            failed[i] = err
            continue
        frame_sat[i], clash = _prepare_keys(raw, keys[i, :raw.shape[0] // 2], saturation,
                                            nsat[i] if per_input else nsat)
        if clash:
            return None
    return frame_sat


if HAVE_NUMBA:
    from numba import njit

    _jit = njit(nogil=True, cache=True, error_model="numpy")
    _prepare_keys = _jit(_prepare_keys_py)
    _keys_to_samples = _jit(_keys_to_samples_py)
    _sort_keys = _jit(_sort_keys_py)
    _key_row_floor = _jit(_key_row_floor_py)
    _combine_keys = _jit(_combine_keys_py)
else:  # pragma: no cover
    _prepare_keys = _keys_to_samples = _combine_keys = _sort_keys = _key_row_floor = None


def warmup() -> float:
    """Compile (or load from numba's cache) the kernels of :mod:`utils.stack.kernels` and of
    the key path; return the seconds taken (0 without numba).  Benchmarks call this first
    to time the one-off compilation separately."""
    if not HAVE_NUMBA:
        return 0.0
    t0 = time.perf_counter()
    _warmup_kernels()
    warmup_keys()
    return time.perf_counter() - t0


def warmup_keys() -> None:
    """Compile (or load from numba's cache) the key path's kernels (:func:`combine` calls this
    only when it takes the key path)."""
    if not HAVE_NUMBA:
        return
    keys = np.zeros((3, 64), dtype=np.uint16)
    nsat = np.zeros(64, np.int16)
    raw = np.zeros(128, np.uint8)
    _prepare_keys(raw, keys[0], 65520.0, nsat)
    _prepare_keys(raw, keys[1], np.inf, nsat)
    lo, hi = batcher_network(3)
    out = (np.empty(64, np.float32), np.empty(64, np.float32), np.empty(64, np.int16))
    for method, pool in ((1, 0), (2, 0), (2, 32)):
        _combine_keys(keys.copy(), 64, 32, lo, hi, method, 3.0, 3.0, 5, 0.0, True, 16, *out,
                      pool, 1.0, 4)
