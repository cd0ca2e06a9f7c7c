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
* Default thresholds: 4 sigma both sides (:data:`DEFAULT_CLIP_SIGMA`), not
  astropy's 3.  Dark frames carry shot noise (Poisson, positively skewed), and
  a symmetric clip removes more of the upper tail than of the lower one, so the
  clipped mean is biased low by the same sign on every pixel.  Measured with
  this engine (frames = 8 x Poisson(40) + N(0, 32) + 3200 adu, 16-adu steps),
  in units of the master's standard error: 3 sigma -0.024 (10 frames), -0.030
  (20), -0.031 (40) - it does not shrink with more frames (Edgeworth: a shift
  of about -0.04 x skewness x sigma per frame for a +-3 sigma clip) - with
  2.8 % of the samples clipped at 10 frames and 0.7 % at 40 instead of a
  Gaussian's 0.27 %; 4 sigma -0.010, -0.0075, -0.003 (0.76 % and 0.04 %
  clipped; about -0.003 x skewness x sigma per frame).  Small per
  pixel, but population quantities fitted over 1e5 pixels (the dark model's
  doubling temperature) moved by several of their errors.  Cosmic rays and
  other outliers sit far beyond 4 sigma and are still rejected.
* Known limitation of the sigma-clipped mean with few frames: the MAD scale
  of a handful of samples is noisy, so some good samples are clipped and
  ``noise / sqrt(count)`` underestimates the true scatter of the master
  (Gaussian noise, ``guard`` on, 5 iterations): by about 13 % at 10 frames,
  7 % at 20 and 4 % at 40 at 3 sigma (21, 12 and 7 % without ``guard``;
  ccdproc's uncertainty has the larger bias), and by 3.5 %, 0.9 % and 0.3 %
  at the default 4 sigma.  :func:`utils.stack.error_factor.clipped_error_factor`
  gives the factor for any thresholds.  Use ``median`` or ``mean``, or more frames, where that
  matters.  Those numbers are for each pixel's own scale alone
  (``pooled_floor=False``); by default the scale is never below the pooled scale
  of the pixel's image row, which leaves 0.03-0.08 % of Gaussian pixels with a
  clipped sample at 3-20 frames (25 % at 3 frames, 13 % at 5, 4 % at 10 without)
  and the factor at 1.001-1.003 (4 sigma), 1.02 at 10 frames and 3 sigma.
  Pixels much noisier than their row (hot pixels) still clip by their own
  noisy scale: with 4x the row's noise 16 % at 3 frames, 11 % at 5, 3 % at 10.
* A MAD of 0 on samples that are not all equal (more than half of them
  identical: common with this camera's 16-ADU quantisation and read noise of
  a few ADU) makes astropy reject every sample but the median's value, leaving
  a master with ``noise = 0``.  Here the standard deviation of the accepted
  samples replaces the zero scale in that iteration, so cosmic rays are still
  rejected but the normal quantised spread is kept.  This is the only case
  where the accepted set differs from astropy's / ccdproc's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from astropy.io import fits

from .. import headers as kw  # noqa: F401 - callers read the keywords from here
from ..errors import FrameError, InsufficientFramesError, UnreadableFrameError
from ..io import fitsio
from ..progress import progress
from .blockops import (  # noqa: F401 - the flag bits and factor are re-exported here
    FLAG_FEW,
    FLAG_NONFINITE,
    FLAG_PARTSAT,
    FLAG_SATURATED,
    MEDIAN_ERROR_FACTOR,
    LinearRows,
    _finish_block,
    _finish_block_numpy,
    prepare_frame,
    valid_values,
)
from .blockops import warmup as _warmup_blockops
from .kernels import (
    HAVE_NUMBA,
    MAD_TO_STD,  # noqa: F401 - re-exported with the engine's constants
    _combine_kernel,
    _prepare,
    batcher_network,
)
from .kernels import warmup as _warmup_kernels
from .kernels_numpy import _combine_numpy, _prepare_numpy
from .keysort import (
    _combine_keys,
    read_keys,
    warmup,  # noqa: F401 - every kernel of combine (benchmarks time it)
    warmup_keys,
)
from .master_header import _build_header, _inputs_table
from .pooled_floor import POOL_MIN_PIXELS, pooled_scale_floor
from .stats import chi2_median_ratio

logger = logging.getLogger(__name__)

#: Default clipping threshold of every master, both sides [sigma].  Not astropy's 3: the
#: shot noise of dark frames is positively skewed, and a symmetric 3-sigma clip cuts more of
#: its upper tail, biasing every pixel of the master low by ~0.03 of its standard error
#: whatever the number of frames (8 x Poisson(40) electrons + 32 adu read noise, 10-40
#: frames; 2.8-0.7 % of the samples clipped instead of 0.27 %); at 4 sigma -0.01 to -0.003
#: (0.76-0.04 % clipped), and outliers are still rejected.  See the module notes.
DEFAULT_CLIP_SIGMA = 4.0

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
#: Sort raw 16-bit frames as stored integers where that gives the same numbers
#: (:mod:`utils.stack.keysort`) and there are at least KEY_MIN_FRAMES of them (1024-wide rows,
#: prepare + kernel: 5 frames 32 -> 35 ns/px, 10 frames 48 -> 49, 16 frames 70 -> 62, 50
#: frames 243 -> 202 at 2048); KEY_SORT False: always the float32 samples (tests' reference).
KEY_SORT = True
KEY_MIN_FRAMES = 12


# --------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------
@dataclass
class MasterResult:
    """A combined master frame and its companions.

    Attributes
    ----------
    data : numpy.ndarray
        float32 master image, in the unit of the (scaled) inputs.
    noise : numpy.ndarray
        float32 per-pixel sample standard deviation (``ddof=1``) of the accepted
        samples, same unit; NaN where fewer than 2 samples were accepted.
    stderr : numpy.ndarray
        float32 standard error of the master, ``noise / sqrt(count)``.
    count : numpy.ndarray
        int16 number of accepted samples per pixel.
    flags : numpy.ndarray
        uint8 bit plane: ``FLAG_FEW`` (1), ``FLAG_SATURATED`` (2), ``FLAG_NONFINITE`` (4),
        ``FLAG_PARTSAT`` (8: saturated in some inputs, the mean of the rest biased low).
    header : astropy.io.fits.Header
        Combination keywords, master statistics and provenance.
    inputs : pandas.DataFrame
        One row per input: ``PATH`` and, when known, ``TEMP`` [degC],
        ``EXPTIME`` [s], ``SCALE`` and ``NSAT`` (saturated samples).
    """

    data: np.ndarray
    noise: np.ndarray
    stderr: np.ndarray
    count: np.ndarray
    flags: np.ndarray
    header: fits.Header
    inputs: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def mask(self) -> np.ndarray:
        """Boolean mask, True where the master is not valid (any flag set)."""
        return self.flags != 0

    def write(self, path: str | os.PathLike, *, unit: str = "adu",
              extra_header: fits.Header | Mapping | None = None,
              extra_images: Mapping[str, tuple[np.ndarray, str]] | None = None) -> Path:
        """Write the master as a ``CCDData``-readable FITS product, atomically.

        Layout: primary = master (``BUNIT = unit``), ``UNCERT`` = ``stderr``,
        ``MASK``, image extensions ``NOISE`` (unit ``unit``), ``NCOMB`` (count)
        and ``FLAGS``, and the binary table ``INPUTS``.

        Parameters
        ----------
        path : path-like
            Destination file.
        unit : str, optional
            Physical unit of the master, e.g. ``"adu"`` or ``"adu / s"``.
        extra_header : Header or mapping, optional
            Cards added to (or overriding) :attr:`header`; mapping values may be
            ``value`` or ``(value, comment)``.
        extra_images : mapping, optional
            More image extensions, ``{EXTNAME: (array, bunit)}``.
        """
        header = self.header.copy()
        if isinstance(extra_header, fits.Header):
            extra_header = {card.keyword: (card.value, card.comment) for card in extra_header.cards}
        for key, value in (extra_header or {}).items():
            value, comment = value if isinstance(value, tuple) else (value, "")
            fitsio.set_card(header, key, value, comment)
        return fitsio.write_product(
            path, self.data, header, unit=unit, uncertainty=self.stderr, mask=self.mask,
            images={"NOISE": (self.noise, unit), "NCOMB": (self.count, ""),
                    "FLAGS": (self.flags, ""), **(extra_images or {})},
            tables={"INPUTS": self.inputs} if len(self.inputs.columns) else None)


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
        Number of input frames.
    shape : tuple of int
        ``(rows, columns)`` of every frame.
    memory_limit : float
        Budget for the working blocks of all workers together [byte]; the
        full-frame outputs (about 15 byte per pixel) come on top.
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
def combine(inputs: Sequence, *, method: str = "sigclip",
            sigma_low: float = DEFAULT_CLIP_SIGMA, sigma_high: float = DEFAULT_CLIP_SIGMA,
            maxiters: int | None = 5, min_accepted: int = 3,
            scale: Sequence[float] | None = None,
            subtract: np.ndarray | Callable[[int, int, int], np.ndarray] | None = None,
            saturation: float | None = None, min_scale: float = 0.0, guard: bool = True,
            pooled_floor: bool = True, quantum: float = 0.0,
            memory_limit: float = 1e9,
            workers: int | None = None, progress_bar: bool = False,
            metadata: Sequence[Mapping] | None = None, product: str = "MASTER",
            deferred: bool = False,
            executor: Executor | None = None) -> MasterResult | StackedMaster:
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
        Clipping thresholds [sigma]; default :data:`DEFAULT_CLIP_SIGMA` (4: a 3-sigma
        clip biases the mean of skewed shot noise low, see the module notes).
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
    quantum : float, optional
        Quantisation step of the prepared samples (one ADC step, :func:`utils.adu.quantum`).
        A pixel whose accepted samples (two or more) are all equal gets ``noise =
        quantum / sqrt(12)`` instead of 0: their spread is below one step, not zero, and an
        error of 0 gave such a pixel infinite weight in a fit and pulls of 10^6 (3-frame
        bias masters quantised in 16-adu steps).  Default 0: no floor.
    guard : bool, optional
        Confirm each clipping decision: a sample flagged by the MAD scale is
        rejected only if it also lies outside the thresholds set by the
        standard deviation of the unflagged samples (when that is larger).
        With few frames the MAD underestimates the spread often enough to clip
        good samples (without the guard the 3-sigma clipped mean scatters
        21 % more than its reported error at 10 frames, 13 % with it);
        outliers are still rejected, since
        they are not among the unflagged samples.  False reproduces the plain
        median/MAD clipping of astropy's ``sigma_clip``.  Default True.
    pooled_floor : bool, optional
        Clip each pixel against ``max(own scale, pooled scale of its image row)``
        (:func:`utils.stack.pooled_floor.pooled_scale_floor`): with few frames the own MAD
        scale alone clipped genuine Gaussian samples in 25 % of the pixels at 3 frames
        (all of them then masked by ``min_accepted``), 13 % at 5, 4 % at 10; with the
        floor 0.03-0.08 %.  Pixels noisier than their row keep their own scale.
        False: the own scale alone (engine revision 2).  Default True.
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
    deferred : bool, optional
        Return once the images are stacked, as a :class:`StackedMaster` whose
        :meth:`~StackedMaster.finish` computes the header (with the master's statistics) and
        the inputs table: a caller that writes masters behind (``analysis.masters``) lets
        that single-threaded work run while the next master is stacked.  Default False.
    executor : concurrent.futures.Executor, optional
        Thread pool of ``workers`` threads to run the blocks in, shared by successive
        combines; with ``deferred``, this returns as soon as the blocks are queued and
        :meth:`~StackedMaster.finish` waits for them (and raises a block's error, e.g. an
        unreadable input), so the next master's blocks are queued behind this one's and no
        worker waits for the caller between masters.  A plan that fits fewer threads in
        ``memory_limit`` runs in its own pool, as without.  Default: a pool of this call.

    Returns
    -------
    MasterResult
        (a :class:`StackedMaster` with ``deferred``)

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
    ``ccdproc.combine``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n = len(inputs)
    if n == 0:
        raise InsufficientFramesError("combine() got no input frame")
    if scale is not None:
        scale = np.asarray(scale, dtype=np.float64).ravel()
        if scale.shape[0] != n:
            raise ValueError(f"scale has {scale.shape[0]} factors for {n} inputs")
    if metadata is not None and len(metadata) != n:
        raise ValueError(f"metadata has {len(metadata)} entries for {n} inputs")
    if min_accepted < 1:
        raise ValueError("min_accepted must be >= 1")
    maxiters = 0 if maxiters is None else int(maxiters)
    if n > np.iinfo(np.int16).max:
        raise ValueError(f"at most {np.iinfo(np.int16).max} inputs, got {n}")

    n_arrays = sum(isinstance(x, np.ndarray) for x in inputs)
    if 0 < n_arrays < n:
        raise ValueError("inputs must be all FITS paths or all 2-D arrays, not a mix")
    arrays = n_arrays == n
    source = _ArraySource(inputs) if arrays else _FileSource(inputs)
    nrows, width = source.shape
    if isinstance(subtract, np.ndarray) or (subtract is not None and not callable(subtract)):
        subtract = np.asarray(subtract)
        if subtract.shape != source.shape:
            raise ValueError(f"subtract array shape {subtract.shape} differs from the "
                             f"inputs' {source.shape}")

    use_numba = HAVE_NUMBA
    compile_s = _warmup_kernels() if use_numba else 0.0
    if use_numba:
        _warmup_blockops()
    # a bias model (+ dark) evaluated per frame: per pixel while the stored bytes are prepared
    # (unsigned 16-bit inputs), else straight into the float64 rows, no temporaries
    linear = use_numba and isinstance(subtract, LinearRows) and subtract.fusable(source.shape)
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    plan = plan_blocks(n, source.shape, memory_limit, workers, numba_path=use_numba)
    logger.debug("combine plan: %d x %dx%d frames, method=%s, %d rows/block, %d blocks, "
                 "%.1f MB/block, %d workers, %s kernel (ready in %.2f s)",
                 n, nrows, width, method, plan.rows, plan.n_blocks, plan.block_bytes / 1e6,
                 plan.workers, "numba" if use_numba else "numpy", compile_s)

    data = np.empty(source.shape, dtype=np.float32)
    noise = np.empty(source.shape, dtype=np.float32)
    count = np.empty(source.shape, dtype=np.int16)
    stderr = np.empty(source.shape, dtype=np.float32)
    flags = np.empty(source.shape, dtype=np.uint8)
    # np.full, not np.zeros: pages written now, not lazily mapped (see _prepare_py)
    nsat = np.full(source.shape, 0, dtype=np.int16) if saturation is not None else None
    sat_level = math.inf if saturation is None else float(saturation)
    code = _METHOD_CODE[method]
    net_lo, net_hi = batcher_network(n)
    chunk = max(16, (CHUNK_BYTES // (4 * n)) // 16 * 16)
    empty_sub = np.empty(0, dtype=np.float64)
    empty_nsat = np.empty(0, dtype=np.int16)
    local = _BUFFERS  # per thread, reused by the blocks of every combine the thread runs
    noise_floor = np.float32(quantum / math.sqrt(12.0)) if quantum > 0 else np.float32(0)
    direct_u16 = use_numba and isinstance(source, _FileSource) and source.unsigned16
    # raw frames combined as stored: sort the 16-bit values themselves (keysort.py), the
    # same numbers; not for the mean (nothing sorted)
    keyed = (KEY_SORT and n >= KEY_MIN_FRAMES and direct_u16 and code != 0 and subtract is None
             and (scale is None or bool(np.all(scale == 1.0))))
    # the pooled clipping floor (pooled_floor.py): its row width, 0 for none
    pool_width = width if code == 2 and pooled_floor and n >= 2 else 0
    pool_cons = chi2_median_ratio(n - 1) if pool_width else 1.0
    if keyed:
        warmup_keys()

    def run_block(start: int) -> tuple[int, np.ndarray]:
        stop = min(start + plan.rows, nrows)
        npix = (stop - start) * width
        out_d = data[start:stop].reshape(-1)
        out_n = noise[start:stop].reshape(-1)
        out_c = count[start:stop].reshape(-1)
        block_nsat = nsat[start:stop].reshape(-1) if nsat is not None else empty_nsat
        done = run_keys(start, stop, npix, out_d, out_n, out_c, block_nsat) if keyed else None
        nrej, frame_sat = done or run_samples(start, stop, npix, out_d, out_n, out_c,
                                              block_nsat)
        # flags and standard error of the block, in the workers too; identical quantised
        # samples (noise 0, count >= 2) get noise_floor first: a spread below one step, not 0
        finish = _finish_block if use_numba else _finish_block_numpy
        finish(out_d, out_n, out_c, block_nsat, n, int(min_accepted), code == 1,
               flags[start:stop].reshape(-1), stderr[start:stop].reshape(-1), noise_floor)
        return int(nrej), frame_sat

    def run_keys(start, stop, npix, out_d, out_n, out_c, block_nsat):
        # the stored 16-bit values sorted as integers (keysort.py); None: the float path
        kstride = -(-npix // 32) * 32 + 32
        keys = getattr(local, "keys", None)
        if keys is None or keys.size < n * kstride:
            keys = local.keys = np.empty(n * (-(-plan.rows * width // 32) * 32 + 32), np.uint16)
        raw_buf = getattr(local, "raw", None)
        if raw_buf is None or raw_buf.size < 2 * npix:
            raw_buf = local.raw = np.empty(2 * plan.rows * width, dtype=np.uint8)
        keys = keys[: n * kstride].reshape(n, kstride)
        frame_sat = read_keys(source, start, stop, keys, raw_buf, sat_level, block_nsat)
        if frame_sat is None:
            return None
        return _combine_keys(keys, npix, width, net_lo, net_hi, code, float(sigma_low),
                             float(sigma_high), maxiters, float(min_scale), bool(guard), chunk,
                             out_d, out_n, out_c, pool_width, pool_cons,
                             POOL_MIN_PIXELS), frame_sat

    def run_samples(start, stop, npix, out_d, out_n, out_c, block_nsat):
        stride = _padded_stride(npix)
        buf = getattr(local, "buf", None)
        if buf is None or buf.size < n * stride:
            buf = local.buf = np.empty(n * _padded_stride(plan.rows * width), dtype=np.float32)
        # C-contiguous (n, stride) view: a single kernel signature whatever the block
        x = buf[: n * stride].reshape(n, stride)
        frame_sat = np.zeros(n, dtype=np.int64)
        common_sub = sub_buf = None
        if isinstance(subtract, np.ndarray):  # the same rows for every frame: convert once
            common_sub = np.ascontiguousarray(subtract[start:stop], dtype=np.float64).reshape(-1)
        raw_buf = None
        if direct_u16:  # stored bytes straight into the kernel's samples (one pass)
            raw_buf = getattr(local, "raw", None)
            if raw_buf is None or raw_buf.size < 2 * npix:
                raw_buf = local.raw = np.empty(2 * plan.rows * width, dtype=np.uint8)
        if linear and raw_buf is None:  # (stored bytes: the rows are evaluated per pixel)
            sub_buf = getattr(local, "sub", None)
            if sub_buf is None or sub_buf.size < npix:
                sub_buf = local.sub = np.empty(plan.rows * width, dtype=np.float64)
        prep = _prepare if use_numba else _prepare_numpy
        for i in range(n):
            frame_sat[i] = prepare_frame(
                source, i, start, stop, x[i, :npix], raw_buf=raw_buf, subtract=subtract,
                common_sub=common_sub, sub_buf=sub_buf, linear=linear,
                scale=1.0 if scale is None else float(scale[i]), saturation=sat_level,
                nsat=block_nsat, prepare=prep)
        if use_numba:  # the pooled floor, if any, is computed by the kernel, row by row
            nrej = _combine_kernel(x, npix, net_lo, net_hi, code, float(sigma_low),
                                   float(sigma_high), maxiters, float(min_scale), empty_sub,
                                   bool(guard), chunk, out_d, out_n, out_c, True,
                                   pool_width, pool_cons, POOL_MIN_PIXELS)
        else:
            floor = (pooled_scale_floor(x, stop - start, width) if pool_width else empty_sub)
            nrej = _combine_numpy(x[:, :npix], code, float(sigma_low), float(sigma_high),
                                  maxiters, out_d, out_n, out_c, float(min_scale), bool(guard),
                                  floor)
        return nrej, frame_sat

    t0 = time.perf_counter()
    starts = range(0, nrows, plan.rows)
    # a shared pool unless the memory budget asked for fewer threads than it has
    shared = executor is not None and plan.workers >= workers
    if shared:
        futures = []
        with contextlib.ExitStack() as undo:  # closes the inputs unless the blocks are queued
            undo.enter_context(source)
            undo.callback(_settle, futures)
            futures.extend(executor.submit(run_block, s) for s in starts)
            undo.pop_all()

        def gather() -> tuple[int, np.ndarray]:
            try:
                return _gather(futures, n, progress_bar)
            finally:  # every block settled (_gather): the inputs can be closed
                source.__exit__(None, None, None)
                futures.clear()
        totals = None if deferred else gather()
    else:
        with source, ThreadPoolExecutor(max_workers=plan.workers) as pool:
            totals = _gather([pool.submit(run_block, s) for s in starts], n, progress_bar)
    if totals is not None:
        logger.debug("combined %d frames in %.2f s", n, time.perf_counter() - t0)

    paths = source.paths
    # the header only names what was subtracted: a deferred result keeps no reference to it
    # (a full-frame float64 image, or a callable holding some); another name than
    # ``subtract``, which blocks still queued read
    named = None if subtract is None else (
        np.empty(0) if isinstance(subtract, np.ndarray) else _Named(subtract))

    def finish() -> MasterResult:
        nreject, sat_per_frame = totals if totals is not None else gather()
        header = _build_header(n=n, method=method, sigma_low=sigma_low, sigma_high=sigma_high,
                               maxiters=maxiters, min_accepted=min_accepted, scale=scale,
                               subtract=named, saturation=saturation, metadata=metadata,
                               data=data, flags=flags, nreject=nreject, product=product,
                               min_scale=min_scale, guard=guard, noise_floor=float(noise_floor),
                               pooled_floor=pooled_floor)
        table = _inputs_table(paths, metadata, scale,
                              sat_per_frame if saturation is not None else None)
        return MasterResult(data=data, noise=noise, stderr=stderr, count=count, flags=flags,
                            header=header, inputs=table)
    return StackedMaster(finish) if deferred else finish()


#: Block buffers of each thread (samples, stored bytes, subtraction rows), reused by every
#: combine the thread works for: a pool shared by successive combines holds one set per
#: thread, not one per combine in flight.
_BUFFERS = threading.local()


def _settle(futures: list[Future]) -> None:
    """Cancel the blocks not started and wait for the running ones (they read the inputs,
    which may only be closed after)."""
    for fut in futures:
        fut.cancel()
    wait(futures)


def _gather(futures: list[Future], n: int, progress_bar: bool) -> tuple[int, np.ndarray]:
    """Rejected samples and saturated samples per frame of a combine's blocks, once all are
    done; the first error is raised after every block settled."""
    nreject = 0
    sat_per_frame = np.zeros(n, dtype=np.int64)
    try:
        for fut in progress(as_completed(futures), desc="combine", total=len(futures),
                            enabled=progress_bar, unit="block"):
            nrej, fsat = fut.result()
            nreject += nrej
            sat_per_frame += fsat
    except BaseException:
        _settle(futures)
        raise
    return int(nreject), sat_per_frame


class _Named:
    """What :func:`_build_header` reads of a ``subtract`` callable: its name."""

    def __init__(self, subtract):
        self.__qualname__ = getattr(subtract, "__qualname__", type(subtract).__name__)


class StackedMaster:
    """A master whose images are stacked (:func:`combine` with ``deferred=True``) but whose
    header statistics (``MEAN``, ``MEDIAN``, ``STD`` of the valid pixels) and inputs table
    are not computed yet.

    :meth:`finish` computes them, once, in any thread, and returns the
    :class:`MasterResult` :func:`combine` would have returned (the same numbers).
    """

    def __init__(self, finish: Callable[[], MasterResult]):
        self._finish = finish

    def finish(self) -> MasterResult:
        """The :class:`MasterResult` (header and inputs table computed now)."""
        result, self._finish = self._finish(), None
        return result
