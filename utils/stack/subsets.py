"""Masters of a set of frames and of subsets of it from one read of the frames.

The masters stage writes, for each calibration set, the master of all its frames and one
master per attempt (the attempts split the set's frames).  Stacked one after the other,
every frame's row blocks were read and prepared (``uint16`` decoding, bias-model
subtraction, scale) twice.  :func:`combine_subsets` reads and prepares each block of the
set's frames once and runs the combination kernel on the rows of each subset: the
prepared samples of a frame are the same numbers whichever master they go into, as long as
the preparation is the same, which :func:`shareable` checks exactly (same saturation level,
same subtraction -- the same array, or the same bias model maps with the same per-frame
coefficient -- and the same per-frame scale, bit for bit).  Every master is then the one
:func:`utils.stack.combine.combine` makes of its own frames, bit for bit (tested): each
pixel's samples are the same, the kernels work per pixel (the pooled clipping floor per
image row, and a subset is combined by whole image rows).

A subset is combined from a copy of its rows, a few image rows at a time (cache-sized, not
a second block buffer); the whole set is combined last, in place.  Saturation counts per
pixel are accumulated per subset while the frames are prepared (the subsets are disjoint)
and summed for the whole set.  A frame unreadable in a block fails the masters that contain
it (their finish raises its :class:`~utils.errors.FrameError`, as ``combine`` does); the
other subsets are still combined.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import Executor, Future, ThreadPoolExecutor, as_completed, wait
from typing import Mapping, Sequence

import numpy as np

from ..errors import FrameError
from ..progress import progress
from . import combine as _stacking
from .blockops import LinearRows, _finish_block, prepare_frame
from .blockops import warmup as _warmup_blockops
from .kernels import HAVE_NUMBA, _combine_kernel, batcher_network
from .kernels import warmup as _warmup_kernels
from .keysort import _combine_keys, _keys_to_samples, read_keys, warmup_keys
from .master_header import _build_header, _inputs_table
from .pooled_floor import POOL_MIN_PIXELS
from .stats import chi2_median_ratio

#: Bytes of one subset's samples copied per kernel call (a few image rows, cache-resident).
PIECE_BYTES = 256 * 2**10
#: Arguments of :func:`combine` that only the combination of each master uses (may differ).
_PER_MASTER = {"inputs", "scale", "subtract", "metadata", "min_scale", "quantum", "product",
               "progress_bar", "deferred", "executor"}


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _same_map(a, b) -> bool:
    return a is b or (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                      and _same_bits(a, b))


def shareable(whole: Mapping, part: Mapping, index: np.ndarray) -> bool:
    """Whether the frames ``index`` of the combine ``whole`` (its keyword arguments) are
    prepared exactly as the combine ``part`` prepares its own frames: the same settings but
    for the per-master ones, the same saturation, subtraction and scale of each frame."""
    if set(whole) != set(part) or any(
            whole[k] != part[k] for k in whole if k not in _PER_MASTER):
        return False
    sw, sp = whole.get("scale"), part.get("scale")
    if (sw is None) != (sp is None):
        return False
    if sw is not None and not _same_bits(np.asarray(sw, np.float64).ravel()[index],
                                         np.asarray(sp, np.float64).ravel()):
        return False
    bw, bp = whole.get("subtract"), part.get("subtract")
    if bw is None or bp is None:
        return bw is None and bp is None
    if isinstance(bw, LinearRows) and isinstance(bp, LinearRows):
        return (_same_map(bw.a, bp.a) and _same_map(bw.b, bp.b)
                and (bw.offset is None) == (bp.offset is None)
                and (bw.offset is None or _same_map(bw.offset, bp.offset))
                and _same_bits(bw.coef[index], bp.coef))
    # the same image subtracted from every frame (any other callable: not known per frame)
    return isinstance(bw, np.ndarray) and isinstance(bp, np.ndarray) and _same_map(bw, bp)


def subset_index(whole: Sequence, part: Sequence) -> np.ndarray | None:
    """Positions of ``part``'s inputs among ``whole``'s (in order), or None when ``part`` is
    not an ordered subset of distinct inputs of ``whole``."""
    where = {str(p): i for i, p in enumerate(whole)}
    if len(where) != len(whole):
        return None
    index = [where.get(str(p), -1) for p in part]
    if not index or min(index) < 0 or any(b <= a for a, b in zip(index, index[1:])):
        return None
    return np.asarray(index, dtype=np.intp)


class _Master:
    """One output of :func:`combine_subsets`: its frames and its combination's terms."""

    def __init__(self, request: Mapping, index: np.ndarray, shape: tuple[int, int],
                 width: int, has_nsat: bool):
        self.request, self.index, self.n = request, index, len(index)
        n = self.n
        self.code = _stacking._METHOD_CODE[request.get("method", "sigclip")]
        self.net_lo, self.net_hi = batcher_network(n)
        self.chunk = max(16, (_stacking.CHUNK_BYTES // (4 * n)) // 16 * 16)
        quantum = float(request.get("quantum", 0.0))
        self.noise_floor = np.float32(quantum / math.sqrt(12.0)) if quantum > 0 else np.float32(0)
        self.pool_width = (width if self.code == 2 and request.get("pooled_floor", True)
                           and n >= 2 else 0)
        self.pool_cons = chi2_median_ratio(n - 1) if self.pool_width else 1.0
        self.min_scale = float(request.get("min_scale", 0.0))
        self.data = np.empty(shape, dtype=np.float32)
        self.noise = np.empty(shape, dtype=np.float32)
        self.count = np.empty(shape, dtype=np.int16)
        self.stderr = np.empty(shape, dtype=np.float32)
        self.flags = np.empty(shape, dtype=np.uint8)
        self.has_nsat = has_nsat


def combine_subsets(requests: Sequence[Mapping], *, executor: Executor | None = None
                    ) -> list[_stacking.StackedMaster] | None:
    """The masters of several :func:`utils.stack.combine.combine` calls whose inputs are one
    set of FITS frames and disjoint ordered subsets of it, from one read of the frames.

    Parameters
    ----------
    requests : sequence of mapping
        Keyword arguments of each ``combine`` (``inputs``: FITS paths).  The first one's
        inputs are every frame; the others' are disjoint subsets of them, in that order,
        each prepared exactly as the first prepares those frames (:func:`shareable`).
    executor : concurrent.futures.Executor, optional
        The shared block pool of ``combine(executor=)`` (``workers`` threads); None, or a
        plan that fits fewer threads in ``memory_limit``: a pool of this call, which
        returns once every block is done.

    Returns
    -------
    list of StackedMaster or None
        One per request, in order (:meth:`~utils.stack.combine.StackedMaster.finish` gives
        the :class:`~utils.stack.combine.MasterResult` ``combine(**request)`` gives, bit for
        bit, or raises the error of a frame of that master unreadable while stacked); None
        when the requests do not share their frames exactly, or an input's layout cannot be
        read (nothing was started: stack them one by one, which raises as before).
    """
    if not HAVE_NUMBA or len(requests) < 2:
        return None
    whole = requests[0]
    inputs = list(whole["inputs"])
    if any(isinstance(x, np.ndarray) for x in inputs):
        return None
    full = np.arange(len(inputs), dtype=np.intp)
    indexes = [full]
    used = np.zeros(len(inputs), dtype=bool)
    for part in requests[1:]:
        index = subset_index(inputs, list(part["inputs"]))
        if index is None or used[index].any() or not shareable(whole, part, index):
            return None
        used[index] = True
        indexes.append(index)
    if not shareable(whole, whole, full) or len(inputs) > np.iinfo(np.int16).max:
        return None
    try:
        source = _stacking._FileSource(inputs)
    except (FrameError, OSError):
        return None
    if whole.get("min_accepted", 3) < 1:
        return None  # (combine refuses it)
    return _Shared(source, requests, indexes, executor).start()


class _Shared:
    """The blocks of :func:`combine_subsets` and the finish of each master."""

    def __init__(self, source, requests, indexes, executor):
        self.source, self.requests = source, requests
        whole = requests[0]
        self.n = n = len(indexes[0])
        self.nrows, self.width = source.shape
        self.method = whole.get("method", "sigclip")
        self.sigma_low = float(whole.get("sigma_low", _stacking.DEFAULT_CLIP_SIGMA))
        self.sigma_high = float(whole.get("sigma_high", _stacking.DEFAULT_CLIP_SIGMA))
        maxiters = whole.get("maxiters", 5)
        self.maxiters = 0 if maxiters is None else int(maxiters)
        self.min_accepted = int(whole.get("min_accepted", 3))
        self.guard = bool(whole.get("guard", True))
        saturation = whole.get("saturation")
        self.saturation = saturation
        self.sat_level = math.inf if saturation is None else float(saturation)
        scale = whole.get("scale")
        self.scale = None if scale is None else np.asarray(scale, np.float64).ravel()
        subtract = whole.get("subtract")
        if subtract is not None and not isinstance(subtract, LinearRows):
            subtract = np.asarray(subtract)
            if subtract.shape != source.shape:
                raise ValueError(f"subtract array shape {subtract.shape} differs from the "
                                 f"inputs' {source.shape}")
        self.subtract = subtract
        workers = whole.get("workers")
        self.workers = max(1, int(workers)) if workers is not None else (os.cpu_count() or 1)
        self.plan = _stacking.plan_blocks(n, source.shape, whole.get("memory_limit", 1e9),
                                          self.workers)
        self.masters = [_Master(r, ix, source.shape, self.width, saturation is not None)
                        for r, ix in zip(requests, indexes)]
        # the class of each frame: the subset holding it (its saturation counts go there),
        # else 0 (the whole set's own)
        self.owner = np.zeros(n, dtype=np.intp)
        for j, m in enumerate(self.masters[1:], 1):
            self.owner[m.index] = j
        code = self.masters[0].code
        self.direct_u16 = source.unsigned16
        self.linear = isinstance(subtract, LinearRows) and subtract.fusable(source.shape)
        plain = (subtract is None and (self.scale is None or bool(np.all(self.scale == 1.0))))
        self.keyed = [_stacking.KEY_SORT and m.n >= _stacking.KEY_MIN_FRAMES and self.direct_u16
                      and code != 0 and plain for m in self.masters]
        self.executor = executor
        self.futures: list[Future] = []
        self.lock = threading.Lock()
        self.pending = 0

    # ---------------------------------------------------------------------------------
    def start(self) -> list[_stacking.StackedMaster]:
        _warmup_kernels()
        _warmup_blockops()
        if self.keyed[0]:
            warmup_keys()
        shared = self.executor is not None and self.plan.workers >= self.workers
        pool = self.executor if shared else ThreadPoolExecutor(max_workers=self.plan.workers)
        self.source.__enter__()
        self.pending = 1  # start's own token: the inputs stay open until it is released
        try:
            for s in range(0, self.nrows, self.plan.rows):
                with self.lock:
                    self.pending += 1
                try:
                    fut = pool.submit(self.run_block, s)
                except BaseException:
                    self._block_done(None)
                    raise
                self.futures.append(fut)
                fut.add_done_callback(self._block_done)
        except BaseException:  # nothing is left reading the inputs
            for fut in self.futures:
                fut.cancel()
            wait(self.futures)
            raise
        finally:
            if not shared:  # a pool of this call: every block done on return
                pool.shutdown(wait=True)
            self._block_done(None)
        return [_stacking.StackedMaster(lambda j=j: self.finish(j))
                for j in range(len(self.masters))]

    def _block_done(self, _fut) -> None:
        with self.lock:
            self.pending -= 1
            last = self.pending == 0
        if last:  # every block settled: the inputs can be closed
            self.source.__exit__(None, None, None)

    # ---------------------------------------------------------------------------------
    def run_block(self, start: int) -> list:
        """Read and prepare rows ``start:`` of every frame once, combine each master's rows;
        returns per master ``(rejected, saturated per frame)`` or the FrameError of its
        first unreadable frame."""
        stop = min(start + self.plan.rows, self.nrows)
        npix = (stop - start) * self.width
        local = _stacking._BUFFERS
        nm = len(self.masters)
        nsat = None
        if self.saturation is not None:
            msat = getattr(local, "msat", None)
            if msat is None or msat.size < nm * npix:
                msat = local.msat = np.empty(nm * self.plan.rows * self.width, np.int16)
            nsat = msat[: nm * npix].reshape(nm, npix)
            nsat.fill(0)
        empty_nsat = np.empty(0, dtype=np.int16)
        frame_sat = np.zeros(self.n, dtype=np.int64)
        failed: dict[int, FrameError] = {}
        keys = self._read_keys(start, stop, npix, nsat, frame_sat, failed) \
            if self.keyed[0] else None
        x = None
        if keys is None:
            failed.clear()
            x = self._read_samples(start, stop, npix, nsat, frame_sat, failed)
        if nsat is not None and nm > 1:  # the whole set's counts: every class's
            for j in range(1, nm):
                nsat[0] += nsat[j]
        out = []
        for j in list(range(1, nm)) + [0]:  # the whole set last: its rows sorted in place
            m = self.masters[j]
            bad = [failed[i] for i in m.index if i in failed]
            if bad:
                out.append((j, bad[0]))
                continue
            sl = slice(start, stop)
            out_d, out_n = m.data[sl].reshape(-1), m.noise[sl].reshape(-1)
            out_c = m.count[sl].reshape(-1)
            if j == 0:
                if keys is not None:
                    nrej = self._kernel_keys(m, keys, npix, out_d, out_n, out_c)
                else:
                    nrej = self._kernel(m, x, npix, out_d, out_n, out_c)
            else:
                nrej = self._subset(m, j, keys, x, npix, out_d, out_n, out_c)
            block_nsat = nsat[j] if nsat is not None else empty_nsat
            _finish_block(out_d, out_n, out_c, block_nsat, m.n, self.min_accepted, m.code == 1,
                          m.flags[sl].reshape(-1), m.stderr[sl].reshape(-1), m.noise_floor)
            out.append((j, (int(nrej), frame_sat[m.index])))
        out.sort(key=lambda item: item[0])
        return [item[1] for item in out]

    def _read_keys(self, start, stop, npix, nsat, frame_sat, failed):
        # keysort.read_keys, each frame's saturation counted in its class
        local = _stacking._BUFFERS
        n, width = self.n, self.width
        kstride = -(-npix // 32) * 32 + 32
        keys = getattr(local, "keys", None)
        if keys is None or keys.size < n * kstride:
            keys = local.keys = np.empty(n * (-(-self.plan.rows * width // 32) * 32 + 32),
                                         np.uint16)
        raw_buf = self._raw(npix)
        keys = keys[: n * kstride].reshape(n, kstride)
        empty = np.empty(0, dtype=np.int16)
        counts = [nsat[self.owner[i]] if nsat is not None else empty for i in range(n)]
        done = read_keys(self.source, start, stop, keys, raw_buf, self.sat_level, counts,
                         failed)
        if done is None:  # a valid 65535: the float path (nothing saturates then)
            return None
        frame_sat[:] = done
        return keys

    def _raw(self, npix):
        local = _stacking._BUFFERS
        raw_buf = getattr(local, "raw", None)
        if raw_buf is None or raw_buf.size < 2 * npix:
            raw_buf = local.raw = np.empty(2 * self.plan.rows * self.width, dtype=np.uint8)
        return raw_buf

    def _read_samples(self, start, stop, npix, nsat, frame_sat, failed):
        # combine's run_samples preparation, each frame's saturation counted in its class
        local = _stacking._BUFFERS
        n, width = self.n, self.width
        stride = _stacking._padded_stride(npix)
        buf = getattr(local, "buf", None)
        if buf is None or buf.size < n * stride:
            buf = local.buf = np.empty(n * _stacking._padded_stride(self.plan.rows * width),
                                       dtype=np.float32)
        x = buf[: n * stride].reshape(n, stride)
        subtract = self.subtract
        common_sub = sub_buf = None
        if isinstance(subtract, np.ndarray):
            common_sub = np.ascontiguousarray(subtract[start:stop], dtype=np.float64).reshape(-1)
        raw_buf = self._raw(npix) if self.direct_u16 else None
        if isinstance(subtract, LinearRows) and (raw_buf is None or not self.linear):
            sub_buf = getattr(local, "sub", None)
            if sub_buf is None or sub_buf.size < npix:
                sub_buf = local.sub = np.empty(self.plan.rows * width, dtype=np.float64)
        empty = np.empty(0, dtype=np.int16)
        for i in range(n):
            try:
                frame_sat[i] = prepare_frame(
                    self.source, i, start, stop, x[i, :npix], raw_buf=raw_buf,
                    subtract=subtract, common_sub=common_sub, sub_buf=sub_buf,
                    linear=self.linear, scale=1.0 if self.scale is None else float(self.scale[i]),
                    saturation=self.sat_level,
                    nsat=nsat[self.owner[i]] if nsat is not None else empty)
            except FrameError as err:
                failed[i] = err
        return x

    def _kernel(self, m, x, npix, out_d, out_n, out_c):
        return _combine_kernel(x, npix, m.net_lo, m.net_hi, m.code, self.sigma_low,
                               self.sigma_high, self.maxiters, m.min_scale, _NO_FLOOR,
                               self.guard, m.chunk, out_d, out_n, out_c, True, m.pool_width,
                               m.pool_cons, POOL_MIN_PIXELS)

    def _kernel_keys(self, m, keys, npix, out_d, out_n, out_c):
        return _combine_keys(keys, npix, self.width, m.net_lo, m.net_hi, m.code,
                             self.sigma_low, self.sigma_high, self.maxiters, m.min_scale,
                             self.guard, m.chunk, out_d, out_n, out_c, m.pool_width,
                             m.pool_cons, POOL_MIN_PIXELS)

    def _subset(self, m, j, keys, x, npix, out_d, out_n, out_c) -> int:
        """Master ``j``'s rows of the block: its samples copied a few image rows at a time
        (whole rows: the pooled floor is per row) and combined there."""
        local = _stacking._BUFFERS
        width = self.width
        rows = max(1, PIECE_BYTES // (m.n * width * 4))
        size_max = rows * width
        stride = _stacking._padded_stride(size_max)
        xs_buf = getattr(local, "piece", None)
        if xs_buf is None or xs_buf.size < m.n * stride:
            xs_buf = local.piece = np.empty(m.n * stride, np.float32)
        if keys is not None:
            kstride = -(-size_max // 32) * 32 + 32
            ks_buf = getattr(local, "kpiece", None)
            if ks_buf is None or ks_buf.size < m.n * kstride:
                ks_buf = local.kpiece = np.empty(m.n * kstride, np.uint16)
        nrej = 0
        for p0 in range(0, npix, size_max):
            p1 = min(p0 + size_max, npix)
            size = p1 - p0
            o_d, o_n, o_c = out_d[p0:p1], out_n[p0:p1], out_c[p0:p1]
            xs = xs_buf[: m.n * _stacking._padded_stride(size)].reshape(m.n, -1)
            if keys is None:
                for k, i in enumerate(m.index):
                    xs[k, :size] = x[i, p0:p1]
                nrej += self._kernel(m, xs, size, o_d, o_n, o_c)
                continue
            ks = ks_buf[: m.n * (-(-size // 32) * 32 + 32)].reshape(m.n, -1)
            for k, i in enumerate(m.index):
                ks[k, :size] = keys[i, p0:p1]
            if self.keyed[j]:
                nrej += self._kernel_keys(m, ks, size, o_d, o_n, o_c)
            else:  # the float samples of the stored values (keysort: the same numbers)
                _keys_to_samples(ks, 0, size, xs, 0)
                nrej += self._kernel(m, xs, size, o_d, o_n, o_c)
        return nrej

    # ---------------------------------------------------------------------------------
    def finish(self, j: int) -> _stacking.MasterResult:
        """Master ``j``'s result once every block is done (its first frame error raised)."""
        m = self.masters[j]
        nreject, sat = 0, np.zeros(m.n, dtype=np.int64)
        error = None
        for fut in progress(as_completed(self.futures), desc="combine", total=len(self.futures),
                            enabled=bool(m.request.get("progress_bar")) and j == 0,
                            unit="block"):
            got = fut.result()[j]
            if isinstance(got, BaseException):
                error = error or got
                continue
            nreject += got[0]
            sat += got[1]
        if error is not None:
            raise error
        r = m.request
        subtract, scale, metadata = r.get("subtract"), r.get("scale"), r.get("metadata")
        if scale is not None:
            scale = np.asarray(scale, dtype=np.float64).ravel()
        named = None if subtract is None else (
            np.empty(0) if isinstance(subtract, np.ndarray) else _stacking._Named(subtract))
        header = _build_header(n=m.n, method=self.method, sigma_low=r.get(
            "sigma_low", _stacking.DEFAULT_CLIP_SIGMA), sigma_high=r.get(
            "sigma_high", _stacking.DEFAULT_CLIP_SIGMA), maxiters=self.maxiters,
            min_accepted=r.get("min_accepted", 3), scale=scale, subtract=named,
            saturation=self.saturation, metadata=metadata, data=m.data, flags=m.flags,
            nreject=int(nreject), product=r.get("product", "MASTER"), min_scale=m.min_scale,
            guard=r.get("guard", True), noise_floor=float(m.noise_floor),
            pooled_floor=r.get("pooled_floor", True))
        paths = [self.source.paths[i] for i in m.index]
        table = _inputs_table(paths, metadata, scale,
                              sat if self.saturation is not None else None)
        result = _stacking.MasterResult(data=m.data, noise=m.noise, stderr=m.stderr,
                                        count=m.count, flags=m.flags, header=header,
                                        inputs=table)
        # the images are the result's now (freed with it, not with the last master's)
        m.data = m.noise = m.count = m.stderr = m.flags = None
        return result


_NO_FLOOR = np.empty(0, dtype=np.float64)

__all__ = ["combine_subsets", "shareable", "subset_index", "PIECE_BYTES"]
