"""Dark-current rate per pixel and temperature bin: the slope of dark signal vs exposure time.

At each temperature the bias-subtracted masters ``S_k`` at exposures ``t_k``
are fitted per pixel with ``S = offset + rate * t`` (weighted least squares,
closed form), so whatever does not grow with exposure -- residual bias, an
exposure-independent glow -- ends in the offset and never in the rate.

Errors.  A master's per-pixel error is ``sqrt(v_k / n_k)``, with the pixel's
temporal variance modelled by photon transfer over every master of the run,
``v = v0 + K S`` (read variance of the pixel, pooled over all its masters, plus
shot noise of the signal S with one sensor-wide K [adu per electron]; see
:func:`pooled_noise_errors`): one noisy parameter per pixel estimated from every
frame, where the former variance line per temperature bin (:func:`noise_model_errors`,
still used when the masters show no signal range) fitted two per pixel from a
bin's few masters, and its scattered weights made the errors heavy-tailed (model
pulls of 1.15 instead of 1).  The S of a master's shot noise is the signal the other
half of the masters (alternate temperature bins, :func:`halves_of`) predicts for it,
not its own: an error that follows its point's noise gives the points that fell low
more weight, the same way in every pixel (see :class:`NoiseModel`).  With three or more
exposures, one frame-wide factor ``ERRSCALE`` = sqrt(median chi2/dof / its expected
median) then calibrates the rate errors (as in the bias model).
With a single exposure the rate is the bias-subtracted signal divided by the
exposure (``RATEMETH = 'single exposure'``, offset assumed 0): flagged,
because residual bias then counts as dark current.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from astropy.io import fits

from utils import adu
from utils import headers as kw
from utils.io.fitsio import provenance_cards, set_card, write_product
from utils.models.bias_model import chi2_median_ratio
from utils.models.linear import fit_line_per_pixel
from utils.stack.tiles import (
    PIXEL_BLOCK,
    TILE_SHARE,
    ProductRows,
    gather_sample,
    pixel_sample,
    row_tiles,
    tile_rows,
)

from .masters import DarkMaster

logger = logging.getLogger(__name__)

#: Folder of the rate maps below the output folder.
RATE_FOLDER = "dark_rates"
METHOD_SLOPE = "slope vs exposure"
METHOD_SINGLE = "single exposure"
#: Images of a written rate map the models read back: the rate and its error.
RATE_IMAGES = ("PRIMARY", "UNCERT")


@dataclass
class RateMap:
    """Dark rate of every pixel at one temperature bin.

    Attributes
    ----------
    temperature : float
        [degC] bin label.
    tavg : float
        [degC] temperature the rate refers to: the masters' mean temperatures weighted as
        the slope weights them (the plain mean with a single exposure).
    rate, rate_err : numpy.ndarray or None
        [adu/s] rate and its one-sigma error (None once written and dropped: then read
        back from :attr:`path`, see :meth:`loaded`, :func:`rate_rows`, :func:`rate_sample`).
    offset, offset_err : numpy.ndarray
        [adu] signal at zero exposure and its error (0 with one exposure).
    chi2dof : numpy.ndarray
        Reduced chi-square of the line (NaN with fewer than three exposures).
    exptimes : tuple of float
        [s] exposures fitted.
    method : str
        :data:`METHOD_SLOPE` or :data:`METHOD_SINGLE`.
    err_scale : float
        Frame-wide factor applied to the noise-model errors.
    nexp : numpy.ndarray or None
        Exposures used per pixel (int8).  (The pipeline drops ``offset``, ``offset_err``,
        ``chi2dof`` and ``nexp`` once the map is written.)  Where only one is valid (the longer ones
        saturated or masked) the rate is that master's signal / exposure, offset 0.
    path : pathlib.Path or None
        The written map (:func:`write_rate`), when it was written.
    """

    temperature: float
    tavg: float
    rate: np.ndarray
    rate_err: np.ndarray
    offset: np.ndarray
    offset_err: np.ndarray
    chi2dof: np.ndarray
    exptimes: tuple
    method: str
    err_scale: float = 1.0
    nexp: np.ndarray | None = None
    path: Path | None = None

    def loaded(self) -> RateMap:
        """This map with ``rate`` and ``rate_err`` in memory: itself, or with the two read
        back from :attr:`path` (float32 as written: the same values)."""
        if self.rate is not None and self.rate_err is not None:
            return self
        rows = ProductRows([self.path], RATE_IMAGES)
        height = rows.shape[0]
        return replace(self, rate=rows.read("PRIMARY", 0, height)[0],
                       rate_err=rows.read("UNCERT", 0, height)[0])


def rate_rows(rates: list[RateMap]) -> ProductRows:
    """Reader of rows of the written rate maps' rate (``PRIMARY``) and error (``UNCERT``),
    one plane per map in the order of ``rates`` (the stacking engine's block reader)."""
    return ProductRows([r.path for r in rates], RATE_IMAGES)


def rate_sample(rates: list[RateMap], pixels: np.ndarray) -> list[RateMap]:
    """The maps at the flat pixel indices ``pixels`` (increasing) only, as ``(1, n)`` maps:
    taken from the maps in memory, or read back by rows from their files."""
    if all(r.rate is not None and r.rate_err is not None for r in rates):
        return [replace(r, rate=r.rate.reshape(-1)[pixels][None],
                        rate_err=r.rate_err.reshape(-1)[pixels][None]) for r in rates]
    rows = rate_rows(rates)
    sample = gather_sample(rows, RATE_IMAGES, pixels, max(1, PIXEL_BLOCK // rows.shape[1]))
    return [replace(r, rate=sample.images["PRIMARY"][k], rate_err=sample.images["UNCERT"][k])
            for k, r in enumerate(rates)]


def noise_model_errors(exptimes: np.ndarray, noise: np.ndarray,
                       count: np.ndarray) -> np.ndarray:
    """Per-master errors ``sqrt(v(t_k) / n_k)`` from the pooled variance line ``v0 + v1 t``.

    Parameters
    ----------
    exptimes : numpy.ndarray, shape (K,)
        [s] exposure of each master.
    noise, count : numpy.ndarray, shape (K, H, W)
        Per-pixel sample std of each master's inputs [adu] and inputs accepted.

    Returns
    -------
    numpy.ndarray, shape (K, H, W)
        [adu] one-sigma error of each master.
    """
    if np.unique(exptimes).size < 2:
        return noise / np.sqrt(np.maximum(count, 1))
    noise = np.ascontiguousarray(noise, dtype=np.float32)
    count = np.ascontiguousarray(count, dtype=np.float32)
    out = np.empty(noise.shape, np.float32)
    _variance_line(exptimes.astype(np.float64), noise.reshape(noise.shape[0], -1),
                   count.reshape(count.shape[0], -1), out.reshape(out.shape[0], -1))
    return out


def _variance_line_py(t, noise, count, out):
    """Per pixel: weighted line ``v0 + v1 t`` through ``(t_k, noise_k^2)`` (weights ``n_k - 1``),
    floored at the smallest measured variance; writes ``sqrt(v(t_k) / n_k)``."""
    k_n, npix = noise.shape
    for p in range(npix):
        s0 = s1 = s2 = sy = sty = 0.0
        floor = np.inf
        for k in range(k_n):
            n = noise[k, p]
            c = count[k, p]
            if c > 1 and np.isfinite(n):
                w = c - 1.0
                y = n * n
                s0 += w
                s1 += w * t[k]
                s2 += w * t[k] * t[k]
                sy += w * y
                sty += w * t[k] * y
                floor = min(floor, y)
        det = s0 * s2 - s1 * s1
        ok = det > 0 and np.isfinite(floor)
        v1 = (s0 * sty - s1 * sy) / det if ok else np.nan
        v0 = (s2 * sy - s1 * sty) / det if ok else np.nan
        for k in range(k_n):
            # a variance line can dip below zero where the pixel is quiet: floor it; with one
            # valid master (the others saturated or masked) its own variance is all there is
            if ok:
                v = max(v0 + v1 * t[k], floor)
            elif count[k, p] > 1 and np.isfinite(noise[k, p]):
                v = noise[k, p] * noise[k, p]
            else:
                v = np.nan
            out[k, p] = np.sqrt(v / max(count[k, p], 1.0))


try:
    from numba import njit

    _variance_line = njit(nogil=True, cache=True)(_variance_line_py)
except ImportError:  # pragma: no cover - numba is a dependency; plain Python still works
    _variance_line = _variance_line_py


#: Images of a dark master the fits read, tile by tile.
_IMAGES = ("PRIMARY", "MASK", "NOISE", "NCOMB", "SUBERR")


@dataclass
class NoiseModel:
    """Temporal noise of every master's pixels, as :func:`pooled_noise_errors` measured it.

    A master's variance is ``v0 + K S``, v0 pooled over all masters.  With two halves of the
    masters (alternate temperature bins, see :func:`halves_of`) S is predicted from the
    *other* half: the pixel's signal there over the population's, times this master's
    population signal.  So no master's shot-noise error follows its own noise, nor that of the
    masters fitted with it at its temperature: weights that follow a point's noise favour
    the points that fell low (T_d 0.15 % low over a million pixels, 11 times its error, with
    each master's own signal).  (Predicting v0 from the other half as well was tried: it
    halves v0's degrees of freedom and the noisier weights cost more than they remove.)

    Attributes
    ----------
    v0 : numpy.ndarray or None
        [adu^2] read variance per pixel pooled over all masters (float64, (H, W)); None
        when the masters show no signal range and each temperature bin has its own
        variance line (:func:`noise_model_errors`).
    gain : float
        [adu per electron] shot-noise factor K of ``v = v0 + K S``.
    amplitude : numpy.ndarray or None
        [1] each half's signal over the population's, per pixel, ``(2, H, W)`` float32.
    shape : numpy.ndarray or None
        [adu] population signal of each master (median of a pixel sample; NaN when not
        positive: that master's error then uses its own signal).
    other : numpy.ndarray or None
        The half (0 or 1) each master's predicted signal comes from.
    """

    v0: np.ndarray | None = None
    gain: float = math.nan
    amplitude: np.ndarray | None = None
    shape: np.ndarray | None = None
    other: np.ndarray | None = None

    def errors(self, data, noise, count, r0: int, r1: int, planes) -> np.ndarray:
        """Noise-model error [adu] of rows ``r0:r1`` of the masters ``planes`` (signal, noise
        and count of those rows given), float32, NaN where a master's pixel is unusable."""
        if self.amplitude is None:
            return _pooled_errors(data, noise, count, self.v0[r0:r1], self.gain)
        planes = np.asarray(planes, dtype=np.intp)
        return _pooled_errors(data, noise, count, self.v0[r0:r1], self.gain,
                              self.amplitude[:, r0:r1], self.shape[planes], self.other[planes])

    def at(self, pixels: np.ndarray) -> NoiseModel:
        """The model at the flat pixel indices ``pixels`` only, as ``(1, n)`` maps."""
        def pick(a):
            return None if a is None else a.reshape(a.shape[0], -1)[:, pixels][:, None]
        return replace(self, v0=self.v0.reshape(-1)[pixels].reshape(1, -1),
                       amplitude=pick(self.amplitude))


@dataclass
class SignalStack:
    """The dark masters, read tile by tile by every step that needs their pixels.

    No ``(K, H, W)`` array is held: :meth:`tile` reads rows of every master with the
    stacking engine's block reader (:class:`utils.stack.tiles.ProductRows`), and
    :meth:`row_tiles` cuts the frame so a tile of all masters fits ``memory_limit``.

    Attributes
    ----------
    masters : list of DarkMaster
        The masters, in the order of the planes.
    bias_keys : list of str
        ``BIASFILE|SUBTRACT`` of each master: which bias it shares with others.
    rows : ProductRows
        Reader of the masters' images.
    noise : NoiseModel
        The noise model of every master's errors (measured over all masters).
    planes : list of int
        Planes of ``rows`` this stack holds (a :meth:`select` keeps the reader).
    memory_limit : float
        [byte] budget of one tile's working set.
    pixels : numpy.ndarray or None
        Flat indices in the frame of the pixels of a :meth:`sample` (shape ``(1, n)``).
    """

    masters: list[DarkMaster]
    bias_keys: list[str]
    rows: ProductRows
    noise: NoiseModel
    planes: list[int]
    memory_limit: float = 256e6
    pixels: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of every master."""
        return self.rows.shape

    @property
    def temps(self) -> np.ndarray:
        """[degC] mean frame temperature of each master."""
        return np.array([m.tavg for m in self.masters])

    @property
    def exptimes(self) -> np.ndarray:
        """[s] exposure time of each master."""
        return np.array([m.exptime for m in self.masters])

    def groups(self) -> dict[float, list[int]]:
        """Indices of the masters of each temperature bin, in increasing exposure time."""
        out: dict[float, list[int]] = {}
        for i in np.argsort(self.exptimes, kind="stable"):
            out.setdefault(self.masters[i].temperature, []).append(int(i))
        return dict(sorted(out.items()))

    def select(self, keep) -> SignalStack:
        """The masters ``keep`` (indices) only, with the same noise model."""
        keep = list(keep)
        return SignalStack([self.masters[i] for i in keep], [self.bias_keys[i] for i in keep],
                           self.rows, self.noise, [self.planes[i] for i in keep],
                           self.memory_limit, self.pixels)

    def row_tiles(self, images: int = 3, planes: int | None = None):
        """``(r0, r1)`` tiles of the frame sized so ``images`` stacks of ``planes`` masters
        (default: all of them) fit :attr:`memory_limit`."""
        rows = tile_rows(len(self.planes) if planes is None else planes, self.shape,
                         self.memory_limit, images=images)
        return row_tiles(self.shape[0], rows)

    def read(self, r0: int, r1: int, idx=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``r0:r1`` of the masters ``idx`` (default all): signal (NaN where masked),
        noise-model error and subtracted-bias error [adu], each ``(K, r1 - r0, W)`` float32."""
        idx = range(len(self.planes)) if idx is None else list(idx)
        planes = [self.planes[i] for i in idx]
        data = self.rows.read("PRIMARY", r0, r1, planes=planes)
        mask = self.rows.read("MASK", r0, r1, fill=0.0, planes=planes)
        data[mask != 0] = np.nan
        del mask
        noise = self.rows.read("NOISE", r0, r1, planes=planes)
        count = self.rows.read("NCOMB", r0, r1, fill=1.0, planes=planes)
        suberr = self.rows.read("SUBERR", r0, r1, fill=0.0, planes=planes)
        if self.noise.v0 is not None:
            err = self.noise.errors(data, noise, count, r0, r1, planes)
        else:
            err = np.empty_like(data)
            by_t: dict[float, list[int]] = {}
            for j, i in enumerate(idx):
                by_t.setdefault(self.masters[i].temperature, []).append(j)
            for js in by_t.values():
                err[js] = noise_model_errors(np.array([self.masters[idx[j]].exptime
                                                       for j in js]), noise[js], count[js])
        return data, err, suberr

    def sample(self, max_pixels: int) -> tuple[SignalStack, np.ndarray]:
        """A stride sample of at most ``max_pixels`` pixels of every master, in memory:
        ``(stack of shape (1, n), flat pixel indices)`` (every pixel of a small frame)."""
        idx = pixel_sample(self.shape, max_pixels)
        rows = gather_sample(self.rows, _IMAGES, idx,
                             tile_rows(len(self.rows), self.shape, self.memory_limit),
                             fills={"MASK": 0.0, "NCOMB": 1.0, "SUBERR": 0.0})
        noise = self.noise if self.noise.v0 is None else self.noise.at(idx)
        return SignalStack(self.masters, self.bias_keys, rows, noise, self.planes,
                           self.memory_limit, idx), idx

    def read_master(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Master ``i`` whole: signal, noise-model error, subtracted-bias error, ``(H, W)``
        (read by row tiles: the mask, noise and count images are never whole in memory)."""
        out = tuple(np.empty(self.shape, np.float32) for _ in range(3))
        for r0, r1 in self.row_tiles(images=6, planes=1):
            for full, part in zip(out, self.read(r0, r1, [i])):
                full[r0:r1] = part[0]
        return out


def total_err(noise_err: np.ndarray, suberr: np.ndarray) -> np.ndarray:
    """Noise-model and subtracted-bias errors in quadrature [adu], float32."""
    return np.sqrt(noise_err * noise_err + suberr * suberr)


def _gain_candidates_py(S, noise, count, ratios):
    """Per pixel of a tile (``(K, P)`` float32 signal, noise, count): whether it has two
    usable masters, and ``dV/dS`` between its brightest and faintest usable master written
    to ``ratios`` where their signals differ by ten errors; returns ``(usable, written)``.
    (Pass 1 of :func:`pooled_noise_errors`, float64 arithmetic, no temporaries.)"""
    k_n, npix = S.shape
    usable = 0
    n_out = 0
    for p in range(npix):
        n_ok = 0
        hi = lo = -1
        s_hi = s_lo = 0.0
        for k in range(k_n):
            s = np.float64(S[k, p])
            nz = np.float64(noise[k, p])
            if np.isfinite(s) and np.isfinite(nz * nz) and count[k, p] > 1:
                n_ok += 1
                # the first of equal values, as nanargmax / nanargmin
                if hi < 0 or s > s_hi:
                    hi, s_hi = k, s
                if lo < 0 or s < s_lo:
                    lo, s_lo = k, s
        if n_ok < 2:
            continue
        usable += 1
        d_s = s_hi - s_lo
        n_lo = np.float64(noise[lo, p])
        n_hi = np.float64(noise[hi, p])
        if d_s > 10.0 * np.sqrt(n_lo * n_lo / np.float64(count[lo, p])):
            ratios[n_out] = (n_hi * n_hi - n_lo * n_lo) / d_s
            n_out += 1
    return usable, n_out


def _read_variance_py(S, noise, count, gain, out):
    """Pooled read variance of each pixel of a tile: ``sum_k (n_k - 1) (noise_k^2 -
    K max(S_k, 0)) / sum_k (n_k - 1)`` over its usable masters (pass 2 of
    :func:`pooled_noise_errors`), NaN without one."""
    k_n, npix = S.shape
    for p in range(npix):
        num = 0.0
        den = 0.0
        for k in range(k_n):
            s = np.float64(S[k, p])
            nz = np.float64(noise[k, p])
            c = np.float64(count[k, p])
            n2 = nz * nz
            if np.isfinite(s) and np.isfinite(n2) and c > 1:
                w = c - 1.0
                num += w * (n2 - gain * max(s, 0.0))
                den += w
        out[p] = num / den if den != 0 else np.nan


def _pooled_errors_py(S, noise, count, v0, amp, shape, other, gain, out):
    """``sqrt((v0 + K max(S', 0)) / n)`` of every master and pixel of a tile (float32), NaN
    where the master's pixel is not usable; ``S' = amp[other[k]] shape[k]`` (the signal the
    other half predicts) where that is finite, else the master's own signal."""
    k_n, npix = S.shape
    for k in range(k_n):
        row = other[k]
        for p in range(npix):
            s = np.float64(S[k, p])
            nz = np.float64(noise[k, p])
            c = np.float64(count[k, p])
            if np.isfinite(s) and np.isfinite(nz * nz) and c > 1:
                q = np.float64(amp[row, p]) * shape[k]
                if np.isfinite(q):
                    s = q
                out[k, p] = np.sqrt((v0[p] + gain * max(s, 0.0)) / max(c, 1.0))
            else:
                out[k, p] = np.nan


try:
    from numba import njit

    _gain_kernel = njit(nogil=True, cache=True)(_gain_candidates_py)
    _read_variance_kernel = njit(nogil=True, cache=True)(_read_variance_py)
    _pooled_kernel = njit(nogil=True, cache=True)(_pooled_errors_py)
except ImportError:  # pragma: no cover - numba is a dependency; plain Python still works
    _gain_kernel, _read_variance_kernel, _pooled_kernel = (
        _gain_candidates_py, _read_variance_py, _pooled_errors_py)


def _planes(*arrays):
    """``(K, P)`` contiguous views of ``(K, ...)`` tiles (float32 or float64 kept as they
    are: the kernels compute in float64 either way)."""
    out = []
    for a in arrays:
        a = np.asarray(a)
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float64)
        out.append(np.ascontiguousarray(a).reshape(a.shape[0], -1))
    return tuple(out)


def _gain_candidates(data, noise, count):
    """Pass 1 of :func:`pooled_noise_errors` on a tile: ``(usable pixels, ratios dV/dS)``."""
    S, n, c = _planes(data, noise, count)
    ratios = np.empty(S.shape[1])
    usable, written = _gain_kernel(S, n, c, ratios)
    return int(usable), ratios[:written].copy()


def _read_variance(data, noise, count, gain):
    """Pass 2 of :func:`pooled_noise_errors` on a tile: pooled read variance per pixel."""
    S, n, c = _planes(data, noise, count)
    out = np.empty(S.shape[1])
    _read_variance_kernel(S, n, c, float(gain), out)
    return out.reshape(data.shape[1:])


def _pooled_errors(data, noise, count, v0, gain, amp=None, shape=None, other=None):
    """``sqrt((v0 + K S) / n)`` per master of a tile, NaN where a master has no valid pixel;
    S predicted as in :func:`_pooled_errors_py` (``amp`` a ``(2, rows, ...)`` tile), or
    without ``amp`` every master's own signal."""
    S, n, c = _planes(data, noise, count)
    if amp is None:
        amp = np.full((1, S.shape[1]), np.nan, np.float32)
        shape = np.ones(S.shape[0])
        other = np.zeros(S.shape[0], np.intp)
    out = np.empty(S.shape, np.float32)
    _pooled_kernel(S, n, c, np.ascontiguousarray(v0, dtype=np.float64).reshape(-1),
                   np.ascontiguousarray(amp).reshape(amp.shape[0], -1),
                   np.asarray(shape, dtype=np.float64), np.asarray(other, dtype=np.intp),
                   float(gain), out)
    return out.reshape(data.shape)


def pooled_noise_errors(data: np.ndarray, noise: np.ndarray, count: np.ndarray,
                        min_pixels: int = 100, halves: np.ndarray | None = None
                        ) -> tuple[np.ndarray, float] | None:
    """Per-master errors from one photon-transfer model per pixel over *all* masters.

    The temporal variance of a pixel is ``v0 + K S`` (read noise plus shot noise of the
    signal S [adu]); K [adu per electron] is common to the sensor, v0 is the pixel's own.
    K is the median over pixels of the variance difference between their brightest and
    faintest master divided by the signal difference (pixels whose signals differ by ten
    errors at least); v0 pools every master of the pixel (``n_k - 1`` weights).  Against a
    variance line per temperature bin (two parameters per pixel from that bin's few
    masters) this leaves one parameter per pixel estimated from every frame, so the weights
    scatter far less and the errors are not heavy-tailed.  (In-memory form of what
    :func:`load_stack` measures tile by tile.)

    Parameters
    ----------
    data, noise, count : numpy.ndarray, shape (K, H, W)
        Masters' signal [adu], per-pixel sample std of their inputs [adu], accepted inputs.

    Returns
    -------
    (errors, K) or None
        ``sqrt(v / n)`` per master [adu] and K; None when K cannot be measured (fewer than
        ``min_pixels`` pixels with a signal range, or no shot noise seen).
    """
    model = _noise_model(lambda r0, r1: (data[:, r0:r1], noise[:, r0:r1], count[:, r0:r1]),
                         [(0, data.shape[1])], data.shape[0], min_pixels, halves)
    if model is None:
        return None
    return model.errors(data, noise, count, 0, data.shape[1], range(data.shape[0])), model.gain


#: Pixels of the stride sample that measures each master's population signal (the shape).
SHAPE_SAMPLE = 65536


def _sample_stride(npix: int, width: int) -> int:
    """A stride giving at most :data:`SHAPE_SAMPLE` pixels that does not divide the row
    width (a divisor would sample the same few columns in every row)."""
    stride = max(1, npix // SHAPE_SAMPLE)
    while stride > 1 and math.gcd(stride, width) != 1:
        stride += 1
    return stride


def _half_amplitudes(S, noise, count, shape, halves):
    """Per pixel of a tile, the signal of each half of the masters over its population
    signal: ``sum_k S_k / sum_k shape_k`` over the half's usable masters of positive shape,
    ``(2, ...)`` float32, NaN where a half has none."""
    valid = np.isfinite(S) & np.isfinite(noise * noise) & (count > 1)
    valid &= (shape > 0).reshape(-1, *([1] * (S.ndim - 1)))
    out = np.full((2,) + S.shape[1:], np.nan, np.float32)
    for h in (0, 1):
        sel = halves == h
        if not sel.any():
            continue
        num = np.where(valid[sel], S[sel], 0.0).sum(0, dtype=np.float64)
        den = (valid[sel] * shape[sel].reshape(-1, *([1] * (S.ndim - 1)))).sum(0)
        np.divide(num, den, out=out[h], where=den > 0)
    return out


def _noise_model(read, tiles, k_n: int, min_pixels: int = 100,
                 halves: np.ndarray | None = None) -> NoiseModel | None:
    """The pooled noise model measured in two passes over ``tiles`` (``read(r0, r1)`` gives
    signal, noise and count of every master); None when K cannot be measured.

    With ``halves`` (0 or 1 per master) the model also predicts each master's signal from
    the other half (:meth:`NoiseModel.errors`): the pixel's signal in that half over the
    population's (pass 2), times the master's population signal, the median of a stride
    sample (pass 1)."""
    if k_n < 2:
        return None
    usable, ratios, samples = 0, [], []
    stride = None
    for r0, r1 in tiles:
        S, noise, count = read(r0, r1)
        n_use, ratio = _gain_candidates(S, noise, count)
        usable += n_use
        ratios.append(ratio)
        if halves is not None:
            width = S.shape[-1]
            stride = stride or _sample_stride(tiles[-1][1] * width, width)
            samples.append(S.reshape(k_n, -1)[:, (-r0 * width) % stride::stride])
    ratios = np.concatenate(ratios)
    if usable < min_pixels or ratios.size < min_pixels:
        return None
    gain = float(np.median(ratios))
    if not gain > 0:
        return None
    shape = other = amplitude = None
    if halves is not None:
        halves = np.asarray(halves, dtype=np.intp)
        with np.errstate(all="ignore"):
            shape = np.nanmedian(np.concatenate(samples, axis=1), axis=1).astype(np.float64)
        shape[~(shape > 0)] = np.nan   # no positive signal: the master's own is used
        other = 1 - halves
    v0 = []
    for r0, r1 in tiles:
        S, noise, count = read(r0, r1)
        v0.append(_read_variance(S, noise, count, gain))
        if halves is not None:
            if amplitude is None:
                amplitude = np.empty((2, tiles[-1][1]) + S.shape[2:], np.float32)
            amplitude[:, r0:r1] = _half_amplitudes(S, noise, count, shape, halves)
    v0 = np.concatenate(v0)
    finite = np.isfinite(v0)
    if not finite.any():
        return None
    # a pooled read variance can come out <= 0 for a quiet pixel: floor it
    return NoiseModel(np.maximum(v0, 0.1 * float(np.median(v0[finite]))), gain, amplitude,
                      shape, other)


def halves_of(temperatures, exptimes) -> np.ndarray:
    """Which half (0 or 1) of the masters each one is in: alternate temperature bins (in
    increasing temperature), or alternate exposures (increasing) when there is one bin.

    A master's shot-noise error is computed from the signal the *other* half predicts for
    it, so that no point of a fit over temperature weighs by its own noise."""
    temperatures = np.asarray(temperatures, dtype=float)
    bins = np.unique(temperatures)
    if bins.size > 1:
        return (np.searchsorted(bins, temperatures) % 2).astype(np.intp)
    order = np.argsort(np.asarray(exptimes, dtype=float), kind="stable")
    halves = np.empty(order.size, np.intp)
    halves[order] = np.arange(order.size) % 2
    return halves




def load_stack(masters: list[DarkMaster], memory_limit: float = 1e9) -> SignalStack:
    """Open every master for tile reads and measure the noise model of their errors.

    The errors come from one photon-transfer model per pixel over all masters
    (:func:`pooled_noise_errors`, two passes over row tiles) when the masters span a
    signal range; else from a variance line per temperature bin
    (:func:`noise_model_errors`, per tile).  ``memory_limit`` [byte] is the run's budget;
    a tile's working set is sized to :data:`TILE_SHARE` of it.
    """
    memory_limit = memory_limit * TILE_SHARE
    n = len(masters)
    rows = ProductRows([m.path for m in masters], _IMAGES)
    keys = []
    for m in masters:
        header = fits.getheader(m.path)
        keys.append(str(header.get(kw.BIASFILE, "")) + "|" + str(header.get(kw.SUBTRACT, "")))

    tiles = list(row_tiles(rows.shape[0], tile_rows(n, rows.shape, memory_limit, images=3)))
    model = _noise_model(lambda r0, r1: _signal_noise_count(rows, r0, r1), tiles, n,
                         halves=halves_of([m.temperature for m in masters],
                                          [m.exptime for m in masters]))
    if model is not None:
        logger.info("dark noise model: read variance per pixel pooled over %d masters, shot "
                    "noise %.3g adu per electron", n, model.gain)
    else:
        model = NoiseModel()
    return SignalStack(list(masters), keys, rows, model, list(range(n)), memory_limit)


def _signal_noise_count(rows: ProductRows, r0: int, r1: int):
    data = rows.read("PRIMARY", r0, r1)
    data[rows.read("MASK", r0, r1, fill=0.0) != 0] = np.nan
    return data, rows.read("NOISE", r0, r1), rows.read("NCOMB", r0, r1, fill=1.0)


def measure_rate(stack: SignalStack, idx: list[int]) -> RateMap:
    """Rate map of the masters ``idx`` of one temperature bin (see module notes), fitted
    tile by tile."""
    masters = [stack.masters[i] for i in idx]
    exptimes = np.array([m.exptime for m in masters])
    temps = np.array([m.tavg for m in masters])
    tavg = float(np.average(temps, weights=[m.ncombine for m in masters]))
    shape = stack.shape
    width = shape[1]
    single_exposure = np.unique(exptimes).size < 2
    maps = {name: np.empty(shape, np.float32) for name in
            ("slope", "slope_err", "intercept", "intercept_err", "chi2")}
    nexp = np.empty(shape, np.int8)
    full_npts = np.empty(shape, bool)
    pick_err = None  # errors of the pixels measured from one exposure (not rescaled)
    samples = []
    for r0, r1 in stack.row_tiles(images=2, planes=len(idx)):
        data, sigma, _ = stack.read(r0, r1, idx)
        if single_exposure:
            maps["slope"][r0:r1] = data[-1] / float(exptimes[-1])
            maps["slope_err"][r0:r1] = sigma[-1] / float(exptimes[-1])
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            fit = fit_line_per_pixel(exptimes, data, sigma, x_ref=0.0)
        for name in maps:
            maps[name][r0:r1] = getattr(fit, name)
        valid = np.isfinite(data) & np.isfinite(sigma)
        nexp[r0:r1] = valid.sum(0)
        full_npts[r0:r1] = nexp[r0:r1] == exptimes.size
        # the same pixels as a stride of 97 over the whole frame: tiles start anywhere
        first = (-r0 * width) % 97
        samples.append(sigma.reshape(sigma.shape[0], -1)[:, first::97])
        single = nexp[r0:r1] == 1   # a line through one point is not a measurement
        if single.any():
            # the longer exposures saturated (a hot pixel) or were masked: the one valid
            # master still measures the rate, with the offset taken as 0
            k = np.argmax(valid, axis=0)
            pick = np.take_along_axis(data, k[None], 0)[0] / exptimes[k]
            pick_err_t = np.take_along_axis(sigma, k[None], 0)[0] / exptimes[k]
            maps["slope"][r0:r1] = np.where(single, pick, maps["slope"][r0:r1])
            if pick_err is None:
                pick_err = np.full(shape, np.nan, np.float32)
            pick_err[r0:r1] = np.where(single, pick_err_t, np.nan)
    if single_exposure:
        t = float(exptimes[-1])
        logger.warning("dark %.1f degC: one exposure time (%gs); rate = signal / exposure, "
                       "residual bias would count as dark current", masters[0].temperature, t)
        zeros = np.zeros(shape, np.float32)
        return RateMap(masters[0].temperature, tavg, maps["slope"], maps["slope_err"], zeros,
                       zeros, np.full(shape, np.nan, np.float32), (t,), METHOD_SINGLE)
    chi2 = maps["chi2"]
    scale = 1.0
    good = np.isfinite(chi2) & full_npts
    if exptimes.size >= 3 and good.sum() >= 10:
        scale = math.sqrt(float(np.median(chi2[good])) / chi2_median_ratio(exptimes.size - 2))
    s = np.float32(scale)
    # the slope is sum_k c_k S_k with sum_k c_k t_k = 1: it measures the rate at the temperature
    # sum_k c_k t_k T_k, which can differ from the plain mean by a few 0.01 degC
    sample = np.concatenate(samples, axis=1)  # typical errors: a sample suffices
    w = 1.0 / np.nanmedian(sample, axis=1) ** 2
    t_w = np.sum(w * exptimes) / np.sum(w)
    c = w * (exptimes - t_w) / np.sum(w * (exptimes - t_w) ** 2)
    tavg = float(np.sum(c * exptimes * temps))
    rate, rate_err = maps["slope"], maps["slope_err"]
    single = nexp == 1
    rate_err = rate_err * s
    if single.any():
        rate_err = np.where(single, pick_err, rate_err).astype(np.float32)
        logger.info("dark %.1f degC: %d pixels measured from one exposure only (the others "
                    "saturated or masked)", masters[0].temperature, int(single.sum()))
    return RateMap(masters[0].temperature, tavg, rate, rate_err, maps["intercept"],
                   maps["intercept_err"] * s, chi2 / (s * s), tuple(float(t) for t in exptimes),
                   METHOD_SLOPE, scale, nexp)


def measure_rates(stack: SignalStack) -> list[RateMap]:
    """One :class:`RateMap` per temperature bin, in increasing temperature."""
    return [measure_rate(stack, idx) for idx in stack.groups().values()]


def rate_file(folder: Path, temperature: float) -> Path:
    """``<folder>/dark_rate_T<T:.1f>C.fits``."""
    return Path(folder) / f"dark_rate_T{temperature:.1f}C.fits"


def write_rate(rate: RateMap, path: Path, adc_bits: int = adu.DEFAULT_ADC_BITS) -> Path:
    """Rate map [adu/s] with ``UNCERT``, ``MASK`` and the ``OFFSET``, ``OFFSETERR``, ``CHI2DOF``
    extensions."""
    header = fits.Header()
    for key, value, comment in provenance_cards("DARK_RATE"):
        set_card(header, key, value, comment)
    for key, value, comment in (
            (kw.TBIN, rate.temperature, "[degC] temperature bin label"),
            (kw.TAVG, rate.tavg, "[degC] mean temperature of the frames"),
            ("RATEMETH", rate.method, "how the rate was measured"),
            ("NEXP", len(rate.exptimes), "exposure times fitted"),
            ("EXPTIMES", " ".join(f"{t:g}" for t in rate.exptimes), "[s] exposure times"),
            (kw.ERRSCALE, rate.err_scale, "noise-model errors multiplied by this"),
            ("MODEL", "S = OFFSET + RATE * t", "per pixel, weighted least squares")):
        set_card(header, key, value, comment)
    for key, value, comment in adu.scaling_cards(adc_bits):
        set_card(header, key, value, comment)
    return write_product(path, rate.rate, header, unit=adu.RATE_UNIT, uncertainty=rate.rate_err,
                         mask=~np.isfinite(rate.rate),
                         images={"OFFSET": (rate.offset, adu.UNIT),
                                 "OFFSETERR": (rate.offset_err, adu.UNIT),
                                 "CHI2DOF": (rate.chi2dof, ""),
                                 **({"NEXP": (rate.nexp, "")} if rate.nexp is not None
                                    else {})})


__all__ = ["RateMap", "SignalStack", "NoiseModel", "load_stack", "total_err", "measure_rate",
           "measure_rates", "noise_model_errors", "pooled_noise_errors", "rate_file", "write_rate",
           "rate_rows", "rate_sample", "RATE_FOLDER", "RATE_IMAGES", "METHOD_SLOPE",
           "METHOD_SINGLE"]
