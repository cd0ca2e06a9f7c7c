"""Random-telegraph-signal (RTS) pixels in a long dark sequence at one temperature.

Frames are streamed by blocks of rows (every frame contributes the same rows;
memory is set by ``memory_limit``, never by the number of frames).  Per pixel:

1. *common mode*: each frame's median over the block is removed (slow
   offsets shared by all pixels are not telegraph noise);
2. *noise*: ``sigma_diff = 1.4826 MAD(x[t+1] - x[t]) / sqrt(2)``, robust to rare
   steps; *temporal correlation*: the von Neumann ratio
   ``eta = sum (x[t+1] - x[t])^2 / (2 sum (x - mean)^2)``, 1 for white noise
   with standard deviation ``sqrt((N - 2) / ((N - 1)(N + 1)))``; a pixel whose
   level stays put between switches has ``eta < 1``.  Candidates are pixels
   with ``z_eta < -z_threshold`` (5 sigma by default: about one white-noise
   pixel in 3.5 million passes);
3. each candidate is fitted with 2 and with 3 levels (hidden Markov model,
   Viterbi training, :mod:`.rts_kernels`); 3 levels are kept when the Bayesian
   information criterion prefers them by more than 10 and every pair of levels
   is separated by at least ``k_amplitude`` sigma;
4. a pixel is **RTS** when its levels differ by at least ``k_amplitude`` times
   its own noise (the within-level sigma of the fit, i.e. its read noise) and
   it switched at least ``min_transitions`` times; a correlated pixel with
   fewer switches is a **step** (a single jump or a drift), not telegraph noise.

Dwell times: with two levels the switching probabilities per frame interval
``p01``, ``p10`` (maximum likelihood over all state paths, Baum-Welch: the single
Viterbi path drops short excursions of small steps and would bias dwell times
upwards) are turned into the continuous-time mean dwell times exactly,
``lambda = -ln(1 - p01 - p10) / dt``, ``tau_0 = (p01 + p10) / (lambda p01)``;
with three levels each level's exit probability gives ``tau = -dt / ln(1 - p_exit)``.
Relative error ``1 / sqrt(exits)`` (exponential dwell times; ``exits`` = expected
number of departures from the level).  ``dt`` is the
median frame interval; dwell times much shorter than it cannot be resolved.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from utils.io import fitsio
from utils.progress import progress
from utils.settings import field as sfield

from .rts_kernels import fit_levels

logger = logging.getLogger(__name__)

#: Classes in the RTS mask.
CLASS_NONE, CLASS_RTS, CLASS_STEP = 0, 1, 2
#: BIC advantage needed to prefer three levels over two.
BIC_MARGIN = 10.0
#: Series of example pixels kept for the figure.
EXAMPLES = 6
MAX_OPEN = 256


@dataclass(frozen=True)
class RTSSettings:
    """How RTS pixels are found."""

    k_amplitude: float = sfield(2.5, "an RTS step must exceed this many times the pixel's own "
                                     "noise (levels of 2.5 sigma separation are clearly "
                                     "bimodal)")
    z_threshold: float = sfield(5.0, "[sigma] von Neumann significance of a candidate")
    min_transitions: int = sfield(4, "fewer switches make a step, not an RTS pixel")
    max_levels: int = sfield(3, "largest number of levels tried (2 or 3)")
    common_mode: bool = sfield(True, "remove each frame's median over the block")
    memory_limit: float = sfield(256e6, "[byte] working memory of one block of rows")

    def __post_init__(self):
        if not self.k_amplitude > 0 or not self.z_threshold > 0 or self.min_transitions < 1:
            raise ValueError("k_amplitude and z_threshold must be > 0, min_transitions >= 1")
        if self.max_levels not in (2, 3) or self.memory_limit < 1e6:
            raise ValueError("max_levels must be 2 or 3 and memory_limit >= 1e6 byte")


@dataclass
class RTSResult:
    """RTS search of one sequence.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per RTS or step pixel (see :func:`find_rts`).
    mask : numpy.ndarray
        uint8: 1 RTS, 2 step, 0 neither.
    amplitude : numpy.ndarray
        Largest level difference [adu] of RTS/step pixels (NaN elsewhere).
    sigma_diff : numpy.ndarray
        Noise from successive differences, every pixel [adu].
    z_eta : numpy.ndarray
        Von Neumann significance, every pixel [sigma].
    n_frames : int
        Frames in the sequence.
    interval : float
        Median frame interval [s] (NaN without time stamps).
    examples : dict
        ``{(row, col): series}`` of a few RTS pixels (for the figure), with their levels.
    """

    table: pd.DataFrame
    mask: np.ndarray
    amplitude: np.ndarray
    sigma_diff: np.ndarray
    z_eta: np.ndarray
    n_frames: int
    interval: float
    examples: dict = field(default_factory=dict)

    @property
    def n_rts(self) -> int:
        """RTS pixels found."""
        return int((self.mask == CLASS_RTS).sum())


def von_neumann(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(eta, z_eta, sigma_diff)`` of each column of ``x`` (``(N, P)``, N >= 3).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> eta, z, s = von_neumann(rng.normal(0, 2, (4000, 3)))
    >>> bool(np.all(abs(z) < 4)), bool(np.all(abs(s - 2) < 0.15))
    (True, True)
    """
    n = x.shape[0]
    d = np.diff(x, axis=0)
    mssd = np.einsum("ij,ij->j", d, d, dtype=np.float64)
    centred = x - x.mean(axis=0, dtype=np.float64)
    ss = np.einsum("ij,ij->j", centred, centred, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        eta = mssd / (2.0 * ss)
    sd = math.sqrt((n - 2) / ((n - 1) * (n + 1)))
    z = (eta - 1.0) / sd
    med = np.median(d, axis=0)
    sigma = 1.482602218505602 * np.median(np.abs(d - med), axis=0) / math.sqrt(2.0)
    return eta, z, sigma


def dwell_times(ptrans: np.ndarray, etrans: np.ndarray, dt: float) -> tuple:
    """Mean dwell time per level [s] (or [frame] when ``dt`` is NaN) and its error.

    Parameters
    ----------
    ptrans : numpy.ndarray
        ``(k, k)`` transition probabilities per frame interval (rows: from).
    etrans : numpy.ndarray
        ``(k, k)`` (expected) transition counts, for the errors.
    dt : float
        Frame interval [s]; NaN gives dwell times in frames.

    Returns
    -------
    (tau, tau_err, exits)
        Arrays of length k; NaN where a level was never left.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.1, 0.9]])
    >>> t, e, n = dwell_times(p, 1000 * p, 1.0)
    >>> np.round(t, 2).tolist(), np.round(n).tolist()
    ([8.96, 8.96], [100.0, 100.0])
    """
    k = ptrans.shape[0]
    step = 1.0 if not math.isfinite(dt) else dt
    p_exit = 1.0 - np.diag(ptrans)
    exits = etrans.sum(axis=1) - np.diag(etrans)
    tau = np.full(k, np.nan)
    if k == 2 and np.all(p_exit > 0):
        total = p_exit[0] + p_exit[1]
        if total < 1:
            lam = -math.log(1.0 - total) / step
            tau = total / (lam * p_exit)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            tau = np.where((p_exit > 0) & (p_exit < 1), -step / np.log1p(-p_exit), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.where(exits > 0, tau / np.sqrt(exits), np.nan)
    return tau, err, exits


def _read_block(sources, fds, start, stop, width) -> np.ndarray:
    block = np.empty((len(sources), stop - start, width), dtype=np.float32)
    for i, (layout, fd) in enumerate(zip(sources, fds)):
        own = fd is None
        handle = os.open(layout.path, os.O_RDONLY) if own else fd
        try:
            fitsio.read_rows(layout, start, stop, fd=handle, out=block[i])
        finally:
            if own:
                os.close(handle)
    return block


def find_rts(paths: list, timestamps: np.ndarray | None = None,
             settings: RTSSettings = RTSSettings(), *, progress_bar: bool = False) -> RTSResult:
    """Search a dark sequence (FITS frames in time order) for RTS pixels.

    Parameters
    ----------
    paths : list of path-like
        Frames in acquisition order (at least 10).
    timestamps : numpy.ndarray, optional
        Their time stamps [s] (for dwell times in seconds).
    settings : RTSSettings
        Thresholds and memory budget.
    progress_bar : bool, optional
        Show a progress bar over row blocks.

    Returns
    -------
    RTSResult
        ``table`` columns: ``ROW, COL, CLASS`` (``rts``/``step``), ``NLEVELS``,
        ``LEVEL_0..2`` [adu, relative to the pixel's lowest level: 0, then steps],
        ``AMPLITUDE``, ``AMPLITUDE_ERR`` [adu], ``SIGMA`` (within-level noise) and
        ``SIGMA_DIFF`` [adu], ``AMP_SIGMA`` (amplitude / SIGMA), ``TRANSITIONS``,
        ``OCCUPANCY_0..2``, ``DWELL_0..2``, ``DWELL_0..2_ERR`` [s, or frames without
        time stamps], ``EXITS_0..2``, ``Z_ETA``.

    Raises
    ------
    UnreadableFrameError
        When a frame cannot be read (the caller flags the sequence).
    """
    n = len(paths)
    if n < 10:
        raise ValueError(f"an RTS search needs at least 10 frames, got {n}")
    sources = [fitsio.fits_layout(p) for p in paths]
    shapes = {s.shape for s in sources}
    if len(shapes) != 1:
        raise ValueError(f"frames differ in shape: {sorted(shapes)}")
    (height, width), = shapes
    dt = math.nan
    if timestamps is not None:
        steps = np.diff(np.asarray(timestamps, dtype=float))
        steps = steps[np.isfinite(steps)]
        if steps.size:
            dt = float(np.median(steps))
    rows_per_block = max(1, int(settings.memory_limit // (n * width * 4 * 4)))
    mask = np.zeros((height, width), dtype=np.uint8)
    amplitude = np.full((height, width), np.nan, dtype=np.float32)
    sigma_map = np.full((height, width), np.nan, dtype=np.float32)
    z_map = np.full((height, width), np.nan, dtype=np.float32)
    fds = [os.open(s.path, os.O_RDONLY) for s in sources] if n <= MAX_OPEN else [None] * n
    rows_out: list[dict] = []
    examples: dict = {}
    try:
        starts = range(0, height, rows_per_block)
        for start in progress(starts, desc="RTS blocks", enabled=progress_bar, unit="block"):
            stop = min(start + rows_per_block, height)
            block = _read_block(sources, fds, start, stop, width).reshape(n, -1)
            if settings.common_mode:
                block -= np.median(block, axis=1, keepdims=True)
            _, z, sig = von_neumann(block)
            sigma_map[start:stop] = sig.reshape(stop - start, width)
            z_map[start:stop] = z.reshape(stop - start, width)
            cand = np.flatnonzero(z < -settings.z_threshold)
            if cand.size == 0:
                continue
            series = block[:, cand]
            rows_out += _classify(series, cand, start, width, sig, z, dt, settings, mask,
                                  amplitude, examples)
    finally:
        for fd in fds:
            if fd is not None:
                os.close(fd)
    table = pd.DataFrame(rows_out, columns=_COLUMNS)
    return RTSResult(table=table, mask=mask, amplitude=amplitude, sigma_diff=sigma_map,
                     z_eta=z_map, n_frames=n, interval=dt, examples=examples)


_COLUMNS = ["ROW", "COL", "CLASS", "NLEVELS", "LEVEL_0", "LEVEL_1", "LEVEL_2", "AMPLITUDE",
            "AMPLITUDE_ERR", "SIGMA", "SIGMA_DIFF", "AMP_SIGMA", "TRANSITIONS", "OCCUPANCY_0",
            "OCCUPANCY_1", "OCCUPANCY_2", "DWELL_0", "DWELL_0_ERR", "DWELL_1", "DWELL_1_ERR",
            "DWELL_2", "DWELL_2_ERR", "EXITS_0", "EXITS_1", "EXITS_2", "Z_ETA"]


def _classify(series, cand, start, width, sig, z, dt, settings, mask, amplitude, examples):
    n = series.shape[0]
    two = fit_levels(series, 2)
    three = fit_levels(series, 3) if settings.max_levels >= 3 else None
    rows = []
    for j, p in enumerate(cand):
        fit, k = two, 2
        if three is not None and three["valid"][j]:
            bic2 = -2 * two["logL"][j] + 5 * math.log(n)
            bic3 = -2 * three["logL"][j] + 10 * math.log(n)
            gaps = np.diff(three["levels"][j])
            if bic3 < bic2 - BIC_MARGIN and np.all(gaps >= settings.k_amplitude
                                                    * three["sigma"][j]):
                fit, k = three, 3
        if not fit["valid"][j]:
            continue
        levels = fit["levels"][j]
        sigma = float(fit["sigma"][j])
        occupancy = fit["occupancy"][j]
        trans = fit["trans"][j]
        amp = float(levels[-1] - levels[0])
        transitions = int(trans.sum() - np.trace(trans))
        if amp < settings.k_amplitude * sigma:
            continue
        cls = CLASS_RTS if transitions >= settings.min_transitions else CLASS_STEP
        r, c = divmod(int(p), width)
        r += start
        mask[r, c] = cls
        amplitude[r, c] = amp
        tau, tau_err, exits = dwell_times(fit["ptrans"][j], fit["etrans"][j], dt)
        row = {"ROW": r, "COL": c, "CLASS": "rts" if cls == CLASS_RTS else "step",
               "NLEVELS": k, "AMPLITUDE": amp,
               "AMPLITUDE_ERR": sigma * math.sqrt(1.0 / max(occupancy[0], 1.0)
                                                  + 1.0 / max(occupancy[-1], 1.0)),
               "SIGMA": sigma, "SIGMA_DIFF": float(sig[p]), "AMP_SIGMA": amp / sigma,
               "TRANSITIONS": transitions, "Z_ETA": float(z[p])}
        for i in range(3):
            inside = i < k
            row[f"LEVEL_{i}"] = float(levels[i] - levels[0]) if inside else math.nan
            row[f"OCCUPANCY_{i}"] = float(occupancy[i] / n) if inside else math.nan
            row[f"DWELL_{i}"] = float(tau[i]) if inside else math.nan
            row[f"DWELL_{i}_ERR"] = float(tau_err[i]) if inside else math.nan
            row[f"EXITS_{i}"] = float(exits[i]) if inside else math.nan
        rows.append(row)
        if cls == CLASS_RTS and len(examples) < EXAMPLES:
            examples[(r, c)] = (series[:, j].astype(np.float32), levels.copy())
    return rows


__all__ = ["RTSSettings", "RTSResult", "find_rts", "von_neumann", "dwell_times",
           "CLASS_RTS", "CLASS_STEP", "CLASS_NONE"]
