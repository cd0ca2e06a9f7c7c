"""Per-block work of the combine engine around its kernel, in one pass each.

* :class:`LinearRows`: a per-frame subtraction of the form ``a + b * c_i (+ offset)``
  (a bias model evaluated at each frame's temperature, plus a dark), which
  :func:`utils.stack.combine.combine` evaluates straight into its float64 rows
  (:func:`_linear_rows`) instead of through numpy temporaries, with the same float32
  operations in the same order: the same bits.
  For inputs stored as FITS unsigned 16-bit it is fused into the preparation of the
  samples (:meth:`LinearRows.prepare_u16`, :func:`_prepare_u16_linear`): the stored bytes,
  the subtraction and the scale in one pass, no float64 rows at all.
* :func:`_finish_block`: the ``FLAGS`` plane and the standard error of a combined
  block in one pass over its pixels; :func:`_finish_block_numpy` is the same in numpy
  (the fallback without numba, and the test oracle).

A 1024 x 1024 master of 5 frames spent ~4 ms of CPU in the numpy post-processing
(full-block temporaries) and ~2 ms evaluating the bias model, against ~35 ms in
the kernel.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .kernels import HAVE_NUMBA, _prepare, _prepare_u16

#: Standard error of a median relative to sigma/sqrt(N), Gaussian samples: sqrt(pi/2).
MEDIAN_ERROR_FACTOR = math.sqrt(math.pi / 2)

#: Flag bits of :attr:`utils.stack.combine.MasterResult.flags`.
FLAG_FEW = 1         # fewer than ``min_accepted`` samples accepted
FLAG_SATURATED = 2   # saturated in more than half of the inputs
FLAG_NONFINITE = 4   # master value is not finite (e.g. no sample at all)
FLAG_PARTSAT = 8     # saturated in some (at most half) of the inputs: the mean of the others is
#                      biased low (the bright tail was cut), so the value is not valid either


class LinearRows:
    """``subtract(i, start, stop)`` of :func:`utils.stack.combine.combine`: rows of
    ``a + b * coef[i]`` (plus ``offset``), in float32 as numpy evaluates it.

    Parameters
    ----------
    a, b : numpy.ndarray
        2-D maps, e.g. a bias at the reference temperature [adu] and its temperature
        coefficient [adu/degC].
    coef : sequence of float
        Per-frame factor of ``b``, e.g. ``T_i - TREF`` [degC]; taken as float32.
    offset : numpy.ndarray, optional
        2-D image added to every frame's rows (e.g. a scaled dark [adu]).

    Notes
    -----
    Calling it gives ``a[start:stop] + b[start:stop] * float32(coef[i])``, then
    ``+ offset[start:stop]``: the numbers of the closure it replaces.  :func:`combine`
    evaluates the same float32 operations in one numba pass (:attr:`fusable`: float32,
    C-contiguous maps) instead of calling it.
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, coef: Sequence[float],
                 offset: np.ndarray | None = None):
        self.a, self.b, self.offset = a, b, offset
        self.coef = np.asarray(coef, dtype=np.float32)

    def __call__(self, i: int, start: int, stop: int) -> np.ndarray:
        rows = self.a[start:stop] + self.b[start:stop] * self.coef[i]
        return rows if self.offset is None else rows + self.offset[start:stop]

    def plus(self, offset: np.ndarray) -> "LinearRows":
        """The same rows plus ``offset`` (a 2-D image): a new object."""
        if self.offset is not None:
            raise ValueError("LinearRows already has an offset")
        return LinearRows(self.a, self.b, self.coef, offset)

    def fusable(self, shape: tuple[int, int]) -> bool:
        """Whether :func:`_linear_rows` gives the rows of frames of ``shape``: float32
        C-contiguous maps of that shape (else :func:`combine` calls the object)."""
        maps = (self.a, self.b) if self.offset is None else (self.a, self.b, self.offset)
        return all(isinstance(m, np.ndarray) and m.dtype == np.float32 and m.shape == shape
                   and m.flags.c_contiguous for m in maps)

    def evaluate(self, i: int, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Rows ``start:stop`` of frame ``i`` as float64 into ``out`` (1-D, at least that
        many pixels; needs numba and :attr:`fusable`); returns the filled part, flattened."""
        width = self.a.shape[1]
        npix = (stop - start) * width
        dest = out[:npix]
        offset = (self.offset[start:stop].reshape(-1) if self.offset is not None
                  else _NO_OFFSET)
        _linear_rows(self.a[start:stop].reshape(-1), self.b[start:stop].reshape(-1),
                     self.coef[i], offset, dest)
        return dest


    def prepare_u16(self, i: int, start: int, stop: int, raw: np.ndarray, row: np.ndarray,
                    scale: float, saturation: float, nsat: np.ndarray) -> int:
        """:func:`utils.stack.kernels._prepare_u16` of rows ``start:stop`` of frame ``i`` with
        these rows subtracted, evaluated on the fly (needs numba and :attr:`fusable`).

        ``raw``: the stored big-endian uint16 bytes of the rows; ``row``: float32 samples
        out (as many pixels); ``scale``, ``saturation``, ``nsat``: as ``_prepare_u16``.
        The same numbers as :meth:`evaluate` followed by ``_prepare_u16``, in one pass.
        Returns the number of saturated samples.
        """
        offset = (self.offset[start:stop].reshape(-1) if self.offset is not None
                  else _NO_OFFSET)
        return _prepare_u16_linear(raw, row, self.a[start:stop].reshape(-1),
                                   self.b[start:stop].reshape(-1), self.coef[i], offset,
                                   scale, saturation, nsat)


_NO_OFFSET = np.empty(0, dtype=np.float32)


_NO_ROWS = np.empty(0, dtype=np.float64)


def prepare_frame(source, i: int, start: int, stop: int, row: np.ndarray, *, raw_buf,
                  subtract, common_sub, sub_buf, linear: bool, scale: float,
                  saturation: float, nsat: np.ndarray, prepare=None) -> int:
    """Rows ``start:stop`` of input ``i`` of ``source`` into the kernel's samples ``row``
    (float32: minus the subtracted rows, times ``scale``; saturated or missing = +inf);
    returns the frame's saturated samples (counted per pixel into ``nsat`` too).

    The one preparation of a frame's block, for :func:`utils.stack.combine.combine` and
    :func:`utils.stack.subsets.combine_subsets`.  ``raw_buf``: a byte buffer when the stored
    unsigned 16-bit bytes are converted straight into ``row`` (None: ``source.read``);
    ``subtract``: None, an image (its rows ``common_sub``, float64, converted once per
    block), a :class:`LinearRows` (``linear``: evaluated per pixel in the conversion, or
    into ``sub_buf``) or a callable ``subtract(i, start, stop)``; ``prepare``: the float
    preparation (default the compiled one)."""
    width = source.shape[1]
    if raw_buf is None:
        source.read(i, start, stop, row.reshape(stop - start, width))
    elif linear:  # bytes, bias model (+ dark), scale: one pass
        return subtract.prepare_u16(i, start, stop, source.read_bytes(i, start, stop, raw_buf),
                                    row, scale, saturation, nsat)
    if subtract is None:
        sub = _NO_ROWS
    elif isinstance(subtract, np.ndarray):
        sub = common_sub
    elif linear:
        sub = subtract.evaluate(i, start, stop, sub_buf)
    else:
        sub = np.ascontiguousarray(subtract(i, start, stop), dtype=np.float64)
        if sub.shape != (stop - start, width):
            raise ValueError(f"subtract({i}, {start}, {stop}) returned shape "
                             f"{sub.shape}, expected {(stop - start, width)}")
        sub = sub.reshape(-1)
    if raw_buf is not None:
        return _prepare_u16(source.read_bytes(i, start, stop, raw_buf), row, sub, scale,
                            saturation, nsat)
    return (prepare or _prepare)(row, sub, scale, saturation, nsat)


def _linear_rows_py(a, b, coef, offset, out):
    """``out = float64(a + b * coef [+ offset])``, each operation rounded to float32 as
    numpy does it on float32 arrays (``offset`` empty: none)."""
    c = np.float32(coef)
    if offset.shape[0] == a.shape[0]:
        for p in range(a.shape[0]):
            v = np.float32(a[p] + np.float32(b[p] * c))
            out[p] = np.float64(np.float32(v + offset[p]))
    else:
        for p in range(a.shape[0]):
            out[p] = np.float64(np.float32(a[p] + np.float32(b[p] * c)))


def _prepare_u16_linear_py(raw, row, a, b, coef, offset, scale, saturation, nsat):
    """``_prepare_u16(raw, row, sub, ...)`` with ``sub`` = :func:`_linear_rows_py`'s rows
    (``a + b * coef [+ offset]``, float32 operations) computed per pixel instead of read.

    The same float32 roundings, then ``float64(raw) - float64(rows)``, scaled and rounded
    to float32: the bits of the two passes, without their float64 rows (8 byte per pixel
    written and read again per frame).  Loops written out per case (offset, saturation)
    so that each stays a plain vectorisable loop.
    """
    n = row.shape[0]
    inf = np.float32(np.inf)
    c = np.float32(coef)
    count = 0
    if offset.shape[0] == n and saturation < np.inf:
        for p in range(n):
            raw_v = np.float32(((np.uint16(raw[2 * p]) << 8) | np.uint16(raw[2 * p + 1]))
                               ^ np.uint16(0x8000))
            sat = raw_v >= saturation
            s = np.float32(np.float32(a[p] + np.float32(b[p] * c)) + offset[p])
            v32 = np.float32((np.float64(raw_v) - np.float64(s)) * scale)
            row[p] = v32 if (abs(v32) < inf and not sat) else inf
            nsat[p] += sat
            count += sat
    elif offset.shape[0] == n:
        for p in range(n):
            raw_v = np.float32(((np.uint16(raw[2 * p]) << 8) | np.uint16(raw[2 * p + 1]))
                               ^ np.uint16(0x8000))
            s = np.float32(np.float32(a[p] + np.float32(b[p] * c)) + offset[p])
            v32 = np.float32((np.float64(raw_v) - np.float64(s)) * scale)
            row[p] = v32 if abs(v32) < inf else inf
    elif saturation < np.inf:
        for p in range(n):
            raw_v = np.float32(((np.uint16(raw[2 * p]) << 8) | np.uint16(raw[2 * p + 1]))
                               ^ np.uint16(0x8000))
            sat = raw_v >= saturation
            s = np.float32(a[p] + np.float32(b[p] * c))
            v32 = np.float32((np.float64(raw_v) - np.float64(s)) * scale)
            row[p] = v32 if (abs(v32) < inf and not sat) else inf
            nsat[p] += sat
            count += sat
    else:
        for p in range(n):
            raw_v = np.float32(((np.uint16(raw[2 * p]) << 8) | np.uint16(raw[2 * p + 1]))
                               ^ np.uint16(0x8000))
            s = np.float32(a[p] + np.float32(b[p] * c))
            v32 = np.float32((np.float64(raw_v) - np.float64(s)) * scale)
            row[p] = v32 if abs(v32) < inf else inf
    return count


def _finish_block_py(data, noise, count, nsat, n_frames, min_accepted, median, flags, stderr,
                     noise_floor):
    """``flags`` and ``stderr`` of a combined block (1-D views), in one pass.

    First, where ``noise_floor > 0`` (float32: one quantisation step / sqrt(12)), a
    ``noise`` of 0 with at least 2 accepted samples (identical quantised samples) becomes
    ``noise_floor``, in place (``stderr`` is then computed from it).

    ``FLAG_FEW`` where ``count < min_accepted``; ``FLAG_SATURATED`` where more than half
    of the ``n_frames`` samples were saturated (``nsat``, int16; empty: no saturation
    level), ``FLAG_PARTSAT`` where some (at most half) were; ``FLAG_NONFINITE`` where
    ``data`` is not finite.  ``stderr = noise / sqrt(count)`` in float32, times
    float32(:data:`MEDIAN_ERROR_FACTOR`) for a median.  The numbers of
    :func:`_finish_block_numpy`.
    """
    has_nsat = nsat.shape[0] == data.shape[0]
    factor = np.float32(MEDIAN_ERROR_FACTOR)
    floor = np.float32(noise_floor)
    use_floor = floor > 0
    for p in range(data.shape[0]):
        cnt = count[p]
        nz = noise[p]
        nz = floor if (use_floor and nz == 0 and cnt >= 2) else nz
        f = FLAG_FEW if cnt < min_accepted else 0
        if has_nsat:
            s = np.int32(nsat[p])
            f |= FLAG_SATURATED if 2 * s > n_frames else (FLAG_PARTSAT if s > 0 else 0)
        f |= 0 if np.isfinite(data[p]) else FLAG_NONFINITE
        flags[p] = np.uint8(f)
        err = np.float32(nz / np.sqrt(np.float32(cnt)))
        stderr[p] = np.float32(err * factor) if median else err
        # stored after the other stores: a select written straight back over the value it
        # loaded would compile to a masked store (see utils.stack.kernels' notes)
        noise[p] = nz


def _finish_block_numpy(data, noise, count, nsat, n_frames, min_accepted, median, flags, stderr,
                        noise_floor):
    """:func:`_finish_block_py` with numpy arrays (full-block temporaries)."""
    if noise_floor > 0:  # identical quantised samples: a spread below one step, not 0
        tied = (noise == 0) & (count >= 2)
        if tied.any():
            noise[tied] = np.float32(noise_floor)
    flags[:] = np.where(count < min_accepted, FLAG_FEW, 0)
    if nsat.shape[0] == data.shape[0]:
        most = 2 * nsat.astype(np.int32) > n_frames
        flags |= np.where(most, FLAG_SATURATED, 0).astype(np.uint8)
        flags |= np.where(~most & (nsat > 0), FLAG_PARTSAT, 0).astype(np.uint8)
    flags |= np.where(np.isfinite(data), 0, FLAG_NONFINITE).astype(np.uint8)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(noise, np.sqrt(count.astype(np.float32)), out=stderr)
    if median:
        # a median is noisier than a mean: efficiency 2/pi for Gaussian samples
        stderr *= np.float32(MEDIAN_ERROR_FACTOR)


def _quadrature_py(a, b, out):
    """``out = float32(sqrt(float64(a)**2 + float64(b)**2))`` (1-D, ``out`` may be ``a``)."""
    for p in range(out.shape[0]):
        x = np.float64(a[p])
        y = np.float64(b[p])
        out[p] = np.float32(math.sqrt(x * x + y * y))


def _valid_values_py(data, flags, out):
    """Copy ``data`` where ``flags == 0`` and it is finite into ``out`` (in order, branch-free);
    return how many: ``data[(flags == 0) & isfinite(data)]`` is ``out[:count]``."""
    k = 0
    for p in range(data.shape[0]):
        v = data[p]
        out[k] = v
        k += (flags[p] == 0) & np.isfinite(v)
    return k


def valid_values(data: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """``data[(flags == 0) & np.isfinite(data)]`` (a flattened copy), in one pass with numba."""
    if not HAVE_NUMBA:
        return data[(flags == 0) & np.isfinite(data)]
    flat = np.ravel(data)
    out = np.empty(flat.size, flat.dtype)  # pages touched only as far as it is filled
    return out[:_valid_values(flat, np.ravel(flags), out)]


if HAVE_NUMBA:
    from numba import njit

    _valid_values = njit(nogil=True, cache=True)(_valid_values_py)

    _quadrature = njit(nogil=True, cache=True)(_quadrature_py)

    _linear_rows = njit(nogil=True, cache=True)(_linear_rows_py)
    _prepare_u16_linear = njit(nogil=True, cache=True)(_prepare_u16_linear_py)
    # IEEE division (NaN or inf for a count of 0), not Python's ZeroDivisionError
    _finish_block = njit(nogil=True, cache=True, error_model="numpy")(_finish_block_py)
else:  # pragma: no cover
    _quadrature = None
    _linear_rows = _linear_rows_py
    _prepare_u16_linear = _prepare_u16_linear_py
    _finish_block = _finish_block_numpy


def warmup() -> None:
    """Compile (or load from numba's cache) this module's kernels for combine's types."""
    if not HAVE_NUMBA:
        return
    a = np.zeros(4, np.float32)
    out = np.empty(4, np.float64)
    _linear_rows(a, a, np.float32(1.0), a, out)
    _linear_rows(a, a, np.float32(1.0), _NO_OFFSET, out)
    raw, nsat16 = np.zeros(8, np.uint8), np.zeros(4, np.int16)
    for offset in (a, _NO_OFFSET):
        _prepare_u16_linear(raw, a.copy(), a, a, np.float32(1.0), offset, 1.0, np.inf, nsat16)
    for nsat in (np.zeros(4, np.int16), np.empty(0, np.int16)):
        _finish_block(a, a.copy(), np.zeros(4, np.int16), nsat, 3, 3, True,
                      np.empty(4, np.uint8), np.empty(4, np.float32), np.float32(0.5))
