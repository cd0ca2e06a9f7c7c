"""Per-pixel weighted nonlinear least squares over whole frames: exponential models.

:func:`fit_exponential_per_pixel` (``y = A exp(rate (x - x_ref))``, e.g. dark
current vs temperature) and :func:`fit_power_exponential_per_pixel`
(``y = A t**gamma exp(rate (T - t_ref))``, dark signal vs exposure time and
temperature) are weighted nonlinear least-squares fits of every pixel: a
log-linear start on the points with enough signal, then damped Newton
iterations.  Values may be negative (quiet pixels).  Pixels without two
usable temperatures (or a failed fit) fall back to the population median of
the shape parameters, with a linear amplitude, and are flagged.

The work is done by numba kernels (``nogil``, on a thread pool over chunks of
pixels) that stream over the inputs once per pass, a tile of pixels at a time
in cache, with loops over pixels that LLVM vectorises; no full-frame float64
temporaries are made.  Without numba the same algorithms run as numpy code
vectorised over blocks of pixels (:mod:`utils.models.nonlinear_numpy`; slower, more
memory); the tests check that both give the same results.  Straight lines are in
:mod:`utils.models.linear`.
"""

from __future__ import annotations

import functools
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .. import scheduler
from ..stack.tiles import PIXEL_BLOCK, pixel_blocks
from ._parallel import HAVE_NUMBA, _float_array, _run_chunks
from .exp_kernels import _CONVERGED, _NL_CHUNK, _nb_fallback, _nb_nl_kernel, _nb_population
from .linear import warmup as _warmup_line
from .nonlinear_numpy import (
    MAD_TO_SIGMA,
    _Design,
    _fit_exp_model_numpy,
    _joint_population,
    fit_maps,
    population_median,
)
from .pixel_tiles import (
    POPULATION_PIXELS,
    PixelTiles,
    SampleParts,
    flat_cov,
    gather_sample,
    store_tile,
    tile_outputs,
)
from .population import joint_candidates

# The numpy engine (without numba), the design's moment features and the population step
# are in :mod:`utils.models.nonlinear_numpy`; the numba kernels in
# :mod:`utils.models.exp_kernels`.


def population_value(values, mask=None) -> tuple[float, float]:
    """Median and robust spread (1.4826 MAD) of the finite ``values[mask]``.

    Returns ``(nan, nan)`` when there is no finite value.

    Examples
    --------
    >>> population_value(np.array([1.0, 2.0, 3.0, np.nan]))
    (2.0, 1.4826)
    """
    v = np.asarray(values)
    if HAVE_NUMBA and v.dtype.kind == "f" and v.dtype.itemsize in (4, 8):
        m = np.ones(v.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool),
                                                                       v.shape)
        med, mad = _nb_population(_float_array(v).ravel(), np.ascontiguousarray(m).ravel())
        return float(med), MAD_TO_SIGMA * float(mad)
    return population_median(v, mask)


def _fit_exp_model(z, y, sigma, *, min_snr, max_iter, tol, workers, what, shared=None,
                   tiles: PixelTiles | None = None, population_start=None):
    """Shared driver: first pass (numba kernel, or numpy blocks), population, fallback pass.

    With ``tiles`` (:class:`PixelTiles`; ``y``, ``sigma`` and the covariance of ``shared``
    then None) the points are read tile by tile, three passes: first fits, the joint
    population's pixel sample, fallback fits.  ``population_start`` (q,): the population
    joint fit's warm start (a leave-one-out refit starting from the full fit's population
    theta; :func:`utils.models.population.joint_shape`).  Returns a dict of maps (float32 /
    bool / int16) and the population median and spread of every theta.
    """
    if not min_snr > 0:
        raise ValueError(f"min_snr must be > 0, not {min_snr}")
    if max_iter < 1 or not tol > 0:
        raise ValueError("max_iter must be >= 1 and tol > 0")
    n = z.shape[0]
    if tiles is None:
        y = _float_array(y)
        sigma = _float_array(sigma)
        if y.ndim < 1 or y.shape[0] != n or sigma.shape != y.shape:
            raise ValueError(f"{n} points but y has shape {y.shape} and sigma {sigma.shape}")
        if not HAVE_NUMBA:
            return _fit_exp_model_numpy(z, y, sigma, min_snr=min_snr, max_iter=max_iter,
                                        tol=tol, workers=workers, what=what, shared=shared,
                                        population_start=population_start)
        tiles = PixelTiles.of_arrays(y, sigma, None if shared is None else
                                     np.asarray(shared[1]))
    elif tiles.n != n:
        raise ValueError(f"{n} points but the tiles hold {tiles.n}")
    elif not HAVE_NUMBA:  # the numpy path needs every pixel at once
        parts = [tiles.read(a, b) for a, b in tiles.ranges]
        y2 = np.concatenate([_float_array(p[0]) for p in parts], axis=1)
        s2 = np.concatenate([_float_array(p[1]) for p in parts], axis=1)
        if shared is not None:
            shared = (shared[0], np.concatenate([flat_cov(p[2]) for p in parts], axis=2))
        return _fit_exp_model_numpy(z, y2.reshape((n,) + tuple(tiles.shape)),
                                    s2.reshape((n,) + tuple(tiles.shape)), min_snr=min_snr,
                                    max_iter=max_iter, tol=tol, workers=workers, what=what,
                                    shared=shared, population_start=population_start)
    tiles = _read_once(tiles)
    shape = tuple(tiles.shape)
    P = int(np.prod(shape))
    design = _Design(z)
    p, q = design.p, design.q
    maps = _new_maps(P, p, q)
    A, theta, cov, npts, status, chi2 = maps
    candidate = np.empty(P, bool)  # enough points for the joint population fit
    workers = max(1, int(workers))
    fail = ValueError(
        f"no pixel is well measured ({what} with y/sigma >= min_snr={min_snr} and a "
        "converged fit), so there is no population value for the low-signal pixels")
    if scheduler.current().remote:  # one task per tile on the cluster
        task = functools.partial(_first_pass_tile, read=tiles.read, design=design, n=n,
                                 fit=(min_snr, max_iter, tol))
        for (a, b), (out, cand) in zip(tiles.ranges, scheduler.map_tasks(task, tiles.ranges)):
            for full, part in zip(maps, out):  # always a copy: the task's arrays are its own
                full[..., a:b] = part
            candidate[a:b] = cand
    ahead = _SampleAhead(P, n) if len(tiles.ranges) > 1 else None
    kept = _FallbackPoints()  # the points of the pixels the fallback pass will fit

    def first_pass(at, got):  # the kernels' pass over a tile, in a helper thread
        a, b = at
        y_t = _float_array(got[0]).reshape(n, -1)
        s_t = _float_array(got[1]).reshape(n, -1)
        out = tile_outputs(maps, a, b, P)
        _first_pass_numba(design, y_t, s_t, min_snr, max_iter, tol, workers,
                          _with_scratch(out, b - a, p))
        return y_t, s_t, out

    def keep(at, got, result):  # its results and sample kept by the calling thread
        (a, b), (y_t, s_t, out) = at, result
        store_tile(maps, out, a, b, P)
        candidate[a:b] = joint_candidates((np.isfinite(y_t) & np.isfinite(s_t) & (s_t > 0)).sum(0))
        if ahead is not None:
            ahead.add(*got, candidate[a:b])
            kept.add(a, b, y_t, s_t, out[4], out[3])
    read_beside(tiles, [] if scheduler.current().remote else tiles.ranges, first_pass, keep)
    well = status == _CONVERGED
    if q > 1 and workers > 1:  # the kernels release the GIL
        with ThreadPoolExecutor(max_workers=q) as pool:
            pop = list(pool.map(lambda j: population_value(theta[j], well), range(q)))
    else:
        pop = [population_value(theta[j], well) for j in range(q)]
    # the joint fit's pixel sample (joint_shape's own stride over the candidates), gathered
    # by the joint fit itself: not held here while it runs (its float64 weights are)
    def sample():
        got = None if ahead is None else ahead.take(int(candidate.sum()))
        return gather_sample(tiles, candidate, n) if got is None else got
    pop_theta, joint = _joint_population(z, sample, None, pop, fail,
                                         None if shared is None else (shared[0], None),
                                         population_start)
    f = design.exp(pop_theta[:, None])[:, 0]
    with np.errstate(all="ignore"):  # only for the float32 casts of overflowing values
        fixed = (f, pop_theta.astype(np.float32),
                 np.array([s ** 2 for _, s in pop], np.float32))
    for a, b in tiles.ranges:
        if well[a:b].all():
            continue  # no fallback pixel: nothing to read
        if (a, b) in kept.tiles:  # their points kept from the first pass: no read
            at, y_c, s_c, c_status, c_npts = kept.tiles.pop((a, b))
            c_out = (np.empty(at.size, np.float32), np.empty((q, at.size), np.float32),
                     np.empty((p, p, at.size), np.float32), np.empty(at.size, np.float32),
                     np.empty((p, at.size), np.float32))
            _run_chunks(lambda i, j: _nb_fallback(y_c, s_c, i, j, c_status, c_npts, *fixed,
                                                  *c_out), at.size,
                        balanced_chunk(at.size, _NL_CHUNK, workers), workers)
            at = at + a
            A[at], theta[:, at], cov[:, :, at], chi2[at] = c_out[:4]
            continue
        y_t, s_t, _ = tiles.read(a, b)
        y_t = _float_array(y_t).reshape(n, -1)
        s_t = _float_array(s_t).reshape(n, -1)
        out = tile_outputs(maps, a, b, P)
        t_A, t_theta, t_cov, t_npts, t_status, t_chi2 = out
        t_errs = np.empty((p, b - a), np.float32)  # made from the covariance below
        _run_chunks(lambda i, j: _nb_fallback(y_t, s_t, i, j, t_status, t_npts, *fixed, t_A,
                                              t_theta, t_cov, t_chi2, t_errs),
                    b - a, balanced_chunk(b - a, _NL_CHUNK, workers), workers)
        store_tile(maps, out, a, b, P)
    # the error maps: sqrt of the float32 covariance's diagonal, as both kernels compute them
    # (made now, not held through the population and fallback passes: 3 maps at 2-D)
    errs = np.empty((p, P), np.float32)
    with np.errstate(invalid="ignore"):
        for r in range(p):
            np.sqrt(cov[r, r], out=errs[r])
    return fit_maps(shape, (A, theta, cov, chi2, npts, errs), well, pop_theta, pop, joint)


#: Largest single tile (points x pixels) that :func:`_read_once` keeps in memory between
#: the fit's passes: a leave-one-out refit's pixel sample (32 points x 65536 pixels of the
#: 2-D model), not a whole frame.
_KEEP_SAMPLES = 1 << 22


def _read_once(tiles: PixelTiles) -> PixelTiles:
    """``tiles`` whose one small tile (a pixel sample) is read once for the fit's three
    passes (first fits, the joint fit's sample, fallback fits), not three times: a tile read
    can be costly (a dark stack's errors are computed from its noise model at each read).
    The same arrays, so the same results; larger or several tiles are read as they come."""
    if len(tiles.ranges) != 1 or tiles.n * (tiles.ranges[0][1] - tiles.ranges[0][0]) \
            > _KEEP_SAMPLES:
        return tiles
    (a0, b0), = tiles.ranges
    kept = tiles.read(a0, b0)

    return PixelTiles(tiles.n, tiles.shape, tiles.ranges,
                      lambda a, b: kept if (a, b) == (a0, b0) else tiles.read(a, b))


class _FallbackPoints:
    """The points of the pixels of a tile left to the fallback pass (not converged), kept
    from the first pass (C order, as read) while they stay below :data:`_KEEP_SAMPLES`
    in all: the fallback pass then fits them without reading the tile again.  Per-pixel
    fits, so the same numbers as on the whole tile."""

    def __init__(self):
        self.tiles: dict = {}
        self.samples = 0

    def add(self, a, b, y_t, s_t, status, npts) -> None:
        at = np.flatnonzero(status != _CONVERGED)
        if at.size == 0 or self.samples + y_t.shape[0] * at.size > _KEEP_SAMPLES:
            return
        self.samples += y_t.shape[0] * at.size
        self.tiles[(a, b)] = (at, np.take(y_t, at, axis=1), np.take(s_t, at, axis=1),
                              status[at], npts[at])


class _SampleAhead:
    """The joint fit's pixel sample of a fit over several tiles, gathered during the first
    pass, as :func:`~utils.models.pixel_tiles.gather_sample` would gather it after it (the
    same arrays: the same selections of the same reads, concatenated alike), so that the
    tiles are not read again for it (a dark stack's read computes its errors from the noise
    model: ~0.6 s for the 1024^2 2-D fit).

    The sample is the candidates (enough points) at a stride that depends on their count,
    known only after the pass: the stride of all the pixels being candidates is taken (the
    usual case) and, should the count give another, :meth:`take` returns None (the caller
    gathers then: no change of result, one read of the tiles more, as before).
    """

    def __init__(self, pixels: int, n: int):
        self.step = max(1, math.ceil(pixels / POPULATION_PIXELS))
        self.seen = 0  # candidates in the tiles so far
        self.parts: SampleParts | None = SampleParts(n)

    def add(self, y_t, s_t, c_t, candidate: np.ndarray) -> None:
        """Keep the sample's pixels of one tile (its read, in order of the tiles)."""
        at = np.flatnonzero(candidate)
        sel = at[(self.seen + np.arange(at.size)) % self.step == 0]
        self.seen += at.size
        if sel.size and self.parts is not None:
            self.parts.add(y_t, s_t, c_t, sel)

    def take(self, candidates: int):
        """``(y, s, C)`` of the sample as gather_sample makes it, or None when ``candidates``
        (their count) gives another stride; dropped from here either way."""
        parts, self.parts = self.parts, None
        if parts is None or max(1, math.ceil(candidates / POPULATION_PIXELS)) != self.step:
            return None
        return parts.result()


def _first_pass_tile(tile, *, read, design, n, fit):
    """First pass on the pixels ``tile = (a, b)`` (a scheduler task): the per-pixel fit's
    maps of those pixels and whether each has enough points for the joint fit."""
    a, b = tile
    y_t, s_t, _ = read(a, b)
    y_t = _float_array(y_t).reshape(n, -1)
    s_t = _float_array(s_t).reshape(n, -1)
    m = b - a
    out = _new_maps(m, design.p, design.q)
    _first_pass_numba(design, y_t, s_t, fit[0], fit[1], fit[2], 1,
                      _with_scratch(out, m, design.p))
    return out, joint_candidates((np.isfinite(y_t) & np.isfinite(s_t) & (s_t > 0)).sum(0))


def _new_maps(m: int, p: int, q: int) -> tuple:
    """The per-pixel result maps of ``m`` pixels: amplitude, theta (q), covariance (p, p),
    points, status, reduced chi-square."""
    return (np.empty(m, np.float32), np.empty((q, m), np.float32),
            np.empty((p, p, m), np.float32), np.empty(m, np.int16), np.empty(m, np.int8),
            np.empty(m, np.float32))


def _with_scratch(maps: tuple, m: int, p: int) -> tuple:
    """The first-pass kernel's outputs: ``maps`` of ``m`` pixels with scratch maps of the
    kernel's chi-square (read by no later step) and errors (made from the covariance once
    every pass is done): one tile's, not full-frame maps held through the population and
    fallback passes (4 float32 maps at 2-D, 64 MB at 2048^2)."""
    return maps[:3] + (np.empty(m, np.float32),) + maps[3:] + (np.empty((p, m), np.float32),)


def _design_groups(z):
    """Distinct values of every design column: value index per point (q, n), the
    values (q, G), their count (q,) and largest magnitude (q,), and whether the
    model shape is cheaper as a product of per-value exponentials."""
    n, q = z.shape
    uniq = [np.unique(z[:, j], return_inverse=True) for j in range(q)]
    gid = np.array([inv.reshape(-1) for _, inv in uniq], dtype=np.int64)
    ngrp = np.array([u.size for u, _ in uniq], dtype=np.int64)
    uz = np.zeros((q, int(ngrp.max())))
    for j, (u, _) in enumerate(uniq):
        uz[j, :u.size] = u
    umax = np.array([np.abs(u).max() for u, _ in uniq])
    return gid, uz, ngrp, umax, q > 1 and int(ngrp.sum()) < n


def _first_pass_numba(design, y2, s2, min_snr, max_iter, tol, workers, outputs):
    """First pass by the per-pixel numba kernel on ``workers`` threads (chunks of pixels)."""
    A, theta, cov, chi, npts, status, chi2, errs = outputs
    z = np.ascontiguousarray(design.z, dtype=np.float64)
    n, q = z.shape
    zz = np.zeros((n, 3))
    for k, (i, j) in enumerate(design.pairs):
        zz[:, k] = design.quad[k]
    gid, uz, ngrp, umax, fact = _design_groups(z)
    _run_chunks(lambda a, b: _nb_nl_kernel(y2, s2, a, b, z, zz, gid, uz, ngrp, umax, fact,
                                           float(min_snr), int(max_iter), float(tol),
                                           A, theta, cov, chi, npts, status, chi2, errs),
                y2.shape[1], balanced_chunk(y2.shape[1], _NL_CHUNK, workers), workers)


def balanced_chunk(total: int, chunk: int, workers: int) -> int:
    """Chunk size for ``total`` pixels on ``workers`` threads: at most ``chunk``, for a
    multiple of ``workers`` chunks of (nearly) equal size, so that no thread runs the last
    chunk alone (a row tile of the 2-D fit, 49152 pixels, was 3 chunks of 16384 on 2
    threads: one thread idle for a third of the tile).  Per-pixel kernels give the same
    numbers whatever the chunks."""
    if total <= 0:
        return max(1, chunk)
    workers = max(1, int(workers))
    count = -(-total // max(1, chunk))
    count = -(-count // workers) * workers
    return max(1, -(-total // count))


def read_beside(tiles: PixelTiles, ranges, work, after=None) -> None:
    """For every range ``at`` of ``ranges``, in order: ``got = tiles.read(*at)`` by the
    calling thread, ``result = work(at, got)`` by one helper thread (e.g. a fit kernel's
    pass on its own pool), then ``after(at, got, result)`` by the calling thread; the next
    range is read while ``work`` runs on the one before (at most two tiles' points held).
    A tile read (masters' rows, their noise-model errors) was one core's work between the
    kernels' two-thread passes.  The reads' arrays are allocated by the calling thread (in
    its malloc arena, which the later steps reuse; a helper thread's freed memory stays
    resident in its own).  One range: all by the calling thread."""
    ranges = list(ranges)
    after = after or (lambda at, got, result: None)
    if len(ranges) < 2:
        for at in ranges:
            got = tiles.read(*at)
            after(at, got, work(at, got))
        return
    with ThreadPoolExecutor(1, thread_name_prefix="tile-work") as pool:
        previous = None
        for at in ranges:
            got = tiles.read(*at)
            if previous is not None:
                p_at, p_got, p_work = previous
                previous = None
                after(p_at, p_got, p_work.result())
                del p_got
            previous = (at, got, pool.submit(work, at, got))
            del got
        p_at, p_got, p_work = previous
        del previous
        after(p_at, p_got, p_work.result())


@dataclass
class ExponentialFit:
    """Per-pixel exponential ``y = amplitude * exp(rate * (x - x_ref))``.

    Attributes
    ----------
    amplitude : numpy.ndarray
        Model value at ``x_ref`` per pixel (units of y), float32.
    rate : numpy.ndarray
        Exponential rate (1 / unit of x, e.g. 1/degC; the doubling interval
        is ``ln 2 / rate``), float32.
    amplitude_err, rate_err : numpy.ndarray
        One-sigma standard errors from the weights (no chi-square rescaling).
        For fallback pixels ``rate_err`` is ``population_rate_spread``.
    covariance : numpy.ndarray
        Covariance of amplitude and rate (0 for fallback pixels).
    chi2 : numpy.ndarray
        Reduced chi-square ``sum(w r^2) / (npoints - fitted parameters)``,
        two parameters, one for fallback pixels; NaN when that is <= 0.
    npoints : numpy.ndarray
        Points with positive weight per pixel (int16).
    fallback : numpy.ndarray
        True where the rate is not the pixel's own but ``population_rate``
        (too few points with enough signal, or a failed fit); the amplitude
        is then fitted linearly at that rate (NaN without any usable point).
    x_ref : float
        Reference abscissa of the amplitude.
    population_rate : float
        Rate of the population: the joint fit of every pixel with its own amplitude
        (:func:`utils.models.population.joint_shape`), unbiased at low signal.
    population_rate_spread : float
        Robust spread (1.4826 MAD) of the rates of the well-measured (non-fallback) pixels.
    population_rate_err : float
        One-sigma error of ``population_rate``.
    population_rate_median : float
        Median rate of the well-measured pixels (biased low at low signal: they are selected
        by their noise).
    """

    amplitude: np.ndarray
    rate: np.ndarray
    amplitude_err: np.ndarray
    rate_err: np.ndarray
    covariance: np.ndarray
    chi2: np.ndarray
    npoints: np.ndarray
    fallback: np.ndarray
    x_ref: float
    population_rate: float
    population_rate_spread: float
    population_rate_err: float = float("nan")
    population_rate_median: float = float("nan")

    def predict(self, x: float) -> np.ndarray:
        """Model value at ``x`` (float32 image; inf where a pixel's own law runs beyond float32
        far from its data)."""
        amplitude, rate = _flat(self.amplitude), _flat(self.rate)

        def block(at):
            with np.errstate(over="ignore"):
                e = np.exp(rate[at].astype(np.float64) * (x - self.x_ref))
                return (amplitude[at] * e).astype(np.float32)
        return _by_blocks(self.amplitude.shape, block)

    def predict_err(self, x: float) -> np.ndarray:
        """One-sigma error of :meth:`predict` at ``x``, with the amplitude-rate covariance."""
        d = x - self.x_ref
        amplitude, rate, amplitude_err, rate_err, cov = (_flat(m) for m in (
            self.amplitude, self.rate, self.amplitude_err, self.rate_err, self.covariance))

        def block(at):
            a = amplitude[at].astype(np.float64)
            # gradient (e, a d e): var = e^2 (s_a^2 + (a d s_r)^2 + 2 a d cov)
            with np.errstate(over="ignore", invalid="ignore"):
                e = np.exp(rate[at].astype(np.float64) * d)
                var = amplitude_err[at].astype(np.float64) ** 2 + (a * d * rate_err[at]) ** 2 \
                    + 2 * a * d * cov[at]
                return (e * np.sqrt(np.maximum(var, 0))).astype(np.float32)
        return _by_blocks(self.amplitude.shape, block)


#: Pixels per block of the predictions' float64 work arrays (a few MB, not full frames:
#: a 2048 x 2048 prediction made ~4 float64 frames at once, 130 MB).
PREDICT_BLOCK = PIXEL_BLOCK


def _flat(image: np.ndarray, lead: int = 0) -> np.ndarray:
    """``image`` with its pixel axes (all but the ``lead`` first) flattened into one (a view
    when contiguous)."""
    image = np.asarray(image)
    return image.reshape(image.shape[:lead] + (-1,))


def _by_blocks(shape, block, size: int | None = None) -> np.ndarray:
    """Float32 image of ``shape`` whose flattened pixels ``at`` are ``block(at)`` (a slice
    of at most ``size`` pixels): elementwise work in float64 blocks, the same numbers as
    on the whole frame."""
    out = np.empty(shape, np.float32)
    flat = out.reshape(-1)
    for at in pixel_blocks(flat.size, size or PREDICT_BLOCK):
        flat[at] = block(at)
    return out


def fit_exponential_per_pixel(x, y, sigma, *, x_ref: float, min_snr: float = 3.0,
                              max_iter: int = 30, tol: float = 1e-6, workers: int = 2,
                              tiles: PixelTiles | None = None,
                              population_start: float | None = None,
                              shared_errors=None) -> ExponentialFit:
    """Weighted nonlinear least-squares exponential through every pixel of a stack.

    Fits ``y = amplitude * exp(rate * (x - x_ref))``, e.g. dark current
    [adu/s] against temperature [degC], by damped Newton (Levenberg-Marquardt)
    iterations on every pixel (float64 inside, ``workers`` threads, see the
    module notes).  Values
    may be negative or zero (quiet pixels after bias subtraction): the fit is
    made on ``y`` itself, logarithms are only taken of the points with
    ``y / sigma >= min_snr`` for the starting values (a weighted log-linear
    fit, weights ``(y / sigma)^2``).

    A pixel is well measured when at least two distinct ``x`` have
    ``y / sigma >= min_snr`` and the iteration converges to a model that
    reaches one sigma at two distinct ``x`` (not a spike on a single point,
    where the rate runs off to infinity).  Every other pixel
    falls back to the population rate (median over the well-measured pixels)
    with its amplitude fitted linearly at that rate,
    ``A = sum(w y e) / sum(w e^2)``, ``e = exp(rate (x - x_ref))``, error
    ``1 / sqrt(sum(w e^2))``; see :class:`ExponentialFit`.

    Parameters
    ----------
    x : array-like, shape (n,)
        Abscissae (e.g. temperatures [degC]); at least two distinct values.
    y : array-like, shape (n, ...)
        Values to fit (e.g. dark-current maps [adu/s]); NaN gives weight 0.
    sigma : array-like, shape (n, ...)
        One-sigma errors of ``y`` (same units); non-finite or non-positive
        errors give the point weight 0.  They are taken as true: errors are
        not rescaled by the chi-square.
    x_ref : float
        Reference abscissa of the amplitude (units of x).
    min_snr : float
        Smallest ``y / sigma`` of a point used for the start and for
        counting a pixel as well measured.
    max_iter : int
        Largest number of iterations; pixels not converged by then fall back.
    tol : float
        Convergence: the chi-square a further Gauss-Newton step would gain
        (Newton decrement ``g^T N^-1 g``) is below ``tol``, i.e. the
        parameters are within ``sqrt(tol)`` standard errors of the minimum
        (1e-3 by default).
    workers : int
        Threads working on chunks of pixels (the kernels release the GIL).
    tiles : PixelTiles, optional
        Read the points tile by tile instead of from ``y`` and ``sigma`` (then None):
        e.g. errors scaled tile by tile, without a full-size scaled copy; results identical.
    population_start : float, optional
        [1/unit of x] a close start of the population rate's joint fit: the full fit's
        population rate when refitting part of its data (leave-one-out); the same result
        within the fit's tolerance (1e-3 of its error), in fewer passes over the pixels
        (:func:`utils.models.population.joint_shape`, ``start``).
    shared_errors : tuple (V, C), optional
        Error shared between the points (e.g. one subtracted bias model serving every
        point measured from one exposure), ``cov(e_k, e_l) = V_k C_p V_l^T``; its diagonal
        must be in ``sigma``.  Taken into account by the population fit
        (:func:`utils.models.population.joint_shape`), whose expectation otherwise leans
        towards the shape of the shared error.  ``C`` (D, D, ...) per pixel, or None with
        ``tiles`` (whose reads then give it).

    Returns
    -------
    ExponentialFit

    Raises
    ------
    ValueError
        Fewer than two distinct ``x``, mismatched shapes, or no well-measured
        pixel (no population rate for the fallback).

    Notes
    -----
    Cost (numba): ~0.15 us per pixel and thread for five points; memory: the
    inputs plus ~50 bytes per pixel of results (and ~1 MB per thread).

    Examples
    --------
    >>> x = np.array([0.0, 6.0, 12.0])
    >>> y = 5.0 * 2.0 ** (x / 6.0)[:, None, None] * np.ones((3, 1, 1))
    >>> fit = fit_exponential_per_pixel(x, y, np.full_like(y, 0.1), x_ref=0.0)
    >>> round(float(fit.amplitude[0, 0]), 4), round(float(np.log(2) / fit.rate[0, 0]), 4)
    (5.0, 6.0)
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError("x must be one-dimensional")
    if np.unique(x[np.isfinite(x)]).size < 2 or not np.isfinite(x).all():
        raise ValueError("an exponential fit needs finite x with at least two distinct values")
    res = _fit_exp_model((x - x_ref)[:, None], y, sigma, min_snr=min_snr, max_iter=max_iter,
                         tol=tol, workers=workers, what="two distinct x", tiles=tiles,
                         population_start=None if population_start is None
                         else [population_start], shared=shared_errors)
    (rate_pop, rate_spread), = res["population"]
    return ExponentialFit(res["amplitude"], res["theta"][0], res["amplitude_err"],
                          res["theta_err"][0], res["covariance"][0, 1].copy(), res["chi2"],
                          res["npoints"], res["fallback"], float(x_ref), rate_pop, rate_spread,
                          float(res["population_err"][0]), float(res["population_median"][0]))


@dataclass
class PowerExponentialFit:
    """Per-pixel ``y = amplitude * t**gamma * exp(rate * (T - t_ref))``.

    ``t`` is the exposure time [s] and ``T`` the temperature [degC].

    Attributes
    ----------
    amplitude : numpy.ndarray
        Model value at ``t = 1 s`` and ``T = t_ref`` (units of y), float32.
    gamma : numpy.ndarray
        Power of the exposure time (1 for a signal proportional to it).
    rate : numpy.ndarray
        Exponential temperature rate [1/degC].
    amplitude_err, gamma_err, rate_err : numpy.ndarray
        One-sigma standard errors (population spreads for fallback pixels).
    covariance : numpy.ndarray
        Shape (3, 3, ...): covariance of (amplitude, gamma, rate) per pixel;
        diagonal for fallback pixels.
    chi2, npoints, fallback :
        As in :class:`ExponentialFit` (three fitted parameters, one for
        fallback pixels).
    t_ref : float
        Reference temperature of the amplitude [degC].
    population_gamma, population_rate : float
        Gamma and rate of the population: the joint fit of every pixel with its own
        amplitude (:func:`utils.models.population.joint_shape`), unbiased at low signal.
    population_gamma_spread, population_rate_spread : float
        Robust spreads (1.4826 MAD) of gamma and rate over the well-measured pixels.
    population_gamma_err, population_rate_err : float
        One-sigma errors of the population values.
    population_gamma_median, population_rate_median : float
        Medians over the well-measured pixels (biased at low signal).
    """

    amplitude: np.ndarray
    gamma: np.ndarray
    rate: np.ndarray
    amplitude_err: np.ndarray
    gamma_err: np.ndarray
    rate_err: np.ndarray
    covariance: np.ndarray
    chi2: np.ndarray
    npoints: np.ndarray
    fallback: np.ndarray
    t_ref: float
    population_gamma: float
    population_rate: float
    population_gamma_spread: float
    population_rate_spread: float
    population_gamma_err: float = float("nan")
    population_rate_err: float = float("nan")
    population_gamma_median: float = float("nan")
    population_rate_median: float = float("nan")

    def _shape_at(self, at, temperature: float, exptime: float) -> np.ndarray:
        """``t^gamma exp(rate (T - t_ref))`` of the flattened pixels ``at``, float64."""
        with np.errstate(over="ignore"):
            return np.exp(_flat(self.gamma)[at].astype(np.float64) * np.log(exptime)
                          + _flat(self.rate)[at].astype(np.float64)
                          * (temperature - self.t_ref))

    def predict(self, temperature: float, exptime: float) -> np.ndarray:
        """Model value at ``temperature`` [degC] and ``exptime`` [s] (float32 image; inf where a
        pixel's own law runs beyond float32 far from its data)."""
        amplitude = _flat(self.amplitude)

        def block(at):
            with np.errstate(over="ignore"):
                return (amplitude[at] * self._shape_at(at, temperature, exptime)
                        ).astype(np.float32)
        return _by_blocks(self.amplitude.shape, block)

    def predict_err(self, temperature: float, exptime: float) -> np.ndarray:
        """One-sigma error of :meth:`predict`, with the full parameter covariance."""
        amplitude, c = _flat(self.amplitude), _flat(self.covariance, lead=2)

        def block(at):
            f = self._shape_at(at, temperature, exptime)
            a = amplitude[at].astype(np.float64)
            # gradient f * (1, a ln t, a dT); var = f^2 * u^T C u
            u = (1.0, a * np.log(exptime), a * (temperature - self.t_ref))
            with np.errstate(over="ignore", invalid="ignore"):
                var = sum(u[i] * u[j] * c[i, j, at].astype(np.float64) for i in range(3)
                          for j in range(3))
                return (f * np.sqrt(np.maximum(var, 0))).astype(np.float32)
        return _by_blocks(self.amplitude.shape, block)


def fit_power_exponential_per_pixel(temperature, exptime, y, sigma, *, t_ref: float,
                                    min_snr: float = 3.0, max_iter: int = 30,
                                    tol: float = 1e-6, workers: int = 2,
                                    shared_errors=None,
                                    tiles: PixelTiles | None = None,
                                    population_start=None) -> PowerExponentialFit:
    """Weighted nonlinear fit of ``y = A t**gamma exp(rate (T - t_ref))`` for every pixel.

    Same scheme as :func:`fit_exponential_per_pixel` with three parameters:
    log-linear start on the points with ``y / sigma >= min_snr`` (design
    ``[1, ln t, T - t_ref]``), Levenberg-Marquardt on all points with a
    positive weight (3x3 systems by cofactors).  A
    pixel is well measured with at least three such points spanning two
    distinct temperatures and two distinct exposure times (not collinear),
    and a converged fit whose model reaches one sigma on such a set of
    points; the others get gamma and rate fixed to the
    population medians and a linear amplitude, flagged as fallback.

    Parameters
    ----------
    temperature : array-like, shape (n,)
        Temperature of every point [degC].
    exptime : array-like, shape (n,)
        Exposure time of every point [s], > 0.
    y : array-like, shape (n, ...)
        Values to fit, e.g. dark signal maps [adu] (may be negative).
    sigma : array-like, shape (n, ...)
        One-sigma errors of ``y``; non-finite or non-positive give weight 0.
    t_ref : float
        Reference temperature of the amplitude [degC].
    min_snr, max_iter, tol, workers :
        As in :func:`fit_exponential_per_pixel`.
    shared_errors : tuple (V, C), optional
        Error shared between the points (e.g. one subtracted bias serving several
        masters): ``cov = V_k C V_l^T`` with V (n, D) and C (D, D, ...); used by the
        population fit (:func:`utils.models.population.joint_shape`), whose expectation
        it would otherwise bias.  With ``tiles``, C is None (the tiles give it).
    tiles : PixelTiles, optional
        Read the points tile by tile instead of from ``y`` and ``sigma`` (then None):
        memory bounded by the tile size, results identical.
    population_start : tuple (gamma, rate), optional
        A close start of the population joint fit (the full fit's population gamma and
        rate in a leave-one-out refit), as in :func:`fit_exponential_per_pixel`.

    Returns
    -------
    PowerExponentialFit

    Raises
    ------
    ValueError
        Bad exposure times, fewer than two distinct temperatures or exposure
        times, a design that cannot separate gamma from rate, mismatched
        shapes, or no well-measured pixel.
    """
    temperature = np.asarray(temperature, dtype=np.float64)
    exptime = np.asarray(exptime, dtype=np.float64)
    if temperature.ndim != 1 or exptime.shape != temperature.shape:
        raise ValueError("temperature and exptime must be one-dimensional and of equal length")
    if not (np.isfinite(temperature).all() and np.isfinite(exptime).all() and (exptime > 0).all()):
        raise ValueError("temperatures must be finite and exposure times finite and > 0")
    if np.unique(temperature).size < 2 or np.unique(exptime).size < 2:
        raise ValueError("a power-exponential fit needs two distinct temperatures and two "
                         "distinct exposure times")
    z = np.column_stack([np.log(exptime), temperature - t_ref])
    if np.linalg.matrix_rank(np.column_stack([np.ones(len(z)), z - z.mean(0)])) < 3:
        raise ValueError("exposure time and temperature vary together: gamma and rate "
                         "cannot be separated")
    res = _fit_exp_model(z, y, sigma, min_snr=min_snr, max_iter=max_iter, tol=tol,
                         workers=workers,
                         what="three points spanning two temperatures and two exposure times",
                         shared=shared_errors, tiles=tiles, population_start=population_start)
    (g_pop, g_spread), (r_pop, r_spread) = res["population"]
    g_err, r_err = (float(v) for v in res["population_err"])
    g_med, r_med = (float(v) for v in res["population_median"])
    return PowerExponentialFit(res["amplitude"], res["theta"][0], res["theta"][1],
                               res["amplitude_err"], res["theta_err"][0], res["theta_err"][1],
                               res["covariance"], res["chi2"], res["npoints"], res["fallback"],
                               float(t_ref), g_pop, r_pop, g_spread, r_spread, g_err, r_err,
                               g_med, r_med)


def warmup() -> float:
    """Compile (or load from numba's cache) the fit kernels; return the seconds taken.

    The fits compile on first use by themselves; benchmarks call this first to
    time the one-off compilation separately.  Returns 0 without numba.
    """
    if not HAVE_NUMBA:
        return 0.0
    t0 = time.perf_counter()
    x = np.array([0.0, 1.0, 2.0])
    for dtype in (np.float32, np.float64):
        y = (np.exp(x)[:, None] * np.ones((3, 4))).astype(dtype)
        s = np.full_like(y, 0.01)
        fit_exponential_per_pixel(x, y, s, x_ref=0.0, workers=1)
        fit_power_exponential_per_pixel(np.array([0.0, 0, 1, 1]), np.array([1.0, 2, 1, 2]),
                                        np.vstack([y, y[:1]]), np.vstack([s, s[:1]]),
                                        t_ref=0.0, workers=1)
    return time.perf_counter() - t0 + _warmup_line()
