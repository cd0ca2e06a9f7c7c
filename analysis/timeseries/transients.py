"""Outlier pixels and transient events in a frame sequence, streamed in two passes.

Estimators (one frame in memory at a time):

1. *pilot*: per-pixel median and 1.4826 x MAD of ``pilot_frames`` frames
   spread over the sequence (:func:`utils.stack.temporal.robust_reference`),
   floored at two ADC steps;
2. *pass 1*: per-pixel mean and standard deviation (Welford, float64) of the
   samples within ``pilot_clip`` robust sigma of the pilot, so particle hits and
   saturated samples do not inflate them; per-frame statistics; optionally a
   per-frame common-mode offset (median of frame - pilot over a pixel sample)
   removed before accumulating;
3. *pass 2*: a pixel is an outlier in a frame when
   ``|x - offset - mean| > threshold x sigma``, sigma floored at the
   quantisation noise ``ADUSCALE / sqrt(12)``; outlier pixels that touch
   (8-connectivity) form one *event* (one particle hit spreads over a few
   pixels); an event whose strongest pixel is an outlier neither in the
   previous nor in the next frame is a *transient* (a hit lasts one frame; a
   pixel that turned hot during the run, or a slow RTS pixel, is an outlier in
   consecutive frames: against the clipped temporal statistics every frame on
   the minority side of its step is an outlier, which the outlier and event
   counts include and the transient count does not).  Also:
   the cumulative outlier map, outliers per pixel, and a decimated
   display-resolution copy of the sequence for the animations.

Threshold: 5 sigma by default.  With Gaussian noise a pixel passes it by
chance with probability 5.7e-7 per frame (2.4 pixels of a 2048 x 2048 frame);
at the old main's 2 sigma, 4.6 % of all pixels (190 000 per 2048 x 2048 frame)
would be "outliers" and swamp every transient.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from utils.errors import FrameError
from utils.io.fitsio import read_image
from utils.progress import progress
from utils.settings import field
from utils.stack.stats import frame_statistics
from utils.stack.temporal import TemporalResult, TemporalStats, robust_reference

from .sequence import FrameSequence, evenly_spaced

logger = logging.getLogger(__name__)

#: Pixels sampled for the per-frame common-mode offset.
COMMON_MODE_SAMPLE = 65536
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class TransientSettings:
    """How outliers and events are found in a sequence."""

    threshold: float = field(5.0, "[sigma] outlier threshold on |x - temporal mean| / temporal "
                                  "sigma (old main: 2, old function default: 5)")
    pilot_frames: int = field(15, "frames spread over the sequence for the robust pilot "
                                  "(median, MAD)")
    pilot_clip: float = field(5.0, "[sigma] samples beyond this from the pilot median are left "
                                   "out of the temporal mean and sigma")
    common_mode: bool = field(True, "remove each frame's median offset from the temporal "
                                    "reference before the statistics")
    animation_frames: int = field(100, "largest number of frames in the animations")
    display_size: int = field(256, "[pixel] largest side of the animation frames")

    def __post_init__(self):
        if not self.threshold > 0 or not self.pilot_clip > 0:
            raise ValueError("threshold and pilot_clip must be > 0 sigma")
        if self.pilot_frames < 3 or self.animation_frames < 1 or self.display_size < 8:
            raise ValueError("pilot_frames must be >= 3, animation_frames >= 1 and "
                             "display_size >= 8")


@dataclass
class TransientResult:
    """What :func:`find_transients` measured.

    Attributes
    ----------
    stats : TemporalResult
        Per-pixel temporal mean and sigma [adu], accepted and rejected counts.
    table : pandas.DataFrame
        One row per frame: ``MEAN, MEDIAN, STD, MIN, MAX`` [adu] (all pixels),
        ``SATFRACTION``, ``OFFSET`` [adu] (common mode), ``N_OUTLIERS``,
        ``N_POSITIVE``, ``N_NEGATIVE`` (pixels), ``N_EVENTS`` (connected groups) and
        ``N_TRANSIENTS`` (events whose strongest pixel is an outlier in neither
        neighbouring frame).
    cumulative : numpy.ndarray
        True where a pixel was an outlier in at least one frame.
    outlier_frames : numpy.ndarray
        Frames in which each pixel was an outlier (int32).
    first, last : numpy.ndarray
        First and last frame [adu] (float32).
    display_frames, display_outliers : numpy.ndarray
        ``(M, h, w)`` block-averaged frames [adu] and block maxima of ``|z|`` over
        outlier pixels (0 elsewhere) of the decimated sequence.
    display_index : numpy.ndarray
        Sequence index of each displayed frame.
    display_factor : int
        Block size of the display images [pixel].
    sigma_floor : float
        Floor of the temporal sigma [adu].
    threshold : float
        Outlier threshold used [sigma].
    """

    stats: TemporalResult
    table: pd.DataFrame
    cumulative: np.ndarray
    outlier_frames: np.ndarray
    first: np.ndarray
    last: np.ndarray
    display_frames: np.ndarray
    display_outliers: np.ndarray
    display_index: np.ndarray
    display_factor: int
    sigma_floor: float
    threshold: float


def block_reduce(image: np.ndarray, factor: int, func=np.mean) -> np.ndarray:
    """Reduce ``image`` by ``factor x factor`` blocks (edges that do not fill a block dropped).

    Examples
    --------
    >>> block_reduce(np.arange(16.0).reshape(4, 4), 2).tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    if factor <= 1:
        return np.asarray(image, dtype=np.float32)
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    if h == 0 or w == 0:
        return np.asarray(image, dtype=np.float32)
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor)
    return func(blocks, axis=(1, 3)).astype(np.float32)


def _read(path) -> np.ndarray:
    data, _ = read_image(path)
    return np.asarray(data)


def _subsample(shape) -> tuple[slice, slice]:
    stride = max(1, int(math.sqrt(shape[0] * shape[1] / COMMON_MODE_SAMPLE)))
    return slice(0, None, stride), slice(0, None, stride)


def common_mode(x: np.ndarray, ref: np.ndarray, sigma: np.ndarray, clip: float) -> float:
    """Mean of ``x - ref`` over the samples within ``clip`` sigma (hits left out) [adu].

    A mean, not a median: the differences of quantised frames take a few discrete
    values, and their median jumps by whole ADC steps from frame to frame.

    Examples
    --------
    >>> common_mode(np.array([1.0, 2.0, 3.0, 500.0]), np.zeros(4), np.ones(4), 5.0)
    2.0
    """
    d = x.astype(np.float64) - ref
    inside = np.abs(d) <= clip * sigma
    return float(d[inside].mean()) if inside.any() else 0.0


def event_peaks(mask: np.ndarray, strength: np.ndarray | None = None) -> np.ndarray:
    """Strongest pixel (largest ``strength``, e.g. ``|z|``) of each 8-connected group of True
    pixels, as an ``(n, 2)`` array of (row, column).

    Examples
    --------
    >>> m = np.zeros((5, 5), bool); m[0, 0] = m[1, 1] = m[4, 4] = True
    >>> strength = np.zeros((5, 5)); strength[1, 1] = 9.0
    >>> event_peaks(m, strength).tolist()
    [[1, 1], [4, 4]]
    """
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return np.zeros((0, 2), dtype=np.intp)
    labels, _ = ndimage.label(mask, structure=_EIGHT)
    lab = labels.ravel()[idx]
    weight = np.zeros(idx.size) if strength is None else np.asarray(strength).ravel()[idx]
    # only the (few) outlier pixels are sorted: by label, strongest first
    order = np.lexsort((-weight, lab))
    first = np.ones(order.size, dtype=bool)
    first[1:] = lab[order][1:] != lab[order][:-1]
    return np.column_stack(np.unravel_index(idx[order[first]], mask.shape)).astype(np.intp)


def count_transients(peaks: np.ndarray, *neighbours: np.ndarray | None) -> int:
    """Events whose strongest pixel is not an outlier in any of the neighbouring frames.

    A particle hit lasts one frame; a pixel that turned hot (or a slow RTS pixel)
    is an outlier in consecutive frames.  Testing the strongest pixel only keeps
    a hit that lands next to an older outlier a transient.

    Examples
    --------
    >>> prev = np.zeros((5, 5), bool); prev[4, 4] = True
    >>> count_transients(np.array([[0, 0], [4, 4]]), prev, None)
    1
    """
    keep = np.ones(len(peaks), dtype=bool)
    for other in neighbours:
        if other is not None and len(peaks):
            keep &= ~other[peaks[:, 0], peaks[:, 1]]
    return int(keep.sum())


def _flag_py(data, offset, mean, sigma, threshold, outlier, absz, cumulative, counts):
    """One pass: ``|z|``, the outlier flags and the cumulative maps; returns (total, positive)."""
    x = data.ravel()
    m, s = mean.ravel(), sigma.ravel()
    out, az = outlier.ravel(), absz.ravel()
    cum, cnt = cumulative.ravel(), counts.ravel()
    total = 0
    positive = 0
    for i in range(x.size):
        z = (np.float32(x[i]) - offset - m[i]) / s[i]
        a = abs(z)
        az[i] = a
        flag = a > threshold
        out[i] = flag
        if flag:
            total += 1
            if z > 0:
                positive += 1
            cum[i] = True
            cnt[i] += 1
    return total, positive


try:  # numba is a dependency; numpy does the same in several passes without it
    from numba import njit

    _flag = njit(nogil=True, cache=True)(_flag_py)
except ImportError:  # pragma: no cover
    def _flag(data, offset, mean, sigma, threshold, outlier, absz, cumulative, counts):
        """Numpy version of :func:`_flag_py`."""
        z = (data.astype(np.float32) - offset - mean) / sigma
        np.abs(z, out=absz)
        np.greater(absz, threshold, out=outlier)
        cumulative |= outlier
        counts += outlier
        return int(outlier.sum()), int((outlier & (z > 0)).sum())


def find_transients(seq: FrameSequence, settings: TransientSettings = TransientSettings(), *,
                    progress_bar: bool = False) -> TransientResult:
    """Temporal statistics, per-frame outliers and events of a sequence (two streamed passes).

    Parameters
    ----------
    seq : FrameSequence
        The frames, in order (at least 3).
    settings : TransientSettings
        Thresholds and display sizes.
    progress_bar : bool, optional
        Show progress bars.

    Returns
    -------
    TransientResult

    Raises
    ------
    FrameError
        When a frame cannot be read (the caller flags the sequence).
    """
    n = len(seq)
    if n < 3:
        raise ValueError(f"a sequence needs at least 3 frames, got {n}")
    shape = seq.shape
    floor = 2.0 * seq.adu_scale  # two ADC steps: the MAD of quantised samples can be 0
    pilot = [seq.paths[i] for i in evenly_spaced(n, settings.pilot_frames)]
    ref, ref_sigma = robust_reference(pilot, min_scale=floor)
    acc = TemporalStats(shape, reference=ref, scale=ref_sigma, clip=settings.pilot_clip)
    sub = _subsample(shape)
    offsets = np.zeros(n)
    rows = []
    first = last = None
    for i, path in enumerate(progress(seq.paths, desc="temporal statistics",
                                      enabled=progress_bar)):
        data = _read(path)
        st = frame_statistics(data, saturation=seq.saturation)
        x = data.astype(np.float32)
        if settings.common_mode:
            offsets[i] = common_mode(x[sub], ref[sub], ref_sigma[sub], settings.pilot_clip)
        if i == 0:
            first = x.copy()
        if i == n - 1:
            last = x.copy()
        valid = data < seq.saturation
        acc.add(x - np.float32(offsets[i]), valid)
        rows.append({"MEAN": st.mean, "MEDIAN": st.median, "STD": st.std, "MIN": st.min,
                     "MAX": st.max, "SATFRACTION": st.saturated_fraction, "OFFSET": offsets[i]})
    stats = acc.result()
    sigma_floor = seq.adu_scale / math.sqrt(12.0)
    sigma = np.maximum(np.nan_to_num(stats.std, nan=np.inf), np.float32(sigma_floor)).astype(
        np.float32)
    mean = np.nan_to_num(stats.mean, nan=0.0).astype(np.float32)
    cumulative = np.zeros(shape, dtype=bool)
    counts = np.zeros(shape, dtype=np.int32)
    show = set(evenly_spaced(n, settings.animation_frames).tolist())
    factor = max(1, math.ceil(max(shape) / settings.display_size))
    disp_frames, disp_outliers, disp_index = [], [], []
    threshold = np.float32(settings.threshold)
    # a frame's transients are known once the next frame's outliers are: keep two frames
    before = previous = None          # outlier masks of frames i-2 and i-1
    pending = None                    # event peaks of frame i-1
    for i, path in enumerate(progress(seq.paths, desc="outliers", enabled=progress_bar)):
        data = _read(path)
        outlier = np.empty(shape, dtype=bool)
        absz = np.empty(shape, dtype=np.float32)
        total, positive = _flag(data, np.float32(offsets[i]), mean, sigma, threshold, outlier,
                                absz, cumulative, counts)
        peaks = event_peaks(outlier, absz)
        if pending is not None:
            rows[i - 1]["N_TRANSIENTS"] = count_transients(pending, before, outlier)
        before, previous, pending = previous, outlier, peaks
        rows[i].update(N_OUTLIERS=total, N_POSITIVE=positive, N_NEGATIVE=total - positive,
                       N_EVENTS=len(peaks))
        if i in show:
            disp_index.append(i)
            disp_frames.append(block_reduce(data.astype(np.float32), factor))
            disp_outliers.append(block_reduce(np.where(outlier, absz, 0.0), factor, np.max))
    rows[n - 1]["N_TRANSIENTS"] = count_transients(pending, before, None)
    table = pd.DataFrame(rows)
    return TransientResult(stats=stats, table=table, cumulative=cumulative,
                           outlier_frames=counts, first=first, last=last,
                           display_frames=np.asarray(disp_frames),
                           display_outliers=np.asarray(disp_outliers),
                           display_index=np.asarray(disp_index, dtype=int),
                           display_factor=factor, sigma_floor=sigma_floor,
                           threshold=settings.threshold)


__all__ = ["TransientSettings", "TransientResult", "find_transients", "event_peaks",
           "count_transients", "common_mode", "block_reduce", "FrameError"]
