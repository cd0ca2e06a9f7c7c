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
   pixels); an event whose strongest pixel was not an outlier in the previous
   frame is a *transient* (a hit lasts one frame; a pixel that turned hot, or
   a slow RTS pixel, stays an outlier from frame to frame and is counted once).  Also:
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
        ``N_TRANSIENTS`` (events whose strongest pixel was not an outlier in the
        previous frame).
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


def count_events(mask: np.ndarray, previous: np.ndarray | None = None,
                 strength: np.ndarray | None = None) -> tuple[int, int]:
    """Number of 8-connected groups of True pixels, and of those new in this frame.

    A group whose strongest pixel (largest ``strength``, e.g. ``|z|``) was already
    an outlier in ``previous`` (the last frame's outliers) is not new: a pixel that
    turned hot, or a slow RTS pixel, stays an outlier from frame to frame, while a
    particle hit lasts one frame.  (Testing the strongest pixel only, not every
    pixel of the group, keeps a hit that lands next to an older outlier new.)

    Examples
    --------
    >>> m = np.zeros((5, 5), bool); m[0, 0] = m[1, 1] = m[4, 4] = True
    >>> prev = np.zeros((5, 5), bool); prev[4, 4] = True
    >>> count_events(m), count_events(m, prev)
    ((2, 2), (2, 1))
    """
    if not mask.any():
        return 0, 0
    labels, n = ndimage.label(mask, structure=_EIGHT)
    if previous is None or not previous.any():
        return int(n), int(n)
    weight = np.ones(mask.shape, np.float32) if strength is None else strength
    peaks = ndimage.maximum_position(weight, labels, np.arange(1, n + 1))
    old = sum(bool(previous[p]) for p in peaks)
    return int(n), int(n - old)


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
            offsets[i] = float(np.median(x[sub] - ref[sub]))
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
    sigma = np.maximum(np.nan_to_num(stats.std, nan=np.inf), np.float32(sigma_floor))
    mean = np.nan_to_num(stats.mean, nan=0.0)
    cumulative = np.zeros(shape, dtype=bool)
    counts = np.zeros(shape, dtype=np.int32)
    show = set(evenly_spaced(n, settings.animation_frames).tolist())
    factor = max(1, math.ceil(max(shape) / settings.display_size))
    disp_frames, disp_outliers, disp_index = [], [], []
    threshold = np.float32(settings.threshold)
    previous = None
    for i, path in enumerate(progress(seq.paths, desc="outliers", enabled=progress_bar)):
        x = _read(path).astype(np.float32)
        z = (x - np.float32(offsets[i]) - mean) / sigma
        outlier = np.abs(z) > threshold
        cumulative |= outlier
        counts += outlier
        positive = int(np.count_nonzero(outlier & (z > 0)))
        total = int(np.count_nonzero(outlier))
        events, transients = count_events(outlier, previous, np.abs(z))
        previous = outlier
        rows[i].update(N_OUTLIERS=total, N_POSITIVE=positive, N_NEGATIVE=total - positive,
                       N_EVENTS=events, N_TRANSIENTS=transients)
        if i in show:
            disp_index.append(i)
            disp_frames.append(block_reduce(x, factor))
            disp_outliers.append(block_reduce(np.where(outlier, np.abs(z), 0.0), factor,
                                              np.max))
    table = pd.DataFrame(rows)
    return TransientResult(stats=stats, table=table, cumulative=cumulative,
                           outlier_frames=counts, first=first, last=last,
                           display_frames=np.asarray(disp_frames),
                           display_outliers=np.asarray(disp_outliers),
                           display_index=np.asarray(disp_index, dtype=int),
                           display_factor=factor, sigma_floor=sigma_floor,
                           threshold=settings.threshold)


__all__ = ["TransientSettings", "TransientResult", "find_transients", "count_events",
           "block_reduce", "FrameError"]
