"""Model against measurement: every dark master vs the model's prediction at its (T, t).

For each master: MAE = mean |measured - predicted| [adu]; MAPE = mean
|measured - predicted| / |measured| x 100 over the pixels whose measured
signal is at least 3 sigma (a percentage of a signal compatible with zero
means nothing); pull = (measured - predicted) / sqrt(sigma_measured^2 +
sigma_predicted^2), whose mean should be ~0 and standard deviation ~1.  MAE
and MAPE describe the model as delivered (fitted to all masters); the pull
uses, when given, a model fitted *without* the master's temperature
(leave-one-temperature-out), because an in-sample prediction is not
independent of the master it is compared with (its residual is smaller than
the two errors in quadrature, the more so at the edge of the grid).  The
measured error is the master's noise-model error and its subtracted bias's
error in quadrature (as in the fits).  Hot pixels and pixels without a fit are
left out of the statistics.

Also the dark current vs temperature summary: per temperature bin, the median
rate with its standard error (1.2533 x robust spread / sqrt(N)) and the 95th
percentile, in adu/s and, with a gain, e-/s.
"""

from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from utils.jobs import Jobs
from utils.memory import release_free_memory
from utils.stack.stats import MAD_TO_STD, exact_median
from utils.stack.tiles import PIXEL_BLOCK

from .rates import SignalStack

#: Columns of the evaluation tables: ``Temperature (°C)`` is the master's mean frame
#: temperature, ``TBIN`` [degC] the label of its temperature bin (the grid's column: the
#: masters of one bin differ by a few 0.01 degC in their means).
COLUMNS = ["Temperature (°C)", "Exposure (s)", "MAE [ADU]", "MAPE [%]", "PULL_MEAN", "PULL_STD",
           "REAL_MEDIAN [ADU]", "SYNTH_MEDIAN [ADU]", "NPIX", "NPIX_MAPE", "PULL_MODEL",
           "NPIX_PULL", "TBIN"]


#: Longest side of the residual maps kept for figures [pixel] (block-averaged down to it).
MAP_SIDE = 512


@dataclass
class Evaluation:
    """Summary table; per master a pixel sample for scatter plots and MAE / APE maps."""

    table: pd.DataFrame
    samples: dict          # (T, t) -> (measured, predicted) arrays of up to 5000 pixels
    maps: dict             # (T, t) -> (|measured - predicted| [adu], APE [%]) reduced maps


def _reduce(image: np.ndarray, side: int = MAP_SIDE) -> np.ndarray:
    """Block mean (NaN-aware) so the longest side is at most ``side`` pixels."""
    f = max(1, int(np.ceil(max(image.shape) / side)))
    if f == 1:
        return image.astype(np.float32)
    h, w = (image.shape[0] // f) * f, (image.shape[1] // f) * f
    blocks = image[:h, :w].reshape(h // f, f, w // f, f)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        return np.nanmean(blocks, axis=(1, 3)).astype(np.float32)


def evaluate(stack: SignalStack, predict, predict_err, *,
             exclude: np.ndarray | None = None, holdout=None, pull_pixels=None,
             seed: int = 0, keep_maps: bool = True) -> Evaluation:
    """Compare each master with ``predict(T, t)`` [adu] and its error ``predict_err(T, t)``.

    Parameters
    ----------
    stack : SignalStack
        Measured bias-subtracted dark masters, read one at a time.
    predict, predict_err : callable
        ``f(temperature [degC], exptime [s]) -> image [adu]``.
    exclude : numpy.ndarray of bool, optional
        Pixels left out (hot pixels, no fit).
    holdout : callable, optional
        ``holdout(temperature_label) -> (predict, predict_err[, shared_cov]) or None``: the
        model fitted without that temperature bin, for the pulls; ``shared_cov(T, t)``
        [adu^2], when given, is the covariance of its prediction's error with the master's
        error (a subtracted bias model both carry), taken out of the pull's variance.
    pull_pixels : numpy.ndarray, optional
        Flat indices of the pixels the held-out models predict (a deterministic sample,
        :meth:`SignalStack.sample`); the pulls are taken over them.  Default: every pixel.
    keep_maps : bool, optional
        Keep the reduced MAE / APE maps of every master (:attr:`Evaluation.maps`; only
        figures use them: 2 MB a master at 1024 x 1024); else ``maps`` is empty.
    """
    rng = np.random.default_rng(seed)
    rows, samples, maps = [], {}, {}
    with Jobs() as tasks:
        for label, idx_t in stack.groups().items():
            if holdout is not None:
                # the compares' frames freed in the helper thread's malloc arena, which the
                # refit's threads do not reuse: returned first (+36 MB at 2048^2 without)
                release_free_memory()
            held = holdout(label) if holdout is not None else None
            release_free_memory()  # what the held-out refit freed, before the full-frame work
            p_pull, e_pull, *c_pull = held if held is not None else (predict, predict_err)
            for i in idx_t:
                m = stack.masters[i]
                t, x = m.tavg, m.exptime
                row, sample, reduced = _compare(
                    stack, i, lambda: predict(t, x), lambda: p_pull(t, x),
                    lambda: e_pull(t, x), exclude, pull_pixels, rng, keep_maps,
                    (lambda: c_pull[0](t, x)) if c_pull else None, tasks)
                row["PULL_MODEL"] = "leave-one-temperature-out" if held is not None \
                    else "in-sample"
                rows.append(row)
                samples[(m.temperature, m.exptime)] = sample
                if keep_maps:
                    maps[(m.temperature, m.exptime)] = reduced
    table = pd.DataFrame(rows, columns=COLUMNS).sort_values(["Temperature (°C)",
                                                             "Exposure (s)"])
    return Evaluation(table.reset_index(drop=True), samples, maps)


class RefitsAhead:
    """``holdout(label)`` of every label of ``labels``, made in this order, one at a time, in
    one background thread from construction on; ``refits(label)`` waits for that model and
    returns it (the refit's own exception raised there), dropping it from the object.

    For the 1-D model's leave-one-temperature-out refits: the pipeline starts them as soon
    as the model is fitted, beside the main thread's one-core work on its products (dark
    current table, figures, statistics: ~2 s at 1024^2) and then its comparisons.  The
    refits are the same calls with the same arguments in the same order, so the same
    models.  Their memory does not grow with the frame (65536-pixel samples: the 9 1-D
    models held are ~20 MB) and is held where the stage is far below its peak (the 2-D
    fit); the 2-D refits (~130 MB of work arrays each beside a comparison) are not run this
    way.  Use as a context manager: leaving it cancels the refits not started and waits for
    the running one.
    """

    def __init__(self, holdout, labels):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="refits")
        self._futures = {label: self._pool.submit(holdout, label) for label in labels}

    def __call__(self, label):
        return self._futures.pop(label).result()

    def close(self) -> None:
        """Cancel the refits not started, wait for the running one; results dropped."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._futures.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _compare(stack: SignalStack, i: int, synth, held_pred, held_err, exclude, pull_pixels, rng,
             keep_maps: bool, held_cov=None, tasks: Jobs | None = None):
    """Master ``i`` against the prediction ``synth()`` and the held-out model's prediction,
    error and covariance with the master's error (None: 0) (full frames, or the pulled
    pixels; arrays, or callables returning them): ``(table row, (measured, predicted)
    sample, reduced (|residual|, APE) maps or None)``.

    The predictions and the master's row tiles are independent jobs, run by ``tasks`` (the
    calling thread and a helper thread; in turn without it): the compares were one core's
    work beside an idle one.  Each tile's masks are made as it is read (:func:`_usable_py`;
    the prediction's finiteness is applied once it is there, :func:`_finish_usable_py`)
    and only its noise-model and subtracted-bias errors at the pulled pixels are kept, so
    the two error maps are never whole in memory (32 MB at 2048^2).

    Measured and predicted frames stay float32 as read and predicted; the float64 values of
    every statistic (the same numbers as from float64 copies of the frames: the conversion
    is exact) are gathered of the pixels used only, one array at a time
    (:func:`_gather_py`), so no full-frame float64 map is held (3 of them were, 100 MB at
    2048^2) and the frame is not passed over once per mask, selection and conversion."""
    m = stack.masters[i]
    height, width = stack.shape
    size = height * width
    data = np.empty((height, width), np.float32)
    ok = np.empty(data.shape, bool)
    strong = np.empty(data.shape, bool)
    flat_real, flat_ok, flat_strong = data.reshape(-1), ok.reshape(-1), strong.reshape(-1)
    flat_excl = np.zeros(size, bool) if exclude is None else \
        np.ascontiguousarray(exclude, dtype=bool).reshape(-1)
    at = slice(None) if pull_pixels is None else pull_pixels
    # sqrt(noise^2 + suberr^2) [adu] in float64 at the pulled pixels, filled tile by tile
    measured = np.empty(size if pull_pixels is None else len(pull_pixels))

    def read_tile(r0: int, r1: int) -> None:
        signal, noise, suberr = stack.read_master_rows(i, r0, r1)
        p0, p1 = r0 * width, r1 * width
        data[r0:r1] = signal
        noise, suberr = noise.reshape(-1), suberr.reshape(-1)
        _usable(signal.reshape(-1), noise, suberr, flat_excl[p0:p1], flat_ok[p0:p1],
                flat_strong[p0:p1])
        if pull_pixels is None:
            measured[p0:p1] = _measured_err(noise, suberr, slice(None))
        else:
            lo, hi = np.searchsorted(pull_pixels, [p0, p1])
            measured[lo:hi] = _measured_err(noise, suberr, pull_pixels[lo:hi] - p0)

    jobs = [synth, held_pred, held_err] + ([] if held_cov is None else [held_cov])
    jobs = [job if callable(job) else (lambda value=job: value) for job in jobs]
    # tiles of an eighth of the frame and 2^18 pixels at most: shared evenly between the
    # threads, and small work arrays in the helper's malloc arena (whose freed pages the
    # calling thread does not reuse); the full-frame prediction made by the calling thread
    tiles = stack.master_tiles(min_tiles=max(8, -(-size // PIXEL_BLOCK)))
    done = (tasks or Jobs(helpers=0)).run(
        jobs + [lambda r0=r0, r1=r1: read_tile(r0, r1) for r0, r1 in tiles], own=1)
    synth, held_pred, held_err = np.asarray(done[0]), done[1], done[2]
    held_cov = None if held_cov is None else done[3]
    del done
    flat_synth = synth.reshape(-1)
    # usable: signal, prediction and error finite, not excluded; strong: and >= 3 sigma
    n_ok, n_strong = _finish_usable(flat_synth, flat_ok, flat_strong)
    # pulls against the held-out model, over its pixels (all, or the sample)
    held_pred = _flat(held_pred, at, size)
    held_err = _flat(held_err, at, size)
    real_p = flat_real[at].astype(np.float64)
    var = measured ** 2 + held_err ** 2
    if held_cov is not None:
        var -= 2 * _flat(held_cov, at, size)
    with np.errstate(invalid="ignore"):
        sigma = np.sqrt(var)  # NaN where the covariance would leave no variance: not pulled
    del var
    measured = None  # the read_tile closure holds the name
    ok_p = flat_ok[at] & np.isfinite(held_pred) & np.isfinite(sigma) & (sigma > 0)
    pull = (real_p - held_pred)[ok_p] / sigma[ok_p]
    del held_pred, held_err, real_p, sigma, ok_p, held_cov
    # the float64 values every statistic takes, of the pixels used in pixel order (as
    # boolean selections give them), one array at a time: numpy's mean and exact_median of
    # the same arrays, so the same numbers
    buffer = np.empty(n_strong + 1)
    _gather(flat_real, flat_synth, flat_strong, _APE, buffer)
    mape = float(np.mean(buffer[:n_strong])) if n_strong else math.nan
    buffer = np.empty(n_ok + 1)
    values = buffer[:n_ok]
    _gather(flat_real, flat_synth, flat_ok, _ABS_DIFF, buffer)
    mae = float(np.mean(values)) if n_ok else math.nan
    _gather(flat_real, flat_synth, flat_ok, _REAL, buffer)
    real_median = exact_median(values) if n_ok else math.nan
    _gather(flat_real, flat_synth, flat_ok, _SYNTH, buffer)
    synth_median = exact_median(values) if n_ok else math.nan
    del buffer, values
    row = {"Temperature (°C)": m.tavg, "Exposure (s)": m.exptime,
           "MAE [ADU]": mae, "MAPE [%]": mape,
           "PULL_MEAN": float(np.mean(pull)) if pull.size else math.nan,
           "PULL_STD": float(np.std(pull)) if pull.size else math.nan,
           "REAL_MEDIAN [ADU]": real_median, "SYNTH_MEDIAN [ADU]": synth_median,
           "NPIX": int(n_ok), "NPIX_MAPE": int(n_strong), "NPIX_PULL": int(pull.size),
           "TBIN": m.temperature}
    idx = np.flatnonzero(ok)
    if idx.size > 5000:
        idx = rng.choice(idx, 5000, replace=False)
    sample = (flat_real[idx].astype(np.float64), flat_synth[idx].astype(np.float64))
    if not keep_maps:
        return row, sample, None
    real = data.astype(np.float64)
    resid = real - synth.astype(np.float64)
    del synth
    abs_err = np.where(ok, np.abs(resid), np.nan)
    ape_map = np.where(strong, 100 * np.abs(resid / np.where(strong, real, 1)), np.nan)
    return row, sample, (_reduce(abs_err), _reduce(ape_map))


def _usable_py(real, noise, sub, exclude, ok, strong):
    """Per flat pixel of (part of) a master: usable (signal and error finite, not
    ``exclude``) to ``ok``, and usable with a signal of 3 sigma at least to ``strong``.
    The error is ``sqrt(noise^2 + sub^2)`` in float64 (:func:`_measured_err`'s
    arithmetic).  No branch per pixel: the loop is vectorised."""
    for p in range(real.size):
        r = np.float64(real[p])
        n = np.float64(noise[p])
        e = np.float64(sub[p])
        err = np.sqrt(n * n + e * e)
        good = np.isfinite(r) & np.isfinite(err) & ~exclude[p]
        ok[p] = good
        strong[p] = good & (abs(r) >= 3 * err)


def _finish_usable_py(synth, ok, strong):
    """``ok`` and ``strong`` of :func:`_usable_py` (whole frame) also where the prediction
    ``synth`` is finite; returns their counts."""
    n_ok = 0
    n_strong = 0
    for p in range(synth.size):
        finite = np.isfinite(synth[p])
        good = ok[p] & finite
        big = strong[p] & finite
        ok[p] = good
        strong[p] = big
        n_ok += good
        n_strong += big
    return n_ok, n_strong


#: What :func:`_gather_py` writes of each selected pixel.
_APE, _ABS_DIFF, _REAL, _SYNTH = 0, 1, 2, 3


def _gather_py(real, synth, mask, what, out):
    """``out[j]`` of the j-th pixel of ``mask`` (in pixel order), float64: its absolute
    percentage error ``|(real - synth) / real| 100`` (``what`` :data:`_APE`), absolute
    residual ``|real - synth|`` (:data:`_ABS_DIFF`), ``real`` or ``synth`` -- the
    arithmetic of the former in-place numpy steps on the masked float64 values.  ``out``
    has one element more than ``mask`` selects: every pixel's value is written at the next
    place, which advances only for a selected pixel (no branch per pixel)."""
    j = 0
    if what == 0:
        for p in range(mask.size):
            r = np.float64(real[p])
            out[j] = abs((r - np.float64(synth[p])) / r) * 100
            j += mask[p]
    elif what == 1:
        for p in range(mask.size):
            out[j] = abs(np.float64(real[p]) - np.float64(synth[p]))
            j += mask[p]
    elif what == 2:
        for p in range(mask.size):
            out[j] = np.float64(real[p])
            j += mask[p]
    else:
        for p in range(mask.size):
            out[j] = np.float64(synth[p])
            j += mask[p]
    return j


try:
    from numba import njit

    _usable = njit(nogil=True, cache=True)(_usable_py)
    _finish_usable = njit(nogil=True, cache=True)(_finish_usable_py)
    # every pixel's APE is computed, unselected zero signals too: IEEE division, as numpy's
    _gather = njit(nogil=True, cache=True, error_model="numpy")(_gather_py)
except ImportError:  # pragma: no cover - numba is a dependency; plain Python still works
    _usable, _finish_usable, _gather = _usable_py, _finish_usable_py, _gather_py


def _measured_err(noise_err: np.ndarray, suberr: np.ndarray, at) -> np.ndarray:
    """``sqrt(noise_err^2 + suberr^2)`` [adu] in float64 of the flat pixels ``at`` of a
    master's noise-model and subtracted-bias errors (float32 maps, flattened)."""
    part = noise_err[at].astype(np.float64)
    part *= part
    sub2 = suberr[at].astype(np.float64)
    sub2 *= sub2
    part += sub2
    return np.sqrt(part, out=part)


def _flat(image, at, full_size: int) -> np.ndarray:
    """``image`` (a full frame, or already the pulled pixels) at the pixels ``at``, float64."""
    flat = np.asarray(image, dtype=np.float64).reshape(-1)
    return flat[at] if flat.size == full_size else flat


def dark_current_table(rates, model=None, e_per_adu: float | None = None,
                       exclude: np.ndarray | None = None) -> pd.DataFrame:
    """Dark current per temperature bin: median (and its error) and 95th percentile.

    Columns ``TBIN, TAVG`` [degC], ``NPIX``, ``DC_MEDIAN``, ``DC_MEDIAN_ERR``, ``DC_P95``
    [adu/s], ``MODEL_MEDIAN`` [adu/s] (1-D model at TAVG, when given) and the same in
    e-/s (``*_E``) with a gain.

    ``MODEL_MEDIAN`` is the median over the pixels of the population law, A at the
    population B times ``exp(B (TAVG - TREF))`` (the model the datasheet's dark current and
    doubling temperature are of), when the model holds those amplitudes
    (:attr:`~dark_pipeline.temperature_model.DarkModel1D.common`); else (a model read back
    from its file) the median of the pixels' own fits.  The own fits' median is not the
    population's where many pixels fall back: at two temperatures, the pixels without two
    positive rates (a third at 0.5 e-/s) take the population B with an A fitted to the
    warm point, so the faint point's median model came out 16 % above the data (4.6 for
    4.0 +- 0.13 adu/s, truth 3.98).
    """
    common = getattr(model, "common", None)
    rows = []
    for r in rates:
        ok = np.isfinite(r.rate)
        if exclude is not None:
            ok &= ~exclude
        v = r.rate[ok].astype(np.float64)
        if v.size == 0:
            continue
        med = exact_median(v)
        dev = v - med
        np.abs(dev, out=dev)
        spread = MAD_TO_STD * exact_median(dev)
        del dev
        row = {"TBIN": r.temperature, "TAVG": r.tavg, "NPIX": int(v.size), "DC_MEDIAN": med,
               "DC_MEDIAN_ERR": 1.2533 * spread / math.sqrt(v.size),
               # v's last use: partitioned in place (the same order statistics, no copy)
               "DC_P95": float(np.percentile(v, 95, overwrite_input=True))}
        del v
        if common is not None:
            pred = common.amplitude[ok].astype(np.float64) * math.exp(
                float(model.fit.population_rate) * (r.tavg - model.t_ref))
            row["MODEL_MEDIAN"] = _nanmedian(pred)
            del pred
        elif model is not None:
            pred = model.rate(r.tavg)[ok]
            row["MODEL_MEDIAN"] = _nanmedian(pred)
            del pred
        if e_per_adu:
            for key in [k for k in row if k.startswith(("DC_", "MODEL_"))]:
                row[key + "_E"] = row[key] * e_per_adu
        rows.append(row)
    return pd.DataFrame(rows)


def _nanmedian(values: np.ndarray) -> float:
    """``np.nanmedian`` of a 1-D array: :func:`~utils.stack.stats.exact_median` (numpy's
    median, the same number) of its values that are not NaN, as nanmedian takes them; NaN
    when there is none."""
    kept = values[~np.isnan(values)]
    return exact_median(kept) if kept.size else math.nan


__all__ = ["Evaluation", "evaluate", "RefitsAhead", "dark_current_table", "COLUMNS"]
