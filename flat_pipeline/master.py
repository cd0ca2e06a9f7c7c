"""Normalised master flats: one per flat level (stage, temperature bin, exposure time), and the
sky median.

Each frame is reduced and normalised while it is stacked, row block by row block inside
the streaming engine (:func:`utils.stack.combine.combine`): ``subtract(i, start, stop)``
gives the bias at frame ``i``'s own temperature plus its dark, and the per-frame
``scale`` is ``1 / level_i`` (the frame's own level, :mod:`flat_pipeline.quality`), so a
drifting lamp does not bias the clipping.  The stack (sigma-clipped mean by default) is
then normalised to 1 over the central region; ``FLATNORM`` keeps the level [adu] (the
median of the frames' levels times that factor).  With ``--norm-method`` median or mean
that last factor is the 5-sigma-clipped mean of the central region (``MASTNORM``): the
median of a noisy, skewed distribution of pixel values (vignetting) moves with the
noise, i.e. with the level, and would put a spurious exposure-time dependence of a few
0.01 % into every flat normalised with it; a clipped mean does not.

Noise model.  A pixel's ``NOISE`` (sample standard deviation of its accepted frames) is
itself uncertain by ``1 / sqrt(2 (N - 1))`` (20 % at 12 frames); weighting a fit with it
makes the residuals heavy-tailed.  The temporal variance of a flat is read noise plus
shot noise, a straight line in the signal, so each master carries the line
``NOISE^2 = NOISEA + NOISEB F`` fitted over its pixels (header cards); :func:`model_error`
turns it into a smooth per-pixel error ``sqrt((NOISEA + NOISEB F) / NCOMB + SUBERR^2)``
that the flat model and its evaluation use.  ``UNCERT`` holds
the stack's standard error and the error of what was subtracted (bias and dark, common
to every frame: added once, also alone in ``SUBERR``), in normalised units; ``NOISE``,
``NCOMB``, ``FLAGS``, ``MASK`` and ``INPUTS`` as every master of this toolkit.  A master
whose inputs and settings are unchanged (same ``INHASH``) is kept.

``--flat-type sky``: also the median of every reduced, normalised frame of the stage
(``sky_median/master_flat_sky_median_normalized.fits``) and the same scaled back to the
median level in adu (``master_flat_sky_median.fits``), the old products' names.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from utils import adu
from utils import headers as kw
from utils.stack.combine import combine
from utils.stack.grouping import GroupKey
from utils.stack.master import (
    CombineSettings,
    adc_bits_of,
    existing_product,
    frame_metadata,
    inputs_hash,
)
from utils.stack.stats import exact_median

from .quality import central_region, level_of

logger = logging.getLogger(__name__)

MASTER_FOLDER = "master_flat"
SKY_FOLDER = "sky_median"


@dataclass
class FlatMaster:
    """One normalised master flat.

    Attributes
    ----------
    key : GroupKey
        Stage, dose, temperature bin [degC] and exposure [s] of its set (exposure NaN for
        the sky median).
    path : pathlib.Path
        The product.
    tavg : float
        [degC] mean temperature of its frames.
    exptime : float
        [s] mean exposure time of its frames.
    level : float
        [adu] ``FLATNORM``: the level divided out.
    ncombine : int
        Frames stacked.
    written : bool
        Whether this run wrote it (False: kept, unchanged).
    """

    key: GroupKey
    path: Path
    tavg: float
    exptime: float
    level: float
    ncombine: int
    written: bool

    @property
    def tag(self) -> str:
        """``T25.0C_E0.4s`` (``sky_median`` for the sky median)."""
        return self.key.tag if not math.isnan(self.key.exptime) else "sky_median"

    @classmethod
    def from_header(cls, key: GroupKey, path: Path, header: fits.Header,
                    written: bool) -> FlatMaster:
        """From a master's primary header."""
        return cls(key, Path(path), kw.get_float(header, kw.TAVG, key.temperature),
                   kw.get_float(header, kw.EAVG, key.exptime), kw.get_float(header, kw.FLATNORM),
                   int(header.get(kw.NCOMBINE, 0)), written)


def master_path(folder: Path, key: GroupKey) -> Path:
    """``<folder>/master_flat_T<T>C_E<t>s.fits``."""
    return Path(folder) / f"master_flat_{key.tag}.fits"


def stack_normalised(paths: list[str], rows: pd.DataFrame, subtract, scale: np.ndarray,
                     sub_err: np.ndarray, settings: CombineSettings, *, norm_method: str,
                     central_fraction: float, progress_bar: bool = False):
    """Stack frames reduced by ``subtract`` and scaled by ``scale``, then normalise to 1.

    Returns
    -------
    (MasterResult, float, numpy.ndarray)
        The normalised result, the normalisation factor (same unit as the scaled frames)
        and the normalised error of what was subtracted.
    """
    bits = adc_bits_of(rows)
    n = len(paths)
    result = combine(paths, method=settings.method, sigma_low=settings.sigma_low,
                     sigma_high=settings.sigma_high, maxiters=settings.maxiters,
                     min_accepted=min(settings.min_accepted, n), scale=scale,
                     subtract=subtract, saturation=adu.saturation_level(bits),
                     min_scale=adu.clip_floor(bits, float(np.median(scale))),
                     quantum=adu.quantum(bits, float(np.median(scale))),
                     memory_limit=settings.memory_limit, workers=settings.workers,
                     metadata=frame_metadata(rows), product="MASTER_FLAT",
                     progress_bar=progress_bar)
    rows_sl, cols_sl = central_region(result.data.shape, central_fraction)
    centre = np.where(result.mask, np.nan, result.data)[rows_sl, cols_sl]
    norm = level_of(centre, norm_method) if norm_method == "max" else clipped_mean(centre)
    if not norm > 0:
        raise ValueError("the stacked flat has no positive level in its central region")
    inv = np.float32(1.0 / norm)
    # float32 throughout (errors need no more than 7 digits; no full-frame float64 copies)
    suberr = np.asarray(sub_err, np.float32) * np.float32(float(np.median(scale)) / norm)
    result.data *= inv
    result.noise *= inv
    result.stderr *= inv
    np.multiply(result.stderr, result.stderr, out=result.stderr)
    result.stderr += suberr * suberr
    np.sqrt(result.stderr, out=result.stderr)
    return result, norm, suberr


def clipped_mean(values: np.ndarray, sigma: float = 5.0) -> float:
    """Mean of the finite values within ``sigma`` robust sigma of their median (unbiased by
    symmetric noise, unlike the median of a skewed distribution)."""
    v = values[np.isfinite(values)].astype(np.float64)
    if v.size == 0:
        return math.nan
    centre = exact_median(v)
    spread = 1.482602218505602 * exact_median(np.abs(v - centre))
    keep = np.abs(v - centre) <= sigma * spread if spread > 0 else np.ones(v.size, bool)
    return float(v[keep].mean())


def noise_line(data: np.ndarray, noise: np.ndarray, count: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` of ``noise^2 = a + b data`` by least squares over the pixels with two
    accepted frames or more (see module notes)."""
    step = max(1, data.size // 500000)  # a regular subsample is plenty for two numbers
    data, noise, count = (np.ravel(v)[::step] for v in (data, noise, count))
    ok = np.isfinite(data) & np.isfinite(noise) & (count > 1)
    if ok.sum() < 10:
        return math.nan, math.nan
    x = data[ok].astype(np.float64)
    y = noise[ok].astype(np.float64) ** 2
    xm, ym = float(x.mean()), float(y.mean())
    sxx = float(np.dot(x - xm, x - xm))
    if sxx <= 0:
        return ym, 0.0
    b = float(np.dot(x - xm, y - ym)) / sxx
    return ym - b * xm, b


def model_error(data: np.ndarray, count: np.ndarray, suberr: np.ndarray, header,
                uncert: np.ndarray | None) -> np.ndarray:
    """Smooth one-sigma error of a master's pixels [1] from its noise line (module notes);
    ``uncert`` (the master's ``UNCERT``) when the header has no line (only then needed)."""
    a, b = kw.get_float(header, "NOISEA"), kw.get_float(header, "NOISEB")
    if not (math.isfinite(a) and math.isfinite(b)):
        return np.asarray(uncert, np.float32)
    var = np.maximum(np.float32(a) + np.float32(b) * data, 0) / np.maximum(count, 1)
    return np.sqrt(var + suberr * suberr).astype(np.float32)


def _statistics_cards(result) -> dict:
    step = max(1, result.data.size // 500000)  # of a regular subsample: header statistics
    data = result.data.ravel()[::step]
    valid = ~result.mask.ravel()[::step] & np.isfinite(data)
    good = data[valid] if valid.any() else np.array([math.nan])
    what = "of the normalised master, valid pixels (sampled)"
    return {kw.MEAN: (float(np.mean(good)), what), kw.MEDIAN: (exact_median(good), what),
            kw.STD: (float(np.std(good)), what)}


def build_master(key: GroupKey, rows: pd.DataFrame, levels: np.ndarray, reference, path: Path,
                 settings: CombineSettings, *, norm_method: str, central_fraction: float,
                 cards: dict, progress_bar: bool = False) -> FlatMaster:
    """The normalised master of one flat set (see module notes), kept when unchanged.

    Parameters
    ----------
    key : GroupKey
        The set.
    rows : pandas.DataFrame
        Its frames (``PATH, TEMP, EXPTIME``), in the order of ``levels``.
    levels : numpy.ndarray
        [adu] level of each reduced frame.
    reference : flat_pipeline.reduction.Reference
        What is subtracted.
    cards : dict
        Extra header cards ``{key: (value, comment)}``.
    """
    paths = rows["PATH"].astype(str).tolist()
    levels = np.asarray(levels, dtype=np.float64)
    digest = inputs_hash(paths, settings, *reference.refs, norm_method, central_fraction,
                         tuple(float(f"{v:.6g}") for v in levels))
    header = existing_product(path, digest)
    if header is not None:
        return FlatMaster.from_header(key, path, header, False)
    scale = 1.0 / levels
    result, norm, suberr = stack_normalised(paths, rows, reference.subtract, scale,
                                            reference.err, settings, norm_method=norm_method,
                                            central_fraction=central_fraction,
                                            progress_bar=progress_bar)
    level = float(np.median(levels)) * norm
    noise_a, noise_b = noise_line(np.where(result.mask, np.nan, result.data), result.noise,
                                  result.count)
    extra = dict(reference.cards) | dict(cards) | _statistics_cards(result)
    extra.update({
        "NOISEA": (noise_a, "[1] NOISE^2 = NOISEA + NOISEB * F (noise line)"),
        "NOISEB": (noise_b, "[1] slope of the noise line"),
        kw.INHASH: (digest, "hash of inputs and settings"),
        kw.FLATNORM: (level, "[adu] level divided out (median frame level)"),
        "NORMMETH": (norm_method, "frame level: statistic of the central region"),
        "MASTNORM": ("max" if norm_method == "max" else "clipped mean",
                     "statistic of the master's central region = 1"),
        "NORMREG": (float(central_fraction), "side fraction of the central region"),
        "FLATPIPE": ("master_flat", "old name of this step"),
        "N_FILES": (len(paths), "frames stacked (old keyword)"),
        kw.CALTYPE: ("FLAT", "calibration type"),
        kw.IMAGETYP: ("MASTER FLAT", "normalised master flat"),
        kw.TBIN: (key.temperature, "[degC] temperature bin label"),
        kw.EXPTIME: (key.exptime, "[s] exposure time of the set"),
        kw.STAGE: (key.stage or "none", "irradiation stage"),
        "SUBERR": (True, "UNCERT includes the SUBERR of the subtracted bias+dark"),
    })
    if not math.isnan(key.dose):
        extra[kw.DOSE] = (key.dose, "[krad] dose step")
    for name, value, comment in adu.scaling_cards(adc_bits_of(rows)):
        extra.setdefault(name, (value, comment))
    written = result.write(path, unit="", extra_header=extra,
                           extra_images={"SUBERR": (suberr, "")})
    logger.info("master flat %s (%d frames, level %.0f adu): %s", key.tag, len(paths), level,
                written.name)
    return FlatMaster.from_header(key, written, fits.getheader(written), True)


def build_sky_median(entries: list[tuple[pd.Series, object, int, float]], folder: Path,
                     settings: CombineSettings, *, norm_method: str, central_fraction: float,
                     key: GroupKey, cards: dict, progress_bar: bool = False
                     ) -> list[Path]:
    """The sky median of every frame given (see module notes).

    Parameters
    ----------
    entries : list of (index row, Reference, index of the frame in its set, level [adu])
        The frames, each with what is subtracted from it and its level.
    """
    rows = pd.DataFrame([e[0] for e in entries])
    paths = rows["PATH"].astype(str).tolist()
    refs = [e[1] for e in entries]
    within = [e[2] for e in entries]
    levels = np.array([e[3] for e in entries], dtype=np.float64)
    digest = inputs_hash(paths, settings, "sky", norm_method, central_fraction,
                         *sorted({r for ref in refs for r in ref.refs}),
                         tuple(float(f"{v:.6g}") for v in levels))
    norm_path = folder / "master_flat_sky_median_normalized.fits"
    adu_path = folder / "master_flat_sky_median.fits"
    if existing_product(norm_path, digest) is not None and \
            existing_product(adu_path, digest) is not None:
        return [adu_path, norm_path]

    def subtract(i, start, stop):
        return refs[i].subtract(within[i], start, stop)
    scale = 1.0 / levels
    # errors of the subtracted images: one per set, in quadrature over the frames (upper bound)
    sub_err = np.sqrt(np.mean([(ref.err.astype(np.float64) * s / np.median(scale)) ** 2
                               for ref, s in zip(refs, scale)], axis=0))
    median = dataclasses.replace(settings, method="median")
    result, norm, suberr = stack_normalised(paths, rows, subtract, scale, sub_err, median,
                                            norm_method=norm_method,
                                            central_fraction=central_fraction,
                                            progress_bar=progress_bar)
    level = float(np.median(levels)) * norm
    extra = dict(cards) | _statistics_cards(result)
    extra.update({kw.INHASH: (digest, "hash of inputs and settings"),
                  kw.FLATNORM: (level, "[adu] median level of the frames"),
                  "SKYPIPE": ("median", "median of the reduced, normalised frames"),
                  "NORMMETH": (norm_method, "frame level: statistic of the central region"),
                  "MASTNORM": ("max" if norm_method == "max" else "clipped mean",
                               "statistic of the master's central region = 1"),
                  kw.CALTYPE: ("FLAT", "calibration type"),
                  kw.IMAGETYP: ("MASTER FLAT", "sky median flat"),
                  kw.STAGE: (key.stage or "none", "irradiation stage")})
    for name, value, comment in adu.scaling_cards(adc_bits_of(rows)):
        extra.setdefault(name, (value, comment))
    out = [result.write(norm_path, unit="", extra_header=extra,
                        extra_images={"SUBERR": (suberr, "")})]
    factor = np.float32(level)
    result.data, result.noise, result.stderr = (result.data * factor, result.noise * factor,
                                                result.stderr * factor)
    extra["SKYNORM"] = (False, "in adu: the normalised median x FLATNORM")
    out.insert(0, result.write(adu_path, unit=adu.UNIT, extra_header=extra,
                               extra_images={"SUBERR": (suberr * factor, adu.UNIT)}))
    logger.info("sky median of %d frames: %s", len(paths), folder)
    return out


__all__ = ["FlatMaster", "build_master", "build_sky_median", "master_path", "stack_normalised",
           "noise_line", "model_error",
           "MASTER_FOLDER", "SKY_FOLDER"]
