"""Photometric precision vs dose: at the summary level and per pixel.

A half-full-scale source ``S = (FS - bias) / 2`` [adu] is measured over bias and
dark noise: ``N = sqrt(S / e + sigma_bias^2 + sigma_dark^2)`` [adu], where ``e``
is electrons per stored ADU (shot noise in ADU is ``sqrt(S / e)``; the old code
assumed ``e = 1``: here it comes from the measured gain or ``--gain``, and every
product says which), ``SNR = S / N`` and ``mag_err = 1.0857 / SNR`` (inf where
``SNR <= 0``).  FS is the camera's saturation level.

Summary level: every (bias row, dark row) pair of an irradiating dose ->
``MAG_ERR`` (mean over pairs) and ``MAG_ERR_STD``.  Per pixel: the bias master
and the per-pixel temporal noise of the bias and dark masters of each dose; maps
of mag_err and of the ADU error (16-bit and 12-bit), quadrant (zone) means and
statistics per dose.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .dynamic_range import MAG_PER_RELATIVE
from .summary import IRRADIATING


def magnitude_error(signal, noise):
    """``1.0857 N / S`` with inf where ``S / N <= 0`` (or N = 0 with S <= 0)."""
    signal = np.asarray(signal, dtype=float)
    noise = np.asarray(noise, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(noise > 0, signal / noise, 0.0)
        return np.where(snr > 0, MAG_PER_RELATIVE / snr, np.inf)


def noise_of(signal, sigma_bias, sigma_dark, e_per_adu: float):
    """[adu] total noise of a source of ``signal`` [adu] (negative signal counts as 0)."""
    signal = np.maximum(np.asarray(signal, dtype=float), 0.0)
    return np.sqrt(signal / e_per_adu + np.asarray(sigma_bias) ** 2
                   + np.asarray(sigma_dark) ** 2)


def summary_precision(rows: pd.DataFrame, full_scale: float, e_per_adu: float) -> pd.DataFrame:
    """``DOSE, MAG_ERR, MAG_ERR_STD`` per irradiating dose common to bias and dark rows."""
    ir = rows[rows["STAGE"].isin(IRRADIATING)]
    out = []
    for dose, part in ir.groupby("DOSE", sort=True):
        bias, dark = part[part["CALTYPE"] == "BIAS"], part[part["CALTYPE"] == "DARK"]
        if bias.empty or dark.empty:
            continue
        errs = []
        for _, b in bias.iterrows():
            for _, d in dark.iterrows():
                s = (full_scale - b["MEAN"]) / 2.0
                errs.append(float(magnitude_error(s, noise_of(s, b["STD"], d["STD"],
                                                              e_per_adu))))
        errs = np.array(errs)
        out.append({"DOSE": dose, "MAG_ERR": float(errs.mean()),
                    "MAG_ERR_STD": float(errs.std()), "NPAIRS": len(errs)})
    return pd.DataFrame(out, columns=["DOSE", "MAG_ERR", "MAG_ERR_STD", "NPAIRS"])


def pixel_precision(bias_level, bias_noise, dark_noise, full_scale: float, e_per_adu: float,
                    adu_scale: float) -> dict:
    """Per-pixel maps: ``mag_err``, ``adu_err16``, ``adu_err12`` (see module notes)."""
    s = (full_scale - np.asarray(bias_level, dtype=np.float64)) / 2.0
    n = noise_of(s, bias_noise, dark_noise, e_per_adu)
    mag = magnitude_error(s, n)
    return {"mag_err": mag.astype(np.float32), "adu_err16": n.astype(np.float32),
            "adu_err12": (n / adu_scale).astype(np.float32)}


def quadrants(image: np.ndarray) -> list[float]:
    """Means of the finite pixels of Q1 (rows [0,H/2), cols [0,W/2)), Q2 (rows [0,H/2),
    cols [W/2,W)), Q3 (rows [H/2,H), cols [0,W/2)) and Q4.

    Examples
    --------
    >>> quadrants(np.arange(16.0).reshape(4, 4))
    [2.5, 4.5, 10.5, 12.5]
    """
    h, w = image.shape
    parts = (image[:h // 2, :w // 2], image[:h // 2, w // 2:], image[h // 2:, :w // 2],
             image[h // 2:, w // 2:])
    return [float(np.mean(p[np.isfinite(p)])) if np.isfinite(p).any() else math.nan
            for p in parts]


def map_stats(image: np.ndarray) -> tuple[float, float]:
    """Mean and std of the finite pixels."""
    v = image[np.isfinite(image)]
    return (float(v.mean()), float(v.std())) if v.size else (math.nan, math.nan)


__all__ = ["magnitude_error", "noise_of", "summary_precision", "pixel_precision", "quadrants",
           "map_stats"]
