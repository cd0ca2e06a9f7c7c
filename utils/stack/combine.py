"""Streaming master-frame engine: combine many frames into one, row block by row block.

:func:`combine` stacks bias, dark or flat frames (FITS paths or 2-D arrays) into
a master with a per-pixel noise map, accepted-sample counts and a flag plane,
without ever holding whole input frames in memory:

* the frame is cut into blocks of rows whose height is planned from
  ``memory_limit`` (see :func:`plan_blocks`); every input contributes the same
  rows to a block, read with ``os.pread`` straight from the FITS data section
  (:func:`utils.io.fitsio.read_rows`);
* blocks are processed by a :class:`concurrent.futures.ThreadPoolExecutor`;
  the hot loop is a numba kernel compiled with ``nogil=True`` so threads run
  truly in parallel, and results land in preallocated full-frame arrays;
* per pixel, the samples are combined by the kernels of :mod:`utils.stack.kernels`
  (sorting network, sigma clipping on a contiguous range of sorted samples).

:func:`combine_many` makes several masters from sets of one list of inputs
(e.g. a calibration set and its attempts) while reading every frame's bytes
once per row block, however many sets hold it; :func:`combine` is its one-set
case.  The product side (:class:`MasterResult`, its header and inputs table)
lives in :mod:`utils.stack.master_result`.

A pure-numpy implementation of the same maths is used when numba cannot be
imported; the tests use it to cross-check the kernel.

Differences from ``ccdproc.combine`` (deliberate)
-------------------------------------------------
* ``method="sigclip"`` iterates (``maxiters``, default 5; ``None`` = to
  convergence); ccdproc clips once.  With ``maxiters=1`` the two agree to
  float32 precision (tested).  Rejection is cumulative, as in astropy's
  per-axis ``sigma_clip``; astropy's C fast path (``cenfunc='median'``,
  ``stdfunc='mad_std'`` strings) instead re-tests all samples against the last
  bounds, which differs after more than one iteration.
* The MAD-to-sigma factor is astropy's exact ``1/Phi^-1(3/4) = 1.482602218505602``
  (often quoted as 1.4826), so clipping bounds match astropy bit for bit.
* ``noise`` is the sample standard deviation with ``ddof=1``; ccdproc's
  uncertainty is ``ddof=0`` divided by sqrt(N).  ``stderr = noise / sqrt(count)``
  for the means, and ``sqrt(pi/2) * noise / sqrt(count)`` for the median (its
  large-sample standard error for Gaussian samples).
* The master is float32 (ccdproc: float64).
* Known limitation of the sigma-clipped mean with few frames: the MAD scale
  of a handful of samples is noisy, so some good samples are clipped and
  ``noise / sqrt(count)`` underestimates the true scatter of the master, by
  about 14 % at 10 frames, 8 % at 20 and 4 % at 40 with ``guard`` (21, 12
  and 7 % without; Gaussian noise; ccdproc's uncertainty has the larger bias;
  :func:`clipped_error_factor` gives the factor).  Use ``median`` or ``mean``, or more
  frames, where that matters.
* A MAD of 0 on samples that are not all equal (more than half of them
  identical: common with this camera's 16-ADU quantisation and read noise of
  a few ADU) makes astropy reject every sample but the median's value, leaving
  a master with ``noise = 0``.  Here the standard deviation of the accepted
  samples replaces the zero scale in that iteration, so cosmic rays are still
  rejected but the normal quantised spread is kept.  This is the only case
  where the accepted set differs from astropy's / ccdproc's.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import FrameError, InsufficientFramesError, UnreadableFrameError
from ..io import fitsio
from ..progress import progress
from .kernels import (
    HAVE_NUMBA,
    MAD_TO_STD,  # noqa: F401 - re-exported with the engine's constants
    _combine_kernel,
    _combine_numpy,
    _prepare,
    _prepare_numpy,
    _prepare_u16,
    batcher_network,
    warmup,
)
from .master_result import MasterResult, _build_header, _inputs_table

logger = logging.getLogger(__name__)

#: Standard error of a median relative to sigma/sqrt(N), Gaussian samples: sqrt(pi/2).
MEDIAN_ERROR_FACTOR = math.sqrt(math.pi / 2)

#: Flag bits of :attr:`MasterResult.flags`.
#: Actual scatter / reported standard error (``noise / sqrt(count)``) of a sigma-clipped mean
#: of N Gaussian frames (3 sigma, 5 iterations, guard on), by N: the MAD scale of few samples
#: is noisy, so good samples are clipped (the clipped mean scatters more than a mean and its
#: ``noise`` is low).  Monte Carlo, 3 seeds x 24000 pixels per N (spread 0.5 %); see the
#: module notes.  Used where a statistic must remove a master's temporal noise exactly.
CLIPPED_MEAN_ERROR_FACTOR = {8: 1.165, 10: 1.14, 16: 1.09, 20: 1.075, 40: 1.04, 60: 1.03}


def clipped_error_factor(n_frames: int, method: str = "sigclip") -> float:
    """Actual scatter of a master / its reported standard error, for ``n_frames`` inputs.

    :data:`CLIPPED_MEAN_ERROR_FACTOR` interpolated in 1/N (held at its ends) for
    ``sigclip``; 1 for ``mean`` and ``median`` (their standard errors are not clipped).
    """
    if method != "sigclip" or n_frames < 1:
        return 1.0
    keys = sorted(CLIPPED_MEAN_ERROR_FACTOR)
    x = [1.0 / k for k in reversed(keys)]
    y = [CLIPPED_MEAN_ERROR_FACTOR[k] for k in reversed(keys)]
    return float(np.interp(1.0 / n_frames, x, y))


FLAG_FEW = 1         # fewer than ``min_accepted`` samples accepted
FLAG_SATURATED = 2   # saturated in more than half of the inputs
FLAG_NONFINITE = 4   # master value is not finite (e.g. no sample at all)
FLAG_PARTSAT = 8     # saturated in some (at most half) of the inputs: the mean of the others is
#                      biased low (the bright tail was cut), so the value is not valid either

METHODS = ("mean", "median", "sigclip")
_METHOD_CODE = {"mean": 0, "median": 1, "sigclip": 2}

#: Working block size cap [byte]: beyond a few tens of MB a bigger block only
#: costs cache misses and memory, it does not make the reads faster.
BLOCK_CAP_BYTES = 32 * 2**20
#: Pixels per kernel chunk are chosen so ``n_frames x chunk`` float32 samples
#: stay near L1 while the sorting network sweeps them [byte] (measured: 64 KiB
#: beats 256 KiB by ~10 % on 50 frames).
CHUNK_BYTES = 64 * 2**10
#: Keep file descriptors open for the whole combine up to this many inputs.
MAX_OPEN_FILES = 256


# --------------------------------------------------------------------------------------
# block planning
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockPlan:
    """How a combine is cut into row blocks.

    Attributes
    ----------
    rows : int
        Rows per block (the last block may be shorter).
    n_blocks : int
        Number of blocks.
    workers : int
        Threads actually used (may be fewer than asked when memory is short).
    block_bytes : int
        Working-set estimate of one block [byte].
    """

    rows: int
    n_blocks: int
    workers: int
    block_bytes: int


def _row_bytes(n_frames: int, width: int, numba_path: bool) -> int:
    # numba: the float32 block is sorted in place; one frame's raw bytes and its
    # float64 subtraction rows are transient.  numpy: sorted copy, float64
    # deviations and masks, about 6 float32-equivalents per sample.
    per_sample = 4 if numba_path else 24
    return n_frames * width * per_sample + width * 24


def plan_blocks(n_frames: int, shape: tuple[int, int], memory_limit: float,
                workers: int, *, numba_path: bool = True) -> BlockPlan:
    """Choose the block height of a combine.

    Parameters
    ----------
    n_frames : int
        Number of samples per pixel in a block: the input frames of a
        :func:`combine`, the sum of the set sizes of a :func:`combine_many`.
    shape : tuple of int
        ``(rows, columns)`` of every frame.
    memory_limit : float
        Budget for the working blocks of all workers together [byte]; the
        full-frame outputs (about 15 byte per pixel per master) come on top.
    workers : int
        Threads asked for.
    numba_path : bool, optional
        Whether the numba kernel (in-place sort) or the numpy fallback
        (several scratch copies) will run.

    Returns
    -------
    BlockPlan
        Rows per block, never fewer than one: when a single row of all frames
        exceeds the budget, a warning is logged and one row is used.
    """
    nrows, width = shape
    per_row = _row_bytes(n_frames, width, numba_path)
    workers = max(1, int(workers))
    rows = int(memory_limit // (workers * per_row))
    if rows < 1:
        fit = int(memory_limit // per_row)
        if fit >= 1:  # one row fits: spend the budget on fewer threads, not more memory
            workers, rows = fit, 1
        else:
            logger.warning("one row of %d frames needs %.1f MB, more than memory_limit "
                           "%.1f MB: using 1-row blocks and 1 worker",
                           n_frames, per_row / 1e6, memory_limit / 1e6)
            workers, rows = 1, 1
    cap = max(1, BLOCK_CAP_BYTES // (n_frames * width * 4))
    rows = min(rows, cap)
    # at least ~4 blocks per worker so reads of one block overlap computing another
    rows = min(rows, max(1, -(-nrows // (4 * workers))))
    rows = max(1, min(rows, nrows))
    n_blocks = -(-nrows // rows)
    return BlockPlan(rows, n_blocks, min(workers, n_blocks), rows * per_row)


def _padded_stride(npix: int) -> int:
    """Row stride [float32] of a block: ``npix`` rounded up to a cache line, plus one line.

    With 2048-pixel rows a block row is a multiple of 4 KiB, so one pixel's
    samples (a column) would all fall into the same cache set; the extra line
    is cheap insurance against that aliasing (neutral on the development CPU,
    whose caches hash set indices).
    """
    return -(-npix // 16) * 16 + 16


# --------------------------------------------------------------------------------------
# input sources
# --------------------------------------------------------------------------------------
class _FileSource:
    """FITS inputs read by row blocks with ``os.pread``."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.layouts = [fitsio.fits_layout(p) for p in paths]
        ref = self.layouts[0]
        for lay in self.layouts[1:]:
            if lay.shape != ref.shape:
                raise FrameError(lay.path, f"shape {lay.shape} differs from {ref.shape} of "
                                           f"{ref.path}; all inputs of a master must match")
        self.shape = ref.shape
        self.paths = [lay.path for lay in self.layouts]
        self.fds: list[int] | None = None

    def __enter__(self):
        if len(self.layouts) <= MAX_OPEN_FILES:
            self.fds = []
            try:
                for lay in self.layouts:
                    self.fds.append(os.open(lay.path, os.O_RDONLY))
            except OSError:
                self.__exit__()
                raise
        return self

    def __exit__(self, *exc):
        for fd in self.fds or ():
            os.close(fd)
        self.fds = None

    def read(self, i: int, start: int, stop: int, out: np.ndarray) -> None:
        fd = self.fds[i] if self.fds is not None else None
        fitsio.read_rows(self.layouts[i], start, stop, fd=fd, out=out)

    @property
    def unsigned16(self) -> bool:
        """Whether every input is stored as FITS unsigned 16-bit (BZERO 32768, BSCALE 1)."""
        return all(lay.dtype == np.dtype(">i2") and lay.bscale == 1.0 and lay.bzero == 32768.0
                   for lay in self.layouts)

    def read_bytes(self, i: int, start: int, stop: int, buf: np.ndarray) -> np.ndarray:
        """Rows ``start:stop`` of input ``i`` as stored (uint8) into ``buf``; returns the view."""
        lay = self.layouts[i]
        nbytes = (stop - start) * lay.row_bytes
        view = buf[:nbytes]
        fd = self.fds[i] if self.fds is not None else os.open(lay.path, os.O_RDONLY)
        try:
            got = os.preadv(fd, [view], lay.offset + start * lay.row_bytes)
        finally:
            if self.fds is None:
                os.close(fd)
        if got != nbytes:
            raise UnreadableFrameError(lay.path, f"short read of rows {start}:{stop}")
        return view


class _ArraySource:
    """In-memory 2-D arrays (tests, small products)."""

    def __init__(self, arrays: Sequence[np.ndarray]):
        self.arrays = [np.asarray(a) for a in arrays]
        ref = self.arrays[0].shape
        for i, a in enumerate(self.arrays):
            if a.ndim != 2 or a.shape != ref:
                raise FrameError(f"inputs[{i}]", f"shape {a.shape} differs from {ref} of "
                                                 "inputs[0]; all inputs of a master must match")
        self.shape = ref
        self.paths = [f"<array {i}>" for i in range(len(self.arrays))]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def read(self, i: int, start: int, stop: int, out: np.ndarray) -> None:
        np.copyto(out, self.arrays[i][start:stop], casting="unsafe")


# --------------------------------------------------------------------------------------
# combine
# --------------------------------------------------------------------------------------
def combine(inputs: Sequence, *, method: str = "sigclip", sigma_low: float = 3.0,
            sigma_high: float = 3.0, maxiters: int | None = 5, min_accepted: int = 3,
            scale: Sequence[float] | None = None,
            subtract: np.ndarray | Callable[[int, int, int], np.ndarray] | None = None,
            saturation: float | None = None, min_scale: float = 0.0, guard: bool = True,
            memory_limit: float = 1e9,
            workers: int | None = None, progress_bar: bool = False,
            metadata: Sequence[Mapping] | None = None, product: str = "MASTER") -> MasterResult:
    """Combine frames into a master, streaming row blocks from every input.

    Parameters
    ----------
    inputs : sequence of path-like or of numpy.ndarray
        FITS files (primary HDU, read by row blocks) or 2-D arrays, all of one
        shape.  Values are physical (after ``BSCALE``/``BZERO``), e.g. stored ADU.
    method : {"sigclip", "mean", "median"}, optional
        ``"sigclip"``: iterative sigma-clipped mean with cumulative rejection
        (like ``astropy.stats.sigma_clip``): centre = median and scale =
        ``1.482602 x MAD`` of the accepted samples (their standard deviation
        when the MAD is 0 but they differ); samples strictly below
        ``c - sigma_low*s`` or above ``c + sigma_high*s`` are rejected; repeat
        until nothing changes or ``maxiters``; result = mean of the accepted.
        ``"median"``: numpy median of the valid samples.  ``"mean"``: plain mean.
    sigma_low, sigma_high : float, optional
        Clipping thresholds [sigma].
    maxiters : int or None, optional
        Maximum clipping iterations; ``None`` (or <= 0) = until convergence.
    min_accepted : int, optional
        Pixels with fewer accepted samples get ``FLAG_FEW``.
    scale : sequence of float, optional
        Per-frame multiplicative factors applied after subtraction (e.g.
        ``1/EXPTIME`` [1/s] for a rate, or ``1/level`` to normalise flats).
    subtract : numpy.ndarray or callable, optional
        2-D array subtracted from every frame (e.g. a master bias), or
        ``subtract(i, row_start, row_stop) -> ndarray`` giving the rows to
        subtract from frame ``i`` (e.g. a bias model at that frame's
        temperature).  The callable is called from worker threads, block by
        block, and must be thread-safe.
    saturation : float, optional
        Saturation level in raw input units (stored ADU, e.g. 65520).  Raw
        samples ``>=`` it (before subtraction) are excluded and counted; pixels
        saturated in more than half of the inputs get ``FLAG_SATURATED``.
    min_scale : float, optional
        Smallest clipping scale, in the units of the prepared samples (e.g. two
        quantisation steps of the ADC, :func:`utils.adu.clip_floor`): a MAD
        collapsed onto tied quantised values says nothing about the spread.
        Default 0.
    guard : bool, optional
        Confirm each clipping decision: a sample flagged by the MAD scale is
        rejected only if it also lies outside the thresholds set by the
        standard deviation of the unflagged samples (when that is larger).
        With few frames the MAD underestimates the spread often enough to clip
        good samples (the clipped mean then scatters 10-20 % more than its
        reported error at 8-10 frames); outliers are still rejected, since
        they are not among the unflagged samples.  False reproduces the plain
        median/MAD clipping of astropy's ``sigma_clip``.  Default True.
    memory_limit : float, optional
        Budget for the working blocks [byte] (see :func:`plan_blocks`); the
        full-frame outputs (~15 byte/pixel) come on top.
    workers : int, optional
        Threads; default ``os.cpu_count()``.
    progress_bar : bool, optional
        Show a progress bar over blocks.
    metadata : sequence of mapping, optional
        Per-input values (``TEMP`` [degC], ``EXPTIME`` [s], ...) for the header
        statistics (``TMIN``... ``EAVG``) and the ``inputs`` table.
    product : str, optional
        Value of the ``PRODUCT`` provenance card (e.g. ``"MASTER_BIAS"``).

    Returns
    -------
    MasterResult

    Raises
    ------
    InsufficientFramesError
        When ``inputs`` is empty.
    FrameError
        When an input's shape differs from the first one's (names that input),
        or a FITS input cannot be read.
    ValueError
        On an unknown method or inconsistent argument lengths.

    Notes
    -----
    NaN/inf samples (and subtraction/scale results that are not finite) count
    as missing.  See the module docstring for the deliberate differences from
    ``ccdproc.combine``.  This is the one-set case of :func:`combine_many`
    (``combine_many(inputs, [range(len(inputs))], scales=[scale], ...)[0]``):
    one block loop serves both.
    """
    n = len(inputs)
    if n == 0:
        raise InsufficientFramesError("combine() got no input frame")
    if scale is not None and np.size(scale) != n:
        raise ValueError(f"scale has {np.size(scale)} factors for {n} inputs")
    return combine_many(inputs, [range(n)], scales=None if scale is None else [scale],
                        method=method, sigma_low=sigma_low, sigma_high=sigma_high,
                        maxiters=maxiters, min_accepted=min_accepted, subtract=subtract,
                        saturation=saturation, min_scale=min_scale, guard=guard,
                        memory_limit=memory_limit, workers=workers, progress_bar=progress_bar,
                        metadata=metadata, product=product)[0]


def _check_sets(sets, n_inputs: int) -> list[np.ndarray]:
    """``sets`` as int64 index arrays, each non-empty, in range and without repeats."""
    if len(sets) == 0:
        raise ValueError("sets is empty: give at least one sequence of input indices")
    members = []
    for k, idx in enumerate(sets):
        idx = np.asarray(list(idx) if not isinstance(idx, np.ndarray) else idx)
        if idx.ndim != 1:
            raise ValueError(f"sets[{k}] must be a 1-D sequence of input indices, "
                             f"got shape {idx.shape}")
        if idx.size == 0:
            raise ValueError(f"sets[{k}] is empty: every set needs at least one input")
        if idx.dtype.kind not in "iu":
            raise ValueError(f"sets[{k}] must hold integer indices into inputs, got dtype "
                             f"{idx.dtype}")
        bad = idx[(idx < 0) | (idx >= n_inputs)]
        if bad.size:
            raise ValueError(f"sets[{k}] has index {int(bad[0])} out of range for "
                             f"{n_inputs} inputs (0...{n_inputs - 1})")
        uniq, counts = np.unique(idx, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"sets[{k}] lists input {int(uniq[counts > 1][0])} more than "
                             "once; indices must be unique within a set")
        if idx.size > np.iinfo(np.int16).max:
            raise ValueError(f"sets[{k}]: at most {np.iinfo(np.int16).max} inputs per set, "
                             f"got {idx.size}")
        members.append(idx.astype(np.int64))
    return members


def _check_scales(scales, members: list[np.ndarray]) -> list[np.ndarray | None]:
    """Per-set float64 factors (or None), each aligned with its set's indices."""
    if scales is None:
        return [None] * len(members)
    if len(scales) != len(members):
        raise ValueError(f"scales has {len(scales)} entries for {len(members)} sets; give "
                         "one per set (None or that set's per-frame factors)")
    out = []
    for k, (fac, idx) in enumerate(zip(scales, members)):
        if fac is not None:
            fac = np.asarray(fac, dtype=np.float64).ravel()
            if fac.shape[0] != idx.size:
                raise ValueError(f"scales[{k}] has {fac.shape[0]} factors for the "
                                 f"{idx.size} frames of sets[{k}]")
        out.append(fac)
    return out


def combine_many(inputs: Sequence, sets: Sequence[Sequence[int]], *,
                 scales: Sequence[Sequence[float] | None] | None = None,
                 method: str = "sigclip", sigma_low: float = 3.0, sigma_high: float = 3.0,
                 maxiters: int | None = 5, min_accepted: int = 3,
                 subtract: np.ndarray | Callable[[int, int, int], np.ndarray] | None = None,
                 saturation: float | None = None, min_scale: float = 0.0, guard: bool = True,
                 memory_limit: float = 1e9, workers: int | None = None,
                 progress_bar: bool = False, metadata: Sequence[Mapping] | None = None,
                 product: str = "MASTER") -> list[MasterResult]:
    """Combine several sets of one list of inputs into one master each, reading every frame once.

    A calibration set and its attempts (e.g. all 10 flats and the two halves
    of 5) share their frames; stacking them with one :func:`combine` call each
    would read every shared frame once per master.  Here every row block of
    every input used by some set is read once, and its samples are prepared
    (subtracted, scaled, saturation-checked) for each set holding it from
    that one read.  Result ``k`` is bit for bit what
    ``combine([inputs[i] for i in sets[k]], scale=scales[k], ...)`` gives
    (with ``subtract`` and ``metadata`` taken for those frames).

    Parameters
    ----------
    inputs : sequence of path-like or of numpy.ndarray
        FITS files or 2-D arrays, all of one shape (checked for every input,
        used or not); values are physical, e.g. stored ADU.  Inputs in no set
        are never read.
    sets : sequence of sequence of int
        One index sequence into ``inputs`` per master, e.g.
        ``[range(10), [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]``.  Each non-empty,
        indices unique within a set; sets may overlap.  A set's frame order
        is its master's input order (inputs table rows, ``scales``).
    scales : sequence, optional
        One entry per set: ``None`` or that set's per-frame multiplicative
        factors, aligned with its indices (e.g. ``1/level`` [1/ADU] to
        normalise flats by each set's own level: a frame may get a different
        factor in each set).  ``None`` (default): no scaling anywhere.
    method, sigma_low, sigma_high, maxiters, min_accepted, saturation, min_scale, guard
        As in :func:`combine`, for every set.
    subtract : numpy.ndarray or callable, optional
        2-D array subtracted from every frame, or
        ``subtract(i, row_start, row_stop) -> ndarray`` where ``i`` is the
        GLOBAL index (position in ``inputs``); called once per used frame and
        block, from worker threads (must be thread-safe), and its rows serve
        every set holding that frame.
    memory_limit : float, optional
        Budget for the working blocks [byte]; blocks are planned on the total
        number of sample rows (the sum of the set sizes, see
        :func:`plan_blocks`).  The full-frame outputs come on top: about
        15 byte/pixel per set (data, noise, stderr float32; count int16;
        flags uint8), plus 2 byte/pixel per set with ``saturation``.
    workers : int, optional
        Threads; default ``os.cpu_count()``.
    progress_bar : bool, optional
        Show a progress bar over blocks.
    metadata : sequence of mapping, optional
        One mapping per input (global, aligned with ``inputs``); each master
        gets its set's entries for its header statistics and inputs table.
    product : str, optional
        ``PRODUCT`` card of every master.

    Returns
    -------
    list of MasterResult
        One per set, in the order of ``sets``.

    Raises
    ------
    InsufficientFramesError
        When ``inputs`` is empty.
    FrameError
        When an input's shape differs from the first one's, or a FITS input
        cannot be read.
    ValueError
        On an empty ``sets`` or set, an index out of range, not an integer or
        repeated within a set, ``scales`` or ``metadata`` of the wrong length,
        an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n_in = len(inputs)
    if n_in == 0:
        raise InsufficientFramesError("combine_many() got no input frame")
    members = _check_sets(sets, n_in)
    set_scales = _check_scales(scales, members)
    if metadata is not None and len(metadata) != n_in:
        raise ValueError(f"metadata has {len(metadata)} entries for {n_in} inputs")
    if min_accepted < 1:
        raise ValueError("min_accepted must be >= 1")
    maxiters = 0 if maxiters is None else int(maxiters)

    n_arrays = sum(isinstance(x, np.ndarray) for x in inputs)
    if 0 < n_arrays < n_in:
        raise ValueError("inputs must be all FITS paths or all 2-D arrays, not a mix")
    source = _ArraySource(inputs) if n_arrays == n_in else _FileSource(inputs)
    nrows, width = source.shape
    if isinstance(subtract, np.ndarray) or (subtract is not None and not callable(subtract)):
        subtract = np.asarray(subtract)
        if subtract.shape != source.shape:
            raise ValueError(f"subtract array shape {subtract.shape} differs from the "
                             f"inputs' {source.shape}")

    # the sets' samples lie one after the other in each block buffer: set k owns the sample
    # rows offsets[k]:offsets[k + 1], so each set's kernel gets a C-contiguous (n_k, stride) view
    n_sets = len(members)
    sizes = [int(m.size) for m in members]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    n_samples = offsets[-1]
    # global frame -> the (set, position in set) pairs it fills; read in input order
    uses: dict[int, list[tuple[int, int]]] = {}
    for k, m in enumerate(members):
        for j, g in enumerate(m.tolist()):
            uses.setdefault(g, []).append((k, j))
    frames = sorted(uses)

    use_numba = HAVE_NUMBA
    compile_s = warmup() if use_numba else 0.0
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    plan = plan_blocks(n_samples, source.shape, memory_limit, workers, numba_path=use_numba)
    logger.debug("combine plan: %d set(s), %d frames read, %d sample rows of %dx%d, method=%s, "
                 "%d rows/block, %d blocks, %.1f MB/block, %d workers, %s kernel "
                 "(ready in %.2f s)", n_sets, len(frames), n_samples, nrows, width, method,
                 plan.rows, plan.n_blocks, plan.block_bytes / 1e6, plan.workers,
                 "numba" if use_numba else "numpy", compile_s)

    shape = source.shape
    data = [np.empty(shape, dtype=np.float32) for _ in range(n_sets)]
    noise = [np.empty(shape, dtype=np.float32) for _ in range(n_sets)]
    count = [np.empty(shape, dtype=np.int16) for _ in range(n_sets)]
    stderr = [np.empty(shape, dtype=np.float32) for _ in range(n_sets)]
    flags = [np.empty(shape, dtype=np.uint8) for _ in range(n_sets)]
    # np.full, not np.zeros: pages written now, not lazily mapped (see _prepare_py)
    nsat = ([np.full(shape, 0, dtype=np.int16) for _ in range(n_sets)]
            if saturation is not None else None)
    sat_level = math.inf if saturation is None else float(saturation)
    code = _METHOD_CODE[method]
    networks = [batcher_network(nk) for nk in sizes]
    chunks = [max(16, (CHUNK_BYTES // (4 * nk)) // 16 * 16) for nk in sizes]
    empty_sub = np.empty(0, dtype=np.float64)
    empty_nsat = np.empty(0, dtype=np.int16)
    local = threading.local()
    direct_u16 = use_numba and isinstance(source, _FileSource) and source.unsigned16
    prep = _prepare if use_numba else _prepare_numpy

    def finish_set(k: int, x: np.ndarray, start: int, stop: int, npix: int) -> int:
        """Combine set ``k``'s prepared samples ``x`` (sorted in place) into its outputs."""
        out_d = data[k][start:stop].reshape(-1)
        out_n = noise[k][start:stop].reshape(-1)
        out_c = count[k][start:stop].reshape(-1)
        if use_numba:
            nrej = _combine_kernel(x, npix, *networks[k], code, float(sigma_low),
                                   float(sigma_high), maxiters, float(min_scale), bool(guard),
                                   chunks[k], out_d, out_n, out_c)
        else:
            nrej = _combine_numpy(x[:, :npix], code, float(sigma_low), float(sigma_high),
                                  maxiters, out_d, out_n, out_c, float(min_scale), bool(guard))
        # per-block post-processing runs in the workers too (numpy releases the GIL)
        blk = slice(start, stop)
        d, c, f = data[k][blk], count[k][blk], flags[k][blk]
        f[...] = np.where(c < min_accepted, FLAG_FEW, 0)
        if nsat is not None:
            ns = nsat[k][blk]
            most = 2 * ns.astype(np.int32) > sizes[k]
            f |= np.where(most, FLAG_SATURATED, 0).astype(np.uint8)
            f |= np.where(~most & (ns > 0), FLAG_PARTSAT, 0).astype(np.uint8)
        f |= np.where(np.isfinite(d), 0, FLAG_NONFINITE).astype(np.uint8)
        with np.errstate(invalid="ignore", divide="ignore"):
            np.divide(noise[k][blk], np.sqrt(c.astype(np.float32)), out=stderr[k][blk])
        if code == 1:
            # a median is noisier than a mean: efficiency 2/pi for Gaussian samples
            stderr[k][blk] *= np.float32(MEDIAN_ERROR_FACTOR)
        return int(nrej)

    def run_block(start: int) -> tuple[list[int], list[np.ndarray]]:
        stop = min(start + plan.rows, nrows)
        npix = (stop - start) * width
        stride = _padded_stride(npix)
        buf = getattr(local, "buf", None)
        if buf is None or buf.size < n_samples * stride:
            buf = local.buf = np.empty(n_samples * _padded_stride(plan.rows * width),
                                       dtype=np.float32)
        # C-contiguous (n_samples, stride) view: a single kernel signature whatever the block
        x = buf[: n_samples * stride].reshape(n_samples, stride)
        block_nsat = ([a[start:stop].reshape(-1) for a in nsat] if nsat is not None
                      else [empty_nsat] * n_sets)
        frame_sat = [np.zeros(nk, dtype=np.int64) for nk in sizes]
        if isinstance(subtract, np.ndarray):  # the same rows for every frame: convert once
            common_sub = np.ascontiguousarray(subtract[start:stop], dtype=np.float64).reshape(-1)
        raw_buf = keep = None
        if direct_u16:  # stored bytes straight into the kernel's samples (one pass per set)
            raw_buf = getattr(local, "raw", None)
            if raw_buf is None or raw_buf.size < 2 * npix:
                raw_buf = local.raw = np.empty(2 * plan.rows * width, dtype=np.uint8)
        elif n_samples > len(frames):  # some frame serves several sets: room for its raw row
            keep = getattr(local, "keep", None)
            if keep is None or keep.size < npix:
                keep = local.keep = np.empty(plan.rows * width, dtype=np.float32)
        for g in frames:
            use = uses[g]
            k0, j0 = use[0]
            if raw_buf is not None:
                raw = source.read_bytes(g, start, stop, raw_buf)
            else:
                first = x[offsets[k0] + j0, :npix]
                source.read(g, start, stop, first.reshape(stop - start, width))
                if len(use) > 1:  # the preparation works in place: keep the raw row for the others
                    np.copyto(keep[:npix], first)
            if subtract is None:
                sub = empty_sub
            elif isinstance(subtract, np.ndarray):
                sub = common_sub
            else:  # once per frame and block, whatever the number of sets holding it
                sub = np.ascontiguousarray(subtract(g, start, stop), dtype=np.float64)
                if sub.shape != (stop - start, width):
                    raise ValueError(f"subtract({g}, {start}, {stop}) returned shape "
                                     f"{sub.shape}, expected {(stop - start, width)}")
                sub = sub.reshape(-1)
            for u, (k, j) in enumerate(use):
                row = x[offsets[k] + j, :npix]
                fscale = 1.0 if set_scales[k] is None else float(set_scales[k][j])
                if raw_buf is not None:
                    frame_sat[k][j] = _prepare_u16(raw, row, sub, fscale, sat_level,
                                                   block_nsat[k])
                else:
                    if u:
                        np.copyto(row, keep[:npix])
                    frame_sat[k][j] = prep(row, sub, fscale, sat_level, block_nsat[k])
        nrej = [finish_set(k, x[offsets[k]:offsets[k + 1]], start, stop, npix)
                for k in range(n_sets)]
        return nrej, frame_sat

    t0 = time.perf_counter()
    nreject = [0] * n_sets
    sat_per_frame = [np.zeros(nk, dtype=np.int64) for nk in sizes]
    starts = range(0, nrows, plan.rows)
    with source, ThreadPoolExecutor(max_workers=plan.workers) as pool:
        futures = [pool.submit(run_block, s) for s in starts]
        try:
            for fut in progress(as_completed(futures), desc="combine", total=len(futures),
                                enabled=progress_bar, unit="block"):
                nrej, fsat = fut.result()
                for k in range(n_sets):
                    nreject[k] += nrej[k]
                    sat_per_frame[k] += fsat[k]
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    logger.debug("combined %d set(s) of %d frames in %.2f s", n_sets, len(frames),
                 time.perf_counter() - t0)

    results = []
    for k, idx in enumerate(members):
        meta = None if metadata is None else [metadata[g] for g in idx.tolist()]
        header = _build_header(n=sizes[k], method=method, sigma_low=sigma_low,
                               sigma_high=sigma_high, maxiters=maxiters,
                               min_accepted=min_accepted, scale=set_scales[k],
                               subtract=subtract, saturation=saturation, metadata=meta,
                               data=data[k], flags=flags[k], nreject=nreject[k],
                               product=product, min_scale=min_scale, guard=guard)
        # arrays have no path: named by their position among this master's inputs, as the
        # master's own combine() would name them
        paths = ([source.paths[g] for g in idx.tolist()] if isinstance(source, _FileSource)
                 else [f"<array {j}>" for j in range(sizes[k])])
        table = _inputs_table(paths, meta, set_scales[k],
                              sat_per_frame[k] if saturation is not None else None)
        results.append(MasterResult(data=data[k], noise=noise[k], stderr=stderr[k],
                                    count=count[k], flags=flags[k], header=header,
                                    inputs=table))
    return results


__all__ = ["combine", "combine_many", "MasterResult", "BlockPlan", "plan_blocks",
           "clipped_error_factor", "warmup", "METHODS", "MAD_TO_STD", "FLAG_FEW",
           "FLAG_SATURATED", "FLAG_NONFINITE", "FLAG_PARTSAT"]
