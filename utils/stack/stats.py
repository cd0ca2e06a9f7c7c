"""Robust statistics helpers and one-pass per-frame statistics.

* :func:`mad_std` and :func:`sigma_clipped_stats`: small NaN-ignoring helpers
  using the same estimators as :func:`utils.stack.combine.combine` (median centre,
  ``1.482602 x MAD`` scale, cumulative clipping).
* :func:`frame_statistics`: mean, exact median, percentiles, extremes and the
  fractions of zero and saturated pixels of one frame, in a single streaming
  pass over row blocks (used by the dataset index, where a large zero
  fraction marks a bad file, and by per-frame statistics tables);
  :func:`histogram_statistics` the same from a 16-bit frame's histogram, and
  :func:`statistics_cards` / :func:`recorded_statistics` write them into a
  converted frame's header and read them back (the index then skips the pixels).

None of these emit warnings on empty or all-NaN input: they return NaN.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from .. import headers as kw
from ..io import fitsio

logger = logging.getLogger(__name__)

#: Factor from median absolute deviation to Gaussian sigma, ``1/Phi^-1(3/4)``.
MAD_TO_STD = 1.482602218505602


def _nanmedian_last(a: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN, NaN where nothing is left (no warning)."""
    if a.shape[-1] == 0:
        return np.full(a.shape[:-1], np.nan)
    s = np.sort(a, axis=-1)  # NaN sorts last
    m = np.sum(~np.isnan(s), axis=-1)
    ok = m > 0
    i_lo = np.where(ok, (m - 1) // 2, 0)[..., None]
    i_hi = np.where(ok, m // 2, 0)[..., None]
    lo = np.take_along_axis(s, i_lo, axis=-1)[..., 0]
    hi = np.take_along_axis(s, i_hi, axis=-1)[..., 0]
    return np.where(ok, 0.5 * (lo + hi), np.nan)


def _prime_at_least(k: int) -> int:
    """Smallest prime ``>= k`` (``k`` a few thousand at most: trial division)."""
    k = max(2, int(k))
    while any(k % d == 0 for d in range(2, math.isqrt(k) + 1)):
        k += 1
    return k


def _split_window_py(x, lo, hi, inside):
    """One pass of :func:`exact_median`: values below ``lo``, those in ``[lo, hi]`` copied to
    ``inside`` in their order, and those above ``hi`` (NaN in none); the counts."""
    below = 0
    above = 0
    k = 0
    for v in x:  # branch-free: which side a value falls is unpredictable
        below += v < lo
        above += v > hi
        inside[k] = v  # kept only if k moves on; k < x.size always
        k += (v >= lo) & (v <= hi)
    return below, k, above


def _scaled_variances_py(s, n, hi, scale, ratio, out):
    """One pass of :func:`typical_noise`: each pixel's ``s**2 * scale`` (float32), times
    ``ratio[count]`` where its count is not ``hi`` (NaN below 2 samples), the non-NaN ones
    copied to ``out`` in their order; their number."""
    k = 0
    for i in range(s.size):
        v = s[i] * s[i]
        v *= scale
        c = n[i]
        if c != hi:
            v = v * ratio[c] if c >= 2 else np.float32(np.nan)
        out[k] = v  # kept only if k moves on
        k += not np.isnan(v)
    return k


try:  # three numpy comparison passes and a compress became one loop (~2 ms at 1024 x 1024)
    from numba import njit

    _split_window = njit(nogil=True, cache=True)(_split_window_py)
    # typical_noise: square, scale, rescale the other counts and drop NaN in one loop
    _scaled_variances = njit(nogil=True, cache=True)(_scaled_variances_py)
except ImportError:  # pragma: no cover
    _split_window = _scaled_variances = None


def exact_median(values: np.ndarray) -> float:
    """``np.median`` of an array (flattened), the same number, faster on large arrays.

    The two middle order statistics are bracketed from a regular subsample of ~65 000
    values (a prime stride; a window of +-6 binomial sigma of the subsample's rank around
    the middle), the values below the window counted and those inside it selected: one
    comparison pass over the data and a partition of a small part, instead of a partition
    of a copy of all of it (a 2048 x 2048 master: ~15 ms instead of ~60 ms).  Falls back to
    ``np.median`` when the window misses (never for ordinary data) or the array is small.

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=300001).astype(np.float32)
    >>> bool(exact_median(x) == np.median(x))
    True
    """
    x = np.asarray(values).ravel()
    n = x.size
    if n < 1 << 18:
        return float(np.median(x))
    # a prime stride: a power-of-two one on a power-of-two-wide image samples the same few
    # columns only, and column structure (bias) then biases the window off the middle
    sample = np.sort(x[::_prime_at_least(n // (1 << 16))])
    m = sample.size
    half = 6.0 * math.sqrt(m) / 2.0 + 2
    lo = sample[max(0, int((m - 1) / 2 - half))]
    hi = sample[min(m - 1, int(math.ceil((m - 1) / 2 + half)))]
    k_lo, k_hi = (n - 1) // 2, n // 2
    if _split_window is not None and x.dtype in (np.float32, np.float64):
        inside = np.empty(n, x.dtype)  # pages touched only as far as it is filled
        below, n_inside, above = _split_window(x, lo, hi, inside)
        inside = inside[:n_inside]
    else:
        below = int(np.count_nonzero(x < lo))
        inside = x[(x >= lo) & (x <= hi)]
        above = int(np.count_nonzero(x > hi))
    if not (below <= k_lo and k_hi < below + inside.size) or \
            below + inside.size + above != n:  # missed, or NaN in x
        return float(np.median(x))
    part = np.partition(inside, (k_lo - below, k_hi - below))
    # numpy's median: the mean (in the array's type) of the middle one or two values
    return float(np.mean(part[[k_lo - below, k_hi - below]] if k_hi > k_lo
                         else part[k_lo - below:k_lo - below + 1]))


def exact_nanmedian(values: np.ndarray) -> float:
    """``np.nanmedian`` of an array (flattened), the same number, by :func:`exact_median`.

    NaN where every value is NaN.

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=300001).astype(np.float32)
    >>> x[::7] = np.nan
    >>> bool(exact_nanmedian(x) == np.nanmedian(x))
    True
    """
    x = np.asarray(values).ravel()
    keep = ~np.isnan(x)
    if not keep.any():
        return math.nan
    return exact_median(x if keep.all() else x[keep])


def chi2_median_ratio(dof):
    """Median of ``chi^2_dof / dof``: the expected median of a reduced chi-square, and the
    factor from the median of sample variances to a Gaussian variance.

    ``dof`` real and > 0, a number (float returned) or an array (array returned); the same
    numbers as ``scipy.stats.chi2.median(dof) / dof`` (which calls ``gammaincinv`` through
    its distribution machinery, ~3 ms a call).

    Examples
    --------
    >>> round(chi2_median_ratio(1), 6), round(chi2_median_ratio(10), 6)
    (0.454936, 0.934182)
    """
    from scipy.special import gammaincinv

    nu = np.asarray(dof, dtype=np.float64)
    ratio = 2.0 * gammaincinv(0.5 * nu, 0.5) / nu
    return float(ratio) if ratio.ndim == 0 else ratio


def typical_noise(noise: np.ndarray, count: np.ndarray) -> float:
    """Typical per-pixel temporal noise of a master's inputs, as a Gaussian sigma.

    The median of per-pixel sample standard deviations of N frames is biased low by an
    amount that depends on N (the median of ``chi^2_(N-1) / (N-1)`` is below 1: 12 % low at
    N = 4, 5 % at 8), so a set of few frames looked quieter than a set of many.  Here each
    pixel's sample variance is divided by that median for its own number of accepted
    samples, and the median over pixels of the result gives the sigma of the typical
    (Gaussian) pixel whatever N is; a median, so hot and RTS pixels do not pull it.

    Parameters
    ----------
    noise : numpy.ndarray
        Per-pixel sample standard deviation (``ddof=1``) of the accepted samples, the
        master's ``NOISE`` map, in the image's unit.
    count : numpy.ndarray
        Accepted samples per pixel (``NCOMB``), same shape.

    Returns
    -------
    float
        Sigma in the unit of ``noise``; NaN where no pixel has a finite noise from two or
        more samples.
    """
    s = np.asarray(noise).ravel()
    n = np.asarray(count).ravel()
    hi = int(n.max()) if n.size else 0
    if hi < 2:
        return math.nan
    med_chi2 = chi2_median_ratio(np.arange(1, hi))  # for k = 1..hi-1
    if _scaled_variances is not None and s.dtype == np.float32 and n.dtype.kind in "iu" \
            and n.dtype.isnative and s.dtype.isnative and n.size == s.size:
        # the numbers of the numpy steps below, in one pass (~4.7 -> ~2.5 ms at 1024 x 1024)
        ratio = np.full(hi + 1, np.nan, np.float32)  # by count; NaN below 2 samples
        ratio[2:] = (med_chi2[hi - 2] / med_chi2[:hi - 1]).astype(np.float32)
        out = np.empty(s.size, np.float32)  # pages touched only as far as it is filled
        k = _scaled_variances(s, n, hi, np.float32(1.0 / med_chi2[hi - 2]), ratio, out)
        return math.sqrt(exact_median(out[:k])) if k else math.nan
    return _typical_noise_numpy(s, n, hi, med_chi2)


def _typical_noise_numpy(s: np.ndarray, n: np.ndarray, hi: int, med_chi2: np.ndarray) -> float:
    """:func:`typical_noise` in numpy steps (without numba, and for other dtypes)."""
    # float32 (a summary to a few digits), scaled for the usual count in place; the few
    # pixels that lost samples to clipping, or have fewer than 2 (NaN), rescaled after
    var = np.square(s, dtype=np.float32)
    var *= np.float32(1.0 / med_chi2[hi - 2])
    other = np.flatnonzero(n != hi)
    if other.size:
        kk = n[other].astype(np.intp) - 1
        ratio = np.full(other.size, np.nan)
        ok = kk >= 1
        ratio[ok] = med_chi2[hi - 2] / med_chi2[kk[ok] - 1]
        var[other] *= ratio.astype(np.float32)
    return math.sqrt(exact_nanmedian(var))


def mad_std(x, axis: int | None = None):
    """Robust standard deviation, ``1.482602218505602 x median(|x - median(x)|)``.

    Non-finite values are ignored (unlike ``astropy.stats.mad_std``, which
    needs ``ignore_nan=True`` for that).

    Parameters
    ----------
    x : array_like
        Data, any unit; the result has the same unit.
    axis : int, optional
        Axis to reduce; ``None`` = all values.

    Returns
    -------
    float or numpy.ndarray
        NaN where no finite value exists.

    Examples
    --------
    >>> round(float(mad_std([1.0, 2.0, 3.0, 4.0, 100.0])), 4)
    1.4826
    """
    a = np.asarray(x, dtype=np.float64)
    a = np.where(np.isfinite(a), a, np.nan)
    if axis is None:
        a = a.reshape(1, -1)
    else:
        a = np.moveaxis(a, axis, -1)
    med = _nanmedian_last(a)
    out = _nanmedian_last(np.abs(a - med[..., None])) * MAD_TO_STD
    return float(out[0]) if axis is None else out


def sigma_clipped_stats(x, sigma: float = 3.0,
                        maxiters: int | None = 5) -> tuple[float, float, float]:
    """Mean, median and standard deviation of ``x`` after iterative sigma clipping.

    Same clipping as :func:`utils.stack.combine.combine`: centre = median, scale =
    :func:`mad_std` of the accepted values (their standard deviation when
    that is 0 but they differ), values strictly beyond
    ``sigma`` x scale are rejected for good; repeat until nothing changes or
    ``maxiters`` (``None`` = until convergence).  Non-finite values are ignored.

    Parameters
    ----------
    x : array_like
        Data (flattened).
    sigma : float, optional
        Symmetric clipping threshold [sigma].
    maxiters : int or None, optional
        Maximum iterations.

    Returns
    -------
    mean, median, std : float
        Of the accepted values; ``std`` is the population standard deviation
        (``ddof=0``, like ``astropy.stats.sigma_clipped_stats``).  NaN when
        there is no finite value.
    """
    s = np.asarray(x, dtype=np.float64).ravel()
    s = np.sort(s[np.isfinite(s)])
    lo, hi = 0, s.size
    it = 0
    while hi > lo and (maxiters is None or maxiters <= 0 or it < maxiters):
        part = s[lo:hi]
        k = hi - lo
        c = 0.5 * (part[(k - 1) // 2] + part[k // 2])
        dev = np.abs(part - c)
        dev.partition([(k - 1) // 2, k // 2])
        std = 0.5 * (dev[(k - 1) // 2] + dev[k // 2]) * MAD_TO_STD
        if std == 0.0 and part[0] != part[-1]:
            std = float(part.std())  # zero MAD of quantised values: see utils.stack.combine
        # sorted values: the accepted set is a contiguous range
        nlo = lo + int(np.searchsorted(part, c - std * sigma, side="left"))
        nhi = lo + int(np.searchsorted(part, c + std * sigma, side="right"))
        it += 1
        if (nlo, nhi) == (lo, hi):
            break
        lo, hi = nlo, nhi
    if hi <= lo:
        return math.nan, math.nan, math.nan
    part = s[lo:hi]
    k = hi - lo
    return float(part.mean()), float(0.5 * (part[(k - 1) // 2] + part[k // 2])), float(part.std())


@dataclass(frozen=True)
class FrameStats:
    """Statistics of one frame, in the frame's physical unit (stored ADU for raw frames).

    Attributes
    ----------
    n_pixels : int
        Pixels in the frame (finite or not).
    n_finite : int
        Finite pixels; every statistic below except the fractions uses only these.
    mean, median, std : float
        Mean, exact median and population standard deviation (``ddof=0``).
    p16, p84 : float
        16th and 84th percentiles (numpy's linear interpolation); ``(p84 - p16)/2``
        is a robust sigma.
    min, max : float
        Extremes.
    zero_fraction : float
        Fraction of all pixels exactly 0 (a large value means a broken file).
    saturated_fraction : float
        Fraction of all pixels ``>= saturation``; NaN when no level was given.
    """

    n_pixels: int
    n_finite: int
    mean: float
    median: float
    std: float
    p16: float
    p84: float
    min: float
    max: float
    zero_fraction: float
    saturated_fraction: float

    def as_dict(self) -> dict:
        """Plain dict (e.g. a row of a per-frame statistics table)."""
        return asdict(self)


_PERCENTILES = (16.0, 50.0, 84.0)


def _hist_percentile(cum: np.ndarray, values: np.ndarray, q: float) -> float:
    """Percentile ``q`` (linear interpolation, like numpy) from a cumulative histogram."""
    n = int(cum[-1])
    pos = (n - 1) * q / 100.0
    k = math.floor(pos)
    frac = pos - k
    lo = values[np.searchsorted(cum, k, side="right")]
    if frac == 0.0:
        return float(lo)
    hi = values[np.searchsorted(cum, k + 1, side="right")]
    return float(lo + frac * (hi - lo))


def _integer_offset(dtype: np.dtype, bscale: float, bzero: float) -> int | None:
    """Smallest physical value of 8/16-bit integer data, or None when not histogrammable."""
    if dtype.kind not in "iu" or dtype.itemsize > 2 or bscale != 1.0 or bzero != int(bzero):
        return None
    return int(np.iinfo(dtype).min) + int(bzero)


def frame_statistics(path_or_array, *, saturation: float | None = None,
                     block_rows: int = 256) -> FrameStats:
    """Statistics of one frame in a single streaming pass over row blocks.

    Parameters
    ----------
    path_or_array : path-like or numpy.ndarray
        FITS file (primary HDU, read by row blocks with
        :func:`utils.io.fitsio.read_rows`) or an array (2-D; other shapes are
        treated as rows of their last axis).
    saturation : float, optional
        Saturation level in the frame's physical unit (stored ADU, e.g. 65520).
    block_rows : int, optional
        Rows read at a time.

    Returns
    -------
    FrameStats

    Notes
    -----
    The median and percentiles are exact.  8/16-bit integer data (the camera's
    uint16 frames) go through a 65536-bin histogram, so memory stays O(1) in
    the frame size.  Other data (float, 32-bit) are collected into one
    float32/float64 copy of the frame and partitioned; frames are at most a few
    million pixels, so that copy (~16 MB) is acceptable.
    """
    if isinstance(path_or_array, np.ndarray) or not isinstance(path_or_array, (str, os.PathLike)):
        arr = np.asarray(path_or_array)
        arr = arr.reshape(1, -1) if arr.ndim < 2 else arr.reshape(-1, arr.shape[-1])
        offset = _integer_offset(arr.dtype, 1.0, 0.0)
        nrows, width = arr.shape
        wide = arr.dtype.itemsize > 4 or arr.dtype.kind in "iu"  # float32 would round them
        collect_dtype = np.float64 if wide else np.float32

        def blocks():
            for start in range(0, nrows, block_rows):
                yield arr[start:start + block_rows]
        fd = None
    else:
        layout = fitsio.fits_layout(path_or_array)
        offset = _integer_offset(layout.dtype.newbyteorder("="), layout.bscale, layout.bzero)
        nrows, width = layout.shape
        collect_dtype = np.float32  # read_rows returns float32
        fd = os.open(layout.path, os.O_RDONLY)

        def blocks():
            for start in range(0, nrows, block_rows):
                yield fitsio.read_rows(layout, start, min(start + block_rows, nrows), fd=fd)
    n_pixels = nrows * width
    hist = np.zeros(65536, dtype=np.int64) if offset is not None else None
    values = None if offset is not None else np.empty(n_pixels, dtype=collect_dtype)
    n_zero = n_sat = n_fill = 0
    try:
        for block in blocks():
            n_zero += int(np.count_nonzero(block == 0))
            if saturation is not None:
                n_sat += int(np.count_nonzero(block >= saturation))
            if hist is not None:
                hist += np.bincount((block.astype(np.int64) - offset).ravel(), minlength=65536)
            else:
                flat = block.ravel()
                flat = flat[np.isfinite(flat)]
                values[n_fill:n_fill + flat.size] = flat
                n_fill += flat.size
    finally:
        if fd is not None:
            os.close(fd)
    if hist is not None:
        return _histogram_stats(hist, offset, n_pixels, n_zero, n_sat, saturation)
    nan = math.nan
    n_finite = n_fill
    good = values[:n_fill]
    if n_finite:
        mean = float(good.mean(dtype=np.float64))
        std = float(good.std(dtype=np.float64))
        p16, med, p84 = (float(v) for v in np.percentile(good, _PERCENTILES))
        vmin, vmax = float(good.min()), float(good.max())
    else:
        mean = std = p16 = med = p84 = vmin = vmax = nan
    return FrameStats(n_pixels=n_pixels, n_finite=n_finite, mean=mean, median=med, std=std,
                      p16=p16, p84=p84, min=vmin, max=vmax,
                      zero_fraction=n_zero / n_pixels if n_pixels else nan,
                      saturated_fraction=n_sat / n_pixels if saturation is not None else nan)


#: Stored value of each histogram bin [adu] (read-only: shared by every call).
_LEVELS = np.arange(65536, dtype=np.float64)
_LEVELS.flags.writeable = False


def _histogram_stats(hist: np.ndarray, offset: int, n_pixels: int, n_zero: int, n_sat: int,
                     saturation: float | None) -> FrameStats:
    """:class:`FrameStats` of integer data from its 65536-bin histogram (bin 0 = ``offset``)."""
    nan = math.nan
    n_finite = int(hist.sum())
    levels = _LEVELS if offset == 0 else _LEVELS + offset
    if n_finite:
        cum = np.cumsum(hist)
        mean = float((hist * levels).sum() / n_finite)
        std = float(math.sqrt((hist * (levels - mean) ** 2).sum() / n_finite))
        nz = np.flatnonzero(hist)
        p16, med, p84 = (_hist_percentile(cum, levels, q) for q in _PERCENTILES)
        vmin, vmax = float(levels[nz[0]]), float(levels[nz[-1]])
    else:  # pragma: no cover - an integer frame of zero pixels
        mean = std = p16 = med = p84 = vmin = vmax = nan
    return FrameStats(n_pixels=n_pixels, n_finite=n_finite, mean=mean, median=med, std=std,
                      p16=p16, p84=p84, min=vmin, max=vmax,
                      zero_fraction=n_zero / n_pixels if n_pixels else nan,
                      saturated_fraction=n_sat / n_pixels if saturation is not None else nan)


def histogram_statistics(hist: np.ndarray, *, saturation: float | None = None) -> FrameStats:
    """:func:`frame_statistics` of an unsigned 16-bit frame from its histogram, bit for bit.

    The converter counts the histogram while it encodes the frame
    (:func:`utils.io.conversion.encode_frame`), so the statistics cost no pass of their own.

    Parameters
    ----------
    hist : numpy.ndarray
        65536 bins, ``hist[v]`` = pixels of stored value ``v`` [adu].
    saturation : float, optional
        Saturation level [stored ADU].

    Examples
    --------
    >>> data = np.array([[0, 16, 32], [48, 65520, 65520]], dtype=np.uint16)
    >>> hist = np.bincount(data.ravel(), minlength=65536)
    >>> histogram_statistics(hist, saturation=65520) == frame_statistics(data, saturation=65520)
    True
    """
    hist = np.asarray(hist, dtype=np.int64)
    if hist.shape != (65536,):
        raise ValueError(f"hist must have 65536 bins, not shape {hist.shape}")
    n_pixels = int(hist.sum())
    # as frame_statistics counts them: pixels == 0, and pixels >= saturation
    n_sat = 0 if saturation is None else int(hist[_first_at_least(saturation):].sum())
    return _histogram_stats(hist, 0, n_pixels, int(hist[0]), n_sat, saturation)


def _first_at_least(level: float) -> int:
    """The first of the bins 0..65535 whose value is >= ``level`` (65536 when none is)."""
    if math.isnan(level) or level > 65535:
        return 65536
    return 0 if level <= 0 else math.ceil(level)


def _reads_back(key: str, value: float, comment: str) -> bool:
    """Whether the card :func:`utils.io.fitsio.card_image` writes for a float reads back as
    ``value`` bit for bit (as :class:`astropy.io.fits.Card` reads it)."""
    from ..io.fastheader import plain_value

    image = fitsio.card_image(key, value, comment)
    if len(image) == 80 and image.startswith(f"{key:8}= "):
        # one plain card, read as astropy reads it (a Card.fromstring costs 50 us); NaN or
        # inf are written as text, which reads back as a string
        read = plain_value(image[10:].encode("ascii"))
        if read is not None:
            return read == value
    from astropy.io.fits import Card

    return Card.fromstring(image[:80]).value == value


def statistics_cards(stats: FrameStats, saturation: float) -> list[tuple[str, object, str]]:
    """Header cards recording the statistics of an integer frame (``FRNPIX``... ``FRMAX``).

    The converter writes them so that the index need not read the pixels again
    (:func:`recorded_statistics` reads them back).  Counts are written as integers and
    every value is checked to read back bit for bit; when one would not (a float whose
    text does not fit the 20 columns of a card, e.g. ``1.2345678901234567e-05``), or the
    saturation level is not a float32 number (the index would count against it rounded),
    no card is returned and the index measures the frame instead.

    Parameters
    ----------
    stats : FrameStats
        From :func:`histogram_statistics` (or :func:`frame_statistics`) of an integer
        frame (every pixel finite).
    saturation : float
        [stored ADU] The level ``stats.saturated_fraction`` was counted against.
    """
    n = stats.n_pixels
    # the index compares float32 pixels with the level (in float32): a level float32 cannot
    # hold (65520.001) could count other pixels than the converter did
    if stats.n_finite != n or not n or not math.isfinite(saturation) \
            or float(np.float32(saturation)) != saturation:
        return []
    cards = [
        (kw.FRNPIX, n, "pixels the FR statistics cover"),
        (kw.FRNZERO, round(stats.zero_fraction * n), "pixels exactly 0"),
        (kw.FRNSAT, round(stats.saturated_fraction * n), "pixels >= FRSATLEV"),
        (kw.FRSATLEV, float(saturation), "[adu] saturation level of FRNSAT"),
        (kw.FRMEAN, stats.mean, "[adu] mean of the pixels"),
        (kw.FRMEDIAN, stats.median, "[adu] median of the pixels"),
        (kw.FRSTD, stats.std, "[adu] standard deviation of the pixels"),
        (kw.FRP16, stats.p16, "[adu] 16th percentile of the pixels"),
        (kw.FRP84, stats.p84, "[adu] 84th percentile of the pixels"),
        (kw.FRMIN, stats.min, "[adu] smallest pixel"),
        (kw.FRMAX, stats.max, "[adu] largest pixel"),
    ]
    for key, value, comment in cards:
        if isinstance(value, float) and not _reads_back(key, value, comment):
            return []  # NaN, or rounded by the card's 20 columns
    return cards


def _card_int(header, key: str) -> int | None:
    value = header.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _card_float(header, key: str) -> float | None:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def recorded_statistics(header, saturation: float) -> FrameStats | None:
    """The statistics :func:`statistics_cards` recorded in a frame's header, or None.

    None (measure the pixels instead) unless every card is there and well-formed, the
    pixel count is the header's ``NAXIS1 x NAXIS2``, the counts are within it, the values
    in order (min <= p16 <= median <= p84 <= max, the mean within the extremes, std >= 0)
    and the recorded saturation level is ``saturation``, the level the caller would
    measure with.  The result is the :class:`FrameStats` the converter recorded, every
    number bit for bit what :func:`frame_statistics` of the file gives.

    Parameters
    ----------
    header : mapping
        The frame's primary header.
    saturation : float
        [stored ADU] Saturation level the caller counts against.
    """
    counts = [_card_int(header, key) for key in (kw.FRNPIX, kw.FRNZERO, kw.FRNSAT)]
    values = [_card_float(header, key) for key in
              (kw.FRSATLEV, kw.FRMEAN, kw.FRMEDIAN, kw.FRSTD, kw.FRP16, kw.FRP84, kw.FRMIN,
               kw.FRMAX)]
    shape = [_card_int(header, key) for key in ("NAXIS1", "NAXIS2")]
    if None in counts or None in values or None in shape or header.get("NAXIS") != 2:
        return None
    n, n_zero, n_sat = counts
    level, mean, median, std, p16, p84, vmin, vmax = values
    if n != shape[0] * shape[1] or n <= 0 or not 0 <= n_zero <= n or not 0 <= n_sat <= n \
            or level != saturation or not vmin <= p16 <= median <= p84 <= vmax \
            or not vmin <= mean <= vmax or std < 0:
        return None
    return FrameStats(n_pixels=n, n_finite=n, mean=mean, median=median, std=std, p16=p16,
                      p84=p84, min=vmin, max=vmax, zero_fraction=n_zero / n,
                      saturated_fraction=n_sat / n)


def median_with_error(values) -> tuple[float, float]:
    """Median of a map's pixel values and its standard error as an estimate of the typical
    pixel of the sensor (the population median).

    ``se = 1 / (2 sqrt(N) f(m))``, the large-sample error of a median, with the density
    ``f`` of the values at the median measured from the map (fraction of values within
    ``+- h`` of it over ``2 h``, ``h`` = 0.3 of their robust spread): no shape is assumed
    (dark current is log-normal), and for Gaussian values it is ``sqrt(pi/2) sigma /
    sqrt(N)``.  The measurement noise of the pixels is part of the values' spread.

    Returns
    -------
    (float, float)
        Median and its standard error (NaN, NaN without finite values).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> m, e = median_with_error(rng.normal(100.0, 10.0, 10000))
    >>> bool(abs(m - 100) < 5 * e), bool(abs(e / (1.2533 * 10 / 100) - 1) < 0.1)
    (True, True)
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(v)
    if not finite.all():  # (no copy of a map whose values are all finite)
        v = v[finite]
    del finite
    if v.size == 0:
        return math.nan, math.nan
    m = float(np.median(v))
    # |v - m| made once, in place; its median partitions it in place (the order does not
    # change a median or a count)
    dev = v - m
    np.abs(dev, out=dev)
    spread = MAD_TO_STD * float(np.median(dev, overwrite_input=True))
    if spread == 0:
        return m, 0.0
    h = 0.3 * spread
    density = np.count_nonzero(dev <= h) / (v.size * 2 * h)
    return m, float(1.0 / (2.0 * math.sqrt(v.size) * density))


def spread_with_error(values, errors=None) -> tuple[float, float]:
    """Spatial standard deviation of a map with the measurement noise removed, and its error.

    ``D = sqrt(m2 - mean(e^2))`` with ``m2`` the variance of the values and ``e`` the
    per-pixel measurement errors (EMVA 1288's DSNU and PRNU subtract the temporal noise
    the same way); ``se(D) = sqrt((m4 - m2^2) / N) / (2 D)`` from the values' fourth
    central moment, so heavy-tailed maps get honest errors.

    Returns
    -------
    (float, float)
        ``(D, se)``; ``(0, se)`` when the noise explains all the spread.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> t = rng.normal(0.0, 5.0, 40000)
    >>> d, e = spread_with_error(t + rng.normal(0, 2.0, t.size), np.full(t.size, 2.0))
    >>> bool(abs(d - 5.0) < 5 * e)
    True
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    s = np.zeros(v.shape) if errors is None else np.asarray(errors, dtype=np.float64).ravel()
    ok = np.isfinite(v) & np.isfinite(s)
    if not ok.all():  # (no copies of maps whose values are all finite)
        v, s = v[ok], s[ok]
    del ok
    if v.size < 4:
        return math.nan, math.nan
    d = v - v.mean()
    m2, m4 = float(np.mean(d ** 2)), float(np.mean(d ** 4))
    d2 = m2 - float(np.mean(s ** 2))
    se_d2 = math.sqrt(max(m4 - m2 ** 2, 0.0) / v.size)
    if d2 <= 0:
        return 0.0, math.sqrt(se_d2)
    dsnu = math.sqrt(d2)
    return dsnu, se_d2 / (2 * dsnu)
