"""Temporal noise of the dark masters' pixels: the error of every master, pixel by pixel.

A master's variance is modelled by photon transfer over every master of the run,
``v = v0 + K S`` (:class:`NoiseModel`, :func:`pooled_noise_errors`): the pixel's read
variance v0 pooled over all its masters, one sensor-wide shot-noise factor K [adu per
electron], and for S the signal the other half of the masters predicts
(:func:`halves_of`), so that no error follows its own point's noise -- nor through v0,
whose shot-noise subtraction for a half's errors uses no signal of that half.  Without a signal
range in the masters, a variance line per temperature bin (:func:`noise_model_errors`).
The kernels are numba-compiled, with plain-Python fallbacks of the same arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from utils.stack.stats import mad_std
from utils.stack.tiles import pixel_sample


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

    v0 pools the sample variances of *every* master (they are independent of the masters'
    means), but the shot variance it removes, ``K S``, must not take S from the masters whose
    errors it serves: a master that fell high would lower v0, hence its own error, and gain
    weight.  A fit of levels (the 2-D model) then leans towards the points that fell high;
    the faint 0 degC points of a two-temperature campaign, ~11 adu of noise on 2-8 adu,
    came out ~3 % high and the 2-D T_d 1 % high (pulls +2.0, +2.0, +3.3 in three seeds of the
    standard campaign; the 1-D model's slopes, differences of a bin's masters, hardly feel
    it).  So with halves there is one v0 per half: for the errors of half h, the shot
    variance of the other half's masters from their own signal and of half h's from the
    signal the other half predicts (:func:`_read_variance_py`).

    Attributes
    ----------
    v0 : numpy.ndarray or None
        [adu^2] read variance per pixel pooled over all masters: (H, W) float64, or with
        halves (``amplitude`` given) (2, H, W) float32, the one the errors of each half use;
        None when the masters show no signal range and each temperature bin has its own
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
        return _pooled_errors(data, noise, count, self.v0[:, r0:r1], self.gain,
                              self.amplitude[:, r0:r1], self.shape[planes], self.other[planes])

    def at(self, pixels: np.ndarray) -> NoiseModel:
        """The model at the flat pixel indices ``pixels`` only, as ``(1, n)`` maps."""
        def pick(a):
            return None if a is None else a.reshape(a.shape[0], -1)[:, pixels][:, None]
        v0 = self.v0.reshape(-1)[pixels].reshape(1, -1) if self.amplitude is None \
            else pick(self.v0)
        return replace(self, v0=v0, amplitude=pick(self.amplitude))


def _gain_terms_py(S, noise, count, hi, lo, num, den):
    """Per pixel of a tile (``(K, P)`` float32 signal, noise, count): whether it has two
    usable masters, and where masters ``hi`` and ``lo`` (the brightest and faintest of the
    population) are both usable, their variance difference ``noise_hi^2 - noise_lo^2``
    written to ``num`` and signal difference ``S_hi - S_lo`` to ``den``; returns
    ``(usable, written)``.  (Pass 2 of :func:`pooled_noise_errors`, float64 arithmetic.)"""
    k_n, npix = S.shape
    usable = 0
    n_out = 0
    for p in range(npix):
        n_ok = 0
        for k in range(k_n):
            if np.isfinite(np.float64(S[k, p])) and np.isfinite(
                    np.float64(noise[k, p]) * np.float64(noise[k, p])) and count[k, p] > 1:
                n_ok += 1
        if n_ok < 2:
            continue
        usable += 1
        s_hi = np.float64(S[hi, p])
        s_lo = np.float64(S[lo, p])
        n_hi = np.float64(noise[hi, p])
        n_lo = np.float64(noise[lo, p])
        if (np.isfinite(s_hi) and np.isfinite(s_lo) and np.isfinite(n_hi * n_hi)
                and np.isfinite(n_lo * n_lo) and count[hi, p] > 1 and count[lo, p] > 1):
            num[n_out] = n_hi * n_hi - n_lo * n_lo
            den[n_out] = s_hi - s_lo
            n_out += 1
    return usable, n_out


def _read_variance_py(S, noise, count, gain, amp, shape, other, out):
    """Pooled read variance of each pixel of a tile, ``sum_k (n_k - 1) (noise_k^2 -
    K max(S_k, 0)) / sum_k (n_k - 1)`` over its usable masters, NaN without one; one row
    of ``out`` ``(1, P)`` (pass 2 of :func:`pooled_noise_errors`, ``amp`` of width 0), or
    one per half ``h`` for that half's errors (``out`` ``(2, P)``): the shot variance
    removed from a master of half h is then ``K max(S', 0)`` with ``S' = amp[other[k]]
    shape[k]`` (the signal the other half predicts, as its error; its own signal where that
    is not finite), and from the other half's masters ``K max(S_k, 0)`` of their own
    signal: no mean of half h enters the v0 of its errors."""
    k_n, npix = S.shape
    predicted = amp.shape[1] > 0
    num = np.empty(npix)
    den = np.empty(npix)
    for h in range(out.shape[0]):
        # master by master over every pixel, each pixel's sums still in increasing k from
        # 0.0 (the same numbers as a loop over k per pixel), without a branch per pixel so
        # the loop is vectorised; an unusable master adds +0.0, which changes no sum (a sum
        # from +0.0 is never -0.0)
        num[:] = 0.0
        den[:] = 0.0
        for k in range(k_n):
            own = not (predicted and 1 - other[k] == h)
            row = other[k]
            sh = shape[k]
            for p in range(npix):
                s = np.float64(S[k, p])
                nz = np.float64(noise[k, p])
                c = np.float64(count[k, p])
                n2 = nz * nz
                usable = np.isfinite(s) & np.isfinite(n2) & (c > 1)
                q = s if own else np.float64(amp[row, p]) * sh
                s = q if np.isfinite(q) else s
                w = c - 1.0
                num[p] += w * (n2 - gain * max(s, 0.0)) if usable else 0.0
                den[p] += w if usable else 0.0
        for p in range(npix):
            out[h, p] = num[p] / den[p] if den[p] != 0 else np.nan


def _pooled_errors_py(S, noise, count, v0, amp, shape, other, gain, out):
    """``sqrt((v0 + K max(S', 0)) / n)`` of every master and pixel of a tile (float32), NaN
    where the master's pixel is not usable; ``S' = amp[other[k]] shape[k]`` (the signal the
    other half predicts) where that is finite, else the master's own signal; v0 ``(R, P)``,
    the row of master k's half (``1 - other[k]``) when R is 2, else its only row.

    Written without branches (every pixel computed, the unusable ones then set to NaN) so
    the compiled loop is vectorised: the same numbers, ~4 times faster than with an ``if``
    per pixel (for a usable pixel ``n > 1``, and ``max(S', 0)`` is ``S'`` or 0)."""
    k_n, npix = S.shape
    for k in range(k_n):
        row = other[k]
        vrow = 1 - row if v0.shape[0] == 2 else 0
        sh = shape[k]
        for p in range(npix):
            s = np.float64(S[k, p])
            nz = np.float64(noise[k, p])
            c = np.float64(count[k, p])
            usable = np.isfinite(s) & np.isfinite(nz * nz) & (c > 1)
            q = np.float64(amp[row, p]) * sh
            s = q if np.isfinite(q) else s
            s = s if s > 0.0 else 0.0
            err = np.sqrt((v0[vrow, p] + gain * s) / (c if c > 1.0 else 1.0))
            out[k, p] = err if usable else np.nan


try:
    from numba import njit

    _gain_kernel = njit(nogil=True, cache=True)(_gain_terms_py)
    _read_variance_kernel = njit(nogil=True, cache=True)(_read_variance_py)
    _pooled_kernel = njit(nogil=True, cache=True)(_pooled_errors_py)
except ImportError:  # pragma: no cover - numba is a dependency; plain Python still works
    _gain_kernel, _read_variance_kernel, _pooled_kernel = (
        _gain_terms_py, _read_variance_py, _pooled_errors_py)


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


def _gain_terms(data, noise, count, hi: int, lo: int):
    """Pass 2 of :func:`pooled_noise_errors` on a tile: ``(usable pixels, dV, dS)`` between
    masters ``hi`` and ``lo`` (:func:`_gain_terms_py`)."""
    S, n, c = _planes(data, noise, count)
    num = np.empty(S.shape[1])
    den = np.empty(S.shape[1])
    usable, written = _gain_kernel(S, n, c, int(hi), int(lo), num, den)
    return int(usable), num[:written].copy(), den[:written].copy()


def _read_variance(data, noise, count, gain):
    """Pass 2 of :func:`pooled_noise_errors` on a tile: pooled read variance per pixel."""
    S, n, c = _planes(data, noise, count)
    out = np.empty((1, S.shape[1]))
    _read_variance_kernel(S, n, c, float(gain), np.empty((2, 0), np.float32),
                          np.empty(0), np.zeros(S.shape[0], np.intp), out)
    return out.reshape(data.shape[1:])


def _read_variance_halves(data, noise, count, gain, amp, shape, other):
    """Pass 3 of :func:`pooled_noise_errors` on a tile: the pooled read variance of each
    half's errors (:func:`_read_variance_py`), ``(2, rows, ...)``."""
    S, n, c = _planes(data, noise, count)
    out = np.empty((2, S.shape[1]))
    _read_variance_kernel(S, n, c, float(gain),
                                 np.ascontiguousarray(amp).reshape(2, -1),
                                 np.asarray(shape, dtype=np.float64),
                                 np.asarray(other, dtype=np.intp), out)
    return out.reshape((2,) + data.shape[1:])


def _pooled_errors(data, noise, count, v0, gain, amp=None, shape=None, other=None):
    """``sqrt((v0 + K S) / n)`` per master of a tile, NaN where a master has no valid pixel;
    S predicted as in :func:`_pooled_errors_py` (``amp`` a ``(2, rows, ...)`` tile, ``v0``
    then ``(2, rows, ...)``: each half's), or without ``amp`` every master's own signal."""
    S, n, c = _planes(data, noise, count)
    if amp is None:
        amp = np.full((1, S.shape[1]), np.nan, np.float32)
        shape = np.ones(S.shape[0])
        other = np.zeros(S.shape[0], np.intp)
        v0 = np.ascontiguousarray(v0, dtype=np.float64).reshape(1, -1)
    else:
        v0 = np.ascontiguousarray(v0, dtype=np.float64).reshape(2, -1)
    out = np.empty(S.shape, np.float32)
    _pooled_kernel(S, n, c, v0,
                   np.ascontiguousarray(amp).reshape(amp.shape[0], -1),
                   np.asarray(shape, dtype=np.float64), np.asarray(other, dtype=np.intp),
                   float(gain), out)
    return out.reshape(data.shape)


def pooled_noise_errors(data: np.ndarray, noise: np.ndarray, count: np.ndarray,
                        min_pixels: int = 100, halves: np.ndarray | None = None,
                        suberr: np.ndarray | None = None, groups=None
                        ) -> tuple[np.ndarray, float] | None:
    """Per-master errors from one photon-transfer model per pixel over *all* masters.

    The temporal variance of a pixel is ``v0 + K S`` (read noise plus shot noise of the
    signal S [adu]); K [adu per electron] is common to the sensor, v0 is the pixel's own.
    K is the ratio of the summed variance differences to the summed signal differences
    between the population's brightest and faintest masters over every pixel
    (:func:`shot_noise_fit`: no pixel chosen by its own noise); v0 pools every master of the pixel
    (``n_k - 1`` weights).  Against a variance line per temperature bin (two parameters per
    pixel from that bin's few masters) this leaves one parameter per pixel estimated from
    every frame, so the weights scatter far less and the errors are not heavy-tailed.
    (In-memory form of what :func:`dark_pipeline.rates.load_stack` measures tile by tile.)

    Parameters
    ----------
    data, noise, count : numpy.ndarray, shape (K, H, W)
        Masters' signal [adu], per-pixel sample std of their inputs [adu], accepted inputs.
    halves : numpy.ndarray, optional
        Half (0 or 1) of each master (:func:`halves_of`): its shot noise from the other's.
    suberr : numpy.ndarray, shape (K, H, W), optional
        [adu] error of the bias subtracted from each master, shared by the masters of one
        ``groups`` id (default: none shared): part of the halves' amplitude noise.

    Returns
    -------
    (errors, K) or None
        ``sqrt(v / n)`` per master [adu] and K; None when K cannot be measured (fewer than
        ``min_pixels`` pixels with a signal range, or no shot noise seen).
    """
    model = _noise_model(lambda r0, r1: (data[:, r0:r1], noise[:, r0:r1], count[:, r0:r1]),
                         [(0, data.shape[1])], data.shape[0], min_pixels, halves,
                         None if suberr is None else (lambda r0, r1: suberr[:, r0:r1]), groups)
    if model is None:
        return None
    return model.errors(data, noise, count, 0, data.shape[1], range(data.shape[0])), model.gain


#: Pixels of the stride sample that measures each master's population signal (the shape).
SHAPE_SAMPLE = 65536


def _half_amplitudes(S, noise, count, shape, halves, suberr=None, groups=None):
    """Per pixel of a tile, the signal of each half of the masters over its population
    signal: ``sum_k S_k / sum_k shape_k`` over the half's usable masters of positive shape,
    ``(2, ...)`` float32, NaN where a half has none, and its variance from the masters'
    noise, ``sum_k noise_k^2 / n_k / (sum_k shape_k)^2`` (``(2, ...)`` float32), plus, given
    the subtracted bias's errors ``suberr`` (``(K, ...)``), theirs: one error shared by the
    masters of a group (``groups``, an id per master: those subtracted with one bias value),
    ``sum_g (sum_{k in g} suberr_k)^2 / (sum_k shape_k)^2``, the groups independent.
    (Summed master by master: no temporary of the whole tile.)"""
    num = np.zeros((2,) + S.shape[1:])
    den = np.zeros((2,) + S.shape[1:])
    var = np.zeros((2,) + S.shape[1:])
    shared: dict = {}
    for k in range(S.shape[0]):
        if not shape[k] > 0:
            continue
        ok = np.isfinite(S[k]) & np.isfinite(noise[k] * noise[k]) & (count[k] > 1)
        num[halves[k]] += np.where(ok, S[k], 0.0)
        den[halves[k]] += ok * shape[k]
        var[halves[k]] += np.where(ok, noise[k].astype(np.float64) ** 2
                                   / np.maximum(count[k], 1), 0.0)
        if suberr is not None:
            key = (int(halves[k]), k if groups is None else groups[k])
            e = np.where(ok & np.isfinite(suberr[k]), suberr[k].astype(np.float64), 0.0)
            shared[key] = shared[key] + e if key in shared else e
    for (h, _), e in shared.items():
        var[h] += e * e
    out = np.full((2,) + S.shape[1:], np.nan, np.float32)
    np.divide(num, den, out=out, where=den > 0)
    out_var = np.full((2,) + S.shape[1:], np.nan, np.float32)
    np.divide(var, den * den, out=out_var, where=den > 0)
    return out, out_var


#: Robust z (in the predicted spread) beyond which a half's amplitude is an outlier (a hot
#: pixel) and kept as measured instead of shrunk towards the population.
SHRINK_OUTLIER_Z = 5.0


def shrink_amplitudes(amplitude: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Each half's per-pixel amplitude shrunk towards the population by its own noise, in
    place: ``c + (a - c) tau^2 / (tau^2 + var)`` with ``c`` the median amplitude and
    ``tau^2`` the population's spread of true amplitudes (robust variance of ``a`` minus
    the median noise variance); pixels beyond :data:`SHRINK_OUTLIER_Z` of
    ``sqrt(tau^2 + var)`` (hot pixels) keep their own.

    The predicted signal ``a shape_k`` enters the shot variance clipped at zero; where the
    other half has little signal (darks at two temperatures: the 0 degC half predicts the
    25 degC one from 2-8 adu under 11 adu of noise, ~160 % per pixel) the clip made the mean
    predicted shot variance ~26 % high, the 25 degC rate errors 14-17 % high and the DSNU
    2.6 % low (removing too much noise).  The shrunk amplitude is the best linear predictor
    of the pixel's true one from that half; where the half measures the pixel well (var <<
    tau^2) it is its own measurement.  ``var`` must hold every noise of the amplitude: the
    subtracted bias's error too (:func:`_half_amplitudes`), ~6.5 adu at 0 degC in the
    standard campaign against 2-8 adu of signal.  Without it that error counted as true
    spread, the 0 degC amplitude was shrunk too little, and the 25 degC masters' errors
    followed the 0 degC bias error, which the bias model correlates with the 25 degC one,
    an offset common to both exposures: the 2-D gamma came out high (pulls +0.75 +- 0.18
    over 17 seeds; +0.19 +- 0.19 with it, +0.21 with the true errors)."""
    for h in range(amplitude.shape[0]):
        a, v = amplitude[h], variance[h]
        ok = np.isfinite(a) & np.isfinite(v)
        if ok.sum() < 10:
            continue
        c = float(np.median(a[ok]))
        spread = float(mad_std(a[ok]))
        tau2 = max(spread * spread - float(np.median(v[ok])), 0.0)
        total = tau2 + v
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(total > 0, tau2 / total, 1.0)
            outlier = np.abs(a - c) > SHRINK_OUTLIER_Z * np.sqrt(total)
        shrunk = c + (a - c) * factor
        amplitude[h] = np.where(ok & ~outlier, shrunk, a).astype(np.float32)
    return amplitude


#: Robust sigmas beyond which a pixel is left out of K: of the population's signal difference
#: (a hot pixel, whose variance difference is noisy enough to outweigh the rest), and of the
#: residual ``dV - K dS`` (a noisy or telegraph pixel).  Cuts far outside the bulk, never in it.
GAIN_BRIGHT_Z = 20.0
GAIN_CLIP = 10.0


def shot_noise_factor(num: np.ndarray, den: np.ndarray) -> float:
    """K [adu per electron] (:func:`shot_noise_fit` without its error)."""
    return shot_noise_fit(num, den)[0]


def shot_noise_fit(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """K [adu per electron]: ``sum dV / sum dS`` over the pixels, between the two masters of
    the largest and smallest population signal, ``dV = noise_hi^2 - noise_lo^2`` the
    difference of their sample variances and ``dS`` of their signals.  Pixels whose ``dS`` is
    beyond :data:`GAIN_BRIGHT_Z` robust sigmas of the population's (hot pixels) are left
    out, then those whose residual ``dV - K dS`` is beyond :data:`GAIN_CLIP` (three rounds).

    No pixel is chosen by its own noise: the mean of per-pixel ratios over the pixels whose
    signal difference was ten times the faint master's own error selected pixels whose
    faint variance (subtracted) came out low and whose signal difference came out high --
    K 12.6 for 8 with 3-frame masters (9.1 with 8 frames), the faint masters' errors too
    small, the bright ones' too large, and a 1-D T_d from one-exposure darks high (pulls
    +5 over 10^5 pixels).  A sample variance is unbiased, so ``sum dV`` estimates ``K sum dS``
    whatever the number of frames.  Returns ``(K, its standard error)`` (a ratio estimator's:
    ``sqrt(sum r^2) / sum dS`` over the pixels kept); NaN without a pixel."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    if den.size == 0:
        return math.nan, math.nan
    centre = float(np.median(den))
    spread = float(mad_std(den))
    if spread > 0:
        keep = np.abs(den - centre) <= GAIN_BRIGHT_Z * spread
        num, den = num[keep], den[keep]
    total = float(den.sum())
    k = float(num.sum()) / total if total > 0 else math.nan
    for _ in range(3):
        if not math.isfinite(k) or den.size == 0:
            break
        r = num - k * den
        spread = float(mad_std(r))
        if not spread > 0:
            break
        keep = np.abs(r - float(np.median(r))) <= GAIN_CLIP * spread
        if keep.all():
            break
        num, den = num[keep], den[keep]
        total = float(den.sum())
        k = float(num.sum()) / total if total > 0 else math.nan
    if not math.isfinite(k):
        return math.nan, math.nan
    return k, math.sqrt(float(np.sum((num - k * den) ** 2))) / total


#: K over its standard error below which the masters show no shot noise (no signal range:
#: the errors then come from a variance line per temperature bin).
MIN_GAIN_SNR = 5.0


def _map_tiles(func, tiles, workers: int):
    """``func(tile)`` of every tile, in tile order, ``workers`` at a time (threads)."""
    if workers <= 1 or len(tiles) < 2:
        for tile in tiles:
            yield func(tile)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(func, tiles)


def _noise_model(read, tiles, k_n: int, min_pixels: int = 100,
                 halves: np.ndarray | None = None, read_suberr=None,
                 groups=None, workers: int = 1) -> NoiseModel | None:
    """The pooled noise model measured in three passes over ``tiles`` (``read(r0, r1)`` gives
    signal, noise and count of every master); None when K cannot be measured.

    Pass 1: each master's population signal, the median of the stride sample
    :func:`utils.stack.tiles.pixel_sample`, which names the brightest and faintest masters;
    pass 2: K from their variance and signal differences over the pixels
    (:func:`shot_noise_factor`); pass 3: the pooled read variance v0.
    With ``halves`` (0 or 1 per master) the model also predicts each master's signal from
    the other half (:meth:`NoiseModel.errors`): the pixel's signal in that half over the
    population's (pass 2), times the master's population signal; and each half's errors
    get their own v0 (pass 3, once the amplitudes are shrunk: :class:`NoiseModel`).
    ``read_suberr(r0, r1)`` (the masters' subtracted-bias errors) and ``groups`` (an id per
    master: those sharing one subtracted bias value) add the bias's error to the halves'
    amplitude variance the shrinkage uses (:func:`_half_amplitudes`).

    ``workers`` tiles are read and measured at a time (threads: the reads and kernels
    release the GIL); each tile's result lands where the serial loop puts it (samples and
    K terms concatenated in tile order), so the model is the same for any ``workers``."""
    if k_n < 2:
        return None

    def pass1(tile):
        r0, r1 = tile
        S = read(r0, r1)[0]
        width = S.shape[-1]
        sample = pixel_sample((tiles[-1][1], width), SHAPE_SAMPLE)
        lo, hi = np.searchsorted(sample, [r0 * width, r1 * width])
        # fancy indexing copies: a view would keep every tile alive until the last one
        return S.reshape(k_n, -1)[:, sample[lo:hi] - r0 * width], S.shape[2:]

    samples, tail = [], ()
    for part, tail in _map_tiles(pass1, tiles, workers):
        samples.append(part)
    with np.errstate(all="ignore"):
        levels = np.nanmedian(np.concatenate(samples, axis=1), axis=1).astype(np.float64)
    del samples
    if not np.isfinite(levels).sum() >= 2:
        return None
    hi_k = int(np.nanargmax(levels))
    lo_k = int(np.nanargmin(levels))
    shape = other = amplitude = variance = None
    if halves is not None:
        halves = np.asarray(halves, dtype=np.intp)
        shape = levels.copy()
        shape[~(shape > 0)] = np.nan   # no positive signal: the master's own is used
        other = 1 - halves
        amplitude = np.empty((2, tiles[-1][1]) + tail, np.float32)
        variance = np.empty_like(amplitude)

    def pass2(tile):
        r0, r1 = tile
        S, noise, count = read(r0, r1)
        terms = _gain_terms(S, noise, count, hi_k, lo_k)
        if halves is not None:
            suberr = None if read_suberr is None else read_suberr(r0, r1)
            amplitude[:, r0:r1], variance[:, r0:r1] = _half_amplitudes(
                S, noise, count, shape, halves, suberr, groups)
        return terms

    usable, nums, dens = 0, [], []
    for n_use, num, den in _map_tiles(pass2, tiles, workers):
        usable += n_use
        nums.append(num)
        dens.append(den)
    num, den = np.concatenate(nums), np.concatenate(dens)
    del nums, dens
    if usable < min_pixels or num.size < min_pixels:
        return None
    gain, gain_err = shot_noise_fit(num, den)
    del num, den
    if not gain > MIN_GAIN_SNR * gain_err:   # no signal range, no shot noise seen
        return None
    if amplitude is not None:
        shrink_amplitudes(amplitude, variance)
        del variance
        # pass 3: each half's v0, its shot variance from signals that are not the half's
        v0 = np.empty_like(amplitude)

        def pass3(tile):
            r0, r1 = tile
            S, noise, count = read(r0, r1)
            v0[:, r0:r1] = _read_variance_halves(S, noise, count, gain, amplitude[:, r0:r1],
                                                 shape, other)

        for _ in _map_tiles(pass3, tiles, workers):
            pass
    else:
        v0 = np.concatenate(list(_map_tiles(lambda t: _read_variance(*read(*t), gain),
                                            tiles, workers)))
    finite = np.isfinite(v0)
    if not finite.any():
        return None
    # a pooled read variance can come out <= 0 for a quiet pixel: floor it
    floor = 0.1 * float(np.median(v0[finite]))
    return NoiseModel(np.maximum(v0, floor, out=v0 if amplitude is not None else None), gain,
                      amplitude, shape, other)


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


__all__ = ["NoiseModel", "halves_of", "noise_model_errors", "pooled_noise_errors",
           "shot_noise_factor", "shot_noise_fit"]
