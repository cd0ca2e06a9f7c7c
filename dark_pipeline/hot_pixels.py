"""Hot pixels: dark rate far above the population at a reference temperature.

Dark current across the pixels of a sensor is close to log-normal with a long
hot tail, so the test is made on ``ln(rate)``: a pixel is hot when its
robust z-score ``(ln rate - median) / (1.4826 MAD)`` exceeds ``n_sigma``
(default 5).  A threshold in linear sigma would flag the ordinary upper tail
of a log-normal population (about 0.1 % of the pixels for a 30 % spread).
When the gain is known, a pixel must also exceed ``min_rate_e`` electrons per
second (5 e-/s by default, the usual convention), so a cold, quiet sensor
does not report noise as hot.  Pixels with a rate <= 0 are never hot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from utils.stack.stats import MAD_TO_STD, exact_median


@dataclass
class HotPixels:
    """Hot-pixel mask and the thresholds that made it.

    Attributes
    ----------
    mask : numpy.ndarray
        True for hot pixels.
    zscore : numpy.ndarray
        Robust z-score of ``ln(rate)`` (NaN where the rate is <= 0).
    median_rate : float
        [adu/s] population median.
    spread_ln : float
        Robust spread of ``ln(rate)`` [1].
    threshold : float
        [adu/s] rate at ``n_sigma`` (and at least the electron floor when given).
    n_sigma : float
        Threshold in robust sigma of ``ln(rate)``.
    min_rate_adu : float
        [adu/s] electron floor converted to ADU (0 without a gain).
    """

    mask: np.ndarray
    zscore: np.ndarray
    median_rate: float
    spread_ln: float
    threshold: float
    n_sigma: float
    min_rate_adu: float

    @property
    def count(self) -> int:
        """Number of hot pixels."""
        return int(self.mask.sum())


def find_hot_pixels(rate: np.ndarray, *, n_sigma: float = 5.0,
                    e_per_adu: float | None = None, min_rate_e: float = 5.0,
                    valid: np.ndarray | None = None) -> HotPixels:
    """Hot pixels of a rate map [adu/s] (see module notes).

    Parameters
    ----------
    rate : numpy.ndarray
        Dark rate per pixel [adu/s].
    n_sigma : float, optional
        Threshold in robust sigma of ``ln(rate)``.
    e_per_adu : float, optional
        Electrons per stored ADU (:func:`utils.adu.electrons_per_adu`); enables the floor.
    min_rate_e : float, optional
        [e-/s] floor applied when ``e_per_adu`` is given.
    valid : numpy.ndarray of bool, optional
        Pixels that may be hot and define the population (default: finite rates).
    """
    rate = np.asarray(rate)
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(rate) & (rate > 0)
    if valid is not None:
        usable &= valid
    if usable.sum() < 10:
        raise ValueError("fewer than 10 pixels with a positive dark rate: no hot-pixel "
                         "population to compare with")
    # float64 work on the usable pixels only (no full-frame float64 copies; the same numbers
    # as the NaN-filled frame's nanmedian)
    floor = min_rate_e / e_per_adu if e_per_adu else 0.0

    def usable_values(log: bool) -> np.ndarray:
        values = rate[usable].astype(np.float64)
        return np.log(values, out=values) if log else values
    above = usable_values(False) > floor
    # exact_median: np.median's number without partitioning a copy of all of it (~4x
    # faster on a full frame); the logs are taken again, in pixel order, for the z-scores
    logs = usable_values(True)
    centre = exact_median(logs)
    logs -= centre
    np.abs(logs, out=logs)
    spread = MAD_TO_STD * exact_median(logs)
    spread = max(spread, 1e-6)
    del logs
    logs = usable_values(True)
    logs -= centre  # now the z-scores (logs - centre) / spread, in place
    logs /= spread
    mask = np.zeros(rate.shape, bool)
    mask[usable] = (logs > n_sigma) & above
    z = np.full(rate.shape, np.nan, np.float32)
    z[usable] = logs
    del logs, above
    threshold = max(math.exp(centre + n_sigma * spread), floor)
    return HotPixels(mask, z, math.exp(centre), spread, threshold,
                     float(n_sigma), floor)


def hot_pixel_counts(rates, *, n_sigma: float = 5.0, e_per_adu: float | None = None,
                     min_rate_e: float = 5.0) -> pd.DataFrame:
    """Hot pixels found in the rate map of every temperature bin.

    Columns: ``TBIN, TAVG`` [degC], ``N_HOT``, ``FRACTION``, ``MEDIAN_RATE``,
    ``THRESHOLD`` [adu/s] (and ``THRESHOLD_E`` [e-/s] with a gain).
    """
    rows = []
    for r in rates:
        try:
            hot = find_hot_pixels(r.rate, n_sigma=n_sigma, e_per_adu=e_per_adu,
                                  min_rate_e=min_rate_e)
        except ValueError:
            continue
        row = {"TBIN": r.temperature, "TAVG": r.tavg, "N_HOT": hot.count,
               "FRACTION": hot.count / hot.mask.size, "MEDIAN_RATE": hot.median_rate,
               "THRESHOLD": hot.threshold}
        if e_per_adu:
            row["THRESHOLD_E"] = hot.threshold * e_per_adu
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["HotPixels", "find_hot_pixels", "hot_pixel_counts"]
