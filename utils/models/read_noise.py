"""Read noise from differences of consecutive frames, free of fixed pattern.

Two bias frames taken one after the other share the fixed pattern (pixel
offsets, row and column structure) and almost the same temperature; their
difference holds only temporal noise, ``sqrt(2)`` times the read noise.
Frames are paired without overlap, ``(0, 1), (2, 3), ...`` in frame order
within an attempt, so pairs are independent.  The difference's frame-wide
median is removed first: it is a common offset (a small temperature drift),
not noise.

Per pixel the variance is ``sum(d**2) / (2 n)`` over its ``n`` pairs, a
chi-square estimate with ``n`` degrees of freedom.  The sensor's read noise
is reported as the *typical* pixel's: the mean variance of the pixels below
the 99.9 % point of the chi-square scatter about the median variance (pixels
with excess noise are left out; the truncation of the chi-square tail is
corrected), square-rooted; its standard error comes from the scatter of
those variances, ``std / sqrt(pixels)``.  The root-mean-square over pixels
(noisy pixels included) is reported next to it.

Frames are read two at a time: memory does not grow with their number.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import special

from ..errors import FrameError
from ..io.fitsio import fits_layout, read_image, read_rows
from ..progress import progress
from ..stack.stats import exact_median

logger = logging.getLogger(__name__)


def frame_pairs(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """Non-overlapping consecutive pairs ``(0, 1), (2, 3)...`` of frames, within each attempt.

    Parameters
    ----------
    rows : pandas.DataFrame
        Index rows with ``PATH`` and, when known, ``ATTEMPT``, ``FRAMENUM``, ``TIMESTAMP``.

    Returns
    -------
    list of (str, str)
    """
    table = rows.copy()
    for column in ("ATTEMPT", "FRAMENUM", "TIMESTAMP"):
        if column not in table:
            table[column] = np.nan
    table["ATTEMPT"] = table["ATTEMPT"].astype(object).where(table["ATTEMPT"].notna(), "")
    pairs = []
    for _, part in table.groupby("ATTEMPT", sort=True):
        part = part.sort_values(["FRAMENUM", "TIMESTAMP", "PATH"], na_position="last")
        paths = part["PATH"].astype(str).tolist()
        pairs.extend(zip(paths[0::2], paths[1::2]))
    return pairs


@dataclass
class ReadNoise:
    """Per-pixel read noise and its summary.

    Attributes
    ----------
    variance : numpy.ndarray or None
        Per-pixel variance estimate [adu^2] (NaN where no pair was usable); None once
        dropped by :meth:`numbers_only`.
    npairs : int
        Frame pairs used.
    median : float
        Read noise of the typical pixel [adu] (see module notes).
    median_err : float
        Standard error of ``median`` [adu].
    rms : float
        Root of the mean variance over pixels (noisy pixels included) [adu].
    """

    variance: np.ndarray | None
    npairs: int
    median: float
    median_err: float
    rms: float

    def numbers_only(self) -> "ReadNoise":
        """The same summary without the per-pixel map (a full frame each: a table of
        temperature bins needs only the numbers)."""
        return dataclasses.replace(self, variance=None)

    @property
    def map(self) -> np.ndarray:
        """Per-pixel read noise [adu], float32."""
        return np.sqrt(self.variance).astype(np.float32)

    @property
    def map_err(self) -> np.ndarray:
        """One-sigma error of :attr:`map` [adu]: ``sigma / sqrt(2 n)`` for n pairs."""
        return (self.map / math.sqrt(2 * max(self.npairs, 1))).astype(np.float32)


def _difference_py(first, second, out):
    """``out = float64(first) - float64(second)``, element by element (numba)."""
    a, b, o = first.ravel(), second.ravel(), out.ravel()
    for i in range(o.size):
        o[i] = np.float64(a[i]) - np.float64(b[i])


def _add_squares_py(diff, centre, sum_sq):
    """``sum_sq += (diff - centre) ** 2`` element by element, each step the float64 operation
    of the array path (subtract, multiply, add), so the same numbers (numba)."""
    d, s = diff.ravel(), sum_sq.ravel()
    for i in range(s.size):
        x = d[i] - centre
        s[i] += x * x


try:  # one pass each instead of numpy's casting subtract and three full-frame passes
    from numba import njit

    _difference = njit(nogil=True, cache=True)(_difference_py)
    _add_squares = njit(nogil=True, cache=True)(_add_squares_py)
except ImportError:  # pragma: no cover
    _difference = _add_squares = None


class ReadNoiseAccumulator:
    """Streams frame pairs into per-pixel sums of squared differences."""

    def __init__(self):
        self.sum_sq: np.ndarray | None = None
        self._work: np.ndarray | None = None  # one pair's difference, reused
        self.npairs = 0
        self.skipped: list[str] = []

    def add(self, first: np.ndarray, second: np.ndarray) -> None:
        """Add one pair of frames (any numeric dtype) [adu]."""
        if self._work is None or self._work.shape != np.shape(first):
            self._work = np.empty(np.shape(first), np.float64)
        # in one reused float64 buffer: the numbers of (a - b) - median, squared, without
        # four new full-frame float64 arrays per pair (~130 MB at 2048^2)
        diff = self._work
        compiled = _difference is not None and all(
            isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64)
            and x.flags.c_contiguous for x in (first, second))
        if compiled:
            _difference(first, second, diff)
        else:
            np.subtract(first, second, out=diff, dtype=np.float64)
        centre = exact_median(diff)
        if self.sum_sq is None:
            self.sum_sq = np.zeros(diff.shape, np.float64)
        if compiled:
            _add_squares(diff, centre, self.sum_sq)
        else:
            diff -= centre
            np.multiply(diff, diff, out=diff)
            self.sum_sq += diff
        self.npairs += 1

    def merge(self, other: "ReadNoiseAccumulator") -> None:
        """Add another accumulator's pairs (e.g. pool temperature bins)."""
        if other.sum_sq is None:
            return
        if self.sum_sq is None:
            self.sum_sq = np.zeros_like(other.sum_sq)
        self.sum_sq += other.sum_sq
        self.npairs += other.npairs
        self.skipped += other.skipped

    def result(self) -> ReadNoise | None:
        """The read noise of the pairs added, or None without any pair."""
        if self.sum_sq is None or self.npairs == 0:
            return None
        from ..stack.stats import chi2_median_ratio

        variance = (self.sum_sq / (2 * self.npairs)).astype(np.float32)
        finite = variance[np.isfinite(variance)].astype(np.float64)
        # typical pixel: mean variance of the pixels below the 99.9 % point of a chi-square
        # scatter about the median (excess-noise pixels out; a mean, unlike a median, does not
        # snap to the lattice of values that 12-bit steps leave in the variances)
        n = self.npairs
        cut = exact_median(finite) / chi2_median_ratio(n) * chi2_ppf(0.999, n) / n
        core = finite[finite <= cut]
        # E[X | X < a] = sigma^2 P(chi2_{n+2} < a) / P(chi2_n < a) for X = sigma^2 chi2_n / n
        a = chi2_ppf(0.999, n)
        centre = float(np.mean(core)) * 0.999 / chi2_cdf(a, n + 2) if core.size else math.nan
        median = math.sqrt(centre)
        var_err = float(np.std(core)) / math.sqrt(core.size) if core.size > 1 else math.nan
        return ReadNoise(variance=variance, npairs=self.npairs, median=median,
                         median_err=var_err / (2 * median) if median > 0 else math.nan,
                         rms=math.sqrt(float(np.mean(finite))))


def chi2_ppf(q, dof):
    """``scipy.stats.chi2.ppf(q, dof)`` for ``0 < q < 1`` and ``dof > 0``, the same numbers:
    what it evaluates (``2 gammaincinv(dof / 2, q)``, times scale 1 plus loc 0), without
    importing ``scipy.stats`` (~0.7 s here at every start of a command)."""
    return 2 * special.gammaincinv(np.asarray(dof) / 2, np.asarray(q, dtype=np.float64))


def chi2_cdf(x, dof):
    """``scipy.stats.chi2.cdf(x, dof)`` for finite ``x > 0`` and ``dof > 0``, the same numbers
    (``chdtr(dof, x)``; see :func:`chi2_ppf`)."""
    return special.chdtr(np.asarray(dof), np.asarray(x, dtype=np.float64))


def _read_frame(path) -> np.ndarray:
    """A frame's pixels: its rows straight from the file (float32) when float32 holds them
    exactly -- 8- and 16-bit integers (unsigned by ``BZERO`` 32768 too), unscaled float32 --
    else through astropy.  The differences are then the same numbers, read ~4x faster."""
    layout = fits_layout(path)
    integer = layout.dtype.kind in "iu" and layout.dtype.itemsize <= 2 and \
        layout.bzero in (0.0, 32768.0)
    if layout.bscale == 1.0 and (integer or (layout.dtype == np.dtype(">f4")
                                             and layout.bzero == 0.0)):
        return read_rows(layout, 0, layout.shape[0])
    return read_image(path)[0]


def read_noise(pairs: Iterable[tuple[str, str]], *, progress_bar: bool = False,
               desc: str = "read noise") -> ReadNoiseAccumulator:
    """Accumulate frame pairs from files, two frames in memory at a time.

    A pair with an unreadable frame or a shape different from the first pair's
    is skipped with a warning naming the file (listed in ``skipped``).
    """
    acc = ReadNoiseAccumulator()
    pairs = list(pairs)
    for first, second in progress(pairs, desc=desc, enabled=progress_bar):
        try:
            a, b = _read_frame(first), _read_frame(second)
        except FrameError as err:
            logger.warning("%s; pair skipped from the read noise", err)
            acc.skipped.append(str(err.path))
            continue
        if a.shape != b.shape or (acc.sum_sq is not None and a.shape != acc.sum_sq.shape):
            logger.warning("%s and %s: shapes differ; pair skipped from the read noise",
                           first, second)
            acc.skipped.append(str(second))
            continue
        acc.add(a, b)
    return acc


def read_noise_table(results: Sequence[tuple[float, ReadNoise | None]],
                     to_electrons: float | None = None) -> pd.DataFrame:
    """One row per temperature bin: ``TBIN, NPAIRS, RN_MEDIAN, RN_MEDIAN_ERR, RN_RMS`` [adu]
    (and ``*_E`` [e-] when ``to_electrons`` e-/adu is given)."""
    rows = []
    for temperature, rn in results:
        if rn is None:
            continue
        row = {"TBIN": temperature, "NPAIRS": rn.npairs, "RN_MEDIAN": rn.median,
               "RN_MEDIAN_ERR": rn.median_err, "RN_RMS": rn.rms}
        if to_electrons:
            row.update(RN_MEDIAN_E=rn.median * to_electrons,
                       RN_MEDIAN_ERR_E=rn.median_err * to_electrons, RN_RMS_E=rn.rms * to_electrons)
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["ReadNoise", "ReadNoiseAccumulator", "frame_pairs", "read_noise", "read_noise_table",
           "chi2_ppf", "chi2_cdf"]
