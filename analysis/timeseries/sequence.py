"""A sequence of frames in acquisition order, with times since its first frame.

Only headers are read here.  The order is decided once for the whole
sequence, from the first source every frame has: the frame number in the file
name (``..._f12.fits``), else the header ``FRAMENUM``, else the time stamp;
ties and everything else fall back to the file name.  Times are
``TIMESTMP - TIMESTMP(first frame)`` [s] (the old operation analysis
subtracted an already-zeroed first value, leaving later frames on the
absolute clock); a time stamp of exactly 0 is a valid time, only a missing
one is missing.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from utils import adu
from utils import headers as kw
from utils.errors import FrameError
from utils.io.fitsio import read_header
from utils.io.tokens import file_frame_number

logger = logging.getLogger(__name__)

#: Time stamps above this are Unix times [s]; below, a relative clock (seconds since something).
UNIX_TIME_MIN = 1e8


def clock_kind(times) -> str:
    """``'unix'``, ``'relative'`` or ``'none'`` for a set of time stamps [s].

    Examples
    --------
    >>> clock_kind([1.7e9, 1.7e9 + 5]), clock_kind([0.0, 12.5]), clock_kind([np.nan])
    ('unix', 'relative', 'none')
    """
    t = np.asarray(times, dtype=float)
    t = t[np.isfinite(t)]
    if t.size == 0:
        return "none"
    return "unix" if np.median(t) > UNIX_TIME_MIN else "relative"


@dataclass
class FrameSequence:
    """Frames of one sequence, in acquisition order.

    Attributes
    ----------
    paths : list of pathlib.Path
        FITS files, in order.
    frame_numbers : numpy.ndarray
        Frame number of each (file name, else ``FRAMENUM``; NaN when neither).
    timestamps : numpy.ndarray
        Header time stamps [s] on the file's own clock (NaN when absent).
    temperatures, exptimes : numpy.ndarray
        ``TEMP`` [degC] and ``EXPTIME`` [s] (NaN when absent).
    adc_bits : int
        Converter bits (from ``ADCBITS`` of the first frame, else the default).
    saturation : float
        Saturation level [adu] (``SATLEVEL``, else from ``adc_bits``).
    shape : tuple of int
        ``(rows, columns)`` of every frame.
    order_source : str
        What the order came from: ``file name``, ``FRAMENUM``, ``TIMESTAMP`` or ``name``.
    unreadable : list of (str, str)
        Files left out and why.
    """

    paths: list
    frame_numbers: np.ndarray
    timestamps: np.ndarray
    temperatures: np.ndarray
    exptimes: np.ndarray
    adc_bits: int
    saturation: float
    shape: tuple
    order_source: str
    unreadable: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def times(self) -> np.ndarray:
        """Time since the first frame [s] (NaN where a frame has no time stamp)."""
        if len(self) == 0 or math.isnan(self.timestamps[0]):
            first = np.nanmin(self.timestamps) if np.isfinite(self.timestamps).any() else math.nan
        else:
            first = self.timestamps[0]
        return self.timestamps - first

    @property
    def start(self) -> float:
        """Time stamp of the time origin [s] (first frame's, else the earliest)."""
        return float(self.timestamps[0] - self.times[0]) if len(self) else math.nan

    @property
    def clock(self) -> str:
        """Clock of the time stamps: ``unix``, ``relative`` or ``none``."""
        return clock_kind(self.timestamps)

    @property
    def frame_interval(self) -> float:
        """Median time between consecutive frames [s] (NaN without times)."""
        dt = np.diff(self.timestamps)
        dt = dt[np.isfinite(dt)]
        return float(np.median(dt)) if dt.size else math.nan

    @property
    def adu_scale(self) -> int:
        """Stored ADU per ADC count."""
        return adu.adu_scale(self.adc_bits)


def read_sequence(paths: Sequence[str | os.PathLike]) -> FrameSequence:
    """Read the headers of a sequence's frames and put them in acquisition order.

    Unreadable files are left out and listed in ``unreadable`` (with a warning each);
    frames whose shape differs from the first readable one likewise.

    Parameters
    ----------
    paths : sequence of path-like
        FITS frames of one sequence, in any order.

    Returns
    -------
    FrameSequence
    """
    rows = []
    unreadable = []
    shape = None
    for path in paths:
        path = Path(path)
        try:
            header = read_header(path)
        except FrameError as err:
            logger.warning("%s: %s; left out of the sequence", path, err.reason)
            unreadable.append((str(path), err.reason))
            continue
        this = (int(header.get("NAXIS2", 0)), int(header.get("NAXIS1", 0)))
        if header.get("NAXIS") != 2:
            unreadable.append((str(path), "not a 2-D image"))
            logger.warning("%s: not a 2-D image; left out of the sequence", path)
            continue
        if shape is None:
            shape = this
        elif this != shape:
            reason = f"shape {this[1]}x{this[0]} differs from {shape[1]}x{shape[0]}"
            logger.warning("%s: %s; left out of the sequence", path, reason)
            unreadable.append((str(path), reason))
            continue
        rows.append((path, file_frame_number(path.name), kw.frame_number(header),
                     kw.timestamp(header), kw.sensor_temperature(header), kw.exptime(header),
                     header))
    if not rows:
        return FrameSequence([], np.array([]), np.array([]), np.array([]), np.array([]),
                             adu.DEFAULT_ADC_BITS, adu.saturation_level(adu.DEFAULT_ADC_BITS),
                             (0, 0), "name", unreadable)
    if all(r[1] is not None for r in rows):
        source, key = "file name", [float(r[1]) for r in rows]
    elif all(math.isfinite(r[2]) for r in rows):
        source, key = "FRAMENUM", [r[2] for r in rows]
    elif all(math.isfinite(r[3]) for r in rows):
        source, key = "TIMESTAMP", [r[3] for r in rows]
    else:
        source, key = "name", [0.0] * len(rows)
        logger.warning("%s: frames carry neither numbers nor time stamps; ordered by file name",
                       rows[0][0].parent)
    order = sorted(range(len(rows)), key=lambda i: (key[i], rows[i][0].name))
    rows = [rows[i] for i in order]
    numbers = np.array([float(r[1]) if r[1] is not None else r[2] for r in rows])
    stamps = np.array([r[3] for r in rows], dtype=float)
    finite = stamps[np.isfinite(stamps)]
    if finite.size > 1 and np.any(np.diff(finite) < 0):
        logger.warning("%s: time stamps do not increase in frame order (by %s)",
                       rows[0][0].parent, source)
    first = rows[0][6]
    bits = int(kw.get_float(first, kw.ADCBITS, adu.DEFAULT_ADC_BITS))
    saturation = kw.get_float(first, kw.SATLEVEL, adu.saturation_level(bits))
    return FrameSequence(paths=[r[0] for r in rows], frame_numbers=numbers, timestamps=stamps,
                         temperatures=np.array([r[4] for r in rows], dtype=float),
                         exptimes=np.array([r[5] for r in rows], dtype=float), adc_bits=bits,
                         saturation=saturation, shape=shape, order_source=source,
                         unreadable=unreadable)


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` indices spread evenly over ``range(n)``, first and last included.

    Examples
    --------
    >>> evenly_spaced(10, 4).tolist()
    [0, 3, 6, 9]
    """
    if n <= 0:
        return np.zeros(0, dtype=int)
    return np.unique(np.round(np.linspace(0, n - 1, min(n, k))).astype(int))


__all__ = ["FrameSequence", "read_sequence", "clock_kind", "evenly_spaced", "UNIX_TIME_MIN"]
